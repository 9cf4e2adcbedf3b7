"""Deterministic costs: instructions and system calls per message, import time.

    python -m benchmarks.costs [--quick] [--n N] [--url ws://...]

The machine is noisy, so these figures count instead of timing:

* **Instructions per message** (``valgrind --tool=callgrind``): a child
  process connects, warms up, sends *N* messages and waits until all are
  acknowledged ("delivered"), then exits; the same child with *2N* messages
  is run too, and ``(Ir(2N) - Ir(N)) / N`` is the cost of one message with
  everything else (interpreter start, imports, connect, warm-up, exit)
  subtracted.  Every thread of the client process is counted (the SDK's
  reader thread, websockets' background thread); the server is another
  process, not counted.
* **System calls per message** (``strace -f -c``): the same children, the same
  subtraction, over the total of system calls of every thread.
* **Reads and writes per message** (``/proc/self/io``, ``syscr + syscw``): the
  same child without a tracer, counting over its measured messages only; the
  tracer slows a client down and so changes how its writes and reads batch.
* **Import time** (``python -X importtime``): the cumulative time of the
  top-level import, median over fresh processes.

The SDK and ``websockets.sync.client`` run the same scenario against the same
server (the Node peer when it can run, else the reference server), in the
same run.  A tool that is missing gives ``nan`` with the reason.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .servers import ROOT

__all__ = ["Cost", "import_ms", "instructions", "io_calls", "per_message", "syscalls"]

#: Messages sent before the measured ones (both runs), so that caches and buffers are warm.
WARMUP = 200
SIDES = ("sdk", "websockets")
KINDS = ("text", "audio")


@dataclass(frozen=True)
class Cost:
    """One side and kind: a count per message, or NaN with the reason."""

    side: str
    kind: str
    per_message: float
    why: str = ""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _child_command(side: str, kind: str, url: str, n: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "benchmarks.costs",
        "--child",
        f"--side={side}",
        f"--kind={kind}",
        f"--url={url}",
        f"--n={n}",
    ]


def _run(command: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        command,
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{command[0]} failed ({done.returncode}): {done.stderr[-1500:]}")
    return done


def _callgrind_total(side: str, kind: str, url: str, n: int, timeout: float) -> int:
    with tempfile.TemporaryDirectory(prefix="bench-cg-") as tmp:
        out = Path(tmp) / "callgrind.out"
        _run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                "--dump-line=no",
                "--compress-strings=no",
                *_child_command(side, kind, url, n),
            ],
            timeout,
        )
        text = out.read_text(encoding="utf-8", errors="replace")
    found = re.search(r"^(?:summary|totals):\s*(\d+)", text, re.MULTILINE)
    if found is None:
        raise RuntimeError("no totals in the callgrind output")
    return int(found.group(1))


def _strace_calls(text_line: str) -> int:
    """The calls column of a ``strace -c`` total line (usecs/call may be missing)."""
    parts = text_line.split()
    # % time, seconds, [usecs/call], calls, [errors], "total"
    ints = [p for p in parts[:-1] if re.fullmatch(r"\d+", p)]
    return int(ints[-2] if len(ints) >= 3 else ints[0])


def per_message(
    total: Callable[[str, str, str, int, float], int],
    side: str,
    kind: str,
    url: str,
    n: int,
    timeout: float,
) -> float:
    """``(total(2n) - total(n)) / n``: the count of one message, the rest subtracted."""
    with ThreadPoolExecutor(2) as pool:  # two processes at once: counts do not depend on time
        one = pool.submit(total, side, kind, url, n, timeout)
        two = pool.submit(total, side, kind, url, 2 * n, timeout)
        return (two.result() - one.result()) / n


def _measure(
    tool: str,
    total: Callable[[str, str, str, int, float], int],
    url: str,
    n: int,
    timeout: float,
    kinds: tuple[str, ...] = KINDS,
    runs: int = 1,
) -> list[Cost]:
    if shutil.which(tool) is None:
        return [Cost(s, k, float("nan"), f"{tool} is not installed") for s in SIDES for k in kinds]
    costs = []
    for side in SIDES:
        for kind in kinds:
            try:
                counts = [per_message(total, side, kind, url, n, timeout) for _ in range(runs)]
                costs.append(Cost(side, kind, statistics.median(counts)))
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                costs.append(Cost(side, kind, float("nan"), str(exc)[-300:]))
    return costs


def instructions(
    url: str, n: int, timeout: float = 600.0, kinds: tuple[str, ...] = KINDS
) -> list[Cost]:
    """Instructions per message under callgrind, per side and kind."""
    return _measure("valgrind", _callgrind_total, url, n, timeout, kinds)


def syscalls(url: str, n: int, timeout: float = 120.0, runs: int = 3) -> list[Cost]:
    """System calls per message under ``strace -f -c``, per side and kind (median of *runs*)."""
    return _measure("strace", _strace_total_calls, url, n, timeout, runs=runs)


def _strace_total_calls(side: str, kind: str, url: str, n: int, timeout: float) -> int:
    with tempfile.TemporaryDirectory(prefix="bench-st-") as tmp:
        out = Path(tmp) / "strace.out"
        _run(["strace", "-f", "-c", "-o", str(out), *_child_command(side, kind, url, n)], timeout)
        text = out.read_text(encoding="utf-8", errors="replace")
    for line in reversed(text.splitlines()):
        if line.split()[-1:] == ["total"]:
            return _strace_calls(line)
    raise RuntimeError("no total in the strace summary")


def io_calls(url: str, n: int, timeout: float = 120.0, runs: int = 3) -> list[Cost]:
    """Read and write system calls per message from ``/proc/self/io`` (median of *runs*)."""
    costs = []
    for side in SIDES:
        for kind in KINDS:
            try:
                counts = []
                for _ in range(runs):
                    done = _run(_child_command(side, kind, url, n), timeout)
                    counts.append(float(done.stdout.split()[-1]) / n)
                costs.append(Cost(side, kind, statistics.median(counts)))
            except (RuntimeError, OSError, subprocess.SubprocessError, ValueError) as exc:
                costs.append(Cost(side, kind, float("nan"), str(exc)[-300:]))
    return costs


def _io_count() -> int:
    try:
        with open("/proc/self/io", encoding="ascii") as io:
            fields = dict(line.split(":") for line in io.read().splitlines())
    except OSError:
        return 0
    return int(fields["syscr"]) + int(fields["syscw"])


def import_ms(module: str, runs: int = 7) -> float:
    """Median over *runs* fresh interpreters of the cumulative import time of *module*, in ms."""
    times = []
    for _ in range(runs):
        done = _run([sys.executable, "-X", "importtime", "-c", f"import {module}"], 60)
        for line in done.stderr.splitlines():
            # "import time:      self [us] | cumulative | imported package"
            parts = line.split("|")
            if len(parts) == 3 and parts[2].strip() == module:
                times.append(int(parts[1]) / 1000)
    return statistics.median(times) if times else float("nan")


# ------------------------------------------------------------------ the child


def _child(side: str, kind: str, url: str, n: int) -> None:
    """Connect, warm up, send *n* messages of *kind* and wait until all are acknowledged."""
    from .common import AUDIO_CHUNK, TEXT, audio_content, envelope_frame, text_content

    if side == "sdk":
        from . import figures

        client = figures.sdk_client(url, cap=60.0)
        send: Callable[[], Any]
        if kind == "text":
            send = lambda: client.send_text(TEXT)  # noqa: E731
        else:
            send = lambda: client.send_audio(AUDIO_CHUNK)  # noqa: E731
        try:
            for _ in range(WARMUP):
                send()
            client.flush(60.0)
            before = _io_count()
            for _ in range(n):
                send()
            client.flush(60.0)
            print(_io_count() - before, flush=True)
        finally:
            client.close()
        return

    from .common import Deadline
    from .figures import WebsocketsClient, _WebsocketsAcks

    ws_client = WebsocketsClient(url, timeout=60.0)
    audio = base64.b64encode(AUDIO_CHUNK).decode("ascii")
    session = ws_client.session_id

    def content() -> dict[str, Any]:
        if kind == "text":
            return text_content(session)
        return audio_content(session, audio)

    try:
        for count in (WARMUP, n):
            before = _io_count()
            reader = _WebsocketsAcks(ws_client.ws, count, 60.0)
            reader.start()
            ws_send, new_id = ws_client.ws.send, ws_client.ids.new
            for _ in range(count):
                ws_send(envelope_frame(new_id(), content()))
            reader.wait(Deadline(60.0), "websockets costs")
            reader.join(1)
        print(_io_count() - before, flush=True)
    finally:
        ws_client.close()


# ------------------------------------------------------------------ entry point


def run(url: str, n: int, callgrind_n: int) -> dict[str, Any]:
    """Every figure of this module against *url*: a dict of Costs and import times."""
    t0 = time.monotonic()
    result: dict[str, Any] = {
        "instructions": instructions(url, callgrind_n),
        "syscalls": syscalls(url, n),
        "import_ms": {
            m: import_ms(m) for m in ("avatar_im", "websocket", "websockets.sync.client")
        },
    }
    result["seconds"] = time.monotonic() - t0
    return result


def main(argv: list[str] | None = None) -> int:
    """The parent (print the figures) or, with ``--child``, one measured child."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.costs", description=__doc__)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--side", choices=SIDES, default="sdk")
    parser.add_argument("--kind", choices=KINDS, default="text")
    parser.add_argument("--url", help="the server (default: the Node peer, else the reference)")
    parser.add_argument("--n", type=int, default=2000, help="messages per measured run")
    parser.add_argument("--quick", action="store_true", help="tiny counts")
    args = parser.parse_args(argv)
    if args.child:
        _child(args.side, args.kind, args.url, args.n)
        return 0
    from .servers import ServerProcess, node_peer

    kind = "node" if node_peer() is None else "reference"
    n = 100 if args.quick else args.n
    with ServerProcess(kind) as server:
        url = args.url or server.url
        result = run(url, max(n, 2000), n)
    print(f"server: {kind}; {n} and {2 * n} messages per child")
    for key in ("instructions", "syscalls"):
        for cost in result[key]:
            print(f"{key} per {cost.kind} message, {cost.side}: {cost.per_message:,.1f} {cost.why}")
    for module, ms in result["import_ms"].items():
        print(f"import {module}: {ms:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
