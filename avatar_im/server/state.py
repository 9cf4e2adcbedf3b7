"""The reference server's rules: handshake checks, session messages, sessions and counters.

:class:`ServerState` decides, for each received ``5`` message, the ack to send,
the contents to answer with (*replies* to the sender in the ``echo`` profile,
*pushes* to every connection of the session in the ``cloud`` profile), the
:class:`~.responder.Request` to give a responder and the texts to answer; it
keeps the sessions (each with its :class:`~.conversation.Conversation`), the
remembered message ids, the per-connection rate limits and the counters.
:func:`authorize` decides whether a handshake is accepted.
:func:`parse_content` validates a message's ``content``.

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
   it is forgotten after its grace period).  ``dataSend``, ``refreshContext``,
   ``suspend``, ``recover`` and ``stop`` need the session started and not
   stopped, else ``SESSION_NOT_FOUND``.
5. A processed message binds the connection to its session and is recorded.
   Only processed messages bind, and :meth:`ServerState.adopt` (a new
   connection of the token that used an orphaned session last): a connection
   is never bound to a session of another (app, tenant), so it never receives
   that session's pushes.

What a processed message gives (wire strings from :mod:`avatar_im.families`):

* ``start``: ``startResult`` ``{type, sessionId, format, sampleRate}`` (a
  restart first ends a broadcast, as ``stop``); ``stop``: a partial utterance's
  ``asrContent``, the broadcast ended (``broadcastEnd`` interrupted, queue
  dropped), then ``stopResult`` ``{type, sessionId}``; ``suspend`` and
  ``recover``: ``suspendResult``/``recoverResult`` ``{type, sessionId}``.
  Both profiles.
* ``refreshContext``: ``refreshResult`` in ``echo``, nothing in ``cloud``.
  ``start`` and ``refreshContext`` may carry other keys, recorded as the
  session's ``extras`` and otherwise ignored.
* ``dataSend``: with ``duplexCommand`` ``{"robotAction": "INTERRUPT"}``, an
  interrupt first (see :mod:`.conversation`; in ``echo`` only the
  ``interruptResult``).  Then its text or audio, recorded always; while the
  session is suspended, nothing more.  Else a custom responder's
  :class:`~.responder.Request` (and always in ``echo``, whose responder is
  :func:`~.responder.default_responder`); else (``cloud``) a text is to be
  answered, and audio goes through the speech detection, which may give
  ``asrContent`` and a heard text to answer.  The server answers each text with
  its *reply* callable, outside the lock, and gives the answer to
  :meth:`ServerState.say`: ``replyContent`` and the broadcast.

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

Between messages, :meth:`ServerState.advance` brings a session's conversation
up to a given time (the server calls it at :meth:`ServerState.next_deadline`),
and :meth:`ServerState.interrupt` interrupts it from outside (the OpenAPI).

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
from ..families import FIELDS, MODELLED_INTERRUPT, UPSTREAM_BY_NAME
from ..ids import RecentIds
from ..options import SessionOptions
from .conversation import (
    DEFAULT_CONFIG,
    Conversation,
    ConversationConfig,
    Transcripts,
    result_content,
    snapshot_fields,
)
from .responder import Request, SessionInfo, audio_duration

__all__ = [
    "ACK_ERRORS",
    "BAD_CONTENT",
    "CLOUD",
    "ECHO",
    "FORBIDDEN",
    "KICK_AFTER_BURSTS",
    "PATH",
    "PROFILES",
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

#: The profile that models the cloud's message families (the default).
CLOUD = "cloud"
#: The profile that answers with the reference server's own exact replies, for tests.
ECHO = "echo"
#: Every profile a server may have.
PROFILES = (CLOUD, ECHO)

# Client message types, from the one table of wire strings.
_START = UPSTREAM_BY_NAME["start"].wire_type
_DATA_SEND = UPSTREAM_BY_NAME["data_send"].wire_type
_REFRESH = UPSTREAM_BY_NAME["refresh"].wire_type
_STOP = UPSTREAM_BY_NAME["stop"].wire_type
_SUSPEND = UPSTREAM_BY_NAME["suspend"].wire_type
_RECOVER = UPSTREAM_BY_NAME["recover"].wire_type
_TYPE = "type"
_SESSION_ID = FIELDS["session_id"]
_TEXT = FIELDS["text"]


def _modelled_interrupt() -> tuple[str, Mapping[str, object]]:
    """(``duplexCommand``, its items that make an interrupt), from the table."""
    for key, value in MODELLED_INTERRUPT.items():
        if key != _TYPE and isinstance(value, Mapping):
            return key, value
    raise AssertionError("MODELLED_INTERRUPT names no command object")  # pragma: no cover


# The modelled IM-level interrupt: a dataSend whose duplexCommand object holds these items.
_DUPLEX_COMMAND, _INTERRUPT_ITEMS = _modelled_interrupt()
# Keys of start and refreshContext that are not pass-through extras.
_NOT_EXTRAS = frozenset({_TYPE, _SESSION_ID, *_OPTION_NAMES})


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
    #: start and refreshContext: the keys passed through beside the six options (ignored).
    extras: Mapping[str, Any] = attrs.field(factory=dict)
    text: str | None = None
    audio: bytes | None = None
    #: dataSend: whether it carries the modelled interrupt (``duplexCommand`` INTERRUPT).
    interrupt: bool = False


def _options(content: Mapping[str, Any]) -> dict[str, Any]:
    return {attr: content[wire] for wire, attr in _OPTION_NAMES.items() if wire in content}


def _is_interrupt(duplex_command: Mapping[str, Any]) -> bool:
    return all(duplex_command.get(key) == value for key, value in _INTERRUPT_ITEMS.items())


def parse_content(content: object) -> Command | Refusal:
    """Validate the ``content`` of a ``5`` message (pure, no state).

    ``start`` and ``refreshContext`` may carry any other keys (``voice``,
    ``emotion``, ``characterCode``, ``extInfo``...): they are kept as
    :attr:`Command.extras` and otherwise ignored; the six known options are
    validated.  ``dataSend`` needs exactly one of ``text`` and ``audio``, unless
    it carries a ``duplexCommand`` object, when it may carry neither.
    ``suspend`` and ``recover`` need only the session id.
    """
    if not isinstance(content, dict) or not isinstance(content.get(_TYPE), str):
        return Refusal(BAD_CONTENT, "content must be an object with a string 'type'")
    kind: str = content[_TYPE]
    session_id = content.get(_SESSION_ID)
    if not isinstance(session_id, str) or not session_id:
        return Refusal(BAD_CONTENT, "'sessionId' must be a non-empty string")
    if kind in (_START, _REFRESH):
        options = _options(content)
        try:
            SessionOptions(**options)
        except InvalidArgumentError as exc:
            return Refusal(BAD_CONTENT, str(exc))
        extras = {key: value for key, value in content.items() if key not in _NOT_EXTRAS}
        return Command(
            type=kind, session_id=session_id, content=content, options=options, extras=extras
        )
    if kind == _DATA_SEND:
        return _parse_data(session_id, content)
    if kind in (_STOP, _SUSPEND, _RECOVER):
        return Command(type=kind, session_id=session_id, content=content)
    return Refusal(BAD_CONTENT, f"unknown content type {kind!r}")


def _parse_data(session_id: str, content: dict[str, Any]) -> Command | Refusal:
    text, audio = content.get(_TEXT), content.get("audio")
    duplex = content.get(_DUPLEX_COMMAND)
    if duplex is not None and not isinstance(duplex, dict):
        return Refusal(BAD_CONTENT, f"{_DUPLEX_COMMAND!r} must be an object")
    interrupt = duplex is not None and _is_interrupt(duplex)
    if text is not None and audio is not None:
        return Refusal(BAD_CONTENT, "dataSend needs exactly one of 'text' and 'audio'")
    if text is None and audio is None:
        if duplex is None:
            return Refusal(BAD_CONTENT, "dataSend needs exactly one of 'text' and 'audio'")
        return Command(type=_DATA_SEND, session_id=session_id, content=content, interrupt=interrupt)
    if text is not None:
        if not isinstance(text, str):
            return Refusal(BAD_CONTENT, "'text' must be a string")
        return Command(
            type=_DATA_SEND, session_id=session_id, content=content, text=text, interrupt=interrupt
        )
    if not isinstance(audio, str):
        return Refusal(BAD_CONTENT, "'audio' must be a base64 string")
    try:
        data = base64.b64decode(audio, validate=True)
    except (binascii.Error, ValueError):
        return Refusal(BAD_CONTENT, "'audio' is not valid base64")
    return Command(
        type=_DATA_SEND, session_id=session_id, content=content, audio=data, interrupt=interrupt
    )


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
    #: The pass-through keys of start and refreshContext in force (``voice``, ``extInfo``...).
    extras: dict[str, Any] = attrs.field(factory=dict)
    suspended: bool = False  #: between a ``suspend`` and a ``recover``
    speaking: bool = False  #: whether a sentence is being spoken (``cloud`` profile)
    #: (sentenceId, text, interrupted or ``None`` while speaking) per sentence started.
    broadcasts: list[tuple[str, str, bool | None]] = attrs.field(factory=list)
    queued: list[str] = attrs.field(factory=list)  #: texts of the sentences waiting their turn
    heard: list[str] = attrs.field(factory=list)  #: the texts sent in ``asrContent``, in order
    interrupts: int = 0  #: interrupts handled (IM message or :meth:`interrupt`)

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
    conversation: Conversation
    record_limit: int | None = None
    stopped: bool = False
    # The token of the connection that sent the last processed message: a new connection
    # with the same token is bound at once to this session if it is orphaned.
    last_token: str = attrs.field(default="", repr=False)
    extras: dict[str, Any] = attrs.field(factory=dict)
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
            extras=copy.deepcopy(self.extras),
            **snapshot_fields(self.conversation),
        )


@attrs.frozen(kw_only=True)
class Outcome:
    """What to send for one ``5`` message, in this order.

    The ack body; then *replies*, sent to the sending connection (``echo``
    profile); then *pushes*, sent to every connection bound to the session
    (``cloud`` profile); then the responder's replies to *request*; then, for
    each of *answers*, the server's reply text given to :meth:`ServerState.say`.
    """

    ack: dict[str, Any]
    replies: list[dict[str, Any]] = attrs.field(factory=list)
    pushes: list[dict[str, Any]] = attrs.field(factory=list)
    request: Request | None = None  #: give it to the responder (``dataSend`` only)
    answers: list[str] = attrs.field(factory=list)  #: texts to answer (``cloud`` profile)
    session_id: str | None = None  #: the session of the message, once processed
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
    *profile* is :data:`CLOUD` or :data:`ECHO`; *custom_responder* true means
    that a responder answers ``dataSend`` text and audio instead of the profile
    (the ``echo`` profile always has one); *conversation* holds the ``cloud``
    profile's timings and threshold.
    """

    def __init__(
        self,
        *,
        allowed_sessions: Iterable[str] | None = None,
        max_sessions: int | None = None,
        rate_limit: float | None = None,
        rate_burst: int = 100,
        record_limit: int | None = None,
        profile: str = CLOUD,
        custom_responder: bool = False,
        conversation: ConversationConfig = DEFAULT_CONFIG,
    ) -> None:
        if profile not in PROFILES:
            raise ValueError(f"profile must be one of {', '.join(PROFILES)}, got {profile!r}")
        if not isinstance(conversation, ConversationConfig):
            raise TypeError(f"conversation must be a ConversationConfig, got {conversation!r}")
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
        self.profile = profile
        # Whether the profile answers dataSend text and audio (else the responder does).
        self._modelled_data = profile == CLOUD and not custom_responder
        self.conversation_config = conversation
        self.stats = ServerStats()
        self.sessions: dict[str, _Session] = {}
        # What hear() queued, per session and shared; kept by reset() (test scripts).
        self.transcripts = Transcripts()
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

        out: list[dict[str, Any]] = []  # what the message gives, in order (replies or pushes)
        request: Request | None = None
        answers: list[str] = []
        if command.type == _START:
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
                    conversation=Conversation(
                        command.session_id,
                        config=self.conversation_config,
                        transcripts=self.transcripts,
                        record_limit=self.record_limit,
                    ),
                    record_limit=self.record_limit,
                )
                self.sessions[command.session_id] = session
            else:
                out += session.conversation.restart(now).contents
            session.options = options
            session.extras = copy.deepcopy(dict(command.extras))
            session.stopped = False
            out.append(
                {
                    **result_content("start_result", session.session_id),
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
        elif command.type == _DATA_SEND:
            request = self._on_data(session, message_id, command, out, answers, now=now)
        elif command.type == _REFRESH:
            session.options = attrs.evolve(session.options, **command.options)
            session.extras.update(copy.deepcopy(dict(command.extras)))
            if self.profile == ECHO:
                out.append(result_content("refresh_result", session.session_id))
        elif command.type == _SUSPEND:
            out += session.conversation.suspend(now).contents
        elif command.type == _RECOVER:
            out += session.conversation.recover(now).contents
        else:  # stop
            out += session.conversation.stop(now).contents
            session.stopped = True
            out.append(result_content("stop_result", session.session_id))

        session.connections.add(connection_id)
        session.detach_token = None
        session.last_token = peer.token
        session.ids.add(message_id)
        self._global_ids.add(global_key)
        session.messages.append((message_id, command.content))
        session.messages_total += 1
        self.stats.messages_processed += 1
        echo = self.profile == ECHO
        return Outcome(
            ack=_ack(message_id),
            replies=out if echo else [],
            pushes=[] if echo else out,
            request=request,
            answers=answers,
            session_id=session.session_id,
        )

    def _on_data(
        self,
        session: _Session,
        message_id: str,
        command: Command,
        out: list[dict[str, Any]],
        answers: list[str],
        *,
        now: float,
    ) -> Request | None:
        """Apply a ``dataSend``: add what it gives to *out* and *answers*; return a Request."""
        conversation = session.conversation
        if command.interrupt:
            out += conversation.interrupt(now).contents
        if command.text is None and command.audio is None:
            return None
        request = self._record_data(session, message_id, command, now=now)
        if conversation.suspended:
            return None
        if not self._modelled_data:
            return request
        if command.text is not None:
            answers.append(command.text)
        elif command.audio is not None:
            step = conversation.audio(
                command.audio,
                now,
                audio_format=session.options.format,
                sample_rate=session.options.sample_rate,
            )
            out += step.contents
            answers += step.answers
        return None

    # --- the conversation, between messages ------------------------------------------------

    def _live(self, session_id: str) -> _Session | None:
        session = self.sessions.get(session_id)
        return None if session is None or session.stopped else session

    def say(self, session_id: str, text: str, *, now: float) -> list[dict[str, Any]]:
        """Answer *text* in *session_id* (``replyContent`` and its broadcast); return pushes.

        Nothing if the session was stopped or forgotten meanwhile.
        """
        session = self._live(session_id)
        return [] if session is None else session.conversation.say(text, now).contents

    def advance(self, session_id: str, *, now: float) -> tuple[list[dict[str, Any]], list[str]]:
        """Bring *session_id*'s conversation up to *now*: (pushes, texts to answer)."""
        session = self._live(session_id)
        if session is None:
            return [], []
        step = session.conversation.advance(now)
        return step.contents, step.answers

    def next_deadline(self, session_id: str) -> float | None:
        """When to call :meth:`advance` for *session_id* next (``None``: no need)."""
        session = self._live(session_id)
        return None if session is None else session.conversation.next_deadline()

    def interrupt(self, session_id: str, *, now: float) -> tuple[bool, list[dict[str, Any]]] | None:
        """Interrupt *session_id*: (whether it was speaking, pushes); ``None`` if not started."""
        session = self._live(session_id)
        if session is None:
            return None
        step = session.conversation.interrupt(now)
        # The last content is the interruptResult, which says whether it was speaking.
        return bool(step.contents[-1][FIELDS["interrupted"]]), step.contents

    def hear(self, text: str, session_id: str | None = None) -> None:
        """Queue *text* as what the next utterance (of *session_id*, or anyone's) says."""
        self.transcripts.add(text, session_id)

    def adopt(self, connection_id: int, peer: Peer) -> list[str]:
        """Bind a new connection to the orphaned sessions *peer*'s token used last.

        Only sessions of *peer*'s (app, tenant), not stopped, with no connection
        (within their grace period), whose last processed message came with the
        same token.  Their expiry is cancelled.  Return their ids.
        """
        adopted = []
        for session in self.sessions.values():
            if (
                session.owner == peer.owner
                and not session.stopped
                and not session.connections
                and session.last_token == peer.token
            ):
                session.connections.add(connection_id)
                session.detach_token = None
                adopted.append(session.session_id)
        return adopted

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
