"""The threaded I/O shell that drives :class:`~avatar_im.protocol.ClientProtocol`.

The life of a connection is one state machine, owned by :class:`Connection`
and changed only under its lock::

    CLOSED ──connect()──▶ CONNECTING ──handshake──▶ OPEN
      ▲                      │   ▲                  │
      │                      ▼   │ handshake        │ lost / dead peer / "2" that
      │                   RECONNECTING ◀────────────┘ asks to reconnect
      │                      │
      └── close(), a final error (401, a final "2", attempts exhausted),
          from any state

Any other change raises :class:`~avatar_im.exceptions.LifecycleError`
naming it.  Every ``connect()`` from ``CLOSED`` starts a new *generation*
(a number under the lock) with a reader thread of its own; ``close()`` and a
final error end the generation.  A thread acts on the protocol only while
its generation is current, so a late reader of an earlier generation can
never touch a newer connection, and two ``connect()`` calls at once start one
reader: the second finds the state no longer ``CLOSED``.

Threads:

* the *reader* (one per generation, ``avatar-im-reader-N``) connects, reads,
  keeps the heartbeat (its wait for data times out at the protocol's next
  deadline, so no timer thread is needed), drains what writers left in the
  transport's buffer, and reconnects with the
  :class:`~avatar_im.backoff.ReconnectPolicy`.  It blocks in ``poll`` (bounded
  by the next heartbeat deadline), in the handshake (bounded by
  ``connect_timeout``, interrupted by ``close()``), or in a backoff wait on its
  generation's wake-up event.  It exits when its generation ends.  It never
  runs application code: events go to ``on_events``, which only queues them
  (see :mod:`.dispatch`), so a slow callback cannot stall the heartbeat.
* writers: any thread that sends calls :meth:`Connection.flush`, which takes
  the frames the protocol has ready and hands them to the transport, which
  sends what the socket takes at once and leaves the rest for the reader.
  So no send blocks on the socket, whatever the peer does; above
  :data:`HIGH_WATER` buffered bytes, frames stay in the protocol's outbox
  (bounded by ``max_outbox``) until the reader has drained the buffer.

Locks:

* ``_lock`` guards the protocol, the state, the generation and every
  attribute marked below; held only for protocol calls and state changes,
  never across I/O or application code.  ``_changed`` (a condition on it) is
  notified after every input, for the waits; ``_room`` wakes senders waiting
  for outbox room.
* ``_send_lock`` lets one thread at a time move frames from the protocol to
  the transport, so frames leave in protocol order; a thread that finds it
  taken leaves its frames to the holder, which loops until nothing is left.
* ``_report_lock`` serialises the reports of state changes to ``on_state``
  (queued under ``_lock``, passed on after it is released), so they arrive
  in order; ``on_state`` only queues the application's callback.

In the child of a ``fork()``, a connection made before it closes itself
without touching the parent's socket, and every later call raises
:class:`~avatar_im.exceptions.ForkedClientError` (see :mod:`.forks`).
"""

from __future__ import annotations

import collections
import enum
import itertools
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from .backoff import ReconnectPolicy
from .exceptions import (
    AuthenticationError,
    AvatarIMError,
    CertificateError,
    ConnectionFailedError,
    ForkedClientError,
    HandshakeError,
    LifecycleError,
    ServerClosedError,
    TokenProviderError,
)
from .protocol import (
    ClientProtocol,
    DeadPeer,
    Event,
    EventReceived,
    MessageReceived,
    ServerDisconnect,
    SessionState,
)
from .transport import FrameTooLarge, Transport, TransportClosed
from .urls import redact_url

__all__ = ["HIGH_WATER", "Connection", "ConnectionState"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_reader_ids = itertools.count(1)

# Events no waiter waits for: they go to callbacks and the pull API only.
_QUIET_EVENTS = (MessageReceived, EventReceived)

#: Bytes waiting in the transport's buffer above which no more frames are taken from
#: the outbox; small, so a heartbeat never waits long behind a backlog.
HIGH_WATER = 65536
# Characters of frames handed to the transport at a time.
_BATCH = 65536
# How long a reader whose generation ended waits for the server's answer to our close.
_CLOSE_WAIT = 0.3
# Handshakes refused for the credentials in a row after which even a token provider's
# fresh token is not tried again: the credentials are wrong, not expired.
_MAX_REFUSALS = 3


class ConnectionState(enum.Enum):
    """The life of the connection, as ``AvatarIM.state`` reports it."""

    CONNECTING = "connecting"  #: first connection under way
    OPEN = "open"  #: connected
    RECONNECTING = "reconnecting"  #: lost; waiting or trying again
    CLOSED = "closed"  #: closed by the user or for good


_TRANSITIONS: dict[ConnectionState, frozenset[ConnectionState]] = {
    ConnectionState.CLOSED: frozenset({ConnectionState.CONNECTING}),
    ConnectionState.CONNECTING: frozenset(
        {ConnectionState.OPEN, ConnectionState.RECONNECTING, ConnectionState.CLOSED}
    ),
    ConnectionState.OPEN: frozenset({ConnectionState.RECONNECTING, ConnectionState.CLOSED}),
    ConnectionState.RECONNECTING: frozenset({ConnectionState.OPEN, ConnectionState.CLOSED}),
}


class Connection:
    """Owns the transport and the reader thread; runs protocol calls under one lock."""

    def __init__(
        self,
        protocol: ClientProtocol,
        *,
        url: str,
        policy: ReconnectPolicy,
        connect_timeout: float,
        on_events: Callable[[list[Event]], None],
        on_state: Callable[[ConnectionState], None],
        transport_options: dict[str, Any] | None = None,
        renew_url: Callable[[], str] | None = None,
        renew_first: bool = False,
    ) -> None:
        self.protocol = protocol
        self._url = url
        # Asked for a fresh URL (a new token) before every connect but the first; see
        # _next_url().  It runs on the reader thread: it may block (an HTTP call), and
        # close() does not wait for it beyond its own timeout.
        self._renew_url = renew_url
        self._url_is_fresh = not renew_first
        self._policy = policy
        self._connect_timeout = connect_timeout
        # on_events runs on the reader, on_state on the thread that changed the state (after
        # releasing _lock, in order): both must only queue work, never call application code.
        self._on_events = on_events
        self._on_state = on_state
        self._transport_options = dict(transport_options or {})
        hb = protocol.heartbeat_interval
        # A connection that lasted this long counts as healthy even if it carried no ack.
        self._healthy_after = 2 * hb if hb is not None else 60.0

        # Guards the protocol and the attributes below; never held across I/O or callbacks.
        self._lock = threading.Lock()
        # Waiters on protocol state (acks, session, connection); see _wake().
        self._changed = threading.Condition(self._lock)
        # Senders waiting for outbox room: woken one per freed slot, all at the low-water mark.
        self._room = threading.Condition(self._lock)
        self._low_water = protocol.max_outbox - max(1, protocol.max_outbox // 8)
        # One thread at a time moves frames to the transport, in protocol order (see flush()).
        self._send_lock = threading.Lock()
        #: Set while the session is ready; changed only under _lock (see _sync_ready()).
        self.session_ready = threading.Event()
        self._ready_flag = False

        # Guarded by _lock:
        self.state = ConnectionState.CLOSED
        self.failure: ConnectionFailedError | ForkedClientError | None = None
        #: Why the last connection attempt failed (while retrying), else None.
        self.last_error: ConnectionFailedError | None = None
        self.reconnects = 0
        self.generation = 0
        self._transport: Transport | None = None
        # Set to end the current generation's backoff wait; a new one per generation.
        self._wakeup = threading.Event()
        # Batches of entries that wait only for their write (no ack): where each batch
        # ends in the transport's byte count, and how many entries it holds.  They leave
        # the outbox once the socket took those bytes (see _settle()).
        self._unsent: collections.deque[tuple[int, int]] = collections.deque()
        # Reader threads started and perhaps not yet ended, of this generation and earlier
        # ones; close() joins them.
        self._readers: list[threading.Thread] = []
        self._forked = False
        self._pid = os.getpid()
        # State changes not yet reported to on_state, in order (guarded by _lock).
        self._reports: collections.deque[ConnectionState] = collections.deque()
        # Serialises reporting, so on_state sees the changes in order; held only around
        # on_state, which only queues (see __init__'s note), never around _lock.
        self._report_lock = threading.Lock()

    # ------------------------------------------------------------ public

    def start(self, prepare: Callable[[ClientProtocol], None] | None = None) -> bool:
        """Start a new generation (its reader connects) if the connection is closed.

        *prepare* runs on the protocol first, under the lock, only when a new
        generation starts.  Returns False (a no-op) when the connection is
        already connecting, open or reconnecting.
        """
        with self._lock:
            if self._forked:
                assert self.failure is not None
                raise self.failure
            if self.state is not ConnectionState.CLOSED:
                return False
            if prepare is not None:
                prepare(self.protocol)
            self.generation += 1
            self.failure = None
            self._wakeup = wakeup = threading.Event()
            self._set_state(ConnectionState.CONNECTING)
            self._sync_ready()
            reader = threading.Thread(
                target=self._run,
                args=(self.generation, wakeup),
                name=f"avatar-im-reader-{next(_reader_ids)}",
                daemon=True,
            )
            self._readers = [t for t in self._readers if t.is_alive()]
            self._readers.append(reader)
            # Started under the lock: the reader's first step waits for it, and close()
            # can never see a reader that is not started yet.
            reader.start()
        self._report()
        return True

    def wait_for(self, predicate: Callable[[ClientProtocol], bool], timeout: float | None) -> bool:
        """Wait until *predicate(protocol)* holds, the connection closes, or *timeout* passes.

        Returns the predicate's last value.
        """
        with self._changed:
            return self._changed.wait_for(
                lambda: predicate(self.protocol) or self.state is ConnectionState.CLOSED, timeout
            ) and predicate(self.protocol)

    def locked(self, fn: Callable[[ClientProtocol], T]) -> T:
        """Run *fn* on the protocol under the lock, writing nothing."""
        with self._lock:
            return fn(self.protocol)

    def after_command(self) -> None:
        """Bring derived state up to date after a protocol call made under :attr:`lock`."""
        assert self._lock.locked()
        self._sync_ready()

    @property
    def lock(self) -> threading.Condition:
        """The condition on the protocol lock, for callers that wait on their own predicate."""
        return self._changed

    @property
    def room(self) -> threading.Condition:
        """The condition senders wait on for outbox room (on the protocol lock)."""
        return self._room

    @property
    def threads(self) -> list[threading.Thread]:
        """The reader threads still alive (normally at most one)."""
        return [t for t in self._readers if t.is_alive()]

    def on_reader_thread(self) -> bool:
        """True when called from one of this connection's reader threads."""
        return threading.current_thread() in self._readers

    def close(self, timeout: float = 1.0) -> None:
        """End the generation, close the socket; return within about *timeout* seconds.

        Safe from any thread, any number of times, and from callbacks.
        """
        deadline = time.monotonic() + timeout
        current = threading.current_thread()
        with self._lock:
            if self.state is not ConnectionState.CLOSED:
                self._set_state(ConnectionState.CLOSED)
            self.generation += 1
            self.protocol.close()
            transport, self._transport = self._transport, None
            self._wakeup.set()
            self._sync_ready()
            self._changed.notify_all()
            self._room.notify_all()
            readers = [t for t in self._readers if t is not current]
        self._report()
        if transport is not None:
            # A clean close: our close frame; the server's answer ends the reader's read.
            transport.send_close(timeout=min(0.2, timeout / 4))
            for reader in readers:
                reader.join(max(0.0, min(_CLOSE_WAIT, deadline - time.monotonic())))
            transport.abort()
        for reader in readers:
            reader.join(max(0.0, deadline - time.monotonic()))
            if reader.is_alive():
                logger.error("reader thread %s did not stop within %.1fs", reader.name, timeout)
        with self._lock:
            self._readers = [t for t in self._readers if t.is_alive()]

    # ------------------------------------------------------------ state

    def _set_state(self, state: ConnectionState) -> None:
        """Move to *state* and report it; needs the lock.  Raises on an illegal change."""
        assert self._lock.locked()
        old = self.state
        if state is old:
            return
        if state not in _TRANSITIONS[old]:
            raise LifecycleError(f"illegal connection state change: {old.value} -> {state.value}")
        self.state = state
        self._changed.notify_all()
        self._reports.append(state)  # the caller calls _report() once it released the lock

    def _report(self) -> None:
        """Pass the state changes not yet reported to on_state, in order; not under _lock."""
        with self._report_lock:
            while True:
                with self._lock:
                    if not self._reports:
                        return
                    state = self._reports.popleft()
                self._on_state(state)

    def _sync_ready(self) -> None:
        """Mirror the session state in :attr:`session_ready`; needs the lock."""
        protocol = self.protocol
        ready = protocol.session_state is SessionState.READY and not protocol.closed
        if ready is not self._ready_flag:
            self._ready_flag = ready
            if ready:
                self.session_ready.set()
            else:
                self.session_ready.clear()

    def _fail(self, generation: int, error: ConnectionFailedError) -> None:
        """End *generation* for good with *error* (if it is still current)."""
        with self._lock:
            if generation != self.generation:
                return
            logger.warning("connection closed for good: %s", error)
            self.failure = error
            self.generation += 1
            self.protocol.close()
            self._set_state(ConnectionState.CLOSED)
            self._sync_ready()
            self._changed.notify_all()
            self._room.notify_all()
        self._report()

    # ------------------------------------------------------------ fork

    def _after_fork_in_child(self) -> None:
        """In a forked child: drop the parent's connection untouched; refuse further use."""
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._room = threading.Condition(self._lock)
        self._send_lock = threading.Lock()
        self.session_ready = threading.Event()
        self._ready_flag = False
        self._wakeup = threading.Event()
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.forget()
        self._readers = []
        self._reports.clear()
        self._report_lock = threading.Lock()
        self.generation += 1
        self.protocol.close()
        self.state = ConnectionState.CLOSED  # no report: the parent's callbacks are not ours
        self._forked = True
        self.failure = ForkedClientError(
            f"this client was made in process {self._pid}, before it forked process "
            f"{os.getpid()}; its connection belongs to the parent: make a new client in "
            "this process (lazily on first use, or in the server's post-fork hook)"
        )

    # ------------------------------------------------------------ writing

    def flush(self) -> None:
        """Hand every frame the protocol has ready to the transport; any thread may call it.

        Never blocks on the socket: the transport sends what the socket takes
        now and the reader sends the rest.
        """
        protocol = self.protocol
        while True:
            if not self._send_lock.acquire(blocking=False):
                return  # the holder will write our frames too
            try:
                while True:
                    with self._lock:
                        transport = self._transport
                        if transport is None or transport.buffered >= HIGH_WATER:
                            break
                        waiting = protocol.awaiting_write
                        frames = protocol.data_to_send(_BATCH)
                        added = protocol.awaiting_write - waiting
                        more = protocol.has_data_to_send()
                    if not frames:
                        break
                    try:
                        end = transport.write(frames)
                    except TransportClosed as exc:
                        logger.debug("write failed: %s", exc)
                        self._lost(transport)
                        break
                    if added:
                        with self._lock:
                            if self._transport is transport:
                                self._unsent.append((end, added))
                                self._settle(transport)
                    if not more:
                        break  # drained; what others queued meanwhile is checked below
            finally:
                self._send_lock.release()
            # Frames queued while we released the lock would be stranded: look again.
            with self._lock:
                transport = self._transport
                if (
                    transport is None
                    or transport.buffered >= HIGH_WATER
                    or not protocol.has_data_to_send()
                ):
                    return

    def _wake(self, events: list[Event], outbox_before: int) -> None:
        """Notify the waiters that *events* concern; the lock must be held.

        Replies and server events wake nobody (the pull API has its own
        condition).  Senders waiting for outbox room: as many as slots were
        freed (never a crowd for one slot), and all of them once the outbox
        has drained below the low-water mark, so they refill it as a batch.
        """
        assert self._lock.locked()
        if any(not isinstance(e, _QUIET_EVENTS) for e in events):
            self._changed.notify_all()
        size = self.protocol.outbox_size
        if size < outbox_before:
            if size <= self._low_water:
                self._room.notify_all()
            else:
                self._room.notify(outbox_before - size)

    def _settle(self, transport: Transport) -> None:
        """Entries that wait only for their write leave once their bytes left; needs the lock."""
        assert self._lock.locked()
        unsent = self._unsent
        sent = transport.sent_total
        done = 0
        while unsent and unsent[0][0] <= sent:
            done += unsent.popleft()[1]
        if done and self.protocol.write_done(done):
            self._changed.notify_all()
            self._room.notify_all()

    def _lost(self, transport: Transport) -> None:
        """Mark *transport*'s connection as lost (if it is still the current one)."""
        with self._lock:
            if self._transport is transport:
                self._unsent.clear()
                self.protocol.connection_lost()
                self._sync_ready()
                self._changed.notify_all()
        transport.abort()

    # ------------------------------------------------------------ the reader

    def _next_url(self) -> str:
        """The URL for the next connect: with a token provider, a fresh one each time.

        Raises :class:`ConnectionFailedError` when the provider fails.
        """
        if self._renew_url is not None and not self._url_is_fresh:
            try:
                url = self._renew_url()
            except Exception as exc:
                # The application's own verdict (the instance is gone, a wrong value) is
                # final; anything else (a network error) is retried like a refused token.
                final = isinstance(exc, (AvatarIMError, TypeError, ValueError))
                raise TokenProviderError(
                    f"the token provider failed: {type(exc).__name__}: {exc}", final=final
                ) from exc
            self._url = url
        self._url_is_fresh = False
        return self._url

    def _run(self, generation: int, wakeup: threading.Event) -> None:
        """The reader thread of *generation*: connect, read, reconnect, until it ends."""
        attempt = 0
        refusals = 0  # handshakes refused for the credentials in a row (with a provider)
        transport: Transport | None = None
        try:
            while True:
                transport = Transport(
                    sslopt=self._transport_options.get("sslopt"),
                    max_message_size=self._transport_options.get("max_message_size"),
                )
                with self._lock:
                    if generation != self.generation:
                        return
                    self._transport = transport
                try:
                    transport.open(
                        self._next_url(),
                        timeout=self._connect_timeout,
                        proxy=self._transport_options.get("proxy"),
                    )
                except ConnectionFailedError as exc:
                    transport.close()
                    with self._lock:
                        if generation != self.generation:
                            return
                        self._transport = None
                    refused = isinstance(exc, (AuthenticationError, TokenProviderError))
                    refusals = refusals + 1 if refused else 0
                    # With a token provider a refused token is renewed, a few times; a
                    # provider that keeps failing ends the client like wrong credentials.
                    renewable = (
                        self._renew_url is not None
                        and isinstance(exc, AuthenticationError)
                        and refusals < _MAX_REFUSALS
                    )
                    if isinstance(exc, TokenProviderError) and (
                        exc.final or refusals >= _MAX_REFUSALS
                    ):
                        self._fail(generation, exc)
                        return
                    if _is_final(exc) and not renewable:
                        self._fail(generation, exc)
                        return
                    logger.info("connect to %s failed: %s", redact_url(self._url), exc)
                    self.last_error = exc  # for ConnectTimeout's cause (one attribute write)
                    if not self._backoff(generation, wakeup, attempt, exc):
                        return
                    attempt += 1
                    continue

                with self._lock:
                    if generation != self.generation:  # close() came during the handshake
                        return
                    protocol = self.protocol
                    self._unsent.clear()
                    protocol.connection_made(time.monotonic())
                    counters = protocol.counters
                    traffic = counters.acks_received + counters.messages_received
                    opened_at = time.monotonic()
                    self._set_state(ConnectionState.OPEN)
                    self.last_error = None
                    self._changed.notify_all()
                self._report()
                logger.info("connected to %s", redact_url(self._url))
                self.flush()
                ended = self._read(generation, transport)
                with self._lock:
                    current = generation == self.generation
                    if current and self._transport is transport:
                        self._unsent.clear()
                        self.protocol.connection_lost()
                        self._transport = None
                        self._sync_ready()
                        self._changed.notify_all()
                    counters = self.protocol.counters
                    healthy = (
                        counters.acks_received + counters.messages_received > traffic
                        or time.monotonic() - opened_at >= self._healthy_after
                    )
                if not current:
                    self._finish_close(transport)
                    return
                transport.close()
                if isinstance(ended, ServerDisconnect):
                    if ended.reason == "CONNECTION_TIMEOUT" and self._renew_url is not None:
                        # The session timed out with its token: a fresh token, a new start,
                        # then everything unacknowledged again.
                        logger.info("session timed out: renewing the token and restarting it")
                        with self._lock:
                            self.protocol.session_expired()
                            self._sync_ready()
                    elif ended.final:
                        self._fail(
                            generation,
                            ServerClosedError(
                                f"the server closed the connection for good: {ended.reason}",
                                reason=ended.reason,
                            ),
                        )
                        return
                    logger.info("server asked to reconnect: %s", ended.reason)
                elif isinstance(ended, DeadPeer):
                    logger.info(
                        "no answer from the server for %.1fs: reconnecting", ended.silent_for
                    )
                else:
                    logger.info("connection lost: reconnecting")
                # Only a connection that proved healthy resets the backoff: a server that
                # accepts and then drops every connection sees the delays grow.
                if healthy:
                    attempt = 0
                with self._lock:
                    self.reconnects += 1
                if not self._backoff(generation, wakeup, attempt, None):
                    return
                attempt += 1
        except BaseException as exc:  # a bug, or SystemExit in our own code: never a zombie
            logger.exception("reader thread crashed")
            self._fail(
                generation,
                ConnectionFailedError(f"internal error in the reader thread: {exc!r}"),
            )
        finally:
            if transport is not None:
                transport.close()
            with self._lock:
                if self._transport is transport and transport is not None:
                    self._transport = None
                self._changed.notify_all()

    def _finish_close(self, transport: Transport) -> None:
        """The generation ended while connected: let the server answer our close, briefly."""
        deadline = time.monotonic() + _CLOSE_WAIT
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                transport.read(remaining)
            except TransportClosed:
                break
        transport.close()

    def _backoff(
        self,
        generation: int,
        wakeup: threading.Event,
        attempt: int,
        error: ConnectionFailedError | None,
    ) -> bool:
        """Wait before reconnect attempt *attempt*; False when the reader must stop."""
        if self._policy.is_exhausted(attempt):
            self._fail(generation, error or ConnectionFailedError("reconnect attempts exhausted"))
            return False
        with self._lock:
            if generation != self.generation:
                return False
            self._set_state(ConnectionState.RECONNECTING)
        self._report()
        delay = self._policy.delay(attempt, random.random())
        logger.debug("reconnect attempt %d in %.3fs", attempt + 1, delay)
        return not wakeup.wait(delay) and generation == self.generation

    def _read(self, generation: int, transport: Transport) -> ServerDisconnect | DeadPeer | None:
        """Read until the connection ends; return why (``None``: lost or closed)."""
        protocol = self.protocol
        monotonic = time.monotonic
        lock = self._lock
        while True:
            with lock:
                if generation != self.generation:
                    return None
                deadline = protocol.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - monotonic())
            try:
                items = transport.read(timeout)
            except TransportClosed as exc:
                logger.debug("read ended: %s", exc)
                return None
            with lock:
                if generation != self.generation:
                    return None
                if self._unsent:
                    self._settle(transport)  # the read may have sent buffered bytes
                before = protocol.outbox_size
                now = monotonic()
                for item in items:
                    if isinstance(item, FrameTooLarge):
                        protocol.receive_discarded(item.size, str(item))
                    else:
                        protocol.receive(item, now)
                protocol.tick(now)
                events = protocol.events_received()
                if events:
                    self._sync_ready()
                    self._wake(events, before)
            self.flush()
            if events:
                ended = next(
                    (e for e in events if isinstance(e, (ServerDisconnect, DeadPeer))), None
                )
                self._on_events(events)
                if ended is not None:
                    return ended


def _is_final(error: ConnectionFailedError) -> bool:
    """Errors after which reconnecting cannot help: bad credentials, a 4xx handshake."""
    if isinstance(error, (AuthenticationError, CertificateError)):
        return True
    if isinstance(error, HandshakeError) and error.status is not None:
        if 300 <= error.status < 400:
            return True  # a redirect we do not follow: retrying gets the same answer
        return 400 <= error.status < 500 and error.status not in (408, 429)
    return False
