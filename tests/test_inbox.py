"""Unit tests of the inbox, with no socket: typed routing, claims, speaking, owed answers."""

from __future__ import annotations

import time

from avatar_im.inbox import AskClaim, Claim, Inbox


def envelope(n: int, kind: str, **content: object) -> dict[str, object]:
    return {"messageId": f"m{n}", "content": {"type": kind, "sessionId": "s", **content}}


def test_a_lost_session_ends_the_speaking_state() -> None:
    """broadcastStart sets speaking; a lost session clears it (no end will ever come)."""
    inbox = Inbox(16)
    inbox.deliver_message(envelope(1, "broadcastStart", sentenceId="x"))
    assert inbox.speaking
    inbox.session_lost()
    assert not inbox.speaking


def test_sentence_ids_as_numbers_match() -> None:
    """A start with sentenceId 1 is ended by an end with 1.0; an end of an unknown id does
    not end another sentence, but an end without an id ends whatever is spoken."""
    inbox = Inbox(16)
    inbox.deliver_message(envelope(1, "broadcastStart", sentenceId=1))
    inbox.deliver_message(envelope(2, "broadcastEnd", sentenceId=1.0))
    assert not inbox.speaking
    inbox.deliver_message(envelope(3, "broadcastStart", sentenceId="a"))
    inbox.deliver_message(envelope(4, "broadcastEnd", sentenceId="b"))
    assert inbox.speaking
    inbox.deliver_message(envelope(5, "broadcastEnd", sentenceId=[1]))
    assert not inbox.speaking


def test_an_owed_answer_skips_the_next_claim_until_its_deadline() -> None:
    """After a claim gave up (owe), the next answer of that family goes to the buffer."""
    inbox = Inbox(16)
    inbox.owe("interrupt_result", time.monotonic() + 60)
    claim = Claim(frozenset({"interrupt_result"}), inbox.position())
    inbox.open_claim(claim)
    inbox.deliver_message(envelope(1, "interruptResult", interrupted=True))
    assert claim.taken is None
    inbox.deliver_message(envelope(2, "interruptResult", interrupted=False))
    assert claim.taken is not None and claim.taken.message_id == "m2"
    inbox.owe("reply", time.monotonic() - 1)  # expired: the next claim takes the next reply
    ask = AskClaim(inbox.position())
    inbox.open_claim(ask)
    inbox.deliver_message(envelope(3, "replyContent", text="hi"))
    assert ask.taken is not None


def test_a_refusal_reaches_its_claim_even_before_the_claim_knows_its_id() -> None:
    """refused() before sent(): the claim learns the refusal when it learns its id."""
    inbox = Inbox(16)
    claim = Claim(frozenset({"reply"}), inbox.position())
    inbox.open_claim(claim)
    inbox.refused("msg_1", "NOPE")
    inbox.sent(claim, "msg_1")
    assert claim.refusal == "NOPE"


def test_owing_stops_once_the_next_claims_message_is_acknowledged() -> None:
    """A lost late answer never shifts later answers: once the waiting claim's own message is
    acknowledged, the next answer is its own."""
    inbox = Inbox(16)
    inbox.owe("reply", time.monotonic() + 60)  # an ask gave up; its reply never comes
    ask = AskClaim(inbox.position())
    inbox.open_claim(ask)
    inbox.sent(ask, "msg_2")
    inbox.acked("msg_2")
    inbox.deliver_message(envelope(1, "replyContent", text="the answer to msg_2"))
    assert ask.taken is not None and ask.taken.text == "the answer to msg_2"
