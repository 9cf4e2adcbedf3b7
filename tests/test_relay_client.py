"""RelayClient on its own: who gets a message, bounded calls when Redis stalls, typed inputs.

Real ``redis-server`` (one per test, on a free loopback port) and the reference server over
loopback, hosts as threads of this process; nothing is mocked.  Every wait has a timeout.
"""

from __future__ import annotations

import collections
import functools
import math
import multiprocessing
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from conftest import TIMEOUT, wait_until
from redis_peer import RedisProcess, avatar_server, hosts, needs_redis, redis, redis_server

from avatar_im import (
    AckTimeout,
    ClientClosedError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    ReceiveTimeout,
)
from avatar_im.server import ReferenceServer

pytestmark = needs_redis

if redis is not None:
    from avatar_im import relay
    from avatar_im.relay import HostsFullError, RelayClient, RelayUnavailableError

__all__ = ["avatar_server", "redis_server"]  # fixtures, used by name


def _started(url: str, session_id: str) -> RelayClient:
    handle = RelayClient(url, session_id=session_id)
    handle.start_session()
    handle.wait_session_ready(TIMEOUT)
    return handle


def _drain(url: str, session_id: str, timeout: float = 0.5, **filters: Any) -> list[Any]:
    """What a fresh handle (a new request) receives until nothing comes for *timeout*."""
    got: list[Any] = []
    with RelayClient(url, session_id=session_id) as handle:
        for _ in range(1000):
            try:
                got.append(handle.receive(timeout, **filters))
            except ReceiveTimeout:
                return got
    raise AssertionError("more than 1000 messages")


# ------------------------------------------------------------- 1: receive


def test_receive_gives_each_message_to_one_handle(
    redis_server: RedisProcess, avatar_server: ReferenceServer
) -> None:
    """Two workers' fresh handles receive() one session at once: each reply once, none lost."""
    texts = 40
    with hosts(redis_server.url, avatar_server, 1):
        sender = _started(redis_server.url, "race")
        got: dict[int, list[str]] = collections.defaultdict(list)
        stop = threading.Event()
        errors: list[BaseException] = []

        def worker(w: int) -> None:
            deadline = time.monotonic() + TIMEOUT * 6
            while not stop.is_set() and time.monotonic() < deadline:
                handle = RelayClient(redis_server.url, session_id="race")  # one per request
                try:
                    got[w].append(handle.receive(0.3, family="reply").text)
                except ReceiveTimeout:
                    pass
                except BaseException as exc:  # pragma: no cover - reported below
                    errors.append(exc)
                    return
                finally:
                    handle.close()

        threads = [threading.Thread(target=worker, args=(w,)) for w in range(2)]
        for thread in threads:
            thread.start()
        try:
            for k in range(texts):
                sender.wait_ack(sender.send_text(f"m{k}"), TIMEOUT)
            wait_until(lambda: len(got[0]) + len(got[1]) >= texts, TIMEOUT * 3)
        finally:
            stop.set()
            for thread in threads:
                thread.join(TIMEOUT * 2)
        assert not errors, errors
        counts = collections.Counter(got[0] + got[1])
        twice = sorted(text for text, n in counts.items() if n > 1)
        assert not twice, f"{len(twice)} replies received by two handles: {twice[:5]}"
        assert set(counts) == {f"You said: m{k}" for k in range(texts)}


def _wait_taken(url: str, session_id: str, text: str) -> None:
    """Wait (bounded) until the floor of *session_id* passes the message that says *text*."""
    keys = relay.Keys()
    r = redis.Redis.from_url(url, decode_responses=True)
    try:

        def entry() -> str | None:
            for entry_id, fields in r.xrange(keys.ev(session_id), count=100_000):
                if fields.get("k") == "m" and text in fields.get("e", ""):
                    return str(entry_id)
            return None

        assert wait_until(lambda: entry() is not None, TIMEOUT), f"no message says {text!r}"
        wanted = relay.stream_id(str(entry()))
        wait_until(
            lambda: relay.stream_id(r.get(keys.floor(session_id)) or "0-0") >= wanted,
            TIMEOUT * 3,
        )
    finally:
        r.close()


def _receiver(url: str, session_id: str, stop: Any, out: Any) -> None:
    """A worker process: a fresh handle per request, receive() anything, until told to stop."""
    got: list[tuple[str, str]] = []
    error = None
    deadline = time.monotonic() + TIMEOUT * 6
    try:
        while not stop.is_set() and time.monotonic() < deadline:
            with RelayClient(url, session_id=session_id) as handle:
                try:
                    message = handle.receive(0.3)
                except ReceiveTimeout:
                    continue
                got.append((message.family, getattr(message, "text", None) or ""))
    except BaseException as exc:  # reported to the test, which fails on it
        error = f"{type(exc).__name__}: {exc}"
    out.put((got, error))


def test_receive_gives_each_message_to_one_process(
    redis_server: RedisProcess, avatar_server: ReferenceServer
) -> None:
    """Two worker processes (forked, as gunicorn's) receive one session: each reply once."""
    texts = 30
    ctx = multiprocessing.get_context("fork")
    with hosts(redis_server.url, avatar_server, 1):
        sender = _started(redis_server.url, "procs")
        stop, out = ctx.Event(), ctx.Queue()
        procs = [
            ctx.Process(target=_receiver, args=(redis_server.url, "procs", stop, out), daemon=True)
            for _ in range(2)
        ]
        for proc in procs:
            proc.start()
        try:
            for k in range(texts):
                sender.wait_ack(sender.send_text(f"p{k}"), TIMEOUT)
            _wait_taken(redis_server.url, "procs", f"You said: p{texts - 1}")
        finally:
            stop.set()
            results = [out.get(timeout=TIMEOUT * 8) for _ in procs]
            for proc in procs:
                proc.join(TIMEOUT)
        assert [error for _, error in results] == [None, None]
        replies = [text for got, _ in results for family, text in got if family == "reply"]
        counts = collections.Counter(replies)
        assert not [text for text, n in counts.items() if n > 1], "a reply went to both"
        assert set(counts) == {f"You said: p{k}" for k in range(texts)}


def test_filtered_receive_leaves_the_rest_for_a_later_handle(
    redis_server: RedisProcess, avatar_server: ReferenceServer
) -> None:
    """A receive(family=...) that takes a later message does not hide the earlier ones."""
    url = redis_server.url
    with hosts(url, avatar_server, 1):
        first = _started(url, "filtered")
        first.wait_ack(first.send_text("one"), TIMEOUT)
        end = first.receive(TIMEOUT, family="broadcast_end")  # the reply before it is not taken
        assert end.family == "broadcast_end"
        first.close()

        # The next request's fresh handle sends first, then receives: it still gets the
        # reply to "one" (older than its own command), which nobody took.
        second = RelayClient(url, session_id="filtered")
        second.wait_ack(second.send_text("two"), TIMEOUT)
        reply = second.receive(TIMEOUT, family="reply")
        assert reply.text == "You said: one"
        assert second.receive(TIMEOUT, family="reply").text == "You said: two"
        second.close()

        rest = _drain(url, "filtered")
        families = [message.family for message in rest]
        assert "reply" not in families, "a reply was received twice"
        assert families.count("broadcast_end") == 1, families  # the one of "two" only
        assert families.count("broadcast_start") == 2, families  # nobody took those
        assert _drain(url, "filtered", 0.2) == [], "what a handle took came again"


def test_receive_never_returns_the_start_result(
    redis_server: RedisProcess, avatar_server: ReferenceServer
) -> None:
    """As locally, the session's start_result is wait_session_ready()'s, not receive()'s."""
    url = redis_server.url
    with hosts(url, avatar_server, 1):
        avatar = _started(url, "no-start")
        avatar.wait_ack(avatar.send_text("hi"), TIMEOUT)
        assert avatar.receive(TIMEOUT).family == "reply"
        avatar.wait_ack(avatar.start_session(), TIMEOUT)  # a restart: its result too
        rest = _drain(url, "no-start")
        assert "start_result" not in [m.family for m in rest], rest
        avatar.close()


def test_taken_entries_stay_bounded(
    redis_server: RedisProcess, avatar_server: ReferenceServer
) -> None:
    """The record of taken entries is trimmed below the floor and expires with the session."""
    url = redis_server.url
    r = redis.Redis.from_url(url, decode_responses=True)
    try:
        with hosts(url, avatar_server, 1):
            handle = _started(url, "bounded")
            for k in range(20):
                handle.wait_ack(handle.send_text(f"t{k}"), TIMEOUT)
            taken = _drain(url, "bounded")
            assert len([m for m in taken if m.family == "reply"]) == 20
            keys = relay.Keys()
            assert r.zcard(keys.taken("bounded")) == 0  # everything was taken: all below floor
            assert r.get(keys.floor("bounded")) is not None
            assert r.ttl(keys.floor("bounded")) > 0  # it expires with the session's keys
    finally:
        r.close()


# ---------------------------------------------------------- 2: Redis stalls


#: The margin of the stall test over the bound the relay states (a bound on a hang).
MARGIN = 2.0


def test_calls_are_bounded_when_redis_stalls(
    redis_server: RedisProcess, avatar_server: ReferenceServer
) -> None:
    """redis-server SIGSTOPped: each call returns within its timeout (or redis_retry) + slack."""
    retry = 0.5
    with hosts(redis_server.url, avatar_server, 1):
        handle = RelayClient(redis_server.url, session_id="stall", redis_retry=retry)
        handle.start_session()
        handle.wait_session_ready(TIMEOUT)
        assert handle.ask("hi", timeout=TIMEOUT).text == "You said: hi"
        fresh = RelayClient(redis_server.url, session_id="stall", redis_retry=retry)
        slack = relay.STALL_SLACK
        calls: list[tuple[str, float, Callable[[], object]]] = [
            ("ask(timeout=0.5)", 0.5, lambda: handle.ask("x", timeout=0.5)),
            ("send_text()", retry, lambda: handle.send_text("y")),
            ("receive(timeout=0.2)", 0.2, lambda: handle.receive(0.2)),
            ("fresh receive(timeout=0.2)", 0.2, lambda: fresh.receive(0.2)),
            ("receive_event(timeout=0.2)", 0.2, lambda: handle.receive_event(0.2)),
            ("wait_ack(id, 0.2)", 0.2, lambda: handle.wait_ack("nope", 0.2)),
            ("hosted()", retry, handle.hosted),
            ("interrupt(timeout=0.2)", 0.2, lambda: handle.interrupt(timeout=0.2)),
        ]
        assert redis_server.proc is not None
        redis_server.proc.send_signal(signal.SIGSTOP)
        took: dict[str, float] = {}
        try:
            for label, bound, call in calls:
                start = time.monotonic()
                with pytest.raises((RelayUnavailableError, ReceiveTimeout, AckTimeout)) as info:
                    call()
                took[label] = time.monotonic() - start
                assert took[label] <= bound + slack + MARGIN, (label, took)
                if label in ("ask(timeout=0.5)", "send_text()"):
                    assert isinstance(info.value, RelayUnavailableError)
                    assert info.value.message_id, "a send's error carries its message id"
        finally:
            redis_server.proc.send_signal(signal.SIGCONT)
        assert handle.ask("back", timeout=TIMEOUT).text == "You said: back"


# --------------------------------------------------------------- 3: inputs


BAD_ARGUMENTS: list[tuple[str, dict[str, Any], type[Exception]]] = [
    ("http scheme", {"redis_url": "http://:secret@127.0.0.1:6379/0"}, InvalidArgumentError),
    ("no scheme", {"redis_url": "not a url"}, InvalidArgumentError),
    ("bad port", {"redis_url": "redis://127.0.0.1:port/0"}, InvalidArgumentError),
    ("empty url", {"redis_url": ""}, InvalidArgumentError),
    ("bytes url", {"redis_url": b"redis://127.0.0.1:6379/0"}, InvalidArgumentTypeError),
    ("None url", {"redis_url": None}, InvalidArgumentTypeError),
    ("int session", {"session_id": 5}, InvalidArgumentTypeError),
    ("empty session", {"session_id": ""}, InvalidArgumentError),
    ("newline session", {"session_id": "a\nb"}, InvalidArgumentError),
    ("int prefix", {"prefix": 5}, InvalidArgumentTypeError),
    ("empty prefix", {"prefix": ""}, InvalidArgumentError),
    ("idle inf", {"idle_timeout": math.inf}, InvalidArgumentError),
    ("idle nan", {"idle_timeout": math.nan}, InvalidArgumentError),
    ("idle zero", {"idle_timeout": 0}, InvalidArgumentError),
    ("idle str", {"idle_timeout": "60"}, InvalidArgumentTypeError),
    ("max_outbox 0", {"max_outbox": 0}, InvalidArgumentError),
    ("max_outbox float", {"max_outbox": 1.5}, InvalidArgumentTypeError),
    ("max_outbox bool", {"max_outbox": True}, InvalidArgumentTypeError),
    ("receive_buffer str", {"receive_buffer": "9"}, InvalidArgumentTypeError),
    ("max_message_size -1", {"max_message_size": -1}, InvalidArgumentError),
    ("send_timeout -1", {"send_timeout": -1}, InvalidArgumentError),
    ("redis_retry nan", {"redis_retry": math.nan}, InvalidArgumentError),
    ("redis_retry None", {"redis_retry": None}, InvalidArgumentTypeError),
    ("result_slack inf", {"result_slack": math.inf}, InvalidArgumentError),
    ("redis_timeout 0", {"redis_timeout": 0}, InvalidArgumentError),
    ("redis_timeout None", {"redis_timeout": None}, InvalidArgumentTypeError),
    ("require_host str", {"require_host": "no"}, InvalidArgumentTypeError),
    ("id_factory", {"id_factory": object()}, InvalidArgumentTypeError),
]


@pytest.mark.parametrize(
    ("changes", "error"),
    [(changes, error) for _, changes, error in BAD_ARGUMENTS],
    ids=[label for label, _, _ in BAD_ARGUMENTS],
)
def test_bad_arguments_raise_typed_errors_at_the_call(
    redis_server: RedisProcess, changes: dict[str, Any], error: type[Exception]
) -> None:
    arguments: dict[str, Any] = {"redis_url": redis_server.url, "session_id": "args"}
    arguments.update(changes)
    redis_url = arguments.pop("redis_url")
    start = time.monotonic()
    with pytest.raises(error) as info:
        RelayClient(redis_url, **arguments)
    assert time.monotonic() - start < 1.0, "checked at the call, without reaching Redis"
    if error is InvalidArgumentError:
        assert not isinstance(info.value, InvalidArgumentTypeError), "a value, not a type error"
    assert "secret" not in str(info.value)


def test_check_redis_url_keeps_the_password_out_of_errors() -> None:
    assert relay.check_redis_url("rediss://:pw@cache:6380/1") == "rediss://:pw@cache:6380/1"
    assert relay.check_redis_url("unix:///run/redis.sock?db=0") == "unix:///run/redis.sock?db=0"
    with pytest.raises(InvalidArgumentError) as info:
        relay.check_redis_url("http://user:secret@cache:6379/0")
    assert "secret" not in str(info.value)


# ------------------------------------------------------------ 4: the pools


def _other_clients(r: Any) -> int:
    """The connections to the redis-server other than *r*'s own (this process's relay's)."""
    me = r.client_id()
    return len([c for c in r.client_list() if int(c["id"]) != me])


def test_close_pools_closes_this_process_connections(redis_server: RedisProcess) -> None:
    url = redis_server.url
    r = redis.Redis.from_url(url, decode_responses=True)
    try:
        handles = [RelayClient(url, session_id=f"pool-{i}") for i in range(3)]
        barrier = threading.Barrier(len(handles))

        def use(handle: RelayClient) -> None:
            barrier.wait(TIMEOUT)
            with pytest.raises(ReceiveTimeout):
                handle.receive(0.3)  # concurrent: the pool opens a connection for each

        threads = [threading.Thread(target=use, args=(h,)) for h in handles]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT)
        assert _other_clients(r) >= 2
        for handle in handles:
            handle.close()
        assert _other_clients(r) >= 2, "close() of a handle keeps the process's pool"
        relay.close_pools()
        assert wait_until(lambda: _other_clients(r) == 0, TIMEOUT), r.client_list()
        again = RelayClient(url, session_id="pool-0")
        assert again.hosted() is False  # the next use reconnects
        assert _other_clients(r) == 1
        relay.close_pools()
        assert wait_until(lambda: _other_clients(r) == 0, TIMEOUT), r.client_list()
    finally:
        r.close()


# ------------------------------------------------ 5: what Redis refuses, at once


def _raises_at_once(call: Callable[[], object], *words: str) -> RelayUnavailableError:
    """*call* raises RelayUnavailableError saying *words* well within redis_retry (5 s)."""
    start = time.monotonic()
    with pytest.raises(RelayUnavailableError) as info:
        call()
    took = time.monotonic() - start
    assert took < 1.0, f"retried for {took:.1f}s as if Redis were down: {info.value}"
    for word in words:
        assert word in str(info.value), (word, str(info.value))
    return info.value


GOOD_URLS = [
    "redis://127.0.0.1:6379",
    "redis://127.0.0.1:6379/",
    "redis://127.0.0.1:6379/0",
    "redis://:pw@127.0.0.1:6379/15",
    "rediss://cache:6380/1?ssl_cert_reqs=none",
    "unix:///run/redis.sock?db=3",
]
#: Paths redis-py reads as database 0 (it ignores what it cannot parse), or as another
#: number than the one written ("/1/2" is 12), or that Redis refuses ("/-1").
BAD_PATHS = ["/notadb", "/-1", "/1/2", "/0x1", "/ 1", "/%31", "/\u0661", "/1.0", "/0/"]


@pytest.mark.parametrize("url", GOOD_URLS)
def test_check_redis_url_takes_an_empty_path_or_a_database_number(url: str) -> None:
    assert relay.check_redis_url(url) == url


@pytest.mark.parametrize("path", BAD_PATHS)
def test_check_redis_url_refuses_a_path_that_is_not_a_database_number(path: str) -> None:
    url = f"redis://:secret@127.0.0.1:6379{path}"
    with pytest.raises(InvalidArgumentError) as info:
        relay.check_redis_url(url)
    assert not isinstance(info.value, InvalidArgumentTypeError)
    assert "database number" in str(info.value)
    assert "secret" not in str(info.value) and path not in str(info.value)
    with pytest.raises(InvalidArgumentError):
        RelayClient(url, session_id="path")


def test_redis_refusing_a_call_is_typed_at_once(redis_server: RedisProcess) -> None:
    """A database number out of range: every call raises RelayUnavailableError, not retried."""
    handle = RelayClient(f"redis://127.0.0.1:{redis_server.port}/99999", session_id="refused")
    calls: list[tuple[str, Callable[[], object]]] = [
        ("hosted()", handle.hosted),
        ("receive(2)", lambda: handle.receive(2)),
        ("receive_event(2)", lambda: handle.receive_event(2)),
        ("wait_ack('m-1', 2)", lambda: handle.wait_ack("m-1", 2)),  # the event pump's read
    ]
    for label, call in calls:
        error = _raises_at_once(call, "Redis refused the call", "DB index is out of range")
        assert error.message_id is None, label
    error = _raises_at_once(handle.start_session, "Redis refused the call", "DB index")
    assert error.message_id, "a send's error carries its message id"
    error = _raises_at_once(lambda: handle.send_text("hi", message_id="m-1"), "refused")
    assert error.message_id == "m-1"
    handle.close()


def test_refused_credentials_are_typed_at_once(redis_server: RedisProcess) -> None:
    """A wrong or missing password (or user) raises at once, not after redis_retry."""
    port = redis_server.port
    admin = redis.Redis(port=port)
    try:
        admin.config_set("requirepass", "right-pw")
    finally:
        admin.close()
    urls = {
        "wrong password": f"redis://:wrong-pw@127.0.0.1:{port}/0",
        "no password": f"redis://127.0.0.1:{port}/0",
        "unknown user": f"redis://nobody:wrong-pw@127.0.0.1:{port}/0",
    }
    for label, url in urls.items():
        handle = RelayClient(url, session_id="pw")
        calls: list[Callable[[], object]] = [
            handle.hosted,
            handle.start_session,
            functools.partial(handle.wait_ack, "m-1", 2),  # the event pump's read
        ]
        for call in calls:
            error = _raises_at_once(call, "Redis refused the credentials")
            assert "wrong-pw" not in str(error) and "right-pw" not in str(error), label
        handle.close()
    right = RelayClient(f"redis://:right-pw@127.0.0.1:{port}/0", session_id="pw")
    assert right.hosted() is False
    right.close()


# ------------------------------------------------------------ 6: the hosts


def test_no_live_host_is_told_apart_from_full_hosts(
    redis_server: RedisProcess, avatar_server: ReferenceServer
) -> None:
    url = redis_server.url
    with pytest.raises(HostsFullError) as info:
        RelayClient(url, session_id="lone").start_session()
    message = str(info.value)
    assert "no live session host under the prefix 'avatar-im'" in message
    assert "--prefix" in message and "start more hosts" not in message
    r = redis.Redis.from_url(url, decode_responses=True)
    try:
        with hosts(url, avatar_server, 2, prefix="other", max_sessions=1):
            with pytest.raises(HostsFullError) as info:  # the hosts are under another prefix
                RelayClient(url, session_id="lone").start_session()
            assert "no live session host under the prefix 'avatar-im'" in str(info.value)
            started = [_started_under(url, f"s{k}", "other") for k in range(2)]
            assert wait_until(
                lambda: sum(int(v) for v in r.hgetall("other:room").values()) == 0, TIMEOUT
            )
            with pytest.raises(HostsFullError) as info:
                RelayClient(url, session_id="third", prefix="other").start_session()
            message = str(info.value)
            assert "all 2 live session hosts under the prefix 'other' are full" in message
            assert "start more hosts" in message
            for handle in started:
                handle.close()
    finally:
        r.close()


def _started_under(url: str, session_id: str, prefix: str) -> RelayClient:
    handle = RelayClient(url, session_id=session_id, prefix=prefix)
    handle.start_session()
    handle.wait_session_ready(TIMEOUT)
    return handle


def test_expired_hosts_leave_the_room_hash(
    redis_server: RedisProcess, avatar_server: ReferenceServer
) -> None:
    """Hosts whose heartbeat expired (one id per restart) leave the room hash with the set."""
    url = redis_server.url
    keys = relay.Keys()
    r = redis.Redis.from_url(url, decode_responses=True)
    try:
        r.zadd(keys.hosts, {"ghost-1": 1, "ghost-2": 2})  # heartbeats expired long ago
        r.hset(keys.room, mapping={"ghost-1": 5, "ghost-2": 5})
        with pytest.raises(HostsFullError) as info:
            RelayClient(url, session_id="ghosts").start_session()
        assert "no live session host" in str(info.value)
        assert r.zcard(keys.hosts) == 0
        assert r.hgetall(keys.room) == {}
        with hosts(url, avatar_server, 1):
            r.zadd(keys.hosts, {"ghost-3": 3})
            r.hset(keys.room, "ghost-3", 5)
            handle = _started(url, "ghosts")
            assert r.hkeys(keys.room) == ["h0"], "the live host's room stays, the dead one's goes"
            assert r.zrange(keys.hosts, 0, -1) == ["h0"]
            handle.close()
    finally:
        r.close()


# ------------------------------------------------------- 7: sizes and ids


def test_sizes_are_checked_in_utf8_bytes_at_the_call(
    redis_server: RedisProcess, avatar_server: ReferenceServer
) -> None:
    """What the host's client would refuse (its frame over the limit) is refused at the call."""
    url = redis_server.url
    idle = RelayClient(url, session_id="big")  # the default limit, 16 MiB; no Redis needed
    with pytest.raises(InvalidArgumentError) as info:
        idle.send_text("\u4e2d" * 6_000_000)  # 6 M characters, 18 MB in UTF-8
    assert "16777216-byte limit" in str(info.value)
    limit = 100_000
    options = {"client_options": {"max_message_size": limit}}
    with hosts(url, avatar_server, 1, **options):
        handle = RelayClient(url, session_id="size", max_message_size=limit)
        handle.start_session()
        handle.wait_session_ready(TIMEOUT)
        over = [
            ("3-byte characters", lambda: handle.send_text("\u4e2d" * (limit // 3 + 100))),
            ("4-byte characters", lambda: handle.send_text("\U0001f600" * (limit // 4 + 100))),
            ("the envelope", lambda: handle.send_text("y" * (limit - 100))),
            ("ask", lambda: handle.ask("\u4e2d" * (limit // 3 + 100), timeout=1)),
            ("audio", lambda: handle.send_audio(base64="AAAA" * (limit // 4))),
        ]
        for label, call in over:
            with pytest.raises(InvalidArgumentError) as info:
                call()
            assert not isinstance(info.value, InvalidArgumentTypeError), label
            assert f"over the {limit}-byte limit" in str(info.value), label
        # Just under the relay's limit: the host's client takes it, the service acks it.
        near = "y" * (limit - relay.ENVELOPE_ALLOWANCE - 100)
        handle.wait_ack(handle.send_text(near), TIMEOUT)
        wide = "\u4e2d" * ((limit - relay.ENVELOPE_ALLOWANCE - 100) // 3)
        handle.wait_ack(handle.send_text(wide), TIMEOUT)
        handle.close()


BAD_MESSAGE_IDS: list[tuple[str, object, type[Exception]]] = [
    ("int", 5, InvalidArgumentTypeError),
    ("bytes", b"m-1", InvalidArgumentTypeError),
    ("empty", "", InvalidArgumentError),
    ("newline", "a\nb", InvalidArgumentError),
    ("tab", "a\tb", InvalidArgumentError),
    ("nul", "a\x00b", InvalidArgumentError),
    ("surrogate", "a\ud800", InvalidArgumentError),
    ("201 characters", "x" * 201, InvalidArgumentError),
    ("100000 characters", "x" * 100_000, InvalidArgumentError),
]


@pytest.mark.parametrize("send", ["send_text", "send_audio"])
@pytest.mark.parametrize(
    ("message_id", "error"),
    [(value, error) for _, value, error in BAD_MESSAGE_IDS],
    ids=[label for label, _, _ in BAD_MESSAGE_IDS],
)
def test_message_ids_are_checked_at_the_call(
    redis_server: RedisProcess, send: str, message_id: object, error: type[Exception]
) -> None:
    handle = RelayClient(redis_server.url, session_id="ids")
    payload: object = "hi" if send == "send_text" else b"\0\0"
    with pytest.raises(error) as info:
        getattr(handle, send)(payload, message_id=message_id)
    if error is InvalidArgumentError:
        assert not isinstance(info.value, InvalidArgumentTypeError)
    assert len(str(info.value)) < 300, "the error does not repeat a long id whole"
    handle.close()


def test_the_longest_message_id_goes_through(
    redis_server: RedisProcess, avatar_server: ReferenceServer
) -> None:
    with hosts(redis_server.url, avatar_server, 1):
        handle = _started(redis_server.url, "long-id")
        longest = "m-" + "x" * (relay.MAX_MESSAGE_ID - 2)
        assert handle.send_text("hi", message_id=longest) == longest
        handle.wait_ack(longest, TIMEOUT)
        handle.close()


# ------------------------------------------------------------ 8: closed


def test_a_closed_handle_answers_nothing_it_has_cached(
    redis_server: RedisProcess, avatar_server: ReferenceServer
) -> None:
    """After close(), wait_session_ready() and wait_ack() raise, even with the answer kept."""
    with hosts(redis_server.url, avatar_server, 1):
        handle = _started(redis_server.url, "closed")
        sent = handle.send_text("hi")
        handle.wait_ack(sent, TIMEOUT)
        handle.close()
        with pytest.raises(ClientClosedError):
            handle.wait_session_ready(1)
        with pytest.raises(ClientClosedError):
            handle.wait_ack(sent, 1)


def test_garbage_in_the_event_stream_is_skipped_and_counted(
    redis_server: RedisProcess, avatar_server: ReferenceServer
) -> None:
    """Entries no host writes (not JSON, not objects, no kind) never reach a caller."""
    url = redis_server.url
    r = redis.Redis.from_url(url, decode_responses=True)
    ev = "avatar-im:s:junk:ev"
    with hosts(url, avatar_server, 1):
        avatar = _started(url, "junk")
        pending = avatar.send_text("first")  # its reply comes after the garbage
        for fields in (
            {"k": "a", "id": pending, "err": "{bad"},
            {"k": "a", "id": "Y", "x": "not json"},
            {"k": "m", "f": "reply", "e": "<<garbage>>"},
            {"k": "m", "f": "reply", "e": "[1, 2]"},
            {"k": "m", "f": "reply", "a": "Z", "p": "r", "e": "[]"},
            {"k": "m", "f": "reply", "a": "Z", "p": "r", "e": '{"type": "startResult"}'},
            {"k": "v", "e": "3"},
            {"nothing": "here"},
        ):
            r.xadd(ev, fields)
        avatar.wait_ack(pending, TIMEOUT)
        assert avatar.ask("second", timeout=TIMEOUT).text == "You said: second"
        fresh = RelayClient(url, session_id="junk")
        assert fresh.receive(TIMEOUT, family="reply").text == "You said: first"
        assert fresh.garbage >= 7 and avatar.garbage >= 7
        fresh.close()
        avatar.close()
    r.close()


def test_admission_takes_a_place_of_a_host_and_garbage_counts_block_nothing(
    redis_server: RedisProcess, avatar_server: ReferenceServer
) -> None:
    """Announcing sessions faster than heartbeats: no more admitted than the hosts' room."""
    from avatar_im.relay import HostsFullError

    url = redis_server.url
    r = redis.Redis.from_url(url, decode_responses=True)
    with hosts(url, avatar_server, 1, max_sessions=3, lease_ttl=30.0):
        admitted = refused = 0
        for n in range(20):  # within one heartbeat (every 10 s here)
            try:
                RelayClient(url, session_id=f"flood-{n}").start_session()
                admitted += 1
            except HostsFullError:
                refused += 1
        assert admitted == 3 and refused == 17
        # Garbage in the room hash (another host's field) and in a session's floor.
        r.hset("avatar-im:room", "h0", "lots")
        r.set("avatar-im:s:flood-0:floor", "abc")
        with pytest.raises(HostsFullError):
            RelayClient(url, session_id="one-more").start_session()
        first = RelayClient(url, session_id="flood-0")
        first.wait_ack(first.send_text("hello"), TIMEOUT * 2)
        assert first.receive(TIMEOUT * 2, family="reply").text == "You said: hello"
        first.close()
    r.close()
