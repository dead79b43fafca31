"""Two Chromium pages on two different rtchub nodes (one Redis) complete a video call.

The pages load the same harness as tests/e2e/test_browser_call.py (the real
``/sdk/rtchub.js``), each from its own node, so every offer, answer and ICE
candidate crosses the broker: node A's member reaches node B's member only
through B's channel.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.conftest import eventually
from tests.e2e.conftest import shows_fake_camera
from tests.redis_fixture import RedisServer, redis_server  # noqa: F401

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(120)]


async def test_video_call_between_pages_on_two_nodes(
        make_e2e_server: Any, open_page: Any, redis_server: RedisServer) -> None:  # noqa: F811
    apps = [await make_e2e_server(broker=redis_server.url, node_id=f"web{i}", node_ttl=2.0)
            for i in range(2)]
    for app in apps:
        await eventually(lambda app=app: app.cluster is not None and app.cluster.ready)
    alice = await open_page(apps[0].url + "/t/alice", name="alice")
    bob = await open_page(apps[1].url + "/t/bob", name="bob")
    await asyncio.gather(
        alice.evaluate("([room, user]) => T.startCall({room, user})", ["cross-node", "alice"]),
        bob.evaluate("([room, user]) => T.startCall({room, user})", ["cross-node", "bob"]))
    for page, other in ((alice, "bob"), (bob, "alice")):
        videos = await open_page.media_flowing(page, 1)
        assert videos[0]["userId"] == other and shows_fake_camera(videos[0]), videos
    for page, other in ((alice, "bob"), (bob, "alice")):
        stats = await page.evaluate("(o) => T.call.stats(o)", other)
        assert stats["connectionState"] == "connected"
    # Each node holds its own member and a stub of the other: the signaling crossed nodes.
    a_room, b_room = (app.hub.rooms["cross-node"] for app in apps)
    assert a_room.members["alice"].session.node == "web0"
    assert a_room.members["bob"].session.node == "web1"
    assert b_room.members["alice"].session.node == "web0"
    for app in apps:
        assert app.cluster.stats["deliveries"] >= 3  # user-joined or offer/answer + candidates
    open_page.check()
