"""One avatar per visitor: a bounded, thread-safe registry of clients keyed by your own key.

A web app gives each browser session its own avatar: ``registry.get(key)``
returns the entry for *key* (a web session id, a user id), making it with
your *factory* on first use.  An entry is anything with a ``close()``: an
:class:`~avatar_im.AvatarIM`, or an
:class:`~avatar_im.sessions.AvatarSession` that also stops its cloud
instance, which costs money while it runs.

Bounded in both directions:

* an entry not used for *idle_timeout* seconds is closed by the registry's
  sweeper thread;
* when the registry holds *max_size* entries, making a new one first closes
  the entry idle the longest; one in use (inside :meth:`ClientRegistry.use`)
  is never closed under its user, and when every entry is in use
  :class:`RegistryFullError` says so at the call;
* :meth:`ClientRegistry.close` (and, for a registry still open, interpreter
  exit) closes every entry.

Threads: the *sweeper* (``avatar-im-registry-N``) closes idle entries; it
waits on ``_stop`` with a timeout of the next idle deadline, is started with
the first entry and ends at :meth:`ClientRegistry.close`.  ``_lock`` guards
the table; it is never held while a factory runs or an entry closes (both
can take seconds), so one slow visitor never blocks another.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import math
import threading
import time
import weakref
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from typing import Generic, Protocol, TypeVar

import attrs

from .exceptions import AvatarIMError, ClientClosedError, InvalidArgumentError

__all__ = ["ClientRegistry", "RegistryFullError"]

logger = logging.getLogger(__name__)


class _Closeable(Protocol):
    def close(self) -> object: ...


T = TypeVar("T", bound=_Closeable)

_sweeper_ids = itertools.count(1)


class RegistryFullError(AvatarIMError):
    """The registry is full and every entry is in use: none can be closed for a new one."""


@attrs.define(eq=False)
class _Entry(Generic[T]):
    """One key's entry: made once (``ready`` set), then used and eventually closed."""

    ready: threading.Event = attrs.field(factory=threading.Event)
    value: T | None = None
    error: BaseException | None = None
    last_used: float = 0.0
    users: int = 0
    discarded: bool = False  # left the table while in use: closed when its last user leaves


class ClientRegistry(Generic[T]):
    """Clients (or sessions) keyed by the application's key; bounded; idle ones closed.

    ::

        registry = ClientRegistry(lambda key: AvatarIM(...), max_size=100, idle_timeout=600)
        with registry.use(flask.session["visitor"]) as client:
            client.send_text("hello")
    """

    def __init__(
        self,
        factory: Callable[[Hashable], T],
        *,
        max_size: int = 100,
        idle_timeout: float | None = 600.0,
    ) -> None:
        if not callable(factory):
            raise InvalidArgumentError("factory must be callable")
        if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1:
            raise InvalidArgumentError(f"max_size must be an int >= 1, got {max_size!r}")
        if idle_timeout is not None and (
            isinstance(idle_timeout, bool)
            or not isinstance(idle_timeout, (int, float))
            or not math.isfinite(idle_timeout)
            or idle_timeout <= 0
        ):
            raise InvalidArgumentError(f"idle_timeout must be > 0 or None, got {idle_timeout!r}")
        self._factory = factory
        self._max_size = max_size
        self._idle_timeout = idle_timeout
        # Guards _entries, _closed and _sweeper; never held while a factory or close() runs.
        self._lock = threading.Lock()
        self._entries: dict[Hashable, _Entry[T]] = {}
        self._closed = False
        self._stop = threading.Event()  # set by close(): ends the sweeper's wait
        self._wake = threading.Event()  # set when an entry is added: the sweeper re-plans
        # The sweeper thread: closes idle entries; waits on _wake/_stop until the next idle
        # deadline; exits when close() sets _stop.  Started with the first entry.
        self._sweeper: threading.Thread | None = None
        self.closed_idle = 0  #: entries closed for being idle
        self.closed_full = 0  #: entries closed to make room
        # Close what is left at interpreter exit, without keeping the registry alive.
        ref = weakref.ref(self)

        def close_at_exit() -> None:
            registry = ref()
            if registry is not None:
                registry.close()

        self._atexit = close_at_exit
        atexit.register(close_at_exit)

    def __len__(self) -> int:
        with self._lock:
            return sum(1 for e in self._entries.values() if e.value is not None)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            entry = self._entries.get(key) if isinstance(key, Hashable) else None
            return entry is not None and entry.value is not None

    def get(self, key: Hashable) -> T:
        """The entry for *key*, made with the factory on first use (once, whatever the threads).

        Raises what the factory raised (and forgets the failed entry, so the
        next call tries again), :class:`RegistryFullError`, or
        :class:`ClientClosedError` after :meth:`close`.
        """
        with self._use(key) as value:
            return value

    @contextmanager
    def use(self, key: Hashable) -> Iterator[T]:
        """``with registry.use(key) as client:`` — the entry, kept open while the block runs."""
        with self._use(key) as value:
            yield value

    @contextmanager
    def _use(self, key: Hashable) -> Iterator[T]:
        entry, make, evicted = self._claim(key)
        for old in evicted:
            self._close_entry(old, "to make room")
        if make:
            try:
                value = self._factory(key)
            except BaseException as exc:
                with self._lock:
                    entry.error = exc
                    if self._entries.get(key) is entry:
                        del self._entries[key]
                entry.ready.set()
                raise
            with self._lock:
                entry.value = value
                entry.last_used = time.monotonic()
                closed = self._closed
            entry.ready.set()
            if closed:  # close() ran while the factory did: do not leak what it made
                self._close_entry(entry, "registry closed")
                self._release(entry)
                raise ClientClosedError("the registry is closed")
        else:
            entry.ready.wait()
            if entry.error is not None:
                self._release(entry)
                raise entry.error
            if self._closed:  # closed while this thread waited for the entry to be made
                self._release(entry)
                raise ClientClosedError("the registry is closed")
        assert entry.value is not None
        try:
            yield entry.value
        finally:
            self._release(entry)

    def _claim(self, key: Hashable) -> tuple[_Entry[T], bool, list[_Entry[T]]]:
        """Find or reserve *key*'s entry, counting one user; evict for room if needed."""
        with self._lock:
            if self._closed:
                raise ClientClosedError("the registry is closed")
            entry = self._entries.get(key)
            if entry is not None:
                entry.users += 1
                entry.last_used = time.monotonic()
                return entry, False, []
            evicted: list[_Entry[T]] = []
            while len(self._entries) >= self._max_size:
                idle = [(e.last_used, k) for k, e in self._entries.items() if not e.users]
                if not idle:
                    raise RegistryFullError(
                        f"all {self._max_size} entries are in use; raise max_size or retry"
                    )
                _, oldest = min(idle, key=lambda item: item[0])
                evicted.append(self._entries.pop(oldest))
                self.closed_full += 1
            entry = _Entry()
            entry.users = 1
            entry.last_used = time.monotonic()
            self._entries[key] = entry
            self._start_sweeper()
            return entry, True, evicted

    def _release(self, entry: _Entry[T]) -> None:
        with self._lock:
            entry.users -= 1
            entry.last_used = time.monotonic()
            close_now = entry.discarded and entry.users == 0
        if close_now:
            self._close_entry(entry, "discarded")

    def discard(self, key: Hashable) -> bool:
        """Forget *key*'s entry and close it (a visitor logged out); False if there was none.

        An entry in use is closed when its last user leaves, never under it.
        """
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.value is None:
                return False
            del self._entries[key]
            in_use = entry.users > 0
            entry.discarded = in_use
        if not in_use:
            self._close_entry(entry, "discarded")
        return True

    def close(self) -> None:
        """Close every entry and end the sweeper; later calls to :meth:`get` raise."""
        with self._lock:
            self._closed = True
            entries = [e for e in self._entries.values() if e.value is not None]
            self._entries.clear()
            sweeper = self._sweeper
        self._stop.set()
        self._wake.set()
        for entry in entries:
            self._close_entry(entry, "registry closed")
        if sweeper is not None and sweeper is not threading.current_thread():
            sweeper.join(5.0)
        atexit.unregister(self._atexit)

    def __enter__(self) -> ClientRegistry[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def threads(self) -> list[threading.Thread]:
        """The registry's live threads (the sweeper), for tests and diagnostics."""
        sweeper = self._sweeper
        return [sweeper] if sweeper is not None and sweeper.is_alive() else []

    # ------------------------------------------------------------ internals

    def _close_entry(self, entry: _Entry[T], why: str) -> None:
        value = entry.value
        if value is None:
            return
        try:
            value.close()
        except Exception:
            logger.exception("closing a registry entry (%s) failed", why)
        else:
            logger.debug("registry entry closed: %s", why)

    def _start_sweeper(self) -> None:
        """Start the sweeper if there is none; needs the lock."""
        assert self._lock.locked()
        if self._idle_timeout is None:
            return
        self._wake.set()
        if self._sweeper is None:
            self._sweeper = threading.Thread(
                target=self._sweep, name=f"avatar-im-registry-{next(_sweeper_ids)}", daemon=True
            )
            self._sweeper.start()

    def _sweep(self) -> None:
        assert self._idle_timeout is not None
        timeout = self._idle_timeout
        while True:
            # Cleared before _stop is read: a close() (which sets _stop, then _wake) that
            # comes after this line either ends the loop here or ends the wait below.
            self._wake.clear()
            if self._stop.is_set():
                return
            now = time.monotonic()
            expired: list[_Entry[T]] = []
            with self._lock:
                next_due = now + timeout
                for key, entry in list(self._entries.items()):
                    if entry.users or entry.value is None:
                        continue
                    due = entry.last_used + timeout
                    if due <= now:
                        expired.append(self._entries.pop(key))
                        self.closed_idle += 1
                    else:
                        next_due = min(next_due, due)
            for entry in expired:
                self._close_entry(entry, "idle")
            # Wake at the next deadline, when an entry is added, or at close().
            self._wake.wait(max(0.01, next_due - time.monotonic()))
