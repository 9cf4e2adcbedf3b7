"""The Redis relay: session hosts and web-worker handles, on a real redis-server on loopback.

Each test starts its own ``redis-server`` (Debian's package) on a free loopback port with a
temporary directory and persistence on (``appendonly yes``, ``appendfsync always``), hosts
(threads of this process, or processes for ``kill -9``), worker processes (multiprocessing,
forked from a process that made its handles first, as ``gunicorn --preload`` does) and the
reference server in this process, which records every text it processed per session.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from typing import Any

import pytest
from conftest import TIMEOUT, wait_until
from redis_peer import (
    RedisProcess,
    avatar_server,
    host_process,
    hosts,
    needs_redis,
    redis,
    redis_server,
)

from avatar_im.server import ReferenceServer

pytestmark = needs_redis

if redis is not None:
    from avatar_im.relay import RelayClient, RelayUnavailableError

__all__ = ["avatar_server", "redis_server"]  # fixtures, used by name

#: Texts per session in the many-workers test (10 sessions): 500 gives the issue's 5,000 texts
#: (about 9 s on a loaded 2-core machine); AVATAR_IM_RELAY_TEXTS=50 for a quick run.
TEXTS_PER_SESSION = int(os.environ.get("AVATAR_IM_RELAY_TEXTS", "500"))

#: The bound this file states for a takeover after a host's kill -9: the lease (LEASE s),
#: a claim round (LEASE / 2), the reconnect and the replay.
LEASE = 1.5
TAKEOVER_BOUND = LEASE * 2 + 2.0


# ------------------------------------------------------------------ workers


def _worker(
    redis_url: str,
    sessions: list[str],
    texts: int,
    ask_every: int,
    out: Any,
    retry: bool,
    pace: float,
) -> None:
    """One web worker: start its sessions, send texts (some asked), wait for every ack."""
    result: dict[str, Any] = {"sent": {}, "asked": 0, "wrong": [], "errors": [], "retries": 0}
    _retries[0] = 0
    try:
        handles = {sid: RelayClient(redis_url, session_id=sid, redis_retry=1.0) for sid in sessions}
        for handle in handles.values():
            _again(lambda h=handle: h.start_session(), retry)
        for handle in handles.values():
            handle.wait_session_ready(TIMEOUT * 2)
        ids: dict[str, list[str]] = {sid: [] for sid in sessions}
        for k in range(texts):
            for sid, handle in handles.items():
                text = f"{sid} text {k}"
                result["sent"].setdefault(sid, []).append(text)
                if ask_every and k % ask_every == ask_every - 1:
                    answer = _again(lambda h=handle, t=text: h.ask(t, timeout=TIMEOUT * 2), retry)
                    result["asked"] += 1
                    if answer.text != f"You said: {text}":
                        result["wrong"].append((text, answer.text))
                    ids[sid].append(answer.message_id)
                else:
                    ids[sid].append(_send(handle, text, retry))
            if pace:
                time.sleep(pace)
        for sid, handle in handles.items():
            for message_id in ids[sid]:
                _again(lambda h=handle, m=message_id: h.wait_ack(m, TIMEOUT * 4), retry)
    except BaseException as exc:  # reported to the test, which fails on it
        result["errors"].append(f"{type(exc).__name__}: {exc}")
    result["retries"] = _retries[0]
    out.put((sessions, result))


_retries = [0]  # in a worker: how many calls raised RelayUnavailableError and were retried


def _send(handle: Any, text: str, retry: bool) -> str:
    """send_text; while Redis is down, send again with the same message id (exactly once)."""
    message_id = None
    deadline = time.monotonic() + TIMEOUT * 6
    while True:
        try:
            return str(handle.send_text(text, message_id=message_id))
        except RelayUnavailableError as exc:
            if not retry or time.monotonic() > deadline:
                raise
            _retries[0] += 1
            message_id = exc.message_id
            time.sleep(0.1)


def _again(call: Any, retry: bool) -> Any:
    deadline = time.monotonic() + TIMEOUT * 6
    while True:
        try:
            return call()
        except RelayUnavailableError:
            if not retry or time.monotonic() > deadline:
                raise
            _retries[0] += 1
            time.sleep(0.1)


def run_workers(
    redis_url: str,
    session_ids: list[str],
    *,
    workers: int,
    texts: int,
    ask_every: int,
    retry: bool = False,
    pace: float = 0.0,
    during: Any = None,
) -> dict[str, Any]:
    """Run *workers* forked processes over *session_ids*; return what each sent, by session."""
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = []
    for w in range(workers):
        mine = session_ids[w::workers]
        proc = ctx.Process(
            target=_worker,
            args=(redis_url, mine, texts, ask_every, out, retry, pace),
            daemon=True,
        )
        proc.start()
        procs.append(proc)
    if during is not None:
        during()
    results: dict[str, Any] = {}
    errors: list[str] = []
    asked = retries = 0
    for _ in procs:
        sessions, result = out.get(timeout=TIMEOUT * 12)
        errors += result["errors"]
        assert not result["wrong"], f"answers to other texts: {result['wrong'][:3]}"
        asked += result["asked"]
        retries += result["retries"]
        for sid in sessions:
            results[sid] = result["sent"].get(sid, [])
    for proc in procs:
        proc.join(TIMEOUT)
    assert not errors, errors
    return {"sent": results, "asked": asked, "retries": retries}


def assert_exactly_once_in_order(server: ReferenceServer, sent: dict[str, list[str]]) -> None:
    for sid, texts in sent.items():
        snapshot = server.session(sid)
        assert snapshot is not None, f"the service never saw {sid}"
        assert list(snapshot.texts) == texts, (
            f"{sid}: {len(snapshot.texts)} processed for {len(texts)} sent; "
            f"first difference at {_first_difference(list(snapshot.texts), texts)}"
        )


def _first_difference(got: list[str], want: list[str]) -> int:
    return next(
        (i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b),
        min(len(got), len(want)),
    )


# -------------------------------------------------------------------- tests


def test_one_session_round_trip(redis_server: RedisProcess, avatar_server: ReferenceServer) -> None:
    with (
        hosts(redis_server.url, avatar_server, 1),
        RelayClient(redis_server.url, session_id="solo") as avatar,
    ):
        avatar.start_session()
        assert avatar.wait_session_ready(TIMEOUT).family == "start_result"
        assert avatar.hosted()
        answer = avatar.ask("hello", timeout=TIMEOUT, wait_spoken=True)
        assert answer.text == "You said: hello"
        assert answer.broadcast_end is not None
        message_id = avatar.send_text("plain")
        avatar.wait_ack(message_id, TIMEOUT)
        reply = avatar.receive(TIMEOUT, family="reply")
        assert reply.text == "You said: plain"
        avatar.stop_session()
        assert wait_until(lambda: avatar_server.session("solo").stopped, TIMEOUT)
    assert list(avatar_server.session("solo").texts) == ["hello", "plain"]


def test_many_workers_exactly_once_in_order(
    redis_server: RedisProcess, avatar_server: ReferenceServer
) -> None:
    """2 hosts, 4 worker processes, 10 sessions, 5,000 texts (every 5th asked)."""
    session_ids = [f"web-{i}" for i in range(10)]
    n = TEXTS_PER_SESSION
    with hosts(redis_server.url, avatar_server, 2, max_sessions=6) as made:
        began = time.monotonic()
        result = run_workers(redis_server.url, session_ids, workers=4, texts=n, ask_every=5)
        elapsed = time.monotonic() - began
        held = [len(host.sessions) for host in made]
    assert sum(len(texts) for texts in result["sent"].values()) == 10 * n
    assert result["asked"] == 10 * (n // 5)
    assert all(held), f"one host held every session: {held}"
    assert_exactly_once_in_order(avatar_server, result["sent"])
    print(f"{10 * n} texts over 10 sessions in {elapsed:.2f}s; sessions per host {held}")


def test_kill_9_of_a_host_mid_stream(
    redis_server: RedisProcess, avatar_server: ReferenceServer
) -> None:
    """Two host processes; one is killed mid-stream, twice (restarted between): nothing lost."""
    session_ids = [f"kill-{i}" for i in range(6)]
    procs = {
        name: host_process(redis_server.url, avatar_server.url, name, LEASE)
        for name in ("ka", "kb")
    }
    r = redis.Redis.from_url(redis_server.url, decode_responses=True)
    takeovers: list[float] = []
    try:
        assert wait_until(lambda: r.zcard("avatar-im:hosts") == 2, TIMEOUT * 2)

        def kill_twice() -> None:
            for victim in ("ka", "kb"):
                # Wait until the victim holds a session and texts flow, then kill it.
                assert wait_until(lambda v=victim: _held_by(r, session_ids, v), TIMEOUT * 2)
                time.sleep(0.3)
                mine = _held_by(r, session_ids, victim)
                procs[victim].send_signal(signal.SIGKILL)
                procs[victim].wait(TIMEOUT)
                killed = time.monotonic()
                assert wait_until(
                    lambda v=victim, m=mine: all(_owner(r, s) not in (None, v) for s in m),
                    TAKEOVER_BOUND + TIMEOUT,
                ), f"{mine} not taken over"
                takeovers.append(time.monotonic() - killed)
                # A fresh host with the same name: the next kill has two hosts to choose from.
                procs[victim] = host_process(redis_server.url, avatar_server.url, victim, LEASE)

        result = run_workers(
            redis_server.url, session_ids, workers=3, texts=60, ask_every=0, during=kill_twice
        )
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait(TIMEOUT)
        r.close()
    assert_exactly_once_in_order(avatar_server, result["sent"])
    assert len(takeovers) == 2
    assert max(takeovers) < TAKEOVER_BOUND, f"takeovers took {takeovers}"
    print(f"takeovers after kill -9: {[round(t, 2) for t in takeovers]} s")


def _owner(r: Any, sid: str) -> str | None:
    value = r.get(f"avatar-im:s:{sid}:lease")
    return None if value is None else str(value)


def _held_by(r: Any, session_ids: list[str], host: str) -> list[str]:
    return [sid for sid in session_ids if _owner(r, sid) == host]


def test_redis_restart_mid_stream(
    redis_server: RedisProcess, avatar_server: ReferenceServer
) -> None:
    """Redis killed and started again (AOF on): delays and typed errors, never a silent loss."""
    session_ids = [f"rr-{i}" for i in range(4)]
    with hosts(redis_server.url, avatar_server, 2):

        def restart() -> None:
            assert wait_until(
                lambda: all(avatar_server.session(s) is not None for s in session_ids), TIMEOUT * 2
            )
            time.sleep(0.3)
            redis_server.kill()
            time.sleep(1.5)  # longer than the handles' redis_retry (1 s): they raise
            redis_server.start()

        result = run_workers(
            redis_server.url,
            session_ids,
            workers=2,
            texts=100,
            ask_every=0,
            retry=True,
            pace=0.02,
            during=restart,
        )
    assert result["retries"] > 0, "the restart did not hit the stream"
    assert_exactly_once_in_order(avatar_server, result["sent"])


def test_back_pressure_is_typed(redis_server: RedisProcess, avatar_server: ReferenceServer) -> None:
    from avatar_im import OutboxFullError, SessionNotStartedError
    from avatar_im.relay import HostsFullError

    handle = RelayClient(redis_server.url, session_id="nobody")
    with pytest.raises(HostsFullError):
        handle.start_session()  # no host is running
    with pytest.raises(SessionNotStartedError):
        handle.send_text("hello")
    with hosts(redis_server.url, avatar_server, 1, max_sessions=1):
        first = RelayClient(redis_server.url, session_id="first", max_outbox=5)
        first.start_session()
        first.wait_session_ready(TIMEOUT)
        assert wait_until(lambda: _room(redis_server.url) == 0, TIMEOUT)
        with pytest.raises(HostsFullError):
            RelayClient(redis_server.url, session_id="second").start_session()
        with pytest.raises(OutboxFullError):
            for k in range(1000):  # faster than the host acks: the backlog fills up
                first.send_text(f"t{k}")


def _room(url: str) -> int:
    r = redis.Redis.from_url(url, decode_responses=True)
    try:
        return sum(int(v) for v in r.hgetall("avatar-im:room").values())
    finally:
        r.close()


def test_idle_session_expires(redis_server: RedisProcess, avatar_server: ReferenceServer) -> None:
    with hosts(redis_server.url, avatar_server, 1, idle_timeout=0.5) as (host,):
        avatar = RelayClient(redis_server.url, session_id="idle")
        avatar.start_session()
        avatar.wait_session_ready(TIMEOUT)
        assert wait_until(lambda: not host.sessions, TIMEOUT)
        assert wait_until(lambda: avatar_server.session("idle").stopped, TIMEOUT)
        from avatar_im import SessionNotStartedError

        with pytest.raises(SessionNotStartedError):
            avatar.send_text("too late")


def test_fork_safe_handle(redis_server: RedisProcess, avatar_server: ReferenceServer) -> None:
    """A handle made and used before fork() works in the child (gunicorn --preload)."""
    with hosts(redis_server.url, avatar_server, 1):
        avatar = RelayClient(redis_server.url, session_id="preload")
        avatar.start_session()
        avatar.wait_session_ready(TIMEOUT)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                code = 0 if avatar.ask("child", timeout=TIMEOUT).text == "You said: child" else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert avatar.ask("parent", timeout=TIMEOUT).text == "You said: parent"


def test_interrupt_and_audio_through_the_host(
    redis_server: RedisProcess, avatar_server: ReferenceServer
) -> None:
    from avatar_im.families import MODELLED_INTERRUPT

    options = {"client_options": {"interrupt_via": MODELLED_INTERRUPT}}
    with (
        hosts(redis_server.url, avatar_server, 1, **options),
        RelayClient(redis_server.url, session_id="talk") as avatar,
    ):
        avatar.start_session()
        avatar.wait_session_ready(TIMEOUT)
        avatar.wait_ack(avatar.send_audio(b"\x00\x00" * 1600), TIMEOUT)
        avatar.send_text("tell me a long story " * 5)
        report = avatar.interrupt(timeout=TIMEOUT)
        assert report.service_told and report.via == "im"
        assert report.result is not None and report.result.family == "interrupt_result"
    snapshot = avatar_server.session("talk")
    assert snapshot is not None and len(snapshot.audio_chunks) == 1
    assert snapshot.interrupts == 1
