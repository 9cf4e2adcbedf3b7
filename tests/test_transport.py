"""The transport's read path over a real socket pair (no server, no mock of the wire)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from avatar_im.frames import OP_CLOSE, OP_PING, OP_TEXT, FrameReader, Message
from avatar_im.transport import FrameTooLarge, Transport, TransportClosed


def frame(opcode: int, payload: bytes) -> bytes:
    return bytes((0x80 | opcode, len(payload))) + payload


@pytest.fixture
def pair() -> Iterator[tuple[Transport, socket.socket]]:
    """A Transport whose socket is one end of a socketpair; the test holds the other end."""
    ours, theirs = socket.socketpair()
    transport = Transport(max_message_size=64)
    transport._ws.sock = ours  # what websocket-client leaves after the handshake
    yield transport, theirs
    ours.close()
    theirs.close()


def test_messages_before_a_close_frame_are_delivered(pair: tuple[Transport, socket.socket]) -> None:
    """A `2` reason and the close frame in one segment: the reason is read, then the end."""
    transport, peer = pair
    peer.sendall(
        frame(OP_TEXT, b'2{"reason":"CONNECTION_KICK_OUT"}') + frame(OP_CLOSE, b"\x03\xe8")
    )
    assert transport.read(1.0) == ['2{"reason":"CONNECTION_KICK_OUT"}']
    with pytest.raises(TransportClosed):
        transport.read(1.0)
    echoed = FrameReader().feed(peer.recv(100))
    assert echoed == [Message(OP_CLOSE, b"\x03\xe8")]  # our close answer, masked


def test_ping_answered_and_oversized_reported(pair: tuple[Transport, socket.socket]) -> None:
    """A ping gets a pong; a message over the limit comes out as FrameTooLarge; text follows."""
    transport, peer = pair
    peer.sendall(frame(OP_PING, b"hi") + frame(OP_TEXT, b"x" * 100) + frame(OP_TEXT, b"4"))
    items = transport.read(1.0)
    assert isinstance(items[0], FrameTooLarge) and items[0].size == 100
    assert items[1:] == ["4"]
    assert FrameReader().feed(peer.recv(100)) == [Message(0xA, b"hi")]


def test_read_times_out_empty_and_eof_closes(pair: tuple[Transport, socket.socket]) -> None:
    """No data: an empty list after the timeout; the peer closing: TransportClosed."""
    transport, peer = pair
    assert transport.read(0.01) == []
    peer.shutdown(socket.SHUT_WR)
    with pytest.raises(TransportClosed):
        transport.read(1.0)


def test_send_frames_are_masked_text(pair: tuple[Transport, socket.socket]) -> None:
    """send_frames writes masked text frames that decode to the frames given, in order."""
    transport, peer = pair
    transport.send_frames(["3", '5{"messageId":"m"}'])
    assert FrameReader().feed(peer.recv(100)) == [
        Message(OP_TEXT, b"3"),
        Message(OP_TEXT, b'5{"messageId":"m"}'),
    ]
