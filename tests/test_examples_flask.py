"""Tests of examples/flask_app: the JSON view with Flask's test client, the page in Chromium."""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from conftest import TIMEOUT
from flask import Flask
from werkzeug.serving import make_server

from avatar_im.server import Credentials, ReferenceServer

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
#: Where the browser test keeps its screenshot (git-ignored).
ARTIFACTS = ROOT / "artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def server() -> Iterator[ReferenceServer]:
    """A reference server of the default (cloud-shaped) profile, as the example meets."""
    with ReferenceServer(host="127.0.0.1", port=0) as srv:
        yield srv


@pytest.fixture
def examples(monkeypatch: pytest.MonkeyPatch) -> tuple[ModuleType, ModuleType]:
    """The examples.flask_app.app and examples.visitors modules."""
    monkeypatch.syspath_prepend(str(ROOT))
    return (
        importlib.import_module("examples.flask_app.app"),
        importlib.import_module("examples.visitors"),
    )


@pytest.fixture
def make_app(examples: tuple[ModuleType, ModuleType]) -> Iterator[Any]:
    """A factory of Flask apps with avatars on the given URL; every avatar closed after."""
    app_module, visitors_module = examples
    made: list[Any] = []

    def factory(url: str, **kwargs: Any) -> Flask:
        avatars = visitors_module.VisitorAvatars(url=url, **kwargs)
        made.append(avatars)
        app: Flask = app_module.create_app(avatars)
        app.testing = True
        return app

    yield factory
    for avatars in made:
        avatars.close()


def only_session(server: ReferenceServer) -> Any:
    """The one session the server knows."""
    (session_id,) = server.session_ids()
    return server.session(session_id)


def test_say_returns_the_avatar_reply_as_json(server: ReferenceServer, make_app: Any) -> None:
    """POST /api/say answers the avatar's reply to the posted text as JSON."""
    client = make_app(server.url).test_client()
    response = client.post("/api/say", json={"text": "  hello avatar  "})
    assert response.status_code == 200
    body = response.get_json()
    assert body["reply"] == "You said: hello avatar"
    assert body["content"]["type"] == "replyContent"
    assert only_session(server).texts == ["hello avatar"]


def test_a_visitor_keeps_one_avatar_made_on_first_use(
    server: ReferenceServer, make_app: Any
) -> None:
    """No connection before the first message; then the visitor's requests share one."""
    client = make_app(server.url).test_client()
    assert client.get("/").status_code == 200
    assert server.stats.connections_total == 0
    for n in range(3):
        assert (
            client.post("/api/say", json={"text": f"n{n}"}).get_json()["reply"] == f"You said: n{n}"
        )
    assert server.stats.connections_total == 1


def test_two_browser_sessions_get_two_avatars(server: ReferenceServer, make_app: Any) -> None:
    """Two visitors (two cookie jars): two avatars, two sessions, each its own replies."""
    app = make_app(server.url)
    alice, bob = app.test_client(), app.test_client()
    for n in range(3):
        assert (
            alice.post("/api/say", json={"text": f"a{n}"}).get_json()["reply"] == f"You said: a{n}"
        )
        assert bob.post("/api/say", json={"text": f"b{n}"}).get_json()["reply"] == f"You said: b{n}"
    assert server.stats.connections_total == 2
    texts = sorted(server.session(sid).texts for sid in server.session_ids())
    assert texts == [["a0", "a1", "a2"], ["b0", "b1", "b2"]]


def test_concurrent_requests_each_get_their_own_reply(
    server: ReferenceServer, make_app: Any
) -> None:
    """Requests served at once on several threads each get the reply to their own text."""
    app = make_app(server.url)
    replies: dict[int, Any] = {}

    def request(n: int) -> None:
        replies[n] = app.test_client().post("/api/say", json={"text": f"t{n}"}).get_json()

    threads = [threading.Thread(target=request, args=(n,), name=f"req-{n}") for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert {n: body["reply"] for n, body in replies.items()} == {
        n: f"You said: t{n}" for n in range(6)
    }


def test_one_visitors_requests_at_once_take_turns(server: ReferenceServer, make_app: Any) -> None:
    """One browser session (two tabs, say) posting at once: one avatar, each its own reply."""
    app = make_app(server.url)
    first = app.test_client()
    assert first.post("/api/say", json={"text": "hi"}).get_json()["reply"] == "You said: hi"
    cookie = first.get_cookie("session")
    assert cookie is not None
    replies: dict[int, Any] = {}

    def request(n: int) -> None:
        tab = app.test_client()
        tab.set_cookie(cookie.key, cookie.value)  # the same visitor
        replies[n] = tab.post("/api/say", json={"text": f"tab {n}"}).get_json()

    threads = [threading.Thread(target=request, args=(n,), name=f"tab-{n}") for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert {n: body["reply"] for n, body in replies.items()} == {
        n: f"You said: tab {n}" for n in range(4)
    }
    assert server.stats.connections_total == 1
    assert sorted(only_session(server).texts) == sorted(["hi"] + [f"tab {n}" for n in range(4)])


@pytest.mark.parametrize(
    "payload",
    [{"json": {}}, {"json": {"text": "   "}}, {"json": {"text": 3}}, {"data": "not json"}],
    ids=["no-text", "blank", "not-a-string", "not-json"],
)
def test_bad_input_is_a_400(
    server: ReferenceServer, make_app: Any, payload: dict[str, Any]
) -> None:
    """A request without a non-blank text string is refused with 400 and sends nothing."""
    response = make_app(server.url).test_client().post("/api/say", **payload)
    assert response.status_code == 400
    assert "error" in response.get_json()
    assert server.stats.connections_total == 0


def test_unavailable_avatar_is_a_502(make_app: Any) -> None:
    """A server that refuses the credentials gives 502 with an error that leaks nothing."""
    with ReferenceServer(credentials=Credentials(token="ok", app_id="a", tenant_id="t")) as srv:
        app = make_app(srv.url, token="secret-wrong", app_id="a", tenant_id="t")
        response = app.test_client().post("/api/say", json={"text": "hi"})
        assert response.status_code == 502
        assert "secret" not in response.get_data(as_text=True)
        app.extensions["avatar_im"].close()


def test_no_reply_in_time_is_a_504(
    make_app: Any, examples: tuple[ModuleType, ModuleType], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request whose reply does not come within REPLY_TIMEOUT gets 504."""
    monkeypatch.setattr(examples[0], "REPLY_TIMEOUT", 0.2)
    with ReferenceServer(reply=lambda text: None) as srv:
        app = make_app(srv.url)
        response = app.test_client().post("/api/say", json={"text": "hi"})
        assert response.status_code == 504
        app.extensions["avatar_im"].close()


def test_page_in_chromium_shows_the_reply(server: ReferenceServer, make_app: Any) -> None:
    """A person types a sentence in the page in headless Chromium and sees the avatar's reply."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is absent (apt-get install chromium)")
    from playwright.sync_api import expect, sync_playwright

    app = make_app(server.url)
    http_server = make_server("127.0.0.1", 0, app, threaded=True)
    serving = threading.Thread(target=http_server.serve_forever, name="flask-http")
    serving.start()
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 800, "height": 500})
                page.set_default_timeout(TIMEOUT * 1000)
                page.goto(f"http://127.0.0.1:{http_server.server_port}/")
                page.get_by_placeholder("Say something to the avatar").fill("Good morning!")
                page.get_by_role("button", name="Send").click()
                expect(page.locator("#log li.avatar")).to_have_text("You said: Good morning!")
                expect(page.locator("#log li.you")).to_have_text("Good morning!")
                ARTIFACTS.mkdir(exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / "flask_page.png"))
            finally:
                browser.close()
    finally:
        http_server.shutdown()
        serving.join(TIMEOUT)
    assert only_session(server).texts == ["Good morning!"]
