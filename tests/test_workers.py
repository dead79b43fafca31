"""``rtchub serve --workers N`` (issue 14): N processes on one port, one cluster.

Real processes, a real private redis-server. Which worker a connection lands
on is the kernel's choice (SO_REUSEPORT), so the test connects until it has a
client on each of two workers (``welcome.server.node`` names the worker).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any

import aiohttp

from tests.conftest import ServerProcess, free_port
from tests.redis_fixture import RedisServer, redis_server  # noqa: F401


class Client:
    def __init__(self, http: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.http, self.ws = http, ws
        self.got: list[dict[str, Any]] = []

    @classmethod
    async def open(cls, url: str) -> Client:
        http = aiohttp.ClientSession()
        c = cls(http, await http.ws_connect(url))
        await c.wait("welcome")
        return c

    async def wait(self, mtype: str, timeout: float = 10.0) -> dict[str, Any]:
        async def read() -> dict[str, Any]:
            while True:
                msg = json.loads((await self.ws.receive()).data)
                self.got.append(msg)
                if msg["type"] == mtype:
                    return msg
        for msg in self.got:
            if msg["type"] == mtype:
                self.got.remove(msg)
                return msg
        return await asyncio.wait_for(read(), timeout)

    @property
    def node(self) -> str:
        return next(m for m in self.got if m["type"] == "welcome")["server"]["node"]

    async def send(self, msg: dict[str, Any]) -> None:
        await self.ws.send_str(json.dumps(msg))

    async def close(self) -> None:
        await self.ws.close()
        await self.http.close()


async def _on_other_worker(url: str, than: str | None, within: float = 30.0) -> Client:
    """A client whose worker is not ``than`` (any worker when None).

    The workers start one after the other (each imports rtchub), so until
    the last is listening every connection lands on the ones that are.
    """
    deadline = asyncio.get_running_loop().time() + within
    while True:
        c = await Client.open(url)
        welcome = c.got[0] if c.got else await c.wait("welcome")
        c.got = [welcome]
        if than is None or welcome["server"]["node"] != than:
            return c
        await c.close()
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"every connection for {within:.0f} s landed on worker {than}")
        await asyncio.sleep(0.05)


async def test_workers_share_one_port_talk_and_resume_across(
        redis_server: RedisServer) -> None:  # noqa: F811
    srv = ServerProcess("--workers", "2", "--broker", redis_server.url, "--node-id", "wk",
                        "--node-ttl", "1", "--grace-period", "10").start()
    try:
        a = await _on_other_worker(srv.ws_url, None)
        b = await _on_other_worker(srv.ws_url, a.node)
        assert {a.node, b.node} == {"wk-w0", "wk-w1"}, (a.got, b.got)
        for c, user in ((a, "alice"), (b, "bob")):
            await c.send({"type": "join", "roomId": "r", "userId": user})
            await c.wait("room-info")
        await a.wait("user-joined")
        await a.send({"type": "offer", "roomId": "r", "to": "bob", "sdp": "v=0"})
        offer = await b.wait("offer")
        assert offer["from"] == "alice" and offer["sdp"] == "v=0"
        # Bob drops without a close frame and comes back on the other worker.
        welcome_b = b.got[0]
        seq = max(m.get("seq", 0) for m in [*b.got, offer])
        old_node = b.node
        b.ws._response.connection.transport.abort()  # noqa: SLF001
        await b.http.close()
        await a.send({"type": "message", "roomId": "r", "to": "bob", "data": "while away"})
        b2 = await _on_other_worker(srv.ws_url, old_node)
        await b2.send({"type": "resume", "sessionId": welcome_b["sessionId"], "lastSeq": seq})
        resumed = await b2.wait("resumed")
        assert resumed["replayed"] >= 1
        missed = await b2.wait("message")
        assert missed["data"] == "while away" and missed["from"] == "alice"
        await b2.send({"type": "message", "roomId": "r", "to": "alice", "data": "back"})
        assert (await a.wait("message"))["data"] == "back"
        await a.close()
        await b2.close()
        # SIGTERM drains every worker; the parent exits 0 once they have.
        assert srv.terminate(timeout=20) == 0
    finally:
        srv.kill()


def test_memory_broker_refuses_several_workers() -> None:
    res = subprocess.run([sys.executable, "-m", "rtchub.cli", "serve", "--workers", "2",
                          "--port", str(free_port()), "--broker", "memory"],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 2
    assert "redis" in res.stderr.lower() and "--workers" in res.stderr
