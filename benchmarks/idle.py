"""Many idle clients in one process: threads, RSS and CPU per client.

Runs in a child process of its own for each measurement, so that memory
freed by an earlier measurement cannot hide what this one costs::

    python -m benchmarks.idle --kind sdk --clients 200 --seconds 30 --url ws://127.0.0.1:PORT/ws

prints one JSON object: threads and RSS before and after the clients
connected, and the CPU the process used while they sat idle.
:func:`measure` starts that child and returns the parsed result.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from .common import (
    APP_ID,
    TENANT_ID,
    TOKEN,
    Capped,
    Deadline,
    client_url,
    cpu_seconds,
    new_session_id,
    rss_kb,
)
from .servers import ROOT

__all__ = ["Idle", "measure"]


@dataclass(frozen=True)
class Idle:
    """What *clients* idle connections cost one process."""

    kind: str
    clients: int
    seconds: float
    threads_before: int
    threads_after: int
    rss_before_kb: int
    rss_after_kb: int
    cpu_seconds: float
    #: CPU seconds the server process used over the same idle window (0 without its pid).
    server_cpu_seconds: float = 0.0

    @property
    def threads_per_client(self) -> float:
        """Extra threads divided by the number of clients."""
        return (self.threads_after - self.threads_before) / self.clients

    @property
    def rss_per_client_kb(self) -> float:
        """Extra resident memory divided by the number of clients, in KiB."""
        return (self.rss_after_kb - self.rss_before_kb) / self.clients

    @property
    def cpu_percent(self) -> float:
        """CPU used while idle, in percent of one core."""
        return self.cpu_seconds / self.seconds * 100

    @property
    def server_cpu_percent(self) -> float:
        """The server's CPU over the idle window, in percent of one core."""
        return self.server_cpu_seconds / self.seconds * 100


def _process_cpu(pid: int) -> float:
    """User + system CPU seconds of process *pid* (0.0 for pid 0)."""
    if not pid:
        return 0.0
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(
    kind: str,
    url: str,
    clients: int,
    seconds: float,
    cap: float,
    *,
    heartbeat: float | None = None,
    server_pid: int = 0,
) -> Idle:
    """Run one measurement of *kind* (``sdk`` or ``wsapp``) in a child process.

    *heartbeat* sets the SDK clients' heartbeat interval (their default when
    ``None``); with *server_pid* the child also measures that process's CPU
    over the same idle window.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    command = [
        sys.executable,
        "-m",
        "benchmarks.idle",
        f"--kind={kind}",
        f"--url={url}",
        f"--clients={clients}",
        f"--seconds={seconds}",
        f"--cap={cap}",
        f"--server-pid={server_pid}",
    ]
    if heartbeat is not None:
        command.append(f"--heartbeat={heartbeat}")
    try:
        done = subprocess.run(
            command,
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=cap + seconds + 15,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise Capped(f"idle {kind}: the child did not finish") from exc
    if done.returncode != 0:
        raise Capped(f"idle {kind}: the child failed:\n{done.stderr[-2000:]}")
    return Idle(**json.loads(done.stdout.strip().splitlines()[-1]))


# ------------------------------------------------------------------ the child


def _sdk_clients(
    url: str, clients: int, deadline: Deadline, heartbeat: float | None = None
) -> tuple[list[Any], Any]:
    from avatar_im import AvatarIM

    options: dict[str, Any] = {} if heartbeat is None else {"heartbeat_interval": heartbeat}
    made = [
        AvatarIM(
            token=TOKEN,
            app_id=APP_ID,
            tenant_id=TENANT_ID,
            session_id=new_session_id("idle"),
            url=url,
            **options,
        )
        for _ in range(clients)
    ]
    for client in made:
        client.wait_connected(max(0.01, deadline.remaining()))

    def close() -> None:
        for client in made:
            client.close()

    return made, close


def _wsapp_clients(
    url: str, clients: int, deadline: Deadline, heartbeat: float | None = None
) -> tuple[list[Any], Any]:
    import websocket

    opened = threading.Semaphore(0)
    apps = [
        websocket.WebSocketApp(client_url(url), on_open=lambda app: opened.release())
        for _ in range(clients)
    ]
    # One run_forever thread per app (the WebSocketApp way): reads frames; ends on close().
    runners = [
        threading.Thread(
            target=app.run_forever,
            kwargs={"suppress_origin": True},
            name="idle-wsapp",
            daemon=True,
        )
        for app in apps
    ]
    for runner in runners:
        runner.start()
    for _ in apps:
        if not opened.acquire(timeout=max(0.01, deadline.remaining())):
            raise Capped("idle wsapp: not all connected")

    def close() -> None:
        # app.close() alone can leave run_forever blocked in select() on a closed socket:
        # shut the sockets down first, which wakes every reader at once.
        for app in apps:
            app.keep_running = False
            if app.sock is not None and app.sock.sock is not None:
                with contextlib.suppress(OSError):
                    app.sock.sock.shutdown(socket.SHUT_RDWR)
        for app in apps:
            app.close()
        until = Deadline(5.0)
        for runner in runners:
            runner.join(until.remaining())

    return apps, close


def _child(
    kind: str,
    url: str,
    clients: int,
    seconds: float,
    cap: float,
    heartbeat: float | None = None,
    server_pid: int = 0,
) -> Idle:
    # Import and warm up everything first, so that only the clients count.
    import websocket  # noqa: F401

    import avatar_im  # noqa: F401

    deadline = Deadline(cap)
    factory = _sdk_clients if kind == "sdk" else _wsapp_clients
    warm, close_warm = factory(url, 1, deadline, heartbeat)
    close_warm()
    del warm
    gc.collect()
    threads_before = threading.active_count()
    rss_before = rss_kb()
    made, close = factory(url, clients, deadline, heartbeat)
    try:
        gc.collect()
        time.sleep(min(0.5, seconds))  # let the handshakes' leftovers settle
        threads_after = threading.active_count()
        rss_after = rss_kb()
        cpu0, server0 = cpu_seconds(), _process_cpu(server_pid)
        t0 = time.perf_counter()
        time.sleep(seconds)  # idle: nothing is sent; the heartbeats run as configured
        cpu = cpu_seconds() - cpu0
        server_cpu = _process_cpu(server_pid) - server0
        elapsed = time.perf_counter() - t0
    finally:
        close()
    return Idle(
        kind=kind,
        clients=len(made),
        seconds=elapsed,
        threads_before=threads_before,
        threads_after=threads_after,
        rss_before_kb=rss_before,
        rss_after_kb=rss_after,
        cpu_seconds=cpu,
        server_cpu_seconds=server_cpu,
    )


def main(argv: list[str] | None = None) -> int:
    """The child's entry point: measure, print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kind", choices=["sdk", "wsapp"], required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--cap", type=float, default=60.0)
    parser.add_argument("--heartbeat", type=float, help="SDK heartbeat interval, seconds")
    parser.add_argument("--server-pid", type=int, default=0, help="also measure its CPU")
    args = parser.parse_args(argv)
    result = _child(
        args.kind, args.url, args.clients, args.seconds, args.cap, args.heartbeat, args.server_pid
    )
    print(json.dumps(asdict(result)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
