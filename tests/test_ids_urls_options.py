"""Unit tests of message ids, de-duplication, URLs, options and the reconnect policy."""

from __future__ import annotations

import pytest

from avatar_im import (
    InvalidArgumentError,
    InvalidArgumentTypeError,
    ReconnectPolicy,
    SessionOptions,
)
from avatar_im.ids import MessageIdFactory, RecentIds
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
