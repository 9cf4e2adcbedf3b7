"""A reference avatar IM server, for tests and local development.

:class:`ReferenceServer` speaks the wire protocol of ``avatar_im.packets`` on
a real WebSocket, records what it processes, and lets tests push frames and
inject faults.  Its default ``cloud`` profile models the service's message
families (ASR, replies, broadcasts, interrupts); its ``echo`` profile gives the
reference server's own exact replies.  See :mod:`avatar_im.server.state` for
its rules and ack errors, :mod:`avatar_im.server.conversation` for the
``cloud`` profile's conversation, :mod:`avatar_im.server.responder` for the
``echo`` answers to ``dataSend``, and :mod:`avatar_im.server.server` for
profiles, threads, TLS, limits and allow-lists.
"""

from __future__ import annotations

try:
    import websockets as _websockets  # noqa: F401 - only to name the missing extra
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "avatar_im.server needs the 'server' extra: pip install 'avatar-im[server]'",
        name=exc.name,
    ) from exc

from .conversation import ConversationConfig, default_reply
from .responder import Replies, Request, Responder, SessionInfo, audio_duration, default_responder
from .server import Faults, ReferenceServer, Reply
from .state import (
    ACK_ERRORS,
    BAD_CONTENT,
    CLOUD,
    ECHO,
    FORBIDDEN,
    PROFILES,
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
    "CLOUD",
    "ECHO",
    "FORBIDDEN",
    "PROFILES",
    "RATE_LIMITED",
    "SESSION_NOT_FOUND",
    "TOO_MANY_SESSIONS",
    "ConversationConfig",
    "Credentials",
    "Faults",
    "ReferenceServer",
    "Replies",
    "Reply",
    "Request",
    "Responder",
    "ServerStats",
    "SessionInfo",
    "SessionSnapshot",
    "audio_duration",
    "default_reply",
    "default_responder",
]
