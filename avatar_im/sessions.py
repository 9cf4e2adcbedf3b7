"""A talking avatar from start to stop: a cloud instance, its IM client and its session.

:func:`open_session` starts an instance through the OpenAPI (see
:mod:`avatar_im.aliyun`), connects an :class:`~avatar_im.AvatarIM` to it
(renewing its token through ``QueryRunningInstance``), starts the avatar
session and waits until it is ready.  :class:`AvatarSession` undoes all of it
in :meth:`AvatarSession.close` — stop the session, flush, close the client,
stop the instance (instances cost money while they run) — and does so on
leaving a ``with`` block even when the block raised::

    api = AvatarOpenAPI(AliyunConfig.from_env())
    with open_session(api, user_id="visitor-1") as avatar:
        avatar.client.wait_ack(avatar.client.send_text("Hello!"), timeout=10)

It imports nothing of the OpenAPI SDK: any object with the methods of
:class:`OpenAPILike` works, which is how the tests drive it with the fake.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Protocol

from .client import AvatarIM, InstanceLike
from .exceptions import AvatarIMError

__all__ = ["AvatarSession", "OpenAPILike", "open_session"]

logger = logging.getLogger(__name__)


class OpenAPILike(Protocol):
    """The OpenAPI calls a session needs (``aliyun.AvatarOpenAPI`` has them)."""

    def start_instance(self, *, user_id: str, user_name: str | None = None) -> Any: ...
    def stop_instance(self, session_id: str) -> None: ...
    def query_running_instance(self, session_id: str) -> InstanceLike | None: ...
    def interrupt(self, session_id: str) -> str: ...


class AvatarSession:
    """A started instance, its connected client with a ready session; :meth:`close` ends all."""

    def __init__(self, openapi: OpenAPILike, instance: Any, client: AvatarIM) -> None:
        self.openapi = openapi
        #: The :class:`~avatar_im.aliyun.AvatarInstance` (its ``for_browser()`` is for pages).
        self.instance = instance
        #: The IM client, its session ready.
        self.client = client
        self._closed = False  # the session and the client are done
        self._stopped = False  # StopInstance succeeded

    @property
    def session_id(self) -> str:
        """The instance's session id (also the IM session id)."""
        return str(self.instance.session_id)

    def close(self, *, flush_timeout: float = 5.0) -> None:
        """Stop the session, wait up to *flush_timeout* for acks, close, stop the instance.

        Every step runs even if an earlier one failed; the first error is
        raised at the end.  When stopping the instance failed (throttling that
        outlasted the retries, say), calling it again tries again; once the
        instance is stopped, it does nothing.
        """
        if self._stopped:
            return
        errors: list[BaseException] = []
        client = self.client
        if not self._closed and not client.closed:
            try:
                if client.session_ready.is_set():
                    client.stop_session()
                client.flush(flush_timeout)
            except AvatarIMError as exc:
                logger.warning("stopping the session of %s: %s", self.session_id, exc)
        self._closed = True
        try:
            client.close()
        except Exception as exc:  # pragma: no cover - close() does not raise
            errors.append(exc)
        try:
            self.openapi.stop_instance(self.session_id)
            self._stopped = True
        except Exception as exc:
            logger.warning("stopping instance %s failed: %s", self.session_id, exc)
            errors.append(exc)
        if errors:
            raise errors[0]

    def __enter__(self) -> AvatarSession:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.close()
        except Exception:
            if exc is None:
                raise
            logger.exception("closing the avatar session after an error in the block")

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else self.client.state.value
        return f"<AvatarSession session_id={self.session_id!r} {state}>"


def open_session(
    openapi: OpenAPILike,
    *,
    user_id: str,
    user_name: str | None = None,
    url: str | None = None,
    ready_timeout: float = 10.0,
    session_options: Mapping[str, Any] | None = None,
    **client_options: Any,
) -> AvatarSession:
    """Start an instance, connect to it, start the session; return them as one session.

    *url* is the IM endpoint: by default ``AVATAR_IM_URL`` from the environment,
    else the cloud's (see :meth:`AvatarIM.from_instance`); ``avatar-im serve
    --openapi`` prints the ``AVATAR_IM_URL`` of its reference server.
    *session_options* go to :meth:`AvatarIM.start_session`, *client_options*
    to :class:`AvatarIM`.  If any step fails, what was started is stopped
    again (the instance too) before the error is raised.
    """
    instance = openapi.start_instance(user_id=user_id, user_name=user_name)
    client: AvatarIM | None = None
    try:
        client = AvatarIM.from_instance(instance, url=url, openapi=openapi, **client_options)
        client.start_session(**dict(session_options or {}))
        client.wait_session_ready(ready_timeout)
    except BaseException:
        if client is not None:
            client.close()
        try:
            openapi.stop_instance(instance.session_id)
        except Exception:
            logger.exception("stopping instance %s after a failed start", instance.session_id)
        raise
    return AvatarSession(openapi, instance, client)
