"""The README's script quick start runs as written, against the embedded reference server."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def test_script_quick_start_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """The first Python block of the README runs to the end and prints the reply."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    exec(compile(blocks[0], "README.md", "exec"), {})  # our own README
    out = capsys.readouterr().out
    assert "startResult" in out and "You said: hello" in out
