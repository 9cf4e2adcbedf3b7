"""The session host: holds avatar sessions' WebSockets for web workers, over Redis.

Run one or more anywhere that reaches Redis and the avatar service::

    avatar-im host --redis redis://127.0.0.1:6379/0 --url ws://...  # or python -m avatar_im.host
    ALIBABA_CLOUD_ACCESS_KEY_ID=... avatar-im host --redis ...  # the cloud: see SessionHost

or embed one (:class:`SessionHost`).  Web workers use
:class:`avatar_im.relay.RelayClient` (see there for the keys).  What a host does:

* it takes new sessions from the control stream through the consumer group
  ``hosts`` (``XREADGROUP``), as long as it holds fewer than *max_sessions*;
  the session's control entry stays pending in the group while it is held;
* it holds a session only with its lease (``<prefix>:s:<id>:lease``, a key
  with an expiry of *lease_ttl* seconds), renewed every third of it together
  with the control entry (``XCLAIM ... JUSTID``, which resets its idle time);
  a host that cannot renew in time stops sending for that session, and every
  write it makes for a session (a message, an ack) is a script that checks the
  lease first: a host that stalled past its lease writes nothing once another
  holds it;
* it reads each held session's command stream (``XREADGROUP``) and sends each
  command with the message id the web worker made, through one
  :class:`~avatar_im.AvatarIM` per session; an entry is acknowledged in Redis
  (``XACK``, then ``XDEL``) only once the service acknowledged the message,
  in the same script that records the outcome in the event stream;
* when a host dies, its control entries go idle: another host claims them
  (``XAUTOCLAIM`` with a minimum idle time of *lease_ttl*), takes the lease,
  connects with the same session id, starts the session again, claims the
  dead host's pending commands and replays them in order; the service drops
  the ids it had processed already, so each is processed once;
* what the service sends goes to the session's event stream, capped
  (``XADD ... MAXLEN ~`` *events_maxlen*); a reply is marked as the answer of
  the oldest asked text still waiting, as :meth:`AvatarIM.ask` takes it;
* on the cloud path (*openapi*, or ``avatar-im host`` with
  ``ALIBABA_CLOUD_ACCESS_KEY_ID`` set), each session runs on an instance of its
  own (``StartInstance``); only the instance's session id goes to Redis, so a
  host that takes the session over reconnects to the same instance;
* a session with no command for *idle_timeout* seconds is stopped and let go:
  its client is closed (a factory's entry too) and, on the cloud path, its
  instance stopped (``StopInstance``).  A session started again
  while its host lets it go is held again, by that host once its last hosting
  has ended, or by another.

Threads: a reader (``avatar-im-host-reader-N``: new sessions and commands), a
keeper (``avatar-im-host-keeper-N``: leases, heartbeat, claims), a publisher
(``avatar-im-host-publisher-N``: writes what the services sent to the event
streams, in batches) and one lane per session (``avatar-im-host-lane-N``: sends
its commands in order, waits for the acks, records the outcomes; it sleeps
while its session is idle), beside each client's own threads.  The host has a
Redis pool of its own (its connections are named ``avatar-im-host:<host id>``),
closed by :meth:`SessionHost.close`.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import itertools
import json
import logging
import math
import os
import re
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
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import attrs

from .checks import require_callable, require_count, require_seconds, require_str, require_timeout
from .client import AvatarIM
from .exceptions import (
    AckError,
    AckTimeout,
    AvatarIMError,
    ClientClosedError,
    InterruptError,
    InterruptTimeout,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    MessageCancelledError,
    OutboxFullError,
    SessionNotStartedError,
    SessionReadyTimeout,
    SessionStartError,
    UnknownMessageError,
)
from .ids import MessageIdFactory, RecentIds
from .messages import BroadcastEnd, BroadcastStart, Message
from .relay import (
    DEFAULT_PREFIX,
    GROUP,
    Keys,
    RelayUnavailableError,
    check_redis_url,
    import_redis,
    redis_down_errors,
    stream_id,
)
from .sessions import OpenAPILike
from .urls import DEFAULT_URL, build_url

__all__ = ["PresetIds", "SessionHost", "add_arguments", "main", "run"]

logger = logging.getLogger(__name__)

_thread_ids = itertools.count(1)

#: How many texts a session's host remembers as waiting for their reply.
MAX_WAITING_REPLIES = 10_000
#: Seconds past its deadline a text still waits for a late reply (which then goes to
#: ``receive()``), unless a later text is acknowledged first: the client's ``LATE_WINDOW``.
LATE_WINDOW = 30.0
#: How many messages of one session may wait to be published (Redis down, or the lease
#: not confirmed); beyond, the oldest is dropped (counted in ``publish_dropped``).
MAX_UNPUBLISHED = 4096
#: How many of one session's messages go to Redis in one script call.
PUBLISH_BATCH = 256
#: The seconds a lane waits before it tries again to let its session go (after a command
#: came in meanwhile, or Redis did not answer).
END_RETRY = 0.5
#: The longest a sleeping lane sleeps without a reason to wake (s): a bound, not a tick.
LONGEST_SLEEP = 3600.0
#: The AvatarIM arguments a host sets itself: not accepted in *client_options*
#: (``receive_buffer``: the host's clients keep no pull buffer, see ``_make_client``).
HOST_SET_OPTIONS = frozenset(
    (
        "token",
        "app_id",
        "tenant_id",
        "session_id",
        "url",
        "id_factory",
        "auto_connect",
        "receive_buffer",
    )
)

#: What a factory returns: an AvatarIM, or an object with ``.client`` and ``close()``.
ClientFactory = Callable[[str, "PresetIds"], Any]

# Renew the leases of the sessions held (and re-take one no other host took meanwhile, if
# its hosting is still the one this host holds), reset their control entries' idle time,
# and beat the heart.  KEYS: ctl, hosts, room, then a lease and a meta per session; ARGV:
# host id, ttl ms, room, then the control entry ids.
_RENEW = """
local me, ttl = ARGV[1], tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[2], now + 3 * ttl, me)
redis.call('HSET', KEYS[3], me, ARGV[3])
local held = {}
for i = 1, #ARGV - 3 do
  local lease, meta, ctl = KEYS[2 + 2 * i], KEYS[3 + 2 * i], ARGV[3 + i]
  -- pcall: a session's key of the wrong type (garbage) loses that session, not the others
  local owner = redis.pcall('GET', lease)
  local hosting = redis.pcall('HGET', meta, 'ctl')
  if type(owner) == 'table' and owner.err then owner = 'garbage' end
  if type(hosting) == 'table' and hosting.err then hosting = false end
  if owner == me or (not owner and hosting == ctl) then
    redis.call('SET', lease, me, 'PX', ttl)
    redis.call('XCLAIM', KEYS[1], 'hosts', me, 0, ctl, 'JUSTID')
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

# Record the outcomes of commands (acks) in the event stream and acknowledge their entries,
# if this host holds the session's lease.  KEYS: cmd, ev, meta, lease; ARGV: host id,
# events maxlen, state, key ttl, n, then n entry ids, then n (message id, error, extra),
# "" for none.  Returns 1, or 0 when the lease is not this host's.
_RECORD = """
if redis.call('GET', KEYS[4]) ~= ARGV[1] then return 0 end
local n = tonumber(ARGV[5])
for i = 1, n do
  local at = 5 + n + 3 * (i - 1)
  local fields = {'k', 'a', 'id', ARGV[at + 1]}
  if ARGV[at + 2] ~= '' then
    fields[#fields + 1] = 'err'
    fields[#fields + 1] = ARGV[at + 2]
  end
  if ARGV[at + 3] ~= '' then
    fields[#fields + 1] = 'x'
    fields[#fields + 1] = ARGV[at + 3]
  end
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', unpack(fields))
end
for i = 1, n do
  redis.call('XACK', KEYS[1], 'hosts', ARGV[5 + i])
  redis.call('XDEL', KEYS[1], ARGV[5 + i])
end
redis.call('HSET', KEYS[3], 'state', ARGV[3])
for k = 1, 3 do redis.call('EXPIRE', KEYS[k], ARGV[4]) end
return 1
"""

# Publish what the service sent, if this host holds the session's lease (or the session was
# let go: nobody holds it, its meta is gone).  KEYS: ev, lease, meta, pub; ARGV: host id,
# events maxlen, the lane's token, the key ttl, then per entry: its sequence number in the
# lane, its number of fields, then its field/value pairs.  An entry whose number the pub key
# (the lane's token and the last number published) says was published is skipped: a batch
# sent again after its reply was lost publishes nothing twice.  Returns 1, or 0 when another
# host holds the session or its lease lapsed unrenewed.
_PUBLISH = """
local owner = redis.call('GET', KEYS[2])
if owner ~= ARGV[1] and (owner or redis.call('EXISTS', KEYS[3]) == 1) then return 0 end
local last = -1
local stored = redis.call('GET', KEYS[4])
if stored then
  local token, seq = string.match(stored, '^(.*) (%d+)$')
  if token == ARGV[3] then last = tonumber(seq) end
end
local top = last
local i = 5
while i <= #ARGV do
  local seq, n = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  if seq > last then
    local fields = {}
    for j = 1, 2 * n do fields[j] = ARGV[i + 1 + j] end
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', unpack(fields))
    if seq > top then top = seq end
  end
  i = i + 2 * n + 2
end
if top > last then redis.call('SET', KEYS[4], ARGV[3] .. ' ' .. top, 'EX', ARGV[4]) end
return 1
"""


# Read the new commands of the sessions whose lease this host holds (and only of those: a host
# that stalled past its lease takes nothing from the new owner).  KEYS: a command stream and
# a lease per session; ARGV: host id, count.  Returns per session its entries read (a list,
# maybe empty), or 0 when the lease is not this host's.  ARGV[2 + k] is where session k is
# read from: '>' (new entries), or an entry id (this host's pending entries after it: what
# it took in a read whose reply was lost).
_READ = """
local out = {}
for i = 1, #KEYS, 2 do
  if redis.pcall('GET', KEYS[i + 1]) == ARGV[1] then
    local read = {'XREADGROUP', 'GROUP', 'hosts', ARGV[1], 'COUNT', ARGV[2],
                  'STREAMS', KEYS[i], ARGV[2 + (i + 1) / 2]}
    local got = redis.pcall(unpack(read))
    if type(got) == 'table' and got.err then
      redis.pcall('XGROUP', 'CREATE', KEYS[i], 'hosts', '0', 'MKSTREAM')
      got = redis.pcall(unpack(read))
    end
    if type(got) == 'table' and got.err then
      out[#out + 1] = 0  -- garbage in its key: the session is lost, the others go on
    elseif got then
      out[#out + 1] = got[1][2]
    else
      out[#out + 1] = {}
    end
  else
    out[#out + 1] = 0
  end
end
return out
"""


# Record the cloud instance a session runs on, if this host holds its lease.  KEYS: meta,
# lease; ARGV: host id, the instance's session id.  Returns 1, or 0 when not this host's.
_BIND = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'instance', ARGV[2])
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


@attrs.define(eq=False)
class _Slot:
    """A text sent whose reply has not come (a lane's ``asks``; guarded by the lane's lock)."""

    mid: str
    deadline: float  # monotonic: its ask gives up then (a plain text: reply_window)
    asked: bool  # an ask() waits for it (its reply is marked as the answer)
    acked: bool = False  # the service acknowledged the text


class _LaneFailed(Exception):
    """The lane's client closed for good: the lane gives the session up."""


@attrs.define(eq=False)
class _Lane:
    """One held session: its client, its commands in order, what waits for an ack."""

    session_id: str
    ctl_id: str  # its control entry (the host's _lock guards changes: see SessionHost._adopt)
    ids: PresetIds = attrs.field(factory=PresetIds)
    entry: Any = None  # what the factory made (an AvatarIM, or an AvatarSession)
    client: AvatarIM | None = None
    # Guards queue, asks, await_start, sentences, valid_until, lost, pubq and pub_seq; cond
    # is notified when commands come, the lease is lost or confirmed again, or the host stops.
    lock: threading.Lock = attrs.field(factory=threading.Lock)
    cond: threading.Condition = attrs.field(init=False)
    queue: deque[tuple[str, dict[str, str]]] = attrs.field(factory=deque)
    # The lane thread's own: sent and waiting for their ack, and outcomes to record.
    inflight: deque[tuple[str, str, str]] = attrs.field(factory=deque)  # entry, mid, op
    done: list[tuple[str, str, Any, Any, str]] = attrs.field(factory=list)
    # The texts sent whose reply has not come, oldest first, and how many are acked.
    asks: deque[_Slot] = attrs.field(factory=deque)
    waiting: dict[str, _Slot] = attrs.field(factory=dict)  # asks by message id
    asks_acked: int = 0
    await_start: deque[tuple[str, float]] = attrs.field(factory=deque)
    sentences: dict[str | None, str] = attrs.field(factory=dict)
    sent: RecentIds = attrs.field(factory=lambda: RecentIds(8192))
    state: str = "new"
    last_used: float = attrs.field(factory=time.monotonic)
    valid_until: float = 0.0  # monotonic: the lease is ours until then (half its ttl)
    lost: bool = False  # another host holds the lease now
    # What the service sent, for the publisher: (seq, fields), oldest first.  Published once
    # the lease is confirmed ours (a stalled host holds them); dropped if the lease was lost
    # (the new owner's client gets and publishes what the service sends from then on).
    pubq: deque[tuple[int, dict[str, str]]] = attrs.field(factory=deque)
    pub_seq: int = 0  # the seq of the last entry put in pubq
    reading: bool = False  # the reader reads its command stream
    read_pos: str = "0-0"  # the reader's: the last entry of its command stream seen
    taken_pos: str = "0-0"  # the reader's: the last entry of it taken (queued for the lane)
    # Unique to this hosting of the session: names its publishing sequence (see _PUBLISH).
    token: str = attrs.field(factory=lambda: secrets.token_hex(8))
    # Guarded by the host's _lock: the lane is letting the session go (its _END runs or
    # ran), and the control entry of the session started again meanwhile (held after).
    ending: bool = False
    successor: str | None = None
    wakeups: int = 0  # the lane thread's: how many times it woke from a wait (diagnostics)
    # With the OpenAPI: the session id of the cloud instance the lane's client talks to.
    instance: str | None = None
    thread: threading.Thread | None = None

    def __attrs_post_init__(self) -> None:
        self.cond = threading.Condition(self.lock)


class SessionHost:
    """Holds avatar sessions for :class:`~avatar_im.relay.RelayClient` handles, over Redis.

    ::

        with SessionHost("redis://127.0.0.1:6379/0", url=server.url) as host:
            ...  # web workers use RelayClient("redis://...", session_id=...)

    Where a session's client comes from:

    * with *openapi* (an :class:`~avatar_im.aliyun.AvatarOpenAPI`, for the
      cloud): each session runs on an avatar instance of its own, started
      with ``StartInstance`` (``user_id`` the relay's session id) when the
      session is first held.  Only the instance's session id goes to Redis
      (the session's meta): a host that takes the session over reconnects to
      the same instance, its IM token read with ``QueryRunningInstance``
      (and renewed so), and starts a new one only if it no longer runs.
      The instance is stopped (``StopInstance``) when the session is let go:
      stopped, or idle.  *url* is then the IM endpoint, by default
      ``AVATAR_IM_URL`` or the cloud's; *token*, *app_id* and *tenant_id*
      are not used;
    * *client_factory(session_id, ids)*: an :class:`~avatar_im.AvatarIM` made
      with ``id_factory=ids`` (so that each command goes with its web
      worker's message id) and, best, ``receive_buffer=0`` (the host reads it
      through listeners only), or an object with that client as ``.client``
      and a ``close()``, called when the host lets the session go or stops;
    * by default an :class:`~avatar_im.AvatarIM` to *url* with *token*,
      *app_id* and *tenant_id* (a reference server, or a fixed channel).

    *client_options* are any other :class:`~avatar_im.AvatarIM` keyword
    arguments (with *openapi* or by default), checked here.  Every argument is checked at the call
    (:class:`~avatar_im.InvalidArgumentError`,
    :class:`~avatar_im.InvalidArgumentTypeError`).

    :param redis_url: ``redis://``, ``rediss://`` (TLS) or ``unix://``.  The host
        makes its own pool of connections to it, each round trip bounded by a
        third of *lease_ttl* (0.5 to 5 s), and closes it in :meth:`close`.
    :param max_sessions: the most sessions this host holds at once.
    :param lease_ttl: seconds a session's lease lasts unrenewed: the bound on
        how long a dead host's sessions wait for another host (plus a claim
        round, ``lease_ttl / 2``, and the reconnect).
    :param idle_timeout: seconds without a command after which a session is stopped.
    :param events_maxlen: about how many entries each session's event stream keeps.
    :param ready_timeout: seconds a session start may take at the service.
    :param reply_window: seconds a sent (not asked) text waits for its reply.
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
        openapi: OpenAPILike | None = None,
        max_sessions: int = 100,
        lease_ttl: float = 10.0,
        idle_timeout: float = 600.0,
        events_maxlen: int = 10_000,
        ready_timeout: float = 30.0,
        reply_window: float = 10.0,
        prefix: str = DEFAULT_PREFIX,
        host_id: str | None = None,
    ) -> None:
        check_redis_url(redis_url)
        for name, text in (("token", token), ("app_id", app_id), ("tenant_id", tenant_id)):
            require_str(name, text)
        require_callable("client_factory", client_factory)
        if url is not None:
            require_str("url", url)
            build_url(url, token="x", app_id="x", tenant_id="x")  # a ws:// or wss:// URL
        if openapi is not None:
            for method in ("start_instance", "stop_instance", "query_running_instance"):
                if not callable(getattr(openapi, method, None)):
                    raise InvalidArgumentTypeError(
                        f"openapi must be an AvatarOpenAPI (it has no {method}())"
                    )
            if client_factory is not None:
                raise InvalidArgumentError("pass openapi=... or client_factory=..., not both")
        if client_factory is None and openapi is None and not url:
            raise InvalidArgumentError(
                "pass url=... (the avatar service), openapi=... (the cloud), or client_factory=..."
            )
        if client_factory is not None and client_options:
            raise InvalidArgumentError(
                "client_options are for the host's own clients: pass them to client_factory's"
            )
        max_sessions = require_count("max_sessions", max_sessions)
        events_maxlen = require_count("events_maxlen", events_maxlen)
        lease_ttl = require_seconds("lease_ttl", lease_ttl, positive=True)
        idle_timeout = require_seconds("idle_timeout", idle_timeout, positive=True)
        ready_timeout = require_seconds("ready_timeout", ready_timeout, positive=True)
        reply_window = require_seconds("reply_window", reply_window, positive=True)
        if lease_ttl < 0.3:
            raise InvalidArgumentError("lease_ttl must be at least 0.3 s")
        require_str("prefix", prefix)
        if host_id is not None:
            require_str("host_id", host_id)
            if len(host_id) > 200 or not host_id.isprintable():
                raise InvalidArgumentError("host_id must be 1 to 200 printable characters")
        self._redis_url = redis_url
        self._url = url
        self._token = token
        self._app_id = app_id
        self._tenant_id = tenant_id
        self._factory = client_factory
        self._client_options = _client_options(client_options)
        self._openapi = openapi
        if client_factory is None:
            _probe_client(url or DEFAULT_URL, token, app_id, tenant_id, self._client_options)
        self.max_sessions = max_sessions
        self.lease_ttl = lease_ttl
        self.idle_timeout = idle_timeout
        self.events_maxlen = events_maxlen
        self.ready_timeout = ready_timeout
        self.reply_window = reply_window
        self._keys = Keys(prefix)
        self.host_id = host_id or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self._key_ttl = int(max(3600.0, 2 * self.idle_timeout))
        # Set by close() when Redis is cut off: no connection to it is made any more.
        self._closing = threading.Event()
        #: The bound of each Redis round trip of the host (its sockets' timeout), seconds.
        self.redis_timeout = min(5.0, max(0.5, self.lease_ttl / 3))
        self._redis = _host_redis(
            redis_url,
            socket_timeout=self.redis_timeout,
            name=f"avatar-im-host:{self.host_id}",
            max_connections=max_sessions + 16,
            closing=self._closing,
        )
        # Guards _lanes, _running, _waiting, _close_by and the counters.
        self._lock = threading.Lock()
        self._lanes: dict[str, _Lane] = {}
        self._running: set[threading.Thread] = set()  # lane threads not ended yet
        # Control entries claimed whose lease another host still held: retried by the keeper.
        self._waiting: dict[str, tuple[str, float]] = {}  # ctl id -> (session id, give up at)
        self._close_by = math.inf  # monotonic: when close() must have returned
        # The lanes with messages to publish; its lock guards _dirty only (never taken with a
        # lane's lock held).  Notified when a lane has some, and when the host stops.
        self._pub_cond = threading.Condition(threading.Lock())
        self._dirty: set[_Lane] = set()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.taken_over = 0  #: sessions taken from another host
        self.commands = 0  #: commands sent to the service
        self.published = 0  #: entries written to event streams
        #: service messages dropped: Redis was down too long (too many waited), or refused
        self.publish_dropped = 0
        #: sessions started again while this host let them go, held once it had
        self.deferred = 0
        #: control entries dropped and commands refused: garbage in Redis (see the log)
        self.garbage = 0

    # ------------------------------------------------------------ lifecycle

    def start(self) -> SessionHost:
        """Start the reader, the keeper and the publisher; returns the host.

        Raises :class:`~avatar_im.relay.RelayUnavailableError` when Redis cannot be
        reached, refuses the credentials or the call (nothing is left running then).
        """
        if self._threads or self._stop.is_set():
            return self
        redis = import_redis()
        r = self._r()
        try:
            with contextlib.suppress(redis.ResponseError):  # BUSYGROUP: it exists
                r.xgroup_create(self._keys.ctl, GROUP, id="0", mkstream=True)
            self._renew()  # the heartbeat, so that relays see the room at once
        except redis.AuthenticationError as exc:
            self._redis.close()
            raise RelayUnavailableError("Redis refused the host's credentials") from exc
        except redis.RedisError as exc:  # down, or refusing (a DB index out of range...)
            self._redis.close()
            raise RelayUnavailableError(
                f"the host cannot use Redis: {' '.join(str(exc).split())}"
            ) from exc
        for name, target in (
            ("reader", self._read),
            ("keeper", self._keep),
            ("publisher", self._publish_loop),
        ):
            thread = threading.Thread(
                target=target, name=f"avatar-im-host-{name}-{next(_thread_ids)}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        logger.info("host %s: up (max %d sessions)", self.host_id, self.max_sessions)
        return self

    def close(self, timeout: float = 5.0) -> None:
        """Stop: let every session go unacknowledged where not acked (another host goes on).

        Returns within *timeout* seconds (and a few milliseconds), whatever Redis does.
        The threads first finish what they were doing (recording acks, leaving the
        heartbeat); with half of *timeout* left (at most 1.5 s), the host cuts Redis off
        (its connections are closed under any call waiting on them, and no new one is
        made), so that a stalled Redis holds nothing up.  Every thread the host started
        (reader, keeper, publisher, lanes, and each session's client threads) has ended
        when it returns, provided each session's client closes in the time left: an
        :class:`~avatar_im.AvatarIM` does within about a second; a factory's ``close()``
        (an :class:`~avatar_im.sessions.AvatarSession` stopping its instance) takes its
        own time, and a lane in the middle of an ``interrupt`` waits for it.  The host's
        Redis connections are all closed when it returns.  Calling it again does nothing.
        """
        limit = require_timeout("timeout", timeout)
        if limit is None:
            raise InvalidArgumentTypeError("timeout must be a number of seconds")
        deadline = time.monotonic() + limit
        with self._lock:
            self._close_by = min(self._close_by, deadline)
            lanes = list(self._lanes.values())
        self._stop.set()
        for lane in lanes:
            with lane.cond:
                lane.cond.notify_all()
        with self._pub_cond:
            self._pub_cond.notify_all()
        self._join(deadline - min(limit / 2, 1.5))
        if self._alive():
            logger.warning(
                "host %s: closing: threads still busy (Redis stalled?); closing its connections",
                self.host_id,
            )
            self._cut()
            self._join(deadline)
        self._cut()
        left = self._alive()
        if left:
            logger.warning(
                "host %s: closed with %d thread(s) still ending: %s",
                self.host_id,
                len(left),
                ", ".join(t.name for t in left),
            )

    def _alive(self) -> list[threading.Thread]:
        with self._lock:
            running = list(self._running)
        return [t for t in [*self._threads, *running] if t.is_alive()]

    def _join(self, until: float) -> None:
        for thread in self._alive():
            if thread is not threading.current_thread():
                thread.join(max(0.0, until - time.monotonic()))

    def _cut(self) -> None:
        """Cut Redis off: no new connection, and those open are closed under their calls."""
        self._closing.set()
        with contextlib.suppress(Exception):
            self._redis.connection_pool.disconnect()

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
        return self._alive()

    @property
    def wakeups(self) -> dict[str, int]:
        """How many times each held session's lane woke from a wait (diagnostics).

        An idle lane sleeps until a command comes, the host stops, its lease is lost
        or lapses, or its idle deadline: it does not tick.
        """
        with self._lock:
            return {sid: lane.wakeups for sid, lane in self._lanes.items()}

    def _r(self) -> Any:
        if self._closing.is_set():
            raise redis_down_errors()[0]("the host is closed: Redis is cut off")
        return self._redis

    def _room(self) -> int:
        with self._lock:
            return self.max_sessions - len(self._lanes)

    def _pause(self, seconds: float) -> bool:
        """Sleep unless stopping; True when stopping."""
        return self._stop.wait(seconds)

    def _left(self) -> float:
        """Seconds until close() must have returned (inf while not closing)."""
        with self._lock:
            return self._close_by - time.monotonic()

    # --------------------------------------------------------------- reader

    def _read(self) -> None:
        """The reader: new sessions (the control stream) and the held sessions' commands.

        It waits (``XREAD BLOCK``, which takes nothing) for an entry after the last one
        it saw in any held session's command stream or in the control stream, 100 ms at
        most, then takes the new entries of those streams through the group.  Commands
        are taken by a script that reads a session's stream only while its lease is this
        host's, so a host that stalled past its lease (or let the session go) takes no
        command its new owner needs.  Every second it looks at every stream anyway.
        """
        down = redis_down_errors()
        keys = self._keys
        ctl_pos = "$"  # the last control entry seen (XREAD waits for a later one)
        read_ctl = True  # the control stream may have entries for this host
        ready: set[_Lane] = set()  # lanes whose streams may have entries to take
        known: set[_Lane] = set()
        # Lanes whose last read may have lost its reply (a Redis error): their entries
        # given to this host are taken again, before any new one, so none is skipped.
        again: set[_Lane] = set()
        sweep_at = 0.0
        while not self._stop.is_set():
            try:
                r = self._r()
                if ctl_pos == "$":
                    ctl_pos = _delivered(r, keys.ctl)
                room = self._room()
                with self._lock:
                    lanes = [
                        lane for lane in self._lanes.values() if lane.reading and not lane.ending
                    ]
                now = time.monotonic()
                if now >= sweep_at:  # a safety net: look at everything once a second
                    sweep_at, read_ctl = now + 1.0, True
                    ready.update(lanes)
                ready.update(lane for lane in lanes if lane not in known)
                known = set(lanes)
                ready &= known
                if room > 0 and read_ctl:
                    got = r.xreadgroup(GROUP, self.host_id, {keys.ctl: ">"}, count=room)
                    for _, entries in got or []:
                        for entry_id, fields in entries:
                            ctl_pos = _later(ctl_pos, entry_id)
                            if fields is not None:
                                self._adopt_safely(entry_id, fields.get("sid", ""))
                now = time.monotonic()
                live = [lane for lane in lanes if lane.valid_until > now]
                again &= known
                redo = [lane for lane in live if lane in again]
                if redo:
                    again.difference_update(self._read_commands(r, redo, again=True))
                todo = [lane for lane in live if lane in ready and lane not in again]
                if todo:
                    ready.difference_update(self._read_commands(r, todo))
                waits = {keys.cmd(lane.session_id): lane.read_pos for lane in live}
                if room > 0:
                    waits[keys.ctl] = ctl_pos
                read_ctl = False
                if not waits:
                    read_ctl = True
                    self._pause(0.05)
                    continue
                by_key = {keys.cmd(lane.session_id): lane for lane in live}
                for key, entries in r.xread(waits, count=1, block=100) or []:
                    for entry_id, _ in entries:
                        if key == keys.ctl:
                            ctl_pos = _later(ctl_pos, entry_id)
                            read_ctl = True
                        elif key in by_key:
                            lane = by_key[key]
                            lane.read_pos = _later(lane.read_pos, entry_id)
                            ready.add(lane)
            except down as exc:
                if self._stop.is_set():
                    return
                logger.warning("host %s: Redis unreachable (%s); retrying", self.host_id, exc)
                ready.update(known)
                again.update(known)
                read_ctl = True
                self._pause(0.2)
            except Exception:
                if self._stop.is_set():
                    return
                logger.exception("host %s: the reader failed; retrying", self.host_id)
                ready.update(known)
                again.update(known)
                read_ctl = True
                self._pause(0.5)

    def _read_commands(self, r: Any, lanes: list[_Lane], *, again: bool = False) -> list[_Lane]:
        """Take the new commands of *lanes* whose lease is this host's; return those read.

        With *again*, take instead the entries this host was given after the last one it
        queued (``taken_pos``): after a Redis error the reply of a read may have been lost
        with entries in it, which are pending to this host and would never come again.
        """
        keys = self._keys
        got = r.eval(
            _READ,
            2 * len(lanes),
            *itertools.chain.from_iterable(
                (keys.cmd(lane.session_id), keys.lease(lane.session_id)) for lane in lanes
            ),
            self.host_id,
            200,
            *((lane.taken_pos if again else ">") for lane in lanes),
        )
        read: list[_Lane] = []
        for lane, entries in zip(lanes, got or [], strict=False):
            if not isinstance(entries, list):  # the lease is not this host's (now)
                with lane.lock:
                    lane.valid_until = 0.0  # the lane waits for the keeper's word
                continue
            read.append(lane)
            commands: list[tuple[str, dict[str, str]]] = []
            for entry_id, flat in entries:
                lane.read_pos = _later(lane.read_pos, entry_id)
                lane.taken_pos = _later(lane.taken_pos, entry_id)
                if flat:
                    commands.append((entry_id, dict(zip(flat[::2], flat[1::2], strict=True))))
            if commands:
                with lane.cond:
                    lane.queue.extend(commands)
                    lane.cond.notify_all()
        return read

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
                if not self._stop.is_set():
                    logger.warning("host %s: cannot renew leases (%s)", self.host_id, exc)
            except Exception:
                if not self._stop.is_set():
                    logger.exception("host %s: the keeper failed; retrying", self.host_id)
        # Stopping: the relays stop counting this host's room at once.
        with contextlib.suppress(Exception):
            pipe = self._r().pipeline(transaction=False)
            pipe.zrem(self._keys.hosts, self.host_id)
            pipe.hdel(self._keys.room, self.host_id)
            pipe.execute()

    def _renew(self) -> None:
        with self._lock:
            lanes = [lane for lane in self._lanes.values() if not lane.lost and not lane.ending]
        keys = self._keys
        began = time.monotonic()
        held = self._r().eval(
            _RENEW,
            3 + 2 * len(lanes),
            keys.ctl,
            keys.hosts,
            keys.room,
            *itertools.chain.from_iterable(
                (keys.lease(lane.session_id), keys.meta(lane.session_id)) for lane in lanes
            ),
            self.host_id,
            int(self.lease_ttl * 1000),
            self._room(),
            *(lane.ctl_id for lane in lanes),
        )
        for lane, ok in zip(lanes, held or [], strict=False):
            if ok:
                with lane.cond:
                    lapsed = lane.valid_until <= time.monotonic()
                    lane.valid_until = began + self.lease_ttl / 2
                    if lapsed:  # the lane (and the publisher) waited for this word
                        lane.cond.notify_all()
                    waiting = bool(lane.pubq)
                if lapsed and waiting:
                    self._mark(lane)
            else:
                logger.warning("host %s: lost the lease of %s", self.host_id, lane.session_id)
                with lane.cond:
                    lane.lost = True
                    lane.pubq.clear()  # the new owner's client gets and publishes them
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
                self._adopt_safely(ctl_id, session_id, give_up=give_up)
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
                    self._adopt_safely(entry_id, fields.get("sid", ""), takeover=True)
            room = self._room()
            if start == "0-0" or room <= 0:
                break

    def _adopt_safely(self, ctl_id: str, session_id: object, **options: Any) -> None:
        """:meth:`_adopt`, but a session whose keys hold garbage is dropped, not retried.

        Anything but Redis being down (a key of the wrong type, a malformed entry) is
        logged, counted in :attr:`garbage`, and its control entry removed, so that one
        bad session never stops the host from taking the others.
        """
        try:
            if not isinstance(session_id, str):
                raise TypeError(f"a session id that is not a str: {session_id!r}")
            self._adopt(ctl_id, session_id, **options)
        except redis_down_errors():
            raise
        except Exception as exc:
            with self._lock:
                self.garbage += 1
            logger.warning(
                "host %s: dropping control entry %s (session %r): %s",
                self.host_id,
                ctl_id,
                session_id,
                exc,
            )
            with contextlib.suppress(Exception):
                r = self._r()
                r.xack(self._keys.ctl, GROUP, ctl_id)
                r.xdel(self._keys.ctl, ctl_id)

    def _adopt(
        self,
        ctl_id: str,
        session_id: str,
        *,
        takeover: bool = False,
        give_up: float | None = None,
    ) -> None:
        """Hold *session_id* (its control entry *ctl_id* is pending to this host now).

        Runs on the reader, the keeper, or a lane thread that let its session go (for
        the session's next hosting).  The lane already holding the session, if any,
        decides under the host's lock: the same entry, nothing to do; a stale one (the
        session's meta names another), dropped; the session announced again while that
        lane lets it go, its successor (held once the lane has ended); announced again
        while that lane holds it (its meta had expired), the lane's entry from now on.
        """
        r = self._r()
        keys = self._keys
        meta = r.hgetall(keys.meta(session_id)) if session_id else {}
        current = bool(session_id) and meta.get("ctl") == ctl_id
        stale = ctl_id
        with self._lock:
            lane = self._lanes.get(session_id) if session_id else None
            if lane is not None:
                if lane.ctl_id == ctl_id:
                    return
                if current and lane.ending:
                    if lane.successor != ctl_id:
                        lane.successor = ctl_id
                        self.deferred += 1
                    return
                if current:
                    stale, lane.ctl_id = lane.ctl_id, ctl_id
        if lane is not None or not current:  # ended, or a stale entry
            r.xack(keys.ctl, GROUP, stale)
            r.xdel(keys.ctl, stale)
            return
        lease = keys.lease(session_id)
        ttl_ms = int(self.lease_ttl * 1000)
        began = time.monotonic()
        taken = bool(r.set(lease, self.host_id, nx=True, px=ttl_ms))
        if not taken and r.get(lease) != self.host_id:
            with self._lock:  # another host holds it still: try again at the next round
                self._waiting[ctl_id] = (
                    session_id,
                    began + 3 * self.lease_ttl if give_up is None else give_up,
                )
            return
        lane = _Lane(session_id=session_id, ctl_id=ctl_id, valid_until=began + self.lease_ttl / 2)
        lane.state = meta.get("state", "new")
        again = False
        with self._lock:
            if session_id in self._lanes:
                again = True  # adopted meanwhile on another thread: decide as above
            elif self._stop.is_set() or len(self._lanes) >= self.max_sessions:
                pass
            else:
                self._lanes[session_id] = lane
                if takeover:
                    self.taken_over += 1
                lane.thread = threading.Thread(
                    target=self._run_lane,
                    args=(lane, meta),
                    name=f"avatar-im-host-lane-{next(_thread_ids)}",
                    daemon=True,
                )
                self._running.add(lane.thread)
                lane.thread.start()  # under the lock: close() sees it started, or no lane
        if again:
            self._adopt(ctl_id, session_id, takeover=takeover)
        elif lane.thread is None and taken:
            r.delete(lease)

    def _rekey(self, lane: _Lane, ctl_id: str) -> None:
        """The session was announced again while *lane* holds it: *ctl_id* is its entry now."""
        with self._lock:
            stale, lane.ctl_id = lane.ctl_id, ctl_id
        r = self._r()
        r.xack(self._keys.ctl, GROUP, stale)
        r.xdel(self._keys.ctl, stale)

    # ----------------------------------------------------------------- lanes

    def _make_client(self, lane: _Lane, meta: Mapping[str, str]) -> None:
        if self._factory is not None:
            entry = self._factory(lane.session_id, lane.ids)
        elif self._openapi is not None:
            instance = self._instance(lane, meta)
            entry = AvatarIM.from_instance(
                instance,
                url=self._url,
                openapi=self._openapi,
                id_factory=lane.ids,
                receive_buffer=0,  # the listeners publish everything: no pull buffer
                **self._client_options,
            )
        else:
            assert self._url is not None
            entry = AvatarIM(
                token=self._token,
                app_id=self._app_id,
                tenant_id=self._tenant_id,
                session_id=lane.session_id,
                url=self._url,
                id_factory=lane.ids,
                receive_buffer=0,  # the listeners publish everything: no pull buffer
                **self._client_options,
            )
        client = getattr(entry, "client", entry)
        if not isinstance(client, AvatarIM):
            raise InvalidArgumentError("client_factory must return an AvatarIM or have .client")
        lane.entry, lane.client = entry, client
        client.on("message", lambda message: self._on_message(lane, message))
        # Acks on the same thread as the messages, in wire order: the reply rule needs to
        # know whether a later text was acked before a reply came (see _on_message).
        client._ack_listener = lambda mid: _text_acked(lane, mid, refused=False)
        client.on("event", lambda event: self._queue(lane, {"k": "v", "e": _json(event.raw)}))

    def _idle_on_arrival(self, lane: _Lane, meta: Mapping[str, str]) -> bool:
        """Let a session go at once, unconnected, if it was idle (or stopped) before it came.

        A session's idle time counts from its last command (``used``, written with each
        one), not from when this host took it: a takeover or a restart does not make an
        abandoned session (and its paid instance) live longer.  True when it was let go.
        """
        try:
            used_ms = int(meta.get("used") or 0)
        except ValueError:
            used_ms = 0
        if used_ms:
            idle_for = max(0.0, time.time() - used_ms / 1000)
            lane.last_used = time.monotonic() - min(idle_for, 2 * self.idle_timeout)
        if meta.get("state") != "stopped" and (
            not used_ms or time.monotonic() - lane.last_used <= self.idle_timeout
        ):
            return False
        if not self._end(lane):
            return False  # commands wait: the lane runs them
        instance = meta.get("instance")
        if instance and self._openapi is not None:
            self._stop_instance(lane.session_id, instance)
        return True

    def _instance(self, lane: _Lane, meta: Mapping[str, str]) -> Any:
        """The running cloud instance of *lane*'s session: the one in its meta, or a new one.

        A new one is recorded in the meta only while this host holds the lease; if it
        does not (any more), the instance is stopped again and the lane gives up.
        """
        api = self._openapi
        assert api is not None
        known = meta.get("instance")
        if known:
            running = api.query_running_instance(known)
            if running is not None:
                lane.instance = known
                return running
            logger.info(
                "host %s: session %s: instance %s no longer runs; starting another",
                self.host_id,
                lane.session_id,
                known,
            )
        instance = api.start_instance(user_id=lane.session_id)
        keys = self._keys
        try:
            bound = self._r().eval(
                _BIND,
                2,
                keys.meta(lane.session_id),
                keys.lease(lane.session_id),
                self.host_id,
                str(instance.session_id),
            )
        except BaseException:
            self._stop_instance(lane.session_id, str(instance.session_id))
            raise
        if not bound:
            self._stop_instance(lane.session_id, str(instance.session_id))
            raise _LaneFailed("the lease was lost while its instance started")
        lane.instance = str(instance.session_id)
        return instance

    def _stop_instance(self, session_id: str, instance: str) -> None:
        """``StopInstance``; a failure is logged (the cloud ends idle instances itself)."""
        assert self._openapi is not None
        try:
            self._openapi.stop_instance(instance)
            logger.info(
                "host %s: session %s: instance %s stopped", self.host_id, session_id, instance
            )
        except Exception as exc:
            logger.warning(
                "host %s: session %s: stopping instance %s failed: %s",
                self.host_id,
                session_id,
                instance,
                exc,
            )

    def _run_lane(self, lane: _Lane, meta: dict[str, str]) -> None:
        ended = False
        try:
            if self._stop.is_set():
                return
            if self._idle_on_arrival(lane, meta):
                ended = True
                return
            self._open_lane(lane, meta)
            ended = self._lane_loop(lane)
        except _LaneFailed as exc:
            logger.warning("host %s: session %s failed: %s", self.host_id, lane.session_id, exc)
        except Exception:
            if not self._stop.is_set():
                logger.exception("host %s: session %s failed", self.host_id, lane.session_id)
        finally:
            # The client first: the session's next hosting (here or elsewhere) must not
            # meet this one at the service.  The lane stays listed meanwhile, so that a
            # start of the session waits for it (see _adopt).
            self._close_entry(lane, stop=ended)
            with self._lock:
                if self._lanes.get(lane.session_id) is lane:
                    del self._lanes[lane.session_id]
                successor, lane.successor = lane.successor, None
            if not ended and not lane.lost:
                with contextlib.suppress(Exception):  # another host may take it at once
                    r = self._r()
                    if r.get(self._keys.lease(lane.session_id)) == self.host_id:
                        r.delete(self._keys.lease(lane.session_id))
            if successor is not None and not self._stop.is_set():
                try:
                    self._adopt(successor, lane.session_id)
                except Exception as exc:  # its entry goes idle: a claim round takes it
                    logger.warning(
                        "host %s: session %s started again, not taken yet (%s)",
                        self.host_id,
                        lane.session_id,
                        exc,
                    )
            with self._lock:
                self._running.discard(threading.current_thread())

    def _open_lane(self, lane: _Lane, meta: dict[str, str]) -> None:
        r = self._r()
        key = self._keys.cmd(lane.session_id)
        self._make_client(lane, meta)
        with contextlib.suppress(Exception):  # BUSYGROUP: it exists (the relay made it)
            r.xgroup_create(key, GROUP, id="0", mkstream=True)
        lane.read_pos = _delivered(r, key)  # the reader waits for entries after this one
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
            lane.taken_pos = pending[-1][0]
            logger.info(
                "host %s: session %s: replaying %d command(s)",
                self.host_id,
                lane.session_id,
                len(pending),
            )
        first = pending[0][1].get("op") if pending else None
        if lane.state == "started" and first != "start":
            # It was started on the host before: start it again, with its options.
            try:
                options = json.loads(meta.get("options") or "{}")
            except ValueError:
                options = None
            if not isinstance(options, dict):
                logger.warning(
                    "host %s: session %s: its options in Redis are garbled; starting without",
                    self.host_id,
                    lane.session_id,
                )
                options = {}
            assert lane.client is not None
            lane.client.start_session(**options)
            self._wait_ready(lane)
        with lane.cond:
            lane.queue.extendleft(reversed(pending))
        lane.reading = True

    def _lane_loop(self, lane: _Lane) -> bool:
        """Run *lane* until it ends (True: let go cleanly), is lost or the host stops.

        It sleeps when there is nothing to do: until a command comes (the reader),
        the host stops (close), the lease is lost or confirmed again (the keeper), or
        its next deadline (the idle timeout, another try at letting the session go).
        While commands wait for their acks it polls the client every 50 ms.
        """
        retry_end = 0.0  # monotonic: when to try letting the session go again
        while not self._stop.is_set():
            if lane.lost:
                return False
            if lane.valid_until <= time.monotonic():  # the lease is not confirmed: wait
                self._wait_lease(lane)
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
            _empty_inbox(lane.client, self._factory is not None)
            if lane.inflight or lane.done:  # acks to wait for; or outcomes not recorded yet
                continue
            now = time.monotonic()
            idle_at = lane.last_used + self.idle_timeout
            if (lane.state == "stopped" or now >= idle_at) and now >= retry_end:
                if self._end(lane):
                    return True
                retry_end = now + END_RETRY
            wake_at = retry_end if lane.state == "stopped" else max(idle_at, retry_end)
            self._sleep(lane, wake_at - time.monotonic())
        return False

    def _sleep(self, lane: _Lane, seconds: float) -> None:
        """Wait until a command comes, the lease is lost, the host stops, or *seconds*."""
        with lane.cond:
            if lane.queue or lane.lost or self._stop.is_set():
                return
            lane.cond.wait(min(max(seconds, 0.0), LONGEST_SLEEP))
            lane.wakeups += 1

    def _wait_lease(self, lane: _Lane) -> None:
        """Wait until the keeper confirms the lease again (or it is lost, or the host stops)."""
        with lane.cond:
            lane.cond.wait_for(
                lambda: lane.lost or self._stop.is_set() or lane.valid_until > time.monotonic(),
                self.lease_ttl / 3,
            )
            lane.wakeups += 1

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
                # With a fresh id, not the worker's: a start replayed after a takeover (or
                # enqueued twice after a lost reply) may have been processed already, and
                # the service would drop it as a repeat without the startResult the session
                # waits for.  Starting again is harmless: it restarts the session.
                client.start_session(**(body.get("options") or {}))
                result = self._wait_ready(lane)
                lane.state = "started"
                self._done(lane, entry_id, mid, None, {"result": dict(result.raw)})
            elif op == "text":
                ask = body.get("ask")
                window = self.reply_window if ask is None else float(ask)
                with lane.lock:  # a reply cannot be filed before its text is
                    slot = _Slot(mid, time.monotonic() + window, ask is not None)
                    lane.asks.append(slot)
                    lane.waiting[mid] = slot
                    while len(lane.asks) > MAX_WAITING_REPLIES:
                        _drop_slot(lane)
                    try:
                        with lane.ids.use(mid):
                            client.send_text(str(body.get("text", "")))
                    except BaseException:
                        lane.waiting.pop(lane.asks.pop().mid, None)
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
        except (TypeError, ValueError, AttributeError) as exc:  # a forged or garbled command
            with self._lock:
                self.garbage += 1
            logger.warning(
                "host %s: session %s: a malformed command: %s", self.host_id, lane.session_id, exc
            )
            self._done(
                lane, entry_id, mid, {"type": "invalid", "detail": f"a malformed command: {exc}"}
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
            if op == "text" and error is not None:
                _text_acked(lane, mid, refused=True)  # no reply will come
            self._done(lane, entry_id, mid, error)
            wait = 0

    def _done(self, lane: _Lane, entry_id: str, mid: str, error: Any, extra: Any = None) -> None:
        lane.done.append((entry_id, mid, error, extra, lane.state))

    def _flush(self, lane: _Lane) -> None:
        """Record the outcomes and XACK their entries, in one script; retry while down.

        The script checks the lease: when it is not this host's (a stall outlived it),
        nothing is written, the outcomes stay, and the lane waits for the keeper's word
        (the lease taken back: recorded then; lost: the new owner replays them).
        """
        if not lane.done:
            return
        done, lane.done = lane.done, []
        keys = self._keys
        sid = lane.session_id
        outcomes: list[str] = []
        for _, mid, error, extra, _ in done:
            outcomes += [
                mid,
                "" if error is None else _json(error),
                "" if extra is None else _json(extra),
            ]
        down = redis_down_errors()
        while True:
            try:
                ok = self._r().eval(
                    _RECORD,
                    4,
                    keys.cmd(sid),
                    keys.ev(sid),
                    keys.meta(sid),
                    keys.lease(sid),
                    self.host_id,
                    self.events_maxlen,
                    done[-1][4],
                    self._key_ttl,
                    len(done),
                    *(entry_id for entry_id, *_ in done),
                    *outcomes,
                )
            except down as exc:
                if self._stop.is_set() or lane.lost:
                    return  # unacked: the next host replays them (the service drops repeats)
                logger.warning("host %s: cannot record acks (%s); retrying", self.host_id, exc)
                self._pause(0.2)
                continue
            if ok:
                with self._lock:
                    self.published += len(done)
                return
            logger.info("host %s: %s: the lease is not confirmed; acks held", self.host_id, sid)
            lane.done[:0] = done
            with lane.lock:
                lane.valid_until = 0.0
            return

    def _end(self, lane: _Lane) -> bool:
        """Let the session go if no command waits; True when it was let go."""
        keys = self._keys
        sid = lane.session_id
        with self._lock:  # from here a start of the session waits for this lane (_adopt)
            lane.ending = True
            ctl_id = lane.ctl_id
        ended = False
        successor: str | None = None
        try:
            ended = bool(
                self._r().eval(
                    _END,
                    4,
                    keys.cmd(sid),
                    keys.meta(sid),
                    keys.ctl,
                    keys.lease(sid),
                    self.host_id,
                    ctl_id,
                )
            )
        except redis_down_errors():
            pass
        finally:
            if not ended:
                with self._lock:
                    lane.ending = False
                    successor, lane.successor = lane.successor, None
        if ended:
            lane.reading = False
            logger.info("host %s: session %s let go (%s)", self.host_id, sid, lane.state)
            return True
        if successor is not None:  # announced again while held (its meta had expired)
            with contextlib.suppress(*redis_down_errors()):
                self._rekey(lane, successor)
        return False

    def _close_entry(self, lane: _Lane, *, stop: bool) -> None:
        client, entry = lane.client, lane.entry
        if client is None:
            return
        if stop and lane.state != "stopped" and client.session_ready.is_set():
            with contextlib.suppress(AvatarIMError):  # idle: stop it, as the registry does
                client.stop_session()
                client.flush(max(0.0, min(2.0, self._left() - 1.0)))
        try:
            entry.close()
        except Exception:
            logger.exception("host %s: closing session %s failed", self.host_id, lane.session_id)
        if stop and lane.instance is not None:  # let go: the instance costs money
            self._stop_instance(lane.session_id, lane.instance)

    # ------------------------------------------------------------ publishing

    def _on_message(self, lane: _Lane, message: Message) -> None:
        """On the client's callback thread: mark answers, queue for the event stream."""
        fields = {"k": "m", "f": message.family, "e": _json(message.raw)}
        now = time.monotonic()
        with lane.lock:
            if message.family == "reply":
                # The client's rule (AvatarIM.ask): a reply is the oldest waiting text's.
                # A text whose ask gave up still takes a late reply (then for receive()),
                # until a later text is acknowledged, or LATE_WINDOW passes.
                while lane.asks:
                    head = lane.asks[0]
                    later_acked = lane.asks_acked - (1 if head.acked else 0) > 0
                    if now > head.deadline + LATE_WINDOW or (now > head.deadline and later_acked):
                        _drop_slot(lane)
                        continue
                    break
                if lane.asks:
                    slot = lane.asks[0]
                    _drop_slot(lane)
                    if slot.asked and now <= slot.deadline:
                        mid = slot.mid
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
        self._queue(lane, fields)

    def _queue(self, lane: _Lane, fields: dict[str, str]) -> None:
        """On the client's callback thread: hand *fields* to the publisher (never waits)."""
        dropped = 0
        with lane.lock:
            if lane.lost:
                return  # another host owns the session: it publishes what the service sends
            lane.pub_seq += 1
            lane.pubq.append((lane.pub_seq, fields))
            while len(lane.pubq) > MAX_UNPUBLISHED:
                lane.pubq.popleft()
                dropped += 1
        if dropped:
            self._count_dropped(lane, dropped, "too many waiting")
        self._mark(lane)

    def _mark(self, lane: _Lane) -> None:
        with self._pub_cond:
            self._dirty.add(lane)
            self._pub_cond.notify()

    def _count_dropped(self, lane: _Lane, n: int, why: str) -> None:
        with self._lock:
            before = self.publish_dropped
            self.publish_dropped += n
        if before == 0 or before // 1000 != (before + n) // 1000:
            logger.error(
                "host %s: dropped %d message(s) of %s (%s; %d so far)",
                self.host_id,
                n,
                lane.session_id,
                why,
                before + n,
            )

    def _publish_loop(self) -> None:
        """The publisher: write the lanes' waiting messages to their event streams."""
        down = redis_down_errors()
        while True:
            with self._pub_cond:
                while not self._dirty and not self._stop.is_set():
                    self._pub_cond.wait()
                lanes = list(self._dirty)
                self._dirty.clear()
            if not lanes:
                return  # stopping, and nothing waits
            try:
                self._publish(lanes)
            except down as exc:
                if self._stop.is_set():
                    for lane in lanes:
                        with lane.lock:
                            n = len(lane.pubq)
                            lane.pubq.clear()
                        if n:
                            self._count_dropped(lane, n, f"Redis down as the host stopped: {exc}")
                    return
                logger.warning("host %s: cannot publish (%s); retrying", self.host_id, exc)
                with self._pub_cond:
                    self._dirty.update(lanes)
                self._pause(0.2)
            except Exception:
                logger.exception("host %s: the publisher failed; retrying", self.host_id)
                with self._pub_cond:
                    self._dirty.update(lanes)
                if self._pause(0.5):
                    return

    def _publish(self, lanes: list[_Lane]) -> None:
        """Publish a batch of each lane's messages, one pipelined round trip for all.

        A lane whose lease is not confirmed keeps its messages: the keeper marks it
        again once it is (or drops them when another host holds the session).
        """
        keys = self._keys
        now = time.monotonic()
        batch: list[tuple[_Lane, int, int]] = []  # lane, last seq sent, how many
        pipe = self._r().pipeline(transaction=False)
        for lane in lanes:
            with lane.lock:
                if lane.lost or not lane.pubq or lane.valid_until <= now:
                    continue
                items = list(itertools.islice(lane.pubq, PUBLISH_BATCH))
            args: list[str] = []
            for seq, fields in items:
                args += [str(seq), str(len(fields))]
                for name, value in fields.items():
                    args += [name, value]
            sid = lane.session_id
            pipe.eval(
                _PUBLISH,
                4,
                keys.ev(sid),
                keys.lease(sid),
                keys.meta(sid),
                keys.pub(sid),
                self.host_id,
                self.events_maxlen,
                lane.token,
                self._key_ttl,
                *args,
            )
            batch.append((lane, items[-1][0], len(items)))
        if not batch:
            return
        results = pipe.execute(raise_on_error=False)
        for (lane, last, n), result in zip(batch, results, strict=True):
            if isinstance(result, Exception):
                if isinstance(result, redis_down_errors()):
                    raise result
                with lane.lock:
                    while lane.pubq and lane.pubq[0][0] <= last:
                        lane.pubq.popleft()
                self._count_dropped(lane, n, f"Redis refused them: {result}")
                continue
            more = False
            with lane.lock:
                if result:
                    while lane.pubq and lane.pubq[0][0] <= last:
                        lane.pubq.popleft()
                    more = bool(lane.pubq)
                else:  # not this host's now (a stall?): held until the keeper says
                    lane.valid_until = 0.0
            if result:
                with self._lock:
                    self.published += n
            if more:
                self._mark(lane)


def _drop_slot(lane: _Lane) -> None:
    """Drop the oldest waiting text (the lane's lock held)."""
    slot = lane.asks.popleft()
    lane.waiting.pop(slot.mid, None)
    if slot.acked:
        lane.asks_acked -= 1


def _text_acked(lane: _Lane, mid: str, *, refused: bool) -> None:
    """Text *mid* was acknowledged (the client's callback thread, in wire order with the
    messages) or refused (the lane thread: no reply will come).  Other ids are ignored."""
    with lane.lock:
        slot = lane.waiting.get(mid)
        if slot is None:
            return
        if refused:
            del lane.waiting[mid]
            lane.asks.remove(slot)
            if slot.acked:
                lane.asks_acked -= 1
        elif not slot.acked:
            slot.acked = True
            lane.asks_acked += 1


def _empty_inbox(client: AvatarIM | None, buffered: bool) -> None:
    """Drop what a factory's client buffered for its pull API: the listeners had it.

    The host's own clients keep no pull buffer (``receive_buffer=0``): nothing to do.
    """
    if client is None or not buffered:
        return
    for pull in (client.receive, client.receive_event):
        for _ in range(10_000):
            try:
                pull(0)
            except AvatarIMError:  # ReceiveTimeout: empty; ClientClosedError: the lane sees it
                break


def _host_redis(
    url: str,
    *,
    socket_timeout: float,
    name: str,
    max_connections: int,
    closing: threading.Event,
) -> Any:
    """A Redis client of the host's own: no retries (the host retries), its connections
    named *name*, and none made once *closing* is set (see :meth:`SessionHost.close`)."""
    redis = import_redis()
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    def on_connect(connection: Any) -> None:
        if closing.is_set():
            raise redis.ConnectionError("the host is closed: Redis is cut off")
        connection.on_connect()

    try:
        return redis.Redis.from_url(
            url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=min(socket_timeout, 2.0),
            decode_responses=True,
            health_check_interval=30,
            retry=Retry(NoBackoff(), 0),
            client_name=re.sub(r"[^\w.:@-]", "_", name),  # CLIENT SETNAME takes no spaces
            redis_connect_func=on_connect,
            max_connections=max_connections,
        )
    except ValueError as exc:  # redis-py's URL parser (never repeats a password: see below)
        raise InvalidArgumentError(f"redis_url is not a valid Redis URL: {exc}") from None


def _client_options(options: object) -> dict[str, Any]:
    """Check *client_options*' names: AvatarIM keyword arguments the host does not set."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise InvalidArgumentTypeError(
            f"client_options must be a mapping or None, got {type(options).__name__}"
        )
    result = dict(options)
    for key in result:
        if not isinstance(key, str):
            raise InvalidArgumentTypeError(f"client_options' names must be str, got {key!r}")
    known = set(inspect.signature(AvatarIM.__init__).parameters) - {"self"}
    unknown = sorted(set(result) - known)
    if unknown:
        raise InvalidArgumentError(
            f"unknown AvatarIM option(s) in client_options: {', '.join(unknown)}"
        )
    managed = sorted(set(result) & HOST_SET_OPTIONS)
    if managed:
        raise InvalidArgumentError(
            f"client_options must not set {', '.join(managed)}: the host sets them "
            "(pass url, token, app_id and tenant_id to SessionHost)"
        )
    return result


def _probe_client(
    url: str, token: str, app_id: str, tenant_id: str, options: Mapping[str, Any]
) -> None:
    """Make (never connect) and close the client a lane would make: its checks run now."""
    try:
        probe = AvatarIM(
            token=token,
            app_id=app_id,
            tenant_id=tenant_id,
            session_id="host-check",
            url=url,
            id_factory=PresetIds(),
            receive_buffer=0,
            auto_connect=False,
            **options,
        )
    except AvatarIMError:
        raise
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"client_options: {exc}") from exc
    probe.close()


def _delivered(r: Any, key: str) -> str:
    """The last entry of stream *key* given to the hosts' group ("0-0": none, or no group)."""
    try:
        groups = r.xinfo_groups(key)
    except redis_down_errors():
        raise
    except Exception:  # no such stream, or no group
        return "0-0"
    for group in groups:
        if group.get("name") == GROUP:
            return str(group.get("last-delivered-id") or "0-0")
    return "0-0"


def _later(a: str, b: str) -> str:
    """The later of two stream ids (``"$"``: not known yet)."""
    if a == "$":
        return b
    return b if stream_id(b) > stream_id(a) else a


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


def _lease(text: str) -> float:
    """An argparse type: a lease of 0.3 s to a day."""
    value = _seconds(text)
    if value < 0.3:
        raise argparse.ArgumentTypeError(f"must be at least 0.3 seconds, got {text!r}")
    return value


def redis_url_argument(text: str) -> str:
    """An argparse type: a Redis URL, checked as SessionHost checks it (``--redis``)."""
    try:
        return check_redis_url(text, "the URL")
    except AvatarIMError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _nonempty(text: str) -> str:
    """An argparse type: a non-empty string."""
    if not text:
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``avatar-im host``'s options to *parser*."""
    env = os.environ
    fixed = "not used on the cloud path"
    parser.add_argument(
        "--redis", required=True, type=redis_url_argument, help="Redis URL (redis://host:6379/0)"
    )
    parser.add_argument(
        "--url",
        type=_nonempty,
        default=env.get("AVATAR_IM_URL") or None,
        help="the avatar service's IM endpoint (default: AVATAR_IM_URL from the environment; "
        "with ALIBABA_CLOUD_ACCESS_KEY_ID set, the cloud's)",
    )
    parser.add_argument(
        "--token",
        type=_nonempty,
        default=None,
        help=f"IM token (default: AVATAR_IM_TOKEN from the environment, else dev-token; {fixed})",
    )
    parser.add_argument(
        "--app-id",
        type=_nonempty,
        default=env.get("AVATAR_IM_APP_ID", "demo-app"),
        help="app id (AVATAR_IM_APP_ID; on the cloud path, the OpenAPI's app)",
    )
    parser.add_argument(
        "--tenant-id",
        type=_nonempty,
        default=env.get("AVATAR_IM_TENANT_ID", "demo-tenant"),
        help="tenant id (AVATAR_IM_TENANT_ID; on the cloud path, the OpenAPI's tenant)",
    )
    parser.add_argument("--max-sessions", type=_count, default=100, help="sessions held at most")
    parser.add_argument(
        "--lease-ttl", type=_lease, default=10.0, help="seconds a lease lasts (>= 0.3)"
    )
    parser.add_argument(
        "--idle-timeout", type=_seconds, default=600.0, help="idle session stop (s)"
    )
    parser.add_argument("--events-maxlen", type=_count, default=10_000, help="event stream cap")
    parser.add_argument(
        "--prefix", type=_nonempty, default=DEFAULT_PREFIX, help="the Redis keys' prefix"
    )
    parser.add_argument(
        "--host-id",
        type=_nonempty,
        help="this host's consumer name (default: hostname-pid-random hex)",
    )


def shown_redis_url(url: str) -> str:
    """*url* fit to print: no user or password, and no ``password`` in its query."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    query = "&".join(
        f"{key}=***" if "pass" in key.lower() else f"{key}={value}"
        for key, value in parse_qsl(parts.query, keep_blank_values=True)
    )
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def run(args: argparse.Namespace) -> int:
    """Run a host until SIGTERM or SIGINT (``avatar-im host``)."""
    openapi: Any = None
    if os.environ.get("ALIBABA_CLOUD_ACCESS_KEY_ID"):  # the cloud: an instance per session
        from .aliyun import AliyunConfig, AvatarOpenAPI, MissingExtraError

        try:
            openapi = AvatarOpenAPI(AliyunConfig.from_env())
        except (InvalidArgumentError, MissingExtraError) as exc:
            sys.stderr.write(f"avatar-im host: {' '.join(str(exc).split())}\n")
            return 2
    elif not args.url:
        sys.stderr.write(
            "avatar-im host: pass --url or set AVATAR_IM_URL (or ALIBABA_CLOUD_ACCESS_KEY_ID "
            "and the rest of the OpenAPI's environment, for the cloud)\n"
        )
        return 2
    try:
        return _serve(args, openapi)
    finally:
        if openapi is not None:
            openapi.close()


def _serve(args: argparse.Namespace, openapi: Any) -> int:
    try:
        host = SessionHost(
            args.redis,
            openapi=openapi,
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
    except (InvalidArgumentError, InvalidArgumentTypeError) as exc:  # a usage error
        sys.stderr.write(f"avatar-im host: {' '.join(str(exc).split())}\n")
        return 2
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    host.start()
    shown = shown_redis_url(args.redis)  # no credentials on the screen
    where = "instances through the OpenAPI, " if openapi is not None else ""
    sys.stdout.write(f"avatar-im host {host.host_id}: {where}serving {shown}\n")
    sys.stdout.flush()
    try:
        while not stop.wait(1.0):
            pass
    finally:
        host.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m avatar_im.host --redis URL``: the same as ``avatar-im host``."""
    from .cli import main as cli_main

    return cli_main(["host", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
