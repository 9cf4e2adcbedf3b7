"""One avatar client per process, shared by the views of a web app (Flask, Django, ...).

:class:`SharedClient` makes the :class:`~avatar_im.AvatarIM` client the first time a
view needs it, starts the avatar session, and closes both at exit.  Its
:meth:`SharedClient.ask` sends a text and returns the avatar's reply *to that
text*: the client's pull API returns messages in arrival order for the whole
client, so each request waits, with ``receive(match=...)``, for the message whose
``content["replyTo"]`` is its own message id; other messages stay buffered for other
requests (and drop out, oldest first, when the client's bounded buffer is full).

Configuration comes from the environment (:meth:`SharedClient.from_env`):
``AVATAR_IM_URL`` (unset: an embedded reference server, for offline development),
``AVATAR_IM_TOKEN``, ``AVATAR_IM_APP_ID``, ``AVATAR_IM_TENANT_ID`` and
``AVATAR_IM_SESSION_ID``.

This is example code, not part of the library: copy it into your app.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from typing import TYPE_CHECKING, Any

from avatar_im import AvatarIM, ReceiveTimeout

if TYPE_CHECKING:
    from avatar_im.server import ReferenceServer

__all__ = ["ReplyTimeout", "SharedClient", "ask"]

logger = logging.getLogger(__name__)


class ReplyTimeout(TimeoutError):
    """No reply to a text came in time."""


def ask(client: AvatarIM, text: str, timeout: float) -> dict[str, Any]:
    """Send *text* on *client* and return the ``content`` of the reply to it (by ``replyTo``).

    Raises :class:`ReplyTimeout` if no reply comes within *timeout* seconds.
    """
    message_id = client.send_text(text)

    def is_reply(message: dict[str, Any]) -> bool:
        content = message.get("content")
        return isinstance(content, dict) and content.get("replyTo") == message_id

    try:
        reply: dict[str, Any] = client.receive(timeout, match=is_reply)["content"]
    except ReceiveTimeout:
        raise ReplyTimeout(f"no reply to {message_id} within {timeout}s") from None
    return reply


class SharedClient:
    """A lazily made, process-wide avatar client with a ready session.

    Thread-safe: any number of request threads may call :meth:`ask` at once.
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

        Raises :class:`ReplyTimeout` if no reply comes within *timeout* seconds, and
        the client's errors (:class:`avatar_im.AvatarIMError`) as they are.
        """
        return ask(self.client(), text, timeout)

    def close(self) -> None:
        """Close the client and the embedded server, if any (registered with ``atexit``)."""
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
