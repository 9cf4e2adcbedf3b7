"""Tests of avatar_im.aliyun: the official SDK against the loopback fake of the avatar OpenAPI."""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import attrs
import pytest
import websocket
from conftest import TIMEOUT

import avatar_im.aliyun
from avatar_im import InvalidArgumentError, InvalidArgumentTypeError, ReconnectPolicy, cli
from avatar_im.aliyun import (
    DEFAULT_RETRY,
    AliyunConfig,
    AvatarInstance,
    AvatarOpenAPI,
    MissingExtraError,
    OpenAPIError,
    VideoChannel,
)
from avatar_im.server import ReferenceServer

pytest.importorskip("alibabacloud_avatar20220130", reason="needs the 'aliyun' extra")

from avatar_im.server.openapi import FakeOpenAPI

pytest_plugins = ["pytester"]

SECRET = "test-access-key-secret"
#: Retries fast enough for tests, as many as the default.
FAST_RETRY = attrs.evolve(DEFAULT_RETRY, initial_delay=0.01, max_delay=0.05)


@pytest.fixture
def avatar_server_options() -> dict[str, Any]:
    """The IM server accepts only the tokens of the fake's running instances."""
    return {"credentials": []}


@pytest.fixture
def api(openapi: FakeOpenAPI) -> Iterator[AvatarOpenAPI]:
    """The official SDK, through AvatarOpenAPI, pointed at the fake."""
    with AvatarOpenAPI(openapi.config(), retry=FAST_RETRY, timeout=TIMEOUT) as client:
        yield client


def im_url(server: ReferenceServer, instance: AvatarInstance, token: str | None = None) -> str:
    token = instance.token if token is None else token
    assert token is not None
    return (
        f"{server.url}?t={quote(token, safe='')}&app={instance.app_id}&tenant={instance.tenant_id}"
    )


def im_connect(url: str) -> websocket.WebSocket:
    ws = websocket.create_connection(url, timeout=TIMEOUT)
    assert ws.recv() == "1"
    return ws


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- the calls, against the fake -------------------------------------------------------------


def test_start_query_send_interrupt_stop(api: AvatarOpenAPI, openapi: FakeOpenAPI) -> None:
    """Each call goes through the official SDK to the fake, which records it and counts."""
    instance = api.start_instance(user_id="visitor-1", user_name="Ada")
    assert (instance.tenant_id, instance.app_id) == (10001, "test-app")
    assert instance.token and instance.request_id
    assert instance.channel is not None and instance.channel.type == "DingRTC"
    assert instance.channel.token and instance.channel.token != instance.token
    assert openapi.running == [instance.session_id]

    queried = api.query_running_instance(instance.session_id)
    assert queried is not None
    assert (queried.session_id, queried.token) == (instance.session_id, instance.token)
    assert queried.channel == instance.channel

    text = "Hello & welcome, 100% + ~ 你好 ?=#"
    code = api.send_text(instance.session_id, text)
    assert 0 < len(code) <= 64
    assert api.send_text(instance.session_id, "again", interrupt=False, unique_code="u-1") == "u-1"
    assert [(t.text, t.unique_code, t.interrupt) for t in openapi.texts] == [
        (text, code, True),
        ("again", "u-1", False),
    ]
    assert api.interrupt(instance.session_id, unique_code="stop-1") == "stop-1"
    assert openapi.interrupts == [instance.session_id]

    api.stop_instance(instance.session_id)
    assert openapi.running == []
    assert (openapi.started_total, openapi.stopped_total) == (1, 1)
    assert api.query_running_instance(instance.session_id) is None


def test_calls_on_a_stopped_instance_fail_with_the_service_code(api: AvatarOpenAPI) -> None:
    """A business error (Success false) raises OpenAPIError with the fake's code."""
    with pytest.raises(OpenAPIError) as info:
        api.stop_instance("not-running")
    assert info.value.code == "InstanceNotFound"
    assert info.value.action == "StopInstance"
    with pytest.raises(OpenAPIError) as info:
        api.send_text("not-running", "hi")
    assert info.value.code == "InstanceNotFound"


def test_im_token_is_accepted_then_revoked_by_stop(
    api: AvatarOpenAPI, avatar_server: ReferenceServer
) -> None:
    """The instance's IM token opens the IM channel; stop_instance disconnects and revokes it."""
    instance = api.start_instance(user_id="u1")
    ws = im_connect(im_url(avatar_server, instance))
    try:
        api.stop_instance(instance.session_id)
        assert ws.recv() == '2{"reason":"CONNECTION_TIMEOUT"}'
    finally:
        ws.close()
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        websocket.create_connection(im_url(avatar_server, instance), timeout=TIMEOUT)
    assert info.value.status_code == 401


def test_expire_renews_the_token(
    api: AvatarOpenAPI, openapi: FakeOpenAPI, avatar_server: ReferenceServer
) -> None:
    """expire() cuts the old token's connections; QueryRunningInstance returns a working one."""
    instance = api.start_instance(user_id="u1")
    ws = im_connect(im_url(avatar_server, instance))
    try:
        fresh = openapi.expire(instance.session_id)
        assert ws.recv() == '2{"reason":"CONNECTION_TIMEOUT"}'
    finally:
        ws.close()
    renewed = api.query_running_instance(instance.session_id)
    assert renewed is not None and renewed.token == fresh != instance.token
    im_connect(im_url(avatar_server, renewed)).close()
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        websocket.create_connection(im_url(avatar_server, instance), timeout=TIMEOUT)
    assert info.value.status_code == 401


def test_bad_arguments_fail_at_the_call(api: AvatarOpenAPI, openapi: FakeOpenAPI) -> None:
    """Bad arguments raise typed errors before any request is sent."""
    with pytest.raises(InvalidArgumentError):
        api.send_text("s", "")
    with pytest.raises(InvalidArgumentError):
        api.send_text("s", "x" * 1001)
    with pytest.raises(InvalidArgumentError):
        api.send_text("s", "hi", unique_code="u" * 65)
    with pytest.raises(InvalidArgumentTypeError):
        api.send_text("s", "hi", interrupt="yes")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentTypeError):
        api.start_instance(user_id=7)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        api.interrupt("")
    with pytest.raises(InvalidArgumentError):
        api.start_instance(user_id="u", text_request={"no_such_field": 1})
    assert openapi.calls == []


# --- signatures, throttling, network ---------------------------------------------------------


def test_wrong_secret_is_refused_by_the_signature_check(
    openapi: FakeOpenAPI, caplog: pytest.LogCaptureFixture
) -> None:
    """A request signed with another secret gets SignatureDoesNotMatch, without the secret shown."""
    caplog.set_level(logging.DEBUG)
    wrong = "not-the-secret-at-all"
    api = AvatarOpenAPI(openapi.config(access_key_secret=wrong))
    with pytest.raises(OpenAPIError) as info:
        api.start_instance(user_id="u1")
    error = info.value
    assert (error.code, error.status) == ("SignatureDoesNotMatch", 400)
    assert error.request_id
    assert openapi.signature_failures == 1
    assert openapi.started_total == 0
    for text in (str(error), repr(error), caplog.text):
        assert wrong not in text and SECRET not in text


def test_unknown_access_key_id_is_refused(openapi: FakeOpenAPI) -> None:
    """A request from another access key id gets InvalidAccessKeyId.NotFound (404)."""
    api = AvatarOpenAPI(openapi.config(access_key_id="someone-else"))
    with pytest.raises(OpenAPIError) as info:
        api.query_running_instance("s")
    assert (info.value.code, info.value.status) == ("InvalidAccessKeyId.NotFound", 404)


@pytest.mark.parametrize("status", [400, 429, 503])
def test_throttling_is_retried_then_succeeds(
    api: AvatarOpenAPI, openapi: FakeOpenAPI, status: int
) -> None:
    """Two throttled answers are retried with backoff; the third attempt succeeds."""
    openapi.throttle(2, status=status)
    instance = api.start_instance(user_id="u1")
    assert openapi.calls == ["StartInstance"] * 3
    assert openapi.running == [instance.session_id]


def test_throttling_exhausted_raises(api: AvatarOpenAPI, openapi: FakeOpenAPI) -> None:
    """When every attempt is throttled, the call raises the last Throttling error."""
    openapi.throttle(100)
    with pytest.raises(OpenAPIError) as info:
        api.start_instance(user_id="u1")
    assert info.value.code == "Throttling.User"
    assert info.value.throttled
    assert len(openapi.calls) == 1 + (DEFAULT_RETRY.max_attempts or 0)
    assert openapi.started_total == 0


def test_close_cuts_the_wait_between_retries(openapi: FakeOpenAPI) -> None:
    """close() ends a long backoff wait: the throttled call raises at once."""
    slow = ReconnectPolicy(initial_delay=600, max_delay=600, max_attempts=3)
    api = AvatarOpenAPI(openapi.config(), retry=slow, timeout=TIMEOUT)
    openapi.throttle(100)
    errors: queue.Queue[BaseException] = queue.Queue()

    def call() -> None:
        try:
            api.start_instance(user_id="u1")
        except BaseException as exc:
            errors.put(exc)

    caller = threading.Thread(target=call)
    caller.start()
    # Once the first attempt is answered, the call waits up to 10 minutes before the next.
    assert openapi.wait_for(lambda: len(openapi.calls) >= 1, TIMEOUT)
    api.close()
    caller.join(TIMEOUT)
    assert not caller.is_alive()
    assert isinstance(errors.get(timeout=TIMEOUT), OpenAPIError)


def test_unreachable_endpoint_is_a_network_error() -> None:
    """No answer at all (connection refused) raises OpenAPIError with code SDK.NetworkError."""
    config = AliyunConfig(
        access_key_id="ak",
        access_key_secret=SECRET,
        tenant_id=1,
        app_id="app",
        endpoint=f"127.0.0.1:{closed_port()}",
        protocol="http",
    )
    api = AvatarOpenAPI(config, timeout=TIMEOUT)
    with pytest.raises(OpenAPIError) as info:
        api.send_text("s", "a private text")
    assert info.value.code == "SDK.NetworkError"
    assert "a private text" not in str(info.value) and "private" not in str(info.value)
    assert SECRET not in str(info.value)


def test_retry_policy_must_be_bounded(openapi: FakeOpenAPI) -> None:
    """A retry policy with no max_attempts is refused: a call must not retry forever."""
    with pytest.raises(InvalidArgumentError):
        AvatarOpenAPI(openapi.config(), retry=ReconnectPolicy(max_attempts=None))
    with pytest.raises(InvalidArgumentError):
        AvatarOpenAPI(openapi.config(), timeout=0)


# --- values and secrets ----------------------------------------------------------------------


def test_repr_and_str_never_show_secrets(api: AvatarOpenAPI) -> None:
    """Neither the config nor the instance nor the channel shows a secret or token in repr/str."""
    config = AliyunConfig(
        access_key_id="ak",
        access_key_secret=SECRET,
        security_token="sts-token-value",
        tenant_id=1,
        app_id="app",
    )
    for text in (repr(config), str(config), repr(AvatarOpenAPI(config))):
        assert SECRET not in text and "sts-token-value" not in text
        assert "ak" in text
    instance = api.start_instance(user_id="u1")
    assert instance.token and instance.channel and instance.channel.token
    for text in (repr(instance), str(instance), repr(instance.channel)):
        assert instance.token not in text
        assert instance.channel.token not in text


def test_for_browser_never_has_the_im_token(api: AvatarOpenAPI) -> None:
    """for_browser() has the session id and the video channel in camelCase, not the IM token."""
    instance = api.start_instance(user_id="u1")
    view = instance.for_browser()
    assert instance.token is not None and instance.token not in json.dumps(view)
    assert view["sessionId"] == instance.session_id
    assert set(view["channel"]) == {
        "type",
        "appId",
        "channelId",
        "token",
        "nonce",
        "gslb",
        "userId",
        "userInfoInChannel",
        "expiredTime",
    }
    assert AvatarInstance(
        session_id="s", token="t", tenant_id=1, app_id="a", channel=None
    ).for_browser() == {"sessionId": "s", "channel": None}


def test_config_validation() -> None:
    """AliyunConfig converts a numeric tenant id and refuses bad values with typed errors."""
    base: dict[str, Any] = {"access_key_id": "ak", "access_key_secret": SECRET, "app_id": "app"}
    assert AliyunConfig(**base, tenant_id=" 42 ").tenant_id == 42
    assert AliyunConfig(**base, tenant_id=42, protocol="HTTP").protocol == "http"
    assert AliyunConfig(**base, tenant_id=42, security_token="").security_token is None
    cases: list[tuple[dict[str, Any], type[Exception]]] = [
        ({"tenant_id": "abc"}, InvalidArgumentError),
        ({"tenant_id": 0}, InvalidArgumentError),
        ({"tenant_id": True}, InvalidArgumentTypeError),
        ({"tenant_id": 1.5}, InvalidArgumentTypeError),
        ({"tenant_id": 1, "endpoint": "https://host"}, InvalidArgumentError),
        ({"tenant_id": 1, "protocol": "ftp"}, InvalidArgumentError),
        ({"tenant_id": 1, "app_id": ""}, InvalidArgumentError),
        ({"tenant_id": 1, "access_key_secret": 12345}, InvalidArgumentTypeError),
    ]
    for bad, error in cases:
        with pytest.raises(error) as info:
            AliyunConfig(**{**base, **bad})
        assert SECRET not in str(info.value)


def test_from_env_reads_every_variable() -> None:
    """from_env reads the access key, tenant, app and the optional endpoint and protocol."""
    config = AliyunConfig.from_env(
        {
            "ALIBABA_CLOUD_ACCESS_KEY_ID": "ak",
            "ALIBABA_CLOUD_ACCESS_KEY_SECRET": SECRET,
            "ALIBABA_CLOUD_SECURITY_TOKEN": "",
            "AVATAR_IM_TENANT_ID": "10001",
            "AVATAR_IM_APP_ID": "app",
            "AVATAR_IM_OPENAPI_ENDPOINT": "127.0.0.1:9",
            "AVATAR_IM_OPENAPI_PROTOCOL": "http",
        }
    )
    assert config == AliyunConfig(
        access_key_id="ak",
        access_key_secret=SECRET,
        tenant_id=10001,
        app_id="app",
        endpoint="127.0.0.1:9",
        protocol="http",
    )


def test_from_env_names_the_missing_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing required variable raises InvalidArgumentError naming it (os.environ default)."""
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", "ak")
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", SECRET)
    monkeypatch.setenv("AVATAR_IM_APP_ID", "app")
    monkeypatch.delenv("AVATAR_IM_TENANT_ID", raising=False)
    with pytest.raises(InvalidArgumentError, match="AVATAR_IM_TENANT_ID") as info:
        AliyunConfig.from_env()
    assert SECRET not in str(info.value)


def test_openapi_error_throttled() -> None:
    """Throttling codes and HTTP 429/503 count as throttled; other errors do not."""
    assert OpenAPIError("m", code="Throttling.User").throttled
    assert OpenAPIError("m", code="ServiceUnavailable", status=503).throttled
    assert OpenAPIError("m", code="X", status=429).throttled
    assert not OpenAPIError("m", code="SignatureDoesNotMatch", status=400).throttled
    error = OpenAPIError("bad", code="C", request_id="R", action="SendText")
    assert (str(error), error.message) == ("SendText: C: bad (request id R)", "bad")


def test_video_channel_for_browser_lists_gslb() -> None:
    """VideoChannel.for_browser() gives gslb as a list (JSON-able)."""
    channel = VideoChannel(type="DingRTC", gslb=("a", "b"), token="video")
    assert channel.for_browser()["gslb"] == ["a", "b"]
    json.dumps(channel.for_browser())


# --- the extra -------------------------------------------------------------------------------


def test_missing_extra_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the SDK, AvatarOpenAPI and FakeOpenAPI raise MissingExtraError (an ImportError)."""
    monkeypatch.setitem(sys.modules, "alibabacloud_avatar20220130", None)
    monkeypatch.setitem(sys.modules, "alibabacloud_avatar20220130.client", None)
    monkeypatch.setitem(sys.modules, "alibabacloud_openapi_util.client", None)
    config = AliyunConfig(access_key_id="ak", access_key_secret=SECRET, tenant_id=1, app_id="a")
    with pytest.raises(MissingExtraError, match=r"pip install 'avatar-im\[aliyun\]'") as info:
        AvatarOpenAPI(config)
    assert isinstance(info.value, ImportError)
    assert isinstance(info.value.__cause__, ImportError)
    with pytest.raises(MissingExtraError, match=r"avatar-im\[aliyun\]"):
        FakeOpenAPI(access_key_id="ak", access_key_secret=SECRET, tenant_id=1, app_id="a")


def test_importing_the_package_never_loads_the_sdk() -> None:
    """`import avatar_im` loads neither avatar_im.aliyun nor the SDK; the module alone no SDK."""
    code = (
        "import sys, avatar_im, avatar_im.server\n"
        "assert 'avatar_im.aliyun' not in sys.modules\n"
        "import avatar_im.aliyun\n"
        "sdk = [m for m in sys.modules if m.startswith(('alibabacloud', 'Tea', 'darabonba'))]\n"
        "assert not sdk, sdk\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=6 * TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_exported_names() -> None:
    """avatar_im.aliyun's __all__ is sorted (constants first) and every name resolves."""
    names = avatar_im.aliyun.__all__
    assert names == sorted(names, key=lambda n: (not n.isupper(), n))
    assert all(hasattr(avatar_im.aliyun, name) for name in names)


def test_openapi_fixture_skips_without_the_extra(pytester: pytest.Pytester) -> None:
    """The plugin's openapi fixture skips, saying which extra to install, without the SDK."""
    pytester.makeconftest(
        """
        import sys
        sys.modules["alibabacloud_openapi_util"] = None
        sys.modules["alibabacloud_openapi_util.client"] = None
        """
    )
    pytester.makepyfile(
        test_user_app="""
        def test_uses_the_fake(openapi):
            raise AssertionError("not reached")
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*avatar-im[[]aliyun[]]*"])


def test_openapi_fixture_is_wired_to_avatar_server(
    openapi: FakeOpenAPI, avatar_server: ReferenceServer
) -> None:
    """The openapi fixture is started, and its instances' tokens open avatar_server."""
    api = AvatarOpenAPI(openapi.config(), timeout=TIMEOUT)
    instance = api.start_instance(user_id="u1")
    im_connect(im_url(avatar_server, instance)).close()


# --- the fake itself -------------------------------------------------------------------------


def test_fake_stop_leaves_no_thread() -> None:
    """stop() ends the serve thread and every request thread; it is idempotent."""
    before = set(threading.enumerate())
    fake = FakeOpenAPI(access_key_id="ak", access_key_secret=SECRET, tenant_id=1, app_id="a")
    with fake:
        api = AvatarOpenAPI(fake.config(), timeout=TIMEOUT)
        api.start_instance(user_id="u")
        # A client that connects and never sends: its request thread must not outlive stop().
        silent = socket.create_connection(("127.0.0.1", fake.port), timeout=TIMEOUT)
    fake.stop()
    silent.close()
    leftover = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    assert leftover == []
    with pytest.raises(RuntimeError):
        fake.start()


# --- the command line ------------------------------------------------------------------------


@pytest.fixture
def cli_env(openapi: FakeOpenAPI, monkeypatch: pytest.MonkeyPatch) -> FakeOpenAPI:
    """The environment `avatar-im instance` reads, pointing at the fake."""
    config = openapi.config()
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", config.access_key_id)
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", config.access_key_secret)
    monkeypatch.delenv("ALIBABA_CLOUD_SECURITY_TOKEN", raising=False)
    monkeypatch.setenv("AVATAR_IM_TENANT_ID", str(config.tenant_id))
    monkeypatch.setenv("AVATAR_IM_APP_ID", config.app_id)
    monkeypatch.delenv("AVATAR_IM_OPENAPI_ENDPOINT", raising=False)
    monkeypatch.delenv("AVATAR_IM_OPENAPI_PROTOCOL", raising=False)
    return openapi


def run_instance(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(["instance", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_instance_start_query_stop(
    cli_env: FakeOpenAPI, capsys: pytest.CaptureFixture[str]
) -> None:
    """instance start|query|stop print JSON; the IM token only with --show-token."""
    where = ["--endpoint", cli_env.endpoint, "--protocol", "http"]
    code, out, _ = run_instance(capsys, "start", "--user-id", "u1", *where)
    assert code == 0
    started = json.loads(out)
    session_id = started["sessionId"]
    assert started["running"] is True and started["channel"]["type"] == "DingRTC"
    token = cli_env.token_of(session_id)
    assert token is not None and token not in out and "token" not in started

    code, out, _ = run_instance(capsys, "query", session_id, "--show-token", *where)
    assert code == 0
    assert json.loads(out)["token"] == token

    code, out, _ = run_instance(capsys, "stop", session_id, *where)
    assert (code, json.loads(out)) == (0, {"sessionId": session_id, "running": False})
    assert cli_env.running == []

    code, out, _ = run_instance(capsys, "query", session_id, *where)
    assert (code, json.loads(out)) == (1, {"sessionId": session_id, "running": False})


def test_cli_instance_errors_are_one_line(
    cli_env: FakeOpenAPI, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refused call exits 1, a missing variable 2, each with one line and no secret."""
    where = ["--endpoint", cli_env.endpoint, "--protocol", "http"]
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "a-wrong-secret")
    code, out, err = run_instance(capsys, "stop", "s1", *where)
    assert (code, out) == (1, "")
    assert len(err.splitlines()) == 1 and "SignatureDoesNotMatch" in err
    assert "a-wrong-secret" not in err

    monkeypatch.delenv("AVATAR_IM_APP_ID")
    code, out, err = run_instance(capsys, "stop", "s1", *where)
    assert (code, out) == (2, "")
    assert len(err.splitlines()) == 1 and "AVATAR_IM_APP_ID" in err


SERVE_OPENAPI = [sys.executable, "-m", "avatar_im", "serve", "--port", "0", "--openapi"]
SERVE_OPENAPI += ["--openapi-port", "0"]


def test_cli_serve_openapi_prints_a_working_config() -> None:
    """serve --openapi prints the fake's endpoint and environment; instance start works on it."""
    process = subprocess.Popen(
        SERVE_OPENAPI,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    assert process.stdout is not None
    stdout = process.stdout

    def read() -> None:
        for line in stdout:
            lines.put(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        env: dict[str, str] = {}
        for _ in range(20):  # the serving line, the fake's line, six exports
            line = lines.get(timeout=6 * TIMEOUT).strip()
            if line.startswith("export "):
                name, _, value = line.removeprefix("export ").partition("=")
                env[name] = value
            if len(env) == 6:
                break
        assert env["AVATAR_IM_OPENAPI_PROTOCOL"] == "http"
        result = subprocess.run(
            [sys.executable, "-m", "avatar_im", "instance", "start", "--user-id", "u1"],
            env={**os.environ, **env},
            check=False,
            capture_output=True,
            text=True,
            timeout=6 * TIMEOUT,
        )
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["running"] is True
    finally:
        process.send_signal(signal.SIGINT)
        try:
            assert process.wait(timeout=6 * TIMEOUT) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=TIMEOUT)
            reader.join(TIMEOUT)
            process.stdout.close()
            assert process.stderr is not None
            process.stderr.close()
