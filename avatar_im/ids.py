"""Message ids and the de-duplication of inbound ids.

Pure: no threads, no sockets, no clock (the caller passes the time in).
"""

from __future__ import annotations

import collections
import itertools
import secrets

__all__ = ["MessageIdFactory", "RecentIds", "default_id_factory"]


class MessageIdFactory:
    """Makes ``msg_<ms>_<instance>_<seq>`` ids that never collide.

    ``<instance>`` is 64 random bits chosen once per factory, ``<seq>`` a
    counter, so two ids from one factory never collide however many are made
    per millisecond, and ids from different processes collide only with a
    2**-64 chance.  ``next()`` on :func:`itertools.count` is atomic in CPython,
    so one factory may be shared by threads without a lock.
    """

    def __init__(self, instance: str | None = None) -> None:
        self._instance = instance if instance is not None else secrets.token_hex(8)
        self._counter = itertools.count(1)

    def new(self, now_ms: int) -> str:
        """Return a fresh id stamped with the wall-clock time *now_ms*."""
        return f"msg_{now_ms}_{self._instance}_{next(self._counter)}"


#: The process-wide factory the clients share.
default_id_factory = MessageIdFactory()


class RecentIds:
    """Remembers the last *capacity* ids: O(1) membership and insertion, bounded memory."""

    def __init__(self, capacity: int = 4096) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._capacity = capacity
        self._order: collections.deque[str] = collections.deque()
        self._members: set[str] = set()

    def add(self, message_id: str) -> bool:
        """Record *message_id*; return ``False`` if it was already remembered."""
        if message_id in self._members:
            return False
        if len(self._order) >= self._capacity:
            self._members.discard(self._order.popleft())
        self._order.append(message_id)
        self._members.add(message_id)
        return True

    def __contains__(self, message_id: object) -> bool:
        return message_id in self._members

    def __len__(self) -> int:
        return len(self._order)
