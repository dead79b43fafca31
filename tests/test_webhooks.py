"""Webhooks and the join hook against a real HTTP receiver on a free port."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
from aiohttp import web

from rtchub.app import RtcHub
from rtchub.webhooks import SIGNATURE_HEADER, verify
from tests.conftest import Raw, eventually, free_port, joined

SECRET = "whsec-test"


class Receiver:
    """A webhook receiver: a real aiohttp server that records what it gets."""

    def __init__(self, port: int | None = None, *, hang: bool = False,
                 answer: Any = None) -> None:
        self.port = port or free_port()
        self.hang = hang
        self.answer = answer
        self.events: list[dict[str, Any]] = []
        self.bad_signatures = 0
        self.in_flight = 0
        self.runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if not verify(SECRET, body, request.headers.get(SIGNATURE_HEADER)):
            self.bad_signatures += 1
            return web.Response(status=400)
        payload = json.loads(body)
        if self.hang:
            self.in_flight += 1
            await asyncio.sleep(3600)
        self.events.append(payload)
        if self.answer is not None:
            return web.json_response(self.answer(payload))
        return web.Response(status=204)

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.2)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def kinds(self) -> list[tuple[str, str | None]]:
        return [(e["event"], e.get("userId")) for e in self.events]


async def scripted_session(app: RtcHub) -> None:
    """alice and bob meet in 'room', bob leaves, alice closes."""
    a = await joined(app, "room", "alice", "Alice")
    b = await joined(app, "room", "bob")
    await a.expect("user-joined")
    await b.send({"type": "offer", "roomId": "room", "to": "alice", "sdp": "v=0"})
    assert (await a.expect("offer"))["from"] == "bob"
    await b.send({"type": "leave", "roomId": "room"})
    assert (await a.expect("user-left"))["reason"] == "left"
    await b.close()
    await a.close()


EXPECTED = [("room_started", None), ("user_joined", "alice"), ("user_joined", "bob"),
            ("user_left", "bob"), ("user_left", "alice"), ("room_finished", None)]


async def test_each_event_once_with_valid_signature(make_server: Any) -> None:
    rx = await Receiver().start()
    try:
        app = await make_server(webhook_url=[rx.url], webhook_secret=SECRET)
        await scripted_session(app)
        await eventually(lambda: len(rx.events) >= len(EXPECTED))
        await asyncio.sleep(0.2)   # nothing more arrives
        assert rx.kinds() == EXPECTED
        assert rx.bad_signatures == 0
        assert len({e["id"] for e in rx.events}) == len(EXPECTED)
        by_kind = {(e["event"], e.get("userId")): e for e in rx.events}
        assert by_kind[("user_left", "bob")]["reason"] == "left"
        assert by_kind[("user_joined", "alice")]["displayName"] == "Alice"
        assert by_kind[("user_joined", "alice")]["ip"] == "127.0.0.1"
        assert all(e["roomId"] == "room" and e["node"] == app.hub.node_id for e in rx.events)
        assert app.webhooks.stats["failures"] == 0
    finally:
        await rx.stop()


async def test_receiver_down_does_not_slow_signaling_and_events_are_retried(make_server: Any) -> None:
    port = free_port()
    app = await make_server(webhook_url=[f"http://127.0.0.1:{port}/hook"], webhook_secret=SECRET)
    app.webhooks.base_delay = 0.05
    app.webhooks.max_delay = 0.2
    # Nothing listens: every attempt is refused, and signaling goes on regardless.
    a = await joined(app, "room", "alice")
    b = await joined(app, "room", "bob")
    await a.expect("user-joined")
    for i in range(50):
        await b.send({"type": "candidate", "roomId": "room", "to": "alice", "candidate": str(i)})
        assert (await a.expect("candidate", timeout=2.0))["candidate"] == str(i)
    await eventually(lambda: app.webhooks.stats["failures"] >= 2)
    assert app.webhooks.stats["delivered"] == 0
    rx = await Receiver(port).start()
    try:
        await eventually(lambda: len(rx.events) >= 3, timeout=10)
        await asyncio.sleep(0.3)
        assert rx.kinds() == EXPECTED[:3]
        assert rx.bad_signatures == 0
        assert app.webhooks.stats["delivered"] == 3 and app.webhooks.stats["dropped"] == 0
        async with aiohttp.ClientSession() as http, http.get(app.url + "/metrics") as r:
            text = await r.text()
        failures = [ln for ln in text.splitlines() if ln.startswith("rtchub_webhook_failures_total")]
        assert failures and float(failures[0].split()[-1]) == app.webhooks.stats["failures"] >= 2
    finally:
        await a.close()
        await b.close()
        await rx.stop()


async def test_hanging_receiver_does_not_block_joins_or_relay(make_server: Any) -> None:
    rx = await Receiver(hang=True).start()
    try:
        app = await make_server(webhook_url=[rx.url], webhook_secret=SECRET)
        clients = []
        for i in range(10):
            clients.append(await joined(app, f"r{i}", f"u{i}"))
        await eventually(lambda: rx.in_flight == 1)
        # The one sender task is stuck on the first event; joins and relays went through.
        a = await joined(app, "talk", "alice")
        b = await joined(app, "talk", "bob")
        await a.expect("user-joined")
        for i in range(20):
            await a.send({"type": "signal", "roomId": "talk", "to": "bob", "data": i})
            assert (await b.expect("signal", timeout=2.0))["data"] == i
        assert rx.in_flight == 1 and rx.events == []
        assert app.webhooks.queued() >= 20
        for c in clients + [a, b]:
            await c.close()
    finally:
        await rx.stop()


def _hook_answer(payload: dict[str, Any]) -> dict[str, Any]:
    if payload["userId"] == "mallory":
        return {"allow": False, "reason": "mallory is banned"}
    return {"allow": True, "displayName": payload["userId"].upper()}


async def test_join_hook_denies_and_sets_display_name(make_server: Any) -> None:
    hook = await Receiver(answer=_hook_answer).start()
    try:
        app = await make_server(join_hook_url=hook.url, webhook_secret=SECRET)
        a = await joined(app, "club", "alice")
        m = await Raw.open(app)
        await m.expect("welcome")
        await m.send({"type": "join", "roomId": "club", "userId": "mallory", "id": 5})
        err = await m.expect("error")
        assert err["code"] == "forbidden" and err["message"] == "mallory is banned" and err["id"] == 5
        assert list(app.hub.rooms["club"].members) == ["alice"]
        b = await joined(app, "club", "bob")
        joined_msg = await a.expect("user-joined")
        assert joined_msg["userId"] == "bob" and joined_msg["displayName"] == "BOB"
        assert app.hub.rooms["club"].members["alice"].display_name == "ALICE"
        assert [e["userId"] for e in hook.events] == ["alice", "mallory", "bob"]
        assert hook.events[1]["roomId"] == "club" and hook.events[1]["event"] == "join"
        assert hook.bad_signatures == 0
        assert app.join_hook.stats == {"allow": 2, "deny": 1, "failed": 0}
        for c in (a, b, m):
            await c.close()
    finally:
        await hook.stop()


async def test_join_hook_failure_policy(make_server: Any) -> None:
    dead = f"http://127.0.0.1:{free_port()}/hook"
    deny = await make_server(join_hook_url=dead, join_hook_failure="deny")
    c = await Raw.open(deny)
    await c.expect("welcome")
    await c.send({"type": "join", "roomId": "x", "userId": "u"})
    assert (await c.expect("error"))["code"] == "forbidden"
    await c.close()

    allow = await make_server(join_hook_url=dead, join_hook_failure="allow")
    c = await joined(allow, "x", "u")
    await c.close()
    assert allow.join_hook.stats["failed"] == 1

    slow = await Receiver(hang=True).start()
    try:
        timed = await make_server(join_hook_url=slow.url, join_hook_timeout=0.3,
                                  webhook_secret=SECRET)
        c = await Raw.open(timed)
        await c.expect("welcome")
        await c.send({"type": "join", "roomId": "x", "userId": "u"})
        err = await c.expect("error", timeout=3)
        assert err["code"] == "forbidden"
        assert slow.in_flight == 1
        await c.close()
    finally:
        await slow.stop()
