"""Message ids and the de-duplication of inbound ids.

Pure: no threads, no sockets, no clock (the caller passes the time in).  The one
process-level hook is :func:`os.register_at_fork`, which gives a forked child
fresh random instance parts (see :class:`MessageIdFactory`).
"""

from __future__ import annotations

import collections
import itertools
import os
import secrets
import weakref

__all__ = ["MessageIdFactory", "RecentIds", "default_id_factory"]

# The factories whose instance part is random, so that a forked child re-draws it.  Weak, so
# that registering a factory never keeps it alive.
_random_factories: weakref.WeakSet[MessageIdFactory] = weakref.WeakSet()


def _redraw_after_fork() -> None:
    # Runs in the child only, before fork() returns there: the child has one thread, so no
    # other code can be using a factory while its instance part changes.
    for factory in list(_random_factories):
        factory._redraw()


# A child forked from a process that already made its factories (a pre-fork server with its
# app preloaded, multiprocessing's "fork" start method) would otherwise make the very ids its
# parent and siblings make, and the server would drop them as duplicates.  Re-drawing on fork
# costs nothing per id, unlike comparing os.getpid() in new().  Windows has no fork().
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_redraw_after_fork)


class MessageIdFactory:
    """Makes ``msg_<ms>_<instance>_<seq>`` ids that never collide.

    ``<instance>`` is 64 random bits chosen per factory, ``<seq>`` a counter, so
    two ids from one factory never collide however many are made per
    millisecond, and ids from different processes collide only with a 2**-64
    chance.  A process forked from one that holds the factory re-draws
    ``<instance>`` in the child, so parent and children never share a sequence.

    An explicit *instance* string is kept as given, in forked children too:
    keeping it unique per process is then the caller's job.

    ``next()`` on :func:`itertools.count` is atomic in CPython, so one factory
    may be shared by threads without a lock.
    """

    def __init__(self, instance: str | None = None) -> None:
        if instance is None:
            self._instance = secrets.token_hex(8)
            _random_factories.add(self)
        else:
            self._instance = instance
        self._counter = itertools.count(1)

    def _redraw(self) -> None:
        """Choose a new random instance part (after fork, in the child)."""
        self._instance = secrets.token_hex(8)

    def new(self, now_ms: int) -> str:
        """Return a fresh id stamped with the wall-clock time *now_ms*."""
        return f"msg_{now_ms}_{self._instance}_{next(self._counter)}"


#: The process-wide factory the clients share.
default_id_factory = MessageIdFactory()


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value!r}")
    return value


class RecentIds:
    """Remembers the most recent ids within *capacity* ids and *max_bytes* bytes.

    O(1) membership, O(1) amortised insertion (each id is evicted at most
    once), memory bounded by both limits.  An id counts ``len(message_id)``
    bytes; ``max_bytes`` ``None`` bounds by count only.  An id longer than
    ``max_bytes`` on its own is never remembered: adding it always returns
    ``True``.  Raises ``TypeError`` for a non-int limit and ``ValueError`` for
    one below 1.
    """

    def __init__(self, capacity: int = 4096, max_bytes: int | None = None) -> None:
        self._capacity = _positive_int("capacity", capacity)
        self._max_bytes = None if max_bytes is None else _positive_int("max_bytes", max_bytes)
        self._order: collections.deque[str] = collections.deque()
        self._members: set[str] = set()
        self._bytes = 0  # the sum of len() over _order

    def add(self, message_id: str) -> bool:
        """Record *message_id*; return ``False`` if it was already remembered."""
        if message_id in self._members:
            return False
        size = len(message_id)
        max_bytes = self._max_bytes
        if max_bytes is not None and size > max_bytes:
            return True
        # Ends at the latest when _order is empty: capacity >= 1 and size <= max_bytes.
        while len(self._order) >= self._capacity or (
            max_bytes is not None and self._bytes + size > max_bytes
        ):
            oldest = self._order.popleft()
            self._members.discard(oldest)
            self._bytes -= len(oldest)
        self._order.append(message_id)
        self._members.add(message_id)
        self._bytes += size
        return True

    @property
    def nbytes(self) -> int:
        """The bytes the remembered ids account for (the sum of their lengths)."""
        return self._bytes

    def __contains__(self, message_id: object) -> bool:
        return message_id in self._members

    def __len__(self) -> int:
        return len(self._order)
