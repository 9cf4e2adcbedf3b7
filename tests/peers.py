"""Misbehaving loopback peers for tests: servers that accept but never answer."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from websockets.sync.server import ServerConnection, serve


@contextmanager
def silent_websocket_server(*, accept: bool = True) -> Iterator[str]:
    """A WebSocket server that completes the handshake, sends `1` (if *accept*), then never
    reads or writes again until the context exits.  Yields its ws:// URL."""
    release = threading.Event()

    def handler(connection: ServerConnection) -> None:
        if accept:
            connection.send("1")
        release.wait(30)

    # A short close_timeout: at the end the peer's unread data must not hold the teardown.
    with serve(handler, "127.0.0.1", 0, ping_interval=None, close_timeout=0.5) as server:
        thread = threading.Thread(target=server.serve_forever, name="silent-server")
        thread.start()
        try:
            yield f"ws://127.0.0.1:{server.socket.getsockname()[1]}/ws"
        finally:
            release.set()
            server.shutdown()
            thread.join(5)


class Blackhole:
    """What tcp_blackhole yields: its URL and a wait on the number of accepted connections."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.accepted: list[socket.socket] = []
        self.changed = threading.Condition()

    def wait_accepted(self, count: int, timeout: float) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: len(self.accepted) >= count, timeout)


@contextmanager
def tcp_blackhole() -> Iterator[Blackhole]:
    """A TCP listener that accepts connections and never sends a byte (no handshake)."""
    listener = socket.create_server(("127.0.0.1", 0))
    hole = Blackhole(f"ws://127.0.0.1:{listener.getsockname()[1]}/ws")
    stop = threading.Event()

    def accept_loop() -> None:
        listener.settimeout(0.05)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            with hole.changed:
                hole.accepted.append(conn)
                hole.changed.notify_all()

    thread = threading.Thread(target=accept_loop, name="tcp-blackhole")
    thread.start()
    try:
        yield hole
    finally:
        stop.set()
        thread.join(5)
        for conn in hole.accepted:
            conn.close()
        listener.close()


class PausableProxy:
    """A loopback TCP proxy that can stop forwarding without closing (a half-open link).

    ``pause()`` freezes every current connection: bytes are read and dropped in
    neither direction, the sockets stay open.  New connections forward normally.
    """

    def __init__(self, target_port: int) -> None:
        self._target = ("127.0.0.1", target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._pipes: list[tuple[socket.socket, socket.socket, threading.Event]] = []
        self._threads: list[threading.Thread] = []
        self.connections = 0
        accept = threading.Thread(target=self._accept, name="proxy-accept")
        self._threads.append(accept)
        accept.start()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self._listener.getsockname()[1]}/ws"

    def pause(self) -> None:
        """Stop forwarding on every current connection, leaving them open."""
        with self._lock:
            for _, _, paused in self._pipes:
                paused.set()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            upstream = socket.create_connection(self._target, timeout=5)
            paused = threading.Event()
            with self._lock:
                self._pipes.append((client, upstream, paused))
                self.connections += 1
            for src, dst in ((client, upstream), (upstream, client)):
                t = threading.Thread(target=self._pump, args=(src, dst, paused), name="proxy-pump")
                self._threads.append(t)
                t.start()

    def _pump(self, src: socket.socket, dst: socket.socket, paused: threading.Event) -> None:
        src.settimeout(0.05)
        while not self._stop.is_set():
            if paused.is_set():
                self._stop.wait(0.05)
                continue
            try:
                data = src.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data or paused.is_set():
                if not data:
                    break
                continue
            try:
                dst.sendall(data)
            except OSError:
                break
        if not paused.is_set():
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(5)
        with self._lock:
            for a, b, _ in self._pipes:
                a.close()
                b.close()
        self._listener.close()


class ConnectProxy:
    """A minimal loopback HTTP CONNECT proxy that records the targets it tunnelled to."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self.targets: list[str] = []
        self.authorizations: list[str | None] = []
        thread = threading.Thread(target=self._accept, name="connect-proxy")
        self._threads.append(thread)
        thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            self._sockets.append(client)
            thread = threading.Thread(target=self._tunnel, args=(client,), name="connect-proxy")
            self._threads.append(thread)
            thread.start()

    def _tunnel(self, client: socket.socket) -> None:
        client.settimeout(5)
        head = b""
        while b"\r\n\r\n" not in head and len(head) < 65536:
            chunk = client.recv(4096)
            if not chunk:
                return
            head += chunk
        lines = head.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        auth = next(
            (
                v
                for k, _, v in (h.partition(": ") for h in lines[1:])
                if k.lower() == "proxy-authorization"
            ),
            None,
        )
        self.authorizations.append(auth)
        if method != "CONNECT":
            client.sendall(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
            return
        self.targets.append(target)
        host, port = target.rsplit(":", 1)
        upstream = socket.create_connection((host, int(port)), timeout=5)
        self._sockets.append(upstream)
        client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        back = threading.Thread(target=self._pump, args=(upstream, client), name="connect-proxy")
        self._threads.append(back)
        back.start()
        self._pump(client, upstream)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        src.settimeout(0.05)
        while not self._stop.is_set():
            try:
                data = src.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            try:
                dst.sendall(data)
            except OSError:
                break
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        for sock in self._sockets:
            sock.close()
        self._listener.close()
