"""The client side of the protocol as a state machine, with no I/O (sans-I/O).

Rules of this module:

* Inputs are method calls: the transport opened or was lost
  (:meth:`ClientProtocol.connection_made`, :meth:`~ClientProtocol.connection_lost`),
  a frame arrived (:meth:`~ClientProtocol.receive`), time passed
  (:meth:`~ClientProtocol.tick`), or the application asked to send something.
  Every input that depends on time takes ``now`` (monotonic seconds) or
  ``now_ms`` (wall-clock milliseconds, for message ids) from the caller.
* Outputs are pulled: :meth:`~ClientProtocol.data_to_send` hands out the frames
  to write, in order; :meth:`~ClientProtocol.events_received` the events for
  the application.  After every input the caller must pull both.
* No threads, no sockets, no clock, no sleeping.  The caller serialises calls.

Delivery model.  Every business message goes into the *outbox* when a send
method returns its id, and leaves it when the server acknowledges it (``6``);
with ``require_acks=False`` it leaves when it is handed out for writing.  The
outbox is ordered; frames are handed out strictly in that order.  A message
that needs a ready session (text, audio, refresh, stop, and anything sent
while a ``start`` is pending) is held while the session is starting; so is
everything behind it.  When the connection is lost, every unacknowledged
message is handed out again, in its original order, once a connection is
made; the server's de-duplication by ``messageId`` makes that exactly-once.
"""

from __future__ import annotations

import collections
import enum
from collections.abc import Callable
from typing import Any, ClassVar

import attrs

from . import packets
from .exceptions import (
    ClientClosedError,
    InvalidArgumentError,
    OutboxFullError,
    ProtocolError,
    SessionNotStartedError,
    SessionStartError,
)
from .ids import MessageIdFactory, RecentIds, default_id_factory
from .options import SessionOptions
from .packets import Packet, PacketType

__all__ = [
    "OUTCOME_MEMORY",
    "AckPolicy",
    "Acked",
    "Accepted",
    "ClientProtocol",
    "DeadPeer",
    "Event",
    "EventReceived",
    "GarbageReceived",
    "MessageReceived",
    "Outcome",
    "ServerDisconnect",
    "SessionLost",
    "SessionReady",
    "SessionState",
    "SessionStartFailed",
]

#: The error recorded against queued messages when their session's start is refused.
START_REFUSED = "SESSION_START_REFUSED"
#: The ack error with which the server says the session does not exist (any more).
SESSION_NOT_FOUND = "SESSION_NOT_FOUND"
#: The ack error with which the server says "too fast, not processed": sent again later.
RATE_LIMITED = "RATE_LIMITED"
#: How long writing pauses after a RATE_LIMITED ack (seconds).
RATE_LIMIT_PAUSE = 0.25
#: How many outcomes (delivered, refused, discarded) :meth:`ClientProtocol.outcome` remembers
#: at least; a client remembers ``max(OUTCOME_MEMORY, max_outbox)``.
OUTCOME_MEMORY = 4096


class Outcome(enum.Enum):
    """What became of a message id, as :meth:`ClientProtocol.outcome` reports it."""

    PENDING = "pending"  #: in the outbox: not yet acknowledged
    DELIVERED = "delivered"  #: acknowledged (or written, when no ack is awaited)
    REFUSED = "refused"  #: acknowledged with an error
    DISCARDED = "discarded"  #: dropped unacknowledged when the client closed
    CANCELLED = "cancelled"  #: cut from the outbox, never written, by interrupt()
    UNKNOWN = "unknown"  #: never sent by this client, or too old to be remembered


_DELIVERED = object()
_DISCARDED = object()
_CANCELLED = object()


def _check_size(frame: str, max_size: int | None) -> None:
    """Refuse a frame over *max_size* bytes: the server would close (1009) and a resend loop."""
    if max_size is not None and len(frame) * 4 > max_size:
        size = len(frame.encode("utf-8", "surrogatepass"))
        if size > max_size:
            raise InvalidArgumentError(
                f"the message is {size} bytes, over the {max_size}-byte limit"
            )


class SessionState(enum.Enum):
    """Where the avatar session stands, as the application sees it."""

    IDLE = "idle"  #: no start_session yet
    STARTING = "starting"  #: start sent, startResult not yet received
    READY = "ready"  #: startResult received
    STOPPED = "stopped"  #: stop_session called
    FAILED = "failed"  #: the server refused the start


# ---------------------------------------------------------------- events out


@attrs.frozen
class Accepted:
    """The server accepted the connection (``1``)."""


@attrs.frozen
class MessageReceived:
    """A new (not duplicate) business message (``5``) arrived; ``message`` is its envelope."""

    message: dict[str, Any]


@attrs.frozen
class SessionReady:
    """``startResult`` arrived: the session is ready; ``message`` is its envelope."""

    message: dict[str, Any]


@attrs.frozen
class SessionStartFailed:
    """The server refused the ``start`` message with ``error``."""

    message_id: str
    error: object


@attrs.frozen
class SessionLost:
    """The server no longer knows the session; the client is starting it again."""


@attrs.frozen
class EventReceived:
    """An event (``7``) arrived."""

    event: dict[str, Any]


@attrs.frozen
class Acked:
    """Message ``message_id`` left the outbox: delivered, or refused when ``error`` is set."""

    message_id: str
    error: object = None
    body: dict[str, Any] | None = None


@attrs.frozen
class ServerDisconnect:
    """The server sent ``2``; ``final`` says the client must not reconnect."""

    reason: str
    final: bool


@attrs.frozen
class DeadPeer:
    """No ``4`` or ``5`` arrived for longer than the dead-peer limit."""

    silent_for: float


@attrs.frozen
class GarbageReceived:
    """A frame that breaks the protocol arrived; it was dropped."""

    error: ProtocolError
    size: int


Event = (
    Accepted
    | MessageReceived
    | SessionReady
    | SessionStartFailed
    | SessionLost
    | EventReceived
    | Acked
    | ServerDisconnect
    | DeadPeer
    | GarbageReceived
)


#: A message ready to queue: its id and its ``5`` frame (see :meth:`ClientProtocol.prepare`).
Prepared = tuple[str, str]


def _error_names(value: object) -> frozenset[str]:
    if isinstance(value, str) or not isinstance(value, (set, frozenset, list, tuple)):
        raise InvalidArgumentError("ack error values must be given as a set of strings")
    if not all(isinstance(item, str) and item for item in value):
        raise InvalidArgumentError("ack error values must be non-empty strings")
    return frozenset(value)


def _pause(_: object, attribute: attrs.Attribute[float], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 60:
        raise InvalidArgumentError(f"{attribute.name} must be between 0 and 60 seconds")


@attrs.frozen(kw_only=True)
class AckPolicy:
    """How the client reacts to ack errors, by their values.

    No public page lists the service's ack errors; the defaults are the
    reference server's own (see ``docs/protocol.md``).  *session_lost*: the
    server no longer knows the session; the client starts it again and resends.
    *rate_limited*: "too fast, not processed"; writing pauses *rate_limit_pause*
    seconds and the message goes again.  Any other error is final for its message.
    """

    session_lost: frozenset[str] = attrs.field(
        default=frozenset({SESSION_NOT_FOUND}), converter=_error_names
    )
    rate_limited: frozenset[str] = attrs.field(
        default=frozenset({RATE_LIMITED}), converter=_error_names
    )
    rate_limit_pause: float = attrs.field(default=RATE_LIMIT_PAUSE, validator=_pause)


@attrs.define(slots=True)
class _Outgoing:
    """One entry of the outbox."""

    frame: str
    tracked: bool  # waits for an ack (a business message with an id)
    gated: bool  # must wait for the session to be ready
    is_start: bool = False
    epoch: int = 0  # the session epoch at its last write (see _restart_session)
    kind: str = ""  # "text" or "audio" for dataSend: what interrupt() may cut
    written: bool = False  # handed out for writing at least once
    audio_seconds: float = 0.0  # for audio: its duration, for interrupt()'s report


@attrs.define(slots=True)
class Counters:
    """Running totals, for observability."""

    frames_received: int = 0
    garbage_frames: int = 0
    duplicates_dropped: int = 0
    messages_received: int = 0
    messages_sent: int = 0
    messages_resent: int = 0
    discarded: int = 0  # tracked messages dropped unacknowledged by close()
    cancelled: int = 0  # messages cut unwritten by interrupt()
    rate_limited: int = 0
    acks_received: int = 0
    pings_sent: int = 0
    connections: int = 0


class ClientProtocol:
    """The client's protocol state: session, outbox, heartbeat and de-duplication.

    Not thread-safe: the I/O shell calls it under one lock.
    """

    def __init__(
        self,
        *,
        app_id: str,
        session_id: str,
        heartbeat_interval: float | None = 20.0,
        require_acks: bool = True,
        max_outbox: int = 10_000,
        dedupe_capacity: int = 4096,
        dedupe_max_bytes: int | None = 2**20,
        id_factory: MessageIdFactory | None = None,
        ack_policy: AckPolicy | None = None,
    ) -> None:
        self.app_id = app_id
        self.ack_policy = AckPolicy() if ack_policy is None else ack_policy
        self.session_id = session_id
        self.heartbeat_interval = heartbeat_interval
        self.require_acks = require_acks
        self.max_outbox = max_outbox
        self._ids = id_factory or default_id_factory
        self._seen = RecentIds(dedupe_capacity, max_bytes=dedupe_max_bytes)
        self.counters = Counters()

        self.session_state = SessionState.IDLE
        self.session_options: SessionOptions | None = None
        self.start_error: object = None
        #: The envelope of the last ``startResult``.
        self.start_result: dict[str, Any] | None = None
        # True while a start is pending: gated messages wait behind it.
        self._gate_closed = False
        self._start_id: str | None = None
        self._start_content: dict[str, Any] | None = None
        # Incremented by every start, the user's or the client's own restart: a message
        # written in an older epoch belongs to an earlier start (see _on_ack).
        self._epoch = 0
        self._last_ms = 0
        self._stop_id: str | None = None  # the last stop sent, while it may be unacked
        self._requeue_anchor: str | None = None  # see _requeue_behind_start()
        self._restore_stopped = False  # a restart happened with a stop still queued
        self.session_restarts = 0

        # Unacknowledged messages in send order (dicts keep insertion order).
        self._outbox: dict[str, _Outgoing] = {}
        # Ids of outbox entries not yet handed out for writing, in order.
        self._to_write: collections.deque[str] = collections.deque()
        self._raw_seq = 0
        self._events: list[Event] = []
        # Keys handed out by data_to_send() that leave the outbox once written, in order.
        self._in_write: collections.deque[str] = collections.deque()
        # What became of the last ids that left the outbox, for wait_ack() (bounded):
        # _DELIVERED, _DISCARDED, or the error the server refused it with.
        self._outcomes: collections.OrderedDict[str, object] = collections.OrderedDict()
        self._outcome_memory = max(OUTCOME_MEMORY, max_outbox)
        self._ping_due = False

        self.connected = False
        self.closed = False
        # After a RATE_LIMITED ack nothing is written until this monotonic time.
        self._paused_until: float | None = None
        self._last_rx = 0.0
        self._next_ping: float | None = None

    # ------------------------------------------------------------ connection

    def connection_made(self, now: float) -> None:
        """The transport is open: start the heartbeat clock; queued frames become writable."""
        self.connected = True
        self.counters.connections += 1
        self._last_rx = now
        self._next_ping = None if self.heartbeat_interval is None else now + self.heartbeat_interval
        self._ping_due = False

    def connection_lost(self) -> None:
        """The transport is gone: every unacknowledged message will be written again."""
        if not self.connected:
            return
        self.connected = False
        self._next_ping = None
        self._ping_due = False
        written = len(self._outbox) - len(self._to_write)
        self.counters.messages_resent += max(0, written)
        self._in_write.clear()  # not known to be written: they stay and go again
        # Unwritten raw frames are kept; written ones cannot be acked, so they are gone.
        self._to_write = collections.deque(self._outbox)
        if self.session_state is SessionState.STARTING and self._start_id not in self._outbox:
            # The start was acked but its startResult was lost with the connection.
            self._restart_session(())

    def session_expired(self) -> None:
        """The server ended the session with the connection (``CONNECTION_TIMEOUT``).

        A session that was started goes again: a new ``start`` first, then
        every unacknowledged message in its order, once a connection is made.
        """
        state = self.session_state
        if self._start_content is not None and state in (SessionState.READY, SessionState.STARTING):
            self._restart_session(())

    def close(self) -> None:
        """The client is closed; later commands raise.

        Unacknowledged messages are discarded: :meth:`outcome` reports them as
        :attr:`Outcome.DISCARDED`.
        """
        self.closed = True
        self.connected = False
        self._next_ping = None
        self._ping_due = False
        self._paused_until = None
        for key, entry in self._outbox.items():
            if entry.tracked:
                self._record(key, _DISCARDED)
                self.counters.discarded += 1
        self._outbox.clear()
        self._to_write.clear()
        self._in_write.clear()

    def reopen(self) -> None:
        """Open again after :meth:`close`, with an empty outbox; the session is kept.

        As in the original, closing does not stop the session: a session that
        was ready stays ready, and the next send goes out without a new
        ``start`` (the server starts it again if it forgot it meanwhile, see
        :meth:`_restart_session`).  A start still pending at close was
        discarded with the outbox: the session is idle again.
        """
        self.closed = False
        if self.session_state is SessionState.STARTING:
            self.session_state = SessionState.IDLE
            self.session_options = None
            self._start_content = None
        self._gate_closed = False
        self._start_id = None
        self._stop_id = None
        self._restore_stopped = False
        self._outbox.clear()
        self._to_write.clear()

    # -------------------------------------------------------------- commands

    @property
    def outbox_size(self) -> int:
        """How many messages wait for an ack or for their first write."""
        return len(self._outbox)

    def has_room(self) -> bool:
        """True when the outbox can take another message."""
        return len(self._outbox) < self.max_outbox

    def is_pending(self, message_id: str) -> bool:
        """True while *message_id* is in the outbox."""
        return message_id in self._outbox

    def refusal(self, message_id: str) -> object:
        """The error the server refused *message_id* with (if remembered), else ``None``."""
        outcome = self._outcomes.get(message_id)
        return None if outcome in (_DELIVERED, _DISCARDED, _CANCELLED) else outcome

    def outcome(self, message_id: str) -> tuple[Outcome, object]:
        """What became of *message_id*, and the server's error when it was refused."""
        if message_id in self._outbox:
            return Outcome.PENDING, None
        outcome = self._outcomes.get(message_id, self)
        if outcome is self:
            return Outcome.UNKNOWN, None
        if outcome is _DELIVERED:
            return Outcome.DELIVERED, None
        if outcome is _DISCARDED:
            return Outcome.DISCARDED, None
        if outcome is _CANCELLED:
            return Outcome.CANCELLED, None
        return Outcome.REFUSED, outcome

    def _record(self, message_id: str, outcome: object) -> None:
        outcomes = self._outcomes
        outcomes[message_id] = outcome
        if len(outcomes) > self._outcome_memory:
            outcomes.popitem(last=False)

    def _refuse(self, message_id: str, error: object) -> None:
        self._record(message_id, error)

    def start_session(
        self, options: SessionOptions, now_ms: int, max_size: int | None = None
    ) -> str:
        """Queue a ``start`` with *options*; return its message id.

        Raises :class:`InvalidArgumentError` for a start over *max_size* bytes.
        """
        self._check_open()
        content: dict[str, Any] = {"type": "start", "sessionId": self.session_id}
        content.update(options.to_wire())
        prepared = self.prepare(content, now_ms, max_size)
        self._last_ms = now_ms
        message_id = self._enqueue(prepared, gated=False, is_start=True)
        self._start_content = content
        self._epoch += 1  # what was written before this start belongs to the previous one
        self._requeue_anchor = message_id
        self._restore_stopped = False
        self.session_state = SessionState.STARTING
        self.session_options = options
        self.start_error = None
        self._gate_closed = True
        self._start_id = message_id
        return message_id

    def stop_session(self, now_ms: int) -> str:
        """Queue a ``stop``; the session refuses further data at once."""
        self._check_session()
        stop = {"type": "stop", "sessionId": self.session_id}
        message_id = self._enqueue(self.prepare(stop, now_ms))
        self._stop_id = message_id
        self.session_state = SessionState.STOPPED
        return message_id

    def prepare(self, content: Any, now_ms: int, max_size: int | None = None) -> Prepared:
        """Give *content* an id and encode its ``5`` frame, ready for a queue method.

        Reads no mutable state, so unlike every other method it may be called
        without the caller's lock: the costly encoding stays off the lock.
        Raises :class:`InvalidArgumentError` for content JSON cannot encode.
        """
        message_id = self._ids.new(now_ms)
        try:
            frame = packets.encode_envelope(message_id, self.app_id, content)
        except (TypeError, ValueError, RecursionError) as exc:
            raise InvalidArgumentError(f"content cannot be encoded as JSON: {exc}") from exc
        _check_size(frame, max_size)
        return message_id, frame

    def session_message(
        self, prepared: Prepared, *, kind: str = "", audio_seconds: float = 0.0
    ) -> str:
        """Queue a prepared session message (``dataSend``, ``refreshContext``); needs a session.

        *kind* (``"text"`` or ``"audio"``) marks what :meth:`cancel_unwritten` may cut.
        """
        self._check_session()
        message_id = self._enqueue(prepared)
        if kind:
            entry = self._outbox[message_id]
            entry.kind = kind
            entry.audio_seconds = audio_seconds
        return message_id

    def cancel_unwritten(self, kinds: frozenset[str]) -> list[tuple[str, str, float]]:
        """Cut from the outbox every message of *kinds* never handed out for writing.

        Returns ``(message id, kind, audio seconds)`` for each, in send order;
        :meth:`outcome` reports them as :attr:`Outcome.CANCELLED`.  Messages
        written at least once stay: the server may have them already.
        """
        cut = [
            (key, entry.kind, entry.audio_seconds)
            for key, entry in self._outbox.items()
            if entry.kind in kinds and not entry.written
        ]
        if cut:
            gone = {key for key, _, _ in cut}
            for key in gone:
                del self._outbox[key]
                self._record(key, _CANCELLED)
            self._to_write = collections.deque(k for k in self._to_write if k not in gone)
            self.counters.cancelled += len(cut)
        return cut

    def send_message(self, prepared: Prepared) -> str:
        """Queue a prepared message of any content (the original's ``sendMessage``)."""
        self._check_open()
        return self._enqueue(prepared, gated=self._gate_closed)

    def send_raw(self, frame: str, max_size: int | None = None) -> str | None:
        """Queue a raw frame; a ``5`` frame with a ``messageId`` is tracked like any message.

        Raises :class:`InvalidArgumentError` for a frame over *max_size* bytes.
        """
        self._check_open()
        _check_size(frame, max_size)
        message_id: str | None = None
        if frame.startswith("5"):
            try:
                message_id = packets.decode_frame(frame).message_id
            except ProtocolError:
                message_id = None
        if message_id is not None and message_id not in self._outbox:
            self._add(message_id, _Outgoing(frame, tracked=True, gated=False))
            return message_id
        self._raw_seq += 1
        self._add(f"\x00raw{self._raw_seq}", _Outgoing(frame, tracked=False, gated=False))
        return message_id

    def _check_open(self) -> None:
        if self.closed:
            raise ClientClosedError("the client is closed")
        if not self.has_room():
            raise OutboxFullError(f"the outbox holds {self.max_outbox} unacknowledged messages")

    def _check_session(self) -> None:
        state = self.session_state
        if state is SessionState.IDLE:
            raise SessionNotStartedError("no session: call start_session() first")
        if state is SessionState.STOPPED:
            raise SessionNotStartedError("the session was stopped: call start_session() again")
        if state is SessionState.FAILED:
            raise SessionStartError(
                f"the server refused to start the session: {self.start_error!r}",
                error=self.start_error,
            )
        self._check_open()

    def _enqueue(self, prepared: Prepared, *, gated: bool = True, is_start: bool = False) -> str:
        message_id, frame = prepared
        self._add(message_id, _Outgoing(frame, tracked=True, gated=gated, is_start=is_start))
        return message_id

    def _add(self, key: str, entry: _Outgoing) -> None:
        self._outbox[key] = entry
        self._to_write.append(key)

    # ---------------------------------------------------------------- output

    def has_data_to_send(self) -> bool:
        """True when :meth:`data_to_send` would return frames now."""
        if not self.connected:
            return False
        if self._ping_due:
            return True
        if not self._to_write or self._paused_until is not None:
            return False
        head = self._outbox.get(self._to_write[0])
        return head is None or not (head.gated and self._gate_closed)

    def data_to_send(self, limit: int | None = None) -> list[str]:
        """Hand out the frames to write now, in order, and mark them written.

        With *limit*, stop once the frames handed out hold about *limit*
        characters (at least one frame goes).  The caller must write them in
        this order on the current connection, then call :meth:`write_done`;
        if the write fails it must report :meth:`connection_lost` instead
        (everything unacked is written again).
        """
        if not self.connected:
            return []
        frames: list[str] = []
        if self._ping_due:
            self._ping_due = False
            self.counters.pings_sent += 1
            frames.append("3")
        to_write = self._to_write
        outbox = self._outbox
        while to_write and self._paused_until is None:
            key = to_write[0]
            entry = outbox.get(key)
            if entry is None:  # acked while waiting for a rewrite
                to_write.popleft()
                continue
            if entry.gated and self._gate_closed:
                break
            to_write.popleft()
            entry.epoch = self._epoch
            entry.written = True
            frames.append(entry.frame)
            if not entry.tracked or not self.require_acks:
                # Done once the write succeeds: see write_done().
                self._in_write.append(key)
            self.counters.messages_sent += 1
            if limit is not None:
                limit -= len(entry.frame)
                if limit <= 0:
                    break
        return frames

    @property
    def awaiting_write(self) -> int:
        """How many handed-out entries wait only for their write (see :meth:`write_done`)."""
        return len(self._in_write)

    def write_done(self, count: int | None = None) -> bool:
        """The first *count* (default: all) entries that wait only for their write are written.

        Entries that wait for no ack (raw frames, and everything when
        ``require_acks`` is off) leave the outbox once the socket took their
        bytes: the caller counts them (:attr:`awaiting_write` after each
        :meth:`data_to_send`) and reports them here.  Returns True if any left.
        """
        in_write = self._in_write
        n = len(in_write) if count is None else min(count, len(in_write))
        for _ in range(n):
            key = in_write.popleft()
            entry = self._outbox.pop(key, None)
            if entry is not None and entry.tracked:
                self._record(key, _DELIVERED)
        return n > 0

    def events_received(self) -> list[Event]:
        """Hand out the events produced since the last call."""
        events, self._events = self._events, []
        return events

    # ----------------------------------------------------------------- input

    def receive(self, data: str | bytes, now: float) -> None:
        """Process one received frame.  Garbage becomes a :class:`GarbageReceived` event."""
        self.counters.frames_received += 1
        try:
            packet = packets.decode_frame(data)
        except ProtocolError as exc:
            self._garbage(exc, len(data))
            return
        # Any valid frame proves the peer alive: an ack as well as a pong.
        self._last_rx = now
        handler = self._handlers[packet.type]
        handler(self, packet, now)

    def receive_discarded(self, size: int, reason: str) -> None:
        """A message too large to keep was read and thrown away by the transport."""
        self.counters.frames_received += 1
        self._garbage(ProtocolError(reason), size)

    def _garbage(self, error: ProtocolError, size: int) -> None:
        """Count a dropped frame and report it."""
        self.counters.garbage_frames += 1
        self._events.append(GarbageReceived(error, size))

    def _on_accepted(self, packet: Packet, now: float) -> None:
        if self.heartbeat_interval is not None:
            self._ping_due = True
            self._next_ping = now + self.heartbeat_interval
        self._events.append(Accepted())

    def _on_disconnect(self, packet: Packet, now: float) -> None:
        assert packet.body is not None
        reason = packet.body["reason"]
        self._events.append(ServerDisconnect(reason, final=reason in packets.DISCONNECT_FINAL))

    def _on_pong(self, packet: Packet, now: float) -> None:
        self._last_rx = now

    def _on_message(self, packet: Packet, now: float) -> None:
        self.counters.messages_received += 1
        body = packet.body
        assert body is not None
        content = body.get("content")
        is_start_result = isinstance(content, dict) and content.get("type") == "startResult"
        if not self._seen.add(body["messageId"]) and not (
            # A startResult we wait for is never a duplicate: a restarted server may reuse ids.
            is_start_result and self._gate_closed
        ):
            self.counters.duplicates_dropped += 1
            return
        if is_start_result:
            if self.session_state is SessionState.STARTING:
                # After a restart caused by a lost session, a stop still queued wins.
                stopped = self._restore_stopped
                self.session_state = SessionState.STOPPED if stopped else SessionState.READY
                self._restore_stopped = False
                if not stopped:
                    self.start_result = body
                    self._events.append(SessionReady(body))
            # Stopped before the startResult came: the gate opens for the queued stop,
            # but the session is not ready and its result is not recorded.
            self._gate_closed = False
        self._events.append(MessageReceived(body))

    def _on_ack(self, packet: Packet, now: float) -> None:
        body = packet.body
        assert body is not None
        message_id = body["messageId"]
        error = body.get("error")
        entry = self._outbox.get(message_id)
        if entry is None or not entry.tracked:
            return  # a repeated ack, or one for a message we did not send
        policy = self.ack_policy
        known = isinstance(error, str)
        if known and error in policy.rate_limited:
            # Not processed: keep it, pause, then send it again, in its place among the
            # messages not yet written.  Messages written after it are not resent: each
            # has its own ack coming, and a refused one comes back here by itself.
            self._paused_until = now + policy.rate_limit_pause
            if message_id not in self._to_write:
                queued = set(self._to_write)
                queued.add(message_id)
                self._to_write = collections.deque(k for k in self._outbox if k in queued)
            self.counters.rate_limited += 1
            return
        if known and error in policy.session_lost and entry.gated:
            if entry.epoch < self._epoch:
                # Refused before the latest (re)start: it goes again, right behind that start.
                if message_id not in self._to_write:
                    self._requeue_behind_start(message_id)
                return
            state = self.session_state
            stop_pending = self._stop_id is not None and self._stop_id in self._outbox
            if state is SessionState.READY or (state is SessionState.STOPPED and stop_pending):
                self._restart_session((message_id,))
                self._restore_stopped = state is SessionState.STOPPED
                return
        del self._outbox[message_id]
        self.counters.acks_received += 1
        self._record(message_id, _DELIVERED if error is None else error)
        self._events.append(Acked(message_id, error, body))
        if error is not None and entry.is_start and message_id == self._start_id:
            self._start_refused(message_id, error)

    def _start_refused(self, message_id: str, error: object) -> None:
        self.session_state = SessionState.FAILED
        self.start_error = error
        self._gate_closed = False
        self._events.append(SessionStartFailed(message_id, error))
        # Messages queued behind the refused start can never be delivered: fail them.
        for key in [k for k, e in self._outbox.items() if e.gated]:
            del self._outbox[key]
            self._refuse(key, START_REFUSED)
            self._events.append(Acked(key, START_REFUSED))

    def _requeue_behind_start(self, key: str) -> None:
        """Move *key* right behind the latest start (and what was moved before it); resend."""
        anchor = self._requeue_anchor
        entries = [(k, e) for k, e in self._outbox.items() if k != key]
        moved = self._outbox[key]
        at = next((i + 1 for i, (k, _) in enumerate(entries) if k == anchor), 0)
        entries.insert(at, (key, moved))
        queued = set(self._to_write)
        queued.add(key)
        self._outbox = dict(entries)
        self._to_write = collections.deque(k for k in self._outbox if k in queued)
        self._requeue_anchor = key

    def _restart_session(self, first: tuple[str, ...]) -> None:
        """The server lost our session: start it again, then resend in the original order.

        A new ``start`` goes first, then the messages in *first*, then every
        other unacknowledged message.  Refusals of messages written before this
        point are ignored (their epoch is older); they are all sent again once
        the new ``startResult`` opens the gate.
        """
        assert self._start_content is not None
        self._epoch += 1
        self.session_restarts += 1
        start_id = self._ids.new(self._last_ms)
        frame = packets.encode_envelope(start_id, self.app_id, self._start_content)
        start = _Outgoing(frame, tracked=True, gated=False, is_start=True)
        old = self._outbox
        self._outbox = {start_id: start}
        for key in (*first, *old):
            # The old start is superseded by the new one.
            if key in old and key not in self._outbox and not old[key].is_start:
                self._outbox[key] = old[key]
        self._to_write = collections.deque(self._outbox)
        self._start_id = start_id
        self._requeue_anchor = first[-1] if first else start_id
        self.session_state = SessionState.STARTING
        self._gate_closed = True
        self._events.append(SessionLost())

    def _on_event(self, packet: Packet, now: float) -> None:
        assert packet.body is not None
        self._events.append(EventReceived(packet.body))

    def _on_unexpected(self, packet: Packet, now: float) -> None:
        # A client-to-server packet type coming from the server.
        self._garbage(ProtocolError(f"packet {int(packet.type)} is not sent by servers"), 1)

    _handlers: ClassVar[dict[PacketType, Callable[[ClientProtocol, Packet, float], None]]] = {
        PacketType.ACCEPTED: _on_accepted,
        PacketType.DISCONNECT: _on_disconnect,
        PacketType.PING: _on_unexpected,
        PacketType.PONG: _on_pong,
        PacketType.MESSAGE: _on_message,
        PacketType.ACK: _on_ack,
        PacketType.EVENT: _on_event,
    }

    # ------------------------------------------------------------------ time

    @property
    def dead_after(self) -> float | None:
        """Seconds without ``4``/``5`` after which the peer counts as dead."""
        return None if self.heartbeat_interval is None else 2 * self.heartbeat_interval + 0.1

    def next_deadline(self) -> float | None:
        """The monotonic time at which :meth:`tick` has work to do, or ``None``."""
        if not self.connected:
            return None
        deadlines = [] if self._paused_until is None else [self._paused_until]
        if self._next_ping is not None:
            assert self.dead_after is not None
            deadlines += [self._next_ping, self._last_rx + self.dead_after]
        return min(deadlines, default=None)

    def tick(self, now: float) -> None:
        """Let time pass: resume after a rate-limit pause, queue a heartbeat, report a dead peer."""
        if self._paused_until is not None and now >= self._paused_until:
            self._paused_until = None
        if not self.connected or self.heartbeat_interval is None or self._next_ping is None:
            return
        assert self.dead_after is not None
        silent = now - self._last_rx
        if silent > self.dead_after:
            self._events.append(DeadPeer(silent))
            self._next_ping = None  # report once per connection
            return
        if now >= self._next_ping:
            self._ping_due = True
            self._next_ping = now + self.heartbeat_interval
