"""Several nodes as one (issue 7): real servers on free ports, a real redis-server.

Every test runs on both engines where it makes sense: ``redis`` (a private
redis-server from tests/redis_fixture.py) and ``memory://NAME`` (hubs of this
process sharing an in-memory bus, the same cluster code without Redis).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from rtchub.app import RtcHub
from rtchub.client import Client
from tests.conftest import ServerProcess, eventually
from tests.redis_fixture import RedisServer, redis_server  # noqa: F401

_names = itertools.count()

#: Fast failure detection for tests: heartbeat every ~0.33 s, dead after 1 s.
FAST = {"node_ttl": 1.0, "max_msg_rate": 0, "max_joins_per_second": 0}


class Peer:
    """A raw WebSocket client that records every frame it receives, in order."""

    def __init__(self, app: RtcHub, name: str) -> None:
        self.app = app
        self.name = name
        self.got: list[dict[str, Any]] = []
        self.http: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.task: asyncio.Task[None] | None = None
        self.session_id = ""

    async def connect(self) -> Peer:
        self.http = aiohttp.ClientSession()
        self.ws = await self.http.ws_connect(f"ws://127.0.0.1:{self.app.port}/ws")
        self.task = asyncio.get_running_loop().create_task(self._read())
        welcome = await self.wait("welcome")
        self.session_id = welcome["sessionId"]
        return self

    async def _read(self) -> None:
        assert self.ws is not None
        async for frame in self.ws:
            if frame.type == aiohttp.WSMsgType.TEXT:
                self.got.append(json.loads(frame.data))

    async def send(self, msg: dict[str, Any]) -> None:
        assert self.ws is not None
        await self.ws.send_str(json.dumps(msg))

    def of(self, mtype: str, **match: Any) -> list[dict[str, Any]]:
        return [m for m in self.got if m["type"] == mtype
                and all(m.get(k) == v for k, v in match.items())]

    async def wait(self, mtype: str, count: int = 1, timeout: float = 5.0, **match: Any
                   ) -> dict[str, Any]:
        await eventually(lambda: len(self.of(mtype, **match)) >= count, timeout)
        return self.of(mtype, **match)[count - 1]

    async def join(self, room: str, user: str) -> dict[str, Any]:
        await self.send({"type": "join", "roomId": room, "userId": user, "id": f"j-{room}"})
        ack = await self._answer(f"j-{room}")
        assert ack["type"] == "ack", ack
        return self.of("room-info", roomId=room)[-1]

    async def _answer(self, msg_id: Any) -> dict[str, Any]:
        await eventually(lambda: any(m.get("id") == msg_id and m["type"] in ("ack", "error")
                                     for m in self.got))
        return next(m for m in self.got if m.get("id") == msg_id and m["type"] in ("ack", "error"))

    async def request(self, msg: dict[str, Any]) -> dict[str, Any]:
        await self.send(msg)
        return await self._answer(msg["id"])

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.http is not None:
            await self.http.close()
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)

    async def abort(self) -> None:
        """Drop the TCP connection without a close frame (a network failure)."""
        assert self.ws is not None
        conn = self.ws._response.connection  # noqa: SLF001
        assert conn is not None and conn.transport is not None
        conn.transport.abort()
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)
        if self.http is not None:
            await self.http.close()


@pytest.fixture(params=["redis", "memory"])
def broker_url(request: pytest.FixtureRequest) -> str:
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        return server.url
    return f"memory://t{next(_names)}"


@pytest.fixture
async def nodes(make_server: Callable[..., Awaitable[RtcHub]], broker_url: str
                ) -> Callable[..., Awaitable[list[RtcHub]]]:
    async def start(n: int = 3, **overrides: Any) -> list[RtcHub]:
        settings = {**FAST, **overrides}
        apps = [await make_server(broker=broker_url, node_id=f"n{i}-{next(_names)}", **settings)
                for i in range(n)]
        for app in apps:
            assert app.cluster is not None
            await eventually(lambda app=app: app.cluster.ready)
        return apps
    return start


@pytest.fixture
async def peers() -> Any:
    made: list[Peer] = []

    async def connect(app: RtcHub, name: str) -> Peer:
        p = await Peer(app, name).connect()
        made.append(p)
        return p

    yield connect
    for p in made:
        await p.close()


def room_name() -> str:
    return f"room-{next(_names)}"


# --------------------------------------------------------------------------- flow
async def test_full_signaling_flow_across_three_nodes(nodes: Any, peers: Any) -> None:
    apps = await nodes(3)
    room = room_name()
    users = [f"u{i}" for i in range(6)]
    clients = [await peers(apps[i % 3], u) for i, u in enumerate(users)]
    # Sequential joins: each sees exactly the ones before it, and they see it join.
    for i, (c, u) in enumerate(zip(clients, users, strict=True)):
        info = await c.join(room, u)
        assert info["users"] == users[:i], (u, info)
        assert [m["userId"] for m in info["members"]] == users[:i]
    for i, c in enumerate(clients[:-1]):
        await c.wait("user-joined", count=len(users) - 1 - i)
    for i, c in enumerate(clients):
        assert [m["userId"] for m in c.of("user-joined")] == users[i + 1:], c.name

    # Every ordered pair does offer -> answer -> candidate (all cross-node but same-node pairs).
    for a, b in itertools.permutations(range(6), 2):
        src = clients[a]
        for kind, field in (("offer", "sdp"), ("answer", "sdp"), ("candidate", "candidate")):
            await src.send({"type": kind, "roomId": room, "to": users[b],
                            field: f"{kind}:{users[a]}->{users[b]}"})
    for c in clients:
        for kind in ("offer", "answer", "candidate"):
            await c.wait(kind, count=5)
    # A broadcast chat message from each.
    for a, c in enumerate(clients):
        await c.send({"type": "message", "roomId": room, "data": f"hi from {users[a]}"})
    for c in clients:
        await c.wait("message", count=5)
    await asyncio.sleep(0.3)  # anything extra or misrouted would arrive now
    for b, c in enumerate(clients):
        for kind, field in (("offer", "sdp"), ("answer", "sdp"), ("candidate", "candidate")):
            got = c.of(kind)
            assert len(got) == 5, (c.name, kind, got)
            for m in got:  # nothing for the wrong user, sender stamped by the server
                assert m[field] == f"{kind}:{m['from']}->{users[b]}"
        msgs = c.of("message")
        assert sorted(m["from"] for m in msgs) == sorted(u for u in users if u != users[b])
        seqs = [m["seq"] for m in c.got]
        assert seqs == list(range(len(seqs))), "seq is per session, gapless"

    # Relay to someone not in the room: the sender is told, across nodes too.
    err = await clients[0].request({"type": "offer", "roomId": room, "to": "nobody",
                                    "sdp": "x", "id": "bad"})
    assert err["type"] == "error" and err["code"] == "peer-not-found"

    # Leaves: everybody else hears each one exactly once, with reason left.
    for i in range(3):
        ack = await clients[i].request({"type": "leave", "roomId": room, "id": f"l{i}"})
        assert ack["type"] == "ack"
    for i in range(3, 6):
        await clients[i].wait("user-left", count=3)
    await asyncio.sleep(0.2)
    for i, c in enumerate(clients):
        left = c.of("user-left")
        # A member that left hears only the ones leaving before it.
        expected = users[:i] if i < 3 else users[:3]
        assert [m["userId"] for m in left] == expected, (c.name, left)
        assert all(m["reason"] == "left" for m in left)
    # A late joiner on any node sees exactly the members still there.
    late = await peers(apps[1], "late")
    info = await late.join(room, "late")
    assert sorted(info["users"]) == users[3:]


async def test_concurrent_joins_on_all_nodes_never_miss_or_double(nodes: Any, peers: Any) -> None:
    """Joins racing on three nodes: each member learns of every other exactly once."""
    apps = await nodes(3)
    for _round in range(3):
        room = room_name()
        users = [f"c{i}" for i in range(9)]
        clients = [await peers(apps[i % 3], u) for i, u in enumerate(users)]
        await asyncio.gather(*(c.join(room, u) for c, u in zip(clients, users, strict=True)))

        def views_complete(clients: list[Peer] = clients) -> bool:
            return all(len(c.of("room-info")[0]["users"]) + len(c.of("user-joined")) >= 8
                       for c in clients)
        await eventually(views_complete, 5)
        await asyncio.sleep(0.3)
        for c, u in zip(clients, users, strict=True):
            seen = c.of("room-info")[0]["users"] + [m["userId"] for m in c.of("user-joined")]
            assert sorted(seen) == sorted(x for x in users if x != u), (
                u, [(m["type"], m.get("userId"), m.get("users")) for m in c.got])
        for app in apps:
            local = app.hub.rooms[room]
            assert sorted(local.members) == sorted(users)


async def test_user_id_unique_and_capacity_across_nodes(nodes: Any, peers: Any) -> None:
    apps = await nodes(3, max_room_members=3)
    room = room_name()
    a = await peers(apps[0], "a")
    await a.join(room, "alice")
    b = await peers(apps[1], "b")
    err = await b.request({"type": "join", "roomId": room, "userId": "alice", "id": 1})
    assert err["type"] == "error" and err["code"] == "user-id-taken"
    await b.join(room, "bob")
    c = await peers(apps[2], "c")
    await c.join(room, "carol")
    d = await peers(apps[2], "d")
    err = await d.request({"type": "join", "roomId": room, "userId": "dave", "id": 2})
    assert err["type"] == "error" and err["code"] == "room-full"
    e = await peers(apps[0], "e")
    err = await e.request({"type": "join", "roomId": room, "userId": "erin", "id": 3})
    assert err["code"] == "room-full"
    # A seat that frees up on one node is free on every node.
    await b.request({"type": "leave", "roomId": room, "id": "bye"})
    info = await d.join(room, "dave")
    assert sorted(info["users"]) == ["alice", "carol"]
    # A failed join left nothing behind: alice and carol saw exactly bob and dave come.
    await a.wait("user-joined", count=3)
    assert [m["userId"] for m in a.of("user-joined")] == ["bob", "carol", "dave"]


async def test_targeted_routing_relay_does_not_reach_third_node(nodes: Any, peers: Any) -> None:
    """The counter test: a 1:1 relay between nodes 0 and 1 costs node 2 nothing."""
    apps = await nodes(3)
    room, other_room = room_name(), room_name()
    a = await peers(apps[0], "a")
    b = await peers(apps[1], "b")
    c = await peers(apps[2], "c")
    await a.join(room, "alice")
    await b.join(room, "bob")
    await c.join(other_room, "carol")  # node 2 is busy elsewhere, not in this room
    await a.wait("user-joined", userId="bob")
    await asyncio.sleep(0.2)
    before = [dict(app.cluster.stats) for app in apps]
    n = 100
    for i in range(n):
        await a.send({"type": "signal", "roomId": room, "to": "bob", "data": i})
        await b.send({"type": "signal", "roomId": room, "to": "alice", "data": -i})
    await b.wait("signal", count=n)
    await a.wait("signal", count=n)
    await a.send({"type": "message", "roomId": room, "data": "room broadcast"})
    await b.wait("message")
    await asyncio.sleep(0.3)
    after = [dict(app.cluster.stats) for app in apps]

    def delta(i: int, key: str) -> int:
        return after[i].get(key, 0) - before[i].get(key, 0)
    assert delta(2, "received") == 0, "node 2 heard traffic of a room it has no member in"
    assert delta(2, "deliveries") == 0
    assert delta(1, "deliveries") == n + 1 and delta(0, "deliveries") == n
    assert [m["data"] for m in b.of("signal")] == list(range(n))
    assert [m["data"] for m in a.of("signal")] == [-i for i in range(n)]
    assert c.of("signal") == [] and c.of("message") == []


# ------------------------------------------------------------------------ resume
async def test_resume_on_another_node_replays_exactly(nodes: Any, peers: Any) -> None:
    apps = await nodes(3, grace_period=10)
    room = room_name()
    x = await peers(apps[0], "x")
    y = await peers(apps[1], "y")
    z = await peers(apps[2], "z")
    await x.join(room, "xavier")
    await y.join(room, "yann")
    await z.join(room, "zoe")
    await x.wait("user-joined", count=2)
    for i in range(5):
        await y.send({"type": "signal", "roomId": room, "to": "xavier", "data": i})
    await x.wait("signal", count=5)
    last_seq = x.got[-1]["seq"]
    sid = x.session_id
    await x.abort()
    await eventually(lambda: apps[0].hub.sessions[sid].sink is None)
    # Missed while away: relays from two nodes and a broadcast.
    for i in range(5, 10):
        await y.send({"type": "signal", "roomId": room, "to": "xavier", "data": i})
    await z.send({"type": "message", "roomId": room, "data": "while you were away"})
    await asyncio.sleep(0.2)
    x2 = await peers(apps[2], "x2")  # a different node than the one it lost
    await x2.send({"type": "resume", "sessionId": sid, "lastSeq": last_seq, "id": "r"})
    resumed = await x2.wait("resumed")
    assert resumed["replayed"] == 6
    replay = [m for m in x2.got if m["type"] in ("signal", "message")]
    # y and z send through different nodes: each sender's order holds, not a global one.
    assert [m.get("data") for m in replay if m["type"] == "signal"] == [5, 6, 7, 8, 9]
    assert [m.get("data") for m in replay if m["type"] == "message"] == ["while you were away"]
    assert [m["seq"] for m in replay] == list(range(last_seq + 1, last_seq + 7))
    # The session lives on node 2 now; its peers route there and never saw it leave.
    assert sid in apps[2].hub.sessions and sid not in apps[0].hub.sessions
    await y.send({"type": "signal", "roomId": room, "to": "xavier", "data": "live"})
    await x2.wait("signal", data="live")
    await x2.send({"type": "signal", "roomId": room, "to": "yann", "data": "back"})
    await y.wait("signal", data="back")
    await asyncio.sleep(0.3)
    assert y.of("user-left") == [] and z.of("user-left") == []
    assert y.of("user-joined", userId="xavier") == []
    # An unknown session is expired, on any node.
    w = await peers(apps[1], "w")
    err = await w.request({"type": "resume", "sessionId": "nope", "lastSeq": 0, "id": "r2"})
    assert err["code"] == "session-expired"


async def test_rejoin_on_another_node_takes_the_seat_over(nodes: Any, peers: Any) -> None:
    """A tutorial client (no resume) rejoins elsewhere while its old session is in grace."""
    apps = await nodes(2, grace_period=10)
    room = room_name()
    a = await peers(apps[0], "a")
    b = await peers(apps[1], "b")
    await a.join(room, "alice")
    await b.join(room, "bob")
    await a.wait("user-joined", userId="bob")
    await b.abort()
    await eventually(lambda: all(s.sink is None for s in apps[1].hub.sessions.values()))
    b2 = await peers(apps[0], "b2")
    info = await b2.join(room, "bob")
    assert info["users"] == ["alice"]
    joined = await a.wait("user-joined", count=2)
    assert joined["userId"] == "bob" and joined.get("rejoined") is True
    await asyncio.sleep(0.3)
    assert a.of("user-left") == []
    assert not apps[1].hub.sessions  # the old session gave its seat up and ended
    await a.send({"type": "offer", "roomId": room, "to": "bob", "sdp": "again"})
    await b2.wait("offer")


async def test_dead_node_members_leave_after_ttl_and_grace(nodes: Any, peers: Any) -> None:
    apps = await nodes(3, grace_period=0.5)
    room = room_name()
    a = await peers(apps[0], "a")
    b = await peers(apps[1], "b")
    c = await peers(apps[2], "c")
    await a.join(room, "alice")
    await b.join(room, "bob")
    await c.join(room, "carol")
    await a.wait("user-joined", count=2)
    # Node 2 vanishes without a word (its broker connection and heartbeat stop).
    cluster = apps[2].cluster
    t0 = time.monotonic()
    for task in cluster._tasks:  # noqa: SLF001
        task.cancel()
    await cluster.broker.stop()
    bound = apps[0].settings.node_ttl + apps[0].settings.grace_period + 1.0
    left_a = await a.wait("user-left", userId="carol", timeout=bound + 1)
    left_b = await b.wait("user-left", userId="carol", timeout=bound + 1)
    assert time.monotonic() - t0 <= bound + 0.5
    assert left_a["reason"] == left_b["reason"] == "disconnected"
    await asyncio.sleep(0.5)
    assert len(a.of("user-left")) == 1 and len(b.of("user-left")) == 1
    # The seat is free again.
    d = await peers(apps[0], "d")
    await d.join(room, "carol")


# ---------------------------------------------------------------- Redis failure
async def readyz(app_url: str) -> int:
    async with aiohttp.ClientSession() as http, http.get(app_url + "/readyz") as resp:
        return resp.status


@pytest.mark.e2e
async def test_redis_restart_under_traffic_recovers_by_itself(
        make_server: Callable[..., Awaitable[RtcHub]], peers: Any) -> None:
    redis = RedisServer().start()  # private: this test kills it
    try:
        apps = [await make_server(broker=redis.url, node_id=f"r{i}-{next(_names)}",
                                  grace_period=10, **FAST) for i in range(2)]
        for app in apps:
            await eventually(lambda app=app: app.cluster.ready)
        room = room_name()
        a = await peers(apps[0], "a")
        c = await peers(apps[0], "c")
        b = await peers(apps[1], "b")
        await a.join(room, "alice")
        await c.join(room, "carol")
        await b.join(room, "bob")
        assert [await readyz(app.url) for app in apps] == [200, 200]

        sent = {"a": 0, "b": 0}
        stop = asyncio.Event()

        async def traffic(p: Peer, key: str, to: str) -> None:
            while not stop.is_set():
                await p.send({"type": "signal", "roomId": room, "to": to, "data": sent[key]})
                sent[key] += 1
                await asyncio.sleep(0.03)

        tasks = [asyncio.create_task(traffic(a, "a", "bob")),
                 asyncio.create_task(traffic(b, "b", "alice"))]
        await b.wait("signal", count=10)
        redis.stop()  # SIGKILL: a crash
        for app in apps:
            await eventually(lambda app=app: not app.cluster.ready, 5)
        assert [await readyz(app.url) for app in apps] == [503, 503]
        # Local traffic is still served while Redis is gone.
        await a.send({"type": "message", "roomId": room, "to": "carol", "data": "local"})
        await c.wait("message", data="local")
        # Joins need the cluster-wide directory: refused with a retryable error, not hung.
        d = await peers(apps[0], "d")
        err = await d.request({"type": "join", "roomId": room, "userId": "dan", "id": "j"})
        assert err["code"] == "internal"
        await asyncio.sleep(1.5)  # longer than node_ttl: the traffic queues meanwhile

        redis.start()  # same port, empty: every node must republish on its own
        for app in apps:
            await eventually(lambda app=app: app.cluster.ready, 10)
        assert [await readyz(app.url) for app in apps] == [200, 200]
        mark = (sent["a"], sent["b"])
        await b.wait("signal", data=mark[0] + 5, timeout=10)
        await a.wait("signal", data=mark[1] + 5, timeout=10)
        stop.set()
        await asyncio.gather(*tasks)
        await b.wait("signal", data=sent["a"] - 1)
        await a.wait("signal", data=sent["b"] - 1)
        for p in (a, b):
            got = [m["data"] for m in p.of("signal")]
            total = sent["a" if p is b else "b"]
            print(f"{p.name}: {len(got)}/{total} delivered across the Redis restart")
            # Queued while Redis was gone, the in-flight batch retried: none lost, none twice.
            assert got == list(range(total))
        # The directory was republished: a newcomer on the other node sees everyone,
        # and uniqueness holds again.
        e = await peers(apps[1], "e")
        info = await e.join(room, "erin")
        assert sorted(info["users"]) == ["alice", "bob", "carol"]
        err = await e.request({"type": "join", "roomId": room + "x", "userId": "erin", "id": "k"})
        assert err["type"] == "ack"
        f = await peers(apps[1], "f")
        err = await f.request({"type": "join", "roomId": room, "userId": "alice", "id": "t"})
        assert err["code"] == "user-id-taken"
        assert a.of("user-left") == [] and b.of("user-left") == []
    finally:
        redis.stop()


# -------------------------------------------------------------------- kill -9
async def wait_ready(url: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if await readyz(url) == 200:
                return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"{url} never became ready")


@pytest.mark.e2e
async def test_kill_9_node_under_traffic(redis_server: RedisServer,  # noqa: F811
                                         server_process: Any) -> None:
    """A node dies with SIGKILL mid-traffic: its users that reconnect resume on another
    node and lose nothing; the one that does not is reported ``disconnected`` in time."""
    node_ttl, grace = 1.0, 3.0
    common = ("--broker", redis_server.url, "--node-ttl", str(node_ttl),
              "--grace-period", str(grace), "--max-msg-rate", "0", "--log-level", "warning")
    procs: list[ServerProcess] = [server_process(*common, "--node-id", f"k{i}-{next(_names)}")
                                  for i in range(3)]
    for p in procs:
        await wait_ready(p.url)
    victim, other, third = procs
    room = room_name()
    x = Client(victim.url, backoff_base=0.05, backoff_cap=0.5)
    w = Client(victim.url, reconnect=False)
    y = Client(other.url)
    z = Client(third.url)
    clients = [x, w, y, z]
    # X's load balancer sends its reconnect to a surviving node.
    x.on("state", lambda e: setattr(x, "url", third.url) if e["state"] == "reconnecting" else None)
    got: dict[str, list[Any]] = {"x": [], "y": []}
    left: list[tuple[str, dict[str, Any], float]] = []
    x.on("signal", lambda m: got["x"].append(m["data"]))
    y.on("signal", lambda m: got["y"].append(m["data"]))
    for name, c in (("y", y), ("z", z)):
        c.on("user-left", lambda m, name=name: left.append((name, m, time.monotonic())))
    try:
        for c, user in ((x, "xavier"), (w, "wendy"), (y, "yann"), (z, "zoe")):
            await c.connect()
            await c.join(room, user)
        await eventually(lambda: len(y.rooms) == 1 and len(z.rooms) == 1)
        await asyncio.sleep(0.3)
        n = 120

        async def traffic(src: Client, to: str) -> None:
            for i in range(n):
                await src.send({"type": "signal", "roomId": room, "to": to, "data": i})
                await asyncio.sleep(0.025)

        tasks = [asyncio.create_task(traffic(x, "yann")), asyncio.create_task(traffic(y, "xavier"))]
        await eventually(lambda: len(got["x"]) > 30 and len(got["y"]) > 30)
        killed_at = time.monotonic()
        victim.kill()  # SIGKILL: no goodbye, no flush
        await asyncio.gather(*tasks)
        try:
            await eventually(lambda: len(got["x"]) >= n and len(got["y"]) >= n, 15)
        except AssertionError:
            raise AssertionError(f"x got {got['x']}, y got {got['y']}, x states {x.states}, "
                                 f"unacked x {list(x.unacked)} y {list(y.unacked)}") from None
        await eventually(lambda: len(left) >= 2, node_ttl + grace + 5)
        await asyncio.sleep(0.5)
        # Nothing lost, nothing twice, in order - across the crash and the move.
        assert got["x"] == list(range(n)), got["x"]
        assert got["y"] == list(range(n)), got["y"]
        assert "resumed" in x.states and "rejoined" not in x.states
        # Only wendy left, once for each peer, with reason disconnected, within the bound.
        assert sorted(who for who, _, _ in left) == ["y", "z"]
        for _who, msg, at in left:
            assert msg["userId"] == "wendy" and msg["reason"] == "disconnected"
            bound = node_ttl + grace + 1.0  # docs/scaling.md: node_ttl + grace + sweep
            assert at - killed_at <= bound + 1.0, at - killed_at
        # Xavier is on the third node now and reachable from everyone.
        await y.send({"type": "signal", "roomId": room, "to": "xavier", "data": "after"})
        await eventually(lambda: got["x"][-1:] == ["after"])
    finally:
        for c in clients:
            await c.close()


async def test_join_storm_on_redis_never_runs_out_of_connections(
        redis_server: RedisServer, make_server: Any) -> None:  # noqa: F811
    """300 clients join at once on one node: every claim waits for a pooled
    Redis connection instead of failing with "Too many connections"."""
    app = await make_server(broker=redis_server.url, max_connections_per_ip=0,
                            max_handshakes_per_ip=0, max_room_members=1000)
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    async def join(i: int) -> dict[str, Any]:
        ws = await http.ws_connect(app.ws_url)
        await ws.receive()  # welcome
        await ws.send_str(json.dumps({"type": "join", "roomId": f"storm-{i // 4}",
                                      "userId": f"u{i}"}))
        answer = json.loads((await ws.receive(15)).data)
        await ws.close()
        return answer

    answers = await asyncio.gather(*(join(i) for i in range(300)))
    await http.close()
    assert [a["type"] for a in answers] == ["room-info"] * 300, \
        [a for a in answers if a["type"] != "room-info"][:3]


# ----------------------------------------------------------------- server API
async def test_server_api_acts_on_the_whole_cluster(nodes: Any, peers: Any) -> None:
    """publish, members and disconnect through a node that has no member of the room."""
    apps = await nodes(3, api_key="k3y")
    room = room_name()
    alice = await peers(apps[0], "alice")
    bob = await peers(apps[1], "bob")
    await alice.join(room, "alice")
    await bob.join(room, "bob")
    await alice.wait("user-joined", userId="bob")
    api = f"http://127.0.0.1:{apps[2].port}/api"
    headers = {"X-API-Key": "k3y"}
    assert room not in apps[2].hub.rooms
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.get(f"{api}/rooms/{room}/members") as resp:
            assert resp.status == 200
            members = (await resp.json())["members"]
        assert sorted((m["userId"], m["node"]) for m in members) == [
            ("alice", apps[0].hub.node_id), ("bob", apps[1].hub.node_id)]
        assert not any(m["local"] for m in members)

        body = {"roomId": room, "type": "message", "data": {"n": 1}}
        async with http.post(f"{api}/publish", json=body) as resp:
            assert resp.status == 200 and (await resp.json())["delivered"] == 2
        for peer in (alice, bob):
            got = await peer.wait("message", roomId=room)
            assert got["data"] == {"n": 1} and got["server"] is True and "from" not in got
        # To one member: only bob; numbered by bob's node like any message.
        async with http.post(f"{api}/publish", json={**body, "to": "bob", "data": {"n": 2}}) as resp:
            assert (await resp.json())["delivered"] == 1
        got = await bob.wait("message", 2)
        assert got["data"] == {"n": 2} and got["seq"] > bob.of("message")[0]["seq"]
        await asyncio.sleep(0.3)
        assert len(alice.of("message")) == 1

        async with http.post(f"{api}/disconnect", json={"userId": "alice"}) as resp:
            assert resp.status == 200 and (await resp.json())["disconnected"] == 1
        left = await bob.wait("user-left", userId="alice")
        assert left["reason"] == "kicked"
        await eventually(lambda: alice.ws is not None and alice.ws.closed)
        assert alice.ws is not None and alice.ws.close_code == 4003
        async with http.post(f"{api}/disconnect", json={"userId": "nobody"}) as resp:
            assert (await resp.json())["disconnected"] == 0
        async with http.get(f"{api}/rooms/no-such-room") as resp:
            assert resp.status == 404


async def test_room_webhooks_fire_once_for_the_whole_cluster(nodes: Any, peers: Any) -> None:
    """room_started / room_finished once per room, not once per node with members."""
    from tests.test_webhooks import SECRET, Receiver

    rx = await Receiver().start()
    try:
        apps = await nodes(3, webhook_url=[rx.url], webhook_secret=SECRET)
        room = room_name()
        people = [await peers(app, f"p{i}") for i, app in enumerate(apps)]
        for i, p in enumerate(people):
            await p.join(room, f"u{i}")
        await people[0].wait("user-joined", userId="u2")
        for p in people:
            await p.send({"type": "leave", "roomId": room})
        await eventually(lambda: [e["event"] for e in rx.events].count("room_finished") == 1)
        await asyncio.sleep(0.5)  # nothing more arrives
        mine = [e for e in rx.events if e["roomId"] == room]
        kinds = [e["event"] for e in mine]
        assert kinds.count("room_started") == 1 and kinds.count("room_finished") == 1, kinds
        assert kinds.count("user_joined") == 3 and kinds.count("user_left") == 3, kinds
        assert kinds[0] == "room_started" and kinds[-1] == "room_finished", kinds
        # The room started on the first joiner's node; a new life starts it again.
        assert mine[0]["node"] == apps[0].hub.node_id
        ack = await people[1].request({"type": "join", "roomId": room, "userId": "u1", "id": "again"})
        assert ack["type"] == "ack", ack
        await eventually(lambda: [e["event"] for e in rx.events].count("room_started") == 2)
        assert rx.events[-1]["event"] == "user_joined" and rx.events[-2]["node"] == apps[1].hub.node_id
        assert rx.bad_signatures == 0
    finally:
        await rx.stop()


# ------------------------------------------------------------------ auto rooms
async def test_auto_room_route_across_nodes(nodes: Any, peers: Any) -> None:
    """Every node decides an auto room's route from the same membership and tells
    its own members, once: p2p for two, SFU when a third joins on another node,
    p2p again after the hysteresis delay once it has left. (The route needs no
    media, so the SFU here is a Janus URL nobody answers: it only makes rooms auto.)"""
    apps = await nodes(2, sfu_url=["ws://127.0.0.1:9"], auto_p2p_after=1.0)
    room = room_name()
    a = await peers(apps[0], "a")
    b = await peers(apps[0], "b")
    c = await peers(apps[1], "c")
    for p, user in ((a, "alice"), (b, "bob")):
        ack = await p.request({"type": "join", "roomId": room, "userId": user, "media": "auto", "id": "j"})
        assert ack["type"] == "ack", ack
    assert a.of("room-info")[-1]["media"] == "auto" and a.of("room-info")[-1]["route"] == "p2p"
    ack = await c.request({"type": "join", "roomId": room, "userId": "carol", "media": "auto", "id": "j"})
    assert ack["type"] == "ack", ack
    assert c.of("room-info")[-1]["route"] == "sfu"
    for p in (a, b):
        await p.wait("media-route", route="sfu")
    await c.close()
    for p in (a, b):
        await p.wait("media-route", route="p2p", timeout=10.0)
    await asyncio.sleep(1.5)
    for p in (a, b):
        assert [m["route"] for m in p.of("media-route")] == ["sfu", "p2p"], p.of("media-route")
        assert p.of("error") == []
