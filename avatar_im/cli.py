"""The ``avatar-im`` command: ``serve`` a reference server, run a ``demo`` conversation.

The only module of the package that prints.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import struct
import sys
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any

from ._version import __version__
from .client import AvatarIM
from .exceptions import AvatarIMError
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


def _say(args: argparse.Namespace, text: str, **fields: Any) -> None:
    if args.json:
        print(json.dumps(fields, ensure_ascii=False), flush=True)
    else:
        print(text, flush=True)


def _describe(message: dict[str, Any]) -> str:
    content = message.get("content")
    if not isinstance(content, dict):
        return json.dumps(message, ensure_ascii=False)
    kind = content.get("type", "?")
    rest = {k: v for k, v in content.items() if k not in ("type", "sessionId")}
    return f"{kind} {json.dumps(rest, ensure_ascii=False)}"


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
        result = client.wait_session_ready(timeout)
        client.receive(timeout)  # the startResult itself, also delivered to the pull API
        _say(args, f"<- {_describe(result)}", event="received", message=result, reply_to=mid)

        sent = [("text", client.send_text(args.text), args.text)]
        clip = sine_pcm(args.audio_seconds)
        sent.append(("audio", client.send_audio(clip), f"{len(clip)} bytes of PCM"))
        for kind, message_id, what in sent:
            _say(args, f"-> {kind}: {what}", event="sent", kind=kind, message_id=message_id)
        for _ in sent:
            reply = client.receive(timeout)
            _say(args, f"<- {_describe(reply)}", event="received", message=reply)
        client.stop_session()
        client.flush(timeout)
        reply = client.receive(timeout)
        _say(args, f"<- {_describe(reply)}", event="received", message=reply)
        stats = client.stats
        _say(
            args,
            f"done: {stats.messages_sent} messages sent, {stats.acks_received} acknowledged",
            event="done",
            sent=stats.messages_sent,
            acked=stats.acks_received,
        )
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    """Run the reference server in the foreground until Ctrl-C."""
    try:
        from .server import ReferenceServer
    except ImportError:
        print("avatar-im serve needs the 'server' extra: pip install 'avatar-im[server]'")
        return 2
    server = ReferenceServer(host=args.host, port=args.port)
    with server:
        print(f"serving {server.url} (Ctrl-C to stop)", flush=True)
        with suppress(KeyboardInterrupt):
            server.serve_forever()
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
    serve.set_defaults(func=_cmd_serve)

    demo = commands.add_parser("demo", help="run one conversation", description=_cmd_demo.__doc__)
    _add_connection_args(demo)
    demo.add_argument("--text", default="Hello, avatar!", help="the text to send")
    demo.add_argument("--audio-seconds", type=float, default=0.5, help="length of the test tone")
    demo.set_defaults(func=_cmd_demo)
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
