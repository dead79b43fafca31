"""SFU calls in Debian's Chromium (fake camera), with real Janus and aiortc bots.

Chromium, Janus and the bots all run inside tools/netns-run's namespace:
Janus gathers only on the namespace's veth address, and every selected
candidate pair is checked to stay inside it.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import pytest
from playwright.async_api import Page

from rtchub.client import Client
from rtchub.client.media import SfuMedia, SyntheticVideo
from tests.conftest import Servers
from tests.e2e.conftest import PageWatch, in_private_network, require_private_network

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]
#: Pages in the big-room test (10, as issue 15 asks: it passed on the shared 2-core machine in
#: ~35 s). RTCHUB_SFU_PAGES=4 runs a smaller room on a slower machine.
PAGES = int(os.environ.get("RTCHUB_SFU_PAGES", "10"))
SMALL_VIDEO = {"width": 320, "height": 240, "frameRate": 15}


def sfu(**kw: Any) -> dict[str, Any]:
    require_private_network()
    kw.setdefault("sfu", "local")
    kw.setdefault("sfu_ice_ip", os.environ["RTCHUB_NETNS"])
    kw.setdefault("sfu_rtp_ports", "32000-32999")
    return kw


async def start(page: Page, room: str, user: str, **kw: Any) -> None:
    await page.evaluate("(a) => T.startCall(a)", {"room": room, "user": user, "video": SMALL_VIDEO, **kw})


async def frames_advance(page: Page, users: list[str], timeout: float = 30.0) -> dict[str, int]:
    """Every one of ``users`` has a playing <video> whose decoded frames keep growing."""
    await page.wait_for_function(
        """(users) => { const v = T.videos();
            return users.every((u) => v.some((x) => x.userId === u && x.width > 0 && x.frames > 0)); }""",
        arg=users, timeout=timeout * 1000)
    before = {v["userId"]: v["frames"] for v in await page.evaluate("T.videos()")}
    await page.wait_for_function(
        """([users, before]) => users.every((u) => T.videos().some(
              (x) => x.userId === u && x.frames > before[u] + 5))""",
        arg=[users, before], timeout=timeout * 1000)
    return {v["userId"]: v["frames"] for v in await page.evaluate("T.videos()")}


async def pairs_private(page: Page) -> None:
    pairs = await page.evaluate("T.pairs()")
    assert pairs, "no selected candidate pair"
    for p in pairs:
        assert in_private_network(p["local"]) and in_private_network(p["remote"]), p


async def test_bot_publishes_and_browser_sees_its_video(make_e2e_server: Servers,
                                                        open_page: PageWatch) -> None:
    app = await make_e2e_server(**sfu(media_mode="sfu"))
    client = Client(app.url)
    await client.connect()
    await client.join("botroom", "bot")
    media = SfuMedia(client, "botroom")
    try:
        await media.publish([SyntheticVideo()])
        page = await open_page(app.url + "/t/sfu", harness="sfu.html")
        await start(page, "botroom", "viewer", media=False)
        await frames_advance(page, ["bot"])
        await pairs_private(page)
    finally:
        await media.close()
        await client.close()


async def test_browser_publishes_simulcast_and_bot_counts_frames(make_e2e_server: Servers,
                                                                 open_page: PageWatch) -> None:
    app = await make_e2e_server(**sfu(media_mode="sfu"))
    page = await open_page(app.url + "/t/sfu", harness="sfu.html")
    await start(page, "camroom", "cam", video={"width": 640, "height": 480, "frameRate": 15})
    client = Client(app.url)
    await client.connect()
    # Listen before joining: the room's track list follows the join at once.
    media = SfuMedia(client, "camroom")
    await client.join("camroom", "bot")
    try:
        n = await media.wait_frames("cam", 10, timeout=30)
        await media.wait_frames("cam", n + 15, timeout=30)
        # Three VP8 simulcast layers leave the browser (rids h, m, l).
        await page.wait_for_function(
            "async () => (await T.outboundVideo()).filter((e) => e.rid).length === 3", timeout=15000)
        rids = sorted(e["rid"] for e in await page.evaluate("T.outboundVideo()"))
        assert rids == ["h", "l", "m"]
        # Rooms take VP8 and H.264, VP8 first: Chromium offers both and gets VP8.
        (feed,) = (await app.sfu.feeds("camroom")).values()
        assert feed["codecs"] == {mid: "vp8" if kind == "video" else "opus"
                                  for mid, kind in feed["tracks"].items()}, feed
        # Mute is announced: the bot sees the camera track muted, then unmuted.
        await page.evaluate("T.call.setCameraEnabled(false)")
        await asyncio.wait_for(_until(lambda: any(
            t["userId"] == "cam" and t["kind"] == "video" and t["muted"] for t in media.tracks.values())), 10)
        await page.evaluate("T.call.setCameraEnabled(true)")
        await asyncio.wait_for(_until(lambda: any(
            t["userId"] == "cam" and t["kind"] == "video" and not t["muted"]
            for t in media.tracks.values())), 10)
    finally:
        await media.close()
        await client.close()


async def _until(check: Any) -> None:
    while not check():
        await asyncio.sleep(0.05)


async def test_screen_share_is_a_second_track(make_e2e_server: Servers, open_page: PageWatch) -> None:
    app = await make_e2e_server(**sfu(media_mode="sfu"))
    ana = await open_page(app.url + "/t/sfu", harness="sfu.html")
    ben = await open_page(app.url + "/t/sfu", harness="sfu.html")
    await start(ana, "share", "ana")
    await start(ben, "share", "ben")
    await frames_advance(ben, ["ana"])
    await ana.evaluate("T.call.startScreenShare().then(() => true)")
    await frames_advance(ben, ["ana", "ana:screen"])
    await ana.evaluate("T.call.stopScreenShare()")
    await ben.wait_for_function("!T.videos().some((v) => v.userId === 'ana:screen')", timeout=15000)
    await frames_advance(ben, ["ana"])


async def test_many_pages_in_one_sfu_room_each_see_all_others(make_e2e_server: Servers,
                                                              open_page: PageWatch) -> None:
    app = await make_e2e_server(**sfu(media_mode="sfu"))
    users = [f"p{i}" for i in range(PAGES)]
    pages = []
    t0 = time.monotonic()
    for user in users:
        page = await open_page(app.url + "/t/sfu", harness="sfu.html", name=user)
        # Video only: with a microphone on every page, Chromium's audio service and
        # the pages' real-time audio threads took ~30 % of this 2-core machine and
        # 10 pages no longer fitted (7 took 52 s). The smaller calls here publish audio,
        # and tests/e2e/test_recording.py hears each participant's tone through Janus.
        await start(page, "big", user, video={"width": 160, "height": 120, "frameRate": 10},
                    audio=False)
        pages.append(page)
    for user, page in zip(users, pages, strict=True):
        others = [u for u in users if u != user]
        await frames_advance(page, others, timeout=60 + 10 * PAGES)
        await pairs_private(page)
    print(f"\n{PAGES} pages in one SFU room, each sees {PAGES - 1} advancing videos "
          f"({time.monotonic() - t0:.1f}s from the first page)")


async def test_kill_janus_pages_get_media_back(make_e2e_server: Servers, open_page: PageWatch) -> None:
    app = await make_e2e_server(**sfu(media_mode="sfu"))
    ana = await open_page(app.url + "/t/sfu", harness="sfu.html")
    ben = await open_page(app.url + "/t/sfu", harness="sfu.html")
    await start(ana, "phoenix", "ana")
    await start(ben, "phoenix", "ben")
    await frames_advance(ana, ["ben"])
    await frames_advance(ben, ["ana"])
    local = app.sfu.local
    assert local is not None and local.pid is not None
    os.kill(local.pid, 9)
    killed = time.monotonic()
    for page in (ana, ben):
        await page.wait_for_function("T.resets.length > 0", timeout=15000)
    # After the reset the old <video> keeps its last frame count; new tracks restart it.
    await frames_advance(ana, ["ben"], timeout=40)
    await frames_advance(ben, ["ana"], timeout=40)
    print(f"\nbrowser media back {time.monotonic() - killed:.2f}s after kill -9 of Janus")
    await pairs_private(ana)


# ------------------------------------------------------------------ demo page
async def test_demo_call_page_sfu_mode_and_mesh_limit(make_e2e_server: Servers,
                                                      open_page: PageWatch) -> None:
    app = await make_e2e_server(**sfu(max_room_members=2))
    ana = await open_page(f"{app.url}/call.html?room=meet&media=sfu&name=Ana", harness=None)
    ben = await open_page(f"{app.url}/call.html?room=meet&name=Ben", harness=None)  # follows the room
    for page in (ana, ben):
        await page.wait_for_function(
            """() => document.body.dataset.mediaMode === 'sfu'
                 && [...document.querySelectorAll('.tile.remote video')].some(
                      (v) => v.videoWidth > 0 && v.getVideoPlaybackQuality().totalVideoFrames > 5)""",
            timeout=40000)
    assert "media=sfu" in ben.url
    await ana.click("#btn-diag")
    await ana.wait_for_selector('#diag :text("sfu (through the server)")', timeout=10000)
    # Beyond the mesh limit (2) a third member joins an SFU room ...
    cyd = await open_page(f"{app.url}/call.html?room=meet&media=sfu&name=Cyd", harness=None)
    await cyd.wait_for_function(
        "document.querySelectorAll('.tile.remote video').length === 2", timeout=40000)
    # ... and is refused a mesh room with a clear message, not a frozen grid.
    m1 = await open_page(f"{app.url}/call.html?room=meshy&media=mesh&name=M1", harness=None)
    m2 = await open_page(f"{app.url}/call.html?room=meshy&media=mesh&name=M2", harness=None)
    await m2.wait_for_selector(".tile.remote")
    m3 = await open_page(f"{app.url}/call.html?room=meshy&media=mesh&name=M3", harness=None)
    await m3.wait_for_selector('.overlay:has-text("This call is full")', timeout=15000)
    assert await m1.evaluate("document.body.dataset.mediaMode") == "mesh"
