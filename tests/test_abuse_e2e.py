"""Issue 13, "done when": every flood of the review against one server while
100 honest clients talk.

The server is a real ``rtchub serve`` child process with its default limits
(only the grace period is short, so that memory can be seen coming back
within the test). The floods (:mod:`rtchub.bench.abuse`, the same code
``rtchub bench --scenario abuse`` times) come from 127.0.0.2, one after the
other, 2 s each; the honest clients, from 127.0.0.1, keep sending numbered
messages in rooms of five the whole time, and one flood joins one of their
rooms. Afterwards: nothing an honest client sent is lost or reordered, none
of them was closed, the server still answers, and its RSS is back within
:data:`RSS_MARGIN` of what it was before the floods.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiohttp
import pytest

from rtchub.bench import abuse
from tests.conftest import free_port
from tests.test_hardening import rss

HONEST = 100
ROOM_SIZE = 5
#: Seconds between two messages of one honest client.
EVERY = 0.5
FLOOD_SECONDS = 2.0
#: How far above its pre-flood RSS the server may stay once the floods'
#: sessions have expired (heap fragmentation, caches that stay warm).
RSS_MARGIN = 24 * 1024 * 1024


class Honest:
    """One honest client: sends ``{"n": k}`` messages, checks what it receives."""

    def __init__(self, http: aiohttp.ClientSession, url: str, room: str, user: str) -> None:
        self.http = http
        self.url = url
        self.room = room
        self.user = user
        self.sent = 0
        self.acked = 0
        self.got: dict[str, list[int]] = {}
        self.closed_with: int | None = None

    async def start(self) -> None:
        self.ws = await self.http.ws_connect(self.url, max_msg_size=0, heartbeat=None)
        await self.ws.receive_json(timeout=10)
        await self.ws.send_json({"type": "join", "roomId": self.room, "userId": self.user})
        self.reader = asyncio.create_task(self.read())

    async def read(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            body = msg.json()
            if body["type"] == "message" and isinstance(body.get("data"), dict) \
                    and "n" in body["data"]:
                self.got.setdefault(body["from"], []).append(body["data"]["n"])
            elif body["type"] == "ack":
                self.acked += 1
            elif body["type"] == "error":
                raise AssertionError(f"{self.user} got {body}")
        self.closed_with = self.ws.close_code

    async def talk(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.ws.send_json({"type": "message", "roomId": self.room, "id": self.sent,
                                     "data": {"n": self.sent}})
            self.sent += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), EVERY)


@pytest.mark.e2e
async def test_floods_against_one_server_while_100_clients_talk(server_process: Any) -> None:
    stun_port = free_port()
    srv = server_process("--stun-port", str(stun_port), "--grace-period", "2",
                         "--log-level", "warning")
    # server_process puts --stun-port 0 first; the later flag wins (argparse).
    pid = srv.proc.pid
    target = abuse.Target(srv.port, stun_port)
    # limit=0: the connector's default pool (100) would be all WebSockets.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        clients = [Honest(http, srv.ws_url, f"h{i // ROOM_SIZE}", f"u{i}") for i in range(HONEST)]
        for c in clients:
            await c.start()
        stop = asyncio.Event()
        talkers = [asyncio.create_task(c.talk(stop)) for c in clients]
        await asyncio.sleep(3)
        before = rss(pid)
        results = {}
        for name in abuse.FLOODS:
            if name == "big-burst":  # into an honest room: its members must not pay for it
                results[name] = await abuse.flood_big_burst(target, FLOOD_SECONDS, room="h0")
            else:
                results[name] = await abuse.flood(name, target, FLOOD_SECONDS)
            assert srv.proc.poll() is None, f"the server died during {name}"
        stop.set()
        await asyncio.gather(*talkers)
        # Every message acknowledged, then delivered to the four others.
        for _ in range(300):
            if all(c.acked == c.sent for c in clients) and all(
                    len(o.got.get(c.user, [])) == c.sent
                    for c in clients for o in clients if o.room == c.room and o is not c):
                break
            await asyncio.sleep(0.1)
        for c in clients:
            assert c.closed_with is None, (c.user, c.closed_with)
            assert c.acked == c.sent, (c.user, c.acked, c.sent)
            for other in clients:
                if other.room == c.room and other is not c:
                    assert other.got.get(c.user, []) == list(range(c.sent)), (other.user, c.user)
        assert sum(c.sent for c in clients) >= HONEST * 10
        # The connection flood met the per-IP cap.
        assert results["connections"]["alive"] <= 1000, results
        async with http.get(f"{srv.url}/healthz") as resp:
            assert resp.status == 200
        # Memory comes back once the floods' sessions are gone (grace 2 s, sweep 1 s, trim 2 s).
        after = before
        for _ in range(40):
            await asyncio.sleep(0.5)
            after = rss(pid)
            if after <= before + RSS_MARGIN:
                break
        assert after <= before + RSS_MARGIN, (before, after, results)
        for c in clients:
            c.reader.cancel()
        await asyncio.gather(*(c.reader for c in clients), return_exceptions=True)
        for c in clients:
            await c.ws.close()
