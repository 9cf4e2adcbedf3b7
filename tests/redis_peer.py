"""A real redis-server on loopback for the relay's tests (Debian's ``redis-server``).

Each :class:`RedisProcess` has a free loopback port, its own temporary directory and
persistence on (``appendonly yes``, ``appendfsync always``), and can be killed and
started again on the same port and files.  Import the fixtures into a test module with
``from redis_peer import REDIS_SERVER, RedisProcess, avatar_server, redis_server``.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import TIMEOUT, wait_until

from avatar_im.server import ReferenceServer

try:
    import redis
except ImportError:  # pragma: no cover - depends on the install
    redis = None  # type: ignore[assignment]

REDIS_SERVER = shutil.which("redis-server")

#: Skip a module when the redis-server program or the redis package is missing.
needs_redis = pytest.mark.skipif(
    REDIS_SERVER is None or redis is None,
    reason="needs Debian's redis-server (apt-get install -y redis-server) and the 'relay' "
    "extra (pip install 'redis>=5')",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisProcess:
    """A redis-server on loopback with its own directory, persistence on; restartable."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="avatar-im-redis-")
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert REDIS_SERVER is not None
        self.proc = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                self.dir,
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_timeout=1)
        try:
            assert wait_until(lambda: _pings(client), TIMEOUT), "redis-server did not start"
        finally:
            client.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(TIMEOUT)

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def _pings(client: Any) -> bool:
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError):
        return False


@pytest.fixture
def redis_server() -> Iterator[RedisProcess]:
    server = RedisProcess()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def avatar_server() -> Iterator[ReferenceServer]:
    # The cloud profile: a reply to every text, then its (short) broadcast.
    with ReferenceServer(host="127.0.0.1", port=0, speaking_base=0.01, speaking_rate=1000) as srv:
        yield srv


@contextlib.contextmanager
def hosts(redis_url: str, server: ReferenceServer, n: int, **options: Any) -> Iterator[list[Any]]:
    """*n* SessionHosts (host ids h0, h1, ...) on *redis_url* for *server*, closed after."""
    from avatar_im.host import SessionHost

    made = [
        SessionHost(redis_url, url=server.url, host_id=f"h{i}", **options).start() for i in range(n)
    ]
    try:
        yield made
    finally:
        for host in made:
            host.close()


def host_process(redis_url: str, url: str, host_id: str, lease: float) -> subprocess.Popen[bytes]:
    """``avatar-im host`` as a process of its own (for ``kill -9`` and ``SIGSTOP``)."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "avatar_im.host",
            "--redis",
            redis_url,
            "--url",
            url,
            "--lease-ttl",
            str(lease),
            "--host-id",
            host_id,
        ],
        stdout=subprocess.DEVNULL,
    )
