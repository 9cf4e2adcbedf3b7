"""One thread that runs callbacks at given times: delayed acks, session expiry.

Callbacks run one at a time on the timer thread, in time order (ties in the
order they were scheduled), outside the timer's lock.  A callback that raises
is logged and does not stop the thread.  Callbacks still pending at
:meth:`Timer.stop` are dropped.

Every connection shares the one thread, so a callback must never block (never
send to a peer, which may have stopped reading): the server's callbacks only
queue a due ack for its connection's own sender thread, or forget a session.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

__all__ = ["Timer"]

logger = logging.getLogger(__name__)


class Timer:
    """Runs callbacks after a delay on one daemon thread."""

    def __init__(self, *, name: str) -> None:
        # Guards _queue and _stopped; notified when an earlier deadline is queued or on stop.
        self._condition = threading.Condition(threading.Lock())
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._stopped = False
        # The timer thread: runs due callbacks; blocks on _condition until the next deadline
        # or a notification; exits when stop() sets _stopped.  A daemon, so that a server
        # that is never stopped cannot keep the interpreter alive.
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        """Start the timer thread."""
        self._thread.start()

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        """Run *callback* on the timer thread in *delay* seconds (ignored once stopped)."""
        with self._condition:
            if self._stopped:
                return
            heapq.heappush(self._queue, (time.monotonic() + delay, next(self._order), callback))
            self._condition.notify()

    def stop(self, timeout: float) -> None:
        """Stop the thread, dropping pending callbacks; wait up to *timeout* for it to end."""
        with self._condition:
            self._stopped = True
            self._queue.clear()
            self._condition.notify()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("timer thread %s did not stop in %.1f s", self._thread.name, timeout)

    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._stopped:
                    if self._queue:
                        delay = self._queue[0][0] - time.monotonic()
                        if delay <= 0:
                            break
                        self._condition.wait(delay)
                    else:
                        self._condition.wait()
                if self._stopped:
                    return
                _, _, callback = heapq.heappop(self._queue)
            try:
                callback()
            except Exception:
                logger.exception("timer callback %r failed", callback)
