"""The conversation, end to end on loopback: typed messages, on(), ask(), speaking, interrupt().

Against the reference server's default, cloud-shaped profile (speaking quickly: see the
``cloud_server`` fixture), over real sockets.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import attrs
import pytest
from conftest import TIMEOUT, ClientFactory, wait_until

from avatar_im import (
    AckPolicy,
    AskTimeout,
    AvatarIM,
    ClientClosedError,
    ConnectionState,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    MessageCancelledError,
    ReconnectPolicy,
    SpeakingTimeout,
)
from avatar_im.cli import sine_pcm
from avatar_im.families import BY_NAME, MODELLED_INTERRUPT, Status
from avatar_im.messages import (
    AsrText,
    BroadcastEnd,
    BroadcastStart,
    Message,
    Reply,
    ServerEvent,
    StartResult,
    UnknownMessage,
)
from avatar_im.server import ReferenceServer

FAST = ReconnectPolicy(initial_delay=0.01, max_delay=0.05)
#: 16-bit PCM at 16 kHz: bytes per second.
RATE_BYTES = 2 * 16000


def speech(seconds: float) -> bytes:
    """A tone the server hears as speech, then 0.5 s of silence that ends the utterance."""
    return sine_pcm(seconds) + bytes(RATE_BYTES // 2)


@pytest.fixture
def ready(make_cloud_client: ClientFactory) -> AvatarIM:
    """A client of the cloud-shaped server with a ready session."""
    client = make_cloud_client()
    client.start_session()
    client.wait_session_ready(TIMEOUT)
    return client


# --- the original's message families -------------------------------------------------------


def test_audio_in_asr_reply_and_broadcast_out(
    cloud_server: ReferenceServer, ready: AvatarIM
) -> None:
    """Speech goes up; ASR text, the reply and its broadcast come back, typed and in order."""
    cloud_server.hear("what time is it")
    ready.send_audio(speech(0.3))
    got = [ready.receive(TIMEOUT) for _ in range(4)]
    assert [m.family for m in got] == ["asr", "reply", "broadcast_start", "broadcast_end"]
    asr, reply, start, end = got
    assert isinstance(asr, AsrText) and asr.text == "what time is it" and asr.final is True
    assert isinstance(reply, Reply) and reply.text == "You said: what time is it"
    assert isinstance(start, BroadcastStart) and isinstance(end, BroadcastEnd)
    assert start.sentence_id == end.sentence_id and end.interrupted is False
    assert reply.raw["content"]["type"] == BY_NAME["reply"].wire_type
    assert reply["content"] == reply.content  # the envelope reads like the dict it was
    assert [m.seq for m in got] == sorted(m.seq for m in got)


def test_typed_values_are_frozen_and_keep_the_raw_envelope(
    cloud_server: ReferenceServer, ready: AvatarIM
) -> None:
    """Values are frozen; a type not in the table is an UnknownMessage, never an error."""
    cloud_server.send_message({"type": "somethingNew", "sessionId": "s0", "x": 1})
    cloud_server.send_message({"type": "replyContent", "sessionId": "s0", "text": 5})
    unknown = ready.receive(TIMEOUT)
    assert isinstance(unknown, UnknownMessage) and unknown.family == "unknown"
    assert unknown.type == "somethingNew" and unknown.content["x"] == 1
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        unknown.family = "reply"  # type: ignore[misc]
    odd = ready.receive(TIMEOUT)
    assert isinstance(odd, Reply) and odd.text is None  # a mistyped field: None, not an error
    cloud_server.send_event({"type": "avatarState", "on": True})
    event = ready.receive_event(TIMEOUT)
    assert isinstance(event, ServerEvent) and event.raw == {"type": "avatarState", "on": True}


def test_wait_session_ready_returns_the_start_result_once(ready: AvatarIM) -> None:
    """The startResult is returned by wait_session_ready and not also by receive()."""
    assert isinstance(ready.start_result, StartResult)
    ready.send_text("first")
    assert ready.receive(TIMEOUT).family == "reply"


def test_receive_filters_by_family(ready: AvatarIM) -> None:
    """receive(family=...) takes the oldest of those families and leaves the others."""
    ready.send_text("hello")
    end = ready.receive(TIMEOUT, family="broadcast_end")
    assert isinstance(end, BroadcastEnd)
    assert [ready.receive(TIMEOUT).family for _ in range(2)] == ["reply", "broadcast_start"]
    ready.send_text("again")
    assert ready.receive(TIMEOUT, family=["broadcast_start", "reply"]).family == "reply"
    with pytest.raises(InvalidArgumentError, match="unknown message family 'replies'"):
        ready.receive(0.01, family="replies")
    with pytest.raises(InvalidArgumentTypeError):
        ready.receive(0.01, family=3)  # type: ignore[arg-type]


# --- on() / off() --------------------------------------------------------------------------


def test_on_as_decorator_and_call_and_off(ready: AvatarIM) -> None:
    """on() registers for a family (decorator or call) from any thread; off() removes."""
    seen: list[tuple[str, Message]] = []
    done = threading.Event()

    @ready.on("reply")
    def reply(message: Message) -> None:
        seen.append(("reply", message))

    def anything(message: Message) -> None:
        seen.append(("message", message))
        if message.family == "broadcast_end":
            done.set()

    registrar = threading.Thread(target=ready.on, args=("message", anything))
    registrar.start()
    registrar.join(TIMEOUT)
    ready.send_text("hi")
    assert done.wait(TIMEOUT)
    names = [name for name, _ in seen]
    assert names == ["reply", "message", "message", "message"]  # own family first
    assert seen[0][1] is seen[1][1]
    assert ready.off("reply", reply) is True and ready.off("reply", reply) is False
    done.clear()
    seen.clear()
    ready.send_text("again")
    assert done.wait(TIMEOUT)
    assert [name for name, _ in seen] == ["message"] * 3


def test_on_refuses_unknown_families_and_non_callables(ready: AvatarIM) -> None:
    """A typo in a family name or a non-callable raises at the call."""
    with pytest.raises(InvalidArgumentError, match=r"known: .*broadcast_start"):
        ready.on("broadcastStart", print)
    with pytest.raises(InvalidArgumentTypeError):
        ready.on("reply", "print")  # type: ignore[call-overload]


def test_constructor_callbacks_keep_getting_envelopes(
    make_cloud_client: ClientFactory,
) -> None:
    """on_message still gets the raw envelope dict of every message."""
    envelopes: list[dict[str, Any]] = []
    client = make_cloud_client(on_message=envelopes.append)
    client.start_session()
    client.wait_session_ready(TIMEOUT)
    client.ask("x", TIMEOUT)
    assert wait_until(lambda: len(envelopes) >= 2, TIMEOUT)
    assert envelopes[0]["content"]["type"] == "startResult"
    assert envelopes[1]["content"] == {
        "type": "replyContent",
        "sessionId": "s0",
        "text": "You said: x",
    }


# --- speaking ------------------------------------------------------------------------------


def test_speaking_follows_the_broadcast(cloud_server: ReferenceServer, ready: AvatarIM) -> None:
    """speaking is True from broadcast start to end; wait_until_quiet waits for the end."""
    assert not ready.speaking
    started = threading.Event()
    ready.on("broadcast_start", lambda m: started.set())
    ready.send_text("a sentence " * 20)  # 220 characters: about 0.6 s at the fixture's rate
    assert started.wait(TIMEOUT)
    assert ready.speaking
    with pytest.raises(SpeakingTimeout):
        ready.wait_until_quiet(0)
    ready.wait_until_quiet(TIMEOUT)
    assert not ready.speaking
    assert cloud_server.session("s0").broadcasts[-1][2] is False  # spoken to its end


# --- ask() ---------------------------------------------------------------------------------


def test_ask_returns_the_reply_and_its_broadcast(ready: AvatarIM) -> None:
    """ask() returns the reply to its text; with wait_spoken, the broadcast of it too."""
    answer = ready.ask("hello", TIMEOUT, wait_spoken=True)
    assert answer.text == "You said: hello"
    assert answer.broadcast_start is not None and answer.broadcast_end is not None
    assert answer.broadcast_start.sentence_id == answer.broadcast_end.sentence_id
    assert not ready.speaking
    with pytest.raises(Exception, match="nothing received"):
        ready.receive(0.05)  # what the ask returned is its own


def test_ask_from_eight_threads_each_gets_its_own_reply(ready: AvatarIM) -> None:
    """8 threads ask at once, 5 times each: every answer is the reply to its own text."""
    answers: dict[str, str] = {}
    errors: list[BaseException] = []

    def asker(n: int) -> None:
        try:
            for k in range(5):
                text = f"thread {n} question {k}"
                answers[text] = ready.ask(text, TIMEOUT * 4).text
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=asker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT * 8)
    assert not errors
    assert len(answers) == 40
    assert all(reply == f"You said: {text}" for text, reply in answers.items())


def test_ask_times_out_with_the_message_id(make_client: ClientFactory) -> None:
    """Against a server that sends no reply family (echo), ask() raises AskTimeout."""
    client = make_client()
    client.start_session()
    client.wait_session_ready(TIMEOUT)
    with pytest.raises(AskTimeout) as info:
        client.ask("anyone?", 0.2)
    assert info.value.message_id.startswith("msg_")
    client.wait_ack(info.value.message_id, TIMEOUT)  # sent all the same


def test_ask_refuses_bad_input_and_a_closed_client(ready: AvatarIM) -> None:
    """Wrong types raise at the call; a closed client raises ClientClosedError."""
    with pytest.raises(InvalidArgumentTypeError):
        ready.ask(b"bytes", TIMEOUT)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        ready.ask("x", float("nan"))
    ready.close()
    with pytest.raises(ClientClosedError):
        ready.ask("x", TIMEOUT)


def test_ask_ends_with_the_close(ready: AvatarIM) -> None:
    """An ask waiting for its reply ends with ClientClosedError when the client closes."""
    ready.on("reply", lambda m: None)
    errors: list[BaseException] = []

    def asker() -> None:
        try:
            ready.ask("x", 30, wait_spoken=True)
        except BaseException as exc:
            errors.append(exc)

    ready.send_text("y" * 2000)  # a long sentence first: the ask's broadcast waits behind it
    thread = threading.Thread(target=asker)
    thread.start()
    assert wait_until(lambda: ready.stats.acks_received >= 3, TIMEOUT)
    ready.close()
    thread.join(TIMEOUT)
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], ClientClosedError)


# --- interrupt() ---------------------------------------------------------------------------


def test_interrupt_during_a_ten_second_stream(
    cloud_server: ReferenceServer, make_cloud_client: ClientFactory
) -> None:
    """interrupt() mid-stream, while reconnecting: the stream stops, the unsent chunks are cut
    and reported, the server never gets them, and the broadcast ends interrupted."""
    client = make_cloud_client(interrupt_via=MODELLED_INTERRUPT, reconnect=FAST)
    client.start_session()
    client.wait_session_ready(TIMEOUT)
    client.send_text("a long answer " * 40)  # the avatar speaks for about 1.5 s
    assert client.receive(TIMEOUT, family="broadcast_start")
    stream = client.stream_audio(sine_pcm(10.0), background=True)  # real time, 250 chunks
    assert wait_until(lambda: stream.chunks_sent >= 5, TIMEOUT)
    cloud_server.faults.refuse_handshake = 503  # the connection goes, and stays away a while
    cloud_server.drop_connections()
    sent_at_drop = stream.chunks_sent
    assert wait_until(lambda: stream.chunks_sent >= sent_at_drop + 5, TIMEOUT)
    reports: list[Any] = []
    interrupter = threading.Thread(target=lambda: reports.append(client.interrupt(TIMEOUT * 2)))
    interrupter.start()
    assert wait_until(lambda: client.stats.messages_cancelled > 0, TIMEOUT)
    cloud_server.faults.refuse_handshake = None
    interrupter.join(TIMEOUT * 3)
    assert reports, "interrupt() did not return"
    report = reports[0]
    assert stream.done and stream.seconds_sent < 10.0
    assert report.streams_stopped == 1 and report.service_told and report.via == "im"
    assert len(report.cancelled_audio) >= 5
    assert report.audio_seconds == pytest.approx(0.04 * len(report.cancelled_audio))
    assert report.result is not None and report.result.interrupted is True
    received = {mid for mid, _ in cloud_server.session("s0").messages}
    assert not received & set(report.cancelled)
    with pytest.raises(MessageCancelledError):
        client.wait_ack(report.cancelled[0], TIMEOUT)
    assert not client.speaking
    assert cloud_server.session("s0").broadcasts[0][2] is True  # ended, interrupted
    client.flush(TIMEOUT)  # what was written before the drop is delivered all the same


def test_interrupt_stops_a_broadcast_and_no_audio_arrives_after(
    cloud_server: ReferenceServer, make_cloud_client: ClientFactory
) -> None:
    """On a healthy connection: no audio reaches the server after interrupt() returned."""
    client = make_cloud_client(interrupt_via=MODELLED_INTERRUPT)
    client.start_session()
    client.wait_session_ready(TIMEOUT)
    cloud_server.hear("tell me everything")
    stream = client.stream_audio(speech(0.3) + sine_pcm(10.0), background=True)
    assert client.receive(TIMEOUT, family="broadcast_start")
    report = client.interrupt(TIMEOUT)
    returned_at = time.monotonic()
    assert stream.done and report.streams_stopped == 1 and not client.speaking
    end = client.receive(TIMEOUT, family="broadcast_end")
    assert isinstance(end, BroadcastEnd) and end.interrupted is True
    client.flush(TIMEOUT)
    arrivals = [at for at, _ in cloud_server.session("s0").audio_chunks]
    assert arrivals and max(arrivals) <= returned_at


def test_interrupt_with_no_way_to_tell_the_service(ready: AvatarIM) -> None:
    """Without interrupt_via, interrupt() stops and cuts; the report says nobody was told."""
    report = ready.interrupt(TIMEOUT)
    assert report.service_told is False and report.via is None and report.cancelled == ()


def test_interrupt_cuts_text_only_when_asked(make_cloud_client: ClientFactory) -> None:
    """Unsent text stays unless include_text=True; the cut ids are reported in send order."""
    from peers import silent_websocket_server

    with silent_websocket_server() as url:
        client = make_cloud_client(url=url)
        client.wait_connected(TIMEOUT)
        client.start_session()  # never answered: what follows stays unwritten
        text = client.send_text("held")
        audio = [client.send_audio(b"\x00\x00" * 160) for _ in range(3)]
        first = client.interrupt(TIMEOUT)
        assert first.cancelled == tuple(audio) and first.cancelled_text == ()
        assert first.audio_seconds == pytest.approx(0.03)
        second = client.interrupt(TIMEOUT, include_text=True)
        assert second.cancelled_text == (text,)
        with pytest.raises(InvalidArgumentTypeError):
            client.interrupt(TIMEOUT, include_text="yes")  # type: ignore[arg-type]
        client.close()


def test_interrupt_via_a_callable(ready: AvatarIM, make_cloud_client: ClientFactory) -> None:
    """A callable interrupt_via is called with the session id; its return confirms."""
    calls: list[str] = []
    client = make_cloud_client(session_id="s-call", interrupt_via=calls.append)
    client.start_session()
    client.wait_session_ready(TIMEOUT)
    report = client.interrupt(TIMEOUT)
    assert calls == ["s-call"] and report.service_told and report.via == "callable"
    with pytest.raises(InvalidArgumentTypeError):
        make_cloud_client(interrupt_via=42)
    with pytest.raises(InvalidArgumentError):
        make_cloud_client(interrupt_via={"no": "type"})


# --- compatibility with the original -------------------------------------------------------


def test_pass_through_start_options_reach_the_server(
    cloud_server: ReferenceServer, make_cloud_client: ClientFactory
) -> None:
    """voice, emotion, characterCode, extInfo and any other key go out as JSON values."""
    client = make_cloud_client()
    client.start_session(
        voice="xiaoyun",
        emotion="happy",
        character_code="c-1",
        ext_info={"k": [1, 2.5, None]},
        extra={"anyOther": True},
    )
    client.wait_session_ready(TIMEOUT)
    _, start = cloud_server.session("s0").messages[0]
    assert start["voice"] == "xiaoyun" and start["characterCode"] == "c-1"
    assert start["extInfo"] == {"k": [1, 2.5, None]} and start["anyOther"] is True
    assert start["sampleRate"] == "16000"  # the six are still there, checked
    client.wait_ack(client.refresh_context(voice="other"), TIMEOUT)
    assert cloud_server.session("s0").messages[-1][1]["voice"] == "other"


@pytest.mark.parametrize(
    "options",
    [
        {"ext_info": {"x": float("nan")}},
        {"voice": float("inf")},
        {"extra": {"sampleRate": "8000"}},
        {"extra": {1: "x"}},
        {"sample_rte": 8000},
        {"extra": {"v": object()}},
    ],
)
def test_bad_pass_through_options_raise_at_the_call(
    ready: AvatarIM, options: dict[str, Any]
) -> None:
    """Non-finite numbers, non-JSON values, reserved and unknown keys raise typed errors."""
    with pytest.raises(InvalidArgumentError):
        ready.start_session(**options)


def test_non_finite_numbers_are_refused_at_the_call(ready: AvatarIM) -> None:
    """send_message with NaN raises instead of writing null as the original does."""
    with pytest.raises(InvalidArgumentError):
        ready.send_message({"type": "x", "value": float("nan")})


def test_pushes_reach_a_reconnected_client_before_it_sends(
    cloud_server: ReferenceServer, make_cloud_client: ClientFactory
) -> None:
    """After a reconnect, the server routes the session's pushes to the new connection at once."""
    client = make_cloud_client(reconnect=FAST)
    client.start_session()
    client.wait_session_ready(TIMEOUT)
    sent = client.stats.messages_sent
    cloud_server.drop_connections()
    assert wait_until(lambda: client.stats.reconnects >= 1, TIMEOUT)
    assert wait_until(lambda: client.state is ConnectionState.OPEN, TIMEOUT)
    assert cloud_server.wait_for(lambda: cloud_server.session("s0").connected, TIMEOUT)
    cloud_server.send_message({"type": "replyContent", "text": "pushed"}, session_id="s0")
    assert client.receive(TIMEOUT).text == "pushed"
    assert client.stats.messages_sent == sent  # nothing sent since the drop


def test_ack_policy_is_checked_at_the_call(make_cloud_client: ClientFactory) -> None:
    """AckPolicy takes sets of strings and a bounded pause; the client takes only an AckPolicy.

    How the protocol reacts to the values: tests/test_protocol.py.
    """
    make_cloud_client(ack_policy=AckPolicy(session_lost={"GONE"}, rate_limited={"SLOW"}))
    with pytest.raises(InvalidArgumentError):
        AckPolicy(session_lost="GONE")
    with pytest.raises(InvalidArgumentError):
        AckPolicy(rate_limit_pause=-1)
    with pytest.raises(InvalidArgumentTypeError):
        make_cloud_client(ack_policy={"session_lost": {"GONE"}})


def test_families_table_marks_each_string() -> None:
    """Only startResult is confirmed downstream; the reference server's own are marked so."""
    confirmed = {f.wire_type for f in BY_NAME.values() if f.status is Status.CONFIRMED}
    assert confirmed == {"startResult"}
    assert BY_NAME["text_reply"].status is Status.REFERENCE


# --- what the review found -----------------------------------------------------------------


def test_an_oversized_start_is_refused_at_the_call(ready: AvatarIM) -> None:
    """A start over max_message_size raises at the call instead of looping on reconnects."""
    with pytest.raises(InvalidArgumentError, match="over the"):
        ready.start_session(extra={"k": "x" * (17 * 2**20)})
    assert ready.ask("still fine", TIMEOUT).text == "You said: still fine"


def test_a_late_reply_goes_to_receive_not_to_the_next_ask(make_client: ClientFactory) -> None:
    """A reply that comes after its ask timed out is not taken by the next ask."""
    release = threading.Event()

    def slow_for_a(text: str) -> str:
        if text == "a":
            release.wait(TIMEOUT)
        return f"You said: {text}"

    with ReferenceServer(reply=slow_for_a, speaking_rate=400.0, speaking_base=0.05) as server:
        client = make_client(url=server.url)
        client.start_session()
        client.wait_session_ready(TIMEOUT)
        with pytest.raises(AskTimeout):
            client.ask("a", 0.2)
        asked = []
        asker = threading.Thread(target=lambda: asked.append(client.ask("b", TIMEOUT).text))
        asker.start()
        assert wait_until(lambda: client.stats.acks_received >= 2, TIMEOUT)  # "b" is queued
        release.set()
        asker.join(TIMEOUT * 2)
        assert asked == ["You said: b"]
        assert client.receive(TIMEOUT, family="reply").text == "You said: a"
        client.close()


def test_an_interrupted_ask_ends_and_leaves_later_broadcasts_alone(
    make_cloud_client: ClientFactory,
) -> None:
    """An ask waiting for a broadcast that an interrupt dropped returns, marked interrupted;
    the broadcasts of later texts go to receive()."""
    client = make_cloud_client(interrupt_via=MODELLED_INTERRUPT)
    client.start_session()
    client.wait_session_ready(TIMEOUT)
    client.ask("a long answer " * 60, TIMEOUT)  # about 2 s of speech
    answers: list[Any] = []
    asker = threading.Thread(
        target=lambda: answers.append(client.ask("second", TIMEOUT * 4, wait_spoken=True))
    )
    asker.start()
    assert wait_until(lambda: client.stats.acks_received >= 3, TIMEOUT)
    client.interrupt(TIMEOUT)
    asker.join(TIMEOUT)
    assert answers and answers[0].text == "You said: second" and answers[0].interrupted
    client.send_text("third")
    start = client.receive(TIMEOUT, family="broadcast_start")
    assert start.text == "You said: third"


def test_a_refused_ask_or_interrupt_raises_at_once(
    cloud_server: ReferenceServer, make_cloud_client: ClientFactory
) -> None:
    """A text or an interrupt the server refuses raises AckError without waiting out the
    timeout (here none: the wait would never end)."""
    client = make_cloud_client(
        ack_policy=AckPolicy(session_lost=set()),  # the server's SESSION_NOT_FOUND is final
        interrupt_via=MODELLED_INTERRUPT,
        reconnect=FAST,
    )
    client.start_session()
    client.wait_session_ready(TIMEOUT)
    cloud_server.restart(keep_state=False)  # the session is forgotten
    errors: list[BaseException] = []

    def call(fn: Any) -> None:
        try:
            fn()
        except BaseException as exc:
            errors.append(exc)

    for fn in (lambda: client.ask("lost", None), lambda: client.interrupt(None)):
        thread = threading.Thread(target=call, args=(fn,))
        thread.start()
        thread.join(TIMEOUT)
        assert not thread.is_alive()
    assert [type(e).__name__ for e in errors] == ["AckError", "AckError"]
    assert all(e.error == "SESSION_NOT_FOUND" for e in errors)  # type: ignore[attr-defined]


def test_interrupt_via_errors_are_typed(make_cloud_client: ClientFactory) -> None:
    """A class is refused as interrupt_via; a callable that fails raises InterruptError."""
    from avatar_im import InterruptError

    with pytest.raises(InvalidArgumentTypeError):
        make_cloud_client(interrupt_via=dict)

    def broken(session_id: str) -> None:
        raise ZeroDivisionError("boom")

    client = make_cloud_client(interrupt_via=broken)
    client.start_session()
    client.wait_session_ready(TIMEOUT)
    with pytest.raises(InterruptError, match="ZeroDivisionError: boom") as info:
        client.interrupt(TIMEOUT)
    assert info.value.report.service_told is False  # type: ignore[attr-defined]


def test_wait_until_quiet_raises_once_closed(ready: AvatarIM) -> None:
    """Closing ends a wait_until_quiet with ClientClosedError, not a silent return."""
    ready.send_text("long " * 400)
    assert ready.receive(TIMEOUT, family="broadcast_start")
    errors: list[BaseException] = []

    def waiter() -> None:
        try:
            ready.wait_until_quiet(30)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=waiter)
    thread.start()
    ready.close()
    thread.join(TIMEOUT)
    assert len(errors) == 1 and isinstance(errors[0], ClientClosedError)
    with pytest.raises(ClientClosedError):
        ready.wait_until_quiet(1)


def test_receive_and_the_server_refuse_odd_arguments(
    cloud_server: ReferenceServer, ready: AvatarIM
) -> None:
    """Events are not business messages; unhashable names and non-str ids raise typed errors."""
    with pytest.raises(InvalidArgumentError, match="receive_event"):
        ready.receive(0.01, family="event")
    with pytest.raises(InvalidArgumentTypeError):
        ready.receive(0.01, family=[["reply"]])  # type: ignore[list-item]
    with pytest.raises(InvalidArgumentError):
        cloud_server.interrupt(["x"])  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="twice"):
        ready.start_session(voice="b", extra={"voice": "a"})
