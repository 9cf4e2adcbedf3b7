"""Integration tests of AvatarIM against the reference server over loopback."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable

import pytest
from conftest import TIMEOUT, ClientFactory, client_threads
from peers import silent_websocket_server, tcp_blackhole

from avatar_im import (
    AckError,
    AvatarIM,
    ClientClosedError,
    ConnectionState,
    ConnectTimeout,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    ReceiveTimeout,
    ReconnectPolicy,
    ServerClosedError,
    SessionNotStartedError,
    SessionReadyTimeout,
    SessionStartError,
    SessionState,
)
from avatar_im.server import ReferenceServer


def test_session_start_text_and_audio_round_trip(
    server: ReferenceServer, make_client: ClientFactory
) -> None:
    """start -> startResult, text -> textReply, audio -> audioReceived (echo), all acked.

    What wait_session_ready() returned is not also returned by receive().
    """
    client = make_client()
    start = client.start_session(format="pcm", sample_rate=16000)
    result = client.wait_session_ready(TIMEOUT)
    assert result.family == "start_result" and result["content"]["type"] == "startResult"
    assert client.session_ready.is_set() and client.session_state is SessionState.READY
    text = client.send_text("hello")
    audio = client.send_audio(b"\x01\x00" * 1600)
    for mid in (start, text, audio):
        client.wait_ack(mid, TIMEOUT)
    replies = [client.receive(TIMEOUT).content for _ in range(2)]
    assert [r["type"] for r in replies] == ["textReply", "audioReceived"]
    assert replies[0]["text"] == "You said: hello" and replies[0]["replyTo"] == text
    assert replies[1]["bytes"] == 3200 and replies[1]["durationMs"] == 100
    session = server.session("s0")
    assert session.texts == ["hello"] and session.audio_bytes == b"\x01\x00" * 1600


def test_wire_frames_are_the_originals(server: ReferenceServer, make_client: ClientFactory) -> None:
    """The start frame carries the original's envelope and string-valued options."""
    client = make_client()
    mid = client.start_session()
    client.wait_session_ready(TIMEOUT)
    (message_id, content) = server.session("s0").messages[0]
    assert message_id == mid
    assert content == {
        "type": "start",
        "sessionId": "s0",
        "dialogMode": "aliYunChat",
        "duplexMode": "cloud",
        "outputMode": "video",
        "videoOpen": "0",
        "format": "pcm",
        "sampleRate": "16000",
    }


def test_sends_before_ready_are_queued_in_order(
    server: ReferenceServer, make_client: ClientFactory
) -> None:
    """Texts sent right after start_session (before startResult) all arrive, in order."""
    client = make_client()
    client.start_session()
    ids = [client.send_text(f"early {i}") for i in range(20)]
    client.flush(TIMEOUT)
    assert server.session("s0").texts == [f"early {i}" for i in range(20)]
    assert len(set(ids)) == 20


def test_order_preserved_from_many_threads(server: ReferenceServer, ready_client: AvatarIM) -> None:
    """8 threads sending at once: every message acked, each thread's order kept."""
    per_thread = 200
    barrier = threading.Barrier(8)

    def sender(n: int) -> None:
        barrier.wait(TIMEOUT)
        for i in range(per_thread):
            ready_client.send_text(f"{n}:{i}")

    threads = [threading.Thread(target=sender, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT * 4)
    ready_client.flush(TIMEOUT * 4)
    texts = server.session("s0").texts
    assert len(texts) == 8 * per_thread
    for n in range(8):
        assert [t for t in texts if t.startswith(f"{n}:")] == [
            f"{n}:{i}" for i in range(per_thread)
        ]


def test_heartbeat_with_short_interval(server: ReferenceServer, make_client: ClientFactory) -> None:
    """With a 0.1 s interval the client keeps pinging and the server keeps answering."""
    client = make_client(heartbeat_interval=0.1)
    assert server.wait_for(lambda: server.stats.pings_answered >= 5, TIMEOUT)
    assert client.state is ConnectionState.OPEN and client.stats.reconnects == 0


def test_session_ready_timeout() -> None:
    """No startResult: wait_session_ready raises SessionReadyTimeout, not a hang."""
    with silent_websocket_server() as url:
        client = AvatarIM(token="t", app_id="a", tenant_id="b", session_id="s", url=url)
        try:
            client.start_session()
            with pytest.raises(SessionReadyTimeout):
                client.wait_session_ready(0.2)
        finally:
            client.close()


def test_refused_start_raises(server: ReferenceServer, make_client: ClientFactory) -> None:
    """A start the server refuses (another tenant's session) raises SessionStartError."""
    owner = make_client(session_id="shared")
    owner.start_session()
    owner.wait_session_ready(TIMEOUT)
    intruder = make_client(session_id="shared", tenant_id="other")
    intruder.start_session()
    with pytest.raises(SessionStartError) as info:
        intruder.wait_session_ready(TIMEOUT)
    assert info.value.error == "FORBIDDEN"
    with pytest.raises(SessionStartError):
        intruder.send_text("x")


def test_ack_error_callback_and_wait_ack(
    server: ReferenceServer, make_client: ClientFactory
) -> None:
    """A message the server refuses reaches on_ack_error and makes wait_ack raise AckError."""
    errors: list[AckError] = []
    got = threading.Event()
    client = make_client(on_ack_error=lambda e: (errors.append(e), got.set()))
    mid = client.send_message({"type": "dataSend", "sessionId": "nope", "text": "x"})
    with pytest.raises(AckError) as info:
        client.wait_ack(mid, TIMEOUT)
    assert info.value.error == "SESSION_NOT_FOUND"
    assert got.wait(TIMEOUT) and errors[0].message_id == mid


def test_callbacks_and_events(server: ReferenceServer, make_client: ClientFactory) -> None:
    """on_message gets every reply, on_event every `7`; receive_event pulls events too."""
    messages: list[dict[str, object]] = []
    events: list[dict[str, object]] = []
    got_event = threading.Event()
    client = make_client(
        on_message=messages.append, on_event=lambda e: (events.append(e), got_event.set())
    )
    client.start_session()
    client.wait_session_ready(TIMEOUT)
    server.send_event({"type": "avatarSpeaking", "on": True})
    assert got_event.wait(TIMEOUT)
    assert events == [{"type": "avatarSpeaking", "on": True}]
    event = client.receive_event(TIMEOUT)
    assert event.family == "event" and event.raw == events[0] and event.type == "avatarSpeaking"
    assert messages[0]["content"]["type"] == "startResult"  # type: ignore[index]


def test_pull_api_and_iterator(ready_client: AvatarIM) -> None:
    """receive() returns replies in order, times out cleanly; iteration ends at close."""
    ready_client.send_text("one")
    ready_client.send_text("two")
    assert ready_client.receive(TIMEOUT)["content"]["text"] == "You said: one"
    collected = []
    for message in ready_client:
        collected.append(message["content"]["text"])
        break
    assert collected == ["You said: two"]
    with pytest.raises(ReceiveTimeout):
        ready_client.receive(0.05)
    ready_client.close()
    assert list(ready_client) == []


def test_messages_ends_after_the_idle_timeout(ready_client: AvatarIM) -> None:
    """messages(idle_timeout) yields what arrives, then ends when nothing came for that long."""
    ready_client.send_text("one")
    texts = [m.text for m in ready_client.messages(idle_timeout=0.3)]
    assert texts == ["You said: one"]
    with pytest.raises(InvalidArgumentError):
        next(ready_client.messages(idle_timeout=-1))


def test_iteration_raises_the_error_that_closed_the_client(
    server: ReferenceServer, ready_client: AvatarIM
) -> None:
    """A client closed for good (the token expired, no provider) ends its loop with the error."""
    ready_client.send_text("one")
    seen = []
    with pytest.raises(ServerClosedError, match="CONNECTION_TIMEOUT"):
        for message in ready_client.messages(idle_timeout=TIMEOUT):
            seen.append(message.text)
            server.expire_token("tok")
    assert seen == ["You said: one"]


def test_receive_after_close_returns_what_arrived_before_then_raises(
    ready_client: AvatarIM,
) -> None:
    """receive() after close() hands out the messages buffered before it, then raises."""
    arrived = threading.Event()
    ready_client.on("text_reply", lambda message: arrived.set())
    ready_client.send_text("kept")
    assert arrived.wait(TIMEOUT)
    ready_client.close()
    assert ready_client.receive(TIMEOUT).text == "You said: kept"
    with pytest.raises(ClientClosedError):
        ready_client.receive(TIMEOUT)


def test_inbound_duplicates_are_dropped(server: ReferenceServer, ready_client: AvatarIM) -> None:
    """The same server messageId delivered twice reaches the application once."""
    frame = "5" + json.dumps({"messageId": "dup-1", "content": {"type": "note"}})
    server.send_raw(frame)
    server.send_raw(frame)
    server.send_message({"type": "marker"})
    assert ready_client.receive(TIMEOUT)["messageId"] == "dup-1"
    assert ready_client.receive(TIMEOUT)["content"]["type"] == "marker"
    assert ready_client.stats.duplicates_dropped == 1


def test_garbage_frames_survived(server: ReferenceServer, ready_client: AvatarIM) -> None:
    """Garbage from the server is counted; the reader lives on and nothing is lost."""
    for frame in [
        "",
        "x",
        "9",
        "5{",
        '5"str"',
        "6{}",
        '2{"reason":1}',
        b"\x00\xff",
        "5" + "[" * 50_000,
    ]:
        server.send_raw(frame)
    mid = ready_client.send_text("still here")
    ready_client.wait_ack(mid, TIMEOUT)
    assert ready_client.receive(TIMEOUT)["content"]["text"] == "You said: still here"
    assert ready_client.stats.garbage_frames == 9
    assert ready_client.state is ConnectionState.OPEN


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda c: c.send_text(5), InvalidArgumentTypeError),
        (lambda c: c.send_text(""), InvalidArgumentError),
        (lambda c: c.send_text("\ud800"), InvalidArgumentError),
        (lambda c: c.send_audio(base64="not base64!"), InvalidArgumentError),
        (lambda c: c.send_audio(b"\x00\x01\x02"), InvalidArgumentError),
        (lambda c: c.send_audio("abc"), InvalidArgumentTypeError),
        (lambda c: c.send_audio(), InvalidArgumentError),
        (lambda c: c.send_audio(b"\x00\x00", base64="AAA="), InvalidArgumentError),
        (lambda c: c.start_session(format="mp3"), InvalidArgumentError),
        (lambda c: c.start_session(colour="red"), InvalidArgumentError),
        (lambda c: c.refresh_context(output_mode=3), InvalidArgumentTypeError),
        (lambda c: c.send(b"3"), InvalidArgumentTypeError),
        (lambda c: c.wait_ack("m", timeout=-1), InvalidArgumentError),
        (lambda c: c.receive(timeout="1"), InvalidArgumentTypeError),
        (lambda c: c.send_message(None), InvalidArgumentError),
        (lambda c: c.send_message({"x": object()}), InvalidArgumentError),
    ],
)
def test_bad_input_raises_typed_errors(ready_client: AvatarIM, call, error) -> None:  # type: ignore[no-untyped-def]
    """Each bad argument raises a typed error at the call, and nothing is sent."""
    before = ready_client.stats.messages_sent
    with pytest.raises(error):
        call(ready_client)
    assert ready_client.stats.messages_sent == before


@pytest.mark.parametrize(
    "kwargs",
    [
        {"token": ""},
        {"token": 5},
        {"app_id": ""},
        {"url": "http://127.0.0.1/ws"},
        {"heartbeat_interval": 0},
        {"on_message": "print"},
        {"max_outbox": 0},
        {"reconnect": 3},
    ],
)
def test_bad_constructor_arguments(kwargs: dict[str, object]) -> None:
    """Bad constructor arguments raise typed errors and start no thread."""
    options: dict[str, object] = {
        "token": "t",
        "app_id": "a",
        "tenant_id": "b",
        "session_id": "s",
        "url": "ws://127.0.0.1:9/ws",
    }
    options.update(kwargs)
    with pytest.raises(InvalidArgumentError):
        AvatarIM(**options)  # type: ignore[arg-type]
    assert client_threads() == []


def test_session_calls_without_session(make_client: ClientFactory) -> None:
    """send_text before start_session, and after stop_session, raise SessionNotStartedError."""
    client = make_client()
    with pytest.raises(SessionNotStartedError):
        client.send_text("too early")
    client.start_session()
    client.wait_session_ready(TIMEOUT)
    client.stop_session()
    with pytest.raises(SessionNotStartedError):
        client.send_audio(b"\x00\x00")


def test_calls_after_close_raise(make_client: ClientFactory) -> None:
    """Every send after close() raises ClientClosedError."""
    client = make_client()
    client.start_session()
    client.close()
    for call in (lambda: client.send_text("x"), lambda: client.send("3"), client.stop_session):
        with pytest.raises(ClientClosedError):
            call()
    assert client.closed and client.threads == []


def test_close_within_one_second_when_server_stopped_answering() -> None:
    """close() returns within 1 s, with no thread left, against a peer that never reads."""
    with silent_websocket_server() as url:
        client = AvatarIM(token="t", app_id="a", tenant_id="b", session_id="s", url=url)
        client.wait_connected(TIMEOUT)
        client.start_session()
        for _ in range(50):
            client.send_message({"pad": "x" * 20_000})  # fill the socket buffers
        started = time.monotonic()
        client.close()
        elapsed = time.monotonic() - started
        assert client.threads == []
        assert elapsed < 1.0


def test_close_during_handshake_that_never_completes() -> None:
    """A server that accepts TCP but never answers the handshake: close() is still prompt."""
    with tcp_blackhole() as hole:
        url = hole.url
        client = AvatarIM(
            token="t", app_id="a", tenant_id="b", session_id="s", url=url, connect_timeout=30
        )
        with pytest.raises(ConnectTimeout):
            client.wait_connected(0.2)
        started = time.monotonic()
        client.close()
        assert time.monotonic() - started < 1.0
        assert client.threads == []


def test_context_manager_closes(server: ReferenceServer) -> None:
    """`with AvatarIM(...)` closes the client on exit."""
    with AvatarIM(token="t", app_id="a", tenant_id="b", session_id="s", url=server.url) as client:
        client.wait_connected(TIMEOUT)
    assert client.closed and client.threads == []


def test_authentication_error_does_not_loop() -> None:
    """Wrong credentials close the client for good with AuthenticationError."""
    from avatar_im import AuthenticationError
    from avatar_im.server import Credentials

    with ReferenceServer(credentials=Credentials(token="right", app_id="a", tenant_id="b")) as srv:
        client = AvatarIM(
            token="wrong",
            app_id="a",
            tenant_id="b",
            session_id="s",
            url=srv.url,
            reconnect=ReconnectPolicy(initial_delay=0.01),
        )
        with pytest.raises(AuthenticationError):
            client.wait_connected(TIMEOUT)
        assert client.state is ConnectionState.CLOSED
        with pytest.raises(AuthenticationError):
            client.send_message({"x": 1})
        client.close()


def test_send_audio_base64_is_sent_verbatim(
    server: ReferenceServer, ready_client: AvatarIM
) -> None:
    """send_audio(base64=...) forwards the given string; the server decodes the same bytes."""
    raw = bytes(range(256)) * 4
    mid = ready_client.send_audio(base64=base64.b64encode(raw).decode())
    ready_client.wait_ack(mid, TIMEOUT)
    assert server.session("s0").audio_bytes == raw


def test_callback_that_raises_and_callback_that_closes(make_client: ClientFactory) -> None:
    """A raising callback is logged and ignored; a callback may call close() without deadlock."""
    closed = threading.Event()
    calls: list[str] = []

    def on_message(message: dict[str, object]) -> None:
        calls.append(message["content"]["type"])  # type: ignore[index]
        if len(calls) == 1:
            raise RuntimeError("user bug")
        client.close()
        closed.set()

    client = make_client(on_message=on_message)
    client.start_session()
    client.wait_session_ready(TIMEOUT)
    client.send_text("second")
    assert closed.wait(TIMEOUT)
    assert calls == ["startResult", "textReply"]
    assert client.closed


def test_connect_after_close_keeps_the_session(
    server: ReferenceServer, make_client: ClientFactory
) -> None:
    """close() then connect() keeps the session, as the original does: no new start."""
    client = make_client()
    client.start_session()
    client.wait_session_ready(TIMEOUT)
    client.close()
    assert not client.session_ready.is_set()
    client.connect(timeout=TIMEOUT)
    assert client.state is ConnectionState.OPEN and client.stats.outbox == 0
    assert client.session_state is SessionState.READY and client.session_ready.is_set()
    client.wait_ack(client.send_text("again"), TIMEOUT)
    messages = [content["type"] for _, content in server.session("s0").messages]
    assert messages == ["start", "dataSend"]
    assert server.session("s0").texts == ["again"]


def test_connect_after_close_with_a_start_pending_is_idle(make_client: ClientFactory) -> None:
    """A start still unanswered at close() was discarded: after connect() no session."""
    with silent_websocket_server() as url:
        client = make_client(url=url)
        client.wait_connected(TIMEOUT)
        client.start_session()
        client.close()
        client.connect(timeout=TIMEOUT)
        assert client.session_state is SessionState.IDLE
        with pytest.raises(SessionNotStartedError):
            client.send_text("no session")
        client.close()


def test_wait_ack_on_a_message_left_at_close_raises(
    server: ReferenceServer, make_client: ClientFactory
) -> None:
    """A message still unacked when the client closes makes wait_ack raise, never succeed."""
    server.faults.drop_acks = True
    client = make_client()
    mid = client.send_message({"kind": "never acked"})
    assert server.wait_for(lambda: server.stats.messages_refused >= 1, TIMEOUT)
    client.close()
    with pytest.raises(ClientClosedError):
        client.wait_ack(mid, TIMEOUT)


def test_receive_match_lets_threads_wait_for_their_own_reply(ready_client: AvatarIM) -> None:
    """receive(match=...) takes the matching message and leaves the others buffered."""
    ids = [ready_client.send_text(f"q{i}") for i in range(6)]
    results: dict[str, str] = {}

    def waiter(message_id: str) -> None:
        message = ready_client.receive(
            TIMEOUT, match=lambda m: m["content"].get("replyTo") == message_id
        )
        results[message_id] = message["content"]["text"]

    threads = [threading.Thread(target=waiter, args=(mid,)) for mid in reversed(ids[1:])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert results == {mid: f"You said: q{i}" for i, mid in enumerate(ids) if i > 0}
    assert ready_client.receive(TIMEOUT)["content"]["replyTo"] == ids[0]  # left for others
    with pytest.raises(InvalidArgumentTypeError):
        ready_client.receive(0.01, match="replyTo")  # type: ignore[arg-type]


# ---------------------------------------------------------------- token renewal


def provided_client(url: str, provider: Callable[[], object]) -> AvatarIM:
    """A client whose token comes from *provider* only, reconnecting fast."""
    return AvatarIM(
        app_id="a",
        tenant_id="b",
        session_id="s",
        url=url,
        token_provider=provider,  # type: ignore[arg-type]
        reconnect=ReconnectPolicy(initial_delay=0.01, max_delay=0.05),
    )


def test_token_provider_renews_a_refused_token() -> None:
    """A refused first token: the provider is asked again and its token opens the session."""
    from avatar_im.server import Credentials

    tokens = iter(["stale", "right", "right"])
    asked: list[str] = []

    def provider() -> str:
        asked.append(token := next(tokens, "right"))
        return token

    with ReferenceServer(credentials=Credentials(token="right", app_id="a", tenant_id="b")) as srv:
        client = provided_client(srv.url, provider)
        try:
            client.start_session()
            client.wait_session_ready(TIMEOUT)
            assert asked[:2] == ["stale", "right"]
        finally:
            client.close()


def test_token_provider_gives_up_on_credentials_that_stay_wrong() -> None:
    """A provider whose tokens are refused three times in a row: AuthenticationError, no loop."""
    from avatar_im import AuthenticationError
    from avatar_im.server import Credentials

    calls: list[int] = []

    def provider() -> str:
        calls.append(1)
        return "wrong"

    with ReferenceServer(credentials=Credentials(token="right", app_id="a", tenant_id="b")) as srv:
        client = provided_client(srv.url, provider)
        try:
            with pytest.raises(AuthenticationError):
                client.wait_connected(TIMEOUT)
            assert len(calls) == 3
        finally:
            client.close()


def test_without_a_provider_connection_timeout_closes_for_good(
    server: ReferenceServer, make_client: ClientFactory
) -> None:
    """No provider: CONNECTION_TIMEOUT ends the client with ServerClosedError, as before."""
    from avatar_im import ServerClosedError

    client = make_client()
    client.start_session()
    client.wait_session_ready(TIMEOUT)
    server.disconnect("CONNECTION_TIMEOUT")
    client._connection.wait_for(lambda p: False, TIMEOUT)  # returns once closed
    assert client.closed
    with pytest.raises(ServerClosedError):
        client.send_text("after")


def test_connection_timeout_with_a_provider_renews_and_resends_exactly_once(
    server: ReferenceServer, make_client: ClientFactory
) -> None:
    """2,000 texts with a CONNECTION_TIMEOUT in the middle: a new token, a new start, every
    text exactly once and in order."""
    renewals: list[int] = []

    def provider() -> str:
        renewals.append(1)
        return f"tok{len(renewals)}"

    client = make_client(
        token_provider=provider,
        send_timeout=TIMEOUT,
        reconnect=ReconnectPolicy(initial_delay=0.01, max_delay=0.05),
    )
    client.start_session()
    client.wait_session_ready(TIMEOUT)
    sent = []
    for n in range(2000):
        sent.append(f"t{n}")
        client.send_text(sent[-1])
        if n == 700:
            server.disconnect("CONNECTION_TIMEOUT")
    client.flush(4 * TIMEOUT)
    assert renewals, "the provider was never asked"
    assert server.session("s0").texts == sent
    assert client.stats.session_restarts >= 1
    assert client.state is ConnectionState.OPEN


@pytest.mark.parametrize(
    ("failure", "calls"),
    [
        (ClientClosedError("the instance is gone"), 1),  # the application's verdict: at once
        (ValueError("bad value"), 1),
        (OSError("network down"), 3),  # retried, three in a row at most
    ],
    ids=["closed", "value-error", "os-error"],
)
def test_a_failing_token_provider_ends_the_client(
    server: ReferenceServer, failure: Exception, calls: int
) -> None:
    """A provider that raises ends the client with TokenProviderError, never a retry loop."""
    from avatar_im import TokenProviderError

    asked: list[int] = []

    def provider() -> str:
        asked.append(1)
        raise failure

    client = provided_client(server.url, provider)
    try:
        with pytest.raises(TokenProviderError) as caught:
            client.wait_connected(TIMEOUT)
        assert caught.value.__cause__ is failure and len(asked) == calls
        assert client.closed
    finally:
        client.close()


def test_a_token_provider_returning_a_non_str_ends_the_client(server: ReferenceServer) -> None:
    """A provider returning None is a programming error: final at once."""
    from avatar_im import TokenProviderError

    client = AvatarIM(
        app_id="a", tenant_id="b", session_id="s", url=server.url, token_provider=lambda: None
    )
    try:
        with pytest.raises(TokenProviderError):
            client.wait_connected(TIMEOUT)
    finally:
        client.close()


def test_from_env_reads_the_variables_and_names_the_missing_ones(
    server: ReferenceServer,
) -> None:
    """from_env() takes AVATAR_IM_*; keyword arguments win; missing variables are named."""
    env = {"AVATAR_IM_TOKEN": "tok", "AVATAR_IM_APP_ID": "app", "AVATAR_IM_URL": server.url}
    with pytest.raises(InvalidArgumentError, match="AVATAR_IM_TENANT_ID, AVATAR_IM_SESSION_ID"):
        AvatarIM.from_env(env)
    with AvatarIM.from_env(env, tenant_id="ten", session_id="from-env") as client:
        client.wait_connected(TIMEOUT)
        assert client.session_id == "from-env" and client.url.startswith(server.url)


# --- oversized raw frames -----------------------------------------------------------------
# send(frame) skips the size check that send_message() has: a tracked raw frame


FAST = ReconnectPolicy(initial_delay=0.02, max_delay=0.1)


def test_oversized_raw_message_frame_is_refused_at_the_call() -> None:
    limit = 4096
    with ReferenceServer(host="127.0.0.1", port=0, max_size=limit) as server:
        client = AvatarIM(
            token="t",
            app_id="a",
            tenant_id="b",
            session_id="s",
            url=server.url,
            reconnect=FAST,
            max_message_size=limit,
        )
        try:
            client.start_session()
            client.wait_session_ready(TIMEOUT)
            content = {"type": "x", "sessionId": "s", "pad": "a" * (2 * limit)}
            # send_message() refuses it at the call, as documented:
            try:
                client.send_message(content)
                raise AssertionError("send_message accepted an oversized message")
            except InvalidArgumentError:
                pass
            frame = "5" + json.dumps({"messageId": "raw-big", "content": content})
            try:
                client.send(frame)
            except InvalidArgumentError:
                return  # fixed
            # Not refused: it is tracked, the server closes with 1009, the client resends
            # it after every reconnect; everything behind it is stranded.
            after = client.send_text("after")
            try:
                client.wait_ack(after, TIMEOUT)
            finally:
                print("reconnects:", client.stats.reconnects)
        finally:
            client.close()


def test_connect_timeout_says_why_the_connects_failed() -> None:
    """ConnectTimeout carries the last connect error: the message and __cause__ name it."""
    port = _free_port()
    client = AvatarIM(
        token="t",
        app_id="a",
        tenant_id="b",
        session_id="s",
        url=f"ws://127.0.0.1:{port}/ws",
        reconnect=ReconnectPolicy(initial_delay=0.01, max_delay=0.05),
    )
    try:
        with pytest.raises(ConnectTimeout, match="ConnectionRefusedError") as info:
            client.wait_connected(0.5)
        assert info.value.__cause__ is not None
    finally:
        client.close()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
