"""The benchmark harness: ``python -m benchmarks.run [--quick] [--json FILE]``.

Starts the reference server (its ``echo`` profile), python-socketio's (for
the peer figure) and the Node peer (Node's ``ws``, fast enough that it is not
what limits a client; installed with npm on first use, skipped with a note when
node or npm is missing) in child processes on loopback, runs every figure for the SDK
and its baselines alternately (several pairs, the order reversed every other
pair), and prints the machine and one table: figure, SDK, baseline, ratio, goal, verdict.
Values are medians over the pairs; the ratio is SDK / baseline of the
medians, with the worst single pair's ratio where a goal bounds every run.

``--callgrind`` adds the counted figures (:mod:`benchmarks.costs`):
instructions per message under callgrind for the SDK and for
``websockets.sync.client`` in the same run.

Every measurement is bounded in count and by a hard time cap; a measurement
that hits its cap gives ``n/a`` instead of a number.  The whole run is
bounded too (``--max-seconds``): figures left when it passes are skipped.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import avatar_im
from avatar_im import ReconnectPolicy

from . import costs, figures, idle, peer
from .common import AUDIO_CHUNK, Capped, check_frames, machine_info, median, percentile
from .servers import ROOT, ServerProcess, node_peer

__all__ = ["FULL", "QUICK", "Config", "Row", "main", "run"]

Metrics = dict[str, float]


@dataclass(frozen=True)
class Config:
    """Counts and caps of one run."""

    pairs: int = 7  #: SDK/baseline pairs per figure (medians over these)
    idle_pairs: int = 3  #: pairs for the many-clients figure (each is two child processes)
    text_n: int = 20_000  #: messages per text throughput run
    audio_n: int = 5_000  #: chunks per audio throughput run
    rtt_n: int = 2_000  #: round trips per run
    start_n: int = 30  #: session starts per run
    idle_clients: int = 200  #: clients in the many-clients figure
    idle_seconds: float = 30.0  #: seconds over which their idle CPU is measured
    reconnect_n: int = 8  #: server restarts
    peer_emits: int = 10_000  #: python-socketio emits per run
    peer_calls: int = 2_000  #: python-socketio calls per run
    node_idle_clients: int = 1_000  #: idle clients against the Node peer
    node_idle_seconds: float = 10.0  #: seconds their idle CPU is measured (1 s heartbeat)
    syscall_n: int = 2_000  #: messages per child for system calls (N and 2N)
    callgrind_n: int = 1_000  #: messages per child under callgrind (N and 2N)
    import_runs: int = 7  #: fresh interpreters per import time
    cap: float = 60.0  #: hard time cap of one measurement, in seconds
    max_seconds: float = 1_800.0  #: hard cap of the whole run
    only: tuple[str, ...] = ()  #: figure groups to run (all when empty)


FULL = Config()
QUICK = Config(
    pairs=3,
    idle_pairs=1,
    text_n=300,
    audio_n=100,
    rtt_n=50,
    start_n=5,
    idle_clients=20,
    idle_seconds=2.0,
    reconnect_n=2,
    peer_emits=300,
    peer_calls=50,
    node_idle_clients=20,
    node_idle_seconds=1.0,
    syscall_n=100,
    callgrind_n=5,
    import_runs=3,
    cap=20.0,
    max_seconds=240.0,
)

GROUPS = (
    "text",
    "text8",
    "audio",
    "rtt",
    "start",
    "idle",
    "peer",
    "node",
    "costs",
    "callgrind",
    "reconnect",
)
#: Groups run only when asked for (``--callgrind`` or ``--only``).
ON_REQUEST = ("callgrind",)


@dataclass
class Row:
    """One line of the table."""

    figure: str
    unit: str  #: "msg/s", "MB/s", "us", "ms", "threads", "KiB", "%"
    sdk: float
    baseline: float = math.nan
    baseline_name: str = ""
    goal: str = ""
    met: bool | None = None  #: None: no goal, or no number
    pair_ratios: list[float] = field(default_factory=list)
    sdk_values: list[float] = field(default_factory=list)
    baseline_values: list[float] = field(default_factory=list)
    note: str = ""

    @property
    def ratio(self) -> float:
        """SDK / baseline (NaN without a baseline)."""
        if math.isnan(self.baseline) or not self.baseline:
            return math.nan
        return self.sdk / self.baseline


# ------------------------------------------------------------------ running sides


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def alternate(pairs: int, sides: Sequence[Callable[[], Metrics]]) -> list[list[Metrics]]:
    """Run every side once per pair, reversing the order every other pair.

    A side that hits its cap gives ``{}`` for that pair (its metrics become NaN).
    """
    results: list[list[Metrics]] = [[] for _ in sides]
    for pair in range(pairs):
        order = list(range(len(sides)))
        if pair % 2:
            order.reverse()
        for index in order:
            try:
                results[index].append(sides[index]())
            except Capped as exc:
                _log(f"  capped: {exc}")
                results[index].append({})
    return results


def values(runs: list[Metrics], key: str) -> list[float]:
    """The *key* metric of every run (NaN where a run was capped)."""
    return [run.get(key, math.nan) for run in runs]


def compare(
    figure: str,
    unit: str,
    sdk_runs: list[Metrics],
    key: str,
    base_runs: list[Metrics] | None = None,
    base_name: str = "",
    base_key: str | None = None,
    goal: str = "",
    check: Callable[[Row], bool] | None = None,
    note: str = "",
) -> Row:
    """A row comparing the medians of *key* on both sides, with the per-pair ratios."""
    sdk_values = values(sdk_runs, key)
    row = Row(figure, unit, median(sdk_values), goal=goal, sdk_values=sdk_values, note=note)
    if base_runs is not None:
        base_values = values(base_runs, base_key or key)
        row.baseline = median(base_values)
        row.baseline_name = base_name
        row.baseline_values = base_values
        row.pair_ratios = [
            s / b if b else math.nan for s, b in zip(sdk_values, base_values, strict=True)
        ]
    numbers = not math.isnan(row.sdk) and (base_runs is None or not math.isnan(row.ratio))
    if check is not None and numbers:
        row.met = check(row)
    return row


def _throughput(result: figures.Throughput, scale: float = 1.0) -> Metrics:
    return {"rate": result.rate * scale, "cpu_us": result.cpu_us, "send_rate": result.send_rate}


def _server_cpu(server: ServerProcess, n: int, run: Callable[[], Metrics]) -> Metrics:
    """Run *run* and add the server's CPU microseconds per message (setup included)."""
    before = server.cpu_seconds()
    metrics = run()
    if metrics:
        metrics["server_cpu_us"] = (server.cpu_seconds() - before) / n * 1e6
    return metrics


def _server_note(sides: Sequence[tuple[str, list[Metrics]]]) -> str:
    parts = [f"{name} {median(values(runs, 'server_cpu_us')):.0f} us" for name, runs in sides]
    return "server CPU per message: " + ", ".join(parts)


def _latency(times: list[float], scale: float = 1e6) -> Metrics:
    return {"p50": percentile(times, 0.5) * scale, "p99": percentile(times, 0.99) * scale}


def _at_least(bound: float) -> Callable[[Row], bool]:
    return lambda row: row.ratio >= bound


def _at_most(bound: float) -> Callable[[Row], bool]:
    return lambda row: row.ratio <= bound


def _throughput_goal(row: Row) -> bool:
    """>= 1.0 x the baseline's median, and no pair below 0.85 x."""
    if any(math.isnan(r) for r in row.pair_ratios):
        return False
    return row.ratio >= 1.0 and min(row.pair_ratios) >= 0.85


# ------------------------------------------------------------------ the figures


def text_rows(server: ServerProcess, config: Config) -> list[Row]:
    """Text throughput, 1 thread: SDK, hand-written (a), floor (b)."""
    url, n, cap = server.url, config.text_n, config.cap
    sdk, hand, floor = alternate(
        config.pairs,
        [
            lambda: _server_cpu(server, n, lambda: _throughput(figures.sdk_text(url, n, cap))),
            lambda: _server_cpu(
                server, n, lambda: _throughput(figures.handwritten_text(url, n, cap))
            ),
            lambda: _server_cpu(server, n, lambda: _throughput(figures.floor_text(url, n, cap))),
        ],
    )
    server_note = _server_note([("SDK", sdk), ("(a)", hand), ("(b)", floor)])
    goal = ">= 1.0 x, every pair >= 0.85 x"
    return [
        compare(
            "text 1 thread, delivered",
            "msg/s",
            sdk,
            "rate",
            hand,
            "(a) hand-written",
            goal=goal,
            check=_throughput_goal,
            note=server_note,
        ),
        compare(
            "text 1 thread, delivered",
            "msg/s",
            sdk,
            "rate",
            floor,
            "(b) floor: pre-masked, one sendall",
            note=f"floor's sendall alone: {median(values(floor, 'send_rate')):,.0f} msg/s",
        ),
        compare(
            "text 1 thread, client CPU per message",
            "us",
            sdk,
            "cpu_us",
            hand,
            "(a) hand-written",
            note="whole client process, reader thread included; lower is better",
        ),
        compare(
            "text 1 thread, client CPU per message",
            "us",
            sdk,
            "cpu_us",
            floor,
            "(b) floor: pre-masked, one sendall",
        ),
    ]


def text8_rows(server: ServerProcess, config: Config) -> list[Row]:
    """Text throughput, 8 threads on one client: against (a) with 8 threads, and SDK 1 thread."""
    url, n, cap = server.url, config.text_n, config.cap
    sdk8, hand8, sdk1 = alternate(
        config.pairs,
        [
            lambda: _server_cpu(
                server, n, lambda: _throughput(figures.sdk_text(url, n, cap, threads=8))
            ),
            lambda: _server_cpu(
                server, n, lambda: _throughput(figures.handwritten_text(url, n, cap, threads=8))
            ),
            lambda: _server_cpu(server, n, lambda: _throughput(figures.sdk_text(url, n, cap))),
        ],
    )
    return [
        compare(
            "text 8 threads, delivered",
            "msg/s",
            sdk8,
            "rate",
            hand8,
            "(a) hand-written, 8 threads on one socket",
            goal=">= 1.0 x, every pair >= 0.85 x",
            check=_throughput_goal,
            note=_server_note([("SDK x8", sdk8), ("(a) x8", hand8), ("SDK x1", sdk1)]),
        ),
        compare(
            "text 8 threads vs 1 thread (SDK)",
            "msg/s",
            sdk8,
            "rate",
            sdk1,
            "SDK, 1 thread",
            goal=">= 1.0 x (no worse)",
            check=_at_least(1.0),
        ),
    ]


def audio_rows(server: ServerProcess, config: Config) -> list[Row]:
    """Audio throughput: 40 ms 16 kHz chunks, MB/s of PCM, delivered."""
    url, n, cap = server.url, config.audio_n, config.cap
    mb = len(AUDIO_CHUNK) / 1e6
    sdk, hand = alternate(
        config.pairs,
        [
            lambda: _server_cpu(server, n, lambda: _throughput(figures.sdk_audio(url, n, cap), mb)),
            lambda: _server_cpu(
                server, n, lambda: _throughput(figures.handwritten_audio(url, n, cap), mb)
            ),
        ],
    )
    return [
        compare(
            "audio 40 ms chunks, delivered",
            "MB/s",
            sdk,
            "rate",
            hand,
            "(a) hand-written",
            goal=">= 1.0 x, every pair >= 0.85 x",
            check=_throughput_goal,
            note="MB/s of PCM (1280-byte chunks); " + _server_note([("SDK", sdk), ("(a)", hand)]),
        ),
        compare(
            "audio, client CPU per chunk",
            "us",
            sdk,
            "cpu_us",
            hand,
            "(a) hand-written",
            note="lower is better",
        ),
    ]


def rtt_rows(url: str, config: Config) -> list[Row]:
    """Delivery round trip, one message at a time."""
    n, cap = config.rtt_n, config.cap
    sdk, app, raw = alternate(
        config.pairs,
        [
            lambda: _latency(figures.sdk_rtt(url, n, cap)),
            lambda: _latency(figures.wsapp_rtt(url, n, cap)),
            lambda: _latency(figures.raw_rtt(url, n, cap)),
        ],
    )
    app_name = "WebSocketApp, reader thread"
    raw_name = "raw, same thread send+recv"
    return [
        compare(
            "round trip p50",
            "us",
            sdk,
            "p50",
            app,
            app_name,
            goal="<= 1.25 x",
            check=_at_most(1.25),
        ),
        compare(
            "round trip p99", "us", sdk, "p99", app, app_name, goal="<= 1.5 x", check=_at_most(1.5)
        ),
        compare("round trip p50", "us", sdk, "p50", raw, raw_name),
        compare("round trip p99", "us", sdk, "p99", raw, raw_name),
    ]


def start_rows(url: str, config: Config) -> list[Row]:
    """Session start: ``start_session`` to ready, against a raw start frame to startResult."""
    n, cap = config.start_n, config.cap
    sdk, raw = alternate(
        config.pairs,
        [
            lambda: _latency(figures.sdk_session_start(url, n, cap), 1e3),
            lambda: _latency(figures.raw_session_start(url, n, cap), 1e3),
        ],
    )
    return [compare("session start p50", "ms", sdk, "p50", raw, "raw start frame to startResult")]


def idle_rows(url: str, config: Config) -> list[Row]:
    """Many idle clients in one process (each measurement in a fresh child process)."""
    clients, seconds, cap = config.idle_clients, config.idle_seconds, config.cap

    def side(kind: str) -> Callable[[], Metrics]:
        def run() -> Metrics:
            result = idle.measure(kind, url, clients, seconds, cap)
            return {
                "threads": result.threads_per_client,
                "rss": result.rss_per_client_kb,
                "cpu": result.cpu_percent,
            }

        return run

    sdk, app = alternate(config.idle_pairs, [side("sdk"), side("wsapp")])
    name = f"{clients} WebSocketApps"
    what = f"{clients} idle clients"
    return [
        compare(
            f"{what}: threads per client",
            "threads",
            sdk,
            "threads",
            app,
            name,
            goal="<= 1 per client + a constant",
            check=lambda row: row.sdk <= 1.0 + 2.0 / clients,
        ),
        compare(
            f"{what}: RSS per client",
            "KiB",
            sdk,
            "rss",
            app,
            name,
            goal="<= 60 KB",
            check=lambda row: row.sdk <= 60_000 / 1024,
        ),
        compare(
            f"{what}: CPU over {seconds:g} s",
            "%",
            sdk,
            "cpu",
            app,
            name,
            goal="< 1 % of a core",
            check=lambda row: row.sdk < 1.0,
            note="percent of one core, whole process",
        ),
    ]


def peer_rows(url: str, config: Config) -> list[Row]:
    """python-socketio's sync client against its own server, beside the SDK's figures."""
    if not peer.available():
        note = "python-socketio not installed: pip install -e '.[bench]'"
        return [Row("peer: messages/s", "msg/s", math.nan, note=note)]
    n, calls, cap = config.text_n, config.peer_calls, config.cap
    emits = config.peer_emits
    with ServerProcess("socketio") as sio_server:
        # One python-socketio client for the figure: its disconnect() can take seconds.
        client = peer.connect(sio_server, cap)

        def sio_emits() -> Metrics:
            one_way, delivered = peer.socketio_emits(client, emits, cap)
            return {"rate": one_way, "delivered": delivered}

        try:
            sdk_text, sio, sdk_rtt, sio_call = alternate(
                config.pairs,
                [
                    lambda: _throughput(figures.sdk_text(url, n, cap)),
                    sio_emits,
                    lambda: _latency(figures.sdk_rtt(url, min(calls, config.rtt_n), cap)),
                    lambda: _latency(peer.socketio_call_rtt(client, calls, cap)),
                ],
            )
        finally:
            peer.disconnect(client)
    emit_loop = median(values(sio, "rate"))
    return [
        compare(
            "peer: messages/s, delivered (SDK text)",
            "msg/s",
            sdk_text,
            "rate",
            sio,
            "python-socketio emits/s, delivered",
            base_key="delivered",
            goal=">= 5 x",
            check=_at_least(5.0),
            note=(
                f"python-socketio's emit loop alone (emit only queues for its writer thread): "
                f"{emit_loop:,.0f} emits/s"
            ),
        ),
        compare(
            "peer: round trip p50 (SDK send_text+wait_ack)",
            "us",
            sdk_rtt,
            "p50",
            sio_call,
            "python-socketio call()",
            goal="<= 0.5 x",
            check=_at_most(0.5),
        ),
    ]


def _node_unavailable(figure: str) -> list[Row]:
    why = node_peer()
    return [Row(f"{figure} (skipped: {why})", "", math.nan, note=why or "")]


def node_rows(config: Config) -> list[Row]:
    """Against the Node peer (the server is not the bottleneck): SDK, websockets, the loop."""
    if node_peer() is not None:
        return _node_unavailable("node peer")
    if not figures.websockets_available():
        return [Row("node peer (skipped: websockets not installed)", "", math.nan)]
    n, audio_n, cap = config.text_n, config.audio_n, config.cap
    mb = len(AUDIO_CHUNK) / 1e6
    rows: list[Row] = []
    with ServerProcess("node") as server:
        url = server.url
        figures.sdk_text(url, 100, cap)
        figures.websockets_text(url, 100, cap)

        def timed(run: Callable[[], figures.Throughput], scale: float = 1.0) -> Metrics:
            return _server_cpu(server, n, lambda: _throughput(run(), scale))

        sdk, wsk, loop = alternate(
            config.pairs,
            [
                lambda: timed(lambda: figures.sdk_text(url, n, cap)),
                lambda: timed(lambda: figures.websockets_text(url, n, cap)),
                lambda: timed(lambda: figures.handwritten_text(url, n, cap)),
            ],
        )
        note = _server_note([("SDK", sdk), ("websockets", wsk), ("loop", loop)])
        rows += [
            compare(
                "node peer: text 1 thread, delivered",
                "msg/s",
                sdk,
                "rate",
                wsk,
                "websockets.sync.client",
                goal=">= 1.0 x",
                check=_at_least(1.0),
                note=note,
            ),
            compare(
                "node peer: text 1 thread, delivered",
                "msg/s",
                sdk,
                "rate",
                loop,
                "websocket-client loop",
                goal=">= 1.3 x",
                check=_at_least(1.3),
            ),
            compare(
                "node peer: text 1 thread, client CPU per message",
                "us",
                sdk,
                "cpu_us",
                wsk,
                "websockets.sync.client",
                note="whole client process; lower is better",
            ),
        ]
        sdk8, wsk8 = alternate(
            config.pairs,
            [
                lambda: timed(lambda: figures.sdk_text(url, n, cap, threads=8)),
                lambda: timed(lambda: figures.websockets_text(url, n, cap, threads=8)),
            ],
        )
        rows.append(
            compare(
                "node peer: text 8 threads, delivered",
                "msg/s",
                sdk8,
                "rate",
                wsk8,
                "websockets.sync.client, 8 threads",
                goal=">= 1.5 x",
                check=_at_least(1.5),
            )
        )
        asdk, awsk, aloop = alternate(
            config.pairs,
            [
                lambda: timed(lambda: figures.sdk_audio(url, audio_n, cap), mb),
                lambda: timed(lambda: figures.websockets_audio(url, audio_n, cap), mb),
                lambda: timed(lambda: figures.handwritten_audio(url, audio_n, cap), mb),
            ],
        )
        rows += [
            compare(
                "node peer: audio 40 ms chunks, delivered",
                "MB/s",
                asdk,
                "rate",
                awsk,
                "websockets.sync.client",
                goal=">= 1.0 x",
                check=_at_least(1.0),
                note="MB/s of PCM (1280-byte chunks)",
            ),
            compare(
                "node peer: audio 40 ms chunks, delivered",
                "MB/s",
                asdk,
                "rate",
                aloop,
                "websocket-client loop",
                goal=">= 1.3 x",
                check=_at_least(1.3),
            ),
        ]
        rtt_sdk, rtt_wsk = alternate(
            config.pairs,
            [
                lambda: _latency(figures.sdk_rtt(url, config.rtt_n, cap)),
                lambda: _latency(figures.websockets_rtt(url, config.rtt_n, cap)),
            ],
        )
        rows.append(
            compare(
                "node peer: round trip p50",
                "us",
                rtt_sdk,
                "p50",
                rtt_wsk,
                "websockets.sync.client, send+recv",
                goal="<= 1.0 x",
                check=_at_most(1.0),
            )
        )
        clients, seconds = config.node_idle_clients, config.node_idle_seconds
        idle_runs = []
        for _ in range(config.idle_pairs):
            try:
                result = idle.measure(
                    "sdk", url, clients, seconds, cap, heartbeat=1.0, server_pid=server.pid
                )
            except Capped as exc:
                _log(f"  capped: {exc}")
                idle_runs.append({})
                continue
            idle_runs.append(
                {
                    "rss": result.rss_per_client_kb,
                    "cpu": result.cpu_percent,
                    "server_cpu": result.server_cpu_percent,
                }
            )
        what = f"node peer: {clients} idle clients, 1 s heartbeat"
        rows += [
            compare(
                f"{what}: RSS per client",
                "KiB",
                idle_runs,
                "rss",
                goal="<= 25 KiB",
                check=lambda row: row.sdk <= 25.0,
                note="(RSS after - before) / clients, in a fresh process",
            ),
            compare(
                f"{what}: CPU",
                "%",
                idle_runs,
                "cpu",
                idle_runs,
                "the Node peer's own CPU",
                base_key="server_cpu",
                goal="<= 1.0 x",
                check=_at_most(1.0),
                note="percent of one core over the idle window",
            ),
        ]
    return rows


def _cost_rows(
    what: str, unit: str, found: list[costs.Cost], goals: dict[str, tuple[str, float]]
) -> list[Row]:
    rows = []
    by = {(c.side, c.kind): c for c in found}
    for kind in sorted({c.kind for c in found}, key=costs.KINDS.index):
        sdk, wsk = by[("sdk", kind)], by[("websockets", kind)]
        goal, bound = goals.get(kind, ("", math.nan))
        row = Row(
            f"{what} per {kind} message",
            unit,
            sdk.per_message,
            baseline=wsk.per_message,
            baseline_name="websockets.sync.client",
            goal=goal,
            sdk_values=[sdk.per_message],
            baseline_values=[wsk.per_message],
            note="; ".join(filter(None, [sdk.why, wsk.why])),
        )
        if not math.isnan(row.ratio) and goal:
            row.met = row.sdk <= bound and row.ratio <= 1.0
        rows.append(row)
    return rows


def _counted_server() -> ServerProcess:
    return ServerProcess("node" if node_peer() is None else "reference")


def costs_rows(config: Config) -> list[Row]:
    """System calls per message (strace; /proc/self/io) and import time."""
    rows: list[Row] = []
    with _counted_server() as server:
        where = f"against the {server.kind} server; (count(2N) - count(N)) / N"
        n = config.syscall_n
        for row in _cost_rows(
            "system calls (strace -f -c)",
            "calls",
            costs.syscalls(server.url, n, runs=1 if config.pairs < 3 else 3),
            {"text": ("<= websockets", math.inf), "audio": ("<= websockets", math.inf)},
        ):
            row.note = "; ".join(filter(None, [where, row.note]))
            rows.append(row)
    ours = costs.import_ms("avatar_im", config.import_runs)
    theirs = costs.import_ms("websockets.sync.client", config.import_runs)
    loop = costs.import_ms("websocket", config.import_runs)
    rows.append(
        Row(
            "import avatar_im",
            "ms",
            ours,
            baseline=theirs,
            baseline_name="import websockets.sync.client",
            goal="<= 50 ms",
            met=None if math.isnan(ours) else ours <= 50.0,
            note=f"python -X importtime, median of {config.import_runs} fresh processes; "
            f"import websocket: {loop:.0f} ms",
        )
    )
    return rows


def callgrind_rows(config: Config) -> list[Row]:
    """Instructions per message under callgrind, the SDK and websockets in the same run."""
    kinds = ("text",) if config.callgrind_n < 100 else costs.KINDS
    with _counted_server() as server:
        found = costs.instructions(server.url, config.callgrind_n, kinds=kinds)
        kind = server.kind
    rows = _cost_rows(
        "instructions (callgrind)",
        "instr",
        found,
        {
            "text": ("<= 120k and < websockets", 120_000),
            "audio": ("<= 200k and < websockets", 200_000),
        },
    )
    for row in rows:
        row.note = "; ".join(
            filter(None, [f"against the {kind} server, N = {config.callgrind_n}", row.note])
        )
    return rows


def reconnect_rows(server: ServerProcess, config: Config) -> list[Row]:
    """Server restarted: from its return to the first ack (default policy)."""
    policy = ReconnectPolicy()
    try:
        results = figures.reconnect(server, config.reconnect_n, config.cap)
    except Capped as exc:
        _log(f"  capped: {exc}")
        results = []
    seconds = [r.seconds * 1e3 for r in results]
    excess = [(r.seconds - r.first_delay) * 1e3 for r in results]
    overhead = [r.overhead * 1e3 for r in results]
    attempts = [r.attempts for r in results]
    first = [r.first_delay * 1e3 for r in results]
    cap0 = policy.cap(0) * 1e3
    return [
        Row(
            "reconnect: server back -> first ack, p50",
            "ms",
            median(seconds),
            sdk_values=seconds,
            note=(
                f"max {max(seconds, default=math.nan):.0f} ms; policy's first delay drawn in "
                f"[0, {cap0:.0f}] ms, median {median(first):.0f} ms; attempts {attempts}"
            ),
        ),
        Row(
            "reconnect: first ack minus the policy's first delay, max",
            "ms",
            max(excess, default=math.nan),
            goal="<= 100 ms, every restart",
            met=(max(excess) <= 100.0) if excess else None,
            sdk_values=excess,
            note=(
                f"time not spent in the backoff wait (connect, resend, ack): median "
                f"{median(overhead):.1f} ms"
            ),
        ),
    ]


# ------------------------------------------------------------------ the table


def _number(value: float, unit: str) -> str:
    if math.isnan(value):
        return "n/a"
    if unit in ("msg/s",):
        return f"{value:,.0f} {unit}"
    if unit in ("MB/s", "%", "threads"):
        return f"{value:.2f} {unit}"
    if unit in ("instr",):
        return f"{value / 1000:,.1f}k"
    if unit in ("calls",):
        return f"{value:.2f}"
    if unit in ("us", "KiB"):
        return f"{value:,.1f} {unit}" if value < 100 else f"{value:,.0f} {unit}"
    return f"{value:,.2f} {unit}" if value < 10 else f"{value:,.0f} {unit}"


def _ratio(row: Row) -> str:
    ratio = row.ratio
    if math.isnan(ratio):
        return "—"
    text = f"{ratio:.2f}"
    if len(row.pair_ratios) > 1 and "every pair" in row.goal:
        text += f" (min {min(row.pair_ratios):.2f})"
    return text


def table(rows: Sequence[Row]) -> str:
    """The rows as a Markdown table."""
    lines = [
        "| figure | SDK | baseline | ratio | goal | verdict |",
        "| --- | ---: | --- | ---: | --- | --- |",
    ]
    for row in rows:
        baseline = "—"
        if row.baseline_name:
            baseline = f"{_number(row.baseline, row.unit)} {row.baseline_name}"
        verdict = {None: "—" if not row.goal else "n/a", True: "met", False: "NOT met"}[row.met]
        lines.append(
            f"| {row.figure} | {_number(row.sdk, row.unit)} | {baseline} | {_ratio(row)} | "
            f"{row.goal or '—'} | {verdict} |"
        )
    notes = [f"- {row.figure}: {row.note}" for row in rows if row.note]
    return "\n".join(lines + (["", *notes] if notes else []))


def _git_version() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "avatar_im"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + (" + uncommitted changes in avatar_im/" if dirty else "")


def library_digest() -> str:
    """A digest of the library's source files, to notice a change in the middle of a run."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "avatar_im").rglob("*.py")):
        digest.update(path.relative_to(ROOT).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def header(config: Config, mode: str, version: str) -> str:
    """The machine and the run's settings, as Markdown; *version* is the library's, at start."""
    machine = machine_info()
    machine["avatar_im"] = f"{avatar_im.__version__} ({version})"
    lines = [f"- {key}: {value}" for key, value in machine.items()]
    lines.append(
        f"- run: {mode}; {config.pairs} pairs per figure ({config.idle_pairs} for idle "
        f"clients); text {config.text_n} msgs, audio {config.audio_n} chunks, round trips "
        f"{config.rtt_n}, session starts {config.start_n}, idle {config.idle_clients} clients "
        f"x {config.idle_seconds:g} s, {config.reconnect_n} restarts, socketio "
        f"{config.peer_emits} emits / {config.peer_calls} calls; cap {config.cap:g} s per "
        "measurement"
    )
    return "\n".join(lines)


# ------------------------------------------------------------------ entry points


def run(config: Config) -> list[Row]:
    """Run every figure group selected by *config*; return the rows."""
    check_frames()
    started = time.monotonic()
    selected = [g for g in GROUPS if g in config.only or (not config.only and g not in ON_REQUEST)]
    rows: list[Row] = []
    with ServerProcess("reference") as server:
        url = server.url
        # Warm up both sides once (imports, caches, the server's first session).
        figures.sdk_text(url, 100, config.cap)
        figures.handwritten_text(url, 100, config.cap)
        groups: dict[str, Callable[[], list[Row]]] = {
            "text": lambda: text_rows(server, config),
            "text8": lambda: text8_rows(server, config),
            "audio": lambda: audio_rows(server, config),
            "rtt": lambda: rtt_rows(url, config),
            "start": lambda: start_rows(url, config),
            "idle": lambda: idle_rows(url, config),
            "peer": lambda: peer_rows(url, config),
            "node": lambda: node_rows(config),
            "costs": lambda: costs_rows(config),
            "callgrind": lambda: callgrind_rows(config),
            # Last: it restarts the server under everything else.
            "reconnect": lambda: reconnect_rows(server, config),
        }
        for name in selected:
            if time.monotonic() - started > config.max_seconds:
                _log(f"{name}: skipped (the run's time cap passed)")
                rows.append(Row(f"{name} (skipped: run time cap)", "", math.nan))
                continue
            _log(f"{name} ...")
            t0 = time.monotonic()
            rows.extend(groups[name]())
            _log(f"{name}: {time.monotonic() - t0:.1f} s")
    return rows


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, run, print the machine and the table."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny counts (a smoke run)")
    parser.add_argument("--pairs", type=int, help="pairs per figure")
    parser.add_argument("--idle-clients", type=int, help="clients in the idle figure")
    parser.add_argument("--idle-seconds", type=float, help="seconds of idle CPU measurement")
    parser.add_argument("--only", help=f"comma-separated figure groups: {', '.join(GROUPS)}")
    parser.add_argument(
        "--callgrind",
        action="store_true",
        help="also count instructions per message under callgrind (minutes)",
    )
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)

    config = QUICK if args.quick else FULL
    if args.pairs is not None:
        config = replace(config, pairs=args.pairs, idle_pairs=min(config.idle_pairs, args.pairs))
    if args.idle_clients is not None:
        config = replace(config, idle_clients=args.idle_clients)
    if args.idle_seconds is not None:
        config = replace(config, idle_seconds=args.idle_seconds)
    if args.only:
        only = tuple(name.strip() for name in args.only.split(","))
        unknown = sorted(set(only) - set(GROUPS))
        if unknown:
            parser.error(f"unknown figure group(s): {', '.join(unknown)}")
        config = replace(config, only=only)
    if args.callgrind:
        config = replace(
            config,
            only=(config.only or tuple(g for g in GROUPS if g not in ON_REQUEST)) + ("callgrind",),
        )

    mode = "quick" if args.quick else "full"
    t0 = time.monotonic()
    version, digest = _git_version(), library_digest()
    rows = run(config)
    print(header(config, mode, version))
    if library_digest() != digest:
        print("- WARNING: avatar_im/ changed during the run: the numbers mix versions")
    print(f"- took: {time.monotonic() - t0:.0f} s")
    print()
    print(table(rows))
    if args.json is not None:
        payload = {
            "machine": machine_info(),
            "config": asdict(config),
            "rows": [asdict(row) | {"ratio": row.ratio} for row in rows],
        }
        args.json.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
