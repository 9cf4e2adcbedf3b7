"""Tests of the reference server, driven over loopback by the raw websocket-client library."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import pytest
import websocket

import avatar_im.server
from avatar_im import AvatarIM, InvalidArgumentError
from avatar_im.packets import encode_envelope
from avatar_im.server import (
    BAD_CONTENT,
    FORBIDDEN,
    SESSION_NOT_FOUND,
    Credentials,
    ReferenceServer,
    Request,
    audio_duration,
)

#: Every wait in these tests is bounded by this many seconds.
TIMEOUT = 5.0

Connect = Callable[..., websocket.WebSocket]


def query_url(
    server: ReferenceServer, *, token: str = "tok", app: str = "app", tenant: str = "ten"
) -> str:
    return f"{server.url}?t={quote(token, safe='')}&app={quote(app, safe='')}&tenant={tenant}"


@pytest.fixture
def srv() -> Iterator[ReferenceServer]:
    with ReferenceServer(message_id_prefix="srv_", profile="echo") as server:
        yield server


@pytest.fixture
def connect() -> Iterator[Connect]:
    """A factory of raw connections that have received `1`; all closed at the end."""
    opened: list[websocket.WebSocket] = []

    def factory(server: ReferenceServer, *, accepted: bool = True, **kwargs: str) -> Any:
        ws = websocket.create_connection(query_url(server, **kwargs), timeout=TIMEOUT)
        ws.settimeout(TIMEOUT)
        opened.append(ws)
        if accepted:
            assert ws.recv() == "1"
        return ws

    yield factory
    for ws in opened:
        with contextlib.suppress(Exception):
            ws.close(timeout=1)


def send(ws: websocket.WebSocket, message_id: str, content: dict[str, Any]) -> None:
    ws.send(encode_envelope(message_id, "app", content))


def start(ws: websocket.WebSocket, session_id: str = "s1", **options: str) -> list[str]:
    """Start *session_id*; return the ack and the startResult frames."""
    send(ws, f"start_{session_id}", {"type": "start", "sessionId": session_id, **options})
    return [ws.recv(), ws.recv()]


def text(session_id: str, value: str) -> dict[str, Any]:
    return {"type": "dataSend", "sessionId": session_id, "text": value}


def audio(session_id: str, data: bytes) -> dict[str, Any]:
    return {"type": "dataSend", "sessionId": session_id, "audio": base64.b64encode(data).decode()}


def error_ack(message_id: str, error: str) -> str:
    """The prefix of an error ack for *message_id* (the detail text follows)."""
    return f'6{{"messageId":"{message_id}","error":"{error}","detail":'


def test_accept_sends_1(srv: ReferenceServer, connect: Connect) -> None:
    """A new connection first receives the frame `1`."""
    connect(srv)
    assert srv.wait_for_connections(1, TIMEOUT)
    assert srv.stats.connections_total == 1


def test_heartbeat_answered(srv: ReferenceServer, connect: Connect) -> None:
    """`3` is answered with `4`."""
    ws = connect(srv)
    ws.send("3")
    assert ws.recv() == "4"
    assert srv.stats.pings_answered == 1


def test_url_and_port(srv: ReferenceServer) -> None:
    """url names the bound port and the /ws path."""
    assert srv.port > 0
    assert srv.host == "127.0.0.1"
    assert srv.url == f"ws://127.0.0.1:{srv.port}/ws"


def test_start_acked_then_start_result(srv: ReferenceServer, connect: Connect) -> None:
    """start is acked, then answered with startResult, exact bytes."""
    ws = connect(srv)
    send(ws, "msg_1", {"type": "start", "sessionId": "s1", "format": "pcm", "sampleRate": "16000"})
    assert ws.recv() == '6{"messageId":"msg_1"}'
    assert ws.recv() == (
        '5{"messageId":"srv_1","content":{"type":"startResult","sessionId":"s1",'
        '"format":"pcm","sampleRate":"16000"}}'
    )
    session = srv.session("s1")
    assert session is not None and session.started and not session.stopped
    assert session.messages[0][0] == "msg_1"


def test_start_echoes_session_options(srv: ReferenceServer, connect: Connect) -> None:
    """startResult echoes the session's format and sample rate as strings."""
    ws = connect(srv)
    _, result = start(ws, "s1", format="wav", sampleRate="8000", outputMode="audio")
    assert '"format":"wav","sampleRate":"8000"' in result
    session = srv.session("s1")
    assert session is not None
    assert (session.format, session.sample_rate) == ("wav", 8000)


@pytest.mark.parametrize(
    "content",
    [
        {"type": "start", "sessionId": "s1", "format": "mp3"},
        {"type": "start", "sessionId": "s1", "sampleRate": "fast"},
        {"type": "start", "sessionId": "s1", "dialogMode": 3},
        {"type": "start", "sessionId": ""},
        {"type": "start"},
    ],
)
def test_invalid_start_is_bad_content(
    srv: ReferenceServer, connect: Connect, content: dict[str, Any]
) -> None:
    """A start with invalid options or no session id is refused with BAD_CONTENT."""
    ws = connect(srv)
    send(ws, "msg_1", content)
    assert ws.recv().startswith(error_ack("msg_1", BAD_CONTENT))
    assert srv.session("s1") is None
    assert srv.stats.messages_refused == 1


def test_text_acked_and_echoed(srv: ReferenceServer, connect: Connect) -> None:
    """A text dataSend is acked, recorded and answered with textReply."""
    ws = connect(srv)
    start(ws)
    send(ws, "msg_2", text("s1", "héllo"))
    assert ws.recv() == '6{"messageId":"msg_2"}'
    assert ws.recv() == (
        '5{"messageId":"srv_2","content":{"type":"textReply","sessionId":"s1",'
        '"replyTo":"msg_2","text":"You said: héllo"}}'
    )
    session = srv.session("s1")
    assert session is not None
    assert session.texts == ["héllo"]
    assert [message_id for message_id, _ in session.messages] == ["start_s1", "msg_2"]
    assert session.messages[1][1] == text("s1", "héllo")


def test_audio_received_reports_bytes_and_duration(srv: ReferenceServer, connect: Connect) -> None:
    """Audio chunks are decoded, recorded and reported with 16-bit mono durations."""
    ws = connect(srv)
    start(ws)
    send(ws, "a1", audio("s1", b"\x01\x02" * 1600))
    assert ws.recv() == '6{"messageId":"a1"}'
    assert ws.recv() == (
        '5{"messageId":"srv_2","content":{"type":"audioReceived","sessionId":"s1",'
        '"replyTo":"a1","bytes":3200,"durationMs":100,"totalBytes":3200,"totalDurationMs":100}}'
    )
    send(ws, "a2", audio("s1", b"\x00" * 640))
    ws.recv()
    assert ws.recv().endswith(
        '"bytes":640,"durationMs":20,"totalBytes":3840,"totalDurationMs":120}}'
    )
    session = srv.session("s1")
    assert session is not None
    assert session.audio_bytes == b"\x01\x02" * 1600 + b"\x00" * 640
    assert [size for _, size in session.audio_chunks] == [3200, 640]
    assert session.audio_chunks[0][0] <= session.audio_chunks[1][0]
    assert session.audio_duration == pytest.approx(0.12)


def test_wav_header_not_counted(srv: ReferenceServer, connect: Connect) -> None:
    """In a wav session a chunk starting with RIFF has its 44-byte header left out of duration."""
    ws = connect(srv)
    start(ws, format="wav", sampleRate="8000")
    chunk = b"RIFF" + b"\x00" * 40 + b"\x00" * 1600
    send(ws, "a1", audio("s1", chunk))
    ws.recv()
    assert '"bytes":1644,"durationMs":100,' in ws.recv()
    assert audio_duration(chunk, audio_format="pcm", sample_rate=8000) == pytest.approx(0.10275)


def test_invalid_audio_is_bad_content(srv: ReferenceServer, connect: Connect) -> None:
    """Audio that is not base64 is refused with BAD_CONTENT and not recorded."""
    ws = connect(srv)
    start(ws)
    send(ws, "a1", {"type": "dataSend", "sessionId": "s1", "audio": "not base64!"})
    assert ws.recv().startswith(error_ack("a1", BAD_CONTENT))
    session = srv.session("s1")
    assert session is not None and session.audio_bytes == b""


@pytest.mark.parametrize(
    "content",
    [
        {"type": "dance", "sessionId": "s1"},
        {"sessionId": "s1"},
        {"type": "dataSend", "sessionId": "s1"},
        {"type": "dataSend", "sessionId": "s1", "text": 5},
        {"type": "dataSend", "sessionId": "s1", "text": "a", "audio": "AA=="},
        None,
    ],
)
def test_bad_content(srv: ReferenceServer, connect: Connect, content: Any) -> None:
    """Unknown types, missing fields and non-object contents are refused with BAD_CONTENT."""
    ws = connect(srv)
    start(ws)
    ws.send('5{"messageId":"m1"}' if content is None else encode_envelope("m1", "app", content))
    assert ws.recv().startswith(error_ack("m1", BAD_CONTENT))
    ws.send("3")  # the connection stays usable
    assert ws.recv() == "4"


def test_duplicate_acked_twice_processed_once(srv: ReferenceServer, connect: Connect) -> None:
    """A messageId seen before is acked again but not processed or recorded again."""
    ws = connect(srv)
    start(ws)
    send(ws, "m1", text("s1", "once"))
    assert ws.recv() == '6{"messageId":"m1"}'
    ws.recv()  # textReply
    send(ws, "m1", text("s1", "once"))
    assert ws.recv() == '6{"messageId":"m1"}'
    ws.send("3")
    assert ws.recv() == "4"  # no second textReply came before the pong
    session = srv.session("s1")
    assert session is not None and session.texts == ["once"]
    assert srv.stats.duplicates == 1


def test_duplicate_detected_across_connections(srv: ReferenceServer, connect: Connect) -> None:
    """A client that resends after reconnecting gets its ack without double processing."""
    first = connect(srv)
    start(first)
    send(first, "m1", text("s1", "hi"))
    first.recv()
    second = connect(srv)
    send(second, "m1", text("s1", "hi"))
    assert second.recv() == '6{"messageId":"m1"}'
    session = srv.session("s1")
    assert session is not None and session.texts == ["hi"]


def test_data_before_start_is_session_not_found(srv: ReferenceServer, connect: Connect) -> None:
    """dataSend, refreshContext and stop before start are refused with SESSION_NOT_FOUND."""
    ws = connect(srv)
    send(ws, "m1", text("s1", "early"))
    assert ws.recv().startswith(error_ack("m1", SESSION_NOT_FOUND))
    send(ws, "m2", {"type": "refreshContext", "sessionId": "s1"})
    assert ws.recv().startswith(error_ack("m2", SESSION_NOT_FOUND))
    send(ws, "m3", {"type": "stop", "sessionId": "s1"})
    assert ws.recv().startswith(error_ack("m3", SESSION_NOT_FOUND))
    assert srv.session("s1") is None


def test_refused_message_is_not_remembered(srv: ReferenceServer, connect: Connect) -> None:
    """A refused messageId sent again later is judged afresh."""
    ws = connect(srv)
    send(ws, "m1", text("s1", "early"))
    assert ws.recv().startswith(error_ack("m1", SESSION_NOT_FOUND))
    start(ws)
    send(ws, "m1", text("s1", "early"))
    assert ws.recv() == '6{"messageId":"m1"}'


def test_refresh_context(srv: ReferenceServer, connect: Connect) -> None:
    """refreshContext is acked, answered with refreshResult and applies given options."""
    ws = connect(srv)
    start(ws)
    send(ws, "r1", {"type": "refreshContext", "sessionId": "s1", "sampleRate": "8000"})
    assert ws.recv() == '6{"messageId":"r1"}'
    assert ws.recv() == (
        '5{"messageId":"srv_2","content":{"type":"refreshResult","sessionId":"s1"}}'
    )
    session = srv.session("s1")
    assert session is not None and session.sample_rate == 8000


def test_stop_then_data_refused(srv: ReferenceServer, connect: Connect) -> None:
    """stop answers stopResult; afterwards dataSend is refused until a new start."""
    ws = connect(srv)
    start(ws)
    send(ws, "x1", {"type": "stop", "sessionId": "s1"})
    assert ws.recv() == '6{"messageId":"x1"}'
    assert ws.recv() == '5{"messageId":"srv_2","content":{"type":"stopResult","sessionId":"s1"}}'
    session = srv.session("s1")
    assert session is not None and session.stopped
    send(ws, "x2", text("s1", "late"))
    assert ws.recv().startswith(error_ack("x2", SESSION_NOT_FOUND))
    send(ws, "x3", {"type": "start", "sessionId": "s1"})
    assert ws.recv() == '6{"messageId":"x3"}'
    ws.recv()
    send(ws, "x4", text("s1", "again"))
    assert ws.recv() == '6{"messageId":"x4"}'
    session = srv.session("s1")
    assert session is not None and not session.stopped
    assert [m for m, _ in session.messages] == ["start_s1", "x1", "x3", "x4"]


def test_garbage_frames_do_not_close(srv: ReferenceServer, connect: Connect) -> None:
    """Malformed, binary and server-only frames are counted and ignored."""
    ws = connect(srv)
    garbage = ["", "x", "9", "5", "5{bad", "5[]", '5{"content":{}}', "6{}", "4", "3{oops"]
    for frame in garbage:
        ws.send(frame)
    ws.send_binary(b"\x005{}")
    assert srv.wait_for(lambda: srv.stats.bad_frames == len(garbage) + 1, TIMEOUT)
    ws.send("3")
    assert ws.recv() == "4"
    assert srv.stats.frames_received == len(garbage) + 2
    assert srv.stats.connections_open == 1


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/other?t=a&app=b&tenant=c", 404),
        ("/ws?app=b&tenant=c", 400),
        ("/ws?t=a&app=&tenant=c", 400),
        ("/ws?t=a&app=b", 400),
    ],
)
def test_handshake_refusals(srv: ReferenceServer, path: str, status: int) -> None:
    """A wrong path is refused with 404, a missing or empty parameter with 400."""
    url = f"ws://127.0.0.1:{srv.port}{path}"
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        websocket.create_connection(url, timeout=TIMEOUT)
    assert info.value.status_code == status
    assert srv.stats.handshakes_refused == 1


def test_credentials(connect: Connect) -> None:
    """With credentials, an unknown token is refused 401, a known one elsewhere 403."""
    accepted = [
        Credentials(token="a&b=c", app_id="app", tenant_id="ten"),
        Credentials(token="other", app_id="app2", tenant_id="ten2"),
    ]
    with ReferenceServer(credentials=accepted) as server:
        connect(server, token="a&b=c")
        connect(server, token="other", app="app2", tenant="ten2")
        for kwargs, status in [
            ({"token": "nope"}, 401),
            ({"token": "a&b=c", "tenant": "ten2"}, 403),
            ({"token": "other"}, 403),
        ]:
            with pytest.raises(websocket.WebSocketBadStatusException) as info:
                websocket.create_connection(query_url(server, **kwargs), timeout=TIMEOUT)
            assert info.value.status_code == status
        assert server.stats.connections_total == 2


def test_other_tenant_session_forbidden(srv: ReferenceServer, connect: Connect) -> None:
    """Another app or tenant can neither restart nor use a session: FORBIDDEN."""
    owner = connect(srv)
    start(owner)
    intruder = connect(srv, tenant="other")
    send(intruder, "i1", {"type": "start", "sessionId": "s1"})
    assert intruder.recv().startswith(error_ack("i1", FORBIDDEN))
    send(intruder, "i2", text("s1", "hijack"))
    assert intruder.recv().startswith(error_ack("i2", FORBIDDEN))
    send(intruder, "i3", {"type": "stop", "sessionId": "s1"})
    assert intruder.recv().startswith(error_ack("i3", FORBIDDEN))
    session = srv.session("s1")
    assert session is not None and session.texts == [] and not session.stopped
    assert session.tenant_id == "ten"


def test_send_event_to_all_or_to_a_session(srv: ReferenceServer, connect: Connect) -> None:
    """send_event reaches every connection, or only those bound to the given session."""
    first, second = connect(srv), connect(srv)
    start(first, "s1")
    assert srv.send_event({"type": "ping", "n": 1}) == 2
    assert first.recv() == second.recv() == '7{"type":"ping","n":1}'
    assert srv.send_event({"type": "only"}, session_id="s1") == 1
    assert srv.send_event({"type": "nobody"}, session_id="unknown") == 0
    assert first.recv() == '7{"type":"only"}'
    second.send("3")
    assert second.recv() == "4"


def test_send_message_and_send_raw(srv: ReferenceServer, connect: Connect) -> None:
    """send_message sends a server 5 with a fresh id; send_raw sends frames as they are."""
    ws = connect(srv)
    message_id = srv.send_message({"type": "note", "x": "é"})
    assert message_id == "srv_1"
    assert ws.recv() == '5{"messageId":"srv_1","content":{"type":"note","x":"é"}}'
    assert srv.send_raw("9garbage") == 1
    assert ws.recv() == "9garbage"
    srv.send_raw(b"\x01\x02")
    assert ws.recv() == b"\x01\x02"


def test_disconnect_sends_reason_then_closes(srv: ReferenceServer, connect: Connect) -> None:
    """disconnect sends 2 with the reason, then closes the connection with a close frame."""
    ws = connect(srv)
    assert srv.disconnect("CONNECTION_KICK_OUT") == 1
    assert ws.recv() == '2{"reason":"CONNECTION_KICK_OUT"}'
    opcode, _ = ws.recv_data_frame(control_frame=True)  # also answers the close frame
    assert opcode == websocket.ABNF.OPCODE_CLOSE
    ws.shutdown()  # websocket-client leaves closing TCP to us
    assert srv.wait_for(lambda: srv.stats.connections_open == 0, TIMEOUT)


def test_drop_connections_without_close_frame(srv: ReferenceServer, connect: Connect) -> None:
    """drop_connections cuts TCP with no close frame; sessions survive the drop."""
    ws = connect(srv)
    start(ws)
    assert srv.drop_connections() == 1
    with pytest.raises(websocket.WebSocketConnectionClosedException):
        ws.recv()
    assert srv.wait_for(lambda: srv.stats.connections_open == 0, TIMEOUT)
    session = srv.session("s1")
    assert session is not None and not session.connected


def test_fault_heartbeats_unanswered(srv: ReferenceServer, connect: Connect) -> None:
    """With answer_heartbeats off, 3 gets no answer but messages still do."""
    ws = connect(srv)
    srv.faults.answer_heartbeats = False
    ws.send("3")
    start(ws)  # the next frames are the ack and startResult, not a 4
    srv.faults.answer_heartbeats = True
    ws.send("3")
    assert ws.recv() == "4"
    assert srv.stats.pings_answered == 1


def test_fault_drop_acks(srv: ReferenceServer, connect: Connect) -> None:
    """With drop_acks, no ack is sent but messages are processed and answered."""
    ws = connect(srv)
    srv.faults.drop_acks = True
    send(ws, "m1", {"type": "start", "sessionId": "s1"})
    assert '"type":"startResult"' in ws.recv()
    send(ws, "m2", text("s1", "hi"))
    assert '"type":"textReply"' in ws.recv()
    session = srv.session("s1")
    assert session is not None and session.texts == ["hi"]
    assert srv.stats.acks_sent == 0


def test_fault_ack_delay(srv: ReferenceServer, connect: Connect) -> None:
    """With ack_delay, acks come later, in order, and reading goes on meanwhile."""
    ws = connect(srv)
    start(ws)
    srv.faults.ack_delay = 0.3
    sent_at = time.monotonic()
    send(ws, "m1", text("s1", "one"))
    send(ws, "m2", text("s1", "two"))
    frames = [ws.recv() for _ in range(4)]
    assert '"replyTo":"m1"' in frames[0] and '"replyTo":"m2"' in frames[1]
    assert frames[2:] == ['6{"messageId":"m1"}', '6{"messageId":"m2"}']
    assert time.monotonic() - sent_at >= 0.3


#: Delayed acks the peer that stops reading is sent, and the size of each: together far more
#: than loopback socket buffers hold (Linux caps a send buffer at 4 MiB by default).
FLOOD_ACKS = 128
FLOOD_ID_BYTES = 64 * 1024


def open_unread_connection(server: ReferenceServer) -> socket.socket:
    """A WebSocket connection, handshake done by hand, with a tiny receive buffer."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: sets the window
    sock.settimeout(TIMEOUT)
    sock.connect(("127.0.0.1", server.port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            "GET /ws?t=tok&app=app&tenant=ten HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{server.port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head and len(head) < 65536:
        chunk = sock.recv(1)  # byte by byte: leave the frames after the handshake unread
        assert chunk, "the server closed during the handshake"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101 "), head
    return sock


def test_peer_that_stops_reading_delays_no_other_connection_s_acks() -> None:
    """With ack_delay, a peer that never reads its acks cannot hold back another client's."""
    before = set(threading.enumerate())
    with ReferenceServer() as server:
        client = AvatarIM(
            token="tok", app_id="app", tenant_id="ten", session_id="reader", url=server.url
        )
        unread = open_unread_connection(server)
        try:
            client.start_session()
            client.wait_session_ready(TIMEOUT)
            # Long enough for the server to read the whole flood (~0.15 s) before acking any.
            server.faults.ack_delay = TIMEOUT / 5
            received = server.stats.frames_received
            for n in range(FLOOD_ACKS):  # each answered by a BAD_CONTENT ack echoing its id
                message_id = f"{n:04d}" + "x" * FLOOD_ID_BYTES
                body = json.dumps({"messageId": message_id, "content": {}})
                unread.sendall(
                    websocket.ABNF.create_frame("5" + body, websocket.ABNF.OPCODE_TEXT).format()
                )
            # Every flood message was read, so every flood ack is due before the client's.
            assert server.wait_for(
                lambda: server.stats.frames_received >= received + FLOOD_ACKS, TIMEOUT
            )
            client.wait_ack(client.send_text("still acked"), TIMEOUT)
            assert server.stats.acks_sent < FLOOD_ACKS  # the flood's sender is still blocked
        finally:
            client.close()
            stopped_at = time.monotonic()
            server.stop()
            assert time.monotonic() - stopped_at < 2.0
            unread.close()
    leftover = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    assert leftover == []


def test_fault_refuse_handshake(srv: ReferenceServer, connect: Connect) -> None:
    """refuse_handshake refuses every handshake with the given status until cleared."""
    srv.faults.refuse_handshake = 503
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        websocket.create_connection(query_url(srv), timeout=TIMEOUT)
    assert info.value.status_code == 503
    srv.faults.refuse_handshake = None
    connect(srv)


def test_restart_keeps_sessions_and_port(srv: ReferenceServer, connect: Connect) -> None:
    """restart drops connections and listens again on the same port, sessions kept."""
    ws = connect(srv)
    start(ws)
    send(ws, "m1", text("s1", "before"))
    ws.recv()
    ws.recv()
    port = srv.port
    srv.restart()
    assert srv.port == port
    with pytest.raises(websocket.WebSocketConnectionClosedException):
        ws.recv()
    again = connect(srv)
    send(again, "m1", text("s1", "before"))  # a resend: still a duplicate
    assert again.recv() == '6{"messageId":"m1"}'
    send(again, "m2", text("s1", "after"))
    assert again.recv() == '6{"messageId":"m2"}'
    session = srv.session("s1")
    assert session is not None and session.texts == ["before", "after"]


def test_restart_without_state(srv: ReferenceServer, connect: Connect) -> None:
    """restart(keep_state=False) forgets sessions."""
    start(connect(srv))
    srv.restart(keep_state=False)
    assert srv.session("s1") is None
    ws = connect(srv)
    send(ws, "m1", text("s1", "gone"))
    assert ws.recv().startswith(error_ack("m1", SESSION_NOT_FOUND))


def test_session_continues_on_new_connection(srv: ReferenceServer, connect: Connect) -> None:
    """Within the grace period a new connection continues a session by just using it."""
    first = connect(srv)
    start(first)
    srv.drop_connections()
    assert srv.wait_for(lambda: srv.stats.connections_open == 0, TIMEOUT)
    second = connect(srv)
    send(second, "m1", text("s1", "continued"))
    assert second.recv() == '6{"messageId":"m1"}'
    assert '"text":"You said: continued"' in second.recv()
    session = srv.session("s1")
    assert session is not None and session.connected
    assert srv.send_event({"type": "bound"}, session_id="s1") == 1
    assert second.recv() == '7{"type":"bound"}'


def test_session_forgotten_after_grace(connect: Connect) -> None:
    """A session with no connection is forgotten after session_grace seconds."""
    with ReferenceServer(session_grace=0.1) as server:
        ws = connect(server)
        start(ws)
        ws.close()
        assert server.wait_for(lambda: server.session("s1") is None, TIMEOUT)
        again = connect(server)
        send(again, "m1", text("s1", "late"))
        assert again.recv().startswith(error_ack("m1", SESSION_NOT_FOUND))


def test_idle_timeout_sends_heartbeat_timeout(connect: Connect) -> None:
    """After idle_timeout seconds without a client frame the server sends HEARTBEAT_TIMEOUT."""
    with ReferenceServer(idle_timeout=0.3) as server:
        ws = connect(server)
        started = time.monotonic()
        ws.send("3")
        assert ws.recv() == "4"
        assert ws.recv() == '2{"reason":"HEARTBEAT_TIMEOUT"}'
        assert time.monotonic() - started >= 0.3
        opcode, _ = ws.recv_data_frame(control_frame=True)  # also answers the close frame
        assert opcode == websocket.ABNF.OPCODE_CLOSE
        ws.shutdown()  # websocket-client leaves closing TCP to us
        assert server.wait_for(lambda: server.stats.connections_open == 0, TIMEOUT)


def test_custom_responder(connect: Connect) -> None:
    """A responder gets a Request and each reply it returns is sent as a server 5."""
    seen: list[Request] = []

    def responder(request: Request) -> list[dict[str, Any]]:
        seen.append(request)
        return [{"type": "a"}, {"type": "b", "to": request.message_id}]

    with ReferenceServer(responder=responder, message_id_prefix="srv_") as server:
        ws = connect(server)
        start(ws, sampleRate="8000")
        send(ws, "m1", audio("s1", b"\x00" * 160))
        assert ws.recv() == '6{"messageId":"m1"}'
        assert ws.recv() == '5{"messageId":"srv_2","content":{"type":"a"}}'
        assert ws.recv() == '5{"messageId":"srv_3","content":{"type":"b","to":"m1"}}'
    (request,) = seen
    assert (request.session_id, request.audio, request.text) == ("s1", b"\x00" * 160, None)
    assert request.audio_duration == pytest.approx(0.01)
    assert request.session.sample_rate == 8000
    assert request.session.audio_total_bytes == 160


def test_failing_responder_still_acks(connect: Connect) -> None:
    """A responder that raises is logged; the message is acked and gets no reply."""

    def responder(request: Request) -> None:
        raise RuntimeError("boom")

    with ReferenceServer(responder=responder, message_id_prefix="srv_") as server:
        ws = connect(server)
        start(ws)
        send(ws, "m1", text("s1", "hi"))
        assert ws.recv() == '6{"messageId":"m1"}'
        ws.send("3")
        assert ws.recv() == "4"


def test_wait_for_times_out(srv: ReferenceServer) -> None:
    """wait_for returns False when the predicate stays false until the timeout."""
    assert srv.wait_for(lambda: srv.stats.connections_open > 0, 0.05) is False
    assert srv.wait_for_connections(1, 0.05) is False


def test_stop_is_prompt_and_leaves_no_thread(connect: Connect) -> None:
    """stop() returns within a second with connections open and leaves no thread behind."""
    before = set(threading.enumerate())
    server = ReferenceServer(session_grace=30).start()
    sockets = [connect(server) for _ in range(3)]
    start(sockets[0])
    # A TCP connection that never sends its handshake request.
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
    server.disconnect("SERVER_CONNECTION_CLOSED")  # closers wait for peers that never answer
    stopped_at = time.monotonic()
    server.stop()
    assert time.monotonic() - stopped_at < 1.0
    leftover = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    assert leftover == []
    server.stop()  # idempotent
    raw.close()
    with pytest.raises(RuntimeError):
        server.start()


def test_exported_names() -> None:
    """avatar_im.server's __all__ is sorted isort-style (constants, classes, functions)."""
    names = avatar_im.server.__all__

    def isort_key(name: str) -> tuple[int, str]:
        return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)

    assert names == sorted(names, key=isort_key)
    assert all(hasattr(avatar_im.server, name) for name in names)


# --- token lifecycle -------------------------------------------------------------------------


def test_allow_token_accepts_a_new_credential_at_runtime(connect: Connect) -> None:
    """A server checking credentials accepts a token once allow_token() has added it."""
    with ReferenceServer(credentials=[]) as server:
        with pytest.raises(websocket.WebSocketBadStatusException) as info:
            websocket.create_connection(query_url(server, token="late"), timeout=TIMEOUT)
        assert info.value.status_code == 401
        server.allow_token("late", "app", 42)
        connect(server, token="late", tenant="42")
        with pytest.raises(websocket.WebSocketBadStatusException) as info:
            websocket.create_connection(query_url(server, token="late"), timeout=TIMEOUT)
        assert info.value.status_code == 403  # allowed for tenant 42 only


def test_expire_token_disconnects_refuses_and_forgets_sessions(connect: Connect) -> None:
    """expire_token sends 2{reason} to the token's connections only, then refuses it with 401."""
    with ReferenceServer(credentials=[], message_id_prefix="srv_") as server:
        server.allow_token("old", "app", "ten")
        server.allow_token("other", "app", "ten")
        ws = connect(server, token="old")
        bystander = connect(server, token="other")
        start(ws, "s1")
        start(bystander, "s2")
        assert server.expire_token("old") == 1
        assert ws.recv() == '2{"reason":"CONNECTION_TIMEOUT"}'
        assert server.wait_for(lambda: server.stats.connections_open == 1, TIMEOUT)
        assert server.session("s1") is None
        assert server.session("s2") is not None
        with pytest.raises(websocket.WebSocketBadStatusException) as info:
            websocket.create_connection(query_url(server, token="old"), timeout=TIMEOUT)
        assert info.value.status_code == 401
        bystander.send("3")
        assert bystander.recv() == "4"


def test_session_of_an_expired_token_is_not_found_with_the_new_token(connect: Connect) -> None:
    """After expiry, a client resending into the session on a new token gets SESSION_NOT_FOUND."""
    with ReferenceServer(credentials=[]) as server:
        server.allow_token("old", "app", "ten")
        ws = connect(server, token="old")
        start(ws, "s1")
        server.allow_token("new", "app", "ten")
        server.expire_token("old", reason="CONNECTION_KICK_OUT")
        assert ws.recv() == '2{"reason":"CONNECTION_KICK_OUT"}'
        again = connect(server, token="new")
        send(again, "m1", text("s1", "resent"))
        assert again.recv().startswith(error_ack("m1", SESSION_NOT_FOUND))
        send(again, "restart", {"type": "start", "sessionId": "s1"})
        assert again.recv() == '6{"messageId":"restart"}'
        assert json.loads(again.recv()[1:])["content"]["type"] == "startResult"


def test_open_server_refuses_only_expired_tokens(connect: Connect) -> None:
    """With credentials=None, an expired token gets 401 until allowed again; others still pass."""
    with ReferenceServer() as server:
        connect(server, token="any")
        server.expire_token("gone")
        with pytest.raises(websocket.WebSocketBadStatusException) as info:
            websocket.create_connection(query_url(server, token="gone"), timeout=TIMEOUT)
        assert info.value.status_code == 401
        connect(server, token="still-any")
        server.allow_token("gone", "app", "ten")
        connect(server, token="gone")
        connect(server, token="gone", app="another-app")  # the server stays open


def test_token_lifecycle_rejects_empty_tokens() -> None:
    """allow_token and expire_token refuse an empty token with InvalidArgumentError."""
    with ReferenceServer() as server:
        with pytest.raises(InvalidArgumentError):
            server.allow_token("", "app", "ten")
        with pytest.raises(InvalidArgumentError):
            server.allow_token("tok", "", "ten")
        with pytest.raises(InvalidArgumentError):
            server.expire_token("")
