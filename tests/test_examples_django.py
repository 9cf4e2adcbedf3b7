"""Tests of examples/django_app: the avatar view through Django's test client."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import django
import pytest

from avatar_im.server import ReferenceServer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def server() -> Iterator[ReferenceServer]:
    """A reference server of the default (cloud-shaped) profile, as the example meets."""
    with ReferenceServer(host="127.0.0.1", port=0) as srv:
        yield srv


@pytest.fixture
def views(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The example's views module, with Django set up on the example's settings."""
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", "examples.django_app.settings")
    django.setup()
    return importlib.import_module("examples.django_app.views")


@pytest.fixture
def shared(
    server: ReferenceServer, views: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Any]:
    """The views' avatars, pointed at the test's reference server."""
    visitors = importlib.import_module("examples.visitors")
    avatars = visitors.VisitorAvatars(url=server.url)
    monkeypatch.setattr(views, "avatars", avatars)
    yield avatars
    avatars.close()


def test_say_returns_the_avatar_reply_as_json(server: ReferenceServer, shared: Any) -> None:
    """POST /api/say answers the avatar's reply to the posted text as JSON."""
    from django.test import Client

    response = Client().post("/api/say", {"text": "bonjour"}, content_type="application/json")
    assert response.status_code == 200
    body = response.json()
    assert body["reply"] == "You said: bonjour"
    assert body["content"]["type"] == "replyContent"
    (session_id,) = server.session_ids()
    assert server.session(session_id).texts == ["bonjour"]


def test_a_visitor_keeps_one_connection(server: ReferenceServer, shared: Any) -> None:
    """A visitor's requests reuse the avatar made on its first message."""
    from django.test import Client

    client = Client()
    assert server.stats.connections_total == 0
    for n in range(3):
        response = client.post("/api/say", {"text": f"n{n}"}, content_type="application/json")
        assert response.json()["reply"] == f"You said: n{n}"
    assert server.stats.connections_total == 1
    assert len(shared.registry) == 1


def test_two_browser_sessions_get_two_avatars(server: ReferenceServer, shared: Any) -> None:
    """Two visitors (two cookie jars): two avatars, each with its own replies."""
    from django.test import Client

    alice, bob = Client(), Client()
    for n in range(3):
        for who, client in (("a", alice), ("b", bob)):
            response = client.post(
                "/api/say", {"text": f"{who}{n}"}, content_type="application/json"
            )
            assert response.json()["reply"] == f"You said: {who}{n}"
    assert server.stats.connections_total == 2
    texts = sorted(server.session(sid).texts for sid in server.session_ids())
    assert texts == [["a0", "a1", "a2"], ["b0", "b1", "b2"]]


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        ('{"text": ""}', "application/json", 400),
        ("[1, 2]", "application/json", 400),
        ("{", "application/json", 400),
        ("text=hi", "application/x-www-form-urlencoded", 415),
    ],
    ids=["blank", "not-an-object", "bad-json", "form-post"],
)
def test_bad_requests_are_refused(
    server: ReferenceServer, shared: Any, body: str, content_type: str, status: int
) -> None:
    """Anything but a JSON object with a non-blank text is refused before anything is sent."""
    from django.test import Client

    response = Client().post("/api/say", body, content_type=content_type)
    assert response.status_code == status
    assert "error" in response.json()
    assert server.stats.connections_total == 0


def test_get_is_not_allowed(shared: Any) -> None:
    """The view answers only POST."""
    from django.test import Client

    assert Client().get("/api/say").status_code == 405
