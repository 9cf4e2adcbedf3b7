"""A throwaway ``redis-server`` on loopback: for ``avatar-im demo --relay`` and trying the relay.

:func:`local_redis` starts Debian's (or any) ``redis-server`` program on a free
loopback port, in a temporary directory, without persistence, waits until it
answers, yields its URL and stops it again (SIGTERM, then SIGKILL)::

    with local_redis() as url:
        ...  # SessionHost(url, ...), RelayClient(url, ...)

Not for production: a real deployment runs its own Redis, with persistence on
(see ``docs/many-workers.md``).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

from .exceptions import AvatarIMError

__all__ = ["RedisServerMissingError", "local_redis"]

#: How long the redis-server may take to answer its first PING, and to stop (s).
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0


class RedisServerMissingError(AvatarIMError):
    """No ``redis-server`` program on the PATH (or it did not start)."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pings(port: int) -> bool:
    """One PING over a plain socket (no redis package needed): True on +PONG."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def local_redis(program: str = "redis-server") -> Iterator[str]:
    """Run *program* on a free loopback port while the block runs; yield its ``redis://`` URL.

    Raises :class:`RedisServerMissingError` when the program is not on the PATH,
    or exits or does not answer within :data:`START_TIMEOUT` seconds.
    """
    path = shutil.which(program)
    if path is None:
        raise RedisServerMissingError(
            f"no {program} on the PATH: install Redis (Debian: apt-get install redis-server) "
            "or pass the URL of a running one"
        )
    port = _free_port()
    directory = tempfile.mkdtemp(prefix="avatar-im-redis-")
    args = [path, "--port", str(port), "--bind", "127.0.0.1", "--dir", directory]
    args += ["--save", "", "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not _pings(port):
            if proc.poll() is not None:
                detail = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise RedisServerMissingError(
                    f"{program} exited at start ({proc.returncode}): {' '.join(detail.split())}"
                )
            if time.monotonic() >= deadline:
                raise RedisServerMissingError(f"{program} did not answer within {START_TIMEOUT}s")
            time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(STOP_TIMEOUT)
        if proc.stderr is not None:
            proc.stderr.close()
        shutil.rmtree(directory, ignore_errors=True)
