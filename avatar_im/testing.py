"""Pytest fixtures to test your own avatar app offline, against the reference server.

Installing ``avatar-im`` registers this module as a pytest plugin (entry point
``avatar_im``), so its fixtures are there in every test with no import::

    def test_my_bot_greets(avatar_session):
        assert avatar_session.ask("hello", timeout=5).text == "You said: hello"

Fixtures (each one per test, closed when the test ends):

* ``avatar_server``: a running :class:`~avatar_im.server.ReferenceServer` on a free
  loopback port; pass its ``url`` to the code under test;
* ``avatar_client``: an :class:`~avatar_im.AvatarIM` connected to it, no session started;
* ``avatar_session``: the same client with a ready session;
* ``avatar_server_options`` and ``avatar_client_options``: the keyword arguments the
  two are made with; override them in your ``conftest.py`` to give the server your own
  ``responder`` or ``credentials``, or the client other ids;
* ``openapi``: a started :class:`~avatar_im.server.openapi.FakeOpenAPI` (the avatar
  OpenAPI on loopback, which Alibaba Cloud's SDK talks to unchanged) wired to
  ``avatar_server``: the IM token of each instance it starts is accepted there, and
  stopping the instance revokes it.  ``AvatarOpenAPI(openapi.config())`` calls it.
  It needs the ``aliyun`` extra, and skips its test with a message without it;
  ``openapi_options`` are its keyword arguments (access key, tenant, app).  To have
  ``avatar_server`` accept *only* the instances' tokens, set
  ``avatar_server_options`` to ``{"credentials": []}``.

Every wait is bounded by :data:`TIMEOUT` seconds (``AVATAR_IM_TEST_TIMEOUT`` in the
environment, default 5).

Loading the plugin imports neither the server nor ``websockets`` (nor Alibaba Cloud's
SDK): that happens when a test first asks for ``avatar_server`` (or ``openapi``), so
projects without the ``server`` (or ``aliyun``) extra still run their tests.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from .client import AvatarIM

if TYPE_CHECKING:
    from .server import ReferenceServer
    from .server.openapi import FakeOpenAPI

__all__ = [
    "TIMEOUT",
    "avatar_client",
    "avatar_client_options",
    "avatar_server",
    "avatar_server_options",
    "avatar_session",
    "openapi",
    "openapi_options",
]

#: Seconds every fixture waits at most for a connection or a session.
TIMEOUT = float(os.environ.get("AVATAR_IM_TEST_TIMEOUT", "5"))


@pytest.fixture
def avatar_server_options() -> dict[str, Any]:
    """Keyword arguments for ``avatar_server``'s ``ReferenceServer`` (default: none)."""
    return {}


@pytest.fixture
def avatar_client_options() -> dict[str, Any]:
    """Keyword arguments for ``avatar_client``'s ``AvatarIM``, over the fixture's defaults.

    The defaults: token ``test-token``, app ``test-app``, tenant ``test-tenant``, a
    fresh random session id, and the server's URL.
    """
    return {}


@pytest.fixture
def avatar_server(avatar_server_options: dict[str, Any]) -> Iterator[ReferenceServer]:
    """A reference server on a free loopback port, stopped after the test."""
    try:
        from .server import ReferenceServer
    except ImportError as exc:  # pragma: no cover - depends on the install
        pytest.fail(
            f"avatar_server needs the 'server' extra: pip install 'avatar-im[server]' ({exc})",
            pytrace=False,
        )
    options = {"host": "127.0.0.1", "port": 0, **avatar_server_options}
    with ReferenceServer(**options) as server:
        yield server


@pytest.fixture
def avatar_client(
    avatar_server: ReferenceServer, avatar_client_options: dict[str, Any]
) -> Iterator[AvatarIM]:
    """A client connected to ``avatar_server`` (no session started), closed after the test."""
    options: dict[str, Any] = {
        "token": "test-token",
        "app_id": "test-app",
        "tenant_id": "test-tenant",
        "session_id": f"test-{uuid.uuid4().hex[:12]}",
        "url": avatar_server.url,
        **avatar_client_options,
    }
    with AvatarIM(**options) as client:
        client.wait_connected(TIMEOUT)
        yield client


@pytest.fixture
def avatar_session(avatar_client: AvatarIM) -> AvatarIM:
    """``avatar_client`` with a ready session (``wait_session_ready`` took its ``startResult``)."""
    avatar_client.start_session()
    avatar_client.wait_session_ready(TIMEOUT)
    return avatar_client


@pytest.fixture
def openapi_options() -> dict[str, Any]:
    """Keyword arguments for ``openapi``'s ``FakeOpenAPI``, over the fixture's defaults.

    The defaults: access key ``test-access-key-id`` / ``test-access-key-secret``,
    tenant ``10001``, app ``test-app`` (the ``avatar_client`` default app).
    """
    return {}


@pytest.fixture
def openapi(
    request: pytest.FixtureRequest, openapi_options: dict[str, Any]
) -> Iterator[FakeOpenAPI]:
    """A started fake of the avatar OpenAPI, wired to ``avatar_server``; stopped after the test.

    Skips the test when the ``aliyun`` extra is not installed.
    """
    try:
        from .server.openapi import FakeOpenAPI
    except ImportError as exc:  # pragma: no cover - depends on the install
        pytest.fail(
            f"openapi needs the 'server' extra: pip install 'avatar-im[server]' ({exc})",
            pytrace=False,
        )
    options: dict[str, Any] = {
        "access_key_id": "test-access-key-id",
        "access_key_secret": "test-access-key-secret",
        "tenant_id": 10001,
        "app_id": "test-app",
        **openapi_options,
    }
    server: ReferenceServer = request.getfixturevalue("avatar_server")
    try:
        fake = FakeOpenAPI(im_server=server, **options)
    except ImportError as exc:  # MissingExtraError: Alibaba Cloud's SDK is not installed
        pytest.skip(f"openapi needs the 'aliyun' extra: pip install 'avatar-im[aliyun]' ({exc})")
    with fake:
        yield fake
