"""One avatar per visitor, shared by every worker process and machine, over the Redis relay.

:class:`RelayVisitors` has the shape of :class:`examples.visitors.VisitorAvatars`
(``ask(visitor, text, timeout)`` returning the reply's ``content``, ``close()``),
but holds no WebSocket: each visitor's avatar session is held by a session host
(``avatar-im host --redis URL``) and reached through Redis with an
:class:`avatar_im.relay.RelayClient` made per request.  So a visitor whose
requests land on different gunicorn or uWSGI workers, on different machines,
talks to one avatar, and ``gunicorn --preload`` needs nothing special: nothing
here connects before a request.

Configured from the environment by :meth:`RelayVisitors.from_env`:
``AVATAR_IM_REDIS`` (the Redis URL; the Flask example uses this class when it
is set) and ``AVATAR_IM_RELAY_PREFIX`` (the hosts' key prefix, ``avatar-im``
by default).  See ``docs/many-workers.md``.

This is example code, not part of the library: copy this file into your app (it needs
``avatar_im`` with the ``relay`` extra).
"""

from __future__ import annotations

import os
from typing import Any

from avatar_im import SessionNotStartedError
from avatar_im.relay import DEFAULT_PREFIX, RelayClient

__all__ = ["RelayVisitors"]


class RelayVisitors:
    """Visitors' avatars held by session hosts, reached through Redis; thread-safe."""

    def __init__(
        self,
        redis_url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        start_timeout: float = 10.0,
        **session_options: Any,
    ) -> None:
        self._redis_url = redis_url
        self._prefix = prefix
        self._start_timeout = start_timeout
        self._session_options = session_options

    @classmethod
    def from_env(cls, **session_options: Any) -> RelayVisitors:
        """Configured from ``AVATAR_IM_REDIS`` and ``AVATAR_IM_RELAY_PREFIX``."""
        return cls(
            os.environ["AVATAR_IM_REDIS"],
            prefix=os.environ.get("AVATAR_IM_RELAY_PREFIX") or DEFAULT_PREFIX,
            **session_options,
        )

    def _handle(self, visitor: str) -> RelayClient:
        # One session per visitor, the same id in every worker: that is what shares it.
        return RelayClient(self._redis_url, session_id=f"web-{visitor}", prefix=self._prefix)

    def _start(self, avatar: RelayClient) -> None:
        avatar.start_session(**self._session_options)
        avatar.wait_session_ready(self._start_timeout)

    def ask(self, visitor: str, text: str, timeout: float = 10.0) -> dict[str, Any]:
        """Send *text* to *visitor*'s avatar and return the ``content`` of its reply to it.

        The session is started on the visitor's first message (and again when
        its host let it go, idle).  Raises the relay's errors as they are:
        :class:`avatar_im.AskTimeout`, :class:`avatar_im.relay.HostsFullError`,
        :class:`avatar_im.relay.RelayUnavailableError` (all
        :class:`avatar_im.AvatarIMError`).
        """
        with self._handle(visitor) as avatar:
            if not avatar.hosted():
                self._start(avatar)
            try:
                answer = avatar.ask(text, timeout)
            except SessionNotStartedError:  # let go between hosted() and ask(): start again
                self._start(avatar)
                answer = avatar.ask(text, timeout)
        return dict(answer.reply.content)

    def close(self) -> None:
        """Nothing to close: the hosts hold the sessions (they stop them when idle)."""
