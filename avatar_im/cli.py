"""The ``avatar-im`` command: ``serve`` a reference server, run a ``demo`` conversation.

``serve --openapi`` runs the fake avatar OpenAPI beside it, and ``instance
start|query|stop`` calls the OpenAPI (the real one, or that fake) through
Alibaba Cloud's SDK; both need the ``aliyun`` extra, imported only by them.

The only module of the package that prints.  Exit status: 0 on success, 1
when a call or a connection fails, 2 for a usage or configuration error.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import secrets
import ssl
import struct
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from typing import Any

import attrs

from ._version import __version__
from .audio import AudioStream
from .client import AvatarIM
from .exceptions import AskTimeout, AvatarIMError
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


def _print_until(
    args: argparse.Namespace, client: AvatarIM, done: Callable[[Message], bool], timeout: float
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
    """One conversation: start, a text, a short audio clip, stop; print every reply."""
    timeout = args.timeout
    with _embedded_server(args) as url, _client(args, url) as client:
        client.wait_connected(timeout)
        _say(args, f"connected to {client.url}", event="connected", url=client.url)
        mid = client.start_session(format="pcm", sample_rate=16000)
        _show(args, client.wait_session_ready(timeout), reply_to=mid)

        # A text: ask() returns the avatar's reply and, waited for, its broadcast.
        _say(args, f"-> text: {args.text}", event="sent", kind="text", text=args.text)
        answer = client.ask(args.text, timeout, wait_spoken=True)
        for message in (answer.reply, answer.broadcast_start, answer.broadcast_end):
            if message is not None:
                _show(args, message, reply_to=answer.message_id)

        # Audio: a tone, then silence, so that the service hears an utterance end.
        clip = sine_pcm(args.audio_seconds) + bytes(2 * 16000 * 6 // 10)
        message_id = client.send_audio(clip)
        _say(
            args,
            f"-> audio: {args.audio_seconds:g} s of tone, 0.6 s of silence",
            event="sent",
            kind="audio",
            message_id=message_id,
        )
        if not _print_until(args, client, lambda m: m.family == "broadcast_end", timeout):
            _say(args, f"(no spoken answer to the audio within {timeout:g} s)", event="no_reply")
        client.stop_session()
        client.flush(timeout)
        _print_until(args, client, lambda m: m.family == "stop_result", min(timeout, 2.0))
        _say_done(args, client)
    return 0


#: Files longer than this many seconds get a progress bar.
PROGRESS_MIN_SECONDS = 3.0


class _ProgressBar:
    """A plain-text progress bar on stderr: redrawn in place on a terminal, else a line per 10%."""

    def __init__(self, total: float, *, width: int = 30) -> None:
        self.total = total
        self.width = width
        self.tty = sys.stderr.isatty()
        self._shown = -1  # the last percentage (terminal) or decile (elsewhere) shown

    def update(self, done: float) -> None:
        fraction = min(1.0, done / self.total) if self.total > 0 else 1.0
        percent = int(fraction * 100)
        step = percent if self.tty else percent // 10
        if step == self._shown:
            return
        self._shown = step
        filled = round(fraction * self.width)
        bar = "#" * filled + "." * (self.width - filled)
        text = f"[{bar}] {percent:3d}% {done:6.1f}/{self.total:.1f} s"
        if self.tty:
            print(f"\r{text}", end="", file=sys.stderr, flush=True)
        else:
            print(text, file=sys.stderr, flush=True)

    def clear(self) -> None:
        """Erase the bar's line (on a terminal) so that a reply can be printed."""
        if self.tty and self._shown >= 0:
            print("\r\033[K", end="", file=sys.stderr, flush=True)
            self._shown = -1

    def finish(self) -> None:
        if self.tty and self._shown >= 0:
            print(file=sys.stderr, flush=True)


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

        stream = client.stream_audio(
            pcm, chunk_ms=args.chunk_ms, realtime=args.realtime, on_progress=on_progress
        )
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
    every message acknowledged before the client closes.  Lines can be piped in.
    """

    timeout = args.timeout
    interactive = sys.stdin.isatty() and not args.json
    with _embedded_server(args) as url, _client(args, url) as client:
        client.wait_connected(timeout)
        _say(args, f"connected to {client.url}", event="connected", url=client.url)
        client.start_session(format="pcm", sample_rate=16000)
        client.wait_session_ready(timeout)
        _say(args, "session ready: type a line, Ctrl-D to end", event="ready")
        while True:
            try:
                line = input("you> ") if interactive else sys.stdin.readline()
            except EOFError:
                line = ""
            if not line:  # end of input
                break
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
        if interactive:
            print()
        client.stop_session()
        client.flush(timeout)
        stats = client.stats
        _say(
            args,
            f"session stopped: {stats.messages_sent} messages sent, "
            f"{stats.acks_received} acknowledged",
            event="stopped",
            sent=stats.messages_sent,
            acked=stats.acks_received,
        )
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    """Run the reference server in the foreground until Ctrl-C.

    With --openapi, also run the fake avatar OpenAPI (StartInstance and the
    rest) on --openapi-port, and print the environment that points
    `avatar-im instance` (or any program on Alibaba Cloud's SDK) at it; the
    reference server then accepts only the IM tokens of running instances.
    """
    try:
        from .server import ReferenceServer
    except ImportError:
        print("avatar-im serve needs the 'server' extra: pip install 'avatar-im[server]'")
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
    # With the OpenAPI, only the tokens of started instances are accepted, as by the cloud.
    server = ReferenceServer(
        host=args.host,
        port=args.port,
        ssl_context=ssl_context,
        credentials=[] if args.openapi else None,
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
    with server, ExitStack() as stack:
        print(f"serving {server.url} (Ctrl-C to stop)", flush=True)
        if fake is not None:
            try:
                stack.enter_context(fake)
            except OSError as exc:
                print(
                    f"avatar-im serve --openapi: cannot listen on port {args.openapi_port}: "
                    f"{exc.strerror or exc}",
                    file=sys.stderr,
                )
                return 1
            _print_openapi_env(fake.config(), fake.endpoint, server.url)
        with suppress(KeyboardInterrupt):
            server.serve_forever()
    return 0


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


def _add_connection_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="server URL (default: an embedded reference server)")
    parser.add_argument("--token", default="dev-token", help="access token (default: dev-token)")
    parser.add_argument("--app-id", default="demo-app", help="app id (default: demo-app)")
    parser.add_argument("--tenant-id", default="demo-tenant", help="tenant id")
    parser.add_argument("--session-id", help="session id (default: a random one)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait per step")
    parser.add_argument("--json", action="store_true", help="print one JSON object per line")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``avatar-im``."""
    parser = argparse.ArgumentParser(
        prog="avatar-im", description="Talk to a cloud avatar over its IM WebSocket channel."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more (-vv: debug)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve", help="run the reference server", description=_cmd_serve.__doc__
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    serve.add_argument("--certfile", help="PEM certificate chain: serve wss:// (TLS)")
    serve.add_argument("--keyfile", help="PEM private key (default: in --certfile)")
    serve.add_argument(
        "--openapi", action="store_true", help="also run the fake avatar OpenAPI (needs [aliyun])"
    )
    serve.add_argument(
        "--openapi-port", type=int, default=8766, help="the fake OpenAPI's port (default 8766)"
    )
    serve.add_argument("--access-key-id", default="dev-access-key", help="the fake's access key")
    serve.add_argument("--tenant-id", default="10001", help="the fake's tenant id (a number)")
    serve.add_argument("--app-id", default="dev-app", help="the fake's app id")
    serve.set_defaults(func=_cmd_serve)

    instance = commands.add_parser(
        "instance",
        help="start, query or stop an avatar instance (OpenAPI)",
        description=_cmd_instance.__doc__,
    )
    actions = instance.add_subparsers(
        dest="action", required=True, metavar="ACTION", help="start, query or stop"
    )
    start = actions.add_parser("start", help="StartInstance: print the new instance")
    start.add_argument("--user-id", required=True, help="your user's id")
    start.add_argument("--user-name", help="your user's name")
    start.add_argument("--channel-type", default="DingRTC", help="video channel (default DingRTC)")
    start.add_argument("--biz-id", help="your business id")
    query = actions.add_parser("query", help="QueryRunningInstance: print the instance")
    query.add_argument("session_id", metavar="SESSION_ID")
    stop = actions.add_parser("stop", help="StopInstance: release the instance")
    stop.add_argument("session_id", metavar="SESSION_ID")
    for action in (start, query, stop):
        action.add_argument("--endpoint", help="host[:port] of the OpenAPI (default: the SDK's)")
        action.add_argument("--protocol", choices=["http", "https"], help="default https")
        action.add_argument("--timeout", type=float, default=10.0, help="seconds per call")
    for action in (start, query):
        action.add_argument(
            "--show-token", action="store_true", help="also print the IM token (a secret)"
        )
    instance.set_defaults(func=_cmd_instance)

    demo = commands.add_parser("demo", help="run one conversation", description=_cmd_demo.__doc__)
    _add_connection_args(demo)
    demo.add_argument("--text", default="Hello, avatar!", help="the text to send")
    demo.add_argument("--audio-seconds", type=float, default=0.5, help="length of the test tone")
    demo.set_defaults(func=_cmd_demo)

    chat = commands.add_parser(
        "chat", help="chat with the avatar line by line", description=_cmd_chat.__doc__
    )
    _add_connection_args(chat)
    chat.set_defaults(func=_cmd_chat)

    send_audio = commands.add_parser(
        "send-audio", help="stream an audio file", description=_cmd_send_audio.__doc__
    )
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
    send_audio.add_argument("--chunk-ms", type=float, default=40.0, help="chunk length (ms)")
    send_audio.add_argument("--sample-rate", type=int, default=16000, help="the session's rate")
    send_audio.add_argument(
        "--reply-wait", type=float, default=1.0, help="seconds to wait for each late reply"
    )
    send_audio.add_argument("--no-progress", action="store_true", help="no progress bar")
    send_audio.set_defaults(func=_cmd_send_audio)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``avatar-im`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except AvatarIMError as exc:
        print(f"avatar-im: error: {redact_url(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
