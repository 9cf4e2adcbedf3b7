"""Unit tests of message ids, de-duplication, URLs, options and the reconnect policy."""

from __future__ import annotations

import gc
import multiprocessing
import os
import select
import time
import weakref
from multiprocessing.connection import Connection

import pytest
from conftest import TIMEOUT

from avatar_im import (
    InvalidArgumentError,
    InvalidArgumentTypeError,
    ReconnectPolicy,
    SessionOptions,
)
from avatar_im.ids import MessageIdFactory, RecentIds, default_id_factory
from avatar_im.options import refresh_fields
from avatar_im.urls import DEFAULT_URL, build_url, redact_url


def test_message_ids_never_collide_within_one_millisecond() -> None:
    """200,000 ids stamped with the same millisecond are all distinct and keep the prefix."""
    factory = MessageIdFactory()
    ids = {factory.new(1_700_000_000_000) for _ in range(200_000)}
    assert len(ids) == 200_000
    assert all(i.startswith("msg_1700000000000_") for i in ids)


def test_two_factories_do_not_collide() -> None:
    """Two factories (two processes) make different ids at the same instant."""
    assert MessageIdFactory().new(1) != MessageIdFactory().new(1)


def test_recent_ids_bounded_and_o1() -> None:
    """The de-duplicator remembers exactly the last `capacity` ids."""
    seen = RecentIds(capacity=3)
    assert [seen.add(x) for x in "abca"] == [True, True, True, False]
    assert seen.add("d") is True  # evicts "a"
    assert "a" not in seen and len(seen) == 3
    assert seen.add("a") is True


#: How many ids each side of a fork makes.
FORK_IDS = 200


def _read_until_eof(fd: int, timeout: float) -> bytes:
    """Read *fd* to its end, failing after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    while (remaining := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([fd], [], [], remaining)
        if not readable:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
    raise AssertionError(f"no end of the pipe from the child within {timeout} s")


def test_forked_child_makes_ids_its_parent_never_makes() -> None:
    """After os.fork(), the default factory's ids in parent and child never overlap."""
    pinned = MessageIdFactory("pinned")
    default_id_factory.new(1)  # the factory is in use before the fork, as in a preloaded app
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            os.close(read_end)
            ids = [default_id_factory.new(1) for _ in range(FORK_IDS)] + [pinned.new(1)]
            data = "\n".join(ids).encode()
            while data:
                data = data[os.write(write_end, data) :]
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    try:
        parent_ids = {default_id_factory.new(1) for _ in range(FORK_IDS)}
        child_ids = _read_until_eof(read_end, TIMEOUT).decode().split("\n")
    finally:
        os.close(read_end)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    *child_default_ids, child_pinned_id = child_ids
    assert len(set(child_default_ids)) == FORK_IDS
    assert parent_ids.isdisjoint(child_default_ids)
    # An explicit instance is the caller's to keep unique: the child keeps it as given.
    assert child_pinned_id.startswith("msg_1_pinned_")


def _send_default_ids(connection: Connection) -> None:
    connection.send([default_id_factory.new(1) for _ in range(FORK_IDS)])
    connection.close()


def test_multiprocessing_fork_children_make_distinct_ids() -> None:
    """Children started by multiprocessing's "fork" context make ids no one else makes."""
    default_id_factory.new(1)
    context = multiprocessing.get_context("fork")
    pipes = [context.Pipe(duplex=False) for _ in range(2)]
    children = [context.Process(target=_send_default_ids, args=(w,)) for _, w in pipes]
    for child in children:
        child.start()
    try:
        for _, write_end in pipes:
            write_end.close()
        seen = {default_id_factory.new(1) for _ in range(FORK_IDS)}
        for read_end, _ in pipes:
            assert read_end.poll(TIMEOUT), "a child sent no ids in time"
            child_ids = set(read_end.recv())
            assert len(child_ids) == FORK_IDS and seen.isdisjoint(child_ids)
            seen |= child_ids
    finally:
        for child in children:
            child.join(TIMEOUT)
            if child.is_alive():
                child.kill()
                child.join(TIMEOUT)
    assert [child.exitcode for child in children] == [0, 0]


def test_id_factories_are_not_kept_alive_by_the_fork_hook() -> None:
    """A factory that is no longer referenced is freed: the fork hook holds it weakly."""
    factory = MessageIdFactory()
    ref = weakref.ref(factory)
    del factory
    gc.collect()
    assert ref() is None


def test_recent_ids_bounded_by_bytes() -> None:
    """With max_bytes, the oldest ids go until both the count and the byte bound hold."""
    seen = RecentIds(capacity=10, max_bytes=10)
    assert [seen.add(x) for x in ("aaaa", "bbbb", "cc")] == [True, True, True]
    assert seen.nbytes == 10 and len(seen) == 3
    assert seen.add("dddd") is True  # evicts "aaaa" only: 4 + 2 + 4 = 10
    assert "aaaa" not in seen and all(x in seen for x in ("bbbb", "cc", "dddd"))
    assert seen.add("eeeeeeeee") is True  # 9 bytes: evicts everything else
    assert len(seen) == 1 and seen.nbytes == 9
    assert seen.add("eeeeeeeee") is False


def test_recent_ids_memory_bounded_with_huge_ids() -> None:
    """A thousand 100 kB ids keep at most max_bytes of ids alive."""
    seen = RecentIds(capacity=1000, max_bytes=1_000_000)
    for n in range(1000):
        assert seen.add(f"{n:06d}" + "x" * 100_000)
        assert seen.nbytes <= 1_000_000
    assert len(seen) == 9
    assert f"{999:06d}" + "x" * 100_000 in seen


def test_recent_ids_never_remembers_an_id_over_max_bytes() -> None:
    """An id longer than max_bytes on its own is not remembered and evicts nothing."""
    seen = RecentIds(capacity=4, max_bytes=8)
    seen.add("small")
    assert seen.add("x" * 9) is True
    assert seen.add("x" * 9) is True
    assert "x" * 9 not in seen and "small" in seen and len(seen) == 1


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"capacity": 0}, ValueError),
        ({"max_bytes": 0}, ValueError),
        ({"max_bytes": -5}, ValueError),
        ({"capacity": 2.5}, TypeError),
        ({"max_bytes": "100"}, TypeError),
        ({"capacity": True}, TypeError),
    ],
)
def test_recent_ids_bad_bounds(kwargs: dict[str, object], error: type[Exception]) -> None:
    """Bounds below 1 raise ValueError; bounds that are not ints raise TypeError."""
    with pytest.raises(error):
        RecentIds(**kwargs)  # type: ignore[arg-type]


def test_url_matches_original_for_plain_values_and_encodes_the_rest() -> None:
    """Plain values give the original's URL; reserved characters are percent-encoded."""
    assert build_url(DEFAULT_URL, token="abc", app_id="app", tenant_id="1") == (
        "wss://avatar-im.console.aliyun.com/ws?t=abc&app=app&tenant=1"
    )
    url = build_url("ws://h/ws", token="a&b=c+/", app_id="x", tenant_id="y")
    assert url == "ws://h/ws?t=a%26b%3Dc%2B%2F&app=x&tenant=y"


def test_url_redaction_hides_token() -> None:
    """The token is replaced by *** wherever the URL is shown."""
    assert redact_url("ws://h/ws?t=secret&app=a&tenant=b") == "ws://h/ws?t=***&app=a&tenant=b"


def test_bad_url_scheme() -> None:
    """Only ws:// and wss:// URLs are accepted."""
    with pytest.raises(InvalidArgumentError):
        build_url("http://h/ws", token="t", app_id="a", tenant_id="b")


def test_session_options_defaults_are_the_originals() -> None:
    """Defaults and wire form (camelCase keys, string values) match the original."""
    assert SessionOptions().to_wire() == {
        "dialogMode": "aliYunChat",
        "duplexMode": "cloud",
        "outputMode": "video",
        "videoOpen": "0",
        "format": "pcm",
        "sampleRate": "16000",
    }
    opts = SessionOptions(format="wav", sample_rate="8000", video_open=True)
    assert opts.to_wire()["sampleRate"] == "8000" and opts.video_open == "1"


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"format": "mp3"}, InvalidArgumentError),
        ({"dialog_mode": "chatty"}, InvalidArgumentError),
        ({"duplex_mode": 1}, InvalidArgumentTypeError),
        ({"sample_rate": 12.5}, InvalidArgumentTypeError),
        ({"sample_rate": 100}, InvalidArgumentError),
        ({"video_open": "yes"}, InvalidArgumentError),
        ({"colour": "blue"}, InvalidArgumentError),
    ],
)
def test_bad_session_options(kwargs: dict[str, object], error: type[Exception]) -> None:
    """Unknown options and bad values raise typed errors naming them."""
    with pytest.raises(error):
        SessionOptions.from_kwargs(kwargs)


def test_refresh_fields_only_given_options() -> None:
    """refresh_context sends only the options it was given."""
    assert refresh_fields({"output_mode": "audio"}) == {"outputMode": "audio"}


def test_backoff_full_jitter_capped() -> None:
    """Delays grow exponentially, are scaled by the random draw and capped."""
    policy = ReconnectPolicy(initial_delay=1, multiplier=2, max_delay=5, max_attempts=4)
    assert [policy.cap(n) for n in range(5)] == [1, 2, 4, 5, 5]
    assert policy.delay(2, 0.5) == 2.0
    assert policy.cap(10_000) == 5
    assert not policy.is_exhausted(3) and policy.is_exhausted(4)
    assert not ReconnectPolicy().is_exhausted(10**9)
    assert ReconnectPolicy.never().is_exhausted(0)
    with pytest.raises(InvalidArgumentError):
        ReconnectPolicy(initial_delay=-1)


def test_protocol_doc_lists_every_family_as_the_table_has_it() -> None:
    """docs/protocol.md's families tables are families.markdown_table() (regenerate on edit)."""
    from pathlib import Path

    from avatar_im.families import markdown_table

    text = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text("utf-8")
    begin, end = "<!-- families:begin -->\n", "<!-- families:end -->"
    section = text[text.index(begin) + len(begin) : text.index(end)]
    assert section == markdown_table(), "paste avatar_im.families.markdown_table()"
