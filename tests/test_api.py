"""The server API over real HTTP: key check, rooms, members, publish, disconnect, stats."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import aiohttp
import pytest

from rtchub.app import RtcHub
from tests.conftest import eventually, joined

KEY = "test-key-123"


class Api:
    def __init__(self, app: RtcHub, key: str | None = KEY) -> None:
        self.base = app.url
        self.headers = {"X-API-Key": key} if key else {}
        self.http = aiohttp.ClientSession()

    async def call(self, method: str, path: str, **kw: Any) -> tuple[int, Any]:
        async with self.http.request(method, self.base + path, headers=self.headers, **kw) as r:
            body = await r.read()
            assert r.content_type == "application/json", (r.status, body)
            return r.status, json.loads(body)

    async def close(self) -> None:
        await self.http.close()


@pytest.fixture
async def api_server(make_server: Any) -> RtcHub:
    return await make_server(api_key=KEY)


async def test_api_is_off_without_a_key(make_server: Any) -> None:
    app = await make_server()
    api = Api(app, key="anything")
    try:
        for path in ("/api/stats", "/api/rooms", "/api/nope"):
            status, body = await api.call("GET", path)
            assert status == 404 and body["error"]["code"] == "api-disabled"
        status, _ = await api.call("POST", "/api/publish", json={"roomId": "r", "data": 1})
        assert status == 404
    finally:
        await api.close()


async def test_wrong_or_missing_key_is_401(api_server: RtcHub) -> None:
    for key in (None, "wrong", KEY + "x"):
        api = Api(api_server, key=key)
        try:
            status, body = await api.call("GET", "/api/rooms")
            assert status == 401 and body["error"]["code"] == "unauthorized"
        finally:
            await api.close()


async def test_rooms_members_and_room_info(api_server: RtcHub) -> None:
    a = await joined(api_server, "lobby", "alice", "Alice A.")
    b = await joined(api_server, "lobby", "bob")
    c = await joined(api_server, "other", "carol", "Carol")
    api = Api(api_server)
    try:
        status, body = await api.call("GET", "/api/rooms")
        assert status == 200 and body["total"] == 2
        assert {r["roomId"]: r["memberCount"] for r in body["rooms"]} == {"lobby": 2, "other": 1}
        assert all(r.get("members") is None for r in body["rooms"])
        status, body = await api.call("GET", "/api/rooms?members=true&limit=1")
        assert status == 200 and len(body["rooms"]) == 1
        assert [m["userId"] for m in body["rooms"][0]["members"]] == ["alice", "bob"]
        status, body = await api.call("GET", "/api/rooms?offset=1")
        assert [r["roomId"] for r in body["rooms"]] == ["other"]

        status, body = await api.call("GET", "/api/rooms/lobby/members")
        assert status == 200
        assert [(m["userId"], m["displayName"], m["transport"], m["connected"])
                for m in body["members"]] == [("alice", "Alice A.", "websocket", True),
                                              ("bob", "bob", "websocket", True)]
        status, body = await api.call("GET", "/api/rooms/lobby")
        assert status == 200 and body["memberCount"] == 2 and body["ageSeconds"] >= 0
        status, body = await api.call("GET", "/api/rooms/nobody-here")
        assert status == 404 and body["error"]["code"] == "not-found"
        status, body = await api.call("GET", "/api/rooms?limit=0")
        assert status == 400 and body["error"]["code"] == "invalid-request"
    finally:
        await api.close()
        for x in (a, b, c):
            await x.close()


async def test_publish_to_room_and_to_one_user(api_server: RtcHub) -> None:
    a = await joined(api_server, "news", "alice")
    b = await joined(api_server, "news", "bob")
    await a.expect("user-joined")
    api = Api(api_server)
    try:
        status, body = await api.call("POST", "/api/publish",
                                      json={"roomId": "news", "data": {"headline": "hi"}})
        assert status == 200 and body == {"delivered": 2}
        for c in (a, b):
            msg = await c.expect("message")
            assert msg["data"] == {"headline": "hi"} and msg["roomId"] == "news"
            assert msg["server"] is True and "from" not in msg
        status, body = await api.call("POST", "/api/publish",
                                      json={"roomId": "news", "to": "bob", "type": "signal",
                                            "data": [1, 2]})
        assert status == 200 and body == {"delivered": 1}
        assert (await b.expect("signal"))["data"] == [1, 2]
        # alice got nothing: her next message is the pong to this ping
        await a.send({"type": "ping", "timestamp": 7})
        assert (await a.expect("pong"))["timestamp"] == 7

        status, body = await api.call("POST", "/api/publish", json={"roomId": "empty", "data": 1})
        assert status == 200 and body == {"delivered": 0}
        for bad in ({"data": 1}, {"roomId": "news"}, {"roomId": "news", "data": 1, "extra": 1},
                    {"roomId": "bad room", "data": 1}, {"roomId": "news", "data": 1, "type": "welcome"}):
            status, body = await api.call("POST", "/api/publish", json=bad)
            assert status == 400, bad
            assert body["error"]["details"], body
        status, body = await api.call("POST", "/api/publish", data=b"{not json")
        assert status == 400
    finally:
        await api.close()
        await a.close()
        await b.close()


async def test_disconnect_user_reason_defaults_to_kicked(api_server: RtcHub) -> None:
    a = await joined(api_server, "r1", "alice")
    b = await joined(api_server, "r1", "bob")
    await a.expect("user-joined")
    api = Api(api_server)
    try:
        status, body = await api.call("POST", "/api/disconnect", json={"userId": "bob"})
        assert status == 200 and body == {"disconnected": 1}
        left = await a.expect("user-left")
        assert left["userId"] == "bob" and left["reason"] == "kicked"
        closed = await b.recv()
        while closed["type"] != "_closed":
            closed = await b.recv()
        assert closed["code"] == 4003
        status, body = await api.call("POST", "/api/disconnect", json={"userId": "bob"})
        assert body == {"disconnected": 0}

        c = await joined(api_server, "r1", "carol")
        await a.expect("user-joined")
        status, body = await api.call("POST", "/api/disconnect",
                                      json={"userId": "carol", "reason": "banned"})
        assert body == {"disconnected": 1}
        left = await a.expect("user-left")
        assert left["userId"] == "carol" and left["reason"] == "banned"
        await c.close()
    finally:
        await api.close()
        await a.close()
        await b.close()


async def test_stats(api_server: RtcHub) -> None:
    a = await joined(api_server, "s", "alice")
    b = await joined(api_server, "s", "bob")
    api = Api(api_server)
    try:
        status, body = await api.call("GET", "/api/stats")
        assert status == 200
        assert body["connections"] == {"websocket": 2}
        assert body["rooms"] == 1 and body["members"] == 2 and body["sessions"] == 2
        # two joins received; welcome x2, room-info x2, user-joined x1 sent
        assert body["messagesReceived"] == 2 and body["messagesSent"] == 5
        assert body["node"] == api_server.hub.node_id
    finally:
        await api.close()
        await a.close()
        await b.close()


async def test_openapi_document_is_generated_from_models(api_server: RtcHub) -> None:
    async with aiohttp.ClientSession() as http, http.get(api_server.url + "/openapi.json") as r:
        assert r.status == 200
        doc = await r.json()
    assert doc["openapi"].startswith("3.1")
    schemas = doc["components"]["schemas"]
    for name in ("PublishRequest", "DisconnectRequest", "RoomList", "RoomInfo", "RoomMembers",
                 "Stats", "ErrorBody", "MemberInfo"):
        assert name in schemas
    from rtchub.api.models import PublishRequest
    assert schemas["PublishRequest"]["required"] == PublishRequest.model_json_schema(
        by_alias=True)["required"]
    assert doc["components"]["securitySchemes"]["apiKey"]["name"] == "X-API-Key"
    assert set(doc["paths"]) == {"/api/stats", "/api/rooms", "/api/rooms/{roomId}",
                                 "/api/rooms/{roomId}/members", "/api/rooms/{roomId}/media",
                                 "/api/publish", "/api/disconnect",
                                 # recordings (tests/test_recordings_api.py)
                                 "/api/rooms/{roomId}/recording", "/api/recordings",
                                 "/api/recordings/{recordingId}",
                                 "/api/recordings/{recordingId}/files/{name}",
                                 # broadcasts (tests/e2e/test_broadcast.py)
                                 "/api/rooms/{roomId}/broadcast", "/api/broadcasts", "/api/whip"}


async def test_connection_events_are_logged(api_server: RtcHub, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="rtchub.events")
    a = await joined(api_server, "logs", "alice")
    await a.ws.close(code=1000)
    await a.http.close()
    await eventually(lambda: any(r.__dict__.get("event") == "session-ended" for r in caplog.records))
    events = [r.__dict__ for r in caplog.records if r.name == "rtchub.events"]
    kinds = [e["event"] for e in events]
    assert kinds == ["connection-opened", "room-joined", "room-left", "session-ended"], kinds
    end = events[-1]
    assert end["user"] == "alice" and end["room"] == "logs" and end["transport"] == "websocket"
    assert end["code"] == 1000 and end["reason"] == "left" and end["session"]
    assert "user=alice" in caplog.records[-1].getMessage()
    await asyncio.sleep(0)


class SseReader:
    """Reads ``event:``/``data:`` blocks from a real ``GET /sse`` stream."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp

    async def next(self, timeout: float = 5.0) -> dict[str, Any]:
        data: list[str] = []
        async with asyncio.timeout(timeout):
            while True:
                line = (await self.resp.content.readline()).decode().rstrip("\r\n")
                if line.startswith("data:"):
                    data.append(line[5:].lstrip())
                elif line == "" and data:
                    return json.loads("\n".join(data))

    async def expect(self, mtype: str) -> dict[str, Any]:
        while True:
            msg = await self.next()
            if msg["type"] == mtype:
                return msg


async def test_publish_reaches_ws_sse_and_polling_members(api_server: RtcHub) -> None:
    base = api_server.url
    ws = await joined(api_server, "mixed", "ws-user")
    http = aiohttp.ClientSession()
    api = Api(api_server)
    try:
        # SSE member: the stream gives the session, POST /send carries the join.
        sse_resp = await http.get(base + "/sse")
        sse = SseReader(sse_resp)
        sse_session = (await sse.expect("welcome"))["sessionId"]
        async with http.post(f"{base}/send?session={sse_session}",
                             json={"type": "join", "roomId": "mixed", "userId": "sse-user"}) as r:
            assert r.status == 202
        await sse.expect("room-info")
        # Polling member.
        async with http.post(base + "/poll/open") as r:
            poll_session = (await r.json())["sessionId"]
        async with http.post(f"{base}/send?session={poll_session}",
                             json={"type": "join", "roomId": "mixed", "userId": "poll-user"}) as r:
            assert r.status == 202

        status, body = await api.call("GET", "/api/rooms/mixed/members")
        assert {m["userId"]: m["transport"] for m in body["members"]} == {
            "ws-user": "websocket", "sse-user": "sse", "poll-user": "polling"}

        status, body = await api.call("POST", "/api/publish",
                                      json={"roomId": "mixed", "data": {"n": 1}})
        assert status == 200 and body == {"delivered": 3}

        got = await ws.expect("user-joined")
        got = await ws.expect("user-joined")
        got = await ws.expect("message")
        assert got["data"] == {"n": 1} and got["server"] is True
        got = await sse.expect("message")
        assert got["data"] == {"n": 1} and got["server"] is True
        polled: list[dict[str, Any]] = []
        after = 0
        while not any(m["type"] == "message" for m in polled):
            async with http.get(f"{base}/poll?session={poll_session}&after={after}&timeout=5") as r:
                batch = await r.json()
            assert batch, "long-poll returned nothing"
            polled += batch
            after = batch[-1]["seq"]
        msg = next(m for m in polled if m["type"] == "message")
        assert msg["data"] == {"n": 1} and msg["roomId"] == "mixed"
        sse_resp.close()
    finally:
        await api.close()
        await http.close()
        await ws.close()


async def test_members_on_another_node_are_marked_remote(make_server: Any) -> None:
    broker = f"memory://api-{id(make_server)}"
    one = await make_server(broker=broker, node_id="api-one", api_key=KEY)
    two = await make_server(broker=broker, node_id="api-two", api_key=KEY)
    for app in (one, two):
        await eventually(lambda app=app: app.cluster.ready)
    a = await joined(one, "spread", "alice")
    b = await joined(two, "spread", "bob")
    await a.expect("user-joined")
    api = Api(one)
    try:
        status, body = await api.call("GET", "/api/rooms/spread/members")
        assert status == 200
        got = {m["userId"]: (m["local"], m["node"], m["transport"]) for m in body["members"]}
        assert got == {"alice": (True, "api-one", "websocket"), "bob": (False, "api-two", None)}
        # Publishing on one node reaches the member connected to the other.
        status, body = await api.call("POST", "/api/publish", json={"roomId": "spread", "data": "x"})
        assert status == 200
        assert (await b.expect("message"))["data"] == "x"
    finally:
        await api.close()
        await a.close()
        await b.close()
