"""Real video calls between Chromium pages through the browser SDK (issue 3).

Every page loads tests/e2e/pages/harness.html on the server's origin, which
imports the real ``/sdk/rtchub.js`` served by the server under test; the
camera and microphone are Chromium's fake devices. Assertions are on what a
person would see: remote <video> elements with a size and a frame count that
keeps growing. Any uncaught error or console error in a page fails the test
(``open_page`` fixture).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port
from tests.e2e.conftest import in_private_network, shows_fake_camera

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(120)]


async def join_all(pages: list[Any], room: str, users: list[str]) -> None:
    await asyncio.gather(*(
        p.evaluate("([room, user]) => T.startCall({room, user})", [room, u])
        for p, u in zip(pages, users, strict=True)))


async def test_one_to_one_call(make_e2e_server: Any, open_page: Any) -> None:
    app = await make_e2e_server()
    alice = await open_page(app.url + "/t/alice", name="alice")
    bob = await open_page(app.url + "/t/bob", name="bob")
    await join_all([alice, bob], "one", ["alice", "bob"])
    for page, other in ((alice, "bob"), (bob, "alice")):
        videos = await open_page.media_flowing(page, 1)
        assert videos[0]["userId"] == other and shows_fake_camera(videos[0]), videos
    stats = await alice.evaluate("T.call.stats('bob')")
    assert stats["connectionState"] == "connected"
    assert stats["localCandidateType"] and stats["remoteCandidateType"]
    # The server saw them as WebSocket sessions in one room.
    assert sorted(app.hub.rooms["one"].members) == ["alice", "bob"]
    open_page.check()


async def test_media_stays_in_the_private_network(make_e2e_server: Any, open_page: Any) -> None:
    """Issue 13: no selected candidate pair of a test call leaves the namespace."""
    app = await make_e2e_server()
    alice = await open_page(app.url + "/t/alice", name="alice")
    bob = await open_page(app.url + "/t/bob", name="bob")
    await join_all([alice, bob], "netns", ["alice", "bob"])
    for page, other in ((alice, "bob"), (bob, "alice")):
        await open_page.media_flowing(page, 1)
        stats = await page.evaluate("(u) => T.call.stats(u)", other)
        assert stats["connectionState"] == "connected", stats
        for key in ("localAddress", "remoteAddress"):
            assert in_private_network(stats[key]), (key, stats)
    open_page.check()


async def test_three_party_mesh(make_e2e_server: Any, open_page: Any) -> None:
    app = await make_e2e_server()
    users = ["ann", "ben", "cat"]
    pages = [await open_page(f"{app.url}/t/{u}", name=u) for u in users]
    await join_all(pages, "mesh", users)
    for page, me in zip(pages, users, strict=True):
        videos = await open_page.media_flowing(page, 2)
        assert sorted(v["userId"] for v in videos) == sorted(u for u in users if u != me)
    open_page.check()


async def test_six_party_mesh(make_e2e_server: Any, open_page: Any) -> None:
    """The largest call the SDK is meant for: 6 pages, 15 peer connections, 30 videos.

    All six join at once, so most pairs are set up while other pairs of the
    same pages are still negotiating. A small camera (160x120 at 10 fps)
    keeps 30 encoders and decoders within what a 2-core machine can run; the
    signaling and negotiation under test are the same as at 640x480. No
    microphone: with one, Chromium's audio service and each page's real-time
    audio threads took about a third of this 2-core machine, and the calls
    with audio are the smaller tests'.
    """
    app = await make_e2e_server()
    users = [f"six-{i}" for i in range(1, 7)]
    pages = [await open_page(f"{app.url}/t/{u}", name=u) for u in users]
    small = {"width": 160, "height": 120, "frameRate": 10}
    await asyncio.gather(*(
        p.evaluate("([room, user, video]) => T.startCall({room, user, video, audio: false})",
                   ["six", u, small])
        for p, u in zip(pages, users, strict=True)))
    assert sorted(app.hub.rooms["six"].members) == users
    for page, me in zip(pages, users, strict=True):
        others = sorted(u for u in users if u != me)
        videos = await open_page.media_flowing(page, 5, timeout=30)
        assert sorted(v["userId"] for v in videos) == others, videos
        assert all(shows_fake_camera(v) and v["width"] <= 160 for v in videos), videos
        states = await page.evaluate("T.peerStates()")
        assert sorted(states) == others
        assert all(s["connection"] == "connected" and s["signaling"] == "stable"
                   for s in states.values()), states
    open_page.check()


async def test_glare_both_offer_at_once(make_e2e_server: Any, open_page: Any) -> None:
    app = await make_e2e_server()
    a = await open_page(app.url + "/t/a", name="a")
    b = await open_page(app.url + "/t/b", name="b")
    await join_all([a, b], "glare", ["peer-a", "peer-b"])
    await open_page.media_flowing(a, 1)
    await open_page.media_flowing(b, 1)
    # Hold each page's incoming signaling, make both offer, and only then let
    # the offers cross: each side gets an offer while it has one outstanding.
    await asyncio.gather(a.evaluate("T.hold()"), b.evaluate("T.hold()"))
    await asyncio.gather(a.evaluate("T.call.renegotiate()"), b.evaluate("T.call.renegotiate()"))
    for page, other in ((a, "peer-b"), (b, "peer-a")):
        await page.wait_for_function(
            "(o) => T.call.peers.get(o).pc.signalingState === 'have-local-offer'", arg=other)
    await asyncio.gather(a.evaluate("T.release()"), b.evaluate("T.release()"))
    for page, other in ((a, "peer-b"), (b, "peer-a")):
        await page.wait_for_function(
            """(o) => { const s = T.peerStates()[o];
                return s.signaling === 'stable' && s.connection === 'connected'; }""", arg=other)
        await open_page.media_flowing(page, 1)
    # Both saw the collision: the impolite one (peer-a) ignored the offer, the
    # polite one (peer-b) gave way.
    assert [c["polite"] for c in await a.evaluate("T.collisions")][-1] is False
    assert [c["polite"] for c in await b.evaluate("T.collisions")][-1] is True
    open_page.check()


async def test_chat_over_server_and_data_channel(make_e2e_server: Any, open_page: Any) -> None:
    app = await make_e2e_server()
    a = await open_page(app.url + "/t/a", name="a")
    b = await open_page(app.url + "/t/b", name="b")
    await join_all([a, b], "chat", ["amy", "bo"])
    ack = await a.evaluate(
        "T.hub.send({type: 'message', roomId: 'chat', data: {text: 'via server'}})")
    assert ack["type"] == "ack"
    await b.wait_for_function("T.messages.some((m) => m.data.text === 'via server' && m.from === 'amy')")
    await a.wait_for_function("T.call.peers.get('bo') && T.call.peers.get('bo').dc.readyState === 'open'")
    await b.wait_for_function("T.call.peers.get('amy') && T.call.peers.get('amy').dc.readyState === 'open'")
    assert await a.evaluate("T.call.sendChat('via data channel')") == 1
    await b.wait_for_function("T.chats.some((c) => c.text === 'via data channel' && c.from === 'amy')")
    assert await b.evaluate("T.call.sendChat('back')") == 1
    await a.wait_for_function("T.chats.some((c) => c.text === 'back' && c.from === 'bo')")
    # The data-channel chat never touched the server: only one message there.
    assert await a.evaluate("T.messages.length") == 0
    assert await b.evaluate("T.messages.length") == 1
    open_page.check()


async def test_file_transfer_5mb(make_e2e_server: Any, open_page: Any, tmp_path: Path) -> None:
    app = await make_e2e_server()
    a = await open_page(app.url + "/t/a", name="a")
    b = await open_page(app.url + "/t/b", name="b")
    await join_all([a, b], "files", ["sender", "receiver"])
    await a.wait_for_function(
        "T.call.peers.get('receiver') && T.call.peers.get('receiver').dc.readyState === 'open'")
    data = os.urandom(5 * 1024 * 1024)
    expected = hashlib.sha256(data).hexdigest()
    path = tmp_path / "five-megabytes.bin"
    path.write_bytes(data)
    await a.set_input_files("#file", str(path))
    sent = await a.evaluate("T.sendPickedFile()")
    assert sent["sha256"] == expected and sent["size"] == len(data)
    await b.wait_for_function("T.files.length === 1")
    got = (await b.evaluate("T.files"))[0]
    assert got == {"from": "sender", "name": "five-megabytes.bin", "size": len(data),
                   "sha256": expected, "ok": True}
    # Progress was reported along the way on both ends.
    assert await a.evaluate("T.progress.sent") >= 3
    assert await b.evaluate("T.progress.received") >= 3
    open_page.check()


async def test_server_restart_mid_call(make_e2e_server: Any, open_page: Any) -> None:
    port = free_port()
    app = await make_e2e_server(port=port)
    a = await open_page(app.url + "/t/a", name="a")
    b = await open_page(app.url + "/t/b", name="b")
    # The SDK backs off with full jitter up to 30 s by default, so a restart
    # that outlasts a few attempts could leave the next one 30 s away (CI saw
    # it). Reconnecting on its own is what this test checks, not that
    # schedule: a 2 s cap keeps the wait well inside the timeout below.
    for page in (a, b):
        await page.evaluate("T.connect({backoffCapMs: 2000})")
    await join_all([a, b], "restart", ["rita", "sam"])
    await open_page.media_flowing(a, 1)
    # Pages will log refused connections while the server is away.
    open_page.allow_network_errors = True
    await make_e2e_server.stop(app)
    await asyncio.sleep(0.5)
    app2 = await make_e2e_server(port=port)
    for page in (a, b):
        await page.wait_for_function(
            "T.states.some((s) => s.state === 'reconnecting') && T.hub.state === 'rejoined'"
            " && T.hub.rooms.has('restart')", timeout=30_000)
    assert sorted(app2.hub.rooms["restart"].members) == ["rita", "sam"]
    await a.evaluate("T.hub.send({type: 'message', roomId: 'restart', data: {text: 'after restart'}})")
    await b.wait_for_function("T.messages.some((m) => m.data.text === 'after restart')")
    # The call itself was rebuilt over the new server: media and data channel again.
    for page in (a, b):
        await open_page.media_flowing(page, 1)
    await a.wait_for_function("T.call.peers.get('sam') && T.call.peers.get('sam').dc.readyState === 'open'")
    await a.evaluate("T.call.sendChat('dc after restart')")
    await b.wait_for_function("T.chats.some((c) => c.text === 'dc after restart')")
    open_page.check()
