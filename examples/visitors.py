"""One avatar per visitor of a web app (Flask, Django, ...), over a bounded registry.

:class:`VisitorAvatars` keeps an avatar for each browser session, keyed by a
visitor id the web framework keeps in its session cookie, in an
:class:`avatar_im.registry.ClientRegistry`: made on the visitor's first
request, closed after ten idle minutes, when the registry is full (the one
idle longest first), and at exit.

Where the avatar comes from (:meth:`VisitorAvatars.from_env`):

* ``ALIBABA_CLOUD_ACCESS_KEY_ID`` set: a cloud instance per visitor, started
  through the OpenAPI (see ``docs/cloud.md``) and stopped again with it;
* otherwise ``AVATAR_IM_URL`` (unset: an embedded reference server, for
  offline development), with ``AVATAR_IM_TOKEN``, ``AVATAR_IM_APP_ID`` and
  ``AVATAR_IM_TENANT_ID``.

A visitor's avatar lives in the worker process that served the visitor first.
Under a server with several worker processes each worker keeps its own
avatar for the visitors it serves (session ids carry the process id, so two
workers never share one session); sharing one avatar across workers and
machines is what the Redis relay is for.

:meth:`VisitorAvatars.ask` sends a text to a visitor's avatar and returns the
reply to it, with :meth:`AvatarIM.ask() <avatar_im.AvatarIM.ask>`: a visitor's
requests that come at once (two tabs) take turns on its avatar, each getting the
reply to its own text.  If a reply comes only after its ask gave up
(:class:`~avatar_im.AskTimeout`), the visitor's next ask may take it for its own:
keep the timeout above the service's slowest answer.

This is example code, not part of the library: copy this file into your app (it needs
only ``avatar_im``).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

from avatar_im import AvatarIM
from avatar_im.registry import ClientRegistry

if TYPE_CHECKING:
    from avatar_im.server import ReferenceServer
    from avatar_im.sessions import AvatarSession, OpenAPILike

__all__ = ["VisitorAvatars"]

logger = logging.getLogger(__name__)


class VisitorAvatars:
    """Avatars keyed by visitor; thread-safe: any number of request threads at once."""

    def __init__(
        self,
        *,
        url: str | None = None,
        token: str = "dev-token",
        app_id: str = "demo-app",
        tenant_id: str = "demo-tenant",
        openapi: OpenAPILike | None = None,
        max_visitors: int = 100,
        idle_timeout: float = 600.0,
        start_timeout: float = 10.0,
        **session_options: Any,
    ) -> None:
        self._url = url
        self._token = token
        self._app_id = app_id
        self._tenant_id = tenant_id
        self._openapi = openapi
        self._start_timeout = start_timeout
        self._session_options = session_options
        # Guards _server: the embedded reference server, made on first use.
        self._lock = threading.Lock()
        self._server: ReferenceServer | None = None
        self.registry: ClientRegistry[Any] = ClientRegistry(
            self._make, max_size=max_visitors, idle_timeout=idle_timeout
        )

    @classmethod
    def from_env(cls, **session_options: Any) -> VisitorAvatars:
        """Configured from the environment (see the module docstring)."""
        env = os.environ
        openapi = None
        if env.get("ALIBABA_CLOUD_ACCESS_KEY_ID"):
            from avatar_im.aliyun import AliyunConfig, AvatarOpenAPI  # the 'aliyun' extra

            openapi = AvatarOpenAPI(AliyunConfig.from_env())
        return cls(
            url=env.get("AVATAR_IM_URL") or None,
            token=env.get("AVATAR_IM_TOKEN", "dev-token"),
            app_id=env.get("AVATAR_IM_APP_ID", "demo-app"),
            tenant_id=env.get("AVATAR_IM_TENANT_ID", "demo-tenant"),
            openapi=openapi,
            **session_options,
        )

    def _im_url(self) -> str:
        if self._url is not None:
            return self._url
        with self._lock:
            if self._server is None:
                from avatar_im.server import ReferenceServer  # needs the 'server' extra

                self._server = ReferenceServer(host="127.0.0.1", port=0).start()
                logger.info("no AVATAR_IM_URL: using an embedded reference server")
            return self._server.url

    def _make(self, visitor: Hashable) -> AvatarIM | AvatarSession:
        """A visitor's avatar with a ready session (the registry's factory)."""
        if self._openapi is not None:
            from avatar_im.sessions import open_session

            kwargs = {} if self._url is None else {"url": self._url}
            return open_session(
                self._openapi,
                user_id=str(visitor),
                ready_timeout=self._start_timeout,
                session_options=self._session_options,
                **kwargs,
            )
        client = AvatarIM(
            token=self._token,
            app_id=self._app_id,
            tenant_id=self._tenant_id,
            session_id=f"web-{visitor}-{os.getpid()}",
            url=self._im_url(),
        )
        try:
            client.start_session(**self._session_options)
            client.wait_session_ready(self._start_timeout)
        except BaseException:
            client.close()
            raise
        return client

    def ask(self, visitor: str, text: str, timeout: float = 10.0) -> dict[str, Any]:
        """Send *text* to *visitor*'s avatar and return the ``content`` of its reply to it.

        The avatar is made on the visitor's first message.  *timeout* bounds the
        wait for the reply (the wait for the turn of the visitor's other requests
        included).  Raises :class:`avatar_im.AskTimeout` (a :class:`TimeoutError`)
        if no reply comes in time, and the client's other errors
        (:class:`avatar_im.AvatarIMError`) as they are.
        """
        with self.registry.use(visitor) as entry:
            client: AvatarIM = getattr(entry, "client", entry)  # an AvatarSession's client
            answer = client.ask(text, timeout)
        return dict(answer.reply.content)

    def close(self) -> None:
        """Close every visitor's avatar and the embedded server (registered with ``atexit``)."""
        self.registry.close()
        with self._lock:
            server, self._server = self._server, None
        if server is not None:
            server.stop()
