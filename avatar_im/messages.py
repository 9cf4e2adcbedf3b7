"""What the server sends, as typed, frozen values: one class per message family.

:func:`from_envelope` turns a received business message (packet ``5``) into
the value of its family (see :mod:`.families` for the wire strings and which
of them are confirmed); :func:`from_event` turns an event (packet ``7``) into a
:class:`ServerEvent`.  Parsing never fails: a type not in the table becomes an
:class:`UnknownMessage`, and a missing or mistyped field becomes ``None`` (or
``""`` for a text).  Every value keeps the raw envelope in :attr:`Message.raw`;
``message["content"]`` reads it too, for code written against envelope dicts.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs

from . import families
from .families import FIELDS

__all__ = [
    "AsrText",
    "BroadcastData",
    "BroadcastEnd",
    "BroadcastStart",
    "InterruptResult",
    "Message",
    "RecoverResult",
    "Reply",
    "ServerEvent",
    "StartResult",
    "StopResult",
    "SuspendResult",
    "UnknownMessage",
    "from_envelope",
    "from_event",
]


@attrs.frozen(kw_only=True)
class Message:
    """A message from the server: its family, its content and the raw envelope.

    ``seq`` numbers the values a client received, in arrival order (events and
    messages share the count); it is not part of equality.
    """

    family: str  #: the family name (``"reply"``, ``"broadcast_start"``, ... or ``"unknown"``)
    type: str | None  #: ``content["type"]`` as received
    session_id: str | None  #: ``content["sessionId"]``, when it is a string
    message_id: str | None  #: the envelope's ``messageId``
    content: Mapping[str, Any] = attrs.field(repr=False)  #: the envelope's ``content``
    raw: Mapping[str, Any] = attrs.field(repr=False)  #: the whole envelope, as received
    seq: int = attrs.field(default=0, eq=False, repr=False)

    #: The family name the class stands for (``None``: chosen per message).
    FAMILY: ClassVar[str | None] = None

    def __getitem__(self, key: str) -> Any:
        """``message["content"]``: read the raw envelope like a dict."""
        return self.raw[key]

    def get(self, key: str, default: Any = None) -> Any:
        """``message.get("content")``: read the raw envelope like a dict."""
        return self.raw.get(key, default)

    @property
    def text(self) -> str | None:
        """The content's text, for the families that carry one (else ``None``)."""
        value = self.content.get(FIELDS["text"])
        return value if isinstance(value, str) else None


@attrs.frozen(kw_only=True)
class StartResult(Message):
    """The session is ready (``startResult``: confirmed)."""

    FAMILY = "start_result"


@attrs.frozen(kw_only=True)
class StopResult(Message):
    """The session stopped (modelled)."""

    FAMILY = "stop_result"


@attrs.frozen(kw_only=True)
class SuspendResult(Message):
    """The session is suspended (modelled)."""

    FAMILY = "suspend_result"


@attrs.frozen(kw_only=True)
class RecoverResult(Message):
    """The session is recovered (modelled)."""

    FAMILY = "recover_result"


@attrs.frozen(kw_only=True)
class AsrText(Message):
    """What the service heard the user say (modelled)."""

    FAMILY = "asr"
    final: bool | None = None  #: whether this is the final transcript of the utterance


@attrs.frozen(kw_only=True)
class Reply(Message):
    """The avatar's answer (modelled)."""

    FAMILY = "reply"


@attrs.frozen(kw_only=True)
class BroadcastStart(Message):
    """The avatar starts speaking a sentence (modelled)."""

    FAMILY = "broadcast_start"
    sentence_id: str | None = None


@attrs.frozen(kw_only=True)
class BroadcastEnd(Message):
    """The avatar stopped speaking a sentence (modelled); ``interrupted`` says how."""

    FAMILY = "broadcast_end"
    sentence_id: str | None = None
    interrupted: bool | None = None


@attrs.frozen(kw_only=True)
class BroadcastData(Message):
    """Data about the sentence being spoken (modelled)."""

    FAMILY = "broadcast_data"
    sentence_id: str | None = None


@attrs.frozen(kw_only=True)
class InterruptResult(Message):
    """The service's answer to an interrupt (modelled)."""

    FAMILY = "interrupt_result"
    interrupted: bool | None = None


@attrs.frozen(kw_only=True)
class UnknownMessage(Message):
    """A message whose type is not in the table (or the reference server's own)."""


@attrs.frozen(kw_only=True)
class ServerEvent(Message):
    """An event (packet ``7``): ``content`` and ``raw`` are its body."""

    FAMILY = families.EVENT


_CLASSES: dict[str, type[Message]] = {
    cls.FAMILY: cls
    for cls in (
        StartResult,
        StopResult,
        SuspendResult,
        RecoverResult,
        AsrText,
        Reply,
        BroadcastStart,
        BroadcastEnd,
        BroadcastData,
        InterruptResult,
    )
    if cls.FAMILY is not None
}


def _str(content: Mapping[str, Any], field: str) -> str | None:
    value = content.get(FIELDS[field])
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # 1.0 and 1 are the same sentence
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # a sentence id may come as a number
    return value if isinstance(value, str) else None


def _bool(content: Mapping[str, Any], field: str) -> bool | None:
    value = content.get(FIELDS[field])
    return value if isinstance(value, bool) else None


def _extra(cls: type[Message], content: Mapping[str, Any]) -> dict[str, Any]:
    if cls is AsrText:
        return {"final": _bool(content, "final")}
    if cls in (BroadcastStart, BroadcastData):
        return {"sentence_id": _str(content, "sentence_id")}
    if cls is BroadcastEnd:
        return {
            "sentence_id": _str(content, "sentence_id"),
            "interrupted": _bool(content, "interrupted"),
        }
    if cls is InterruptResult:
        return {"interrupted": _bool(content, "interrupted")}
    return {}


def from_envelope(envelope: Mapping[str, Any], seq: int = 0) -> Message:
    """The typed value of a business message's *envelope* (never raises)."""
    content = envelope.get("content")
    if not isinstance(content, Mapping):
        content = {}
    wire_type = content.get("type")
    family = families.family_of(wire_type)
    cls = _CLASSES.get(family, UnknownMessage)
    message_id = envelope.get("messageId")
    return cls(
        family=family,
        type=wire_type if isinstance(wire_type, str) else None,
        session_id=_str(content, "session_id"),
        message_id=message_id if isinstance(message_id, str) else None,
        content=content,
        raw=envelope,
        seq=seq,
        **_extra(cls, content),
    )


def from_event(body: Mapping[str, Any], seq: int = 0) -> ServerEvent:
    """The typed value of an event's *body* (never raises)."""
    wire_type = body.get("type")
    return ServerEvent(
        family=families.EVENT,
        type=wire_type if isinstance(wire_type, str) else None,
        session_id=_str(body, "session_id"),
        message_id=None,
        content=body,
        raw=body,
        seq=seq,
    )
