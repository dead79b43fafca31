"""One room, every transport: WebSocket (JSON and MessagePack), SSE, long- and short-polling.

A WebSocket user, an SSE user and a polling user must talk to each other
with no difference (issue 4): join, offer, answer, candidate, chat and leave
between every pair, with exact counts and nothing extra.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from rtchub.client import Client
from tests.conftest import eventually

PEERS = [
    ("ws", "websocket", "json"),
    ("sse", "sse", "json"),
    ("longpoll", "polling", "json"),
    ("shortpoll", "short-polling", "json"),
    ("msgpack", "websocket", "msgpack"),
]
ROOM = "mixed"
CANDIDATES = 2


async def test_mixed_room_every_pair_signals_and_chats(make_server: Any) -> None:
    server = await make_server(max_msg_rate=0)
    names = [p[0] for p in PEERS]
    clients = {name: Client(server.url, transport=kind, codec=codec) for name, kind, codec in PEERS}
    received: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    tasks: list[asyncio.Task[Any]] = []
    loop = asyncio.get_running_loop()
    try:
        for name, client in clients.items():
            await client.connect()
            assert client.transport_name == dict((p[0], p[1]) for p in PEERS)[name]

            def answer(msg: dict[str, Any], me: str = name, c: Client = client) -> None:
                # Callee side of the handshake: answer, then trickle candidates.
                async def reply() -> None:
                    await c.relay("answer", ROOM, msg["from"], sdp=f"answer {me}->{msg['from']}")
                    for k in range(CANDIDATES):
                        await c.relay("candidate", ROOM, msg["from"],
                                      candidate={"candidate": f"c{k} {me}->{msg['from']}"})
                tasks.append(loop.create_task(reply()))

            client.on("offer", answer)

            async def collect(me: str = name, c: Client = client) -> None:
                while True:
                    received[me].append(await c.recv(timeout=None))

            tasks.append(loop.create_task(collect()))
        for name in names:
            info = await clients[name].join(ROOM, user_id=name, display_name=name.upper())
            assert info["users"] == names[: names.index(name)]
        # Caller side: every pair i < j, i offers to j and trickles candidates.
        for i, caller in enumerate(names):
            for callee in names[i + 1:]:
                c = clients[caller]
                await c.relay("offer", ROOM, callee, sdp=f"offer {caller}->{callee}")
                for k in range(CANDIDATES):
                    await c.relay("candidate", ROOM, callee,
                                  candidate={"candidate": f"c{k} {caller}->{callee}"})
        for name in names:
            await clients[name].send({"type": "message", "roomId": ROOM, "data": {"text": f"hi from {name}"}})

        n = len(names)

        def expected(k: int, with_leaves: bool) -> Counter[tuple[str, str]]:
            me = names[k]
            exp: Counter[tuple[str, str]] = Counter()
            for j, other in enumerate(names):
                if other == me:
                    continue
                if j > k:
                    exp["user-joined", other] += 1
                    exp["answer", other] += 1
                else:
                    exp["offer", other] += 1
                    if with_leaves:
                        exp["user-left", other] += 1
                exp["candidate", other] += CANDIDATES
                exp["message", other] += 1
            return exp

        def seen(name: str) -> Counter[tuple[str, str]]:
            return Counter((m["type"], m.get("from") or m.get("userId")) for m in received[name])

        for k, name in enumerate(names):
            await eventually(lambda k=k, name=name: seen(name) == expected(k, False), timeout=15)
        for name in names:
            await clients[name].leave(ROOM)
        for k, name in enumerate(names):
            await eventually(lambda k=k, name=name: seen(name) == expected(k, True), timeout=15)
        await asyncio.sleep(0.3)  # nothing extra arrives late
        for k, name in enumerate(names):
            assert seen(name) == expected(k, True), name
            # Payloads arrive unchanged whatever carried them, ``from`` set by the server.
            for m in received[name]:
                if m["type"] in ("offer", "answer"):
                    assert m["sdp"] == f"{m['type']} {m['from']}->{name}"
                elif m["type"] == "candidate":
                    assert m["candidate"]["candidate"].endswith(f"{m['from']}->{name}")
                elif m["type"] == "message":
                    assert m["data"] == {"text": f"hi from {m['from']}"}
                elif m["type"] == "user-joined":
                    assert m["displayName"] == m["userId"].upper()
                elif m["type"] == "user-left":
                    assert m["reason"] == "left"
            # Every sender's messages in the order sent (per-sender FIFO).
            cands = [m["candidate"]["candidate"] for m in received[name] if m["type"] == "candidate"]
            for other in names:
                mine = [c for c in cands if c.endswith(f"{other}->{name}")]
                if other != name:
                    assert mine == [f"c{k} {other}->{name}" for k in range(CANDIDATES)]
        assert n == len(PEERS)
        assert ROOM not in server.hub.rooms
    finally:
        for t in tasks:
            t.cancel()
        for client in clients.values():
            await client.close()
    await eventually(lambda: not server.hub.sessions)
