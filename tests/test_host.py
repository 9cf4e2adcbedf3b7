"""The session host's own behaviour, on a real redis-server and the reference server on loopback.

Each test starts its own ``redis-server`` (see ``redis_peer``), and hosts as threads of
this process (or as processes, for ``SIGSTOP``): a session let go and started again at
once, a close while Redis is stopped, the constructor's checks, the idle cost of a lane,
the clients' pull buffers, and a host that stalls past its lease.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import math
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import TIMEOUT, client_threads, wait_until
from redis_peer import (
    RedisProcess,
    avatar_server,
    host_process,
    hosts,
    needs_redis,
    redis,
    redis_server,
)

from avatar_im import AvatarIM
from avatar_im.exceptions import InvalidArgumentError, InvalidArgumentTypeError, ReceiveTimeout
from avatar_im.messages import from_envelope
from avatar_im.server import ReferenceServer

pytestmark = needs_redis

if redis is not None:
    from avatar_im.host import SessionHost
    from avatar_im.relay import RelayClient

__all__ = ["avatar_server", "redis_server"]  # fixtures, used by name

#: The lease of the tests that stop a host or Redis (s).
LEASE = 1.5


def _redis(url: str) -> Any:
    return redis.Redis.from_url(url, decode_responses=True, socket_timeout=TIMEOUT)


def _server_thread(thread: threading.Thread) -> bool:
    return thread.name.startswith("avatar-im-server")


@contextlib.contextmanager
def _stopped(proc: subprocess.Popen[bytes] | None) -> Iterator[None]:
    """The process SIGSTOPped for the block; SIGCONTed after, whatever happens."""
    assert proc is not None
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(proc.pid, signal.SIGCONT)


# ------------------------------------------------------- let go, started again


class _LetGoGate(logging.Handler):
    """Holds the lane thread that logs "let go" (right after the host's _END) until released.

    This widens the window between a host letting a session go in Redis and its lane
    leaving the host's table, which the relay can hit by starting the session again.
    """

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.armed = threading.Event()
        self.held = threading.Event()
        self.go = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.armed.is_set() and "let go" in record.getMessage():
            self.armed.clear()
            self.held.set()
            self.go.wait(TIMEOUT * 2)


def _delivered(r: Any, entry_id: str) -> bool:
    """Whether the hosts' group was given the control entry *entry_id* (or it is gone)."""
    for group in r.xinfo_groups("avatar-im:ctl"):
        last = str(group["last-delivered-id"])
        if group["name"] == "hosts" and tuple(map(int, last.split("-"))) >= tuple(
            map(int, entry_id.split("-"))
        ):
            return True
    return False


def test_a_session_started_again_as_it_is_let_go_is_held(
    redis_server: RedisProcess, avatar_server: ReferenceServer
) -> None:
    """stop_session, then start_session at once: each of 20 rounds is hosted and answers."""
    r = _redis(redis_server.url)
    gate = _LetGoGate()
    log = logging.getLogger("avatar_im.host")
    level = log.level
    log.addHandler(gate)
    log.setLevel(logging.INFO)
    try:
        with (
            hosts(redis_server.url, avatar_server, 1) as (host,),
            RelayClient(redis_server.url, session_id="again") as avatar,
        ):
            avatar.start_session()
            avatar.wait_session_ready(TIMEOUT)
            for k in range(20):
                gate.held.clear()
                gate.go.clear()
                gate.armed.set()
                avatar.wait_ack(avatar.stop_session(), TIMEOUT)
                assert gate.held.wait(TIMEOUT), f"round {k}: the host did not let the session go"
                assert not avatar.hosted()
                deferred = getattr(host, "deferred", 0)
                avatar.start_session()  # the visitor comes back while its lane is ending
                ctl = r.hget("avatar-im:s:again:meta", "ctl")
                assert ctl
                # The host's reader takes the new control entry while the old lane is held;
                # then either it is dropped as stale (the defect) or its hosting waits.
                assert wait_until(
                    lambda c=ctl, d=deferred: (
                        _delivered(r, c)
                        and (
                            not r.xrange("avatar-im:ctl", c, c) or getattr(host, "deferred", 0) > d
                        )
                    ),
                    TIMEOUT,
                ), (
                    f"round {k}: the new control entry was not taken: "
                    f"{r.xinfo_groups('avatar-im:ctl')} {ctl} {r.xrange('avatar-im:ctl')} "
                    f"{getattr(host, 'deferred', 0)} {[t.name for t in threading.enumerate()]}"
                )
                gate.go.set()
                avatar.wait_session_ready(TIMEOUT)
                assert avatar.ask(f"round {k}", timeout=TIMEOUT).text == f"You said: round {k}"
            # And without holding anything: let go, then started again as soon as it is.
            for k in range(20):
                avatar.wait_ack(avatar.stop_session(), TIMEOUT)
                assert wait_until(lambda: not avatar.hosted(), TIMEOUT)
                avatar.start_session()
                avatar.wait_session_ready(TIMEOUT)
                assert avatar.ask(f"free {k}", timeout=TIMEOUT).text == f"You said: free {k}"
            assert host.sessions == ["again"]
    finally:
        gate.go.set()
        log.removeHandler(gate)
        log.setLevel(level)
        r.close()


def test_a_session_let_go_and_started_again_on_two_hosts(
    redis_server: RedisProcess, avatar_server: ReferenceServer
) -> None:
    """With two hosts, the restart lands on either: it is held, and the old one is gone."""
    with (
        hosts(redis_server.url, avatar_server, 2) as made,
        RelayClient(redis_server.url, session_id="twice") as avatar,
    ):
        avatar.start_session()
        avatar.wait_session_ready(TIMEOUT)
        for k in range(10):
            avatar.wait_ack(avatar.stop_session(), TIMEOUT)
            assert wait_until(lambda: not avatar.hosted(), TIMEOUT)
            avatar.start_session()
            avatar.wait_session_ready(TIMEOUT)
            assert avatar.ask(f"two {k}", timeout=TIMEOUT).text == f"You said: two {k}"
            assert wait_until(lambda: sum(h.sessions == ["twice"] for h in made) == 1, TIMEOUT)
            assert sum(bool(h.sessions) for h in made) == 1


# ----------------------------------------------------------- close, Redis stalled


def test_close_is_bounded_and_leaves_nothing_when_redis_stalls(
    redis_server: RedisProcess, avatar_server: ReferenceServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="avatar_im.host")
    before = set(client_threads())
    host = SessionHost(
        redis_server.url, url=avatar_server.url, lease_ttl=LEASE, host_id="stalled"
    ).start()
    try:
        handles = [RelayClient(redis_server.url, session_id=f"stall-{i}") for i in range(3)]
        for handle in handles:
            handle.start_session()
        for handle in handles:
            handle.wait_session_ready(TIMEOUT)
            assert handle.ask("hi", timeout=TIMEOUT).text == "You said: hi"
        started = [t for t in client_threads() if t not in before and not _server_thread(t)]
        names = {t.name.rsplit("-", 1)[0] for t in started}
        assert {"avatar-im-host-lane", "avatar-im-host-reader", "avatar-im-reader"} <= names
        with _stopped(redis_server.proc):
            # The host sees Redis stall (its keeper cannot renew), then it is closed.
            assert wait_until(lambda: "cannot renew" in caplog.text, TIMEOUT * 2)
            began = time.monotonic()
            host.close(timeout=2.0)
            took = time.monotonic() - began
            alive = [t for t in client_threads() if t not in before and not _server_thread(t)]
            assert took < 2.5, f"close(timeout=2.0) took {took:.2f}s with Redis stopped"
            assert not alive, f"threads left after close(): {alive}"
            assert not host.threads
        # Its connections are closed: Redis, running again, lists none of them.
        r = _redis(redis_server.url)
        try:
            assert wait_until(
                lambda: (
                    not [
                        c for c in r.client_list() if c.get("name", "").startswith("avatar-im-host")
                    ]
                ),
                TIMEOUT,
            ), r.client_list()
        finally:
            r.close()
    finally:
        host.close(timeout=TIMEOUT)


def test_close_deregisters_the_host(
    redis_server: RedisProcess, avatar_server: ReferenceServer
) -> None:
    r = _redis(redis_server.url)
    try:
        with hosts(redis_server.url, avatar_server, 1) as (host,):
            assert r.zscore("avatar-im:hosts", "h0") is not None
            assert r.hget("avatar-im:room", "h0") is not None
            assert [c for c in r.client_list() if c.get("name") == "avatar-im-host:h0"]
        assert r.zscore("avatar-im:hosts", "h0") is None
        assert r.hget("avatar-im:room", "h0") is None
        assert wait_until(
            lambda: not [c for c in r.client_list() if c.get("name") == "avatar-im-host:h0"],
            TIMEOUT,
        )
        host.close()  # a second close: nothing to do
    finally:
        r.close()


# ------------------------------------------------------------ constructor checks

_URL = "redis://127.0.0.1:6379/0"
_WS = "ws://127.0.0.1:9/ws"
NAN = math.nan
INF = math.inf

BAD: list[tuple[dict[str, Any], type[Exception]]] = [
    ({"redis_url": None}, InvalidArgumentTypeError),
    ({"redis_url": b"redis://127.0.0.1"}, InvalidArgumentTypeError),
    ({"redis_url": ""}, InvalidArgumentError),
    ({"redis_url": "http://127.0.0.1:6379"}, InvalidArgumentError),
    ({"redis_url": "not a url"}, InvalidArgumentError),
    ({"redis_url": "redis://127.0.0.1:port/0"}, InvalidArgumentError),
    ({"url": 5}, InvalidArgumentTypeError),
    ({"url": "http://127.0.0.1:9/ws"}, InvalidArgumentError),
    ({"url": ""}, InvalidArgumentError),
    ({"url": None}, InvalidArgumentError),
    ({"events_maxlen": -5}, InvalidArgumentError),
    ({"events_maxlen": 0}, InvalidArgumentError),
    ({"events_maxlen": True}, InvalidArgumentTypeError),
    ({"events_maxlen": "x"}, InvalidArgumentTypeError),
    ({"events_maxlen": 10.0}, InvalidArgumentTypeError),
    ({"max_sessions": True}, InvalidArgumentTypeError),
    ({"max_sessions": 0}, InvalidArgumentError),
    ({"max_sessions": 2.0}, InvalidArgumentTypeError),
    *[
        ({name: value}, InvalidArgumentError)
        for name in ("idle_timeout", "lease_ttl", "ready_timeout", "reply_window")
        for value in (NAN, INF, -1.0, 0)
    ],
    *[
        ({name: value}, InvalidArgumentTypeError)
        for name in ("idle_timeout", "lease_ttl", "ready_timeout", "reply_window")
        for value in ("10", True, None)
    ],
    ({"lease_ttl": 0.1}, InvalidArgumentError),
    ({"host_id": 5}, InvalidArgumentTypeError),
    ({"host_id": ""}, InvalidArgumentError),
    ({"host_id": "a\nb"}, InvalidArgumentError),
    ({"token": 5}, InvalidArgumentTypeError),
    ({"token": ""}, InvalidArgumentError),
    ({"app_id": None}, InvalidArgumentTypeError),
    ({"tenant_id": 7}, InvalidArgumentTypeError),
    ({"prefix": ""}, InvalidArgumentError),
    ({"client_factory": "not callable"}, InvalidArgumentTypeError),
    ({"client_options": ["receive_buffer"]}, InvalidArgumentTypeError),
    ({"client_options": {"bogus": 1}}, InvalidArgumentError),
    ({"client_options": {"heartbeat_interval": "x"}}, InvalidArgumentTypeError),
    ({"client_options": {"max_outbox": 0}}, InvalidArgumentError),
    ({"client_options": {"session_id": "x"}}, InvalidArgumentError),
    ({"client_options": {"id_factory": None}}, InvalidArgumentError),
    ({"client_options": {"auto_connect": False}}, InvalidArgumentError),
    ({"client_options": {"url": _WS}}, InvalidArgumentError),
]


@pytest.mark.parametrize(
    ("options", "error"), BAD, ids=[f"{next(iter(o))}={next(iter(o.values()))!r}" for o, _ in BAD]
)
def test_bad_constructor_arguments_raise_typed_errors(
    options: dict[str, Any], error: type[Exception]
) -> None:
    arguments: dict[str, Any] = {"redis_url": _URL, "url": _WS, **options}
    redis_url = arguments.pop("redis_url")
    with pytest.raises(error):
        SessionHost(redis_url, **arguments)


def test_good_constructor_arguments() -> None:
    host = SessionHost(
        "rediss://user:pw@127.0.0.1:6380/1",
        url="wss://example.invalid/ws",
        max_sessions=10**9,
        lease_ttl=1,
        idle_timeout=86_400,
        client_options={"heartbeat_interval": None, "max_outbox": 5},
    )
    assert host.max_sessions == 10**9
    SessionHost("unix:///tmp/redis.sock", client_factory=lambda sid, ids: None)
    host.close()  # never started: nothing to do


@pytest.mark.parametrize("timeout", [NAN, -1.0, INF, "1", None])
def test_close_timeout_is_checked(timeout: Any) -> None:
    host = SessionHost(_URL, url=_WS)
    with pytest.raises(InvalidArgumentError):
        host.close(timeout=timeout)


# ----------------------------------------------------------------- idle cost


def test_an_idle_lane_sleeps_until_its_deadline(
    redis_server: RedisProcess, avatar_server: ReferenceServer
) -> None:
    with (
        hosts(redis_server.url, avatar_server, 1, idle_timeout=60.0) as (host,),
        RelayClient(redis_server.url, session_id="sleepy") as avatar,
    ):
        avatar.start_session()
        avatar.wait_session_ready(TIMEOUT)
        answer = avatar.ask("wake up", timeout=TIMEOUT)
        avatar.wait_ack(answer.message_id, TIMEOUT)
        first = host.wakeups["sleepy"]
        threading.Event().wait(1.0)  # a window to count in, not a wait for a condition
        woke = host.wakeups["sleepy"] - first
        assert woke <= 2, f"an idle lane woke {woke} times in 1 s"
        # It still wakes for a command.
        assert avatar.ask("again", timeout=TIMEOUT).text == "You said: again"
    # And it still expires: its deadline wakes it.
    with (
        hosts(redis_server.url, avatar_server, 1, idle_timeout=0.5) as (host,),
        RelayClient(redis_server.url, session_id="expiring") as avatar,
    ):
        avatar.start_session()
        avatar.wait_session_ready(TIMEOUT)
        assert wait_until(lambda: not host.sessions, TIMEOUT)
        assert not avatar.hosted()
        assert wait_until(lambda: avatar_server.session("expiring").stopped, TIMEOUT)


# ------------------------------------------------------- no stray buffer warning


@pytest.mark.parametrize("n", [500, 1000])
def test_a_burst_logs_no_receive_buffer_warning(
    redis_server: RedisProcess, caplog: pytest.LogCaptureFixture, n: int
) -> None:
    caplog.set_level(logging.WARNING)
    r = _redis(redis_server.url)
    r.config_set("appendfsync", "no")  # a burst: the texts come faster than disks sync
    r.close()
    with (
        ReferenceServer(host="127.0.0.1", port=0, speaking_base=0.001, speaking_rate=1e5) as srv,
        hosts(redis_server.url, srv, 1) as (host,),
        RelayClient(redis_server.url, session_id="burst") as avatar,
    ):
        avatar.start_session()
        avatar.wait_session_ready(TIMEOUT)
        ids = [avatar.send_text(f"t{k}") for k in range(n)]
        avatar.wait_ack(ids[-1], TIMEOUT * 4)
        r = _redis(redis_server.url)
        try:
            # Every reply reaches the event stream (none dropped on the way), in order.
            def replies() -> list[str]:
                return [
                    from_envelope(json.loads(f["e"])).text or ""
                    for _, f in r.xrange("avatar-im:s:burst:ev")
                    if f.get("k") == "m" and f.get("f") == "reply"
                ]

            assert wait_until(lambda: len(replies()) >= n, TIMEOUT * 2), len(replies())
            assert replies() == [f"You said: t{k}" for k in range(n)]
        finally:
            r.close()
        assert avatar.receive(TIMEOUT, family="reply").text == "You said: t0"
        assert host.publish_dropped == 0
    full = [r for r in caplog.records if "receive buffer full" in r.getMessage()]
    assert not full, full[0].getMessage()
    behind = [r for r in caplog.records if "dropped" in r.getMessage()]
    assert not behind, behind[0].getMessage()


def test_a_client_with_no_receive_buffer(
    make_cloud_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """receive_buffer=0: listeners and ask() get every message, the pull API keeps none."""
    caplog.set_level(logging.WARNING, logger="avatar_im.inbox")
    client: AvatarIM = make_cloud_client(receive_buffer=0)
    heard: list[str] = []
    client.on("reply", lambda message: heard.append(message.text or ""))
    client.start_session()
    client.wait_session_ready(TIMEOUT)
    assert client.ask("first", timeout=TIMEOUT).text == "You said: first"
    for k in range(100):
        client.send_text(f"t{k}")
    assert wait_until(lambda: len(heard) == 101, TIMEOUT)
    assert heard[-1] == "You said: t99"
    with pytest.raises(ReceiveTimeout):
        client.receive(0)
    assert client.stats.inbound_dropped == 0
    assert not [r for r in caplog.records if "receive buffer full" in r.getMessage()]
    with pytest.raises(InvalidArgumentError):
        make_cloud_client(receive_buffer=-1)


# --------------------------------------------------------------------- zombie


def test_a_host_stopped_past_its_lease_publishes_nothing_twice(
    redis_server: RedisProcess, avatar_server: ReferenceServer
) -> None:
    """SIGSTOP a host holding sessions mid-stream for longer than its lease, then SIGCONT it.

    The other host takes them over; the stopped one, woken, must not publish what the
    service sends it (nor record acks) for sessions it no longer holds: each reply is in
    the event stream once, and the service processed each text once, in order.
    """
    session_ids = [f"zombie-{i}" for i in range(3)]
    texts = 250
    r = _redis(redis_server.url)
    procs = {
        name: host_process(redis_server.url, avatar_server.url, name, LEASE)
        for name in ("za", "zb")
    }
    sent: dict[str, list[str]] = {sid: [] for sid in session_ids}
    errors: list[str] = []
    started = threading.Barrier(len(session_ids) + 1, timeout=TIMEOUT * 4)

    def worker(sid: str) -> None:
        try:
            handle = RelayClient(redis_server.url, session_id=sid)
            handle.start_session()
            handle.wait_session_ready(TIMEOUT * 2)
            started.wait()
            ids = []
            for k in range(texts):
                text = f"{sid} t{k}"
                ids.append(handle.send_text(text))
                sent[sid].append(text)
                time.sleep(0.02)  # a paced stream, so that the stop falls in its middle
            for message_id in ids:
                handle.wait_ack(message_id, TIMEOUT * 4)
        except BaseException as exc:
            errors.append(f"{sid}: {type(exc).__name__}: {exc}")
            started.abort()

    threads = [threading.Thread(target=worker, args=(sid,), daemon=True) for sid in session_ids]
    try:
        assert wait_until(lambda: r.zcard("avatar-im:hosts") == 2, TIMEOUT * 2)
        for thread in threads:
            thread.start()
        try:
            started.wait()
        except threading.BrokenBarrierError:
            pytest.fail(f"the sessions did not start: {errors}")
        owners = {sid: r.get(f"avatar-im:s:{sid}:lease") for sid in session_ids}
        victim = max(("za", "zb"), key=lambda h: sum(o == h for o in owners.values()))
        mine = [sid for sid, owner in owners.items() if owner == victim]
        assert mine
        with _stopped(procs[victim]):
            assert wait_until(
                lambda: all(r.get(f"avatar-im:s:{s}:lease") not in (None, victim) for s in mine),
                LEASE * 2 + TIMEOUT,
            ), f"{mine} were not taken over from {victim}"
            threading.Event().wait(LEASE)  # stopped longer than its lease, still mid-stream
        for thread in threads:
            thread.join(TIMEOUT * 12)
        assert not [t for t in threads if t.is_alive()], "a worker did not finish"
        assert not errors, errors
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait(TIMEOUT)
    try:
        for sid in session_ids:
            snapshot = avatar_server.session(sid)
            assert snapshot is not None
            assert list(snapshot.texts) == sent[sid], f"{sid}: the service's record differs"
            entries = r.xrange(f"avatar-im:s:{sid}:ev")
            replies = collections.Counter(
                from_envelope(json.loads(f["e"])).text
                for _, f in entries
                if f.get("k") == "m" and f.get("f") == "reply"
            )
            twice = {text: n for text, n in replies.items() if n > 1}
            assert not twice, f"{sid}: {len(twice)} replies published more than once"
            # A reply the service sent to the stopped host's connection is lost (see the docs'
            # limits): at most a few, never one too many.
            assert set(replies) <= {f"You said: {text}" for text in sent[sid]}
            assert texts - 10 <= len(replies) <= texts, f"{sid}: {len(replies)} replies"
            acks = collections.Counter(f.get("id") for _, f in entries if f.get("k") == "a")
            assert not {m for m, n in acks.items() if n > 1}, f"{sid}: an ack recorded twice"
    finally:
        r.close()


# ------------------------------------------------------------- replies and asks


def _slow_or_silent(text: str) -> str | None:
    """The service's reply: after 1.5 s to texts starting 'slow', none to 'none' texts."""
    if text.startswith("slow"):
        time.sleep(1.5)
    if text.startswith("none"):
        return None
    return f"You said: {text}"


def test_a_late_reply_goes_to_receive_and_a_missing_one_blocks_nothing(
    redis_server: RedisProcess,
) -> None:
    """The client's ask() rule through the relay: no ask gets the reply of another.

    A reply that comes after its ask gave up (and before a later text's ack) is its
    text's, for receive(); a text that never gets a reply stops taking replies once a
    later text is acknowledged, so the asks after it get their own.
    """
    from avatar_im import AskTimeout

    with (
        ReferenceServer(
            host="127.0.0.1", port=0, reply=_slow_or_silent, speaking_base=0.01, speaking_rate=1000
        ) as server,
        hosts(redis_server.url, server, 1),
        RelayClient(redis_server.url, session_id="late") as avatar,
    ):
        avatar.start_session()
        avatar.wait_session_ready(TIMEOUT)
        with pytest.raises(AskTimeout):
            avatar.ask("slow A", timeout=0.5)
        assert avatar.ask("B", timeout=TIMEOUT).text == "You said: B"
        assert avatar.receive(TIMEOUT, family="reply").text == "You said: slow A"
        with pytest.raises(AskTimeout):
            avatar.ask("none X", timeout=0.5)
        for i in range(3):
            assert avatar.ask(f"D{i}", timeout=TIMEOUT).text == f"You said: D{i}"


def test_a_takeover_does_not_restart_the_idle_clock(
    redis_server: RedisProcess, avatar_server: ReferenceServer
) -> None:
    """A session idle past idle_timeout when a host takes it is let go, never reconnected."""
    url = redis_server.url
    first = SessionHost(
        url, url=avatar_server.url, host_id="i1", idle_timeout=1.0, lease_ttl=1.0
    ).start()
    try:
        avatar = RelayClient(url, session_id="abandoned")
        avatar.start_session()
        avatar.wait_session_ready(TIMEOUT)
        assert avatar.ask("last words", timeout=TIMEOUT).text == "You said: last words"
    finally:
        first.close(timeout=0.5)  # lets the session go unended: the next host takes it
    connections = avatar_server.stats.connections_total
    assert avatar.hosted()
    time.sleep(1.2)  # the visitor is gone: the session ages past idle_timeout, unheld
    with SessionHost(
        url, url=avatar_server.url, host_id="i2", idle_timeout=1.0, lease_ttl=1.0
    ) as second:
        assert wait_until(lambda: not avatar.hosted(), TIMEOUT * 2)
        assert second.sessions == []
    assert avatar_server.stats.connections_total == connections, "it was connected again"
    avatar.close()


def test_a_read_whose_reply_is_lost_loses_and_reorders_nothing(
    redis_server: RedisProcess, avatar_server: ReferenceServer
) -> None:
    """Redis ran the host's read of commands but its reply was lost (a socket timeout).

    The entries are pending to the host then, and never come again through ``>``: the
    host takes them again after the error, before anything newer.  The fault is put
    between the host's Redis client and the host (Redis itself runs the call).
    """
    import redis as redis_lib

    from avatar_im import host as host_module

    with hosts(redis_server.url, avatar_server, 1) as (host,):
        real_eval = host._redis.eval
        lose = [1]

        def eval_losing_one_reply(script: str, *args: Any, **kwargs: Any) -> Any:
            out = real_eval(script, *args, **kwargs)
            if (
                script is host_module._READ
                and lose[0]
                and any(isinstance(e, list) and e for e in out)
            ):
                lose[0] -= 1
                raise redis_lib.TimeoutError("Timeout reading from socket (the reply was lost)")
            return out

        host._redis.eval = eval_losing_one_reply
        with RelayClient(redis_server.url, session_id="lost-read") as avatar:
            avatar.start_session()
            avatar.wait_session_ready(TIMEOUT)
            avatar.wait_ack(avatar.send_text("t0"), TIMEOUT)
            lose[0] = 1
            ids = [avatar.send_text(f"t{i}") for i in range(1, 6)]
            for message_id in ids:
                avatar.wait_ack(message_id, TIMEOUT)
        assert lose[0] == 0, "the fault never fired"
    snapshot = avatar_server.session("lost-read")
    assert snapshot is not None and list(snapshot.texts) == [f"t{i}" for i in range(6)]


def test_garbage_in_redis_is_dropped_and_counted_never_blocking_real_sessions(
    redis_server: RedisProcess, avatar_server: ReferenceServer
) -> None:
    """A third party's garbage: control entries of broken sessions, a forged command."""
    r = _redis(redis_server.url)
    with hosts(redis_server.url, avatar_server, 1, lease_ttl=1.0) as (host,):
        # A session whose meta is a key of the wrong type, announced to the hosts.
        r.set("avatar-im:s:poison:meta", "not a hash")
        r.xadd("avatar-im:ctl", {"sid": "poison"})
        r.xadd("avatar-im:ctl", {"nosid": "x"})
        avatar = RelayClient(redis_server.url, session_id="real")
        avatar.start_session()
        avatar.wait_session_ready(TIMEOUT)
        # A forged command in the real session's stream: start options that are a str.
        r.xadd(
            "avatar-im:s:real:cmd", {"op": "start", "mid": "forged-1", "body": '{"options": "x"}'}
        )
        from avatar_im import InvalidArgumentError as Invalid

        with pytest.raises(Invalid, match="malformed"):
            avatar.wait_ack("forged-1", TIMEOUT)
        assert avatar.ask("still here", timeout=TIMEOUT).text == "You said: still here"
        assert wait_until(lambda: host.garbage >= 2, TIMEOUT), host.garbage
        assert sorted(host.sessions) == ["real"]
        assert {t.name.rsplit("-", 1)[0] for t in host.threads} >= {
            "avatar-im-host-reader",
            "avatar-im-host-keeper",
            "avatar-im-host-publisher",
        }
        avatar.close()
    r.close()


def test_a_publish_whose_reply_is_lost_publishes_nothing_twice(
    redis_server: RedisProcess, avatar_server: ReferenceServer
) -> None:
    """Redis ran the host's publish but its reply was lost: the retry adds no duplicate."""
    import redis as redis_lib

    with hosts(redis_server.url, avatar_server, 1) as (host,):
        real_pipeline = host._redis.pipeline
        lose = [0]

        def pipeline(*args: Any, **kwargs: Any) -> Any:
            pipe = real_pipeline(*args, **kwargs)
            real_execute = pipe.execute

            def execute(*a: Any, **k: Any) -> Any:
                out = real_execute(*a, **k)
                if lose[0]:
                    lose[0] -= 1
                    raise redis_lib.TimeoutError("Timeout reading from socket (the reply was lost)")
                return out

            pipe.execute = execute
            return pipe

        host._redis.pipeline = pipeline
        with RelayClient(redis_server.url, session_id="lost-pub") as avatar:
            avatar.start_session()
            avatar.wait_session_ready(TIMEOUT)
            lose[0] = 1
            assert avatar.ask("once", timeout=TIMEOUT).text == "You said: once"
            avatar.wait_ack(avatar.send_text("twice?"), TIMEOUT)
            assert avatar.receive(TIMEOUT, family="reply").text == "You said: twice?"
            assert wait_until(lambda: lose[0] == 0, TIMEOUT)
    r = _redis(redis_server.url)
    try:
        ids = [
            json.loads(fields["e"]).get("messageId")
            for _, fields in r.xrange("avatar-im:s:lost-pub:ev")
            if fields.get("k") == "m"
        ]
    finally:
        r.close()
    assert len(ids) == len(set(ids)), f"published twice: {ids}"


def test_a_start_sent_twice_with_one_id_still_starts(
    redis_server: RedisProcess, avatar_server: ReferenceServer
) -> None:
    """A start replayed (or enqueued twice after a lost reply) with its id: the session works."""
    r = _redis(redis_server.url)
    with (
        hosts(redis_server.url, avatar_server, 1, ready_timeout=3.0),
        RelayClient(redis_server.url, session_id="twice") as avatar,
    ):
        mid = avatar.start_session()
        r.xadd("avatar-im:s:twice:cmd", {"op": "start", "mid": mid, "body": '{"options": {}}'})
        avatar.wait_session_ready(TIMEOUT)
        assert avatar.ask("after", timeout=TIMEOUT).text == "You said: after"
    r.close()


@pytest.mark.parametrize("key", ["lease", "cmd"])
def test_one_sessions_broken_key_stalls_no_other_session(
    redis_server: RedisProcess, avatar_server: ReferenceServer, key: str
) -> None:
    """A session's lease or command stream turned into a key of another type (garbage)."""
    r = _redis(redis_server.url)
    with hosts(redis_server.url, avatar_server, 1, lease_ttl=1.0):
        victim = RelayClient(redis_server.url, session_id="victim")
        bystander = RelayClient(redis_server.url, session_id="bystander")
        for handle in (victim, bystander):
            handle.start_session()
            handle.wait_session_ready(TIMEOUT)
        r.delete(f"avatar-im:s:victim:{key}")
        r.hset(f"avatar-im:s:victim:{key}", "garbage", "1")
        for n in range(3):  # over a few lease renewals (every third of a second)
            assert bystander.ask(f"still {n}", timeout=TIMEOUT).text == f"You said: still {n}"
            time.sleep(0.4)
        victim.close()
        bystander.close()
    r.close()
