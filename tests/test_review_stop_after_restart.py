"""Review: a text sent just before stop_session() is dropped (not resent) when the
server lost the session: _on_ack only restarts the session while READY."""

from __future__ import annotations

from conftest import TIMEOUT, ClientFactory

from avatar_im import ReconnectPolicy
from avatar_im.server import ReferenceServer

FAST = ReconnectPolicy(initial_delay=0.02, max_delay=0.1)


def test_text_before_stop_survives_a_forgotten_session(
    server: ReferenceServer, make_client: ClientFactory
) -> None:
    client = make_client(reconnect=FAST)
    client.start_session()
    client.wait_session_ready(TIMEOUT)
    server.restart(keep_state=False)  # the session is forgotten; the connection drops
    text = client.send_text("last words")  # accepted: the client is open, nothing raised
    client.stop_session()
    # The promise: delivered exactly once while the client is open.  Actually: the
    # resent text gets SESSION_NOT_FOUND, session_state is STOPPED, so no restart:
    # the text leaves the outbox as refused -> AckError, and the server never saw it.
    client.wait_ack(text, TIMEOUT)
    assert server.session("s0").texts == ["last words"]
