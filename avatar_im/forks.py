"""What happens to this library's objects in the child of ``fork()``.

A forked child inherits the parent's memory but only the thread that forked:
no reader or callback thread, locks possibly held by threads that no longer
exist, and copies of the parent's sockets.  Objects that own such things
register here, and in the child their ``_after_fork_in_child()`` makes them
safe: fresh locks, no threads, and never a byte on the parent's connection.

Registration holds weak references only.  Never imports anything but the
standard library.
"""

from __future__ import annotations

import logging
import os
import weakref
from typing import Protocol

__all__ = ["register"]

logger = logging.getLogger(__name__)


class _ForkAware(Protocol):
    def _after_fork_in_child(self) -> None: ...


_registered: weakref.WeakSet[_ForkAware] = weakref.WeakSet()


def register(obj: _ForkAware) -> None:
    """Call ``obj._after_fork_in_child()`` in every child forked while *obj* is alive."""
    _registered.add(obj)


def _after_fork_in_child() -> None:
    for obj in list(_registered):
        try:
            obj._after_fork_in_child()
        except Exception:  # pragma: no cover - a bug; the child must still start
            logger.exception("resetting %r after fork failed", obj)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
