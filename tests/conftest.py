"""Shared fixtures: a reference server on loopback, client factories, thread-leak checks."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from avatar_im import AvatarIM
from avatar_im.server import ReferenceServer

#: Every wait in the tests is a multiple of this (raise it on a slow machine).
TIMEOUT = float(os.environ.get("AVATAR_IM_TEST_TIMEOUT", "5"))

ClientFactory = Callable[..., AvatarIM]


def client_threads() -> list[threading.Thread]:
    """The client threads alive now (reader threads are named avatar-im-reader-N)."""
    return [t for t in threading.enumerate() if t.name.startswith("avatar-im-")]


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    """Wait for a predicate nothing signals: re-check every 10 ms, bounded by *timeout*."""
    pause = threading.Event()
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        pause.wait(0.01)
    return True


@pytest.fixture(autouse=True)
def no_client_thread_left() -> Iterator[None]:
    """After every test, no client thread it started is left running.

    Only threads started during the test count, so one test's leak fails that test
    alone instead of every test after it.
    """
    before = set(client_threads())
    yield
    leftover = [t for t in client_threads() if t not in before]
    for thread in leftover:
        thread.join(TIMEOUT)
    assert not [t for t in leftover if t.is_alive()], f"threads left: {leftover}"


@pytest.fixture
def server() -> Iterator[ReferenceServer]:
    """A reference server on a free loopback port, with the exact ``echo`` replies."""
    with ReferenceServer(host="127.0.0.1", port=0, profile="echo") as srv:
        yield srv


@pytest.fixture
def cloud_server() -> Iterator[ReferenceServer]:
    """A reference server with its default, cloud-shaped replies, speaking quickly."""
    with ReferenceServer(host="127.0.0.1", port=0, speaking_rate=400.0, speaking_base=0.05) as srv:
        yield srv


@contextlib.contextmanager
def _clients(server: ReferenceServer) -> Iterator[ClientFactory]:
    clients: list[AvatarIM] = []

    def factory(**kwargs: Any) -> AvatarIM:
        options: dict[str, Any] = {
            "token": "tok",
            "app_id": "app",
            "tenant_id": "ten",
            "session_id": f"s{len(clients)}",
            "url": server.url,
        }
        options.update(kwargs)
        client = AvatarIM(**options)
        clients.append(client)
        return client

    try:
        yield factory
    finally:
        for client in clients:
            client.close()


@pytest.fixture
def make_client(server: ReferenceServer) -> Iterator[ClientFactory]:
    """A factory of clients connected to `server`, all closed at the end of the test."""
    with _clients(server) as factory:
        yield factory


@pytest.fixture
def make_cloud_client(cloud_server: ReferenceServer) -> Iterator[ClientFactory]:
    """A factory of clients connected to `cloud_server`, all closed at the end of the test."""
    with _clients(cloud_server) as factory:
        yield factory


@pytest.fixture
def ready_client(make_client: ClientFactory) -> AvatarIM:
    """A client with a ready session."""
    client = make_client()
    client.start_session()
    client.wait_session_ready(TIMEOUT)
    return client
