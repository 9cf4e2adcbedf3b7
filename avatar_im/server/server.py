"""The reference server: a threaded WebSocket server that speaks the avatar IM protocol.

:class:`ReferenceServer` runs on the sync server of ``websockets`` and applies
the rules of :mod:`.state` to what clients send.  It is for tests and local
development: it records everything it processes, lets tests push frames and
inject faults, and can drop and re-open its listening socket on the same port.

Profiles (what the server answers; the ack rules are the same in both):

* ``cloud`` (the default) models the message families the original SDK names
  (their strings are in :mod:`avatar_im.families`, *modelled*): ``startResult``,
  ``stopResult``, ``suspendResult``, ``recoverResult``, ``asrContent`` from a
  speech detection over the audio, ``replyContent`` (the *reply* callable's
  answer to a text sent or heard), ``broadcastStart``/``broadcastEnd`` as the
  avatar speaks each answer, ``interruptResult``; ``refreshContext`` gets no
  answer.  The conversation rules are in :mod:`.conversation`.  Every frame of
  a session goes to every connection bound to it.  Every frame the server sends
  a connection (but ``1``, and what :meth:`ReferenceServer.send_event`,
  :meth:`~ReferenceServer.send_message` and :meth:`~ReferenceServer.send_raw`
  send at once) goes through its due queue (below), in the order it was
  decided: a message's ack comes before what it caused, and a ``4`` after
  every frame decided before its ``3`` arrived.
* ``echo`` is the reference server's own exact answers, for tests that check
  bytes: ``textReply`` and ``audioReceived`` from :func:`.responder.default_responder`
  and ``refreshResult``, each sent to the sending connection only, by its
  handler thread, after the ack; results (``startResult``, ``stopResult``...)
  likewise.  ``interrupt()`` pushes ``interruptResult`` as in ``cloud``.

A custom *responder* replaces the profile's answers to ``dataSend`` text and
audio in both (no ``asrContent``, ``replyContent`` or broadcast then).

Routing after a reconnect: a new connection is bound at once to the sessions of
its (app, tenant) that the same token used last and that have no connection
(orphaned, within their grace period), so that pushes reach it before it sends
anything; it is never bound across (app, tenant).

Threads (all of them are ended by :meth:`ReferenceServer.stop`):

* the accept thread runs ``websockets``' ``Server.serve_forever``;
* ``websockets`` starts one handler thread per connection, which runs
  :meth:`ReferenceServer._serve_connection`, and one ``recv_events`` thread;
  the handler thread sends ``1`` and, in the ``echo`` profile, pongs,
  immediate acks and replies (in ``cloud`` it queues them), and calls the
  responder and the *reply* callable;
* the timer thread (:class:`.timer.Timer`) forgets sessions whose grace
  period ran out, advances the conversations whose deadline came (a sentence
  ends, the next one starts, an utterance ends for lack of audio) and, when a
  delayed ack comes due, only puts it on its connection's due queue.  It never
  sends, so it never blocks on a peer; it may call the *reply* callable (for an
  utterance ended by its gap), which must be quick;
* one sender thread per connection that has had a frame queued (started with
  the first one: a delayed ack, an :meth:`ReferenceServer.interrupt` push, or
  anything in ``cloud``) sends that connection's due frames, in order.  A peer
  that stops reading blocks its own sender (and, in ``echo``, its own handler
  thread) and nothing else: every other connection's frames keep their times.
  It exits when its connection closes (its handler thread queues an end
  marker; a blocked send fails once the socket is shut down).  The queue may
  hold an event to wait for: the pushes queued for a connection bound as it
  opened (below) wait until its handler thread has sent ``1``.  A ``2`` sent
  before closing (idle timeout, kick, :meth:`ReferenceServer.disconnect`) is
  queued too, and the close waits for it (at most ``CLOSE_TIMEOUT``);
* :meth:`ReferenceServer.disconnect` starts one short-lived closer thread per
  connection, so that it never waits for a peer's closing handshake.

Locks: ``_lock`` guards all the server's state (one lock; see its comment),
conversations and due queues included: a conversation step and the queuing of
what it gives happen under one hold, so frames are queued in the order they
happen; ``_lifecycle`` serialises start, stop and restart.  No frame is sent
and no responder or *reply* is called with ``_lock`` held.

Safety (for a server that users run on their machines):

* TLS: with an ``ssl_context`` the server speaks ``wss://`` only.
* Limits, each answered rather than left to grow: a received frame larger than
  ``max_size`` closes its connection with code 1009 (message too big); a
  handshake beyond ``max_connections`` open (or opening) connections is
  refused with HTTP 503, which clients retry with backoff; a ``start`` beyond
  ``max_sessions`` known sessions is acked with ``TOO_MANY_SESSIONS``; with a
  ``rate_limit``, a ``5`` over it is acked with ``RATE_LIMITED`` and a
  connection that goes on flooding gets ``2{"reason":"CONNECTION_KICK_OUT"}``
  and is closed (see :mod:`.state`).  The per-session records are unbounded
  unless ``record_limit`` is given: tests want everything.
* Allow-lists: ``credentials`` pins each token to its (app, tenant) pairs,
  ``allowed_sessions`` the session ids; a connection never acts on, nor
  receives pushes or replies of, a session of another app or tenant.
* Token lifecycle, for tests of token renewal (as the OpenAPI fake in
  :mod:`.openapi` drives it): :meth:`ReferenceServer.allow_token` accepts one
  more credential at runtime, :meth:`ReferenceServer.expire_token` revokes a
  token, disconnects its connections and forgets their sessions.  A server
  made with ``credentials=None`` stays open to any token: ``allow_token`` only
  lifts an earlier expiry there, and ``expire_token`` refuses just that token.
  To accept *only* allowed tokens, make the server with ``credentials=[]``.
* Secrets: the token is never logged.  ``websockets`` logs the request path,
  ``?t=<token>`` included, at DEBUG: it is given its own logger,
  ``avatar_im.server.websockets``, whose filter rewrites every record through
  :func:`~avatar_im.urls.redact_url`.  ``repr()`` of :class:`.state.Peer` and
  :class:`.state.Credentials` leaves the token out.
"""

from __future__ import annotations

import contextlib
import functools
import http
import itertools
import logging
import queue
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any

import attrs
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request as HandshakeRequest
from websockets.http11 import Response
from websockets.sync.server import Server, ServerConnection, serve

from ..exceptions import InvalidArgumentError, InvalidArgumentTypeError, ProtocolError
from ..packets import Packet, PacketType, decode_frame, encode_frame
from ..urls import redact_url
from .conversation import DEFAULT_CONFIG, ConversationConfig, default_reply
from .responder import Replies, Request, Responder, default_responder
from .state import (
    CLOUD,
    ECHO,
    Admission,
    Command,
    Credentials,
    HandshakeRefusal,
    Peer,
    Refusal,
    ServerState,
    ServerStats,
    SessionSnapshot,
    authorize,
    credential_table,
    parse_content,
)
from .timer import Timer

__all__ = ["Faults", "ReferenceServer", "Reply"]

#: The cloud profile's answer: the reply text to a text sent or heard (``None``: no answer).
Reply = Callable[[str], "str | None"]

logger = logging.getLogger(__name__)

#: How long a closing handshake started by the server waits for the peer.
CLOSE_TIMEOUT = 2.0
#: How long a client has to complete the opening handshake.
OPEN_TIMEOUT = 10.0
#: How long stop() waits for each thread it ends.
JOIN_TIMEOUT = 0.5
#: The default limit on the size of a received frame.
DEFAULT_MAX_SIZE = 16 * 2**20
#: The default limit on the number of sessions known at once.
DEFAULT_MAX_SESSIONS = 1000
#: The default limit on the number of open (or opening) connections.
DEFAULT_MAX_CONNECTIONS = 1000
#: The default burst of the per-connection rate limit.
DEFAULT_RATE_BURST = 100


class _RedactTokens(logging.Filter):
    """Rewrite each record's message, and its exception text, with URL tokens as ``t=***``."""

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # bad format arguments: keep the raw text, redacted
            message = str(record.msg)
        record.msg = redact_url(message)
        record.args = None
        if record.exc_info is not None and record.exc_text is None:
            record.exc_text = redact_url(self._formatter.formatException(record.exc_info))
        return True


# The logger given to websockets, which logs request paths, tokens included, at DEBUG.  Its
# filter runs for every record logged through it, before any handler sees the record.
_websockets_logger = logging.getLogger("avatar_im.server.websockets")
_websockets_logger.addFilter(_RedactTokens())


def _non_negative(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value >= 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value!r}")


def _refusal_status(_: object, attribute: attrs.Attribute[int | None], value: int | None) -> None:
    if value is None:
        return
    try:
        valid = not isinstance(value, bool) and http.HTTPStatus(value) >= 300
    except ValueError:
        valid = False
    if not valid:
        raise ValueError(f"{attribute.name} must be an HTTP status from 300 to 599, got {value!r}")


@attrs.define(kw_only=True)
class Faults:
    """Faults to inject; change the fields at any time, from any thread.

    Each field is read when it applies (one attribute read, atomic in CPython).
    """

    #: Answer ``3`` with ``4``.
    answer_heartbeats: bool = True
    #: Seconds to hold each ack back; replies are not held, so they may come before their ack.
    ack_delay: float = attrs.field(default=0.0, validator=_non_negative)
    #: Send no ack at all (messages are still processed and answered).
    drop_acks: bool = False
    #: Refuse every handshake with this HTTP status (3xx to 5xx); ``None`` to accept.
    refuse_handshake: int | None = attrs.field(default=None, validator=_refusal_status)


@attrs.frozen
class _DueFrame:
    """A frame for a connection's sender thread to send, and what to count it as."""

    frame: str
    kind: str = "message"  # "ack" and "pong" are counted in the stats when sent
    sent: threading.Event | None = None  # set once sent (or failed): a closer waits on it


#: What a connection's due queue holds: a frame to send; an Event to wait for before going on
#: (set by the handler thread once it has sent `1`, for an adopted connection); or None, the
#: end marker, queued once the connection closed.
_Due = _DueFrame | threading.Event | None


@attrs.define(eq=False)
class _Connection:
    """One open WebSocket connection and who it belongs to."""

    id: int
    ws: ServerConnection
    peer: Peer
    # Frames to send in order (due acks, and the cloud profile's pushes), then None once the
    # connection closed.  Filled with _lock held by _enqueue() (from the handler, timer and
    # caller threads; a SimpleQueue put never blocks); emptied by the sender thread.
    due: queue.SimpleQueue[_Due] = attrs.field(factory=queue.SimpleQueue)
    # The sender thread (see ReferenceServer._send_due_frames), started by _enqueue() with the
    # first frame queued; None until then.  Set with _lock held.
    sender: threading.Thread | None = None
    # Set with _lock held as the handler thread ends, with the end marker queued: no frame
    # is queued after it, and no sender thread is started for it any more.
    closed: bool = False


def _shutdown_socket(sock: socket.socket) -> None:
    """End a TCP connection now, with no closing handshake; the owner of *sock* closes it."""
    with contextlib.suppress(OSError):  # already closed or not connected
        sock.shutdown(socket.SHUT_RDWR)


def _reply_contents(replies: Replies) -> list[dict[str, Any]]:
    if replies is None:
        return []
    if isinstance(replies, Mapping):
        return [dict(replies)]
    contents = []
    for reply in replies:
        if isinstance(reply, Mapping):
            contents.append(dict(reply))
        else:
            logger.error("responder returned a %s, not a mapping: dropped", type(reply).__name__)
    return contents


class ReferenceServer:
    """A local avatar IM server for tests and development.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`::

        with ReferenceServer() as server:
            url = f"{server.url}?t=token&app=app&tenant=tenant"
            ...

    *credentials* ``None`` accepts any non-empty ``t``, ``app`` and ``tenant``;
    otherwise only the given :class:`Credentials`.

    *profile* is ``"cloud"`` (the default: the modelled families) or ``"echo"``
    (the reference server's own exact replies); see the module docstring.
    *reply* makes the ``cloud`` profile's answer to a text (sent, or heard in
    audio): ``reply(text) -> str``, or ``None`` for no answer (default
    ``"You said: <text>"``); it runs outside every lock and must not block.
    Each answer is spoken in ``speaking_base + len(answer) / speaking_rate``
    seconds (defaults 0.3 s and 15 characters per second).  The speech
    detection takes a chunk whose peak ``|sample|`` is above *vad_threshold*
    (default 1000) as voiced, and ends an utterance after *vad_end_silence*
    seconds of unvoiced audio (default 0.4) or *vad_end_gap* seconds with no
    audio (default 0.6).  :meth:`hear` sets what it hears.

    *responder* answers ``dataSend`` text and audio instead of the profile
    (default: :func:`default_responder` in ``echo``, the conversation in
    ``cloud``).  Sessions with
    no connection are forgotten after *session_grace* seconds (``None``:
    never).  A connection with no client frame for *idle_timeout* seconds gets
    ``2{"reason":"HEARTBEAT_TIMEOUT"}`` and is closed (``None``: never).

    Security and limits (see the module docstring; ``None`` turns a limit off):
    *ssl_context* (a server-side :class:`ssl.SSLContext` with a certificate
    loaded) serves ``wss://``.  *allowed_sessions* lists the session ids
    clients may use (``None``: any); others get ``FORBIDDEN``.  *max_size*
    limits the size of a received frame (bigger: close code 1009).
    *max_connections* limits open connections (beyond: HTTP 503).
    *max_sessions* limits known sessions (beyond: ``TOO_MANY_SESSIONS``).
    *rate_limit* frames per second per connection, with bursts of
    *rate_burst* (beyond: ``RATE_LIMITED``, then ``CONNECTION_KICK_OUT``).
    *record_limit* keeps only the last so many messages, texts and audio
    chunks per session (``None``, the default: everything, for tests).
    Server messages get the ids ``<message_id_prefix><n>``; the default
    prefix, ``srv_<8 random hex digits>_``, differs for every server object.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        credentials: Credentials | Iterable[Credentials] | None = None,
        responder: Responder | None = None,
        session_grace: float | None = 60.0,
        idle_timeout: float | None = 60.0,
        ssl_context: ssl.SSLContext | None = None,
        allowed_sessions: Iterable[str] | None = None,
        max_size: int = DEFAULT_MAX_SIZE,
        max_connections: int | None = DEFAULT_MAX_CONNECTIONS,
        max_sessions: int | None = DEFAULT_MAX_SESSIONS,
        rate_limit: float | None = None,
        rate_burst: int = DEFAULT_RATE_BURST,
        record_limit: int | None = None,
        message_id_prefix: str | None = None,
        profile: str = CLOUD,
        reply: Reply | None = None,
        speaking_rate: float = DEFAULT_CONFIG.speaking_rate,
        speaking_base: float = DEFAULT_CONFIG.speaking_base,
        vad_threshold: int = DEFAULT_CONFIG.vad_threshold,
        vad_end_silence: float = DEFAULT_CONFIG.end_silence,
        vad_end_gap: float = DEFAULT_CONFIG.end_gap,
    ) -> None:
        if session_grace is not None and session_grace < 0:
            raise ValueError(f"session_grace must be >= 0 or None, got {session_grace!r}")
        if idle_timeout is not None and idle_timeout <= 0:
            raise ValueError(f"idle_timeout must be > 0 or None, got {idle_timeout!r}")
        if max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {max_size!r}")
        if max_connections is not None and max_connections < 1:
            raise ValueError(f"max_connections must be >= 1 or None, got {max_connections!r}")
        if ssl_context is not None and not isinstance(ssl_context, ssl.SSLContext):
            raise TypeError(f"ssl_context must be an ssl.SSLContext, got {ssl_context!r}")
        self._host = host
        self._port = port
        # Token -> the (app, tenant) pairs it is valid for; None accepts any token.  Guarded
        # by _lock: allow_token() and expire_token() change it while handshakes read it.
        self._credentials: dict[str, frozenset[tuple[str, str]]] | None = credential_table(
            credentials
        )
        # Expired tokens -> the reason their connections were sent; refused with 401 until
        # allowed again.  Guarded by _lock.  Grows by one per expired token: a test server's.
        self._expired: dict[str, str] = {}
        if reply is not None and not callable(reply):
            raise TypeError(f"reply must be a callable, got {reply!r}")
        conversation = ConversationConfig(
            speaking_rate=speaking_rate,
            speaking_base=speaking_base,
            vad_threshold=vad_threshold,
            end_silence=vad_end_silence,
            end_gap=vad_end_gap,
        )
        # The echo profile's answers are default_responder's; the cloud profile has none.
        self._responder: Responder | None = (
            default_responder if responder is None and profile == ECHO else responder
        )
        self._reply: Reply = default_reply if reply is None else reply
        self._session_grace = session_grace
        self._idle_timeout = idle_timeout
        self._max_size = max_size
        self._max_connections = max_connections
        self._ssl_context = ssl_context
        self.faults = Faults()

        # The one lock around the server's state: _state (sessions and their conversations,
        # ids, counters, heard texts), _armed, _connections (and each one's sender and closed
        # flag, and what is put on its due queue), _opening, _sockets, _accepting, _closers
        # and _senders.  Reentrant so that wait_for() predicates, which run with it held, may
        # call session() and stats.
        self._lock = threading.RLock()
        # Notified (with _lock) after every change of that state; wait_for() waits on it.
        self._changed = threading.Condition(self._lock)
        self._state = ServerState(
            allowed_sessions=allowed_sessions,
            max_sessions=max_sessions,
            rate_limit=rate_limit,
            rate_burst=rate_burst,
            record_limit=record_limit,
            profile=profile,
            custom_responder=responder is not None,
            conversation=conversation,
        )
        # In the cloud profile every frame a connection's handler or the server sends it (`1`
        # and send_event/send_message/send_raw excepted) goes through its due queue, so that
        # it arrives in the order it was decided; in the echo profile only delayed acks and
        # interrupt() pushes do, and the handler thread sends the rest, as it always did.
        self._queued = profile == CLOUD
        # Session id -> the deadline of the earliest conversation tick scheduled on the timer
        # for it (see _arm()).  Guarded by _lock.
        self._armed: dict[str, float] = {}
        self._connections: dict[int, _Connection] = {}
        # Sockets whose handshake was accepted but whose connection is not registered yet:
        # they count against max_connections, so that concurrent handshakes cannot exceed it.
        self._opening: set[socket.socket] = set()
        # Every accepted TCP socket, from accept to close, handshake included: stop() and
        # restart() shut them all down so that no handler thread outlives them.
        self._sockets: set[socket.socket] = set()
        self._accepting = False
        self._connection_ids = itertools.count(1)
        self._message_ids = itertools.count(1)
        # Unique per server object, so that a client which outlives one server process
        # never takes the next process's messages for duplicates of the last one's.
        self._id_prefix = (
            f"srv_{secrets.token_hex(4)}_" if message_id_prefix is None else message_id_prefix
        )

        # Serialises start(), stop() and restart(); held while they join threads.
        self._lifecycle = threading.Lock()
        self._phase = "new"  # "new" -> "running" -> "stopped"
        self._stopped = threading.Event()  # set by stop(); serve_forever() waits on it
        self._ws_server: Server | None = None
        # The accept thread: runs websockets' serve_forever(), which starts a handler thread
        # per accepted socket; blocks in select() on the listening socket; exits when
        # _close_listener() calls Server.shutdown().  One per listening period (restart()
        # makes a new one).
        self._accept_thread: threading.Thread | None = None
        # See Timer: queues delayed acks, advances conversations (queuing their frames) and
        # forgets orphaned sessions; never sends; exits on stop().
        self._timer = Timer(name="avatar-im-server-timer")
        # Closer threads started by disconnect(): each runs one ServerConnection.close(),
        # blocking until the peer answers the close frame, CLOSE_TIMEOUT passes or stop()
        # shuts the socket down; each removes itself from this set when done.
        self._closers: set[threading.Thread] = set()
        # Sender threads, one per connection that had a frame queued (a delayed ack, or a
        # push of the cloud profile): each blocks on its connection's due queue, and in
        # sending to its own peer only; it exits on the None its handler thread queues as the
        # connection ends, and removes itself from this set.  stop() joins them after every
        # handler thread has ended.  Guarded by _lock.
        self._senders: set[threading.Thread] = set()

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> ReferenceServer:
        """Bind and start serving; return ``self``.  A server starts only once."""
        with self._lifecycle:
            if self._phase != "new":
                raise RuntimeError(f"cannot start a server that is {self._phase}")
            self._listen(self._port)
            self._timer.start()
            self._phase = "running"
        return self

    def stop(self) -> None:
        """Stop listening, drop every connection at TCP level and end every server thread.

        Idempotent.  Recorded sessions and counters stay readable.
        """
        with self._lifecycle:
            if self._phase == "running":
                # Ends every handler thread, and so queues the end marker of every sender.
                self._close_listener()
                self._timer.stop(JOIN_TIMEOUT)
                with self._lock:
                    threads = [*self._closers, *self._senders]
                for thread in threads:
                    thread.join(JOIN_TIMEOUT)
                logger.info("reference server on port %d stopped", self._port)
            self._phase = "stopped"
            self._stopped.set()

    def restart(self, keep_state: bool = True) -> None:
        """Drop every connection abruptly and listen again on the same port.

        With *keep_state* false, sessions and remembered message ids are
        forgotten too (counters are kept).
        """
        with self._lifecycle:
            if self._phase != "running":
                raise RuntimeError(f"cannot restart a server that is {self._phase}")
            self._close_listener()
            if not keep_state:
                with self._changed:
                    self._state.reset()
                    self._armed.clear()
                    self._changed.notify_all()
            self._listen(self._port)
            logger.info("reference server restarted (keep_state=%s)", keep_state)

    def serve_forever(self) -> None:
        """Start if needed, then block until :meth:`stop` (or Ctrl-C, which stops it)."""
        if self._phase == "new":
            self.start()
        try:
            # A wait with a timeout: a signal that lands just before an untimed wait
            # blocks would only be handled once the wait returned (a missed SIGTERM).
            while not self._stopped.wait(0.25):
                pass
        finally:
            self.stop()

    def __enter__(self) -> ReferenceServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def host(self) -> str:
        """The host the server binds to."""
        return self._host

    @property
    def port(self) -> int:
        """The bound port once started (the requested one before)."""
        return self._port

    @property
    def url(self) -> str:
        """``ws://<host>:<port>/ws`` (``wss://`` with TLS); add ``?t=...&app=...&tenant=...``."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        scheme = "ws" if self._ssl_context is None else "wss"
        return f"{scheme}://{host}:{self._port}/ws"

    def _listen(self, port: int) -> None:
        """Bind *port* and start the accept thread.  Needs ``_lifecycle``."""
        assert self._lifecycle.locked()
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        # create_server sets SO_REUSEADDR on POSIX, so restart() can rebind at once.
        sock = socket.create_server((self._host, port), family=family, reuse_port=False)
        try:
            ws_server = serve(
                self._serve_connection,
                sock=sock,
                ssl=self._ssl_context,
                process_request=self._process_request,
                compression=None,
                open_timeout=OPEN_TIMEOUT,
                ping_interval=None,
                close_timeout=CLOSE_TIMEOUT,
                max_size=self._max_size,
                logger=_websockets_logger,
            )
        except BaseException:
            sock.close()
            raise
        ws_server.handler = functools.partial(self._track_socket, ws_server.handler)
        # With TLS, serve() wrapped (and detached) sock: ask the socket it listens on.
        self._port = ws_server.socket.getsockname()[1]
        with self._lock:
            self._accepting = True
        self._ws_server = ws_server
        self._accept_thread = threading.Thread(
            target=ws_server.serve_forever,
            name=f"avatar-im-server-accept-{self._port}",
            daemon=True,
        )
        self._accept_thread.start()
        logger.info("reference server listening on %s", self.url)

    def _close_listener(self) -> None:
        """Close the listening socket, shut every connection down, end their threads.

        Needs ``_lifecycle``.  Does nothing if not listening (a restart failed to rebind).
        """
        assert self._lifecycle.locked()
        ws_server, accept_thread = self._ws_server, self._accept_thread
        if ws_server is None or accept_thread is None:
            return
        with self._lock:
            self._accepting = False
            sockets = list(self._sockets)
        for sock in sockets:
            _shutdown_socket(sock)
        # With every socket shut down, each handler thread ends at once; shutdown() joins
        # them (and rejects the handshakes of sockets accepted meanwhile, see _track_socket).
        ws_server.shutdown(close_connections=False)
        accept_thread.join(JOIN_TIMEOUT)
        self._ws_server = self._accept_thread = None

    def _track_socket(
        self, handle: Callable[[socket.socket, Any], None], sock: socket.socket, address: Any
    ) -> None:
        """Wrap websockets' per-socket handler: register *sock* for the whole connection."""
        with self._lock:
            self._sockets.add(sock)
            accepting = self._accepting
        if not accepting:  # accepted while _close_listener() was shutting sockets down
            _shutdown_socket(sock)
        try:
            handle(sock, address)
        finally:
            with self._lock:
                self._sockets.discard(sock)
                self._opening.discard(sock)

    # --- handshake and connection --------------------------------------------------------

    def _process_request(self, ws: ServerConnection, request: HandshakeRequest) -> Response | None:
        status = self.faults.refuse_handshake
        with self._changed:
            if status is not None:
                result: Peer | HandshakeRefusal = HandshakeRefusal(
                    status, "Refused by fault injection.\n"
                )
            else:
                result = authorize(request.path, self._credentials, self._expired)
            if isinstance(result, Peer):
                if self._has_room():
                    self._opening.add(ws.socket)
                    return None
                result = HandshakeRefusal(503, "Too many connections: try again later.\n")
            self._state.stats.handshakes_refused += 1
            self._changed.notify_all()
        logger.info("refusing handshake for %s: HTTP %d", redact_url(request.path), result.status)
        return ws.respond(result.status, result.text)

    def _has_room(self) -> bool:
        """Whether one more connection fits under max_connections.  Needs ``_lock``."""
        limit = self._max_connections
        return limit is None or len(self._connections) + len(self._opening) < limit

    def _serve_connection(self, ws: ServerConnection) -> None:
        """Run one connection on its handler thread, from ``1`` to the close."""
        assert ws.request is not None
        # _process_request checked the credentials; only parse the peer here.
        peer = authorize(ws.request.path, None)
        assert isinstance(peer, Peer)  # _process_request refused anything else
        with self._changed:
            # Checked with the registration, under one lock: expire_token() either sees this
            # connection registered or has marked the token expired before this check.
            expired_reason = self._expired.get(peer.token)
            self._opening.discard(ws.socket)
            # Held back until `1` is sent: frames queued for the sessions adopted below.
            accepted = threading.Event()
            adopted: list[str] = []
            if expired_reason is None:
                conn = _Connection(next(self._connection_ids), ws, peer)
                self._connections[conn.id] = conn
                self._state.stats.connections_total += 1
                self._state.stats.connections_open += 1
                # Bound at once, so that pushes reach it before it sends anything.
                adopted = self._state.adopt(conn.id, peer)
                if adopted:
                    self._enqueue(conn, accepted)
            self._changed.notify_all()
        if expired_reason is not None:  # the token expired during the opening handshake
            self._send_to(ws, encode_frame(PacketType.DISCONNECT, {"reason": expired_reason}))
            ws.close()
            return
        logger.info("connection %d open (app=%s, tenant=%s)", conn.id, peer.app_id, peer.tenant_id)
        if adopted:
            logger.info("connection %d bound to orphaned session(s) %s", conn.id, adopted)
        try:
            try:
                sent = self._send(conn, encode_frame(PacketType.ACCEPTED))
            finally:
                accepted.set()
            if sent:
                self._read(conn)
        finally:
            with self._changed:
                # Ends the sender, if any, after the frames already queued.
                conn.closed = True
                conn.due.put(None)
                del self._connections[conn.id]
                self._state.stats.connections_open -= 1
                orphans = self._state.detach(conn.id)
                self._changed.notify_all()
            if self._session_grace is not None:
                for session_id, token in orphans:
                    self._timer.call_later(
                        self._session_grace, functools.partial(self._expire, session_id, token)
                    )
            logger.info("connection %d closed", conn.id)

    def _read(self, conn: _Connection) -> None:
        """Read and handle frames until the connection closes or stays idle too long."""
        idle = self._idle_timeout
        deadline = None if idle is None else time.monotonic() + idle
        while True:
            try:
                data = conn.ws.recv(None if deadline is None else deadline - time.monotonic())
            except TimeoutError:
                logger.info("connection %d: no frame for %s s, closing", conn.id, idle)
                self._send_last(
                    conn, encode_frame(PacketType.DISCONNECT, {"reason": "HEARTBEAT_TIMEOUT"})
                )
                conn.ws.close()
                return
            except ConnectionClosed:
                return
            if idle is not None:
                deadline = time.monotonic() + idle
            if not self._on_frame(conn, data):
                return

    def _on_frame(self, conn: _Connection, data: str | bytes) -> bool:
        """Handle one received frame; return ``False`` if the connection was kicked."""
        with self._changed:
            self._state.stats.frames_received += 1
            admission = self._state.admit(conn.id, now=time.monotonic())
            self._changed.notify_all()
        if admission is Admission.KICK:
            logger.warning("connection %d: still flooding over its rate limit, kicked", conn.id)
            self._send_last(
                conn, encode_frame(PacketType.DISCONNECT, {"reason": "CONNECTION_KICK_OUT"})
            )
            conn.ws.close()
            return False
        logger.debug("connection %d > %.200r", conn.id, data)
        try:
            packet = decode_frame(data)
        except ProtocolError as exc:
            if admission is Admission.ADMIT:
                self._bad_frame(conn, str(exc))
            return True
        if admission is Admission.REFUSE:
            self._on_rate_limited(conn, packet)
        elif packet.type is PacketType.PING:
            if self.faults.answer_heartbeats:
                self._answer_ping(conn)
        elif packet.type is PacketType.MESSAGE:
            self._on_message(conn, packet)
        else:
            self._bad_frame(conn, f"packet type {int(packet.type)} is not sent by clients")
        return True

    def _on_rate_limited(self, conn: _Connection, packet: Packet) -> None:
        """Ack a ``5`` over the rate limit with ``RATE_LIMITED``; drop anything else."""
        if packet.type is not PacketType.MESSAGE:
            logger.debug("connection %d: frame over the rate limit dropped", conn.id)
            return
        assert packet.message_id is not None
        with self._changed:
            outcome = self._state.rate_limited(packet.message_id)
            self._changed.notify_all()
        logger.debug("connection %d: message %s over the rate limit", conn.id, packet.message_id)
        self._ack(conn, outcome.ack)

    def _bad_frame(self, conn: _Connection, why: str) -> None:
        logger.warning("connection %d: bad frame ignored: %s", conn.id, why)
        with self._changed:
            self._state.stats.bad_frames += 1
            self._changed.notify_all()

    def _on_message(self, conn: _Connection, packet: Packet) -> None:
        assert packet.body is not None and packet.message_id is not None
        message_id = packet.message_id
        command: Command | Refusal = parse_content(packet.body.get("content"))
        with self._changed:
            outcome = self._state.handle_message(
                conn.peer, conn.id, message_id, command, now=time.monotonic()
            )
            session_id = outcome.session_id
            if self._queued:  # the ack, then the pushes, queued in one hold: in this order
                self._ack(conn, outcome.ack)
            if session_id is not None:
                self._push(session_id, outcome.pushes)
                self._arm(session_id)
            self._changed.notify_all()
        logger.debug("connection %d: message %s -> %s", conn.id, message_id, outcome.ack)
        if not self._queued:
            self._ack(conn, outcome.ack)
        for content in outcome.replies:
            self._send_content(conn, content)
        if outcome.request is not None:
            self._respond(conn, outcome.request)
        if session_id is not None and outcome.answers:
            self._answer(session_id, outcome.answers)

    def _ack(self, conn: _Connection, body: dict[str, Any]) -> None:
        """Send, queue, delay or drop (as the faults say) the ack *body* to *conn*.

        Queued in the ``cloud`` profile (then ``_lock`` may be held), else sent
        at once (then ``_lock`` must not be held).
        """
        faults = self.faults
        if faults.drop_acks:
            logger.debug("connection %d: ack dropped (fault): %s", conn.id, body)
            return
        frame = encode_frame(PacketType.ACK, body)
        delay = faults.ack_delay
        if delay > 0:
            # The timer thread is shared by every connection: it only queues the due ack, and
            # this connection's own sender thread sends it (see the module docstring).
            self._timer.call_later(delay, functools.partial(self._queue_ack, conn, frame))
        elif self._queued:
            with self._lock:
                self._enqueue(conn, _DueFrame(frame, kind="ack"))
        else:
            self._send_ack(conn, frame)

    def _queue_ack(self, conn: _Connection, frame: str) -> None:
        """Queue a delayed ack that came due.  On the timer thread."""
        with self._lock:
            self._enqueue(conn, _DueFrame(frame, kind="ack"))

    def _enqueue(self, conn: _Connection, item: _DueFrame | threading.Event) -> bool:
        """Queue *item* for *conn*'s sender thread, started here if need be.  Needs ``_lock``.

        Never blocks.  Return ``False`` (and drop *item*) if *conn* has closed.
        """
        if conn.closed:
            return False
        if conn.sender is None:
            thread = threading.Thread(
                target=self._send_due_frames,
                args=(conn,),
                name=f"avatar-im-server-sender-{conn.id}",
                # Like the timer: a server that is never stopped must not keep the process alive.
                daemon=True,
            )
            conn.sender = thread
            self._senders.add(thread)
            thread.start()
        conn.due.put(item)
        return True

    def _send_due_frames(self, conn: _Connection) -> None:
        """The sender thread: send *conn*'s due frames, in order, until its end marker."""
        try:
            # Ends on the None that _serve_connection queues as the connection ends.
            while (item := conn.due.get()) is not None:
                if isinstance(item, threading.Event):
                    item.wait()  # set by the handler thread in a finally: never left unset
                    continue
                try:
                    if item.kind == "ack":
                        self._send_ack(conn, item.frame)
                    elif item.kind == "pong":
                        self._send_pong(conn, item.frame)
                    else:
                        self._send(conn, item.frame)
                finally:
                    if item.sent is not None:
                        item.sent.set()
        finally:
            with self._lock:
                self._senders.discard(threading.current_thread())

    def _send_last(self, conn: _Connection, frame: str) -> None:
        """Send *frame* after every frame queued for *conn*, before closing it.

        In the ``cloud`` profile, waits (at most ``CLOSE_TIMEOUT``) for *conn*'s
        sender to reach it; a peer that does not read is closed all the same.
        """
        if self._queued:
            sent = threading.Event()
            with self._lock:
                queued = self._enqueue(conn, _DueFrame(frame, sent=sent))
            if queued:
                if not sent.wait(CLOSE_TIMEOUT):
                    logger.info("connection %d: not reading, closed before its last frame", conn.id)
                return
        self._send(conn, frame)

    # --- the cloud profile's conversations ----------------------------------------------

    def _push(self, session_id: str, contents: list[dict[str, Any]]) -> None:
        """Queue *contents* for every connection bound to *session_id*.  Needs ``_lock``.

        Each content is one server ``5`` (one message id for all connections).
        """
        if not contents:
            return
        ids = sorted(self._state.connections_of(session_id))
        targets = [self._connections[i] for i in ids if i in self._connections]
        frames = [
            encode_frame(
                PacketType.MESSAGE, {"messageId": self._new_message_id(), "content": content}
            )
            for content in contents
        ]
        for conn in targets:
            for frame in frames:
                self._enqueue(conn, _DueFrame(frame))

    def _arm(self, session_id: str) -> None:
        """Schedule a tick at *session_id*'s next conversation deadline.  Needs ``_lock``.

        Only one tick is kept per session, the earliest: a later deadline is
        scheduled by that tick, once it has run.
        """
        deadline = self._state.next_deadline(session_id)
        if deadline is None:
            return
        armed = self._armed.get(session_id)
        if armed is not None and armed <= deadline:
            return
        self._armed[session_id] = deadline
        self._timer.call_later(
            max(0.0, deadline - time.monotonic()),
            functools.partial(self._tick, session_id, deadline),
        )

    def _tick(self, session_id: str, deadline: float) -> None:
        """Advance *session_id*'s conversation, queuing what it gives.  On the timer thread."""
        with self._changed:
            if self._armed.get(session_id) == deadline:
                del self._armed[session_id]
            # The timer fires at the deadline or later; never advance to a time before it.
            pushes, answers = self._state.advance(session_id, now=max(time.monotonic(), deadline))
            self._push(session_id, pushes)
            self._arm(session_id)
            self._changed.notify_all()
        if answers:
            self._answer(session_id, answers)

    def _answer(self, session_id: str, texts: list[str]) -> None:
        """Answer each heard or sent text with the reply callable; queue the answers.

        With no lock held, on the handler thread of the message (or the timer
        thread, for an utterance ended by its gap).
        """
        for text in texts:
            try:
                answer = self._reply(text)
            except Exception:
                logger.exception("reply failed on a text of session %s", session_id)
                continue
            if answer is None:
                continue
            if not isinstance(answer, str):
                logger.error("reply returned a %s, not a str: dropped", type(answer).__name__)
                continue
            with self._changed:
                self._push(session_id, self._state.say(session_id, answer, now=time.monotonic()))
                self._arm(session_id)
                self._changed.notify_all()

    # The counters of sent frames are raised before sending (and lowered again if the send
    # fails), so that a client that has received a frame already sees it counted.

    def _answer_ping(self, conn: _Connection) -> None:
        """Answer a ``3`` with ``4``: queued in the ``cloud`` profile, else sent at once."""
        frame = encode_frame(PacketType.PONG)
        if self._queued:
            with self._lock:
                self._enqueue(conn, _DueFrame(frame, kind="pong"))
        else:
            self._send_pong(conn, frame)

    def _send_pong(self, conn: _Connection, frame: str) -> None:
        with self._changed:
            self._state.stats.pings_answered += 1
            self._changed.notify_all()
        if not self._send(conn, frame):
            with self._changed:
                self._state.stats.pings_answered -= 1
                self._changed.notify_all()

    def _send_ack(self, conn: _Connection, frame: str) -> None:
        with self._changed:
            self._state.stats.acks_sent += 1
            self._changed.notify_all()
        if not self._send(conn, frame):
            with self._changed:
                self._state.stats.acks_sent -= 1
                self._changed.notify_all()

    def _respond(self, conn: _Connection, request: Request) -> None:
        if self._responder is None:  # the state asks for one only when there is one
            return
        try:
            replies = self._responder(request)
        except Exception:
            logger.exception(
                "responder failed on message %s (session %s)",
                request.message_id,
                request.session_id,
            )
            return
        for content in _reply_contents(replies):
            self._send_content(conn, content)

    def _send_content(self, conn: _Connection, content: Mapping[str, Any]) -> str:
        """Send a server ``5`` to *conn* (queued in the ``cloud`` profile); return its id."""
        message_id = self._new_message_id()
        frame = encode_frame(
            PacketType.MESSAGE, {"messageId": message_id, "content": dict(content)}
        )
        if self._queued:
            with self._lock:
                self._enqueue(conn, _DueFrame(frame))
        else:
            self._send(conn, frame)
        return message_id

    def _new_message_id(self) -> str:
        return f"{self._id_prefix}{next(self._message_ids)}"

    def _send(self, conn: _Connection, frame: str | bytes) -> bool:
        """Send one frame; return ``False`` if the connection is already closed."""
        try:
            conn.ws.send(frame)
        except ConnectionClosed:
            logger.debug("connection %d: closed, not sent: %.200r", conn.id, frame)
            return False
        logger.debug("connection %d < %.200r", conn.id, frame)
        return True

    @staticmethod
    def _send_to(ws: ServerConnection, frame: str) -> None:
        """Send one frame on a connection that is not registered; ignore a closed one."""
        with contextlib.suppress(ConnectionClosed):
            ws.send(frame)

    def _expire(self, session_id: str, token: int) -> None:
        with self._changed:
            forgotten = self._state.expire(session_id, token)
            if forgotten:
                self._changed.notify_all()
        if forgotten:
            logger.info("session %s forgotten after its grace period", session_id)

    # --- observation ---------------------------------------------------------------------

    def session(self, session_id: str) -> SessionSnapshot | None:
        """Return a copy of what was recorded for *session_id*, or ``None`` if unknown."""
        with self._lock:
            return self._state.snapshot(session_id)

    def session_ids(self) -> list[str]:
        """Return the ids of the sessions the server knows, oldest first."""
        with self._lock:
            return list(self._state.sessions)

    @property
    def stats(self) -> ServerStats:
        """A copy of the counters."""
        with self._lock:
            return attrs.evolve(self._state.stats)

    def wait_for(self, predicate: Callable[[], object], timeout: float | None) -> bool:
        """Wait until *predicate()* is true, re-checking it after every state change.

        Return its last truth value (``False`` on timeout).  *predicate* runs
        with the state lock held: it may call :meth:`session` and
        :attr:`stats`, and must not block or send.
        """
        with self._changed:
            return bool(self._changed.wait_for(predicate, timeout))

    def wait_for_connections(self, count: int, timeout: float | None) -> bool:
        """Wait until at least *count* connections are open."""
        return self.wait_for(lambda: self._state.stats.connections_open >= count, timeout)

    # --- pushing and faults --------------------------------------------------------------

    def _targets(self, session_id: str | None) -> list[_Connection]:
        with self._lock:
            if session_id is None:
                return list(self._connections.values())
            ids = self._state.connections_of(session_id)
            return [conn for conn in self._connections.values() if conn.id in ids]

    def send_event(self, body: Mapping[str, Any], session_id: str | None = None) -> int:
        """Send ``7<body>`` to every connection, or to those bound to *session_id*.

        Return how many connections it was sent to.
        """
        frame = encode_frame(PacketType.EVENT, dict(body))
        return sum(self._send(conn, frame) for conn in self._targets(session_id))

    def send_message(self, content: Mapping[str, Any], session_id: str | None = None) -> str:
        """Send a server ``5`` with *content* to every connection (or those bound to
        *session_id*); return its ``messageId``."""
        message_id = self._new_message_id()
        frame = encode_frame(
            PacketType.MESSAGE, {"messageId": message_id, "content": dict(content)}
        )
        for conn in self._targets(session_id):
            self._send(conn, frame)
        return message_id

    def interrupt(self, session_id: str) -> bool:
        """Interrupt *session_id*, as the OpenAPI ``SendCommand`` ``INTERRUPT`` does.

        The sentence being spoken ends (``broadcastEnd`` with ``interrupted``
        true), the queued ones and a partial utterance are dropped, then
        ``interruptResult`` goes to every connection bound to the session (in
        both profiles).  Return whether a sentence was being spoken; ``False``,
        with nothing sent, for a session that is unknown or stopped.
        """
        if not isinstance(session_id, str) or not session_id:
            raise InvalidArgumentError("session_id must be a non-empty str")
        with self._changed:
            result = self._state.interrupt(session_id, now=time.monotonic())
            if result is None:
                return False
            interrupted, pushes = result
            self._push(session_id, pushes)
            self._arm(session_id)
            self._changed.notify_all()
        logger.info("session %s interrupted (speaking: %s)", session_id, interrupted)
        return interrupted

    def hear(self, text: str, session_id: str | None = None) -> None:
        """Make *text* what the server hears in the next utterance that ends.

        With *session_id*, in that session's next utterance (it need not be
        started yet); else in the next utterance of any session that has none of
        its own queued.  Texts are used in the order queued; once none is left,
        the server hears ``"<seconds> seconds of speech"``.
        """
        if not isinstance(text, str):
            raise InvalidArgumentTypeError(f"text must be a str, got {type(text).__name__}")
        if session_id is not None and (not isinstance(session_id, str) or not session_id):
            raise InvalidArgumentError("session_id must be a non-empty str or None")
        with self._changed:
            self._state.hear(text, session_id)
            self._changed.notify_all()

    def send_raw(self, frame: str | bytes) -> int:
        """Send *frame* as is to every connection (bytes as a binary frame); return how many."""
        return sum(self._send(conn, frame) for conn in self._targets(None))

    def disconnect(self, reason: str) -> int:
        """Send ``2{"reason": reason}`` to every connection, then close each; return how many.

        Returns once the frames are sent (queued behind the frames already due,
        in the ``cloud`` profile): the closing handshakes go on in the background.
        """
        return self._disconnect(self._targets(None), reason)

    def _disconnect(self, conns: list[_Connection], reason: str) -> int:
        """Send ``2{"reason": reason}`` to each of *conns*, then close it in the background."""
        frame = encode_frame(PacketType.DISCONNECT, {"reason": reason})
        for conn in conns:
            sent: threading.Event | None = None
            if self._queued:
                sent = threading.Event()
                with self._lock:
                    if not self._enqueue(conn, _DueFrame(frame, sent=sent)):
                        sent = None  # closed already
            else:
                self._send(conn, frame)
            closer = threading.Thread(
                target=self._close_connection,
                args=(conn, sent),
                name=f"avatar-im-server-close-{conn.id}",
            )
            with self._lock:
                self._closers.add(closer)
            closer.start()
        return len(conns)

    # --- token lifecycle ----------------------------------------------------------------

    def allow_token(self, token: str, app_id: str, tenant_id: str | int) -> None:
        """Accept *token* for *app_id* and *tenant_id* from now on (and lift its expiry).

        On a server made with ``credentials=None``, which accepts any token,
        only the expiry is lifted: the server stays open (see the module
        docstring).  *tenant_id* may be an ``int``, as the OpenAPI has it.
        """
        if not isinstance(token, str) or not token:
            raise InvalidArgumentError("token must be a non-empty str")
        owner = (str(app_id), str(tenant_id))
        if not all(owner):
            raise InvalidArgumentError("app_id and tenant_id must be non-empty")
        with self._changed:
            self._expired.pop(token, None)
            if self._credentials is not None:
                self._credentials[token] = self._credentials.get(token, frozenset()) | {owner}
            self._changed.notify_all()

    def expire_token(self, token: str, reason: str = "CONNECTION_TIMEOUT") -> int:
        """Revoke *token*: refuse it (401), disconnect its connections, forget their sessions.

        Each connection opened with *token* gets ``2{"reason": reason}`` and is
        closed (in the background, as :meth:`disconnect`); every session bound
        to one of them is forgotten, so a client that sends into it again gets
        ``SESSION_NOT_FOUND``.  Return how many connections were disconnected.
        """
        if not isinstance(token, str) or not token:
            raise InvalidArgumentError("token must be a non-empty str")
        with self._changed:
            if self._credentials is not None:
                self._credentials.pop(token, None)
            self._expired[token] = reason
            conns = [conn for conn in self._connections.values() if conn.peer.token == token]
            forgotten = self._state.forget_sessions_of({conn.id for conn in conns})
            self._changed.notify_all()
        logger.info(
            "token expired (%s): %d connection(s) closed, session(s) forgotten: %s",
            reason,
            len(conns),
            ", ".join(forgotten) or "none",
        )
        return self._disconnect(conns, reason)

    def _close_connection(self, conn: _Connection, sent: threading.Event | None) -> None:
        """The closer thread: close *conn* once its ``2`` is *sent* (or ``CLOSE_TIMEOUT``)."""
        try:
            if sent is not None:
                sent.wait(CLOSE_TIMEOUT)
            conn.ws.close()
        finally:
            with self._lock:
                self._closers.discard(threading.current_thread())

    def drop_connections(self) -> int:
        """Cut every connection at TCP level, with no close frame; return how many."""
        conns = self._targets(None)
        for conn in conns:
            _shutdown_socket(conn.ws.socket)
            conn.ws.close_socket()
        logger.info("dropped %d connection(s)", len(conns))
        return len(conns)
