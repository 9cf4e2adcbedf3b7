"""Tests of examples/shared_client.py: one lazily made client per process, asks taking turns."""

from __future__ import annotations

import importlib
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from conftest import TIMEOUT, wait_until

from avatar_im import AskTimeout, AuthenticationError
from avatar_im.server import Credentials, ReferenceServer, default_reply

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def server() -> Iterator[ReferenceServer]:
    """A reference server of the default (cloud-shaped) profile, as the example meets."""
    with ReferenceServer(host="127.0.0.1", port=0) as srv:
        yield srv


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
    """ask() passes over the startResult, unrelated pushes and a reply that came before."""
    shared = make_shared(url=server.url, session_id="web-1")
    client = shared.client()
    server.send_message({"type": "replyContent", "text": "stale"}, session_id="web-1")
    server.send_message({"type": "news", "text": "unrelated"}, session_id="web-1")
    assert client.receive(TIMEOUT, family="unknown").text == "unrelated"  # both arrived
    content = shared.ask("hello", timeout=TIMEOUT)
    assert content["type"] == "replyContent"
    assert content["text"] == "You said: hello"
    assert "replyTo" not in content
    assert client.receive(0, family="reply").text == "stale"  # still there for receive()
    assert shared.client() is client
    assert server.stats.connections_total == 1


def test_asks_take_turns_each_getting_its_own_reply(make_shared: Any) -> None:
    """A reply that comes late holds the next ask's text back until it came: no mix-up."""

    def reply(text: str) -> str | None:
        return None if text == "slow" else default_reply(text)  # "slow": the test answers

    with ReferenceServer(reply=reply) as srv:
        shared = make_shared(url=srv.url, session_id="web-2")
        shared.client()
        answers: dict[str, Any] = {}

        def ask(text: str) -> None:
            answers[text] = shared.ask(text, timeout=TIMEOUT)["text"]

        slow = threading.Thread(target=ask, args=("slow",), name="slow-asker")
        slow.start()
        assert srv.wait_for(lambda: srv.session("web-2").texts == ["slow"], TIMEOUT)
        fast = threading.Thread(target=ask, args=("fast",), name="fast-asker")
        fast.start()
        # "fast" waits for its turn: it is not sent while "slow" waits for its reply.
        assert not wait_until(lambda: not fast.is_alive(), 0.3)
        assert srv.session("web-2").texts == ["slow"]
        srv.send_message({"type": "replyContent", "text": "late"}, session_id="web-2")
        for thread in (slow, fast):
            thread.join(TIMEOUT)
            assert not thread.is_alive()
        assert answers == {"slow": "late", "fast": "You said: fast"}
        assert srv.session("web-2").texts == ["slow", "fast"]
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


def test_ask_times_out_without_a_reply(make_shared: Any) -> None:
    """ask() raises the library's AskTimeout (a TimeoutError) when no reply comes in time."""
    with ReferenceServer(reply=lambda text: None) as srv:
        shared = make_shared(url=srv.url)
        shared.client()
        with pytest.raises(AskTimeout) as info:
            shared.ask("anyone?", timeout=0.2)
        assert isinstance(info.value, TimeoutError)
        assert info.value.message_id
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
