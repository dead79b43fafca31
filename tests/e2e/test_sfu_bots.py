"""SFU calls between aiortc bots through a real Janus that the test starts.

Everything runs inside tools/netns-run's namespace (``require_private_network``):
Janus gathers ICE only on the namespace's veth address (``--sfu-ice-ip``),
aiortc has no ICE servers, so no media packet can leave the namespace.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
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
from tests.test_cluster import wait_ready

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
        assert info["media"] == "auto"                      # --media-mode default with an SFU
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
        for user in ("m1", "m2"):
            c, _ = await join(user, "meshy", media="mesh")
            clients.append(c)
        c = Client(app.url, token=mint(sub="m3", key=SECRET))
        await c.connect()
        clients.append(c)
        with pytest.raises(ClientError) as refused:
            await c.join("meshy")
        assert refused.value.code == "room-full" and "mesh" in refused.value.message
        # An auto room (the default with an SFU) refuses, with the reason, a third
        # client that cannot follow it onto the SFU.
        c = Client(app.url, token=mint(sub="m4", key=SECRET))
        await c.connect()
        clients.append(c)
        c2, _ = await join("u5", "plain")
        clients.append(c2)
        with pytest.raises(ClientError) as refused:
            await c.join("plain")
        assert refused.value.code == "wrong-media-mode"
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
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{app.url}/metrics") as resp:
            text = await resp.text()
        assert "rtchub_sfu_local_restarts_total 1.0" in text
        assert 'rtchub_sfu_up{server="local"} 1.0' in text
        assert 'rtchub_sfu_events_total{event="resets"} 1.0' in text
        async with http.get(f"{app.url}/readyz") as resp:
            assert resp.status == 200
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


def test_local_janus_dies_with_a_killed_rtchub(server_process: Any) -> None:
    """kill -9 of rtchub must not leave an orphaned Janus holding its ports."""
    import psutil

    require_private_network()
    proc = server_process("--sfu", "local", "--sfu-ice-ip", os.environ["RTCHUB_NETNS"])
    rtchub = psutil.Process(proc.proc.pid)
    deadline = time.monotonic() + 10
    # A child that has forked but not yet exec'd Janus still has rtchub's command line.
    while not (kids := [p for p in rtchub.children() if "-F" in p.cmdline()]):
        assert time.monotonic() < deadline, "no Janus child"
        time.sleep(0.05)
    janus = kids[0]
    folder = janus.cmdline()[janus.cmdline().index("-F") + 1]
    # Up and connected (readyz checks the SFU): Janus is past its start-up.
    while True:
        try:
            with urllib.request.urlopen(f"{proc.url}/readyz", timeout=2) as resp:
                if resp.status == 200:
                    break
        except OSError:
            pass
        assert time.monotonic() < deadline + 20, "rtchub --sfu local never became ready"
        time.sleep(0.1)
    proc.proc.kill()
    proc.proc.wait(5)
    try:
        janus.wait(20)  # psutil.TimeoutExpired if it outlives its parent
        assert not janus.is_running()
    finally:
        if janus.is_running():
            janus.kill()
        shutil.rmtree(folder, ignore_errors=True)  # a killed rtchub cannot clean up


async def test_node_killed_during_sfu_call_media_flows_signaling_resumes(
        redis_server: Any, server_process: Any, bots: list) -> None:  # noqa: F811
    """kill -9 of the rtchub node a publisher is connected to: its media keeps flowing
    through Janus, the client resumes on another node, and that node takes the member's
    Janus handles over (``claim``), so signaling works on from there."""
    require_private_network()
    reclaim = 4
    janus = LocalJanus(Settings(sfu_ice_ip=os.environ["RTCHUB_NETNS"], sfu_rtp_ports="34000-34999"),
                       api_secret="kill-secret", restart=False, reclaim_timeout=reclaim)
    await janus.start()
    try:
        grace = 5
        common = ("--broker", redis_server.url, "--node-ttl", "1", "--grace-period", str(grace),
                  "--sfu-url", janus.url, "--sfu-api-secret", "kill-secret", "--media-mode", "sfu",
                  "--log-level", "warning")
        victim = server_process(*common, "--node-id", "sfu-victim")
        survivor = server_process(*common, "--node-id", "sfu-survivor")
        for node in (victim, survivor):  # cluster up and Janus connected
            await wait_ready(node.url)
        alice_client = Client(victim.url, backoff_base=0.05, backoff_cap=0.5)
        # Alice's load balancer sends her reconnect to the surviving node.
        alice_client.on("state", lambda e: setattr(alice_client, "url", survivor.url)
                        if e["state"] == "reconnecting" else None)
        await alice_client.connect()
        await alice_client.join("crash", "alice")
        alice = (alice_client, SfuMedia(alice_client, "crash"))
        bob = await bot(survivor, "bob", "crash")
        # Wendy is on the victim too, and never comes back.
        wendy_client = Client(victim.url, reconnect=False)
        await wendy_client.connect()
        await wendy_client.join("crash", "wendy")
        wendy = (wendy_client, SfuMedia(wendy_client, "crash"))
        bots += [alice, bob, wendy]
        published = await alice[1].publish([SyntheticVideo()])
        await wendy[1].publish([SyntheticVideo()])
        await advancing(bob[1], "alice")
        await advancing(bob[1], "wendy")
        victim.kill()  # SIGKILL: no goodbye
        killed = time.monotonic()
        # Bob keeps getting Alice's frames, past the time Janus would have kept an
        # unclaimed session of the dead node (reclaim_session_timeout).
        last = bob[1].frames_of("alice")
        while time.monotonic() - killed < reclaim + 3:
            await asyncio.sleep(0.5)
            now = bob[1].frames_of("alice")
            assert now > last, f"alice's video stalled {time.monotonic() - killed:.1f}s after the kill"
            last = now
        await asyncio.wait_for(_until(lambda: "resumed" in alice_client.states), 15)
        assert "rejoined" not in alice_client.states and alice[1].resets == 0
        # Signaling on the survivor reaches Alice's (taken over) handles: her mute is
        # announced, and she subscribes to a newcomer's video through the claimed session.
        await alice[1].mute(published[0]["trackId"], True)
        await asyncio.wait_for(_until(lambda: bob[1].tracks[published[0]["trackId"]]["muted"]), 5)
        # Wendy's tracks leave the room's directory once she is gone for good, so a
        # newcomer subscribes to live tracks only.
        await asyncio.wait_for(_until(lambda: not any(
            t["userId"] == "wendy" for t in bob[1].tracks.values())), grace + 10)
        carol = await bot(survivor, "carol", "crash")
        bots.append(carol)
        await carol[1].publish([SyntheticVideo()])
        await advancing(alice[1], "carol")
        await advancing(carol[1], "alice")
        assert not any(t["userId"] == "wendy" for t in carol[1].tracks.values())
        n = bob[1].frames_of("alice")
        await bob[1].wait_frames("alice", n + 15)
    finally:
        await janus.stop()


async def test_subscriber_ice_restart_gets_fresh_credentials(make_server: Servers, bots: list) -> None:
    """``ice-restart``: the server's next subscribe-offer carries new ICE credentials
    (RFC 8445 section 9) and media keeps flowing once the client answered it."""
    app = await make_server(**sfu_settings(sfu="local", media_mode="sfu"))
    alice, bob = await bot(app, "alice", "ice"), await bot(app, "bob", "ice")
    bots += [alice, bob]
    offers: list[dict[str, Any]] = []
    bob[0].on("subscribe-offer", offers.append)
    await alice[1].publish([SyntheticVideo()])
    await advancing(bob[1], "alice")

    def ufrag(sdp: str) -> str:
        return next(line for line in sdp.splitlines() if line.startswith("a=ice-ufrag:"))

    before = ufrag(offers[-1]["sdp"])
    await bob[0].request({"type": "ice-restart", "roomId": "ice", "pc": "subscribe"})
    await asyncio.wait_for(_until(lambda: offers[-1].get("restart")), 5)
    assert ufrag(offers[-1]["sdp"]) != before
    n = bob[1].frames_of("alice")
    await bob[1].wait_frames("alice", n + 15)
    # Publishers restart with a new offer: the ice-restart message is for subscribers.
    with pytest.raises(ClientError) as info:
        await alice[0].request({"type": "ice-restart", "roomId": "ice", "pc": "publish"})
    assert info.value.code == "invalid-message"
