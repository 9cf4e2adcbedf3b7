"""Tests of avatar_im.testing: the pytest plugin's fixtures, used directly and via pytester."""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

import pytest
from conftest import TIMEOUT

import avatar_im.testing
from avatar_im import AvatarIM, ConnectionState, SessionState
from avatar_im.server import Credentials, ReferenceServer, Request

pytest_plugins = ["pytester"]


def test_plugin_is_registered_by_entry_point(pytestconfig: pytest.Config) -> None:
    """The installed package declares the pytest11 entry point and pytest loaded it."""
    points = [e for e in entry_points(group="pytest11") if e.name == "avatar_im"]
    assert [e.value for e in points] == ["avatar_im.testing"]
    assert pytestconfig.pluginmanager.is_registered(avatar_im.testing)


def test_avatar_server_is_running_on_loopback(avatar_server: ReferenceServer) -> None:
    """avatar_server is a started reference server on a free loopback port."""
    assert avatar_server.url.startswith("ws://127.0.0.1:")
    assert avatar_server.port != 0


def test_avatar_client_is_connected_to_avatar_server(
    avatar_client: AvatarIM, avatar_server: ReferenceServer
) -> None:
    """avatar_client is connected to avatar_server, with no session started."""
    assert avatar_client.state is ConnectionState.OPEN
    assert avatar_client.session_state is SessionState.IDLE
    assert avatar_server.wait_for_connections(1, TIMEOUT)


def test_avatar_session_answers_text(avatar_session: AvatarIM) -> None:
    """avatar_session has a ready session; the cloud-shaped reply, then its broadcast."""
    assert avatar_session.ask("hi", TIMEOUT).text == "You said: hi"
    avatar_session.send_text("again")
    reply = avatar_session.receive(TIMEOUT)
    assert reply.family == "reply"
    assert reply.content == {
        "type": "replyContent",
        "sessionId": avatar_session.session_id,
        "text": "You said: again",
    }


def shout(request: Request) -> dict[str, Any]:
    """A responder that answers text in capitals."""
    return {
        "type": "textReply",
        "replyTo": request.message_id,
        "text": (request.text or "").upper(),
    }


class TestOverriddenOptions:
    """Overriding the options fixtures configures the server and the client."""

    @pytest.fixture
    def avatar_server_options(self) -> dict[str, Any]:
        return {
            "responder": shout,
            "credentials": Credentials(token="secret", app_id="mine", tenant_id="t1"),
        }

    @pytest.fixture
    def avatar_client_options(self) -> dict[str, Any]:
        return {"token": "secret", "app_id": "mine", "tenant_id": "t1", "session_id": "own"}

    def test_own_responder_and_credentials(
        self, avatar_session: AvatarIM, avatar_server: ReferenceServer
    ) -> None:
        """The server uses the overridden responder; the client, the overridden ids."""
        avatar_session.send_text("quiet")
        assert avatar_session.receive(TIMEOUT)["content"]["text"] == "QUIET"
        snapshot = avatar_server.session("own")
        assert snapshot is not None
        assert snapshot.app_id == "mine"


def test_user_project_tests_its_app_in_one_line(pytester: pytest.Pytester) -> None:
    """A user's test file needs no import or setup to get a server and a ready session."""
    pytester.makepyfile(
        test_user_app="""
        def greet(client, name):
            client.send_text(f"hello {name}")
            return client.receive(timeout=5)["content"]["text"]

        def test_greet(avatar_session):
            assert greet(avatar_session, "Ada") == "You said: hello Ada"

        def test_server_url(avatar_server):
            assert avatar_server.url.startswith("ws://127.0.0.1:")
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
