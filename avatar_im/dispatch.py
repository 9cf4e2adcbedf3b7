"""The callback thread: runs the application's callbacks off the reader thread, in order.

The reader thread must never run application code: a callback that is slow
would stop the heartbeat (the server then drops a healthy connection), one
that waits for an ack would wait on the only thread that reads acks, and one
that raises ``SystemExit`` would end the reader.  So the reader only queues
``(callback, argument)`` pairs here, and :class:`Dispatcher` runs them on its
own thread, one at a time, in the order they were queued.

* The queue is bounded: when a callback falls that far behind, the oldest
  queued call is dropped, counted in :attr:`Dispatcher.dropped` and logged.
* A callback that raises anything (``BaseException`` included) is logged at
  ERROR with its traceback and counted in :attr:`Dispatcher.errors`; the
  thread goes on with the next one.
* The thread starts on the first call queued and ends at :meth:`stop`, after
  running what was queued before it; ``stop()`` waits a bounded time, so a
  callback blocked on a lock that the caller of ``stop()`` holds never makes
  it hang (that callback's thread ends as soon as it returns).

Never imports anything but the standard library.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["Dispatcher"]

logger = logging.getLogger(__name__)

_thread_ids = itertools.count(1)


class Dispatcher:
    """Runs queued callbacks on one thread of its own, started on demand."""

    def __init__(self, *, capacity: int, name: str = "avatar-im-callbacks") -> None:
        self._capacity = capacity
        self._name = name
        # Guards _queue, _thread, _stopping and the counters; notified when a call is queued
        # or stop() is called.  Never held while a callback runs.
        self._cond = threading.Condition(threading.Lock())
        self._queue: collections.deque[tuple[Callable[[Any], object], Any]] = collections.deque()
        self._stopping = False
        # The callback thread: runs queued calls; blocks on _cond while the queue is empty;
        # exits when stop() was called and the queue is empty.  A daemon, so that a callback
        # that never returns cannot keep the interpreter alive.
        self._thread: threading.Thread | None = None
        self.errors = 0
        self.dropped = 0

    @property
    def thread(self) -> threading.Thread | None:
        """The callback thread, if it is running."""
        thread = self._thread
        return thread if thread is not None and thread.is_alive() else None

    def call(self, callback: Callable[[Any], object], argument: Any) -> None:
        """Queue ``callback(argument)``; never blocks, never runs it on this thread."""
        with self._cond:
            if len(self._queue) >= self._capacity:
                self._queue.popleft()
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 1000 == 0:
                    logger.warning(
                        "callbacks are %d calls behind: dropped the oldest (%d so far); "
                        "keep callbacks short",
                        self._capacity,
                        self.dropped,
                    )
            self._queue.append((callback, argument))
            if self._thread is None or self._stopping:
                self._stopping = False
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name=f"{self._name}-{next(_thread_ids)}", daemon=True
                    )
                    self._thread.start()
            self._cond.notify()

    def stop(self, timeout: float) -> bool:
        """Run what is queued, then end the thread; wait up to *timeout* seconds.

        Returns False if the thread was still running a callback when the
        time ran out (it ends once that callback returns).  From a callback,
        it returns at once: the thread ends after that callback.
        """
        with self._cond:
            thread = self._thread
            self._stopping = True
            self._cond.notify()
        if thread is None or thread is threading.current_thread():
            return True
        thread.join(max(0.0, timeout))
        if thread.is_alive():
            logger.warning(
                "a callback is still running after %.1fs; its thread %s ends when it returns",
                timeout,
                thread.name,
            )
            return False
        return True

    def after_fork_in_child(self) -> None:
        """Forget the parent's thread and queue (only the forking thread survives a fork)."""
        self._cond = threading.Condition(threading.Lock())
        self._queue.clear()
        self._thread = None
        self._stopping = False

    def _run(self) -> None:
        me = threading.current_thread()
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if not self._queue:
                    if self._thread is me:
                        self._thread = None
                    return
                callback, argument = self._queue.popleft()
            started = time.monotonic()
            try:
                callback(argument)
            except BaseException:
                with self._cond:
                    self.errors += 1
                logger.exception("callback %r raised; the client goes on", callback)
            elapsed = time.monotonic() - started
            if elapsed > 1.0:
                logger.debug("callback %r took %.1fs", callback, elapsed)
