"""The README's quick starts run as written, against the embedded reference server."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

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
