"""Tests of examples/shared_client.py: one lazily made client per process, replies matched by id."""

from __future__ import annotations

import importlib
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from conftest import TIMEOUT

from avatar_im import AuthenticationError
from avatar_im.server import Credentials, ReferenceServer, Request, default_responder

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def shared_module(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The examples.shared_client module, imported from the repository root."""
    monkeypatch.syspath_prepend(str(ROOT))
    return importlib.import_module("examples.shared_client")


@pytest.fixture
def make_shared(shared_module: ModuleType) -> Iterator[Any]:
    """A factory of SharedClient objects, all closed at the end of the test."""
    made: list[Any] = []

    def factory(**kwargs: Any) -> Any:
        shared = shared_module.SharedClient(**kwargs)
        made.append(shared)
        return shared

    yield factory
    for shared in made:
        shared.close()


def test_ask_returns_the_reply_to_its_own_text(server: ReferenceServer, make_shared: Any) -> None:
    """ask() skips the startResult and unrelated pushes and returns the reply to its text."""
    shared = make_shared(url=server.url, session_id="web-1")
    client = shared.client()
    server.send_message({"type": "news", "text": "unrelated"}, session_id="web-1")
    content = shared.ask("hello", timeout=TIMEOUT)
    assert content["type"] == "textReply"
    assert content["text"] == "You said: hello"
    assert shared.client() is client
    assert server.stats.connections_total == 1


def test_concurrent_asks_get_their_own_replies_out_of_order(
    make_shared: Any,
) -> None:
    """A reply that comes late still reaches its asker while another ask completes first."""
    held = threading.Event()
    held_id: list[str] = []

    def responder(request: Request) -> Any:
        if request.text == "slow":  # answered later, by the test
            held_id.append(request.message_id)
            held.set()
            return None
        return default_responder(request)

    with ReferenceServer(responder=responder) as srv:
        shared = make_shared(url=srv.url, session_id="web-2")
        slow: dict[str, Any] = {}
        asker = threading.Thread(
            target=lambda: slow.update(shared.ask("slow", timeout=TIMEOUT)), name="slow-asker"
        )
        asker.start()
        assert held.wait(TIMEOUT)
        assert shared.ask("fast", timeout=TIMEOUT)["text"] == "You said: fast"
        srv.send_message(
            {"type": "textReply", "replyTo": held_id[0], "text": "late"}, session_id="web-2"
        )
        asker.join(TIMEOUT)
        assert not asker.is_alive()
        assert slow["text"] == "late"
        shared.close()


def test_many_threads_share_one_client(server: ReferenceServer, make_shared: Any) -> None:
    """Eight threads asking at once each get the reply to their own text, over one connection."""
    shared = make_shared(url=server.url)
    results: dict[int, str] = {}
    errors: list[BaseException] = []

    def ask(n: int) -> None:
        try:
            results[n] = shared.ask(f"text {n}", timeout=TIMEOUT)["text"]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(n,), name=f"asker-{n}") for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert not errors
    assert results == {n: f"You said: text {n}" for n in range(8)}
    assert server.stats.connections_total == 1


def test_ask_times_out_without_a_reply(make_shared: Any, shared_module: ModuleType) -> None:
    """ask() raises ReplyTimeout (a TimeoutError) when no reply comes in time."""
    with ReferenceServer(responder=lambda request: None) as srv:
        shared = make_shared(url=srv.url)
        shared.client()
        with pytest.raises(shared_module.ReplyTimeout) as info:
            shared.ask("anyone?", timeout=0.2)
        assert isinstance(info.value, TimeoutError)
        shared.close()


def test_refused_credentials_raise_at_first_use(make_shared: Any) -> None:
    """A client the server refuses raises the client's error from ask() and leaves no thread."""
    with ReferenceServer(
        credentials=Credentials(token="right", app_id="app", tenant_id="ten")
    ) as srv:
        shared = make_shared(url=srv.url, token="wrong", app_id="app", tenant_id="ten")
        with pytest.raises(AuthenticationError):
            shared.ask("hello", timeout=TIMEOUT)
        shared.close()


def test_no_url_uses_an_embedded_server(make_shared: Any) -> None:
    """With no URL the shared client starts its own reference server, and close() stops it."""
    shared = make_shared()
    assert shared.ask("offline", timeout=TIMEOUT)["text"] == "You said: offline"
    shared.close()


def test_from_env_reads_the_avatar_im_variables(
    server: ReferenceServer, shared_module: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """from_env() connects to AVATAR_IM_URL with the AVATAR_IM_* session id."""
    monkeypatch.setenv("AVATAR_IM_URL", server.url)
    monkeypatch.setenv("AVATAR_IM_SESSION_ID", "from-env")
    shared = shared_module.SharedClient.from_env()
    try:
        shared.ask("hi", timeout=TIMEOUT)
    finally:
        shared.close()
    snapshot = server.session("from-env")
    assert snapshot is not None
    assert snapshot.texts == ["hi"]


def test_running_the_module_asks_and_prints_the_replies(server: ReferenceServer) -> None:
    """`python -m examples.shared_client` does something: two questions, two replies."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-m", "examples.shared_client"],
        cwd=root,
        env={**os.environ, "AVATAR_IM_URL": server.url},
        capture_output=True,
        text=True,
        timeout=6 * TIMEOUT,
        check=True,
    )
    assert "'hello' -> 'You said: hello'" in result.stdout


def test_the_server_module_names_its_extra_when_websockets_is_missing() -> None:
    """Without the 'server' extra, importing the server says which extra to install."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['websockets'] = None\n"
        "try:\n    import avatar_im.server\n"
        "except ImportError as exc:\n    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=6 * TIMEOUT,
        check=True,
    )
    assert "pip install 'avatar-im[server]'" in result.stdout
