"""Unit tests of the pure frame layer: no sockets."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from avatar_im import ProtocolError
from avatar_im.packets import (
    Packet,
    PacketType,
    decode_frame,
    encode_envelope,
    encode_envelope_slow,
    encode_frame,
)


def test_bodiless_frames_are_one_digit() -> None:
    """Heartbeat, pong and accept frames are the bare digit."""
    assert encode_frame(PacketType.PING) == "3"
    assert decode_frame("1") == Packet(PacketType.ACCEPTED)
    assert decode_frame("4") == Packet(PacketType.PONG)


def test_envelope_is_compact_json_in_documented_order() -> None:
    """The envelope is JSON.stringify-compact with keys in the documented order."""
    frame = encode_envelope("msg_1", "app", {"type": "dataSend", "sessionId": "s", "text": "你好"})
    assert frame == (
        '5{"messageId":"msg_1","receiverAppId":"app","receiverId":"ability",'
        '"receiverType":"server","sticky":true,'
        '"content":{"type":"dataSend","sessionId":"s","text":"你好"}}'
    )


def test_control_characters_are_escaped_like_javascript() -> None:
    """Control characters are escaped exactly as JSON.stringify escapes them."""
    frame = encode_envelope("m", "a", {"text": 'a\nb\x01"\\/'})
    assert '"text":"a\\nb\\u0001\\"\\\\/"' in frame


def test_decode_message_ack_event_disconnect() -> None:
    """Each bodied packet type decodes to its JSON object."""
    assert decode_frame('5{"messageId":"x","content":{"type":"t"}}').message_id == "x"
    assert decode_frame('6{"messageId":"x","error":"E"}').body == {"messageId": "x", "error": "E"}
    assert decode_frame('7{"k":1}').body == {"k": 1}
    assert decode_frame('2{"reason":"UNIT_SWITCH"}').body == {"reason": "UNIT_SWITCH"}


def test_digit_is_split_not_replaced() -> None:
    """Only the first character is the type: a body containing the digit stays intact."""
    body = {"messageId": "5555", "content": {"n": "5"}}
    assert decode_frame("5" + json.dumps(body)).body == body


@pytest.mark.parametrize(
    "frame",
    [
        "",
        "0",
        "8{}",
        "x",
        "5",
        "5{",
        "5[]",
        '5{"content":{}}',
        '5{"messageId":""}',
        '5{"messageId":"a","content":"text"}',
        "6{}",
        '6{"messageId":1}',
        "2{}",
        '2{"reason":5}',
        "7[1]",
        "3 not json",
        "5" + "[" * 100_000,
        b"5{}",
    ],
)
def test_garbage_raises_protocol_error(frame: str | bytes) -> None:
    """Every malformed frame raises ProtocolError and nothing else."""
    with pytest.raises(ProtocolError):
        decode_frame(frame)


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(message_id=st.text(), app_id=st.text(), content=_json_values)
def test_the_fast_envelope_is_byte_identical_to_the_reference(
    message_id: str, app_id: str, content: object
) -> None:
    """encode_envelope (constant parts cached) writes exactly what dumps(envelope(...)) writes."""
    assert encode_envelope(message_id, app_id, content) == encode_envelope_slow(
        message_id, app_id, content
    )


@pytest.mark.parametrize("content", [{"x": math.nan}, {"x": object()}, {1j: 1}])
def test_the_fast_envelope_refuses_what_the_reference_refuses(content: object) -> None:
    """Both paths raise the same error type for content JSON cannot encode."""
    with pytest.raises((TypeError, ValueError)) as slow:
        encode_envelope_slow("m", "a", content)
    with pytest.raises(slow.type):
        encode_envelope("m", "a", content)


@settings(max_examples=300, deadline=None)
@given(
    body=st.dictionaries(st.text(), _json_values, max_size=4),
    space=st.sampled_from(["", " ", "\n", " \t\r\n"]),
)
def test_the_fast_body_parser_agrees_with_json_loads(body: dict[str, object], space: str) -> None:
    """The one-call scanner gives json.loads' object, trailing JSON whitespace allowed."""
    text = json.dumps({"messageId": "m", **body}) + space
    assert decode_frame("7" + text).body == json.loads(text)
    with pytest.raises(ProtocolError):
        decode_frame("7" + text + "x")
