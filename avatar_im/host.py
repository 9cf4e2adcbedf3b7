"""The session host: holds avatar sessions' WebSockets for web workers, over Redis.

Run one or more anywhere that reaches Redis and the avatar service::

    avatar-im host --redis redis://127.0.0.1:6379/0 --url wss://...  # or python -m avatar_im.host

or embed one (:class:`SessionHost`).  Web workers use
:class:`avatar_im.relay.RelayClient` (see there for the keys).  What a host does:

* it takes new sessions from the control stream through the consumer group
  ``hosts`` (``XREADGROUP``), as long as it holds fewer than *max_sessions*;
  the session's control entry stays pending in the group while it is held;
* it holds a session only with its lease (``<prefix>:s:<id>:lease``, a key
  with an expiry of *lease_ttl* seconds), renewed every third of it together
  with the control entry (``XCLAIM ... JUSTID``, which resets its idle time);
  a host that cannot renew in time stops sending for that session;
* it reads each held session's command stream (``XREADGROUP``) and sends each
  command with the message id the web worker made, through one
  :class:`~avatar_im.AvatarIM` per session; an entry is acknowledged in Redis
  (``XACK``, then ``XDEL``) only once the service acknowledged the message,
  in the same transaction that records the outcome in the event stream;
* when a host dies, its control entries go idle: another host claims them
  (``XAUTOCLAIM`` with a minimum idle time of *lease_ttl*), takes the lease,
  connects with the same session id, starts the session again, claims the
  dead host's pending commands and replays them in order; the service drops
  the ids it had processed already, so each is processed once;
* what the service sends goes to the session's event stream, capped
  (``XADD ... MAXLEN ~`` *events_maxlen*); a reply is marked as the answer of
  the oldest asked text still waiting, as :meth:`AvatarIM.ask` takes it;
* a session with no command for *idle_timeout* seconds is stopped and let go
  (its client, or the :class:`~avatar_im.sessions.AvatarSession` the factory
  made, is closed: that stops the cloud instance too).

Threads: a reader (``avatar-im-host-reader-N``: new sessions and commands), a
keeper (``avatar-im-host-keeper-N``: leases, heartbeat, claims) and one lane
per session (``avatar-im-host-lane-N``: sends its commands in order, waits for
the acks, publishes the outcomes), beside each client's own threads.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import math
import os
import secrets
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import attrs

from .client import AvatarIM
from .exceptions import (
    AckError,
    AckTimeout,
    AvatarIMError,
    ClientClosedError,
    InterruptError,
    InterruptTimeout,
    InvalidArgumentError,
    MessageCancelledError,
    OutboxFullError,
    SessionNotStartedError,
    SessionReadyTimeout,
    SessionStartError,
    UnknownMessageError,
)
from .ids import MessageIdFactory, RecentIds
from .messages import BroadcastEnd, BroadcastStart, Message
from .relay import DEFAULT_PREFIX, GROUP, Keys, connect, redis_down_errors, stream_id

__all__ = ["PresetIds", "SessionHost", "add_arguments", "main", "run"]

logger = logging.getLogger(__name__)

_thread_ids = itertools.count(1)

#: How many texts a session's host remembers as waiting for their reply.
MAX_WAITING_REPLIES = 10_000

#: What a factory returns: an AvatarIM, or an object with ``.client`` and ``close()``.
ClientFactory = Callable[[str, "PresetIds"], Any]

# Renew the leases of the sessions held (and re-take one no other host took meanwhile),
# reset their control entries' idle time, and beat the heart.  KEYS: ctl, hosts, room,
# then one lease per session; ARGV: host id, ttl ms, room, then the control entry ids.
_RENEW = """
local me, ttl = ARGV[1], tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[2], now + 3 * ttl, me)
redis.call('HSET', KEYS[3], me, ARGV[3])
local held = {}
for i = 4, #KEYS do
  local owner = redis.call('GET', KEYS[i])
  if owner == me or not owner then
    redis.call('SET', KEYS[i], me, 'PX', ttl)
    redis.call('XCLAIM', KEYS[1], 'hosts', me, 0, ARGV[i], 'JUSTID')
    held[#held + 1] = 1
  else
    held[#held + 1] = 0
  end
end
return held
"""

# Let a session go, if this host holds it and its command stream is empty (no command may
# come in between: the relay's enqueue needs the meta key this deletes).
_END = """
if redis.call('GET', KEYS[4]) ~= ARGV[1] then return 0 end
if redis.call('XLEN', KEYS[1]) > 0 then return 0 end
redis.call('DEL', KEYS[2], KEYS[4])
redis.call('XACK', KEYS[3], 'hosts', ARGV[2])
redis.call('XDEL', KEYS[3], ARGV[2])
return 1
"""


class PresetIds(MessageIdFactory):
    """An id factory whose next id, on one thread, is the one given to :meth:`use`.

    The host sends each command with the message id its web worker made:
    ``with ids.use(message_id): client.send_text(text)``.  Other ids (the
    client's own restarts, on its reader thread) are fresh ones.
    """

    def __init__(self) -> None:
        super().__init__()
        self._local = threading.local()

    @contextlib.contextmanager
    def use(self, message_id: str) -> Iterator[None]:
        self._local.next = message_id
        try:
            yield
        finally:
            self._local.next = None

    def new(self, now_ms: int) -> str:
        preset = getattr(self._local, "next", None)
        if preset is not None:
            self._local.next = None
            return str(preset)
        return super().new(now_ms)


class _LaneFailed(Exception):
    """The lane's client closed for good: the lane gives the session up."""


@attrs.define(eq=False)
class _Lane:
    """One held session: its client, its commands in order, what waits for an ack."""

    session_id: str
    ctl_id: str
    ids: PresetIds = attrs.field(factory=PresetIds)
    entry: Any = None  # what the factory made (an AvatarIM, or an AvatarSession)
    client: AvatarIM | None = None
    # Guards queue, asks, await_start and sentences; cond is notified when commands come.
    lock: threading.Lock = attrs.field(factory=threading.Lock)
    cond: threading.Condition = attrs.field(init=False)
    queue: deque[tuple[str, dict[str, str]]] = attrs.field(factory=deque)
    inflight: deque[tuple[str, str, str]] = attrs.field(factory=deque)  # entry, mid, op
    done: list[tuple[str, str, Any, Any, str]] = attrs.field(factory=list)
    # The texts sent whose reply has not come: (mid, deadline, asked), oldest first.
    asks: deque[tuple[str, float, bool]] = attrs.field(factory=deque)
    await_start: deque[tuple[str, float]] = attrs.field(factory=deque)
    sentences: dict[str | None, str] = attrs.field(factory=dict)
    sent: RecentIds = attrs.field(factory=lambda: RecentIds(8192))
    state: str = "new"
    last_used: float = attrs.field(factory=time.monotonic)
    valid_until: float = 0.0  # monotonic: the lease is ours until then (half its ttl)
    lost: bool = False  # another host holds the lease now
    # What the service sent while the lease was not confirmed (a stalled host): published
    # once a renewal confirms it, dropped if the lease was lost (the new owner publishes).
    held: deque[dict[str, str]] = attrs.field(factory=lambda: deque(maxlen=1024))
    reading: bool = False  # the reader reads its command stream
    thread: threading.Thread | None = None

    def __attrs_post_init__(self) -> None:
        self.cond = threading.Condition(self.lock)


class SessionHost:
    """Holds avatar sessions for :class:`~avatar_im.relay.RelayClient` handles, over Redis.

    ::

        with SessionHost("redis://127.0.0.1:6379/0", url=server.url) as host:
            ...  # web workers use RelayClient("redis://...", session_id=...)

    *client_factory(session_id, ids)* makes a session's client: an
    :class:`~avatar_im.AvatarIM` made with ``id_factory=ids`` (so that each
    command goes with its web worker's message id), or an object with that
    client as ``.client`` and a ``close()`` (an
    :class:`~avatar_im.sessions.AvatarSession` made with
    ``open_session(api, user_id=session_id, id_factory=ids)`` stops its cloud
    instance when the host lets the session go).  By default an
    :class:`~avatar_im.AvatarIM` to *url* with *token*, *app_id*, *tenant_id*
    and *client_options*.

    :param max_sessions: the most sessions this host holds at once.
    :param lease_ttl: seconds a session's lease lasts unrenewed: the bound on
        how long a dead host's sessions wait for another host (plus a claim
        round, ``lease_ttl / 2``, and the reconnect).
    :param idle_timeout: seconds without a command after which a session is stopped.
    :param events_maxlen: about how many entries each session's event stream keeps.
    """

    def __init__(
        self,
        redis_url: str,
        *,
        url: str | None = None,
        token: str = "dev-token",
        app_id: str = "demo-app",
        tenant_id: str = "demo-tenant",
        client_factory: ClientFactory | None = None,
        client_options: Mapping[str, Any] | None = None,
        max_sessions: int = 100,
        lease_ttl: float = 10.0,
        idle_timeout: float = 600.0,
        events_maxlen: int = 10_000,
        ready_timeout: float = 30.0,
        reply_window: float = 10.0,
        prefix: str = DEFAULT_PREFIX,
        host_id: str | None = None,
    ) -> None:
        if client_factory is None and not url:
            raise InvalidArgumentError("pass url=... (the avatar service), or client_factory=...")
        if isinstance(max_sessions, bool) or not isinstance(max_sessions, int) or max_sessions < 1:
            raise InvalidArgumentError(f"max_sessions must be an int >= 1, got {max_sessions!r}")
        for name, value in (
            ("lease_ttl", lease_ttl),
            ("idle_timeout", idle_timeout),
            ("ready_timeout", ready_timeout),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise InvalidArgumentError(f"{name} must be a number > 0, got {value!r}")
        if lease_ttl < 0.3:
            raise InvalidArgumentError("lease_ttl must be at least 0.3 s")
        self._redis_url = redis_url
        self._url = url
        self._token = token
        self._app_id = app_id
        self._tenant_id = tenant_id
        self._factory = client_factory
        self._client_options = dict(client_options or {})
        self.max_sessions = max_sessions
        self.lease_ttl = float(lease_ttl)
        self.idle_timeout = float(idle_timeout)
        self.events_maxlen = events_maxlen
        self.ready_timeout = float(ready_timeout)
        self.reply_window = float(reply_window)
        self._keys = Keys(prefix)
        self.host_id = host_id or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self._key_ttl = int(max(3600.0, 2 * self.idle_timeout))
        # Guards _lanes, _waiting and the counters.
        self._lock = threading.Lock()
        self._lanes: dict[str, _Lane] = {}
        # Control entries claimed whose lease another host still held: retried by the keeper.
        self._waiting: dict[str, tuple[str, float]] = {}  # ctl id -> (session id, give up at)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.taken_over = 0  #: sessions taken from another host
        self.commands = 0  #: commands sent to the service
        self.published = 0  #: entries written to event streams
        self.publish_dropped = 0  #: service messages dropped: Redis was down too long

    # ------------------------------------------------------------ lifecycle

    def start(self) -> SessionHost:
        """Start the reader and the keeper; returns the host."""
        r = self._r()
        with contextlib.suppress(Exception):  # BUSYGROUP: it exists
            r.xgroup_create(self._keys.ctl, GROUP, id="0", mkstream=True)
        self._renew()  # the heartbeat, so that relays see the room at once
        for name, target in (("reader", self._read), ("keeper", self._keep)):
            thread = threading.Thread(
                target=target, name=f"avatar-im-host-{name}-{next(_thread_ids)}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        logger.info("host %s: up (max %d sessions)", self.host_id, self.max_sessions)
        return self

    def close(self, timeout: float = 5.0) -> None:
        """Stop: let every session go unacknowledged where not acked (another host goes on)."""
        self._stop.set()
        with self._lock:
            lanes = list(self._lanes.values())
        for lane in lanes:
            with lane.cond:
                lane.cond.notify_all()
        deadline = time.monotonic() + timeout
        for thread in [*self._threads, *(lane.thread for lane in lanes if lane.thread)]:
            thread.join(max(0.0, deadline - time.monotonic()))
        with contextlib.suppress(Exception):
            r = self._r()
            r.zrem(self._keys.hosts, self.host_id)
            r.hdel(self._keys.room, self.host_id)

    def __enter__(self) -> SessionHost:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def sessions(self) -> list[str]:
        """The ids of the sessions this host holds now."""
        with self._lock:
            return sorted(self._lanes)

    @property
    def threads(self) -> list[threading.Thread]:
        """The host's own live threads (not its clients')."""
        with self._lock:
            lanes = [lane.thread for lane in self._lanes.values() if lane.thread]
        return [t for t in [*self._threads, *lanes] if t.is_alive()]

    def _r(self) -> Any:
        return connect(self._redis_url)

    def _room(self) -> int:
        with self._lock:
            return self.max_sessions - len(self._lanes)

    def _pause(self, seconds: float) -> bool:
        """Sleep unless stopping; True when stopping."""
        return self._stop.wait(seconds)

    # --------------------------------------------------------------- reader

    def _read(self) -> None:
        down = redis_down_errors()
        keys = self._keys
        while not self._stop.is_set():
            try:
                r = self._r()
                room = self._room()
                with self._lock:
                    lanes = [lane for lane in self._lanes.values() if lane.reading]
                if room > 0:
                    block = None if lanes else 200
                    got = r.xreadgroup(
                        GROUP, self.host_id, {keys.ctl: ">"}, count=room, block=block
                    )
                    for _, entries in got or []:
                        for entry_id, fields in entries:
                            if fields is not None:
                                self._adopt(entry_id, fields.get("sid", ""))
                now = time.monotonic()
                streams = {
                    keys.cmd(lane.session_id): ">" for lane in lanes if lane.valid_until > now
                }
                if not streams:
                    if room <= 0 or lanes:
                        self._pause(0.05)
                    continue
                by_key = {keys.cmd(lane.session_id): lane for lane in lanes}
                try:
                    got = r.xreadgroup(GROUP, self.host_id, streams, count=200, block=100)
                except down:
                    raise
                except Exception as exc:
                    if "NOGROUP" not in str(exc):
                        raise
                    for key in streams:
                        with contextlib.suppress(Exception):
                            r.xgroup_create(key, GROUP, id="0", mkstream=True)
                    continue
                for key, entries in got or []:
                    lane = by_key.get(key)
                    if lane is None:
                        continue
                    with lane.cond:
                        lane.queue.extend((i, f) for i, f in entries if f is not None)
                        lane.cond.notify_all()
            except down as exc:
                logger.warning("host %s: Redis unreachable (%s); retrying", self.host_id, exc)
                self._pause(0.2)
            except Exception:
                logger.exception("host %s: the reader failed; retrying", self.host_id)
                self._pause(0.5)

    # --------------------------------------------------------------- keeper

    def _keep(self) -> None:
        down = redis_down_errors()
        renew_every = self.lease_ttl / 3
        claim_every = self.lease_ttl / 2
        next_claim = time.monotonic()
        while not self._pause(renew_every):
            try:
                self._renew()
                if time.monotonic() >= next_claim:
                    next_claim = time.monotonic() + claim_every
                    self._claim_idle()
            except down as exc:
                logger.warning("host %s: cannot renew leases (%s)", self.host_id, exc)
            except Exception:
                logger.exception("host %s: the keeper failed; retrying", self.host_id)

    def _renew(self) -> None:
        with self._lock:
            lanes = [lane for lane in self._lanes.values() if not lane.lost]
        keys = self._keys
        began = time.monotonic()
        held = self._r().eval(
            _RENEW,
            3 + len(lanes),
            keys.ctl,
            keys.hosts,
            keys.room,
            *(keys.lease(lane.session_id) for lane in lanes),
            self.host_id,
            int(self.lease_ttl * 1000),
            self._room(),
            *(lane.ctl_id for lane in lanes),
        )
        for lane, ok in zip(lanes, held or [], strict=False):
            if ok:
                with lane.lock:
                    lane.valid_until = began + self.lease_ttl / 2
                    waiting = list(lane.held)
                    lane.held.clear()
                for fields in waiting:
                    self._publish(lane, fields)
            else:
                logger.warning("host %s: lost the lease of %s", self.host_id, lane.session_id)
                with lane.cond:
                    lane.lost = True
                    lane.held.clear()  # the new owner's client gets and publishes them
                    lane.cond.notify_all()

    def _claim_idle(self) -> None:
        """Take the sessions of hosts that stopped renewing (their control entries went idle)."""
        r = self._r()
        now = time.monotonic()
        with self._lock:
            waiting = dict(self._waiting)
        for ctl_id, (session_id, give_up) in waiting.items():
            with self._lock:
                self._waiting.pop(ctl_id, None)
            if now < give_up:
                self._adopt(ctl_id, session_id)
        room = self._room()
        if room <= 0:
            return
        start = "0-0"
        for _ in range(10):
            got = r.xautoclaim(
                self._keys.ctl,
                GROUP,
                self.host_id,
                int(self.lease_ttl * 1000),
                start_id=start,
                count=room,
            )
            start, entries = got[0], got[1]
            for entry_id, fields in entries:
                if fields is not None:
                    logger.info("host %s: claimed idle session %s", self.host_id, fields.get("sid"))
                    self._adopt(entry_id, fields.get("sid", ""), takeover=True)
            room = self._room()
            if start == "0-0" or room <= 0:
                break

    def _adopt(self, ctl_id: str, session_id: str, *, takeover: bool = False) -> None:
        """Hold *session_id* (its control entry *ctl_id* is pending to this host now)."""
        r = self._r()
        keys = self._keys
        with self._lock:
            lane = self._lanes.get(session_id)
        if lane is not None:
            if lane.ctl_id != ctl_id:  # a stale entry of an earlier hosting
                r.xack(keys.ctl, GROUP, ctl_id)
                r.xdel(keys.ctl, ctl_id)
            return
        meta = r.hgetall(keys.meta(session_id))
        if not session_id or meta.get("ctl") != ctl_id:  # ended, or a stale entry
            r.xack(keys.ctl, GROUP, ctl_id)
            r.xdel(keys.ctl, ctl_id)
            return
        lease = keys.lease(session_id)
        ttl_ms = int(self.lease_ttl * 1000)
        began = time.monotonic()
        if not r.set(lease, self.host_id, nx=True, px=ttl_ms) and r.get(lease) != self.host_id:
            with self._lock:  # another host holds it still: try again at the next round
                self._waiting[ctl_id] = (session_id, began + 3 * self.lease_ttl)
            return
        lane = _Lane(session_id=session_id, ctl_id=ctl_id, valid_until=began + self.lease_ttl / 2)
        lane.state = meta.get("state", "new")
        with self._lock:
            if self._stop.is_set() or len(self._lanes) >= self.max_sessions:
                r.delete(lease)
                return
            self._lanes[session_id] = lane
            if takeover:
                self.taken_over += 1
        lane.thread = threading.Thread(
            target=self._run_lane,
            args=(lane, meta),
            name=f"avatar-im-host-lane-{next(_thread_ids)}",
            daemon=True,
        )
        lane.thread.start()

    # ----------------------------------------------------------------- lanes

    def _make_client(self, lane: _Lane) -> None:
        if self._factory is not None:
            entry = self._factory(lane.session_id, lane.ids)
        else:
            assert self._url is not None
            options: dict[str, Any] = {"receive_buffer": 64, **self._client_options}
            entry = AvatarIM(
                token=self._token,
                app_id=self._app_id,
                tenant_id=self._tenant_id,
                session_id=lane.session_id,
                url=self._url,
                id_factory=lane.ids,
                **options,
            )
        client = getattr(entry, "client", entry)
        if not isinstance(client, AvatarIM):
            raise InvalidArgumentError("client_factory must return an AvatarIM or have .client")
        lane.entry, lane.client = entry, client
        client.on("message", lambda message: self._on_message(lane, message))
        client.on("event", lambda event: self._publish(lane, {"k": "v", "e": _json(event.raw)}))

    def _run_lane(self, lane: _Lane, meta: dict[str, str]) -> None:
        ended = False
        try:
            self._open_lane(lane, meta)
            ended = self._lane_loop(lane)
        except _LaneFailed as exc:
            logger.warning("host %s: session %s failed: %s", self.host_id, lane.session_id, exc)
        except Exception:
            if not self._stop.is_set():
                logger.exception("host %s: session %s failed", self.host_id, lane.session_id)
        finally:
            with self._lock:
                self._lanes.pop(lane.session_id, None)
            self._close_entry(lane, stop=ended)
            if not ended and not lane.lost:
                with contextlib.suppress(Exception):  # another host may take it at once
                    r = self._r()
                    if r.get(self._keys.lease(lane.session_id)) == self.host_id:
                        r.delete(self._keys.lease(lane.session_id))

    def _open_lane(self, lane: _Lane, meta: dict[str, str]) -> None:
        r = self._r()
        key = self._keys.cmd(lane.session_id)
        self._make_client(lane)
        pending: list[tuple[str, dict[str, str]]] = []
        start = "0-0"
        while True:  # the pending commands of the host that held it before: ours now
            got = r.xautoclaim(key, GROUP, self.host_id, 0, start_id=start, count=500)
            start = got[0]
            pending += [(i, f) for i, f in got[1] if f is not None]
            if start == "0-0":
                break
        pending.sort(key=lambda item: stream_id(item[0]))
        if pending:
            logger.info(
                "host %s: session %s: replaying %d command(s)",
                self.host_id,
                lane.session_id,
                len(pending),
            )
        first = pending[0][1].get("op") if pending else None
        if lane.state == "started" and first != "start":
            # It was started on the host before: start it again, with its options.
            options = json.loads(meta.get("options") or "{}")
            assert lane.client is not None
            lane.client.start_session(**options)
            self._wait_ready(lane)
        with lane.cond:
            lane.queue.extendleft(reversed(pending))
        lane.reading = True

    def _lane_loop(self, lane: _Lane) -> bool:
        """Run *lane* until it ends (True: let go cleanly), is lost or the host stops."""
        while not self._stop.is_set():
            if lane.lost:
                return False
            if lane.valid_until <= time.monotonic():  # the lease is not confirmed: wait
                self._pause(0.05)
                continue
            with lane.cond:
                command = lane.queue.popleft() if lane.queue else None
            if command is not None:
                self._execute(lane, *command)
                self._drain(lane, 0)
                if len(lane.done) >= 64:
                    self._flush(lane)
                continue
            self._drain(lane, 0.05 if lane.inflight else 0)
            self._flush(lane)
            _empty_inbox(lane.client)
            if lane.inflight:
                continue
            if (
                lane.state == "stopped" or time.monotonic() - lane.last_used > self.idle_timeout
            ) and self._end(lane):
                return True
            with lane.cond:
                if not lane.queue and not self._stop.is_set() and not lane.lost:
                    lane.cond.wait(0.2)
        return False

    def _execute(self, lane: _Lane, entry_id: str, fields: dict[str, str]) -> None:
        client = lane.client
        assert client is not None
        op = fields.get("op", "")
        mid = fields.get("mid", "")
        lane.last_used = time.monotonic()
        try:
            body = json.loads(fields.get("body") or "{}")
        except ValueError:
            body = None
        if not mid or not isinstance(body, dict):
            self._done(lane, entry_id, mid, {"type": "invalid", "detail": "a malformed command"})
            return
        if mid in lane.sent and op in ("text", "audio", "stop"):  # sent again after an error
            lane.inflight.append((entry_id, mid, op))
            return
        self.commands += 1
        try:
            if op == "start":
                with lane.ids.use(mid):
                    client.start_session(**(body.get("options") or {}))
                lane.sent.add(mid)
                result = self._wait_ready(lane)
                lane.state = "started"
                self._done(lane, entry_id, mid, None, {"result": dict(result.raw)})
            elif op == "text":
                ask = body.get("ask")
                window = self.reply_window if ask is None else float(ask) + 1.0
                with lane.lock:  # a reply cannot be filed before its text is
                    lane.asks.append((mid, time.monotonic() + window, ask is not None))
                    while len(lane.asks) > MAX_WAITING_REPLIES:
                        lane.asks.popleft()
                    try:
                        with lane.ids.use(mid):
                            client.send_text(str(body.get("text", "")))
                    except BaseException:
                        lane.asks.pop()
                        raise
                lane.sent.add(mid)
                lane.inflight.append((entry_id, mid, op))
            elif op == "audio":
                with lane.ids.use(mid):
                    client.send_audio(base64=str(body.get("b64", "")))
                lane.sent.add(mid)
                lane.inflight.append((entry_id, mid, op))
            elif op == "stop":
                with lane.ids.use(mid):
                    client.stop_session()
                lane.sent.add(mid)
                lane.inflight.append((entry_id, mid, op))
            elif op == "interrupt":
                self._interrupt(lane, entry_id, mid, body)
            else:
                self._done(lane, entry_id, mid, {"type": "invalid", "detail": f"op {op!r}"})
        except OutboxFullError:
            with lane.cond:  # the client's outbox is full: try again after some acks
                lane.queue.appendleft((entry_id, fields))
            self._drain(lane, 0.05)
        except SessionStartError as exc:
            self._done(lane, entry_id, mid, {"type": "start", "error": exc.error})
        except SessionNotStartedError as exc:
            self._done(lane, entry_id, mid, {"type": "not_started", "detail": str(exc)})
        except InvalidArgumentError as exc:
            self._done(lane, entry_id, mid, {"type": "invalid", "detail": str(exc)})
        except ClientClosedError as exc:
            raise _LaneFailed(f"{type(exc).__name__}: {exc}") from exc
        except AvatarIMError as exc:
            self._done(
                lane, entry_id, mid, {"type": "error", "detail": f"{type(exc).__name__}: {exc}"}
            )

    def _interrupt(self, lane: _Lane, entry_id: str, mid: str, body: dict[str, Any]) -> None:
        client = lane.client
        assert client is not None
        timeout = body.get("timeout")
        try:
            with lane.ids.use(mid):
                report = client.interrupt(
                    timeout=None if timeout is None else float(timeout),
                    include_text=bool(body.get("include_text")),
                    stop_streams=bool(body.get("stop_streams", True)),
                )
        except InterruptTimeout as exc:
            extra = {"report": _report_dict(exc.report)}
            self._done(lane, entry_id, mid, {"type": "interrupt_timeout"}, extra)
        except InterruptError as exc:
            extra = {"report": _report_dict(exc.report)}
            self._done(lane, entry_id, mid, {"type": "interrupt_error", "detail": str(exc)}, extra)
        else:
            self._done(lane, entry_id, mid, None, {"report": _report_dict(report)})

    def _wait_ready(self, lane: _Lane) -> Any:
        client = lane.client
        assert client is not None
        deadline = time.monotonic() + self.ready_timeout
        while True:
            try:
                return client.wait_session_ready(0.5)
            except SessionReadyTimeout:
                if self._stop.is_set() or lane.lost:
                    raise _LaneFailed("stopped while the session started") from None
                if time.monotonic() >= deadline:
                    raise SessionStartError(
                        f"no startResult within {self.ready_timeout}s", error="READY_TIMEOUT"
                    ) from None
            except ClientClosedError as exc:
                raise _LaneFailed(f"{type(exc).__name__}: {exc}") from exc

    def _drain(self, lane: _Lane, wait: float) -> None:
        """Move the commands the service acknowledged (in order) to the done list."""
        client = lane.client
        assert client is not None
        while lane.inflight:
            entry_id, mid, op = lane.inflight[0]
            error: Any = None
            try:
                client.wait_ack(mid, wait)
            except AckTimeout:
                return
            except AckError as exc:
                error = {"type": "ack", "error": exc.error}
            except MessageCancelledError:
                error = {"type": "cancelled"}
            except UnknownMessageError:
                error = None  # acked so long ago that the client forgot: delivered
            except ClientClosedError as exc:
                raise _LaneFailed(f"{type(exc).__name__}: {exc}") from exc
            lane.inflight.popleft()
            if op == "stop" and error is None:
                lane.state = "stopped"
            self._done(lane, entry_id, mid, error)
            wait = 0

    def _done(self, lane: _Lane, entry_id: str, mid: str, error: Any, extra: Any = None) -> None:
        lane.done.append((entry_id, mid, error, extra, lane.state))

    def _flush(self, lane: _Lane) -> None:
        """Record the outcomes and XACK their entries, in one transaction; retry while down."""
        if not lane.done:
            return
        done, lane.done = lane.done, []
        keys = self._keys
        sid = lane.session_id
        cmd, ev, meta = keys.cmd(sid), keys.ev(sid), keys.meta(sid)
        down = redis_down_errors()
        while True:
            try:
                pipe = self._r().pipeline(transaction=True)
                for _, mid, error, extra, _ in done:
                    fields = {"k": "a", "id": mid}
                    if error is not None:
                        fields["err"] = _json(error)
                    if extra is not None:
                        fields["x"] = _json(extra)
                    pipe.xadd(ev, fields, maxlen=self.events_maxlen, approximate=True)
                ids = [entry_id for entry_id, *_ in done]
                pipe.xack(cmd, GROUP, *ids)
                pipe.xdel(cmd, *ids)
                pipe.hset(meta, "state", done[-1][4])
                for key in (ev, meta, cmd):
                    pipe.expire(key, self._key_ttl)
                pipe.execute()
                self.published += len(done)
                return
            except down as exc:
                if self._stop.is_set() or lane.lost:
                    return  # unacked: the next host replays them (the service drops repeats)
                logger.warning("host %s: cannot record acks (%s); retrying", self.host_id, exc)
                self._pause(0.2)

    def _end(self, lane: _Lane) -> bool:
        """Let the session go if no command waits; True when it was let go."""
        keys = self._keys
        sid = lane.session_id
        try:
            ended = self._r().eval(
                _END,
                4,
                keys.cmd(sid),
                keys.meta(sid),
                keys.ctl,
                keys.lease(sid),
                self.host_id,
                lane.ctl_id,
            )
        except redis_down_errors():
            return False
        if ended:
            logger.info("host %s: session %s let go (%s)", self.host_id, sid, lane.state)
        return bool(ended)

    def _close_entry(self, lane: _Lane, *, stop: bool) -> None:
        client, entry = lane.client, lane.entry
        if client is None:
            return
        if stop and lane.state != "stopped" and client.session_ready.is_set():
            with contextlib.suppress(AvatarIMError):  # idle: stop it, as the registry does
                client.stop_session()
                client.flush(2.0)
        try:
            entry.close()
        except Exception:
            logger.exception("host %s: closing session %s failed", self.host_id, lane.session_id)

    # ------------------------------------------------------------ publishing

    def _on_message(self, lane: _Lane, message: Message) -> None:
        """On the client's callback thread: mark answers, publish to the event stream."""
        fields = {"k": "m", "f": message.family, "e": _json(message.raw)}
        now = time.monotonic()
        with lane.lock:
            if message.family == "reply":
                while lane.asks and lane.asks[0][1] < now:
                    lane.asks.popleft()
                if lane.asks:
                    mid, _, asked = lane.asks.popleft()
                    if asked:
                        fields.update(a=mid, p="r")
                        lane.await_start.append((mid, now + 120.0))
                        while len(lane.await_start) > 256:
                            lane.await_start.popleft()
            elif isinstance(message, BroadcastStart):
                while lane.await_start and lane.await_start[0][1] < now:
                    lane.await_start.popleft()
                if lane.await_start:
                    mid = lane.await_start.popleft()[0]
                    fields.update(a=mid, p="s")
                    lane.sentences[message.sentence_id] = mid
                    while len(lane.sentences) > 256:
                        lane.sentences.pop(next(iter(lane.sentences)))
            elif isinstance(message, BroadcastEnd):
                ended = lane.sentences.pop(message.sentence_id, "")
                if ended:
                    fields.update(a=ended, p="x")
            if lane.lost:
                return  # another host owns the session: it publishes what the service sends
            if lane.valid_until <= now:
                # Not confirmed ours (this host stalled?): hold it until the next renewal
                # says whether we still own the session, so a zombie never duplicates.
                lane.held.append(fields)
                return
        self._publish(lane, fields)

    def _publish(self, lane: _Lane, fields: dict[str, str]) -> None:
        key = self._keys.ev(lane.session_id)
        down = redis_down_errors()
        deadline = time.monotonic() + 30.0
        while True:
            try:
                self._r().xadd(key, fields, maxlen=self.events_maxlen, approximate=True)
                self.published += 1
                return
            except down as exc:
                if self._stop.is_set() or time.monotonic() >= deadline:
                    self.publish_dropped += 1
                    logger.error(
                        "host %s: dropped a message of %s: Redis down (%s)",
                        self.host_id,
                        lane.session_id,
                        exc,
                    )
                    return
                self._pause(0.2)


def _empty_inbox(client: AvatarIM | None) -> None:
    """Drop what the client buffered for its pull API: the listeners published it already."""
    if client is None:
        return
    for pull in (client.receive, client.receive_event):
        for _ in range(10_000):
            try:
                pull(0)
            except AvatarIMError:  # ReceiveTimeout: empty; ClientClosedError: the lane sees it
                break


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=_plain)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, Message):
        return dict(value.raw)
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    return str(value)


def _report_dict(report: Any) -> dict[str, Any]:
    if not attrs.has(type(report)):
        return {}
    data = {field.name: getattr(report, field.name) for field in attrs.fields(type(report))}
    result = data.get("result")
    data["result"] = dict(result.raw) if isinstance(result, Message) else None
    return data


# ------------------------------------------------------------------- command


def _count(text: str) -> int:
    """An argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


def _seconds(text: str) -> float:
    """An argparse type: a finite number of seconds > 0 (at most a day)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value <= 86_400:
        raise argparse.ArgumentTypeError(f"must be seconds, 0 < s <= 86400, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``avatar-im host``'s options to *parser*."""
    env = os.environ
    parser.add_argument("--redis", required=True, help="Redis URL (redis://host:6379/0)")
    parser.add_argument(
        "--url",
        default=env.get("AVATAR_IM_URL"),
        help="the avatar service (default: AVATAR_IM_URL from the environment)",
    )
    parser.add_argument(
        "--token",
        default=None,
        help="IM token (default: AVATAR_IM_TOKEN from the environment, else dev-token)",
    )
    parser.add_argument(
        "--app-id",
        default=env.get("AVATAR_IM_APP_ID", "demo-app"),
        help="app id (AVATAR_IM_APP_ID)",
    )
    parser.add_argument(
        "--tenant-id",
        default=env.get("AVATAR_IM_TENANT_ID", "demo-tenant"),
        help="tenant id (AVATAR_IM_TENANT_ID)",
    )
    parser.add_argument("--max-sessions", type=_count, default=100, help="sessions held at most")
    parser.add_argument("--lease-ttl", type=_seconds, default=10.0, help="seconds a lease lasts")
    parser.add_argument(
        "--idle-timeout", type=_seconds, default=600.0, help="idle session stop (s)"
    )
    parser.add_argument("--events-maxlen", type=_count, default=10_000, help="event stream cap")
    parser.add_argument("--prefix", default=DEFAULT_PREFIX, help="the Redis keys' prefix")
    parser.add_argument("--host-id", help="this host's consumer name (default: host-pid-random)")


def run(args: argparse.Namespace) -> int:
    """Run a host until SIGTERM or SIGINT (``avatar-im host``)."""
    if not args.url:
        sys.stderr.write("avatar-im host: pass --url or set AVATAR_IM_URL\n")
        return 2
    host = SessionHost(
        args.redis,
        url=args.url,
        token=args.token or os.environ.get("AVATAR_IM_TOKEN") or "dev-token",
        app_id=args.app_id,
        tenant_id=args.tenant_id,
        max_sessions=args.max_sessions,
        lease_ttl=args.lease_ttl,
        idle_timeout=args.idle_timeout,
        events_maxlen=args.events_maxlen,
        prefix=args.prefix,
        host_id=args.host_id,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    host.start()
    shown = urlsplit(args.redis)._replace(
        netloc=urlsplit(args.redis).netloc.rpartition("@")[2]  # no credentials on the screen
    )
    sys.stdout.write(f"avatar-im host {host.host_id}: serving {urlunsplit(shown)}\n")
    sys.stdout.flush()
    try:
        while not stop.wait(1.0):
            pass
    finally:
        host.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m avatar_im.host --redis URL``."""
    parser = argparse.ArgumentParser(prog="avatar-im host", description=__doc__.split("\n")[0])
    add_arguments(parser)
    parser.add_argument("-v", "--verbose", action="count", default=0)
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose > 1 else logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return run(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
