"""The README's quick starts run as written, against the embedded reference server."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from avatar_im.server import ReferenceServer

README = Path(__file__).resolve().parent.parent / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def test_script_quick_start_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """The script quick start asks, hears the broadcast and prints the reply."""
    exec(compile(_python_blocks()[0], "README.md", "exec"), {})  # our own README
    out = capsys.readouterr().out
    assert "You said: hello\n" in out
    assert "the avatar says: You said: hello" in out


def test_interrupt_quick_start_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """The interrupt quick start stops a broadcast and reports that the service was told."""
    exec(compile(_python_blocks()[1], "README.md", "exec"), {})
    assert capsys.readouterr().out.strip().splitlines()[-1] == "True () False"


def test_docs_quick_start_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """docs/index.md's script quick start runs as written and prints the reply."""
    index = README.parent / "docs" / "index.md"
    block = re.findall(r"```python\n(.*?)```", index.read_text(encoding="utf-8"), re.S)[0]
    exec(compile(block, "docs/index.md", "exec"), {})
    assert "You said: hello\n" in capsys.readouterr().out


@pytest.fixture
def avatar_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[ReferenceServer]:
    """A reference server, and the AVATAR_IM_* variables AvatarIM.from_env() reads."""
    with ReferenceServer(speaking_rate=400.0, speaking_base=0.05) as server:
        for name, value in {
            "AVATAR_IM_URL": server.url,
            "AVATAR_IM_TOKEN": "dev-token",
            "AVATAR_IM_APP_ID": "my-app",
            "AVATAR_IM_TENANT_ID": "my-tenant",
            "AVATAR_IM_SESSION_ID": "readme-session",
        }.items():
            monkeypatch.setenv(name, value)
        yield server


def test_flask_view_answers_each_post_with_the_reply_to_its_text(
    avatar_env: ReferenceServer,
) -> None:
    """The README's Flask view, as written: every POST gets the reply to its own text."""
    pytest.importorskip("flask")
    namespace: dict[str, Any] = {"__name__": "readme_flask"}
    exec(compile(_python_blocks()[2], "README.md", "exec"), namespace)
    try:
        web = namespace["app"].test_client()
        for text in ("first", "second", "third"):
            response = web.post("/say", json={"text": text})
            assert response.get_json() == {"reply": f"You said: {text}"}
    finally:
        namespace["_client"].close()


def test_jupyter_cell_shows_the_reply_and_can_run_again(avatar_env: ReferenceServer) -> None:
    """The README's notebook cell, as written, returns the reply; run again, it closes the
    client it made before."""
    cell = _python_blocks()[3]
    namespace: dict[str, Any] = {}
    *body, last = cell.strip().splitlines()
    exec(compile("\n".join(body), "README.md", "exec"), namespace)
    assert eval(last.split("#")[0], namespace) == "You said: What can you do?"
    first = namespace["client"]
    exec(compile(cell, "README.md", "exec"), namespace)
    assert first.closed and not namespace["client"].closed
    namespace["client"].close()
