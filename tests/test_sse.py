"""GET /sse: event format, heartbeats, headers, CORS, resume with Last-Event-ID.

Raw aiohttp against a real server, so that the wire format itself is checked
(what a browser's EventSource sees), plus the Python SDK's SSE transport.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import pytest

from rtchub.client import Client
from rtchub.transports.http_common import REGISTRY_KEY
from tests.conftest import eventually


class SseReader:
    """A minimal event-stream parser (WHATWG HTML, "Parsing an event stream")."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp
        self.buf = b""
        self.comments: list[str] = []
        self.retry: int | None = None

    async def next(self, timeout: float = 5.0) -> dict[str, Any]:
        """Next event as {event, id, data (decoded JSON), raw}."""
        return await asyncio.wait_for(self._next(), timeout)

    async def _next(self) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        data: list[str] = []
        while True:
            while b"\n" not in self.buf:
                chunk = await self.resp.content.readany()
                if not chunk:
                    raise EOFError("stream ended")
                self.buf += chunk
            line, _, self.buf = self.buf.partition(b"\n")
            text = line.decode()
            if not text:
                if data or fields:
                    if not data:  # retry-only block: no event is dispatched
                        fields = {}
                        continue
                    return {"event": fields.get("event", "message"), "id": fields.get("id"),
                            "data": orjson.loads("\n".join(data)), "raw": "\n".join(data)}
                continue
            if text.startswith(":"):
                self.comments.append(text[1:].strip())
                continue
            name, _, value = text.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                data.append(value)
            elif name == "retry":
                self.retry = int(value)
                fields["retry"] = value
            else:
                fields[name] = value

    async def until(self, mtype: str, timeout: float = 5.0) -> dict[str, Any]:
        while True:
            ev = await self.next(timeout)
            if ev["data"].get("type") == mtype:
                return ev

    def abort(self) -> None:
        conn = self.resp.connection
        assert conn is not None and conn.transport is not None
        conn.transport.abort()


async def open_sse(http: aiohttp.ClientSession, url: str, **headers: str) -> SseReader:
    resp = await http.get(url + "/sse", headers=headers, timeout=aiohttp.ClientTimeout(total=None))
    assert resp.status == 200, await resp.text()
    return SseReader(resp)


async def post(http: aiohttp.ClientSession, url: str, sid: str, body: Any,
               headers: dict[str, str] | None = None) -> aiohttp.ClientResponse:
    data = body if isinstance(body, bytes | str) else orjson.dumps(body)
    async with http.post(f"{url}/send", params={"session": sid}, data=data, headers=headers) as resp:
        await resp.read()
        return resp


async def test_stream_format_welcome_retry_heartbeat(make_server: Any) -> None:
    server = await make_server(sse_heartbeat=0.1)
    async with aiohttp.ClientSession() as http:
        sse = await open_sse(http, server.url)
        h = sse.resp.headers
        assert h["Content-Type"].startswith("text/event-stream")
        assert h["Cache-Control"] == "no-store"
        assert h["X-Accel-Buffering"] == "no"
        welcome = await sse.next()
        assert sse.retry is not None and sse.retry > 0
        assert welcome["event"] == "welcome"
        data = welcome["data"]
        assert data["type"] == "welcome" and data["seq"] == 0
        assert welcome["id"] == f"{data['sessionId']}.0"
        # Idle: only comment heartbeats arrive, no event.
        with pytest.raises(TimeoutError):
            await sse.next(timeout=0.5)
        assert sse.comments.count("ping") >= 2
        sse.resp.close()


async def test_send_join_and_events_carry_session_and_seq(server: Any) -> None:
    async with aiohttp.ClientSession() as http:
        sse = await open_sse(http, server.url)
        sid = (await sse.next())["data"]["sessionId"]
        resp = await post(http, server.url, sid, [
            {"type": "join", "roomId": "r1", "userId": "alice", "id": "j1"},
            {"type": "ping", "timestamp": 7},
        ])
        assert resp.status == 202
        events = [await sse.next() for _ in range(3)]
        assert [e["event"] for e in events] == ["room-info", "ack", "pong"]
        assert [e["id"] for e in events] == [f"{sid}.1", f"{sid}.2", f"{sid}.3"]
        assert [e["data"]["seq"] for e in events] == [1, 2, 3]
        assert events[2]["data"]["timestamp"] == 7
        sse.resp.close()


async def _ws_join(http: aiohttp.ClientSession, server: Any, room: str, user: str
                   ) -> aiohttp.ClientWebSocketResponse:
    ws = await http.ws_connect(server.ws_url)
    assert (await ws.receive_json())["type"] == "welcome"
    await ws.send_json({"type": "join", "roomId": room, "userId": user})
    assert (await ws.receive_json())["type"] == "room-info"
    return ws


@pytest.mark.parametrize("via", ["header", "query"])
async def test_resume_with_last_event_id_replays_exactly_once_in_order(make_server: Any, via: str) -> None:
    server = await make_server(max_msg_rate=0)
    async with aiohttp.ClientSession() as http:
        sse = await open_sse(http, server.url)
        sid = (await sse.next())["data"]["sessionId"]
        await post(http, server.url, sid, {"type": "join", "roomId": "r", "userId": "sse-user"})
        assert (await sse.until("room-info"))["data"]["users"] == []
        ws = await _ws_join(http, server, "r", "ws-user")
        assert (await sse.until("user-joined"))["data"]["userId"] == "ws-user"
        got: list[int] = []
        last_id = None
        for i in range(20):
            await ws.send_json({"type": "message", "roomId": "r", "to": "sse-user", "data": i})
        while len(got) < 10:
            ev = await sse.next()
            got.append(ev["data"]["data"])
            last_id = ev["id"]
        sse.abort()  # a network failure: no clean end
        for i in range(20, 40):
            await ws.send_json({"type": "message", "roomId": "r", "to": "sse-user", "data": i})
        await asyncio.sleep(0.1)
        assert last_id is not None
        if via == "header":
            sse2 = await open_sse(http, server.url, **{"Last-Event-ID": last_id})
        else:
            resp = await http.get(server.url + "/sse", params={"lastEventId": last_id})
            sse2 = SseReader(resp)
        resumed = None
        while resumed is None:
            ev = await sse2.next()
            assert ev["id"].startswith(sid + "."), "resumed stream continues the same session"
            if ev["event"] == "resumed":
                resumed = ev["data"]
            else:
                got.append(ev["data"]["data"])
        assert resumed["sessionId"] == sid
        for i in range(40, 45):
            await ws.send_json({"type": "message", "roomId": "r", "to": "sse-user", "data": i})
        while len(got) < 45:
            got.append((await sse2.next())["data"]["data"])
        assert got == list(range(45))
        # The WebSocket peer never saw the SSE user leave.
        await ws.send_json({"type": "ping", "id": "p"})
        while True:
            msg = await ws.receive_json(timeout=5)
            assert msg["type"] != "user-left"
            if msg["type"] == "pong":
                break
        sse2.resp.close()
        await ws.close()


async def test_unknown_last_event_id_gets_error_then_fresh_session(server: Any) -> None:
    async with aiohttp.ClientSession() as http:
        sse = await open_sse(http, server.url, **{"Last-Event-ID": "nosuchsession.12"})
        err = await sse.next()
        assert err["event"] == "error" and err["id"] is None
        assert err["data"]["code"] == "session-expired"
        welcome = await sse.next()
        assert welcome["event"] == "welcome"
        assert welcome["id"] == f"{welcome['data']['sessionId']}.0"
        sse.resp.close()


async def test_overflowed_session_is_expired_not_partially_replayed(make_server: Any) -> None:
    server = await make_server(resume_buffer_messages=5, max_msg_rate=0)
    async with aiohttp.ClientSession() as http:
        sse = await open_sse(http, server.url)
        sid = (await sse.next())["data"]["sessionId"]
        await post(http, server.url, sid, {"type": "join", "roomId": "r", "userId": "s"})
        await sse.until("room-info")
        ws = await _ws_join(http, server, "r", "w")
        ev = await sse.until("user-joined")
        sse.abort()
        await eventually(lambda: server.hub.sessions[sid].sink is None)
        for i in range(10):
            await ws.send_json({"type": "message", "roomId": "r", "to": "s", "data": i})
        await eventually(lambda: server.hub.sessions[sid].seq >= ev["data"]["seq"] + 10)
        sse2 = await open_sse(http, server.url, **{"Last-Event-ID": ev["id"]})
        err = await sse2.next()
        assert err["data"]["code"] == "session-expired"
        assert (await sse2.next())["event"] == "welcome"
        sse2.resp.close()
        await ws.close()


async def test_second_stream_takes_over_first_gets_close_4009(server: Any) -> None:
    async with aiohttp.ClientSession() as http:
        sse = await open_sse(http, server.url)
        welcome = await sse.next()
        sse2 = await open_sse(http, server.url, **{"Last-Event-ID": welcome["id"]})
        closing = await sse.next()
        assert closing["event"] == "close" and closing["data"]["code"] == 4009
        assert (await sse2.next())["event"] == "resumed"
        with pytest.raises(EOFError):
            await sse.next()
        sse2.resp.close()


async def test_dropped_stream_ends_after_grace_period_and_clean_close_at_once(make_server: Any) -> None:
    server = await make_server(grace_period=0.5)
    async with aiohttp.ClientSession() as http:
        ws = await _ws_join(http, server, "r", "w")
        seen: list[dict[str, Any]] = []

        async def watch() -> None:
            async for frame in ws:
                seen.append(orjson.loads(frame.data))

        watcher = asyncio.get_running_loop().create_task(watch())
        # 1) dropped stream: detected by the sweep, kept for the grace period.
        sse = await open_sse(http, server.url)
        sid = (await sse.next())["data"]["sessionId"]
        await post(http, server.url, sid, {"type": "join", "roomId": "r", "userId": "dropper"})
        await eventually(lambda: any(m.get("userId") == "dropper" for m in seen))
        sse.abort()
        await eventually(lambda: sid in server.hub.sessions and server.hub.sessions[sid].sink is None)
        assert not any(m["type"] == "user-left" for m in seen)
        await eventually(lambda: any(m["type"] == "user-left" for m in seen), timeout=5)
        left = [m for m in seen if m["type"] == "user-left"]
        assert left == [{**left[0], "userId": "dropper", "reason": "disconnected"}]
        # 2) POST /close: clean, members learn at once with reason "left".
        sse = await open_sse(http, server.url)
        sid = (await sse.next())["data"]["sessionId"]
        await post(http, server.url, sid, {"type": "join", "roomId": "r", "userId": "closer"})
        await eventually(lambda: any(m.get("userId") == "closer" for m in seen))
        async with http.post(server.url + "/close", params={"session": sid}) as resp:
            assert resp.status == 200
        closing = await sse.until("close")
        assert closing["event"] == "close" and closing["data"]["code"] == 1000
        await eventually(lambda: any(m["type"] == "user-left" and m["userId"] == "closer" for m in seen))
        assert [m["reason"] for m in seen if m.get("userId") == "closer" and m["type"] == "user-left"] \
            == ["left"]
        assert sid not in server.hub.sessions
        watcher.cancel()
        await ws.close()


async def test_cors_preflight_and_origin_check(make_server: Any) -> None:
    server = await make_server(allowed_origin=["https://app.example"])
    async with aiohttp.ClientSession() as http:
        ok = {"Origin": "https://app.example", "Access-Control-Request-Method": "GET",
              "Access-Control-Request-Headers": "last-event-id"}
        async with http.options(server.url + "/sse", headers=ok) as resp:
            assert resp.status == 204
            assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example"
            assert "GET" in resp.headers["Access-Control-Allow-Methods"]
            assert "last-event-id" in resp.headers["Access-Control-Allow-Headers"].lower()
        async with http.options(server.url + "/send",
                                headers={**ok, "Origin": "https://evil.example"}) as resp:
            assert resp.status == 403
            assert "Access-Control-Allow-Origin" not in resp.headers
        async with http.get(server.url + "/sse", headers={"Origin": "https://evil.example"}) as resp:
            assert resp.status == 403
        sse = await open_sse(http, server.url, Origin="https://app.example")
        assert sse.resp.headers["Access-Control-Allow-Origin"] == "https://app.example"
        sid = (await sse.next())["data"]["sessionId"]
        async with http.post(server.url + "/send", params={"session": sid}, data=b'{"type":"ping"}',
                             headers={"Origin": "https://evil.example"}) as resp:
            assert resp.status == 403
        async with http.post(server.url + "/send", params={"session": sid}, data=b'{"type":"ping"}',
                             headers={"Origin": "https://app.example",
                                      "Content-Type": "text/plain"}) as resp:
            assert resp.status == 202
            assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example"
        assert (await sse.next())["event"] == "pong"
        sse.resp.close()


async def test_sdk_over_sse_survives_a_dropped_stream(make_server: Any) -> None:
    server = await make_server(max_msg_rate=0)
    async with Client(server.url, transport="sse") as a, Client(server.url) as b:
        assert a.transport_name == "sse"
        await a.join("r", user_id="a")
        await b.join("r", user_id="b")
        await a.recv_type("user-joined")
        got: list[int] = []
        for i in range(30):
            await b.send({"type": "message", "roomId": "r", "to": "a", "data": i})
            if i == 10:
                await a.abort()
        while len(got) < 30:
            msg = await a.recv_type("message")
            got.append(msg["data"])
        assert got == list(range(30))
        assert "resumed" in a.states
        assert a.session_id in server.hub.sessions
        # Upstream still works after the resume, and b never saw a leave.
        await a.send({"type": "message", "roomId": "r", "to": "b", "data": "after"})
        msg = await b.recv_type("message")
        assert msg["data"] == "after" and msg["from"] == "a"
        assert not [m for m in b.pending() if m["type"] == "user-left"]


async def client_resumes_after_server_close(server: Any, transport: str,
                                            then: Any = None) -> None:
    """The server closes the client's transport (1011): the SDK reconnects, resumes the
    same session, gets the 5 messages sent meanwhile in order, and sends again."""
    async with Client(server.url, transport=transport, backoff_base=0.05) as a, Client(server.url) as b:
        await a.join("r", user_id="a")
        await b.join("r", user_id="b")
        await a.recv_type("user-joined")
        old = a.session_id
        server.hub.close(server.hub.sessions[old], 1011, "test")
        for i in range(5):
            await b.send({"type": "message", "roomId": "r", "to": "a", "data": i})
        got = [(await a.recv_type("message", timeout=10))["data"] for _ in range(5)]
        assert got == list(range(5))
        await eventually(lambda: "resumed" in a.states)
        assert a.session_id == old
        await a.send({"type": "message", "roomId": "r", "to": "b", "data": "back"})
        assert (await b.recv_type("message"))["data"] == "back"
        if then is not None:
            await then()


async def test_sdk_over_sse_resumes_through_the_client_after_a_server_close(make_server: Any) -> None:
    """The stream is closed by the server (1011): the Client reconnects and sends ``resume``."""
    await client_resumes_after_server_close(await make_server(max_msg_rate=0), "sse")


SECRET = "test-secret-0123456789-0123456789-abcdef"


async def test_tokens_on_sse_and_polling(make_server: Any) -> None:
    from rtchub.auth.tokens import mint

    server = await make_server(auth="jwt", jwt_secret=SECRET)
    good = mint(sub="alice", key=SECRET, name="Alice")
    async with aiohttp.ClientSession() as http:
        for method, path in (("GET", "/sse"), ("POST", "/poll/open")):
            async with http.request(method, server.url + path) as resp:
                assert resp.status == 401
                assert (await resp.json())["code"] == "unauthorized"
            async with http.request(method, server.url + path, params={"token": "x.y.z"}) as resp:
                assert resp.status == 401
        resp = await http.get(server.url + "/sse", params={"token": good})
        assert resp.status == 200
        sse = SseReader(resp)
        welcome = (await sse.next())["data"]
        assert welcome["userId"] == "alice"
        # The token decides the identity: joining as someone else is refused.
        await post(http, server.url, welcome["sessionId"],
                   {"type": "join", "roomId": "r", "userId": "mallory", "id": 1},
                   headers={"Authorization": f"Bearer {good}"})
        err = await sse.until("error")
        assert err["data"]["code"] == "forbidden" and err["data"]["id"] == 1
        # Someone else's token cannot resume alice's session.
        bob = mint(sub="bob", key=SECRET)
        async with http.get(server.url + "/sse", params={"token": bob},
                            headers={"Last-Event-ID": f"{welcome['sessionId']}.0"}) as resp:
            assert resp.status == 403
        async with http.post(server.url + "/poll/open", params={"token": good}) as resp:
            assert (await resp.json())["userId"] == "alice"
        sse.resp.close()


async def test_auto_falls_back_when_websocket_is_refused(server: Any) -> None:
    # ``/no-ws`` is not a WebSocket path: the upgrade fails, SSE is next.
    async with Client(server.url + "/no-ws", transport="auto") as c:
        assert c.transport_name == "sse"
        info = await c.join("r", user_id="fallback")
        assert info["type"] == "room-info"
    async with Client(server.url, transport="auto") as c:
        assert c.transport_name == "websocket"


async def test_shutdown_ends_streams_and_polls_with_1001() -> None:
    from rtchub.app import create_app

    server = create_app(host="127.0.0.1", port=0, stun_port=0)
    await server.start()
    stopped = False
    try:
        async with aiohttp.ClientSession() as http:
            sse = await open_sse(http, server.url)
            await sse.next()
            async with http.post(server.url + "/poll/open") as resp:
                sid = (await resp.json())["sessionId"]
            polling = asyncio.get_running_loop().create_task(
                http.get(server.url + "/poll", params={"session": sid, "timeout": "20"}))
            await eventually(lambda: any(p.waiter is not None for p in
                                         server.http[REGISTRY_KEY].pollers))
            await asyncio.wait_for(server.stop(), 15)
            stopped = True
            closing = await sse.next()
            assert closing["event"] == "close" and closing["data"]["code"] == 1001
            resp = await asyncio.wait_for(polling, 5)
            assert (await resp.json()) == [{"type": "close", "code": 1001,
                                            "reason": "server shutting down"}]
    finally:
        if not stopped:
            await server.stop()
