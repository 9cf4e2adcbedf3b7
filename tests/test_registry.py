"""The per-visitor registry: many keys from many threads, idle expiry, the size bound."""

from __future__ import annotations

import random
import threading
from collections.abc import Hashable

import pytest
from conftest import TIMEOUT, wait_until

from avatar_im import AvatarIM, ClientClosedError
from avatar_im.registry import ClientRegistry, RegistryFullError
from avatar_im.server import ReferenceServer


class Counted:
    """A stand-in entry that counts how often it was made and closed."""

    made = 0
    closed = 0
    lock = threading.Lock()

    def __init__(self, key: Hashable) -> None:
        self.key = key
        self.is_closed = False
        with Counted.lock:
            Counted.made += 1

    def close(self) -> None:
        assert not self.is_closed, "closed twice"
        self.is_closed = True
        with Counted.lock:
            Counted.closed += 1


@pytest.fixture(autouse=True)
def reset_counts() -> None:
    Counted.made = Counted.closed = 0


def test_fifty_keys_from_eight_threads_each_get_their_own_client(server: ReferenceServer) -> None:
    """8 threads use 50 visitors' clients at random; each text reaches its visitor's session."""

    def factory(key: Hashable) -> AvatarIM:
        client = AvatarIM(
            token="t", app_id="a", tenant_id="b", session_id=f"visitor-{key}", url=server.url
        )
        client.start_session()
        client.wait_session_ready(TIMEOUT)
        return client

    sent: dict[int, list[str]] = {k: [] for k in range(50)}
    errors: list[BaseException] = []
    with ClientRegistry(factory, max_size=20, idle_timeout=60) as registry:

        def work(seed: int) -> None:
            rng = random.Random(seed)
            try:
                for n in range(25):
                    key = rng.randrange(50)
                    with registry.use(key) as client:
                        text = f"{seed}-{n}"
                        client.wait_ack(client.send_text(text), TIMEOUT)
                    sent[key].append(text)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(seed,)) for seed in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(4 * TIMEOUT)
        assert not errors and not any(t.is_alive() for t in threads)
        for key, texts in sent.items():
            if texts:
                assert sorted(server.session(f"visitor-{key}").texts) == sorted(texts)
        assert len(registry) <= 20 and registry.closed_full > 0  # the bound held, by eviction
    assert not registry.threads


def test_a_key_is_made_once_whatever_the_threads() -> None:
    """Eight threads asking for one new key at once: the factory runs once."""
    gate = threading.Event()

    def factory(key: Hashable) -> Counted:
        gate.wait(TIMEOUT)
        return Counted(key)

    with ClientRegistry(factory, max_size=4) as registry:
        got: list[Counted] = []
        threads = [threading.Thread(target=lambda: got.append(registry.get("k"))) for _ in range(8)]
        for thread in threads:
            thread.start()
        gate.set()
        for thread in threads:
            thread.join(TIMEOUT)
        assert Counted.made == 1 and len({id(g) for g in got}) == 1
    assert Counted.closed == 1


def test_the_size_bound_closes_the_entry_idle_longest() -> None:
    """Full: making a new entry closes the least recently used idle one."""
    with ClientRegistry(Counted, max_size=3, idle_timeout=None) as registry:
        a, b, _ = registry.get("a"), registry.get("b"), registry.get("c")
        registry.get("a")  # a is used again: b is now idle the longest
        registry.get("d")
        assert b.is_closed and not a.is_closed
        assert len(registry) == 3 and "b" not in registry and registry.closed_full == 1


def test_an_entry_in_use_is_never_closed_to_make_room() -> None:
    """Every entry in use and the registry full: RegistryFullError at the call."""
    with ClientRegistry(Counted, max_size=2, idle_timeout=None) as registry:
        with registry.use("a") as a, registry.use("b"):
            with pytest.raises(RegistryFullError):
                registry.get("c")
            assert not a.is_closed
        registry.get("c")
        assert Counted.closed == 1


def test_idle_entries_are_closed_by_the_sweeper() -> None:
    """An entry unused for idle_timeout seconds is closed; one in use is kept."""
    with ClientRegistry(Counted, max_size=10, idle_timeout=0.1) as registry:
        idle = registry.get("idle")
        with registry.use("busy") as busy:
            assert wait_until(lambda: idle.is_closed, TIMEOUT)
            assert not busy.is_closed
        assert wait_until(lambda: busy.is_closed, TIMEOUT)
        assert registry.closed_idle == 2 and len(registry) == 0
    assert not registry.threads


def test_a_failing_factory_is_retried_on_the_next_get() -> None:
    """The factory's error reaches the caller; the key is not poisoned."""
    calls: list[int] = []

    def factory(key: Hashable) -> Counted:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("service down")
        return Counted(key)

    with ClientRegistry(factory) as registry:
        with pytest.raises(OSError):
            registry.get("k")
        assert registry.get("k").key == "k"


def test_closed_registry_refuses_and_closes_everything() -> None:
    """close() closes every entry and ends the sweeper; get() then raises ClientClosedError."""
    registry = ClientRegistry(Counted, idle_timeout=30)
    for key in range(5):
        registry.get(key)
    thread = registry.threads[0]
    registry.close()
    assert Counted.closed == 5 and not thread.is_alive()
    with pytest.raises(ClientClosedError):
        registry.get(1)


def test_close_always_ends_the_sweeper_at_once() -> None:
    """close() racing the sweeper's pass never leaves it waiting out its idle timeout."""
    for _ in range(200):
        registry = ClientRegistry(Counted, idle_timeout=30)
        registry.get(1)
        registry.close()
        assert not registry.threads


def test_discard_waits_for_the_entry_s_last_user() -> None:
    """A logout while a request uses the entry closes it when that request is done."""
    with ClientRegistry(Counted, idle_timeout=None) as registry:
        with registry.use("k") as entry:
            assert registry.discard("k")
            assert not entry.is_closed and "k" not in registry
        assert entry.is_closed


def test_a_waiter_gets_an_error_when_the_registry_closes_meanwhile() -> None:
    """A thread waiting for a key being made when close() runs gets ClientClosedError."""
    making, release = threading.Event(), threading.Event()

    def factory(key: Hashable) -> Counted:
        making.set()
        release.wait(TIMEOUT)
        return Counted(key)

    registry = ClientRegistry(factory, idle_timeout=None)
    outcomes: list[BaseException | None] = []

    def get() -> None:
        try:
            registry.get("k")
            outcomes.append(None)
        except BaseException as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=get) for _ in range(2)]
    for thread in threads:
        thread.start()
    assert making.wait(TIMEOUT)
    closer = threading.Thread(target=registry.close)
    closer.start()
    release.set()
    for thread in [*threads, closer]:
        thread.join(TIMEOUT)
    assert len(outcomes) == 2 and all(isinstance(o, ClientClosedError) for o in outcomes)
    assert Counted.closed == Counted.made == 1
