"""Tests of how the avatar-im command reports wrong input and failures.

Usage errors (a number out of range, an empty text) exit 2 with argparse's line naming the
flag, before any work; failures exit 1 with one line, ``avatar-im: error: <cause>``, and a
traceback only with -v.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import TIMEOUT

from avatar_im import cli
from avatar_im.server import Credentials, ReferenceServer

#: A bound on every command run here.
RUN_TIMEOUT = 6 * TIMEOUT


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m avatar_im ARGS`` (with *env* added); return the finished process."""
    return subprocess.run(
        [sys.executable, "-m", "avatar_im", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
        env=None if env is None else {**os.environ, **env},
    )


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port bound but not listening: a connection to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port another socket listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


# --- usage errors: checked by the parser, exit 2 ---------------------------------------------

USAGE_ERRORS = [
    (["serve", "--port", "70000"], "--port"),
    (["serve", "--port", "-1"], "--port"),
    (["serve", "--port", "http"], "--port"),
    (["serve", "--openapi-port", "65536"], "--openapi-port"),
    (["serve", "--credentials", "token-only"], "--credentials"),
    (["serve", "--credentials", "tok::tenant"], "--credentials"),
    (["serve", "--profile", "parrot"], "--profile"),
    (["send-audio", "missing.wav", "--sample-rate", "0"], "--sample-rate"),
    (["send-audio", "missing.wav", "--sample-rate", "7999"], "--sample-rate"),
    (["send-audio", "missing.wav", "--sample-rate", "192001"], "--sample-rate"),
    (["send-audio", "missing.wav", "--sample-rate", "16k"], "--sample-rate"),
    (["send-audio", "missing.wav", "--chunk-ms", "0"], "--chunk-ms"),
    (["send-audio", "missing.wav", "--chunk-ms", "-40"], "--chunk-ms"),
    (["send-audio", "missing.wav", "--chunk-ms", "inf"], "--chunk-ms"),
    (["send-audio", "missing.wav", "--chunk-ms", "1e9"], "--chunk-ms"),
    (["send-audio", "missing.wav", "--reply-wait", "-1"], "--reply-wait"),
    (["send-audio", "missing.wav", "--reply-wait", "nan"], "--reply-wait"),
    (["send-audio", "missing.wav", "--timeout", "0"], "--timeout"),
    (["demo", "--audio-seconds", "-1"], "--audio-seconds"),
    (["demo", "--audio-seconds", "0"], "--audio-seconds"),
    (["demo", "--audio-seconds", "nan"], "--audio-seconds"),
    (["demo", "--audio-seconds", "inf"], "--audio-seconds"),
    (["demo", "--text", ""], "--text"),
    (["demo", "--text", "   "], "--text"),
    (["demo", "--token", ""], "--token"),
    (["demo", "--timeout", "0"], "--timeout"),
    (["demo", "--timeout", "-1"], "--timeout"),
    (["demo", "--timeout", "inf"], "--timeout"),
    (["chat", "--timeout", "nan"], "--timeout"),
    (["instance", "stop", "s1", "--timeout", "0"], "--timeout"),
]


@pytest.mark.parametrize(("argv", "flag"), USAGE_ERRORS, ids=[" ".join(a) for a, _ in USAGE_ERRORS])
def test_bad_numbers_and_empty_texts_are_usage_errors_naming_the_flag(
    argv: list[str], flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each bad value exits 2 with argparse's line for its flag, before any work starts."""
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    out, err = capsys.readouterr()
    command = " ".join(argv[:2]) if argv[0] == "instance" else argv[0]
    last = err.splitlines()[-1]
    assert last.startswith(f"avatar-im {command}: error: argument {flag}: "), err
    assert out == "" and "Traceback" not in err


def test_timeout_zero_and_negative_get_one_message_naming_the_flag(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--timeout 0 and --timeout -1 say the same thing, about --timeout, not connect_timeout."""
    messages = []
    for value in ("0", "-1"):
        with pytest.raises(SystemExit):
            cli.main(["demo", "--timeout", value])
        last = capsys.readouterr().err.splitlines()[-1]
        messages.append(last.replace(repr(value), "VALUE"))
    assert messages[0] == messages[1]
    assert "argument --timeout: " in messages[0] and "connect_timeout" not in messages[0]


# --- serve: one line when it cannot listen ---------------------------------------------------


def test_serve_reports_a_port_in_use_in_one_line(busy_port: int) -> None:
    """serve on a port in use: one line naming the address and the reason, exit 1."""
    result = run_cli("serve", "--port", str(busy_port))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"avatar-im serve: cannot listen on 127.0.0.1:{busy_port}: Address already in use"
    ]
    assert result.stdout == ""


def test_serve_reports_an_unresolvable_host_in_one_line() -> None:
    """serve on a host name that does not resolve: one line, exit 1, no traceback."""
    result = run_cli("serve", "--host", "no-such-host.invalid", "--port", "0")
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith("avatar-im serve: cannot listen on no-such-host.invalid:0: ")
    assert "attempting to bind" not in line


def test_serve_port_out_of_range_is_a_usage_error() -> None:
    """serve --port 65536 exits 2 with argparse's line, not a traceback from bind()."""
    result = run_cli("serve", "--port", "65536")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "avatar-im serve: error: argument --port: must be a port number from 0 to 65535 "
        "(0: any free port), got '65536' (see avatar-im serve --help)"
    ]  # one line: no usage block before it
    assert "Traceback" not in result.stderr


# --- failures: one line, exit 1 ----------------------------------------------------------------


def test_a_refused_port_reports_the_connection_refused(closed_port: int) -> None:
    """With nothing listening, the error says the connection was refused, in one line."""
    url = f"ws://127.0.0.1:{closed_port}/ws"
    result = run_cli("demo", "--url", url, "--timeout", "1")
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith("avatar-im: error: not connected after 1.0s: ")
    assert line.endswith("cannot connect: connection refused")
    assert f"127.0.0.1:{closed_port}" in line


def test_a_refused_token_prints_one_line() -> None:
    """A 401 at the handshake: one error line (no warning beside it), exit 1."""
    good = Credentials(token="good-token", app_id="demo-app", tenant_id="demo-tenant")
    with ReferenceServer(credentials=[good]) as server:
        result = run_cli("demo", "--url", server.url, "--token", "bad-token")
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith("avatar-im: error: ") and "401" in line
    assert "bad-token" not in result.stderr + result.stdout


def test_a_failure_shows_its_traceback_only_with_verbose(closed_port: int) -> None:
    """-v (before or after the command) adds the traceback; the last line stays the error."""
    url = f"ws://127.0.0.1:{closed_port}/ws"
    quiet = run_cli("chat", "--url", url, "--timeout", "0.5")
    verbose = run_cli("chat", "--url", url, "--timeout", "0.5", "-v")
    assert (quiet.returncode, verbose.returncode) == (1, 1)
    assert "Traceback" not in quiet.stderr
    assert "Traceback (most recent call last)" in verbose.stderr
    assert verbose.stderr.splitlines()[-1] == quiet.stderr.splitlines()[-1]


def test_an_unexpected_error_is_one_line_too(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An error that is not the library's still gives one line and exit 1 (traceback: -v)."""

    def broken(args: object) -> int:
        raise RuntimeError("something broke")

    monkeypatch.setattr(cli, "_cmd_demo", broken)
    assert cli.main(["demo"]) == 1
    assert capsys.readouterr().err == "avatar-im: error: RuntimeError: something broke\n"
    assert cli.main(["demo", "-v"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.endswith("avatar-im: error: RuntimeError: something broke\n")


def test_send_audio_of_a_directory_is_one_line(tmp_path: Path) -> None:
    """send-audio of a directory: one line with the reason, exit 1."""
    result = run_cli("send-audio", str(tmp_path))
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith("avatar-im: error: ")


def test_a_url_that_is_not_websocket_is_a_usage_error_naming_the_flag() -> None:
    """demo --url http://... exits 2 naming --url, before connecting."""
    result = run_cli("demo", "--url", "http://127.0.0.1:1/ws")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "avatar-im demo: error: argument --url: must be a ws:// or wss:// URL, got "
        "'http://127.0.0.1:1/ws' (see avatar-im demo --help)"
    ]


def test_host_numbers_are_usage_errors_and_help_shows_no_secret() -> None:
    """host --lease-ttl 0 exits 2 naming the flag; --help never prints the token."""
    result = run_cli("host", "--redis", "redis://127.0.0.1:1", "--lease-ttl", "0")
    assert result.returncode == 2 and "argument --lease-ttl" in result.stderr
    result = run_cli("host", "--help", env={"AVATAR_IM_TOKEN": "sekrit-token-123"})
    assert result.returncode == 0 and "sekrit-token-123" not in result.stdout


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--redis", "http://127.0.0.1:1"], "--redis"),
        (["--redis", "redis://127.0.0.1:1", "--token", ""], "--token"),
        (["--redis", "redis://127.0.0.1:1", "--lease-ttl", "0.1"], "--lease-ttl"),
        (["--redis", "redis://127.0.0.1:1", "--prefix", ""], "--prefix"),
        (["--redis", "redis://127.0.0.1:1", "--host-id", ""], "--host-id"),
        (["--redis", "redis://127.0.0.1:1", "--url", "http://127.0.0.1:1/ws"], "url"),
    ],
)
def test_host_bad_values_are_one_line_usage_errors(args: list[str], flag: str) -> None:
    """Each wrong host value: exit 2, one line naming it, no traceback (both entry points)."""
    env = {"AVATAR_IM_URL": "ws://127.0.0.1:1/ws", "ALIBABA_CLOUD_ACCESS_KEY_ID": ""}
    for command in (
        [sys.executable, "-m", "avatar_im", "host"],
        [sys.executable, "-m", "avatar_im.host"],
    ):
        result = subprocess.run(
            [*command, *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            check=False,
            env={**os.environ, **env},
        )
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and flag in lines[0], lines


def test_host_without_redis_is_one_line() -> None:
    """No Redis at the URL: one line saying the host cannot use Redis, exit 1."""
    result = run_cli(
        "host", "--redis", "redis://127.0.0.1:1/0", env={"AVATAR_IM_URL": "ws://127.0.0.1:1/ws"}
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot use Redis" in lines[0], lines


def test_host_never_prints_a_redis_password() -> None:
    from avatar_im.host import shown_redis_url

    shown = shown_redis_url("rediss://user:hunter2@db:6380/1?password=hunter2&ssl_cert_reqs=none")
    assert "hunter2" not in shown and shown.startswith("rediss://db:6380/1?")
    assert "ssl_cert_reqs=none" in shown
