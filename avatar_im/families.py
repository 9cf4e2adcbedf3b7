"""Every message type string and field name of the conversation, in one table.

The avatar service's wire strings are mostly unpublished.  Only ``startResult``
(downstream) and the four client messages ``start``, ``dataSend``,
``refreshContext`` and ``stop`` are *confirmed*: the original SDK's code sends
or waits for them.  The other families are named by the original's early
history (its commented-out callback list) without their strings: the strings
and fields below are *modelled*, ours, until seen from the service.  A third
kind, *reference*, is what only our reference server sends (its ``echo``
profile, for exact tests); the client never depends on those.

Confirming a modelled string later is a one-line change here: the client's
typed values (:mod:`avatar_im.messages`), the reference server and
``docs/protocol.md``'s table all read this module.

Pure data: no I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType

import attrs

__all__ = [
    "ANY_MESSAGE",
    "BY_NAME",
    "BY_WIRE_TYPE",
    "EVENT",
    "FAMILIES",
    "FIELDS",
    "MODELLED_INTERRUPT",
    "PSEUDO_FAMILIES",
    "UNKNOWN",
    "UPSTREAM",
    "UPSTREAM_BY_NAME",
    "Family",
    "Status",
    "Upstream",
    "family_of",
    "markdown_table",
]


class Status(enum.Enum):
    """How sure we are of a wire string."""

    CONFIRMED = "confirmed"  #: seen in the original SDK's code (source given)
    MODELLED = "modelled"  #: a family the original names; string and fields are ours
    REFERENCE = "reference"  #: sent only by our reference server (its ``echo`` profile)


@attrs.frozen
class Family:
    """One downstream message family: what ``client.on(name)`` and ``receive(family=name)`` use."""

    name: str  #: the family name in the Python API
    wire_type: str  #: ``content["type"]`` on the wire
    status: Status
    source: str  #: where the string comes from
    fields: tuple[str, ...] = ()  #: the content fields read, beside ``type`` and ``sessionId``
    summary: str = ""


@attrs.frozen
class Upstream:
    """One client message type (``content["type"]`` of what the client sends)."""

    name: str
    wire_type: str
    status: Status
    source: str
    summary: str = ""


_ORIGINAL = "the original SDK's code (aliyun/AvatarImSdk 0.1.5)"
_HISTORY = "named in the original's early history (callback list); string modelled"
_OURS = "the reference server's own"

#: Field names inside the modelled contents (one place, like the type strings).
FIELDS: Mapping[str, str] = MappingProxyType(
    {
        "session_id": "sessionId",
        "text": "text",
        "final": "final",
        "sentence_id": "sentenceId",
        "interrupted": "interrupted",
        "reply_to": "replyTo",  # reference only: the client never reads it
    }
)

FAMILIES: tuple[Family, ...] = (
    Family("start_result", "startResult", Status.CONFIRMED, _ORIGINAL, (), "the session is ready"),
    Family("stop_result", "stopResult", Status.MODELLED, _HISTORY, (), "the session stopped"),
    Family("suspend_result", "suspendResult", Status.MODELLED, _HISTORY, (), "paused"),
    Family("recover_result", "recoverResult", Status.MODELLED, _HISTORY, (), "resumed"),
    Family(
        "asr",
        "asrContent",
        Status.MODELLED,
        _HISTORY,
        ("text", "final"),
        "what the service heard the user say",
    ),
    Family("reply", "replyContent", Status.MODELLED, _HISTORY, ("text",), "the avatar's answer"),
    Family(
        "broadcast_start",
        "broadcastStart",
        Status.MODELLED,
        _HISTORY,
        ("sentenceId", "text"),
        "the avatar starts speaking a sentence",
    ),
    Family(
        "broadcast_end",
        "broadcastEnd",
        Status.MODELLED,
        _HISTORY,
        ("sentenceId", "interrupted"),
        "the avatar stopped speaking a sentence (to its end, or interrupted)",
    ),
    Family(
        "broadcast_data",
        "broadcastData",
        Status.MODELLED,
        _HISTORY,
        ("sentenceId",),
        "data about the sentence being spoken (not sent by the reference server)",
    ),
    Family(
        "interrupt_result",
        "interruptResult",
        Status.MODELLED,
        _HISTORY,
        ("interrupted",),
        "the result of an interrupt command",
    ),
    Family("text_reply", "textReply", Status.REFERENCE, _OURS, ("text", "replyTo"), "echo"),
    Family(
        "audio_received",
        "audioReceived",
        Status.REFERENCE,
        _OURS,
        ("bytes", "durationMs", "totalBytes", "totalDurationMs", "replyTo"),
        "echo: what audio arrived",
    ),
    Family("refresh_result", "refreshResult", Status.REFERENCE, _OURS, (), "echo: refreshed"),
)

UPSTREAM: tuple[Upstream, ...] = (
    Upstream("start", "start", Status.CONFIRMED, _ORIGINAL, "start the session"),
    Upstream("data_send", "dataSend", Status.CONFIRMED, _ORIGINAL, "text or audio"),
    Upstream("refresh", "refreshContext", Status.CONFIRMED, _ORIGINAL, "change session options"),
    Upstream("stop", "stop", Status.CONFIRMED, _ORIGINAL, "stop the session"),
    Upstream(
        "suspend", "suspend", Status.MODELLED, "the original's first versions (b4af2c1)", "pause"
    ),
    Upstream(
        "recover", "recover", Status.MODELLED, "the original's first versions (b4af2c1)", "resume"
    ),
    Upstream(
        "interrupt",
        "dataSend",
        Status.MODELLED,
        "a commented-out demo of the original (duplexCommand robotAction INTERRUPT)",
        "an IM-level interrupt: never sent unless configured",
    ),
)

#: Every family by its Python name, and by its wire string.
BY_NAME: Mapping[str, Family] = MappingProxyType({f.name: f for f in FAMILIES})
BY_WIRE_TYPE: Mapping[str, Family] = MappingProxyType({f.wire_type: f for f in FAMILIES})
#: Upstream message types by their Python name.
UPSTREAM_BY_NAME: Mapping[str, Upstream] = MappingProxyType({u.name: u for u in UPSTREAM})

#: The modelled IM-level interrupt (the ``content`` of a ``5``; ``sessionId`` is added).
#: Modelled, never confirmed: pass it as ``AvatarIM(interrupt_via=...)`` only against the
#: reference server, or once the service is known to take it.
MODELLED_INTERRUPT: Mapping[str, object] = MappingProxyType(
    {"type": "dataSend", "duplexCommand": {"robotAction": "INTERRUPT"}}
)

#: Pseudo-families the API accepts beside the table's: every business message, every
#: ``7`` event, and the messages whose type is not in the table.
ANY_MESSAGE = "message"
EVENT = "event"
UNKNOWN = "unknown"
PSEUDO_FAMILIES = (ANY_MESSAGE, EVENT, UNKNOWN)


def markdown_table() -> str:
    """The tables of ``docs/protocol.md``, made from this module.

    After an edit, paste the output of ``python -c "from avatar_im.families
    import markdown_table as t; print(t(), end='')"`` between the markers.
    """
    lines = [
        "| family (`on()`, `receive(family=)`) | wire `type` | status | fields | source |",
        "| --- | --- | --- | --- | --- |",
    ]
    for f in FAMILIES:
        fields = ", ".join(f"`{name}`" for name in f.fields) or "—"
        lines.append(f"| `{f.name}` | `{f.wire_type}` | {f.status.value} | {fields} | {f.source} |")
    lines += [
        "",
        "| client message | wire `type` | status | source |",
        "| --- | --- | --- | --- |",
    ]
    for u in UPSTREAM:
        lines.append(f"| {u.summary} | `{u.wire_type}` | {u.status.value} | {u.source} |")
    return "\n".join(lines) + "\n"


def family_of(wire_type: object) -> str:
    """The family name of a content ``type`` (``"unknown"`` when it is not in the table)."""
    family = BY_WIRE_TYPE.get(wire_type) if isinstance(wire_type, str) else None
    return UNKNOWN if family is None else family.name
