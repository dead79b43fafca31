"""The client address behind trusted proxies (rtchub.auth.forwarded), unit and over real sockets."""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
import orjson
import pytest
from multidict import CIMultiDict

from rtchub.auth.forwarded import ClientAddress, forwarded_for, x_forwarded_for
from rtchub.transports.mux import RequestHead


def headers(*pairs: tuple[str, str]) -> CIMultiDict[str]:
    return CIMultiDict(pairs)


def test_without_trusted_proxies_the_peer_is_the_client() -> None:
    resolve = ClientAddress([])
    assert not resolve.enabled
    assert resolve("127.0.0.1", headers(("X-Forwarded-For", "198.51.100.1"))) == "127.0.0.1"


def test_headers_of_an_untrusted_peer_are_ignored() -> None:
    resolve = ClientAddress(["10.0.0.0/8"])
    assert resolve("192.0.2.9", headers(("X-Forwarded-For", "198.51.100.1"))) == "192.0.2.9"


def test_right_most_untrusted_hop_is_the_client() -> None:
    resolve = ClientAddress(["10.0.0.0/8", "127.0.0.1"])
    # forged by the client, then the client as the first proxy saw it, then a second proxy
    xff = "203.0.113.66, 198.51.100.7, 10.1.2.3"
    assert resolve("127.0.0.1", headers(("X-Forwarded-For", xff))) == "198.51.100.7"
    # several header lines form one list (RFC 9110 section 5.3)
    two = headers(("X-Forwarded-For", "203.0.113.66"), ("X-Forwarded-For", "198.51.100.7, 10.1.2.3"))
    assert resolve("10.9.9.9", two) == "198.51.100.7"


def test_all_hops_trusted_gives_the_left_most() -> None:
    resolve = ClientAddress(["10.0.0.0/8"])
    assert resolve("10.0.0.1", headers(("X-Forwarded-For", "10.0.0.3, 10.0.0.2"))) == "10.0.0.3"


def test_no_header_or_garbage_stops_at_the_last_known_address() -> None:
    resolve = ClientAddress(["127.0.0.1", "10.0.0.0/8"])
    assert resolve("127.0.0.1", headers()) == "127.0.0.1"
    assert resolve("127.0.0.1", headers(("X-Forwarded-For", "unknown"))) == "127.0.0.1"
    assert resolve("127.0.0.1", headers(("X-Forwarded-For", "198.51.100.1, bogus, 10.0.0.2"))) == "10.0.0.2"


def test_star_trusts_every_peer() -> None:
    resolve = ClientAddress(["*"])
    assert resolve("192.0.2.1", headers(("X-Forwarded-For", "198.51.100.1"))) == "198.51.100.1"


def test_ipv6_ports_and_mapped_addresses() -> None:
    resolve = ClientAddress(["127.0.0.1", "fd00::/8"])
    assert resolve("::ffff:127.0.0.1", headers(("X-Forwarded-For", "[2001:db8::1]:4711"))) == "2001:db8::1"
    assert resolve("fd00::5", headers(("X-Forwarded-For", "192.0.2.4:5555"))) == "192.0.2.4"
    assert x_forwarded_for(["2001:db8::2, 192.0.2.1"]) == ["2001:db8::2", "192.0.2.1"]


def test_rfc7239_forwarded() -> None:
    # RFC 7239 section 4 and 7.4 examples, with a quoted comma and semicolon
    value = ('for=192.0.2.43, for="[2001:db8:cafe::17]:4711";proto=https, '
             'for="_hidden";by="a,b;c", proto=http;FOR=198.51.100.17;by=203.0.113.43')
    assert forwarded_for([value]) == ["192.0.2.43", "2001:db8:cafe::17", None, "198.51.100.17"]
    resolve = ClientAddress(["127.0.0.1"], header="forwarded")
    two_hops = headers(("Forwarded", "for=192.0.2.43, for=198.51.100.17"))
    assert resolve("127.0.0.1", two_hops) == "198.51.100.17"
    # only the configured header is read: the other one is the client's own
    assert resolve("127.0.0.1", headers(("X-Forwarded-For", "192.0.2.99"))) == "127.0.0.1"
    assert ClientAddress(["127.0.0.1"])("127.0.0.1", headers(("Forwarded", "for=192.0.2.99"))) == "127.0.0.1"


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="forwarded-allow-ips"):
        ClientAddress(["not-an-ip"])
    with pytest.raises(ValueError, match="forwarded-header"):
        ClientAddress(["127.0.0.1"], header="x-real-ip")


def test_request_head_headers() -> None:
    head = RequestHead(b"GET /ws HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 192.0.2.1\r\n"
                       b"x-forwarded-for: 10.0.0.1\r\nUpgrade: websocket")
    assert head.headers().getall("X-Forwarded-For") == ["192.0.2.1", "10.0.0.1"]
    assert head.upgrade


# ------------------------------------------------------------ over real sockets
async def _ws_peer(app: Any, http: aiohttp.ClientSession, **kw: Any) -> str:
    ws = await http.ws_connect(app.ws_url, **kw)
    welcome = orjson.loads((await ws.receive(timeout=5)).data)
    peer = app.hub.sessions[welcome["sessionId"]].sink.peer
    await ws.close()
    return peer


@pytest.mark.parametrize("compression", [False, True], ids=["picows", "aiohttp"])
async def test_server_believes_only_listed_proxies(make_server: Any, compression: bool,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    xff = {"X-Forwarded-For": "203.0.113.5, 198.51.100.20"}
    caplog.set_level(logging.INFO, logger="rtchub.events")
    trusting = await make_server(forwarded_allow_ips=["127.0.0.1"], compression=compression)
    plain = await make_server(compression=compression)
    async with aiohttp.ClientSession() as http:
        kw = {"headers": xff, "compress": 15 if compression else 0}
        assert await _ws_peer(trusting, http, **kw) == "198.51.100.20"
        assert await _ws_peer(plain, http, **kw) == "127.0.0.1"
        async with http.post(trusting.url + "/poll/open", json={}, headers=xff) as resp:
            sid = (await resp.json())["sessionId"]
        assert trusting.hub.sessions[sid].sink.peer == "198.51.100.20"
    # the handshake rate was taken from the named client, not from the proxy
    assert "198.51.100.20" in trusting.gatekeeper.limits.session_buckets
    assert "127.0.0.1" not in trusting.gatekeeper.limits.session_buckets
    # and the connection log names it
    opened = [r for r in caplog.records if r.name == "rtchub.events" and r.getMessage().startswith(
        "connection-opened")]
    assert [getattr(r, "peer", None) for r in opened].count("198.51.100.20") == 2   # WebSocket, polling
    assert any("peer=198.51.100.20" in r.getMessage() for r in opened)
