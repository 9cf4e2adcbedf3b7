"""What the reference server answers to ``dataSend``: the responder interface and its default.

A *responder* is a callable ``responder(request) -> reply contents``.  The
server calls it once per processed ``dataSend`` message with text or audio
(not while the session is suspended), after the message is recorded and
acknowledged, outside every lock, on the thread that read the message.  Each
returned content is sent back to the sending connection as a server ``5``
message.  A responder that raises is logged; the message stays acknowledged
and gets no reply.

:func:`default_responder` is the ``echo`` profile's: it has no intelligence on
purpose, it echoes text and reports what audio it received, so tests can check
exact replies.  The ``cloud`` profile has no responder: its answers are the
conversation's (:mod:`.conversation`); giving the server a responder replaces
them (no ``asrContent``, ``replyContent`` or broadcast then).

Pure: no threads, no sockets, no clock.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from ..families import BY_NAME, FIELDS
from ..options import SessionOptions

__all__ = [
    "Replies",
    "Request",
    "Responder",
    "SessionInfo",
    "audio_duration",
    "default_responder",
]

#: The length of the canonical RIFF/WAVE header stripped from ``wav`` chunks.
WAV_HEADER_BYTES = 44
#: Audio is 16-bit mono: two bytes per sample.
BYTES_PER_SAMPLE = 2


@attrs.frozen(kw_only=True)
class SessionInfo:
    """A read-only view of a session at the time a message was processed.

    Totals include the message being answered.
    """

    session_id: str
    app_id: str
    tenant_id: str
    options: SessionOptions
    stopped: bool
    audio_total_bytes: int  #: decoded audio bytes received so far
    audio_total_duration: float  #: seconds of audio received so far

    @property
    def format(self) -> str:
        """The audio format the session was started with (``pcm`` or ``wav``)."""
        return self.options.format

    @property
    def sample_rate(self) -> int:
        """The sample rate the session was started with, in Hz."""
        return self.options.sample_rate


@attrs.frozen(kw_only=True)
class Request:
    """One processed ``dataSend`` message, as given to a responder."""

    message_id: str
    session: SessionInfo
    content: dict[str, Any]  #: a private copy of the message's ``content``
    text: str | None = None  #: the ``text`` field, when the message carried text
    audio: bytes | None = None  #: the decoded ``audio`` field, when it carried audio
    audio_duration: float = 0.0  #: seconds of audio in this message

    @property
    def session_id(self) -> str:
        """The id of the session the message was sent to."""
        return self.session.session_id


#: What a responder may return: one reply content, several, or none.
Replies = Sequence[Mapping[str, Any]] | Mapping[str, Any] | None
#: The responder interface.
Responder = Callable[[Request], Replies]


def audio_duration(chunk: bytes, *, audio_format: str, sample_rate: int) -> float:
    """Return the seconds of 16-bit mono audio in *chunk*.

    For ``wav``, a chunk that starts with ``RIFF`` is taken to carry a 44-byte
    header, which holds no samples.
    """
    size = len(chunk)
    if audio_format == "wav" and chunk.startswith(b"RIFF"):
        size = max(0, size - WAV_HEADER_BYTES)
    return size / (BYTES_PER_SAMPLE * sample_rate)


def _milliseconds(seconds: float) -> int:
    return round(seconds * 1000)


def default_responder(request: Request) -> list[dict[str, Any]]:
    """Echo text as ``textReply`` and acknowledge audio as ``audioReceived``.

    Text: ``{"type": "textReply", "sessionId": S, "replyTo": ID, "text": "You said: <text>"}``.
    Audio: ``{"type": "audioReceived", "sessionId": S, "replyTo": ID, "bytes": N,
    "durationMs": D, "totalBytes": T, "totalDurationMs": TD}``, durations in whole
    milliseconds, totals over the session's life.
    """
    if request.text is not None:
        return [
            {
                "type": BY_NAME["text_reply"].wire_type,
                FIELDS["session_id"]: request.session_id,
                FIELDS["reply_to"]: request.message_id,
                FIELDS["text"]: f"You said: {request.text}",
            }
        ]
    if request.audio is not None:
        return [
            {
                "type": BY_NAME["audio_received"].wire_type,
                FIELDS["session_id"]: request.session_id,
                FIELDS["reply_to"]: request.message_id,
                "bytes": len(request.audio),
                "durationMs": _milliseconds(request.audio_duration),
                "totalBytes": request.session.audio_total_bytes,
                "totalDurationMs": _milliseconds(request.session.audio_total_duration),
            }
        ]
    return []
