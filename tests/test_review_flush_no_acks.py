"""Review: with require_acks=False, flush() must not return before the frames are written."""

from __future__ import annotations

import threading

import pytest
from conftest import TIMEOUT, ClientFactory

from avatar_im import AckTimeout
from avatar_im.server import ReferenceServer
from avatar_im.transport import Transport


def test_flush_returns_before_the_write_and_close_loses_the_message(
    server: ReferenceServer, make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Connection.flush() removes the entries from the outbox (data_to_send) and notifies
    the waiters *before* transport.write() has run.  A slow write (full socket
    buffer) stands in for the gap: client.flush() returns at once, close() follows and
    the message, which flush() said was written, never reaches the server."""
    client = make_client(require_acks=False)
    client.start_session()
    client.wait_session_ready(TIMEOUT)

    original = Transport.write
    entered, release = threading.Event(), threading.Event()

    def slow_send_frames(self: Transport, frames: list[str]) -> None:
        if any('"text":"x"' in f for f in frames):
            entered.set()
            release.wait(TIMEOUT)
        original(self, frames)

    monkeypatch.setattr(Transport, "write", slow_send_frames)
    sender = threading.Thread(target=client.send_text, args=("x",))
    sender.start()
    assert entered.wait(TIMEOUT)
    returned = True
    try:
        client.flush(0.5)  # documented: "waits until everything has been written"
    except AckTimeout:
        returned = False  # correct: the write has not happened yet
    client.close()
    release.set()
    sender.join(TIMEOUT)
    if returned:
        assert server.session("s0").texts == ["x"], "flush() returned, yet 'x' was never written"
