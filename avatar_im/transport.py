"""One WebSocket connection: opened by ``websocket-client``, then driven by :mod:`.frames`.

:class:`Transport` lets ``websocket-client`` (the only module that imports it)
perform the HTTP upgrade on a socket that :mod:`.dial` connected (TCP, proxy
tunnel, TLS).  After that the socket is non-blocking and this module reads and
writes frames itself with :mod:`avatar_im.frames`:

* :meth:`Transport.write` appends a batch of masked frames to the outgoing
  buffer and sends what the socket takes *now*, without waiting.  Whatever
  the socket does not take stays buffered and is sent by the reader thread
  when the socket becomes writable, so a writer never blocks on a peer that
  stops reading, and the reader keeps reading (acks, pongs) while a backlog
  drains.  :attr:`Transport.buffered` tells the caller how much is waiting,
  so that it can stop feeding frames above a high-water mark.
* :meth:`Transport.read` waits (``poll``) for data, for writability while
  something is buffered, or for a writer's wake-up, and returns every whole
  message received.

RFC 6455 rules kept here: a close is sent at most once and no data frame
after it; a peer's close is answered with its own (valid) code, never with
1005; a framing violation fails the connection with 1002, invalid UTF-8 in a
text message with 1007, and the valid messages read before the bad frame are
still handed out.  Redirects at the upgrade are not followed (see
:meth:`Transport.open`).

It converts the library's and the socket layer's errors into this library's:
:class:`~avatar_im.exceptions.AuthenticationError`,
:class:`~avatar_im.exceptions.CertificateError` and
:class:`~avatar_im.exceptions.HandshakeError` at the handshake,
:class:`TransportClosed` once the connection is gone.

Threads: one thread (the connection's reader) opens, reads and finally calls
:meth:`Transport.close`; any thread may :meth:`~Transport.write`,
:meth:`~Transport.send_close` and :meth:`~Transport.abort` (which only shuts
the socket down, waking a blocked ``poll``).  ``_wlock`` serialises the
outgoing buffer and the non-blocking sends; it is never held across a wait.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import select
import socket
import ssl
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import websocket

from .dial import Dialer, Proxy, ProxyError, proxy_from_environment
from .exceptions import (
    AuthenticationError,
    CertificateError,
    ConnectionFailedError,
    HandshakeError,
)
from .frames import (
    CLOSE_INVALID_DATA,
    CLOSE_NORMAL,
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameReader,
    FramingError,
    Oversized,
    close_payload,
    encode_frames,
    parse_close,
)
from .urls import redact_url

__all__ = ["FrameTooLarge", "Transport", "TransportClosed"]

logger = logging.getLogger(__name__)

#: How much of a frame the DEBUG log shows (``avatar-im -vv``).
FRAME_LOG_CHARS = 1000


def _abridged(frame: str | bytes) -> str:
    """A frame for the DEBUG log: its first FRAME_LOG_CHARS characters, and its length."""
    text = frame if isinstance(frame, str) else f"<{len(frame)} binary bytes>"
    if len(text) <= FRAME_LOG_CHARS:
        return text
    return f"{text[:FRAME_LOG_CHARS]}... ({len(text)} chars)"


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
# The most one non-blocking send offers; a retry after "would block" offers the same bytes
# again (TLS requires it), so this must stay constant.
_SEND_SIZE = 262144
_WOULD_BLOCK = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)
_REDIRECTS = (301, 302, 303, 307, 308)
# Unsent bytes above which a ping is not answered (see _control).
_CONTROL_CAP = 65536
# Random bytes drawn at once for mask keys (4 per frame): one getrandom per 1,024 frames.
_KEY_BLOCK = 4096


class _MaskKeys:
    """Mask keys from ``os.urandom``, drawn in blocks; any thread may :meth:`take`.

    Every key byte is handed out once.  Each transport has its own, and
    :meth:`forget` empties it, so that a forked child never reuses its parent's.
    """

    def __init__(self, block: int = _KEY_BLOCK) -> None:
        self._block = block
        self._lock = threading.Lock()
        self._pool = b""
        self._pos = 0

    def take(self, n: int) -> bytes:
        """*n* fresh random bytes."""
        with self._lock:
            pos = self._pos
            end = pos + n
            if end > len(self._pool):
                self._pool = os.urandom(max(self._block, n))
                pos, end = 0, n
            self._pos = end
            return self._pool[pos:end]

    def forget(self) -> None:
        """Drop the bytes not handed out yet (in a forked child: a fresh lock, never waited on)."""
        self._lock = threading.Lock()
        self._pool = b""
        self._pos = 0


class Transport:
    """A WebSocket connection: open it, read frames, write batches, close or abort it."""

    def __init__(
        self, *, sslopt: dict[str, Any] | None = None, max_message_size: int | None = None
    ) -> None:
        self._ws = websocket.WebSocket()  # the upgrade only; then its socket is ours
        self._sslopt = sslopt
        self._dialer = Dialer()
        self._reader = FrameReader(max_message_size)
        self._keys = _MaskKeys()
        self._limit = max_message_size
        self._sock: socket.socket | None = None
        self._poll: select.poll | None = None
        self._polled_mask = 0
        # A pipe a writer pokes when it leaves bytes buffered, so that the reader's poll
        # starts watching for writability.  Made by open(), closed by close().
        self._wake_r = -1
        self._wake_w = -1
        self._aborted = False
        self._ended: str | None = None  # why reads are over (peer's close, a violation)

        # Guards the outgoing buffer below; held for buffer changes and one non-blocking
        # send, never across a wait.
        self._wlock = threading.Lock()
        self._out: collections.deque[bytes] = collections.deque()
        self._out_offset = 0  # bytes of _out[0] already sent
        self._out_size = 0  # bytes buffered, not yet sent
        self._want_write = False  # the reader must watch for writability
        self._close_sent = False
        # Bytes handed to write() and bytes the socket took, since open(): a frame whose
        # end is at or below `sent` has left this process.
        self.queued_total = 0
        self.sent_total = 0

    # ------------------------------------------------------------ lifecycle

    def open(
        self,
        url: str,
        *,
        timeout: float,
        proxy: Proxy | None = None,
        use_environment_proxy: bool = True,
    ) -> None:
        """Connect and finish the handshake within *timeout* seconds, or raise.

        The socket is dialed here (see :mod:`.dial`), so :meth:`abort` can stop
        every step; ``websocket-client`` only performs the HTTP upgrade on it.
        Without *proxy*, the standard proxy environment variables apply; a
        proxy's failure is a :class:`ConnectionFailedError` naming it.  A
        redirect is refused with :class:`HandshakeError`: following it would
        bypass the dialer (no proxy, no TLS options, no prompt abort) and
        could carry the token to another host.
        """
        shown = redact_url(url)
        parts = urlsplit(url)
        secure = parts.scheme == "wss"
        try:
            host = parts.hostname or ""
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
                redirect_limit=0,
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
        except ProxyError as exc:
            # It names the proxy (no credentials) and its answer.  Not a HandshakeError:
            # a proxy's refusal is retried like any failed connect.
            raise ConnectionFailedError(f"{shown}: {exc}") from None
        except (websocket.WebSocketException, OSError, ValueError) as exc:
            self._refuse_redirect(shown)
            # The message of these errors can hold the URL: do not repeat it.
            raise ConnectionFailedError(f"{shown}: cannot connect ({type(exc).__name__})") from None
        self._refuse_redirect(shown)
        upgraded: socket.socket | None = self._ws.sock
        if self._aborted or upgraded is None:
            self._ws.shutdown()  # type: ignore[no-untyped-call]
            raise TransportClosed("aborted while connecting")
        self._adopt(upgraded)

    def _refuse_redirect(self, shown: str) -> None:
        """Raise :class:`HandshakeError` if the server answered the upgrade with a redirect."""
        response = getattr(self._ws, "handshake_response", None)
        status = getattr(response, "status", None)
        if status in _REDIRECTS:
            self._ws.shutdown()  # type: ignore[no-untyped-call]
            location = (getattr(response, "headers", None) or {}).get("location") or ""
            raise HandshakeError(
                f"{shown}: the server redirects (HTTP {status}) to {redact_url(location)!r}; "
                "redirects are not followed: connect to that URL",
                status=status,
            )

    def _adopt(self, sock: socket.socket) -> None:
        """Take over the upgraded *sock*: non-blocking from now on, with the wake-up pipe."""
        sock.setblocking(False)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._sock = sock

    def abort(self) -> None:
        """Shut the socket down now, from any thread; wakes a blocked reader.

        While connecting, it stops the dialing (see :class:`~.dial.Dialer`).
        """
        self._aborted = True
        self._dialer.abort()
        sock = self._sock or self._ws.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def send_close(self, code: int = CLOSE_NORMAL, *, timeout: float = 0.2) -> None:
        """Send a close frame once, waiting up to *timeout* seconds for it to leave.

        Frames buffered before it go first; no data frame is sent after it.
        The server answers with its own close, which ends the reader's reads.
        """
        self._queue_close(close_payload(code))
        deadline = time.monotonic() + timeout
        sock = self._sock
        while sock is not None and not self._aborted:
            with self._wlock:
                if not self._out_size:
                    return
                self._send_buffered()
                if not self._out_size:
                    return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            poller = select.poll()
            try:
                poller.register(sock, select.POLLOUT)
                poller.poll(min(remaining, 0.05) * 1000)
            except (OSError, ValueError):
                return

    def close(self) -> None:
        """Shut the socket down and release it; called by the reader thread when it is done."""
        self.abort()
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
        self._ws.sock = None
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._wake_r = self._wake_w = -1

    def forget(self) -> None:
        """Release the descriptors without touching the connection (in a forked child).

        The parent process still uses the socket: no shutdown, no close frame;
        closing our copies of the descriptors leaves the parent's open.
        """
        for sock in (self._sock, self._ws.sock):
            if sock is not None:
                with contextlib.suppress(OSError):
                    os.close(sock.detach())
        self._sock = self._ws.sock = None
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._wake_r = self._wake_w = -1
        self._keys.forget()
        self._aborted = True

    # ---------------------------------------------------------------- reading

    def read(self, timeout: float | None) -> list[str | bytes | FrameTooLarge]:
        """Wait up to *timeout* seconds for data; return every whole message it completed.

        Meanwhile it sends buffered bytes as the socket takes them.  Text comes
        as ``str``, binary as ``bytes``, a message over the size limit as
        :class:`FrameTooLarge` (already thrown away).  Pings are answered here.
        May return an empty list (nothing arrived, only part of a frame, or only
        a write happened).  Raises :class:`TransportClosed` when the connection
        ends.
        """
        sock = self._sock
        if sock is None or self._ended is not None:
            raise TransportClosed(self._ended or "the connection is closed")
        try:
            if not (isinstance(sock, ssl.SSLSocket) and sock.pending()):
                poller = self._poller(sock)
                ready = poller.poll(None if timeout is None else timeout * 1000)
                readable = False
                for fd, mask in ready:
                    if fd == self._wake_r:
                        with contextlib.suppress(OSError):
                            os.read(self._wake_r, 512)
                    elif mask & select.POLLOUT and not mask & (select.POLLHUP | select.POLLERR):
                        with self._wlock:
                            self._send_buffered()
                    if fd != self._wake_r and mask & ~select.POLLOUT:
                        readable = True
                if not readable:
                    return []
            data = sock.recv(_RECV_SIZE)
        except _WOULD_BLOCK:
            return []
        except (OSError, ValueError) as exc:
            raise TransportClosed(f"connection lost ({type(exc).__name__})") from exc
        if not data:
            raise TransportClosed("the server closed the connection")
        try:
            messages = self._reader.feed(data)
            failure: FramingError | None = None
        except FramingError as exc:
            messages, failure = exc.messages, exc
        out: list[str | bytes | FrameTooLarge] = []
        for message in messages:
            if isinstance(message, Oversized):
                out.append(FrameTooLarge(message.size, self._limit))
            elif message.opcode == OP_TEXT:
                try:
                    out.append(message.payload.decode("utf-8"))
                except UnicodeDecodeError:
                    failure = FramingError("invalid UTF-8 in a text message", code=1007)
                    break
            elif message.opcode == OP_BINARY:
                out.append(message.payload)
            elif message.opcode == OP_PING:
                self._control(OP_PONG, message.payload)
            elif message.opcode == OP_CLOSE:
                # Messages that came before the close (a "2" reason, say) still count:
                # hand them out now and report the end on the next read.
                self._peer_close(message.payload)
                break
        if failure is not None:
            code = failure.code if failure.code == CLOSE_INVALID_DATA else 1002
            logger.debug("failing the connection with %d: %s", code, failure)
            self._queue_close(close_payload(code))
            self._ended = f"framing error: {failure}"
        if self._ended is not None and not out:
            raise TransportClosed(self._ended)
        if out and logger.isEnabledFor(logging.DEBUG):
            for item in out:
                if not isinstance(item, FrameTooLarge):
                    logger.debug("received frame: %s", _abridged(item))
        return out

    def _poller(self, sock: socket.socket) -> select.poll:
        """The poll object, watching for writability only while bytes are buffered."""
        mask = select.POLLIN | (select.POLLOUT if self._want_write else 0)
        if self._poll is None:
            self._poll = select.poll()
            self._poll.register(sock, mask)
            self._poll.register(self._wake_r, select.POLLIN)
        elif mask != self._polled_mask:
            self._poll.modify(sock, mask)
        self._polled_mask = mask
        return self._poll

    def _peer_close(self, payload: bytes) -> None:
        """The server's close frame: answer it (once, with a valid code) and end reading."""
        try:
            code, _ = parse_close(payload)
        except FramingError as exc:
            self._queue_close(close_payload(exc.code))
            self._ended = f"bad close frame: {exc}"
            return
        self._queue_close(close_payload(code))
        self._ended = "the server closed the connection"

    # ---------------------------------------------------------------- writing

    @property
    def buffered(self) -> int:
        """Bytes written but not yet taken by the socket."""
        return self._out_size

    def write(self, frames: list[str]) -> int:
        """Queue *frames* as masked text frames and send what the socket takes now.

        Never waits.  Returns the position (in :attr:`queued_total`) where the
        frames end: they have all left once :attr:`sent_total` reaches it.
        Raises :class:`TransportClosed` when the connection is gone or closing.
        """
        if logger.isEnabledFor(logging.DEBUG):
            for frame in frames:
                logger.debug("sent frame: %s", _abridged(frame))
        payloads = [f.encode("utf-8", "surrogatepass") for f in frames]
        data = encode_frames(payloads, self._keys.take(4 * len(payloads)))
        with self._wlock:
            if self._close_sent or self._sock is None:
                raise TransportClosed("the connection is closing")
            self._buffer(data)
            return self.queued_total

    def _control(self, opcode: int, payload: bytes) -> None:
        """Answer a ping; dropped once our close went out, or while much is still unsent.

        RFC 6455 (5.5.3) lets an endpoint answer only the latest of several
        pings; a peer that floods pings and never reads thus cannot make the
        buffer grow without bound.
        """
        with self._wlock:
            if self._close_sent or self._sock is None or self._out_size > _CONTROL_CAP:
                return
            self._buffer(encode_frames([payload], os.urandom(4), opcode))

    def _queue_close(self, payload: bytes) -> None:
        with self._wlock:
            if self._close_sent or self._sock is None:
                return
            self._close_sent = True
            self._buffer(encode_frames([payload], os.urandom(4), OP_CLOSE))

    def _buffer(self, data: bytes) -> None:
        """Append *data* and send what the socket takes; needs ``_wlock``."""
        assert self._wlock.locked()
        self._out.append(data)
        self._out_size += len(data)
        self.queued_total += len(data)
        self._send_buffered()
        if self._out_size and not self._want_write:
            self._want_write = True
            with contextlib.suppress(OSError):  # a full pipe already wakes the reader
                os.write(self._wake_w, b"w")

    def _send_buffered(self) -> None:
        """Send buffered bytes until the socket would block; needs ``_wlock``."""
        assert self._wlock.locked()
        sock = self._sock
        out = self._out
        while out and sock is not None:
            head = out[0]
            offset = self._out_offset
            try:
                if offset == 0 and len(head) <= _SEND_SIZE:
                    sent = sock.send(head)
                else:
                    with memoryview(head) as view:
                        sent = sock.send(view[offset : offset + _SEND_SIZE])
            except _WOULD_BLOCK:
                return
            except OSError as exc:
                # The reader sees the same failure on its next read and reports the loss.
                logger.debug("send failed: %s", exc)
                self._drop_buffer()
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                return
            self._out_size -= sent
            self.sent_total += sent
            offset += sent
            if offset >= len(head):
                out.popleft()
                offset = 0
            self._out_offset = offset
        if not out:
            self._want_write = False

    def _drop_buffer(self) -> None:
        self._out.clear()
        self._out_offset = self._out_size = 0
        self._want_write = False
