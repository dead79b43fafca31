"""Sessions that survive the network: grace period, resume, acks, exactly-once."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import random
import time
from typing import Any

import aiohttp
import pytest

from rtchub.client import Client
from tests.conftest import eventually


def server_side_abort(app: Any) -> bool:
    """Drop one random WebSocket from the server's side, with no close frame."""
    endpoints = [ep for ep in app.liveness.endpoints if getattr(ep, "ws", None) is not None]
    if not endpoints:
        return False
    ep = random.choice(endpoints)
    ws = ep.ws
    transport = getattr(ws, "underlying_transport", None)
    if transport is not None:
        transport.abort()
        return True
    return False


async def test_user_back_within_grace_is_never_reported_left(make_server: Any) -> None:
    app = await make_server(grace_period=5)
    a, b = Client(app.url), Client(app.url)
    await a.connect()
    await b.connect()
    await a.join("r", "alice")
    await b.join("r", "bob")
    await a.recv_type("user-joined")
    for _ in range(3):
        await b.abort()
        await a.send({"type": "signal", "roomId": "r", "to": "bob", "data": "while away"})
        await eventually(lambda: b.state == "resumed", timeout=5)
        assert (await b.recv_type("signal"))["data"] == "while away"
    await asyncio.sleep(0.3)
    assert not [m for m in a.pending() if m["type"] == "user-left"]
    await a.close()
    await b.close()


async def test_user_gone_is_reported_disconnected_once(make_server: Any) -> None:
    app = await make_server(grace_period=0.5)
    a, b = Client(app.url), Client(app.url, reconnect=False)
    await a.connect()
    await b.connect()
    await a.join("r", "alice")
    await b.join("r", "bob")
    await a.recv_type("user-joined")
    await b.abort()
    left = await a.recv_type("user-left", timeout=5)
    assert left["userId"] == "bob" and left["reason"] == "disconnected"
    await asyncio.sleep(1.0)
    assert not [m for m in a.pending() if m["type"] == "user-left"]
    await a.close()
    await b.close()


async def test_overflow_gives_session_expired_and_the_sdk_rejoins(make_server: Any) -> None:
    app = await make_server(grace_period=10, resume_buffer_messages=5, max_msg_rate=0, max_msg_burst=0)
    a = Client(app.url)
    await a.connect()
    await a.join("r", "alice")
    # A raw client that resumes by hand, to see the server's exact answer.
    http = aiohttp.ClientSession()
    ws = await http.ws_connect(app.ws_url)
    welcome = json.loads((await ws.receive()).data)
    await ws.send_str(json.dumps({"type": "join", "roomId": "r", "userId": "bob"}))
    last = json.loads((await ws.receive()).data)["seq"]
    ws._response.connection.transport.abort()  # noqa: SLF001 - a network failure
    await eventually(lambda: app.hub.sessions[welcome["sessionId"]].sink is None)
    for i in range(10):
        await a.send({"type": "signal", "roomId": "r", "to": "bob", "data": i})
    await eventually(lambda: app.hub.sessions[welcome["sessionId"]].seq >= last + 10)
    ws2 = await http.ws_connect(app.ws_url)
    assert json.loads((await ws2.receive()).data)["type"] == "welcome"
    await ws2.send_str(json.dumps({"type": "resume", "sessionId": welcome["sessionId"],
                                   "lastSeq": last, "id": "r"}))
    answer = json.loads((await ws2.receive()).data)
    assert answer["type"] == "error" and answer["code"] == "session-expired" and answer["id"] == "r"
    # Not a partial replay: nothing else arrives.
    with pytest.raises(asyncio.TimeoutError):
        await ws2.receive(0.3)
    await http.close()
    await a.close()


async def test_sdk_rejoins_when_the_session_is_gone(make_server: Any) -> None:
    app = await make_server(grace_period=0)  # a dropped session ends at once
    a, b = Client(app.url), Client(app.url)
    await a.connect()
    await b.connect()
    await a.join("r", "alice")
    await b.join("r", "bob")
    await b.abort()
    await eventually(lambda: b.state == "rejoined", timeout=10)
    await eventually(lambda: "bob" in app.hub.rooms["r"].members, timeout=5)
    await a.send({"type": "signal", "roomId": "r", "to": "bob", "data": "again"})
    assert (await b.recv_type("signal"))["data"] == "again"
    await a.close()
    await b.close()


async def test_second_resume_closes_the_older_transport_with_4009(server: Any) -> None:
    http = aiohttp.ClientSession()
    first = await http.ws_connect(server.ws_url)
    welcome = json.loads((await first.receive()).data)
    second = await http.ws_connect(server.ws_url)
    await second.receive()
    await second.send_str(json.dumps({"type": "resume", "sessionId": welcome["sessionId"], "lastSeq": 0}))
    resumed = json.loads((await second.receive()).data)
    assert resumed["type"] == "resumed" and resumed["sessionId"] == welcome["sessionId"]
    closing = await first.receive(5)
    assert closing.type == aiohttp.WSMsgType.CLOSE and first.close_code == 4009
    await http.close()


async def test_resend_after_resume_is_not_delivered_twice(make_server: Any) -> None:
    app = await make_server(grace_period=5)
    a, b = Client(app.url), Client(app.url)
    await a.connect()
    await b.connect()
    await a.join("r", "alice")
    await b.join("r", "bob")
    msg = {"type": "signal", "roomId": "r", "to": "bob", "data": "once", "id": "m1"}
    await a.request(dict(msg))
    # Pretend the ack was lost: the SDK would resend the same id after a resume.
    a.unacked["m1"] = msg
    await a.abort()
    await eventually(lambda: a.state == "resumed" and not a.unacked, timeout=5)
    await a.send({"type": "signal", "roomId": "r", "to": "bob", "data": "after"})
    got = [(await b.recv_type("signal"))["data"], (await b.recv_type("signal"))["data"]]
    assert got == ["once", "after"]
    await a.close()
    await b.close()


@pytest.mark.e2e
async def test_chaos_exactly_once_in_order(make_server: Any) -> None:
    """200 clients in pairs send numbered messages for 60 s while connections are cut.

    About once a second a random connection is aborted, alternately from the
    server's side and the client's side, with no close frame. At the end every
    message was delivered exactly once and in order, and nobody saw a peer leave.
    """
    duration = float(os.environ.get("RTCHUB_CHAOS_SECONDS", "60"))
    pairs = 100
    app = await make_server(grace_period=30, max_msg_rate=0, max_msg_burst=0,
                            max_handshakes_per_ip=0, max_connections_per_ip=0, max_joins_per_second=0)
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    clients: list[Client] = []
    received: dict[str, list[int]] = {}
    user_left: list[dict[str, Any]] = []
    sent: dict[str, int] = {}

    async def make(user: str) -> Client:
        c = Client(app.url, session=http, backoff_base=0.2, backoff_cap=2.0)
        await c.connect()
        received[user] = []
        c.on("signal", lambda m, u=user: received[u].append(m["data"]))
        c.on("user-left", user_left.append)
        await c.join(f"room-{user[1:]}", user)
        return c

    for i in range(pairs):
        clients.append(await make(f"a{i}"))
        clients.append(await make(f"b{i}"))

    stop = time.monotonic() + duration

    async def sender(c: Client, me: str) -> None:
        other = ("b" if me[0] == "a" else "a") + me[1:]
        n = 0
        while time.monotonic() < stop:
            await c.send({"type": "signal", "roomId": f"room-{me[1:]}", "to": other, "data": n})
            n += 1
            await asyncio.sleep(random.uniform(0.05, 0.15))
        sent[me] = n

    cuts = {"server": 0, "client": 0}

    async def chaos() -> None:
        side = 0
        while time.monotonic() < stop:
            await asyncio.sleep(random.uniform(0.7, 1.3))
            if side % 2 == 0:
                cuts["server"] += server_side_abort(app)
            else:
                await random.choice(clients).abort()
                cuts["client"] += 1
            side += 1

    users = [c.user_id or "" for c in clients]
    await asyncio.gather(chaos(), *(sender(c, u) for c, u in zip(clients, users, strict=True)))

    # Let every resend and replay land.
    def settled() -> bool:
        return all(not c.unacked for c in clients) and all(
            len(received[("b" if u[0] == "a" else "a") + u[1:]]) >= sent[u] for u in users)

    try:
        await eventually(settled, timeout=30, step=0.1)
    except AssertionError:
        stuck = [(c.user_id, c.state, len(c.unacked)) for c in clients if c.unacked]
        print(f"\nnot settled: {len(stuck)} clients with un-acked messages: {stuck[:10]}")
    total_sent = sum(sent.values())
    delivered = duplicated = lost = out_of_order = 0
    for u in users:
        other = ("b" if u[0] == "a" else "a") + u[1:]
        got = received[other]
        delivered += len(got)
        duplicated += len(got) - len(set(got))
        lost += len(set(range(sent[u])) - set(got))
        out_of_order += got != sorted(got)
    print(f"\nchaos: sent={total_sent} delivered={delivered} duplicated={duplicated} lost={lost} "
          f"out_of_order={out_of_order} cuts={cuts} user_left={len(user_left)} "
          f"states={collections.Counter(s for c in clients for s in c.states)}")
    left_during_chaos = list(user_left)
    for c in clients:
        await c.close()
    await http.close()
    assert cuts["server"] >= duration / 3 and cuts["client"] >= duration / 3
    assert total_sent > 800 * duration
    assert lost == 0 and duplicated == 0 and out_of_order == 0
    assert delivered == total_sent
    assert left_during_chaos == []
