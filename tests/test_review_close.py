"""Review: close() must end a connect attempt at once and leave no thread behind."""

from __future__ import annotations

import time

from conftest import TIMEOUT
from peers import tcp_blackhole

from avatar_im import AvatarIM, ConnectionState


def test_close_during_tls_handshake_leaves_no_reader_thread() -> None:
    """wss:// to a peer that accepts TCP but never answers the TLS ClientHello.

    websocket-client assigns ``ws.sock`` only after TCP connect + TLS handshake
    return, so ``Transport.abort()`` finds ``sock is None`` and cannot interrupt
    them: the reader sits in the TLS handshake until ``connect_timeout`` (10 s
    by default) and outlives close().
    """
    with tcp_blackhole() as hole:
        url = hole.url.replace("ws://", "wss://")
        client = AvatarIM(
            token="t", app_id="a", tenant_id="b", session_id="s", url=url, connect_timeout=3.0
        )
        assert hole.wait_accepted(1, TIMEOUT)  # the reader is now inside the TLS handshake
        started = time.monotonic()
        client.close()
        assert time.monotonic() - started < 1.5
        # The promise: no client thread outlives close().
        assert client.threads == [], "reader still alive after close()"


def test_connect_after_close_is_not_a_silent_no_op() -> None:
    """After close() left the reader in the handshake, connect() does nothing at all:
    Connection.start() returns because the old reader is alive, the client stays CLOSED."""
    with tcp_blackhole() as hole:
        url = hole.url.replace("ws://", "wss://")
        client = AvatarIM(
            token="t", app_id="a", tenant_id="b", session_id="s", url=url, connect_timeout=3.0
        )
        assert hole.wait_accepted(1, TIMEOUT)
        client.close()
        client.connect()
        try:
            assert client.state is not ConnectionState.CLOSED, "connect() silently did nothing"
        finally:
            client.close()
            for t in client.threads:
                t.join(15)
