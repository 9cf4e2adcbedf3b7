"""Frames of the avatar IM wire protocol: packet types, parsing and serialising.

A frame is a WebSocket *text* frame: one ASCII digit (the packet type) and an
optional JSON body.  This module turns frames into :class:`Packet` values and
back, builds the business envelope (packet ``5``) and the session messages
that travel inside it.  JSON is written exactly as the original SDK's
``JSON.stringify`` writes it: no spaces, non-ASCII characters unescaped, keys
in the documented order.

Pure: no threads, no sockets, no clock.  Everything that can go wrong with
received bytes is raised as :class:`~avatar_im.exceptions.ProtocolError`
and nothing else.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from typing import Any

import attrs

from .exceptions import ProtocolError

__all__ = [
    "DISCONNECT_FINAL",
    "DISCONNECT_RECONNECT",
    "Packet",
    "PacketType",
    "decode_frame",
    "dumps",
    "encode_envelope",
    "encode_envelope_slow",
    "encode_frame",
    "envelope",
]

#: Envelope fields the original adds to every business message.
RECEIVER_ID = "ability"
RECEIVER_TYPE = "server"

#: ``2`` reasons after which the client reconnects.
DISCONNECT_RECONNECT = frozenset({"HEARTBEAT_TIMEOUT", "SERVER_CONNECTION_CLOSED", "UNIT_SWITCH"})
#: ``2`` reasons after which the client closes for good.
DISCONNECT_FINAL = frozenset({"CONNECTION_KICK_OUT", "CONNECTION_TIMEOUT"})


class PacketType(enum.IntEnum):
    """The packet type: the first character of every frame."""

    ACCEPTED = 1  #: server -> client, no body: connection accepted
    DISCONNECT = 2  #: server -> client, ``{"reason": R}``
    PING = 3  #: client -> server, no body: heartbeat
    PONG = 4  #: server -> client, no body: heartbeat answer
    MESSAGE = 5  #: both ways: the business envelope
    ACK = 6  #: server -> client, ``{"messageId": ..., "error"?: ...}``
    EVENT = 7  #: server -> client, any JSON object


# Which packet types carry a JSON object body; the others carry none.
_WITH_BODY = frozenset(
    {PacketType.DISCONNECT, PacketType.MESSAGE, PacketType.ACK, PacketType.EVENT}
)
_BY_DIGIT = {str(int(t)): t for t in PacketType}

# allow_nan=False: NaN and Infinity are not JSON; refused at the call, never put on the wire.
_encoder = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, check_circular=False, allow_nan=False
)


_encode = _encoder.encode
# The C string encoder the encoder above uses for str values (ensure_ascii=False).
_encode_str = json.encoder.encode_basestring
# One C scanner for object bodies; it raises StopIteration where nothing parses at 0.
_scan_once = json.decoder.JSONDecoder().scan_once  # type: ignore[attr-defined]
_JSON_SPACE = " \t\n\r"


def dumps(value: Any) -> str:
    """Serialise *value* the way ``JSON.stringify`` does (compact, UTF-8 text)."""
    return _encode(value)


@attrs.frozen
class Packet:
    """One decoded frame: its type and, for types 2, 5, 6 and 7, its JSON object body."""

    type: PacketType
    body: dict[str, Any] | None = None

    def encode(self) -> str:
        """Return the frame text: the digit, then the compact JSON body if any."""
        return encode_frame(self.type, self.body)

    @property
    def message_id(self) -> str | None:
        """The ``messageId`` of a ``5`` or ``6`` packet, else ``None``."""
        if self.body is None:
            return None
        value = self.body.get("messageId")
        return value if isinstance(value, str) else None


def encode_frame(packet_type: PacketType | int, body: Mapping[str, Any] | None = None) -> str:
    """Return the text of a frame of *packet_type* with an optional JSON *body*."""
    digit = str(int(PacketType(packet_type)))
    return digit if body is None else digit + dumps(body)


def decode_frame(data: str | bytes | bytearray | memoryview) -> Packet:
    """Parse one received frame into a :class:`Packet`.

    Raises :class:`ProtocolError` for anything that is not a valid frame:
    binary data, an empty frame, a first character that is not a packet type,
    a body that is not valid JSON, or a body of the wrong shape for its type.
    """
    if not isinstance(data, str):
        raise ProtocolError("binary frame: the protocol uses text frames only")
    if not data:
        raise ProtocolError("empty frame")
    packet_type = _BY_DIGIT.get(data[0])
    if packet_type is None:
        raise ProtocolError(f"unknown packet type {data[:1]!r}")
    text = data[1:]
    if packet_type not in _WITH_BODY:
        if text.strip():
            # Tolerate a body on bodiless packets only if it is a JSON object.
            _parse_object(text, packet_type)
        return Packet(packet_type)
    body = _parse_object(text, packet_type)
    _check_shape(packet_type, body)
    return Packet(packet_type, body)


def _parse_object(text: str, packet_type: PacketType) -> dict[str, Any]:
    if text[:1] == "{":
        # The usual body: an object from the first character.  One call to the C scanner
        # instead of json.loads -> decode -> raw_decode; anything else takes json.loads.
        try:
            body, end = _scan_once(text, 0)
        except (ValueError, StopIteration, RecursionError):
            body = None
        else:
            if end == len(text) or not text[end:].strip(_JSON_SPACE):
                return body  # type: ignore[no-any-return]
    try:
        body = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"packet {int(packet_type)}: body is not valid JSON") from exc
    if not isinstance(body, dict):
        raise ProtocolError(f"packet {int(packet_type)}: body is not a JSON object")
    return body


def _check_shape(packet_type: PacketType, body: dict[str, Any]) -> None:
    if packet_type is PacketType.DISCONNECT:
        if not isinstance(body.get("reason"), str):
            raise ProtocolError("packet 2: 'reason' must be a string")
    elif packet_type is PacketType.MESSAGE:
        message_id = body.get("messageId")
        if not isinstance(message_id, str) or not message_id:
            raise ProtocolError("packet 5: 'messageId' must be a non-empty string")
        if "content" in body and not isinstance(body["content"], dict):
            raise ProtocolError("packet 5: 'content' must be a JSON object")
    elif packet_type is PacketType.ACK and not isinstance(body.get("messageId"), str):
        raise ProtocolError("packet 6: 'messageId' must be a string")


def envelope(message_id: str, receiver_app_id: str, content: Any) -> dict[str, Any]:
    """Return the business envelope for *content*, keys in the documented order."""
    return {
        "messageId": message_id,
        "receiverAppId": receiver_app_id,
        "receiverId": RECEIVER_ID,
        "receiverType": RECEIVER_TYPE,
        "sticky": True,
        "content": content,
    }


#: The envelope's constant part after ``receiverAppId``, as :func:`dumps` writes it.
_ENVELOPE_TAIL = (
    f',"receiverId":{dumps(RECEIVER_ID)},"receiverType":{dumps(RECEIVER_TYPE)},'
    '"sticky":true,"content":'
)
# receiverAppId -> its encoded middle part (a client has one; bounded for safety).
_app_parts: dict[str, str] = {}


def _app_part(receiver_app_id: str) -> str:
    part = _app_parts.get(receiver_app_id)
    if part is None:
        part = ',"receiverAppId":' + dumps(receiver_app_id) + _ENVELOPE_TAIL
        if len(_app_parts) < 64:
            _app_parts[receiver_app_id] = part
    return part


def encode_envelope(message_id: str, receiver_app_id: str, content: Any) -> str:
    """Return the ``5`` frame text carrying *content* in the business envelope.

    Byte for byte ``"5" + dumps(envelope(message_id, receiver_app_id, content))``,
    built from the constant parts of the envelope (encoded once per app id) and
    the JSON of *content* alone.
    """
    if type(message_id) is not str or type(receiver_app_id) is not str:
        return encode_envelope_slow(message_id, receiver_app_id, content)
    return (
        '5{"messageId":'
        + _encode_str(message_id)
        + _app_part(receiver_app_id)
        + _encode(content)
        + "}"
    )


def encode_envelope_slow(message_id: str, receiver_app_id: str, content: Any) -> str:
    """The reference :func:`encode_envelope`: the whole envelope through :func:`dumps`."""
    return "5" + dumps(envelope(message_id, receiver_app_id, content))
