"""The avatar OpenAPI (``StartInstance`` and friends) on Alibaba Cloud's official Python SDK.

What the IM client needs (its token, app, tenant and session id) comes from
``StartInstance``, called on *your* server with an access key; see
``CLOUD-FACTS.md``.  This module holds:

* :class:`AliyunConfig`: the access key, tenant and app, and where the API is;
* :class:`AvatarOpenAPI`: ``start_instance``, ``query_running_instance``,
  ``stop_instance``, ``send_text`` and ``interrupt``, each a blocking call;
* :class:`AvatarInstance` and :class:`VideoChannel`: what ``StartInstance``
  and ``QueryRunningInstance`` return, with a ``for_browser()`` view that
  leaves the IM token out;
* :class:`OpenAPIError` (every failure of a call) and :class:`MissingExtraError`.

It needs the ``aliyun`` extra (``pip install 'avatar-im[aliyun]'``, which
installs ``alibabacloud-avatar20220130``).  The SDK is imported lazily, by
:class:`AvatarOpenAPI`'s constructor: this module imports without it.  Nothing
in the package's client imports this module (``import avatar_im`` never loads
it, nor the SDK); only the optional parts built on it do, when used: the fake
(:mod:`avatar_im.server.openapi`), the ``openapi`` pytest fixture and the
``instance`` and ``serve --openapi`` commands.  It must never sign or send HTTP
requests itself: the SDK does.

Secrets: the access key secret and the security token are never in a
``repr()``, a log record or an error message; the IM token and the video
token are left out of ``repr()`` too (``AvatarInstance.for_browser()`` has the
video token, which the page needs, and never the IM token).

Errors: the SDK's ``Tea`` exceptions are converted here, at the edge, into
:class:`OpenAPIError` (``raise ... from exc``), as is a response with
``Success`` false.  Throttling (a code starting with ``Throttling``, or HTTP
429 or 503) is retried with a :class:`~avatar_im.backoff.ReconnectPolicy`,
waiting on an event that :meth:`AvatarOpenAPI.close` sets.
"""

from __future__ import annotations

import logging
import os
import random
import re
import threading
import uuid
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

import attrs

from .backoff import ReconnectPolicy
from .exceptions import AvatarIMError, InvalidArgumentError, InvalidArgumentTypeError

__all__ = [
    "DEFAULT_REGION_ID",
    "DEFAULT_RETRY",
    "ENV_VARIABLES",
    "AliyunConfig",
    "AvatarInstance",
    "AvatarOpenAPI",
    "MissingExtraError",
    "OpenAPIError",
    "VideoChannel",
]

logger = logging.getLogger(__name__)

#: The region of the avatar service.
DEFAULT_REGION_ID = "cn-zhangjiakou"
#: How throttled calls are retried by default: up to 3 more times, 0.2 s to 2 s apart.
DEFAULT_RETRY = ReconnectPolicy(initial_delay=0.2, max_delay=2.0, max_attempts=3)
#: The environment variables :meth:`AliyunConfig.from_env` reads, by field name.
ENV_VARIABLES = {
    "access_key_id": "ALIBABA_CLOUD_ACCESS_KEY_ID",
    "access_key_secret": "ALIBABA_CLOUD_ACCESS_KEY_SECRET",
    "security_token": "ALIBABA_CLOUD_SECURITY_TOKEN",
    "tenant_id": "AVATAR_IM_TENANT_ID",
    "app_id": "AVATAR_IM_APP_ID",
    "endpoint": "AVATAR_IM_OPENAPI_ENDPOINT",
    "protocol": "AVATAR_IM_OPENAPI_PROTOCOL",
}
_REQUIRED_ENV = ("access_key_id", "access_key_secret", "tenant_id", "app_id")

#: Limits the service documents for SendText.
MAX_TEXT_LENGTH = 1000
MAX_UNIQUE_CODE_LENGTH = 64

_EXTRA_HINT = "pip install 'avatar-im[aliyun]'"
_QUERY = re.compile(r"\?[^\s'\"]+")


class MissingExtraError(AvatarIMError, ImportError):
    """The ``aliyun`` extra (Alibaba Cloud's SDK) is not installed."""


class OpenAPIError(AvatarIMError):
    """An OpenAPI call failed: refused by the service, or not answered.

    ``code`` is the service's error code (``SignatureDoesNotMatch``,
    ``Throttling.User``...), or ``SDK.NetworkError`` when no answer came (the
    endpoint unreachable, a timeout), ``SDK.<ExceptionName>`` for another
    error of the SDK; ``message`` its message; ``request_id`` the
    service's request id, when there is one; ``status`` the HTTP status.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str,
        request_id: str | None = None,
        status: int | None = None,
        action: str | None = None,
    ) -> None:
        self.code = code
        self.message = message
        self.request_id = request_id
        self.status = status
        self.action = action
        where = f"{action}: " if action else ""
        rid = f" (request id {request_id})" if request_id else ""
        super().__init__(f"{where}{code}: {message}{rid}")

    @property
    def throttled(self) -> bool:
        """Whether the service asked to slow down (such a call is retried)."""
        return self.code.startswith("Throttling") or self.status in (429, 503)


# --- validation ------------------------------------------------------------------------------


def _text(name: str, value: object, *, optional: bool = False, limit: int | None = None) -> None:
    """Check that *value* is a non-empty ``str`` (of at most *limit* chars), or ``None``.

    The message names the field, never the value: it may be a secret.
    """
    if value is None and optional:
        return
    if not isinstance(value, str):
        kind = "a str or None" if optional else "a str"
        raise InvalidArgumentTypeError(f"{name} must be {kind}, got {type(value).__name__}")
    if not value:
        raise InvalidArgumentError(f"{name} must not be empty")
    if limit is not None and len(value) > limit:
        raise InvalidArgumentError(f"{name} must be at most {limit} characters, got {len(value)}")


def _field_text(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    _text(attribute.name, value)


def _field_optional_text(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    _text(attribute.name, value, optional=True)


def _endpoint(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    _text(attribute.name, value, optional=True)
    if isinstance(value, str) and ("://" in value or "/" in value):
        raise InvalidArgumentError(
            f"endpoint must be a host[:port] such as avatar.cn-zhangjiakou.aliyuncs.com "
            f"(the scheme goes in protocol), got {value!r}"
        )


def _protocol(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    _text(attribute.name, value)
    if value not in ("http", "https"):
        raise InvalidArgumentError(f"protocol must be 'http' or 'https', got {value!r}")


def _lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


def _tenant_id(value: object) -> int:
    """The tenant id as the ``int`` the API takes (a Long); a numeric ``str`` is converted."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise InvalidArgumentTypeError(
            f"tenant_id must be an int or a numeric str, got {type(value).__name__}"
        )
    if isinstance(value, str):
        digits = value.strip()
        if not digits.isdigit() or not digits.isascii():
            raise InvalidArgumentError(f"tenant_id must be a number, got {value!r}")
        value = int(digits)
    if value <= 0:
        raise InvalidArgumentError(f"tenant_id must be > 0, got {value!r}")
    return value


def _empty_to_none(value: object) -> object:
    return None if value == "" else value


# --- values ----------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class AliyunConfig:
    """The access key, tenant and app, and where the OpenAPI is; validated when made.

    *tenant_id* and *app_id* are those of the console's developer information
    (the IM URL's ``tenant`` and ``app``); *tenant_id* is an ``int`` (a numeric
    ``str`` is converted).  *security_token* is for STS credentials (``""`` is
    taken as ``None``).  *endpoint* ``None`` uses the SDK's default for
    *region_id* (``alibabacloud-avatar20220130`` 2.5 resolves it to
    ``avatar.aliyuncs.com``; the regional ``avatar.cn-zhangjiakou.aliyuncs.com``
    may be given here); else a ``host[:port]``, reached over *protocol*.

    ``repr()`` leaves out the secret and the security token.
    """

    access_key_id: str = attrs.field(validator=_field_text)
    access_key_secret: str = attrs.field(repr=False, validator=_field_text)
    security_token: str | None = attrs.field(
        default=None, repr=False, converter=_empty_to_none, validator=_field_optional_text
    )
    tenant_id: int = attrs.field(converter=_tenant_id)
    app_id: str = attrs.field(validator=_field_text)
    region_id: str = attrs.field(default=DEFAULT_REGION_ID, validator=_field_text)
    endpoint: str | None = attrs.field(default=None, validator=_endpoint)
    protocol: str = attrs.field(default="https", converter=_lower, validator=_protocol)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AliyunConfig:
        """Read the config from *environ* (default: ``os.environ``); see :data:`ENV_VARIABLES`.

        ``ALIBABA_CLOUD_ACCESS_KEY_ID``, ``ALIBABA_CLOUD_ACCESS_KEY_SECRET``,
        ``AVATAR_IM_TENANT_ID`` and ``AVATAR_IM_APP_ID`` are required (a
        missing or empty one raises :class:`~avatar_im.InvalidArgumentError`
        naming it); ``ALIBABA_CLOUD_SECURITY_TOKEN``,
        ``AVATAR_IM_OPENAPI_ENDPOINT`` and ``AVATAR_IM_OPENAPI_PROTOCOL`` are optional.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field, variable in ENV_VARIABLES.items():
            value = env.get(variable, "")
            if value:
                values[field] = value
            elif field in _REQUIRED_ENV:
                raise InvalidArgumentError(f"the environment variable {variable} is not set")
        return cls(**values)


@attrs.frozen(kw_only=True)
class VideoChannel:
    """``Data.Channel`` of ``StartInstance``: what a web page needs to join the video (DingRTC).

    ``token`` is the channel's token (not the IM token); ``repr()`` leaves it out.
    """

    type: str | None = None
    app_id: str | None = None
    channel_id: str | None = None
    token: str | None = attrs.field(default=None, repr=False)
    nonce: str | None = None
    gslb: tuple[str, ...] = ()
    user_id: str | None = None
    user_info_in_channel: str | None = None
    expired_time: str | None = None

    def for_browser(self) -> dict[str, Any]:
        """The channel as a JSON-able dict, the service's names in camelCase, for a web page."""
        return {
            "type": self.type,
            "appId": self.app_id,
            "channelId": self.channel_id,
            "token": self.token,
            "nonce": self.nonce,
            "gslb": list(self.gslb),
            "userId": self.user_id,
            "userInfoInChannel": self.user_info_in_channel,
            "expiredTime": self.expired_time,
        }


@attrs.frozen(kw_only=True)
class AvatarInstance:
    """A running avatar instance: what the IM client needs, and the video channel.

    Connect the IM client with ``token=instance.token``,
    ``app_id=instance.app_id``, ``tenant_id=str(instance.tenant_id)`` and
    ``session_id=instance.session_id``.  ``token`` is the IM token: keep it on
    your server (``repr()`` and :meth:`for_browser` leave it out).
    """

    session_id: str
    token: str | None = attrs.field(repr=False)
    tenant_id: int
    app_id: str
    request_id: str | None = None
    channel: VideoChannel | None = None

    def for_browser(self) -> dict[str, Any]:
        """What a web page may see: the session id and the video channel, never the IM token."""
        return {
            "sessionId": self.session_id,
            "channel": None if self.channel is None else self.channel.for_browser(),
        }


# --- the SDK edge ----------------------------------------------------------------------------


@attrs.frozen
class _SDK:
    """The SDK's modules, imported once the API is used."""

    client: Any  # alibabacloud_avatar20220130.client.Client
    models: Any  # alibabacloud_avatar20220130.models
    config: Any  # alibabacloud_tea_openapi.models.Config
    runtime: Any  # alibabacloud_tea_util.models.RuntimeOptions
    errors: tuple[type[BaseException], ...]


def _import_sdk() -> _SDK:
    """Import Alibaba Cloud's SDK, or raise :class:`MissingExtraError`."""
    try:
        from alibabacloud_avatar20220130 import models
        from alibabacloud_avatar20220130.client import Client
        from alibabacloud_tea_openapi.models import Config
        from alibabacloud_tea_util.models import RuntimeOptions
        from Tea.exceptions import TeaException, ValidateException
    except ImportError as exc:
        raise MissingExtraError(
            f"the avatar OpenAPI needs the 'aliyun' extra: {_EXTRA_HINT} ({exc})"
        ) from exc
    return _SDK(Client, models, Config, RuntimeOptions, (TeaException, ValidateException))


def _redact(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def _sdk_error(exc: BaseException, action: str, secrets: tuple[str, ...]) -> OpenAPIError:
    """Convert one SDK exception; *secrets* are masked out of its text."""
    data = getattr(exc, "data", None)
    data = data if isinstance(data, dict) else {}
    code = getattr(exc, "code", None) or data.get("Code")
    message = data.get("Message") or getattr(exc, "message", None) or str(exc)
    request_id = getattr(exc, "request_id", None) or data.get("RequestId")
    status = getattr(exc, "status_code", None) or data.get("statusCode")
    if not code or code == "None":  # no answer (a network error, a timeout): the SDK's own
        inner = getattr(exc, "inner_exception", None)
        code = "SDK.NetworkError" if inner is not None else f"SDK.{type(exc).__name__}"
        inner_message = getattr(inner, "message", None)
        if isinstance(inner_message, str):
            message = inner_message
        # The URL's query holds the call's parameters (a text sent): not for an error message.
        message = _QUERY.sub("?...", str(message))
    return OpenAPIError(
        _redact(str(message), secrets),
        code=_redact(str(code), secrets),
        request_id=None if request_id in (None, "None") else str(request_id),
        status=status if isinstance(status, int) else None,
        action=action,
    )


def _channel(data: Any) -> VideoChannel | None:
    if data is None:
        return None
    return VideoChannel(
        type=data.type,
        app_id=data.app_id,
        channel_id=data.channel_id,
        token=data.token,
        nonce=data.nonce,
        gslb=tuple(data.gslb or ()),
        user_id=data.user_id,
        user_info_in_channel=data.user_info_in_channel,
        expired_time=data.expired_time,
    )


def _unique_code(unique_code: str | None) -> str:
    if unique_code is None:
        return uuid.uuid4().hex
    _text("unique_code", unique_code, limit=MAX_UNIQUE_CODE_LENGTH)
    return unique_code


class AvatarOpenAPI:
    """Blocking calls to the avatar OpenAPI, through Alibaba Cloud's SDK.

    ::

        api = AvatarOpenAPI(AliyunConfig.from_env())
        instance = api.start_instance(user_id="visitor-1")
        ...  # connect an AvatarIM with instance.token, .app_id, .tenant_id, .session_id
        api.stop_instance(instance.session_id)  # instances cost money

    *retry* says how throttled calls are retried (``max_attempts`` must be
    set: a call never retries for ever); ``ReconnectPolicy.never()`` turns
    retries off.  *timeout* bounds the connection and each read, in seconds.
    Thread-safe: calls from several threads may run at once.
    :meth:`close` (or leaving a ``with`` block) cuts short the waits between
    retries; the SDK client holds no thread.

    Raises :class:`MissingExtraError` without the ``aliyun`` extra.
    """

    def __init__(
        self,
        config: AliyunConfig,
        *,
        retry: ReconnectPolicy = DEFAULT_RETRY,
        timeout: float = 10.0,
    ) -> None:
        if not isinstance(config, AliyunConfig):
            raise InvalidArgumentTypeError(
                f"config must be an AliyunConfig, got {type(config).__name__}"
            )
        if not isinstance(retry, ReconnectPolicy):
            raise InvalidArgumentTypeError(
                f"retry must be a ReconnectPolicy, got {type(retry).__name__}"
            )
        if retry.max_attempts is None:
            raise InvalidArgumentError(
                "retry.max_attempts must be set: calls must not retry forever"
            )
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise InvalidArgumentTypeError(
                f"timeout must be a number, got {type(timeout).__name__}"
            )
        if not 0 < timeout <= 86_400:
            raise InvalidArgumentError(
                f"timeout must be > 0 and at most a day (in seconds), got {timeout!r}"
            )
        self._sdk = _import_sdk()
        self.config = config
        self.retry = retry
        self.timeout = float(timeout)
        self._secrets = tuple(s for s in (config.access_key_secret, config.security_token) if s)
        milliseconds = max(1, int(self.timeout * 1000))
        self._client = self._sdk.client(
            self._sdk.config(
                access_key_id=config.access_key_id,
                access_key_secret=config.access_key_secret,
                security_token=config.security_token,
                region_id=config.region_id,
                endpoint=config.endpoint,
                protocol=config.protocol,
                connect_timeout=milliseconds,
                read_timeout=milliseconds,
            )
        )
        # Set by close(): ends the wait between two attempts of a throttled call.
        self._closing = threading.Event()
        self._random = random.Random()

    def close(self) -> None:
        """Cut short any wait between retries (those calls raise their last error)."""
        self._closing.set()

    def __enter__(self) -> AvatarOpenAPI:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"AvatarOpenAPI({self.config!r})"

    @property
    def endpoint(self) -> str:
        """The host[:port] the SDK sends to (its default for the region unless configured)."""
        return str(self._client._endpoint)

    # --- the calls -------------------------------------------------------------------------

    def start_instance(
        self,
        *,
        user_id: str,
        user_name: str | None = None,
        channel_type: str = "DingRTC",
        biz_id: str | None = None,
        text_request: Mapping[str, Any] | None = None,
        command_request: Mapping[str, Any] | None = None,
    ) -> AvatarInstance:
        """``StartInstance``: start a rendering instance; return what the IM client needs.

        *text_request* and *command_request* take the SDK's field names
        (``voice``, ``speech_rate``, ``pitch_rate``, ``volume``;
        ``alpha_switch``, ``back_ground_image_url``, ``locate``).  The
        instance runs (and costs) until :meth:`stop_instance`.
        """
        _text("user_id", user_id)
        _text("user_name", user_name, optional=True)
        _text("channel_type", channel_type)
        _text("biz_id", biz_id, optional=True)
        models = self._sdk.models
        request = models.StartInstanceRequest(
            tenant_id=self.config.tenant_id,
            app=models.StartInstanceRequestApp(app_id=self.config.app_id),
            user=models.StartInstanceRequestUser(user_id=user_id, user_name=user_name),
            channel=models.StartInstanceRequestChannel(type=channel_type),
            biz_id=biz_id,
            text_request=self._submodel(
                models.StartInstanceRequestTextRequest, "text_request", text_request
            ),
            command_request=self._submodel(
                models.StartInstanceRequestCommandRequest, "command_request", command_request
            ),
        )
        body = self._call(
            "StartInstance",
            lambda runtime: self._client.start_instance_with_options(request, runtime),
        )
        data = body.data
        if data is None or not data.session_id:
            raise OpenAPIError(
                "the answer has no Data.SessionId", code="SDK.BadResponse", action="StartInstance"
            )
        instance = AvatarInstance(
            session_id=data.session_id,
            token=data.token,
            tenant_id=self.config.tenant_id,
            app_id=self.config.app_id,
            request_id=data.request_id or getattr(body, "request_id", None),
            channel=_channel(data.channel),
        )
        logger.info("instance %s started", instance.session_id)
        return instance

    def stop_instance(self, session_id: str) -> None:
        """``StopInstance``: release the instance *session_id*."""
        _text("session_id", session_id)
        request = self._sdk.models.StopInstanceRequest(
            tenant_id=self.config.tenant_id, session_id=session_id
        )
        self._call(
            "StopInstance",
            lambda runtime: self._client.stop_instance_with_options(request, runtime),
        )
        logger.info("instance %s stopped", session_id)

    def query_running_instance(self, session_id: str) -> AvatarInstance | None:
        """``QueryRunningInstance``: re-read instance *session_id*; ``None`` if it is not running.

        The IM token it returns is the one in force now (after a renewal, the new one).
        """
        _text("session_id", session_id)
        models = self._sdk.models
        request = models.QueryRunningInstanceRequest(
            tenant_id=self.config.tenant_id,
            app=models.QueryRunningInstanceRequestApp(app_id=self.config.app_id),
            session_id=session_id,
        )
        body = self._call(
            "QueryRunningInstance",
            lambda runtime: self._client.query_running_instance_with_options(request, runtime),
        )
        for data in body.data or ():
            if data is not None and data.session_id == session_id:
                return AvatarInstance(
                    session_id=data.session_id,
                    token=data.token,
                    tenant_id=self.config.tenant_id,
                    app_id=self.config.app_id,
                    request_id=body.request_id,
                    channel=_channel(data.channel),
                )
        return None

    def send_text(
        self,
        session_id: str,
        text: str,
        *,
        interrupt: bool = True,
        unique_code: str | None = None,
    ) -> str:
        """``SendText``: have the avatar speak *text* (plain or SSML, 1 to 1,000 characters).

        *interrupt* cuts off what it is saying.  Return the unique code (a
        fresh one unless *unique_code*, at most 64 characters, is given).
        """
        _text("session_id", session_id)
        _text("text", text, limit=MAX_TEXT_LENGTH)
        if not isinstance(interrupt, bool):
            raise InvalidArgumentTypeError(
                f"interrupt must be a bool, got {type(interrupt).__name__}"
            )
        code = _unique_code(unique_code)
        request = self._sdk.models.SendTextRequest(
            tenant_id=self.config.tenant_id,
            session_id=session_id,
            text=text,
            unique_code=code,
            interrupt=interrupt,
        )
        body = self._call(
            "SendText", lambda runtime: self._client.send_text_with_options(request, runtime)
        )
        return str(getattr(body.data, "unique_code", None) or code)

    def interrupt(self, session_id: str, *, unique_code: str | None = None) -> str:
        """``SendCommand`` with ``Code="INTERRUPT"``: stop what the avatar is saying.

        Return the unique code (a fresh one unless *unique_code* is given).
        """
        _text("session_id", session_id)
        code = _unique_code(unique_code)
        request = self._sdk.models.SendCommandRequest(
            tenant_id=self.config.tenant_id,
            session_id=session_id,
            code="INTERRUPT",
            unique_code=code,
        )
        body = self._call(
            "SendCommand", lambda runtime: self._client.send_command_with_options(request, runtime)
        )
        return str(getattr(body.data, "unique_code", None) or code)

    # --- helpers ---------------------------------------------------------------------------

    @staticmethod
    def _submodel(model: Any, name: str, values: Mapping[str, Any] | None) -> Any:
        if values is None:
            return None
        if not isinstance(values, Mapping):
            raise InvalidArgumentTypeError(
                f"{name} must be a mapping or None, got {type(values).__name__}"
            )
        try:
            return model(**values)
        except TypeError as exc:
            raise InvalidArgumentError(f"{name}: {exc}") from None

    def _call(self, action: str, send: Callable[[Any], Any]) -> Any:
        """Run *send(runtime)*, retrying throttled attempts; return the response's body.

        Every SDK error and every ``Success: false`` answer becomes an :class:`OpenAPIError`.
        """
        attempt = 0
        while True:
            runtime = self._sdk.runtime(autoretry=False)
            try:
                response: Any = send(runtime)
            except self._sdk.errors as exc:
                error = _sdk_error(exc, action, self._secrets)
                if not self._retry_after(error, attempt):
                    raise error from exc
            else:
                body = response.body
                if body is None:
                    raise OpenAPIError(
                        "the answer has no body", code="SDK.BadResponse", action=action
                    )
                if body.success is not False:
                    return body
                error = OpenAPIError(
                    _redact(str(body.message or ""), self._secrets),
                    code=str(body.code or "Unknown"),
                    request_id=getattr(body, "request_id", None)
                    or getattr(body.data, "request_id", None),
                    status=response.status_code,
                    action=action,
                )
                if not self._retry_after(error, attempt):
                    raise error
            attempt += 1

    def _retry_after(self, error: OpenAPIError, attempt: int) -> bool:
        """Wait before retrying a throttled call; return ``False`` to give up instead."""
        if not error.throttled or self.retry.is_exhausted(attempt):
            return False
        delay = self.retry.delay(attempt, self._random.random())
        logger.info(
            "%s throttled (%s), retry %d in %.2f s", error.action, error.code, attempt + 1, delay
        )
        return not self._closing.wait(delay)
