"""examples/relay_visitors.py: RelayVisitors checks everything at construction, and works.

The checks need no Redis (the URL points where nothing listens: a check that reached it
would take the relay's 5 s retry window); the round trips use a real redis-server and a
session host in this process, as tests/test_relay_client.py does.
"""

from __future__ import annotations

import importlib
import math
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from conftest import TIMEOUT
from redis_peer import RedisProcess, avatar_server, hosts, needs_redis, redis_server

from avatar_im import InvalidArgumentError, InvalidArgumentTypeError
from avatar_im.server import ReferenceServer

__all__ = ["avatar_server", "redis_server"]  # fixtures, used by name

ROOT = Path(__file__).resolve().parents[1]
#: Nothing listens there: a call that reached Redis would retry for 5 s.
NOWHERE = "redis://127.0.0.1:1/0"


@pytest.fixture
def module(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The examples.relay_visitors module."""
    monkeypatch.syspath_prepend(str(ROOT))
    return importlib.import_module("examples.relay_visitors")


def _fast(call: Any, error: type[Exception]) -> Exception:
    """*call()* raises *error* (a value error, not a type error, for InvalidArgumentError)."""
    start = time.monotonic()
    with pytest.raises(error) as info:
        call()
    assert time.monotonic() - start < 1.0, "checked at the call, without reaching Redis"
    if error is InvalidArgumentError:
        assert not isinstance(info.value, InvalidArgumentTypeError), info.value
    return info.value


BAD_CONSTRUCTIONS: list[tuple[str, tuple[Any, ...], dict[str, Any], type[Exception]]] = [
    ("int url", (5,), {}, InvalidArgumentTypeError),
    ("None url", (None,), {}, InvalidArgumentTypeError),
    ("empty url", ("",), {}, InvalidArgumentError),
    ("http url", ("http://:secret@127.0.0.1:6379/0",), {}, InvalidArgumentError),
    ("not a db", ("redis://:secret@127.0.0.1:6379/notadb",), {}, InvalidArgumentError),
    ("empty prefix", (NOWHERE,), {"prefix": ""}, InvalidArgumentError),
    ("tab prefix", (NOWHERE,), {"prefix": "a\tb"}, InvalidArgumentError),
    ("None prefix", (NOWHERE,), {"prefix": None}, InvalidArgumentTypeError),
    ("start_timeout str", (NOWHERE,), {"start_timeout": "x"}, InvalidArgumentTypeError),
    ("start_timeout None", (NOWHERE,), {"start_timeout": None}, InvalidArgumentTypeError),
    ("start_timeout -1", (NOWHERE,), {"start_timeout": -1}, InvalidArgumentError),
    ("start_timeout 0", (NOWHERE,), {"start_timeout": 0}, InvalidArgumentError),
    ("start_timeout nan", (NOWHERE,), {"start_timeout": math.nan}, InvalidArgumentError),
    ("unknown option", (NOWHERE,), {"bogus_option": 1}, InvalidArgumentError),
    ("output_mode", (NOWHERE,), {"output_mode": "x"}, InvalidArgumentError),
    ("sample_rate", (NOWHERE,), {"sample_rate": 5}, InvalidArgumentError),
    ("voice object", (NOWHERE,), {"voice": object()}, InvalidArgumentTypeError),
    ("extra nan", (NOWHERE,), {"extra": {"a": math.nan}}, InvalidArgumentError),
]


@pytest.mark.parametrize(
    ("args", "kwargs", "error"),
    [(args, kwargs, error) for _, args, kwargs, error in BAD_CONSTRUCTIONS],
    ids=[label for label, _, _, _ in BAD_CONSTRUCTIONS],
)
def test_everything_is_checked_at_construction(
    module: ModuleType, args: tuple[Any, ...], kwargs: dict[str, Any], error: type[Exception]
) -> None:
    raised = _fast(lambda: module.RelayVisitors(*args, **kwargs), error)
    assert "secret" not in str(raised)


def test_a_good_construction_reaches_nothing(module: ModuleType) -> None:
    visitors = module.RelayVisitors(
        NOWHERE, prefix="myapp", start_timeout=2.5, output_mode="audio", voice="x"
    )
    visitors.close()


def test_from_env_names_the_missing_variable(
    module: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AVATAR_IM_REDIS", raising=False)
    monkeypatch.delenv("AVATAR_IM_RELAY_PREFIX", raising=False)
    error = _fast(module.RelayVisitors.from_env, InvalidArgumentError)
    assert "AVATAR_IM_REDIS" in str(error)
    monkeypatch.setenv("AVATAR_IM_REDIS", "")
    assert "AVATAR_IM_REDIS" in str(_fast(module.RelayVisitors.from_env, InvalidArgumentError))
    monkeypatch.setenv("AVATAR_IM_REDIS", "http://:secret@127.0.0.1:6379/0")
    error = _fast(module.RelayVisitors.from_env, InvalidArgumentError)
    assert "AVATAR_IM_REDIS" in str(error) and "secret" not in str(error)
    monkeypatch.setenv("AVATAR_IM_REDIS", NOWHERE)
    monkeypatch.setenv("AVATAR_IM_RELAY_PREFIX", "bad\tprefix")
    error = _fast(module.RelayVisitors.from_env, InvalidArgumentError)
    assert "AVATAR_IM_RELAY_PREFIX" in str(error)
    monkeypatch.setenv("AVATAR_IM_RELAY_PREFIX", "myapp")
    _fast(lambda: module.RelayVisitors.from_env(output_mode="x"), InvalidArgumentError)
    module.RelayVisitors.from_env(output_mode="audio").close()


BAD_ASKS: list[tuple[str, tuple[Any, ...], type[Exception]]] = [
    ("None visitor", (None, "hi"), InvalidArgumentTypeError),
    ("int visitor", (5, "hi"), InvalidArgumentTypeError),
    ("empty visitor", ("", "hi"), InvalidArgumentError),
    ("newline visitor", ("a\nb", "hi"), InvalidArgumentError),
    ("long visitor", ("v" * 197, "hi"), InvalidArgumentError),
    ("None text", ("v", None), InvalidArgumentTypeError),
    ("empty text", ("v", ""), InvalidArgumentError),
    ("str timeout", ("v", "hi", "x"), InvalidArgumentTypeError),
    ("negative timeout", ("v", "hi", -1), InvalidArgumentError),
]


@pytest.mark.parametrize(
    ("args", "error"),
    [(args, error) for _, args, error in BAD_ASKS],
    ids=[label for label, _, _ in BAD_ASKS],
)
def test_ask_checks_its_arguments_before_redis(
    module: ModuleType, args: tuple[Any, ...], error: type[Exception]
) -> None:
    """No shared "web-None" session: a visitor that is not a non-empty str is refused."""
    visitors = module.RelayVisitors(NOWHERE)
    _fast(lambda: visitors.ask(*args), error)


@needs_redis
def test_visitors_talk_to_their_avatars_through_a_host(
    module: ModuleType, redis_server: RedisProcess, avatar_server: ReferenceServer
) -> None:
    visitors = module.RelayVisitors(redis_server.url, start_timeout=TIMEOUT, output_mode="audio")
    with hosts(redis_server.url, avatar_server, 1):
        assert visitors.ask("v1", "hello", TIMEOUT)["text"] == "You said: hello"
        longest = "v" * module.MAX_VISITOR
        assert visitors.ask(longest, "again", TIMEOUT)["text"] == "You said: again"
    visitors.close()
