"""SFU calls between aiortc bots through a real Janus that the test starts.

Everything runs inside tools/netns-run's namespace (``require_private_network``):
Janus gathers ICE only on the namespace's veth address (``--sfu-ice-ip``),
aiortc has no ICE servers, so no media packet can leave the namespace.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from rtchub.auth.tokens import mint
from rtchub.client import Client, ClientError
from rtchub.client.media import SfuMedia, SyntheticVideo
from rtchub.settings import Settings
from rtchub.sfu.supervisor import LocalJanus
from tests.conftest import Servers
from tests.e2e.conftest import require_private_network
from tests.redis_fixture import redis_server  # noqa: F401

pytestmark = pytest.mark.e2e
SECRET = "sfu-test-secret-0123456789-0123456789"
API_KEY = "k-sfu-test"


def sfu_settings(**kw: Any) -> dict[str, Any]:
    """Server settings for a test SFU: Janus on the namespace's address only."""
    require_private_network()
    kw.setdefault("sfu_ice_ip", os.environ["RTCHUB_NETNS"])
    kw.setdefault("sfu_rtp_ports", "30000-30999")
    return kw


async def bot(app: Any, user: str, room: str, *, media: str | None = None, token: str | None = None,
              transport: str = "websocket") -> tuple[Client, SfuMedia]:
    client = Client(app.url, token=token, transport=transport)
    await client.connect()
    await client.join(room, None if token else user, media=media)
    return client, SfuMedia(client, room)


@pytest.fixture
async def bots() -> AsyncIterator[list[tuple[Client, SfuMedia]]]:
    made: list[tuple[Client, SfuMedia]] = []
    yield made
    for client, media in made:
        await media.close()
        await client.close()


async def advancing(media: SfuMedia, user: str, timeout: float = 20.0) -> int:
    """Frames of ``user``'s video arrive and keep arriving."""
    first = await media.wait_frames(user, 5, timeout)
    return await media.wait_frames(user, first + 10, timeout)


async def test_bot_publishes_other_bot_counts_frames(make_server: Servers, bots: list) -> None:
    app = await make_server(**sfu_settings(sfu="local", api_key=API_KEY))
    alice, bob = await bot(app, "alice", "call", media="sfu"), await bot(app, "bob", "call")
    bots += [alice, bob]
    published = await alice[1].publish([SyntheticVideo()])
    assert [t["kind"] for t in published] == ["video"]
    assert await advancing(bob[1], "alice") > 15
    # The track list names the publisher and an opaque trackId, never a Janus id.
    track = bob[1].tracks[published[0]["trackId"]]
    assert track == {"trackId": published[0]["trackId"], "userId": "alice", "kind": "video",
                     "source": "camera", "muted": False}
    await bob[1].publish([SyntheticVideo()])
    assert await advancing(alice[1], "bob") > 15
    async with aiohttp.ClientSession() as http, \
            http.get(f"{app.url}/api/rooms/call", headers={"X-API-Key": API_KEY}) as resp:
        assert (await resp.json())["media"] == "sfu"
    # Mute is signaling: the other member is told.
    await alice[1].mute(published[0]["trackId"], True)
    await asyncio.wait_for(_until(lambda: bob[1].tracks[published[0]["trackId"]]["muted"]), 5)
    # A member who leaves takes its tracks along.
    await bob[0].leave("call")
    await asyncio.wait_for(_until(lambda: not any(
        t["userId"] == "bob" for t in alice[1].tracks.values())), 5)


async def _until(check: Any) -> None:
    while not check():
        await asyncio.sleep(0.05)


async def test_sfu_over_sse_and_polling(make_server: Servers, bots: list) -> None:
    """The SFU messages are ordinary messages: every transport carries them, with seq."""
    app = await make_server(**sfu_settings(sfu="local", media_mode="sfu"))
    pub = await bot(app, "pub", "room", transport="sse")
    sub = await bot(app, "sub", "room", transport="polling")
    bots += [pub, sub]
    await pub[1].publish([SyntheticVideo()])
    assert await advancing(sub[1], "pub") > 15


async def raw_error(client: Client, msg: dict[str, Any]) -> str:
    with pytest.raises(ClientError) as info:
        await client.request(msg)
    return info.value.code


async def test_bad_input_gets_coded_errors_and_others_keep_media(make_server: Servers, bots: list) -> None:
    app = await make_server(**sfu_settings(sfu="local", auth="jwt", jwt_secret=SECRET))
    alice = await bot(app, "alice", "a", media="sfu", token=mint(sub="alice", key=SECRET))
    bob = await bot(app, "bob", "a", token=mint(sub="bob", key=SECRET))
    eve = await bot(app, "eve", "a", token=mint(sub="eve", key=SECRET, extra={
        "canPublish": False}))
    mallory = await bot(app, "mallory", "other", media="sfu", token=mint(sub="mallory", key=SECRET))
    bots += [alice, bob, eve, mallory]
    published = await alice[1].publish([SyntheticVideo()])
    alice_track = published[0]["trackId"]
    await advancing(bob[1], "alice")
    mc = mallory[0]
    # Garbage SDP: refused by rtchub's check, and an SDP-looking one by Janus.
    assert await raw_error(mc, {"type": "publish", "roomId": "other", "sdp": "garbage"}) == "bad-sdp"
    assert await raw_error(mc, {"type": "publish", "roomId": "other",
                                "sdp": "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"}) == "bad-sdp"
    # A track of another room: not found in the room the client is in ...
    await mallory[1].publish([SyntheticVideo()])
    assert await raw_error(mc, {"type": "subscribe", "roomId": "other",
                                "tracks": [alice_track]}) == "track-not-found"
    # ... and a room it is not in is not its business at all.
    assert await raw_error(mc, {"type": "subscribe", "roomId": "a",
                                "tracks": [alice_track]}) == "not-in-room"
    # Publishing without the grant.
    assert await raw_error(eve[0], {"type": "publish", "roomId": "a",
                                    "sdp": alice[1].pub.localDescription.sdp}) == "forbidden"
    # Forged Janus ids in any field: a feed id, handle and session ids, another room's
    # Janus room. They point at nothing (rtchub builds Janus requests from its own state).
    sfu = app.sfu
    alice_peer = next(p for p in sfu.peers.values() if p.user_id == "alice")
    forged = {"feed": alice_peer.feed, "id": None, "handle_id": alice_peer.pub,
              "session_id": alice_peer.conn.session_id, "room": alice_peer.placed.janus_room}
    assert await raw_error(mc, {"type": "subscribe", "roomId": "other",
                                "tracks": [alice_peer.feed]}) == "track-not-found"
    assert await raw_error(mc, {"type": "mute", "roomId": "other", "trackId": alice_track,
                                "muted": True}) == "track-not-found"
    before = {k: v for k, v in forged.items() if k != "id"}
    await mc.request({"type": "unpublish", "roomId": "other", **before})
    await mc.request({"type": "media-candidate", "roomId": "other", "pc": "publish",
                      "candidate": {"candidate": "candidate:1 1 udp 1 10.77.0.1 9 typ host",
                                    "sdpMid": "0", **before}})
    assert await raw_error(mc, {"type": "subscribe-answer", "roomId": "other",
                                "sdp": "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n", **before}) \
        == "invalid-message"
    assert await raw_error(mc, {"type": "media-candidate", "roomId": "other", "pc": "janus",
                                "candidate": None}) == "invalid-message"
    # Alice's track is untouched: still published, still muted=False, and Bob still sees it.
    assert bob[1].tracks[alice_track]["muted"] is False
    n = bob[1].frames_of("alice")
    await bob[1].wait_frames("alice", n + 15)
    assert sfu.peers[("a", alice[0].session_id)].pub == alice_peer.pub


async def test_media_mode_from_api_claim_and_first_join(make_server: Servers) -> None:
    app = await make_server(**sfu_settings(sfu="local", auth="jwt", jwt_secret=SECRET,
                                           api_key=API_KEY, max_room_members=2))
    headers = {"X-API-Key": API_KEY}

    async def join(user: str, room: str, **kw: Any) -> tuple[Client, dict[str, Any]]:
        extra = kw.pop("extra", None)
        c = Client(app.url, token=mint(sub=user, key=SECRET, extra=extra))
        await c.connect()
        return c, await c.join(room, **kw)

    clients = []
    try:
        c, info = await join("u1", "plain")
        clients.append(c)
        assert info["media"] == "mesh"                      # --media-mode default
        c, info = await join("u2", "viaclaim", extra={"media": "sfu"})
        clients.append(c)
        assert info["media"] == "sfu"                       # JWT claim
        c, info = await join("u3", "viaclaim", media="mesh")
        clients.append(c)
        assert info["media"] == "sfu"                       # the room's mode stands
        async with aiohttp.ClientSession() as http:
            async with http.put(f"{app.url}/api/rooms/declared/media", headers=headers,
                                json={"mode": "sfu"}) as resp:
                assert resp.status == 200, await resp.text()
            c, info = await join("u4", "declared", media="mesh")
            clients.append(c)
            assert info["media"] == "sfu"                   # the server API outranks the join
            async with http.put(f"{app.url}/api/rooms/plain/media", headers=headers,
                                json={"mode": "sfu"}) as resp:
                assert resp.status == 409                   # a room in use keeps its mode
            async with http.get(f"{app.url}/api/rooms/declared", headers=headers) as resp:
                assert (await resp.json())["media"] == "sfu"
        # Limits: the mesh limit (2) refuses a third member, an SFU room does not.
        for user in ("m2",):
            c, _ = await join(user, "plain")
            clients.append(c)
        c = Client(app.url, token=mint(sub="m3", key=SECRET))
        await c.connect()
        clients.append(c)
        with pytest.raises(ClientError) as refused:
            await c.join("plain")
        assert refused.value.code == "room-full" and "mesh" in refused.value.message
        for user in ("s1", "s2", "s3"):
            c, info = await join(user, "big", media="sfu")
            clients.append(c)
        assert len(app.hub.rooms["big"].members) == 3
    finally:
        for c in clients:
            await c.close()


async def time_until_media(media: SfuMedia, user: str, since: float, timeout: float = 30.0) -> float:
    """Seconds from ``since`` until 5 frames of ``user`` arrived again after ``media-reset``.

    The reset forgets every track, so only frames of the re-published tracks count.
    """
    await asyncio.wait_for(_until(lambda: media.resets > 0), timeout)
    await media.wait_frames(user, 4, timeout)
    return time.monotonic() - since


async def test_kill_local_janus_media_comes_back(make_server: Servers, bots: list) -> None:
    app = await make_server(**sfu_settings(sfu="local"))
    alice, bob = await bot(app, "alice", "k", media="sfu"), await bot(app, "bob", "k")
    bots += [alice, bob]
    await alice[1].publish([SyntheticVideo()])
    await bob[1].publish([SyntheticVideo()])
    await advancing(bob[1], "alice")
    await advancing(alice[1], "bob")
    local = app.sfu.local
    assert local is not None
    old_pid = local.pid
    assert old_pid is not None
    os.kill(old_pid, 9)
    killed = time.monotonic()
    took = [await time_until_media(bob[1], "alice", killed),
            await time_until_media(alice[1], "bob", killed)]
    assert local.pid != old_pid and local.restarts == 1
    await advancing(bob[1], "alice")
    await advancing(alice[1], "bob")
    print(f"\nmedia back after kill -9 of --sfu local Janus: {max(took):.2f}s")


@pytest.fixture
async def janus_pair() -> AsyncIterator[list[LocalJanus]]:
    """Two stand-alone Janus servers (not restarted when killed), as ``--sfu-url`` targets."""
    require_private_network()
    servers = []
    for i in range(2):
        ports = f"{31000 + i * 1000}-{31999 + i * 1000}"
        s = Settings(sfu_ice_ip=os.environ["RTCHUB_NETNS"], sfu_rtp_ports=ports)
        janus = LocalJanus(s, api_secret="pair-secret", restart=False)
        await janus.start()
        servers.append(janus)
    yield servers
    for janus in servers:
        await janus.stop()


async def test_kill_one_of_two_sfu_urls_room_moves(make_server: Servers, bots: list,
                                                   janus_pair: list[LocalJanus]) -> None:
    app = await make_server(**sfu_settings(sfu_url=[j.url for j in janus_pair],
                                           sfu_api_secret="pair-secret", media_mode="sfu"))
    # Two rooms: placement by load puts them on different servers.
    r1 = [await bot(app, "a1", "one"), await bot(app, "b1", "one")]
    r2 = [await bot(app, "a2", "two"), await bot(app, "b2", "two")]
    bots += r1 + r2
    for _client, media in r1 + r2:
        await media.publish([SyntheticVideo()])
    await advancing(r1[1][1], "a1")
    await advancing(r2[1][1], "a2")
    placed = {room: (await app.sfu.placement.lookup(room)).server for room in ("one", "two")}
    assert sorted(placed.values()) == sorted(j.url for j in janus_pair)
    victim = next(j for j in janus_pair if j.url == placed["one"])
    survivor_url = placed["two"]
    assert victim.pid is not None
    os.kill(victim.pid, 9)
    killed = time.monotonic()
    took = [await time_until_media(r1[1][1], "a1", killed),
            await time_until_media(r1[0][1], "b1", killed)]
    assert (await app.sfu.placement.lookup("one")).server == survivor_url
    # The other room never noticed.
    assert r2[0][1].resets == 0 and r2[1][1].resets == 0
    n = r2[1][1].frames_of("a2")
    await r2[1][1].wait_frames("a2", n + 15)
    print(f"\nmedia back after kill -9 of one of two --sfu-url Janus: {max(took):.2f}s")


async def test_cluster_nodes_agree_on_placement_and_media_crosses_nodes(
        make_server: Servers, bots: list, janus_pair: list[LocalJanus], redis_server: Any) -> None:  # noqa: F811
    """Two rtchub nodes on one Redis, two Janus: a room's members on both nodes meet on one Janus."""
    urls = [j.url for j in janus_pair]
    nodes = [await make_server(**sfu_settings(sfu_url=urls, sfu_api_secret="pair-secret",
                                              broker=redis_server.url, node_id=f"sfu-n{i}",
                                              node_ttl=1.0))
             for i in range(2)]
    alice = await bot(nodes[0], "alice", "xnode", media="sfu")
    bob = await bot(nodes[1], "bob", "xnode")            # the mode came from the broker
    bots += [alice, bob]
    assert nodes[1].hub.rooms["xnode"].media == "sfu"
    await alice[1].publish([SyntheticVideo()])
    await bob[1].publish([SyntheticVideo()])
    await advancing(bob[1], "alice")
    await advancing(alice[1], "bob")
    # One placement, seen alike from both nodes, and both nodes' handles on that Janus.
    placed = [await n.sfu.placement.lookup("xnode") for n in nodes]
    assert placed[0] == placed[1] is not None
    for n in nodes:
        assert {p.server.key for p in n.sfu.peers.values()} == {placed[0].server}


def test_bench_sfu_scenario_runs() -> None:
    """``rtchub bench``'s SFU scenario stays runnable (numbers go to make bench, not asserted)."""
    require_private_network()
    done = subprocess.run([sys.executable, "-m", "rtchub.bench.sfu", "--quick"], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(result["mesh_first_frame_ms"]["all"]) == len(result["sfu_first_frame_ms"]["all"]) == 5
    assert result["subscriber_fps"] > 0 and result["janus_cpu_pct_per_stream"] > 0
    assert result["rtchub_cpu_ms_per_sfu_join"] > 0
