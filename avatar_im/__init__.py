"""avatar_im: a synchronous Python client for cloud avatar IM WebSocket sessions.

The public surface is re-exported here; see :class:`AvatarIM`.
"""

from __future__ import annotations

import logging

from ._version import __version__
from .backoff import ReconnectPolicy
from .client import AvatarIM, ClientStats, InterruptReport
from .connection import ConnectionState
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
from .inbox import Answer
from .messages import Message
from .options import SessionOptions
from .protocol import AckPolicy, SessionState
from .urls import DEFAULT_URL

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
    "InterruptReport",
    "InterruptError",
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
