"""Measure how many sessions one host holds: threads, memory, start and ask times.

Starts a redis-server (Debian's) on a free loopback port, a reference server and one
SessionHost in this process, then opens N sessions through RelayClient handles and asks
each one a text.  Run from the repository root::

    python -m examples.relay_capacity 50 100 200
"""

from __future__ import annotations

import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import redis

from avatar_im.host import SessionHost
from avatar_im.relay import RelayClient
from avatar_im.server import ReferenceServer


def _rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(n: int) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    directory = tempfile.mkdtemp()
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            directory,
            "--appendonly",
            "yes",
            "--save",
            "",
        ],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        probe = redis.Redis(port=port)
        while True:
            try:
                probe.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        with ReferenceServer(max_sessions=None, max_connections=None, speaking_base=0.01) as server:
            before_threads, before_rss = threading.active_count(), _rss_mib()
            with SessionHost(url, url=server.url, max_sessions=n) as host:
                handles = [RelayClient(url, session_id=f"cap-{i}") for i in range(n)]
                began = time.monotonic()
                for handle in handles:
                    handle.start_session()
                for handle in handles:
                    handle.wait_session_ready(60)
                started = time.monotonic() - began
                began = time.monotonic()
                for handle in handles:
                    handle.ask("hello", timeout=30)
                asked = time.monotonic() - began
                threads = threading.active_count() - before_threads
                rss = _rss_mib() - before_rss
                print(
                    f"{n:4d} sessions: started in {started:.2f}s, {n} asks one by one in "
                    f"{asked:.2f}s ({asked / n * 1000:.1f} ms each), {len(host.sessions)} held, "
                    f"+{threads} threads, +{rss:.0f} MiB (host and reference server together)"
                )
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    for arg in sys.argv[1:] or ["50", "100"]:
        measure(int(arg))
