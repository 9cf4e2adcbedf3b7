"""Session hosts on the cloud path: an instance per session through the OpenAPI.

The hosts start each session's avatar instance with ``StartInstance`` (Alibaba's own
SDK, talking to the fake OpenAPI on loopback), connect with its IM token, and stop it
with ``StopInstance`` when they let the session go.  A host that takes a session over
reconnects to the same instance (``QueryRunningInstance`` for its token): no second
instance, the same IM session id.  Only the instance's session id goes to Redis; the
IM token is read again from the OpenAPI.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from conftest import TIMEOUT, wait_until
from redis_peer import RedisProcess, needs_redis, redis, redis_server

from avatar_im.server import ReferenceServer

pytestmark = needs_redis

pytest.importorskip("alibabacloud_avatar20220130", reason="needs the 'aliyun' extra")

if redis is not None:
    from avatar_im.aliyun import AvatarOpenAPI
    from avatar_im.host import SessionHost
    from avatar_im.relay import RelayClient
    from avatar_im.server.openapi import FakeOpenAPI

__all__ = ["redis_server"]  # a fixture, used by name


@pytest.fixture
def avatar_server_options() -> dict[str, Any]:
    """The IM server accepts only the tokens of the fake's running instances."""
    return {"credentials": [], "speaking_base": 0.01, "speaking_rate": 1000}


@pytest.fixture
def api(openapi: FakeOpenAPI) -> Iterator[AvatarOpenAPI]:
    with AvatarOpenAPI(openapi.config(), timeout=TIMEOUT) as client:
        yield client


def redis_text(url: str) -> str:
    """Every key and value in the Redis at *url*, as one string."""
    r = redis.Redis.from_url(url, decode_responses=True)
    parts: list[str] = []
    try:
        for key in r.scan_iter(count=1000):
            kind = r.type(key)
            parts.append(key)
            if kind == "string":
                parts.append(str(r.get(key)))
            elif kind == "hash":
                parts.append(str(r.hgetall(key)))
            elif kind == "stream":
                parts.append(str(r.xrange(key)))
            elif kind == "zset":
                parts.append(str(r.zrange(key, 0, -1)))
    finally:
        r.close()
    return " ".join(parts)


def cloud_host(
    redis_server: RedisProcess,
    avatar_server: ReferenceServer,
    api: AvatarOpenAPI,
    name: str,
    **options: Any,
) -> SessionHost:
    return SessionHost(
        redis_server.url, url=avatar_server.url, openapi=api, host_id=name, **options
    ).start()


def test_a_session_runs_on_its_own_instance_stopped_when_idle(
    redis_server: RedisProcess,
    avatar_server: ReferenceServer,
    openapi: FakeOpenAPI,
    api: AvatarOpenAPI,
) -> None:
    host = cloud_host(redis_server, avatar_server, api, "c0", idle_timeout=1.0)
    try:
        avatar = RelayClient(redis_server.url, session_id="visitor-1")
        avatar.start_session()
        avatar.wait_session_ready(TIMEOUT)
        assert len(openapi.running) == 1
        instance_sid = openapi.running[0]
        assert avatar.ask("hello", timeout=TIMEOUT).text == "You said: hello"
        snapshot = avatar_server.session(instance_sid)
        assert snapshot is not None and list(snapshot.texts) == ["hello"]
        # The IM token never goes to Redis: a host reads it from the OpenAPI.
        running = api.query_running_instance(instance_sid)
        assert running is not None and running.token
        assert running.token not in redis_text(redis_server.url)
        # Idle: the host lets it go and stops the instance (instances cost money).
        assert wait_until(lambda: not host.sessions, TIMEOUT * 2)
        assert openapi.wait_for(lambda: openapi.running == [], TIMEOUT)
        assert openapi.started_total == 1 and openapi.stopped_total == 1
    finally:
        host.close()


def test_a_takeover_reconnects_to_the_same_instance(
    redis_server: RedisProcess,
    avatar_server: ReferenceServer,
    openapi: FakeOpenAPI,
    api: AvatarOpenAPI,
) -> None:
    first = cloud_host(redis_server, avatar_server, api, "c1", lease_ttl=0.6)
    second: SessionHost | None = None
    try:
        avatar = RelayClient(redis_server.url, session_id="visitor-2")
        avatar.start_session()
        avatar.wait_session_ready(TIMEOUT)
        assert avatar.ask("one", timeout=TIMEOUT).text == "You said: one"
        (instance_sid,) = openapi.running
        second = cloud_host(redis_server, avatar_server, api, "c2", lease_ttl=0.6)
        first.close()  # it lets the session go unended: the other host takes it over
        assert wait_until(lambda: second is not None and second.sessions, TIMEOUT * 2)
        assert avatar.ask("two", timeout=TIMEOUT).text == "You said: two"
        assert openapi.running == [instance_sid] and openapi.started_total == 1
        snapshot = avatar_server.session(instance_sid)
        assert snapshot is not None and list(snapshot.texts) == ["one", "two"]
        avatar.wait_ack(avatar.stop_session(), TIMEOUT)
        assert wait_until(lambda: second is not None and not second.sessions, TIMEOUT * 2)
        assert openapi.wait_for(lambda: openapi.running == [], TIMEOUT)
    finally:
        first.close()
        if second is not None:
            second.close()


def test_openapi_arguments_are_checked(redis_server: RedisProcess, api: AvatarOpenAPI) -> None:
    from avatar_im.exceptions import InvalidArgumentError, InvalidArgumentTypeError

    with pytest.raises(InvalidArgumentTypeError, match="AvatarOpenAPI"):
        SessionHost(redis_server.url, openapi=object())
    with pytest.raises(InvalidArgumentError, match="not both"):
        SessionHost(redis_server.url, openapi=api, client_factory=lambda sid, ids: None)
    SessionHost(redis_server.url, openapi=api).close()  # no url: AVATAR_IM_URL or the cloud's


def test_avatar_im_host_on_the_cloud_path(
    redis_server: RedisProcess,
    avatar_server: ReferenceServer,
    openapi: FakeOpenAPI,
    tmp_path: Any,
) -> None:
    """`avatar-im host` with the OpenAPI's environment: an instance per session."""
    import os
    import signal
    import subprocess
    import sys

    from avatar_im.aliyun import ENV_VARIABLES

    config = openapi.config()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AVATAR_IM_", "ALIBABA_"))}
    for field, name in ENV_VARIABLES.items():
        value = getattr(config, field)
        if value is not None:
            env[name] = str(value)
    env["AVATAR_IM_URL"] = avatar_server.url
    out = tmp_path / "host.out"
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "avatar_im.host", "--redis", redis_server.url],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        assert wait_until(lambda: b"serving" in out.read_bytes(), TIMEOUT * 2), out.read_text()
        assert "instances through the OpenAPI" in out.read_text()
        assert config.access_key_secret not in out.read_text()
        avatar = RelayClient(redis_server.url, session_id="cli-visitor")
        avatar.start_session()
        avatar.wait_session_ready(TIMEOUT * 2)
        assert avatar.ask("hi", timeout=TIMEOUT).text == "You said: hi"
        assert len(openapi.running) == 1
        avatar.wait_ack(avatar.stop_session(), TIMEOUT)
        assert openapi.wait_for(lambda: openapi.running == [], TIMEOUT * 2)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(TIMEOUT * 2) == 0, out.read_text()
