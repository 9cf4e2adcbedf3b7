"""The Flask example under gunicorn: several pre-forked workers, each request its own reply.

Without a relay each worker holds its own avatars (one reference server behind them all);
with ``AVATAR_IM_REDIS`` the workers reach the visitors' sessions through Redis and two
session hosts, so a visitor keeps one avatar whichever worker serves it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import http.cookiejar
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from conftest import TIMEOUT
from redis_peer import RedisProcess, avatar_server, hosts, needs_redis, redis_server

from avatar_im.server import ReferenceServer

pytest.importorskip("gunicorn", reason="gunicorn is not installed (pip install 'gunicorn>=21')")
pytest.importorskip("flask", reason="flask is not installed (pip install -e '.[examples]')")

__all__ = ["avatar_server", "redis_server"]  # fixtures, used by name

ROOT = Path(__file__).resolve().parents[1]
#: How many requests each run sends, and from how many threads at once (as many as the
#: 4 workers x 4 threads serve at once).
REQUESTS = 200
#: Browser sessions (cookie jars), each sending its share of the requests in turn.
VISITORS = 20
#: Bounds one request: above the example's REPLY_TIMEOUT (10 s), so a lost reply shows as 504.
REQUEST_TIMEOUT = 15.0
WORKERS = 4

#: A gunicorn config file whose hooks write one byte to the test's pipe per worker that is
#: up, and one line per request (the test's visitor header, the worker's pid) to a file.
READY_HOOK = """\
import os


def post_worker_init(worker):
    os.write(int(os.environ["AVATAR_IM_TEST_READY_FD"]), b"+")


def post_request(worker, req, environ, resp):
    line = f"{environ.get('HTTP_X_TEST_VISITOR', '-')} {os.getpid()}\\n".encode()
    fd = os.open(os.environ["AVATAR_IM_TEST_SERVED"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
"""


def wait_workers_up(ready_fd: int, count: int, timeout: float) -> None:
    """Read one byte per worker from *ready_fd*; fail if gunicorn ends or *timeout* passes."""
    deadline = time.monotonic() + timeout
    seen = b""
    while len(seen) < count:
        remaining = deadline - time.monotonic()
        readable, _, _ = select.select([ready_fd], [], [], max(remaining, 0))
        assert readable, f"{len(seen)} of {count} gunicorn workers up within {timeout} s"
        chunk = os.read(ready_fd, count)
        assert chunk, "gunicorn ended before its workers were up"
        seen += chunk


def post_say(
    port: int, text: str, opener: urllib.request.OpenerDirector, visitor: int = -1
) -> tuple[int, Any]:
    """POST {"text": text} to /api/say with *opener*'s cookies; return status and JSON body."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/say",
        data=json.dumps({"text": text}).encode(),
        headers={"Content-Type": "application/json", "X-Test-Visitor": str(visitor)},
        method="POST",
    )
    try:
        with opener.open(request, timeout=REQUEST_TIMEOUT) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode(errors="replace")


def stop_gunicorn(process: subprocess.Popen[bytes]) -> None:
    """End gunicorn gracefully (SIGTERM), then for good (SIGKILL to its group)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(TIMEOUT)
            return
        except subprocess.TimeoutExpired:
            pass
    # The master did not end in time, or died before its workers: end its whole group (it
    # was started in a session of its own, so the group id is its pid).
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    process.wait(TIMEOUT)


def gunicorn_command(config: Path, listener: socket.socket, preload: bool) -> list[str]:
    """The command line that serves the Flask example on *listener*."""
    return [
        sys.executable,
        "-m",
        "gunicorn",
        f"--config={config}",
        f"--workers={WORKERS}",
        # Threads serve requests at once within each worker, so that ids are made in several
        # workers in the same millisecond, as in production; no worker takes more connections
        # than it has threads, so the load spreads over every worker.
        "--worker-class=gthread",
        "--threads=4",
        "--worker-connections=4",
        "--keep-alive=0",
        # gunicorn serves the socket the test already listens on: no port race, and requests
        # made before the workers are up wait in its backlog.
        f"--bind=fd://{listener.fileno()}",
        "--graceful-timeout=2",
        *(["--preload"] if preload else []),
        "examples.flask_app:create_app()",
    ]


class Served:
    """What a run of the visitors got: each request's (status, body), and who served it."""

    def __init__(self, results: list[tuple[int, Any]], served: list[tuple[int, int]], log: str):
        self.results = results
        self.served = served  #: (visitor, worker pid), one per request
        self.log = log

    def failures(self, texts: list[str]) -> list[tuple[str, int, Any]]:
        """The requests that did not get the reply to their own text."""
        return [
            (text, status, body)
            for text, (status, body) in zip(texts, self.results, strict=True)
            if status != 200 or body.get("reply") != f"You said: {text}"
        ]


def serve_and_visit(
    tmp_path: Path, texts: list[str], env_extra: dict[str, str], preload: bool
) -> Served:
    """Serve the Flask example with gunicorn; send *texts* from VISITORS browsers in turn.

    Visitor ``v`` sends ``texts[v::VISITORS]`` one after another with its own cookie jar,
    all visitors at once.  Returns the results in the order of *texts*.
    """
    config = tmp_path / "gunicorn_conf.py"
    config.write_text(READY_HOOK)
    log_path = tmp_path / "gunicorn.log"
    served_path = tmp_path / "served.txt"
    with contextlib.ExitStack() as stack:
        listener = stack.enter_context(socket.create_server(("127.0.0.1", 0)))
        log = stack.enter_context(log_path.open("wb"))
        ready_read, ready_write = os.pipe()
        stack.callback(os.close, ready_read)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AVATAR_IM_")}
        env.update(env_extra)
        env["FLASK_SECRET_KEY"] = "gunicorn-test-key"  # one key, so every worker reads the cookie
        env["AVATAR_IM_TEST_READY_FD"] = str(ready_write)
        env["AVATAR_IM_TEST_SERVED"] = str(served_path)
        try:
            process = subprocess.Popen(
                gunicorn_command(config, listener, preload),
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=(listener.fileno(), ready_write),
                start_new_session=True,  # its own process group, so a kill reaches the workers
            )
        finally:
            os.close(ready_write)  # gunicorn's copies are the only writers left
        with contextlib.ExitStack() as running:
            running.callback(stop_gunicorn, process)
            wait_workers_up(ready_read, WORKERS, TIMEOUT * 2)
            port = listener.getsockname()[1]

            def visit(visitor: int) -> list[tuple[int, Any]]:
                # One browser: its cookie jar, its requests one after another.
                jar = http.cookiejar.CookieJar()
                opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
                return [post_say(port, text, opener, visitor) for text in texts[visitor::VISITORS]]

            with concurrent.futures.ThreadPoolExecutor(VISITORS) as pool:
                by_visitor = list(pool.map(visit, range(VISITORS)))
            results = [by_visitor[n % VISITORS][n // VISITORS] for n in range(len(texts))]
    lines = served_path.read_text().split() if served_path.exists() else []
    served = [(int(v), int(pid)) for v, pid in zip(lines[::2], lines[1::2], strict=True)]
    return Served(results, served, log_path.read_text(errors="replace"))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("preload", [True, False], ids=["preload", "no-preload"])
def test_every_request_gets_the_reply_to_its_own_text(preload: bool, tmp_path: Path) -> None:
    """Under 4 gunicorn workers, with or without --preload, each request gets its own reply."""
    texts = [f"hello {n}" for n in range(REQUESTS)]
    with ReferenceServer(host="127.0.0.1", port=0) as server:
        run = serve_and_visit(tmp_path, texts, {"AVATAR_IM_URL": server.url}, preload)
        results = run.results
        failures = run.failures(texts)
        assert failures == [], f"{len(failures)} of {REQUESTS} failed; gunicorn said:\n{run.log}"
        # Every reply came from the session its own text was sent on (the cloud's replies
        # name no message they answer: the text "You said: <text>" checked above is the
        # proof), and every text got there once.
        assert all(body["content"]["type"] == "replyContent" for _, body in results)
        texts_received: list[str] = []
        for session_id in server.session_ids():
            snapshot = server.session(session_id)
            assert snapshot is not None
            texts_received += snapshot.texts
        assert sorted(texts_received) == sorted(texts)
        for text, (_, body) in zip(texts, results, strict=True):
            snapshot = server.session(body["content"]["sessionId"])
            assert snapshot is not None
            assert text in snapshot.texts, (text, body)
        # A visitor has one avatar in each worker that served it, never a shared session.
        assert server.stats.connections_total <= VISITORS * WORKERS
        for session_id in server.session_ids():
            visitors = {int(t.split()[1]) % VISITORS for t in server.session(session_id).texts}
            assert len(visitors) <= 1, f"session {session_id} served several visitors"


@pytest.mark.timeout(90)
@needs_redis
def test_relay_each_visitor_keeps_one_avatar_across_workers(
    tmp_path: Path, redis_server: RedisProcess, avatar_server: ReferenceServer
) -> None:
    """4 workers with --preload on the relay: 200 requests, 20 browsers, one avatar each.

    A visitor's requests land on several workers; each gets the reply to its own text,
    from the visitor's one session (held by one of two hosts), which saw the visitor's
    texts exactly once and in order.
    """
    texts = [f"hello {n}" for n in range(REQUESTS)]
    with hosts(redis_server.url, avatar_server, 2, max_sessions=VISITORS) as made:
        run = serve_and_visit(tmp_path, texts, {"AVATAR_IM_REDIS": redis_server.url}, True)
        held = [len(host.sessions) for host in made]
    failures = run.failures(texts)
    assert failures == [], f"{len(failures)} of {REQUESTS} failed; gunicorn said:\n{run.log}"
    workers_of: dict[int, set[int]] = {}
    for visitor, pid in run.served:
        workers_of.setdefault(visitor, set()).add(pid)
    assert sorted(workers_of) == list(range(VISITORS)), run.served
    assert len({pid for pids in workers_of.values() for pid in pids}) == WORKERS
    shared = [v for v, pids in workers_of.items() if len(pids) > 1]
    assert shared, "no visitor was served by two workers: the test proves nothing"
    # One session per visitor, whichever workers served it: its texts, once, in order.
    sessions = {body["content"]["sessionId"] for _, body in run.results}
    assert len(sessions) == VISITORS
    for visitor in range(VISITORS):
        mine = [body["content"]["sessionId"] for _, body in run.results[visitor::VISITORS]]
        assert len(set(mine)) == 1, f"visitor {visitor} talked to {set(mine)}"
        snapshot = avatar_server.session(mine[0])
        assert snapshot is not None
        assert list(snapshot.texts) == texts[visitor::VISITORS]
    assert avatar_server.stats.connections_total >= VISITORS
    print(
        f"{len(shared)} of {VISITORS} visitors served by several workers; sessions per host {held}"
    )
