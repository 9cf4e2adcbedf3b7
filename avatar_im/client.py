"""The public client: :class:`AvatarIM`.

A synchronous facade over :class:`~avatar_im.connection.Connection` and
:class:`~avatar_im.protocol.ClientProtocol`: it validates arguments at the
call site, returns message ids, waits with timeouts, queues the application's
callbacks for the callback thread (see :mod:`.dispatch`; never the reader, never
under a lock) and feeds the blocking pull API.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, overload

import attrs

from . import audio, forks
from .audio import AudioSource, AudioStream
from .backoff import ReconnectPolicy
from .checks import require_callable, require_str, require_text, require_timeout
from .connection import Connection, ConnectionState
from .dial import parse_proxy
from .dispatch import Dispatcher
from .exceptions import (
    AckError,
    AckTimeout,
    AskTimeout,
    AudioFormatError,
    AvatarIMError,
    ClientClosedError,
    ConnectTimeout,
    ForkedClientError,
    InterruptError,
    InterruptTimeout,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    MessageCancelledError,
    MessageDiscardedError,
    OutboxFullError,
    ReceiveTimeout,
    SessionNotStartedError,
    SessionReadyTimeout,
    SessionStartError,
    SpeakingTimeout,
    UnknownMessageError,
)
from .families import UPSTREAM_BY_NAME
from .ids import MessageIdFactory
from .inbox import Answer, AskClaim, Claim, Inbox, Listeners, family_names
from .messages import InterruptResult, Message, Reply, ServerEvent, StartResult, from_envelope
from .options import SessionOptions, check_json_value, refresh_fields
from .protocol import (
    Accepted,
    Acked,
    AckPolicy,
    ClientProtocol,
    Event,
    EventReceived,
    GarbageReceived,
    MessageReceived,
    Outcome,
    SessionLost,
    SessionReady,
    SessionStartFailed,
    SessionState,
)
from .urls import DEFAULT_URL, build_url, redact_url

if TYPE_CHECKING:
    import numpy.typing as npt

__all__ = ["AvatarIM", "ClientStats", "InterruptReport"]

logger = logging.getLogger(__name__)

T_id = TypeVar("T_id")

#: How long an answer that came too late for its ask() or interrupt() is still known as
#: theirs (and goes to receive()), at least; see inbox.AskClaim.
LATE_WINDOW = 30.0

#: AvatarIM.from_env(): the parameter each environment variable sets.
ENV_VARIABLES = {
    "token": "AVATAR_IM_TOKEN",
    "app_id": "AVATAR_IM_APP_ID",
    "tenant_id": "AVATAR_IM_TENANT_ID",
    "session_id": "AVATAR_IM_SESSION_ID",
    "url": "AVATAR_IM_URL",
}

#: The shortest heartbeat interval accepted (seconds): below it the pings alone busy the CPU.
MIN_HEARTBEAT = 0.01

MessageCallback = Callable[[dict[str, Any]], object]
AckErrorCallback = Callable[[AckError], object]
StateCallback = Callable[[ConnectionState], object]
Matcher = Callable[[Message], bool]
ListenerT = TypeVar("ListenerT", bound=Callable[[Message], object])
#: How interrupt() tells the service: a callable(session_id), or an IM message content.
InterruptVia = Callable[[str], object] | Mapping[str, Any]


class InstanceLike(Protocol):
    """What :meth:`AvatarIM.from_instance` reads of an instance (``aliyun.AvatarInstance``)."""

    @property
    def session_id(self) -> str: ...
    @property
    def token(self) -> str: ...
    @property
    def app_id(self) -> str: ...
    @property
    def tenant_id(self) -> int | str: ...


class RunningInstanceSource(Protocol):
    """What renews an instance's token and interrupts it (``aliyun.AvatarOpenAPI``)."""

    def query_running_instance(self, session_id: str) -> InstanceLike | None: ...
    def interrupt(self, session_id: str) -> str: ...


@attrs.frozen
class ClientStats:
    """A snapshot of the client's counters."""

    state: ConnectionState
    reconnects: int
    outbox: int
    messages_sent: int
    messages_resent: int
    acks_received: int
    frames_received: int
    garbage_frames: int
    duplicates_dropped: int
    pings_sent: int
    inbound_dropped: int
    rate_limited: int
    session_restarts: int
    callback_errors: int
    callbacks_dropped: int
    messages_cancelled: int = 0  #: cut unwritten from the outbox by interrupt()


class AvatarIM:
    """A client for one avatar session over the IM WebSocket channel.

    Creating it connects in the background, like the original SDK; sends made
    before the connection (or the session) is ready are queued, in order::

        with AvatarIM(token=..., app_id=..., tenant_id=..., session_id=...,
                      url="ws://127.0.0.1:8765/ws") as client:
            client.start_session(format="pcm", sample_rate=16000)
            client.wait_session_ready(timeout=5)
            print(client.ask("hello", timeout=5).text)

    Thread-safe: any number of threads may call the send methods at once.
    Callbacks run on the client's callback thread, one at a time and in order;
    they may block or call any method without stalling the connection.

    *token_provider*, a callable returning a token, is asked for a fresh one
    before every connect but the first (before the first too when *token* is
    not given).  With it, a handshake refused for the credentials (401/403) or
    a ``2`` with ``CONNECTION_TIMEOUT`` renews the token, starts the session
    again and resends what is unacknowledged, instead of closing for good.  It
    runs on the reader thread; keep it bounded (an HTTP call with a timeout).

    :param token: the IM token (``StartInstance``'s ``Data.Token``); or pass *token_provider*.
    :param app_id: the application id (``app`` in the URL).
    :param tenant_id: the tenant id (``tenant`` in the URL).
    :param session_id: the session id (``StartInstance``'s ``Data.SessionId``).
    :param url: the channel's URL, without its query; default: the cloud's endpoint.
    :param on_message: called with the raw envelope dict of every business message.
    :param on_event: called with the body of every event (packet ``7``).
    :param on_ack_error: called with an :class:`AckError` for every refused message.
    :param on_state: called with each :class:`ConnectionState` change, in order.
    :param heartbeat_interval: seconds between heartbeats (``None``: none; at least 0.01);
        the peer counts as dead after twice this plus 0.1 s of silence.
    :param connect_timeout: seconds for one connection attempt (TCP, TLS, upgrade).
    :param reconnect: the :class:`ReconnectPolicy` (backoff, attempts) after a lost connection.
    :param require_acks: keep each message until it is acknowledged (else until written).
    :param max_outbox: how many unacknowledged messages the outbox holds.
    :param send_timeout: seconds a send waits for outbox room (``None``: it raises at once).
    :param receive_buffer: how many messages (and events) the pull API keeps; 0 keeps
        none, for a client read only through listeners (:meth:`on`) and waits (:meth:`ask`).
    :param dedupe_capacity: how many inbound message ids are remembered against duplicates.
    :param dedupe_max_bytes: the bytes those ids may take (``None``: no limit).
    :param auto_connect: connect at once (else call :meth:`connect`).
    :param id_factory: what makes message ids (an object with ``new(now_ms)``).
    :param max_message_size: the largest message sent or received, in bytes.
    :param ssl_context: the :class:`ssl.SSLContext` for ``wss://``.
    :param ca_file: a CA bundle to trust, instead of *ssl_context*.
    :param verify_tls: ``False`` turns certificate checks off (tests only; logged).
    :param proxy: a proxy URL; default: the environment's ``https_proxy`` and the like.
    :param token_provider: called for a fresh token before each reconnect.
    :param ack_policy: the :class:`AckPolicy`: which ack errors mean "session lost" or
        "rate limited".
    :param interrupt_via: how :meth:`interrupt` tells the service: a callable of the
        session id, or an IM message content; ``None``: it does not.
    """

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **options: Any) -> AvatarIM:
        """A client configured from the environment (``os.environ`` unless *environ*).

        Reads ``AVATAR_IM_TOKEN``, ``AVATAR_IM_APP_ID``, ``AVATAR_IM_TENANT_ID``,
        ``AVATAR_IM_SESSION_ID`` and ``AVATAR_IM_URL`` (optional: the cloud's
        endpoint when unset); keyword arguments override them and go to
        :class:`AvatarIM`.  A missing variable raises
        :class:`InvalidArgumentError` naming every one that is missing.
        """
        env = os.environ if environ is None else environ
        values = dict(options)
        missing = []
        for name, variable in ENV_VARIABLES.items():
            if name in values:
                continue
            value = env.get(variable)
            if value:
                values[name] = value
            elif name != "url":
                missing.append(variable)
        if missing:
            raise InvalidArgumentError(
                f"set {', '.join(missing)} in the environment (or pass them as arguments)"
            )
        return cls(**values)

    @classmethod
    def from_instance(
        cls,
        instance: InstanceLike,
        *,
        url: str | None = None,
        openapi: RunningInstanceSource | None = None,
        **options: Any,
    ) -> AvatarIM:
        """A client for a started avatar instance (see :mod:`avatar_im.aliyun`).

        Takes the IM token, app, tenant and session id from *instance*; *url*
        defaults to ``AVATAR_IM_URL`` from the environment, else the cloud's.  With
        *openapi* (an :class:`~avatar_im.aliyun.AvatarOpenAPI`), the token is
        renewed through ``QueryRunningInstance`` when it expires; an instance
        that is no longer running ends the client with the provider's error.
        :meth:`interrupt` then tells the service through ``SendCommand``
        ``INTERRUPT``.  Other keyword arguments go to :class:`AvatarIM`.
        """
        session_id = instance.session_id
        if url is None:
            url = os.environ.get("AVATAR_IM_URL") or DEFAULT_URL
        if openapi is not None and "token_provider" not in options:
            source = openapi

            def renew_token() -> str:
                running = source.query_running_instance(session_id)
                if running is None:
                    raise ClientClosedError(f"avatar instance {session_id} is no longer running")
                return running.token

            options["token_provider"] = renew_token
        if openapi is not None and "interrupt_via" not in options:
            # The documented interrupt: the OpenAPI's SendCommand INTERRUPT.
            options["interrupt_via"] = openapi.interrupt
        return cls(
            token=instance.token,
            app_id=instance.app_id,
            tenant_id=str(instance.tenant_id),
            session_id=session_id,
            url=url,
            **options,
        )

    def __init__(
        self,
        *,
        token: str | None = None,
        app_id: str,
        tenant_id: str,
        session_id: str,
        url: str = DEFAULT_URL,
        on_message: MessageCallback | None = None,
        on_event: MessageCallback | None = None,
        on_ack_error: AckErrorCallback | None = None,
        on_state: StateCallback | None = None,
        heartbeat_interval: float | None = 20.0,
        connect_timeout: float = 10.0,
        reconnect: ReconnectPolicy | None = None,
        require_acks: bool = True,
        max_outbox: int = 10_000,
        send_timeout: float | None = None,
        receive_buffer: int = 1024,
        dedupe_capacity: int = 4096,
        dedupe_max_bytes: int | None = 2**20,
        auto_connect: bool = True,
        id_factory: MessageIdFactory | None = None,
        max_message_size: int | None = 16 * 2**20,
        ssl_context: ssl.SSLContext | None = None,
        ca_file: str | os.PathLike[str] | None = None,
        verify_tls: bool = True,
        proxy: str | None = None,
        token_provider: Callable[[], str] | None = None,
        ack_policy: AckPolicy | None = None,
        interrupt_via: InterruptVia | None = None,
    ) -> None:
        require_callable("token_provider", token_provider)
        if ack_policy is not None and not isinstance(ack_policy, AckPolicy):
            raise InvalidArgumentTypeError("ack_policy must be an AckPolicy or None")
        interrupt_via = _check_interrupt_via(interrupt_via)
        if token is None and token_provider is None:
            raise InvalidArgumentError("pass token=..., or token_provider=... to fetch one")
        if token is not None:
            require_str("token", token)
        for name, value in (("app_id", app_id), ("tenant_id", tenant_id)):
            require_str(name, value)
        require_str("session_id", session_id)
        require_str("url", url)
        for name, cb in (
            ("on_message", on_message),
            ("on_event", on_event),
            ("on_ack_error", on_ack_error),
            ("on_state", on_state),
        ):
            require_callable(name, cb)
        heartbeat_interval = require_timeout("heartbeat_interval", heartbeat_interval)
        if heartbeat_interval is not None and heartbeat_interval < MIN_HEARTBEAT:
            raise InvalidArgumentError(
                f"heartbeat_interval must be at least {MIN_HEARTBEAT}s, or None to turn it off"
            )
        connect_timeout_s = require_timeout("connect_timeout", connect_timeout)
        if not connect_timeout_s:
            raise InvalidArgumentError("connect_timeout must be > 0")
        if reconnect is not None and not isinstance(reconnect, ReconnectPolicy):
            raise InvalidArgumentTypeError("reconnect must be a ReconnectPolicy or None")
        for name, number, least in (
            ("max_outbox", max_outbox, 1),
            ("receive_buffer", receive_buffer, 0),
            ("dedupe_capacity", dedupe_capacity, 1),
            ("dedupe_max_bytes", 1 if dedupe_max_bytes is None else dedupe_max_bytes, 1),
        ):
            if isinstance(number, bool) or not isinstance(number, int):
                raise InvalidArgumentTypeError(f"{name} must be an int")
            if number < least:
                raise InvalidArgumentError(f"{name} must be >= {least}, got {number}")
        if id_factory is not None and not callable(getattr(id_factory, "new", None)):
            raise InvalidArgumentTypeError("id_factory must have a new(now_ms) method")
        self._send_timeout = require_timeout("send_timeout", send_timeout)
        if max_message_size is not None and (
            isinstance(max_message_size, bool)
            or not isinstance(max_message_size, int)
            or max_message_size < 1
        ):
            raise InvalidArgumentError("max_message_size must be a positive int or None")
        transport_options = _transport_options(
            ssl_context=ssl_context,
            ca_file=ca_file,
            verify_tls=verify_tls,
            proxy=proxy,
        )
        transport_options["max_message_size"] = max_message_size
        self._max_message_size = max_message_size

        self.app_id = app_id
        self.tenant_id = tenant_id
        self.session_id = session_id
        self._url = build_url(url, token=token or "", app_id=app_id, tenant_id=tenant_id)
        renew: Callable[[], str] | None = None
        if token_provider is not None:
            provider = token_provider
            base = url

            def renew() -> str:
                fresh = provider()
                if not isinstance(fresh, str) or not fresh:
                    raise InvalidArgumentTypeError("token_provider must return a non-empty str")
                self._url = build_url(base, token=fresh, app_id=app_id, tenant_id=tenant_id)
                return self._url

        self.on_message = on_message
        self.on_event = on_event
        self.on_ack_error = on_ack_error
        self.on_state = on_state

        # What the server sent: typed values for the pull API, ask() and interrupt()
        # claims and the speaking state (see .inbox; its own lock).
        self._inbox = Inbox(receive_buffer)
        # The on()/off() registry (see .inbox.Listeners).
        self._listeners = Listeners()
        # Serialises ask(): one ask at a time per client (see AskClaim for the rule).
        self._ask_lock = threading.Lock()
        self._interrupt_via = interrupt_via

        protocol = ClientProtocol(
            app_id=app_id,
            session_id=session_id,
            heartbeat_interval=heartbeat_interval,
            require_acks=require_acks,
            max_outbox=max_outbox,
            dedupe_capacity=dedupe_capacity,
            dedupe_max_bytes=dedupe_max_bytes,
            id_factory=id_factory,
            ack_policy=ack_policy,
        )
        self._connection = Connection(
            protocol,
            url=self._url,
            policy=reconnect if reconnect is not None else ReconnectPolicy(),
            connect_timeout=connect_timeout_s,
            on_events=self._handle_events,
            on_state=self._handle_state,
            transport_options=transport_options,
            renew_url=renew,
            renew_first=token is None,
        )
        # Runs the application's callbacks on a thread of its own (see .dispatch).
        self._dispatcher = Dispatcher(capacity=max(receive_buffer, 1024))
        # Package-internal (the session host's): called on the callback thread with the id
        # of each message the server acknowledged, in wire order with the messages.
        self._ack_listener: Callable[[str], None] | None = None
        self._opened = False
        # Audio streams running now (stream_audio); close() stops them.  Guarded by _audio_lock.
        self._audio_lock = threading.Lock()
        self._audio_streams: set[AudioStream] = set()
        forks.register(self)
        if auto_connect:
            self.connect()

    def __repr__(self) -> str:
        return (
            f"<AvatarIM url={redact_url(self._url)!r} session_id={self.session_id!r} "
            f"state={self.state.value}>"
        )

    # ------------------------------------------------------------ connection

    def connect(self, timeout: float | None = None) -> None:
        """Connect (again, after :meth:`close`); with *timeout*, wait until open or raise.

        A no-op on a client that is already connecting or open.
        """
        timeout = require_timeout("timeout", timeout)
        # Atomic: of two connect() calls at once, one starts the connection; a connect()
        # on a live client changes nothing (it never resets a session or an outbox).
        if self._connection.start(prepare=lambda p: p.reopen()):
            self._opened = True
            self._inbox.reopen()
        if timeout is not None:
            self.wait_connected(timeout)

    def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until the connection is open; raise why it cannot be, or a timeout."""
        timeout = require_timeout("timeout", timeout)
        self._not_on_reader("wait_connected")
        connection = self._connection
        connection.wait_for(lambda p: p.connected, timeout)
        with connection.lock:
            if connection.protocol.connected:
                return
        self._raise_if_closed()
        last = connection.last_error
        raise ConnectTimeout(
            f"not connected after {timeout}s" + (f": {last}" if last is not None else "")
        ) from last

    def close(self) -> None:
        """Close the connection; returns within about a second and leaves no thread running.

        Messages still waiting for an ack are discarded (call :meth:`flush`
        first to wait for them): :meth:`wait_ack` on one raises
        :class:`MessageDiscardedError`.  Later sends and waits raise
        :class:`ClientClosedError`; :meth:`receive` still returns what arrived
        before the close, then raises it.  Safe from any thread and from callbacks;
        ``on_state(CLOSED)`` has run when it returns, unless that callback is
        still blocked after the second (it then ends on its own).
        """
        deadline = time.monotonic() + 1.0
        pending = self._connection.locked(lambda p: p.outbox_size)
        if pending and not self._connection.failure:
            logger.warning("closing with %d unacknowledged message(s)", pending)
        self._stop_audio_streams(join=False)  # signal first: no chunk starts after this
        self._connection.close(timeout=0.7)
        self._stop_audio_streams(join=True, timeout=max(0.0, deadline - time.monotonic() - 0.2))
        self._inbox.wake(closed=True)
        self._dispatcher.stop(max(0.0, deadline - time.monotonic()))

    def _after_fork_in_child(self) -> None:
        """In a forked child: fresh locks, no threads; the connection refuses use (see .forks)."""
        self._inbox.after_fork_in_child()  # the parent's to process, not ours
        self._ask_lock = threading.Lock()
        self._audio_lock = threading.Lock()
        self._audio_streams = set()
        self._dispatcher.after_fork_in_child()
        self._connection._after_fork_in_child()

    @property
    def session_ready(self) -> threading.Event:
        """Set while the session is ready (``startResult`` received), like the original's
        ``sessionReady``; cleared by :meth:`start_session`, :meth:`stop_session`, a lost
        session and :meth:`close`.  Wait on it, or call :meth:`wait_session_ready`."""
        return self._connection.session_ready

    @property
    def start_result(self) -> StartResult | None:
        """The current session's ``startResult``, once it arrived."""
        envelope = self._connection.locked(lambda p: p.start_result)
        if envelope is None:
            return None
        result = from_envelope(envelope)
        assert isinstance(result, StartResult)
        return result

    def __enter__(self) -> AvatarIM:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def state(self) -> ConnectionState:
        """The connection's state: connecting, open, reconnecting or closed."""
        return self._connection.state

    @property
    def session_state(self) -> SessionState:
        """The session's state: idle, starting, ready, stopped or failed."""
        return self._connection.protocol.session_state

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called or the connection failed for good."""
        return self._connection.state is ConnectionState.CLOSED

    @property
    def url(self) -> str:
        """The connection URL with the token redacted."""
        return redact_url(self._url)

    @property
    def stats(self) -> ClientStats:
        """A snapshot of the counters."""
        connection = self._connection
        with connection.lock:
            c = connection.protocol.counters
            return ClientStats(
                state=connection.state,
                reconnects=connection.reconnects,
                outbox=connection.protocol.outbox_size,
                messages_sent=c.messages_sent,
                messages_resent=c.messages_resent,
                acks_received=c.acks_received,
                frames_received=c.frames_received,
                garbage_frames=c.garbage_frames,
                duplicates_dropped=c.duplicates_dropped,
                pings_sent=c.pings_sent,
                inbound_dropped=self._inbox.dropped,
                rate_limited=c.rate_limited,
                session_restarts=connection.protocol.session_restarts,
                callback_errors=self._dispatcher.errors,
                callbacks_dropped=self._dispatcher.dropped,
                messages_cancelled=c.cancelled,
            )

    @property
    def threads(self) -> list[threading.Thread]:
        """The client's live threads (for tests and diagnostics)."""
        threads = self._connection.threads
        dispatcher = self._dispatcher.thread
        return [*threads, dispatcher] if dispatcher is not None else threads

    # --------------------------------------------------------------- session

    def start_session(self, **options: Any) -> str:
        """Start the avatar session; returns the ``start`` message's id.

        Options (validated; the original's defaults): ``dialog_mode``
        (``"aliYunChat"``/``"open"``), ``duplex_mode`` (``"cloud"``/``"client"``/
        ``"blend"``), ``output_mode`` (``"video"``/``"audio"``), ``video_open``,
        ``format`` (``"pcm"``/``"wav"``), ``sample_rate`` (16000).
        """
        session_options = SessionOptions.from_kwargs(options)
        size = self._max_message_size
        return self._submit(lambda p: p.start_session(session_options, _now_ms(), size))

    def wait_session_ready(self, timeout: float | None = None) -> StartResult:
        """Wait for ``startResult`` and return it (it is then not also returned by receive()).

        Raises :class:`SessionReadyTimeout` after *timeout* seconds,
        :class:`SessionStartError` if the server refused the start, and
        :class:`SessionNotStartedError` if no session is starting.
        """
        timeout = require_timeout("timeout", timeout)
        self._not_on_reader("wait_session_ready")
        connection = self._connection
        connection.wait_for(lambda p: p.session_state is not SessionState.STARTING, timeout)
        with connection.lock:
            state = connection.protocol.session_state
            error = connection.protocol.start_error
            result = connection.protocol.start_result
        if state is SessionState.READY and result is not None:
            typed = from_envelope(result)
            if typed.message_id is not None:
                self._inbox.discard(typed.message_id)
            assert isinstance(typed, StartResult)
            return typed
        if state is SessionState.FAILED:
            raise SessionStartError(
                f"the server refused to start the session: {error!r}", error=error
            )
        self._raise_if_closed()
        if state is SessionState.STARTING:
            raise SessionReadyTimeout(f"no startResult within {timeout}s")
        raise SessionNotStartedError(f"no session is starting (state: {state.value})")

    def stop_session(self) -> str:
        """Stop the session; returns the ``stop`` message's id.  Later data sends raise."""
        return self._submit(lambda p: p.stop_session(_now_ms()))

    def refresh_context(self, **options: Any) -> str:
        """Send ``refreshContext`` with the given (validated) session options."""
        fields = refresh_fields(options)
        content = {"type": "refreshContext", "sessionId": self.session_id, **fields}
        return self._submit_message(content, session=True)

    def suspend_session(self) -> str:
        """Send ``suspend`` (modelled: the original's first versions); returns its id."""
        return self._session_command("suspend")

    def recover_session(self) -> str:
        """Send ``recover`` (modelled: the original's first versions); returns its id."""
        return self._session_command("recover")

    def _session_command(self, name: str) -> str:
        content = {"type": UPSTREAM_BY_NAME[name].wire_type, "sessionId": self.session_id}
        return self._submit_message(content, session=True)

    # ---------------------------------------------------------- conversation

    @property
    def speaking(self) -> bool:
        """Whether the avatar is speaking now: a broadcast started and has not ended.

        Follows ``broadcast_start`` and ``broadcast_end`` (an interrupt result
        or a stop result ends it too; so does closing).
        """
        return self._inbox.speaking

    def wait_until_quiet(self, timeout: float | None = None) -> None:
        """Wait until the avatar is not speaking; raise :class:`SpeakingTimeout` after *timeout*."""
        timeout = require_timeout("timeout", timeout)
        self._not_on_reader("wait_until_quiet")
        self._raise_if_closed()
        quiet = self._inbox.wait_quiet(timeout)
        self._raise_if_closed()  # closing ends the wait: whether it is quiet is unknown
        if not quiet:
            raise SpeakingTimeout(f"the avatar was still speaking after {timeout}s")

    def ask(self, text: str, timeout: float | None = 30.0, *, wait_spoken: bool = False) -> Answer:
        """Send *text* and return the avatar's reply to it.

        The reply to an asked text is the first ``reply`` message that arrives
        after the text was queued; asks take turns, one at a time per client
        (a second thread's ask waits for the first's reply), so that each
        gets the reply to its own text.  Replies are not correlated by any
        field (the service publishes none): a text sent with :meth:`send_text`
        while an ask waits may have its reply taken by the ask.  With
        *wait_spoken*, also wait for the broadcast of the reply to end and
        return its start and end.  What an ask returns is not also returned by
        :meth:`receive`.

        *timeout* bounds the whole call, the wait for the turn included:
        :class:`AskTimeout` (a :class:`ReceiveTimeout`) after it; the text was
        sent all the same, and a reply that comes late goes to :meth:`receive`.
        """
        require_str("text", text)
        timeout = require_timeout("timeout", timeout)
        if not isinstance(wait_spoken, bool):
            raise InvalidArgumentTypeError("wait_spoken must be a bool")
        self._not_on_reader("ask")
        deadline = None if timeout is None else time.monotonic() + timeout
        self._raise_if_closed()
        if not self._ask_lock.acquire(timeout=-1 if timeout is None else timeout):
            raise AskTimeout(f"another ask() held the turn for {timeout}s", message_id="")
        inbox = self._inbox
        try:
            claim = AskClaim(inbox.position())
            inbox.open_claim(claim)
            try:
                message_id = self.send_text(text)
            except BaseException:
                inbox.drop_claim(claim)
                raise
            inbox.sent(claim, message_id)

            def done() -> bool:
                if claim.refusal is not None:
                    return True
                spoken = not wait_spoken or claim.end is not None or claim.cut
                return claim.taken is not None and spoken

            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            inbox.wait(done, left)
            if claim.refusal is not None:
                inbox.drop_claim(claim)
                raise AckError(
                    f"the server refused {message_id}: {claim.refusal!r}",
                    message_id=message_id,
                    error=claim.refusal,
                )
            if claim.taken is None:
                inbox.drop_claim(claim)
                self._raise_if_closed()
                # A reply that comes late is this ask's, not the next one's (see AskClaim).
                inbox.owe("reply", time.monotonic() + max(timeout or 0.0, LATE_WINDOW))
                raise AskTimeout(
                    f"no reply to {message_id} within {timeout}s", message_id=message_id
                )
            reply = claim.taken
            assert isinstance(reply, Reply)
            if wait_spoken and claim.end is None and not claim.cut:
                inbox.drop_claim(claim)
                self._raise_if_closed()
                raise AskTimeout(
                    f"the reply to {message_id} was not spoken to its end within {timeout}s",
                    message_id=message_id,
                )
            end = claim.end
            return Answer(
                message_id,
                reply,
                claim.start if wait_spoken else None,
                end if wait_spoken else None,
                interrupted=wait_spoken and (claim.cut or bool(end and end.interrupted)),
            )
        finally:
            self._ask_lock.release()

    def interrupt(
        self,
        timeout: float | None = 5.0,
        *,
        include_text: bool = False,
        stop_streams: bool = True,
    ) -> InterruptReport:
        """Stop the avatar: stop the audio streams, cut what is unsent, tell the service.

        1. With *stop_streams*, every running :meth:`stream_audio` of this
           client stops (pause a :class:`~avatar_im.Microphone` instead and
           pass ``stop_streams=False`` to keep it).
        2. The audio (and with *include_text*, the text) not yet written to
           the socket is cut from the outbox: the report lists the ids and the
           seconds of audio; :meth:`wait_ack` on one raises
           :class:`MessageCancelledError`.
        3. The service is told as ``interrupt_via`` says: a callable (for a
           client made by :meth:`from_instance` with ``openapi``, the
           OpenAPI's ``SendCommand`` ``INTERRUPT``) is called with the session
           id, and its return is the confirmation; a mapping is sent as an IM
           message and confirmed by the next ``interrupt_result``.  Without
           ``interrupt_via`` the service is not told: the report says so.

        Returns the :class:`InterruptReport`; raises :class:`InterruptTimeout`
        (carrying the report) when the service did not confirm in *timeout*.
        """
        timeout = require_timeout("timeout", timeout)
        for name, flag in (("include_text", include_text), ("stop_streams", stop_streams)):
            if not isinstance(flag, bool):
                raise InvalidArgumentTypeError(f"{name} must be a bool, got {type(flag).__name__}")
        self._not_on_reader("interrupt")
        self._raise_if_closed()
        deadline = None if timeout is None else time.monotonic() + timeout
        join = 1.0 if timeout is None else min(1.0, timeout)
        stopped = self._stop_audio_streams(join=True, timeout=join) if stop_streams else 0
        kinds = frozenset({"audio", "text"} if include_text else {"audio"})
        connection = self._connection
        with connection.lock:
            cut = connection.protocol.cancel_unwritten(kinds)
            connection.room.notify_all()
        report = InterruptReport(
            cancelled=tuple(key for key, _, _ in cut),
            cancelled_audio=tuple(key for key, kind, _ in cut if kind == "audio"),
            cancelled_text=tuple(key for key, kind, _ in cut if kind == "text"),
            audio_seconds=sum(seconds for _, _, seconds in cut),
            streams_stopped=stopped,
        )
        if cut:
            logger.info(
                "interrupt: cut %d unsent message(s) (%.2fs of audio)",
                len(cut),
                report.audio_seconds,
            )
        via = self._interrupt_via
        if via is None:
            return report
        if callable(via):
            # Synchronous, like token_provider: the OpenAPI call has its own timeout.
            try:
                via(self.session_id)
            except AvatarIMError:
                raise
            except Exception as exc:
                raise InterruptError(
                    f"interrupt_via failed: {type(exc).__name__}: {exc}", report=report
                ) from exc
            return attrs.evolve(report, service_told=True, via="callable")
        inbox = self._inbox
        claim = Claim(frozenset({"interrupt_result"}), inbox.position())
        inbox.open_claim(claim)
        try:
            message_id = self._submit_message({**via, "sessionId": self.session_id}, session=True)
            inbox.sent(claim, message_id)
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            inbox.wait(lambda: claim.taken is not None or claim.refusal is not None, left)
        finally:
            inbox.drop_claim(claim)
        told = attrs.evolve(report, service_told=True, via="im", message_id=message_id)
        if claim.taken is not None:
            assert isinstance(claim.taken, InterruptResult)
            return attrs.evolve(told, result=claim.taken)
        if claim.refusal is not None:
            raise AckError(
                f"the server refused the interrupt {message_id}: {claim.refusal!r}",
                message_id=message_id,
                error=claim.refusal,
            )
        self._raise_if_closed()
        inbox.owe("interrupt_result", time.monotonic() + max(timeout or 0.0, LATE_WINDOW))
        raise InterruptTimeout(f"no interrupt result within {timeout}s", report=told)

    # ----------------------------------------------------------------- sends

    def send_text(self, text: str) -> str:
        """Send *text* to the avatar; returns the message id."""
        require_text(text)
        content = {"type": "dataSend", "sessionId": self.session_id, "text": text}
        return self._submit_message(content, session=True, kind="text")

    def send_audio(
        self,
        data: bytes | bytearray | memoryview | npt.NDArray[Any] | None = None,
        *,
        base64: str | None = None,
    ) -> str:
        """Send one audio chunk; returns the message id.

        *data* is raw 16-bit little-endian mono PCM at the session's rate
        (``bytes``, ``bytearray``, ``memoryview``), or a 1-D NumPy array
        (``int16``, or float in [-1, 1], scaled to int16); *base64* is the
        base64 text of such PCM, checked and sent as it is.  In a ``pcm``
        session the PCM must have an even number of bytes; in a ``wav``
        session bytes go as they are and an array gets a WAV header.  Bad
        audio raises :class:`AudioFormatError` and nothing is sent.  For a
        whole file or long audio, use :meth:`stream_audio`.
        """
        encoded, size = self._audio_base64(data, base64)
        content = {"type": "dataSend", "sessionId": self.session_id, "audio": encoded}
        options = self._connection.protocol.session_options or SessionOptions()
        seconds = size / (audio.BYTES_PER_SAMPLE * options.sample_rate)
        return self._submit_message(content, session=True, kind="audio", audio_seconds=seconds)

    def stream_audio(
        self,
        source: AudioSource,
        *,
        chunk_ms: float = audio.DEFAULT_CHUNK_MS,
        realtime: bool = True,
        background: bool = False,
        on_progress: Callable[[AudioStream], object] | None = None,
    ) -> AudioStream:
        """Send a whole audio *source* as a sequence of chunks; return the stream's handle.

        *source* is a path to an audio file or a binary file object (a WAV in
        the session's format, or anything the ``audio`` extra converts), raw
        PCM ``bytes``, a 1-D NumPy array, or any iterable of chunks (bytes or
        arrays: a microphone, a generator).  Finite sources are read, checked
        and converted before the first chunk is sent, and cut into *chunk_ms*
        chunks; an iterable's chunks are sent as they come, each checked first.

        With *realtime*, chunk ``k`` leaves at ``start + k x chunk duration``
        on the monotonic clock (for an iterable, the durations of the chunks
        before it), so audio goes up at the pace it plays; without, as fast
        as the outbox and connection take it.

        Blocks until everything is sent and returns the finished handle,
        raising what ended the stream (an :class:`AudioStreamError` once some
        chunks went out).  With *background*, runs on a thread and returns at
        once: use the handle's ``stop()``, ``wait()``, ``done`` and ``error``;
        :meth:`close` stops it.  *on_progress(stream)* is called after each
        chunk, on the sending thread.
        """
        chunk_ms = audio.check_chunk_ms(chunk_ms)
        for name, flag in (("realtime", realtime), ("background", background)):
            if not isinstance(flag, bool):
                raise InvalidArgumentTypeError(f"{name} must be a bool, got {type(flag).__name__}")
        require_callable("on_progress", on_progress)
        connection = self._connection
        options = connection.locked(lambda p: p.session_options) or SessionOptions()
        rate = options.sample_rate
        prepared = audio.prepare_source(source, sample_rate=rate)
        total: int | None = None
        chunks: Iterable[object] = prepared
        if isinstance(prepared, bytes):
            total = len(prepared) // audio.BYTES_PER_SAMPLE
            step = audio.chunk_samples(chunk_ms, rate) * audio.BYTES_PER_SAMPLE
            chunks = audio.split_pcm(prepared, step)
        self._raise_if_closed()
        state = self.session_state
        if state is SessionState.FAILED:
            error = connection.locked(lambda p: p.start_error)
            raise SessionStartError(
                f"the server refused to start the session: {error!r}", error=error
            )
        if state in (SessionState.IDLE, SessionState.STOPPED):
            raise SessionNotStartedError(
                f"no session to stream to ({state.value}): call start_session() first"
            )
        room_wait = self._send_timeout or audio.OUTBOX_WAIT

        def send(pcm: bytes, stop: threading.Event) -> str | None:
            # Waits for outbox room (a fast stream outruns the acks), waking on stop or close.
            payload = audio.wav_bytes(pcm, rate) if options.format == "wav" else pcm
            deadline = time.monotonic() + room_wait
            protocol = connection.protocol
            while True:
                with connection.lock:
                    room = connection.lock.wait_for(
                        lambda: protocol.has_room() or protocol.closed or stop.is_set(),
                        max(0.0, deadline - time.monotonic()),
                    )
                if stop.is_set():
                    return None
                if not room:
                    raise OutboxFullError(f"the outbox stayed full for {room_wait}s")
                try:
                    return self.send_audio(payload)
                except OutboxFullError:  # another thread took the room first
                    if time.monotonic() >= deadline:
                        raise

        def wake() -> None:
            with connection.lock:
                connection.lock.notify_all()

        def forget(stream: AudioStream) -> None:
            with self._audio_lock:
                self._audio_streams.discard(stream)

        stream = AudioStream(
            chunks,
            sample_rate=rate,
            realtime=realtime,
            send=send,
            wake=wake,
            total_samples=total,
            on_progress=on_progress,
            on_exit=forget,
        )
        with self._audio_lock:
            self._audio_streams.add(stream)
        if self.closed:  # close() ran since the check above and did not see this stream
            forget(stream)
            self._raise_if_closed()
        if background:
            stream.start()
        else:
            stream.run()
        return stream

    def _stop_audio_streams(self, *, join: bool, timeout: float = 0.5) -> int:
        """Stop the running audio streams (with *join*, wait up to *timeout*); return how many."""
        with self._audio_lock:
            streams = list(self._audio_streams)
        deadline = time.monotonic() + timeout
        for stream in streams:
            stream.stop(timeout=max(0.0, deadline - time.monotonic()) if join else 0)
        return len(streams)

    def send_message(self, content: Any) -> str:
        """Send *content* wrapped in the business envelope; returns the message id."""
        if content is None:
            raise InvalidArgumentError("content must not be None")
        return self._submit_message(content, session=False)

    def send(self, frame: str) -> str | None:
        """Send a raw frame string as it is; returns its ``messageId`` if it is a ``5`` frame."""
        require_str("frame", frame)
        return self._submit(lambda p: p.send_raw(frame, self._max_message_size))

    def _audio_base64(self, data: object, encoded: object) -> tuple[str, int]:
        """Check one chunk; return its base64 text and its size in bytes of samples."""
        if (data is None) == (encoded is None):
            raise InvalidArgumentError("pass exactly one of data (bytes or array) or base64 (str)")
        if encoded is not None:
            require_str("base64", encoded)
            assert isinstance(encoded, str)
            try:
                raw = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                raise InvalidArgumentError("base64 is not a valid base64 string") from None
            self._check_pcm(raw)
            return encoded, _sample_bytes(raw)
        if audio.is_array(data):
            raw = audio.chunk_to_pcm(data)
            size = len(raw)
            options = self._connection.protocol.session_options
            if options is not None and options.format == "wav":
                raw = audio.wav_bytes(raw, options.sample_rate)
            return base64_encode(raw), size
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InvalidArgumentTypeError(
                f"audio data must be bytes or a NumPy array, got {type(data).__name__}"
            )
        raw = bytes(data)
        self._check_pcm(raw)
        return base64_encode(raw), _sample_bytes(raw)

    def _check_pcm(self, raw: bytes) -> None:
        if not raw:
            raise AudioFormatError("audio must not be empty")
        options = self._connection.protocol.session_options
        if (options is None or options.format == "pcm") and len(raw) % audio.BYTES_PER_SAMPLE:
            raise AudioFormatError(f"16-bit PCM needs an even number of bytes, got {len(raw)}")

    def _submit_message(
        self, content: Any, *, session: bool, kind: str = "", audio_seconds: float = 0.0
    ) -> str:
        """Encode *content* off the lock, then queue it (as session data if *session*)."""
        protocol = self._connection.protocol
        prepared = protocol.prepare(content, _now_ms(), self._max_message_size)
        if session:
            return self._submit(
                lambda p: p.session_message(prepared, kind=kind, audio_seconds=audio_seconds)
            )
        return self._submit(lambda p: p.send_message(prepared))

    def _submit(self, command: Callable[[ClientProtocol], T_id]) -> T_id:
        """Run a send *command* on the protocol, waiting for outbox room if configured."""
        connection = self._connection
        with connection.lock:
            self._raise_if_closed_locked()
            protocol = connection.protocol
            if not protocol.has_room():
                timeout = self._send_timeout
                if not timeout:
                    raise OutboxFullError(
                        f"the outbox holds {protocol.max_outbox} unacknowledged messages"
                    )
                connection.room.wait_for(lambda: protocol.has_room() or protocol.closed, timeout)
                self._raise_if_closed_locked()
            message_id = command(protocol)
            connection.after_command()
        connection.flush()
        return message_id

    def _not_on_reader(self, what: str) -> None:
        """Refuse a blocking wait on the reader thread: it would wait on itself.

        Callbacks run on the callback thread, where waits are fine; only code
        of ours runs on the reader, so this guards against our own mistakes.
        """
        if self._connection.on_reader_thread():
            raise AvatarIMError(
                f"{what}() cannot wait on the reader thread, which is what delivers "
                "what it would wait for"
            )

    def _raise_if_closed(self) -> None:
        with self._connection.lock:
            self._raise_if_closed_locked()

    def _raise_if_closed_locked(self) -> None:
        connection = self._connection
        if connection.protocol.closed or connection.state is ConnectionState.CLOSED:
            if connection.failure is not None:
                raise connection.failure
            if not self._opened:
                raise ClientClosedError("the client is not connected: call connect() first")
            raise ClientClosedError("the client is closed")

    # -------------------------------------------------------------- delivery

    def wait_ack(self, message_id: str, timeout: float | None = None) -> None:
        """Wait until the server acknowledged *message_id*.

        Raises :class:`AckError` if the server refused it, :class:`AckTimeout`
        if no ack came within *timeout* seconds, :class:`MessageDiscardedError`
        if it was dropped unacknowledged by :meth:`close`,
        :class:`MessageCancelledError` if :meth:`interrupt` cut it unsent, and
        :class:`UnknownMessageError` for an id this client did not send (or
        whose outcome it no longer remembers: the last
        ``max(4096, max_outbox)`` outcomes are kept).
        """
        require_str("message_id", message_id)
        timeout = require_timeout("timeout", timeout)
        self._not_on_reader("wait_ack")
        connection = self._connection
        connection.wait_for(lambda p: not p.is_pending(message_id), timeout)
        with connection.lock:
            outcome, error = connection.protocol.outcome(message_id)
        if outcome is Outcome.DELIVERED:
            return
        if outcome is Outcome.REFUSED:
            raise AckError(
                f"the server refused {message_id}: {error!r}", message_id=message_id, error=error
            )
        if outcome is Outcome.DISCARDED:
            failure = connection.failure
            if isinstance(failure, ForkedClientError):
                raise failure
            raise MessageDiscardedError(
                f"{message_id} was discarded unacknowledged when the client closed"
                + (f": {failure}" if failure is not None else ""),
                message_id=message_id,
            ) from failure
        if outcome is Outcome.CANCELLED:
            raise MessageCancelledError(
                f"{message_id} was cut from the outbox unsent by interrupt()",
                message_id=message_id,
            )
        if outcome is Outcome.UNKNOWN:
            raise UnknownMessageError(
                f"{message_id} was not sent by this client, or is too old to be remembered",
                message_id=message_id,
            )
        self._raise_if_closed()
        raise AckTimeout(f"no ack for {message_id} within {timeout}s")

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every message sent so far is acknowledged (or refused).

        Raises :class:`AckTimeout` after *timeout* seconds, and the reason the
        client closed (:class:`ClientClosedError`, or the connection's error)
        when it is closed, or closes during the wait, with messages discarded.
        """
        timeout = require_timeout("timeout", timeout)
        self._not_on_reader("flush")
        connection = self._connection
        self._raise_if_closed()
        discarded = connection.locked(lambda p: p.counters.discarded)
        done = connection.wait_for(lambda p: p.outbox_size == 0, timeout)
        with connection.lock:
            lost = connection.protocol.counters.discarded - discarded
        if lost:
            failure = connection.failure
            raise MessageDiscardedError(
                f"{lost} message(s) were discarded unacknowledged when the client closed"
                + (f": {failure}" if failure is not None else ""),
                message_id="",
            ) from failure
        if done:
            return
        self._raise_if_closed()
        left = connection.locked(lambda p: p.outbox_size)
        raise AckTimeout(f"{left} message(s) still unacknowledged after {timeout}s")

    # --------------------------------------------------------------- inbound

    def receive(
        self,
        timeout: float | None = None,
        *,
        family: str | Iterable[str] | None = None,
        match: Matcher | None = None,
    ) -> Message:
        """Return the next business message from the server, typed, waiting if needed.

        The value is of its family's class (:mod:`avatar_im.messages`: a
        :class:`~avatar_im.messages.Reply`, an
        :class:`~avatar_im.messages.AsrText`, ...), with the raw envelope in
        ``.raw`` (``message["content"]`` reads it too).  With *family* (a name
        or several, see :meth:`on`), return the oldest message of those
        families; with *match*, the oldest for which ``match(message)`` is
        true.  The others stay buffered for other callers.  *match* runs with
        the receive buffer locked: keep it a quick, pure test of the message.

        What :meth:`ask`, :meth:`interrupt` and :meth:`wait_session_ready`
        return is theirs: it is not also returned here.  Raises
        :class:`ReceiveTimeout` after *timeout* seconds and
        :class:`ClientClosedError` once the client is closed and nothing that
        fits is left.
        """
        return self._pull(False, timeout, family, match)

    def receive_event(
        self,
        timeout: float | None = None,
        *,
        match: Matcher | None = None,
    ) -> ServerEvent:
        """Return the next event (packet ``7``) from the server, waiting if needed."""
        event = self._pull(True, timeout, None, match)
        assert isinstance(event, ServerEvent)
        return event

    def __iter__(self) -> Iterator[Message]:
        """``for message in client``: :meth:`messages` with no idle limit."""
        return self.messages()

    def messages(
        self, idle_timeout: float | None = None, *, family: str | Iterable[str] | None = None
    ) -> Iterator[Message]:
        """Yield business messages (of *family*, when given) as they arrive.

        Ends when *idle_timeout* seconds pass with no message, and when the
        client is closed by :meth:`close` (after what was buffered); raises the
        error that closed the client for good (an :class:`AuthenticationError`
        on a reconnect, a :class:`ServerClosedError`, ...) instead of ending
        silently.  ``for message in client.messages(idle_timeout=10)`` is the
        bounded loop the docs use.
        """
        idle_timeout = require_timeout("idle_timeout", idle_timeout)
        wanted = None if family is None else family_names(family)
        while True:
            try:
                yield self.receive(idle_timeout, family=wanted)
            except ReceiveTimeout:
                return
            except ClientClosedError:
                if self._connection.failure is None:
                    return  # closed by close(): the end of the conversation
                raise

    def _pull(
        self,
        events: bool,
        timeout: float | None,
        family: str | Iterable[str] | None,
        match: Matcher | None,
    ) -> Message:
        timeout = require_timeout("timeout", timeout)
        require_callable("match", match)
        wanted = None if family is None else family_names(family)
        if wanted is not None and "event" in wanted:
            raise InvalidArgumentError("events are not business messages: use receive_event()")
        if self._connection.on_reader_thread():
            timeout = 0  # never a wait on the thread that fills the buffer
        found = self._inbox.pull(
            events=events,
            timeout=timeout,
            wanted=wanted,
            match=match,
            closed=lambda: self.closed,
        )
        if found is not None:
            return found
        if not self.closed:
            raise ReceiveTimeout(f"nothing received within {timeout}s")
        self._raise_if_closed()
        raise ClientClosedError("the client is closed")  # pragma: no cover - closed above

    # ----------------------------------------------------------- listeners

    @overload
    def on(self, family: str | Iterable[str]) -> Callable[[ListenerT], ListenerT]: ...
    @overload
    def on(self, family: str | Iterable[str], callback: ListenerT) -> ListenerT: ...

    def on(
        self, family: str | Iterable[str], callback: ListenerT | None = None
    ) -> ListenerT | Callable[[ListenerT], ListenerT]:
        """Call *callback(message)* for every message of *family* (a name or several).

        Use it as a call, ``client.on("reply", show)``, or as a decorator,
        ``@client.on("reply")``; it returns the callback.  Families: the
        table's (``"reply"``, ``"asr"``, ``"broadcast_start"``,
        ``"broadcast_end"``, ``"interrupt_result"``, ``"start_result"``, ...;
        see :mod:`avatar_im.families`), ``"message"`` for every business
        message, ``"event"`` for every event (packet ``7``) and ``"unknown"``
        for types not in the table.  Callbacks get the typed value and run on
        the callback thread, in order, after the constructor's ``on_message``;
        safe from any thread, from callbacks too.
        """
        names = family_names(family)
        if callback is None:

            def register(fn: ListenerT) -> ListenerT:
                return self.on(names, fn)

            return register
        require_callable("callback", callback)
        self._listeners.add(names, callback)
        return callback

    def off(self, family: str | Iterable[str], callback: Callable[[Message], object]) -> bool:
        """Stop calling *callback* for *family*; return whether it was registered."""
        names = family_names(family)
        require_callable("callback", callback)
        return self._listeners.remove(names, callback)

    # ----------------------------------------------------------- the reader

    def _handle_events(self, events: list[Event]) -> None:
        """Called on the reader thread, no lock held: feed the inbox, queue callbacks.

        Never runs application code here (see :mod:`.dispatch`).
        """
        for event in events:
            if isinstance(event, MessageReceived):
                message = self._inbox.deliver_message(event.message)
                self._callback(self.on_message, event.message)
                for listener in self._listeners.for_message(message):
                    self._dispatcher.call(listener, message)
            elif isinstance(event, SessionReady):
                logger.debug("session %s ready", self.session_id)
            elif isinstance(event, Acked):
                if event.error is None and self._inbox.tracking:
                    self._inbox.acked(event.message_id)
                ack_listener = self._ack_listener
                if event.error is None and ack_listener is not None:
                    self._dispatcher.call(ack_listener, event.message_id)
                if event.error is not None:
                    self._inbox.refused(event.message_id, event.error)
                    error = AckError(
                        f"the server refused {event.message_id}: {event.error!r}",
                        message_id=event.message_id,
                        error=event.error,
                    )
                    if self.on_ack_error is not None:
                        self._callback(self.on_ack_error, error)
                    else:
                        logger.warning("%s", error)
            elif isinstance(event, EventReceived):
                server_event = self._inbox.deliver_event(event.event)
                self._callback(self.on_event, event.event)
                for listener in self._listeners.for_message(server_event):
                    self._dispatcher.call(listener, server_event)
            elif isinstance(event, GarbageReceived):
                logger.warning("dropped a bad frame (%d chars): %s", event.size, event.error)
            elif isinstance(event, SessionLost):
                logger.info("the server lost session %s: starting it again", self.session_id)
                self._inbox.session_lost()
            elif isinstance(event, SessionStartFailed):
                logger.warning("the server refused the session start: %r", event.error)
            elif isinstance(event, Accepted):
                logger.debug("connection accepted")

    def _handle_state(self, state: ConnectionState) -> None:
        """Called on each state change, in order, no lock held: queue, never run, on_state."""
        logger.debug("state: %s", state.value)
        if state is ConnectionState.CLOSED:
            self._inbox.wake(closed=True)
        self._callback(self.on_state, state)

    def _callback(self, callback: Callable[[Any], object] | None, argument: Any) -> None:
        """Queue ``callback(argument)`` for the callback thread (in order, never here)."""
        if callback is not None:
            self._dispatcher.call(callback, argument)


def _transport_options(
    *,
    ssl_context: object,
    ca_file: object,
    verify_tls: object,
    proxy: object,
) -> dict[str, Any]:
    """Turn the TLS and proxy arguments into websocket-client's connect options."""
    options: dict[str, Any] = {}
    sslopt: dict[str, Any] = {}
    if ssl_context is not None:
        if not isinstance(ssl_context, ssl.SSLContext):
            raise InvalidArgumentTypeError("ssl_context must be an ssl.SSLContext")
        if ca_file is not None:
            raise InvalidArgumentError("pass ssl_context or ca_file, not both")
        sslopt["context"] = ssl_context
    if ca_file is not None:
        if not isinstance(ca_file, (str, os.PathLike)):
            raise InvalidArgumentTypeError("ca_file must be a path")
        if not os.path.isfile(ca_file):
            raise InvalidArgumentError(f"ca_file {os.fspath(ca_file)!r} is not a file")
        sslopt["ca_certs"] = os.fspath(ca_file)
    if not isinstance(verify_tls, bool):
        raise InvalidArgumentTypeError("verify_tls must be a bool")
    if not verify_tls:
        if ssl_context is not None:
            raise InvalidArgumentError("verify_tls=False conflicts with ssl_context: configure it")
        logger.warning("TLS certificate verification is OFF: the connection can be intercepted")
        sslopt.update(cert_reqs=ssl.CERT_NONE, check_hostname=False)
    if sslopt:
        options["sslopt"] = sslopt
    if proxy is not None:
        require_str("proxy", proxy)
        assert isinstance(proxy, str)
        options["proxy"] = parse_proxy(proxy)  # InvalidArgumentError naming the schemes
    # Without proxy=..., the environment's http(s)_proxy / all_proxy / no_proxy apply.
    return options


def _sample_bytes(raw: bytes) -> int:
    """The bytes of samples in a chunk: a WAV chunk's 44-byte header holds none."""
    if raw.startswith(b"RIFF"):
        return max(0, len(raw) - audio.WAV_HEADER_BYTES)
    return len(raw)


def _check_interrupt_via(value: object) -> InterruptVia | None:
    """Validate ``interrupt_via``: None, a callable, or an IM content mapping with a type."""
    if isinstance(value, type):
        raise InvalidArgumentTypeError(
            f"interrupt_via must be a callable(session_id) or a mapping, not the class {value!r}"
        )
    if value is None or callable(value):
        return value
    if not isinstance(value, Mapping):
        raise InvalidArgumentTypeError(
            "interrupt_via must be None, a callable(session_id) or a message content mapping"
        )
    if not isinstance(value.get("type"), str) or not value["type"]:
        raise InvalidArgumentError(
            "interrupt_via needs a string 'type', like families.MODELLED_INTERRUPT"
        )
    check_json_value("interrupt_via", value)
    return MappingProxyType(dict(value))


@attrs.frozen(kw_only=True)
class InterruptReport:
    """What :meth:`AvatarIM.interrupt` did: what it cut, and whether the service was told."""

    cancelled: tuple[str, ...] = ()  #: every message id cut from the outbox, in send order
    cancelled_audio: tuple[str, ...] = ()  #: the audio chunks among them
    cancelled_text: tuple[str, ...] = ()  #: the texts among them (``include_text=True``)
    audio_seconds: float = 0.0  #: the seconds of audio cut
    streams_stopped: int = 0  #: how many running audio streams were stopped
    service_told: bool = False  #: whether the service was told (``interrupt_via``)
    via: str | None = None  #: ``"callable"`` or ``"im"``, when told
    message_id: str | None = None  #: the IM interrupt message's id (``via="im"``)
    result: InterruptResult | None = None  #: the service's interrupt result (``via="im"``)


def _now_ms() -> int:
    """Wall-clock milliseconds, the timestamp in message ids."""
    return time.time_ns() // 1_000_000


def base64_encode(raw: bytes) -> str:
    """Return the standard base64 text of *raw*."""
    return base64.b64encode(raw).decode("ascii")
