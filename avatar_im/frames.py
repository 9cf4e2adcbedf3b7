"""WebSocket framing (RFC 6455) for the client's data path: pure, sans-I/O.

``websocket-client`` still opens the connection (TCP, proxies, TLS and the
HTTP upgrade); after that the client reads and writes frames with this module,
because doing it in bulk is what makes the SDK cheaper than a hand-written
loop: one ``recv`` of up to 64 KiB parses every complete frame in it, and one
``sendall`` carries a whole batch of frames masked with one call for entropy.

* :func:`encode_frames` builds masked client frames from payloads and the
  random mask keys the caller supplies (4 bytes per frame).
* :class:`FrameReader` is fed received bytes and hands out whole messages
  (fragments joined), control frames, and :class:`Oversized` markers for
  messages over the size limit, whose payload it skips without keeping it.

* :func:`parse_close` and :func:`close_payload` read and build close frame
  bodies, refusing the codes RFC 6455 forbids on the wire (1005, 1006, 1015,
  anything below 1000 or unassigned).

No threads, no sockets, no clock, no randomness of its own.  Violations of the
framing rules raise :class:`FramingError`, which carries the close code to fail
the connection with (1002 for a protocol error, 1007 for bad UTF-8) and the
messages that were complete before the bad frame; the caller hands those out,
closes with the code and drops the connection.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Sequence

import attrs

__all__ = [
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONT",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "FrameReader",
    "FramingError",
    "Message",
    "Oversized",
    "close_payload",
    "encode_frames",
    "mask",
    "parse_close",
]

OP_CONT = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

_DATA_OPCODES = frozenset({OP_TEXT, OP_BINARY})
_CONTROL_OPCODES = frozenset({OP_CLOSE, OP_PING, OP_PONG})
_pack_16 = struct.Struct("!H").pack
_pack_64 = struct.Struct("!Q").pack
_unpack_16 = struct.Struct("!H").unpack_from
_unpack_64 = struct.Struct("!Q").unpack_from
_NATIVE = sys.byteorder
# The first byte of a whole unfragmented text or binary frame, no extension bits.
_SMALL_FIRST = frozenset({0x81, 0x82})


#: Close codes (RFC 6455, section 7.4.1).
CLOSE_NORMAL = 1000
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_INVALID_DATA = 1007
# Codes an endpoint must never put on the wire: "no status", "abnormal", "TLS failure".
_NEVER_SENT = frozenset({1005, 1006, 1015})
_ASSIGNED = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})


class FramingError(ValueError):
    """The peer broke the WebSocket framing rules; the connection cannot go on.

    :attr:`code` is the close code to fail the connection with; :attr:`messages`
    are the messages that were complete before the bad frame, in order.
    """

    def __init__(self, message: str, *, code: int = CLOSE_PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.code = code
        self.messages: list[Message | Oversized] = []


def _valid_close_code(code: int) -> bool:
    """True for a code a peer may send: assigned (1000-1014 but 1004-1006) or 3000-4999."""
    return code in _ASSIGNED or 3000 <= code <= 4999


def parse_close(payload: bytes) -> tuple[int | None, str]:
    """The code and reason of a received close frame's *payload* (``None``: no code).

    Raises :class:`FramingError` for a 1-byte payload or a code the RFC does not
    allow on the wire (1002), or a reason that is not UTF-8 (1007).
    """
    if not payload:
        return None, ""
    if len(payload) == 1:
        raise FramingError("a close frame with a 1-byte payload")
    (code,) = _unpack_16(payload, 0)
    if not _valid_close_code(code):
        raise FramingError(f"close code {code} is not allowed on the wire")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise FramingError("close reason is not UTF-8", code=CLOSE_INVALID_DATA) from None
    return code, reason


def close_payload(code: int | None, reason: str = "") -> bytes:
    """The payload of a close frame with *code* (``None``: an empty payload) and *reason*."""
    if code is None:
        return b""
    if code in _NEVER_SENT or not _valid_close_code(code):
        raise ValueError(f"close code {code} must not be sent")
    data = _pack_16(code) + reason.encode("utf-8")
    if len(data) > 125:
        raise ValueError("a close reason may be at most 123 bytes")
    return data


@attrs.frozen
class Message:
    """A whole data message (text or binary) or a control frame."""

    opcode: int
    payload: bytes


@attrs.frozen
class Oversized:
    """A data message longer than the limit; its payload was skipped."""

    size: int


def mask(payload: bytes, key: bytes) -> bytes:
    """XOR *payload* with the 4-byte *key* repeated (RFC 6455, section 5.3)."""
    n = len(payload)
    if not n:
        return b""
    repeated = key * (n // 4 + 1)
    value = int.from_bytes(payload, _NATIVE) ^ int.from_bytes(repeated[:n], _NATIVE)
    return value.to_bytes(n, _NATIVE)


def _header(opcode: int, length: int) -> bytes:
    first = 0x80 | opcode  # FIN, no extensions
    if length < 126:
        return bytes((first, 0x80 | length))
    if length < 65536:
        return bytes((first, 0x80 | 126)) + _pack_16(length)
    return bytes((first, 0x80 | 127)) + _pack_64(length)


def encode_frames(payloads: Sequence[bytes], keys: bytes, opcode: int = OP_TEXT) -> bytes:
    """Return the client frames for *payloads*, each masked with its own 4 bytes of *keys*."""
    if len(keys) < 4 * len(payloads):
        raise ValueError("encode_frames needs 4 key bytes per payload")
    parts: list[bytes] = []
    append = parts.append
    for i, payload in enumerate(payloads):
        key = keys[4 * i : 4 * i + 4]
        append(_header(opcode, len(payload)))
        append(key)
        append(mask(payload, key))
    return b"".join(parts)


class FrameReader:
    """Parses frames sent by a server (or, with *client_frames*, by a client), incrementally.

    Call :meth:`feed` with received bytes; it returns every message completed
    by them, in order.  Data messages longer than *max_message_size* are
    reported as :class:`Oversized` once, and their bytes are skipped as they
    arrive, so memory stays bounded whatever the peer sends.  Server frames
    must not be masked and client frames must be (RFC 6455, section 5.1).
    """

    def __init__(self, max_message_size: int | None = None, *, client_frames: bool = False) -> None:
        self._limit = max_message_size
        self._masked = client_frames
        self._buffer = bytearray()
        self._skip = 0  # payload bytes of an oversized frame still to throw away
        # The data message being reassembled from fragments: its opcode and parts.
        self._opcode: int | None = None
        # One buffer, not a list of fragments: memory follows the payload, however many
        # (even empty) fragments a peer cuts a message into.
        self._parts = bytearray()
        self._held = 0
        self._dropping = False  # the message in progress went over the limit

    def feed(self, data: bytes) -> list[Message | Oversized]:
        """Take *data*; return the messages it completed.

        Raises :class:`FramingError` at the first bad frame, with the messages
        completed before it on the error; the reader is unusable afterwards.
        """
        out: list[Message | Oversized] = []
        pos = 0
        if not self._buffer and not self._skip and self._opcode is None and not self._masked:
            # The usual read: whole small unfragmented server frames (acks, pongs, short
            # messages), taken straight from *data* without going through the buffer.
            # Anything else (a longer, partial, fragmented or bad frame) goes on below.
            end = len(data)
            limit = self._limit
            while end - pos >= 2:
                first = data[pos]
                length = data[pos + 1]
                stop = pos + 2 + length
                if (
                    first not in _SMALL_FIRST
                    or length > 125
                    or stop > end
                    or (limit is not None and length > limit)
                ):
                    break
                out.append(Message(first & 0x0F, bytes(data[pos + 2 : stop])))
                pos = stop
            if pos == end:
                return out
            if pos:
                data = data[pos:]
        try:
            self._feed(data, out)
        except FramingError as exc:
            exc.messages = out
            raise
        return out

    def _feed(self, data: bytes, out: list[Message | Oversized]) -> None:
        buffer = self._buffer
        buffer += data
        pos = 0
        end = len(buffer)
        while True:
            if self._skip:
                taken = min(self._skip, end - pos)
                self._skip -= taken
                pos += taken
                if self._skip:
                    break
            if end - pos < 2:
                break
            first, second = buffer[pos], buffer[pos + 1]
            if first & 0x70:
                raise FramingError("reserved bits set (no extension was negotiated)")
            fin = first & 0x80
            opcode = first & 0x0F
            masked = second & 0x80
            length = second & 0x7F
            offset = pos + 2
            if length == 126:
                if end - offset < 2:
                    break
                (length,) = _unpack_16(buffer, offset)
                offset += 2
            elif length == 127:
                if end - offset < 8:
                    break
                (length,) = _unpack_64(buffer, offset)
                if length >> 63:
                    raise FramingError("a 64-bit frame length with the top bit set")
                offset += 8
            if bool(masked) != self._masked:
                raise FramingError(
                    "a masked frame from the server" if masked else "an unmasked client frame"
                )
            key = b""
            if masked:
                if end - offset < 4:
                    break
                key = bytes(buffer[offset : offset + 4])
                offset += 4
            if opcode in _CONTROL_OPCODES:
                if not fin or length > 125:
                    raise FramingError("control frames must be whole and at most 125 bytes")
            elif opcode not in _DATA_OPCODES and opcode != OP_CONT:
                raise FramingError(f"unknown opcode {opcode:#x}")
            if opcode != OP_CONT and opcode not in _CONTROL_OPCODES and self._opcode is not None:
                raise FramingError("a new message started inside a fragmented one")
            if opcode == OP_CONT and self._opcode is None:
                raise FramingError("a continuation frame with no message to continue")
            if opcode not in _CONTROL_OPCODES and self._over_limit(length):
                # Skip this frame's payload without keeping it.
                pos = offset
                self._skip = length
                self._start_dropping(opcode, length, bool(fin), out)
                continue
            if end - offset < length:
                break
            payload = bytes(buffer[offset : offset + length])
            pos = offset + length
            if masked:
                payload = mask(payload, key)
            if opcode in _CONTROL_OPCODES:
                out.append(Message(opcode, payload))
            else:
                self._data_frame(opcode, payload, bool(fin), out)
        del buffer[:pos]

    def _over_limit(self, length: int) -> bool:
        if self._dropping:
            return True
        return self._limit is not None and self._held + length > self._limit

    def _start_dropping(
        self, opcode: int, length: int, fin: bool, out: list[Message | Oversized]
    ) -> None:
        if opcode != OP_CONT:
            self._opcode = opcode
        self._held += length
        self._parts = bytearray()
        self._dropping = True
        if fin:
            out.append(Oversized(self._held))
            self._reset()

    def _data_frame(
        self, opcode: int, payload: bytes, fin: bool, out: list[Message | Oversized]
    ) -> None:
        if opcode != OP_CONT:
            self._opcode = opcode
        if fin and not self._parts:
            out.append(Message(self._opcode or opcode, payload))
            self._reset()
            return
        self._parts += payload
        self._held += len(payload)
        if fin:
            assert self._opcode is not None
            out.append(Message(self._opcode, bytes(self._parts)))
            self._reset()

    def _reset(self) -> None:
        self._opcode = None
        self._parts = bytearray()
        self._held = 0
        self._dropping = False
