"""Long- and short-polling (POST /poll/open, GET /poll) and POST /send, incl. bad input.

Raw aiohttp against a real server, plus the Python SDK's polling transport.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import pytest

from rtchub.client import Client
from tests.conftest import eventually
from tests.test_sse import client_resumes_after_server_close


async def poll_open(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with http.post(url + "/poll/open") as resp:
        assert resp.status == 200
        assert resp.headers["Cache-Control"] == "no-store"
        return orjson.loads(await resp.read())


async def poll(http: aiohttp.ClientSession, url: str, sid: str, after: int, timeout: float = 0
               ) -> tuple[int, Any]:
    params = {"session": sid, "after": str(after), "timeout": str(timeout)}
    async with http.get(url + "/poll", params=params) as resp:
        return resp.status, orjson.loads(await resp.read())


async def send(http: aiohttp.ClientSession, url: str, sid: str, body: Any,
               **kw: Any) -> tuple[int, Any]:
    data = body if isinstance(body, bytes | str) or hasattr(body, "__aiter__") else orjson.dumps(body)
    async with http.post(url + "/send", params={"session": sid}, data=data, **kw) as resp:
        return resp.status, orjson.loads(await resp.read())


async def ws_join(http: aiohttp.ClientSession, server: Any, room: str, user: str
                  ) -> aiohttp.ClientWebSocketResponse:
    ws = await http.ws_connect(server.ws_url)
    assert (await ws.receive_json())["type"] == "welcome"
    await ws.send_json({"type": "join", "roomId": room, "userId": user})
    assert (await ws.receive_json())["type"] == "room-info"
    return ws


async def joined_poller(http: aiohttp.ClientSession, server: Any, room: str, user: str
                        ) -> tuple[str, int]:
    sid = (await poll_open(http, server.url))["sessionId"]
    assert (await send(http, server.url, sid, {"type": "join", "roomId": room, "userId": user}))[0] == 202
    status, msgs = await poll(http, server.url, sid, 0)
    assert status == 200 and msgs[0]["type"] == "room-info"
    return sid, msgs[-1]["seq"]


async def test_open_returns_welcome_and_short_poll_answers_at_once(server: Any) -> None:
    async with aiohttp.ClientSession() as http:
        welcome = await poll_open(http, server.url)
        assert welcome["type"] == "welcome" and welcome["seq"] == 0
        assert welcome["pollTimeout"] == server.settings.poll_timeout_max
        sid = welcome["sessionId"]
        assert await poll(http, server.url, sid, 0, timeout=0) == (200, [])
        status, body = await send(http, server.url, sid, [
            {"type": "join", "roomId": "r", "userId": "p", "id": 1},
            {"type": "ping", "timestamp": 3}])
        assert (status, body) == (202, {"accepted": 2})
        status, msgs = await poll(http, server.url, sid, 0)
        assert [(m["type"], m["seq"]) for m in msgs] == [("room-info", 1), ("ack", 2), ("pong", 3)]
        # ``after`` acknowledges: asking again from 2 returns only what follows.
        assert [m["seq"] for m in (await poll(http, server.url, sid, 2))[1]] == [3]
        assert (await poll(http, server.url, sid, 3))[1] == []


async def test_long_poll_waits_and_wakes_on_a_message(server: Any) -> None:
    async with aiohttp.ClientSession() as http:
        sid, last = await joined_poller(http, server, "r", "p")
        waiting = asyncio.get_running_loop().create_task(poll(http, server.url, sid, last, timeout=20))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        ws = await ws_join(http, server, "r", "w")
        status, msgs = await asyncio.wait_for(waiting, 10)
        assert status == 200 and [m["type"] for m in msgs] == ["user-joined"]
        await ws.close()


async def test_timeout_is_capped_by_poll_timeout_max(make_server: Any) -> None:
    server = await make_server(poll_timeout_max=0.3)
    async with aiohttp.ClientSession() as http:
        sid = (await poll_open(http, server.url))["sessionId"]
        assert await asyncio.wait_for(poll(http, server.url, sid, 0, timeout=3600), 10) == (200, [])


async def test_a_second_long_poll_answers_the_first_empty_and_nothing_is_lost(server: Any) -> None:
    async with aiohttp.ClientSession() as http:
        sid, last = await joined_poller(http, server, "r", "p")
        loop = asyncio.get_running_loop()
        first = loop.create_task(poll(http, server.url, sid, last, timeout=20))
        await asyncio.sleep(0.2)
        second = loop.create_task(poll(http, server.url, sid, last, timeout=20))
        assert await asyncio.wait_for(first, 10) == (200, [])
        ws = await ws_join(http, server, "r", "w")
        await ws.send_json({"type": "message", "roomId": "r", "data": "hello"})
        status, msgs = await asyncio.wait_for(second, 10)
        assert [m["type"] for m in msgs][:1] == ["user-joined"]
        if len(msgs) == 1:
            msgs += (await poll(http, server.url, sid, msgs[-1]["seq"], timeout=5))[1]
        assert [m["type"] for m in msgs] == ["user-joined", "message"]
        await ws.close()


async def test_resume_after_dropped_poll_every_message_once_in_order(make_server: Any) -> None:
    server = await make_server(max_msg_rate=0)
    async with aiohttp.ClientSession() as http:
        sid, last = await joined_poller(http, server, "r", "p")
        ws = await ws_join(http, server, "r", "w")
        got: list[int] = []
        after = (await poll(http, server.url, sid, last))[1][-1]["seq"]  # user-joined
        for i in range(50):
            await ws.send_json({"type": "message", "roomId": "r", "to": "p", "data": i})
            if i % 10 == 5:
                # A poll whose answer is lost on the way (connection dropped).
                lost = asyncio.get_running_loop().create_task(
                    poll(http, server.url, sid, after, timeout=10))
                await asyncio.sleep(0.05)
                lost.cancel()
            if i % 7 == 0:
                status, msgs = await poll(http, server.url, sid, after, timeout=5)
                assert status == 200
                for m in msgs:
                    got.append(m["data"])
                    after = m["seq"]
        while len(got) < 50:
            status, msgs = await poll(http, server.url, sid, after, timeout=5)
            for m in msgs:
                got.append(m["data"])
                after = m["seq"]
        assert got == list(range(50))
        await ws.close()


async def test_silent_poller_is_detached_then_resumed_by_polling(make_server: Any) -> None:
    server = await make_server(poll_timeout_max=0.2, grace_period=30)
    from rtchub.transports.http_common import REGISTRY_KEY

    registry = server.http[REGISTRY_KEY]
    registry.POLL_SLACK = 0.3  # instead of 10 s, so the test is short
    async with aiohttp.ClientSession() as http:
        sid, last = await joined_poller(http, server, "r", "p")
        ws = await ws_join(http, server, "r", "w")
        await eventually(lambda: server.hub.sessions[sid].sink is None, timeout=5)
        await ws.send_json({"type": "message", "roomId": "r", "to": "p", "data": "while away"})
        status, msgs = await poll(http, server.url, sid, last)
        assert status == 200
        assert [m["type"] for m in msgs] == ["user-joined", "message", "resumed"]
        assert msgs[-1]["sessionId"] == sid
        assert server.hub.sessions[sid].sink is not None
        await ws.close()


async def test_silent_poller_leaves_after_the_grace_period(make_server: Any) -> None:
    server = await make_server(poll_timeout_max=0.2, grace_period=0.3)
    from rtchub.transports.http_common import REGISTRY_KEY

    server.http[REGISTRY_KEY].POLL_SLACK = 0.3
    async with aiohttp.ClientSession() as http:
        ws = await ws_join(http, server, "r", "w")
        sid, _ = await joined_poller(http, server, "r", "p")
        assert (await ws.receive_json())["type"] == "user-joined"
        left = await ws.receive_json(timeout=10)
        assert left["type"] == "user-left" and left["userId"] == "p" and left["reason"] == "timeout"
        assert await poll(http, server.url, sid, 0) == (404, {
            "type": "error", "code": "session-expired",
            "message": "session is gone; open a new one and join again"})
        await ws.close()


async def test_after_older_than_the_buffer_is_session_expired(make_server: Any) -> None:
    server = await make_server(resume_buffer_messages=5, max_msg_rate=0)
    async with aiohttp.ClientSession() as http:
        sid, last = await joined_poller(http, server, "r", "p")
        ws = await ws_join(http, server, "r", "w")
        for i in range(10):
            await ws.send_json({"type": "message", "roomId": "r", "to": "p", "data": i})
        await eventually(lambda: server.hub.sessions[sid].seq >= last + 11)
        status, body = await poll(http, server.url, sid, last)
        assert status == 404 and body["type"] == "error" and body["code"] == "session-expired"
        # Reading from what is still buffered works.
        first = server.hub.sessions[sid].first_buffered_seq()
        status, msgs = await poll(http, server.url, sid, first - 1)
        assert status == 200 and [m["data"] for m in msgs] == list(range(5, 10))
        # ``after`` beyond what was sent cannot be right either.
        assert (await poll(http, server.url, sid, 10_000))[0] == 404
        await ws.close()


async def test_bad_input(make_server: Any) -> None:
    server = await make_server(max_body_size=1024)
    async with aiohttp.ClientSession() as http:
        sid = (await poll_open(http, server.url))["sessionId"]
        status, body = await send(http, server.url, sid, b'{"type": "join", ')
        assert status == 400 and body["type"] == "error" and body["code"] == "invalid-json"
        status, body = await send(http, server.url, sid, b'"just a string"')
        assert status == 400 and body["code"] == "invalid-message"
        status, body = await send(http, server.url, sid, {"type": "message", "data": "x" * 2000})
        assert status == 413 and body["type"] == "error"
        # Chunked (no Content-Length) oversize is refused too.

        async def chunks() -> Any:
            for _ in range(8):
                yield b" " * 256

        status, body = await send(http, server.url, sid, chunks())
        assert status == 413
        for bad_sid in ("nosuchsession", ""):
            status, body = await send(http, server.url, bad_sid, {"type": "ping"})
            assert (status, body["type"], body["code"]) == (404, "error", "session-expired")
            assert (await poll(http, server.url, bad_sid, 0))[1]["code"] == "session-expired"
        async with http.get(server.url + "/poll", params={"session": sid, "after": "x"}) as resp:
            assert resp.status == 400
            assert (await resp.json())["code"] == "invalid-message"
        # A message the hub refuses is answered downstream, like on WebSocket.
        status, _ = await send(http, server.url, sid, [{"type": "bogus", "id": "b1"}, 42])
        assert status == 202
        msgs = (await poll(http, server.url, sid, 0))[1]
        assert [(m["type"], m["code"], m.get("id")) for m in msgs] == [
            ("error", "unknown-type", "b1"), ("error", "invalid-message", None)]
        # Over polling, resume is a poll; a resume message is refused with its id.
        await send(http, server.url, sid, {"type": "resume", "sessionId": "x", "lastSeq": 0, "id": "r1"})
        msgs = (await poll(http, server.url, sid, 2))[1]
        assert msgs[0]["type"] == "error" and msgs[0]["id"] == "r1"
        assert sid in server.hub.sessions


async def test_polling_takes_over_a_websocket_session(make_server: Any) -> None:
    server = await make_server(max_msg_rate=0)
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(server.ws_url)
        sid = (await ws.receive_json())["sessionId"]
        await ws.send_json({"type": "join", "roomId": "r", "userId": "mover"})
        info = await ws.receive_json()
        status, msgs = await poll(http, server.url, sid, info["seq"])
        assert status == 200 and [m["type"] for m in msgs] == ["resumed"]
        closing = await ws.receive(timeout=5)
        assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == 4009
        # The session went on: the same membership, now over polling.
        assert (await send(http, server.url, sid, {"type": "ping", "id": "x"}))[0] == 202
        msgs = (await poll(http, server.url, sid, msgs[-1]["seq"]))[1]
        assert [m["type"] for m in msgs] == ["pong"]
        assert "mover" in server.hub.rooms["r"].members


@pytest.mark.parametrize("kind", ["polling", "short-polling"])
async def test_sdk_polling_survives_dropped_polls(make_server: Any, kind: str) -> None:
    server = await make_server(max_msg_rate=0)
    async with Client(server.url, transport=kind) as a, Client(server.url) as b:
        assert a.transport_name == kind
        await a.join("r", user_id="a")
        await b.join("r", user_id="b")
        await a.recv_type("user-joined")
        got: list[int] = []
        for i in range(30):
            await b.send({"type": "message", "roomId": "r", "to": "a", "data": i})
            if i % 8 == 3:
                await a.abort()
                await asyncio.sleep(0.02)
        while len(got) < 30:
            got.append((await a.recv_type("message", timeout=10))["data"])
        assert got == list(range(30))
        await a.send({"type": "message", "roomId": "r", "to": "b", "data": "up"})
        assert (await b.recv_type("message"))["data"] == "up"


async def test_sdk_polling_resumes_through_the_client_after_a_server_close(make_server: Any) -> None:
    """The server closes the poller (1011): the Client reconnects and its resume polls the old session."""
    server = await make_server(max_msg_rate=0)


    async def only_the_two_sessions_left() -> None:
        # The fresh session the reconnect opened was closed, not left to time out.
        await eventually(lambda: len(server.hub.sessions) == 2)

    await client_resumes_after_server_close(server, "polling", then=only_the_two_sessions_left)


async def test_sdk_polling_rejoins_when_the_session_expired(make_server: Any) -> None:
    server = await make_server(max_msg_rate=0, grace_period=0.2)
    async with Client(server.url, transport="polling", backoff_base=0.05) as a, Client(server.url) as b:
        await a.join("r", user_id="a")
        await b.join("r", user_id="b")
        old = a.session_id
        server.hub.end(server.hub.sessions[old], "test")
        assert (await b.recv_type("user-left"))["userId"] == "a"
        joined = await b.recv_type("user-joined", timeout=15)
        assert joined["userId"] == "a"
        await eventually(lambda: "rejoined" in a.states)
        assert a.session_id != old
        await b.send({"type": "message", "roomId": "r", "to": "a", "data": "welcome back"})
        assert (await a.recv_type("message", timeout=10))["data"] == "welcome back"


def test_http_common_does_not_import_the_transports_built_on_it() -> None:
    """No import cycle: poll and sse build on http_common, never the reverse
    (issue 14: ``receive_all`` used to import ``PollSink`` inside the function)."""
    import subprocess
    import sys

    code = ("import sys; from rtchub.core.hub import Hub; "
            "import rtchub.transports.http_common as h; "
            "hub = Hub(); h.receive_all(hub, hub.open(None), [{'type': 'ping'}]); "
            "assert 'rtchub.transports.poll' not in sys.modules, 'poll imported'; "
            "assert 'rtchub.transports.sse' not in sys.modules, 'sse imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
