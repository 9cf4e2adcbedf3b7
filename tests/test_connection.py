"""The connection's lifecycle on a real loopback socket: generations, callbacks off the
reader, forks, bounded close, backoff that grows, and sends that never block on the peer."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from conftest import TIMEOUT, ClientFactory, client_threads, wait_until
from peers import silent_websocket_server, tcp_blackhole

from avatar_im import (
    AckError,
    AckTimeout,
    AvatarIM,
    ClientClosedError,
    ConnectionState,
    ForkedClientError,
    HandshakeError,
    InvalidArgumentError,
    MessageDiscardedError,
    OutboxFullError,
    ReconnectPolicy,
    UnknownMessageError,
)
from avatar_im.server import ReferenceServer
from avatar_im.transport import Transport


def started(client: AvatarIM) -> AvatarIM:
    client.start_session()
    client.wait_session_ready(TIMEOUT)
    return client


def join_all(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.join(TIMEOUT)
    assert not [t for t in threads if t.is_alive()]


# ---------------------------------------------------------------- generations


def test_concurrent_connects_start_one_reader(make_client: ClientFactory) -> None:
    """Eight threads calling connect() at once start exactly one reader; close() ends it."""
    pause = threading.Event()

    def on_state(state: ConnectionState) -> None:
        if state is ConnectionState.CONNECTING:
            pause.wait(0.02)  # an application's slow callback widens any race window

    for _ in range(10):
        client = make_client(auto_connect=False, on_state=on_state)
        barrier = threading.Barrier(8)

        def connect(client: AvatarIM = client, barrier: threading.Barrier = barrier) -> None:
            barrier.wait(TIMEOUT)
            client.connect()

        threads = [threading.Thread(target=connect) for _ in range(8)]
        for thread in threads:
            thread.start()
        join_all(threads)
        client.wait_connected(TIMEOUT)
        readers = [t for t in client.threads if t.name.startswith("avatar-im-reader-")]
        assert len(readers) == 1
        client.close()
        assert client.threads == []


def test_connect_on_a_live_client_keeps_the_outbox(
    server: ReferenceServer, make_client: ClientFactory
) -> None:
    """A late connect() on a connecting client changes nothing: queued ids are delivered."""
    client = make_client()
    client.start_session()
    ids = [client.send_text(f"t{n}") for n in range(20)]
    client.connect()  # already connecting or open: a no-op
    for message_id in ids:
        client.wait_ack(message_id, TIMEOUT)
    assert server.session("s0").texts == [f"t{n}" for n in range(20)]


# ---------------------------------------------------------------- close, always bounded


def test_close_returns_when_on_state_needs_a_lock_the_caller_holds(
    make_client: ClientFactory,
) -> None:
    """on_state blocking on a lock held by close()'s caller cannot make close() hang."""
    app_lock = threading.Lock()
    seen: list[ConnectionState] = []

    def on_state(state: ConnectionState) -> None:
        with app_lock:
            seen.append(state)

    client = make_client(on_state=on_state)
    client.wait_connected(TIMEOUT)
    closed = threading.Event()

    def close_holding_the_lock() -> None:
        with app_lock:
            client.close()
        closed.set()

    closer = threading.Thread(target=close_holding_the_lock)
    closer.start()
    assert closed.wait(TIMEOUT), "close() hung"
    closer.join(TIMEOUT)
    # Once the lock is free the callback runs, and its thread ends.
    join_all([t for t in client_threads() if t.name.startswith("avatar-im-callbacks")])
    assert seen[-1] is ConnectionState.CLOSED


def test_close_from_on_state_connecting(server: ReferenceServer) -> None:
    """close() inside on_state(CONNECTING) closes the client; no error, no thread left."""
    done = threading.Event()
    errors: list[BaseException] = []
    holder: list[AvatarIM] = []

    def on_state(state: ConnectionState) -> None:
        if state is ConnectionState.CONNECTING:
            try:
                holder[0].close()
            except BaseException as exc:
                errors.append(exc)
            done.set()

    client = AvatarIM(
        token="t",
        app_id="a",
        tenant_id="b",
        session_id="s",
        url=server.url,
        on_state=on_state,
        auto_connect=False,
    )
    holder.append(client)
    client.connect()
    assert done.wait(TIMEOUT)
    assert errors == [] and client.closed
    client.close()
    join_all(client.threads)


def test_close_and_connect_from_callbacks(
    server: ReferenceServer, make_client: ClientFactory
) -> None:
    """A message callback may close the client, and a state callback may connect it again."""
    reconnected = threading.Event()
    calls: list[str] = []
    holder: list[AvatarIM] = []

    def on_message(message: dict[str, object]) -> None:
        if not calls:
            calls.append("close")
            holder[0].close()

    def on_state(state: ConnectionState) -> None:
        if state is ConnectionState.CLOSED and calls == ["close"]:
            calls.append("connect")
            holder[0].connect()
        elif state is ConnectionState.OPEN and calls == ["close", "connect"]:
            reconnected.set()

    client = make_client(on_message=on_message, on_state=on_state)
    holder.append(client)
    client.start_session()
    assert reconnected.wait(TIMEOUT)
    assert client.state is ConnectionState.OPEN
    started(client)
    client.wait_ack(client.send_text("after"), TIMEOUT)


# ---------------------------------------------------------------- callbacks never on the reader


def test_base_exception_in_a_callback_leaves_the_client_working(
    make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """SystemExit from on_message is logged and counted; the client goes on sending."""
    calls: list[object] = []
    later = threading.Event()

    def on_message(message: dict[str, object]) -> None:
        calls.append(message)
        if len(calls) == 1:
            raise SystemExit(3)
        later.set()  # callbacks run in order: the SystemExit was handled before this

    client = started(make_client(on_message=on_message))
    client.wait_ack(client.send_text("still here"), TIMEOUT)
    assert later.wait(TIMEOUT), "no callback ran after the SystemExit"
    assert client.state is ConnectionState.OPEN
    assert client.stats.callback_errors >= 1
    assert "raised; the client goes on" in caplog.text


def test_slow_callback_does_not_stop_the_heartbeat(
    server: ReferenceServer, make_client: ClientFactory
) -> None:
    """A callback blocked for several heartbeats: pings go on, no dead peer, no reconnect."""
    release = threading.Event()
    entered = threading.Event()

    def on_message(message: dict[str, object]) -> None:
        entered.set()
        release.wait(4 * TIMEOUT)

    client = make_client(on_message=on_message, heartbeat_interval=0.05)
    started(client)
    assert entered.wait(TIMEOUT)
    pings = server.stats.pings_answered
    # Ten heartbeats while the callback is blocked, which is longer than the dead-peer limit.
    assert server.wait_for(lambda: server.stats.pings_answered >= pings + 10, TIMEOUT)
    client.wait_ack(client.send_text("meanwhile"), TIMEOUT)
    release.set()
    assert client.stats.reconnects == 0 and client.state is ConnectionState.OPEN


def test_send_from_a_callback_waits_for_room_without_deadlock(
    make_client: ClientFactory,
) -> None:
    """A callback that sends into a full outbox gets room as acks arrive (they are read)."""
    sent: list[str] = []
    done = threading.Event()
    holder: list[AvatarIM] = []

    def on_message(message: dict[str, object]) -> None:
        if done.is_set() or sent:
            return
        for n in range(20):
            sent.append(holder[0].send_text(f"from callback {n}"))
        done.set()

    client = make_client(on_message=on_message, max_outbox=2, send_timeout=TIMEOUT)
    holder.append(client)
    client.start_session()
    assert done.wait(2 * TIMEOUT)
    client.flush(TIMEOUT)
    assert len(sent) == 20


# ---------------------------------------------------------------- sends never block on the peer


def test_sends_never_block_on_a_peer_that_stops_reading() -> None:
    """Against a peer that never reads, 30 MB of sends return; a full outbox raises in time."""
    with silent_websocket_server() as url:
        client = AvatarIM(
            token="t",
            app_id="a",
            tenant_id="b",
            session_id="s",
            url=url,
            heartbeat_interval=None,
            max_outbox=600,
            send_timeout=0.2,
        )
        try:
            client.wait_connected(TIMEOUT)
            client.send_message({"type": "start"})
            outcome: list[BaseException] = []

            def flood() -> None:
                try:
                    for _ in range(700):
                        client.send_message({"blob": "x" * 50_000})
                except BaseException as exc:
                    outcome.append(exc)

            sender = threading.Thread(target=flood)
            sender.start()
            sender.join(4 * TIMEOUT)
            assert not sender.is_alive(), "a send blocked on the socket"
            assert len(outcome) == 1 and isinstance(outcome[0], OutboxFullError)
        finally:
            client.close()


# ---------------------------------------------------------------- wait_ack answers truthfully


def test_wait_ack_on_an_unknown_id_raises(make_client: ClientFactory) -> None:
    """An id this client never sent (a typo) raises UnknownMessageError, never returns."""
    client = started(make_client())
    message_id = client.send_text("hi")
    client.wait_ack(message_id, TIMEOUT)
    with pytest.raises(UnknownMessageError):
        client.wait_ack(message_id + "x", TIMEOUT)


def test_wait_ack_on_a_message_discarded_at_close_raises() -> None:
    """A message still unacked at close() is reported as discarded, before and after reconnect."""
    with silent_websocket_server() as url:
        client = AvatarIM(token="t", app_id="a", tenant_id="b", session_id="s", url=url)
        try:
            client.wait_connected(TIMEOUT)
            message_id = client.send_message({"type": "ping"})
            client.close()
            with pytest.raises(MessageDiscardedError) as caught:
                client.wait_ack(message_id, TIMEOUT)
            assert isinstance(caught.value, ClientClosedError)
            client.connect(TIMEOUT)
            with pytest.raises(MessageDiscardedError):
                client.wait_ack(message_id, TIMEOUT)
        finally:
            client.close()


def test_wait_ack_after_the_outcome_is_forgotten_raises(make_client: ClientFactory) -> None:
    """Outcomes are remembered for max(4096, max_outbox) ids; an older one is unknown, not acked."""
    client = started(make_client(max_outbox=10, send_timeout=TIMEOUT))
    first = client.send_text("first")
    client.wait_ack(first, TIMEOUT)
    for n in range(4100):
        client.send_text(f"t{n}")
    client.flush(4 * TIMEOUT)
    with pytest.raises(UnknownMessageError):
        client.wait_ack(first, TIMEOUT)


def test_wait_ack_on_a_refused_message_still_raises_ack_error(make_client: ClientFactory) -> None:
    """A refusal is still reported as AckError."""
    client = make_client()
    message_id = client.send_message({"type": "dataSend", "sessionId": "nope", "text": "x"})
    with pytest.raises(AckError):
        client.wait_ack(message_id, TIMEOUT)


# ---------------------------------------------------------------- session flag


def test_session_ready_stays_clear_when_stopped_before_the_start_result(
    server: ReferenceServer, make_client: ClientFactory
) -> None:
    """start then stop before the startResult: the flag and start_result are not set later."""
    client = make_client()
    client.start_session()
    stop_id = client.stop_session()
    client.wait_ack(stop_id, TIMEOUT)
    client.flush(TIMEOUT)
    assert server.wait_for(lambda: server.stats.acks_sent >= 2, TIMEOUT)
    assert not client.session_ready.is_set()
    assert client.session_state.value == "stopped"


# ---------------------------------------------------------------- backoff


@contextmanager
def accept_then_drop_server() -> Iterator[tuple[str, list[int]]]:
    """A WebSocket server that completes the handshake, sends `1`, then closes at once."""
    from websockets.sync.server import ServerConnection, serve

    accepted: list[int] = []

    def handler(connection: ServerConnection) -> None:
        accepted.append(1)
        connection.send("1")
        connection.close()

    with serve(handler, "127.0.0.1", 0, ping_interval=None) as srv:
        thread = threading.Thread(target=srv.serve_forever, name="drop-server")
        thread.start()
        try:
            yield f"ws://127.0.0.1:{srv.socket.getsockname()[1]}/ws", accepted
        finally:
            srv.shutdown()
            thread.join(TIMEOUT)


def test_backoff_grows_against_a_server_that_accepts_and_drops() -> None:
    """Connections that carry no ack do not reset the backoff: max_attempts is reached."""
    policy = ReconnectPolicy(initial_delay=0.01, multiplier=2.0, max_delay=0.2, max_attempts=6)
    with accept_then_drop_server() as (url, accepted):
        client = AvatarIM(
            token="t", app_id="a", tenant_id="b", session_id="s", url=url, reconnect=policy
        )
        try:
            assert client._connection.wait_for(lambda p: False, 4 * TIMEOUT) is False
            assert client.closed, "the reconnect attempts never ran out"
            assert client._connection.failure is not None
            assert len(accepted) <= 8
        finally:
            client.close()


# ---------------------------------------------------------------- forks


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_client_made_before_fork_refuses_use_in_the_child(
    server: ReferenceServer, make_client: ClientFactory
) -> None:
    """In the child: a typed error at once, never a byte on the parent's socket."""
    client = started(make_client())
    server.faults.ack_delay = 1.0  # an ack the parent still waits for at the fork
    pending = client.send_text("pending at the fork")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave, whatever happens
        report: dict[str, object] = {}
        try:
            report["closed"] = client.closed
            try:
                client.send_text("from the child")
            except ForkedClientError as exc:
                report["error"] = str(exc)
            refused = []
            for call in (
                lambda: client.receive(0.1),
                lambda: client.flush(0.1),
                lambda: client.wait_ack(pending, 0.1),
            ):
                try:
                    call()
                except ForkedClientError:
                    refused.append(True)
            report["refused"] = len(refused)
            client.close()
            report["threads"] = len(client.threads)
        except BaseException as exc:
            report["crash"] = repr(exc)
        os.write(write_end, json.dumps(report).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        report = json.loads(pipe.read() or "{}")
    _, status = os.waitpid(pid, 0)
    assert status == 0
    assert report.get("closed") is True and "make a new client" in str(report.get("error"))
    assert report.get("threads") == 0 and report.get("refused") == 3, report
    # The parent's connection is untouched by the child's close().
    server.faults.ack_delay = 0
    client.wait_ack(pending, 2 * TIMEOUT)
    client.wait_ack(client.send_text("from the parent"), TIMEOUT)
    assert client.state is ConnectionState.OPEN
    assert server.session("s0").texts == ["pending at the fork", "from the parent"]
    assert server.stats.connections_total == 1


# ---------------------------------------------------------------- bad input at the call


@pytest.mark.parametrize("value", [float("inf"), float("nan"), 1e300, -1.0, 1e-9])
def test_heartbeat_interval_must_be_finite(value: float) -> None:
    """A non-finite or huge heartbeat interval raises at the constructor, never in a thread."""
    with pytest.raises(InvalidArgumentError):
        AvatarIM(token="t", app_id="a", tenant_id="b", session_id="s", heartbeat_interval=value)


@pytest.mark.parametrize("value", [float("inf"), float("nan"), 1e300])
def test_timeouts_must_be_finite(make_client: ClientFactory, value: float) -> None:
    """A wait's timeout of inf, nan or 1e300 raises InvalidArgumentError, not OverflowError."""
    client = make_client()
    with pytest.raises(InvalidArgumentError):
        client.wait_connected(value)
    with pytest.raises(InvalidArgumentError):
        client.receive(value)


def test_an_unclosed_ipv6_bracket_in_the_url_is_a_typed_error() -> None:
    """url='ws://[::1' raises InvalidArgumentError, not a bare ValueError."""
    with pytest.raises(InvalidArgumentError):
        AvatarIM(token="t", app_id="a", tenant_id="b", session_id="s", url="ws://[::1")


def test_non_finite_numbers_are_refused_at_the_call(make_client: ClientFactory) -> None:
    """send_message with NaN or Infinity raises; nothing invalid goes on the wire."""
    client = make_client()
    for value in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(InvalidArgumentError):
            client.send_message({"x": value})
    assert client.stats.outbox == 0


# ---------------------------------------------------------------- redirects


def test_a_redirect_at_the_upgrade_is_refused_not_followed() -> None:
    """HTTP 302 at the handshake: a HandshakeError naming it; websocket-client does not follow."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    requests: list[bytes] = []

    def serve() -> None:
        listener.settimeout(TIMEOUT)
        for _ in range(2):
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            listener.settimeout(0.5)  # a second attempt (a retry) would come at once
            with conn:
                requests.append(conn.recv(4096))
                conn.sendall(
                    b"HTTP/1.1 302 Found\r\nLocation: ws://127.0.0.1:9/elsewhere\r\n"
                    b"Content-Length: 0\r\n\r\n"
                )

    thread = threading.Thread(target=serve)
    thread.start()
    client = AvatarIM(
        token="t", app_id="a", tenant_id="b", session_id="s", url=f"ws://127.0.0.1:{port}/ws"
    )
    try:
        with pytest.raises(HandshakeError) as caught:
            client.wait_connected(TIMEOUT)
        assert "redirect" in str(caught.value)
        assert client.closed and len(requests) == 1
    finally:
        client.close()
        listener.close()
        thread.join(TIMEOUT)


# ---------------------------------------------------------------- a backlog over a slow link


class SlowLinkPeer:
    """A hand-made WebSocket server on a raw socket that reads slowly, as over a slow link.

    It completes the handshake only once :attr:`go` is set, sends `1`, then a `4` every
    20 ms (so a client that keeps reading sees a live peer) while it reads at most
    *rate* bytes per second.  It counts connections and bytes received.
    """

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.go = threading.Event()
        self.stop = threading.Event()
        self.connections = 0
        self.received = 0
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.url = f"ws://127.0.0.1:{self.listener.getsockname()[1]}/ws"
        self.thread = threading.Thread(target=self._serve, name="slow-link-peer")
        self.thread.start()

    def _serve(self) -> None:
        self.listener.settimeout(0.05)
        deadline = time.monotonic() + 6 * TIMEOUT
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            self.connections += 1
            with conn:
                conn.settimeout(TIMEOUT)
                request = b""
                while b"\r\n\r\n" not in request:
                    request += conn.recv(4096)
                key = next(
                    line.split(b":", 1)[1].strip()
                    for line in request.split(b"\r\n")
                    if line.lower().startswith(b"sec-websocket-key")
                )
                accept = base64.b64encode(
                    hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
                )
                self.go.wait(TIMEOUT)
                conn.sendall(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
                )
                conn.sendall(b"\x81\x011")
                conn.settimeout(0.02)
                while not self.stop.is_set() and time.monotonic() < deadline:
                    conn.sendall(b"\x81\x014")  # liveness, unasked
                    try:
                        data = conn.recv(self.rate // 50)
                    except TimeoutError:
                        continue
                    if not data:
                        break
                    self.received += len(data)
                    self.stop.wait(0.02)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(TIMEOUT)
        self.listener.close()


def test_reading_goes_on_while_a_backlog_drains_over_a_slow_link() -> None:
    """12 MB queued before the handshake drain at ~10 MB/s; the peer never looks dead."""
    peer = SlowLinkPeer(rate=10_000_000)
    client = AvatarIM(
        token="t",
        app_id="a",
        tenant_id="b",
        session_id="s",
        url=peer.url,
        heartbeat_interval=0.1,  # dead after 0.3 s without a frame from the peer
    )
    try:
        blob = "x" * 60_000
        for _ in range(200):
            client.send_message({"blob": blob})
        peer.go.set()
        client.wait_connected(TIMEOUT)
        assert wait_until(lambda: peer.received >= 200 * 60_000, 4 * TIMEOUT), peer.received
        assert peer.connections == 1 and client.stats.reconnects == 0
        assert client.state is ConnectionState.OPEN
    finally:
        client.close()
        peer.close()


# ---------------------------------------------------------------- flush tells the truth


def flush_in_thread(client: AvatarIM) -> tuple[threading.Thread, list[BaseException | None]]:
    """Start client.flush() on a thread; its outcome (None or the error) lands in the list."""
    outcome: list[BaseException | None] = []

    def flush() -> None:
        try:
            client.flush(4 * TIMEOUT)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    flusher = threading.Thread(target=flush)
    flusher.start()
    return flusher, outcome


def test_flush_raises_when_close_discards_what_it_waits_for() -> None:
    """A flush waiting while another thread closes raises; it never reports success."""
    with silent_websocket_server() as url:
        client = AvatarIM(token="t", app_id="a", tenant_id="b", session_id="s", url=url)
        try:
            client.wait_connected(TIMEOUT)
            client.send_message({"type": "never acked"})
            flusher, outcome = flush_in_thread(client)
            client.close()
            flusher.join(TIMEOUT)
            assert len(outcome) == 1 and isinstance(outcome[0], MessageDiscardedError)
            with pytest.raises(ClientClosedError):
                client.flush(TIMEOUT)
        finally:
            client.close()


def test_flush_raises_when_the_server_closes_for_good(
    server: ReferenceServer, make_client: ClientFactory
) -> None:
    """A final `2` while flush() waits for acks: it raises the server's reason."""
    from avatar_im import ServerClosedError

    client = started(make_client())
    server.faults.drop_acks = True
    client.send_text("unacked")
    flusher, outcome = flush_in_thread(client)
    server.disconnect("CONNECTION_KICK_OUT")
    flusher.join(2 * TIMEOUT)
    assert len(outcome) == 1 and isinstance(outcome[0], MessageDiscardedError)
    assert isinstance(outcome[0].__cause__, ServerClosedError)


def test_without_acks_a_message_counts_only_once_the_socket_took_it() -> None:
    """require_acks=False against a peer that stops reading: buffered is not delivered."""
    with silent_websocket_server() as url:
        client = AvatarIM(
            token="t",
            app_id="a",
            tenant_id="b",
            session_id="s",
            url=url,
            require_acks=False,
            heartbeat_interval=None,
            max_outbox=2000,
        )
        try:
            client.wait_connected(TIMEOUT)
            ids = [client.send_message({"blob": "x" * 50_000}) for _ in range(400)]
            with pytest.raises(AckTimeout):
                client.wait_ack(ids[-1], 0.2)  # 20 MB cannot all be in the socket
            assert client.stats.outbox > 0
        finally:
            client.close()


# --- close() during a TLS handshake -------------------------------------------------------
# close() must end a connect attempt at once and leave no thread behind.


def test_close_during_tls_handshake_leaves_no_reader_thread() -> None:
    """wss:// to a peer that accepts TCP but never answers the TLS ClientHello.

    websocket-client assigns ``ws.sock`` only after TCP connect + TLS handshake
    return, so ``Transport.abort()`` finds ``sock is None`` and cannot interrupt
    them: the reader sits in the TLS handshake until ``connect_timeout`` (10 s
    by default) and outlives close().
    """
    with tcp_blackhole() as hole:
        url = hole.url.replace("ws://", "wss://")
        client = AvatarIM(
            token="t", app_id="a", tenant_id="b", session_id="s", url=url, connect_timeout=3.0
        )
        assert hole.wait_accepted(1, TIMEOUT)  # the reader is now inside the TLS handshake
        started = time.monotonic()
        client.close()
        assert time.monotonic() - started < 1.5
        # The promise: no client thread outlives close().
        assert client.threads == [], "reader still alive after close()"


def test_connect_after_close_is_not_a_silent_no_op() -> None:
    """After close() left the reader in the handshake, connect() does nothing at all:
    Connection.start() returns because the old reader is alive, the client stays CLOSED."""
    with tcp_blackhole() as hole:
        url = hole.url.replace("ws://", "wss://")
        client = AvatarIM(
            token="t", app_id="a", tenant_id="b", session_id="s", url=url, connect_timeout=3.0
        )
        assert hole.wait_accepted(1, TIMEOUT)
        client.close()
        client.connect()
        try:
            assert client.state is not ConnectionState.CLOSED, "connect() silently did nothing"
        finally:
            client.close()
            for t in client.threads:
                t.join(15)


# --- flush() without acks -----------------------------------------------------------------
# with require_acks=False, flush() must not return before the frames are written.


def test_flush_without_acks_waits_for_the_write(
    server: ReferenceServer, make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With require_acks=False, flush() returns only once the frames were written: a slow
    write (a full socket buffer) makes it wait, so close() never loses what it promised."""
    client = make_client(require_acks=False)
    client.start_session()
    client.wait_session_ready(TIMEOUT)

    original = Transport.write
    entered, release = threading.Event(), threading.Event()

    def slow_send_frames(self: Transport, frames: list[str]) -> None:
        if any('"text":"x"' in f for f in frames):
            entered.set()
            release.wait(TIMEOUT)
        original(self, frames)

    monkeypatch.setattr(Transport, "write", slow_send_frames)
    sender = threading.Thread(target=client.send_text, args=("x",))
    sender.start()
    assert entered.wait(TIMEOUT)
    returned = True
    try:
        client.flush(0.5)  # documented: "waits until everything has been written"
    except AckTimeout:
        returned = False  # correct: the write has not happened yet
    client.close()
    release.set()
    sender.join(TIMEOUT)
    if returned:
        assert server.session("s0").texts == ["x"], "flush() returned, yet 'x' was never written"


# --- memory without acks ------------------------------------------------------------------
# with require_acks=False the protocol's event list grows without bound


def test_events_stay_bounded_without_acks_while_the_reader_sleeps(
    server: ReferenceServer, make_client: ClientFactory
) -> None:
    """With require_acks=False, no heartbeat and a server that sends nothing back, 20,000
    sends leave no pile of events in memory (the reader never wakes to pull them)."""
    server.faults.drop_acks = True  # a service that never acknowledges (the use case)
    client = make_client(require_acks=False, heartbeat_interval=None)
    client.wait_connected(TIMEOUT)
    n = 20_000
    for i in range(n):
        client.send_message({"n": i})  # no reply from the server, and no ack
    client.flush(TIMEOUT)
    pending_events = client._connection.locked(lambda p: len(p._events))
    assert pending_events < 1000, f"{pending_events} events held in memory for {n} sends"
