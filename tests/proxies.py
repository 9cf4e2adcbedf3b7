"""Tiny loopback proxies for tests: HTTP CONNECT and SOCKS4/5, threaded and bounded.

Each proxy records what every client asked for, can demand credentials, and
can be told to refuse.  ``close()`` shuts every connection down and joins every
thread within a few seconds.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

_WAIT = 5.0  # the longest a proxy waits for a client's next bytes


@dataclass
class Request:
    """What one client asked a proxy for."""

    host: str  # the destination as sent: a name, or an address without brackets
    port: int
    kind: str  # "connect" (HTTP), "ipv4", "ipv6", "domain" (SOCKS5), "socks4", "socks4a"
    credentials: tuple[str, str] | None  # as the client sent them
    headers: dict[str, str]  # HTTP only, names lower-cased


class _Refused(Exception):
    """The proxy answered with a refusal and drops the client."""


class ProxyServer:
    """The accept loop, one thread per client, and the byte pumps of open tunnels."""

    scheme = ""

    def __init__(self, *, host: str = "127.0.0.1") -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.create_server((host, 0), family=family)
        self._listener.settimeout(0.05)
        self._host = host
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self.requests: list[Request] = []
        self.connections = 0  # clients accepted
        self.tunnels = 0  # tunnels opened
        self._start(self._accept, "accept")

    @property
    def address(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.address}"

    def url_with(self, user: str, password: str, scheme: str | None = None) -> str:
        return f"{scheme or self.scheme}://{user}:{password}@{self.address}"

    def close(self) -> None:
        """Stop accepting, shut every connection down, join every thread."""
        self._stop.set()
        self._threads[0].join(_WAIT)  # the accept loop: no client thread starts after it
        with self._lock:
            sockets = list(self._sockets)
            threads = self._threads[1:]
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join(_WAIT)
        for sock in sockets:
            sock.close()
        self._listener.close()

    def __enter__(self) -> ProxyServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- plumbing

    def _start(self, target: Callable[..., None], name: str, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name=f"test-proxy-{name}")
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _keep(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            self._keep(client)
            with self._lock:
                self.connections += 1
            self._start(self._serve, "client", client)

    def _serve(self, client: socket.socket) -> None:
        client.settimeout(_WAIT)
        try:
            upstream = self._negotiate(client)
        except (_Refused, OSError, ValueError, IndexError, struct.error):
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)
            return
        with self._lock:
            self.tunnels += 1
        self._start(self._pump, "pump", upstream, client)
        self._pump(client, upstream)

    def _negotiate(self, client: socket.socket) -> socket.socket:
        """Read the client's request, answer it; the connected upstream socket, or raise."""
        raise NotImplementedError

    def _record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def _dial(self, host: str, port: int) -> socket.socket | None:
        try:
            upstream = socket.create_connection((host, port), timeout=_WAIT)
        except OSError:
            return None
        self._keep(upstream)
        return upstream

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


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise _Refused("the client went away")
        data += chunk
    return data


class HttpConnectProxy(ProxyServer):
    """An HTTP proxy that only tunnels: ``CONNECT host:port``, optional Basic auth.

    *refuse* (``"403 Forbidden"``, say) answers every CONNECT with that status.
    *status* is the success line's status (``"200 Connection established"``);
    *split* sends the answer's head in three pieces, a little apart.
    """

    scheme = "http"

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        credentials: tuple[str, str] | None = None,
        refuse: str | None = None,
        status: str = "200 Connection established",
        split: bool = False,
    ) -> None:
        self._credentials = credentials
        self._refuse = refuse
        self._status = status
        self._split = split
        super().__init__(host=host)

    def _negotiate(self, client: socket.socket) -> socket.socket:
        head = b""
        while b"\r\n\r\n" not in head:
            if len(head) > 65536:
                raise _Refused("head too long")
            chunk = client.recv(4096)
            if not chunk:
                raise _Refused("the client went away")
            head += chunk
        lines = head.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        host, _, port = target.rpartition(":")
        credentials = None
        scheme, _, token = headers.get("proxy-authorization", "").partition(" ")
        if scheme.lower() == "basic":
            user, _, password = base64.b64decode(token).decode("latin-1").partition(":")
            credentials = (user, password)
        self._record(Request(host.strip("[]"), int(port), "connect", credentials, headers))
        if method != "CONNECT":
            self._answer(client, "405 Method Not Allowed")
        if self._refuse:
            self._answer(client, self._refuse)
        if self._credentials is not None and credentials != self._credentials:
            self._answer(client, "407 Proxy Authentication Required", 'Basic realm="test"')
        upstream = self._dial(host.strip("[]"), int(port))
        if upstream is None:
            self._answer(client, "502 Bad Gateway")
        head_out = f"HTTP/1.1 {self._status}\r\nProxy-Agent: test-proxy\r\n\r\n".encode()
        if self._split:
            for piece in (head_out[:10], head_out[10:-2], head_out[-2:]):
                client.sendall(piece)
                time.sleep(0.05)
        else:
            client.sendall(head_out)
        assert upstream is not None
        return upstream

    def _answer(self, client: socket.socket, status: str, authenticate: str | None = None) -> None:
        """Refuse with *status*: a complete answer with a short body, then drop the client."""
        body = b"refused\n"
        extra = f"Proxy-Authenticate: {authenticate}\r\n" if authenticate else ""
        client.sendall(
            f"HTTP/1.1 {status}\r\n{extra}Content-Length: {len(body)}\r\n"
            f"Connection: close\r\n\r\n".encode()
            + body
        )
        raise _Refused(status)


class SocksProxy(ProxyServer):
    """A SOCKS5 proxy (CONNECT only, optional user/password auth) that also speaks SOCKS4/4a.

    *reply* is the SOCKS5 reply code to answer a CONNECT with (0: success,
    2: not allowed by the ruleset, 5: refused...).
    """

    scheme = "socks5"

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        credentials: tuple[str, str] | None = None,
        reply: int = 0,
    ) -> None:
        self._credentials = credentials
        self._reply = reply
        super().__init__(host=host)

    def _negotiate(self, client: socket.socket) -> socket.socket:
        version = _recv_exactly(client, 1)[0]
        if version == 4:
            return self._socks4(client)
        if version != 5:
            raise _Refused("not SOCKS")
        methods = _recv_exactly(client, _recv_exactly(client, 1)[0])
        wanted = 0x00 if self._credentials is None else 0x02
        if wanted not in methods:
            client.sendall(b"\x05\xff")
            raise _Refused("no acceptable method")
        client.sendall(bytes([5, wanted]))
        credentials = None
        if wanted == 0x02:
            _recv_exactly(client, 1)  # the sub-negotiation's version, 1
            user = _recv_exactly(client, _recv_exactly(client, 1)[0]).decode("ascii")
            password = _recv_exactly(client, _recv_exactly(client, 1)[0]).decode("ascii")
            credentials = (user, password)
            granted = credentials == self._credentials
            client.sendall(b"\x01\x00" if granted else b"\x01\x01")
            if not granted:
                raise _Refused("bad credentials")
        _, command, _, kind = _recv_exactly(client, 4)
        if kind == 1:
            host, label = socket.inet_ntop(socket.AF_INET, _recv_exactly(client, 4)), "ipv4"
        elif kind == 4:
            host, label = socket.inet_ntop(socket.AF_INET6, _recv_exactly(client, 16)), "ipv6"
        else:
            size = _recv_exactly(client, 1)[0]
            host, label = _recv_exactly(client, size).decode("idna"), "domain"
        (port,) = struct.unpack("!H", _recv_exactly(client, 2))
        self._record(Request(host, port, label, credentials, {}))
        upstream = self._dial(host, port) if command == 1 and not self._reply else None
        code = self._reply or (0 if upstream is not None else 5)
        bound = b"\x01" + ipaddress.IPv4Address("127.0.0.1").packed + b"\x00\x00"
        client.sendall(bytes([5, code, 0]) + bound)
        if upstream is None:
            raise _Refused(f"reply {code}")
        return upstream

    def _socks4(self, client: socket.socket) -> socket.socket:
        command, port = struct.unpack("!BH", _recv_exactly(client, 3))
        address = _recv_exactly(client, 4)
        user = self._read_string(client)
        host, label = socket.inet_ntoa(address), "socks4"
        if address[:3] == b"\x00\x00\x00" and address[3]:
            host, label = self._read_string(client), "socks4a"
        self._record(Request(host, port, label, (user, "") if user else None, {}))
        upstream = self._dial(host, port) if command == 1 and not self._reply else None
        client.sendall(bytes([0, 0x5A if upstream is not None else 0x5B]) + b"\x00" * 6)
        if upstream is None:
            raise _Refused("rejected")
        return upstream

    @staticmethod
    def _read_string(client: socket.socket) -> str:
        data = b""
        while not data.endswith(b"\x00"):
            data += _recv_exactly(client, 1)
            if len(data) > 255:
                raise _Refused("string too long")
        return data[:-1].decode("ascii")


def has_ipv6_loopback() -> bool:
    """Whether ``::1`` can be listened on here."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.create_server(("::1", 0), family=socket.AF_INET6):
            return True
    except OSError:
        return False
