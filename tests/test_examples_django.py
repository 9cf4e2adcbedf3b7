"""Tests of examples/django_app: the avatar view through Django's test client."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import django
import pytest
from conftest import TIMEOUT

from avatar_im.server import ReferenceServer

ROOT = Path(__file__).resolve().parents[1]


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
    """The views' process-wide client, pointed at the test's reference server."""
    shared_module = importlib.import_module("examples.shared_client")
    client = shared_module.SharedClient(url=server.url, session_id="django-1")
    monkeypatch.setattr(views, "shared", client)
    yield client
    client.close()


def test_say_returns_the_avatar_reply_as_json(server: ReferenceServer, shared: Any) -> None:
    """POST /api/say answers the avatar's reply to the posted text as JSON."""
    from django.test import Client

    response = Client().post("/api/say", {"text": "bonjour"}, content_type="application/json")
    assert response.status_code == 200
    body = response.json()
    assert body["reply"] == "You said: bonjour"
    assert body["content"]["type"] == "textReply"
    snapshot = server.session("django-1")
    assert snapshot is not None
    assert snapshot.texts == ["bonjour"]


def test_requests_share_one_connection(server: ReferenceServer, shared: Any) -> None:
    """Several requests reuse the one client made on the first request."""
    from django.test import Client

    client = Client()
    assert server.stats.connections_total == 0
    for n in range(3):
        response = client.post("/api/say", {"text": f"n{n}"}, content_type="application/json")
        assert response.json()["reply"] == f"You said: n{n}"
    assert server.stats.connections_total == 1
    assert shared.client().session_ready.wait(TIMEOUT)


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
