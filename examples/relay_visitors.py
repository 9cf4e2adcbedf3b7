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
by default).  Everything is checked at construction
(:class:`avatar_im.InvalidArgumentError`, or its subclass
:class:`avatar_im.InvalidArgumentTypeError` for a wrong type), without reaching Redis;
what only Redis can tell (a wrong password, a database number out of range) raises
:class:`avatar_im.relay.RelayUnavailableError` at the first :meth:`RelayVisitors.ask`.
See ``docs/many-workers.md``.

This is example code, not part of the library: copy this file into your app (it needs
``avatar_im`` with the ``relay`` extra).
"""

from __future__ import annotations

import json
import os
from typing import Any

from avatar_im import InvalidArgumentError, SessionNotStartedError
from avatar_im.checks import require_seconds, require_str, require_text, require_timeout
from avatar_im.options import SessionOptions
from avatar_im.relay import DEFAULT_PREFIX, MAX_SESSION_ID, Keys, RelayClient, check_redis_url

__all__ = ["RelayVisitors"]

#: What a visitor's session id starts with (the rest is the visitor's id).
SESSION_PREFIX = "web-"
#: The longest visitor id (the session id it makes is at most the relay's longest).
MAX_VISITOR = MAX_SESSION_ID - len(SESSION_PREFIX)


class RelayVisitors:
    """Visitors' avatars held by session hosts, reached through Redis; thread-safe.

    *redis_url* and *prefix* as :class:`~avatar_im.relay.RelayClient`'s,
    *start_timeout* the seconds (> 0) a visitor's first message waits for its
    session to start, *session_options* those of
    :meth:`~avatar_im.relay.RelayClient.start_session`: all checked here.
    """

    def __init__(
        self,
        redis_url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        start_timeout: float = 10.0,
        **session_options: Any,
    ) -> None:
        self._redis_url = check_redis_url(redis_url)
        self._prefix = Keys(prefix).prefix
        self._start_timeout = require_seconds("start_timeout", start_timeout, positive=True)
        SessionOptions.from_kwargs(dict(session_options))  # as RelayClient.start_session
        try:
            json.dumps(session_options)
        except (TypeError, ValueError) as exc:
            raise InvalidArgumentError(f"session options must be JSON values: {exc}") from None
        self._session_options = dict(session_options)

    @classmethod
    def from_env(cls, **session_options: Any) -> RelayVisitors:
        """Configured from ``AVATAR_IM_REDIS`` and ``AVATAR_IM_RELAY_PREFIX``.

        Raises :class:`avatar_im.InvalidArgumentError` naming ``AVATAR_IM_REDIS`` when it
        is unset, empty or not a Redis URL, and ``AVATAR_IM_RELAY_PREFIX`` when it is not a
        prefix.
        """
        url = os.environ.get("AVATAR_IM_REDIS")
        if not url:
            raise InvalidArgumentError(
                "AVATAR_IM_REDIS is not set: set it to the Redis URL of the session hosts "
                "(redis://host:6379/0)"
            )
        prefix = os.environ.get("AVATAR_IM_RELAY_PREFIX") or DEFAULT_PREFIX
        try:
            Keys(prefix)
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(f"AVATAR_IM_RELAY_PREFIX: {exc}") from None
        return cls(check_redis_url(url, "AVATAR_IM_REDIS"), prefix=prefix, **session_options)

    def _handle(self, visitor: str) -> RelayClient:
        # One session per visitor, the same id in every worker: that is what shares it.
        return RelayClient(
            self._redis_url, session_id=f"{SESSION_PREFIX}{visitor}", prefix=self._prefix
        )

    def _start(self, avatar: RelayClient) -> None:
        avatar.start_session(**self._session_options)
        avatar.wait_session_ready(self._start_timeout)

    def ask(self, visitor: str, text: str, timeout: float = 10.0) -> dict[str, Any]:
        """Send *text* to *visitor*'s avatar and return the ``content`` of its reply to it.

        The session is started on the visitor's first message (and again when
        its host let it go, idle).  Raises the relay's errors as they are:
        :class:`avatar_im.AskTimeout`, :class:`avatar_im.relay.HostsFullError`,
        :class:`avatar_im.relay.RelayUnavailableError` (all
        :class:`avatar_im.AvatarIMError`).  *visitor* (1 to :data:`MAX_VISITOR`
        printable characters), *text* and *timeout* are checked first, before Redis.
        """
        require_str("visitor", visitor)
        if len(visitor) > MAX_VISITOR or not visitor.isprintable():
            raise InvalidArgumentError(
                f"visitor must be 1 to {MAX_VISITOR} printable characters (no control "
                f"characters or newlines), got {len(visitor)} characters"
            )
        require_text(text)
        timeout = require_timeout("timeout", timeout)
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
