"""From an OpenAPI instance to a talking avatar: sessions, token renewal, per-visitor registry.

The official Alibaba SDK talks to the fake OpenAPI on loopback, whose instances' tokens the
reference server accepts (and only those: the server is made with ``credentials=[]``).
"""

from __future__ import annotations

import threading
from collections.abc import Hashable
from typing import Any

import pytest
from conftest import TIMEOUT

from avatar_im import AvatarIM, ConnectionState, ReconnectPolicy

pytest.importorskip("alibabacloud_avatar20220130", reason="needs the 'aliyun' extra")

from avatar_im.aliyun import AvatarOpenAPI
from avatar_im.registry import ClientRegistry
from avatar_im.server import ReferenceServer, Request, default_responder
from avatar_im.server.openapi import FakeOpenAPI
from avatar_im.sessions import AvatarSession, open_session

FAST = ReconnectPolicy(initial_delay=0.01, max_delay=0.05)


@pytest.fixture
def processed() -> list[tuple[str, str]]:
    """(session id, text) of every text the server processed, in order."""
    return []


@pytest.fixture
def avatar_server_options(processed: list[tuple[str, str]]) -> dict[str, Any]:
    """Only the tokens of instances the fake OpenAPI started are accepted; texts recorded.

    The record outlives the server forgetting a session when its token expires.
    """

    def responder(request: Request) -> Any:
        if request.text is not None:
            processed.append((request.session_id, request.text))
        return default_responder(request)

    return {"credentials": [], "responder": responder}


@pytest.fixture
def api(openapi: FakeOpenAPI) -> AvatarOpenAPI:
    client = AvatarOpenAPI(openapi.config())
    yield client  # type: ignore[misc]
    client.close()


def test_open_session_starts_talks_and_stops_the_instance(
    api: AvatarOpenAPI, openapi: FakeOpenAPI, avatar_server: ReferenceServer
) -> None:
    """open_session: StartInstance, connect with its token, start; the block's end stops all."""
    with open_session(api, user_id="u1", url=avatar_server.url) as avatar:
        assert openapi.running == [avatar.session_id]
        avatar.client.wait_ack(avatar.client.send_text("hello"), TIMEOUT)
        assert avatar_server.session(avatar.session_id).texts == ["hello"]
        page = avatar.instance.for_browser()
        assert avatar.instance.token not in str(page)
    assert openapi.running == [] and openapi.stopped_total == 1
    assert avatar.client.closed


def test_the_instance_is_stopped_when_the_block_raises(
    api: AvatarOpenAPI, openapi: FakeOpenAPI, avatar_server: ReferenceServer
) -> None:
    """An error in the with block still stops the session and the instance."""
    with pytest.raises(ZeroDivisionError), open_session(api, user_id="u1", url=avatar_server.url):
        1 / 0  # noqa: B018
    assert openapi.running == [] and openapi.stopped_total == 1


def test_an_expired_token_is_renewed_and_nothing_is_lost(
    api: AvatarOpenAPI,
    openapi: FakeOpenAPI,
    avatar_server: ReferenceServer,
    processed: list[tuple[str, str]],
) -> None:
    """2,000 texts with the token expiring mid-stream: renewed through QueryRunningInstance,
    the session started again, every text exactly once and in order."""
    instance = api.start_instance(user_id="u1")
    client = AvatarIM.from_instance(
        instance, url=avatar_server.url, openapi=api, reconnect=FAST, send_timeout=TIMEOUT
    )
    try:
        client.start_session()
        client.wait_session_ready(TIMEOUT)
        texts = [f"t{n}" for n in range(2000)]
        for n, text in enumerate(texts):
            client.send_text(text)
            if n == 800:
                openapi.expire(instance.session_id)
        client.flush(4 * TIMEOUT)
        assert processed == [(instance.session_id, text) for text in texts]
        assert client.stats.session_restarts >= 1 and client.state is ConnectionState.OPEN
    finally:
        client.close()
        api.stop_instance(instance.session_id)


def test_without_renewal_an_expired_token_ends_the_client(
    api: AvatarOpenAPI, openapi: FakeOpenAPI, avatar_server: ReferenceServer
) -> None:
    """No openapi= and no provider: the expiry closes the client with the typed error."""
    from avatar_im import ServerClosedError

    instance = api.start_instance(user_id="u1")
    client = AvatarIM.from_instance(instance, url=avatar_server.url, reconnect=FAST)
    try:
        client.start_session()
        client.wait_session_ready(TIMEOUT)
        openapi.expire(instance.session_id)
        client._connection.wait_for(lambda p: False, TIMEOUT)  # returns once closed
        with pytest.raises(ServerClosedError):
            client.send_text("after")
    finally:
        client.close()
        api.stop_instance(instance.session_id)


def test_registry_of_instances_fifty_keys_eight_threads(
    api: AvatarOpenAPI, openapi: FakeOpenAPI, avatar_server: ReferenceServer
) -> None:
    """50 visitors from 8 threads, at most 10 at a time: bounded, and every instance stopped."""

    def factory(key: Hashable) -> AvatarSession:
        return open_session(api, user_id=f"visitor-{key}", url=avatar_server.url)

    errors: list[BaseException] = []
    peak = [0]
    with ClientRegistry(factory, max_size=10, idle_timeout=60) as registry:

        def work(first: int) -> None:
            try:
                for key in range(first, 50, 8):
                    with registry.use(key) as avatar:
                        avatar.client.wait_ack(avatar.client.send_text(f"hi {key}"), TIMEOUT)
                    peak[0] = max(peak[0], len(openapi.running))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(6 * TIMEOUT)
        assert not errors and not any(t.is_alive() for t in threads)
        assert len(registry) <= 10 and peak[0] <= 10 + 8
    assert openapi.started_total == 50
    assert openapi.running == [] and openapi.stopped_total == 50
    assert not registry.threads


def test_a_failed_stop_instance_is_tried_again(
    api: AvatarOpenAPI, openapi: FakeOpenAPI, avatar_server: ReferenceServer
) -> None:
    """StopInstance throttled past its retries: close() raises, and a second close() stops it."""
    from avatar_im.aliyun import OpenAPIError

    avatar = open_session(api, user_id="u1", url=avatar_server.url)
    openapi.throttle(10)
    with pytest.raises(OpenAPIError):
        avatar.close()
    assert openapi.running == [avatar.session_id]
    openapi.throttle(0)
    avatar.close()
    assert openapi.running == [] and avatar.client.closed


def test_the_im_url_comes_from_the_environment(
    api: AvatarOpenAPI,
    openapi: FakeOpenAPI,
    avatar_server: ReferenceServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With no url=, open_session connects to AVATAR_IM_URL (what serve --openapi prints)."""
    monkeypatch.setenv("AVATAR_IM_URL", avatar_server.url)
    with open_session(api, user_id="u1") as avatar:
        avatar.client.wait_ack(avatar.client.send_text("hi"), TIMEOUT)
    assert openapi.stopped_total == 1


def _python_blocks(markdown: str) -> list[str]:
    import re

    return re.findall(r"```python\n(.*?)```", markdown, re.S)


@pytest.fixture
def cloud_environment(
    openapi: FakeOpenAPI, avatar_server: ReferenceServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The environment `avatar-im serve --openapi` tells a user to export."""
    from avatar_im.aliyun import ENV_VARIABLES

    config = openapi.config()
    for field in ("access_key_id", "access_key_secret", "tenant_id", "app_id"):
        monkeypatch.setenv(ENV_VARIABLES[field], str(getattr(config, field)))
    monkeypatch.setenv(ENV_VARIABLES["endpoint"], openapi.endpoint)
    monkeypatch.setenv(ENV_VARIABLES["protocol"], "http")
    monkeypatch.setenv("AVATAR_IM_URL", avatar_server.url)


@pytest.mark.usefixtures("cloud_environment")
def test_the_readme_cloud_snippet_runs_as_written(openapi: FakeOpenAPI) -> None:
    """The README's cloud quick start, read from the README, against the fake."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## From your Alibaba Cloud account", 1)[1]
    exec(_python_blocks(section)[0], {})
    assert openapi.started_total == 1 and openapi.running == []


@pytest.mark.usefixtures("cloud_environment")
def test_the_cloud_page_snippets_run_as_written(openapi: FakeOpenAPI) -> None:
    """docs/cloud.md's snippets, in order and in one namespace, against the fake."""
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "cloud.md").read_text()
    namespace: dict[str, Any] = {}
    for block in _python_blocks(page):
        exec(block, namespace)
    assert openapi.started_total == 2 and openapi.running == []
