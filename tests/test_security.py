"""Security: secrets stay out of output, TLS, proxies, inbound limits, and a fuzzed decoder."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import TIMEOUT, ClientFactory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from peers import ConnectProxy

from avatar_im import (
    AuthenticationError,
    AvatarIM,
    CertificateError,
    ConnectionState,
    InvalidArgumentError,
    ProtocolError,
)
from avatar_im.dial import Dialer
from avatar_im.packets import Packet, decode_frame
from avatar_im.protocol import ClientProtocol
from avatar_im.server import Credentials, ReferenceServer

SECRET = "s3cr3t-TOKEN-value"


def run_session(client: AvatarIM) -> None:
    client.start_session()
    client.wait_session_ready(TIMEOUT)
    client.wait_ack(client.send_text("hello"), TIMEOUT)
    client.wait_ack(client.send_audio(b"\x00\x00" * 800), TIMEOUT)
    client.stop_session()
    client.flush(TIMEOUT)


def test_token_absent_from_logs_repr_and_errors(caplog: pytest.LogCaptureFixture) -> None:
    """A full session at DEBUG, plus an auth failure: the token is in no log, repr or error."""
    texts: list[str] = []
    with (
        caplog.at_level(logging.DEBUG),
        ReferenceServer() as server,
        AvatarIM(token=SECRET, app_id="a", tenant_id="b", session_id="s", url=server.url) as client,
    ):
        run_session(client)
        texts += [repr(client), client.url, str(client.stats)]
    with (
        caplog.at_level(logging.DEBUG),
        ReferenceServer(
            credentials=Credentials(token="other", app_id="a", tenant_id="b")
        ) as server,
    ):
        client = AvatarIM(token=SECRET, app_id="a", tenant_id="b", session_id="s", url=server.url)
        with pytest.raises(AuthenticationError) as info:
            client.wait_connected(TIMEOUT)
        texts += [str(info.value), repr(info.value)]
        client.close()
    texts += [record.getMessage() for record in caplog.records]
    texts += [str(record.exc_info) for record in caplog.records if record.exc_info]
    assert len(caplog.records) > 10  # DEBUG really was on
    assert not [t for t in texts if SECRET in t]


def test_token_absent_from_cli_output() -> None:
    """`avatar-im -vv demo --token ...` prints neither the token nor its URL form."""
    result = subprocess.run(
        [sys.executable, "-m", "avatar_im", "-vv", "demo", "--token", SECRET],
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 6,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "start_result" in result.stdout and "t=***" in result.stdout + result.stderr
    assert SECRET not in result.stdout + result.stderr


@pytest.fixture(scope="module")
def tls() -> tuple[ssl.SSLContext, ssl.SSLContext, object]:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    return server_ctx, client_ctx, ca


def test_whole_session_over_tls(tls: tuple[ssl.SSLContext, ssl.SSLContext, object]) -> None:
    """A session over wss:// with a CA made at test time, trusted through ssl_context."""
    server_ctx, client_ctx, _ = tls
    with ReferenceServer(ssl_context=server_ctx) as server:
        assert server.url.startswith("wss://")
        with AvatarIM(
            token="t",
            app_id="a",
            tenant_id="b",
            session_id="s",
            url=server.url,
            ssl_context=client_ctx,
        ) as client:
            run_session(client)
        assert server.session("s").texts == ["hello"]


def test_tls_ca_file_and_default_verification(
    tls: tuple[ssl.SSLContext, ssl.SSLContext, object], tmp_path: Path
) -> None:
    """ca_file trusts a private CA; without it the certificate is refused, for good."""
    server_ctx, _, ca = tls
    pem = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(pem))  # type: ignore[attr-defined]
    with ReferenceServer(ssl_context=server_ctx) as server:
        with AvatarIM(
            token="t", app_id="a", tenant_id="b", session_id="s", url=server.url, ca_file=pem
        ) as client:
            client.wait_connected(TIMEOUT)
        untrusting = AvatarIM(token="t", app_id="a", tenant_id="b", session_id="s", url=server.url)
        with pytest.raises(CertificateError):
            untrusting.wait_connected(TIMEOUT)
        assert untrusting.state is ConnectionState.CLOSED
        untrusting.close()


def test_turning_verification_off_warns(
    tls: tuple[ssl.SSLContext, ssl.SSLContext, object], caplog: pytest.LogCaptureFixture
) -> None:
    """verify_tls=False connects to an untrusted server and logs a warning saying so."""
    server_ctx, _, _ = tls
    with (
        ReferenceServer(ssl_context=server_ctx) as server,
        caplog.at_level(logging.WARNING, logger="avatar_im"),
        AvatarIM(
            token="t", app_id="a", tenant_id="b", session_id="s", url=server.url, verify_tls=False
        ) as client,
    ):
        client.wait_connected(TIMEOUT)
    assert any("verification is OFF" in r.getMessage() for r in caplog.records)


def test_http_proxy_option(server: ReferenceServer, make_client: ClientFactory) -> None:
    """proxy="http://user:pw@host:port" tunnels the connection through CONNECT, with auth."""
    proxy = ConnectProxy()
    try:
        host_port = proxy.url.removeprefix("http://")
        client = make_client(proxy=f"http://user:pw@{host_port}")
        run_session(client)
        assert proxy.targets == [f"127.0.0.1:{server.port}"]
        assert proxy.authorizations[0] is not None and proxy.authorizations[0].startswith("Basic ")
    finally:
        proxy.close()


def test_proxy_environment_variables(
    server: ReferenceServer, make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """http_proxy from the environment is used; no_proxy exempts a host."""
    proxy = ConnectProxy()
    try:
        monkeypatch.setenv("http_proxy", proxy.url)
        monkeypatch.delenv("no_proxy", raising=False)
        monkeypatch.delenv("NO_PROXY", raising=False)
        run_session(make_client())
        assert len(proxy.targets) == 1
        monkeypatch.setenv("no_proxy", "127.0.0.1")
        run_session(make_client(session_id="direct"))
        assert len(proxy.targets) == 1
    finally:
        proxy.close()


def _answer_one_connect(listener: socket.socket, heads: list[list[str]]) -> None:
    """Accept one connection, record its request head's lines, answer 200 and close."""
    client, _ = listener.accept()
    with client:
        client.settimeout(TIMEOUT)
        head = b""
        while b"\r\n\r\n" not in head and len(head) < 65536:
            chunk = client.recv(4096)
            if not chunk:
                break
            head += chunk
        heads.append(head.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n"))
        client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")


@pytest.mark.parametrize(
    ("host", "authority"),
    [
        ("::1", "[::1]:443"),
        ("2001:db8::7", "[2001:db8::7]:443"),
        ("example.com", "example.com:443"),
    ],
)
def test_connect_request_brackets_ipv6_hosts(host: str, authority: str) -> None:
    """CONNECT names an IPv6 literal as [addr]:port in the request line and Host header."""
    heads: list[list[str]] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(TIMEOUT)
        proxy = threading.Thread(target=_answer_one_connect, args=(listener, heads))
        proxy.start()
        try:
            proxy_address = ("127.0.0.1", listener.getsockname()[1], None)
            Dialer().dial(host, 443, secure=False, timeout=TIMEOUT, proxy=proxy_address).close()
        finally:
            proxy.join(TIMEOUT)
    assert not proxy.is_alive()
    assert heads[0][0] == f"CONNECT {authority} HTTP/1.1"
    assert f"Host: {authority}" in heads[0][1:]


@pytest.mark.parametrize(
    "kwargs",
    [{"proxy": "ftp://127.0.0.1:1"}, {"proxy": "http://127.0.0.1"}, {"ca_file": "/nonexistent"}],
)
def test_bad_tls_and_proxy_options(kwargs: dict[str, object]) -> None:
    """Malformed proxy URLs and missing CA files are refused at construction."""
    with pytest.raises(InvalidArgumentError):
        AvatarIM(
            token="t",
            app_id="a",
            tenant_id="b",
            session_id="s",
            url="ws://127.0.0.1:9/ws",
            **kwargs,
        )  # type: ignore[arg-type]


def test_inbound_message_size_limit(server: ReferenceServer, make_client: ClientFactory) -> None:
    """A message over max_message_size is thrown away and counted; the connection lives on."""
    client = make_client(max_message_size=4096)
    client.start_session()
    client.wait_session_ready(TIMEOUT)
    server.send_message({"type": "huge", "blob": "x" * 100_000})
    server.send_message({"type": "small"})
    assert client.receive(TIMEOUT)["content"]["type"] == "small"
    assert client.stats.garbage_frames == 1
    assert client.state is ConnectionState.OPEN


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.text(max_size=200),
        st.binary(max_size=200),
        st.text(max_size=200).map(lambda t: "5" + t),
        st.text(max_size=200).map(lambda t: "6" + t),
    )
)
def test_decoder_fuzz(data: str | bytes) -> None:
    """Arbitrary text and bytes: the frame decoder returns a Packet or raises ProtocolError."""
    with contextlib.suppress(ProtocolError):
        assert isinstance(decode_frame(data), Packet)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from("1234567"), json_values)
def test_envelope_fuzz(digit: str, body: object) -> None:
    """Any JSON body after any packet digit: the parser and the client state machine never crash."""
    import json

    frame = digit + json.dumps(body)
    with contextlib.suppress(ProtocolError):
        decode_frame(frame)
    protocol = ClientProtocol(app_id="a", session_id="s")
    protocol.connection_made(0.0)
    protocol.receive(frame, 0.0)
    protocol.events_received()
    protocol.data_to_send()


def test_no_token_in_environment_leak() -> None:
    """The library never reads the token from, or writes it to, the environment."""
    assert SECRET not in "".join(os.environ.values())
