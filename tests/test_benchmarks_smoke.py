"""A smoke run of the benchmark harness with tiny counts, so that it cannot rot.

It asserts only that every figure produced a number: no timing is checked.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _peer_available() -> bool:
    """True when the bench extra's python-socketio and simple-websocket are installed."""
    return all(importlib.util.find_spec(name) for name in ("socketio", "simple_websocket"))


def _node_available() -> bool:
    """True when node and npm can run the Node peer (npm installs ws on first use)."""
    installed = (ROOT / "benchmarks" / "node" / "node_modules" / "ws").exists()
    return shutil.which("node") is not None and (installed or shutil.which("npm") is not None)


def test_every_figure_produces_a_number(tmp_path: Path) -> None:
    """`python -m benchmarks.run --quick` gives a number for the SDK and every baseline."""
    out = tmp_path / "bench.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.run",
            "--quick",
            "--pairs=1",
            "--idle-clients=5",
            "--idle-seconds=0.2",
            f"--json={out}",
        ],
        cwd=ROOT,
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| figure | SDK | baseline | ratio |" in done.stdout
    rows = json.loads(out.read_text(encoding="utf-8"))["rows"]
    figures = {row["figure"] for row in rows}
    for expected in (
        "text 1 thread",
        "text 8 threads",
        "audio",
        "round trip",
        "session start",
        "idle clients",
        "peer",
        "system calls",
        "import avatar_im",
        "reconnect",
    ):
        assert any(expected in figure for figure in figures), (expected, figures)
    # Without the bench extra (python-socketio) the peer row says so instead of a number.
    peer = _peer_available()
    node = _node_available()
    assert any(row["figure"].startswith("node peer") for row in rows), figures
    for row in rows:
        if row["figure"].startswith("peer") and not peer:
            continue
        # Without node (or npm) the Node peer's row says so instead of a number.
        if row["figure"].startswith("node peer") and not node:
            continue
        if row["figure"].startswith("system calls") and shutil.which("strace") is None:
            continue
        assert not math.isnan(row["sdk"]), row
        if row["baseline_name"]:
            assert not math.isnan(row["baseline"]), row
