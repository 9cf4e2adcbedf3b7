"""The reference server's rules: handshake checks, session messages, sessions and counters.

:class:`ServerState` decides, for each received ``5`` message, the ack to send,
the server replies to send and the :class:`~.responder.Request` to give the
responder; it keeps the sessions, the remembered message ids, the per-connection
rate limits and the counters.  :func:`authorize` decides whether a handshake is
accepted.  :func:`parse_content` validates a message's ``content``.

Before any rule, every client frame (``3``, ``5`` or garbage) passes the
connection's rate limit, when one is configured (:meth:`ServerState.admit`, a
:class:`TokenBucket` of ``rate_limit`` frames per second with a burst of
``rate_burst``).  A ``5`` over the limit is acked with ``RATE_LIMITED``: not
processed, not remembered, so the client may send it again later; any other
frame over the limit is dropped unanswered.  A connection that goes on
flooding, more than ``KICK_AFTER_BURSTS * rate_burst`` frames refused in a
row, is kicked: the server sends ``2{"reason":"CONNECTION_KICK_OUT"}`` and
closes it.

The rules, in the order they are applied to a ``5`` message:

1. ``content`` must be an object with a string ``type`` and a non-empty string
   ``sessionId``, and be valid for its type, else ``BAD_CONTENT``.  Nothing is
   remembered about a refused message: sending its id again is judged afresh.
2. A ``messageId`` already processed (for this session, or by this app and
   tenant in any session, even one since forgotten) is a duplicate: acked
   again without error, not processed again.  (A duplicate is always one of
   the sender's own messages: the ids are remembered per app and tenant.)
3. A session id not in ``allowed_sessions`` (when given), or a session owned
   by another (app, tenant): ``FORBIDDEN``, whatever the message's type.
4. ``start`` creates or restarts the session; creating one when
   ``max_sessions`` sessions are known already is refused with
   ``TOO_MANY_SESSIONS`` (every known session counts, stopped ones too, until
   it is forgotten after its grace period).  ``dataSend``, ``refreshContext``
   and ``stop`` need the session started and not stopped, else
   ``SESSION_NOT_FOUND``.
5. A processed message binds the connection to its session and is recorded.
   Only processed messages bind: a connection is never bound to a session of
   another (app, tenant), so it never receives that session's pushes.

Token expiry (the server's ``expire_token``): :func:`authorize` refuses an
expired token with 401, and :meth:`ServerState.forget_sessions_of` forgets the
sessions bound to that token's connections, so that a client sending into one
of them again gets ``SESSION_NOT_FOUND`` (and starts it again).

Records: each session keeps its processed messages, texts and audio chunks for
inspection by tests.  With ``record_limit=None`` (the default) they grow
without bound, which is what tests want; with ``record_limit=N`` only the last
``N`` of each are kept (the oldest are dropped; the audio bytes are those of
the last ``N`` chunks), while the totals (``messages_total``,
``audio_total_bytes``, ``audio_duration``) keep counting everything.

Pure: no threads, no sockets, no clock (``now`` is passed in).  Not
thread-safe: the server calls it with its state lock held.
"""

from __future__ import annotations

import base64
import binascii
import copy
import enum
import itertools
from collections import deque
from collections.abc import Container, Iterable, Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

import attrs

from ..exceptions import InvalidArgumentError
from ..ids import RecentIds
from ..options import SessionOptions
from .responder import Request, SessionInfo, audio_duration

__all__ = [
    "ACK_ERRORS",
    "BAD_CONTENT",
    "FORBIDDEN",
    "KICK_AFTER_BURSTS",
    "PATH",
    "RATE_LIMITED",
    "SESSION_NOT_FOUND",
    "TOO_MANY_SESSIONS",
    "Admission",
    "Command",
    "Credentials",
    "HandshakeRefusal",
    "Outcome",
    "Peer",
    "Refusal",
    "ServerState",
    "ServerStats",
    "SessionSnapshot",
    "TokenBucket",
    "authorize",
    "parse_content",
]

#: Ack error: ``content`` is not a valid session message.
BAD_CONTENT = "BAD_CONTENT"
#: Ack error: the session does not exist, was stopped, or was forgotten.
SESSION_NOT_FOUND = "SESSION_NOT_FOUND"
#: Ack error: the session belongs to another app or tenant, or its id is not allowed.
FORBIDDEN = "FORBIDDEN"
#: Ack error: a ``start`` would create a session beyond ``max_sessions``.
TOO_MANY_SESSIONS = "TOO_MANY_SESSIONS"
#: Ack error: the connection is over its rate limit; the message was not processed.
RATE_LIMITED = "RATE_LIMITED"
#: Every ``error`` code the reference server puts in an ack.
ACK_ERRORS = frozenset({BAD_CONTENT, SESSION_NOT_FOUND, FORBIDDEN, TOO_MANY_SESSIONS, RATE_LIMITED})

#: A connection with more than this many bursts' worth of frames refused in a row is kicked.
KICK_AFTER_BURSTS = 10

#: The only path the server accepts WebSocket handshakes on.
PATH = "/ws"

#: How many processed message ids are remembered per session, and globally.
DEDUPE_CAPACITY = 100_000

# Session option names on the wire -> SessionOptions attribute names.
_OPTION_NAMES = {
    "dialogMode": "dialog_mode",
    "duplexMode": "duplex_mode",
    "outputMode": "output_mode",
    "videoOpen": "video_open",
    "format": "format",
    "sampleRate": "sample_rate",
}


# --- handshake -------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Credentials:
    """One accepted (token, app id, tenant id) triple (``repr()`` leaves the token out)."""

    token: str = attrs.field(repr=False)
    app_id: str
    tenant_id: str


@attrs.frozen(kw_only=True)
class Peer:
    """Who a connection belongs to, from its URL's ``t``, ``app`` and ``tenant``.

    ``repr()`` leaves the token out.
    """

    token: str = attrs.field(repr=False)
    app_id: str
    tenant_id: str

    @property
    def owner(self) -> tuple[str, str]:
        """The (app id, tenant id) pair that owns the sessions this peer starts."""
        return (self.app_id, self.tenant_id)


@attrs.frozen
class HandshakeRefusal:
    """An HTTP status and plain-text body to refuse a handshake with."""

    status: int
    text: str


def credential_table(
    credentials: Credentials | Iterable[Credentials] | None,
) -> dict[str, frozenset[tuple[str, str]]] | None:
    """Index *credentials* by token; ``None`` (accept anyone) stays ``None``."""
    if credentials is None:
        return None
    items = [credentials] if isinstance(credentials, Credentials) else list(credentials)
    table: dict[str, set[tuple[str, str]]] = {}
    for item in items:
        if not isinstance(item, Credentials):
            raise TypeError(f"credentials must be Credentials values, got {type(item).__name__}")
        table.setdefault(item.token, set()).add((item.app_id, item.tenant_id))
    return {token: frozenset(owners) for token, owners in table.items()}


def authorize(
    path: str,
    table: Mapping[str, frozenset[tuple[str, str]]] | None,
    expired: Container[str] = frozenset(),
) -> Peer | HandshakeRefusal:
    """Check a handshake's request target against the credential *table*.

    404 for a path other than :data:`PATH`; 400 when ``t``, ``app`` or
    ``tenant`` is missing or empty; 401 for an *expired* token or an unknown
    one; 403 for a known token used with another app or tenant.  A *table* of
    ``None`` accepts any non-empty values but the *expired* tokens.
    """
    parts = urlsplit(path)
    if parts.path != PATH:
        return HandshakeRefusal(404, f"Not found: use {PATH}.\n")
    query = parse_qs(parts.query, keep_blank_values=True)
    values: dict[str, str] = {}
    for name in ("t", "app", "tenant"):
        value = query.get(name, [""])[0]
        if not value:
            return HandshakeRefusal(400, f"Missing query parameter {name!r}.\n")
        values[name] = value
    peer = Peer(token=values["t"], app_id=values["app"], tenant_id=values["tenant"])
    if peer.token in expired:
        return HandshakeRefusal(401, "Token expired.\n")
    if table is not None:
        owners = table.get(peer.token)
        if owners is None:
            return HandshakeRefusal(401, "Unknown token.\n")
        if peer.owner not in owners:
            return HandshakeRefusal(403, "Token not valid for this app and tenant.\n")
    return peer


# --- message contents ------------------------------------------------------------------------


@attrs.frozen
class Refusal:
    """A message refused before any state was looked at: its ack error and detail."""

    error: str
    detail: str


@attrs.frozen(kw_only=True)
class Command:
    """A valid session message, ready to apply to the state."""

    type: str
    session_id: str
    content: dict[str, Any]
    options: Mapping[str, Any] = attrs.field(factory=dict)  #: SessionOptions keyword arguments
    text: str | None = None
    audio: bytes | None = None


def _options(content: Mapping[str, Any]) -> dict[str, Any]:
    return {attr: content[wire] for wire, attr in _OPTION_NAMES.items() if wire in content}


def parse_content(content: object) -> Command | Refusal:
    """Validate the ``content`` of a ``5`` message (pure, no state)."""
    if not isinstance(content, dict) or not isinstance(content.get("type"), str):
        return Refusal(BAD_CONTENT, "content must be an object with a string 'type'")
    kind: str = content["type"]
    session_id = content.get("sessionId")
    if not isinstance(session_id, str) or not session_id:
        return Refusal(BAD_CONTENT, "'sessionId' must be a non-empty string")
    if kind in ("start", "refreshContext"):
        options = _options(content)
        try:
            SessionOptions(**options)
        except InvalidArgumentError as exc:
            return Refusal(BAD_CONTENT, str(exc))
        return Command(type=kind, session_id=session_id, content=content, options=options)
    if kind == "dataSend":
        text, audio = content.get("text"), content.get("audio")
        if (text is None) == (audio is None):
            return Refusal(BAD_CONTENT, "dataSend needs exactly one of 'text' and 'audio'")
        if text is not None:
            if not isinstance(text, str):
                return Refusal(BAD_CONTENT, "'text' must be a string")
            return Command(type=kind, session_id=session_id, content=content, text=text)
        if not isinstance(audio, str):
            return Refusal(BAD_CONTENT, "'audio' must be a base64 string")
        try:
            data = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            return Refusal(BAD_CONTENT, "'audio' is not valid base64")
        return Command(type=kind, session_id=session_id, content=content, audio=data)
    if kind == "stop":
        return Command(type=kind, session_id=session_id, content=content)
    return Refusal(BAD_CONTENT, f"unknown content type {kind!r}")


# --- sessions and counters -------------------------------------------------------------------


@attrs.define
class ServerStats:
    """Counters since the server was made (``restart`` keeps them).

    The server's ``stats`` property returns a copy: a snapshot.
    """

    connections_total: int = 0  #: WebSocket connections accepted
    connections_open: int = 0  #: WebSocket connections open now
    handshakes_refused: int = 0  #: handshakes answered with an HTTP error (503 when full too)
    frames_received: int = 0  #: frames of any kind received from clients
    bad_frames: int = 0  #: frames that are not a valid ``3`` or ``5`` (binary ones too)
    messages_processed: int = 0  #: ``5`` messages accepted and recorded
    messages_refused: int = 0  #: ``5`` messages acked with an error (``RATE_LIMITED`` too)
    duplicates: int = 0  #: ``5`` messages with an already processed id
    acks_sent: int = 0  #: ``6`` frames sent
    pings_answered: int = 0  #: ``4`` frames sent
    frames_rate_limited: int = 0  #: client frames refused by the rate limit
    connections_kicked: int = 0  #: connections closed with ``CONNECTION_KICK_OUT`` for flooding


@attrs.frozen(kw_only=True)
class SessionSnapshot:
    """A copy of everything the server recorded for one session (lists are fresh copies).

    With a ``record_limit``, ``messages``, ``texts``, ``audio_chunks`` and
    ``audio_bytes`` hold only the most recent records; the totals count everything.
    """

    session_id: str
    app_id: str
    tenant_id: str
    options: SessionOptions
    started: bool
    stopped: bool
    connected: bool  #: whether a connection is bound to it now
    messages: list[tuple[str, dict[str, Any]]]  #: (messageId, content), every processed message
    texts: list[str]
    audio_bytes: bytes  #: every audio chunk kept, decoded, concatenated
    audio_chunks: list[tuple[float, int]]  #: (monotonic arrival time, decoded bytes) per chunk
    audio_duration: float  #: seconds of audio (16-bit mono at the rate in force per chunk)
    messages_total: int = 0  #: messages processed in this session, kept or not
    audio_total_bytes: int = 0  #: decoded audio bytes received in this session, kept or not

    @property
    def format(self) -> str:
        """The session's audio format."""
        return self.options.format

    @property
    def sample_rate(self) -> int:
        """The session's sample rate in Hz."""
        return self.options.sample_rate


@attrs.define(kw_only=True)
class _Session:
    session_id: str
    owner: tuple[str, str]
    options: SessionOptions
    record_limit: int | None = None
    stopped: bool = False
    ids: RecentIds = attrs.field(factory=lambda: RecentIds(DEDUPE_CAPACITY))
    connections: set[int] = attrs.field(factory=set)
    # Set when the last connection went away; an expiry carrying another token is stale.
    detach_token: int | None = None
    messages: deque[tuple[str, dict[str, Any]]] = attrs.field(init=False)
    texts: deque[str] = attrs.field(init=False)
    audio: bytearray = attrs.field(factory=bytearray)
    audio_chunks: deque[tuple[float, int]] = attrs.field(init=False)
    audio_duration: float = 0.0
    messages_total: int = 0
    audio_total: int = 0

    def __attrs_post_init__(self) -> None:
        self.messages = deque(maxlen=self.record_limit)
        self.texts = deque(maxlen=self.record_limit)
        # Not a bounded deque: dropping a chunk must also drop its bytes from `audio`.
        self.audio_chunks = deque()

    def add_audio(self, chunk: bytes, now: float, duration: float) -> None:
        self.audio += chunk
        self.audio_chunks.append((now, len(chunk)))
        self.audio_total += len(chunk)
        self.audio_duration += duration
        if self.record_limit is not None:
            while len(self.audio_chunks) > self.record_limit:
                _, size = self.audio_chunks.popleft()
                del self.audio[:size]

    def info(self) -> SessionInfo:
        return SessionInfo(
            session_id=self.session_id,
            app_id=self.owner[0],
            tenant_id=self.owner[1],
            options=self.options,
            stopped=self.stopped,
            audio_total_bytes=self.audio_total,
            audio_total_duration=self.audio_duration,
        )

    def snapshot(self) -> SessionSnapshot:
        return SessionSnapshot(
            session_id=self.session_id,
            app_id=self.owner[0],
            tenant_id=self.owner[1],
            options=self.options,
            started=True,
            stopped=self.stopped,
            connected=bool(self.connections),
            messages=list(self.messages),
            texts=list(self.texts),
            audio_bytes=bytes(self.audio),
            audio_chunks=list(self.audio_chunks),
            audio_duration=self.audio_duration,
            messages_total=self.messages_total,
            audio_total_bytes=self.audio_total,
        )


@attrs.frozen(kw_only=True)
class Outcome:
    """What to send for one ``5`` message: the ack body, then server replies, then responder."""

    ack: dict[str, Any]
    replies: list[dict[str, Any]] = attrs.field(factory=list)
    request: Request | None = None  #: give it to the responder (``dataSend`` only)
    duplicate: bool = False


def _ack(message_id: str, error: str | None = None, detail: str = "") -> dict[str, Any]:
    if error is None:
        return {"messageId": message_id}
    return {"messageId": message_id, "error": error, "detail": detail}


# --- rate limits -----------------------------------------------------------------------------


class Admission(enum.Enum):
    """What to do with one client frame, as decided by :meth:`ServerState.admit`."""

    ADMIT = "admit"  #: handle it
    REFUSE = "refuse"  #: over the limit: ack a ``5`` with ``RATE_LIMITED``, drop anything else
    KICK = "kick"  #: flooding: send ``2{"reason":"CONNECTION_KICK_OUT"}`` and close


@attrs.define(kw_only=True)
class TokenBucket:
    """A token bucket: *rate* tokens per second, at most *burst* kept; it starts full.

    Pure: the caller passes a monotonic *now* to :meth:`take`.
    """

    rate: float
    burst: int
    tokens: float = attrs.field(init=False)
    stamp: float | None = attrs.field(default=None, init=False)  # the last take()'s now
    refused_in_row: int = attrs.field(default=0, init=False)  #: refusals since the last take

    def __attrs_post_init__(self) -> None:
        self.tokens = float(self.burst)

    def take(self, now: float) -> bool:
        """Take one token at time *now*; return ``False`` (and count it) if there is none."""
        if self.stamp is not None and now > self.stamp:
            self.tokens = min(float(self.burst), self.tokens + (now - self.stamp) * self.rate)
        if self.stamp is None or now > self.stamp:
            self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            self.refused_in_row = 0
            return True
        self.refused_in_row += 1
        return False


# --- the state -------------------------------------------------------------------------------


def _positive_or_none(name: str, value: float | None) -> None:
    if value is not None and (isinstance(value, bool) or not value > 0):
        raise ValueError(f"{name} must be > 0 or None, got {value!r}")


class ServerState:
    """Sessions, remembered message ids, rate limits and counters; see the module docstring.

    *allowed_sessions* ``None`` allows any session id; *max_sessions*,
    *rate_limit* and *record_limit* ``None`` turn those limits off.
    """

    def __init__(
        self,
        *,
        allowed_sessions: Iterable[str] | None = None,
        max_sessions: int | None = None,
        rate_limit: float | None = None,
        rate_burst: int = 100,
        record_limit: int | None = None,
    ) -> None:
        if isinstance(allowed_sessions, str):
            raise TypeError("allowed_sessions must be an iterable of session ids, not a str")
        _positive_or_none("max_sessions", max_sessions)
        _positive_or_none("rate_limit", rate_limit)
        _positive_or_none("record_limit", record_limit)
        if isinstance(rate_burst, bool) or not rate_burst >= 1:
            raise ValueError(f"rate_burst must be >= 1, got {rate_burst!r}")
        self.allowed_sessions = None if allowed_sessions is None else frozenset(allowed_sessions)
        self.max_sessions = max_sessions
        self.rate_limit = rate_limit
        self.rate_burst = rate_burst
        self.record_limit = record_limit
        self.stats = ServerStats()
        self.sessions: dict[str, _Session] = {}
        # Processed ids keyed by owner, so they outlive a forgotten session.
        self._global_ids = RecentIds(DEDUPE_CAPACITY)
        self._tokens = itertools.count(1)
        # One bucket per connection that sent a frame, dropped by detach().
        self._buckets: dict[int, TokenBucket] = {}

    def reset(self) -> None:
        """Forget every session and remembered id (counters are kept)."""
        self.sessions.clear()
        self._global_ids = RecentIds(DEDUPE_CAPACITY)

    def snapshot(self, session_id: str) -> SessionSnapshot | None:
        """Return a copy of session *session_id*'s records, or ``None`` if unknown."""
        session = self.sessions.get(session_id)
        return None if session is None else session.snapshot()

    def connections_of(self, session_id: str) -> set[int]:
        """Return the ids of the connections bound to *session_id*."""
        session = self.sessions.get(session_id)
        return set() if session is None else set(session.connections)

    def admit(self, connection_id: int, *, now: float) -> Admission:
        """Charge one received frame to *connection_id*'s rate limit at time *now*.

        Call it for every client frame before handling it.  On ``REFUSE``, ack
        a ``5`` with :meth:`rate_limited` and drop any other frame; on ``KICK``,
        send ``2{"reason":"CONNECTION_KICK_OUT"}`` and close the connection.
        """
        if self.rate_limit is None:
            return Admission.ADMIT
        bucket = self._buckets.get(connection_id)
        if bucket is None:
            bucket = self._buckets[connection_id] = TokenBucket(
                rate=self.rate_limit, burst=self.rate_burst
            )
        if bucket.take(now):
            return Admission.ADMIT
        self.stats.frames_rate_limited += 1
        if bucket.refused_in_row > KICK_AFTER_BURSTS * self.rate_burst:
            self.stats.connections_kicked += 1
            return Admission.KICK
        return Admission.REFUSE

    def rate_limited(self, message_id: str) -> Outcome:
        """Return the ``RATE_LIMITED`` ack for a ``5`` that :meth:`admit` refused."""
        return self._refuse(
            message_id,
            RATE_LIMITED,
            f"over {self.rate_limit:g} frames per second (burst {self.rate_burst}): "
            "not processed, send it again later",
        )

    def handle_message(
        self,
        peer: Peer,
        connection_id: int,
        message_id: str,
        command: Command | Refusal,
        *,
        now: float,
    ) -> Outcome:
        """Apply one ``5`` message from *connection_id*; return what to send."""
        if isinstance(command, Refusal):
            return self._refuse(message_id, command.error, command.detail)
        session = self.sessions.get(command.session_id)
        owned = session is not None and session.owner == peer.owner
        global_key = "\0".join((peer.app_id, peer.tenant_id, message_id))
        if (owned and session is not None and message_id in session.ids) or (
            global_key in self._global_ids
        ):
            self.stats.duplicates += 1
            return Outcome(ack=_ack(message_id), duplicate=True)
        if self.allowed_sessions is not None and command.session_id not in self.allowed_sessions:
            return self._refuse(
                message_id, FORBIDDEN, f"session {command.session_id!r} is not allowed here"
            )
        if session is not None and not owned:
            return self._refuse(
                message_id, FORBIDDEN, f"session {command.session_id!r} is not yours"
            )

        replies: list[dict[str, Any]] = []
        request: Request | None = None
        if command.type == "start":
            options = SessionOptions(**command.options)
            if session is None:
                if self.max_sessions is not None and len(self.sessions) >= self.max_sessions:
                    return self._refuse(
                        message_id,
                        TOO_MANY_SESSIONS,
                        f"the server holds its maximum of {self.max_sessions} sessions",
                    )
                session = _Session(
                    session_id=command.session_id,
                    owner=peer.owner,
                    options=options,
                    record_limit=self.record_limit,
                )
                self.sessions[command.session_id] = session
            session.options = options
            session.stopped = False
            replies.append(
                {
                    "type": "startResult",
                    "sessionId": session.session_id,
                    "format": options.format,
                    "sampleRate": str(options.sample_rate),
                }
            )
        elif session is None or session.stopped:
            return self._refuse(
                message_id,
                SESSION_NOT_FOUND,
                f"session {command.session_id!r} is not started (or was stopped or expired)",
            )
        elif command.type == "dataSend":
            request = self._record_data(session, message_id, command, now=now)
        elif command.type == "refreshContext":
            session.options = attrs.evolve(session.options, **command.options)
            replies.append({"type": "refreshResult", "sessionId": session.session_id})
        else:  # stop
            session.stopped = True
            replies.append({"type": "stopResult", "sessionId": session.session_id})

        session.connections.add(connection_id)
        session.detach_token = None
        session.ids.add(message_id)
        self._global_ids.add(global_key)
        session.messages.append((message_id, command.content))
        session.messages_total += 1
        self.stats.messages_processed += 1
        return Outcome(ack=_ack(message_id), replies=replies, request=request)

    def _refuse(self, message_id: str, error: str, detail: str) -> Outcome:
        self.stats.messages_refused += 1
        return Outcome(ack=_ack(message_id, error, detail))

    def _record_data(
        self, session: _Session, message_id: str, command: Command, *, now: float
    ) -> Request:
        duration = 0.0
        if command.text is not None:
            session.texts.append(command.text)
        if command.audio is not None:
            duration = audio_duration(
                command.audio,
                audio_format=session.options.format,
                sample_rate=session.options.sample_rate,
            )
            session.add_audio(command.audio, now, duration)
        return Request(
            message_id=message_id,
            session=session.info(),
            content=copy.deepcopy(command.content),
            text=command.text,
            audio=command.audio,
            audio_duration=duration,
        )

    def detach(self, connection_id: int) -> list[tuple[str, int]]:
        """Unbind a closed connection; return (session id, expiry token) for orphaned sessions.

        The caller forgets each of them with :meth:`expire` after the grace period.
        """
        self._buckets.pop(connection_id, None)
        orphans: list[tuple[str, int]] = []
        for session in self.sessions.values():
            if connection_id in session.connections:
                session.connections.discard(connection_id)
                if not session.connections:
                    session.detach_token = next(self._tokens)
                    orphans.append((session.session_id, session.detach_token))
        return orphans

    def forget_sessions_of(self, connection_ids: Container[int]) -> list[str]:
        """Forget every session bound to one of *connection_ids*; return their ids.

        For a token that expired: a client that sends into one of them again
        gets ``SESSION_NOT_FOUND`` and starts it afresh.  Remembered message
        ids are kept, so a processed message sent again is still a duplicate.
        """
        forgotten = [
            session_id
            for session_id, session in self.sessions.items()
            if any(connection_id in connection_ids for connection_id in session.connections)
        ]
        for session_id in forgotten:
            del self.sessions[session_id]
        return forgotten

    def expire(self, session_id: str, token: int) -> bool:
        """Forget *session_id* if it is still orphaned since the detach that gave *token*."""
        session = self.sessions.get(session_id)
        if session is None or session.connections or session.detach_token != token:
            return False
        del self.sessions[session_id]
        return True
