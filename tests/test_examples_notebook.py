"""Tests of examples/quickstart.ipynb: run end to end by nbclient against a reference server."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from conftest import TIMEOUT
from nbclient import NotebookClient

from avatar_im.server import ReferenceServer

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"


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
    """The notebook talks to AVATAR_IM_URL: text and audio replies printed, session stopped."""
    monkeypatch.setenv("AVATAR_IM_URL", server.url)
    monkeypatch.setenv("AVATAR_IM_SESSION_ID", "nb-1")
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
    assert "'text': 'You said: Hello from a notebook!'" in printed
    assert "'type': 'audioReceived'" in printed
    assert "'bytes': 8000" in printed
    assert printed.rstrip().endswith("closed")
    snapshot = server.session("nb-1")
    assert snapshot is not None
    assert snapshot.texts == ["Hello from a notebook!"]
    assert len(snapshot.audio_bytes) == 8000
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
