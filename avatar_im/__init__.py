"""avatar_im: a synchronous Python client for cloud avatar IM WebSocket sessions.

The public surface is re-exported here; see :class:`AvatarIM`.
"""

from __future__ import annotations

import logging

from ._version import __version__
from .backoff import ReconnectPolicy
from .client import AvatarIM, ClientStats
from .connection import ConnectionState
from .exceptions import (
    AckError,
    AckTimeout,
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
    InvalidArgumentError,
    InvalidArgumentTypeError,
    LifecycleError,
    MessageDiscardedError,
    OutboxFullError,
    ProtocolError,
    ReceiveTimeout,
    ServerClosedError,
    SessionError,
    SessionNotStartedError,
    SessionReadyTimeout,
    SessionStartError,
    TokenProviderError,
    UnknownMessageError,
)
from .options import SessionOptions
from .protocol import SessionState
from .urls import DEFAULT_URL

__all__ = [
    "DEFAULT_URL",
    "AckError",
    "AckTimeout",
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
    "InvalidArgumentError",
    "InvalidArgumentTypeError",
    "LifecycleError",
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
    "TokenProviderError",
    "UnknownMessageError",
    "__version__",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())
