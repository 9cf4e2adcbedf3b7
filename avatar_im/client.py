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
import collections
import logging
import math
import os
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import attrs

from . import audio, forks
from .audio import AudioSource, AudioStream
from .backoff import ReconnectPolicy
from .connection import Connection, ConnectionState
from .dial import parse_proxy
from .dispatch import Dispatcher
from .exceptions import (
    AckError,
    AckTimeout,
    AudioFormatError,
    AvatarIMError,
    ClientClosedError,
    ConnectTimeout,
    ForkedClientError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    MessageDiscardedError,
    OutboxFullError,
    ReceiveTimeout,
    SessionNotStartedError,
    SessionReadyTimeout,
    SessionStartError,
    UnknownMessageError,
)
from .ids import MessageIdFactory
from .options import SessionOptions, refresh_fields
from .protocol import (
    Accepted,
    Acked,
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

__all__ = ["AvatarIM", "ClientStats"]

logger = logging.getLogger(__name__)

T_id = TypeVar("T_id")

#: The shortest heartbeat interval accepted (seconds): below it the pings alone busy the CPU.
MIN_HEARTBEAT = 0.01

MessageCallback = Callable[[dict[str, Any]], object]
AckErrorCallback = Callable[[AckError], object]
StateCallback = Callable[[ConnectionState], object]
Matcher = Callable[[dict[str, Any]], bool]


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
    """What renews an instance's token (``aliyun.AvatarOpenAPI``)."""

    def query_running_instance(self, session_id: str) -> InstanceLike | None: ...


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


def _require_str(name: str, value: object, *, empty_ok: bool = False) -> str:
    if not isinstance(value, str):
        raise InvalidArgumentTypeError(f"{name} must be a str, got {type(value).__name__}")
    if not value and not empty_ok:
        raise InvalidArgumentError(f"{name} must not be empty")
    return value


def _require_timeout(name: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgumentTypeError(
            f"{name} must be a number or None, got {type(value).__name__}"
        )
    if not math.isfinite(value) or value > threading.TIMEOUT_MAX:
        raise InvalidArgumentError(
            f"{name} must be a finite number of seconds (or None for no limit), got {value!r}"
        )
    if value < 0:
        raise InvalidArgumentError(f"{name} must be >= 0, got {value!r}")
    return float(value)


def _require_callable(name: str, value: object) -> None:
    if value is not None and not callable(value):
        raise InvalidArgumentTypeError(f"{name} must be callable or None")


class AvatarIM:
    """A client for one avatar session over the IM WebSocket channel.

    Creating it connects in the background, like the original SDK; sends made
    before the connection (or the session) is ready are queued, in order::

        with AvatarIM(token=..., app_id=..., tenant_id=..., session_id=...,
                      url="ws://127.0.0.1:8765/ws") as client:
            client.start_session(format="pcm", sample_rate=16000)
            client.wait_session_ready(timeout=5)
            client.send_text("hello")
            print(client.receive(timeout=5))

    Thread-safe: any number of threads may call the send methods at once.
    Callbacks run on the client's callback thread, one at a time and in order;
    they may block or call any method without stalling the connection.

    *token_provider*, a callable returning a token, is asked for a fresh one
    before every connect but the first (before the first too when *token* is
    not given).  With it, a handshake refused for the credentials (401/403) or
    a ``2`` with ``CONNECTION_TIMEOUT`` renews the token, starts the session
    again and resends what is unacknowledged, instead of closing for good.  It
    runs on the reader thread; keep it bounded (an HTTP call with a timeout).
    """

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
        Other keyword arguments go to :class:`AvatarIM`.
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
    ) -> None:
        _require_callable("token_provider", token_provider)
        if token is None and token_provider is None:
            raise InvalidArgumentError("pass token=..., or token_provider=... to fetch one")
        if token is not None:
            _require_str("token", token)
        for name, value in (("app_id", app_id), ("tenant_id", tenant_id)):
            _require_str(name, value)
        _require_str("session_id", session_id)
        _require_str("url", url)
        for name, cb in (
            ("on_message", on_message),
            ("on_event", on_event),
            ("on_ack_error", on_ack_error),
            ("on_state", on_state),
        ):
            _require_callable(name, cb)
        heartbeat_interval = _require_timeout("heartbeat_interval", heartbeat_interval)
        if heartbeat_interval is not None and heartbeat_interval < MIN_HEARTBEAT:
            raise InvalidArgumentError(
                f"heartbeat_interval must be at least {MIN_HEARTBEAT}s, or None to turn it off"
            )
        connect_timeout_s = _require_timeout("connect_timeout", connect_timeout)
        if not connect_timeout_s:
            raise InvalidArgumentError("connect_timeout must be > 0")
        if reconnect is not None and not isinstance(reconnect, ReconnectPolicy):
            raise InvalidArgumentTypeError("reconnect must be a ReconnectPolicy or None")
        for name, number in (
            ("max_outbox", max_outbox),
            ("receive_buffer", receive_buffer),
            ("dedupe_capacity", dedupe_capacity),
            ("dedupe_max_bytes", 1 if dedupe_max_bytes is None else dedupe_max_bytes),
        ):
            if isinstance(number, bool) or not isinstance(number, int):
                raise InvalidArgumentTypeError(f"{name} must be an int")
            if number < 1:
                raise InvalidArgumentError(f"{name} must be >= 1, got {number}")
        if id_factory is not None and not callable(getattr(id_factory, "new", None)):
            raise InvalidArgumentTypeError("id_factory must have a new(now_ms) method")
        self._send_timeout = _require_timeout("send_timeout", send_timeout)
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

        # The pull API's buffers; _inbox_lock guards both deques and _inbound_dropped.
        # Bounded: when full the oldest entry goes, counted and logged.
        self._inbox_lock = threading.Condition()
        self._messages: collections.deque[dict[str, Any]] = collections.deque()
        self._events: collections.deque[dict[str, Any]] = collections.deque()
        self._receive_buffer = receive_buffer
        self._inbound_dropped = 0

        protocol = ClientProtocol(
            app_id=app_id,
            session_id=session_id,
            heartbeat_interval=heartbeat_interval,
            require_acks=require_acks,
            max_outbox=max_outbox,
            dedupe_capacity=dedupe_capacity,
            dedupe_max_bytes=dedupe_max_bytes,
            id_factory=id_factory,
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
        timeout = _require_timeout("timeout", timeout)
        # Atomic: of two connect() calls at once, one starts the connection; a connect()
        # on a live client changes nothing (it never resets a session or an outbox).
        if self._connection.start(prepare=lambda p: p.reopen()):
            self._opened = True
        if timeout is not None:
            self.wait_connected(timeout)

    def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until the connection is open; raise why it cannot be, or a timeout."""
        timeout = _require_timeout("timeout", timeout)
        self._not_on_reader("wait_connected")
        connection = self._connection
        connection.wait_for(lambda p: p.connected, timeout)
        with connection.lock:
            if connection.protocol.connected:
                return
        self._raise_if_closed()
        raise ConnectTimeout(f"not connected after {timeout}s")

    def close(self) -> None:
        """Close the connection; returns within about a second and leaves no thread running.

        Messages still waiting for an ack are discarded (call :meth:`flush`
        first to wait for them): :meth:`wait_ack` on one raises
        :class:`MessageDiscardedError`.  Later calls raise
        :class:`ClientClosedError`.  Safe from any thread and from callbacks;
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
        with self._inbox_lock:
            self._inbox_lock.notify_all()
        self._dispatcher.stop(max(0.0, deadline - time.monotonic()))

    def _after_fork_in_child(self) -> None:
        """In a forked child: fresh locks, no threads; the connection refuses use (see .forks)."""
        self._inbox_lock = threading.Condition()
        self._messages.clear()  # the parent's to process, not ours
        self._events.clear()
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
    def start_result(self) -> dict[str, Any] | None:
        """The envelope of the current session's ``startResult``, once it arrived."""
        return self._connection.locked(lambda p: p.start_result)

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
                inbound_dropped=self._inbound_dropped,
                rate_limited=c.rate_limited,
                session_restarts=connection.protocol.session_restarts,
                callback_errors=self._dispatcher.errors,
                callbacks_dropped=self._dispatcher.dropped,
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
        return self._submit(lambda p: p.start_session(session_options, _now_ms()))

    def wait_session_ready(self, timeout: float | None = None) -> dict[str, Any]:
        """Wait for ``startResult`` and return its envelope.

        Raises :class:`SessionReadyTimeout` after *timeout* seconds,
        :class:`SessionStartError` if the server refused the start, and
        :class:`SessionNotStartedError` if no session is starting.
        """
        timeout = _require_timeout("timeout", timeout)
        self._not_on_reader("wait_session_ready")
        connection = self._connection
        connection.wait_for(lambda p: p.session_state is not SessionState.STARTING, timeout)
        with connection.lock:
            state = connection.protocol.session_state
            error = connection.protocol.start_error
            result = connection.protocol.start_result
        if state is SessionState.READY and result is not None:
            return result
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

    # ----------------------------------------------------------------- sends

    def send_text(self, text: str) -> str:
        """Send *text* to the avatar; returns the message id."""
        _require_str("text", text)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidArgumentError(f"text is not valid Unicode: {exc.reason}") from None
        content = {"type": "dataSend", "sessionId": self.session_id, "text": text}
        return self._submit_message(content, session=True)

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
        encoded = self._audio_base64(data, base64)
        content = {"type": "dataSend", "sessionId": self.session_id, "audio": encoded}
        return self._submit_message(content, session=True)

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
        _require_callable("on_progress", on_progress)
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

    def _stop_audio_streams(self, *, join: bool, timeout: float = 0.5) -> None:
        """Stop the running audio streams; with *join*, wait up to *timeout* for them all."""
        with self._audio_lock:
            streams = list(self._audio_streams)
        deadline = time.monotonic() + timeout
        for stream in streams:
            stream.stop(timeout=max(0.0, deadline - time.monotonic()) if join else 0)

    def send_message(self, content: Any) -> str:
        """Send *content* wrapped in the business envelope; returns the message id."""
        if content is None:
            raise InvalidArgumentError("content must not be None")
        return self._submit_message(content, session=False)

    def send(self, frame: str) -> str | None:
        """Send a raw frame string as it is; returns its ``messageId`` if it is a ``5`` frame."""
        _require_str("frame", frame)
        return self._submit(lambda p: p.send_raw(frame, self._max_message_size))

    def _audio_base64(self, data: object, encoded: object) -> str:
        if (data is None) == (encoded is None):
            raise InvalidArgumentError("pass exactly one of data (bytes or array) or base64 (str)")
        if encoded is not None:
            _require_str("base64", encoded)
            assert isinstance(encoded, str)
            try:
                raw = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                raise InvalidArgumentError("base64 is not a valid base64 string") from None
            self._check_pcm(raw)
            return encoded
        if audio.is_array(data):
            raw = audio.chunk_to_pcm(data)
            options = self._connection.protocol.session_options
            if options is not None and options.format == "wav":
                raw = audio.wav_bytes(raw, options.sample_rate)
            return base64_encode(raw)
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InvalidArgumentTypeError(
                f"audio data must be bytes or a NumPy array, got {type(data).__name__}"
            )
        raw = bytes(data)
        self._check_pcm(raw)
        return base64_encode(raw)

    def _check_pcm(self, raw: bytes) -> None:
        if not raw:
            raise AudioFormatError("audio must not be empty")
        options = self._connection.protocol.session_options
        if (options is None or options.format == "pcm") and len(raw) % audio.BYTES_PER_SAMPLE:
            raise AudioFormatError(f"16-bit PCM needs an even number of bytes, got {len(raw)}")

    def _submit_message(self, content: Any, *, session: bool) -> str:
        """Encode *content* off the lock, then queue it (as session data if *session*)."""
        protocol = self._connection.protocol
        prepared = protocol.prepare(content, _now_ms(), self._max_message_size)
        if session:
            return self._submit(lambda p: p.session_message(prepared))
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
        if it was dropped unacknowledged by :meth:`close`, and
        :class:`UnknownMessageError` for an id this client did not send (or
        whose outcome it no longer remembers: the last
        ``max(4096, max_outbox)`` outcomes are kept).
        """
        _require_str("message_id", message_id)
        timeout = _require_timeout("timeout", timeout)
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
        timeout = _require_timeout("timeout", timeout)
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
        self, timeout: float | None = None, *, match: Matcher | None = None
    ) -> dict[str, Any]:
        """Return the next business message from the server (its envelope), waiting if needed.

        With *match*, return the oldest message for which ``match(message)`` is
        true and leave the others buffered for other callers: several threads
        can each wait for their own reply, for example
        ``receive(5, match=lambda m: m["content"].get("replyTo") == message_id)``.
        *match* runs with the receive buffer locked: keep it a quick, pure test
        of the message.

        Raises :class:`ReceiveTimeout` after *timeout* seconds and
        :class:`ClientClosedError` once the client is closed and nothing is left.
        """
        return self._pull(self._messages, timeout, match)

    def receive_event(
        self, timeout: float | None = None, *, match: Matcher | None = None
    ) -> dict[str, Any]:
        """Return the next event (packet ``7``) from the server, waiting if needed."""
        return self._pull(self._events, timeout, match)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Yield business messages as they arrive, until the client is closed."""
        while True:
            try:
                yield self.receive()
            except ClientClosedError:
                return
            except AvatarIMError:
                return

    def _pull(
        self,
        buffer: collections.deque[dict[str, Any]],
        timeout: float | None,
        match: Matcher | None,
    ) -> dict[str, Any]:
        timeout = _require_timeout("timeout", timeout)
        _require_callable("match", match)
        if self._connection.on_reader_thread():
            timeout = 0  # never a wait on the thread that fills the buffer
        found: list[dict[str, Any]] = []

        def ready() -> bool:
            if match is None:
                if buffer:
                    found.append(buffer.popleft())
            else:
                # The oldest match, found and removed in one pass (the buffer is bounded).
                for index, item in enumerate(buffer):
                    if match(item):
                        del buffer[index]
                        found.append(item)
                        break
            return bool(found) or self.closed

        with self._inbox_lock:
            if not self._inbox_lock.wait_for(ready, timeout):
                raise ReceiveTimeout(f"nothing received within {timeout}s")
            if found:
                return found[0]
        self._raise_if_closed()
        raise ClientClosedError("the client is closed")  # pragma: no cover - closed above

    def _buffer(self, buffer: collections.deque[dict[str, Any]], item: dict[str, Any]) -> None:
        with self._inbox_lock:
            if len(buffer) >= self._receive_buffer:
                buffer.popleft()
                self._inbound_dropped += 1
                if self._inbound_dropped == 1 or self._inbound_dropped % 1000 == 0:
                    logger.warning(
                        "receive buffer full (%d): dropped the oldest (%d so far); "
                        "call receive() or raise receive_buffer",
                        self._receive_buffer,
                        self._inbound_dropped,
                    )
            buffer.append(item)
            self._inbox_lock.notify_all()

    # ----------------------------------------------------------- the reader

    def _handle_events(self, events: list[Event]) -> None:
        """Called on the reader thread, no lock held: feed buffers, queue callbacks.

        Never runs application code here (see :mod:`.dispatch`).
        """
        for event in events:
            if isinstance(event, MessageReceived):
                self._buffer(self._messages, event.message)
                self._callback(self.on_message, event.message)
            elif isinstance(event, SessionReady):
                logger.debug("session %s ready", self.session_id)
            elif isinstance(event, Acked):
                if event.error is not None:
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
                self._buffer(self._events, event.event)
                self._callback(self.on_event, event.event)
            elif isinstance(event, GarbageReceived):
                logger.warning("dropped a bad frame (%d chars): %s", event.size, event.error)
            elif isinstance(event, SessionLost):
                logger.info("the server lost session %s: starting it again", self.session_id)
            elif isinstance(event, SessionStartFailed):
                logger.warning("the server refused the session start: %r", event.error)
            elif isinstance(event, Accepted):
                logger.debug("connection accepted")

    def _handle_state(self, state: ConnectionState) -> None:
        """Called on each state change, in order, no lock held: queue, never run, on_state."""
        logger.debug("state: %s", state.value)
        if state is ConnectionState.CLOSED:
            with self._inbox_lock:
                self._inbox_lock.notify_all()
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
        _require_str("proxy", proxy)
        assert isinstance(proxy, str)
        parsed = parse_proxy(proxy) if proxy.startswith("http://") else None
        if parsed is None:
            raise InvalidArgumentError("proxy must look like http://[user:password@]host:port")
        options["proxy"] = parsed
    # Without proxy=..., the environment's http_proxy / https_proxy / no_proxy apply.
    return options


def _now_ms() -> int:
    """Wall-clock milliseconds, the timestamp in message ids."""
    return time.time_ns() // 1_000_000


def base64_encode(raw: bytes) -> str:
    """Return the standard base64 text of *raw*."""
    return base64.b64encode(raw).decode("ascii")
