"""The PeerJS server surface over real sockets (rtchub.peerjs), with a raw WebSocket client.

These pin the wire behaviour the ``peerjs`` npm client relies on; the browser
tests (tests/e2e/test_peerjs_browser.py) run that very client against it.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import aiohttp
import pytest

from rtchub.app import RtcHub
from tests.conftest import eventually
from tests.redis_fixture import redis_server  # noqa: F401

pytestmark = pytest.mark.timeout(30)


class PeerJs:
    """What a PeerJS client does on the wire: one WebSocket at {path}/peerjs."""

    def __init__(self, app: RtcHub | str, peer_id: str, *, key: str = "peerjs", token: str = "tok",
                 path: str = "/peerjs") -> None:
        base = app if isinstance(app, str) else f"ws://127.0.0.1:{app.port}"
        self.url = f"{base}{path}/peerjs?key={key}&id={peer_id}&token={token}&version=1.5.5"
        self.id = peer_id
        self.got: list[dict[str, Any]] = []
        self.http = aiohttp.ClientSession()
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.task: asyncio.Task[None] | None = None
        self.closed = asyncio.Event()

    async def connect(self, expect: str | None = "OPEN") -> PeerJs:
        self.ws = await self.http.ws_connect(self.url)
        self.task = asyncio.get_running_loop().create_task(self._read())
        if expect:
            await self.wait(expect)
        return self

    async def _read(self) -> None:
        assert self.ws is not None
        async for frame in self.ws:
            if frame.type == aiohttp.WSMsgType.TEXT:
                self.got.append(json.loads(frame.data))
        self.closed.set()

    async def send(self, msg: dict[str, Any]) -> None:
        assert self.ws is not None
        await self.ws.send_str(json.dumps(msg))

    def of(self, mtype: str) -> list[dict[str, Any]]:
        return [m for m in self.got if m.get("type") == mtype]

    async def wait(self, mtype: str, count: int = 1, timeout: float = 5.0) -> dict[str, Any]:
        await eventually(lambda: len(self.of(mtype)) >= count, timeout)
        return self.of(mtype)[count - 1]

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.task is not None:
            await self.task
        await self.http.close()


async def test_open_relay_with_src_set_by_the_server(make_server: Any) -> None:
    app = await make_server()
    a = await PeerJs(app, "alice").connect()
    b = await PeerJs(app, "bob").connect()
    await a.send({"type": "HEARTBEAT"})
    # A forged src is replaced by the sender's real id.
    await a.send({"type": "OFFER", "dst": "bob", "src": "mallory",
                  "payload": {"sdp": {"type": "offer", "sdp": "v=0"}, "connectionId": "dc_1",
                              "type": "data"}})
    offer = await b.wait("OFFER")
    assert offer == {"type": "OFFER", "src": "alice", "dst": "bob",
                     "payload": {"sdp": {"type": "offer", "sdp": "v=0"}, "connectionId": "dc_1",
                                 "type": "data"}}
    await b.send({"type": "ANSWER", "dst": "alice", "payload": {"connectionId": "dc_1"}})
    await b.send({"type": "CANDIDATE", "dst": "alice", "payload": {"candidate": {"c": 1}}})
    assert (await a.wait("ANSWER"))["src"] == "bob"
    assert (await a.wait("CANDIDATE"))["payload"] == {"candidate": {"c": 1}}
    await a.send({"type": "LEAVE", "dst": "bob"})
    assert (await b.wait("LEAVE"))["src"] == "alice"
    # Only PeerJS messages reach a PeerJS client: no welcome, room-info or user-joined.
    assert {m["type"] for m in a.got} == {"OPEN", "ANSWER", "CANDIDATE"}
    assert app.hub.rooms["peerjs:peerjs"].members.keys() == {"alice", "bob"}
    # The same metrics as every session: PeerJS connections and their relayed signals.
    async with aiohttp.ClientSession() as http, http.get(app.url + "/metrics") as r:
        text = await r.text()
    assert 'rtchub_connections{transport="peerjs"} 2.0' in text
    assert 'rtchub_messages_received_total{type="signal"} 4.0' in text
    await a.close()
    await b.close()


async def test_id_taken_and_reconnect_with_the_same_token(make_server: Any) -> None:
    app = await make_server()
    a = await PeerJs(app, "alice", token="t1").connect()
    thief = await PeerJs(app, "alice", token="other").connect(expect="ID-TAKEN")
    assert thief.of("ID-TAKEN")[0]["payload"]["msg"] == "ID is taken"
    await asyncio.wait_for(thief.closed.wait(), 5)
    # The holder is untouched.
    b = await PeerJs(app, "bob").connect()
    await b.send({"type": "OFFER", "dst": "alice", "payload": {"n": 1}})
    await a.wait("OFFER")
    # PeerJS's peer.reconnect(): same id and token take the peer over.
    again = await PeerJs(app, "alice", token="t1").connect()
    await asyncio.wait_for(a.closed.wait(), 5)
    await b.send({"type": "OFFER", "dst": "alice", "payload": {"n": 2}})
    assert (await again.wait("OFFER"))["payload"] == {"n": 2}
    for p in (thief, again, b, a):
        await p.close()


async def test_invalid_key_and_missing_parameters(make_server: Any) -> None:
    app = await make_server()
    bad = await PeerJs(app, "alice", key="nope").connect(expect="INVALID-KEY")
    assert bad.of("INVALID-KEY")[0]["payload"]["msg"] == "Invalid key provided"
    await asyncio.wait_for(bad.closed.wait(), 5)
    none = PeerJs(app, "x")
    none.url = f"ws://127.0.0.1:{app.port}/peerjs/peerjs?key=peerjs&token=t"
    await none.connect(expect="ERROR")
    assert "No id, token, or key" in none.of("ERROR")[0]["payload"]["msg"]
    assert "peerjs:peerjs" not in app.hub.rooms
    for p in (bad, none):
        await p.close()


async def test_queued_until_the_peer_connects(make_server: Any) -> None:
    app = await make_server()
    a = await PeerJs(app, "alice").connect()
    await a.send({"type": "OFFER", "dst": "late", "payload": {"n": 1}})
    await a.send({"type": "CANDIDATE", "dst": "late", "payload": {"n": 2}})
    await eventually(lambda: len(app.peerjs.queue) == 2)
    late = await PeerJs(app, "late").connect()
    await late.wait("CANDIDATE")
    assert [(m["type"], m["src"], m["payload"]) for m in late.got[1:]] == [
        ("OFFER", "alice", {"n": 1}), ("CANDIDATE", "alice", {"n": 2})]
    assert a.of("EXPIRE") == []
    await a.close()
    await late.close()


async def test_expire_when_the_peer_never_connects(make_server: Any) -> None:
    app = await make_server(peerjs_expire_timeout=0.5)
    a = await PeerJs(app, "alice").connect()
    await a.send({"type": "OFFER", "dst": "ghost", "payload": {"n": 1}})
    await a.send({"type": "CANDIDATE", "dst": "ghost", "payload": {"n": 2}})
    expire = await a.wait("EXPIRE")
    assert expire == {"type": "EXPIRE", "src": "ghost", "dst": "alice"}
    await asyncio.sleep(0.6)
    assert len(a.of("EXPIRE")) == 1  # one notice per sender, and the queue is gone
    assert len(app.peerjs.queue) == 0
    # LEAVE to an absent peer is dropped, never queued.
    await a.send({"type": "LEAVE", "dst": "ghost"})
    await a.send({"type": "HEARTBEAT"})
    await asyncio.sleep(0.1)
    assert len(app.peerjs.queue) == 0
    await a.close()


async def test_http_id_and_discovery(make_server: Any) -> None:
    off = await make_server()
    on = await make_server(peerjs_discovery=True, peerjs_path="/rtc/p", peerjs_key="app1")
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{off.url}/peerjs/peerjs/id?ts=1") as r:
            assert r.status == 200 and r.content_type == "text/html"
            uuid.UUID(await r.text())
        async with http.get(f"{off.url}/peerjs/peerjs/peers") as r:
            assert r.status == 401
        async with http.get(f"{off.url}/peerjs") as r:
            assert (await r.json())["name"].startswith("PeerJS Server")
        p = await PeerJs(on, "zed", key="app1", path="/rtc/p").connect()
        async with http.get(f"{on.url}/rtc/p/app1/peers") as r:
            assert r.status == 200 and await r.json() == ["zed"]
        async with http.get(f"{on.url}/peerjs/peerjs/id") as r:
            assert r.status == 404  # moved to /rtc/p
        async with http.get(f"{off.url}/peerjs/peerjs/id",
                            headers={"Origin": "https://evil.example"}) as r:
            assert r.status == 403
        await p.close()


async def test_origin_checked_before_the_upgrade(make_server: Any) -> None:
    app = await make_server()
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
            await http.ws_connect(f"ws://127.0.0.1:{app.port}/peerjs/peerjs?key=peerjs&id=a&token=t",
                                  headers={"Origin": "https://evil.example"})
        assert exc.value.status == 403


async def test_peerjs_off(make_server: Any) -> None:
    app = await make_server(peerjs_path="")
    async with aiohttp.ClientSession() as http, http.get(f"{app.url}/peerjs/peerjs/id") as r:
        assert r.status == 404


async def test_jwt_in_the_token_parameter(make_server: Any) -> None:
    from rtchub.auth.tokens import mint

    secret = "peerjs-test-secret-0123456789abcdef"
    app = await make_server(auth="jwt", jwt_secret=secret)
    a = await PeerJs(app, "alice", token=mint(sub="alice", key=secret)).connect()
    b = await PeerJs(app, "bob", token=mint(sub="bob", key=secret)).connect()
    await a.send({"type": "OFFER", "dst": "bob", "payload": {"n": 1}})
    assert (await b.wait("OFFER"))["src"] == "alice"
    # PeerJS's own random token is no JWT; a JWT for someone else is not this id.
    plain = await PeerJs(app, "carol", token="x7d2k").connect(expect="ERROR")
    assert plain.of("ERROR")[0]["payload"]["msg"].startswith("Invalid token")
    other = await PeerJs(app, "carol", token=mint(sub="bob", key=secret)).connect(expect="ERROR")
    assert other.of("ERROR")[0]["payload"]["msg"] == "the token is for another id"
    # The token's room grants hold: a token without the key's room is refused.
    denied = await PeerJs(app, "dave", token=mint(sub="dave", key=secret, rooms=["other"])
                          ).connect(expect="ERROR")
    assert "peerjs:peerjs" in denied.of("ERROR")[0]["payload"]["msg"]
    assert set(app.hub.rooms["peerjs:peerjs"].members) == {"alice", "bob"}
    for p in (a, b, plain, other, denied):
        await p.close()


async def test_key_room_holds_peerjs_max_peers_not_max_room_members(make_server: Any) -> None:
    app = await make_server(max_room_members=2, peerjs_max_peers=3, max_handshakes_per_ip=0)
    peers = [await PeerJs(app, f"p{i}").connect() for i in range(3)]
    full = await PeerJs(app, "p3").connect(expect="ERROR")
    assert full.of("ERROR")[0]["payload"]["msg"] == "Server has reached its concurrent user limit"
    for p in (*peers, full):
        await p.close()


async def test_queued_message_reaches_a_peer_that_connects_on_another_node(
        make_server: Any, redis_server: Any) -> None:  # noqa: F811
    apps = [await make_server(broker=redis_server.url, node_id=f"q{i}", node_ttl=1.0)
            for i in range(2)]
    for app in apps:
        await eventually(lambda app=app: app.cluster is not None and app.cluster.ready)
    a = await PeerJs(apps[0], "alice").connect()
    await a.send({"type": "OFFER", "dst": "bob", "payload": {"n": 1}})
    await eventually(lambda: len(apps[0].peerjs.queue) == 1)
    b = await PeerJs(apps[1], "bob").connect()
    offer = await b.wait("OFFER")
    assert offer == {"type": "OFFER", "src": "alice", "dst": "bob", "payload": {"n": 1}}
    await b.send({"type": "ANSWER", "dst": "alice", "payload": {"n": 2}})
    assert (await a.wait("ANSWER"))["src"] == "bob"
    # Discovery sees both nodes' peers (the cluster's directory).
    assert await apps[1].peerjs.peer_ids() == ["alice", "bob"]
    # An id is taken cluster-wide.
    thief = await PeerJs(apps[0], "bob", token="other").connect(expect="ID-TAKEN")
    for p in (a, b, thief):
        await p.close()
