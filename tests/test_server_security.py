"""Security of the reference server: TLS, allow-lists, tenant isolation, limits, secret-free logs.

Driven over loopback by the raw websocket-client library, plus unit tests of the pure rate limit.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
import trustme
import websocket
from conftest import TIMEOUT

from avatar_im import cli
from avatar_im.packets import encode_envelope
from avatar_im.server import (
    ACK_ERRORS,
    FORBIDDEN,
    RATE_LIMITED,
    TOO_MANY_SESSIONS,
    Credentials,
    ReferenceServer,
)
from avatar_im.server.state import (
    KICK_AFTER_BURSTS,
    Admission,
    Peer,
    ServerState,
    TokenBucket,
    authorize,
    credential_table,
    parse_content,
)

TOKEN = "s3cr3t-TOKEN-value"


# --- helpers ---------------------------------------------------------------------------------


class Clients:
    """Opens raw websocket-client connections and closes them all at the end of a test."""

    def __init__(self) -> None:
        self.opened: list[Any] = []

    def open(
        self,
        server: ReferenceServer,
        *,
        token: str = "tok",
        app: str = "app",
        tenant: str = "ten",
        sslopt: dict[str, Any] | None = None,
    ) -> Any:
        """Connect to *server* and receive its `1`."""
        url = f"{server.url}?t={quote(token, safe='')}&app={quote(app, safe='')}&tenant={tenant}"
        ws = websocket.create_connection(url, timeout=TIMEOUT, sslopt=sslopt)
        self.opened.append(ws)
        assert ws.recv() == "1"
        return ws

    def close_all(self) -> None:
        for ws in self.opened:
            with contextlib.suppress(Exception):
                ws.close(timeout=1)


@pytest.fixture
def clients() -> Iterator[Clients]:
    """A factory of raw client connections, all closed at the end."""
    factory = Clients()
    yield factory
    factory.close_all()


def send(ws: Any, message_id: str, content: dict[str, Any]) -> None:
    ws.send(encode_envelope(message_id, "app", content))


def start(ws: Any, session_id: str) -> list[str]:
    """Start *session_id* with message id start_<id>; return the two frames that answer it."""
    send(ws, f"start_{session_id}", {"type": "start", "sessionId": session_id})
    return [ws.recv(), ws.recv()]


def text(session_id: str, value: str) -> dict[str, Any]:
    return {"type": "dataSend", "sessionId": session_id, "text": value}


def audio(session_id: str, data: bytes) -> dict[str, Any]:
    return {"type": "dataSend", "sessionId": session_id, "audio": base64.b64encode(data).decode()}


def error_ack(message_id: str, error: str) -> str:
    """The prefix of an error ack for *message_id* (the detail text follows)."""
    return f'6{{"messageId":"{message_id}","error":"{error}","detail":'


def assert_nothing_pending(ws: Any) -> None:
    """No frame is waiting on *ws*: a heartbeat's `4` is the next frame to arrive."""
    ws.send("3")
    assert ws.recv() == "4"


def read_close(ws: Any) -> int:
    """Read the server's close frame (websocket-client answers it); return its close code."""
    opcode, frame = ws.recv_data_frame(control_frame=True)
    assert opcode == websocket.ABNF.OPCODE_CLOSE
    ws.shutdown()  # websocket-client leaves closing TCP to us
    return int.from_bytes(frame.data[:2], "big")


# --- TLS -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    """A certificate authority made for this test run."""
    return trustme.CA()


@pytest.fixture(scope="module")
def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    """A server context with a certificate for 127.0.0.1 issued by `ca`."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


@pytest.fixture
def client_tls(ca: trustme.CA) -> ssl.SSLContext:
    """A client context that verifies certificates and trusts `ca`."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def test_tls_whole_session(
    server_tls: ssl.SSLContext, client_tls: ssl.SSLContext, clients: Clients
) -> None:
    """With an ssl_context the server serves wss:// and a whole session runs over TLS."""
    # A sentence lasts a minute: the stop always comes while it is being spoken.
    with ReferenceServer(ssl_context=server_tls, speaking_base=60.0) as server:
        assert server.url == f"wss://127.0.0.1:{server.port}/ws"
        ws = clients.open(server, sslopt={"context": client_tls})
        assert isinstance(ws.sock, ssl.SSLSocket)
        ack, result = start(ws, "s1")
        assert ack == '6{"messageId":"start_s1"}' and '"type":"startResult"' in result
        send(ws, "m1", text("s1", "over tls"))
        assert ws.recv() == '6{"messageId":"m1"}'
        assert '"type":"replyContent","sessionId":"s1","text":"You said: over tls"' in ws.recv()
        assert '"type":"broadcastStart"' in ws.recv()
        send(ws, "m2", {"type": "stop", "sessionId": "s1"})
        assert ws.recv() == '6{"messageId":"m2"}'
        assert '"type":"broadcastEnd"' in ws.recv()
        assert '"type":"stopResult"' in ws.recv()
        session = server.session("s1")
        assert session is not None and session.texts == ["over tls"] and session.stopped


def test_tls_untrusted_client_fails_and_server_lives_on(
    server_tls: ssl.SSLContext, client_tls: ssl.SSLContext, clients: Clients
) -> None:
    """A client that does not trust the CA fails the TLS handshake; the server serves on."""
    with ReferenceServer(ssl_context=server_tls) as server:
        untrusting = ssl.create_default_context()  # the system CAs only
        with pytest.raises(ssl.SSLCertVerificationError):
            websocket.create_connection(
                f"{server.url}?t=tok&app=app&tenant=ten",
                timeout=TIMEOUT,
                sslopt={"context": untrusting},
            )
        with pytest.raises((OSError, websocket.WebSocketException)):  # ws:// to a TLS port
            websocket.create_connection(
                f"ws://127.0.0.1:{server.port}/ws?t=tok&app=app&tenant=ten", timeout=TIMEOUT
            )
        assert server.stats.connections_total == 0
        assert_nothing_pending(clients.open(server, sslopt={"context": client_tls}))


def test_tls_stop_is_prompt(server_tls: ssl.SSLContext, client_tls: ssl.SSLContext) -> None:
    """stop() ends a TLS server promptly, with a session open and a TLS handshake pending."""
    before = set(threading.enumerate())
    server = ReferenceServer(ssl_context=server_tls).start()
    ws: Any = websocket.create_connection(
        f"{server.url}?t=tok&app=app&tenant=ten", timeout=TIMEOUT, sslopt={"context": client_tls}
    )
    assert ws.recv() == "1"
    start(ws, "s1")
    # A TCP connection that never starts its TLS handshake.
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
    stopped_at = time.monotonic()
    server.stop()
    assert time.monotonic() - stopped_at < 1.0
    assert [t for t in threading.enumerate() if t not in before and t.is_alive()] == []
    raw.close()
    ws.shutdown()


def test_cli_serve_with_certificate(
    ca: trustme.CA,
    client_tls: ssl.SSLContext,
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`avatar-im serve --certfile --keyfile` serves wss:// with that certificate."""
    cert = ca.issue_cert("127.0.0.1")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_pem.write_to_path(str(keyfile))
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    frames: list[str | bytes] = []

    def serve_forever(server: ReferenceServer) -> None:  # one exchange instead of forever
        ws = websocket.create_connection(
            f"{server.url}?t=tok&app=app&tenant=ten",
            timeout=TIMEOUT,
            sslopt={"context": client_tls},
        )
        frames.append(ws.recv())
        ws.close(timeout=1)

    monkeypatch.setattr(ReferenceServer, "serve_forever", serve_forever)
    argv = ["serve", "--port", "0", "--certfile", str(certfile), "--keyfile", str(keyfile)]
    assert cli.main(argv) == 0
    assert frames == ["1"]
    assert capsys.readouterr().out.startswith("serving wss://127.0.0.1:")


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["--keyfile", "key.pem"], "--keyfile needs --certfile"),
        (["--certfile", "missing.pem"], "cannot load the certificate"),
    ],
)
def test_cli_serve_bad_certificate_options(
    argv: list[str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """serve exits with 2 and a message on a key without a certificate or an unreadable one."""
    assert cli.main(["serve", "--port", "0", *argv]) == 2
    assert complaint in capsys.readouterr().err


# --- allow-lists and tenant isolation --------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        {"type": "start", "sessionId": "intruder"},
        text("intruder", "hi"),
        {"type": "refreshContext", "sessionId": "intruder"},
        {"type": "stop", "sessionId": "intruder"},
    ],
)
def test_session_not_allowed_is_forbidden(clients: Clients, content: dict[str, Any]) -> None:
    """With allowed_sessions, every message for another session id is refused with FORBIDDEN."""
    with ReferenceServer(allowed_sessions=["s1", "s2"]) as server:
        ws = clients.open(server)
        send(ws, "m1", content)
        assert ws.recv().startswith(error_ack("m1", FORBIDDEN))
        assert server.session_ids() == []
        assert start(ws, "s2")[0] == '6{"messageId":"start_s2"}'
        assert server.session_ids() == ["s2"]


@pytest.mark.parametrize(("app", "tenant"), [("app-a", "ten-b"), ("app-b", "ten-a")])
def test_credentials_pin_app_and_tenant(clients: Clients, app: str, tenant: str) -> None:
    """A token is refused with 403 for an app or tenant it was not configured for."""
    credentials = Credentials(token=TOKEN, app_id="app-a", tenant_id="ten-a")
    with ReferenceServer(credentials=credentials) as server:
        with pytest.raises(websocket.WebSocketBadStatusException) as info:
            clients.open(server, token=TOKEN, app=app, tenant=tenant)
        assert info.value.status_code == 403
        assert_nothing_pending(clients.open(server, token=TOKEN, app="app-a", tenant="ten-a"))


@pytest.fixture
def two_tenants(clients: Clients) -> Iterator[tuple[ReferenceServer, Any, Any]]:
    """A server where tenant A's connection owns session sA and tenant B's owns sB.

    Its sentences last a minute: a broadcast started in a test never ends during it.
    """
    with ReferenceServer(speaking_base=60.0) as server:
        a = clients.open(server, tenant="ten-a")
        b = clients.open(server, tenant="ten-b")
        start(a, "sA")
        start(b, "sB")
        yield server, a, b


@pytest.mark.parametrize(
    "content",
    [
        {"type": "start", "sessionId": "sA", "format": "wav"},
        text("sA", "hijack"),
        audio("sA", b"\x00" * 320),
        {"type": "refreshContext", "sessionId": "sA", "sampleRate": "8000"},
        {"type": "stop", "sessionId": "sA"},
    ],
)
def test_other_tenant_cannot_act_on_session(
    two_tenants: tuple[ReferenceServer, Any, Any], content: dict[str, Any]
) -> None:
    """start, dataSend, refreshContext and stop on another tenant's session are FORBIDDEN."""
    server, a, b = two_tenants
    before = server.session("sA")
    send(b, "m1", content)
    assert b.recv().startswith(error_ack("m1", FORBIDDEN))
    assert_nothing_pending(b)  # no reply of any kind
    assert server.session("sA") == before  # untouched, and B's connection not bound to it
    assert server.send_event({"type": "for-A"}, session_id="sA") == 1
    assert a.recv() == '7{"type":"for-A"}'
    assert_nothing_pending(b)


def test_pushes_and_replies_reach_only_the_session_owner(
    two_tenants: tuple[ReferenceServer, Any, Any],
) -> None:
    """send_event, send_message, replies and broadcasts reach only the session's connections."""
    server, a, b = two_tenants
    assert server.send_event({"n": 1}, session_id="sA") == 1
    server.send_message({"type": "note"}, session_id="sB")
    send(b, "m1", text("sB", "mine"))
    assert b.recv().endswith('_3","content":{"type":"note"}}')
    assert b.recv() == '6{"messageId":"m1"}'
    assert '"type":"replyContent","sessionId":"sB","text":"You said: mine"' in b.recv()
    assert '"type":"broadcastStart","sessionId":"sB"' in b.recv()
    assert a.recv() == '7{"n":1}'
    assert_nothing_pending(a)  # nothing of B's reached A
    send(a, "m1", text("sA", "mine too"))  # same message id, other tenant: not a duplicate
    assert a.recv() == '6{"messageId":"m1"}'
    assert '"text":"You said: mine too"' in a.recv()
    assert '"type":"broadcastStart","sessionId":"sA"' in a.recv()
    assert_nothing_pending(b)
    assert server.interrupt("sA") is True  # the interrupt reaches A only
    assert '"type":"broadcastEnd","sessionId":"sA"' in a.recv()
    assert '"type":"interruptResult","sessionId":"sA","interrupted":true' in a.recv()
    assert_nothing_pending(b)
    assert server.send_event({"n": 2}, session_id="unknown") == 0


# --- limits ----------------------------------------------------------------------------------


def test_frame_too_big_closes_with_1009(clients: Clients) -> None:
    """A frame over max_size closes that connection with code 1009; the server serves on."""
    with ReferenceServer(max_size=1024) as server:
        bystander = clients.open(server)
        ws = clients.open(server)
        ws.send("3" + "x" * 2048)
        assert read_close(ws) == 1009
        assert server.wait_for(lambda: server.stats.connections_open == 1, TIMEOUT)
        assert_nothing_pending(bystander)
        assert_nothing_pending(clients.open(server))


def test_max_sessions(clients: Clients) -> None:
    """A start beyond max_sessions gets TOO_MANY_SESSIONS until a session is forgotten."""
    with ReferenceServer(max_sessions=2, session_grace=0.05) as server:
        first = clients.open(server)
        start(first, "s1")
        start(first, "s2")
        second = clients.open(server)
        send(second, "start_s3", {"type": "start", "sessionId": "s3"})
        assert second.recv().startswith(error_ack("start_s3", TOO_MANY_SESSIONS))
        send(second, "again_s1", {"type": "start", "sessionId": "s1"})  # a restart needs no slot
        assert second.recv() == '6{"messageId":"again_s1"}'
        assert '"type":"startResult"' in second.recv()
        first.close()
        assert server.wait_for(lambda: server.session("s2") is None, TIMEOUT)
        assert start(second, "s3")[0] == '6{"messageId":"start_s3"}'  # judged afresh
        assert server.session_ids() == ["s1", "s3"]


def test_max_connections_refused_with_503(clients: Clients) -> None:
    """A handshake beyond max_connections gets HTTP 503 until a connection closes."""
    with ReferenceServer(max_connections=2) as server:
        first = clients.open(server)
        clients.open(server)
        with pytest.raises(websocket.WebSocketBadStatusException) as info:
            clients.open(server)
        assert info.value.status_code == 503
        assert server.stats.handshakes_refused == 1
        first.close()
        assert server.wait_for(lambda: server.stats.connections_open == 1, TIMEOUT)
        assert_nothing_pending(clients.open(server))


def test_rate_limited_message_is_refused_not_processed(clients: Clients) -> None:
    """Over the rate limit a 5 gets RATE_LIMITED and is not processed; other frames are dropped."""
    with ReferenceServer(rate_limit=0.001, rate_burst=3) as server:
        ws = clients.open(server)
        start(ws, "s1")
        ws.send("3")
        ws.send("3")  # the burst of 3 is spent
        send(ws, "m1", text("s1", "too fast"))
        ws.send("3")  # dropped unanswered
        assert [ws.recv(), ws.recv()] == ["4", "4"]
        assert ws.recv().startswith(error_ack("m1", RATE_LIMITED))
        assert server.wait_for(lambda: server.stats.frames_rate_limited == 2, TIMEOUT)
        server.send_event({"type": "marker"})
        assert ws.recv() == '7{"type":"marker"}'  # the last 3 got no 4
        session = server.session("s1")
        assert session is not None and session.texts == []
        stats = server.stats
        assert (stats.messages_processed, stats.messages_refused, stats.pings_answered) == (1, 1, 2)


def test_flooding_connection_is_kicked(clients: Clients) -> None:
    """A connection that keeps flooding gets CONNECTION_KICK_OUT and is closed; others go on."""
    with ReferenceServer(rate_limit=0.001, rate_burst=1) as server:
        ws = clients.open(server)
        ws.send("3")
        refused = KICK_AFTER_BURSTS * 1
        for n in range(refused + 1):  # the last one is one refusal too many
            send(ws, f"m{n}", text("s1", "flood"))
        assert ws.recv() == "4"
        for n in range(refused):
            assert ws.recv().startswith(error_ack(f"m{n}", RATE_LIMITED))
        assert ws.recv() == '2{"reason":"CONNECTION_KICK_OUT"}'
        assert read_close(ws) == 1000
        assert server.wait_for(lambda: server.stats.connections_open == 0, TIMEOUT)
        assert server.stats.connections_kicked == 1
        assert server.stats.frames_rate_limited == refused + 1
        assert_nothing_pending(clients.open(server))  # a new connection has a fresh bucket


def test_record_limit_keeps_the_latest(clients: Clients) -> None:
    """record_limit keeps the last N messages, texts and audio chunks; totals count them all."""
    with ReferenceServer(record_limit=2, profile="echo") as server:
        ws = clients.open(server)
        start(ws, "s1")
        chunks = [bytes([n]) * 320 for n in range(3)]
        for n, chunk in enumerate(chunks):
            send(ws, f"t{n}", text("s1", f"text {n}"))
            send(ws, f"a{n}", audio("s1", chunk))
            replies = [ws.recv() for _ in range(4)]
        assert f'"totalBytes":{3 * 320},' in replies[-1]
        session = server.session("s1")
        assert session is not None
        assert [message_id for message_id, _ in session.messages] == ["t2", "a2"]
        assert session.texts == ["text 1", "text 2"]
        assert [size for _, size in session.audio_chunks] == [320, 320]
        assert session.audio_bytes == chunks[1] + chunks[2]
        assert (session.messages_total, session.audio_total_bytes) == (7, 960)
        assert session.audio_duration == pytest.approx(0.03)


def test_token_bucket_refills_at_its_rate() -> None:
    """A token bucket starts full, refills at its rate up to its burst, counts refusals in a row."""
    bucket = TokenBucket(rate=2.0, burst=2)
    assert [bucket.take(0.0) for _ in range(3)] == [True, True, False]
    assert bucket.refused_in_row == 1
    assert bucket.take(0.25) is False  # half a token
    assert bucket.take(0.5) is True and bucket.refused_in_row == 0
    assert [bucket.take(100.0) for _ in range(3)] == [True, True, False]  # capped at the burst
    assert bucket.take(99.0) is False  # a clock going back refills nothing


def test_rate_limited_message_may_be_resent() -> None:
    """A message refused for its rate is not remembered: sent again later, it is processed."""
    state = ServerState(rate_limit=1.0, rate_burst=1)
    peer = Peer(token="tok", app_id="app", tenant_id="ten")
    start_command = parse_content({"type": "start", "sessionId": "s1"})
    message = parse_content(text("s1", "hi"))
    assert state.admit(1, now=0.0) is Admission.ADMIT
    state.handle_message(peer, 1, "m0", start_command, now=0.0)
    assert state.admit(1, now=0.5) is Admission.REFUSE
    assert state.rate_limited("m1").ack["error"] == RATE_LIMITED
    assert state.admit(1, now=1.5) is Admission.ADMIT
    outcome = state.handle_message(peer, 1, "m1", message, now=1.5)
    assert outcome.ack == {"messageId": "m1"} and not outcome.duplicate
    assert state.admit(2, now=1.5) is Admission.ADMIT  # buckets are per connection
    assert ServerState().admit(1, now=0.0) is Admission.ADMIT  # no limit by default


def test_kick_after_bursts_refused_in_a_row() -> None:
    """admit kicks a connection on its refusal number KICK_AFTER_BURSTS * burst + 1."""
    state = ServerState(rate_limit=1.0, rate_burst=2)
    verdicts = [state.admit(1, now=0.0) for _ in range(2 + KICK_AFTER_BURSTS * 2 + 1)]
    assert verdicts[:2] == [Admission.ADMIT] * 2
    assert verdicts[2:-1] == [Admission.REFUSE] * KICK_AFTER_BURSTS * 2
    assert verdicts[-1] is Admission.KICK
    assert state.stats.connections_kicked == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_sessions": 0},
        {"rate_limit": 0},
        {"rate_limit": -1.0},
        {"rate_burst": 0},
        {"record_limit": 0},
        {"max_connections": 0},
        {"allowed_sessions": "s1"},
        {"ssl_context": "cert.pem"},
    ],
)
def test_invalid_limits_rejected(kwargs: dict[str, Any]) -> None:
    """Limits must be positive (or None), allowed_sessions a collection, ssl_context a context."""
    with pytest.raises((ValueError, TypeError)):
        ReferenceServer(**kwargs)


def test_new_ack_errors_listed() -> None:
    """TOO_MANY_SESSIONS and RATE_LIMITED are listed in ACK_ERRORS."""
    assert {TOO_MANY_SESSIONS, RATE_LIMITED, FORBIDDEN} <= ACK_ERRORS


# --- secrets ---------------------------------------------------------------------------------


def test_token_not_in_repr_or_refusals() -> None:
    """Peer and Credentials reprs and handshake refusal texts never contain the token."""
    peer = Peer(token=TOKEN, app_id="app", tenant_id="ten")
    credentials = Credentials(token=TOKEN, app_id="app", tenant_id="ten")
    assert TOKEN not in repr(peer) and TOKEN not in repr(credentials)
    table = credential_table(credentials)
    for path in (f"/ws?t={TOKEN}&app=app&tenant=other", f"/ws?t={TOKEN}x&app=a&tenant=t"):
        refusal = authorize(path, table)
        assert not isinstance(refusal, Peer) and TOKEN not in refusal.text


def test_token_never_logged(caplog: pytest.LogCaptureFixture, clients: Clients) -> None:
    """No log record of a whole session at DEBUG, refusals included, contains the token."""
    caplog.set_level(logging.DEBUG)  # the root logger: every logger, websockets' included
    credentials = Credentials(token=TOKEN, app_id="app", tenant_id="ten")
    with ReferenceServer(credentials=credentials, max_connections=2) as server:
        ws = clients.open(server, token=TOKEN)
        with pytest.raises(websocket.WebSocketBadStatusException) as forbidden:
            clients.open(server, token=TOKEN, tenant="other")
        extra = clients.open(server, token=TOKEN)  # the server is full now
        with pytest.raises(websocket.WebSocketBadStatusException) as full:
            clients.open(server, token=TOKEN)
        extra.close()
        assert (forbidden.value.status_code, full.value.status_code) == (403, 503)
        assert TOKEN not in f"{forbidden.value} {full.value}"
        start(ws, "s1")
        send(ws, "m1", text("s1", "hello"))
        send(ws, "m2", audio("s1", b"\x00" * 320))
        send(ws, "m3", {"type": "refreshContext", "sessionId": "s1"})
        send(ws, "m4", {"type": "stop", "sessionId": "s1"})
        ws.send("5{garbage")
        assert [ws.recv() for _ in range(8)][-1].startswith('5{"messageId":"srv_')
        server.disconnect("SERVER_CONNECTION_CLOSED")
        assert ws.recv() == '2{"reason":"SERVER_CONNECTION_CLOSED"}'
        read_close(ws)
        assert server.wait_for(lambda: server.stats.connections_open == 0, TIMEOUT)
    formatter = logging.Formatter()
    for record in caplog.records:
        assert TOKEN not in record.getMessage(), record
        assert TOKEN not in formatter.format(record), record
        if record.exc_info is not None:
            assert TOKEN not in formatter.formatException(record.exc_info), record
    redacted = [r for r in caplog.records if "t=***" in r.getMessage()]
    assert any(r.name == "avatar_im.server.websockets" for r in redacted)  # paths were logged
