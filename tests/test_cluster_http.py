"""SSE and long-polling across cluster nodes without sticky sessions (issue 7).

A client's HTTP requests may reach any node: ``POST /send`` on a node that does
not hold the session is forwarded to the node that does (in order, answered
after the owner received it), and ``GET /sse`` with ``Last-Event-ID`` (or a
poll) on another node takes the session over exactly like a WebSocket
``resume`` there. Real servers, real redis-server, raw HTTP (what a browser's
EventSource and fetch do).
"""

# ruff: noqa: F811 - pytest fixtures imported from tests/test_cluster.py are parameters here
from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson

from tests.conftest import eventually
from tests.redis_fixture import redis_server  # noqa: F401
from tests.test_cluster import broker_url, nodes, peers, room_name  # noqa: F401
from tests.test_sse import SseReader, open_sse, post


async def _events_until(sse: SseReader, pred: Any, out: list[dict[str, Any]]) -> None:
    while True:
        ev = await sse.next()
        out.append(ev)
        if pred(ev["data"]):
            return


async def test_sse_on_one_node_send_through_another(nodes: Any, peers: Any) -> None:
    apps = await nodes(2, grace_period=10)
    a, b = apps
    room = room_name()
    async with aiohttp.ClientSession() as http:
        sse = await open_sse(http, a.url)
        sid = (await sse.next())["data"]["sessionId"]
        assert sid in a.hub.sessions
        # The join goes through node B: forwarded to A, answered once A has it.
        resp = await post(http, b.url, sid, {"type": "join", "roomId": room, "userId": "sam",
                                             "id": "j"})
        assert resp.status == 202
        got: list[dict[str, Any]] = []
        await _events_until(sse, lambda d: d["type"] == "ack", got)
        assert [e["data"]["type"] for e in got] == ["room-info", "ack"]
        p = await peers(b, "p")
        await p.join(room, "pat")
        await _events_until(sse, lambda d: d["type"] == "user-joined", got)
        # Several POSTs, alternating nodes, single messages and arrays: in order.
        sent = 0
        for i in range(12):
            url = (a.url, b.url)[i % 2]
            batch = [{"type": "signal", "roomId": room, "to": "pat", "data": sent + k}
                     for k in range(1 + i % 3)]
            resp = await post(http, url, sid, batch if i % 3 else batch[0])
            assert resp.status == 202
            sent += len(batch)
        await p.wait("signal", count=sent)
        await asyncio.sleep(0.2)
        assert [m["data"] for m in p.of("signal")] == list(range(sent))
        assert all(m["from"] == "sam" for m in p.of("signal"))
        # Errors about a forwarded message come back downstream with its id.
        resp = await post(http, b.url, sid, {"type": "signal", "roomId": "nowhere", "to": "x",
                                             "id": "bad"})
        assert resp.status == 202
        await _events_until(sse, lambda d: d.get("id") == "bad", got)
        assert got[-1]["data"]["type"] == "error"
        # Accepted counts are the owner's.
        async with http.post(f"{b.url}/send", params={"session": sid},
                             data=orjson.dumps([{"type": "ping"}, {"type": "ping"}])) as r:
            assert r.status == 202 and (await r.json())["accepted"] == 2
        # No node holds it: session-expired, on any node.
        for url in (a.url, b.url):
            resp = await post(http, url, "no-such-session", {"type": "ping"})
            assert resp.status == 404
        async with http.post(f"{b.url}/send", params={"session": "nope"}, data=b"{}") as r:
            assert (await r.json())["code"] == "session-expired"
        assert sid in a.hub.sessions and sid not in b.hub.sessions
        seqs = [e["data"]["seq"] for e in got]
        assert seqs == list(range(1, len(seqs) + 1))
        sse.resp.close()


async def test_sse_resume_with_last_event_id_on_another_node(nodes: Any, peers: Any) -> None:
    apps = await nodes(3, grace_period=10)
    a, b, c = apps
    room = room_name()
    async with aiohttp.ClientSession() as http:
        sse = await open_sse(http, a.url)
        welcome = await sse.next()
        sid = welcome["data"]["sessionId"]
        seen: list[dict[str, Any]] = []
        assert (await post(http, a.url, sid, {"type": "join", "roomId": room, "userId": "sam",
                                              "id": "j"})).status == 202
        await _events_until(sse, lambda d: d["type"] == "ack", seen)
        y = await peers(b, "y")
        z = await peers(c, "z")
        await y.join(room, "yann")
        await z.join(room, "zoe")
        for i in range(4):
            await y.send({"type": "signal", "roomId": room, "to": "sam", "data": i})
        await _events_until(sse, lambda d: d.get("data") == 3, seen)
        last_id = seen[-1]["id"]
        last_seq = seen[-1]["data"]["seq"]
        assert last_id == f"{sid}.{last_seq}"
        sse.abort()  # a dropped connection, as a network failure or a node switch looks
        await eventually(lambda: a.hub.sessions[sid].sink is None)
        # Missed while away: relays from two nodes and a broadcast.
        for i in range(4, 9):
            await y.send({"type": "signal", "roomId": room, "to": "sam", "data": i})
        await z.send({"type": "message", "roomId": room, "data": "while you were away"})
        await asyncio.sleep(0.3)
        # EventSource reconnects with Last-Event-ID; the load balancer picks node B.
        sse2 = await open_sse(http, b.url, **{"Last-Event-ID": last_id})
        again: list[dict[str, Any]] = []
        await _events_until(sse2, lambda d: d["type"] == "resumed", again)
        replay = again[:-1]
        # Each sender's order is kept (two senders on two nodes may interleave).
        assert [e["data"]["data"] for e in replay if e["event"] == "signal"] == [4, 5, 6, 7, 8]
        assert [e["data"]["data"] for e in replay if e["event"] == "message"] == [
            "while you were away"]
        assert [e["data"]["seq"] for e in replay] == list(range(last_seq + 1, last_seq + 7))
        assert all(e["id"] == f"{sid}.{e['data']['seq']}" for e in again)
        resumed = again[-1]["data"]
        assert resumed["sessionId"] == sid and resumed["lastSeq"] == last_seq
        assert resumed["replayed"] == 6
        assert sid in b.hub.sessions and sid not in a.hub.sessions
        # Live traffic both ways; upstream through the node that held it before.
        await y.send({"type": "signal", "roomId": room, "to": "sam", "data": "live"})
        await _events_until(sse2, lambda d: d.get("data") == "live", again)
        assert (await post(http, a.url, sid, {"type": "signal", "roomId": room, "to": "yann",
                                              "data": "back"})).status == 202
        await y.wait("signal", data="back")
        seqs = [e["data"]["seq"] for e in seen + again]
        assert seqs == list(range(1, len(seqs) + 1)), "no gap, no duplicate"
        await asyncio.sleep(0.3)
        assert y.of("user-left") == [] and z.of("user-left") == []
        assert y.of("user-joined", userId="sam") == []
        sse2.resp.close()

        # A Last-Event-ID no node can resume: session-expired, then a fresh welcome.
        sse3 = await open_sse(http, c.url, **{"Last-Event-ID": "gone-session.5"})
        err = await sse3.next()
        assert err["event"] == "error" and err["id"] is None
        assert err["data"]["code"] == "session-expired"
        fresh = await sse3.next()
        assert fresh["data"]["type"] == "welcome" and fresh["data"]["sessionId"] != sid
        sse3.resp.close()


async def test_sse_resume_on_another_node_after_its_node_stopped(nodes: Any, peers: Any) -> None:
    """The node holding the stream goes away: the mirror replays what was missed."""
    apps = await nodes(3, grace_period=10)
    a, b, c = apps
    room = room_name()
    async with aiohttp.ClientSession() as http:
        sse = await open_sse(http, a.url)
        sid = (await sse.next())["data"]["sessionId"]
        seen: list[dict[str, Any]] = []
        await post(http, b.url, sid, {"type": "join", "roomId": room, "userId": "sam", "id": "j"})
        await _events_until(sse, lambda d: d["type"] == "ack", seen)
        y = await peers(b, "y")
        await y.join(room, "yann")
        await y.send({"type": "signal", "roomId": room, "to": "sam", "data": 0})
        await _events_until(sse, lambda d: d.get("data") == 0, seen)
        last_id = seen[-1]["id"]
        sse.abort()
        await eventually(lambda: a.hub.sessions[sid].sink is None)
        await asyncio.sleep(0.2)  # mirrored
        await a.stop()
        sse2 = await open_sse(http, c.url, **{"Last-Event-ID": last_id})
        again: list[dict[str, Any]] = []
        await _events_until(sse2, lambda d: d["type"] == "resumed", again)
        assert again[-1]["data"]["replayed"] == 0
        await y.send({"type": "signal", "roomId": room, "to": "sam", "data": 1})
        await _events_until(sse2, lambda d: d.get("data") == 1, again)
        seqs = [e["data"]["seq"] for e in seen + again]
        assert seqs == list(range(1, len(seqs) + 1))
        await asyncio.sleep(0.3)
        assert y.of("user-left") == []
        sse2.resp.close()


async def test_polling_takes_the_session_over_on_another_node(nodes: Any, peers: Any) -> None:
    apps = await nodes(2, grace_period=10)
    a, b = apps
    room = room_name()
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{a.url}/poll/open") as r:
            sid = (await r.json())["sessionId"]
        await post(http, b.url, sid, {"type": "join", "roomId": room, "userId": "sam", "id": "j"})
        y = await peers(b, "y")
        await y.join(room, "yann")
        await eventually(lambda: a.hub.sessions[sid].seq >= 3)
        async with http.get(f"{a.url}/poll", params={"session": sid, "after": "0",
                                                     "timeout": "0"}) as r:
            first = await r.json()
        assert [m["type"] for m in first] == ["room-info", "ack", "user-joined"]
        after = first[-1]["seq"]
        await y.send({"type": "signal", "roomId": room, "to": "sam", "data": "x"})
        await eventually(lambda: a.hub.sessions[sid].seq > after)
        # The next poll reaches node B: it takes the session over and replays.
        async with http.get(f"{b.url}/poll", params={"session": sid, "after": str(after),
                                                     "timeout": "0"}) as r:
            assert r.status == 200
            second = await r.json()
        assert [m["type"] for m in second] == ["signal", "resumed"]
        assert [m["seq"] for m in second] == [after + 1, after + 2]
        assert sid in b.hub.sessions and sid not in a.hub.sessions
        await asyncio.sleep(0.2)
        assert y.of("user-left") == []


async def test_close_through_another_node_ends_the_session_at_once(nodes: Any, peers: Any) -> None:
    """``POST /close`` (sendBeacon on pagehide) may reach any node: no grace-period wait."""
    a, b = await nodes(2, grace_period=30)
    room = room_name()
    async with aiohttp.ClientSession() as http:
        sse = await open_sse(http, a.url)
        sid = (await sse.next())["data"]["sessionId"]
        assert (await post(http, a.url, sid, {"type": "join", "roomId": room, "userId": "sam",
                                              "id": "j"})).status == 202
        p = await peers(b, "p")
        await p.join(room, "pat")
        async with http.post(f"{b.url}/close", params={"session": sid}) as r:
            assert r.status == 200 and (await r.json()) == {"closed": True}
        left = await p.wait("user-left", userId="sam", timeout=3.0)
        assert left["reason"] == "left"
        await eventually(lambda: sid not in a.hub.sessions)
        async with http.post(f"{b.url}/close", params={"session": sid}) as r:
            assert r.status == 404 and (await r.json())["code"] == "session-expired"
        sse.resp.close()
