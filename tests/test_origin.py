"""Origin allowlist (cross-site WebSocket hijacking, RFC 6455 section 10.2).

A browser page on another site can open a WebSocket to us with the user's
ambient credentials; the only thing that tells us is ``Origin``. A foreign
one gets HTTP 403 before the upgrade, on both WebSocket stacks (picows, and
aiohttp when permessage-deflate is on) and on the HTTP transports.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from rtchub.auth.tokens import mint
from rtchub.transports.ws import PicowsEndpoint
from rtchub.transports.ws_aiohttp import AiohttpEndpoint

SECRET = "origin-test-secret-0123456789-0123456789"
STACKS = [pytest.param(False, id="picows"), pytest.param(True, id="aiohttp")]


@pytest.fixture
async def http() -> Any:
    async with aiohttp.ClientSession() as session:
        yield session


async def handshake(http: aiohttp.ClientSession, app: Any, origin: str | None, compression: bool,
                    query: str = "") -> int:
    """101 when upgraded (checking which stack took it), else the HTTP status."""
    headers = {"Origin": origin} if origin else {}
    try:
        ws = await http.ws_connect(app.ws_url + query, headers=headers,
                                   compress=15 if compression else 0)
    except aiohttp.WSServerHandshakeError as err:
        return err.status
    msg = await ws.receive_json(timeout=5)
    assert msg["type"] == "welcome"
    stacks = {type(ep) for ep in app.liveness.endpoints}
    assert stacks == {AiohttpEndpoint if compression else PicowsEndpoint}, stacks
    await ws.close()
    return 101


@pytest.mark.parametrize("compression", STACKS)
async def test_open_mode_default(make_server, http, compression):
    app = await make_server(compression=compression)
    own = f"http://127.0.0.1:{app.port}"
    assert await handshake(http, app, None, compression) == 101          # not a browser
    assert await handshake(http, app, own, compression) == 101           # same host
    assert await handshake(http, app, "http://localhost:3000", compression) == 101  # dev page
    assert await handshake(http, app, "http://[::1]:5173", compression) == 101
    for foreign in ("https://evil.example", "http://127.0.0.1.evil.example",
                    "null", "http://localhost.evil.example:3000"):
        assert await handshake(http, app, foreign, compression) == 403, foreign
    assert not app.hub.sessions


@pytest.mark.parametrize("compression", STACKS)
async def test_jwt_mode_default_is_same_host_only(make_server, http, compression):
    app = await make_server(compression=compression, auth="jwt", jwt_secret=SECRET)
    token = "?token=" + mint(sub="alice", key=SECRET)
    assert await handshake(http, app, f"http://127.0.0.1:{app.port}", compression, token) == 101
    # Loopback pages are a development convenience of --auth none only.
    assert await handshake(http, app, "http://localhost:3000", compression, token) == 403
    # Origin is checked before the token: a valid token does not help a foreign page.
    assert await handshake(http, app, "https://evil.example", compression, token) == 403


@pytest.mark.parametrize("compression", STACKS)
async def test_allowlist(make_server, http, compression):
    app = await make_server(compression=compression,
                            allowed_origin=["https://app.example", "https://Other.example:8443/"])
    assert await handshake(http, app, "https://app.example", compression) == 101
    assert await handshake(http, app, "https://other.example:8443", compression) == 101
    assert await handshake(http, app, "https://app.example:444", compression) == 403
    assert await handshake(http, app, "http://app.example", compression) == 403
    # An explicit list replaces the loopback convenience.
    assert await handshake(http, app, "http://localhost:3000", compression) == 403


async def test_wildcard(make_server, http):
    app = await make_server(allowed_origin=["*"])
    assert await handshake(http, app, "https://anything.example", False) == 101


async def test_refusal_is_before_upgrade(make_server):
    """The raw answer: a 403 status line, no 101, no WebSocket frames, no session."""
    import asyncio

    app = await make_server()
    reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
    writer.write(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: https://evil.example\r\n"
                 b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(4096), 5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 403"), answer
    assert b"101" not in answer.split(b"\r\n")[0]
    assert not app.hub.sessions


async def test_http_transports_apply_the_same_rule(make_server, http):
    app = await make_server()
    async with http.get(f"{app.url}/ice-servers", headers={"Origin": "https://evil.example"}) as r:
        assert r.status == 403
    async with http.post(f"{app.url}/poll/open", headers={"Origin": "https://evil.example"}) as r:
        assert r.status == 403
    async with http.post(f"{app.url}/poll/open", headers={"Origin": "http://localhost:3000"}) as r:
        assert r.status == 200
        # CORS answer matches the rule: the admitted page may read the response.
        assert r.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"


def test_cors_helper():
    from rtchub.auth.gate import Gatekeeper
    from rtchub.settings import Settings

    gate = Gatekeeper(Settings(allowed_origin=["https://app.example"]))
    ok = gate.cors_headers({"Origin": "https://app.example", "Host": "rtc.example"})
    assert ok["Access-Control-Allow-Origin"] == "https://app.example"
    assert "Authorization" in ok["Access-Control-Allow-Headers"]
    assert gate.cors_headers({"Origin": "https://evil.example", "Host": "rtc.example"}) == {}
    assert gate.cors_headers({"Host": "rtc.example"}) == {}
