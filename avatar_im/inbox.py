"""What the server sent, held for the application: buffers, claims, speaking state, listeners.

:class:`Inbox` turns each received message into its typed value
(:mod:`.messages`), numbers it (``seq``), keeps the avatar's speaking state,
offers it to the open *claims* (an ``ask()`` waiting for its reply, an
``interrupt()`` waiting for its result) and buffers what no claim took for the
pull API (``receive``), bounded: when full the oldest goes, counted and logged (with
a capacity of 0 it keeps none, silently: a client read through listeners only).

Threads: the client's reader thread delivers; any application thread pulls,
claims and waits.  One lock, ``Inbox._lock`` (a condition), guards every field;
it is never held while application code runs (a ``match`` predicate excepted:
it must be a quick, pure test) and never together with the connection lock.

:class:`Listeners` is the ``on()``/``off()`` registry: copy-on-write tuples,
read without a lock by the reader thread.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from . import families
from .exceptions import InvalidArgumentError, InvalidArgumentTypeError
from .messages import (
    BroadcastEnd,
    BroadcastStart,
    Message,
    Reply,
    ServerEvent,
    from_envelope,
    from_event,
)

__all__ = ["Answer", "AskClaim", "Claim", "Inbox", "Listeners", "family_names"]

logger = logging.getLogger(__name__)

#: How many claims may stay open at once; the oldest finished-phase claim goes first.
MAX_CLAIMS = 16
#: How many late answers per family the inbox keeps owed to claims that gave up.
MAX_OWED = 16
#: How many refusals the inbox remembers for claims (see Inbox.refused).
MAX_REFUSALS = 256

Matcher = Callable[[Message], bool]
Listener = Callable[[Message], object]

#: Every name ``on()`` and ``receive(family=...)`` accept.
KNOWN_FAMILIES = frozenset([*families.BY_NAME, *families.PSEUDO_FAMILIES])


def family_names(family: str | Iterable[str]) -> frozenset[str]:
    """Validate a family name (or several); raise a typed error naming the known ones."""
    names = [family] if isinstance(family, str) else family
    if not isinstance(names, Iterable):
        raise InvalidArgumentTypeError(
            f"family must be a str or an iterable of str, got {type(family).__name__}"
        )
    names = list(names)
    for name in names:
        if not isinstance(name, str):
            raise InvalidArgumentTypeError(f"family names must be str, got {type(name).__name__}")
    result = frozenset(names)
    for name in result:
        if name not in KNOWN_FAMILIES:
            raise InvalidArgumentError(
                f"unknown message family {name!r}; known: {', '.join(sorted(KNOWN_FAMILIES))}"
            )
    if not result:
        raise InvalidArgumentError("name at least one message family")
    return result


@attrs.frozen
class Answer:
    """What :meth:`AvatarIM.ask` returns: the reply to one text, and its broadcast.

    ``broadcast_start`` and ``broadcast_end`` are set when the ask waited for
    the reply to be spoken (``wait_spoken=True``) and the service sent them.
    """

    message_id: str  #: the id of the text that was asked
    reply: Reply
    broadcast_start: BroadcastStart | None = None
    broadcast_end: BroadcastEnd | None = None
    #: The broadcast was cut (an interrupt or a stop) before it was spoken to its end.
    interrupted: bool = False

    @property
    def text(self) -> str:
        """The reply's text (``""`` when it carried none)."""
        return self.reply.text or ""


class Claim:
    """Takes the first message of *wanted* families that arrives after position *after*."""

    def __init__(self, wanted: frozenset[str], after: int) -> None:
        self.wanted = wanted
        self.after = after
        self.taken: Message | None = None
        #: The id of the message whose answer this claim waits for, once sent.
        self.message_id: str | None = None
        #: The server refused that message with this error (see Inbox.refused).
        self.refusal: object = None
        #: The server acknowledged that message (see Inbox.acked).
        self.acked = False

    def offer(self, message: Message) -> bool:
        if self.taken is None and message.seq > self.after and message.family in self.wanted:
            self.taken = message
            return True
        return False

    @property
    def finished(self) -> bool:
        return self.taken is not None


class AskClaim(Claim):
    """An ask's claim: its reply, then the broadcast start and end that follow it.

    The rule (see ``docs/conversation.md``): the reply to an asked text is the
    first ``reply`` that arrives after the text was queued; asks take turns,
    one at a time per client.  The broadcast of that reply is the first
    ``broadcast_start`` after it not taken by an earlier ask, and the
    ``broadcast_end`` of the same sentence.  The claim stays open for the
    broadcast after ``ask()`` returned, so that the broadcast is not left in
    the receive buffer; a later ask's claim pushes it out (at most
    :data:`MAX_CLAIMS` stay open), and an interrupt, a stop or a lost session
    ends it (its broadcast will not come).

    Late replies: when an ask gives up, the client *owes* it one reply (for
    ``max(timeout, LATE_WINDOW)``): the next reply goes to ``receive()``, not
    to the next ask, as long as the next ask's own text is not acknowledged
    yet.  Once it is, owing stops (the owed reply may be lost, and every later
    ask must not be shifted by one): a reply later than that is taken by the
    next ask.
    """

    def __init__(self, after: int) -> None:
        super().__init__(frozenset({"reply"}), after)
        self.start: BroadcastStart | None = None
        self.end: BroadcastEnd | None = None
        self.abandoned = False  # the ask gave up: its reply is no longer taken
        self.cut = False  # an interrupt, a stop or a lost session ended its broadcast

    def offer(self, message: Message) -> bool:
        if self.taken is None:
            return not self.abandoned and super().offer(message)
        if self.start is None:
            if isinstance(message, BroadcastStart):
                self.start = message
                return True
            return False
        if self.end is None and isinstance(message, BroadcastEnd):
            same = message.sentence_id is None or message.sentence_id == self.start.sentence_id
            if same:
                self.end = message
                return True
        return False

    @property
    def finished(self) -> bool:
        return self.abandoned or self.cut or (self.taken is not None and self.end is not None)


class Inbox:
    """The received messages and events, the claims on them and the speaking state."""

    def __init__(self, capacity: int) -> None:
        # Guards every field below (see the module docstring).
        self._lock = threading.Condition()
        self._capacity = capacity
        self._messages: collections.deque[Message] = collections.deque()
        self._events: collections.deque[Message] = collections.deque()
        self._claims: list[Claim] = []
        # Ids of messages to drop on delivery (see discard()); a few at most.
        self._discard: collections.deque[str] = collections.deque(maxlen=16)
        self._seq = 0
        self.dropped = 0  # buffered values dropped because the buffer was full
        self._speaking: str | None = None  # the sentence id being spoken ("" if none given)
        # Answers still owed to claims that gave up (an ask or interrupt that timed out), by
        # family: the deadline until which the next answer of that family is theirs, not
        # the next claim's; it then goes to the buffer.  Bounded by MAX_OWED per family.
        self._owed: dict[str, collections.deque[float]] = {}
        # Errors the server refused messages with, by id, for claims that wait on them
        # (bounded: the last MAX_REFUSALS).
        self._refusals: collections.OrderedDict[str, object] = collections.OrderedDict()
        # The last acks seen while claims were open (for a claim that learns its id late).
        self._acks: collections.deque[str] = collections.deque(maxlen=64)
        self.closed = False

    # ------------------------------------------------------- the reader delivers

    def deliver_message(self, envelope: Mapping[str, Any]) -> Message:
        """Type, number and route one business message; return its value."""
        with self._lock:
            self._seq += 1
            message = from_envelope(envelope, self._seq)
            self._track_speaking(message)
            self._route(message, self._messages)
            return message

    def deliver_event(self, body: Mapping[str, Any]) -> ServerEvent:
        """Type, number and buffer one event (packet ``7``); return its value."""
        with self._lock:
            self._seq += 1
            event = from_event(body, self._seq)
            self._route(event, self._events)
            return event

    def _route(self, message: Message, buffer: collections.deque[Message]) -> None:
        if message.message_id is not None and message.message_id in self._discard:
            self._discard.remove(message.message_id)
            return
        owed = self._owed.get(message.family)
        if owed:
            now = time.monotonic()
            while owed and owed[0] < now:
                owed.popleft()
            waiting = [c for c in self._claims if c.taken is None and message.family in c.wanted]
            if waiting and all(c.acked for c in waiting):
                # The waiting claim's own message was acknowledged already: the answer may
                # be its own, and the late one may never come.  Owing stops here, so a lost
                # answer never shifts every later one.
                owed.clear()
            elif owed:
                owed.popleft()  # a late answer to a claim that gave up: not the next claim's
                self._append(message, buffer)
                return
        if message.family in ("interrupt_result", "stop_result"):
            self._cut_broadcasts()
        for claim in self._claims:
            if claim.offer(message):
                if claim.finished:
                    self._claims.remove(claim)
                self._lock.notify_all()
                return
        self._append(message, buffer)

    def _append(self, message: Message, buffer: collections.deque[Message]) -> None:
        if not self._capacity:
            return  # no pull buffer (receive_buffer=0): only listeners and claims see it
        if len(buffer) >= self._capacity:
            buffer.popleft()
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                logger.warning(
                    "receive buffer full (%d): dropped the oldest (%d so far); "
                    "call receive() or raise receive_buffer",
                    self._capacity,
                    self.dropped,
                )
        buffer.append(message)
        self._lock.notify_all()

    def _track_speaking(self, message: Message) -> None:
        family = message.family
        if isinstance(message, BroadcastStart):
            self._speaking = message.sentence_id or ""
        elif isinstance(message, BroadcastEnd):
            # An end without an id, or of a start without one, ends whatever is spoken.
            if (
                not message.sentence_id
                or not self._speaking
                or message.sentence_id == self._speaking
            ):
                self._speaking = None
        elif family in ("interrupt_result", "stop_result"):
            self._speaking = None

    def _cut_broadcasts(self) -> None:
        """An interrupt, a stop or a lost session: no ask waits for a broadcast any more."""
        for claim in list(self._claims):
            if isinstance(claim, AskClaim) and claim.taken is not None and claim.end is None:
                claim.cut = True
                self._claims.remove(claim)
        self._lock.notify_all()

    def session_lost(self) -> None:
        """The server lost the session: nothing is spoken, no broadcast will come."""
        with self._lock:
            self._speaking = None
            self._cut_broadcasts()

    def refused(self, message_id: str, error: object) -> None:
        """The server refused *message_id*: a claim waiting on it learns at once."""
        with self._lock:
            self._refusals[message_id] = error
            if len(self._refusals) > MAX_REFUSALS:
                self._refusals.popitem(last=False)
            for claim in self._claims:
                if claim.message_id == message_id:
                    claim.refusal = error
            self._lock.notify_all()

    def sent(self, claim: Claim, message_id: str) -> None:
        """*claim* waits for the answer to *message_id* (refused or acked already? it learns)."""
        with self._lock:
            claim.message_id = message_id
            if message_id in self._refusals:
                claim.refusal = self._refusals[message_id]
            if message_id in self._acks:
                claim.acked = True
            self._lock.notify_all()

    @property
    def tracking(self) -> bool:
        """Whether a claim is open: only then does :meth:`acked` need calling."""
        return bool(self._claims)

    def acked(self, message_id: str) -> None:
        """The server acknowledged *message_id* (called by the reader while claims are open)."""
        with self._lock:
            self._acks.append(message_id)
            for claim in self._claims:
                if claim.message_id == message_id:
                    claim.acked = True

    def owe(self, family: str, until: float) -> None:
        """A claim for *family* gave up: its answer, if it comes before *until*, is not
        the next claim's."""
        with self._lock:
            owed = self._owed.setdefault(family, collections.deque(maxlen=MAX_OWED))
            owed.append(until)

    # ------------------------------------------------------------ application

    @property
    def speaking(self) -> bool:
        """Whether a broadcast started and has not ended."""
        with self._lock:
            return self._speaking is not None

    def position(self) -> int:
        """The ``seq`` of the last value delivered: a claim made now takes what comes later."""
        with self._lock:
            return self._seq

    def open_claim(self, claim: Claim) -> None:
        """Let *claim* take the matching values delivered from now on."""
        with self._lock:
            self._claims.append(claim)
            if len(self._claims) > MAX_CLAIMS:
                # The oldest ask still waiting for its broadcast goes first.
                for old in self._claims:
                    if isinstance(old, AskClaim) and old.taken is not None:
                        self._claims.remove(old)
                        break

    def drop_claim(self, claim: Claim) -> None:
        """Remove *claim* whatever it holds: it takes nothing more."""
        with self._lock:
            if isinstance(claim, AskClaim):
                claim.abandoned = True
            if claim in self._claims:
                self._claims.remove(claim)

    def wait(self, predicate: Callable[[], bool], timeout: float | None) -> bool:
        """Wait until *predicate()* (run under the lock) holds, the inbox closes, or timeout."""
        with self._lock:
            return self._lock.wait_for(lambda: predicate() or self.closed, timeout) and predicate()

    def wait_quiet(self, timeout: float | None) -> bool:
        """Wait until no broadcast is running; return whether it is so."""
        return self.wait(lambda: self._speaking is None, timeout)

    def pull(
        self,
        *,
        events: bool,
        timeout: float | None,
        wanted: frozenset[str] | None,
        match: Matcher | None,
        closed: Callable[[], bool],
    ) -> Message | None:
        """Take the oldest buffered value that fits; ``None`` when closed with none, or timeout.

        Raises nothing itself: the caller tells a timeout from a close by *closed()*.
        """
        buffer = self._events if events else self._messages
        found: list[Message] = []

        def ready() -> bool:
            for index, item in enumerate(buffer):
                if (wanted is None or item.family in wanted or "message" in wanted) and (
                    match is None or match(item)
                ):
                    del buffer[index]
                    found.append(item)
                    break
            return bool(found) or closed()

        with self._lock:
            self._lock.wait_for(ready, timeout)
            return found[0] if found else None

    def discard(self, message_id: str) -> None:
        """Take message *message_id* out of the pull API: what a wait returned is not pulled.

        The message may not be delivered yet (the protocol saw it before the
        reader handed it here): then it is dropped when it comes.
        """
        with self._lock:
            for index, item in enumerate(self._messages):
                if item.message_id == message_id:
                    del self._messages[index]
                    return
            self._discard.append(message_id)

    def wake(self, *, closed: bool = False) -> None:
        """Wake every waiter; with *closed*, the client closed: waits end, nobody speaks."""
        with self._lock:
            if closed:
                self.closed = True
                self._speaking = None
            self._lock.notify_all()

    def reopen(self) -> None:
        """The client connects again: waits wait again."""
        with self._lock:
            self.closed = False

    def after_fork_in_child(self) -> None:
        """In a forked child: a fresh lock, nothing buffered (the parent's to process)."""
        self._lock = threading.Condition()
        self._messages.clear()
        self._events.clear()
        self._claims.clear()
        self._speaking = None


class Listeners:
    """The ``on()``/``off()`` registry: family name -> callbacks, in registration order.

    Writers take ``_lock`` and replace the tuple; the reader thread reads the
    dict without it (a dict read and a tuple are atomic under the GIL).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # serialises on() and off()
        self._by_family: dict[str, tuple[Listener, ...]] = {}

    def add(self, names: frozenset[str], callback: Listener) -> None:
        with self._lock:
            for name in names:
                self._by_family[name] = (*self._by_family.get(name, ()), callback)

    def remove(self, names: frozenset[str], callback: Listener) -> bool:
        removed = False
        with self._lock:
            for name in names:
                current = self._by_family.get(name, ())
                if callback in current:
                    index = current.index(callback)
                    self._by_family[name] = current[:index] + current[index + 1 :]
                    removed = True
        return removed

    def for_message(self, message: Message) -> tuple[Listener, ...]:
        """The callbacks for *message*: its family's, then the ``message`` ones (for ``5``)."""
        by_family = self._by_family
        if not by_family:
            return ()
        own = by_family.get(message.family, ())
        if message.family == families.EVENT:
            return own
        return own + by_family.get(families.ANY_MESSAGE, ())
