"""Reliability: reconnects, the outbox, acks and injected faults, over loopback."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from conftest import TIMEOUT, ClientFactory
from peers import PausableProxy, tcp_blackhole

from avatar_im import (
    AckTimeout,
    AvatarIM,
    ConnectionState,
    OutboxFullError,
    ReconnectPolicy,
    ServerClosedError,
    SessionState,
)
from avatar_im.server import ReferenceServer

FAST = ReconnectPolicy(initial_delay=0.02, max_delay=0.2)


class StateLog:
    """Records on_state transitions and lets a test wait for one."""

    def __init__(self) -> None:
        self.states: list[tuple[float, ConnectionState]] = []
        self._changed = threading.Condition()

    def __call__(self, state: ConnectionState) -> None:
        with self._changed:
            self.states.append((time.monotonic(), state))
            self._changed.notify_all()

    def wait(self, state: ConnectionState, count: int = 1, timeout: float = TIMEOUT) -> float:
        """Wait until *state* was entered *count* times; return when it last was."""
        with self._changed:
            assert self._changed.wait_for(
                lambda: sum(1 for _, s in self.states if s is state) >= count, timeout
            ), f"never reached {state} x{count}: {self.states}"
            return [t for t, s in self.states if s is state][count - 1]


def ready(client: AvatarIM) -> AvatarIM:
    client.start_session()
    client.wait_session_ready(TIMEOUT)
    return client


def test_10000_sends_across_three_server_restarts(
    server: ReferenceServer, make_client: ClientFactory
) -> None:
    """10,000 texts while the server restarts 3 times: each arrives exactly once, in order."""
    total = 10_000
    client = ready(make_client(reconnect=FAST, send_timeout=TIMEOUT * 6))
    sender = threading.Thread(target=lambda: [client.send_text(f"m{i}") for i in range(total)])
    sender.start()
    for mark in (2_000, 4_500, 7_000):
        assert server.wait_for(lambda m=mark: server.stats.messages_processed >= m, TIMEOUT * 6)
        server.restart()
    sender.join(TIMEOUT * 6)
    client.flush(TIMEOUT * 6)
    texts = server.session("s0").texts
    assert texts == [f"m{i}" for i in range(total)]
    assert client.stats.outbox == 0
    assert client.stats.reconnects >= 3
    assert server.stats.duplicates >= 0  # resent-but-already-received messages were deduplicated


@pytest.mark.parametrize("reason", ["HEARTBEAT_TIMEOUT", "SERVER_CONNECTION_CLOSED", "UNIT_SWITCH"])
def test_reconnect_reasons_reconnect_and_keep_the_session(
    reason: str, server: ReferenceServer, make_client: ClientFactory
) -> None:
    """`2` with a transient reason: the client reconnects and the session goes on."""
    log = StateLog()
    client = ready(make_client(reconnect=FAST, on_state=log))
    server.disconnect(reason)
    log.wait(ConnectionState.OPEN, count=2)
    mid = client.send_text("after")
    client.wait_ack(mid, TIMEOUT)
    assert client.session_state is SessionState.READY
    assert server.session("s0").texts == ["after"]
    assert client.stats.reconnects == 1


@pytest.mark.parametrize("reason", ["CONNECTION_KICK_OUT", "CONNECTION_TIMEOUT"])
def test_final_reasons_close_for_good(
    reason: str, server: ReferenceServer, make_client: ClientFactory
) -> None:
    """`2` with a final reason: closed for good; later calls raise ServerClosedError naming it."""
    log = StateLog()
    client = ready(make_client(reconnect=FAST, on_state=log))
    server.disconnect(reason)
    log.wait(ConnectionState.CLOSED)
    with pytest.raises(ServerClosedError) as info:
        client.send_text("x")
    assert info.value.reason == reason


def test_abrupt_drop_reconnects_and_resends(
    server: ReferenceServer, make_client: ClientFactory
) -> None:
    """A connection dropped at TCP level: reconnect, unacked messages resent in order."""
    log = StateLog()
    client = ready(make_client(reconnect=FAST, on_state=log))
    server.faults.drop_acks = True
    ids = [client.send_text(f"t{i}") for i in range(5)]
    assert server.wait_for(lambda: len(server.session("s0").texts) == 5, TIMEOUT)
    server.faults.drop_acks = False
    server.drop_connections()
    log.wait(ConnectionState.OPEN, count=2)
    for mid in ids:
        client.wait_ack(mid, TIMEOUT)
    assert server.session("s0").texts == [f"t{i}" for i in range(5)]
    assert client.stats.messages_resent >= 5


def test_half_open_connection_detected(server: ReferenceServer) -> None:
    """A proxy that stops forwarding: dead peer found within 2 x interval + 1 s; reconnect."""
    interval = 0.2
    proxy = PausableProxy(server.port)
    log = StateLog()
    client = AvatarIM(
        token="t",
        app_id="a",
        tenant_id="b",
        session_id="s",
        url=proxy.url,
        heartbeat_interval=interval,
        reconnect=FAST,
        on_state=log,
    )
    try:
        ready(client)
        log.wait(ConnectionState.OPEN)
        paused_at = time.monotonic()
        proxy.pause()
        detected_at = log.wait(ConnectionState.RECONNECTING)
        assert detected_at - paused_at <= 2 * interval + 1.0
        log.wait(ConnectionState.OPEN, count=2)
        mid = client.send_text("through a new connection")
        client.wait_ack(mid, TIMEOUT)
    finally:
        client.close()
        proxy.close()


def test_server_stops_answering_heartbeats(
    server: ReferenceServer, make_client: ClientFactory
) -> None:
    """No `4` for 2 x interval + 0.1 s: the client reconnects on its own."""
    log = StateLog()
    make_client(heartbeat_interval=0.1, reconnect=FAST, on_state=log)
    log.wait(ConnectionState.OPEN)
    server.faults.answer_heartbeats = False
    log.wait(ConnectionState.RECONNECTING)
    server.faults.answer_heartbeats = True
    log.wait(ConnectionState.OPEN, count=2)


def test_handshake_never_completes_times_out_and_backs_off() -> None:
    """TCP accepted, no handshake: attempts time out, are retried with backoff; close() prompt."""
    with tcp_blackhole() as hole:
        log = StateLog()
        client = AvatarIM(
            token="t",
            app_id="a",
            tenant_id="b",
            session_id="s",
            url=hole.url,
            connect_timeout=0.1,
            reconnect=ReconnectPolicy(initial_delay=0.05, max_delay=0.1),
            on_state=log,
        )
        assert hole.wait_accepted(3, TIMEOUT)  # each attempt timed out and was retried
        assert client.state is not ConnectionState.OPEN
        started = time.monotonic()
        client.close()
        assert time.monotonic() - started < 1.0
        assert client.threads == []


def test_refused_handshake_503_is_retried(
    server: ReferenceServer, make_client: ClientFactory
) -> None:
    """A 503 at the handshake is transient: the client backs off and gets in when it clears."""
    server.faults.refuse_handshake = 503
    log = StateLog()
    client = make_client(reconnect=FAST, on_state=log)
    log.wait(ConnectionState.RECONNECTING)
    server.faults.refuse_handshake = None
    log.wait(ConnectionState.OPEN)
    ready(client)


def test_restart_without_state_restarts_the_session(
    server: ReferenceServer, make_client: ClientFactory
) -> None:
    """The server forgot the session: the client starts it again and resends, in order."""
    log = StateLog()
    client = ready(make_client(reconnect=FAST, on_state=log))
    client.flush(TIMEOUT)
    server.restart(keep_state=False)
    log.wait(ConnectionState.OPEN, count=2)
    ids = [client.send_text(f"x{i}") for i in range(3)]
    for mid in ids:
        client.wait_ack(mid, TIMEOUT)
    assert server.session("s0").texts == ["x0", "x1", "x2"]
    assert client.session_state is SessionState.READY
    assert client.stats.session_restarts == 1


def test_dropped_acks_time_out_and_delivery_on_write_mode(
    server: ReferenceServer, make_client: ClientFactory
) -> None:
    """No acks: wait_ack raises AckTimeout; with require_acks=False flush() returns once written."""
    server.faults.drop_acks = True
    client = ready(make_client())
    mid = client.send_text("unacked")
    with pytest.raises(AckTimeout):
        client.wait_ack(mid, 0.2)
    fire_and_forget = ready(make_client(require_acks=False, session_id="s-noack"))
    fire_and_forget.send_text("written is enough")
    fire_and_forget.flush(TIMEOUT)
    assert server.wait_for(
        lambda: server.session("s-noack").texts == ["written is enough"], TIMEOUT
    )


def test_delayed_acks_still_counted(server: ReferenceServer, make_client: ClientFactory) -> None:
    """Acks held back by the server arrive later; flush() waits for them."""
    server.faults.ack_delay = 0.05
    client = ready(make_client())
    for i in range(10):
        client.send_text(f"d{i}")
    client.flush(TIMEOUT)
    assert client.stats.outbox == 0


def test_full_outbox_raises_or_blocks(server: ReferenceServer, make_client: ClientFactory) -> None:
    """A full outbox raises at once by default, and after send_timeout when one is set."""
    server.faults.drop_acks = True
    client = ready(make_client(max_outbox=3))
    for _ in range(2):
        client.send_text("fill")
    with pytest.raises(OutboxFullError):
        client.send_text("one too many")
    blocking = ready(make_client(max_outbox=2, send_timeout=0.1, session_id="s-block"))
    blocking.send_text("fill")
    with pytest.raises(OutboxFullError):
        blocking.send_text("waits 0.1 s then raises")


def test_server_garbage_is_logged_and_counted(
    server: ReferenceServer, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Non-digit, unknown digit, bad JSON, wrong shape, binary, 10 MB: logged, counted, survived."""
    client = ready(make_client())
    server.faults.drop_acks = True
    queued = [client.send_text(f"q{i}") for i in range(3)]
    garbage: list[str | bytes] = [
        "hello",
        "8",
        "5{not json",
        '6["list"]',
        b"\x01\x02",
        "x" * 10_000_000,
    ]
    with caplog.at_level(logging.WARNING, logger="avatar_im"):
        for frame in garbage:
            server.send_raw(frame)
        server.send_message({"type": "marker"})
        while client.receive(TIMEOUT)["content"]["type"] != "marker":
            pass
    assert client.stats.garbage_frames == len(garbage)
    assert len([r for r in caplog.records if "bad frame" in r.getMessage()]) == len(garbage)
    server.faults.drop_acks = False
    server.drop_connections()  # the queued messages are resent on the new connection and acked
    for mid in queued:
        client.wait_ack(mid, TIMEOUT)
    assert client.state is ConnectionState.OPEN


def test_state_transitions_observable(server: ReferenceServer, make_client: ClientFactory) -> None:
    """on_state reports connecting, open, reconnecting, open, closed."""
    log = StateLog()
    client = make_client(reconnect=FAST, on_state=log)
    log.wait(ConnectionState.OPEN)
    assert server.wait_for_connections(1, TIMEOUT)  # the server's side is registered too
    server.drop_connections()
    log.wait(ConnectionState.OPEN, count=2)
    client.close()
    assert [s for _, s in log.states] == [
        ConnectionState.CONNECTING,
        ConnectionState.OPEN,
        ConnectionState.RECONNECTING,
        ConnectionState.OPEN,
        ConnectionState.CLOSED,
    ]


def test_server_rate_limit_is_waited_out(make_client: ClientFactory) -> None:
    """A rate-limiting server refuses a burst; the client pauses, resends; each arrives once.

    Order is not asserted: a token refilled mid-burst admits a later message before an
    earlier refused one, which no client can undo (documented in docs/security.md).
    """
    with ReferenceServer(rate_limit=200, rate_burst=50) as limited:
        client = ready(make_client(url=limited.url))
        for i in range(100):
            client.send_text(f"r{i}")
        client.flush(TIMEOUT)
        texts = limited.session("s0").texts
        assert sorted(texts) == sorted(f"r{i}" for i in range(100)) and len(set(texts)) == 100
        assert client.stats.rate_limited >= 1


def test_blocked_sender_resumes_when_one_slot_frees(
    server: ReferenceServer, make_client: ClientFactory
) -> None:
    """A sender blocked on a full outbox proceeds as soon as a single ack frees a slot."""
    client = ready(make_client(max_outbox=16, send_timeout=60))
    server.faults.ack_delay = 0.5
    first = client.send_text("m0")
    assert server.wait_for(lambda: len(server.session("s0").texts) == 1, TIMEOUT)
    server.faults.drop_acks = True  # m0's ack is already scheduled; no other ack will come
    for i in range(1, 16):
        client.send_text(f"m{i}")
    assert server.wait_for(lambda: len(server.session("s0").texts) == 16, TIMEOUT)
    # The outbox is full: this send waits for m0's ack, the one slot that will ever free.
    blocked = threading.Thread(target=client.send_text, args=("m16",))
    blocked.start()
    try:
        assert server.wait_for(lambda: len(server.session("s0").texts) == 17, TIMEOUT)
        client.wait_ack(first, 0)
    finally:
        client.close()  # wakes the sender if it is still waiting
        blocked.join(TIMEOUT)


# --- a server replaced by a fresh process -------------------------------------------------
# a server restarted as a new process (fresh state) must not wedge the session.


def test_new_server_process_on_same_port_session_restarts() -> None:
    """Server process A is replaced by a fresh process B on the same port (a deploy, a crash).

    B numbers its messages srv_1, srv_2, ... again.  The client answers B's
    SESSION_NOT_FOUND with a new start; B's startResult is srv_1, an id the
    client remembers from A, so ClientProtocol._on_message drops it as a
    duplicate: the session stays STARTING and every queued message is stranded.
    """
    with ReferenceServer(host="127.0.0.1", port=0) as a:
        port = a.port
        client = AvatarIM(
            token="t", app_id="a", tenant_id="b", session_id="s", url=a.url, reconnect=FAST
        )
        try:
            client.start_session()
            client.wait_session_ready(TIMEOUT)
            client.wait_ack(client.send_text("before"), TIMEOUT)
        except BaseException:
            client.close()
            raise
    try:
        with ReferenceServer(host="127.0.0.1", port=port) as b:
            mid = client.send_text("after")
            client.wait_ack(mid, TIMEOUT)  # AckTimeout: the new startResult (srv_1) was "seen"
            assert b.session("s").texts == ["after"]
            assert client.session_state is SessionState.READY
    finally:
        client.close()


# --- a stop after a forgotten session -----------------------------------------------------
# a text sent just before stop_session() is dropped (not resent) when the


def test_text_before_stop_survives_a_forgotten_session(
    server: ReferenceServer, make_client: ClientFactory
) -> None:
    client = make_client(reconnect=FAST)
    client.start_session()
    client.wait_session_ready(TIMEOUT)
    server.restart(keep_state=False)  # the session is forgotten; the connection drops
    text = client.send_text("last words")  # accepted: the client is open, nothing raised
    client.stop_session()
    # The promise: delivered exactly once while the client is open.  Actually: the
    # resent text gets SESSION_NOT_FOUND, session_state is STOPPED, so no restart:
    # the text leaves the outbox as refused -> AckError, and the server never saw it.
    client.wait_ack(text, TIMEOUT)
    assert server.session("s0").texts == ["last words"]
