"""One avatar client per process, shared by the views of a web app (Flask, Django, ...).

:class:`SharedClient` makes the :class:`~avatar_im.AvatarIM` client the first time a
view needs it, starts the avatar session, and closes both at exit.  Its
:meth:`SharedClient.ask` sends a text and returns the avatar's reply *to that
text*, with :meth:`AvatarIM.ask() <avatar_im.AvatarIM.ask>`: the service's replies
name no message they answer, so the client's asks take turns (one request thread at
a time sends its text and takes the first reply that follows it; the others wait
their turn, within their own timeout).  One session is one conversation: requests
of a process that share it are answered one after the other.

If a reply comes only after its ask gave up (:class:`~avatar_im.AskTimeout`), the
next ask may take it for its own: keep the timeout above the service's slowest
answer.

Configuration comes from the environment (:meth:`SharedClient.from_env`):
``AVATAR_IM_URL`` (unset: an embedded reference server, for offline development),
``AVATAR_IM_TOKEN``, ``AVATAR_IM_APP_ID``, ``AVATAR_IM_TENANT_ID`` and
``AVATAR_IM_SESSION_ID``.

This is example code, not part of the library: copy this file into your app (it needs
only ``avatar_im``).
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from typing import TYPE_CHECKING, Any

from avatar_im import AvatarIM

if TYPE_CHECKING:
    from avatar_im.server import ReferenceServer

__all__ = ["SharedClient"]

logger = logging.getLogger(__name__)


class SharedClient:
    """A lazily made, process-wide avatar client with a ready session.

    Thread-safe: any number of request threads may call :meth:`ask` at once; their
    asks take turns on the one client.
    """

    def __init__(
        self,
        *,
        url: str | None = None,
        token: str = "dev-token",
        app_id: str = "demo-app",
        tenant_id: str = "demo-tenant",
        session_id: str | None = None,
        start_timeout: float = 10.0,
        **session_options: Any,
    ) -> None:
        self._url = url
        self._token = token
        self._app_id = app_id
        self._tenant_id = tenant_id
        self._session_id = session_id or f"web-{uuid.uuid4().hex[:12]}"
        self._start_timeout = start_timeout
        self._session_options = session_options

        # Guards _client and _server: making, replacing and closing them.
        self._lock = threading.Lock()
        self._client: AvatarIM | None = None
        self._server: ReferenceServer | None = None

    @classmethod
    def from_env(cls, **session_options: Any) -> SharedClient:
        """A shared client configured by the ``AVATAR_IM_*`` environment variables."""
        env = os.environ
        return cls(
            url=env.get("AVATAR_IM_URL") or None,
            token=env.get("AVATAR_IM_TOKEN", "dev-token"),
            app_id=env.get("AVATAR_IM_APP_ID", "demo-app"),
            tenant_id=env.get("AVATAR_IM_TENANT_ID", "demo-tenant"),
            session_id=env.get("AVATAR_IM_SESSION_ID") or None,
            **session_options,
        )

    def client(self) -> AvatarIM:
        """The client, made (and its session started) on first use or after it closed for good."""
        with self._lock:
            if self._client is None or self._client.closed:
                if self._client is not None:
                    self._client.close()
                self._client = self._connect()
            return self._client

    def _connect(self) -> AvatarIM:
        """Make a client with a ready session.  Needs ``_lock``."""
        url = self._url
        if url is None:
            if self._server is None:
                from avatar_im.server import ReferenceServer  # needs the 'server' extra

                self._server = ReferenceServer(host="127.0.0.1", port=0).start()
                logger.info("no AVATAR_IM_URL: using an embedded reference server")
            url = self._server.url
        client = AvatarIM(
            token=self._token,
            app_id=self._app_id,
            tenant_id=self._tenant_id,
            session_id=self._session_id,
            url=url,
        )
        try:
            client.start_session(**self._session_options)
            client.wait_session_ready(self._start_timeout)
        except BaseException:
            client.close()
            raise
        return client

    def ask(self, text: str, timeout: float = 10.0) -> dict[str, Any]:
        """Send *text* and return the ``content`` of the avatar's reply to it.

        *timeout* bounds the whole call, the wait for this thread's turn included.
        Raises :class:`avatar_im.AskTimeout` (a :class:`TimeoutError`) if no reply
        comes in time, and the client's other errors (:class:`avatar_im.AvatarIMError`)
        as they are.
        """
        answer = self.client().ask(text, timeout)
        return dict(answer.reply.content)

    def close(self) -> None:
        """Close the client and the embedded server, if any (register it with ``atexit``)."""
        with self._lock:
            client, self._client = self._client, None
            server, self._server = self._server, None
        if client is not None:
            client.close()
        if server is not None:
            server.stop()


if __name__ == "__main__":  # python -m examples.shared_client: ask twice, print the replies
    logging.basicConfig(level=logging.INFO)
    shared = SharedClient.from_env(output_mode="audio")
    try:
        for question in ("hello", "how are you?"):
            print(f"{question!r} -> {shared.ask(question, timeout=10).get('text')!r}")
    finally:
        shared.close()
