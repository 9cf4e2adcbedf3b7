"""One WebSocket connection: opened by ``websocket-client``, then driven by :mod:`.frames`.

:class:`Transport` lets ``websocket-client`` (the only module that imports it)
make the connection: TCP, HTTP proxies, TLS and the upgrade handshake.  After
that it reads and writes frames itself with :mod:`avatar_im.frames`: one
``recv`` of up to 64 KiB yields every whole message in it, and one
``sendall`` carries a batch of masked frames.  It converts the library's and
the socket layer's errors into this library's:
:class:`~avatar_im.exceptions.AuthenticationError`,
:class:`~avatar_im.exceptions.CertificateError` and
:class:`~avatar_im.exceptions.HandshakeError` at the handshake,
:class:`TransportClosed` once the connection is gone.

Threads: any thread may call :meth:`Transport.abort` (it only shuts the socket
down, which wakes a reader blocked in ``poll``/``recv`` and a writer blocked in
``sendall``); one thread reads; writers serialise on ``websocket-client``'s
send lock (``ws.lock``), which the reader takes too, briefly, to answer pings.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import ssl
import time
from typing import Any
from urllib.parse import urlsplit

import websocket

from .dial import Dialer, Proxy, proxy_from_environment
from .exceptions import (
    AuthenticationError,
    CertificateError,
    ConnectionFailedError,
    HandshakeError,
)
from .frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameReader,
    FramingError,
    Oversized,
    encode_frames,
)
from .urls import redact_url

__all__ = ["FrameTooLarge", "Transport", "TransportClosed"]

logger = logging.getLogger(__name__)


class TransportClosed(ConnectionFailedError):
    """The connection is gone (closed by either side, reset, or aborted)."""


class FrameTooLarge:
    """An inbound message exceeded the size limit; it was read and thrown away."""

    def __init__(self, size: int, limit: int | None) -> None:
        self.size = size
        self.limit = limit

    def __str__(self) -> str:
        return f"inbound message of {self.size} bytes exceeds the {self.limit}-byte limit"


_RECV_SIZE = 65536


class Transport:
    """A WebSocket connection: open it, read frames, write batches, abort it."""

    def __init__(
        self, *, sslopt: dict[str, Any] | None = None, max_message_size: int | None = None
    ) -> None:
        self._ws = websocket.WebSocket(enable_multithread=True)
        self._sslopt = sslopt
        self._dialer = Dialer()
        self._reader = FrameReader(max_message_size)
        self._limit = max_message_size
        self._poll: select.poll | None = None
        self._aborted = False
        self._peer_closed = False  # the server's close frame was read

    # ------------------------------------------------------------ lifecycle

    def open(
        self,
        url: str,
        *,
        timeout: float,
        io_timeout: float | None = None,
        proxy: Proxy | None = None,
        use_environment_proxy: bool = True,
    ) -> None:
        """Connect and finish the handshake within *timeout* seconds, or raise.

        The socket is dialed here (see :mod:`.dial`), so :meth:`abort` can stop
        every step; ``websocket-client`` only performs the HTTP upgrade on it.
        Without *proxy*, the standard proxy environment variables apply.
        Afterwards reads and writes block for at most *io_timeout* seconds.
        """
        shown = redact_url(url)
        parts = urlsplit(url)
        secure = parts.scheme == "wss"
        host = parts.hostname or ""
        try:
            port = parts.port or (443 if secure else 80)
            if proxy is None and use_environment_proxy:
                proxy = proxy_from_environment(host, secure)
            deadline = time.monotonic() + timeout
            sock = self._dialer.dial(
                host, port, secure=secure, timeout=timeout, proxy=proxy, sslopt=self._sslopt
            )
            self._ws.connect(  # type: ignore[no-untyped-call]
                url,
                socket=sock,
                timeout=max(0.001, deadline - time.monotonic()),
                suppress_origin=True,
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
            # The message of these errors can hold the URL: do not repeat it.
            raise ConnectionFailedError(f"{shown}: cannot connect ({type(exc).__name__})") from None
        if self._aborted:
            self._ws.shutdown()  # type: ignore[no-untyped-call]
            raise TransportClosed("aborted while connecting")
        self._ws.settimeout(io_timeout)

    def abort(self) -> None:
        """Shut the socket down now, from any thread; wakes blocked readers and writers.

        While connecting, it stops the dialing (see :class:`~.dial.Dialer`).
        """
        self._aborted = True
        self._dialer.abort()
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
            sock.sendall(encode_frames([b"\x03\xe8"], os.urandom(4), OP_CLOSE))
        except OSError:
            pass
        finally:
            lock.release()

    def close(self) -> None:
        """Shut the socket down and release it."""
        self.abort()
        self._ws.shutdown()  # type: ignore[no-untyped-call]

    # ---------------------------------------------------------------- reading

    def read(self, timeout: float | None) -> list[str | bytes | FrameTooLarge]:
        """Wait up to *timeout* seconds for data; return every whole message it completed.

        Text comes as ``str`` (``bytes`` if it is not UTF-8), binary as
        ``bytes``, a message over the size limit as :class:`FrameTooLarge`
        (already thrown away).  Pings are answered here.  May return an empty
        list (nothing arrived, or only part of a frame).  Raises
        :class:`TransportClosed` when the connection ends.
        """
        sock = self._ws.sock
        if sock is None or self._peer_closed:
            raise TransportClosed("the connection is closed")
        try:
            if not (isinstance(sock, ssl.SSLSocket) and sock.pending()):
                if self._poll is None:
                    self._poll = select.poll()
                    self._poll.register(sock, select.POLLIN)
                if not self._poll.poll(None if timeout is None else timeout * 1000):
                    return []
            data = sock.recv(_RECV_SIZE)
        except (OSError, ValueError) as exc:
            raise TransportClosed(f"connection lost ({type(exc).__name__})") from exc
        if not data:
            raise TransportClosed("the server closed the connection")
        try:
            messages = self._reader.feed(data)
        except FramingError as exc:
            raise TransportClosed(f"framing error: {exc}") from exc
        out: list[str | bytes | FrameTooLarge] = []
        for message in messages:
            if isinstance(message, Oversized):
                out.append(FrameTooLarge(message.size, self._limit))
            elif message.opcode == OP_TEXT:
                try:
                    out.append(message.payload.decode("utf-8"))
                except UnicodeDecodeError:
                    out.append(message.payload)
            elif message.opcode == OP_BINARY:
                out.append(message.payload)
            elif message.opcode == OP_PING:
                self._control(OP_PONG, message.payload)
            elif message.opcode == OP_CLOSE:
                # Messages that came before the close (a "2" reason, say) still count:
                # hand them out now and report the end on the next read.
                self._control(OP_CLOSE, message.payload[:2])
                self._peer_closed = True
                if not out:
                    raise TransportClosed("the server closed the connection")
                break
        return out

    # ---------------------------------------------------------------- writing

    def send_frames(self, frames: list[str]) -> None:
        """Write *frames* as masked text frames with one ``sendall``.

        Raises :class:`TransportClosed` when the connection is gone.
        """
        payloads = [f.encode("utf-8", "surrogatepass") for f in frames]
        self._write(encode_frames(payloads, os.urandom(4 * len(payloads))))

    def _write(self, data: bytes, *, lock_timeout: float = -1) -> None:
        sock = self._ws.sock
        lock = self._ws.lock
        try:
            if sock is None:
                raise OSError("no socket")
            if not lock.acquire(timeout=lock_timeout):
                return  # a control answer that would wait behind a stuck writer: skip it
            try:
                sock.sendall(data)
            finally:
                lock.release()
        except OSError as exc:
            raise TransportClosed(f"connection lost while sending ({type(exc).__name__})") from exc

    def _control(self, opcode: int, payload: bytes) -> None:
        """Answer a ping or a close; never waits long behind another writer."""
        with contextlib.suppress(TransportClosed):
            self._write(encode_frames([payload], os.urandom(4), opcode), lock_timeout=1.0)
