"""The ``avatar-im`` command: ``serve`` a reference server, run a ``demo`` conversation.

``serve --openapi`` runs the fake avatar OpenAPI beside it, and ``instance
start|query|stop`` calls the OpenAPI (the real one, or that fake) through
Alibaba Cloud's SDK; both need the ``aliyun`` extra, imported only by them.

The only module of the package that prints.  Exit status: 0 on success, 1
when a call or a connection fails (one line, ``avatar-im: error: <cause>``; the
traceback too with ``-v``), 2 for a usage or configuration error (argparse's
one line, naming the flag), 130 after Ctrl-C.  Every number is checked by the
parser, before any work starts.  ``-v`` (INFO) and ``-vv`` (DEBUG, and every
WebSocket frame sent and received) work before and after the command.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import re
import secrets
import signal
import ssl
import struct
import sys
import threading
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from types import FrameType
from typing import Any, NoReturn, Protocol

import attrs

from ._version import __version__
from .audio import AudioStream
from .client import AvatarIM
from .exceptions import AskTimeout, AvatarIMError, ConnectionFailedError, ConnectTimeout
from .inbox import Answer
from .messages import Message
from .urls import redact_url

__all__ = ["main", "sine_pcm"]

logger = logging.getLogger(__name__)


def sine_pcm(seconds: float, *, rate: int = 16000, freq: float = 440.0) -> bytes:
    """A *seconds*-long 16-bit mono PCM sine tone at *rate* Hz (for demos and tests)."""
    n = int(seconds * rate)
    amplitude = 0.3 * 32767
    return struct.pack(
        f"<{n}h", *(int(amplitude * math.sin(2 * math.pi * freq * i / rate)) for i in range(n))
    )


# --- argument types: every number is checked by the parser, before any work ------------------

#: The longest wait a --timeout or --reply-wait may ask for (a day).
MAX_WAIT = 86400.0
#: The sample rates a session may use (Hz).
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 8000, 192000
#: The longest demo tone (s): sent as one message, it must stay well under the size limits.
MAX_AUDIO_SECONDS = 60.0
#: The chunk lengths send-audio takes (ms): at least a sample at 8000 Hz, and a chunk at
#: 192000 Hz (3.84 MB, 5.1 MB in base64) well under the 16 MiB message limit.
MIN_CHUNK_MS, MAX_CHUNK_MS = 1.0, 10000.0


def _float_range(
    what: str, symbol: str, low: float, high: float, *, low_open: bool = False
) -> Callable[[str], float]:
    """An argparse type: a finite float in [*low*, *high*] (``(low, high]`` with *low_open*)."""
    bound = f"0 < {symbol}" if low_open and low == 0 else f"{low:g} <= {symbol}"
    message = f"must be a number of {what}, {bound} <= {high:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        below = value <= low if low_open else value < low
        if not math.isfinite(value) or below or value > high:
            raise argparse.ArgumentTypeError(f"{message}, got {text!r}")
        return value

    return parse


def _int_range(what: str, low: int, high: int, note: str = "") -> Callable[[str], int]:
    """An argparse type: an int in [*low*, *high*]."""
    message = f"must be {what} from {low} to {high}{note}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{message}, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{message}, got {text!r}")
        return value

    return parse


_timeout = _float_range("seconds", "s", 0, MAX_WAIT, low_open=True)
_wait = _float_range("seconds", "s", 0, MAX_WAIT)
_audio_seconds = _float_range("seconds", "s", 0, MAX_AUDIO_SECONDS, low_open=True)
_chunk_ms = _float_range("milliseconds", "ms", MIN_CHUNK_MS, MAX_CHUNK_MS)
_sample_rate = _int_range("a sample rate in Hz", MIN_SAMPLE_RATE, MAX_SAMPLE_RATE)
_port = _int_range("a port number", 0, 65535, " (0: any free port)")


def _text(text: str) -> str:
    """An argparse type: a string that is not empty or blank."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def _credentials(text: str) -> tuple[str, str, str]:
    """An argparse type: ``TOKEN:APP_ID:TENANT_ID`` (the token may hold colons)."""
    parts = text.rsplit(":", 2)
    if len(parts) != 3 or not all(parts):
        # Not repeated: the token is a secret.
        raise argparse.ArgumentTypeError("must be TOKEN:APP_ID:TENANT_ID, three non-empty parts")
    token, app_id, tenant_id = parts
    return token, app_id, tenant_id


@contextmanager
def _embedded_server(args: argparse.Namespace) -> Iterator[str]:
    """Yield the URL to talk to: the given one, or an embedded reference server's."""
    if args.url:
        yield args.url
        return
    try:
        from .server import ReferenceServer
    except ImportError as exc:  # the 'server' extra is missing
        raise SystemExit(
            "the embedded reference server needs the 'server' extra: "
            "pip install 'avatar-im[server]'  (or pass --url)"
        ) from exc
    with ReferenceServer(host="127.0.0.1", port=0) as server:
        _say(args, f"reference server at {server.url}", event="server", url=server.url)
        yield server.url


def _say(args: argparse.Namespace, line: str, /, **fields: Any) -> None:
    """Print *line*, or with ``--json`` the *fields* as one JSON object."""
    if args.json:
        print(json.dumps(fields, ensure_ascii=False), flush=True)
    else:
        print(line, flush=True)


def _say_done(args: argparse.Namespace, client: AvatarIM) -> None:
    """Print the closing summary: messages sent and acknowledged."""
    stats = client.stats
    _say(
        args,
        f"done: {stats.messages_sent} messages sent, {stats.acks_received} acknowledged",
        event="done",
        sent=stats.messages_sent,
        acked=stats.acks_received,
    )


def _describe(message: Message) -> str:
    """One line for a received message: its family and the content beside type and session."""
    rest = {k: v for k, v in message.content.items() if k not in ("type", "sessionId")}
    name = message.family if message.family != "unknown" else f"unknown {message.type!r}"
    return f"{name} {json.dumps(rest, ensure_ascii=False)}"


def _show(args: argparse.Namespace, message: Message, **fields: Any) -> None:
    """Print a received message (JSON: its family and raw envelope)."""
    _say(
        args,
        f"<- {_describe(message)}",
        event="received",
        family=message.family,
        message=dict(message.raw),
        **fields,
    )


class _Receives(Protocol):
    """What _print_until reads from: an AvatarIM, or a RelayClient."""

    def receive(self, timeout: float | None = None) -> Message: ...


def _print_until(
    args: argparse.Namespace, client: _Receives, done: Callable[[Message], bool], timeout: float
) -> bool:
    """Print what arrives until a message for which *done* holds; False after *timeout* idle.

    With a *done* that never holds: print everything until *timeout* seconds pass idle.
    """
    from .exceptions import ReceiveTimeout

    while True:
        try:
            message = client.receive(timeout)
        except ReceiveTimeout:
            return False
        _show(args, message)
        if done(message):
            return True


def _client(args: argparse.Namespace, url: str) -> AvatarIM:
    return AvatarIM(
        token=args.token,
        app_id=args.app_id,
        tenant_id=args.tenant_id,
        session_id=args.session_id or f"demo-{uuid.uuid4().hex[:12]}",
        url=url,
        connect_timeout=args.timeout,
    )


def _cmd_demo(args: argparse.Namespace) -> int:
    """One conversation: start, a text, a short audio clip, stop; print every reply.

    With --relay (or --redis URL), the same conversation goes through the Redis relay: a
    session host holds the WebSocket and the demo talks to it by Redis alone, as a web
    worker does (a throwaway redis-server on loopback without --redis).
    """
    if args.relay or args.redis:
        return _relay_demo(args)
    timeout = args.timeout
    with _embedded_server(args) as url, _client(args, url) as client:
        client.wait_connected(timeout)
        _say(args, f"connected to {client.url}", event="connected", url=client.url)
        _converse(args, client)
        client.flush(timeout)
        _print_until(args, client, lambda m: m.family == "stop_result", min(timeout, 2.0))
        _say_done(args, client)
    return 0


def _converse(args: argparse.Namespace, avatar: Any) -> None:
    """The demo's conversation, on an AvatarIM or a RelayClient: start, text, audio, stop."""
    timeout = args.timeout
    mid = avatar.start_session(format="pcm", sample_rate=16000)
    _show(args, avatar.wait_session_ready(timeout), reply_to=mid)

    # A text: ask() returns the avatar's reply and, waited for, its broadcast.
    _say(args, f"-> text: {args.text}", event="sent", kind="text", text=args.text)
    answer = avatar.ask(args.text, timeout, wait_spoken=True)
    for message in (answer.reply, answer.broadcast_start, answer.broadcast_end):
        if message is not None:
            _show(args, message, reply_to=answer.message_id)

    # Audio: a tone, then silence, so that the service hears an utterance end.
    clip = sine_pcm(args.audio_seconds) + bytes(2 * 16000 * 6 // 10)
    message_id = avatar.send_audio(clip)
    _say(
        args,
        f"-> audio: {args.audio_seconds:g} s of tone, 0.6 s of silence",
        event="sent",
        kind="audio",
        message_id=message_id,
    )
    if not _print_until(args, avatar, lambda m: m.family == "broadcast_end", timeout):
        _say(args, f"(no spoken answer to the audio within {timeout:g} s)", event="no_reply")
    avatar.stop_session()


def _relay_demo(args: argparse.Namespace) -> int:
    """The demo through a session host and Redis (``demo --relay``)."""
    try:
        from .host import SessionHost
        from .relay import RelayClient, close_pools
    except ImportError as exc:
        raise SystemExit(f"avatar-im demo --relay: {exc}") from exc
    from .local_redis import local_redis

    timeout = args.timeout
    # A prefix of its own: a host of a real deployment on the same Redis never takes it.
    prefix = f"avatar-im-demo-{uuid.uuid4().hex[:8]}"
    with ExitStack() as stack:
        url = stack.enter_context(_embedded_server(args))
        redis_url = args.redis or stack.enter_context(local_redis())
        if not args.redis:
            _say(args, f"redis-server at {redis_url}", event="redis", url=redis_url)
        host = SessionHost(
            redis_url,
            url=url,
            token=args.token,
            app_id=args.app_id,
            tenant_id=args.tenant_id,
            prefix=prefix,
            max_sessions=1,
        )
        stack.enter_context(host)
        stack.callback(close_pools)
        _say(args, f"session host {host.host_id} up", event="host", host=host.host_id)
        session_id = args.session_id or f"demo-{uuid.uuid4().hex[:12]}"
        avatar = stack.enter_context(RelayClient(redis_url, session_id=session_id, prefix=prefix))
        _converse(args, avatar)
        _print_until(args, avatar, lambda m: m.family == "stop_result", min(timeout, 2.0))
        _say(
            args,
            f"done: {host.commands} commands through Redis, sent by the host",
            event="done",
            sent=host.commands,
        )
    return 0


#: Files longer than this many seconds get a progress bar.
PROGRESS_MIN_SECONDS = 3.0


class _ProgressBar:
    """One progress bar on stderr: redrawn in place on a terminal, else drawn once at the end.

    Elsewhere (a pipe, a log file) only the final state is printed, as one line, so that
    a long file does not fill the log with bars.
    """

    def __init__(self, total: float, *, width: int = 30) -> None:
        self.total = total
        self.width = width
        self.tty = sys.stderr.isatty()
        self._done = 0.0
        self._shown = -1  # the percentage last drawn on the terminal (-1: none on screen)

    def _text(self) -> str:
        done = self._done
        fraction = min(1.0, done / self.total) if self.total > 0 else 1.0
        filled = round(fraction * self.width)
        bar = "#" * filled + "." * (self.width - filled)
        return f"[{bar}] {int(fraction * 100):3d}% {done:6.1f}/{self.total:.1f} s"

    def update(self, done: float) -> None:
        self._done = done
        if not self.tty:
            return
        fraction = min(1.0, done / self.total) if self.total > 0 else 1.0
        percent = int(fraction * 100)
        if percent == self._shown:
            return
        self._shown = percent
        print(f"\r{self._text()}", end="", file=sys.stderr, flush=True)

    def clear(self) -> None:
        """Erase the bar's line (on a terminal) so that a reply can be printed."""
        if self.tty and self._shown >= 0:
            print("\r\033[K", end="", file=sys.stderr, flush=True)
            self._shown = -1

    def finish(self) -> None:
        """End the bar's line (terminal), or print the bar's final state (elsewhere)."""
        if self.tty:
            if self._shown < 0:  # cleared by a reply since: draw the final state again
                print(f"\r{self._text()}", end="", file=sys.stderr)
            print(file=sys.stderr, flush=True)
        else:
            print(self._text(), file=sys.stderr, flush=True)


def _cmd_send_audio(args: argparse.Namespace) -> int:
    """Stream an audio file to the avatar in chunks (at real-time pace by default); print replies.

    FILE is a WAV file in the session's format (16-bit mono at --sample-rate);
    other rates, widths, channel counts and formats are converted when the
    'audio' extra is installed.
    """
    from .audio import BYTES_PER_SAMPLE, read_audio
    from .exceptions import ReceiveTimeout

    timeout = args.timeout
    pcm = read_audio(args.file, sample_rate=args.sample_rate)  # a bad file fails before connecting
    seconds = len(pcm) / (BYTES_PER_SAMPLE * args.sample_rate)
    with _embedded_server(args) as url, _client(args, url) as client:
        client.wait_connected(timeout)
        _say(args, f"connected to {client.url}", event="connected", url=client.url)
        mid = client.start_session(format="pcm", sample_rate=args.sample_rate)
        _show(args, client.wait_session_ready(timeout), reply_to=mid)
        pace = "real time" if args.realtime else "fast"
        _say(
            args,
            f"-> audio: {args.file} ({seconds:.2f} s, {pace}, {args.chunk_ms:g} ms chunks)",
            event="streaming",
            file=args.file,
            seconds=seconds,
            realtime=args.realtime,
        )
        bar = None
        if seconds > PROGRESS_MIN_SECONDS and not args.no_progress:
            bar = _ProgressBar(seconds)

        def on_progress(stream: AudioStream) -> None:
            # Runs after each chunk, on this thread: print what came back, then the bar.
            while True:
                try:
                    reply = client.receive(0)
                except ReceiveTimeout:
                    break
                if bar is not None:
                    bar.clear()
                _show(args, reply)
            if bar is not None:
                bar.update(stream.seconds_sent)

        try:
            stream = client.stream_audio(
                pcm, chunk_ms=args.chunk_ms, realtime=args.realtime, on_progress=on_progress
            )
        finally:
            if bar is not None:
                bar.finish()
        client.flush(timeout)
        _say(
            args,
            f"-> sent {stream.chunks_sent} chunks ({stream.seconds_sent:.2f} s), all acknowledged",
            event="sent",
            chunks=stream.chunks_sent,
            seconds=stream.seconds_sent,
        )
        _print_until(args, client, lambda m: False, args.reply_wait)
        client.stop_session()
        client.flush(timeout)
        _print_until(args, client, lambda m: False, args.reply_wait)
        _say_done(args, client)
    return 0


def _cmd_chat(args: argparse.Namespace) -> int:
    """Chat with the avatar: each line you type is sent as text and the reply printed.

    Ctrl-D (end of input) ends the session cleanly: the session is stopped and
    every message acknowledged before the client closes.  Ctrl-C does the same
    and exits with 130.  On a terminal, lines can be edited and earlier ones
    recalled (arrow keys, readline).  Lines can be piped in.
    """

    timeout = args.timeout
    interactive = sys.stdin.isatty() and not args.json
    if interactive:
        with suppress(ImportError):  # line editing and history for input(), where available
            importlib.import_module("readline")
    with _embedded_server(args) as url, _client(args, url) as client:
        client.wait_connected(timeout)
        _say(args, f"connected to {client.url}", event="connected", url=client.url)
        client.start_session(format="pcm", sample_rate=16000)
        client.wait_session_ready(timeout)
        _say(args, "session ready: type a line, Ctrl-D to end", event="ready")
        try:
            _chat_lines(args, client, interactive)
        except KeyboardInterrupt:
            if interactive:
                print(flush=True)  # off the prompt's line
            return _chat_stopped(args, client, interrupted=True)
        if interactive:
            print()
        return _chat_stopped(args, client, interrupted=False)


def _chat_lines(args: argparse.Namespace, client: AvatarIM, interactive: bool) -> None:
    """Send each line read as a text and print its reply, until the end of input."""
    timeout = args.timeout
    while True:
        try:
            line = input("you> ") if interactive else sys.stdin.readline()
        except EOFError:
            line = ""
        if not line:  # end of input
            return
        text = line.strip()
        if not text:
            continue
        if not interactive and not args.json:
            print(f"you> {text}", flush=True)
        answer: Answer | None = None
        try:
            answer = client.ask(text, timeout)
            message_id = answer.message_id
        except AskTimeout as exc:
            print(f"avatar-im: no reply within {timeout:g} s", file=sys.stderr)
            message_id = exc.message_id
        if args.json:  # not _say(): its own parameter is named "text"
            sent = {"event": "sent", "kind": "text", "message_id": message_id, "text": text}
            print(json.dumps(sent, ensure_ascii=False), flush=True)
            if answer is not None:
                _show(args, answer.reply, reply_to=message_id)
        elif answer is not None:
            print(f"avatar> {answer.text}", flush=True)


#: How long chat waits, after Ctrl-C, for the session's stop to be acknowledged (s).
INTERRUPT_FLUSH = 2.0


def _chat_stopped(args: argparse.Namespace, client: AvatarIM, *, interrupted: bool) -> int:
    """Stop the session, wait for the acks, print one line; return the exit status.

    After Ctrl-C (*interrupted*) the wait is short, a failure to stop is not
    reported (the user asked to leave), and the status is 130.
    """
    if interrupted:
        with suppress(AvatarIMError):
            client.stop_session()
            client.flush(min(args.timeout, INTERRUPT_FLUSH))
    else:
        client.stop_session()
        client.flush(args.timeout)
    stats = client.stats
    _say(
        args,
        f"{'interrupted: ' if interrupted else ''}session stopped: "
        f"{stats.messages_sent} messages sent, {stats.acks_received} acknowledged",
        event="stopped",
        sent=stats.messages_sent,
        acked=stats.acks_received,
        interrupted=interrupted,
    )
    return 130 if interrupted else 0


def _cmd_serve(args: argparse.Namespace) -> int:
    """Run the reference server in the foreground until Ctrl-C (SIGINT) or SIGTERM.

    Either signal stops it cleanly, also when it runs in the background
    (`avatar-im serve &`), and it exits with 0 after printing "stopped"; a
    second signal ends it at once.  With --credentials it accepts only those
    tokens (for their app and tenant): any other gets HTTP 401.

    With --openapi, also run the fake avatar OpenAPI (StartInstance and the
    rest) on --openapi-port, and print the environment that points
    `avatar-im instance` (or any program on Alibaba Cloud's SDK) at it; the
    reference server then also accepts the IM tokens of running instances.
    """
    try:
        from .server import Credentials, ReferenceServer
    except ImportError:
        print(
            "avatar-im serve needs the 'server' extra: pip install 'avatar-im[server]'",
            file=sys.stderr,
        )
        return 2
    ssl_context = None
    if args.keyfile and not args.certfile:
        print("avatar-im serve: --keyfile needs --certfile", file=sys.stderr)
        return 2
    if args.certfile:
        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            ssl_context.load_cert_chain(args.certfile, args.keyfile)
        except OSError as exc:  # ssl.SSLError included
            print(f"avatar-im serve: cannot load the certificate: {exc}", file=sys.stderr)
            return 2
    # Any token, unless some are given; with the OpenAPI, also the tokens of started
    # instances (and only those when none is given), as by the cloud.
    credentials: list[Credentials] | None = [
        Credentials(token=token, app_id=app_id, tenant_id=tenant_id)
        for token, app_id, tenant_id in args.credentials or ()
    ]
    if not credentials and not args.openapi:
        credentials = None
    server = ReferenceServer(
        host=args.host,
        port=args.port,
        ssl_context=ssl_context,
        credentials=credentials,
        profile=args.profile,
    )
    fake = None
    if args.openapi:
        from .aliyun import MissingExtraError
        from .exceptions import InvalidArgumentError
        from .server.openapi import FakeOpenAPI

        try:
            fake = FakeOpenAPI(
                access_key_id=args.access_key_id,
                access_key_secret=secrets.token_hex(16),
                tenant_id=args.tenant_id,
                app_id=args.app_id,
                im_server=server,
                host=args.host,
                port=args.openapi_port,
            )
        except (MissingExtraError, InvalidArgumentError) as exc:
            print(f"avatar-im serve --openapi: {_one_line(str(exc))}", file=sys.stderr)
            return 2
    with ExitStack() as stack:
        for what, port in ((server, args.port), (fake, args.openapi_port)):
            if what is None:
                continue
            try:
                stack.enter_context(what)
            except OSError as exc:  # in use, not ours, an unknown host (socket.gaierror)
                print(
                    f"avatar-im serve: cannot listen on {_host_port(args.host, port)}: "
                    f"{_listen_error(exc)}",
                    file=sys.stderr,
                )
                return 1
        try:
            with _stop_on_signals():
                print(f"serving {server.url} (Ctrl-C to stop)", flush=True)
                if fake is not None:
                    _print_openapi_env(fake.config(), fake.endpoint, server.url)
                server.serve_forever()
        except (_Stopped, KeyboardInterrupt):
            pass
    print("stopped", flush=True)
    return 0


def _listen_error(exc: OSError) -> str:
    """The reason of a failed bind, without the address socket.create_server() adds to it."""
    reason = _one_line(exc.strerror or str(exc))
    return re.sub(r"\s*\(while attempting to bind on address .*\)$", "", reason)


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Stopped(BaseException):
    """Raised in the main thread by SIGINT or SIGTERM: stop serving (like KeyboardInterrupt)."""


@contextmanager
def _stop_on_signals() -> Iterator[None]:
    """Make SIGINT and SIGTERM raise :class:`_Stopped`, whatever their disposition was.

    A shell starts a background job (`cmd &`) with SIGINT ignored, and SIGTERM's default
    ends the process without a stop: so both get this handler, explicitly.  After the
    first signal both are back to ``SIG_DFL``, so a second one ends the process at once
    even if the stop hangs.  The previous handlers come back on exit.  Only the main
    thread can set handlers: on another one, nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signals = (signal.SIGINT, signal.SIGTERM)

    def stop(signum: int, frame: FrameType | None) -> None:
        for number in signals:
            signal.signal(number, signal.SIG_DFL)
        raise _Stopped(signal.Signals(signum).name)

    previous = {number: signal.signal(number, stop) for number in signals}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _print_openapi_env(config: Any, endpoint: str, im_url: str = "") -> None:
    """Print the fake OpenAPI's endpoint and the environment that points clients at it."""
    from .aliyun import ENV_VARIABLES

    print(f"fake OpenAPI at http://{endpoint}; to use it (a throwaway secret):", flush=True)
    values = {
        "access_key_id": config.access_key_id,
        "access_key_secret": config.access_key_secret,
        "tenant_id": config.tenant_id,
        "app_id": config.app_id,
        "endpoint": endpoint,
        "protocol": "http",
    }
    for field, value in values.items():
        print(f"  export {ENV_VARIABLES[field]}={value}", flush=True)
    if im_url:
        print(f"  export AVATAR_IM_URL={im_url}", flush=True)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _cmd_instance(args: argparse.Namespace) -> int:
    """Start, query or stop an avatar instance through the OpenAPI; print JSON.

    Configured from the environment (ALIBABA_CLOUD_ACCESS_KEY_ID,
    ALIBABA_CLOUD_ACCESS_KEY_SECRET, optional ALIBABA_CLOUD_SECURITY_TOKEN,
    AVATAR_IM_TENANT_ID, AVATAR_IM_APP_ID, optional AVATAR_IM_OPENAPI_ENDPOINT
    and AVATAR_IM_OPENAPI_PROTOCOL); --endpoint and --protocol override.  The
    IM token is printed only with --show-token.  `query` of an instance that
    is not running prints {"sessionId": ..., "running": false} and exits 1.
    """
    from .aliyun import AliyunConfig, AvatarOpenAPI, MissingExtraError, OpenAPIError
    from .exceptions import InvalidArgumentError

    try:
        config = AliyunConfig.from_env()
        overrides = {
            name: value
            for name, value in (("endpoint", args.endpoint), ("protocol", args.protocol))
            if value is not None
        }
        config = attrs.evolve(config, **overrides)
        api = AvatarOpenAPI(config, timeout=args.timeout)
    except (InvalidArgumentError, MissingExtraError) as exc:
        print(f"avatar-im instance: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    try:
        with api:
            if args.action == "start":
                started = api.start_instance(
                    user_id=args.user_id,
                    user_name=args.user_name,
                    channel_type=args.channel_type,
                    biz_id=args.biz_id,
                )
                result: dict[str, Any] = {**started.for_browser(), "running": True}
                if args.show_token:
                    result["token"] = started.token
            elif args.action == "query":
                found = api.query_running_instance(args.session_id)
                if found is None:
                    print(json.dumps({"sessionId": args.session_id, "running": False}))
                    return 1
                result = {**found.for_browser(), "running": True}
                if args.show_token:
                    result["token"] = found.token
            else:
                api.stop_instance(args.session_id)
                result = {"sessionId": args.session_id, "running": False}
    except InvalidArgumentError as exc:
        print(f"avatar-im instance: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    except OpenAPIError as exc:
        print(f"avatar-im instance: error: {_one_line(str(exc))}", file=sys.stderr)
        return 1
    print(json.dumps(result, ensure_ascii=False), flush=True)
    return 0


# --- logging: -v, -vv (and every frame), the cause of a connection that never opened -------


#: Warnings of the library about a failure the CLI reports itself, as its one error line
#: (logger, message format): shown only with -v.
_REPORTED_BY_CLI = frozenset(
    {
        ("avatar_im.connection", "connection closed for good: %s"),
        ("avatar_im.client", "closing with %d unacknowledged message(s)"),
        ("avatar_im.client", "the server refused the session start: %r"),
    }
)


@contextmanager
def _logging(verbosity: int) -> Iterator[None]:
    """Log to stderr for the command's run (WARNING; -v INFO; -vv DEBUG); undone on exit."""
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    if verbosity == 0:
        handler.addFilter(lambda record: (record.name, record.msg) not in _REPORTED_BY_CLI)
    saved = root.level
    root.addHandler(handler)
    root.setLevel(level)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(saved)


# The transport names the socket error of a failed connect by its type: say it in words.
_SOCKET_ERRORS = {
    "ConnectionRefusedError": "connection refused",
    "ConnectionResetError": "connection reset",
    "ConnectionAbortedError": "connection aborted",
    "gaierror": "unknown host (the name does not resolve)",
    "TimeoutError": "timed out",
    "timeout": "timed out",
    "WebSocketTimeoutException": "timed out",
}


def _connect_cause(error: ConnectionFailedError) -> str:
    """The reason *error* gives for a failed connect, with the socket error said in words."""
    text = str(error)
    match = re.search(r"cannot connect \((\w+)\)$", text)
    if match and match.group(1) in _SOCKET_ERRORS:
        text = f"{text[: match.start()]}cannot connect: {_SOCKET_ERRORS[match.group(1)]}"
    return text


def _error_line(exc: BaseException) -> str:
    """The one line that reports *exc*: its message, a timeout's cause said in words."""
    if isinstance(exc, AvatarIMError):
        text = str(exc)
        cause = exc.__cause__
        if isinstance(exc, ConnectTimeout) and isinstance(cause, ConnectionFailedError):
            text = text.replace(str(cause), _connect_cause(cause))
    elif isinstance(exc, OSError):
        text = str(exc) or type(exc).__name__
    else:
        text = f"{type(exc).__name__}: {exc}"
    return f"avatar-im: error: {redact_url(_one_line(text))}"


# --- the parser ------------------------------------------------------------------------------


class _HelpFormatter(argparse.HelpFormatter):
    """Shows every option's default, unless its help says it in words or it is a flag."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help_text = action.help or ""
        if (
            "default" in help_text
            or action.nargs == 0  # a flag: --json, -v, --help
            or action.default is None
            or action.default is argparse.SUPPRESS
            or not action.option_strings
        ):
            return action.help
        return f"{help_text} (default: %(default)s)"


VERBOSE_HELP = "log more: -v INFO, -vv DEBUG and every frame (before or after the command)"


def _add_verbose(parser: argparse.ArgumentParser, dest: str) -> None:
    # One counter per parser level: a sub-parser's value would replace its parent's.
    parser.add_argument("-v", "--verbose", dest=dest, action="count", default=0, help=VERBOSE_HELP)


def _verbosity(args: argparse.Namespace) -> int:
    return sum(getattr(args, dest, 0) for dest in ("verbose", "verbose_command", "verbose_action"))


def _add_parser(
    commands: Any, name: str, help_text: str, func: Callable[[argparse.Namespace], int] | None
) -> argparse.ArgumentParser:
    description = func.__doc__ if func is not None else help_text
    parser: argparse.ArgumentParser = commands.add_parser(
        name, help=help_text, description=description, formatter_class=_HelpFormatter
    )
    if func is not None:
        parser.set_defaults(func=func)
    return parser


def _add_connection_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url", type=_ws_url, help="server URL (default: an embedded reference server)"
    )
    parser.add_argument("--token", type=_text, default="dev-token", help="access token")
    parser.add_argument("--app-id", type=_text, default="demo-app", help="app id")
    parser.add_argument("--tenant-id", type=_text, default="demo-tenant", help="tenant id")
    parser.add_argument("--session-id", help="session id (default: a random one)")
    parser.add_argument(
        "--timeout", type=_timeout, default=10.0, help="seconds to wait per step (> 0)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object per line")
    _add_verbose(parser, "verbose_command")


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (sub-commands use it too)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _ws_url(text: str) -> str:
    """An argparse type: a ws:// or wss:// URL."""
    if not text.startswith(("ws://", "wss://")):
        raise argparse.ArgumentTypeError(f"must be a ws:// or wss:// URL, got {text!r}")
    return text


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``avatar-im``."""
    parser = _Parser(
        prog="avatar-im",
        description="Talk to a cloud avatar over its IM WebSocket channel.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_verbose(parser, "verbose")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = _add_parser(commands, "serve", "run the reference server", _cmd_serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to bind")
    serve.add_argument("--port", type=_port, default=8765, help="port (0: any free port)")
    serve.add_argument(
        "--credentials",
        action="append",
        type=_credentials,
        metavar="TOKEN:APP_ID:TENANT_ID",
        help="accept only this token, for this app and tenant (repeatable; "
        "default: any token, or with --openapi only the instances')",
    )
    serve.add_argument(
        "--profile",
        choices=["cloud", "echo"],
        default="cloud",
        help="the replies: cloud-shaped families, or the reference server's exact echoes",
    )
    serve.add_argument(
        "--certfile", help="PEM certificate chain: serve wss:// (TLS) (default: ws://, no TLS)"
    )
    serve.add_argument("--keyfile", help="PEM private key (default: in --certfile)")
    serve.add_argument(
        "--openapi", action="store_true", help="also run the fake avatar OpenAPI (needs [aliyun])"
    )
    serve.add_argument("--openapi-port", type=_port, default=8766, help="the fake OpenAPI's port")
    serve.add_argument("--access-key-id", default="dev-access-key", help="the fake's access key")
    serve.add_argument("--tenant-id", default="10001", help="the fake's tenant id (a number)")
    serve.add_argument("--app-id", default="dev-app", help="the fake's app id")
    _add_verbose(serve, "verbose_command")

    instance = _add_parser(
        commands, "instance", "start, query or stop an avatar instance (OpenAPI)", _cmd_instance
    )
    _add_verbose(instance, "verbose_command")
    actions = instance.add_subparsers(
        dest="action", required=True, metavar="ACTION", help="start, query or stop"
    )
    start = _add_parser(actions, "start", "StartInstance: print the new instance", None)
    start.add_argument("--user-id", required=True, help="your user's id")
    start.add_argument("--user-name", help="your user's name (default: none)")
    start.add_argument("--channel-type", default="DingRTC", help="video channel")
    start.add_argument("--biz-id", help="your business id (default: none)")
    query = _add_parser(actions, "query", "QueryRunningInstance: print the instance", None)
    query.add_argument("session_id", metavar="SESSION_ID", help="the instance's session id")
    stop = _add_parser(actions, "stop", "StopInstance: release the instance", None)
    stop.add_argument("session_id", metavar="SESSION_ID", help="the instance's session id")
    for action in (start, query, stop):
        action.add_argument("--endpoint", help="host[:port] of the OpenAPI (default: the SDK's)")
        action.add_argument(
            "--protocol", choices=["http", "https"], help="the OpenAPI's protocol (default: https)"
        )
        action.add_argument("--timeout", type=_timeout, default=10.0, help="seconds per call (> 0)")
        _add_verbose(action, "verbose_action")
    for action in (start, query):
        action.add_argument(
            "--show-token", action="store_true", help="also print the IM token (a secret)"
        )

    demo = _add_parser(commands, "demo", "run one conversation", _cmd_demo)
    _add_connection_args(demo)
    demo.add_argument(
        "--relay",
        action="store_true",
        help="talk through a session host and Redis, as a web worker does (needs [relay]; "
        "a throwaway redis-server on loopback unless --redis)",
    )
    from .host import redis_url_argument  # imports no redis

    demo.add_argument(
        "--redis", type=redis_url_argument, help="the Redis of --relay (default: a throwaway one)"
    )
    demo.add_argument("--text", type=_text, default="Hello, avatar!", help="the text to send")
    demo.add_argument(
        "--audio-seconds",
        type=_audio_seconds,
        default=0.5,
        help=f"length of the test tone (0 < s <= {MAX_AUDIO_SECONDS:g})",
    )

    chat = _add_parser(commands, "chat", "chat with the avatar line by line", _cmd_chat)
    _add_connection_args(chat)

    send_audio = _add_parser(commands, "send-audio", "stream an audio file", _cmd_send_audio)
    _add_connection_args(send_audio)
    send_audio.add_argument("file", metavar="FILE", help="the audio file (WAV)")
    pace = send_audio.add_mutually_exclusive_group()
    pace.add_argument(
        "--realtime",
        dest="realtime",
        action="store_true",
        default=True,
        help="send at the pace the audio plays (default)",
    )
    pace.add_argument(
        "--fast", dest="realtime", action="store_false", help="send as fast as possible"
    )
    send_audio.add_argument(
        "--chunk-ms",
        type=_chunk_ms,
        default=40.0,
        help=f"chunk length in ms ({MIN_CHUNK_MS:g} to {MAX_CHUNK_MS:g})",
    )
    send_audio.add_argument(
        "--sample-rate",
        type=_sample_rate,
        default=16000,
        help=f"the session's rate in Hz ({MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE})",
    )
    send_audio.add_argument(
        "--reply-wait", type=_wait, default=1.0, help="seconds to wait for each late reply (>= 0)"
    )
    send_audio.add_argument("--no-progress", action="store_true", help="no progress bar")

    host = _add_parser(
        commands, "host", "hold avatar sessions for web workers, over Redis", _cmd_host
    )
    from .host import add_arguments as host_arguments  # imports no redis

    host_arguments(host)
    _add_verbose(host, "verbose_command")
    return parser


def _cmd_host(args: argparse.Namespace) -> int:
    """Hold avatar sessions for web workers, over Redis (the 'relay' extra).

    Any number of hosts share the sessions through a Redis consumer group;
    web workers use them with avatar_im.relay.RelayClient.  See
    docs/many-workers.md.
    """
    from .host import run

    return run(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``avatar-im`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    verbosity = _verbosity(args)
    # -vv: DEBUG everywhere, so avatar_im.transport logs every frame sent and received.
    with _logging(verbosity):
        try:
            return int(args.func(args))
        except KeyboardInterrupt:
            print("avatar-im: interrupted", file=sys.stderr, flush=True)
            return 130
        except Exception as exc:  # one line; the traceback only with -v
            if verbosity:
                traceback.print_exc()
            print(_error_line(exc), file=sys.stderr, flush=True)
            return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
