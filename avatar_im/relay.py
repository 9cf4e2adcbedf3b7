"""A remote handle on an avatar session held by a :class:`~avatar_im.host.SessionHost`, over Redis.

A web app under gunicorn or uWSGI runs several worker processes, often on
several machines; an avatar session is one WebSocket in one process.  The
hosts (``avatar-im host --redis URL``, or :class:`avatar_im.host.SessionHost`
embedded) hold the WebSockets; a web worker talks to a session through a
:class:`RelayClient`, which has the client's shape and works by Redis alone::

    from avatar_im.relay import RelayClient

    avatar = RelayClient("redis://127.0.0.1:6379/0", session_id="visitor-1")
    avatar.start_session(output_mode="audio")
    avatar.wait_session_ready(timeout=10)
    print(avatar.ask("hello", timeout=10).text)

Nothing in it is a socket to the avatar service, and nothing needs fork
protection: the Redis connection is made lazily, per process (a handle made
before ``fork()``, under ``gunicorn --preload``, connects afresh in each
worker).  What it writes and reads (the names are under a *prefix*,
``avatar-im`` by default):

* ``<prefix>:s:<session>:cmd`` — the session's commands, a stream read by its
  host through the consumer group ``hosts``; an entry leaves it (``XACK`` and
  ``XDEL``) once the avatar service acknowledged it, so its length is the
  session's backlog, bounded by *max_outbox* (:class:`~avatar_im.OutboxFullError`).
* ``<prefix>:s:<session>:ev`` — what the service sent (messages, events) and
  what became of each command (its ack), a stream capped with ``MAXLEN ~``
  that any handle reads from where it left off.
* ``<prefix>:s:<session>:taken`` and ``:floor`` — which business messages a
  :meth:`RelayClient.receive` took (a sorted set of entry ids, claimed
  atomically, each message by one handle), and the entry below which all were
  taken (where a new handle's first ``receive()`` starts).
* ``<prefix>:s:<session>:meta`` — the session's options and state;
  ``<prefix>:s:<session>:lease`` — which host holds it; ``<prefix>:ctl`` — one
  entry per hosted session, pending in the ``hosts`` group while it is held.

Every message id is made here, where the call is made (by the library's id
factory), and travels with the command: a host that takes over a session
replays what was not acknowledged with the same ids, and the service drops
what it had already processed.  See ``docs/many-workers.md`` for the whole
picture, the guarantees and their limits.
"""

from __future__ import annotations

import base64
import binascii
import collections
import json
import logging
import math
import os
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, TypeVar

from . import audio
from .checks import require_count, require_seconds, require_str, require_text, require_timeout
from .client import InterruptReport
from .exceptions import (
    AckError,
    AckTimeout,
    AskTimeout,
    AudioFormatError,
    ClientClosedError,
    ConnectionFailedError,
    InterruptError,
    InterruptTimeout,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    MessageCancelledError,
    OutboxFullError,
    ReceiveTimeout,
    SessionNotStartedError,
    SessionReadyTimeout,
    SessionStartError,
    UnknownMessageError,
)
from .ids import MessageIdFactory, default_id_factory
from .inbox import Answer, family_names
from .messages import (
    BroadcastEnd,
    BroadcastStart,
    InterruptResult,
    Message,
    Reply,
    ServerEvent,
    StartResult,
    from_envelope,
    from_event,
)
from .options import SessionOptions

__all__ = [
    "DEFAULT_PREFIX",
    "HostsFullError",
    "Keys",
    "RelayClient",
    "RelayUnavailableError",
    "check_redis_url",
    "close_pools",
    "connect",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: The default prefix of every Redis key the relay and the hosts use.
DEFAULT_PREFIX = "avatar-im"
#: The consumer group of the hosts, on the control stream and on each command stream.
GROUP = "hosts"
#: The longest session id accepted (it is part of Redis key names).
MAX_SESSION_ID = 200
#: The longest message id a send accepts (passed with *message_id*).
MAX_MESSAGE_ID = 200
#: The bytes a host's client may add around a command's body when it makes the ``5``
#: frame, beyond the body's JSON and its message id's: the envelope's constant part
#: (141 bytes: ``receiverId``, ``receiverType``, ``sticky``, the content's ``type``), the
#: host's ``receiverAppId`` and the service's ``sessionId`` (unknown here, 371 bytes left for
#: both).  A send whose body and id with this allowance exceed *max_message_size* is refused
#: at the call, as the client refuses a frame over its limit.
ENVELOPE_ALLOWANCE = 512
#: How long a handle retries a Redis call that failed for the connection, by default (s).
REDIS_RETRY = 5.0
#: The longest one Redis round trip of a handle may take, by default: the socket timeout
#: of its connections (s).  A stalled Redis fails a round trip after this long.
REDIS_TIMEOUT = 1.0
#: How much longer than its timeout (or its *redis_retry* window) a handle's call may take
#: when Redis stops answering, with the default *redis_timeout*: the round trip under way
#: when the time runs out, and 0.25 s for scheduling (s).
STALL_SLACK = REDIS_TIMEOUT + 0.25
#: The seconds a handle waits for a host's result beyond the command's own timeout.
RESULT_SLACK = 5.0
#: What each part of an answer (the host's field ``p``) must be.
_ANSWER_PARTS: dict[str, type[Message]] = {"r": Reply, "s": BroadcastStart, "x": BroadcastEnd}
#: How many outcomes (acks) and answers a handle remembers.
MEMORY = 4096
#: How many buffered candidates one claim of :meth:`RelayClient.receive` offers Redis.
CLAIM_BATCH = 64
#: The URL schemes a relay's Redis URL may have (redis-py's).
REDIS_SCHEMES = ("redis", "rediss", "unix")


class RelayUnavailableError(ConnectionFailedError):
    """Redis could not be reached (or kept failing) for the call's whole retry window,
    or it refused the call (not retried): the credentials of the URL, a database
    number out of range, or any other error reply.

    :attr:`message_id` is the id of the command the call was making, when it
    was making one: it may or may not be in Redis.  Sending it again with the
    same id (``send_text(text, message_id=error.message_id)``) is safe: the
    service processes an id once.
    """

    def __init__(self, message: str, *, message_id: str | None = None) -> None:
        super().__init__(message)
        self.message_id = message_id


class HostsFullError(OutboxFullError):
    """No live host has room for another session (each holds at most ``max_sessions``),
    or no host is live at all under the handle's prefix (the message says which)."""


class Keys:
    """The Redis key names of the relay, under *prefix*."""

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        require_str("prefix", prefix)
        if len(prefix) > MAX_SESSION_ID or not prefix.isprintable():
            raise InvalidArgumentError(
                f"prefix must be 1 to {MAX_SESSION_ID} printable characters, got {prefix!r}"
            )
        self.prefix = prefix
        self.ctl = f"{prefix}:ctl"  #: one entry per hosted session (the hosts' group)
        self.hosts = f"{prefix}:hosts"  #: sorted set: host id -> heartbeat expiry (ms)
        self.room = f"{prefix}:room"  #: hash: host id -> how many more sessions it takes

    def cmd(self, session_id: str) -> str:
        return f"{self.prefix}:s:{session_id}:cmd"

    def ev(self, session_id: str) -> str:
        return f"{self.prefix}:s:{session_id}:ev"

    def meta(self, session_id: str) -> str:
        return f"{self.prefix}:s:{session_id}:meta"

    def lease(self, session_id: str) -> str:
        return f"{self.prefix}:s:{session_id}:lease"

    def taken(self, session_id: str) -> str:
        """Sorted set: the entries of the event stream a ``receive()`` took, above the floor."""
        return f"{self.prefix}:s:{session_id}:taken"

    def pub(self, session_id: str) -> str:
        """The hosting publishing the session's messages and the last one it published."""
        return f"{self.prefix}:s:{session_id}:pub"

    def floor(self, session_id: str) -> str:
        """The event stream entry up to which every business message was taken."""
        return f"{self.prefix}:s:{session_id}:floor"


# --------------------------------------------------------------- connections


class _Pools:
    """This process's Redis clients, one per URL and socket timeout (typed Any: redis-py's
    types are loose)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # guards clients (made, looked up and closed under it)
        self.clients: dict[tuple[int, str, float], Any] = {}


_pools = _Pools()


def _reset_pools_after_fork() -> None:
    # The child has one thread: nothing else can hold the lock or use the table now.  The
    # parent's connections are not closed here (their sockets are the parent's).
    _pools.lock = threading.Lock()
    _pools.clients.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_pools_after_fork)


def import_redis() -> Any:
    """The ``redis`` package; an :class:`ImportError` naming the ``relay`` extra without it."""
    try:
        import redis
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError(
            "avatar_im's relay and host need the 'relay' extra: pip install 'avatar-im[relay]'",
            name=exc.name,
        ) from exc
    return redis


def connect(url: str, *, socket_timeout: float = 5.0) -> Any:
    """This process's Redis client for *url* (made on first use, one per process, URL and
    *socket_timeout*, which bounds each of its round trips and its connects).

    Raises :class:`ImportError` naming the ``relay`` extra when ``redis`` is missing.
    """
    redis = import_redis()
    key = (os.getpid(), url, float(socket_timeout))
    with _pools.lock:
        client = _pools.clients.get(key)
        if client is None:
            client = redis.Redis.from_url(
                url,
                socket_timeout=socket_timeout,
                socket_connect_timeout=min(socket_timeout, 2.0),
                decode_responses=True,
                health_check_interval=30,
            )
            _pools.clients[key] = client
        return client


def close_pools() -> int:
    """Close this process's Redis connections made by :func:`connect`; return how many pools.

    :meth:`RelayClient.close` leaves the process's pool open for the next handle (handles
    are cheap, one per request); this closes the pools themselves, for ``atexit`` or
    between tests.  The next use of any handle connects again.  A call under way in another
    thread meanwhile sees Redis down once and retries.  A :class:`~avatar_im.host.SessionHost`
    has a pool of its own, closed by its ``close()``.
    """
    pid = os.getpid()
    with _pools.lock:
        mine = [key for key in _pools.clients if key[0] == pid]
        clients = [_pools.clients.pop(key) for key in mine]
    for client in clients:
        try:
            client.close()  # from_url's client owns its pool: this disconnects all of it
        except Exception as exc:  # pragma: no cover - closing sockets hardly fails
            logger.debug("closing a Redis pool: %s", exc)
    return len(clients)


def check_redis_url(url: object, name: str = "redis_url") -> str:
    """Validate a relay Redis URL at the call; return it.

    A str with the scheme ``redis://``, ``rediss://`` (TLS) or ``unix://`` that redis-py
    can parse, and for ``redis://`` and ``rediss://`` a path that is empty (or ``/``) or
    ``/<database number>`` (redis-py reads any other path as database 0, silently; a
    number Redis does not have is refused at the first call, by Redis):
    :class:`~avatar_im.InvalidArgumentTypeError` for a non-str,
    :class:`~avatar_im.InvalidArgumentError` otherwise.  The errors never repeat the URL,
    which may carry a password.
    """
    require_str(name, url)
    assert isinstance(url, str)
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as exc:
        raise InvalidArgumentError(f"{name} is not a URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in REDIS_SCHEMES:
        got = f"the scheme {parts.scheme!r}" if parts.scheme else "no scheme"
        raise InvalidArgumentError(
            f"{name} must start with redis://, rediss:// or unix://, got {got}"
        )
    number = parts.path[1:]
    if scheme != "unix" and parts.path not in ("", "/") and not _is_db_number(number):
        # redis-py would ignore a path it cannot read as a number: database 0, silently.
        raise InvalidArgumentError(
            f"{name}'s path must be empty or /<database number> (a whole number >= 0, as "
            "in redis://host:6379/0), got a path that is not"
        )
    try:
        from redis.connection import parse_url
    except ImportError:  # pragma: no cover - depends on the install; connect() says so
        return url
    parse: Callable[[str], object] = parse_url  # redis-py's own URL parser, untyped
    try:
        parse(url)
    except ValueError as exc:
        detail = str(exc)
        if parts.password and parts.password in detail:  # pragma: no cover - never seen
            detail = "it does not parse"
        raise InvalidArgumentError(f"{name} is not a valid Redis URL: {detail}") from None
    return url


def _is_db_number(text: str) -> bool:
    return text.isascii() and text.isdigit()


def redis_down_errors() -> tuple[type[BaseException], ...]:
    """The ``redis`` exceptions that mean "Redis is unreachable now" (retried).

    Raises :class:`ImportError` naming the ``relay`` extra when ``redis`` is missing.
    """
    redis = import_redis()
    return (redis.ConnectionError, redis.TimeoutError)


def _refused_credentials(redis: Any, exc: BaseException) -> bool:
    if isinstance(
        exc, (redis.AuthenticationError, redis.exceptions.AuthenticationWrongNumberOfArgsError)
    ):
        return True
    return isinstance(exc, redis.ResponseError) and str(exc).startswith(("NOAUTH", "WRONGPASS"))


def redis_refusal(
    what: str, exc: BaseException, message_id: str | None = None
) -> RelayUnavailableError | None:
    """The typed error for a Redis error that retrying does not mend, or None.

    None for what is not a ``redis`` error and for "Redis is down"
    (:func:`redis_down_errors`, retried by the callers); a
    :class:`RelayUnavailableError` otherwise: Redis refused the credentials of the URL
    (a wrong or missing password or user: redis-py's ``AuthenticationError``, although
    a ``ConnectionError``, and a ``NOAUTH`` reply), or refused the call (an error reply,
    ``DB index is out of range``...).  The message holds Redis's reason, never the URL.
    """
    redis = import_redis()
    if not isinstance(exc, redis.RedisError):
        return None
    if _refused_credentials(redis, exc):
        return RelayUnavailableError(
            f"{what}: Redis refused the credentials of the Redis URL (a wrong or missing "
            f"password, or user?): {exc}",
            message_id=message_id,
        )
    if isinstance(exc, redis_down_errors()):
        return None
    return RelayUnavailableError(
        f"{what}: Redis refused the call ({type(exc).__name__}, not retried): {exc}",
        message_id=message_id,
    )


def stream_id(value: str) -> tuple[int, int]:
    """A stream entry id ``"<ms>-<seq>"`` as a comparable pair."""
    ms, _, seq = value.partition("-")
    return int(ms), int(seq or 0)


def check_message_id(message_id: object) -> str:
    """Validate a message id passed to a send: a non-empty printable str, not too long."""
    if not isinstance(message_id, str):
        raise InvalidArgumentTypeError(f"message_id must be a str, got {type(message_id).__name__}")
    if not message_id or len(message_id) > MAX_MESSAGE_ID or not message_id.isprintable():
        shown = message_id if len(message_id) <= 40 else message_id[:40] + "..."
        raise InvalidArgumentError(
            f"message_id must be 1 to {MAX_MESSAGE_ID} printable characters (no control "
            f"characters or newlines), got {shown!r} ({len(message_id)} characters)"
        )
    return message_id


def check_session_id(session_id: object) -> str:
    """Validate a session id for use in key names: a non-empty printable str, not too long."""
    if not isinstance(session_id, str):
        raise InvalidArgumentTypeError(f"session_id must be a str, got {type(session_id).__name__}")
    if not session_id or len(session_id) > MAX_SESSION_ID or not session_id.isprintable():
        raise InvalidArgumentError(
            f"session_id must be 1 to {MAX_SESSION_ID} printable characters, got {session_id!r}"
        )
    return session_id


# The relay's side of a command: check the backlog, make sure a new session is announced to
# the hosts (one control entry per session), append the command.  Atomic, so two workers
# starting one session at once announce it once.  It keeps receive()'s record (the taken
# set and the floor) alive as long as the event stream (see _CLAIM).  Hosts whose heartbeat
# expired leave the hosts' sorted set and the room hash.  Returns {status, entry id or
# backlog or live hosts, the event stream's last id}: status 1 ok, 0 backlog full, -1 no
# session, -2 no host room (with how many hosts are live), -3 no live host.
_ENQUEUE = """
local cmd, meta, ctl, ev, hosts, room = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local last = redis.call('XREVRANGE', ev, '+', '-', 'COUNT', 1)
local last_id = '0-0'
if #last > 0 then last_id = last[1][1] end
local n = redis.call('XLEN', cmd)
if n >= tonumber(ARGV[1]) then return {0, tostring(n), last_id} end
local hosted = redis.call('HGET', meta, 'ctl')
if ARGV[5] == '1' then
  if not hosted then
    if ARGV[9] == '1' then
      local t = redis.call('TIME')
      local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
      for _, h in ipairs(redis.call('ZRANGEBYSCORE', hosts, '-inf', now)) do
        redis.call('HDEL', room, h)
      end
      redis.call('ZREMRANGEBYSCORE', hosts, '-inf', now)
      local live = redis.call('ZRANGE', hosts, 0, -1)
      if #live == 0 then return {-3, '0', last_id} end
      -- Take one place of a host with room (its heartbeat sets its true room again):
      -- announcements between two heartbeats cannot overrun the hosts' room.
      local taken = false
      for _, h in ipairs(live) do
        local left = tonumber(redis.call('HGET', room, h) or '0') or 0
        if left > 0 then
          redis.call('HSET', room, h, left - 1)
          taken = true
          break
        end
      end
      if not taken then return {-2, tostring(#live), last_id} end
    end
    redis.pcall('XGROUP', 'CREATE', cmd, 'hosts', '0', 'MKSTREAM')
    local id = redis.call('XADD', ctl, '*', 'sid', ARGV[6])
    redis.call('HSET', meta, 'ctl', id, 'state', 'new')
  end
  redis.call('HSET', meta, 'options', ARGV[7])
elseif not hosted then
  return {-1, '0', last_id}
end
local id = redis.call('XADD', cmd, '*', 'op', ARGV[2], 'mid', ARGV[3], 'body', ARGV[4])
redis.call('HSET', meta, 'used', ARGV[10])
redis.call('EXPIRE', meta, ARGV[8])
redis.call('EXPIRE', cmd, ARGV[8])
local keep = tonumber(ARGV[8])
local left = redis.call('TTL', ev)
if left > keep then keep = left end
redis.call('EXPIRE', KEYS[7], keep + 600)
redis.call('EXPIRE', KEYS[8], keep + 600)
return {1, id, last_id}
"""

# The claim of receive(): the first of the candidate entries (ARGV[2..], in stream order)
# that no receive() took yet becomes taken (ZADD NX into the session's taken set), and the
# floor moves up over what is all taken (or not a business message: acks, answers, events).
# An entry at or under the floor, or trimmed from the stream already, cannot be claimed.
# Members are the entry ids padded to sort as strings (ZRANGEBYLEX order is stream order);
# the set keeps only entries above the floor and still in the stream, so its size is at
# most the stream's.  Both keys expire 10 minutes after the later of the handle's expiry
# and the stream's (which the hosts refresh after each command): were they to go first,
# what was taken could be received again.  Returns {the 1-based index claimed or 0, floor}.
_CLAIM = """
local ev, taken, floorkey = KEYS[1], KEYS[2], KEYS[3]
local function pad(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return string.rep('0', 20 - #ms) .. ms .. '-' .. string.rep('0', 20 - #seq) .. seq
end
local floor = redis.call('GET', floorkey) or '0-0'
if type(floor) ~= 'string' or not string.match(floor, '^%d+%-%d+$') then floor = '0-0' end
local head = redis.call('XRANGE', ev, '-', '+', 'COUNT', 1)
if #head == 0 then return {0, floor} end
local first, low = pad(head[1][1]), pad(floor)
local won = 0
for i = 2, #ARGV do
  local p = pad(ARGV[i])
  if p > low and p >= first and redis.call('ZADD', taken, 'NX', 0, p) == 1 then
    won = i - 1
    break
  end
end
if won == 0 then return {0, floor} end
local new = floor
for _, entry in ipairs(redis.call('XRANGE', ev, '(' .. floor, '+', 'COUNT', 256)) do
  local kind, asked, family, body = nil, nil, nil, ''
  local fields = entry[2]
  for j = 1, #fields, 2 do
    if fields[j] == 'k' then kind = fields[j + 1] end
    if fields[j] == 'a' then asked = fields[j + 1] end
    if fields[j] == 'f' then family = fields[j + 1] end
    if fields[j] == 'e' then body = fields[j + 1] end
  end
  if kind == 'm' and (asked == nil or asked == '') and family ~= 'start_result'
      and string.sub(body, 1, 1) == '{'
      and not redis.call('ZSCORE', taken, pad(entry[1])) then
    break
  end
  new = entry[1]
end
if new ~= floor then
  redis.call('SET', floorkey, new)
  redis.call('ZREMRANGEBYLEX', taken, '-', '[' .. pad(new))
end
redis.call('ZREMRANGEBYLEX', taken, '-', '(' .. first)
local keep = tonumber(ARGV[1])
local left = redis.call('TTL', ev)
if left > keep then keep = left end
redis.call('EXPIRE', floorkey, keep + 600)
redis.call('EXPIRE', taken, keep + 600)
return {won, new}
"""


class RelayClient:
    """A blocking handle on one avatar session, held by a host, reached through Redis.

    The methods are the client's (:class:`~avatar_im.AvatarIM`): each send
    returns the message id (made here), the waits take timeouts and raise the
    client's typed errors.  Thread-safe; cheap to make (one per request is
    fine: the Redis pool is per process and URL, see :func:`connect`).

    A command is in Redis once a send returns: it reaches the service exactly
    once, in the order of the sends, whichever host holds the session and
    even when one dies (see ``docs/many-workers.md``).  When Redis cannot be
    reached for *redis_retry* seconds a call raises
    :class:`RelayUnavailableError` (with the command's ``message_id``: send
    again with it).  A session's backlog of commands not yet acknowledged by
    the service is at most *max_outbox* (:class:`~avatar_im.OutboxFullError`
    beyond; with *send_timeout*, a send first waits that long for room).

    Every call is bounded, Redis stalled or not: one round trip takes at most
    *redis_timeout*; a call with a timeout (:meth:`ask`, :meth:`receive`,
    :meth:`wait_ack`...) stops retrying Redis when its timeout runs out, one
    without (:meth:`send_text`, :meth:`hosted`...) after *redis_retry*.  So
    when Redis stops answering (stalled, or unreachable), a call returns
    within its timeout (or *redis_retry*; plus *send_timeout* for a send
    waiting for room) plus *redis_timeout*, the round trip under way then
    (:data:`STALL_SLACK`, 1.25 s with the defaults, allows 0.25 s more), with
    the same errors: :class:`RelayUnavailableError` when Redis was
    unreachable to the end, the client's typed timeout otherwise.  A wait
    with ``timeout=None`` waits for Redis to come back.  What Redis refuses
    (the URL's credentials, a database number out of range, any other error
    reply) raises :class:`RelayUnavailableError` at once, not retried.

    :param redis_url: the Redis URL, ``redis://host:6379/0`` (``rediss://`` for TLS,
        ``unix://`` for a socket), checked by :func:`check_redis_url`.
    :param session_id: the session's id (the avatar service's session id).
    :param prefix: the prefix of the Redis keys (the hosts' must be the same).
    :param require_host: :meth:`start_session` of a session no host holds raises
        :class:`HostsFullError` when no live host has room for it, or no host under
        *prefix* is live at all.
    :param idle_timeout: the seconds (> 0) after which the session's Redis keys
        expire unused (the hosts stop it earlier, after their own idle timeout).
    :param redis_timeout: the longest one Redis round trip may take (the socket
        timeout of the handle's connections, > 0; a blocking read of the event
        stream blocks half of it at most).
    :param max_message_size: the hosts' clients' limit on a frame, in bytes (16 MiB, their
        default): a send whose body and id in UTF-8, with :data:`ENVELOPE_ALLOWANCE`,
        exceed it raises :class:`~avatar_im.InvalidArgumentError` at the call.
    """

    def __init__(
        self,
        redis_url: str,
        *,
        session_id: str,
        prefix: str = DEFAULT_PREFIX,
        max_outbox: int = 10_000,
        send_timeout: float | None = None,
        receive_buffer: int = 1024,
        redis_retry: float = REDIS_RETRY,
        result_slack: float = RESULT_SLACK,
        require_host: bool = True,
        idle_timeout: float = 3600.0,
        id_factory: MessageIdFactory | None = None,
        max_message_size: int = 16 * 2**20,
        redis_timeout: float = REDIS_TIMEOUT,
    ) -> None:
        self._url = check_redis_url(redis_url)
        self.session_id = check_session_id(session_id)
        self._keys = Keys(prefix)
        self._max_outbox = require_count("max_outbox", max_outbox)
        self._receive_buffer = require_count("receive_buffer", receive_buffer)
        self._max_message_size = require_count("max_message_size", max_message_size)
        self._send_timeout = require_timeout("send_timeout", send_timeout)
        self._retry = require_seconds("redis_retry", redis_retry)
        self._slack = require_seconds("result_slack", result_slack)
        self._io_timeout = require_seconds("redis_timeout", redis_timeout, positive=True)
        idle = 3600.0 if idle_timeout is None else require_seconds("idle_timeout", idle_timeout)
        if idle <= 0:
            raise InvalidArgumentError(f"idle_timeout must be > 0, got {idle_timeout!r}")
        self._expire = max(60, math.ceil(idle) * 2)
        if not isinstance(require_host, bool):
            raise InvalidArgumentTypeError(
                f"require_host must be a bool, got {type(require_host).__name__}"
            )
        self._require_host = require_host
        if id_factory is not None and not callable(getattr(id_factory, "new", None)):
            raise InvalidArgumentTypeError("id_factory must be a MessageIdFactory (with .new)")
        self._ids = id_factory or default_id_factory
        self._closed = False
        self._reset()

    def _reset(self) -> None:
        """The per-process state: made here, and again in a forked child on first use."""
        self._pid = os.getpid()
        # Guards everything below; _changed is notified when the pump filed new entries.
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._pumping = False  # a thread is reading the event stream (others wait)
        self._pos: str | None = None  # the event stream id read up to
        self._generation = 0  # bumped when _pos moves back: a read from before is dropped
        # Business messages are buffered from the first receive() on, above this entry
        # (the session's floor, then the last one buffered); None before that.
        self._msg_mark: tuple[int, int] | None = None
        # The last event buffered (or where the pump was when it moved back to the floor).
        self._event_mark: tuple[int, int] | None = None
        self._acks: collections.OrderedDict[str, tuple[Any, Any]] = collections.OrderedDict()
        self._answers: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        # Messages read and not yet claimed here (another handle may have taken some).
        self._inbox: collections.deque[tuple[str, Message]] = collections.deque()
        self._events: collections.deque[tuple[str, ServerEvent]] = collections.deque()
        self._start_id: str | None = None
        self._down: BaseException | None = None  # the last Redis error of the pump
        self.dropped = 0  #: messages dropped from a full receive buffer
        self.garbage = 0  #: malformed event stream entries skipped (not what a host writes)

    def _check(self) -> Any:
        if os.getpid() != self._pid:  # made before fork(), used in the child: start afresh
            self._reset()
        if self._closed:
            raise ClientClosedError("the relay client is closed")
        return connect(self._url, socket_timeout=self._io_timeout)

    def __repr__(self) -> str:
        return f"<RelayClient session_id={self.session_id!r} prefix={self._keys.prefix!r}>"

    def __enter__(self) -> RelayClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    def close(self) -> None:
        """Close this handle: later calls raise :class:`ClientClosedError`.

        The session goes on (its host holds it until :meth:`stop_session` or
        its idle timeout), as closing an :class:`~avatar_im.AvatarIM` does not
        stop its session either; the process's Redis pool stays for other handles
        (:func:`close_pools` closes it).
        """
        self._closed = True
        with self._changed:
            self._changed.notify_all()

    # ---------------------------------------------------------------- Redis

    def _redis(
        self,
        what: str,
        call: Callable[[Any], T],
        message_id: str | None = None,
        deadline: float | None = None,
    ) -> T:
        """Run *call*, retrying while Redis is unreachable, for at most the retry window.

        With *deadline* (a call's own, :func:`time.monotonic`), the retries stop then if
        that is sooner.  One attempt is always made; each takes at most *redis_timeout*.
        What Redis refuses (:func:`redis_refusal`) raises at once.
        """
        redis = import_redis()
        began = time.monotonic()
        until = began + self._retry
        if deadline is not None:
            until = min(until, deadline)
        pause = 0.05
        while True:
            client = self._check()
            try:
                return call(client)
            except redis.RedisError as exc:
                refusal = redis_refusal(what, exc, message_id)
                if refusal is not None:  # retrying would not mend it
                    raise refusal from exc
                now = time.monotonic()
                if now >= until:
                    raise RelayUnavailableError(
                        f"{what}: Redis unreachable for {now - began:.1f}s: {exc}",
                        message_id=message_id,
                    ) from exc
                time.sleep(min(pause, until - now))
                pause = min(pause * 2, 0.25)

    # ------------------------------------------------------------- commands

    def _enqueue(
        self,
        op: str,
        body: Mapping[str, Any],
        *,
        message_id: str | None = None,
        start_options: Mapping[str, Any] | None = None,
        deadline: float | None = None,
    ) -> str:
        """Append a command (atomically, see ``_ENQUEUE``); return its message id.

        Bounded: Redis is retried for *redis_retry* (plus *send_timeout*, when waiting for
        room), and never past *deadline* (the calling wait's own), if given.
        """
        if message_id is None:
            message_id = self._ids.new(time.time_ns() // 1_000_000)
        else:
            check_message_id(message_id)
        payload = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
        self._check_size(payload, message_id)
        keys = self._keys
        sid = self.session_id
        options = json.dumps(dict(start_options or {}), separators=(",", ":"))
        args = [
            self._max_outbox,
            op,
            message_id,
            payload,
            "1" if start_options is not None else "0",
            sid,
            options,
            self._expire,
            "1" if self._require_host else "0",
            time.time_ns() // 1_000_000,
        ]
        script_keys = [
            keys.cmd(sid),
            keys.meta(sid),
            keys.ctl,
            keys.ev(sid),
            keys.hosts,
            keys.room,
            keys.floor(sid),
            keys.taken(sid),
        ]
        began = time.monotonic()
        room_until = None if self._send_timeout is None else began + self._send_timeout
        redis_until = began + self._retry + (self._send_timeout or 0.0)
        if deadline is not None:
            redis_until = min(redis_until, deadline)
            room_until = deadline if room_until is None else min(room_until, deadline)
        while True:
            result: list[Any] = self._redis(
                f"send {op}",
                lambda r: r.eval(_ENQUEUE, len(script_keys), *script_keys, *args),
                message_id,
                redis_until,
            )
            status, value, last_id = int(result[0]), str(result[1]), str(result[2])
            if status == 1:
                break
            if status == -1:
                raise SessionNotStartedError(
                    f"session {sid!r} is not hosted: call start_session() first"
                )
            if status == -3:
                raise HostsFullError(
                    f"no live session host under the prefix {keys.prefix!r} (is `avatar-im "
                    "host` running with the same --prefix?)"
                )
            if status == -2:
                live = int(value)
                full = "the live session host" if live == 1 else f"all {live} live session hosts"
                raise HostsFullError(
                    f"{full} under the prefix {keys.prefix!r} {'is' if live == 1 else 'are'} "
                    "full (each holds at most its max_sessions): start more hosts, or retry"
                )
            left = None if room_until is None else room_until - time.monotonic()
            if left is None or left <= 0 or self._send_timeout is None:
                raise OutboxFullError(
                    f"session {sid!r} holds {value} commands not yet acknowledged "
                    f"(max_outbox {self._max_outbox})"
                )
            time.sleep(min(0.05, left))
        with self._lock:
            if self._pos is None:
                self._pos = last_id  # what this command gives comes after it
        return message_id

    def _check_size(self, payload: str, message_id: str) -> None:
        """Refuse a command whose frame at the host would exceed *max_message_size* bytes.

        The host's client refuses a frame over its limit (the same by default), which
        would fail the command later, at its ack: this refuses it at the call, counting
        the body and its id in UTF-8 and :data:`ENVELOPE_ALLOWANCE` for the envelope.
        """
        limit = self._max_message_size
        if (len(payload) + len(message_id) + 2) * 4 + ENVELOPE_ALLOWANCE <= limit:
            return  # at most 4 bytes a character (the id quoted): no need to encode
        quoted = json.dumps(message_id, ensure_ascii=False)
        size = len(payload.encode("utf-8")) + len(quoted.encode("utf-8")) + ENVELOPE_ALLOWANCE
        if size > limit:
            raise InvalidArgumentError(
                f"the message is {size} bytes with its envelope, over the {limit}-byte limit "
                "(max_message_size)"
            )

    def start_session(self, **options: Any) -> str:
        """Start (or restart) the session on a host; returns the ``start`` message's id.

        Options as :meth:`AvatarIM.start_session` (checked here).  The first
        start of a session announces it to the hosts: one with room takes it.
        Raises :class:`HostsFullError` when none has room.
        """
        SessionOptions.from_kwargs(dict(options))  # InvalidArgumentError at the call
        try:
            json.dumps(options)
        except (TypeError, ValueError) as exc:
            raise InvalidArgumentError(f"session options must be JSON values: {exc}") from exc
        message_id = self._enqueue("start", {"options": options}, start_options=options)
        self._start_id = message_id
        return message_id

    def wait_session_ready(self, timeout: float | None = None) -> StartResult:
        """Wait until the host started the session (the service's ``startResult``); return it.

        Raises :class:`SessionReadyTimeout` after *timeout*, :class:`SessionStartError`
        when the service refused, :class:`SessionNotStartedError` before any
        :meth:`start_session` of this handle.
        """
        timeout = require_timeout("timeout", timeout)
        if self._closed:
            raise ClientClosedError("the relay client is closed")
        start_id = self._start_id
        if start_id is None:
            raise SessionNotStartedError("call start_session() first (on this handle)")
        try:
            _, extra = self._outcome(start_id, timeout)
        except AckTimeout:
            raise SessionReadyTimeout(
                f"session {self.session_id!r} not ready within {timeout}s (is a host running?)"
            ) from None
        envelope = (extra or {}).get("result")
        result = from_envelope(envelope if isinstance(envelope, Mapping) else {})
        if not isinstance(result, StartResult):  # pragma: no cover - the host sends one
            result = StartResult(
                family="start_result",
                type=None,
                session_id=self.session_id,
                message_id=None,
                content={},
                raw={},
            )
        return result

    def hosted(self) -> bool:
        """Whether the session is announced to the hosts (started and not let go yet)."""
        key = self._keys.meta(self.session_id)
        return bool(self._redis("hosted", lambda r: r.hexists(key, "ctl")))

    def stop_session(self) -> str:
        """Stop the session; returns the ``stop`` message's id.  Its host then lets it go."""
        return self._enqueue("stop", {})

    def send_text(self, text: str, *, message_id: str | None = None) -> str:
        """Send *text*; returns the message id (pass *message_id* to send one again).

        A *message_id* given is 1 to :data:`MAX_MESSAGE_ID` printable characters.
        """
        require_text(text)
        return self._enqueue("text", {"text": text}, message_id=message_id)

    def send_audio(
        self,
        data: bytes | bytearray | memoryview | Any = None,
        *,
        base64: str | None = None,
        message_id: str | None = None,
    ) -> str:
        """Send one audio chunk (16-bit PCM bytes, a NumPy array, or *base64*); its id."""
        encoded = _audio_base64(data, base64)
        return self._enqueue("audio", {"b64": encoded}, message_id=message_id)

    def ask(self, text: str, timeout: float | None = 30.0, *, wait_spoken: bool = False) -> Answer:
        """Send *text* and return the avatar's reply to it (and its broadcast, *wait_spoken*).

        The host gives each reply to the oldest asked text still waiting that
        was sent before it (the rule of :meth:`AvatarIM.ask`); asks from many
        workers at once are answered in the order their texts reached Redis.
        Raises :class:`AskTimeout` (with the text's ``message_id``) after
        *timeout*, :class:`AckError` when the service refused the text, and
        :class:`RelayUnavailableError` (with the ``message_id``) when Redis
        was unreachable for *redis_retry* or until *timeout*, the sooner.
        """
        require_text(text)
        timeout = require_timeout("timeout", timeout)
        if not isinstance(wait_spoken, bool):
            raise InvalidArgumentTypeError("wait_spoken must be a bool")
        deadline = None if timeout is None else time.monotonic() + timeout
        body = {"text": text, "ask": 30.0 if timeout is None else timeout}
        message_id = self._enqueue("text", body, deadline=deadline)

        def done() -> bool:
            answer = self._answers.get(message_id)
            if answer is not None and "r" in answer and (not wait_spoken or "x" in answer):
                return True
            ack = self._acks.get(message_id)
            return ack is not None and ack[0] is not None

        found = self._wait(done, deadline)
        with self._lock:
            answer = dict(self._answers.get(message_id) or {})
            ack = self._acks.get(message_id)
        if ack is not None and ack[0] is not None:
            _raise_refusal(message_id, ack[0])
        if not found or "r" not in answer:
            raise AskTimeout(f"no reply to {message_id} within {timeout}s", message_id=message_id)
        reply = from_envelope(answer["r"])
        assert isinstance(reply, Reply)  # _file_one files only a Reply as "r"
        start = end = None
        if wait_spoken:
            s = from_envelope(answer["s"]) if "s" in answer else None
            x = from_envelope(answer["x"])
            start = s if isinstance(s, BroadcastStart) else None
            end = x if isinstance(x, BroadcastEnd) else None
        interrupted = bool(end is not None and end.interrupted)
        return Answer(message_id, reply, start, end, interrupted=interrupted)

    def interrupt(
        self,
        timeout: float | None = 5.0,
        *,
        include_text: bool = False,
        stop_streams: bool = True,
    ) -> InterruptReport:
        """Interrupt the avatar through its host (:meth:`AvatarIM.interrupt` there).

        Returns the host's :class:`InterruptReport`; raises
        :class:`InterruptTimeout` when the service did not confirm in
        *timeout*, and also when the host did not answer within *timeout*
        plus *result_slack* (the report then says nothing was told).
        """
        timeout = require_timeout("timeout", timeout)
        for name, flag in (("include_text", include_text), ("stop_streams", stop_streams)):
            if not isinstance(flag, bool):
                raise InvalidArgumentTypeError(f"{name} must be a bool")
        body = {"timeout": timeout, "include_text": include_text, "stop_streams": stop_streams}
        wait = None if timeout is None else timeout + self._slack
        deadline = None if wait is None else time.monotonic() + wait
        message_id = self._enqueue("interrupt", body, deadline=deadline)
        try:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            error, extra = self._outcome(message_id, left, refusals=False)
        except AckTimeout:
            raise InterruptTimeout(
                f"the host did not report the interrupt {message_id} within {wait}s",
                report=InterruptReport(),
            ) from None
        report = _report(extra, message_id)
        if error is None:
            return report
        kind = error.get("type") if isinstance(error, Mapping) else None
        detail = error.get("detail", "") if isinstance(error, Mapping) else ""
        if kind == "interrupt_timeout":
            raise InterruptTimeout(f"no interrupt result within {timeout}s", report=report)
        if kind == "interrupt_error":
            raise InterruptError(f"interrupt failed on the host: {detail}", report=report)
        _raise_refusal(message_id, error)
        raise AssertionError("unreachable")  # pragma: no cover

    def wait_ack(self, message_id: str, timeout: float | None = None) -> None:
        """Wait until the avatar service acknowledged *message_id* (through its host).

        Raises :class:`AckError` when it was refused, :class:`MessageCancelledError`
        when an interrupt cut it unsent, :class:`SessionNotStartedError` (and the
        client's other errors at the call) when the host could not send it, and
        :class:`AckTimeout` after *timeout*.  Ids sent through other handles are
        found too, while their ack is still in the event stream.
        """
        require_str("message_id", message_id)
        timeout = require_timeout("timeout", timeout)
        self._outcome(message_id, timeout)

    def _outcome(
        self, message_id: str, timeout: float | None, *, refusals: bool = True
    ) -> tuple[Any, Any]:
        """Wait for the host's outcome of *message_id*: (error or None, extra)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            if self._pos is None:
                self._pos = "0-0"  # an id not sent here: look through what is kept
        if not self._wait(lambda: message_id in self._acks, deadline):
            raise AckTimeout(f"no ack for {message_id} within {timeout}s")
        with self._lock:
            error, extra = self._acks[message_id]
        if error is not None and refusals:
            _raise_refusal(message_id, error)
        return error, extra

    # --------------------------------------------------------------- inbound

    def receive(
        self,
        timeout: float | None = None,
        *,
        family: str | Iterable[str] | None = None,
        match: Callable[[Message], bool] | None = None,
    ) -> Message:
        """Return the session's next business message that no ``receive()`` took yet.

        Each business message of a session is returned by at most one
        ``receive()``, of any handle in any process: a handle claims it
        atomically in Redis before returning it.  With *family* or *match*,
        the oldest that fits; the ones it skips stay for a later ``receive()``
        of any handle.  A handle's first ``receive()`` starts at the session's
        *floor*, the entry up to which every message was taken, so the next
        request's handle neither gets what an earlier one took nor misses what
        nobody took (unless it was trimmed from the event stream, or the
        handle buffers more than *receive_buffer* untaken ones: it then skips
        the oldest, counted in :attr:`dropped`).  What :meth:`ask` returned
        is not returned here, nor the session's ``start_result`` (including a
        host's restart after a takeover): :meth:`wait_session_ready` has it.
        Raises :class:`ReceiveTimeout` after *timeout*.
        """
        timeout = require_timeout("timeout", timeout)
        wanted = None if family is None else family_names(family)
        if wanted is not None and "event" in wanted:
            raise InvalidArgumentError("events are not business messages: use receive_event()")
        if match is not None and not callable(match):
            raise InvalidArgumentTypeError("match must be callable or None")
        deadline = None if timeout is None else time.monotonic() + timeout
        self._open_inbox(deadline)

        def fits(message: Message) -> bool:
            if wanted is not None and message.family not in wanted and "message" not in wanted:
                return False
            return match is None or bool(match(message))

        candidates: list[tuple[str, Message]] = []

        def found() -> bool:
            candidates.clear()
            for item in self._inbox:
                if fits(item[1]):
                    candidates.append(item)
                    if len(candidates) >= CLAIM_BATCH:
                        break
            return bool(candidates)

        while True:  # each round returns, or drops a candidate; _wait keeps the deadline
            if not self._wait(found, deadline):
                raise ReceiveTimeout(f"nothing received within {timeout}s")
            won, floor = self._claim([entry_id for entry_id, _ in candidates], deadline)
            # The candidates up to the one won leave the buffer: that one is ours, those
            # before it (all, when none was won) other handles took, as all under the floor.
            gone = {entry_id for entry_id, _ in candidates[: won or len(candidates)]}
            low = stream_id(floor)
            with self._lock:
                self._inbox = collections.deque(
                    item for item in self._inbox if item[0] not in gone and stream_id(item[0]) > low
                )
            if won:
                return candidates[won - 1][1]

    def _open_inbox(self, deadline: float | None) -> None:
        """On this handle's first receive(), start buffering messages at the session's floor."""
        with self._lock:
            if self._msg_mark is not None:
                return
        key = self._keys.floor(self.session_id)
        floor = self._redis("receive", lambda r: r.get(key), deadline=deadline)
        start = floor if isinstance(floor, str) else "0-0"
        try:
            stream_id(start)
        except ValueError:  # garbage in Redis: read from the start (claims stay exact)
            self.garbage += 1
            logger.warning("session %s: a malformed receive floor in Redis", self.session_id)
            start = "0-0"
        with self._lock:
            if self._msg_mark is not None:  # another thread of this handle was quicker
                return
            self._msg_mark = stream_id(start)
            if self._pos is None or stream_id(self._pos) > self._msg_mark:
                # Read again from the floor: acks and answers are filed again (the same);
                # events up to where this handle was are not buffered (again).
                if self._pos is not None:
                    self._event_mark = stream_id(self._pos)
                self._pos = start
                self._generation += 1

    def _claim(self, entry_ids: list[str], deadline: float | None) -> tuple[int, str]:
        """Claim the first of *entry_ids* no receive() took: (its 1-based index or 0, floor)."""
        keys = self._keys
        sid = self.session_id
        script_keys = [keys.ev(sid), keys.taken(sid), keys.floor(sid)]
        result: list[Any] = self._redis(
            "receive",
            lambda r: r.eval(_CLAIM, len(script_keys), *script_keys, self._expire, *entry_ids),
            deadline=deadline,
        )
        return int(result[0]), str(result[1])

    def receive_event(self, timeout: float | None = None) -> ServerEvent:
        """Return the next event (packet ``7``) of the session, waiting if needed.

        Events are this handle's own: each handle gets those sent after its first call.
        """
        timeout = require_timeout("timeout", timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            fresh = self._pos is None
        if fresh:
            last = self._last_event_id(deadline)
            with self._lock:
                if self._pos is None:
                    self._pos = last
        taken: list[ServerEvent] = []

        def take() -> bool:
            if self._events:
                taken.append(self._events.popleft()[1])
                return True
            return False

        if not self._wait(take, deadline):
            raise ReceiveTimeout(f"no event within {timeout}s")
        return taken[0]

    def _last_event_id(self, deadline: float | None) -> str:
        """The event stream's last id now (read without the lock)."""
        key = self._keys.ev(self.session_id)
        last = self._redis(
            "receive", lambda r: r.xrevrange(key, "+", "-", count=1), deadline=deadline
        )
        return str(last[0][0]) if last else "0-0"

    # ----------------------------------------------------------------- pump

    def _wait(self, done: Callable[[], bool], deadline: float | None) -> bool:
        """Read the event stream until ``done()`` (checked with the lock held) or *deadline*.

        One thread reads at a time; the others wait for what it files.  Redis
        being down delays the wait, and raises :class:`RelayUnavailableError`
        only when the deadline passes with Redis still down.  A read blocks at
        most half of *redis_timeout* (and not past the deadline), so it returns
        within *redis_timeout* even when Redis stalls.
        """
        key = self._keys.ev(self.session_id)
        down = redis_down_errors()
        longest = max(1, min(500, int(self._io_timeout * 500)))  # ms, half the socket timeout
        while True:
            with self._changed:
                while True:
                    if self._closed:  # first: a closed handle answers nothing, cached or not
                        raise ClientClosedError("the relay client is closed")
                    if done():
                        return True
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        failure = self._down
                        if failure is not None:
                            raise RelayUnavailableError(
                                f"Redis unreachable while waiting: {failure}"
                            ) from failure
                        return False
                    if not self._pumping:
                        self._pumping = True
                        position = self._pos or "0-0"
                        generation = self._generation
                        break
                    self._changed.wait(0.5 if left is None else min(left, 0.5))
            block = longest if left is None else max(1, min(longest, int(left * 1000)))
            entries: list[Any] = []
            error: BaseException | None = None
            try:
                client = self._check()
                reply = client.xread({key: position}, count=500, block=block)
                entries = reply[0][1] if reply else []
            except BaseException as exc:
                refusal = redis_refusal("reading the session's events", exc)
                if refusal is not None or not isinstance(exc, down):
                    with self._changed:
                        self._pumping = False
                        self._changed.notify_all()
                    if refusal is not None:
                        raise refusal from exc
                    raise
                error = exc
            with self._changed:
                self._pumping = False
                self._down = error
                if entries and generation == self._generation:
                    self._file(entries)
                self._changed.notify_all()
            if error is not None:
                pause = 0.1 if deadline is None else min(0.1, deadline - time.monotonic())
                if pause > 0:
                    time.sleep(pause)

    def _file(self, entries: list[Any]) -> None:
        """File read entries: acks, answers, messages and events (the lock held).

        An entry that is not what a host writes (someone else's garbage in Redis: not
        JSON, not an object, a field missing) is skipped, logged and counted in
        :attr:`garbage`: it never reaches a caller as an exception.
        """
        for entry_id, fields in entries:
            self._pos = entry_id
            try:
                self._file_one(entry_id, fields)
            except (ValueError, TypeError, AttributeError, KeyError) as exc:
                self.garbage += 1
                log = logger.warning if self.garbage <= 10 else logger.debug
                log(
                    "session %s: skipped a malformed event stream entry %s: %s",
                    self.session_id,
                    entry_id,
                    exc,
                )

    def _file_one(self, entry_id: str, fields: Mapping[str, str]) -> None:
        kind = fields.get("k")
        if kind == "a":
            error = json.loads(fields["err"]) if fields.get("err") else None
            extra = json.loads(fields["x"]) if fields.get("x") else None
            if not isinstance(error, (Mapping, type(None))) or not isinstance(
                extra, (Mapping, type(None))
            ):
                raise TypeError("an ack whose error or extra is not an object")
            mid = fields["id"]
            _remember(self._acks, mid, (error, extra))
        elif kind == "m":
            envelope = json.loads(fields["e"])
            if not isinstance(envelope, Mapping):
                raise TypeError("a message that is not an object")
            message = from_envelope(envelope)
            asked = fields.get("a")
            if asked:
                part = fields.get("p", "r")
                wanted = _ANSWER_PARTS.get(part)
                if wanted is None or not isinstance(message, wanted):
                    raise TypeError(f"an answer part {part!r} that is a {message.family}")
                answer = self._answers.get(asked)
                if answer is None:
                    answer = {}
                    _remember(self._answers, asked, answer)
                answer[part] = envelope
                return
            if isinstance(message, StartResult):
                return  # wait_session_ready()'s (the host's start outcome), as locally
            place = stream_id(entry_id)
            if self._msg_mark is None or place <= self._msg_mark:
                return  # no receive() yet, or taken already (under the floor)
            self._msg_mark = place
            self._inbox.append((entry_id, message))
            if len(self._inbox) > self._receive_buffer:
                self._inbox.popleft()
                self.dropped += 1
        elif kind == "v":
            place = stream_id(entry_id)
            if self._event_mark is not None and place <= self._event_mark:
                return  # read again after a move back to the floor
            event_data = json.loads(fields["e"])
            if not isinstance(event_data, Mapping):
                raise TypeError("an event that is not an object")
            self._event_mark = place
            self._events.append((entry_id, from_event(event_data)))
            if len(self._events) > self._receive_buffer:
                self._events.popleft()
                self.dropped += 1
        else:
            raise KeyError(f"an entry of no known kind ({kind!r})")


# ---------------------------------------------------------------- helpers


def _remember(table: collections.OrderedDict[str, T], key: str, value: T) -> None:
    table[key] = value
    table.move_to_end(key)
    while len(table) > MEMORY:
        table.popitem(last=False)


def _audio_base64(data: object, encoded: object) -> str:
    if (data is None) == (encoded is None):
        raise InvalidArgumentError("pass exactly one of data (bytes or array) or base64 (str)")
    if encoded is not None:
        if not isinstance(encoded, str):
            raise InvalidArgumentTypeError("base64 must be a str")
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidArgumentError("base64 is not a valid base64 string") from None
        if not raw:
            raise AudioFormatError("audio must not be empty")
        return encoded
    if audio.is_array(data):
        raw = audio.chunk_to_pcm(data)
    elif isinstance(data, (bytes, bytearray, memoryview)):
        raw = bytes(data)
        if not raw.startswith(b"RIFF") and len(raw) % audio.BYTES_PER_SAMPLE:
            raise AudioFormatError(f"16-bit PCM needs an even number of bytes, got {len(raw)}")
    else:
        raise InvalidArgumentTypeError(
            f"audio data must be bytes or a NumPy array, got {type(data).__name__}"
        )
    if not raw:
        raise AudioFormatError("audio must not be empty")
    return base64.b64encode(raw).decode("ascii")


def _raise_refusal(message_id: str, error: Any) -> None:
    """Raise the client's typed error for a host's outcome *error*."""
    kind = error.get("type") if isinstance(error, Mapping) else None
    detail = str(error.get("detail", "")) if isinstance(error, Mapping) else str(error)
    if kind == "ack":
        raise AckError(
            f"the server refused {message_id}: {error.get('error')!r}",
            message_id=message_id,
            error=error.get("error"),
        )
    if kind == "cancelled":
        raise MessageCancelledError(
            f"{message_id} was cut from the outbox unsent by interrupt()", message_id=message_id
        )
    if kind == "start":
        raise SessionStartError(
            f"the server refused to start the session: {error.get('error')!r}",
            error=error.get("error"),
        )
    if kind == "not_started":
        raise SessionNotStartedError(f"{message_id}: {detail}")
    if kind == "invalid":
        raise InvalidArgumentError(f"{message_id}: {detail}")
    if kind == "unknown":
        raise UnknownMessageError(detail, message_id=message_id)
    raise AckError(
        f"the host could not deliver {message_id}: {detail}", message_id=message_id, error=error
    )


def _report(extra: Any, message_id: str) -> InterruptReport:
    data = (extra or {}).get("report") if isinstance(extra, Mapping) else None
    if not isinstance(data, Mapping):
        return InterruptReport()
    result = data.get("result")
    typed = from_envelope(result) if isinstance(result, Mapping) else None
    return InterruptReport(
        cancelled=tuple(data.get("cancelled", ())),
        cancelled_audio=tuple(data.get("cancelled_audio", ())),
        cancelled_text=tuple(data.get("cancelled_text", ())),
        audio_seconds=float(data.get("audio_seconds", 0.0)),
        streams_stopped=int(data.get("streams_stopped", 0)),
        service_told=bool(data.get("service_told", False)),
        via=data.get("via"),
        message_id=data.get("message_id") or message_id,
        result=typed if isinstance(typed, InterruptResult) else None,
    )
