"""A fake of the avatar OpenAPI on loopback, that Alibaba Cloud's official SDK talks to unchanged.

:class:`FakeOpenAPI` is a real HTTP server (``http.server.ThreadingHTTPServer``)
for tests and local development: point :class:`~avatar_im.aliyun.AvatarOpenAPI`
(or any program on the SDK) at it with ``AliyunConfig(endpoint="127.0.0.1:PORT",
protocol="http", ...)``, or take :meth:`FakeOpenAPI.config`.  With a
:class:`~avatar_im.server.ReferenceServer` as *im_server*, the IM token of each
instance it starts is accepted there, stopping or expiring the instance
revokes it, and ``SendCommand`` ``INTERRUPT`` interrupts the IM session of the
same id (:meth:`ReferenceServer.interrupt`): a whole start, connect,
interrupt, renew, stop cycle runs offline.

It needs the ``aliyun`` extra (``pip install 'avatar-im[aliyun]'``): the
signature is checked with the SDK's own signer, imported when the fake is made.

What is confirmed and what is modelled (see ``CLOUD-FACTS.md``):

* Confirmed (seen from the SDK, and in its response models): the request
  shape (``POST /``, ``x-acs-action`` and ``x-acs-version`` headers,
  parameters in the query string, nested ones as JSON), the
  ``ACS3-HMAC-SHA256`` signature (checked here by recomputing it with
  ``alibabacloud_openapi_util``'s ``get_authorization`` over the received
  request and the configured secret), the answer bodies' fields (``RequestId``,
  ``Code``, ``Message``, ``Success``, ``Data`` and the ``Data`` fields of each
  action) and the error body the SDK parses (``Code``, ``Message``,
  ``RequestId`` with an HTTP status of 400 or more), and which value is the IM
  token (``Data.Token``, not ``Data.Channel.Token``).
* Modelled (the shape is the SDK's, the behaviour our guess): the HTTP status
  and code of each refusal (``SignatureDoesNotMatch`` 400,
  ``InvalidAccessKeyId.NotFound`` 404, ``IncompleteSignature`` 400,
  ``SignatureNonceUsed`` 400, ``InvalidTimeStamp.Expired`` 400,
  ``InvalidAction.NotFound`` 404, ``MissingParameter``/``InvalidParameter``
  400); throttling (:meth:`FakeOpenAPI.throttle`: ``Throttling.User`` with HTTP
  400 by default, the status Alibaba's gateway documents for it in other
  products; pass ``status=429`` to model the other answer); business errors
  (an unknown session, another tenant or app) answered HTTP 200 with
  ``Success: false`` and codes of our own (``InstanceNotFound``,
  ``Forbidden.Tenant``, ``Forbidden.App``); ``QueryRunningInstance`` of a
  session that is not running answering an empty ``Data`` list; the values
  (ids, tokens, ``Gslb``, ``ExpiredTime`` in epoch milliseconds); and token
  renewal (:meth:`FakeOpenAPI.expire`): how and when the cloud renews an
  instance's IM token is not published, so this only models one plausible way
  (the old token is revoked with ``CONNECTION_TIMEOUT``, and
  ``QueryRunningInstance`` returns a fresh one).

Threads (all ended by :meth:`FakeOpenAPI.stop`): the serve thread runs
``serve_forever`` (it polls for shutdown every 50 ms); the HTTP server starts
one thread per request (HTTP/1.0: one request per connection, with a read
timeout), and ``stop()`` shuts their sockets down and joins them.  One lock
guards the state; nothing is sent to the IM server while it is held.
Secrets are never logged (only the action and the outcome are).
"""

from __future__ import annotations

import calendar
import contextlib
import hashlib
import hmac
import itertools
import json
import logging
import re
import secrets
import socket
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace, TracebackType
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import parse_qsl, unquote, urlsplit

import attrs

from ..aliyun import MAX_TEXT_LENGTH, MAX_UNIQUE_CODE_LENGTH, AliyunConfig, MissingExtraError

if TYPE_CHECKING:
    from .server import ReferenceServer

__all__ = ["API_VERSION", "FakeOpenAPI", "SentText"]

logger = logging.getLogger(__name__)

#: The API version the fake answers.
API_VERSION = "2022-01-30"
#: The one signature algorithm the fake checks.
SIGNATURE_ALGORITHM = "ACS3-HMAC-SHA256"
#: How far ``x-acs-date`` may be from the fake's clock, in seconds (modelled: 15 minutes).
MAX_CLOCK_SKEW = 15 * 60
#: How many signature nonces are remembered, to refuse a replayed request.
NONCE_CAPACITY = 10_000
#: Seconds a request's connection may stay silent before its thread gives up.
REQUEST_TIMEOUT = 5.0
#: How long stop() waits for the serve thread.
JOIN_TIMEOUT = 2.0

_AUTHORIZATION = re.compile(
    rf"^{SIGNATURE_ALGORITHM} Credential=(?P<ak>[^,]+),"
    r"SignedHeaders=(?P<headers>[^,]+),Signature=(?P<signature>[0-9a-f]+)$"
)


@attrs.frozen(kw_only=True)
class SentText:
    """One ``SendText`` the fake accepted."""

    session_id: str
    text: str
    unique_code: str
    interrupt: bool


@attrs.define(kw_only=True)
class _Instance:
    session_id: str
    token: str  # the IM token in force
    user_id: str
    user_name: str | None
    channel: dict[str, Any]


class _Refusal(Exception):
    """An answer other than success: HTTP *status* with an error body, or a business error."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _import_signer() -> Callable[..., str]:
    try:
        from alibabacloud_openapi_util.client import Client
    except ImportError as exc:
        raise MissingExtraError(
            f"FakeOpenAPI checks signatures with Alibaba Cloud's SDK: "
            f"pip install 'avatar-im[aliyun]' ({exc})"
        ) from exc
    signer: Callable[..., str] = Client.get_authorization
    return signer


class _HTTPServer(ThreadingHTTPServer):
    """Joins every request thread on ``server_close()``; shuts their sockets down first."""

    daemon_threads = False  # tracked and joined by server_close(), not left behind
    block_on_close = True
    fake: FakeOpenAPI

    def __init__(self, address: tuple[str, int], fake: FakeOpenAPI) -> None:
        self.fake = fake
        self._active: set[socket.socket] = set()  # guarded by _active_lock
        self._active_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._active_lock:
            self._active.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._active_lock:
            self._active.discard(request)
        super().shutdown_request(request)

    def cut_connections(self) -> None:
        """Shut down every open request socket, so that their threads end at once."""
        with self._active_lock:
            active = list(self._active)
        for sock in active:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


# The largest request body the fake reads (the real API's are small).
_MAX_BODY = 1 << 20


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    timeout = REQUEST_TIMEOUT  # a silent client ends its request thread
    server_version = "FakeAvatarOpenAPI"

    def do_POST(self) -> None:
        self._answer()

    def do_GET(self) -> None:
        self._answer()

    def _answer(self) -> None:
        try:
            length = int(self.headers.get("content-length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= _MAX_BODY:
            self.send_error(413 if length > 0 else 400, "bad or too large Content-Length")
            return
        body = self.rfile.read(length) if length > 0 else b""
        status, answer = self.server.fake._handle(self.command, self.path, self.headers, body)
        data = json.dumps(answer).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json;charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the fake logs each action itself, without the query (it holds the text sent)


def _json_param(query: dict[str, str], name: str) -> dict[str, Any]:
    raw = query.get(name)
    if raw is None:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        raise _Refusal(400, "InvalidParameter", f"{name} is not valid JSON") from None
    if not isinstance(value, dict):
        raise _Refusal(400, "InvalidParameter", f"{name} must be a JSON object")
    return value


def _required(query: dict[str, str], name: str) -> str:
    value = query.get(name)
    if not value:
        raise _Refusal(400, "MissingParameter", f"{name} is mandatory for this action.")
    return value


def _bool_param(query: dict[str, str], name: str, default: bool) -> bool:
    raw = query.get(name)
    if raw is None:
        return default
    if raw.lower() not in ("true", "false"):
        raise _Refusal(400, "InvalidParameter", f"{name} must be true or false")
    return raw.lower() == "true"


class FakeOpenAPI:
    """The avatar OpenAPI on loopback, for tests; see the module docstring.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`::

        with ReferenceServer(credentials=[]) as im, FakeOpenAPI(
            access_key_id="ak", access_key_secret="sk", tenant_id=1, app_id="app", im_server=im
        ) as fake:
            api = AvatarOpenAPI(fake.config())
            instance = api.start_instance(user_id="u1")  # its token is accepted by im

    Requests signed with another secret, or for another access key id, are
    refused as the real service does.  *im_server* (optional) gets each
    started instance's IM token with ``allow_token`` and loses it with
    ``expire_token`` when the instance stops or :meth:`expire` renews it; each
    accepted ``SendCommand`` ``INTERRUPT`` calls its ``interrupt(session_id)``.
    """

    def __init__(
        self,
        *,
        access_key_id: str,
        access_key_secret: str,
        tenant_id: int | str,
        app_id: str,
        im_server: ReferenceServer | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        # Validates the values (and that tenant_id is a number) as the client would.
        self._config = AliyunConfig(
            access_key_id=access_key_id,
            access_key_secret=access_key_secret,
            tenant_id=tenant_id,
            app_id=app_id,
            endpoint=f"{host}:{port}",
            protocol="http",
        )
        self._sign = _import_signer()
        self._host = host
        self._port = port
        self._im_server = im_server

        # Guards everything below; never held while calling the IM server.  Reentrant so that
        # wait_for() predicates, which run with it held, may read the public properties.
        self._lock = threading.RLock()
        # Notified (with _lock) after every request is answered; wait_for() waits on it.
        self._changed = threading.Condition(self._lock)
        self._instances: dict[str, _Instance] = {}  # running instances, in start order
        self._started_total = 0
        self._stopped_total = 0
        self._interrupts: list[str] = []
        self._texts: list[SentText] = []
        self._calls: list[str] = []  # the action of every request received, refused or not
        self._signature_failures = 0
        self._throttle: tuple[int, int] = (0, 400)  # (calls left to throttle, HTTP status)
        self._nonces: OrderedDict[str, None] = OrderedDict()
        self._request_ids = itertools.count(1)
        self._request_id_prefix = uuid.uuid4().hex[:8].upper()

        self._lifecycle = threading.Lock()  # serialises start() and stop()
        self._phase = "new"  # "new" -> "running" -> "stopped"
        self._httpd: _HTTPServer | None = None
        # The serve thread: runs serve_forever(), which accepts connections and starts one
        # request thread each; blocks in select() (polling every 50 ms for shutdown); exits
        # when stop() calls shutdown().
        self._thread: threading.Thread | None = None

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> FakeOpenAPI:
        """Bind and start serving; return ``self``.  A fake starts only once."""
        with self._lifecycle:
            if self._phase != "new":
                raise RuntimeError(f"cannot start a FakeOpenAPI that is {self._phase}")
            httpd = _HTTPServer((self._host, self._port), self)
            self._port = httpd.server_address[1]
            self._httpd = httpd
            self._thread = threading.Thread(
                target=httpd.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"avatar-im-openapi-{self._port}",
                daemon=True,
            )
            self._thread.start()
            self._phase = "running"
        logger.info("fake OpenAPI listening on http://%s", self.endpoint)
        return self

    def stop(self) -> None:
        """Stop serving and end every thread of the fake.  Idempotent; the records stay."""
        with self._lifecycle:
            httpd, thread = self._httpd, self._thread
            if self._phase == "running" and httpd is not None and thread is not None:
                httpd.shutdown()  # returns once serve_forever() has
                thread.join(JOIN_TIMEOUT)
                httpd.cut_connections()
                httpd.server_close()  # joins the request threads
                logger.info("fake OpenAPI on port %d stopped", self._port)
            self._phase = "stopped"

    def __enter__(self) -> FakeOpenAPI:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound port once started (the requested one before)."""
        return self._port

    @property
    def endpoint(self) -> str:
        """``host:port``, as ``AliyunConfig.endpoint`` takes it."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{host}:{self._port}"

    def config(self, **overrides: Any) -> AliyunConfig:
        """An :class:`~avatar_im.aliyun.AliyunConfig` that points at this fake (over HTTP).

        *overrides* replace fields (``access_key_secret="wrong"`` to be refused).
        """
        return attrs.evolve(self._config, endpoint=self.endpoint, **overrides)

    # --- observation and control ---------------------------------------------------------

    @property
    def running(self) -> list[str]:
        """The session ids of the instances running now, oldest first."""
        with self._lock:
            return list(self._instances)

    @property
    def started_total(self) -> int:
        """How many instances were started."""
        with self._lock:
            return self._started_total

    @property
    def stopped_total(self) -> int:
        """How many instances were stopped."""
        with self._lock:
            return self._stopped_total

    @property
    def interrupts(self) -> list[str]:
        """The session id of every ``SendCommand`` ``INTERRUPT``, in order."""
        with self._lock:
            return list(self._interrupts)

    @property
    def texts(self) -> list[SentText]:
        """Every ``SendText`` accepted, in order."""
        with self._lock:
            return list(self._texts)

    @property
    def calls(self) -> list[str]:
        """The action of every request received (refused ones too), in order."""
        with self._lock:
            return list(self._calls)

    @property
    def signature_failures(self) -> int:
        """How many requests were refused for their credential or signature."""
        with self._lock:
            return self._signature_failures

    def wait_for(self, predicate: Callable[[], object], timeout: float | None) -> bool:
        """Wait until *predicate()* is true, re-checking it after every request answered.

        Return its last truth value (``False`` on timeout).  It runs with the
        fake's lock held: it may read the properties, and must not block.
        """
        with self._changed:
            return bool(self._changed.wait_for(predicate, timeout))

    def token_of(self, session_id: str) -> str | None:
        """The IM token in force for *session_id*, or ``None`` if it is not running."""
        with self._lock:
            instance = self._instances.get(session_id)
            return None if instance is None else instance.token

    def throttle(self, count: int, *, status: int = 400) -> None:
        """Answer the next *count* validly signed calls ``Throttling.User`` with HTTP *status*.

        400 is modelled on Alibaba's gateway; 429 and 503 are the other
        answers a client must expect.  ``throttle(0)`` stops throttling.
        """
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"count must be an int >= 0, got {count!r}")
        if status not in (400, 429, 503):
            raise ValueError(f"status must be 400, 429 or 503, got {status!r}")
        with self._lock:
            self._throttle = (count, status)

    def expire(self, session_id: str, reason: str = "CONNECTION_TIMEOUT") -> str:
        """Renew *session_id*'s IM token: revoke the old one at the IM server, return the new one.

        The old token's connections get ``2{"reason": reason}`` and their
        sessions are forgotten (``ReferenceServer.expire_token``);
        ``QueryRunningInstance`` returns the new token, which the IM server
        accepts.  How the cloud renews tokens is modelled, not published.
        Raises ``KeyError`` if the instance is not running.
        """
        fresh = secrets.token_urlsafe(24)
        with self._lock:
            instance = self._instances[session_id]
            old, instance.token = instance.token, fresh
        if self._im_server is not None:
            self._im_server.allow_token(fresh, self._config.app_id, self._config.tenant_id)
            self._im_server.expire_token(old, reason)
        logger.info("instance %s: IM token renewed", session_id)
        return fresh

    # --- request handling (on request threads) -------------------------------------------

    def _new_request_id(self) -> str:
        return f"{self._request_id_prefix}-{next(self._request_ids):06d}"

    def _handle(
        self, method: str, target: str, headers: Any, body: bytes
    ) -> tuple[int, dict[str, Any]]:
        """Answer one HTTP request: (status, JSON body)."""
        request_id = self._new_request_id()
        action = headers.get("x-acs-action") or ""
        with self._lock:
            self._calls.append(action)
        try:
            return self._answer(method, target, headers, body, action=action, request_id=request_id)
        finally:
            with self._changed:
                self._changed.notify_all()

    def _answer(
        self, method: str, target: str, headers: Any, body: bytes, *, action: str, request_id: str
    ) -> tuple[int, dict[str, Any]]:
        try:
            query = self._verify(method, target, headers, body)
            self._check_throttle()
            if headers.get("x-acs-version") != API_VERSION:
                raise _Refusal(
                    400,
                    "InvalidVersion",
                    f"Specified parameter Version is not valid: {API_VERSION}",
                )
            handler = self._actions.get(action)
            if handler is None:
                raise _Refusal(
                    404, "InvalidAction.NotFound", f"Specified api {action} is not found."
                )
            data = handler(self, query, request_id)
        except _Refusal as refusal:
            logger.info("%s refused: HTTP %d %s", action or "?", refusal.status, refusal.code)
            answer: dict[str, Any] = {
                "RequestId": request_id,
                "Code": refusal.code,
                "Message": refusal.message,
            }
            if refusal.status == 200:  # a business error
                answer |= {"Success": False, "Data": None}
            return refusal.status, answer
        logger.info("%s answered", action)
        return 200, {
            "RequestId": request_id,
            "Code": "Success",
            "Message": "success",
            "Success": True,
            "Data": data,
        }

    def _verify(self, method: str, target: str, headers: Any, body: bytes) -> dict[str, str]:
        """Check the credential and ``ACS3-HMAC-SHA256`` signature; return the query parameters."""
        try:
            self._check_signature(method, target, headers, body)
        except _Refusal:
            with self._lock:
                self._signature_failures += 1
            raise
        return dict(parse_qsl(urlsplit(target).query, keep_blank_values=True))

    def _check_signature(self, method: str, target: str, headers: Any, body: bytes) -> None:
        match = _AUTHORIZATION.match(headers.get("authorization") or "")
        if match is None:
            raise _Refusal(
                400, "IncompleteSignature", f"The request needs an {SIGNATURE_ALGORITHM} signature."
            )
        if match["ak"] != self._config.access_key_id:
            raise _Refusal(404, "InvalidAccessKeyId.NotFound", "Specified access key is not found.")
        payload = headers.get("x-acs-content-sha256") or ""
        if not hmac.compare_digest(payload, hashlib.sha256(body).hexdigest()):
            raise _Refusal(
                400, "SignatureDoesNotMatch", "The x-acs-content-sha256 header does not match."
            )
        names = match["headers"].split(";")
        if "host" not in names or "x-acs-date" not in names:
            raise _Refusal(
                400, "IncompleteSignature", "The signature must cover host and x-acs-date."
            )
        signed: dict[str, str] = {}
        for name in names:
            value = headers.get(name)
            if value is None:
                raise _Refusal(
                    400, "IncompleteSignature", f"The signed header {name} is not in the request."
                )
            signed[name] = value
        parts = urlsplit(target)
        request = SimpleNamespace(
            method=method,
            pathname=unquote(parts.path) or "/",
            query=dict(parse_qsl(parts.query, keep_blank_values=True)),
            headers=signed,
        )
        expected = _AUTHORIZATION.match(
            self._sign(
                request,
                SIGNATURE_ALGORITHM,
                payload,
                self._config.access_key_id,
                self._config.access_key_secret,
            )
        )
        assert expected is not None
        if not hmac.compare_digest(expected["signature"], match["signature"]):
            raise _Refusal(
                400,
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided. "
                "Check your access key secret and signing method.",
            )
        self._check_date(signed["x-acs-date"])
        nonce = headers.get("x-acs-signature-nonce") or ""
        if not nonce:
            raise _Refusal(400, "MissingSignatureNonce", "x-acs-signature-nonce is mandatory.")
        with self._lock:
            if nonce in self._nonces:
                raise _Refusal(400, "SignatureNonceUsed", "Specified signature nonce was used.")
            self._nonces[nonce] = None
            while len(self._nonces) > NONCE_CAPACITY:
                self._nonces.popitem(last=False)

    @staticmethod
    def _check_date(value: str) -> None:
        try:
            stamp = calendar.timegm(time.strptime(value, "%Y-%m-%dT%H:%M:%SZ"))
        except ValueError:
            raise _Refusal(400, "InvalidTimeStamp.Format", "x-acs-date is not ISO 8601.") from None
        if abs(time.time() - stamp) > MAX_CLOCK_SKEW:
            raise _Refusal(
                400, "InvalidTimeStamp.Expired", "Specified time stamp or date value is expired."
            )

    def _check_throttle(self) -> None:
        with self._lock:
            left, status = self._throttle
            if left <= 0:
                return
            self._throttle = (left - 1, status)
        raise _Refusal(status, "Throttling.User", "Request was denied due to user flow control.")

    def _check_tenant(self, query: dict[str, str]) -> None:
        tenant = _required(query, "TenantId")
        if tenant != str(self._config.tenant_id):
            raise _Refusal(200, "Forbidden.Tenant", f"Tenant {tenant} is not yours.")

    def _check_app(self, query: dict[str, str]) -> None:
        app_id = _json_param(query, "App").get("AppId")
        if not app_id:
            raise _Refusal(400, "MissingParameter", "App.AppId is mandatory for this action.")
        if app_id != self._config.app_id:
            raise _Refusal(200, "Forbidden.App", f"App {app_id} is not in this tenant.")

    def _running(self, session_id: str) -> _Instance:
        """The running instance *session_id*.  Needs ``_lock``."""
        instance = self._instances.get(session_id)
        if instance is None:
            raise _Refusal(200, "InstanceNotFound", f"Instance {session_id} is not running.")
        return instance

    def _start_instance(self, query: dict[str, str], request_id: str) -> dict[str, Any]:
        self._check_tenant(query)
        self._check_app(query)
        user = _json_param(query, "User")
        user_id = user.get("UserId")
        if not isinstance(user_id, str) or not user_id:
            raise _Refusal(400, "MissingParameter", "User.UserId is mandatory for this action.")
        channel_type = _json_param(query, "Channel").get("Type") or "DingRTC"
        session_id = uuid.uuid4().hex
        expires = int(time.time() * 1000) + 24 * 3600 * 1000
        instance = _Instance(
            session_id=session_id,
            token=secrets.token_urlsafe(24),
            user_id=user_id,
            user_name=user.get("UserName"),
            channel={
                "Type": channel_type,
                "AppId": "fake-rtc-app",
                "ChannelId": f"channel-{session_id[:12]}",
                "Token": secrets.token_urlsafe(24),
                "Nonce": secrets.token_hex(8),
                "Gslb": ["https://gslb.dingrtc.example"],
                "UserId": f"viewer-{user_id}",
                "UserInfoInChannel": json.dumps({"userId": user_id}),
                "ExpiredTime": str(expires),
            },
        )
        if self._im_server is not None:
            self._im_server.allow_token(instance.token, self._config.app_id, self._config.tenant_id)
        with self._lock:
            self._instances[session_id] = instance
            self._started_total += 1
        return {
            "SessionId": session_id,
            "Token": instance.token,
            "RequestId": request_id,
            "Channel": dict(instance.channel),
        }

    def _stop_instance(self, query: dict[str, str], request_id: str) -> dict[str, Any]:
        self._check_tenant(query)
        session_id = _required(query, "SessionId")
        with self._lock:
            instance = self._running(session_id)
            del self._instances[session_id]
            self._stopped_total += 1
        if self._im_server is not None:
            self._im_server.expire_token(instance.token, "CONNECTION_TIMEOUT")
        return {"SessionId": session_id, "RequestId": request_id}

    def _query_running_instance(
        self, query: dict[str, str], request_id: str
    ) -> list[dict[str, Any]]:
        self._check_tenant(query)
        self._check_app(query)
        session_id = _required(query, "SessionId")
        with self._lock:
            instance = self._instances.get(session_id)
            if instance is None:
                return []
            return [
                {
                    "SessionId": instance.session_id,
                    "Token": instance.token,
                    "User": {"UserId": instance.user_id, "UserName": instance.user_name},
                    "Channel": dict(instance.channel),
                }
            ]

    def _unique_code(self, query: dict[str, str]) -> str:
        code = _required(query, "UniqueCode")
        if len(code) > MAX_UNIQUE_CODE_LENGTH:
            raise _Refusal(400, "InvalidParameter", "UniqueCode is longer than 64 characters.")
        return code

    def _send_text(self, query: dict[str, str], request_id: str) -> dict[str, Any]:
        self._check_tenant(query)
        session_id = _required(query, "SessionId")
        text = _required(query, "Text")
        if len(text) > MAX_TEXT_LENGTH:
            raise _Refusal(400, "InvalidParameter", "Text is longer than 1000 characters.")
        code = self._unique_code(query)
        interrupt = _bool_param(query, "Interrupt", True)
        with self._lock:
            self._running(session_id)
            self._texts.append(
                SentText(session_id=session_id, text=text, unique_code=code, interrupt=interrupt)
            )
        return {"SessionId": session_id, "UniqueCode": code}

    def _send_command(self, query: dict[str, str], request_id: str) -> dict[str, Any]:
        self._check_tenant(query)
        session_id = _required(query, "SessionId")
        command = _required(query, "Code")
        if command != "INTERRUPT":
            raise _Refusal(400, "InvalidParameter", f"Code {command} is not supported.")
        code = self._unique_code(query)
        with self._lock:
            self._running(session_id)
            self._interrupts.append(session_id)
        if self._im_server is not None:  # outside the lock, as every call to the IM server
            self._im_server.interrupt(session_id)
        return {"SessionId": session_id, "UniqueCode": code}

    _actions: ClassVar[dict[str, Callable[[FakeOpenAPI, dict[str, str], str], Any]]] = {
        "StartInstance": _start_instance,
        "StopInstance": _stop_instance,
        "QueryRunningInstance": _query_running_instance,
        "SendText": _send_text,
        "SendCommand": _send_command,
    }
