"""Unit tests of the sans-I/O WebSocket frame codec: no sockets."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from avatar_im.frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_TEXT,
    FrameReader,
    FramingError,
    Message,
    Oversized,
    close_payload,
    encode_frames,
    mask,
    parse_close,
)


def server_frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """An unmasked frame as a server sends it."""
    first = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        head = bytes((first, n))
    elif n < 65536:
        head = bytes((first, 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((first, 127)) + n.to_bytes(8, "big")
    return head + payload


def test_mask_is_an_involution() -> None:
    """Masking twice with the same key gives the payload back, for every length."""
    key = os.urandom(4)
    for n in (0, 1, 3, 4, 5, 125, 126, 65535, 65536):
        payload = os.urandom(n)
        assert mask(mask(payload, key), key) == payload


@pytest.mark.parametrize("size", [0, 5, 125, 126, 65535, 65536, 200_000])
def test_client_frames_round_trip_through_the_reader(size: int) -> None:
    """Masked client frames of every length class decode back to their payloads."""
    payloads = [b"x" * size, "你好".encode()]
    data = encode_frames(payloads, os.urandom(8))
    assert FrameReader(client_frames=True).feed(data) == [Message(OP_TEXT, p) for p in payloads]


def test_frames_fed_byte_by_byte() -> None:
    """A stream cut at every byte still yields each message once, in order."""
    data = (
        server_frame(OP_TEXT, b"1")
        + server_frame(OP_TEXT, b"x" * 300)
        + server_frame(OP_PING, b"p")
    )
    reader = FrameReader()
    got = []
    for i in range(len(data)):
        got += reader.feed(data[i : i + 1])
    assert got == [Message(OP_TEXT, b"1"), Message(OP_TEXT, b"x" * 300), Message(OP_PING, b"p")]


def test_fragments_are_joined_around_control_frames() -> None:
    """Fragments make one message; a control frame between them comes out on its own."""
    data = (
        server_frame(OP_TEXT, b"ab", fin=False)
        + server_frame(OP_PING, b"")
        + server_frame(OP_CONT, b"cd", fin=False)
        + server_frame(OP_CONT, b"e")
    )
    assert FrameReader().feed(data) == [Message(OP_PING, b""), Message(OP_TEXT, b"abcde")]


def test_oversized_frame_is_skipped_and_reported_once() -> None:
    """A frame over the limit is reported as Oversized and its payload skipped, in pieces."""
    reader = FrameReader(max_message_size=10)
    data = server_frame(OP_TEXT, b"y" * 5000) + server_frame(OP_TEXT, b"ok")
    got = []
    for start in range(0, len(data), 700):
        got += reader.feed(data[start : start + 700])
    assert got == [Oversized(5000), Message(OP_TEXT, b"ok")]
    assert len(reader._buffer) == 0


def test_oversized_fragmented_message_is_dropped_whole() -> None:
    """Fragments that together pass the limit are dropped; the next message is intact."""
    data = (
        server_frame(OP_BINARY, b"a" * 6, fin=False)
        + server_frame(OP_CONT, b"b" * 6, fin=False)
        + server_frame(OP_CONT, b"c" * 6)
        + server_frame(OP_TEXT, b"next")
    )
    assert FrameReader(max_message_size=10).feed(data) == [Oversized(18), Message(OP_TEXT, b"next")]


@pytest.mark.parametrize(
    "data",
    [
        bytes((0xC1, 0)),  # RSV1 set
        bytes((0x83, 0)),  # unknown opcode 3
        bytes((0x09, 0)),  # fragmented ping
        bytes((0x89, 126)) + (200).to_bytes(2, "big") + b"p" * 200,  # long ping
        server_frame(OP_CONT, b"x"),  # continuation of nothing
        server_frame(OP_TEXT, b"a", fin=False) + server_frame(OP_TEXT, b"b"),  # nested message
    ],
)
def test_framing_violations_raise(data: bytes) -> None:
    """Frames that break RFC 6455 raise FramingError."""
    with pytest.raises(FramingError):
        FrameReader().feed(data)


def test_close_frame_is_a_message() -> None:
    """A close frame comes out as a control message for the transport to answer."""
    assert FrameReader().feed(server_frame(OP_CLOSE, b"\x03\xe8")) == [
        Message(OP_CLOSE, b"\x03\xe8")
    ]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_reader_fuzz(chunks: list[bytes]) -> None:
    """Arbitrary bytes: the reader returns messages or raises FramingError, nothing else."""
    reader = FrameReader(max_message_size=256)
    try:
        for chunk in chunks:
            for item in reader.feed(chunk):
                assert isinstance(item, (Message, Oversized))
    except FramingError:
        pass


def test_masked_server_frame_is_a_protocol_error() -> None:
    """A server frame with the mask bit set fails with 1002 (RFC 6455, section 5.1)."""
    with pytest.raises(FramingError) as caught:
        FrameReader().feed(encode_frames([b"5{}"], os.urandom(4)))
    assert caught.value.code == 1002


def test_unmasked_client_frame_is_refused_in_client_mode() -> None:
    """A reader of client frames refuses an unmasked one."""
    with pytest.raises(FramingError):
        FrameReader(client_frames=True).feed(server_frame(OP_TEXT, b"x"))


def test_64_bit_length_with_top_bit_set_is_refused() -> None:
    """A 64-bit payload length must have its most significant bit clear."""
    data = bytes((0x81, 127)) + (1 << 63 | 5).to_bytes(8, "big") + b"hello"
    with pytest.raises(FramingError) as caught:
        FrameReader().feed(data)
    assert caught.value.code == 1002


def test_valid_frames_before_a_bad_one_are_kept_on_the_error() -> None:
    """Messages completed in the same read before a bad frame travel on the error, in order."""
    data = server_frame(OP_TEXT, b"4") + server_frame(OP_TEXT, b"6{}") + bytes((0xC1, 0))
    with pytest.raises(FramingError) as caught:
        FrameReader().feed(data)
    assert caught.value.messages == [Message(OP_TEXT, b"4"), Message(OP_TEXT, b"6{}")]


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"", (None, "")),
        (b"\x03\xe8", (1000, "")),
        (b"\x03\xe9bye", (1001, "bye")),
        (b"\x0b\xb8", (3000, "")),
        (b"\x13\x87", (4999, "")),
    ],
)
def test_parse_close_accepts_valid_codes(payload: bytes, expected: tuple[int | None, str]) -> None:
    """Empty, assigned and application close codes are read with their reason."""
    assert parse_close(payload) == expected


@pytest.mark.parametrize(
    "payload",
    [
        b"\x03",  # 1 byte
        (999).to_bytes(2, "big"),
        (1004).to_bytes(2, "big"),
        (1005).to_bytes(2, "big"),
        (1006).to_bytes(2, "big"),
        (1015).to_bytes(2, "big"),
        (1016).to_bytes(2, "big"),
        (2999).to_bytes(2, "big"),
        (5000).to_bytes(2, "big"),
    ],
)
def test_parse_close_refuses_codes_not_allowed_on_the_wire(payload: bytes) -> None:
    """A 1-byte payload and codes that must never be sent are protocol errors (1002)."""
    with pytest.raises(FramingError) as caught:
        parse_close(payload)
    assert caught.value.code == 1002


def test_parse_close_refuses_a_reason_that_is_not_utf8() -> None:
    """A close reason that is not UTF-8 is invalid data (1007)."""
    with pytest.raises(FramingError) as caught:
        parse_close(b"\x03\xe8\xff")
    assert caught.value.code == 1007


@pytest.mark.parametrize("code", [1005, 1006, 1015, 999, 5000])
def test_close_payload_never_builds_a_forbidden_code(code: int) -> None:
    """close_payload refuses the codes that must not appear on the wire."""
    with pytest.raises(ValueError):
        close_payload(code)
    assert close_payload(None) == b""


def test_many_tiny_fragments_cost_memory_like_their_payload() -> None:
    """200,000 one-byte fragments are held as one buffer, not 200,000 objects."""
    import tracemalloc

    first = server_frame(OP_TEXT, b"a", fin=False)
    middle = server_frame(OP_CONT, b"b", fin=False)
    data = first + middle * 199_998 + server_frame(OP_CONT, b"c")
    reader = FrameReader(max_message_size=1 << 20)
    tracemalloc.start()
    try:
        got = []
        for start in range(0, len(data), 65536):
            got += reader.feed(data[start : start + 65536])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert got == [Message(OP_TEXT, b"a" + b"b" * 199_998 + b"c")]
    assert peak < 2_000_000  # a list of fragments took ~8 MB


def _feed_slowly(reader: FrameReader, data: bytes) -> list[Message | Oversized]:
    """Feed one byte at a time: every frame goes through the buffered (general) path."""
    out: list[Message | Oversized] = []
    for i in range(len(data)):
        out += reader.feed(data[i : i + 1])
    return out


_server_frames = st.lists(
    st.tuples(
        st.sampled_from([OP_TEXT, OP_BINARY, OP_PING]),
        st.binary(max_size=300),
        st.booleans(),
    ),
    max_size=6,
)


@settings(max_examples=300, deadline=None)
@given(frames=_server_frames, cut=st.integers(min_value=0, max_value=2000))
def test_the_small_frame_fast_path_agrees_with_the_buffered_path(
    frames: list[tuple[int, bytes, bool]], cut: int
) -> None:
    """Whole small frames read in one feed give what the buffered parser gives, cut anywhere."""
    data = b"".join(
        server_frame(op, payload[:125] if op == OP_PING else payload) for op, payload, _ in frames
    )
    expected = _feed_slowly(FrameReader(200), data)
    assert FrameReader(200).feed(data) == expected
    reader = FrameReader(200)
    cut = min(cut, len(data))
    assert reader.feed(data[:cut]) + reader.feed(data[cut:]) == expected


def test_the_fast_path_leaves_violations_and_fragments_to_the_general_parser() -> None:
    """A bad frame after good small ones still fails, with the good ones on the error."""
    good = server_frame(OP_TEXT, b"ok")
    with pytest.raises(FramingError) as caught:
        FrameReader().feed(good + bytes((0x81 | 0x40, 0)))
    assert caught.value.messages == [Message(OP_TEXT, b"ok")]
    first = server_frame(OP_TEXT, b"he", fin=False)
    rest = server_frame(OP_CONT, b"llo")
    assert FrameReader().feed(good + first + rest) == [
        Message(OP_TEXT, b"ok"),
        Message(OP_TEXT, b"hello"),
    ]
    assert FrameReader(1).feed(good) == [Oversized(2)]
