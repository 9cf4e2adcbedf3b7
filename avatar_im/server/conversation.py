"""The ``cloud`` profile's conversation of one session: speech detection, answers, broadcasts.

One :class:`Conversation` per session models what the cloud does between a
client's ``dataSend`` and the avatar's speech, with the message families the
original SDK names (their strings and fields come from :mod:`avatar_im.families`,
where they are marked *modelled*):

* **Speech detection** (a deterministic energy VAD over 16-bit little-endian
  mono samples; a ``wav`` chunk that starts with ``RIFF`` has its 44-byte
  header skipped), in frames of 20 ms.  A frame is *voiced* when its peak
  ``|sample|`` is above ``vad_threshold``: all-zero audio is never speech.  An
  utterance starts at a voiced frame and ends after ``end_silence`` seconds of unvoiced audio
  following it, or when no audio arrives for ``end_gap`` seconds (wall clock)
  after it, or on ``stop``.  Its end gives ``asrContent`` with the heard text:
  the next one queued with :meth:`Transcripts.add` (the server's ``hear()``),
  for this session first, then shared, else ``"<seconds> seconds of speech"``
  (the voiced span, one decimal).  The heard text is then to be *answered*: the
  caller turns it into a reply text and gives that to :meth:`Conversation.say`
  (ended by ``stop``, it is not answered).
* **Answers and broadcasts**: :meth:`Conversation.say` gives ``replyContent`` and
  queues the reply as a sentence.  Sentences are spoken one at a time, in
  order: ``broadcastStart`` when one starts, ``broadcastEnd`` with
  ``interrupted`` false ``speaking_base + len(text) / speaking_rate`` seconds
  later, and the next one starts at that very time.
* **Interrupt** (:meth:`Conversation.interrupt`): the sentence being spoken
  ends with ``broadcastEnd`` ``interrupted`` true, the queued ones are dropped,
  a partial utterance is dropped, then ``interruptResult`` tells whether
  something was being spoken.  ``stop`` and a restart end a broadcast the same
  way (without ``interruptResult``).
* **Suspend and recover**: while suspended, audio is ignored (a partial
  utterance is dropped on suspend); the caller gives no text to answer either.
  Sentences already queued are still spoken: suspension only stops new input.

Every method takes ``now`` (monotonic seconds) and first brings the
conversation up to *now* (sentences that ended meanwhile, an utterance whose
gap ran out), so a late timer changes when frames are sent, never what they
say: the times are computed from the schedule, not from the late call.  Each
returns a :class:`Step`: the contents to push, in order, and the heard texts to
answer.  :meth:`Conversation.next_deadline` says when to call
:meth:`Conversation.advance` next.

Pure: no threads, no sockets, no clock.  Not thread-safe: the server calls it
with its state lock held.
"""

from __future__ import annotations

import array
import math
import sys
from collections import deque
from collections.abc import Mapping
from typing import Any

import attrs

from ..exceptions import InvalidArgumentError
from ..families import BY_NAME, FIELDS
from .responder import BYTES_PER_SAMPLE, WAV_HEADER_BYTES

__all__ = [
    "DEFAULT_CONFIG",
    "Broadcast",
    "Conversation",
    "ConversationConfig",
    "Step",
    "Transcripts",
    "audio_peak",
    "default_reply",
    "result_content",
    "snapshot_fields",
]

#: Slack when comparing sums of chunk durations with a duration (0.1 * 4 is not always 0.4).
EPSILON = 1e-9

_TYPE = "type"
_SESSION_ID = FIELDS["session_id"]
_TEXT = FIELDS["text"]
_FINAL = FIELDS["final"]
_SENTENCE_ID = FIELDS["sentence_id"]
_INTERRUPTED = FIELDS["interrupted"]


def default_reply(text: str) -> str:
    """The default answer of the ``cloud`` profile: ``"You said: <text>"``."""
    return f"You said: {text}"


def result_content(family: str, session_id: str, **fields: Any) -> dict[str, Any]:
    """The content ``{"type": <family's wire type>, "sessionId": S, **fields}``.

    *fields* are named by :data:`~avatar_im.families.FIELDS` keys
    (``sentence_id=...`` becomes ``"sentenceId"``).
    """
    content: dict[str, Any] = {_TYPE: BY_NAME[family].wire_type, _SESSION_ID: session_id}
    for name, value in fields.items():
        content[FIELDS[name]] = value
    return content


def _positive(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{attribute.name} must be a finite number > 0, got {value!r}")


def _non_negative(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"{attribute.name} must be a finite number >= 0, got {value!r}")


def _threshold(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 32768:
        raise ValueError(f"{attribute.name} must be an int from 0 to 32768, got {value!r}")


@attrs.frozen(kw_only=True)
class ConversationConfig:
    """The timings and threshold of the ``cloud`` profile (``ReferenceServer`` options)."""

    #: Characters spoken per second.
    speaking_rate: float = attrs.field(default=15.0, validator=_positive)
    #: Seconds every sentence takes beside its characters.
    speaking_base: float = attrs.field(default=0.3, validator=_non_negative)
    #: A chunk is voiced when its peak ``|sample|`` is above this.
    vad_threshold: int = attrs.field(default=1000, validator=_threshold)
    #: Seconds of unvoiced audio after voiced audio that end an utterance.
    end_silence: float = attrs.field(default=0.4, validator=_positive)
    #: Seconds without any audio after voiced audio that end an utterance (wall clock).
    end_gap: float = attrs.field(default=0.6, validator=_positive)

    def speaking_time(self, text: str) -> float:
        """Seconds the avatar takes to speak *text*."""
        return self.speaking_base + len(text) / self.speaking_rate


DEFAULT_CONFIG = ConversationConfig()


class Transcripts:
    """What the server "hears" next: texts queued per session, then shared, in FIFO order."""

    def __init__(self) -> None:
        self.shared: deque[str] = deque()
        self.by_session: dict[str, deque[str]] = {}

    #: How many texts may wait to be heard, over all sessions (a test's, not a flood's).
    LIMIT = 10_000

    def __len__(self) -> int:
        return len(self.shared) + sum(len(q) for q in self.by_session.values())

    def add(self, text: str, session_id: str | None = None) -> None:
        """Queue *text* for *session_id*'s next utterance, or for anyone's (``None``).

        Raises :class:`InvalidArgumentError` beyond :attr:`LIMIT` queued texts.
        """
        if len(self) >= self.LIMIT:
            raise InvalidArgumentError(f"{self.LIMIT} texts are already queued to be heard")
        if session_id is None:
            self.shared.append(text)
        else:
            self.by_session.setdefault(session_id, deque()).append(text)

    def take(self, session_id: str) -> str | None:
        """Pop the next text for *session_id* (its own first); ``None`` if none is queued."""
        own = self.by_session.get(session_id)
        if own:
            text = own.popleft()
            if not own:
                del self.by_session[session_id]
            return text
        return self.shared.popleft() if self.shared else None


#: The speech detection judges audio in frames of this many seconds.
VAD_FRAME = 0.02


def audio_peak(chunk: bytes, *, audio_format: str) -> tuple[int, int]:
    """Return (peak ``|sample|``, number of samples) of a 16-bit LE mono *chunk*.

    For ``wav``, a chunk that starts with ``RIFF`` has its 44-byte header
    skipped; an odd last byte is ignored.
    """
    if audio_format == "wav" and chunk.startswith(b"RIFF"):
        chunk = chunk[WAV_HEADER_BYTES:]
    usable = len(chunk) - len(chunk) % BYTES_PER_SAMPLE
    if usable <= 0:
        return 0, 0
    samples = array.array("h")
    samples.frombytes(chunk[:usable])
    if sys.byteorder == "big":  # pragma: no cover - depends on the machine
        samples.byteswap()
    return max(abs(min(samples)), abs(max(samples))), len(samples)


@attrs.define
class Step:
    """What one call gave: contents to push in order, and heard texts to answer."""

    contents: list[dict[str, Any]] = attrs.field(factory=list)
    #: Heard texts, in order: give the reply text of each to :meth:`Conversation.say`.
    answers: list[str] = attrs.field(factory=list)

    def extend(self, other: Step) -> None:
        """Append *other*'s contents and answers to this step's."""
        self.contents.extend(other.contents)
        self.answers.extend(other.answers)


@attrs.define(kw_only=True)
class Broadcast:
    """One sentence spoken (or being spoken); ``interrupted`` is ``None`` while it is."""

    sentence_id: str
    text: str
    started_at: float
    interrupted: bool | None = None

    def as_tuple(self) -> tuple[str, str, bool | None]:
        """(sentence id, text, interrupted or ``None`` while speaking)."""
        return (self.sentence_id, self.text, self.interrupted)


@attrs.define
class _Speaking:
    broadcast: Broadcast
    ends_at: float


@attrs.define(kw_only=True)
class _Utterance:
    seconds: float = 0.0  # audio since the first voiced chunk
    voiced: float = 0.0  # audio from the first voiced chunk to the end of the last one
    silence: float = 0.0  # unvoiced audio since the last voiced chunk
    last_at: float  # arrival time of the last chunk


class Conversation:
    """The conversation of one session; see the module docstring.

    *transcripts* is where heard texts are taken from (shared between the
    conversations of one server).  *record_limit* bounds :attr:`broadcasts` and
    :attr:`heard` (``None``: keep everything).
    """

    def __init__(
        self,
        session_id: str,
        *,
        config: ConversationConfig = DEFAULT_CONFIG,
        transcripts: Transcripts | None = None,
        record_limit: int | None = None,
    ) -> None:
        self.session_id = session_id
        self.config = config
        self.transcripts = Transcripts() if transcripts is None else transcripts
        self.suspended = False
        self.interrupts = 0  #: interrupts handled (each gave an ``interruptResult``)
        #: Every sentence started, oldest first (the last ``record_limit`` with a limit).
        self.broadcasts: deque[Broadcast] = deque(maxlen=record_limit)
        #: Every heard text reported in an ``asrContent``, oldest first.
        self.heard: deque[str] = deque(maxlen=record_limit)
        self._queue: deque[tuple[str, str]] = deque()  # (sentence id, text) waiting
        self._speaking: _Speaking | None = None
        self._utterance: _Utterance | None = None
        self._sentences = 0  # sentence ids made, for unique ids across restarts

    # --- observation ---------------------------------------------------------------------

    @property
    def speaking(self) -> bool:
        """Whether a sentence is being spoken."""
        return self._speaking is not None

    @property
    def queued(self) -> list[str]:
        """The texts of the sentences waiting to be spoken, in order."""
        return [text for _, text in self._queue]

    @property
    def listening(self) -> bool:
        """Whether an utterance has started and not ended."""
        return self._utterance is not None

    def next_deadline(self) -> float | None:
        """When :meth:`advance` has something to do next (monotonic), or ``None``."""
        times = []
        if self._speaking is not None:
            times.append(self._speaking.ends_at)
        if self._utterance is not None:
            times.append(self._utterance.last_at + self.config.end_gap)
        return min(times, default=None)

    # --- input ---------------------------------------------------------------------------

    def advance(self, now: float) -> Step:
        """End what is due by *now*: sentences (starting the next ones), a gap-ended utterance."""
        step = Step()
        self._advance(now, step)
        return step

    def audio(self, chunk: bytes, now: float, *, audio_format: str, sample_rate: int) -> Step:
        """One audio chunk arrived at *now*: run the speech detection over it.

        The chunk is judged in frames of :data:`VAD_FRAME` seconds, so that a
        long chunk of speech then silence ends its utterance where the speech
        ends, and a chunk is never longer than the silence that ends one.
        """
        step = self.advance(now)
        if self.suspended:
            return step
        if audio_format == "wav" and chunk.startswith(b"RIFF"):
            chunk = chunk[WAV_HEADER_BYTES:]
        frame = max(1, round(VAD_FRAME * sample_rate)) * BYTES_PER_SAMPLE
        for start in range(0, len(chunk), frame):
            peak, count = audio_peak(chunk[start : start + frame], audio_format="pcm")
            if count:
                self._frame(step, peak, count / sample_rate, now)
        return step

    def _frame(self, step: Step, peak: int, seconds: float, now: float) -> None:
        utterance = self._utterance
        if peak > self.config.vad_threshold:
            if utterance is None:
                utterance = self._utterance = _Utterance(last_at=now)
            utterance.seconds += seconds
            utterance.voiced = utterance.seconds
            utterance.silence = 0.0
            utterance.last_at = now
        elif utterance is not None:
            utterance.seconds += seconds
            utterance.silence += seconds
            utterance.last_at = now
            if utterance.silence + EPSILON >= self.config.end_silence:
                self._end_utterance(step, answer=True)

    def say(self, text: str, now: float) -> Step:
        """Answer with *text*: ``replyContent``, then speak it after the queued sentences."""
        step = self.advance(now)
        step.contents.append(result_content("reply", self.session_id, text=text))
        self._sentences += 1
        self._queue.append((f"sentence-{self._sentences}", text))
        if self._speaking is None:
            self._start_next(step, at=now)
        return step

    def interrupt(self, now: float) -> Step:
        """Interrupt: end the sentence being spoken, drop the queue and a partial utterance."""
        step = self.advance(now)
        speaking = self._speaking is not None
        self._stop_speaking(step)
        self._utterance = None
        self.interrupts += 1
        step.contents.append(
            result_content("interrupt_result", self.session_id, interrupted=speaking)
        )
        return step

    def stop(self, now: float) -> Step:
        """The session stops: a partial utterance ends (not answered), the broadcast ends."""
        step = self.advance(now)
        if self._utterance is not None:
            self._end_utterance(step, answer=False)
        self._stop_speaking(step)
        self.suspended = False
        return step

    def restart(self, now: float) -> Step:
        """The session starts again: the broadcast ends, a partial utterance is dropped."""
        step = self.advance(now)
        self._utterance = None
        self._stop_speaking(step)
        self.suspended = False
        return step

    def suspend(self, now: float) -> Step:
        """Pause input: audio is ignored from now on (a partial utterance is dropped)."""
        step = self.advance(now)
        self._utterance = None
        self.suspended = True
        step.contents.append(result_content("suspend_result", self.session_id))
        return step

    def recover(self, now: float) -> Step:
        """Resume input."""
        step = self.advance(now)
        self.suspended = False
        step.contents.append(result_content("recover_result", self.session_id))
        return step

    # --- internals -----------------------------------------------------------------------

    def _advance(self, now: float, step: Step) -> None:
        while True:
            end = math.inf if self._speaking is None else self._speaking.ends_at
            gap = (
                math.inf
                if self._utterance is None
                else self._utterance.last_at + self.config.end_gap
            )
            if min(end, gap) > now:
                return
            if end <= gap:  # a tie: the sentence ends first
                self._end_sentence(step, interrupted=False)
                self._start_next(step, at=end)
            else:
                self._end_utterance(step, answer=True)

    def _start_next(self, step: Step, *, at: float) -> None:
        if self._speaking is not None or not self._queue:
            return
        sentence_id, text = self._queue.popleft()
        broadcast = Broadcast(sentence_id=sentence_id, text=text, started_at=at)
        self.broadcasts.append(broadcast)
        self._speaking = _Speaking(broadcast, at + self.config.speaking_time(text))
        step.contents.append(
            result_content("broadcast_start", self.session_id, sentence_id=sentence_id, text=text)
        )

    def _end_sentence(self, step: Step, *, interrupted: bool) -> None:
        assert self._speaking is not None
        broadcast = self._speaking.broadcast
        self._speaking = None
        broadcast.interrupted = interrupted
        step.contents.append(
            result_content(
                "broadcast_end",
                self.session_id,
                sentence_id=broadcast.sentence_id,
                interrupted=interrupted,
            )
        )

    def _stop_speaking(self, step: Step) -> None:
        self._queue.clear()
        if self._speaking is not None:
            self._end_sentence(step, interrupted=True)

    def _end_utterance(self, step: Step, *, answer: bool) -> None:
        utterance = self._utterance
        assert utterance is not None
        self._utterance = None
        text = self.transcripts.take(self.session_id)
        if text is None:
            text = f"{utterance.voiced:.1f} seconds of speech"
        self.heard.append(text)
        step.contents.append(result_content("asr", self.session_id, text=text, final=True))
        if answer:
            step.answers.append(text)


def snapshot_fields(conversation: Conversation) -> Mapping[str, Any]:
    """The :class:`~.state.SessionSnapshot` fields that come from *conversation*."""
    return {
        "speaking": conversation.speaking,
        "broadcasts": [broadcast.as_tuple() for broadcast in conversation.broadcasts],
        "interrupts": conversation.interrupts,
        "suspended": conversation.suspended,
        "heard": list(conversation.heard),
        "queued": conversation.queued,
    }
