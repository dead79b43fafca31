"""rtchub mounted in a FastAPI app, served by uvicorn (rtchub.asgi, issue 19 part 2).

The same protocol on WebSocket, SSE and long-polling, the same server API and
resume, through the host app's port. Browser calls: tests/e2e/test_asgi_browser.py.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from rtchub.client import Client
from tests.asgi_server import fastapi_with_rtchub
from tests.conftest import eventually

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("transport", ["websocket", "sse", "polling"])
async def test_chat_on_every_transport(transport: str) -> None:
    async with fastapi_with_rtchub() as srv:
        a = Client(srv.ws_url, transport=transport)
        b = Client(srv.ws_url, transport=transport)
        await a.connect()
        await b.connect()
        assert a.transport_name == transport
        await a.join("lobby", "alice")
        info = await b.join("lobby", "bob")
        assert info["users"] == ["alice"]
        assert (await a.recv_type("user-joined"))["userId"] == "bob"
        await a.send({"type": "message", "roomId": "lobby", "data": f"hi over {transport}"})
        got = await b.recv_type("message")
        assert got["from"] == "alice" and got["data"] == f"hi over {transport}"
        await b.send({"type": "signal", "roomId": "lobby", "to": "alice", "data": {"x": 1}})
        assert (await a.recv_type("signal"))["from"] == "bob"
        # The hub behind the mount is the RtcHub of the ASGI app.
        hub = srv.rtc.server.hub
        assert set(hub.rooms["lobby"].members) == {"alice", "bob"}
        await a.close()
        await b.close()


async def test_python_sdk_resumes_through_the_mount() -> None:
    async with fastapi_with_rtchub(grace_period=5) as srv:
        a, b = Client(srv.ws_url), Client(srv.ws_url)
        await a.connect()
        await b.connect()
        await a.join("r", "alice")
        await b.join("r", "bob")
        await a.recv_type("user-joined")
        first = b.session_id
        for i in range(3):
            await b.abort()
            await a.send({"type": "signal", "roomId": "r", "to": "bob", "data": f"while away {i}"})
            await eventually(lambda: b.state == "resumed", timeout=10)
            assert (await b.recv_type("signal"))["data"] == f"while away {i}"
        assert b.session_id == first
        await asyncio.sleep(0.3)
        assert not [m for m in a.pending() if m["type"] == "user-left"]
        await a.close()
        await b.close()


async def test_server_api_metrics_and_host_routes_share_the_port() -> None:
    async with fastapi_with_rtchub(api_key="secret-key") as srv:
        c = Client(srv.ws_url)
        await c.connect()
        await c.join("news", "reader")
        async with aiohttp.ClientSession() as http:
            async with http.get(srv.url + "/app/health") as r:
                assert await r.json() == {"app": "ok"}
            async with http.get(srv.url + "/rtc/healthz") as r:
                assert r.status == 200 and (await r.json())["status"] == "ok"
            async with http.post(srv.url + "/rtc/api/publish", headers={"X-API-Key": "secret-key"},
                                 json={"roomId": "news", "data": {"headline": 1}}) as r:
                assert r.status == 200, await r.text()
                assert (await r.json())["delivered"] == 1
            async with http.post(srv.url + "/rtc/api/publish", json={"roomId": "news", "data": 2}) as r:
                assert r.status == 401
            async with http.get(srv.url + "/rtc/metrics") as r:
                assert r.status == 200 and "rtchub_" in await r.text()
            async with http.get(srv.url + "/rtc/openapi.json") as r:
                assert "/api/publish" in (await r.json())["paths"]
            async with http.get(srv.url + "/rtc/sdk/rtchub.js") as r:
                assert r.status == 200 and "export" in await r.text()
            async with http.get(srv.url + "/rtc/ice-servers") as r:
                assert "iceServers" in await r.json()
        assert (await c.recv_type("message"))["data"] == {"headline": 1}
        await c.close()


async def test_origin_and_token_checks_hold_on_the_mount() -> None:
    async with fastapi_with_rtchub(auth="jwt", jwt_secret="asgi-secret-0123456789abcdefghij") as srv:
        from rtchub.auth.tokens import mint

        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
                await http.ws_connect(srv.ws_url, headers={"Origin": "https://evil.example"})
            assert exc.value.status == 403
            async with http.get(srv.url + "/rtc/sse") as r:
                assert r.status == 401
        token = mint(sub="alice", key="asgi-secret-0123456789abcdefghij")
        c = Client(srv.ws_url, token=token)
        await c.connect()
        info = await c.join("r")
        assert info["type"] == "room-info" and c.user_id == "alice"
        await c.close()


async def test_sse_client_going_away_detaches_the_session() -> None:
    async with fastapi_with_rtchub(grace_period=0) as srv:
        hub = srv.rtc.server.hub
        async with aiohttp.ClientSession() as http:
            resp = await http.get(srv.url + "/rtc/sse")
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            line = await resp.content.readline()
            assert line.startswith(b"event: welcome") or line.startswith(b"id:") or line.startswith(b"retry")
            await eventually(lambda: len(hub.sessions) == 1)
            resp.close()
        # The client's disconnect reached the aiohttp handler through the pipe.
        await eventually(lambda: len(hub.sessions) == 0, timeout=10)


async def test_peerjs_through_the_mount() -> None:
    from tests.test_peerjs import PeerJs

    async with fastapi_with_rtchub(peerjs_expire_timeout=0.5) as srv:
        base = f"ws://127.0.0.1:{srv.port}/rtc"
        async with aiohttp.ClientSession() as http, http.get(srv.url + "/rtc/peerjs/peerjs/id") as r:
            assert r.status == 200 and len(await r.text()) == 36
        a = await PeerJs(base, "alice").connect()
        b = await PeerJs(base, "bob").connect()
        await a.send({"type": "OFFER", "dst": "bob", "src": "mallory", "payload": {"n": 1}})
        assert await b.wait("OFFER") == {"type": "OFFER", "src": "alice", "dst": "bob",
                                         "payload": {"n": 1}}
        thief = await PeerJs(base, "bob", token="other").connect(expect="ID-TAKEN")
        bad = await PeerJs(base, "carol", key="wrong").connect(expect="INVALID-KEY")
        await a.send({"type": "OFFER", "dst": "ghost", "payload": {"n": 2}})
        assert await a.wait("EXPIRE") == {"type": "EXPIRE", "src": "ghost", "dst": "alice"}
        for p in (a, b, thief, bad):
            await p.close()
