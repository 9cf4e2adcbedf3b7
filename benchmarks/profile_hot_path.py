"""Profile the SDK's hot path: where a client's CPU goes, per thread.

    python -m benchmarks.profile_hot_path --scenario text --profiler cprofile
    python -m benchmarks.profile_hot_path --scenario text --profiler py-spy

Scenarios, each against the reference server in its own process:
``text`` (``send_text`` x N, then ``flush``), ``text8`` (the same from 8
threads), ``audio`` (``send_audio`` x N, then ``flush``) and ``rtt``
(``send_text`` + ``wait_ack`` one at a time).

``cprofile`` profiles the calling threads and the client's reader thread
(every thread whose name starts with ``avatar-im``) with one
:class:`cProfile.Profile` each, timed by ``time.thread_time`` (CPU time of
the thread, so blocking waits cost nothing), and prints each thread's top
functions by own time, as a share of that thread's CPU time; its overhead
is large, so trust its call counts more than its shares.  ``py-spy`` samples
the whole process from outside (little overhead) and prints the same from its
raw output: own time per function and inclusive time of the library's
functions, as shares of each thread's samples.  ``none`` only times the
scenario (``--max-outbox`` and ``--repeat`` make it an experiment).
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from . import figures
from .common import AUDIO_CHUNK, TEXT
from .servers import ROOT, ServerProcess

__all__ = ["main"]

SCENARIOS = ("text", "text8", "audio", "rtt")


# ------------------------------------------------------------------ scenarios


def _scenario(name: str, url: str, n: int, max_outbox: int = 10_000) -> Callable[[], None]:
    def text() -> None:
        client = figures.sdk_client(url, cap=60, max_outbox=max_outbox)
        try:
            for _ in range(n):
                client.send_text(TEXT)
            client.flush(60)
        finally:
            client.close()

    def text8() -> None:
        client = figures.sdk_client(url, cap=60, max_outbox=max_outbox)

        def loop() -> None:
            for _ in range(n // 8):
                client.send_text(TEXT)

        try:
            workers = [threading.Thread(target=loop, name=f"bench-sender-{i}") for i in range(8)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join(60)
            client.flush(60)
        finally:
            client.close()

    def audio() -> None:
        client = figures.sdk_client(url, cap=60, max_outbox=max_outbox)
        try:
            for _ in range(n):
                client.send_audio(AUDIO_CHUNK)
            client.flush(60)
        finally:
            client.close()

    def rtt() -> None:
        client = figures.sdk_client(url, cap=60, max_outbox=max_outbox)
        try:
            for _ in range(n):
                client.wait_ack(client.send_text(TEXT), 60)
        finally:
            client.close()

    return {"text": text, "text8": text8, "audio": audio, "rtt": rtt}[name]


# ------------------------------------------------------------------ cProfile


@contextmanager
def _profiling_threads(profiles: dict[str, cProfile.Profile]) -> Iterator[None]:
    """Profile every thread started meanwhile whose name starts with avatar-im or bench-."""
    original = threading.Thread.run
    lock = threading.Lock()

    def run(self: threading.Thread) -> None:
        if not self.name.startswith(("avatar-im", "bench-sender")):
            original(self)
            return
        profile = cProfile.Profile(time.thread_time)
        with lock:
            key = "reader" if self.name.startswith("avatar-im") else "senders"
            if key in profiles:
                key = f"{key}-{len(profiles)}"
            profiles[key] = profile
        profile.enable()
        try:
            original(self)
        finally:
            profile.disable()

    threading.Thread.run = run  # type: ignore[method-assign]
    try:
        yield
    finally:
        threading.Thread.run = original  # type: ignore[method-assign]


def _label(key: tuple[str, int, str]) -> str:
    filename, line, function = key
    if filename == "~":
        return function
    path = Path(filename)
    parts = path.parts
    for anchor in ("avatar_im", "websocket", "benchmarks", "threading.py", "json"):
        if anchor in parts:
            path = Path(*parts[parts.index(anchor) :])
            break
    else:
        path = Path(path.name)
    return f"{function} ({path}:{line})"


def print_cprofile(name: str, profile: cProfile.Profile, top: int) -> None:
    """Print *profile*'s top functions by own time, with shares of the thread's total."""
    stats = pstats.Stats(profile)
    entries = stats.stats  # type: ignore[attr-defined]
    total = sum(value[2] for value in entries.values()) or 1e-9
    print(f"\n### {name}: {total:.3f} s of thread CPU time\n")
    print("| function | own | own share | cumulative share | calls |")
    print("| --- | ---: | ---: | ---: | ---: |")
    ranked = sorted(entries.items(), key=lambda item: item[1][2], reverse=True)[:top]
    for key, (_, calls, own, cumulative, _) in ranked:
        print(
            f"| {_label(key)} | {own * 1e3:.0f} ms | {own / total:.1%} | "
            f"{cumulative / total:.1%} | {calls} |"
        )


def run_cprofile(scenario: str, n: int, top: int) -> None:
    """Run *scenario* under cProfile (the calling thread and the client's threads)."""
    with ServerProcess("reference") as server:
        work = _scenario(scenario, server.url, n)
        _scenario(scenario, server.url, min(n, 500))()  # warm up
        profiles: dict[str, cProfile.Profile] = {}
        main_profile = cProfile.Profile(time.thread_time)
        with _profiling_threads(profiles):
            t0 = time.perf_counter()
            main_profile.enable()
            work()
            main_profile.disable()
            elapsed = time.perf_counter() - t0
    print(f"## cProfile, scenario {scenario}, n={n}: {elapsed:.2f} s ({n / elapsed:,.0f}/s)")
    print_cprofile("calling thread", main_profile, top)
    for name, profile in profiles.items():
        print_cprofile(f"thread {name}", profile, top)


# ------------------------------------------------------------------ py-spy


def _function(frame: str) -> str:
    """``name (file:line)`` -> ``name (file)``: py-spy reports lines, we rank functions."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0]})" if where else name


def _thread_of(frames: list[str]) -> str:
    if any("Connection._run (avatar_im/connection.py" in f for f in frames):
        return "reader thread"
    if any(f.startswith("_scenario.<locals>.") and ".loop " in f for f in frames):
        return "sender threads"
    if any(f.startswith("<module> ") for f in frames):
        return "calling thread"
    return "other threads"


def summarize_py_spy(raw: Path, top: int) -> None:
    """Print own and inclusive shares per thread from py-spy's raw (folded) output.

    Samples of a thread blocked in a wait (a lock, a condition, ``select``)
    count too: they show as own time of that wait, which is not CPU.
    """
    own: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    inclusive: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    totals: collections.Counter[str] = collections.Counter()
    for line in raw.read_text(encoding="utf-8").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread = _thread_of(frames)
        totals[thread] += count
        own[thread][_function(frames[-1])] += count
        for function in {_function(f) for f in frames if "avatar_im/" in f}:
            inclusive[thread][function] += count
    for thread, total in totals.most_common():
        if thread == "other threads":
            continue
        print(f"\n### {thread}: {total} samples\n")
        print("| function (own time) | share |")
        print("| --- | ---: |")
        for function, count in own[thread].most_common(top):
            print(f"| {function} | {count / total:.1%} |")
        print("\n| library function (inclusive) | share |")
        print("| --- | ---: |")
        for function, count in inclusive[thread].most_common(top):
            print(f"| {function} | {count / total:.1%} |")


def run_py_spy(scenario: str, n: int, top: int, rate: int) -> None:
    """Run *scenario* in a child process sampled by py-spy; summarize its samples."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        raise SystemExit("py-spy is not installed: pip install py-spy")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "samples.txt"
        command = [
            py_spy,
            "record",
            "--rate",
            str(rate),
            "--format",
            "raw",
            "--output",
            str(raw),
            "--",
            sys.executable,
            "-m",
            "benchmarks.profile_hot_path",
            f"--scenario={scenario}",
            f"-n={n}",
            "--profiler=none",
        ]
        subprocess.run(command, cwd=ROOT, env=env, check=True, timeout=600)
        print(f"## py-spy, scenario {scenario}, n={n}, {rate} samples/s")
        summarize_py_spy(raw, top)


def run_plain(scenario: str, n: int, max_outbox: int, repeat: int) -> None:
    """Run *scenario* with no profiler (the py-spy child, or a timing with --max-outbox)."""
    with ServerProcess("reference") as server:
        _scenario(scenario, server.url, min(n, 500), max_outbox)()
        for _ in range(repeat):
            t0 = time.perf_counter()
            _scenario(scenario, server.url, n, max_outbox)()
            elapsed = time.perf_counter() - t0
            print(
                f"scenario {scenario}, n={n}, max_outbox={max_outbox}: {elapsed:.2f} s "
                f"({n / elapsed:,.0f}/s)",
                file=sys.stderr,
            )


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and profile."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_hot_path")
    parser.add_argument("--scenario", choices=SCENARIOS, default="text")
    parser.add_argument("-n", type=int, default=20_000, help="messages (round trips for rtt)")
    parser.add_argument("--profiler", choices=["cprofile", "py-spy", "none"], default="cprofile")
    parser.add_argument("--top", type=int, default=20, help="functions shown per thread")
    parser.add_argument("--rate", type=int, default=1000, help="py-spy samples per second")
    parser.add_argument("--max-outbox", type=int, default=10_000, help="the client's max_outbox")
    parser.add_argument("--repeat", type=int, default=1, help="timed runs (--profiler none)")
    args = parser.parse_args(argv)
    if args.profiler == "cprofile":
        run_cprofile(args.scenario, args.n, args.top)
    elif args.profiler == "py-spy":
        run_py_spy(args.scenario, args.n, args.top, args.rate)
    else:
        run_plain(args.scenario, args.n, args.max_outbox, args.repeat)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
