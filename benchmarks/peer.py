"""The peer: python-socketio's sync client against its own server (another process).

The server (:func:`benchmarks.servers._serve_socketio`) is python-socketio in
``threading`` mode on Werkzeug's threaded WSGI server, with simple-websocket
for the WebSocket transport.  The client connects with the WebSocket
transport only (no long-polling), as a fair peer of a WebSocket SDK.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from .common import TEXT, Capped, Deadline
from .servers import ServerProcess

__all__ = ["available", "connect", "disconnect", "socketio_call_rtt", "socketio_emits"]


def available() -> bool:
    """True when python-socketio's client and simple-websocket are installed."""
    try:
        import simple_websocket  # type: ignore[import-untyped]  # noqa: F401
        import socketio  # type: ignore[import-untyped]  # noqa: F401
        import websocket  # noqa: F401
    except ImportError:
        return False
    return True


def connect(server: ServerProcess, cap: float) -> Any:
    """A python-socketio sync client connected to *server* over WebSocket only."""
    import socketio

    client = socketio.Client(reconnection=False)
    client.connect(server.http_url, transports=["websocket"], wait_timeout=cap)
    return client


def disconnect(client: Any, timeout: float = 5.0) -> None:
    """Disconnect *client*, waiting at most *timeout* seconds (it can take seconds)."""
    # Runs the client's disconnect(), which can wait seconds for its own threads; ends then.
    closer = threading.Thread(target=client.disconnect, name="bench-sio-close", daemon=True)
    closer.start()
    closer.join(timeout)


def socketio_emits(client: Any, n: int, cap: float) -> tuple[float, float]:
    """``emit`` *n* messages; return (emits/s of the emit loop, delivered messages/s).

    ``emit`` only queues the packet for python-engineio's writer thread, so the
    emit loop's rate says little; delivered (until the server's handler has
    counted all *n*, polled with ``call``) is the same end point as the SDK's
    ``flush()``, and is what the table compares.
    """
    deadline = Deadline(cap)
    base = client.call("count", timeout=cap)
    emit = client.emit
    t0 = time.perf_counter()
    for i in range(n):
        if not i % 256:
            deadline.check("socketio emits")
        emit("msg", TEXT)
    t_sent = time.perf_counter()
    while client.call("count", timeout=max(0.01, deadline.remaining())) < base + n:
        deadline.check("socketio delivery")
        time.sleep(0.0005)
    t_done = time.perf_counter()
    return n / (t_sent - t0), n / (t_done - t0)


def socketio_call_rtt(client: Any, n: int, cap: float) -> list[float]:
    """``call("echo", text)`` one at a time; return each round trip in seconds."""
    from socketio.exceptions import (  # type: ignore[import-untyped]
        TimeoutError as CallTimeout,
    )

    deadline = Deadline(cap)
    times: list[float] = []
    try:
        clock = time.perf_counter
        for _ in range(n):
            t0 = clock()
            client.call("echo", TEXT, timeout=max(0.01, deadline.remaining()))
            times.append(clock() - t0)
            deadline.check("socketio call")
    except CallTimeout as exc:
        raise Capped(f"socketio call: {exc}") from exc
    return times
