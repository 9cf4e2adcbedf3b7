"""Tests of examples/quickstart.ipynb: run end to end by nbclient against a reference server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from conftest import TIMEOUT
from nbclient import NotebookClient

from avatar_im.server import ReferenceServer

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"


@pytest.fixture
def server() -> Iterator[ReferenceServer]:
    """A reference server of the default (cloud-shaped) profile, as the notebook meets."""
    with ReferenceServer(host="127.0.0.1", port=0) as srv:
        yield srv


def outputs(notebook: nbformat.NotebookNode) -> str:
    """Every stream output of the executed notebook, joined."""
    return "".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "stream"
    )


def test_quickstart_runs_against_the_server_in_avatar_im_url(
    server: ReferenceServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The notebook talks to AVATAR_IM_URL: the answers to its text and audio printed, closed."""
    monkeypatch.setenv("AVATAR_IM_URL", server.url)
    monkeypatch.setenv("AVATAR_IM_SESSION_ID", "nb-1")
    server.hear("What can you do?", session_id="nb-1")  # what the audio clip "says"
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        notebook,
        timeout=int(4 * TIMEOUT),
        startup_timeout=int(12 * TIMEOUT),
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    ).execute()

    printed = outputs(notebook)
    assert f"server: {server.url}" in printed
    assert "reply: You said: Hello from a notebook!\n" in printed
    assert "spoken: You said: Hello from a notebook! | interrupted: False\n" in printed
    assert (
        "<- asr: What can you do?\n"
        "<- reply: You said: What can you do?\n"
        "<- broadcast_start: You said: What can you do?\n"
        "<- broadcast_end\n"
    ) in printed
    assert printed.rstrip().endswith("closed")
    snapshot = server.session("nb-1")
    assert snapshot is not None
    assert snapshot.texts == ["Hello from a notebook!"]
    assert len(snapshot.audio_bytes) == 2 * 16000  # the tone, then the silence
    assert snapshot.heard == ["What can you do?"]
    assert snapshot.stopped


def test_quickstart_has_no_outputs_or_asyncio() -> None:
    """The notebook is committed without outputs and its code uses no asyncio."""
    notebook = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    code = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
    assert code
    for cell in code:
        assert cell["outputs"] == []
        assert cell["execution_count"] is None
        source = "".join(cell["source"])
        assert "asyncio" not in source
        assert "await" not in source
