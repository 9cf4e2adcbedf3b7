"""The exception hierarchy of ``avatar_im``.

Every error this library raises on purpose derives from :class:`AvatarIMError`.
Where an error resembles a builtin, it also inherits that builtin, so callers
may catch either (``except TimeoutError`` still works)::

    AvatarIMError
    ├── InvalidArgumentError (ValueError)    bad input at the call site
    │   ├── InvalidArgumentTypeError (TypeError)
    │   └── AudioFormatError                 audio that is not, or cannot become, the session's
    ├── ProtocolError (ValueError)           a frame that breaks the wire protocol
    ├── ClientClosedError                    the client was closed (by you or for good)
    │   └── ForkedClientError                the client was made in the parent of a fork()
    ├── ConnectionFailedError                the connection could not be (re)made
    │   ├── AuthenticationError              HTTP 401/403 at the handshake
    │   ├── HandshakeError                   any other refused handshake
    │   ├── CertificateError                 the server's TLS certificate failed verification
    │   ├── ConnectTimeout (TimeoutError)    not connected within the wait's timeout
    │   ├── TokenProviderError               the token provider failed (``__cause__``)
    │   └── ServerClosedError                the server sent ``2`` with a final reason
    ├── SessionError
    │   ├── SessionNotStartedError           a session call before start / after stop
    │   ├── SessionStartError                the server refused ``start``
    │   └── SessionReadyTimeout (TimeoutError)
    ├── DeliveryError
    │   ├── AckError                         the server acked a message with ``error``
    │   ├── AckTimeout (TimeoutError)
    │   ├── MessageDiscardedError            dropped unacked by close() (a ClientClosedError too)
    │   ├── MessageCancelledError            cut unwritten from the outbox by interrupt()
    │   └── UnknownMessageError (LookupError)  an id this client did not send, or forgot
    ├── LifecycleError (RuntimeError)        an illegal connection state change (a bug)
    ├── OutboxFullError                      the outbox stayed full past the timeout
    ├── ReceiveTimeout (TimeoutError)        nothing arrived for the pull API in time
    │   └── AskTimeout                       no reply to ask() in time
    ├── InterruptError                       interrupt_via failed (the report is kept)
    │   └── InterruptTimeout (TimeoutError)  the service did not confirm interrupt() in time
    ├── SpeakingTimeout (TimeoutError)       the avatar was still speaking after the wait
    ├── AudioStreamError                     an audio stream failed after sending some chunks
    └── AudioDeviceError                     the microphone could not be opened or went silent

This module must never import anything but the standard library.
"""

from __future__ import annotations

__all__ = [
    "AckError",
    "AckTimeout",
    "AskTimeout",
    "AudioDeviceError",
    "AudioFormatError",
    "AudioStreamError",
    "AuthenticationError",
    "AvatarIMError",
    "CertificateError",
    "ClientClosedError",
    "ConnectTimeout",
    "ConnectionFailedError",
    "DeliveryError",
    "ForkedClientError",
    "HandshakeError",
    "InterruptError",
    "InterruptTimeout",
    "InvalidArgumentError",
    "InvalidArgumentTypeError",
    "LifecycleError",
    "MessageCancelledError",
    "MessageDiscardedError",
    "OutboxFullError",
    "ProtocolError",
    "ReceiveTimeout",
    "ServerClosedError",
    "SessionError",
    "SessionNotStartedError",
    "SessionReadyTimeout",
    "SessionStartError",
    "SpeakingTimeout",
    "TokenProviderError",
    "UnknownMessageError",
]


class AvatarIMError(Exception):
    """Root of every error raised by ``avatar_im``."""


class InvalidArgumentError(AvatarIMError, ValueError):
    """An argument has an unacceptable value (empty token, unknown option, bad base64...)."""


class InvalidArgumentTypeError(InvalidArgumentError, TypeError):
    """An argument has the wrong type."""


class ProtocolError(AvatarIMError, ValueError):
    """A frame does not follow the wire protocol (bad digit, bad JSON, wrong shape)."""


class ClientClosedError(AvatarIMError):
    """The client is closed; ``__cause__`` or :attr:`reason` says why when it was not you."""

    def __init__(self, message: str, *, reason: BaseException | None = None) -> None:
        super().__init__(message)
        self.reason = reason


class ForkedClientError(ClientClosedError):
    """The client was made in another process, which then forked this one.

    Its connection belongs to the parent; the child never touches it.  Make a
    new client in the process that uses it (lazily on first use, or in a
    pre-fork server's post-fork hook).
    """


class LifecycleError(AvatarIMError, RuntimeError):
    """The connection was asked to make a state change its state machine forbids."""


class ConnectionFailedError(AvatarIMError):
    """The WebSocket connection could not be made or was ended for good."""


class AuthenticationError(ConnectionFailedError):
    """The server refused the credentials at the handshake (HTTP 401 or 403)."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


class HandshakeError(ConnectionFailedError):
    """The server refused the WebSocket handshake for another reason."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class CertificateError(ConnectionFailedError):
    """The server's TLS certificate failed verification (pass ``ssl_context`` or ``ca_file``)."""


class ConnectTimeout(ConnectionFailedError, TimeoutError):
    """``connect(timeout)`` or ``wait_connected(timeout)`` ran out of time (retries go on)."""


class TokenProviderError(ConnectionFailedError):
    """The ``token_provider`` raised (its error is ``__cause__``).

    :attr:`final` is True when the client gives up at once: the provider raised
    an :class:`AvatarIMError` (the instance is gone, say), a ``TypeError`` or a
    ``ValueError``.  Other errors are retried, three in a row at most.
    """

    def __init__(self, message: str, *, final: bool) -> None:
        super().__init__(message)
        self.final = final


class ServerClosedError(ConnectionFailedError):
    """The server ended the connection for good with packet ``2`` and :attr:`reason`."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class SessionError(AvatarIMError):
    """A session-level failure."""


class SessionNotStartedError(SessionError):
    """A session call was made before ``start_session`` or after ``stop_session``."""


class SessionStartError(SessionError):
    """The server refused to start the session; :attr:`error` is what it said."""

    def __init__(self, message: str, *, error: object) -> None:
        super().__init__(message)
        self.error = error


class SessionReadyTimeout(SessionError, TimeoutError):
    """``startResult`` did not arrive in time."""


class DeliveryError(AvatarIMError):
    """A message was not confirmed as delivered."""


class AckError(DeliveryError):
    """The server acknowledged :attr:`message_id` with an error."""

    def __init__(self, message: str, *, message_id: str, error: object) -> None:
        super().__init__(message)
        self.message_id = message_id
        self.error = error


class AckTimeout(DeliveryError, TimeoutError):
    """No acknowledgement arrived in time."""


class MessageDiscardedError(DeliveryError, ClientClosedError):
    """:attr:`message_id` was still unacknowledged when the client closed, and was dropped."""

    def __init__(self, message: str, *, message_id: str) -> None:
        super().__init__(message)
        self.message_id = message_id


class MessageCancelledError(DeliveryError):
    """:attr:`message_id` was cut from the outbox, never written, by ``interrupt()``."""

    def __init__(self, message: str, *, message_id: str) -> None:
        super().__init__(message)
        self.message_id = message_id


class UnknownMessageError(DeliveryError, LookupError):
    """:attr:`message_id` was not sent by this client, or its outcome is no longer remembered."""

    def __init__(self, message: str, *, message_id: str) -> None:
        super().__init__(message)
        self.message_id = message_id


class OutboxFullError(AvatarIMError):
    """The outbox of unacknowledged messages stayed full until the send timeout."""


class ReceiveTimeout(AvatarIMError, TimeoutError):
    """The pull API waited its timeout and nothing arrived."""


class AskTimeout(ReceiveTimeout):
    """``ask()`` got no reply within its timeout; :attr:`message_id` is the text's id."""

    def __init__(self, message: str, *, message_id: str) -> None:
        super().__init__(message)
        self.message_id = message_id


class InterruptError(AvatarIMError):
    """``interrupt()`` could not tell the service; :attr:`report` says what was cut."""

    def __init__(self, message: str, *, report: object) -> None:
        super().__init__(message)
        self.report = report


class InterruptTimeout(InterruptError, TimeoutError):
    """The service did not confirm ``interrupt()`` in time; :attr:`report` says what was cut."""


class SpeakingTimeout(AvatarIMError, TimeoutError):
    """The avatar was still speaking when ``wait_until_quiet()`` gave up."""


class AudioFormatError(InvalidArgumentError):
    """Audio that is not in, and cannot be converted to, the session's format.

    Odd-length 16-bit PCM, a file that is not audio, an array of the wrong
    dtype or shape, or a WAV of another rate, width or channel count when the
    ``audio`` extra (which converts it) is not installed: the message names
    the mismatch.
    """


class AudioStreamError(AvatarIMError):
    """An audio stream ended with an error after :attr:`chunks_sent` chunks were sent.

    :attr:`message_ids` are the ids of those chunks; ``__cause__`` is the error.
    """

    def __init__(self, message: str, *, chunks_sent: int, message_ids: list[str]) -> None:
        super().__init__(message)
        self.chunks_sent = chunks_sent
        self.message_ids = message_ids


class AudioDeviceError(AvatarIMError):
    """The microphone could not be opened (no ``sounddevice``, no PortAudio) or sent nothing."""
