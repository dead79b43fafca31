"""Integration: the signaling protocol over real WebSockets on a free port."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import aiohttp
import pytest
import websockets

from rtchub.app import RtcHub
from tests.conftest import Raw, eventually, joined


async def test_tutorial_client_works_unchanged(server: RtcHub) -> None:
    """The plain tutorial flow, no subprotocol, no welcome handling, unknown fields."""
    url = f"ws://127.0.0.1:{server.port}/signaling"
    async with websockets.connect(url) as a, websockets.connect(url) as b:
        async def next_of(ws: Any, mtype: str) -> dict[str, Any]:
            while True:  # a tutorial client ignores types it does not know (welcome)
                msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
                if msg["type"] == mtype:
                    return msg

        await a.send(json.dumps({"type": "join", "roomId": "room1", "userId": "alice", "foo": 1}))
        info = await next_of(a, "room-info")
        assert info["roomId"] == "room1" and info["users"] == []
        await b.send(json.dumps({"type": "join", "roomId": "room1", "userId": "bob"}))
        assert (await next_of(b, "room-info"))["users"] == ["alice"]
        assert (await next_of(a, "user-joined"))["userId"] == "bob"
        await a.send(json.dumps({"type": "offer", "roomId": "room1", "to": "bob",
                                 "sdp": {"type": "offer", "sdp": "v=0"}, "unknownField": True}))
        offer = await next_of(b, "offer")
        assert offer["from"] == "alice" and offer["sdp"]["sdp"] == "v=0"
        await b.send(json.dumps({"type": "answer", "roomId": "room1", "to": "alice", "sdp": "v=0 a"}))
        assert (await next_of(a, "answer"))["from"] == "bob"
        cand = {"candidate": "candidate:1 1 udp 1 127.0.0.1 5000 typ host", "sdpMid": "0",
                "sdpMLineIndex": 0}
        await b.send(json.dumps({"type": "candidate", "roomId": "room1", "to": "alice",
                                 "candidate": cand}))
        assert (await next_of(a, "candidate"))["candidate"] == cand
        await a.send(json.dumps({"type": "ping", "timestamp": 42}))
        assert (await next_of(a, "pong"))["timestamp"] == 42
        await b.send(json.dumps({"type": "leave", "roomId": "room1"}))
        left = await next_of(a, "user-left")
        assert left["userId"] == "bob" and left["reason"] == "left"


@pytest.mark.parametrize("protocol", [None, "rtchub.v1.json", "webrtc-signaling"])
@pytest.mark.parametrize("path", ["/ws", "/signaling"])
async def test_subprotocols_and_paths(server: RtcHub, protocol: str | None, path: str) -> None:
    kw = {"protocols": (protocol,)} if protocol else {}
    c = await Raw.open(server, path, **kw)
    try:
        assert c.ws.protocol == protocol
        welcome = await c.expect("welcome")
        assert welcome["seq"] == 0 and welcome["sessionId"] and welcome["heartbeat"] > 0
        assert welcome["server"]["name"] == "rtchub"
    finally:
        await c.close()


async def test_every_message_carries_consecutive_seq(server: RtcHub) -> None:
    a = await joined(server, "r", "alice")
    b = await joined(server, "r", "bob")
    seqs = []
    await a.expect("user-joined")
    for i in range(20):
        await a.send({"type": "signal", "roomId": "r", "to": "bob", "data": i, "id": i})
    for _ in range(20):
        seqs.append((await b.expect("signal"))["seq"])
    assert seqs == list(range(2, 22))
    for c in (a, b):
        await c.close()


async def test_message_room_broadcast_to_and_echo(server: RtcHub) -> None:
    a = await joined(server, "r", "alice")
    b = await joined(server, "r", "bob")
    c = await joined(server, "r", "carol")
    await a.expect("user-joined")
    await a.expect("user-joined")
    await b.expect("user-joined")
    await a.send({"type": "message", "roomId": "r", "data": {"text": "hi all"}})
    assert (await b.expect("message"))["data"] == {"text": "hi all"}
    assert (await c.expect("message"))["from"] == "alice"
    await a.send({"type": "message", "roomId": "r", "content": "just carol", "to": "carol", "echo": True})
    assert (await c.expect("message"))["content"] == "just carol"
    assert (await a.expect("message"))["content"] == "just carol"
    await a.send({"type": "ping", "id": "p"})
    assert (await a.expect("pong"))["id"] == "p"
    await b.send({"type": "ping", "id": "p2"})
    # b saw nothing of the direct message: its next frame is its own pong.
    assert (await b.expect("pong"))["id"] == "p2"
    for x in (a, b, c):
        await x.close()


async def test_ack_for_messages_with_id(server: RtcHub) -> None:
    a = await joined(server, "r", "alice")
    b = await joined(server, "r", "bob")
    await a.expect("user-joined")
    for mtype, payload in (("offer", {"sdp": "x"}), ("answer", {"sdp": "y"}),
                           ("candidate", {"candidate": "c"}), ("signal", {"data": 1})):
        await a.send({"type": mtype, "roomId": "r", "to": "bob", "id": mtype, **payload})
        ack = await a.expect("ack")
        assert ack["id"] == mtype and set(ack) == {"seq", "type", "id"}
        assert (await b.expect(mtype))["from"] == "alice"
    for x in (a, b):
        await x.close()


async def test_spoofed_from_is_replaced(server: RtcHub) -> None:
    a = await joined(server, "r", "alice")
    b = await joined(server, "r", "bob")
    await a.send({"type": "offer", "roomId": "r", "to": "bob", "sdp": "x", "from": "bob"})
    assert (await b.expect("offer"))["from"] == "alice"
    await a.send({"type": "message", "roomId": "r", "data": 1, "from": "admin"})
    assert (await b.expect("message"))["from"] == "alice"
    for x in (a, b):
        await x.close()


@pytest.mark.parametrize("frame, code", [
    ("{not json", "invalid-json"),
    ("[1, 2]", "invalid-message"),
    ('{"type": 5}', "invalid-message"),
    ('{"type": "teleport", "id": 3}', "unknown-type"),
    ('{"type": "offer", "roomId": "r", "to": "b", "sdp": "x", "id": "q"}', "not-in-room"),
    ('{"type": "join", "roomId": "has space"}', "invalid-message"),
    ('{"type": "join", "roomId": "r", "userId": ""}', "invalid-message"),
    ('{"type": "message", "roomId": "lobby"}', "not-in-room"),
])
async def test_bad_messages_get_errors_and_connection_stays(server: RtcHub, frame: str, code: str) -> None:
    c = await Raw.open(server)
    await c.expect("welcome")
    await c.send(frame)
    err = await c.expect("error")
    assert err["code"] == code and err["message"]
    if '"id"' in frame:
        assert err["id"] == json.loads(frame)["id"]
    await c.send({"type": "ping", "id": 1})
    assert (await c.expect("pong"))["id"] == 1
    await c.close()


async def test_invalid_utf8_binary_frame(server: RtcHub) -> None:
    c = await Raw.open(server)
    await c.expect("welcome")
    await c.ws.send_bytes(b'{"type": "ping", "x": "\xff\xfe"}')
    assert (await c.expect("error"))["code"] == "invalid-json"
    await c.send({"type": "ping"})
    await c.expect("pong")
    await c.close()


async def test_room_errors(make_server: Any) -> None:
    app = await make_server(max_room_members=2)
    a = await joined(app, "r", "alice")
    b = await joined(app, "r", "bob")
    c = await Raw.open(app)
    await c.expect("welcome")
    await c.send({"type": "join", "roomId": "r", "userId": "alice", "id": 1})
    err = await c.expect("error")
    assert err["code"] == "user-id-taken" and err["id"] == 1
    await c.send({"type": "join", "roomId": "r", "userId": "carol", "id": 2})
    err = await c.expect("error")
    assert err["code"] == "room-full" and err["id"] == 2
    await c.send({"type": "join", "roomId": "other", "userId": "carol"})
    await c.expect("room-info")
    await c.send({"type": "signal", "roomId": "other", "to": "alice", "data": 1})
    assert (await c.expect("error"))["code"] == "peer-not-found"
    for x in (a, b, c):
        await x.close()


async def test_too_big_message_closes_1009(make_server: Any) -> None:
    app = await make_server(max_message_size=1024)
    a = await joined(app, "r", "alice")
    b = await joined(app, "r", "bob")
    await a.send({"type": "signal", "roomId": "r", "to": "bob", "data": "x" * 2000})
    closed = await a.recv()
    while closed["type"] != "_closed":
        closed = await a.recv()
    assert a.ws.close_code == 1009
    # The server and the other user are fine.
    c = await joined(app, "r", "carol")
    assert (await b.recv())["type"] in ("user-left", "user-joined")
    for x in (b, c):
        await x.close()


async def test_rate_limit_errors_then_policy_close(make_server: Any) -> None:
    app = await make_server(max_msg_rate=5, max_msg_burst=10, abuse_strikes=20)
    c = await Raw.open(app)
    await c.expect("welcome")
    for i in range(60):
        await c.send({"type": "ping", "id": i})
    codes: list[str] = []
    while True:
        msg = await c.recv()
        if msg["type"] == "_closed":
            break
        codes.append(msg.get("code", msg["type"]))
    assert codes.count("pong") >= 10 and "rate-limited" in codes
    assert c.ws.close_code == 1008
    await c.close()


async def test_default_rate_limit_allows_an_ice_burst(server: RtcHub) -> None:
    """A real ICE exchange sends dozens of candidates at once: the default must allow it."""
    a = await joined(server, "r", "alice")
    b = await joined(server, "r", "bob")
    for i in range(60):
        await a.send({"type": "candidate", "roomId": "r", "to": "bob", "candidate": f"c{i}"})
    got = [await b.expect("candidate") for _ in range(60)]
    assert [g["candidate"] for g in got] == [f"c{i}" for i in range(60)]
    for x in (a, b):
        await x.close()


async def test_dead_peer_times_out(make_server: Any) -> None:
    app = await make_server(heartbeat=0.3, heartbeat_timeout=0.3, grace_period=0)
    a = await joined(app, "r", "alice")
    # autoping=False: pings are queued for the app and never answered, like a dead peer.
    dead = await joined(app, "r", "zombie", autoping=False)
    await a.expect("user-joined")
    left = await a.expect("user-left", timeout=5)
    assert left["userId"] == "zombie" and left["reason"] == "timeout"
    for x in (a, dead):
        await x.close()


async def test_live_peer_survives_heartbeats(make_server: Any) -> None:
    """A client that answers protocol pings in the background (websockets does) stays."""
    app = await make_server(heartbeat=0.2, heartbeat_timeout=0.2, grace_period=0)
    async with websockets.connect(app.ws_url) as a, websockets.connect(app.ws_url) as b:
        for ws, user in ((a, "alice"), (b, "bob")):
            await ws.send(json.dumps({"type": "join", "roomId": "r", "userId": user}))
        await asyncio.sleep(1.5)  # several heartbeat periods without app traffic
        await b.send(json.dumps({"type": "signal", "roomId": "r", "to": "alice", "data": "still here"}))
        types = []
        while "signal" not in types:
            types.append(json.loads(await asyncio.wait_for(a.recv(), 5))["type"])
        assert "user-left" not in types


async def test_clean_close_gives_user_left_at_once(server: RtcHub) -> None:
    a = await joined(server, "r", "alice")
    b = await joined(server, "r", "bob")
    await a.expect("user-joined")
    await b.close()
    left = await a.expect("user-left", timeout=2)
    assert left["reason"] == "left"
    await a.close()


async def test_healthz(server: RtcHub) -> None:
    async with aiohttp.ClientSession() as http, http.get(server.url + "/healthz") as r:
        assert r.status == 200 and (await r.json())["status"] == "ok"


async def test_compression_path_speaks_the_same_protocol(make_server: Any) -> None:
    app = await make_server(compression=True)
    a = await joined(app, "r", "alice", compress=15)
    b = await joined(app, "r", "bob", compress=15)
    assert a.ws.compress == 15  # permessage-deflate negotiated (aiohttp path)
    await a.expect("user-joined")
    await a.send({"type": "offer", "roomId": "r", "to": "bob", "sdp": "x" * 500, "from": "eve"})
    got = await b.expect("offer")
    assert got["from"] == "alice" and got["sdp"] == "x" * 500
    await b.close()
    assert (await a.expect("user-left"))["reason"] == "left"
    await a.close()


async def test_concurrency_500_clients_250_rooms(make_server: Any) -> None:
    """Offers, answers and candidates at once in 250 rooms: every message to the right peer.

    All 500 connections come from 127.0.0.1, so the per-IP handshake limit is lifted.
    """
    server = await make_server(max_handshakes_per_ip=0, max_connections_per_ip=0)
    n_rooms = 250
    n_cand = 5
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    received: dict[str, list[dict[str, Any]]] = {}

    async def peer(room: str, me: str, other: str, offerer: bool) -> None:
        ws = await http.ws_connect(server.ws_url)
        got = received[me] = []
        await ws.send_str(json.dumps({"type": "join", "roomId": room, "userId": me}))
        expected = 1 + n_cand  # (offer or answer) + candidates
        sent_offer = False
        while len(got) < expected or not sent_offer:
            msg = json.loads((await ws.receive(20)).data)
            t = msg["type"]
            if t == "room-info":
                if offerer:  # joined second: the answerer is already there
                    assert msg["users"] == [other]
                    await ws.send_str(json.dumps({"type": "offer", "roomId": room, "to": other,
                                                  "sdp": me}))
                sent_offer = True
            elif t in ("offer", "answer", "candidate"):
                got.append(msg)
                if t == "offer":
                    await ws.send_str(json.dumps({"type": "answer", "roomId": room, "to": other,
                                                  "sdp": me}))
                if t in ("offer", "answer"):
                    for i in range(n_cand):
                        await ws.send_str(json.dumps({"type": "candidate", "roomId": room, "to": other,
                                                      "candidate": f"{me}-{i}"}))
        await asyncio.sleep(0.2)
        await ws.close()

    # Answerers join first (so offerers see user-joined), all 250 rooms at once.
    answerers = [asyncio.ensure_future(peer(f"room-{r}", f"a{r}", f"b{r}", offerer=False))
                 for r in range(n_rooms)]
    await eventually(lambda: len(server.hub.rooms) == n_rooms, timeout=20)
    offerers = [peer(f"room-{r}", f"b{r}", f"a{r}", offerer=True) for r in range(n_rooms)]
    random.shuffle(offerers)
    await asyncio.wait_for(asyncio.gather(*answerers, *offerers), 60)
    await http.close()
    assert len(received) == 2 * n_rooms
    for user, msgs in received.items():
        other = ("b" if user[0] == "a" else "a") + user[1:]
        assert all(m["from"] == other for m in msgs), (user, msgs)
        kinds = sorted(m["type"] for m in msgs)
        assert kinds == sorted((["answer"] if user[0] == "b" else ["offer"]) + ["candidate"] * n_cand)
        assert sorted(m["candidate"] for m in msgs if m["type"] == "candidate") == \
            [f"{other}-{i}" for i in range(n_cand)]


async def test_picows_connection_log_gets_the_real_socket_when_enabled(
        server: RtcHub, caplog: pytest.LogCaptureFixture) -> None:
    """With picows' INFO log off its per-connection socket reads are skipped
    (rtchub.transports.coalesce._QuietSocket); turned on, it logs real values."""
    import logging

    with caplog.at_level(logging.INFO, logger="picows.server"):
        a = await joined(server, "logged", "ann")
        b = await joined(server, "logged", "bob")
        await a.expect("user-joined")
        await b.send({"type": "message", "roomId": "logged", "data": 1})
        assert (await a.expect("message"))["data"] == 1
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("picows")]
    accepted = [line for line in lines if line.startswith("New connection accepted")]
    assert len(accepted) >= 2, lines
    # Real kernel buffer sizes, not the quiet stand-in's zeros.
    assert "recvbuf=0" not in accepted[0] and "127.0.0.1" in accepted[0], accepted[0]
    await a.close()
    await b.close()
    # Off again: connections still work with the stand-in.
    c = await joined(server, "quiet", "cid")
    await c.send({"type": "ping"})
    assert (await c.expect("pong"))["type"] == "pong"
    await c.close()
