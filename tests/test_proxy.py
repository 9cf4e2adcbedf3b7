"""Proxies: HTTP CONNECT, SOCKS4/4a and SOCKS5/5h (python-socks) on loopback, end to end.

Whole sessions through each kind of proxy against the reference server; proxy
authentication; refusals surfacing as typed errors and retried; ``close()``
during a proxy that never answers; the environment's proxy variables; IPv6.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from urllib.parse import quote, urlsplit

import pytest
from conftest import TIMEOUT, ClientFactory, wait_until
from peers import tcp_blackhole
from proxies import HttpConnectProxy, ProxyServer, Request, SocksProxy, has_ipv6_loopback

from avatar_im import (
    AvatarIM,
    ConnectionFailedError,
    ConnectionState,
    ConnectTimeout,
    InvalidArgumentError,
    ReconnectPolicy,
)
from avatar_im.dial import PROXY_SCHEMES, Proxy, parse_proxy, proxy_from_environment
from avatar_im.server import ReferenceServer
from avatar_im.transport import Transport
from avatar_im.urls import build_url

PROXY_VARIABLES = [
    name
    for base in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
    for name in (base, base.upper())
]
SECRET = "s3cret-Proxy-pw"
FAST_RETRIES = ReconnectPolicy(initial_delay=0.01, max_delay=0.05)
ProxyFactory = Callable[[], HttpConnectProxy | SocksProxy]
needs_ipv6 = pytest.mark.skipif(not has_ipv6_loopback(), reason="no ::1 on this machine")


@pytest.fixture(autouse=True)
def no_proxy_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No proxy variable from the machine leaks into these tests."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def run_session(client: AvatarIM) -> None:
    client.start_session()
    client.wait_session_ready(TIMEOUT)
    client.wait_ack(client.send_text("hello"), TIMEOUT)


def open_transport(server: ReferenceServer, proxy: str | None, url: str | None = None) -> None:
    """Open (and close) one connection to *server* through *proxy*; raises what open() raises."""
    transport = Transport()
    try:
        transport.open(
            build_url(url or server.url, token="tok", app_id="app", tenant_id="ten"),
            timeout=TIMEOUT,
            proxy=None if proxy is None else parse_proxy(proxy),
        )
    finally:
        transport.close()


def the_request(proxy: ProxyServer) -> Request:
    """What the clients of *proxy* asked for: the same each time (a reconnect asks again)."""
    assert proxy.requests, "nobody asked the proxy for anything"
    first = proxy.requests[0]
    for request in proxy.requests[1:]:
        assert (request.kind, request.host, request.port, request.credentials) == (
            first.kind,
            first.host,
            first.port,
            first.credentials,
        )
    return first


def local_name(server: ReferenceServer) -> str:
    """The server's URL with the host name ``localhost`` instead of its address."""
    return server.url.replace("127.0.0.1", "localhost")


# ------------------------------------------------------------ whole sessions


def test_session_through_an_http_connect_proxy(
    server: ReferenceServer, make_client: ClientFactory
) -> None:
    with HttpConnectProxy() as proxy:
        run_session(make_client(proxy=proxy.url))
    request = the_request(proxy)
    assert (request.kind, request.host, request.port) == ("connect", "127.0.0.1", server.port)
    assert request.headers["host"] == f"127.0.0.1:{server.port}"
    assert request.credentials is None


def test_session_through_an_http_proxy_with_basic_auth(
    server: ReferenceServer, make_client: ClientFactory
) -> None:
    """Percent-encoded credentials are decoded and sent as HTTP Basic."""
    password = "p@ss:w/rd " + SECRET
    with HttpConnectProxy(credentials=("user", password)) as proxy:
        run_session(make_client(proxy=proxy.url_with("user", quote(password, safe=""))))
    assert the_request(proxy).credentials == ("user", password)


@pytest.mark.parametrize("status", ["200 Connection established", "201 Tunnel open"])
def test_http_proxy_any_2xx_answer_opens_the_tunnel_even_split_in_pieces(
    status: str, server: ReferenceServer, make_client: ClientFactory
) -> None:
    """RFC 9110 9.3.6: any 2xx opens the tunnel; an answer head in pieces is read whole."""
    with HttpConnectProxy(status=status, split=True) as proxy:
        run_session(make_client(proxy=proxy.url))
    assert proxy.tunnels >= 1


def test_session_through_a_socks5_proxy(
    server: ReferenceServer, make_client: ClientFactory
) -> None:
    with SocksProxy() as proxy:
        run_session(make_client(proxy=proxy.url))
    request = the_request(proxy)
    assert (request.kind, request.host, request.port) == ("ipv4", "127.0.0.1", server.port)


def test_session_through_a_socks5_proxy_with_user_and_password(
    server: ReferenceServer, make_client: ClientFactory
) -> None:
    with SocksProxy(credentials=("user", SECRET)) as proxy:
        run_session(make_client(proxy=proxy.url_with("user", SECRET)))
    assert the_request(proxy).credentials == ("user", SECRET)


@pytest.mark.parametrize(
    ("scheme", "kind", "host"),
    [
        ("socks5", "ipv4", "127.0.0.1"),  # socks5: this client resolves the name
        ("socks5h", "domain", "localhost"),  # socks5h: the proxy does
        ("socks4", "socks4", "127.0.0.1"),
        ("socks4a", "socks4a", "localhost"),
    ],
)
def test_scheme_picks_the_socks_version_and_who_resolves_the_name(
    scheme: str, kind: str, host: str, server: ReferenceServer, make_client: ClientFactory
) -> None:
    with SocksProxy() as proxy:
        run_session(make_client(url=local_name(server), proxy=f"{scheme}://{proxy.address}"))
    request = the_request(proxy)
    assert (request.kind, request.host, request.port) == (kind, host, server.port)


# ------------------------------------------------------------------ refusals


@pytest.mark.parametrize(
    ("make_proxy", "credentials", "expected"),
    [
        (lambda: HttpConnectProxy(refuse="403 Forbidden"), None, "HTTP 403 Forbidden"),
        (
            lambda: HttpConnectProxy(credentials=("user", "right")),
            ("user", SECRET),
            "HTTP 407 Proxy Authentication Required",
        ),
        (lambda: HttpConnectProxy(credentials=("user", "right")), None, "HTTP 407"),
        (
            lambda: SocksProxy(reply=2),
            None,
            "Connection not allowed by ruleset (reply code 0x02)",
        ),
        (lambda: SocksProxy(reply=5), None, "(reply code 0x05)"),
        (
            lambda: SocksProxy(credentials=("user", "right")),
            ("user", SECRET),
            "authentication failure",
        ),
        (
            lambda: SocksProxy(credentials=("user", "right")),
            None,
            "No acceptable authentication methods",
        ),
    ],
    ids=[
        "http-403",
        "http-407-wrong-password",
        "http-407-no-credentials",
        "socks5-not-allowed",
        "socks5-refused",
        "socks5-wrong-password",
        "socks5-no-credentials",
    ],
)
def test_proxy_refusal_is_a_typed_error_naming_the_answer(
    make_proxy: ProxyFactory,
    credentials: tuple[str, str] | None,
    expected: str,
    server: ReferenceServer,
) -> None:
    """ConnectionFailedError (retried, not final) with the proxy and its answer; no secret,
    no python-socks exception anywhere in what a traceback shows."""
    with make_proxy() as proxy:
        url = proxy.url_with(*credentials) if credentials else proxy.url
        with pytest.raises(ConnectionFailedError) as info:
            open_transport(server, url)
    error = info.value
    assert type(error) is ConnectionFailedError
    assert expected in str(error)
    assert f"the proxy {proxy.url} refused the tunnel" in str(error)
    shown = "".join(traceback.format_exception(error))
    assert "python_socks" not in shown
    assert SECRET not in shown


def test_unreachable_proxy_is_a_typed_error_naming_it(server: ReferenceServer) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]  # free once closed: nothing listens there
    with pytest.raises(ConnectionFailedError, match=rf"cannot connect to the proxy .*:{port}"):
        open_transport(server, f"socks5://user:{SECRET}@127.0.0.1:{port}")


def test_proxy_that_hangs_up_is_a_typed_error(server: ReferenceServer) -> None:
    """A proxy that reads the request, then closes without a word."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(TIMEOUT)

        def hang_up() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)

        thread = threading.Thread(target=hang_up)
        thread.start()
        try:
            with pytest.raises(ConnectionFailedError, match="closed the connection"):
                open_transport(server, f"http://127.0.0.1:{listener.getsockname()[1]}")
        finally:
            thread.join(TIMEOUT)


@pytest.mark.parametrize(
    "make_proxy",
    [lambda: HttpConnectProxy(refuse="403 Forbidden"), lambda: SocksProxy(reply=5)],
    ids=["http-403", "socks5-refused"],
)
def test_client_keeps_reconnecting_with_backoff_through_a_refusing_proxy(
    make_proxy: ProxyFactory, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="avatar_im"), make_proxy() as proxy:
        client = make_client(proxy=proxy.url, reconnect=FAST_RETRIES)
        assert wait_until(lambda: proxy.connections >= 3, TIMEOUT)
        assert not client.closed
        assert client.state in (ConnectionState.CONNECTING, ConnectionState.RECONNECTING)
        with pytest.raises(ConnectTimeout):
            client.wait_connected(0.1)
        client.close()
    failures = [r.getMessage() for r in caplog.records if r.getMessage().startswith("connect to")]
    assert failures and all("refused the tunnel" in m for m in failures)


# ------------------------------------------------------------- close() promptly


@pytest.mark.parametrize("scheme", ["http", "socks5", "socks4"])
def test_close_returns_promptly_while_the_proxy_never_answers(scheme: str) -> None:
    with tcp_blackhole() as hole:
        port = urlsplit(hole.url).port
        client = AvatarIM(
            token="t",
            app_id="a",
            tenant_id="b",
            session_id="s",
            url="ws://127.0.0.1:9/ws",
            proxy=f"{scheme}://127.0.0.1:{port}",
            connect_timeout=30,
        )
        try:
            assert hole.wait_accepted(1, TIMEOUT)
            time.sleep(0.1)  # the client has sent its request and waits for the answer
            started = time.monotonic()
            client.close()
            assert time.monotonic() - started < 1.0
            assert client.threads == []
        finally:
            client.close()


# ---------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    "url",
    [
        f"https://user:{SECRET}@proxy.internal:3128",
        f"ftp://user:{SECRET}@proxy.internal:21",
        "socks://proxy.internal:1080",
        "proxy.internal:3128",
        f"http://user:{SECRET}@proxy.internal",
        "socks5://proxy.internal:99999",
    ],
)
def test_wrong_proxy_url_is_refused_at_the_call_naming_the_schemes(url: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        AvatarIM(token="t", app_id="a", tenant_id="b", session_id="s", url="ws://h/ws", proxy=url)
    message = str(info.value)
    assert ", ".join(PROXY_SCHEMES) in message
    assert "http, socks4, socks4a, socks5, socks5h" in message
    assert SECRET not in message


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("socks5://user@proxy:1080", "needs a password"),
        (f"http://us%3Aer:{SECRET}@proxy:3128", "cannot hold ':'"),
        (f"socks5://us%C3%A9r:{SECRET}@proxy:1080", "must be ASCII"),
    ],
)
def test_credentials_the_protocol_cannot_carry_are_refused_at_the_call(
    url: str, problem: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=problem) as info:
        AvatarIM(token="t", app_id="a", tenant_id="b", session_id="s", url="ws://h/ws", proxy=url)
    assert SECRET not in str(info.value)


def test_parsed_proxy_never_shows_its_credentials() -> None:
    proxy = parse_proxy(f"SOCKS5H://user:{SECRET}@[::1]:1080")
    assert proxy == Proxy("::1", 1080, ("user", SECRET), "socks5h")
    assert SECRET not in repr(proxy) and "user" not in repr(proxy)
    assert str(proxy) == "socks5h://[::1]:1080"


def test_credentials_are_never_logged(
    server: ReferenceServer, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        with SocksProxy(credentials=("user", SECRET)) as socks:
            run_session(make_client(proxy=socks.url_with("user", SECRET)))
        with HttpConnectProxy(credentials=("user", "other")) as http:
            client = make_client(proxy=http.url_with("user", SECRET), reconnect=FAST_RETRIES)
            assert wait_until(lambda: http.connections >= 2, TIMEOUT)
            client.close()
    assert "407" in caplog.text
    assert SECRET not in caplog.text


# -------------------------------------------------------------- environment


@pytest.mark.parametrize("variable", ["http_proxy", "all_proxy", "ALL_PROXY"])
def test_socks_proxy_from_the_environment_is_spoken_socks(
    variable: str,
    server: ReferenceServer,
    make_client: ClientFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A socks5:// proxy in the environment gets SOCKS5, not an HTTP CONNECT."""
    with SocksProxy() as proxy:
        monkeypatch.setenv(variable, proxy.url)
        run_session(make_client())
    assert the_request(proxy).kind == "ipv4"


def test_environment_proxy_without_scheme_is_http_and_no_proxy_exempts(
    server: ReferenceServer, make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    with HttpConnectProxy() as proxy:
        monkeypatch.setenv("http_proxy", proxy.address)
        proxied = make_client()
        run_session(proxied)
        proxied.close()
        assert the_request(proxy).kind == "connect"
        asked = len(proxy.requests)
        monkeypatch.setenv("no_proxy", "127.0.0.1")
        run_session(make_client(session_id="direct"))
        assert len(proxy.requests) == asked


@pytest.mark.parametrize(
    ("environment", "secure", "expected"),
    [
        ({"https_proxy": "socks5h://h:1", "http_proxy": "http://p:2"}, True, "socks5h://h:1"),
        ({"https_proxy": "socks5h://h:1", "http_proxy": "http://p:2"}, False, "http://p:2"),
        ({"https_proxy": "socks5h://h:1", "all_proxy": "socks4://a:3"}, False, "socks4://a:3"),
        ({"all_proxy": "socks5://a"}, True, "socks5://a:1080"),
        ({"http_proxy": "p"}, False, "http://p:8080"),
        ({"all_proxy": "socks5://a:3", "no_proxy": "example.com"}, True, None),
    ],
)
def test_proxy_variable_for_each_scheme(
    environment: dict[str, str],
    secure: bool,
    expected: str | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """https_proxy for wss://, http_proxy for ws://, else all_proxy; default ports."""
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    proxy = proxy_from_environment("example.com", secure)
    assert (None if proxy is None else str(proxy)) == expected


def test_environment_proxy_with_a_wrong_scheme_fails_the_connect(
    server: ReferenceServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not silently bypassed: the connect fails, naming the variable and the schemes."""
    monkeypatch.setenv("http_proxy", f"ftp://user:{SECRET}@127.0.0.1:21")
    with pytest.raises(ConnectionFailedError, match=r"http_proxy \(from the environment\)") as info:
        open_transport(server, None)
    assert "http, socks4, socks4a, socks5, socks5h" in str(info.value)
    assert SECRET not in str(info.value)


# ---------------------------------------------------------------------- IPv6


@pytest.fixture
def server_on_ipv6() -> Iterator[ReferenceServer]:
    with ReferenceServer(host="::1", port=0, profile="echo") as srv:
        yield srv


@needs_ipv6
@pytest.mark.parametrize("make_proxy", [HttpConnectProxy, SocksProxy], ids=["http", "socks5"])
def test_session_through_a_proxy_at_an_ipv6_literal(
    make_proxy: type[HttpConnectProxy | SocksProxy],
    server: ReferenceServer,
    make_client: ClientFactory,
) -> None:
    """proxy="http://[::1]:port" (and socks5://[::1]:port) reaches the proxy over IPv6."""
    with make_proxy(host="::1") as proxy:
        assert proxy.url.startswith(f"{proxy.scheme}://[::1]:")
        run_session(make_client(proxy=proxy.url))
    assert proxy.tunnels >= 1


@needs_ipv6
def test_session_to_an_ipv6_server_through_http_connect_brackets_the_address(
    server_on_ipv6: ReferenceServer, make_client: ClientFactory
) -> None:
    with HttpConnectProxy(host="::1") as proxy:
        run_session(make_client(url=server_on_ipv6.url, proxy=proxy.url))
    request = the_request(proxy)
    assert request.host == "::1"
    assert request.headers["host"] == f"[::1]:{server_on_ipv6.port}"
