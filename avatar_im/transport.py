"""One WebSocket connection, on ``websocket-client``: the only module that imports it.

:class:`Transport` opens the connection, waits for and reads whole frames,
and writes batches of text frames with a single ``sendall``.  It converts
``websocket-client``'s and the socket layer's errors into this library's:
:class:`~avatar_im.exceptions.AuthenticationError` and
:class:`~avatar_im.exceptions.HandshakeError` at the handshake,
:class:`TransportClosed` once the connection is gone.

Threads: any thread may call :meth:`Transport.abort` (it only shuts the socket
down, which wakes a reader blocked in ``recv`` and a writer blocked in
``sendall``); one thread reads; writers serialise on ``websocket-client``'s
own send lock, which its automatic pong answers take too.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import ssl
from typing import Any

import websocket

from .exceptions import (
    AuthenticationError,
    CertificateError,
    ConnectionFailedError,
    HandshakeError,
)
from .urls import redact_url

__all__ = ["FrameTooLarge", "Transport", "TransportClosed"]

logger = logging.getLogger(__name__)

_OP_TEXT = websocket.ABNF.OPCODE_TEXT
_OP_BINARY = websocket.ABNF.OPCODE_BINARY
_OP_CLOSE = websocket.ABNF.OPCODE_CLOSE
_OP_CONT = websocket.ABNF.OPCODE_CONT


class TransportClosed(ConnectionFailedError):
    """The connection is gone (closed by either side, reset, or aborted)."""


class FrameTooLarge(websocket.WebSocketException):  # type: ignore[misc,unused-ignore]
    """An inbound message exceeded the size limit; it was read and thrown away."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"inbound message of {size} bytes exceeds the {limit}-byte limit")
        self.size = size


_DISCARD_CHUNK = 65536


class _BoundedFrameBuffer(websocket._abnf.frame_buffer):  # type: ignore[misc,unused-ignore]
    """websocket-client's frame reader, refusing frames longer than a limit.

    The payload of a frame over the limit is read in 64 KiB pieces and thrown
    away, so memory stays bounded and the stream stays in sync.
    """

    def __init__(self, recv: Any, skip_utf8_validation: bool, limit: int) -> None:
        super().__init__(recv, skip_utf8_validation)
        self._limit = limit

    def recv_length(self) -> None:
        super().recv_length()
        length = self.length
        if length is None or length <= self._limit:
            return
        remaining = length + (4 if self.has_mask() else 0)
        buffered = sum(len(b) for b in self.recv_buffer)
        self.recv_buffer = []
        remaining -= buffered
        while remaining > 0:
            piece = self.recv(min(_DISCARD_CHUNK, remaining))
            if not piece:
                raise websocket.WebSocketConnectionClosedException("closed mid-frame")
            remaining -= len(piece)
        self.clear()
        raise FrameTooLarge(length, self._limit)


class _BoundedContinuation(websocket._abnf.continuous_frame):  # type: ignore[misc,unused-ignore]
    """websocket-client's reassembly of fragmented messages, with a total size limit."""

    def __init__(self, skip_utf8_validation: bool, limit: int) -> None:
        super().__init__(False, skip_utf8_validation)
        self._limit = limit
        self._dropped = 0  # > 0 while throwing away the rest of a too-large message

    def add(self, frame: Any) -> None:
        if self._dropped:
            self._dropped += len(frame.data)
            if frame.fin:
                size, self._dropped = self._dropped, 0
                self.recving_frames = None
                raise FrameTooLarge(size, self._limit)
            return
        held = len(self.cont_data[1]) if self.cont_data else 0
        if held + len(frame.data) > self._limit:
            self.cont_data = None
            if frame.fin:
                self.recving_frames = None
                raise FrameTooLarge(held + len(frame.data), self._limit)
            self._dropped = held + len(frame.data)
            self.recving_frames = frame.opcode if frame.opcode != _OP_CONT else self.recving_frames
            return
        super().add(frame)

    def is_fire(self, frame: Any) -> bool:
        return bool(frame.fin) and not self._dropped


class Transport:
    """A WebSocket connection: open it, read frames, write batches, abort it."""

    def __init__(
        self, *, sslopt: dict[str, Any] | None = None, max_message_size: int | None = None
    ) -> None:
        # skip_utf8_validation: we decode text ourselves so bad UTF-8 is a
        # counted garbage frame, not a dead connection.
        ws = websocket.WebSocket(enable_multithread=True, skip_utf8_validation=True, sslopt=sslopt)
        if max_message_size is not None:
            ws.frame_buffer = _BoundedFrameBuffer(ws._recv, True, max_message_size)
            ws.cont_frame = _BoundedContinuation(True, max_message_size)
        self._ws = ws
        self._aborted = False

    # ------------------------------------------------------------ lifecycle

    def open(self, url: str, *, timeout: float, **options: Any) -> None:
        """Connect and finish the handshake within *timeout* seconds, or raise.

        Afterwards reads and writes block (the socket timeout is set to
        *io_timeout* given in *options*, ``None`` for no limit).
        """
        io_timeout = options.pop("io_timeout", None)
        shown = redact_url(url)
        try:
            self._ws.connect(  # type: ignore[no-untyped-call]
                url, timeout=timeout, suppress_origin=True, **options
            )
        except websocket.WebSocketBadStatusException as exc:
            status = exc.status_code
            if status in (401, 403):
                raise AuthenticationError(
                    f"{shown}: the server refused the credentials (HTTP {status})", status=status
                ) from None
            raise HandshakeError(
                f"{shown}: the server refused the handshake (HTTP {status})", status=status
            ) from None
        except ssl.SSLCertVerificationError as exc:
            raise CertificateError(
                f"{shown}: the server's certificate failed verification: {exc.verify_message}"
            ) from None
        except (websocket.WebSocketException, OSError, ValueError) as exc:
            # The message of websocket-client's errors can hold the URL: do not repeat it.
            raise ConnectionFailedError(f"{shown}: cannot connect ({type(exc).__name__})") from None
        if self._aborted:
            self._ws.shutdown()  # type: ignore[no-untyped-call]
            raise TransportClosed("aborted while connecting")
        self._ws.settimeout(io_timeout)

    def abort(self) -> None:
        """Shut the socket down now, from any thread; wakes blocked readers and writers."""
        self._aborted = True
        sock = self._ws.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def send_close(self, *, timeout: float = 0.2) -> None:
        """Send a close frame if the socket takes it within *timeout* seconds (best effort).

        The server answers with its own close frame, which ends the reader's
        ``recv``; the caller then :meth:`close` s the socket.
        """
        sock = self._ws.sock
        if sock is None or self._aborted:
            return
        lock = self._ws.lock
        if not lock.acquire(timeout=timeout):
            return
        try:
            sock.settimeout(timeout)
            sock.sendall(websocket.ABNF.create_frame(b"\x03\xe8", _OP_CLOSE).format())
        except OSError:
            pass
        finally:
            lock.release()

    def close(self) -> None:
        """Shut the socket down and release it."""
        self.abort()
        self._ws.shutdown()  # type: ignore[no-untyped-call]

    # ---------------------------------------------------------------- reading

    def wait_readable(self, timeout: float | None) -> bool:
        """Wait up to *timeout* seconds for data; True if a frame can be read."""
        sock = self._ws.sock
        if sock is None:
            raise TransportClosed("the connection is closed")
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True
        try:
            readable, _, _ = select.select([sock], [], [], timeout)
        except (OSError, ValueError) as exc:
            raise TransportClosed("the connection is closed") from exc
        return bool(readable)

    def recv(self) -> str | bytes | FrameTooLarge | None:
        """Read one whole data frame: ``str`` for text (bytes if not UTF-8), ``bytes`` for binary.

        Returns ``None`` for control frames (pings are answered by
        ``websocket-client``) and a :class:`FrameTooLarge` for a message over
        the size limit (already thrown away).  Raises :class:`TransportClosed`
        at the end of the connection.
        """
        try:
            opcode, data = self._ws.recv_data(control_frame=True)
        except FrameTooLarge as exc:
            return exc
        except (websocket.WebSocketException, OSError, AttributeError, ValueError) as exc:
            raise TransportClosed(f"connection lost ({type(exc).__name__})") from exc
        if opcode == _OP_TEXT:
            try:
                text: str = data.decode("utf-8")
            except UnicodeDecodeError:
                return bytes(data)
            return text
        if opcode == _OP_BINARY:
            return bytes(data)
        if opcode == _OP_CLOSE:
            raise TransportClosed("the server closed the connection")
        return None

    # ---------------------------------------------------------------- writing

    def send_frames(self, frames: list[str]) -> None:
        """Write *frames* as masked text frames with one ``sendall``.

        Raises :class:`TransportClosed` when the connection is gone.
        """
        create = websocket.ABNF.create_frame
        if len(frames) == 1:
            data = create(frames[0], _OP_TEXT).format()
        else:
            data = b"".join([create(f, _OP_TEXT).format() for f in frames])
        sock = self._ws.sock
        try:
            if sock is None:
                raise OSError("no socket")
            with self._ws.lock:
                sock.sendall(data)
        except OSError as exc:
            raise TransportClosed(f"connection lost while sending ({type(exc).__name__})") from exc
