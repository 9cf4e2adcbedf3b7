"""The servers the benchmarks talk to, each in its own process, on loopback.

A server runs in a child process so that it does not share the GIL, the
thread count, the RSS or the CPU counters with the clients being measured.
The child prints ``READY <port>`` once listening and then obeys one command
per line on its standard input: ``restart`` (reference server only: drop every
connection and listen again; it answers ``RESTARTED <monotonic time>`` taken
when ``restart()`` returned, comparable across processes on Linux) and
``quit``.  It also exits when its standard input closes, so it never outlives
the harness.

Run as ``python -m benchmarks.servers reference`` or ``... socketio``.  The third kind,
``node``, is not Python: Node's ``ws`` running ``benchmarks/node/peer.js`` (the
protocol's minimum, fast enough that it never limits a client), installed by
:func:`node_peer` with ``npm install --prefix benchmarks/node`` on first use.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType

__all__ = ["NODE_DIR", "ServerProcess", "node_peer"]

ROOT = Path(__file__).absolute().parent.parent
#: The Node peer: its script, its package.json and (once installed) its node_modules.
NODE_DIR = ROOT / "benchmarks" / "node"

_node_state: dict[str, str | None] = {}


def node_peer(install: bool = True) -> str | None:
    """``None`` when the Node peer can run (installing ``ws`` with npm if needed), else why not.

    The answer is remembered for the process: npm runs at most once.
    """
    if "why" in _node_state:
        return _node_state["why"]
    why: str | None = None
    if shutil.which("node") is None:
        why = "node is not installed (the Node peer's figures are skipped)"
    elif not (NODE_DIR / "node_modules" / "ws" / "package.json").exists():
        npm = shutil.which("npm")
        if npm is None or not install:
            why = "npm is not installed: run `npm install --prefix benchmarks/node` (skipped)"
        else:
            try:
                done = subprocess.run(
                    [npm, "install", "--prefix", str(NODE_DIR), "--no-audit", "--no-fund"],
                    capture_output=True,
                    text=True,
                    timeout=300,
                    check=False,
                )
            except (OSError, subprocess.SubprocessError) as exc:
                why = f"npm install --prefix benchmarks/node failed: {exc} (skipped)"
            else:
                if done.returncode != 0:
                    why = (
                        "npm install --prefix benchmarks/node failed (skipped): "
                        + done.stderr.strip()[-300:]
                    )
    _node_state["why"] = why
    return why


class ServerProcess:
    """A benchmark server in a child process; use it as a context manager."""

    def __init__(self, kind: str, *, timeout: float = 20.0) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        self.kind = kind
        if kind == "node":
            why = node_peer()
            if why is not None:
                raise RuntimeError(why)
            command = [shutil.which("node") or "node", str(NODE_DIR / "peer.js")]
        else:
            command = [sys.executable, "-m", "benchmarks.servers", kind]
        self._proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=env,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        # Reads the child's standard output line by line into _lines; blocks in readline;
        # exits at end of file (the child exited), after putting None.
        self._stdout_reader = threading.Thread(
            target=self._read_stdout, name=f"bench-{kind}-stdout", daemon=True
        )
        self._stdout_reader.start()
        try:
            ready = self._expect("READY", timeout)
        except BaseException:
            self.close()
            raise
        self.port = int(ready.split()[1])
        self.url = f"ws://127.0.0.1:{self.port}/ws"
        self.http_url = f"http://127.0.0.1:{self.port}"

    def _read_stdout(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self._lines.put(line.strip())
        self._lines.put(None)

    def _expect(self, prefix: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"{self.kind} server: no {prefix} within {timeout}s") from None
            if line is None:
                raise RuntimeError(f"{self.kind} server exited (code {self._proc.poll()})")
            if line.startswith(prefix):
                return line

    def _command(self, command: str) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.write(command + "\n")
        self._proc.stdin.flush()

    @property
    def pid(self) -> int:
        """The server process's id."""
        return self._proc.pid

    def cpu_seconds(self) -> float:
        """User + system CPU seconds the server process has used (from /proc/<pid>/stat)."""
        with open(f"/proc/{self._proc.pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        # Fields 14 and 15 of stat (utime, stime), counted after the ")" that ends field 2.
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def restart(self, timeout: float = 10.0) -> float:
        """Restart the reference server; return the ``time.monotonic()`` at which it was back."""
        self._command("restart")
        return float(self._expect("RESTARTED", timeout).split()[1])

    def close(self) -> None:
        """Stop the child: ``quit``, then terminate, then kill (bounded)."""
        with contextlib.suppress(OSError, ValueError):
            self._command("quit")
        with contextlib.suppress(OSError, ValueError):
            assert self._proc.stdin is not None
            self._proc.stdin.close()
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            self._proc.terminate()
            try:
                self._proc.wait(2)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(2)
        self._stdout_reader.join(2)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# ------------------------------------------------------------------ the children


def _serve_reference() -> None:
    from avatar_im.server import ReferenceServer

    # idle_timeout=None: the idle baselines send no heartbeat; the SDK's would keep them alive.
    # profile="echo": one reply per text or chunk, sent by the handler thread, as the figures
    # were measured; the default cloud profile would also queue a broadcast per text and
    # time every answer on the server.
    server = ReferenceServer(host="127.0.0.1", port=0, idle_timeout=None, profile="echo")
    server.start()
    try:
        print(f"READY {server.port}", flush=True)
        for line in sys.stdin:
            command = line.strip()
            if command == "restart":
                server.restart()
                print(f"RESTARTED {time.monotonic()!r}", flush=True)
            elif command == "quit":
                break
    finally:
        server.stop()


def _serve_socketio() -> None:
    import socketio  # type: ignore[import-untyped]
    from werkzeug.serving import make_server

    # Werkzeug reads on after a WebSocket ends and logs the frames as bad requests: noise.
    logging.getLogger("werkzeug").setLevel(logging.CRITICAL)
    sio = socketio.Server(async_mode="threading")
    lock = threading.Lock()
    received = [0]

    @sio.on("msg")  # type: ignore[untyped-decorator]
    def on_msg(sid: str, data: object) -> None:
        with lock:
            received[0] += 1

    @sio.on("echo")  # type: ignore[untyped-decorator]
    def on_echo(sid: str, data: object) -> object:
        return data

    @sio.on("count")  # type: ignore[untyped-decorator]
    def on_count(sid: str, data: object = None) -> int:
        return received[0]

    httpd = make_server("127.0.0.1", 0, socketio.WSGIApp(sio), threaded=True)
    # Serves HTTP and WebSocket requests, one thread per connection; ends on shutdown().
    serving = threading.Thread(target=httpd.serve_forever, name="socketio-http", daemon=True)
    serving.start()
    try:
        print(f"READY {httpd.server_port}", flush=True)
        for line in sys.stdin:
            if line.strip() == "quit":
                break
    finally:
        httpd.shutdown()
        serving.join(2)


def main(argv: list[str]) -> int:
    """Run the server named by ``argv[0]`` until ``quit`` or the end of standard input."""
    logging.basicConfig(level=logging.ERROR)
    kind = argv[0] if argv else "reference"
    if kind == "reference":
        _serve_reference()
    elif kind == "socketio":
        _serve_socketio()
    else:
        print(f"unknown server kind {kind!r}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
