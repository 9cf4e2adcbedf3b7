"""Opening the socket under a connection: TCP, a proxy tunnel, TLS; interruptible.

:class:`Dialer` makes the connection that ``websocket-client`` then upgrades.
Doing it here rather than in ``websocket-client`` is what keeps ``close()``
prompt: ``websocket-client`` only exposes its socket once TCP, the proxy
tunnel and TLS are all done, so nothing could interrupt a connect to a host
that does not answer.  Here the TCP connect is non-blocking and polled in
short slices that notice :meth:`Dialer.abort`, and every later blocking step
runs on a socket that ``abort()`` can shut down, which wakes it at once.

Proxies (HTTP ``CONNECT``, SOCKS4/4a, SOCKS5/5h) speak their protocol through
``python-socks``, over the socket dialed here.  Its public sync API
(``python_socks.sync.Proxy.connect``) opens a socket of its own, which
``abort()`` could not reach (its ``_socket=`` argument was removed in 3.0), so
this module drives the library's protocol connectors (the layer under that
API) with a stream over our socket: hence ``python-socks>=3.0,<4``.

Name resolution (``getaddrinfo``) cannot be interrupted; it is bounded by the
system resolver's own timeout.  Thread-safety: one thread dials, any thread
may call :meth:`Dialer.abort`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import ssl
import threading
import time
import urllib.request
from typing import Any, NamedTuple
from urllib.parse import unquote, urlsplit

from python_socks import ProxyType
from python_socks._abc import SyncSocketStream
from python_socks._connectors.factory_sync import create_connector
from python_socks._protocols.errors import ReplyError
from python_socks.sync._resolver import SyncResolver

from .exceptions import InvalidArgumentError

__all__ = [
    "PROXY_SCHEMES",
    "DialAborted",
    "Dialer",
    "Proxy",
    "ProxyError",
    "parse_proxy",
    "proxy_from_environment",
    "redact_proxy_url",
]

_SLICE = 0.05  # seconds between checks for abort() while a TCP connect is pending
_MAX_HEAD = 65536  # the longest answer to CONNECT read before giving up

#: Proxy URL schemes: the protocol each one speaks, and whether the proxy resolves the
#: destination's name (``socks4a``, ``socks5h``) or this client does (as curl does).
_SCHEMES: dict[str, tuple[ProxyType, bool | None]] = {
    "http": (ProxyType.HTTP, None),
    "socks4": (ProxyType.SOCKS4, False),
    "socks4a": (ProxyType.SOCKS4, True),
    "socks5": (ProxyType.SOCKS5, False),
    "socks5h": (ProxyType.SOCKS5, True),
}
PROXY_SCHEMES = tuple(_SCHEMES)
_DEFAULT_PORTS = {"http": 8080}  # from the environment only; SOCKS proxies default to 1080


class Proxy(NamedTuple):
    """A proxy to tunnel through: ``host``, ``port``, ``(user, password)`` or None, scheme.

    Its ``repr`` and ``str`` never show the credentials.
    """

    host: str
    port: int
    auth: tuple[str, str] | None = None
    scheme: str = "http"

    def __str__(self) -> str:
        return f"{self.scheme}://{_authority(self.host, self.port)}"

    def __repr__(self) -> str:
        auth = "None" if self.auth is None else "('***', '***')"
        return f"Proxy({self.host!r}, {self.port}, {auth}, {self.scheme!r})"


class DialAborted(OSError):
    """abort() was called while dialing."""


class ProxyError(OSError):
    """The proxy could not be reached, or refused or broke the tunnel.

    The message names the proxy (never its credentials) and what it answered;
    :attr:`status` is the HTTP status or the SOCKS reply code, when there is one.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def redact_proxy_url(url: str) -> str:
    """*url* with everything before the host's ``@`` (the credentials) replaced by ``***``."""
    scheme, sep, rest = url.partition("://") if "://" in url else ("", "", url)
    if "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    return f"{scheme}{sep}{rest}"


def parse_proxy(url: str, *, name: str = "proxy", default_port: bool = False) -> Proxy:
    """The :class:`Proxy` a ``scheme://[user:password@]host:port`` URL names.

    Raises :class:`~avatar_im.exceptions.InvalidArgumentError` (its message
    never shows the credentials) for another scheme, no host, no port (unless
    *default_port*: then 8080 for HTTP, 1080 for SOCKS) or credentials the
    protocol cannot carry.  *name* is the argument's name in the message.
    """
    shown = redact_proxy_url(url)
    usage = (
        f"{name} must be a URL like http://[user:password@]host:port, with a scheme of "
        f"{', '.join(PROXY_SCHEMES)}; got {shown!r}"
    )
    if "://" not in url:
        raise InvalidArgumentError(usage)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # a port that is not a number, or out of range
        raise InvalidArgumentError(f"{usage} (bad port)") from None
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        if scheme == "https":
            usage += " (TLS to the proxy itself is not supported)"
        raise InvalidArgumentError(usage)
    if not port and default_port:
        port = _DEFAULT_PORTS.get(scheme, 1080)
    if not parts.hostname or not port:
        raise InvalidArgumentError(f"{usage} (no {'host' if not parts.hostname else 'port'})")
    auth = None
    if parts.username is not None:
        auth = (unquote(parts.username), unquote(parts.password or ""))
        problem = _auth_problem(scheme, *auth)
        if problem:
            raise InvalidArgumentError(f"{name} {shown!r}: {problem}")
    return Proxy(parts.hostname, port, auth, scheme)


def _auth_problem(scheme: str, user: str, password: str) -> str | None:
    """Why the protocol of *scheme* cannot carry these credentials, or None."""
    if not user:
        return "the user name is empty"
    if scheme == "http":
        if ":" in user:
            return "a user name for HTTP Basic authentication cannot hold ':'"
        try:
            (user + password).encode("latin-1")
        except UnicodeEncodeError:
            return "HTTP Basic credentials must be Latin-1 text"
        return None
    try:
        raw = (user.encode("ascii"), password.encode("ascii"))
    except UnicodeEncodeError:
        return "SOCKS credentials must be ASCII text"
    if scheme.startswith("socks5") and (len(raw[0]) > 255 or len(raw[1]) > 255):
        return "SOCKS5 credentials are 255 bytes at most"
    if scheme.startswith("socks5") and not password:
        return "SOCKS5 authentication needs a password"
    return None


def proxy_from_environment(host: str, secure: bool) -> Proxy | None:
    """The proxy the environment gives for *host*, or None (``no_proxy`` honoured).

    ``https_proxy`` for ``wss://``, ``http_proxy`` for ``ws://``, else
    ``all_proxy``; as read by ``urllib.request.getproxies()``.  The URL's
    scheme picks the protocol (none: HTTP).  Raises :class:`ProxyError` for a
    URL that names no usable proxy, so that a configured proxy is never
    silently bypassed.
    """
    proxies = urllib.request.getproxies()
    key = "https" if secure else "http"
    if not proxies.get(key):
        key = "all"
    url = proxies.get(key)
    if not url or urllib.request.proxy_bypass(host):
        return None
    if "://" not in url:
        url = f"http://{url}"
    try:
        return parse_proxy(url, name=f"{key}_proxy (from the environment)", default_port=True)
    except InvalidArgumentError as exc:
        raise ProxyError(str(exc)) from None


class _SocketStream(SyncSocketStream):
    """python-socks' view of the socket being dialed: bounded by the deadline, abortable."""

    def __init__(self, dialer: Dialer, sock: socket.socket, deadline: float, proxy: Proxy) -> None:
        self._dialer = dialer
        self._sock = sock
        self._deadline = deadline
        self._proxy = proxy

    def write(self, data: bytes) -> None:
        self._dialer._check(self._deadline, self._sock)
        self._sock.sendall(data)

    def read(self, max_bytes: int = _MAX_HEAD) -> bytes:
        """The whole head of the proxy's HTTP answer (only the CONNECT connector reads so).

        One byte at a time: whatever follows the head belongs to the tunnel and
        stays unread, and a head split over several packets is read whole.
        """
        head = bytearray()
        while not (head.endswith(b"\n\r\n") or head.endswith(b"\n\n")):
            if len(head) >= _MAX_HEAD:
                raise ProxyError(f"the proxy {self._proxy}'s answer is too long")
            head += self._recv(1)
        return bytes(head)

    def read_exactly(self, n: int) -> bytes:
        data = bytearray()
        while len(data) < n:
            data += self._recv(n - len(data))
        return bytes(data)

    def close(self) -> None:
        """Nothing: the dialer closes the socket when the tunnel fails."""

    def _recv(self, size: int) -> bytes:
        self._dialer._check(self._deadline, self._sock)
        data = self._sock.recv(size)
        if not data:
            if self._dialer._aborted:
                raise DialAborted("aborted while connecting")
            raise ProxyError(f"the proxy {self._proxy} closed the connection")
        return data


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

        Through *proxy* when given (a plain ``(host, port, auth)`` tuple is an
        HTTP proxy).  Raises :class:`DialAborted` after :meth:`abort`,
        :class:`ProxyError`, ``ssl.SSLError`` (``ssl.SSLCertVerificationError``
        for a bad certificate) or another ``OSError``; ``TimeoutError`` after
        *timeout*.
        """
        deadline = time.monotonic() + timeout
        if proxy is not None and not isinstance(proxy, Proxy):
            proxy = Proxy(*proxy)
        if proxy is None:
            sock = self._connect((host, port), deadline)
        else:
            sock = self._connect_proxy(proxy, deadline)
        try:
            if proxy is not None:
                self._tunnel(sock, host, port, proxy, deadline)
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

    def _connect_proxy(self, proxy: Proxy, deadline: float) -> socket.socket:
        """The TCP connection to *proxy*; a failure is a :class:`ProxyError` naming it."""
        try:
            return self._connect((proxy.host, proxy.port), deadline)
        except DialAborted:
            raise
        except TimeoutError:
            raise ProxyError(f"the proxy {proxy} did not accept the connection in time") from None
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise ProxyError(f"cannot connect to the proxy {proxy}: {reason}") from None

    def _tunnel(
        self, sock: socket.socket, host: str, port: int, proxy: Proxy, deadline: float
    ) -> None:
        """Open the tunnel to *host*:*port* through the proxy *sock* is connected to.

        Any 2xx answers a CONNECT with an open tunnel (RFC 9110, 9.3.6), not
        only 200.  Every failure becomes :class:`ProxyError` (or
        :class:`DialAborted`): no python-socks exception leaves this method.
        """
        kind, remote_dns = _SCHEMES[proxy.scheme]
        user, password = proxy.auth or (None, None)
        connector = create_connector(
            proxy_type=kind,
            username=user,
            password=password,
            rdns=remote_dns,
            resolver=SyncResolver(),
        )
        try:
            connector.connect(
                stream=_SocketStream(self, sock, deadline, proxy), host=host, port=port
            )
        except (DialAborted, ProxyError):
            raise
        except ReplyError as exc:
            status = exc.error_code
            if kind is ProxyType.HTTP:
                if status is not None and 200 <= status < 300:
                    return
                answer = f"HTTP {_printable(str(exc))}"
            else:
                answer = _printable(str(exc))
                if status is not None:
                    answer += f" (reply code {int(status):#04x})"
            raise ProxyError(
                f"the proxy {proxy} refused the tunnel: {answer}",
                status=None if status is None else int(status),
            ) from None
        except TimeoutError:
            raise ProxyError(f"the proxy {proxy} did not answer in time") from None
        except OSError as exc:
            if self._aborted:
                raise DialAborted("aborted while connecting") from None
            reason = exc.strerror or type(exc).__name__
            raise ProxyError(f"the connection to the proxy {proxy} failed: {reason}") from None
        except Exception as exc:  # a request python-socks could not build, say
            raise ProxyError(
                f"cannot open a tunnel through the proxy {proxy}: {type(exc).__name__}"
            ) from None

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
    """``host:port``, an IPv6 literal in brackets (RFC 9110, 7.2)."""
    if ":" in host and not host.startswith("["):
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def _printable(text: str, limit: int = 200) -> str:
    """*text* from a proxy, safe to log: printable characters only, at most *limit*."""
    cleaned = "".join(c if c.isprintable() else "?" for c in text.strip())
    return cleaned if len(cleaned) <= limit else cleaned[:limit] + "..."


def _env_ca_bundle() -> str | None:
    """websocket-client's WEBSOCKET_CLIENT_CA_BUNDLE, honoured as it honours it."""
    path = os.environ.get("WEBSOCKET_CLIENT_CA_BUNDLE")
    return path if path and os.path.isfile(path) else None
