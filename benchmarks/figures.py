"""One function per measurement: the SDK side and each baseline, on the reference server.

Every function makes its own connection and session (fresh server state),
measures one bounded run and returns numbers; it raises
:class:`~benchmarks.common.Capped` when its time cap passes first.  The
harness (:mod:`benchmarks.run`) calls them alternately and takes medians.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import attrs
import websocket

from avatar_im import AvatarIM, AvatarIMError, ReconnectPolicy

from .common import (
    APP_ID,
    AUDIO_CHUNK,
    TENANT_ID,
    TEXT,
    TOKEN,
    AckReader,
    BaselineIds,
    Capped,
    Deadline,
    RawClient,
    audio_content,
    client_url,
    cpu_seconds,
    envelope_frame,
    new_session_id,
    start_content,
    text_content,
)
from .servers import ServerProcess

__all__ = [
    "Throughput",
    "floor_text",
    "handwritten_audio",
    "handwritten_text",
    "raw_rtt",
    "raw_session_start",
    "reconnect",
    "sdk_audio",
    "sdk_rtt",
    "sdk_session_start",
    "sdk_text",
    "websockets_audio",
    "websockets_available",
    "websockets_rtt",
    "websockets_text",
    "wsapp_rtt",
]

#: How often (in messages) a send loop looks at its time cap.
CHECK_EVERY = 256


@dataclass(frozen=True)
class Throughput:
    """One throughput run: messages per second (delivered) and client CPU per message."""

    rate: float  #: messages per second, from the first send to the last ack
    cpu_us: float  #: CPU microseconds of the whole client process per message
    send_rate: float = 0.0  #: messages per second for the send loop alone (floor only)


def run_senders(
    loop: Callable[[int], None], n: int, threads: int, deadline: Deadline
) -> list[threading.Thread]:
    """Run *loop* for *n* messages on this thread, or split over *threads* threads.

    Returns the worker threads (empty for one thread), joined up to the deadline.
    """
    if threads == 1:
        loop(n)
        return []
    workers = [
        threading.Thread(target=loop, args=(n // threads,), name=f"bench-sender-{i}")
        for i in range(threads)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(deadline.remaining())
    return workers


# ------------------------------------------------------------------ the SDK


def sdk_client(url: str, *, cap: float, **options: Any) -> AvatarIM:
    """An SDK client with a ready session; *cap* bounds the start and every send wait."""
    client = AvatarIM(
        token=TOKEN,
        app_id=APP_ID,
        tenant_id=TENANT_ID,
        session_id=new_session_id("sdk"),
        url=url,
        send_timeout=cap,
        **options,
    )
    try:
        client.start_session()
        client.wait_session_ready(cap)
    except BaseException:
        client.close()
        raise
    return client


def _sdk_throughput(url: str, n: int, threads: int, cap: float, send: str) -> Throughput:
    client = sdk_client(url, cap=cap)
    deadline = Deadline(cap)
    try:
        if send == "text":
            method: Callable[[], object] = lambda: client.send_text(TEXT)  # noqa: E731
        else:
            method = lambda: client.send_audio(AUDIO_CHUNK)  # noqa: E731

        def loop(count: int) -> None:
            for i in range(count):
                if not i % CHECK_EVERY and deadline.expired():
                    return
                method()

        cpu0 = cpu_seconds()
        t0 = time.perf_counter()
        workers = run_senders(loop, n, threads, deadline)
        if any(worker.is_alive() for worker in workers):
            raise Capped(f"sdk {send} x{threads}: senders still running at the cap")
        deadline.check(f"sdk {send} x{threads}")
        try:
            client.flush(deadline.remaining())
        except AvatarIMError as exc:
            raise Capped(f"sdk {send} x{threads}: {exc}") from exc
        elapsed = time.perf_counter() - t0
        cpu = cpu_seconds() - cpu0
    finally:
        client.close()
    sent = n // threads * threads
    return Throughput(sent / elapsed, cpu / sent * 1e6)


def sdk_text(url: str, n: int, cap: float, threads: int = 1) -> Throughput:
    """``send_text`` *n* times (split over *threads* threads on one client), then ``flush()``."""
    return _sdk_throughput(url, n, threads, cap, "text")


def sdk_audio(url: str, n: int, cap: float) -> Throughput:
    """``send_audio`` of *n* 40 ms chunks, then ``flush()``."""
    return _sdk_throughput(url, n, 1, cap, "audio")


def sdk_rtt(url: str, n: int, cap: float) -> list[float]:
    """``send_text`` + ``wait_ack``, one at a time; return each round trip in seconds."""
    client = sdk_client(url, cap=cap)
    deadline = Deadline(cap)
    times: list[float] = []
    try:
        clock = time.perf_counter
        for _ in range(n):
            t0 = clock()
            client.wait_ack(client.send_text(TEXT), deadline.remaining())
            times.append(clock() - t0)
            deadline.check("sdk round trip")
    except AvatarIMError as exc:
        raise Capped(f"sdk round trip: {exc}") from exc
    finally:
        client.close()
    return times


def sdk_session_start(url: str, n: int, cap: float) -> list[float]:
    """``start_session()`` to ready (``wait_session_ready``), *n* times on one connected client."""
    client = AvatarIM(
        token=TOKEN,
        app_id=APP_ID,
        tenant_id=TENANT_ID,
        session_id=new_session_id("start"),
        url=url,
    )
    deadline = Deadline(cap)
    times: list[float] = []
    try:
        client.wait_connected(cap)
        for _ in range(n):
            t0 = time.perf_counter()
            client.start_session()
            client.wait_session_ready(deadline.remaining())
            times.append(time.perf_counter() - t0)
            deadline.check("sdk session start")
    except AvatarIMError as exc:
        raise Capped(f"sdk session start: {exc}") from exc
    finally:
        client.close()
    return times


# ------------------------------------------------------------------ baseline (a): by hand


def _handwritten(
    url: str, n: int, cap: float, threads: int, content: Callable[[str], dict[str, Any]]
) -> Throughput:
    raw = RawClient(url, timeout=cap)
    deadline = Deadline(cap)
    sent = n // threads * threads
    reader = AckReader(raw.ws, sent)
    try:
        reader.start()
        ws, new_id = raw.ws, raw.ids.new

        def loop(count: int) -> None:
            for i in range(count):
                if not i % CHECK_EVERY and deadline.expired():
                    return
                # What a user writes by hand: the envelope as a dict, json.dumps, send.
                ws.send(envelope_frame(new_id(), content(raw.session_id)))

        cpu0 = cpu_seconds()
        t0 = time.perf_counter()
        run_senders(loop, n, threads, deadline)
        reader.wait(deadline, f"hand-written x{threads}")
        elapsed = time.perf_counter() - t0
        cpu = cpu_seconds() - cpu0
    finally:
        raw.close()
        reader.join(1)
    return Throughput(sent / elapsed, cpu / sent * 1e6)


def handwritten_text(url: str, n: int, cap: float, threads: int = 1) -> Throughput:
    """Baseline (a): ``json.dumps`` of the same envelope + ``ws.send`` per message."""
    return _handwritten(url, n, cap, threads, text_content)


def handwritten_audio(url: str, n: int, cap: float) -> Throughput:
    """Baseline (a) for audio: base64 + ``json.dumps`` + ``ws.send`` per chunk."""

    def content(session_id: str) -> dict[str, Any]:
        return audio_content(session_id, base64.b64encode(AUDIO_CHUNK).decode("ascii"))

    return _handwritten(url, n, cap, 1, content)


def floor_text(url: str, n: int, cap: float) -> Throughput:
    """Baseline (b), the floor: *n* pre-built, pre-masked frames joined into one ``sendall``."""
    raw = RawClient(url, timeout=cap)
    deadline = Deadline(cap)
    reader = AckReader(raw.ws, n)
    try:
        create = websocket.ABNF.create_frame
        text = websocket.ABNF.OPCODE_TEXT
        blob = b"".join(
            create(envelope_frame(raw.ids.new(), text_content(raw.session_id)), text).format()
            for _ in range(n)
        )
        reader.start()
        sock = raw.ws.sock
        assert sock is not None
        cpu0 = cpu_seconds()
        t0 = time.perf_counter()
        sock.sendall(blob)
        t_sent = time.perf_counter()
        reader.wait(deadline, "floor")
        elapsed = time.perf_counter() - t0
        cpu = cpu_seconds() - cpu0
    finally:
        raw.close()
        reader.join(1)
    return Throughput(n / elapsed, cpu / n * 1e6, n / max(t_sent - t0, 1e-9))


def raw_session_start(url: str, n: int, cap: float) -> list[float]:
    """By hand: send a ``start`` frame, read until ``startResult``; *n* times."""
    raw = RawClient(url, timeout=cap)
    deadline = Deadline(cap)
    try:
        times = []
        for _ in range(n):
            times.append(raw.start_session())
            deadline.check("raw session start")
        return times
    finally:
        raw.close()


# ------------------------------------------------------------------ round-trip baselines


def raw_rtt(url: str, n: int, cap: float) -> list[float]:
    """Same thread, by hand: ``ws.send`` then ``ws.recv`` until this message's ack."""
    raw = RawClient(url, timeout=cap)
    deadline = Deadline(cap)
    ws = raw.ws
    times: list[float] = []
    try:
        clock = time.perf_counter
        for _ in range(n):
            message_id = raw.ids.new()
            t0 = clock()
            ws.send(envelope_frame(message_id, text_content(raw.session_id)))
            while True:
                data = ws.recv()
                if data[:1] == "6" and json.loads(data[1:])["messageId"] == message_id:
                    break
                deadline.check("raw round trip")
            times.append(clock() - t0)
            deadline.check("raw round trip")
    finally:
        raw.close()
    return times


class _AppWaiter:
    """The on_message side of the WebSocketApp baseline: signals the ack being waited for."""

    def __init__(self) -> None:
        self.opened = threading.Event()
        self.started = threading.Event()
        self.acked = threading.Event()
        self.expected = ""

    def on_message(self, app: websocket.WebSocketApp, data: str) -> None:
        kind = data[:1]
        if kind == "6":
            if json.loads(data[1:])["messageId"] == self.expected:
                self.acked.set()
        elif kind == "1":
            self.opened.set()
        elif kind == "5" and '"startResult"' in data:
            self.started.set()


def wsapp_rtt(url: str, n: int, cap: float) -> list[float]:
    """``WebSocketApp`` with its reader thread: send a frame, wait for its ack to be handed over."""
    waiter = _AppWaiter()
    app = websocket.WebSocketApp(client_url(url), on_message=waiter.on_message)
    # run_forever's thread: reads frames and calls on_message; ends when app.close() closes.
    runner = threading.Thread(
        target=app.run_forever, kwargs={"suppress_origin": True}, name="bench-wsapp", daemon=True
    )
    runner.start()
    deadline = Deadline(cap)
    session_id = new_session_id("wsapp")
    times: list[float] = []
    ids = BaselineIds()
    try:
        if not waiter.opened.wait(cap):
            raise Capped("wsapp: not connected")
        app.send(envelope_frame(ids.new(), start_content(session_id)))
        if not waiter.started.wait(deadline.remaining()):
            raise Capped("wsapp: no startResult")
        clock = time.perf_counter
        for _ in range(n):
            message_id = ids.new()
            frame = envelope_frame(message_id, text_content(session_id))
            waiter.acked.clear()
            waiter.expected = message_id
            t0 = clock()
            app.send(frame)
            if not waiter.acked.wait(deadline.remaining()):
                raise Capped("wsapp round trip: no ack")
            times.append(clock() - t0)
    finally:
        app.close()
        runner.join(2)
    return times


# ------------------------------------------------------------------ reconnect


@attrs.frozen(kw_only=True)
class _RecordingPolicy(ReconnectPolicy):
    """The default policy, recording every delay it gives the SDK, with when it gave it."""

    draws: list[tuple[float, float]] = attrs.field(factory=list, eq=False)

    def delay(self, attempt: int, random: float) -> float:
        value = super().delay(attempt, random)
        self.draws.append((time.monotonic(), value))
        return value


@dataclass(frozen=True)
class Reconnect:
    """One restart: server's return to the first ack, and what the backoff made the SDK wait."""

    seconds: float  #: from the server's return to the first ack
    first_delay: float  #: the delay the policy drew for the first attempt
    overhead: float  #: the part not spent waiting in the backoff (connect, resend, ack)
    attempts: int  #: connection attempts it took


def reconnect(server: ServerProcess, n: int, cap: float) -> list[Reconnect]:
    """Restart the reference server *n* times; time its return to the SDK's first ack."""
    policy = _RecordingPolicy()
    client = sdk_client(server.url, cap=cap, reconnect=policy)
    results = []
    try:
        for _ in range(n):
            deadline = Deadline(cap)
            client.wait_ack(client.send_text(TEXT), cap)  # connected and acking before
            policy.draws.clear()
            returned = server.restart()
            message_id = client.send_text(TEXT)
            try:
                client.wait_ack(message_id, deadline.remaining())
            except AvatarIMError as exc:
                raise Capped(f"reconnect: {exc}") from exc
            acked = time.monotonic()
            draws = list(policy.draws)
            if not draws:
                raise RuntimeError("reconnect: the SDK asked its policy for no delay")
            began, delay = draws[-1]
            waited_until = max(returned, began + delay)
            results.append(
                Reconnect(acked - returned, draws[0][1], acked - waited_until, len(draws))
            )
    finally:
        client.close()
    return results


# ------------------------------------------------------------------ baseline: websockets


def websockets_available() -> bool:
    """True when ``websockets`` (its threaded client, ``websockets.sync.client``) is installed."""
    try:
        import websockets.sync.client  # noqa: F401
    except ImportError:
        return False
    return True


class WebsocketsClient:
    """A ``websockets.sync.client`` connection with a started session, written as a user would."""

    def __init__(self, url: str, *, timeout: float) -> None:
        from websockets.sync.client import connect

        self.session_id = new_session_id("wsk")
        self.ids = BaselineIds()
        self.timeout = timeout
        # compression=None: the SDK does not offer permessage-deflate either.
        self.ws = connect(client_url(url), compression=None, open_timeout=timeout, close_timeout=1)
        try:
            first = self.ws.recv(timeout)
            if first != "1":
                raise RuntimeError(f"expected the accept frame 1, got {first!r}")
            self.ws.send(envelope_frame(self.ids.new(), start_content(self.session_id)))
            deadline = Deadline(timeout)
            while True:
                data = self.ws.recv(deadline.remaining())
                if isinstance(data, str) and data[:1] == "5" and '"startResult"' in data:
                    break
        except BaseException:
            self.ws.close()
            raise

    def close(self) -> None:
        """Close the connection (bounded by close_timeout)."""
        self.ws.close()


class _WebsocketsAcks(threading.Thread):
    """Reads every frame with ``recv()`` and counts acks, until *expected* (as AckReader)."""

    def __init__(self, ws: Any, expected: int, timeout: float) -> None:
        super().__init__(name="bench-wsk-reader", daemon=True)
        self._ws = ws
        self._timeout = timeout
        self.expected = expected
        self.acked = 0
        self.done = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        recv, loads, timeout = self._ws.recv, json.loads, self._timeout
        try:
            while self.acked < self.expected:
                data = recv(timeout)
                if data[:1] == "6":
                    loads(data[1:])
                    self.acked += 1
        except BaseException as exc:  # timed out or closed: report, never hang
            self.error = exc
        finally:
            self.done.set()

    def wait(self, deadline: Deadline, what: str) -> None:
        if not self.done.wait(deadline.remaining()) or self.acked < self.expected:
            raise Capped(f"{what}: {self.acked}/{self.expected} acks ({self.error!r})")


def _websockets_throughput(
    url: str, n: int, cap: float, threads: int, content: Callable[[str], dict[str, Any]]
) -> Throughput:
    client = WebsocketsClient(url, timeout=cap)
    deadline = Deadline(cap)
    sent = n // threads * threads
    reader = _WebsocketsAcks(client.ws, sent, cap)
    try:
        reader.start()
        send, new_id = client.ws.send, client.ids.new

        def loop(count: int) -> None:
            for i in range(count):
                if not i % CHECK_EVERY and deadline.expired():
                    return
                send(envelope_frame(new_id(), content(client.session_id)))

        cpu0 = cpu_seconds()
        t0 = time.perf_counter()
        run_senders(loop, n, threads, deadline)
        reader.wait(deadline, f"websockets x{threads}")
        elapsed = time.perf_counter() - t0
        cpu = cpu_seconds() - cpu0
    finally:
        client.close()
        reader.join(1)
    return Throughput(sent / elapsed, cpu / sent * 1e6)


def websockets_text(url: str, n: int, cap: float, threads: int = 1) -> Throughput:
    """``websockets.sync.client``: ``json.dumps`` of the envelope + ``send``, a reader thread."""
    return _websockets_throughput(url, n, cap, threads, text_content)


def websockets_audio(url: str, n: int, cap: float) -> Throughput:
    """``websockets.sync.client`` for audio: base64 + ``json.dumps`` + ``send`` per chunk."""

    def content(session_id: str) -> dict[str, Any]:
        return audio_content(session_id, base64.b64encode(AUDIO_CHUNK).decode("ascii"))

    return _websockets_throughput(url, n, cap, 1, content)


def websockets_rtt(url: str, n: int, cap: float) -> list[float]:
    """``websockets.sync.client``, same thread: ``send`` then ``recv`` until this ack."""
    client = WebsocketsClient(url, timeout=cap)
    deadline = Deadline(cap)
    ws = client.ws
    times: list[float] = []
    try:
        clock = time.perf_counter
        for _ in range(n):
            message_id = client.ids.new()
            t0 = clock()
            ws.send(envelope_frame(message_id, text_content(client.session_id)))
            while True:
                data = ws.recv(deadline.remaining())
                if data[:1] == "6" and json.loads(data[1:])["messageId"] == message_id:
                    break
            times.append(clock() - t0)
            deadline.check("websockets round trip")
    except TimeoutError as exc:
        raise Capped(f"websockets round trip: {exc}") from exc
    finally:
        client.close()
    return times
