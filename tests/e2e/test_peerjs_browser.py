"""The real ``peerjs`` npm client in Chromium against rtchub's PeerJS server (issue 19).

Each page is tests/e2e/pages/peerjs.html, served on the server's own origin,
with ``peerjs.min.js`` from tests/e2e/peerjs/node_modules (``make test``
installs it) added as it ships. The app code is what a PeerJS app writes:
``new Peer(id, {host, port, path: "/peerjs"})``, ``peer.connect``,
``peer.call``. Two pages open a data connection and exchange messages, then
make a media call with the fake camera and see each other's video: on one
node, and on two nodes sharing a real Redis, where every OFFER, ANSWER and
CANDIDATE crosses the broker.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import eventually
from tests.e2e.conftest import shows_fake_camera
from tests.redis_fixture import RedisServer, redis_server  # noqa: F401

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(120)]

PEERJS_JS = Path(__file__).parent / "peerjs" / "node_modules" / "peerjs" / "dist" / "peerjs.min.js"


async def peerjs_page(open_page: Any, app: Any, name: str) -> Any:
    if not PEERJS_JS.exists():
        pytest.fail(f"{PEERJS_JS} is missing: make tests/e2e/peerjs/node_modules/.installed")
    page = await open_page(f"{app.url}/t/peerjs-{name}", harness="peerjs.html", name=name)
    await page.add_script_tag(path=str(PEERJS_JS))
    return page


async def start(page: Any, peer_id: str, **options: Any) -> dict[str, Any]:
    return await page.evaluate("([id, o]) => T.start(id, o)", [peer_id, options])


async def data_then_media(open_page: Any, alice: Any, bob: Any) -> None:
    assert await start(alice, "alice") == {"open": "alice"}
    assert await start(bob, "bob") == {"open": "bob"}
    # Data connection: alice dials, both send, both receive.
    assert await alice.evaluate("T.connect('bob')") is True
    await bob.wait_for_function("T.conns.alice && T.conns.alice.open")
    await alice.evaluate("T.send('bob', {hello: 'from alice', n: 1})")
    await bob.evaluate("T.send('alice', {hello: 'from bob', n: 2})")
    await bob.wait_for_function("T.received.length >= 1")
    await alice.wait_for_function("T.received.length >= 1")
    assert await bob.evaluate("T.received") == [{"from": "alice", "data": {"hello": "from alice", "n": 1}}]
    assert await alice.evaluate("T.received") == [{"from": "bob", "data": {"hello": "from bob", "n": 2}}]
    # Media call with the fake camera: each side sees the other's video.
    await alice.evaluate("T.call('bob')")
    for page, other in ((alice, "bob"), (bob, "alice")):
        videos = await open_page.media_flowing(page, 1)
        assert videos[0]["userId"] == other and shows_fake_camera(videos[0]), videos
    assert await alice.evaluate("T.errors") == [] and await bob.evaluate("T.errors") == []


async def test_data_and_media_call_on_one_node(make_e2e_server: Any, open_page: Any) -> None:
    app = await make_e2e_server()
    alice = await peerjs_page(open_page, app, "alice")
    bob = await peerjs_page(open_page, app, "bob")
    await data_then_media(open_page, alice, bob)
    # The peers live in the hub: one room for the key, a session each, signaling counted.
    room = app.hub.rooms["peerjs:peerjs"]
    assert set(room.members) == {"alice", "bob"}
    assert {m.session.sink.transport_name for m in room.members.values()} == {"peerjs"}
    assert app.hub.sent.get("signal", 0) >= 4  # OFFER, ANSWER and candidates, twice over
    open_page.check()


async def test_data_and_media_call_across_two_nodes(
        make_e2e_server: Any, open_page: Any, redis_server: RedisServer) -> None:  # noqa: F811
    apps = [await make_e2e_server(broker=redis_server.url, node_id=f"pj{i}", node_ttl=2.0)
            for i in range(2)]
    for app in apps:
        await eventually(lambda app=app: app.cluster is not None and app.cluster.ready)
    alice = await peerjs_page(open_page, apps[0], "alice")
    bob = await peerjs_page(open_page, apps[1], "bob")
    await data_then_media(open_page, alice, bob)
    a_room, b_room = (app.hub.rooms["peerjs:peerjs"] for app in apps)
    assert a_room.members["alice"].session.node == "pj0"
    assert a_room.members["bob"].session.node == "pj1"
    assert b_room.members["alice"].session.node == "pj0"
    for app in apps:
        assert app.cluster.stats["deliveries"] >= 3  # the signaling crossed the broker
    # The id is cluster-wide: "bob" is taken on node 0 too.
    thief = await peerjs_page(open_page, apps[0], "thief")
    assert await start(thief, "bob") == {"error": "unavailable-id"}
    open_page.check()


async def test_id_taken_and_invalid_key(make_e2e_server: Any, open_page: Any) -> None:
    app = await make_e2e_server()
    alice = await peerjs_page(open_page, app, "alice")
    assert await start(alice, "alice") == {"open": "alice"}
    thief = await peerjs_page(open_page, app, "thief")
    assert await start(thief, "alice") == {"error": "unavailable-id"}
    assert 'ID "alice" is taken' in (await thief.evaluate("T.errors"))[0]["message"]
    wrong = await peerjs_page(open_page, app, "wrong")
    assert await start(wrong, "carol", key="not-the-key") == {"error": "invalid-key"}
    # Without an id the client asks GET /peerjs/peerjs/id, then opens with it.
    anon = await peerjs_page(open_page, app, "anon")
    got = await anon.evaluate("T.start(undefined)")
    assert "open" in got and len(got["open"]) == 36, got
    assert set(app.hub.rooms["peerjs:peerjs"].members) == {"alice", got["open"]}
    open_page.check()


async def test_connecting_to_a_peer_that_never_comes_expires(
        make_e2e_server: Any, open_page: Any) -> None:
    app = await make_e2e_server(peerjs_expire_timeout=1.0)
    alice = await peerjs_page(open_page, app, "alice")
    assert await start(alice, "alice") == {"open": "alice"}
    await alice.evaluate("T.peer.connect('ghost')")
    await alice.wait_for_function("T.errors.length > 0", timeout=10_000)
    errors = await alice.evaluate("T.errors")
    assert errors == [{"type": "peer-unavailable", "message": "Could not connect to peer ghost"}]
    await asyncio.sleep(0.2)
    assert len(app.peerjs.queue) == 0
    open_page.check()
