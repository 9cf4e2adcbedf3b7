"""Review: with require_acks=False the protocol's event list grows without bound
while the reader is not woken by inbound data."""

from __future__ import annotations

from conftest import TIMEOUT, ClientFactory

from avatar_im.server import ReferenceServer


def test_acked_events_pile_up_while_the_reader_sleeps(
    server: ReferenceServer, make_client: ClientFactory
) -> None:
    """ClientProtocol.data_to_send() appends an Acked event per message when
    require_acks=False; only the reader pulls events, after its read returns.  With
    heartbeat_interval=None and a server that sends nothing back, the reader never
    wakes, so one event per message ever sent stays in memory."""
    server.faults.drop_acks = True  # a service that never acknowledges (the use case)
    client = make_client(require_acks=False, heartbeat_interval=None)
    client.wait_connected(TIMEOUT)
    n = 20_000
    for i in range(n):
        client.send_message({"n": i})  # no reply from the server, and no ack
    client.flush(TIMEOUT)
    pending_events = client._connection.locked(lambda p: len(p._events))
    assert pending_events < 1000, f"{pending_events} events held in memory for {n} sends"
