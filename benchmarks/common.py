"""Shared pieces of the benchmarks: constants, clocks, statistics, the machine, raw frames.

The baselines build their frames here by hand, with ``json``, exactly as a user
of ``websocket-client`` would; :func:`check_frames` proves at start-up that they
are byte for byte the frames the SDK sends, so both sides give the reference
server identical work.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import platform
import resource
import secrets
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import websocket

from avatar_im.packets import encode_envelope

__all__ = [
    "APP_ID",
    "AUDIO_CHUNK",
    "TENANT_ID",
    "TEXT",
    "TOKEN",
    "AckReader",
    "BaselineIds",
    "Capped",
    "Deadline",
    "RawClient",
    "audio_content",
    "check_frames",
    "client_url",
    "cpu_seconds",
    "envelope_frame",
    "machine_info",
    "median",
    "new_session_id",
    "percentile",
    "rss_kb",
    "start_content",
    "text_content",
]

TOKEN = "bench-token"
APP_ID = "bench-app"
TENANT_ID = "bench-tenant"
#: The text every text figure sends (a small frame, about 230 bytes with its envelope).
TEXT = "hello avatar, how is the weather today?"
#: 40 ms of 16 kHz 16-bit mono PCM: 1280 bytes (a deterministic pattern, even length).
AUDIO_CHUNK = bytes(range(256)) * 5

_session_seq = itertools.count(1)
_session_prefix = secrets.token_hex(3)


class Capped(Exception):
    """A measurement hit its time cap (or lost its connection) and produced no number."""


class Deadline:
    """A hard time cap for one measurement."""

    def __init__(self, seconds: float) -> None:
        self.end = time.perf_counter() + seconds

    def remaining(self) -> float:
        """Seconds left (never negative)."""
        return max(0.0, self.end - time.perf_counter())

    def expired(self) -> bool:
        """True once the cap has passed."""
        return time.perf_counter() >= self.end

    def check(self, what: str) -> None:
        """Raise :class:`Capped` once the cap has passed."""
        if self.expired():
            raise Capped(f"{what}: time cap reached")


def new_session_id(prefix: str = "bench") -> str:
    """A fresh session id, so that no measurement shares server state with another."""
    return f"{prefix}-{_session_prefix}-{next(_session_seq)}"


def client_url(base: str) -> str:
    """The connection URL with the benchmark's credentials, as the SDK builds it."""
    return f"{base}?t={TOKEN}&app={APP_ID}&tenant={TENANT_ID}"


# ------------------------------------------------------------------ numbers


def median(values: Sequence[float]) -> float:
    """The median of *values*, NaN if any is NaN or there are none."""
    if not values or any(math.isnan(v) for v in values):
        return math.nan
    return float(statistics.median(values))


def percentile(values: Sequence[float], fraction: float) -> float:
    """The *fraction* percentile (nearest rank) of *values*, NaN if there are none."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1))
    return ordered[rank]


def cpu_seconds() -> float:
    """User + system CPU seconds used by this process (all its threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_kb() -> int:
    """This process's resident set size in KiB (VmRSS from /proc/self/status)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def machine_info() -> dict[str, str]:
    """The machine the numbers come from."""
    model = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "python": f"{platform.python_implementation()} {sys.version.split()[0]}",
        "platform": platform.platform(),
        "websocket-client": websocket.__version__,
    }


# ------------------------------------------------------------------ frames


_json_dumps = json.dumps


def envelope_frame(message_id: str, content: dict[str, Any]) -> str:
    """The ``5`` frame of the business envelope, written by hand with ``json.dumps``."""
    return "5" + _json_dumps(
        {
            "messageId": message_id,
            "receiverAppId": APP_ID,
            "receiverId": "ability",
            "receiverType": "server",
            "sticky": True,
            "content": content,
        },
        separators=(",", ":"),
        ensure_ascii=False,
    )


def text_content(session_id: str, text: str = TEXT) -> dict[str, Any]:
    """The ``dataSend`` content carrying *text*."""
    return {"type": "dataSend", "sessionId": session_id, "text": text}


def audio_content(session_id: str, audio_base64: str) -> dict[str, Any]:
    """The ``dataSend`` content carrying base64 audio."""
    return {"type": "dataSend", "sessionId": session_id, "audio": audio_base64}


def start_content(session_id: str) -> dict[str, Any]:
    """The ``start`` content the SDK sends for ``start_session()`` with default options."""
    return {
        "type": "start",
        "sessionId": session_id,
        "dialogMode": "aliYunChat",
        "duplexMode": "cloud",
        "outputMode": "video",
        "videoOpen": "0",
        "format": "pcm",
        "sampleRate": "16000",
    }


class BaselineIds:
    """Message ids of the SDK's shape (``msg_<ms>_<16 hex>_<seq>``), so frames have equal sizes."""

    def __init__(self) -> None:
        self._instance = secrets.token_hex(8)
        self._counter = itertools.count(1)

    def new(self) -> str:
        """A fresh id stamped with the wall clock, as the SDK stamps its own."""
        return f"msg_{time.time_ns() // 1_000_000}_{self._instance}_{next(self._counter)}"


def check_frames() -> None:
    """Fail loudly if the hand-written frames differ from the SDK's (they must be identical)."""
    import base64

    from avatar_im.options import SessionOptions

    session_id = "check-session"
    message_id = BaselineIds().new()
    audio = base64.b64encode(AUDIO_CHUNK).decode("ascii")
    wire_start = {"type": "start", "sessionId": session_id, **SessionOptions().to_wire()}
    pairs = [
        (text_content(session_id), text_content(session_id)),
        (audio_content(session_id, audio), audio_content(session_id, audio)),
        (start_content(session_id), wire_start),
    ]
    for ours, sdk in pairs:
        mine = envelope_frame(message_id, ours)
        theirs = encode_envelope(message_id, APP_ID, sdk)
        if mine != theirs:
            raise AssertionError(f"baseline frame differs from the SDK's:\n{mine}\n{theirs}")


# ------------------------------------------------------------------ raw clients


class RawClient:
    """A hand-written ``websocket-client`` connection with a started session."""

    def __init__(self, url: str, *, timeout: float) -> None:
        self.session_id = new_session_id("raw")
        self.timeout = timeout
        self.ids = BaselineIds()
        self.ws = websocket.create_connection(
            client_url(url), timeout=timeout, enable_multithread=True, suppress_origin=True
        )
        try:
            first = self.ws.recv()
            if first != "1":
                raise RuntimeError(f"expected the accept frame 1, got {first!r}")
            self.start_session()
        except BaseException:
            self.ws.close()
            raise

    def start_session(self) -> float:
        """Send ``start`` and read until ``startResult``; return the seconds it took."""
        frame = envelope_frame(self.ids.new(), start_content(self.session_id))
        deadline = Deadline(self.timeout)
        t0 = time.perf_counter()
        self.ws.send(frame)
        while True:
            deadline.check("raw start")
            data = self.ws.recv()
            if isinstance(data, str) and data[:1] == "5" and '"startResult"' in data:
                body = json.loads(data[1:])
                if body["content"]["type"] == "startResult":
                    return time.perf_counter() - t0

    def close(self) -> None:
        """Close the connection (best effort, bounded by the socket timeout)."""
        try:
            self.ws.close(timeout=1)
        except (OSError, websocket.WebSocketException):
            self.ws.shutdown()  # type: ignore[no-untyped-call]


class AckReader(threading.Thread):
    """The baselines' reader thread: reads every frame, parses acks, until *expected* acks."""

    def __init__(self, ws: websocket.WebSocket, expected: int) -> None:
        super().__init__(name="bench-ack-reader", daemon=True)
        self._ws = ws
        self.expected = expected
        self.acked = 0
        self.refused = 0
        self.done = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        recv = self._ws.recv
        loads = json.loads
        try:
            while self.acked < self.expected:
                data = recv()
                if data[:1] == "6":
                    body = loads(data[1:])
                    if "error" in body:
                        self.refused += 1
                    self.acked += 1
        except BaseException as exc:  # the socket timed out or closed: report, never hang
            self.error = exc
        finally:
            self.done.set()

    def wait(self, deadline: Deadline, what: str) -> None:
        """Wait for every ack within *deadline*, or raise :class:`Capped`."""
        if not self.done.wait(deadline.remaining()) or self.acked < self.expected:
            raise Capped(f"{what}: {self.acked}/{self.expected} acks ({self.error!r})")
        if self.refused:
            raise RuntimeError(f"{what}: the server refused {self.refused} message(s)")
