"""WHIP (issue 18) seen from the call: a Chromium member of the room gets the WHIP stream's tile
with advancing frames, and loses it after DELETE. Real Janus; the WHIP publisher is aiortc
(Debian 12's whip-client aborts here, see tests/e2e/test_whip.py; the GStreamer publisher is in
tests/e2e/test_whip_gstreamer.py)."""

from __future__ import annotations

import aiohttp
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaPlayer

from rtchub.client.media import _config
from tests.conftest import Servers
from tests.e2e.conftest import PageWatch
from tests.e2e.test_sfu_browser import frames_advance, sfu, start

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]
KEY = "whip-browser-key"


async def test_chromium_member_sees_the_whip_tile_and_delete_removes_it(
        make_e2e_server: Servers, open_page: PageWatch) -> None:
    app = await make_e2e_server(**sfu(media_mode="sfu", api_key=KEY))
    page = await open_page(app.url + "/t/sfu", harness="sfu.html")
    await start(page, "stage", "viewer", media=False)
    player = MediaPlayer("testsrc=size=320x240:rate=15", format="lavfi")
    pc = RTCPeerConnection(_config())
    try:
        pc.addTransceiver(player.video, direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{app.url}/whip/stage", data=pc.localDescription.sdp.encode(),
                                 headers={"Authorization": f"Bearer {KEY}",
                                          "Content-Type": "application/sdp"}) as r:
                assert r.status == 201
                answer, location = await r.text(), r.headers["Location"]
            await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
            (ws,) = app.whip.sessions.values()
            publisher = ws.session.user_id  # the API key publishes as whip-<random>
            assert publisher.startswith("whip-")
            frames = await frames_advance(page, [publisher])
            assert frames[publisher] > 5
            async with http.delete(app.url + location, headers={"Authorization": f"Bearer {KEY}"}) as r:
                assert r.status == 200
        await page.wait_for_function("(u) => !T.videos().some((v) => v.userId === u)",
                                     arg=publisher, timeout=15_000)
    finally:
        await pc.close()
        player.video.stop()
