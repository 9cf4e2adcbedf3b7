"""Review: a server restarted as a new process (fresh state) must not wedge the session."""

from __future__ import annotations

from conftest import TIMEOUT

from avatar_im import AvatarIM, ReconnectPolicy, SessionState
from avatar_im.server import ReferenceServer

FAST = ReconnectPolicy(initial_delay=0.02, max_delay=0.2)


def test_new_server_process_on_same_port_session_restarts() -> None:
    """Server process A is replaced by a fresh process B on the same port (a deploy, a crash).

    B numbers its messages srv_1, srv_2, ... again.  The client answers B's
    SESSION_NOT_FOUND with a new start; B's startResult is srv_1, an id the
    client remembers from A, so ClientProtocol._on_message drops it as a
    duplicate: the session stays STARTING and every queued message is stranded.
    """
    with ReferenceServer(host="127.0.0.1", port=0) as a:
        port = a.port
        client = AvatarIM(
            token="t", app_id="a", tenant_id="b", session_id="s", url=a.url, reconnect=FAST
        )
        try:
            client.start_session()
            client.wait_session_ready(TIMEOUT)
            client.wait_ack(client.send_text("before"), TIMEOUT)
        except BaseException:
            client.close()
            raise
    try:
        with ReferenceServer(host="127.0.0.1", port=port) as b:
            mid = client.send_text("after")
            client.wait_ack(mid, TIMEOUT)  # AckTimeout: the new startResult (srv_1) was "seen"
            assert b.session("s").texts == ["after"]
            assert client.session_state is SessionState.READY
    finally:
        client.close()
