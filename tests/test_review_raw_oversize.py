"""Review: send(frame) skips the size check that send_message() has: a tracked raw frame
the server refuses (close 1009) is resent on every reconnect, for ever, and blocks all
messages behind it."""

from __future__ import annotations

import json

from conftest import TIMEOUT

from avatar_im import AvatarIM, InvalidArgumentError, ReconnectPolicy
from avatar_im.server import ReferenceServer

FAST = ReconnectPolicy(initial_delay=0.02, max_delay=0.1)


def test_oversized_raw_message_frame_is_refused_at_the_call() -> None:
    limit = 4096
    with ReferenceServer(host="127.0.0.1", port=0, max_size=limit) as server:
        client = AvatarIM(
            token="t",
            app_id="a",
            tenant_id="b",
            session_id="s",
            url=server.url,
            reconnect=FAST,
            max_message_size=limit,
        )
        try:
            client.start_session()
            client.wait_session_ready(TIMEOUT)
            content = {"type": "x", "sessionId": "s", "pad": "a" * (2 * limit)}
            # send_message() refuses it at the call, as documented:
            try:
                client.send_message(content)
                raise AssertionError("send_message accepted an oversized message")
            except InvalidArgumentError:
                pass
            frame = "5" + json.dumps({"messageId": "raw-big", "content": content})
            try:
                client.send(frame)
            except InvalidArgumentError:
                return  # fixed
            # Not refused: it is tracked, the server closes with 1009, the client resends
            # it after every reconnect; everything behind it is stranded.
            after = client.send_text("after")
            try:
                client.wait_ack(after, TIMEOUT)
            finally:
                print("reconnects:", client.stats.reconnects)
        finally:
            client.close()
