"""Tests of the avatar-im command: help, version, demo, chat over stdin, and serve."""

from __future__ import annotations

import argparse
import json
import queue
import signal
import subprocess
import sys
import threading
from typing import Any

import pytest
from conftest import TIMEOUT

from avatar_im import AvatarIM, __version__
from avatar_im.cli import build_parser, main
from avatar_im.server import ReferenceServer

#: A bound on every command run here (each makes a connection and a session or two).
RUN_TIMEOUT = 6 * TIMEOUT


def run_cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """Run ``python -m avatar_im ARGS`` with *stdin*; return the finished process."""
    return subprocess.run(
        [sys.executable, "-m", "avatar_im", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )


def json_lines(output: str) -> list[dict[str, Any]]:
    """Each line of *output* parsed as one JSON object."""
    return [json.loads(line) for line in output.splitlines()]


def subcommands() -> dict[str, argparse.ArgumentParser]:
    """The parser of each ``avatar-im`` command, by name."""
    parser = build_parser()
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert len(actions) == 1
    return dict(actions[0].choices)


def test_version_prints_the_package_version() -> None:
    """--version prints the version from avatar_im._version and exits 0."""
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"avatar-im {__version__}"


def test_top_level_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    """avatar-im --help names each command with its one-line help."""
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "-v, --verbose" in out
    for name in subcommands():
        assert name in out
    assert {"serve", "demo", "chat"} <= set(subcommands())


@pytest.mark.parametrize("command", sorted(subcommands()))
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    """COMMAND --help exits 0 with a description and help text for every option."""
    parser = subcommands()[command]
    assert parser.description
    for action in parser._actions:
        assert action.help, f"{command}: {action.option_strings or action.dest} has no help"
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert f"usage: avatar-im {command}" in capsys.readouterr().out


def test_demo_runs_a_conversation() -> None:
    """demo talks to an embedded server: the reply and broadcast of a text, ASR of audio."""
    result = run_cli("demo", "--text", "ping")
    assert result.returncode == 0, result.stderr
    assert '<- reply {"text": "You said: ping"}' in result.stdout
    assert "<- broadcast_end " in result.stdout
    assert '<- asr {"text": "0.5 seconds of speech", "final": true}' in result.stdout
    assert result.stdout.splitlines()[-1].startswith("done: ")


def test_demo_json_prints_one_object_per_line() -> None:
    """demo --json prints only JSON objects, from the server's URL to the final counts."""
    result = run_cli("demo", "--json")
    assert result.returncode == 0, result.stderr
    events = json_lines(result.stdout)
    assert [e["event"] for e in events[:2]] == ["server", "connected"]
    assert events[-1]["event"] == "done"
    assert events[-1]["sent"] == events[-1]["acked"]
    kinds = [e["family"] for e in events if e["event"] == "received"]
    spoken = ["reply", "broadcast_start", "broadcast_end"]
    assert kinds == ["start_result", *spoken, "asr", *spoken, "stop_result"]


def test_verbose_logs_to_stderr() -> None:
    """-v turns on INFO logging on stderr and leaves stdout to the JSON output."""
    result = run_cli("-v", "demo", "--json")
    assert result.returncode == 0, result.stderr
    assert " INFO avatar_im" in result.stderr
    assert all(line.startswith("{") for line in result.stdout.splitlines())


def test_chat_sends_each_line_and_stops_at_end_of_input(cloud_server: ReferenceServer) -> None:
    """chat sends every non-blank stdin line, prints each reply, and stops the session at EOF."""
    server = cloud_server
    result = run_cli(
        "chat", "--url", server.url, "--session-id", "chat-1", stdin="hello\n\n  world  \n"
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[-5:] == [
        "you> hello",
        "avatar> You said: hello",
        "you> world",
        "avatar> You said: world",
        "session stopped: 4 messages sent, 4 acknowledged",
    ]
    snapshot = server.session("chat-1")
    assert snapshot is not None
    assert snapshot.texts == ["hello", "world"]
    assert snapshot.stopped


def test_chat_json_pairs_each_sent_line_with_its_reply(cloud_server: ReferenceServer) -> None:
    """chat --json prints a sent event per line followed by the reply to that line."""
    result = run_cli("chat", "--json", "--url", cloud_server.url, stdin="one\ntwo\n")
    assert result.returncode == 0, result.stderr
    events = json_lines(result.stdout)
    assert [e["event"] for e in events] == [
        "connected",
        "ready",
        "sent",
        "received",
        "sent",
        "received",
        "stopped",
    ]
    for sent, received in ((events[2], events[3]), (events[4], events[5])):
        assert received["family"] == "reply"
        assert received["reply_to"] == sent["message_id"]
        assert received["message"]["content"]["text"] == f"You said: {sent['text']}"


def test_chat_with_no_input_ends_cleanly(server: ReferenceServer) -> None:
    """chat with an empty stdin starts and stops the session and exits 0."""
    result = run_cli("chat", "--url", server.url, "--session-id", "chat-2")
    assert result.returncode == 0, result.stderr
    snapshot = server.session("chat-2")
    assert snapshot is not None
    assert snapshot.stopped
    assert snapshot.texts == []


def test_chat_reports_a_refused_connection() -> None:
    """chat exits 1 with a one-line error, the token redacted, when the server refuses it."""
    with ReferenceServer() as srv:
        srv.faults.refuse_handshake = 403
        result = run_cli("chat", "--url", srv.url, "--token", "s3cret", stdin="hi\n")
    assert result.returncode == 1
    last = result.stderr.splitlines()[-1]
    assert last.startswith("avatar-im: error: ")
    assert "403" in last
    assert "s3cret" not in result.stderr + result.stdout


def test_serve_runs_a_server_clients_can_use() -> None:
    """serve --port 0 prints its URL; a client gets replies from it; Ctrl-C stops it with 0."""
    process = subprocess.Popen(
        [sys.executable, "-m", "avatar_im", "serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    assert process.stdout is not None
    stdout = process.stdout
    reader = threading.Thread(
        target=lambda: [lines.put(line) for line in stdout], name="serve-stdout", daemon=True
    )
    reader.start()
    try:
        first = lines.get(timeout=RUN_TIMEOUT)
        assert first.startswith("serving ws://127.0.0.1:")
        url = first.split()[1]
        with AvatarIM(
            token="t", app_id="a", tenant_id="t", session_id="serve-1", url=url
        ) as client:
            client.start_session()
            client.wait_session_ready(TIMEOUT)
            assert client.ask("over the wire", TIMEOUT).text == "You said: over the wire"
        process.send_signal(signal.SIGINT)
        assert process.wait(RUN_TIMEOUT) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(RUN_TIMEOUT)
        reader.join(TIMEOUT)
        stdout.close()
        assert process.stderr is not None
        process.stderr.close()
