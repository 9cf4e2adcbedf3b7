"""Unit tests of the sans-I/O client state machine: frames in, frames and events out."""

from __future__ import annotations

import json

import pytest

from avatar_im import (
    ClientClosedError,
    InvalidArgumentError,
    OutboxFullError,
    SessionNotStartedError,
    SessionStartError,
)
from avatar_im.ids import MessageIdFactory
from avatar_im.options import SessionOptions
from avatar_im.protocol import (
    Acked,
    AckPolicy,
    ClientProtocol,
    DeadPeer,
    EventReceived,
    GarbageReceived,
    MessageReceived,
    Outcome,
    ServerDisconnect,
    SessionReady,
    SessionState,
)


def make(**kwargs: object) -> ClientProtocol:
    p = ClientProtocol(
        app_id="app",
        session_id="s",
        id_factory=MessageIdFactory("x"),
        **kwargs,  # type: ignore[arg-type]
    )
    p.connection_made(0.0)
    return p


def contents(frames: list[str]) -> list[object]:
    return [json.loads(f[1:])["content"] if f.startswith("5") else f for f in frames]


def ack(mid: str, **extra: object) -> str:
    return "6" + json.dumps({"messageId": mid, **extra})


def start_result(mid: str = "srv1") -> str:
    return "5" + json.dumps(
        {"messageId": mid, "content": {"type": "startResult", "sessionId": "s"}}
    )


def test_accept_sends_heartbeat_at_once() -> None:
    """On `1` the client queues `3` immediately."""
    p = make()
    p.receive("1", 0.0)
    assert p.data_to_send() == ["3"]


def test_sends_before_ready_are_held_in_order_then_released() -> None:
    """Data sent while the start is pending waits, then leaves in order after startResult."""
    p = make()
    start = p.start_session(SessionOptions(), 1)
    a = p.session_message(p.prepare({"type": "dataSend", "sessionId": "s", "text": "a"}, 1))
    b = p.send_message(p.prepare({"custom": 1}, 1))
    assert [json.loads(f[1:])["messageId"] for f in p.data_to_send()] == [start]
    assert p.data_to_send() == []
    p.receive(start_result(), 0.1)
    assert [e for e in p.events_received() if isinstance(e, SessionReady)]
    assert p.session_state is SessionState.READY
    assert [json.loads(f[1:])["messageId"] for f in p.data_to_send()] == [a, b]


def test_session_calls_need_a_session() -> None:
    """Text before start or after stop raises SessionNotStartedError."""
    p = make()
    with pytest.raises(SessionNotStartedError):
        p.session_message(p.prepare({}, 1))
    p.start_session(SessionOptions(), 1)
    p.stop_session(1)
    with pytest.raises(SessionNotStartedError):
        p.session_message(p.prepare({}, 1))


def test_unacked_messages_are_resent_in_order_after_reconnect() -> None:
    """After a lost connection every unacked message is written again, oldest first."""
    p = make()
    p.start_session(SessionOptions(), 1)
    p.receive(start_result(), 0)
    ids = [p.session_message(p.prepare({"n": i}, 1)) for i in range(5)]
    first = p.data_to_send()
    assert len(first) == 6
    p.receive(ack(ids[1]), 0)
    p.connection_lost()
    assert p.data_to_send() == []
    late = p.session_message(p.prepare({"n": 5}, 1))
    p.connection_made(1.0)
    again = [json.loads(f[1:])["messageId"] for f in p.data_to_send()]
    assert again[1:] == [ids[0], *ids[2:], late]


def test_ack_removes_from_outbox_and_error_is_reported() -> None:
    """An ack clears the message; an ack with error is reported and remembered."""
    p = make()
    mid = p.send_message(p.prepare({"x": 1}, 1))
    p.data_to_send()
    p.receive(ack(mid, error="BAD"), 0)
    assert not p.is_pending(mid) and p.refusal(mid) == "BAD"
    assert Acked(mid, "BAD", {"messageId": mid, "error": "BAD"}) in p.events_received()


def test_refused_start_fails_session_and_queued_messages() -> None:
    """A start acked with an error fails the session and everything queued behind it."""
    p = make()
    start = p.start_session(SessionOptions(), 1)
    queued = p.session_message(p.prepare({"text": "x"}, 1))
    p.data_to_send()
    p.receive(ack(start, error="FORBIDDEN"), 0)
    assert p.session_state is SessionState.FAILED
    assert p.refusal(queued) is not None and p.outbox_size == 0
    with pytest.raises(SessionStartError):
        p.session_message(p.prepare({}, 1))


def test_inbound_duplicates_dropped() -> None:
    """A `5` with a messageId already seen is dropped and counted."""
    p = make()
    frame = '5{"messageId":"m1","content":{"type":"textReply"}}'
    p.receive(frame, 0)
    p.receive(frame, 0)
    assert len([e for e in p.events_received() if isinstance(e, MessageReceived)]) == 1
    assert p.counters.duplicates_dropped == 1


def test_garbage_is_an_event_not_an_exception() -> None:
    """Bad frames become GarbageReceived events and are counted."""
    p = make()
    for frame in ["x", "5{", b"\x00", "3"]:
        p.receive(frame, 0)
    events = p.events_received()
    assert len(events) == 4 and all(isinstance(e, GarbageReceived) for e in events)
    assert p.counters.garbage_frames == 4


def test_heartbeat_and_dead_peer() -> None:
    """A ping is due every interval; silence past 2 x interval + 0.1 s is a dead peer."""
    p = make(heartbeat_interval=1.0)
    p.receive("1", 0.0)
    assert p.data_to_send() == ["3"]
    assert p.next_deadline() == 1.0
    p.tick(1.0)
    assert p.data_to_send() == ["3"]
    p.receive("4", 1.5)
    p.tick(3.5)
    assert not [e for e in p.events_received() if isinstance(e, DeadPeer)]
    p.tick(3.7)
    assert [e for e in p.events_received() if isinstance(e, DeadPeer)]


def test_disconnect_reasons() -> None:
    """`2` reasons are classified as final or reconnect."""
    p = make()
    p.receive('2{"reason":"UNIT_SWITCH"}', 0)
    p.receive('2{"reason":"CONNECTION_KICK_OUT"}', 0)
    assert p.events_received() == [
        ServerDisconnect("UNIT_SWITCH", final=False),
        ServerDisconnect("CONNECTION_KICK_OUT", final=True),
    ]


def test_events_are_passed_on() -> None:
    """A `7` becomes an EventReceived."""
    p = make()
    p.receive('7{"type":"speaking"}', 0)
    assert p.events_received() == [EventReceived({"type": "speaking"})]


def test_without_acks_delivered_on_write() -> None:
    """With require_acks=False a message leaves the outbox once its write is done, not before."""
    p = make(require_acks=False)
    mid = p.send_message(p.prepare({"x": 1}, 1))
    assert p.is_pending(mid)
    p.data_to_send()
    assert p.is_pending(mid)  # handed out, not yet written
    assert p.write_done() and not p.is_pending(mid)
    lost = p.send_message(p.prepare({"x": 2}, 1))
    p.data_to_send()
    p.connection_lost()  # the write failed: it stays and goes again
    p.connection_made(1.0)
    assert [json.loads(f[1:])["messageId"] for f in p.data_to_send()] == [lost]
    assert p.events_received() == []  # no event per message: memory stays flat


def test_outbox_bound_and_closed() -> None:
    """A full outbox and a closed protocol refuse new messages with typed errors."""
    p = make(max_outbox=2)
    p.send_message(p.prepare(1, 1))
    p.send_message(p.prepare(2, 1))
    with pytest.raises(OutboxFullError):
        p.send_message(p.prepare(3, 1))
    p.close()
    with pytest.raises(ClientClosedError):
        p.send_raw("3")


def test_raw_frames_keep_order_and_track_message_ids() -> None:
    """send_raw of a `5` frame tracks its messageId; other raw frames just go out."""
    p = make()
    mid = p.send_raw('5{"messageId":"raw1","content":{}}')
    assert mid == "raw1" and p.send_raw("3") is None
    assert p.data_to_send() == ['5{"messageId":"raw1","content":{}}', "3"]
    assert p.is_pending("raw1")


def test_session_gone_after_reconnect_is_started_again_in_order() -> None:
    """SESSION_NOT_FOUND for session data: a new start, then every refused message, in order."""
    p = make()
    p.start_session(SessionOptions(), 1)
    p.receive(start_result("r1"), 0)
    p.data_to_send()
    p.events_received()
    ids = [p.session_message(p.prepare({"n": i}, 1)) for i in range(3)]
    assert len(p.data_to_send()) == 3
    p.receive(ack(ids[0], error="SESSION_NOT_FOUND"), 0)
    p.receive(ack(ids[1], error="SESSION_NOT_FOUND"), 0)  # in flight before the restart
    assert p.session_state is SessionState.STARTING
    assert [type(e).__name__ for e in p.events_received()] == ["SessionLost"]
    frames = p.data_to_send()
    assert [c["type"] for c in contents(frames)] == ["start"]  # type: ignore[index]
    p.receive(ack(ids[2], error="SESSION_NOT_FOUND"), 0)
    p.receive(start_result("r2"), 0)
    again = [json.loads(f[1:])["messageId"] for f in p.data_to_send()]
    assert again == ids and p.session_restarts == 1
    assert all(p.refusal(i) is None for i in ids)


def test_rate_limited_message_is_kept_and_resent_after_a_pause() -> None:
    """RATE_LIMITED: nothing is written until the pause ends, then the refused message again."""
    p = make()
    first = p.send_message(p.prepare({"n": 1}, 1))
    p.send_message(p.prepare({"n": 2}, 1))
    assert len(p.data_to_send()) == 2
    p.receive(ack(first, error="RATE_LIMITED"), 10.0)
    assert p.is_pending(first) and p.refusal(first) is None
    third = p.send_message(p.prepare({"n": 3}, 1))
    assert p.data_to_send() == [] and p.next_deadline() == 10.25
    p.tick(10.25)
    again = [json.loads(f[1:])["messageId"] for f in p.data_to_send()]
    assert again == [first, third]  # the refused one again, then what was never written


def test_rate_limited_resends_only_the_refused_messages() -> None:
    """RATE_LIMITED on some of 150 in-flight messages resends those, not the whole outbox."""
    p = make()
    ids = [p.send_message(p.prepare({"n": n}, 1)) for n in range(150)]
    written = len(p.data_to_send())
    now = 10.0
    for n, message_id in enumerate(ids):
        limited = n % 10 == 0
        p.receive(ack(message_id, error="RATE_LIMITED" if limited else None), now)
    p.tick(now + 1)
    resent = [json.loads(f[1:])["messageId"] for f in p.data_to_send()]
    assert written == 150
    assert resent == ids[::10]  # 15 refused ones, in their original order
    for message_id in resent:
        p.receive(ack(message_id), now + 2)
    assert p.outbox_size == 0


def test_oversized_outgoing_message_refused_at_the_call() -> None:
    """A message over the size limit raises InvalidArgumentError before it is queued."""
    p = make()
    with pytest.raises(InvalidArgumentError):
        p.prepare({"blob": "x" * 2000}, 1, max_size=1000)
    assert p.outbox_size == 0


def test_message_refused_before_a_user_restart_goes_again_behind_the_new_start() -> None:
    """A text written before start_session() again, then refused, is resent after its result."""
    p = make()
    first_start = p.start_session(SessionOptions(), 1)
    p.data_to_send()
    p.receive(ack(first_start), 0)
    p.receive(start_result("r1"), 0)
    text = p.session_message(p.prepare({"text": "in flight"}, 1))
    assert len(p.data_to_send()) == 1
    again = p.start_session(SessionOptions(), 2)
    assert [json.loads(f[1:])["messageId"] for f in p.data_to_send()] == [again]
    p.receive(ack(text, error="SESSION_NOT_FOUND"), 0)  # the server had lost the session
    assert p.is_pending(text) and p.refusal(text) is None
    p.receive(ack(again), 0)
    p.receive(start_result("r2"), 0)
    assert [json.loads(f[1:])["messageId"] for f in p.data_to_send()] == [text]


def test_stop_after_a_lost_session_restarts_then_stops() -> None:
    """Data and a stop queued while the server lost the session: restart, resend, stay stopped."""
    p = make()
    start = p.start_session(SessionOptions(), 1)
    p.data_to_send()
    p.receive(ack(start), 0)
    p.receive(start_result("r1"), 0)
    text = p.session_message(p.prepare({"text": "last words"}, 1))
    stop = p.stop_session(1)
    p.data_to_send()
    p.receive(ack(text, error="SESSION_NOT_FOUND"), 0)
    new_start = [json.loads(f[1:]) for f in p.data_to_send()]
    assert [m["content"]["type"] for m in new_start] == ["start"]
    p.receive(ack(stop, error="SESSION_NOT_FOUND"), 0)  # in flight before the restart
    p.receive(ack(new_start[0]["messageId"]), 0)
    p.receive(start_result("r2"), 0)
    assert [json.loads(f[1:])["messageId"] for f in p.data_to_send()] == [text, stop]
    assert p.session_state is SessionState.STOPPED


def test_start_result_after_a_stop_does_not_make_the_session_ready() -> None:
    """start, stop, then the startResult: still stopped, no SessionReady, no start_result."""
    p = make()
    p.start_session(SessionOptions(), 1)
    p.stop_session(1)
    p.data_to_send()
    p.receive(start_result(), 1.0)
    assert p.session_state is SessionState.STOPPED
    assert p.start_result is None
    assert not any(isinstance(e, SessionReady) for e in p.events_received())
    assert p.data_to_send()  # the gate opened: the queued stop goes out


def test_ack_policy_reacts_to_the_configured_values() -> None:
    """With AckPolicy, "GONE" restarts the session and "SLOW" pauses; our strings do not."""
    policy = AckPolicy(session_lost={"GONE"}, rate_limited={"SLOW"}, rate_limit_pause=2.0)
    p = make(ack_policy=policy)
    p.start_session(SessionOptions(), 1)
    p.receive(start_result("r1"), 0)
    p.data_to_send()
    slow, gone, ours = (p.session_message(p.prepare({"n": i}, 1)) for i in range(3))
    p.data_to_send()
    p.receive(ack(slow, error="SLOW"), 5.0)
    assert p.is_pending(slow) and p.next_deadline() == 7.0
    p.receive(ack(ours, error="SESSION_NOT_FOUND"), 5.0)  # just an error here
    assert p.refusal(ours) == "SESSION_NOT_FOUND" and p.session_state is SessionState.READY
    p.receive(ack(gone, error="GONE"), 5.0)
    assert p.session_state is SessionState.STARTING and p.session_restarts == 1


def test_ack_errors_that_are_not_strings_are_final() -> None:
    """An error object (not a string) refuses its message; it never matches a policy value."""
    p = make()
    mid = p.send_message(p.prepare({"n": 1}, 1))
    p.data_to_send()
    p.receive(ack(mid, error={"code": "RATE_LIMITED"}), 0)
    assert p.refusal(mid) == {"code": "RATE_LIMITED"}


def test_cancel_unwritten_cuts_only_what_was_never_written() -> None:
    """Written messages stay (the server may have them); unwritten ones of the kinds are cut."""
    p = make()
    start = p.start_session(SessionOptions(), 1)
    p.receive(start_result("r1"), 0)
    p.data_to_send()
    written = p.session_message(p.prepare({"a": 1}, 1), kind="audio", audio_seconds=0.04)
    p.data_to_send()
    p.connection_lost()  # written, unacked: to be written again, but not cut
    text = p.session_message(p.prepare({"t": 1}, 1), kind="text")
    audio = p.session_message(p.prepare({"a": 2}, 1), kind="audio", audio_seconds=0.04)
    assert p.cancel_unwritten(frozenset({"audio"})) == [(audio, "audio", 0.04)]
    assert p.outcome(audio)[0] is Outcome.CANCELLED
    assert p.is_pending(written) and p.is_pending(text)
    p.connection_made(1.0)
    again = [json.loads(f[1:])["messageId"] for f in p.data_to_send()]
    assert again == [start, written, text]  # the start was never acked either


def test_reopen_keeps_a_ready_session() -> None:
    """After close() and reopen(), a ready session stays ready: data goes without a start."""
    p = make()
    p.start_session(SessionOptions(), 1)
    p.receive(start_result("r1"), 0)
    p.data_to_send()
    p.close()
    p.reopen()
    p.connection_made(1.0)
    assert p.session_state is SessionState.READY
    mid = p.session_message(p.prepare({"type": "dataSend"}, 1))
    assert [json.loads(f[1:])["messageId"] for f in p.data_to_send()] == [mid]
