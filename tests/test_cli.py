"""Tests of the avatar-im command: help, version, demo, chat (piped and on a terminal),
send-audio's progress bar, -v and -vv, and serve (credentials, profiles, signals)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import re
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import TIMEOUT, wait_until

from avatar_im import AuthenticationError, AvatarIM, __version__
from avatar_im.audio import wav_bytes
from avatar_im.cli import build_parser, main, sine_pcm
from avatar_im.server import ReferenceServer

#: A bound on every command run here (each makes a connection and a session or two).
RUN_TIMEOUT = 6 * TIMEOUT


def run_cli(
    *args: str, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m avatar_im ARGS`` with *stdin* (and *env*); return the finished process."""
    return subprocess.run(
        [sys.executable, "-m", "avatar_im", *args],
        input=stdin,
        env=env,
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


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
def test_demo_relay_talks_through_a_host_and_redis() -> None:
    """demo --relay: the same conversation through a session host and a throwaway Redis."""
    pytest.importorskip("redis", reason="needs the 'relay' extra")
    result = run_cli("demo", "--relay", "--json", "--text", "ping")
    assert result.returncode == 0, result.stderr
    events = json_lines(result.stdout)
    assert [e["event"] for e in events[:3]] == ["server", "redis", "host"]
    kinds = [e["family"] for e in events if e["event"] == "received"]
    spoken = ["reply", "broadcast_start", "broadcast_end"]
    assert kinds == ["start_result", *spoken, "asr", *spoken, "stop_result"]
    replies = [e["message"]["content"]["text"] for e in events if e.get("family") == "reply"]
    assert replies[0] == "You said: ping"
    assert events[-1] == {"event": "done", "sent": 4}


def test_demo_relay_without_redis_server_is_one_line(tmp_path: Path) -> None:
    """No redis-server on the PATH: one line naming what to install, exit 1."""
    pytest.importorskip("redis", reason="needs the 'relay' extra")
    env = {**os.environ, "PATH": str(tmp_path)}
    result = run_cli("demo", "--relay", env=env)
    assert result.returncode == 1
    assert "redis-server" in result.stderr and len(result.stderr.strip().splitlines()) == 1


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


def all_parsers() -> dict[str, argparse.ArgumentParser]:
    """Every parser of ``avatar-im`` by its prog: the top one, each command, each action."""
    found: dict[str, argparse.ArgumentParser] = {}

    def walk(parser: argparse.ArgumentParser) -> None:
        found[parser.prog] = parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for child in action.choices.values():
                    walk(child)

    walk(build_parser())
    return found


@pytest.mark.parametrize("prog", sorted(all_parsers()))
def test_help_shows_every_default(prog: str) -> None:
    """Every option that takes a value shows its default in --help (in words if None)."""
    parser = all_parsers()[prog]
    shown = " ".join(parser.format_help().split())
    for action in parser._actions:
        if not action.option_strings or action.nargs == 0 or action.required:
            continue  # positionals, flags (--json, -v) and required options have none
        name = action.option_strings[-1]
        if action.default is None:
            assert "default" in (action.help or ""), f"{prog} {name}: default not said"
        else:
            assert f"(default: {action.default})" in shown, f"{prog} {name}: default not shown"


def test_verbose_works_after_the_command() -> None:
    """`demo -v` (the flag after the command) logs INFO, as `-v demo` does."""
    result = run_cli("demo", "--json", "-v")
    assert result.returncode == 0, result.stderr
    assert " INFO avatar_im" in result.stderr
    assert " DEBUG " not in result.stderr
    assert all(line.startswith("{") for line in result.stdout.splitlines())


def test_very_verbose_logs_every_frame_sent_and_received() -> None:
    """-vv (here one -v each side of the command) logs each frame, both ways, at DEBUG."""
    result = run_cli("-v", "demo", "-v", "--text", "ping")
    assert result.returncode == 0, result.stderr
    done = re.search(r"done: (\d+) messages sent, (\d+) acknowledged", result.stdout)
    assert done is not None
    sent = re.findall(r" DEBUG avatar_im\.transport: sent frame: 5\{.*", result.stderr)
    acks = re.findall(r" DEBUG avatar_im\.transport: received frame: 6\{", result.stderr)
    assert len(sent) == int(done.group(1)) and len(acks) == int(done.group(2))
    assert any('"text":"ping"' in line for line in sent)
    assert "received frame: 5{" in result.stderr and "You said: ping" in result.stderr
    assert "received frame: 1\n" in result.stderr  # the server's hello, a frame like others


# --- chat: Ctrl-C, and a terminal ------------------------------------------------------------


def read_lines(stream: Any) -> queue.Queue[str]:
    """Lines of the text *stream*, put on a queue by a daemon thread (until end of file)."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(
        target=lambda: [lines.put(line) for line in stream], name="cli-lines", daemon=True
    ).start()
    return lines


def next_line(lines: queue.Queue[str], wanted: Callable[[str], bool]) -> str:
    """The first line from *lines* for which *wanted* holds (bounded by RUN_TIMEOUT)."""
    deadline = time.monotonic() + RUN_TIMEOUT
    while True:
        line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        if wanted(line):
            return line


def wait_blocked(pid: int, *, on_a_lock: bool = False) -> None:
    """Wait (at most a second) until the main thread of *pid* sleeps in a blocking call.

    A signal that arrives just before that thread enters read(), select() or a lock's
    wait is only seen once that call returns: CPython's C handler sets a flag, and the
    call it did not interrupt goes on.  So wait until the thread sleeps in the kernel:
    reading its input, or (*on_a_lock*) on a futex (serve's wait).  Waiting for the GIL
    is a futex too, hence the choice.  Without /proc, or if it hides wchan, wait a second.
    """
    deadline = time.monotonic() + 1.0
    pause = threading.Event()
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/wchan") as file:
                wchan = file.read().strip()
        except OSError:
            wchan = "0"
        if wchan not in ("", "0") and ("futex" in wchan) == on_a_lock:
            return
        pause.wait(0.01)


def drain(lines: queue.Queue[str]) -> list[str]:
    """What is left on *lines* (the process has ended and its reader thread with it)."""
    rest = []
    with contextlib.suppress(queue.Empty):
        while True:
            rest.append(lines.get(timeout=TIMEOUT / 10))
    return rest


def test_chat_ctrl_c_stops_the_session_and_exits_130(cloud_server: ReferenceServer) -> None:
    """Ctrl-C (SIGINT) in chat stops the session cleanly, prints one line and exits 130."""
    argv = ["chat", "--url", cloud_server.url, "--session-id", "chat-int"]
    process = subprocess.Popen(
        [sys.executable, "-m", "avatar_im", *argv],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdin is not None and process.stdout is not None
    lines = read_lines(process.stdout)
    try:
        process.stdin.write("hi\n")
        process.stdin.flush()
        next_line(lines, lambda line: line == "avatar> You said: hi\n")
        wait_blocked(process.pid)
        process.send_signal(signal.SIGINT)
        assert process.wait(RUN_TIMEOUT) == 130
        assert drain(lines) == ["interrupted: session stopped: 3 messages sent, 3 acknowledged\n"]
        assert process.stderr is not None
        assert process.stderr.read() == ""
        snapshot = cloud_server.session("chat-int")
        assert snapshot is not None and snapshot.stopped and snapshot.texts == ["hi"]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(RUN_TIMEOUT)
        for pipe in (process.stdin, process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()


class Terminal:
    """The master side of a pseudo-terminal: what the program printed, keys to type."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.output = b""

    def type(self, keys: bytes) -> None:
        os.write(self.fd, keys)

    def wait_for(self, predicate: Callable[[bytes], bool], timeout: float = RUN_TIMEOUT) -> bool:
        """Read until *predicate(output)* holds, the program closes it, or *timeout*."""
        deadline = time.monotonic() + timeout
        while not predicate(self.output):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                return False
            try:
                data = os.read(self.fd, 4096)
            except OSError:  # EIO: every slave fd is closed (the program ended)
                return predicate(self.output)
            if not data:
                return predicate(self.output)
            self.output += data
        return True


@contextlib.contextmanager
def on_a_terminal(*args: str, **streams: Any) -> Iterator[tuple[subprocess.Popen[bytes], Terminal]]:
    """Run ``python -m avatar_im ARGS`` with stdin, stdout and stderr on a pseudo-terminal
    (those not given in *streams*); yield the process and the terminal."""
    master, slave = os.openpty()
    files = {name: streams.get(name, slave) for name in ("stdin", "stdout", "stderr")}
    process = subprocess.Popen(
        [sys.executable, "-m", "avatar_im", *args],
        **files,
        start_new_session=True,
        env={**os.environ, "TERM": "dumb"},
    )
    os.close(slave)
    try:
        yield process, Terminal(master)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(RUN_TIMEOUT)
        os.close(master)


def test_chat_on_a_terminal_recalls_lines_and_ends_ctrl_c_on_a_clean_line(
    cloud_server: ReferenceServer,
) -> None:
    """On a terminal, chat edits lines with readline: the up arrow recalls the last line.

    Ctrl-C leaves the prompt's line before the closing one, and exits 130.
    """
    argv = ["chat", "--url", cloud_server.url, "--session-id", "chat-tty"]
    with on_a_terminal(*argv) as (process, terminal):
        assert terminal.wait_for(lambda out: out.count(b"you> ") == 1)
        terminal.type(b"hello\r")
        assert terminal.wait_for(lambda out: out.count(b"you> ") == 2)
        terminal.type(b"\x1b[A\r")  # up arrow: the line before, then Enter
        assert terminal.wait_for(lambda out: out.count(b"avatar> You said: hello") == 2)
        assert terminal.wait_for(lambda out: out.count(b"you> ") == 3)
        wait_blocked(process.pid)
        process.send_signal(signal.SIGINT)
        assert process.wait(RUN_TIMEOUT) == 130
        terminal.wait_for(lambda out: b"acknowledged" in out)
    snapshot = cloud_server.session("chat-tty")
    assert snapshot is not None and snapshot.texts == ["hello", "hello"] and snapshot.stopped
    tail = terminal.output.replace(b"\r", b"").rsplit(b"you> ", 1)[1]
    assert tail == b"\ninterrupted: session stopped: 4 messages sent, 4 acknowledged\n"


# --- send-audio: one progress bar --------------------------------------------------------------


@pytest.fixture
def four_seconds(tmp_path: Path) -> Path:
    """A 4 s WAV file of a tone, in the session's format (16-bit mono 16 kHz)."""
    path = tmp_path / "tone.wav"
    path.write_bytes(wav_bytes(sine_pcm(4.0), 16000))
    return path


def test_send_audio_draws_one_progress_bar_off_a_terminal(
    cloud_server: ReferenceServer, four_seconds: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not on a terminal, the bar is one line at the end; stdout gets one summary line."""
    argv = ["send-audio", str(four_seconds), "--fast", "--url", cloud_server.url]
    assert main([*argv, "--reply-wait", "0.2", "--timeout", str(TIMEOUT)]) == 0
    out, err = capsys.readouterr()
    bars = [line for line in err.splitlines() if "%" in line]
    assert bars == [f"[{'#' * 30}] 100%    4.0/4.0 s"]
    assert out.count("-> sent 100 chunks (4.00 s), all acknowledged") == 1
    assert len(out.splitlines()) < 15  # no line per chunk


def test_send_audio_redraws_its_bar_in_place_on_a_terminal(
    cloud_server: ReferenceServer, four_seconds: Path
) -> None:
    """On a terminal the bar is redrawn on one line (carriage returns), ended by one newline."""
    argv = ["send-audio", str(four_seconds), "--fast", "--url", cloud_server.url]
    with on_a_terminal(*argv, "--reply-wait", "0.2", stdout=subprocess.DEVNULL) as (
        process,
        terminal,
    ):
        assert process.wait(RUN_TIMEOUT) == 0
        terminal.wait_for(lambda out: False, timeout=TIMEOUT / 10)  # read what is left
    bar = terminal.output.replace(b"\r\n", b"\n")
    assert bar.count(b"\n") == 1 and bar.endswith(b"100%    4.0/4.0 s\n")
    assert bar.count(b"\r[") > 2


# --- serve -------------------------------------------------------------------------------------


@contextlib.contextmanager
def serving(
    *args: str, ignore_sigint: bool = False
) -> Iterator[tuple[subprocess.Popen[str], str, queue.Queue[str]]]:
    """Run ``avatar-im serve --port 0 ARGS``; yield the process, its URL and its stdout lines.

    With *ignore_sigint* the process starts with SIGINT ignored, as a shell starts a
    background job (``avatar-im serve &``).
    """

    command = [sys.executable, "-m", "avatar_im", "serve", "--port", "0", *args]
    if ignore_sigint:  # what `cmd &` does in a shell script, then exec: the same process
        command = ["sh", "-c", 'trap "" INT; exec "$@"', "sh", *command]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stderr is not None
    lines = read_lines(process.stdout)
    try:
        first = lines.get(timeout=RUN_TIMEOUT)
        assert first.startswith("serving ws://127.0.0.1:"), first
        yield process, first.split()[1], lines
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(RUN_TIMEOUT)
        process.stdout.close()
        process.stderr.close()


def chat_client(url: str, token: str = "t", app_id: str = "a", tenant_id: str = "t") -> AvatarIM:
    return AvatarIM(token=token, app_id=app_id, tenant_id=tenant_id, session_id="serve-1", url=url)


def test_serve_runs_a_server_clients_can_use() -> None:
    """serve --port 0 prints its URL; a client gets replies from it; Ctrl-C stops it with 0."""
    with serving() as (process, url, lines):
        with chat_client(url) as client:
            client.start_session()
            client.wait_session_ready(TIMEOUT)
            answer = client.ask("over the wire", TIMEOUT)
            assert answer.text == "You said: over the wire"
            assert answer.reply.family == "reply"  # the cloud profile
        wait_blocked(process.pid, on_a_lock=True)
        process.send_signal(signal.SIGINT)
        assert process.wait(RUN_TIMEOUT) == 0
        assert drain(lines) == ["stopped\n"]


def test_serve_stops_cleanly_on_sigterm() -> None:
    """SIGTERM stops the server (its client sees the connection end), prints stopped, exit 0."""
    with serving() as (process, url, lines), chat_client(url) as client:
        client.wait_connected(TIMEOUT)
        wait_blocked(process.pid, on_a_lock=True)
        process.send_signal(signal.SIGTERM)
        assert process.wait(RUN_TIMEOUT) == 0
        assert drain(lines) == ["stopped\n"]
        assert process.stderr is not None and process.stderr.read() == ""
        assert wait_until(lambda: client.stats.state.value != "open", TIMEOUT)


def test_serve_in_the_background_stops_on_sigint() -> None:
    """Started with SIGINT ignored (`avatar-im serve &`), SIGINT still stops it cleanly."""
    with serving(ignore_sigint=True) as (process, _, lines):
        wait_blocked(process.pid, on_a_lock=True)
        process.send_signal(signal.SIGINT)
        assert process.wait(RUN_TIMEOUT) == 0
        assert drain(lines) == ["stopped\n"]


def test_serve_credentials_accept_only_those_tokens() -> None:
    """serve --credentials TOKEN:APP:TENANT (repeatable) accepts those and refuses others."""
    argv = ["--credentials", "good:app-1:ten-1", "--credentials", "tok:en:app-2:ten-2"]
    with serving(*argv) as (_, url, _lines):
        for token, app, tenant in (("good", "app-1", "ten-1"), ("tok:en", "app-2", "ten-2")):
            with chat_client(url, token, app, tenant) as client:
                client.wait_connected(TIMEOUT)
        for token, app, tenant in (("bad", "app-1", "ten-1"), ("good", "app-2", "ten-2")):
            with chat_client(url, token, app, tenant) as client, pytest.raises(AuthenticationError):
                client.wait_connected(TIMEOUT)


def test_serve_profile_echo_gives_the_exact_echo_replies() -> None:
    """serve --profile echo answers a text with the echo profile's textReply (not a reply)."""
    with serving("--profile", "echo") as (_, url, _lines), chat_client(url) as client:
        client.start_session()
        client.wait_session_ready(TIMEOUT)
        client.send_text("echo?")
        reply = client.receive(TIMEOUT, family=["reply", "text_reply"])
        assert reply.family == "text_reply" and reply.content["text"] == "You said: echo?"
