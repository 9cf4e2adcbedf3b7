"""The transport over a real socket pair (no server, no mock of the wire): RFC 6455 rules,
reads, and writes that never block."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
from conftest import TIMEOUT

from avatar_im.frames import OP_CLOSE, OP_PING, OP_TEXT, FrameReader, Message
from avatar_im.transport import FrameTooLarge, Transport, TransportClosed


def frame(opcode: int, payload: bytes) -> bytes:
    return bytes((0x80 | opcode, len(payload))) + payload


@pytest.fixture
def pair() -> Iterator[tuple[Transport, socket.socket]]:
    """A Transport whose socket is one end of a socketpair; the test holds the other end."""
    ours, theirs = socket.socketpair()
    transport = Transport(max_message_size=64)
    transport._adopt(ours)  # what open() does after the handshake
    theirs.settimeout(TIMEOUT)
    yield transport, theirs
    transport.close()
    theirs.close()


def sent_by_us(peer: socket.socket) -> list[Message]:
    """Everything the transport wrote so far, decoded as client frames."""
    peer.settimeout(0.2)
    data = b""
    try:
        while chunk := peer.recv(65536):
            data += chunk
    except TimeoutError:
        pass
    return FrameReader(client_frames=True).feed(data)


def test_messages_before_a_close_frame_are_delivered(pair: tuple[Transport, socket.socket]) -> None:
    """A `2` reason and the close frame in one segment: the reason is read, then the end."""
    transport, peer = pair
    peer.sendall(
        frame(OP_TEXT, b'2{"reason":"CONNECTION_KICK_OUT"}') + frame(OP_CLOSE, b"\x03\xe8")
    )
    assert transport.read(1.0) == ['2{"reason":"CONNECTION_KICK_OUT"}']
    with pytest.raises(TransportClosed):
        transport.read(1.0)
    assert sent_by_us(peer) == [Message(OP_CLOSE, b"\x03\xe8")]  # our close answer, masked


@pytest.mark.parametrize(
    ("received", "answer"),
    [
        (b"\x03\xe8", b"\x03\xe8"),  # 1000 echoed
        (b"\x0f\xa0bye", b"\x0f\xa0"),  # 4000 echoed, without the reason
        (b"", b""),  # no code: an empty close, never 1005
        ((999).to_bytes(2, "big"), b"\x03\xea"),  # invalid code: 1002
        ((1005).to_bytes(2, "big"), b"\x03\xea"),  # 1005 is never sent: 1002
        (b"\x03", b"\x03\xea"),  # a 1-byte payload: 1002
        (b"\x03\xe8\xff", b"\x03\xef"),  # a reason that is not UTF-8: 1007
    ],
)
def test_a_close_is_answered_with_a_valid_code_only(
    pair: tuple[Transport, socket.socket], received: bytes, answer: bytes
) -> None:
    """The server's close is answered once: its code if valid, 1002/1007 if not, never 1005."""
    transport, peer = pair
    peer.sendall(frame(OP_CLOSE, received))
    with pytest.raises(TransportClosed):
        transport.read(1.0)
    assert sent_by_us(peer) == [Message(OP_CLOSE, answer)]


def test_one_close_frame_and_no_data_after_it(pair: tuple[Transport, socket.socket]) -> None:
    """After our close: a second close sends nothing, a write raises, a ping gets no pong."""
    transport, peer = pair
    transport.write(["3"])
    transport.send_close()
    transport.send_close()
    with pytest.raises(TransportClosed):
        transport.write(["5{}"])
    peer.sendall(frame(OP_PING, b"p") + frame(OP_CLOSE, b"\x03\xe8"))
    with pytest.raises(TransportClosed):
        while True:
            transport.read(1.0)
    assert sent_by_us(peer) == [Message(OP_TEXT, b"3"), Message(OP_CLOSE, b"\x03\xe8")]


def test_protocol_error_fails_with_1002_after_the_valid_frames(
    pair: tuple[Transport, socket.socket],
) -> None:
    """Frames before a bad one in the same read are delivered; then a 1002 close and the end."""
    transport, peer = pair
    peer.sendall(frame(OP_TEXT, b"4") + frame(OP_TEXT, b"1") + bytes((0xC1, 0)))
    assert transport.read(1.0) == ["4", "1"]
    with pytest.raises(TransportClosed):
        transport.read(1.0)
    assert sent_by_us(peer) == [Message(OP_CLOSE, b"\x03\xea")]


def test_masked_server_frame_fails_with_1002(pair: tuple[Transport, socket.socket]) -> None:
    """A masked frame from the server is a protocol error."""
    transport, peer = pair
    peer.sendall(bytes((0x81, 0x81)) + b"\x00\x00\x00\x00" + b"4")
    with pytest.raises(TransportClosed):
        transport.read(1.0)
    assert sent_by_us(peer) == [Message(OP_CLOSE, b"\x03\xea")]


def test_invalid_utf8_text_fails_with_1007(pair: tuple[Transport, socket.socket]) -> None:
    """A text message that is not UTF-8 fails the connection with 1007; what came before stays."""
    transport, peer = pair
    peer.sendall(frame(OP_TEXT, b"4") + frame(OP_TEXT, b"\xff\xfe"))
    assert transport.read(1.0) == ["4"]
    with pytest.raises(TransportClosed):
        transport.read(1.0)
    assert sent_by_us(peer) == [Message(OP_CLOSE, b"\x03\xef")]


def test_ping_answered_and_oversized_reported(pair: tuple[Transport, socket.socket]) -> None:
    """A ping gets a pong; a message over the limit comes out as FrameTooLarge; text follows."""
    transport, peer = pair
    peer.sendall(frame(OP_PING, b"hi") + frame(OP_TEXT, b"x" * 100) + frame(OP_TEXT, b"4"))
    items = transport.read(1.0)
    assert isinstance(items[0], FrameTooLarge) and items[0].size == 100
    assert items[1:] == ["4"]
    assert sent_by_us(peer) == [Message(0xA, b"hi")]


def test_read_times_out_empty_and_eof_closes(pair: tuple[Transport, socket.socket]) -> None:
    """No data: an empty list after the timeout; the peer closing: TransportClosed."""
    transport, peer = pair
    assert transport.read(0.01) == []
    peer.shutdown(socket.SHUT_WR)
    with pytest.raises(TransportClosed):
        transport.read(1.0)


def test_write_sends_masked_text_frames_in_order(pair: tuple[Transport, socket.socket]) -> None:
    """write() sends masked text frames that decode to the frames given, in order."""
    transport, peer = pair
    transport.write(["3", '5{"messageId":"m"}'])
    assert sent_by_us(peer) == [
        Message(OP_TEXT, b"3"),
        Message(OP_TEXT, b'5{"messageId":"m"}'),
    ]


def test_write_never_blocks_on_a_peer_that_stops_reading(
    pair: tuple[Transport, socket.socket],
) -> None:
    """With the peer not reading, writes return at once and buffer; the reader drains later."""
    transport, peer = pair
    payload = "5" + "x" * 65536
    for _ in range(200):  # ~13 MB: far beyond the socket buffers
        transport.write([payload])
    assert transport.buffered > 0
    received = bytearray()
    done = threading.Event()

    def drain() -> None:
        peer.settimeout(TIMEOUT)
        while len(received) < 200 * 65541:
            chunk = peer.recv(1 << 20)
            if not chunk:
                break
            received.extend(chunk)
        done.set()

    reader = threading.Thread(target=drain)
    reader.start()
    deadline = time.monotonic() + 4 * TIMEOUT
    while transport.buffered and time.monotonic() < deadline:
        transport.read(0.05)  # the reader sends the buffered bytes as the socket takes them
    reader.join(TIMEOUT)
    assert transport.buffered == 0 and done.is_set()
    messages = FrameReader(client_frames=True).feed(bytes(received))
    assert len(messages) == 200 and all(m.payload == payload.encode() for m in messages)


def test_a_ping_flood_from_a_peer_that_never_reads_stays_bounded(
    pair: tuple[Transport, socket.socket],
) -> None:
    """Pongs are dropped while much is unsent, so the outgoing buffer cannot grow for ever."""
    transport, peer = pair
    peer.setblocking(False)
    ping = frame(OP_PING, b"p" * 125)
    sent = 0
    for _ in range(20_000):  # 2.5 MB of pings; the peer reads none of our pongs
        try:
            sent += peer.send(ping * 8)
        except BlockingIOError:
            transport.read(0)
            continue
        transport.read(0)
    for _ in range(100):
        transport.read(0)
    assert sent > 1_000_000
    assert transport.buffered <= 65536 + 200


def test_mask_keys_are_drawn_in_blocks_and_never_handed_out_twice() -> None:
    """Keys come from os.urandom blocks; every byte once; forget() drops the rest."""
    from avatar_im.transport import _MaskKeys

    keys = _MaskKeys(block=64)
    taken = [keys.take(4) for _ in range(16)]
    assert all(len(k) == 4 for k in taken)
    assert len(b"".join(taken)) == 64
    big = keys.take(100)  # more than a block: one draw of its own
    assert len(big) == 100
    assert len(keys.take(4)) == 4
    keys.forget()
    assert len(keys.take(8)) == 8
