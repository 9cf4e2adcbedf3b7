"""The reference server's cloud profile: speech detection, answers, broadcasts, interrupts.

Pure unit tests of avatar_im.server.conversation (every time is passed in), then loopback tests
driven by the raw websocket-client library.  Every wait is bounded.
"""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import pytest
import websocket
from conftest import TIMEOUT

from avatar_im.families import BY_NAME, FIELDS, MODELLED_INTERRUPT
from avatar_im.packets import encode_envelope
from avatar_im.server import (
    BAD_CONTENT,
    SESSION_NOT_FOUND,
    ConversationConfig,
    ReferenceServer,
    Request,
    SessionSnapshot,
)
from avatar_im.server.conversation import (
    Conversation,
    Transcripts,
    audio_peak,
    default_reply,
)
from avatar_im.server.state import Command, Peer, Refusal, ServerState, parse_content

RATE = 16000
#: 0.1 s of a loud square wave (peak 5000) and of silence, 16-bit LE mono at 16 kHz.
TONE = (5000).to_bytes(2, "little", signed=True) * 800 + (-5000).to_bytes(
    2, "little", signed=True
) * 800
SILENCE = b"\x00\x00" * 1600

#: The wire strings, from the one table.
START_RESULT = BY_NAME["start_result"].wire_type
STOP_RESULT = BY_NAME["stop_result"].wire_type
SUSPEND_RESULT = BY_NAME["suspend_result"].wire_type
RECOVER_RESULT = BY_NAME["recover_result"].wire_type
ASR = BY_NAME["asr"].wire_type
REPLY = BY_NAME["reply"].wire_type
BROADCAST_START = BY_NAME["broadcast_start"].wire_type
BROADCAST_END = BY_NAME["broadcast_end"].wire_type
INTERRUPT_RESULT = BY_NAME["interrupt_result"].wire_type
TEXT_REPLY = BY_NAME["text_reply"].wire_type
REFRESH_RESULT = BY_NAME["refresh_result"].wire_type
SID = FIELDS["session_id"]
SENTENCE_ID = FIELDS["sentence_id"]
INTERRUPTED = FIELDS["interrupted"]

#: Fast speech for the loopback tests: "You said: hi" (12 characters) takes 0.05 + 0.012 s.
FAST = {"speaking_rate": 1000.0, "speaking_base": 0.05}
#: Speech that outlasts any test: a sentence started is still being spoken at its end.
SLOW = {"speaking_base": 60.0}


def kinds(contents: list[dict[str, Any]]) -> list[str]:
    return [content["type"] for content in contents]


def interrupt_content(session_id: str) -> dict[str, Any]:
    return {**MODELLED_INTERRUPT, SID: session_id}


# --- pure: speech detection ------------------------------------------------------------------


def conversation(**config: Any) -> Conversation:
    return Conversation("s1", config=ConversationConfig(**config))


def feed(conv: Conversation, chunks: list[bytes], *, start: float = 0.0, step: float = 0.0) -> Any:
    """Feed *chunks* arriving at start, start + step...; return every content given."""
    out: list[dict[str, Any]] = []
    answers: list[str] = []
    for n, chunk in enumerate(chunks):
        result = conv.audio(chunk, start + n * step, audio_format="pcm", sample_rate=RATE)
        out += result.contents
        answers += result.answers
    return out, answers


def test_zero_audio_is_never_speech() -> None:
    """All-zero audio, however long, starts no utterance."""
    conv = conversation()
    contents, answers = feed(conv, [SILENCE] * 50)
    assert (contents, answers) == ([], [])
    assert not conv.listening and conv.next_deadline() is None


def test_voiced_means_peak_above_the_threshold() -> None:
    """A chunk is voiced when its peak |sample| is above vad_threshold, not at it."""

    def chunk(peak: int) -> bytes:
        return (-peak).to_bytes(2, "little", signed=True) + b"\x00\x00" * 99

    assert audio_peak(chunk(1000), audio_format="pcm") == (1000, 100)
    at_threshold = conversation(vad_threshold=1000)
    at_threshold.audio(chunk(1000), 0.0, audio_format="pcm", sample_rate=RATE)
    assert not at_threshold.listening
    above = conversation(vad_threshold=1000)
    above.audio(chunk(1001), 0.0, audio_format="pcm", sample_rate=RATE)
    assert above.listening


def test_wav_header_is_skipped() -> None:
    """In wav, a chunk's 44-byte RIFF header is not taken for samples (it would be loud)."""
    header = b"RIFF" + b"\xff\x7f" * 20
    assert audio_peak(header + SILENCE, audio_format="wav") == (0, 1600)
    assert audio_peak(header + SILENCE, audio_format="pcm")[0] > 1000
    assert audio_peak(b"\x01", audio_format="pcm") == (0, 0)


def test_utterance_ends_after_end_silence_of_unvoiced_audio() -> None:
    """Three voiced chunks then 0.4 s of silence: asrContent at the 4th silent chunk, not before."""
    conv = conversation()
    contents, _ = feed(conv, [TONE] * 3 + [SILENCE] * 3)
    assert contents == [] and conv.listening
    contents, answers = feed(conv, [SILENCE])
    assert contents == [
        {"type": ASR, SID: "s1", FIELDS["text"]: "0.3 seconds of speech", FIELDS["final"]: True}
    ]
    assert answers == ["0.3 seconds of speech"]
    assert not conv.listening and list(conv.heard) == ["0.3 seconds of speech"]


def test_short_pause_does_not_end_the_utterance() -> None:
    """Silence shorter than end_silence between voiced chunks is inside the utterance."""
    conv = conversation()
    contents, _ = feed(conv, [TONE, SILENCE, SILENCE, TONE] + [SILENCE] * 4)
    assert kinds(contents) == [ASR]
    assert contents[0][FIELDS["text"]] == "0.4 seconds of speech"  # the pause counts


def test_utterance_ends_when_audio_stops_coming() -> None:
    """No audio for end_gap seconds after voiced audio ends the utterance, at that deadline."""
    conv = conversation(end_gap=0.6)
    feed(conv, [TONE, TONE], start=10.0, step=0.1)
    assert conv.next_deadline() == pytest.approx(10.7)
    assert conv.advance(10.69).contents == []
    step = conv.advance(10.7)
    assert kinds(step.contents) == [ASR] and step.answers == ["0.2 seconds of speech"]
    assert conv.next_deadline() is None


def test_a_late_chunk_starts_a_new_utterance() -> None:
    """A chunk after the gap first ends the utterance it would have continued."""
    conv = conversation(end_gap=0.5)
    feed(conv, [TONE], start=0.0)
    contents, answers = feed(conv, [TONE], start=2.0)
    assert kinds(contents) == [ASR] and answers == ["0.1 seconds of speech"]
    assert conv.listening  # the late chunk began the next one


def test_heard_texts_per_session_then_shared_then_default() -> None:
    """hear() texts are used in order: this session's own first, then the shared ones."""
    transcripts = Transcripts()
    transcripts.add("shared one")
    transcripts.add("mine", "s1")
    transcripts.add("theirs", "s2")
    conv = Conversation("s1", transcripts=transcripts)
    heard = []
    for _ in range(3):
        contents, _ = feed(conv, [TONE] + [SILENCE] * 4)
        heard += [content[FIELDS["text"]] for content in contents]
    assert heard == ["mine", "shared one", "0.1 seconds of speech"]
    assert transcripts.take("s2") == "theirs" and transcripts.take("s2") is None


# --- pure: broadcasts, interrupts, suspension ------------------------------------------------


def test_sentence_is_spoken_for_base_plus_length_over_rate() -> None:
    """say(): replyContent, broadcastStart; broadcastEnd base + len/rate seconds later."""
    conv = conversation(speaking_rate=10.0, speaking_base=0.5)
    step = conv.say("abcde", 1.0)
    assert step.contents == [
        {"type": REPLY, SID: "s1", FIELDS["text"]: "abcde"},
        {"type": BROADCAST_START, SID: "s1", SENTENCE_ID: "sentence-1", FIELDS["text"]: "abcde"},
    ]
    assert conv.speaking and conv.next_deadline() == pytest.approx(2.0)
    assert conv.advance(1.99).contents == []
    assert conv.advance(2.0).contents == [
        {"type": BROADCAST_END, SID: "s1", SENTENCE_ID: "sentence-1", INTERRUPTED: False}
    ]
    assert not conv.speaking and conv.next_deadline() is None
    assert [b.as_tuple() for b in conv.broadcasts] == [("sentence-1", "abcde", False)]


def test_sentences_are_spoken_in_turn_on_schedule() -> None:
    """Queued sentences start when the previous one ends, even if the call comes late."""
    conv = conversation(speaking_rate=10.0, speaking_base=0.0)
    assert kinds(conv.say("one", 0.0).contents) == [REPLY, BROADCAST_START]
    assert kinds(conv.say("three", 0.1).contents) == [REPLY]  # queued behind "one"
    assert conv.queued == ["three"]
    # Called long after both ends: "three" started at 0.3 and ended at 0.8.
    step = conv.advance(5.0)
    assert kinds(step.contents) == [BROADCAST_END, BROADCAST_START, BROADCAST_END]
    assert [c[SENTENCE_ID] for c in step.contents] == ["sentence-1", "sentence-2", "sentence-2"]
    assert conv.broadcasts[1].started_at == pytest.approx(0.3)
    assert conv.next_deadline() is None


def test_interrupt_ends_the_sentence_and_drops_the_queue() -> None:
    """interrupt(): broadcastEnd interrupted, queue dropped, interruptResult interrupted true."""
    conv = conversation(speaking_rate=10.0, speaking_base=0.0)
    conv.say("first", 0.0)
    conv.say("second", 0.0)
    step = conv.interrupt(0.2)
    assert step.contents == [
        {"type": BROADCAST_END, SID: "s1", SENTENCE_ID: "sentence-1", INTERRUPTED: True},
        {"type": INTERRUPT_RESULT, SID: "s1", INTERRUPTED: True},
    ]
    assert conv.queued == [] and conv.next_deadline() is None and conv.interrupts == 1
    assert [b.as_tuple() for b in conv.broadcasts] == [("sentence-1", "first", True)]
    idle = conv.interrupt(0.3)
    assert idle.contents == [{"type": INTERRUPT_RESULT, SID: "s1", INTERRUPTED: False}]


def test_interrupt_after_the_sentence_ended_reports_nothing_spoken() -> None:
    """An interrupt that comes after the end is due ends nothing: the sentence ended first."""
    conv = conversation(speaking_rate=10.0, speaking_base=0.0)
    conv.say("abc", 0.0)
    step = conv.interrupt(1.0)
    assert [(c["type"], c[INTERRUPTED]) for c in step.contents] == [
        (BROADCAST_END, False),
        (INTERRUPT_RESULT, False),
    ]


def test_interrupt_drops_a_partial_utterance() -> None:
    """An interrupt while the user speaks drops the utterance: no asrContent follows."""
    conv = conversation()
    feed(conv, [TONE])
    conv.interrupt(0.05)
    assert not conv.listening
    contents, _ = feed(conv, [SILENCE] * 4, start=0.1)
    assert contents == [] and list(conv.heard) == []


def test_stop_reports_a_partial_utterance_and_ends_the_broadcast() -> None:
    """stop(): asrContent of the partial utterance (not answered), broadcastEnd interrupted."""
    conv = conversation()
    conv.say("speaking", 0.0)
    feed(conv, [TONE], start=0.1)
    step = conv.stop(0.2)
    assert kinds(step.contents) == [ASR, BROADCAST_END]
    assert step.answers == [] and step.contents[1][INTERRUPTED] is True


def test_suspended_audio_is_ignored() -> None:
    """suspend(): suspendResult, a partial utterance dropped, audio ignored until recover()."""
    conv = conversation()
    feed(conv, [TONE])
    assert conv.suspend(0.1).contents == [{"type": SUSPEND_RESULT, SID: "s1"}]
    assert conv.suspended and not conv.listening
    assert feed(conv, [TONE] + [SILENCE] * 4, start=0.2)[0] == []
    assert conv.recover(1.0).contents == [{"type": RECOVER_RESULT, SID: "s1"}]
    assert kinds(feed(conv, [TONE] + [SILENCE] * 4, start=1.1)[0]) == [ASR]


@pytest.mark.parametrize(
    "config",
    [
        {"speaking_rate": 0},
        {"speaking_rate": float("inf")},
        {"speaking_base": -1},
        {"vad_threshold": -1},
        {"vad_threshold": 1.5},
        {"end_silence": 0},
        {"end_gap": float("nan")},
    ],
)
def test_invalid_config_rejected(config: dict[str, Any]) -> None:
    """Rates and timings must be finite and positive, the threshold an int sample value."""
    with pytest.raises(ValueError):
        ConversationConfig(**config)
    with pytest.raises(ValueError):
        ReferenceServer(**{f"vad_{k}" if k.startswith("end_") else k: v for k, v in config.items()})


def test_invalid_profile_and_reply_rejected() -> None:
    with pytest.raises(ValueError):
        ReferenceServer(profile="real")
    with pytest.raises(TypeError):
        ReferenceServer(reply="You said")  # type: ignore[arg-type]


# --- pure: contents and the state's rules ----------------------------------------------------


def test_parse_suspend_recover_and_pass_through_keys() -> None:
    """suspend/recover parse; start and refresh keep unknown keys as extras, options checked."""
    for kind in ("suspend", "recover"):
        command = parse_content({"type": kind, "sessionId": "s1"})
        assert isinstance(command, Command) and command.type == kind
    extra = {"voice": "x", "emotion": 1, "characterCode": None, "extInfo": {"a": [1, 2]}}
    command = parse_content({"type": "start", "sessionId": "s1", "sampleRate": "8000", **extra})
    assert isinstance(command, Command)
    assert command.extras == extra and command.options == {"sample_rate": "8000"}
    refused = parse_content({"type": "refreshContext", "sessionId": "s1", "format": "mp3", **extra})
    assert isinstance(refused, Refusal) and refused.error == BAD_CONTENT


@pytest.mark.parametrize(
    ("content", "interrupt"),
    [
        (interrupt_content("s1"), True),
        ({**interrupt_content("s1"), "text": "and this"}, True),
        ({"type": "dataSend", "sessionId": "s1", "duplexCommand": {"robotAction": "QA"}}, False),
    ],
)
def test_parse_duplex_command(content: dict[str, Any], interrupt: bool) -> None:
    """A dataSend with a duplexCommand object needs no text or audio; INTERRUPT is flagged."""
    command = parse_content(content)
    assert isinstance(command, Command) and command.interrupt is interrupt


@pytest.mark.parametrize(
    "content",
    [
        {"type": "dataSend", "sessionId": "s1", "duplexCommand": "INTERRUPT"},
        {**interrupt_content("s1"), "text": "a", "audio": "AA=="},
        {"type": "suspend"},
    ],
)
def test_parse_bad_duplex_command(content: dict[str, Any]) -> None:
    assert isinstance(parse_content(content), Refusal)


def test_state_suspended_data_is_recorded_not_answered() -> None:
    """While suspended, a text is recorded and acked, with nothing to answer."""
    state = ServerState()
    peer = Peer(token="tok", app_id="app", tenant_id="ten")

    def handle(message_id: str, content: dict[str, Any], now: float = 0.0) -> Any:
        return state.handle_message(peer, 1, message_id, parse_content(content), now=now)

    assert kinds(handle("m0", {"type": "start", "sessionId": "s1"}).pushes) == [START_RESULT]
    assert handle("m1", {"type": "dataSend", "sessionId": "s1", "text": "hi"}).answers == ["hi"]
    assert kinds(handle("m2", {"type": "suspend", "sessionId": "s1"}).pushes) == [SUSPEND_RESULT]
    outcome = handle("m3", {"type": "dataSend", "sessionId": "s1", "text": "unheard"})
    assert (outcome.ack, outcome.pushes, outcome.answers) == ({"messageId": "m3"}, [], [])
    snapshot = state.snapshot("s1")
    assert snapshot is not None and snapshot.suspended and snapshot.texts == ["hi", "unheard"]
    assert state.say("gone", "x", now=0.0) == []


# --- loopback helpers ------------------------------------------------------------------------

Connect = Callable[..., Any]


@pytest.fixture
def connect() -> Iterator[Connect]:
    """A factory of raw connections that have received `1`; all closed at the end."""
    opened: list[Any] = []

    def factory(
        server: ReferenceServer, *, token: str = "tok", app: str = "app", tenant: str = "ten"
    ) -> Any:
        url = f"{server.url}?t={quote(token, safe='')}&app={quote(app, safe='')}&tenant={tenant}"
        ws = websocket.create_connection(url, timeout=TIMEOUT)
        ws.settimeout(TIMEOUT)
        opened.append(ws)
        assert ws.recv() == "1"
        return ws

    yield factory
    for ws in opened:
        with contextlib.suppress(Exception):
            ws.close(timeout=1)


def send(ws: Any, message_id: str, content: dict[str, Any]) -> None:
    ws.send(encode_envelope(message_id, "app", content))


def text(session_id: str, value: str) -> dict[str, Any]:
    return {"type": "dataSend", "sessionId": session_id, "text": value}


def audio(session_id: str, data: bytes) -> dict[str, Any]:
    return {"type": "dataSend", "sessionId": session_id, "audio": base64.b64encode(data).decode()}


def read(ws: Any) -> dict[str, Any]:
    """The next frame: a server 5's content, or {"ack": id} for a 6 (with its error if any)."""
    frame = ws.recv()
    body = json.loads(frame[1:])
    if frame[0] == "6":
        return {"ack": body["messageId"], **({"error": body["error"]} if "error" in body else {})}
    assert frame[0] == "5", frame
    content: dict[str, Any] = body["content"]
    return content


def read_n(ws: Any, count: int) -> list[dict[str, Any]]:
    return [read(ws) for _ in range(count)]


def read_until(ws: Any, kind: str, limit: int = 100) -> list[dict[str, Any]]:
    """Frames up to and including the first content of type *kind* (at most *limit*)."""
    seen = []
    for _ in range(limit):
        seen.append(read(ws))
        if seen[-1].get("type") == kind:
            return seen
    raise AssertionError(f"no {kind} in {limit} frames: {seen}")


def summary(frames: list[dict[str, Any]]) -> list[str]:
    return [f"ack {f['ack']}" if "ack" in f else f["type"] for f in frames]


def start(ws: Any, session_id: str = "s1", **options: Any) -> None:
    send(ws, f"start_{session_id}", {"type": "start", "sessionId": session_id, **options})
    assert summary(read_n(ws, 2)) == [f"ack start_{session_id}", START_RESULT]


def snapshot(server: ReferenceServer, session_id: str = "s1") -> SessionSnapshot:
    session = server.session(session_id)
    assert session is not None, f"no session {session_id}"
    return session


def assert_nothing_pending(ws: Any) -> None:
    """No frame is waiting on *ws*: a heartbeat's `4` is the next frame to arrive."""
    ws.send("3")
    assert ws.recv() == "4"


# --- loopback: text, audio, interrupts -------------------------------------------------------


def test_text_gets_reply_then_its_broadcast(connect: Connect) -> None:
    """A text: ack, replyContent, broadcastStart, then broadcastEnd once spoken, in order."""
    with ReferenceServer(message_id_prefix="srv_", **FAST) as server:
        ws = connect(server)
        start(ws)
        send(ws, "m1", text("s1", "hi"))
        assert ws.recv() == '6{"messageId":"m1"}'
        assert ws.recv() == (
            '5{"messageId":"srv_2","content":{"type":"replyContent","sessionId":"s1",'
            '"text":"You said: hi"}}'
        )
        assert ws.recv() == (
            '5{"messageId":"srv_3","content":{"type":"broadcastStart","sessionId":"s1",'
            '"sentenceId":"sentence-1","text":"You said: hi"}}'
        )
        assert ws.recv() == (
            '5{"messageId":"srv_4","content":{"type":"broadcastEnd","sessionId":"s1",'
            '"sentenceId":"sentence-1","interrupted":false}}'
        )
        session = server.session("s1")
        assert session is not None and not session.speaking
        assert session.broadcasts == [("sentence-1", "You said: hi", False)]
        assert_nothing_pending(ws)


def test_texts_are_spoken_one_after_another(connect: Connect) -> None:
    """Two texts sent at once: both replies at once, the second spoken after the first."""
    # The first sentence lasts long enough for the second text to arrive while it is spoken.
    with ReferenceServer(speaking_rate=1000.0, speaking_base=0.5) as server:
        ws = connect(server)
        start(ws)
        send(ws, "m1", text("s1", "one"))
        send(ws, "m2", text("s1", "two"))
        frames = read_until(ws, BROADCAST_END)
        frames += read_until(ws, BROADCAST_END)
        assert summary(frames) == [
            "ack m1",
            REPLY,
            BROADCAST_START,
            "ack m2",
            REPLY,
            BROADCAST_END,
            BROADCAST_START,
            BROADCAST_END,
        ]
        assert [f.get(SENTENCE_ID) for f in frames if "type" in f][1:] == [
            "sentence-1",
            None,
            "sentence-1",
            "sentence-2",
            "sentence-2",
        ]


def test_reply_option_makes_the_answer(connect: Connect) -> None:
    """reply= makes the answer text; a reply of None answers nothing."""
    answers = {"hi": "HELLO", "quiet": None}
    with ReferenceServer(reply=answers.get, **FAST) as server:
        ws = connect(server)
        start(ws)
        send(ws, "m1", text("s1", "quiet"))
        send(ws, "m2", text("s1", "hi"))
        frames = read_until(ws, BROADCAST_END)
        assert summary(frames) == ["ack m1", "ack m2", REPLY, BROADCAST_START, BROADCAST_END]
        assert frames[2]["text"] == "HELLO"
    assert default_reply("x") == "You said: x"


def test_failing_reply_is_logged_and_answers_nothing(
    connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    def reply(text: str) -> str:
        raise RuntimeError("boom")

    with ReferenceServer(reply=reply) as server:
        ws = connect(server)
        start(ws)
        send(ws, "m1", text("s1", "hi"))
        assert read(ws) == {"ack": "m1"}
        assert_nothing_pending(ws)
    assert any("reply failed" in record.getMessage() for record in caplog.records)


def test_audio_tone_then_silence_is_heard_and_answered(connect: Connect) -> None:
    """Tone then silence: asrContent with the hear() text, after the ack of the chunk that
    ended it; then the reply to it and its broadcast."""
    with ReferenceServer(**FAST) as server:
        server.hear("what time is it", session_id="s1")
        ws = connect(server)
        start(ws)
        chunks = [TONE] * 3 + [SILENCE] * 4
        for n, chunk in enumerate(chunks):
            send(ws, f"a{n}", audio("s1", chunk))
        frames = read_until(ws, BROADCAST_END)
        assert summary(frames) == [
            *(f"ack a{n}" for n in range(7)),
            ASR,
            REPLY,
            BROADCAST_START,
            BROADCAST_END,
        ]
        assert frames[7] == {
            "type": ASR,
            SID: "s1",
            "text": "what time is it",
            "final": True,
        }
        assert frames[8]["text"] == "You said: what time is it"
        session = server.session("s1")
        assert session is not None and session.heard == ["what time is it"]
        assert len(session.audio_chunks) == 7


def test_audio_ended_by_the_gap_uses_the_default_text(connect: Connect) -> None:
    """A tone with no audio after it ends on the timer, heard as '<seconds> seconds of speech'."""
    with ReferenceServer(vad_end_gap=0.2, **FAST) as server:
        ws = connect(server)
        start(ws)
        sent_at = time.monotonic()
        send(ws, "a1", audio("s1", TONE * 2))
        assert read(ws) == {"ack": "a1"}
        assert read(ws) == {"type": ASR, SID: "s1", "text": "0.2 seconds of speech", "final": True}
        assert time.monotonic() - sent_at >= 0.2  # on the timer, once the gap ran out
        frames = read_until(ws, BROADCAST_END)
        assert summary(frames) == [REPLY, BROADCAST_START, BROADCAST_END]
        assert frames[0]["text"] == "You said: 0.2 seconds of speech"


def test_zero_audio_gets_only_acks(connect: Connect) -> None:
    """Silence, as many tests send, is never speech: acks only."""
    with ReferenceServer() as server:
        ws = connect(server)
        start(ws)
        for n in range(10):
            send(ws, f"a{n}", audio("s1", SILENCE))
        assert summary(read_n(ws, 10)) == [f"ack a{n}" for n in range(10)]
        assert_nothing_pending(ws)


def test_interrupt_by_im_message_mid_broadcast(connect: Connect) -> None:
    """The modelled duplexCommand INTERRUPT: ack, broadcastEnd interrupted, interruptResult."""
    with ReferenceServer(**SLOW) as server:
        ws = connect(server)
        start(ws)
        send(ws, "m1", text("s1", "a long story"))
        send(ws, "m2", text("s1", "and another"))
        assert summary(read_n(ws, 5)) == ["ack m1", REPLY, BROADCAST_START, "ack m2", REPLY]
        send(ws, "i1", interrupt_content("s1"))
        frames = read_n(ws, 3)
        assert frames == [
            {"ack": "i1"},
            {"type": BROADCAST_END, SID: "s1", SENTENCE_ID: "sentence-1", INTERRUPTED: True},
            {"type": INTERRUPT_RESULT, SID: "s1", INTERRUPTED: True},
        ]
        assert_nothing_pending(ws)  # the queued sentence was dropped
        session = server.session("s1")
        assert session is not None
        assert (session.speaking, session.interrupts, session.queued) == (False, 1, [])
        assert session.broadcasts == [("sentence-1", "You said: a long story", True)]
        send(ws, "i2", interrupt_content("s1"))
        assert read_n(ws, 2) == [
            {"ack": "i2"},
            {"type": INTERRUPT_RESULT, SID: "s1", INTERRUPTED: False},
        ]


def test_interrupt_message_with_text_interrupts_then_answers(connect: Connect) -> None:
    with ReferenceServer(**SLOW) as server:
        ws = connect(server)
        start(ws)
        send(ws, "m1", text("s1", "first"))
        read_n(ws, 3)
        send(ws, "m2", {**interrupt_content("s1"), "text": "second"})
        frames = read_n(ws, 5)
        assert summary(frames) == [
            "ack m2",
            BROADCAST_END,
            INTERRUPT_RESULT,
            REPLY,
            BROADCAST_START,
        ]
        assert frames[4]["text"] == "You said: second"


def test_server_interrupt_mid_broadcast(connect: Connect) -> None:
    """server.interrupt(): broadcastEnd interrupted and interruptResult, to the session only."""
    with ReferenceServer(**SLOW) as server:
        ws = connect(server)
        other = connect(server)
        start(ws)
        start(other, "s2")
        send(ws, "m1", text("s1", "hi"))
        read_n(ws, 3)
        assert server.interrupt("s1") is True
        assert summary(read_n(ws, 2)) == [BROADCAST_END, INTERRUPT_RESULT]
        assert server.interrupt("s1") is False
        assert read(ws) == {"type": INTERRUPT_RESULT, SID: "s1", INTERRUPTED: False}
        assert server.interrupt("unknown") is False
        assert_nothing_pending(other)
        assert_nothing_pending(ws)


def test_stop_ends_the_broadcast_first(connect: Connect) -> None:
    """stop mid-broadcast: ack, broadcastEnd interrupted (queue dropped), then stopResult."""
    with ReferenceServer(**SLOW) as server:
        ws = connect(server)
        start(ws)
        send(ws, "m1", text("s1", "one"))
        send(ws, "m2", text("s1", "two"))
        read_n(ws, 5)
        send(ws, "x", {"type": "stop", "sessionId": "s1"})
        frames = read_n(ws, 3)
        assert summary(frames) == ["ack x", BROADCAST_END, STOP_RESULT]
        assert frames[1][INTERRUPTED] is True
        assert_nothing_pending(ws)
        assert server.interrupt("s1") is False  # stopped


def test_openapi_send_command_interrupts_the_im_session(connect: Connect) -> None:
    """FakeOpenAPI's SendCommand INTERRUPT, through the official SDK, reaches the IM server."""
    pytest.importorskip("alibabacloud_avatar20220130", reason="needs the 'aliyun' extra")
    from avatar_im.aliyun import AvatarOpenAPI
    from avatar_im.server.openapi import FakeOpenAPI

    with (
        ReferenceServer(credentials=[], **SLOW) as im,
        FakeOpenAPI(
            access_key_id="ak", access_key_secret="sk", tenant_id=1, app_id="app", im_server=im
        ) as fake,
        AvatarOpenAPI(fake.config(), timeout=TIMEOUT) as api,
    ):
        instance = api.start_instance(user_id="u1")
        assert instance.token is not None
        ws = connect(im, token=instance.token, app="app", tenant="1")
        session_id = instance.session_id
        start(ws, session_id)
        send(ws, "m1", text(session_id, "tell me"))
        assert summary(read_n(ws, 3)) == ["ack m1", REPLY, BROADCAST_START]
        api.interrupt(session_id)
        assert fake.interrupts == [session_id]
        frames = read_n(ws, 2)
        assert summary(frames) == [BROADCAST_END, INTERRUPT_RESULT]
        assert frames[0][INTERRUPTED] is True and frames[1][INTERRUPTED] is True
        api.stop_instance(session_id)


# --- loopback: suspend, refresh, profiles, responders ----------------------------------------


def test_suspend_and_recover(connect: Connect) -> None:
    """suspend: suspendResult; data acked and recorded, no answer; recover: recoverResult."""
    with ReferenceServer(**FAST) as server:
        ws = connect(server)
        send(ws, "early", {"type": "suspend", "sessionId": "s1"})
        assert read(ws) == {"ack": "early", "error": SESSION_NOT_FOUND}
        start(ws)
        send(ws, "p1", {"type": "suspend", "sessionId": "s1"})
        assert read_n(ws, 2) == [{"ack": "p1"}, {"type": SUSPEND_RESULT, SID: "s1"}]
        send(ws, "m1", text("s1", "unheard"))
        send(ws, "a1", audio("s1", TONE + SILENCE * 4))
        assert read_n(ws, 2) == [{"ack": "m1"}, {"ack": "a1"}]
        assert_nothing_pending(ws)
        session = server.session("s1")
        assert session is not None and session.suspended and session.texts == ["unheard"]
        send(ws, "r1", {"type": "recover", "sessionId": "s1"})
        assert read_n(ws, 2) == [{"ack": "r1"}, {"type": RECOVER_RESULT, SID: "s1"}]
        send(ws, "m2", text("s1", "heard"))
        assert summary(read_until(ws, BROADCAST_END)) == [
            "ack m2",
            REPLY,
            BROADCAST_START,
            BROADCAST_END,
        ]
        send(ws, "x", {"type": "stop", "sessionId": "s1"})
        read_n(ws, 2)
        send(ws, "late", {"type": "recover", "sessionId": "s1"})
        assert read(ws) == {"ack": "late", "error": SESSION_NOT_FOUND}


def test_refresh_gets_no_answer_and_extras_are_recorded(connect: Connect) -> None:
    """cloud: refreshContext is acked only; pass-through keys are recorded as extras."""
    with ReferenceServer() as server:
        ws = connect(server)
        start(ws, voice="zhixiaoxia", extInfo={"k": [1, None]})
        send(ws, "r1", {"type": "refreshContext", "sessionId": "s1", "emotion": "happy"})
        assert read(ws) == {"ack": "r1"}
        assert_nothing_pending(ws)
        session = server.session("s1")
        assert session is not None
        assert session.extras == {
            "voice": "zhixiaoxia",
            "extInfo": {"k": [1, None]},
            "emotion": "happy",
        }


def test_echo_profile_suspend_and_interrupt(connect: Connect) -> None:
    """echo: results go to the sender; an interrupt gives interruptResult only; text echoes."""
    with ReferenceServer(profile="echo") as server:
        ws = connect(server)
        start(ws)
        send(ws, "r1", {"type": "refreshContext", "sessionId": "s1", "voice": "v"})
        assert read_n(ws, 2) == [{"ack": "r1"}, {"type": REFRESH_RESULT, SID: "s1"}]
        send(ws, "i1", {**interrupt_content("s1"), "text": "hi"})
        frames = read_n(ws, 3)
        assert frames[:2] == [
            {"ack": "i1"},
            {"type": INTERRUPT_RESULT, SID: "s1", INTERRUPTED: False},
        ]
        assert frames[2]["type"] == TEXT_REPLY and frames[2]["text"] == "You said: hi"
        assert server.interrupt("s1") is False
        assert read(ws) == {"type": INTERRUPT_RESULT, SID: "s1", INTERRUPTED: False}
        send(ws, "p1", {"type": "suspend", "sessionId": "s1"})
        assert read_n(ws, 2) == [{"ack": "p1"}, {"type": SUSPEND_RESULT, SID: "s1"}]
        send(ws, "m1", text("s1", "unheard"))
        assert read(ws) == {"ack": "m1"}
        assert_nothing_pending(ws)


def test_custom_responder_replaces_the_cloud_answers(connect: Connect) -> None:
    """With a responder, text and audio get its replies: no asrContent, reply or broadcast."""
    seen: list[Request] = []

    def responder(request: Request) -> dict[str, Any]:
        seen.append(request)
        return {"type": "custom"}

    with ReferenceServer(responder=responder) as server:
        ws = connect(server)
        start(ws)
        send(ws, "m1", text("s1", "hi"))
        send(ws, "a1", audio("s1", TONE + SILENCE * 4))
        assert summary(read_n(ws, 4)) == ["ack m1", "custom", "ack a1", "custom"]
        assert_nothing_pending(ws)
    assert [request.text for request in seen] == ["hi", None]


# --- loopback: routing -----------------------------------------------------------------------


def test_pushes_reach_every_connection_of_the_session(connect: Connect) -> None:
    """A cloud push goes to every connection bound to the session, not only the sender."""
    with ReferenceServer(**FAST) as server:
        first, second = connect(server), connect(server)
        start(first)
        send(second, "r1", {"type": "refreshContext", "sessionId": "s1"})  # binds second
        assert read(second) == {"ack": "r1"}
        send(first, "m1", text("s1", "to both"))
        assert summary(read_until(first, BROADCAST_END)) == [
            "ack m1",
            REPLY,
            BROADCAST_START,
            BROADCAST_END,
        ]
        assert summary(read_until(second, BROADCAST_END)) == [REPLY, BROADCAST_START, BROADCAST_END]


def test_reconnect_is_bound_before_it_sends_anything(connect: Connect) -> None:
    """A new connection of the same token is bound at once to its orphaned session: pushes
    (send_message, the end of the sentence being spoken) reach it, though it sent nothing."""
    with ReferenceServer(**SLOW) as server:
        first = connect(server)
        start(first)
        send(first, "m1", text("s1", "hi"))
        assert summary(read_n(first, 3)) == ["ack m1", REPLY, BROADCAST_START]
        server.drop_connections()
        assert server.wait_for(lambda: server.stats.connections_open == 0, TIMEOUT)
        session = server.session("s1")
        assert session is not None and not session.connected and session.speaking
        again = connect(server)
        session = server.session("s1")
        assert session is not None and session.connected
        server.send_message({"type": "note"}, session_id="s1")
        assert read(again) == {"type": "note"}
        assert server.interrupt("s1") is True
        assert read_n(again, 2) == [
            {"type": BROADCAST_END, SID: "s1", SENTENCE_ID: "sentence-1", INTERRUPTED: True},
            {"type": INTERRUPT_RESULT, SID: "s1", INTERRUPTED: True},
        ]


def test_reconnect_receives_the_timer_s_pushes(connect: Connect) -> None:
    """An utterance ended by its gap while its connection was away is answered to the new one."""
    with ReferenceServer(vad_end_gap=0.3, **SLOW) as server:
        server.hear("are you there")
        first = connect(server)
        start(first)
        send(first, "a1", audio("s1", TONE))
        assert read(first) == {"ack": "a1"}
        server.drop_connections()
        assert server.wait_for(lambda: server.stats.connections_open == 0, TIMEOUT)
        again = connect(server)
        # Whether the gap ran out before or after the reconnect, the answer's broadcast is
        # still being spoken (SLOW): its interrupt reaches the new connection.
        assert server.wait_for(lambda: snapshot(server).speaking, TIMEOUT)
        assert server.interrupt("s1") is True
        frames = read_until(again, INTERRUPT_RESULT)
        assert summary(frames)[-2:] == [BROADCAST_END, INTERRUPT_RESULT]
        assert snapshot(server).heard == ["are you there"]


@pytest.mark.parametrize(
    "peer",
    [
        {"token": "tok", "tenant": "other"},
        {"token": "tok", "app": "other"},
        {"token": "another"},
    ],
)
def test_reconnect_binds_only_the_same_token_app_and_tenant(
    connect: Connect, peer: dict[str, str]
) -> None:
    """Another (app, tenant), or another token, is never bound to an orphaned session."""
    with ReferenceServer() as server:
        first = connect(server)
        start(first)
        first.close()
        assert server.wait_for(lambda: server.stats.connections_open == 0, TIMEOUT)
        stranger = connect(server, **peer)
        session = server.session("s1")
        assert session is not None and not session.connected
        assert server.interrupt("s1") is False
        assert_nothing_pending(stranger)


def test_peer_that_stops_reading_delays_no_other_session(connect: Connect) -> None:
    """A peer that never reads its (big) pushes blocks its own sender only: another session's
    broadcast still ends on time, its handler still reads, and stop() stays prompt."""
    from test_server import open_unread_connection

    big = "x" * 64 * 1024

    def reply(text: str) -> str:
        return big if text == "big" else default_reply(text)

    count = 128  # 128 pushes of 64 KiB: far more than loopback socket buffers hold
    server = ReferenceServer(reply=reply, **FAST).start()
    unread = open_unread_connection(server)
    try:
        messages = [("start", {"type": "start", "sessionId": "big"})]
        messages += [(f"b{n}", text("big", "big")) for n in range(count)]
        for message_id, content in messages:
            frame = encode_envelope(message_id, "app", content)
            unread.sendall(websocket.ABNF.create_frame(frame, websocket.ABNF.OPCODE_TEXT).format())

        # Its handler thread queues and never sends: it reads every message.
        def all_read() -> bool:
            session = server.session("big")  # None until its start is processed
            return session is not None and len(session.texts) == count

        assert server.wait_for(all_read, TIMEOUT * 2)
        ws = connect(server)
        start(ws)
        send(ws, "m1", text("s1", "hi"))
        assert summary(read_until(ws, BROADCAST_END)) == [
            "ack m1",
            REPLY,
            BROADCAST_START,
            BROADCAST_END,
        ]
        assert server.stats.acks_sent < 2 + len(messages)  # the unread peer's sender is stuck
    finally:
        server.stop()  # returns although a sender is stuck on the unread peer
        unread.close()
    left = [t for t in threading.enumerate() if t.name.startswith("avatar-im-server-")]
    for thread in left:
        thread.join(TIMEOUT)
    assert not [t for t in left if t.is_alive()]


def test_duplicate_gets_its_ack_only(connect: Connect) -> None:
    """A text sent again with the same id is acked again, and neither answered nor spoken."""
    with ReferenceServer(**SLOW) as server:
        ws = connect(server)
        start(ws)
        send(ws, "m1", text("s1", "once"))
        read_n(ws, 3)
        send(ws, "m1", text("s1", "once"))
        assert read(ws) == {"ack": "m1"}
        assert_nothing_pending(ws)
        assert snapshot(server).queued == []


def test_restart_ends_the_broadcast_then_start_result(connect: Connect) -> None:
    """A start of a started session mid-broadcast ends it (interrupted) before startResult."""
    with ReferenceServer(**SLOW) as server:
        ws = connect(server)
        start(ws)
        send(ws, "m1", text("s1", "hi"))
        read_n(ws, 3)
        send(ws, "again", {"type": "start", "sessionId": "s1"})
        frames = read_n(ws, 3)
        assert summary(frames) == ["ack again", BROADCAST_END, START_RESULT]
        assert frames[1][INTERRUPTED] is True and not snapshot(server).speaking


def test_hear_validates_its_arguments() -> None:
    server = ReferenceServer()
    with pytest.raises(TypeError):
        server.hear(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        server.hear("text", session_id="")


def test_record_limit_bounds_broadcasts_and_heard() -> None:
    """With a record_limit only the last broadcasts and heard texts are kept."""
    conv = Conversation("s1", record_limit=1)
    for n in range(3):
        conv.say(f"t{n}", float(n * 100))
        feed(conv, [TONE] + [SILENCE] * 4, start=float(n * 100))
    assert [b.text for b in conv.broadcasts] == ["t2"]
    assert list(conv.heard) == ["0.1 seconds of speech"]
