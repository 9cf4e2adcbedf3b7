"""Opening the socket under a connection: TCP, an HTTP proxy tunnel, TLS; interruptible.

:class:`Dialer` makes the connection that ``websocket-client`` then upgrades.
Doing it here rather than in ``websocket-client`` is what keeps ``close()``
prompt: ``websocket-client`` only exposes its socket once TCP, the proxy
tunnel and TLS are all done, so nothing could interrupt a connect to a host
that does not answer.  Here the TCP connect is non-blocking and polled in
short slices that notice :meth:`Dialer.abort`, and every later blocking step
runs on a socket that ``abort()`` can shut down, which wakes it at once.

Name resolution (``getaddrinfo``) cannot be interrupted; it is bounded by the
system resolver's own timeout.  Thread-safety: one thread dials, any thread
may call :meth:`Dialer.abort`.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import os
import select
import socket
import ssl
import threading
import time
import urllib.request
from typing import Any
from urllib.parse import unquote, urlsplit

__all__ = ["DialAborted", "Dialer", "ProxyError", "parse_proxy", "proxy_from_environment"]

_SLICE = 0.05  # seconds between checks for abort() while a TCP connect is pending

Proxy = tuple[str, int, tuple[str, str] | None]  # host, port, (user, password)


class DialAborted(OSError):
    """abort() was called while dialing."""


class ProxyError(OSError):
    """The HTTP proxy refused or broke the CONNECT tunnel."""


def proxy_from_environment(host: str, secure: bool) -> Proxy | None:
    """The proxy the standard environment variables give for *host* (``no_proxy`` honoured)."""
    url = urllib.request.getproxies().get("https" if secure else "http")
    if not url or urllib.request.proxy_bypass(host):
        return None
    return parse_proxy(url, default_port=8080)


def parse_proxy(url: str, *, default_port: int | None = None) -> Proxy | None:
    """``(host, port, (user, password) or None)`` of a ``[scheme://][user:pw@]host:port`` URL.

    ``None`` when it names no host or no port (and there is no *default_port*).
    """
    try:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        port = parts.port or default_port
    except ValueError:  # a port that is not a number
        return None
    if not parts.hostname or not port:
        return None
    auth = (unquote(parts.username), unquote(parts.password or "")) if parts.username else None
    return parts.hostname, port, auth


class Dialer:
    """Dials one connection; :meth:`abort` interrupts it from any other thread."""

    def __init__(self) -> None:
        # Guards _sock: abort() shuts down whatever socket is current.
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._aborted = False

    def abort(self) -> None:
        """Stop the dialing: a pending connect ends within a slice, a blocked step at once."""
        with self._lock:
            self._aborted = True
            sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def dial(
        self,
        host: str,
        port: int,
        *,
        secure: bool,
        timeout: float,
        proxy: Proxy | None = None,
        sslopt: dict[str, Any] | None = None,
    ) -> socket.socket:
        """Return a connected socket to *host*:*port* (TLS-wrapped if *secure*), or raise.

        Raises :class:`DialAborted` after :meth:`abort`, :class:`ProxyError`,
        ``ssl.SSLError`` (``ssl.SSLCertVerificationError`` for a bad
        certificate) or another ``OSError``; ``TimeoutError`` after *timeout*.
        """
        deadline = time.monotonic() + timeout
        target = (proxy[0], proxy[1]) if proxy else (host, port)
        sock = self._connect(target, deadline)
        try:
            if proxy:
                self._tunnel(sock, host, port, proxy[2], deadline)
            if secure:
                sock = self._wrap(sock, host, sslopt or {}, deadline)
            self._check(deadline, sock)
        except BaseException:
            sock.close()
            raise
        return sock

    def _remaining(self, deadline: float) -> float:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("connect timed out")
        return remaining

    def _check(self, deadline: float, sock: socket.socket) -> None:
        if self._aborted:
            raise DialAborted("aborted while connecting")
        sock.settimeout(self._remaining(deadline))

    def _connect(self, address: tuple[str, int], deadline: float) -> socket.socket:
        error: OSError = OSError(f"cannot resolve {address[0]}")
        infos = socket.getaddrinfo(address[0], address[1], type=socket.SOCK_STREAM)
        for family, kind, proto, _, sockaddr in infos:
            sock = socket.socket(family, kind, proto)
            with self._lock:
                if self._aborted:
                    sock.close()
                    raise DialAborted("aborted while connecting")
                self._sock = sock
            try:
                self._connect_one(sock, sockaddr, deadline)
            except DialAborted:
                sock.close()
                raise
            except OSError as exc:
                sock.close()
                error = exc
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            return sock
        raise error

    def _connect_one(self, sock: socket.socket, sockaddr: Any, deadline: float) -> None:
        sock.setblocking(False)
        code = sock.connect_ex(sockaddr)
        if code not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN):
            raise OSError(code, os.strerror(code))
        poller = select.poll()
        poller.register(sock, select.POLLOUT)
        while code != 0:
            if self._aborted:
                raise DialAborted("aborted while connecting")
            remaining = self._remaining(deadline)
            if poller.poll(min(_SLICE, remaining) * 1000):
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    raise OSError(code, os.strerror(code))
                break
        sock.setblocking(True)
        self._check(deadline, sock)

    def _tunnel(
        self,
        sock: socket.socket,
        host: str,
        port: int,
        auth: tuple[str, str] | None,
        deadline: float,
    ) -> None:
        """HTTP CONNECT through the proxy *sock* is connected to."""
        self._check(deadline, sock)
        authority = _authority(host, port)
        lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
        if auth:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode("ascii")
            lines.append(f"Proxy-Authorization: Basic {token}")
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        response = b""
        while b"\r\n\r\n" not in response:  # read byte by byte: leave the rest unread
            if len(response) > 65536:
                raise ProxyError("the proxy's answer is too long")
            byte = sock.recv(1)
            if not byte:
                raise ProxyError("the proxy closed the connection")
            response += byte
        status = response.split(b"\r\n", 1)[0].split(b" ")
        if len(status) < 2 or status[1] != b"200":
            raise ProxyError(f"the proxy refused the tunnel: {b' '.join(status[1:]).decode()!r}")

    def _wrap(
        self, sock: socket.socket, host: str, sslopt: dict[str, Any], deadline: float
    ) -> socket.socket:
        """Wrap *sock* in TLS as *sslopt* says (websocket-client's option names)."""
        context = sslopt.get("context")
        if context is None:
            cafile = sslopt.get("ca_certs") or _env_ca_bundle()
            context = ssl.create_default_context(cafile=cafile)
            if sslopt.get("cert_reqs") == ssl.CERT_NONE:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
        self._check(deadline, sock)
        # wrap_socket() takes the file descriptor over from *sock*: register the TLS
        # socket before the handshake, so that abort() can shut the handshake down.
        tls = context.wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)
        with self._lock:
            self._sock = tls
            aborted = self._aborted
        try:
            if aborted:
                raise DialAborted("aborted while connecting")
            tls.do_handshake()
            if self._aborted:
                raise DialAborted("aborted while connecting")
        except BaseException:
            tls.close()
            raise
        return tls


def _authority(host: str, port: int) -> str:
    """``host:port`` for a request line, an IPv6 literal in brackets (RFC 9110, 7.2)."""
    # urlsplit() strips the brackets from an IPv6 host; without them the proxy cannot tell
    # the address from the port.
    if ":" in host and not host.startswith("["):
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def _env_ca_bundle() -> str | None:
    """websocket-client's WEBSOCKET_CLIENT_CA_BUNDLE, honoured as it honours it."""
    path = os.environ.get("WEBSOCKET_CLIENT_CA_BUNDLE")
    return path if path and os.path.isfile(path) else None
