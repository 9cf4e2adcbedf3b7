"""A reference avatar IM server, for tests and local development.

:class:`ReferenceServer` speaks the wire protocol of ``avatar_im.packets`` on
a real WebSocket, records what it processes, and lets tests push frames and
inject faults.  See :mod:`avatar_im.server.state` for its rules and ack
errors, :mod:`avatar_im.server.responder` for what it answers to ``dataSend``,
and :mod:`avatar_im.server.server` for TLS, limits and allow-lists.
"""

from __future__ import annotations

try:
    import websockets as _websockets  # noqa: F401 - only to name the missing extra
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "avatar_im.server needs the 'server' extra: pip install 'avatar-im[server]'",
        name=exc.name,
    ) from exc

from .responder import Replies, Request, Responder, SessionInfo, audio_duration, default_responder
from .server import Faults, ReferenceServer
from .state import (
    ACK_ERRORS,
    BAD_CONTENT,
    FORBIDDEN,
    RATE_LIMITED,
    SESSION_NOT_FOUND,
    TOO_MANY_SESSIONS,
    Credentials,
    ServerStats,
    SessionSnapshot,
)

__all__ = [
    "ACK_ERRORS",
    "BAD_CONTENT",
    "FORBIDDEN",
    "RATE_LIMITED",
    "SESSION_NOT_FOUND",
    "TOO_MANY_SESSIONS",
    "Credentials",
    "Faults",
    "ReferenceServer",
    "Replies",
    "Request",
    "Responder",
    "ServerStats",
    "SessionInfo",
    "SessionSnapshot",
    "audio_duration",
    "default_responder",
]
