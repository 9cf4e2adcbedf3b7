"""avatar_im: a synchronous Python client for cloud avatar IM WebSocket sessions.

The public surface is re-exported here; see :class:`AvatarIM`.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

from ._version import __version__

# The exceptions are imported at once (the standard library only); the rest on first use
# (PEP 562), so that `import avatar_im` stays cheap: see __getattr__.
from .exceptions import (
    AckError,
    AckTimeout,
    AskTimeout,
    AudioDeviceError,
    AudioFormatError,
    AudioStreamError,
    AuthenticationError,
    AvatarIMError,
    CertificateError,
    ClientClosedError,
    ConnectionFailedError,
    ConnectTimeout,
    DeliveryError,
    ForkedClientError,
    HandshakeError,
    InterruptError,
    InterruptTimeout,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    LifecycleError,
    MessageCancelledError,
    MessageDiscardedError,
    OutboxFullError,
    ProtocolError,
    ReceiveTimeout,
    ServerClosedError,
    SessionError,
    SessionNotStartedError,
    SessionReadyTimeout,
    SessionStartError,
    SpeakingTimeout,
    TokenProviderError,
    UnknownMessageError,
)

if TYPE_CHECKING:
    from .backoff import ReconnectPolicy
    from .client import AvatarIM, ClientStats, InterruptReport
    from .connection import ConnectionState
    from .inbox import Answer
    from .messages import Message
    from .options import SessionOptions
    from .protocol import AckPolicy, SessionState
    from .urls import DEFAULT_URL

#: Public names imported on first use, and the module that holds each.
_LAZY = {
    "ReconnectPolicy": "backoff",
    "AvatarIM": "client",
    "ClientStats": "client",
    "InterruptReport": "client",
    "ConnectionState": "connection",
    "Answer": "inbox",
    "Message": "messages",
    "SessionOptions": "options",
    "AckPolicy": "protocol",
    "SessionState": "protocol",
    "DEFAULT_URL": "urls",
}

__all__ = [
    "DEFAULT_URL",
    "AckError",
    "AckPolicy",
    "AckTimeout",
    "Answer",
    "AskTimeout",
    "AudioDeviceError",
    "AudioFormatError",
    "AudioStreamError",
    "AuthenticationError",
    "AvatarIM",
    "AvatarIMError",
    "CertificateError",
    "ClientClosedError",
    "ClientStats",
    "ConnectTimeout",
    "ConnectionFailedError",
    "ConnectionState",
    "DeliveryError",
    "ForkedClientError",
    "HandshakeError",
    "InterruptError",
    "InterruptReport",
    "InterruptTimeout",
    "InvalidArgumentError",
    "InvalidArgumentTypeError",
    "LifecycleError",
    "Message",
    "MessageCancelledError",
    "MessageDiscardedError",
    "OutboxFullError",
    "ProtocolError",
    "ReceiveTimeout",
    "ReconnectPolicy",
    "ServerClosedError",
    "SessionError",
    "SessionNotStartedError",
    "SessionOptions",
    "SessionReadyTimeout",
    "SessionStartError",
    "SessionState",
    "SpeakingTimeout",
    "TokenProviderError",
    "UnknownMessageError",
    "__version__",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())


def __getattr__(name: str) -> Any:
    """Import a public name on first use (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'avatar_im' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
