"""The threaded I/O shell that drives :class:`~avatar_im.protocol.ClientProtocol`.

One thread per client, the *reader*, owns the receive side of the socket and
the connection's life: it connects, reads frames, keeps the heartbeat (its
wait for data times out at the protocol's next deadline, so no timer thread
is needed), and reconnects with the :class:`~avatar_im.backoff.ReconnectPolicy`.

Writes happen on the thread that produced them, with no hand-off: after any
input the thread calls :meth:`Connection.flush`, which takes every frame the
protocol has ready and writes them with one ``sendall``.  Only one thread
writes at a time (``_send_lock``); a thread that finds the lock taken leaves
its frames to the holder, which loops until nothing is left.  So a caller
that outpaces the socket gets its frames coalesced, and the reader never
blocks behind a stuck writer.

Locks:

* ``_lock`` guards the protocol and every attribute below it; held only for
  protocol calls, never across I/O or user callbacks.  ``_changed`` (a
  condition on it) is notified after every input, for the waits.
* ``_send_lock`` serialises socket writes so frames leave in protocol order.
"""

from __future__ import annotations

import enum
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from .backoff import ReconnectPolicy
from .exceptions import (
    AuthenticationError,
    CertificateError,
    ConnectionFailedError,
    HandshakeError,
    ServerClosedError,
)
from .protocol import (
    ClientProtocol,
    DeadPeer,
    Event,
    EventReceived,
    MessageReceived,
    ServerDisconnect,
)
from .transport import FrameTooLarge, Transport, TransportClosed
from .urls import redact_url

__all__ = ["Connection", "ConnectionState"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_reader_ids = iter(range(1, 1 << 62))

# Events no waiter waits for: they go to callbacks and the pull API only.
_QUIET_EVENTS = (MessageReceived, EventReceived)


class ConnectionState(enum.Enum):
    """The life of the connection, as ``AvatarIM.state`` reports it."""

    CONNECTING = "connecting"  #: first connection under way
    OPEN = "open"  #: connected
    RECONNECTING = "reconnecting"  #: lost; waiting or trying again
    CLOSED = "closed"  #: closed by the user or for good


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
    ) -> None:
        self.protocol = protocol
        self._url = url
        self._policy = policy
        self._connect_timeout = connect_timeout
        self._on_events = on_events
        self._on_state = on_state
        self._transport_options = dict(transport_options or {})

        # Guards the protocol and the attributes below; never held across I/O or callbacks.
        self._lock = threading.Lock()
        # Waiters on protocol state (acks, session, connection); see _wake().
        self._changed = threading.Condition(self._lock)
        # Senders waiting for outbox room: woken one per freed slot, all at the low-water mark.
        self._room = threading.Condition(self._lock)
        self._low_water = protocol.max_outbox - max(1, protocol.max_outbox // 8)
        # One writer at a time, so frames leave in protocol order (see flush()).
        self._send_lock = threading.Lock()
        # Serialises on_state calls so they arrive in order and never after a later state.
        # Reentrant: on_state may call close().  Held only around that user callback.
        self._state_reports = threading.RLock()
        # Set by close(); wakes the reader out of a backoff wait.
        self._stop = threading.Event()

        # Guarded by _lock:
        self.state = ConnectionState.CLOSED
        self.failure: ConnectionFailedError | None = None
        self.reconnects = 0
        self._transport: Transport | None = None
        self._stopping = False
        # The reader thread: connects, reads, keeps the heartbeat and
        # reconnects.  Blocks in poll() on the socket (bounded by the next
        # heartbeat deadline), in the handshake, or in a backoff wait on
        # _stop.  Exits when close() sets _stopping and aborts the socket,
        # or when the connection fails for good.
        self._reader: threading.Thread | None = None

    # ------------------------------------------------------------ public

    def start(self) -> None:
        """Start the reader thread (which connects)."""
        old = self._reader
        if old is not None and old.is_alive() and self.state is ConnectionState.CLOSED:
            old.join(1.0)  # the reader of a closed connection is on its way out
        with self._lock:
            if self._reader is not None and self._reader.is_alive():
                if self.state is ConnectionState.CLOSED:
                    raise ConnectionFailedError("the previous connection's thread did not stop")
                return
            self._stopping = False
            self.failure = None
            self._stop.clear()
            self._set_state(ConnectionState.CONNECTING)
            reader = threading.Thread(
                target=self._run, name=f"avatar-im-reader-{next(_reader_ids)}", daemon=True
            )
            self._reader = reader
        self._report_state(ConnectionState.CONNECTING)
        reader.start()

    def wait_for(self, predicate: Callable[[ClientProtocol], bool], timeout: float | None) -> bool:
        """Wait until *predicate(protocol)* holds, the connection closes, or *timeout* passes.

        Returns the predicate's last value.
        """
        with self._changed:
            return self._changed.wait_for(
                lambda: predicate(self.protocol) or self._stopping, timeout
            ) and predicate(self.protocol)

    def locked(self, fn: Callable[[ClientProtocol], T]) -> T:
        """Run *fn* on the protocol under the lock, writing nothing."""
        with self._lock:
            return fn(self.protocol)

    @property
    def lock(self) -> threading.Condition:
        """The condition on the protocol lock, for callers that wait on their own predicate."""
        return self._changed

    @property
    def room(self) -> threading.Condition:
        """The condition senders wait on for outbox room (on the protocol lock)."""
        return self._room

    @property
    def reader(self) -> threading.Thread | None:
        """The reader thread, if one was started."""
        return self._reader

    def close(self, timeout: float = 1.0) -> None:
        """Stop the reader and close the socket; return within about *timeout* seconds."""
        deadline = time.monotonic() + timeout
        with self._lock:
            self._stopping = True
            self.protocol.close()
            transport = self._transport
            already_closed = self.state is ConnectionState.CLOSED
            self._set_state(ConnectionState.CLOSED)
            self._changed.notify_all()
            self._room.notify_all()
        self._stop.set()
        reader = self._reader
        if reader is threading.current_thread():
            reader = None  # close() from a callback: the reader exits when it returns
        if transport is not None:
            # A clean close: our close frame, the server's answer ends the reader's recv.
            transport.send_close(timeout=min(0.2, timeout / 4))
            if reader is not None:
                reader.join(min(0.3, timeout / 3))
            transport.close()
        if reader is not None:
            reader.join(max(0.0, deadline - time.monotonic()))
            if reader.is_alive():
                logger.error("reader thread %s did not stop within %.1fs", reader.name, timeout)
        if not already_closed:
            self._report_state(ConnectionState.CLOSED)

    # ------------------------------------------------------------ writing

    def flush(self) -> None:
        """Write every frame the protocol has ready; any thread may call it."""
        protocol = self.protocol
        while True:
            if not self._send_lock.acquire(blocking=False):
                return  # the holder will write our frames too
            try:
                written = False
                while True:
                    with self._lock:
                        # The last batch went out: entries that wait for no ack are delivered.
                        if written and protocol.write_done():
                            self._changed.notify_all()
                            self._room.notify_all()
                        frames = protocol.data_to_send()
                        transport = self._transport
                    if not frames or transport is None:
                        break
                    try:
                        transport.send_frames(frames)
                    except TransportClosed as exc:
                        logger.debug("write failed: %s", exc)
                        self._lost(transport)
                        break
                    written = True
            finally:
                self._send_lock.release()
            # Frames queued while we released the lock would be stranded: look again.
            with self._lock:
                if not protocol.has_data_to_send():
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

    def _lost(self, transport: Transport) -> None:
        """Mark *transport*'s connection as lost (if it is still the current one)."""
        with self._lock:
            if self._transport is transport:
                self.protocol.connection_lost()
                self._changed.notify_all()
        transport.abort()

    # ------------------------------------------------------------ the reader

    def _set_state(self, state: ConnectionState) -> None:
        assert self._lock.locked()
        self.state = state

    def _change_state(self, state: ConnectionState) -> bool:
        with self._lock:
            if self._stopping or self.state is state:
                return False
            self._set_state(state)
            self._changed.notify_all()
        self._report_state(state)
        return True

    def _report_state(self, state: ConnectionState) -> None:
        """Call on_state(state) unless the state moved on meanwhile (no stale report)."""
        with self._state_reports:
            if self.state is state:
                self._on_state(state)

    def _run(self) -> None:
        attempt = 0
        try:
            while True:
                transport = Transport(
                    sslopt=self._transport_options.get("sslopt"),
                    max_message_size=self._transport_options.get("max_message_size"),
                )
                with self._lock:
                    if self._stopping:
                        return
                    self._transport = transport
                try:
                    self._open(transport)
                except ConnectionFailedError as exc:
                    with self._lock:
                        self._transport = None
                    if self._stopping:
                        return
                    if _is_final(exc):
                        self._fail(exc)
                        return
                    logger.info("connect to %s failed: %s", redact_url(self._url), exc)
                    if not self._backoff(attempt, exc):
                        return
                    attempt += 1
                    continue

                with self._lock:
                    if self._stopping:  # close() came during the handshake
                        self._transport = None
                        transport.close()
                        return
                    self.protocol.connection_made(time.monotonic())
                    self._changed.notify_all()
                logger.info("connected to %s", redact_url(self._url))
                self._change_state(ConnectionState.OPEN)
                self.flush()
                ended = self._read(transport)
                self._lost(transport)
                transport.close()
                with self._lock:
                    self._transport = None
                if self._stopping:
                    return
                if isinstance(ended, ServerDisconnect):
                    if ended.final:
                        self._fail(
                            ServerClosedError(
                                f"the server closed the connection for good: {ended.reason}",
                                reason=ended.reason,
                            )
                        )
                        return
                    logger.info("server asked to reconnect: %s", ended.reason)
                    attempt = 0
                elif isinstance(ended, DeadPeer):
                    logger.info("no heartbeat answer for %.1fs: reconnecting", ended.silent_for)
                else:
                    logger.info("connection lost: reconnecting")
                    attempt = 0
                with self._lock:
                    self.reconnects += 1
                if not self._backoff(attempt, None):
                    return
                attempt += 1
        except Exception:  # pragma: no cover - a bug; never let it pass silently
            logger.exception("reader thread crashed")
            self._fail(ConnectionFailedError("internal error in the reader thread"))
        finally:
            with self._lock:
                self._transport = None
                self._changed.notify_all()

    def _open(self, transport: Transport) -> None:
        transport.open(
            self._url,
            timeout=self._connect_timeout,
            io_timeout=self.protocol.dead_after,
            proxy=self._transport_options.get("proxy"),
        )

    def _backoff(self, attempt: int, error: ConnectionFailedError | None) -> bool:
        """Wait before reconnect attempt *attempt*; False when the client must stop."""
        if self._policy.is_exhausted(attempt):
            self._fail(error or ConnectionFailedError("reconnect attempts exhausted"))
            return False
        self._change_state(ConnectionState.RECONNECTING)
        delay = self._policy.delay(attempt, random.random())
        logger.debug("reconnect attempt %d in %.3fs", attempt + 1, delay)
        return not self._stop.wait(delay)

    def _fail(self, error: ConnectionFailedError) -> None:
        logger.warning("connection closed for good: %s", error)
        with self._lock:
            if self._stopping:
                return
            self.failure = error
            self._stopping = True
            self.protocol.close()
            self._set_state(ConnectionState.CLOSED)
            self._changed.notify_all()
            self._room.notify_all()
        self._report_state(ConnectionState.CLOSED)

    def _read(self, transport: Transport) -> ServerDisconnect | DeadPeer | None:
        """Read until the connection ends; return why (``None``: lost or closed)."""
        protocol = self.protocol
        monotonic = time.monotonic
        while not self._stopping:
            with self._lock:
                deadline = protocol.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - monotonic())
            try:
                items = transport.read(timeout)
            except TransportClosed as exc:
                logger.debug("read ended: %s", exc)
                return None
            with self._lock:
                before = protocol.outbox_size
                now = monotonic()
                for item in items:
                    if isinstance(item, FrameTooLarge):
                        protocol.receive_discarded(item.size, str(item))
                    else:
                        protocol.receive(item, now)
                protocol.tick(now)
                events = protocol.events_received()
                self._wake(events, before)
            self.flush()
            if events:
                ended = next(
                    (e for e in events if isinstance(e, (ServerDisconnect, DeadPeer))), None
                )
                self._on_events(events)
                if ended is not None:
                    return ended
        return None


def _is_final(error: ConnectionFailedError) -> bool:
    """Errors after which reconnecting cannot help: bad credentials, a 4xx handshake."""
    if isinstance(error, (AuthenticationError, CertificateError)):
        return True
    if isinstance(error, HandshakeError) and error.status is not None:
        return 400 <= error.status < 500 and error.status not in (408, 429)
    return False
