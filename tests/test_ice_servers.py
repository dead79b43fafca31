"""TURN REST credentials and ``GET /ice-servers``.

The pure parts (signing, the list) against the published test vector; the
route through a real server; and the credentials against a real coturn,
which is the only judge that matters: aioice's TURN client allocates a relay
with what ``/ice-servers`` handed out, and is refused with a wrong secret.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from typing import Any

import aiohttp
import pytest
from aioice import stun
from aioice.turn import create_turn_endpoint

from rtchub.ice import fetch_ice_servers, ice_servers, turn_credentials, turn_password
from rtchub.settings import Settings

NOW = 1_700_000_000.0


def test_known_vector() -> None:
    """draft-uberti-behave-turn-rest / coturn's documented example."""
    assert turn_password("north", "1266890800:mbzrxpgjys") == "nbRcrnq5h6xXhyNhlwk+lDLvVVo="


def test_credentials_expire_after_ttl() -> None:
    username, credential = turn_credentials("s3cret", "alice", 600, NOW)
    assert username == f"{int(NOW) + 600}:alice"
    expected = base64.b64encode(hmac.new(b"s3cret", username.encode(), hashlib.sha1).digest()).decode()
    assert credential == expected


def test_list_with_builtin_stun_extra_stun_and_turn() -> None:
    settings = Settings(host="127.0.0.1", stun_port=3478, stun_url=["stun:stun.example.org:19302"],
                        turn_url=["turn:turn.example.org:3478?transport=udp",
                                  "turns:turn.example.org:5349?transport=tcp"],
                        turn_secret=["new-secret", "old-secret"], turn_ttl=3600)
    body = ice_servers(settings, "bob", NOW)
    assert body["ttl"] == 3600
    stun_entry, turn_entry = body["iceServers"]
    assert stun_entry == {"urls": ["stun:127.0.0.1:3478", "stun:stun.example.org:19302"]}
    assert turn_entry["urls"] == settings.turn_url
    assert turn_entry["username"] == f"{int(NOW) + 3600}:bob"
    # The first secret signs (rotation: coturn lists both while the old one is retired).
    assert turn_entry["credential"] == turn_password("new-secret", turn_entry["username"])
    assert turn_entry["credential"] != turn_password("old-secret", turn_entry["username"])


@pytest.mark.parametrize(("overrides", "request_host", "url"), [
    ({"public_host": "rtc.example.com", "host": "0.0.0.0"}, "10.0.0.9", "stun:rtc.example.com:3478"),
    ({"stun_host": "192.0.2.10", "host": "0.0.0.0"}, None, "stun:192.0.2.10:3478"),
    ({"host": "0.0.0.0"}, "rtc.example.net", "stun:rtc.example.net:3478"),
    ({"host": "::1"}, None, "stun:[::1]:3478"),
    ({"host": "::"}, "2001:db8::5", "stun:[2001:db8::5]:3478"),
    ({"host": "127.0.0.1", "stun_port": 3479}, None, "stun:127.0.0.1:3479"),
])
def test_builtin_stun_url_host(overrides: dict[str, Any], request_host: str | None, url: str) -> None:
    body = ice_servers(Settings(**overrides), "u", NOW, request_host=request_host)
    assert body["iceServers"][0]["urls"] == [url]


def test_no_builtin_stun_and_no_turn_without_secret() -> None:
    settings = Settings(stun_port=0, turn_url=["turn:turn.example.org:3478"])
    # A turn: URL without credentials makes browsers reject the whole configuration.
    assert ice_servers(settings, "u", NOW) == {"iceServers": [], "ttl": settings.turn_ttl}


# ------------------------------------------------------------------- the route


async def test_route(make_server: Any) -> None:
    app = await make_server(stun_port=3478, turn_url=["turn:127.0.0.1:3478?transport=udp"],
                            turn_secret=["k"], turn_ttl=120)
    async with aiohttp.ClientSession() as http:
        async with http.get(app.url + "/ice-servers", params={"userId": "carol"}) as r:
            assert r.status == 200
            assert r.headers["Cache-Control"] == "no-store"
            body = await r.json()
        assert body["ttl"] == 120
        assert body["iceServers"][0] == {"urls": ["stun:127.0.0.1:3478"]}
        turn_entry = body["iceServers"][1]
        expiry, user = turn_entry["username"].split(":", 1)
        assert user == "carol"
        assert 0 < int(expiry) - int(time.time()) <= 120
        assert turn_entry["credential"] == turn_password("k", turn_entry["username"])

        # No userId: a random one, different per call.
        async with http.get(app.url + "/ice-servers") as r:
            first = (await r.json())["iceServers"][1]["username"].split(":", 1)[1]
        async with http.get(app.url + "/ice-servers") as r:
            second = (await r.json())["iceServers"][1]["username"].split(":", 1)[1]
        assert first and second and first != second

        async with http.get(app.url + "/ice-servers", params={"userId": "a:b\nc"}) as r:
            assert r.status == 400
            assert (await r.json())["code"] == "invalid-message"

        # Same gate as the WebSocket: a foreign page's Origin is refused...
        async with http.get(app.url + "/ice-servers", headers={"Origin": "https://evil.example"}) as r:
            assert r.status == 403
        # ...an allowed one may read the answer (CORS).
        async with http.get(app.url + "/ice-servers", headers={"Origin": "http://localhost:3000"}) as r:
            assert r.status == 200
            assert r.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"


async def test_python_sdk_fetch(make_server: Any) -> None:
    app = await make_server(turn_url=["turn:127.0.0.1:3478"], turn_secret=["k"])
    body = await fetch_ice_servers(app.ws_url, user_id="dave")  # a ws:// URL works too
    assert body["iceServers"][0]["username"].endswith(":dave")
    body = await fetch_ice_servers(app.url)
    assert body["iceServers"][0]["username"].split(":", 1)[1].startswith("anon-")


# --------------------------------------------------------- against real coturn


async def _allocate(server: Any, username: str, password: str) -> tuple[str, int]:
    transport, _ = await asyncio.wait_for(create_turn_endpoint(
        asyncio.DatagramProtocol, ("127.0.0.1", server.port), username, password), 15)
    try:
        return transport.get_extra_info("sockname")
    finally:
        transport.close()


async def test_coturn_accepts_credentials_from_ice_servers(make_server: Any, coturn: Any) -> None:
    turn = coturn("old-secret", "current-secret")
    app = await make_server(turn_url=[turn.url], turn_secret=["current-secret", "old-secret"])
    body = await fetch_ice_servers(app.url, user_id="erin")
    entry = body["iceServers"][0]
    assert entry["urls"] == [turn.url]
    relayed = await _allocate(turn, entry["username"], entry["credential"])
    assert relayed[0] == "127.0.0.1" and relayed[1] > 0


async def test_coturn_refuses_wrong_secret_and_expired_credentials(make_server: Any, coturn: Any) -> None:
    turn = coturn("right-secret")
    app = await make_server(turn_url=[turn.url], turn_secret=["wrong-secret"])
    entry = (await fetch_ice_servers(app.url))["iceServers"][0]
    with pytest.raises(stun.TransactionFailed) as failed:
        await _allocate(turn, entry["username"], entry["credential"])
    assert failed.value.response.error_code == 401

    # Right secret, but the expiry is in the past: coturn refuses that too.
    username, credential = turn_credentials("right-secret", "late", -60, time.time())
    with pytest.raises(stun.TransactionFailed) as expired:
        await _allocate(turn, username, credential)
    assert expired.value.response.error_code == 401


async def test_python_client_exposes_ice_servers(make_server) -> None:  # type: ignore[no-untyped-def]
    from rtchub.client import Client

    app = await make_server(turn_secret=["north"], turn_url=["turn:127.0.0.1:3478"], turn_ttl=600)
    async with Client(app.url) as c:
        await c.join("r", "alice")
        first = await c.ice_servers()
        turn = [s for s in first["iceServers"] if "username" in s]
        assert turn and turn[0]["username"].endswith(":alice") and first["ttl"] == 600
        assert await c.ice_servers() is first  # cached within the ttl
