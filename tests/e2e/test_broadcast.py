"""Broadcasting an SFU call as HLS (issue 18) with a real Janus, aiortc publishers and Chromium.

Janus rtp_forwards each publisher to the broadcast's ffmpeg; /live serves the
playlist; ffprobe reads it, and Chromium's /watch page plays it.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import ARTIFACTS, Servers
from tests.e2e.conftest import chromium
from tests.e2e.test_recording import KEY, Publisher, api, publisher, publishers  # noqa: F401
from tests.e2e.test_sfu_bots import sfu_settings
from tests.media_probe import nearest_colour, probe, region_colours

pytestmark = pytest.mark.e2e


async def segments(app: Any, room: str) -> list[str]:
    async with aiohttp.ClientSession() as http, http.get(f"{app.url}/live/{room}/index.m3u8") as r:
        if r.status != 200:
            return []
        return re.findall(r"^[^#\s].*\.ts$", await r.text(), re.M)


async def wait_segments(app: Any, room: str, n: int, timeout: float = 60.0) -> list[str]:
    for _ in range(int(timeout * 10)):
        names = await segments(app, room)
        if len(names) >= n:
            return names
        await asyncio.sleep(0.1)
    _, body = await api("GET", f"{app.url}/api/broadcasts")
    raise AssertionError(f"fewer than {n} segments: {body}")


async def grid_colours(app: Any, room: str, name: str, tmp: Path, points: list[tuple[int, int]]
                       ) -> list[set[str]]:
    seg = tmp / name
    async with aiohttp.ClientSession() as http, http.get(f"{app.url}/live/{room}/{name}") as r:
        seg.write_bytes(await r.read())
    return [{nearest_colour(c) for c in region_colours(seg, x - 10, y - 10, 20, 20, 5)} for x, y in points]


async def test_broadcast_of_a_two_person_call_plays_in_watch_and_reflows(
        make_server: Servers, publishers: list[Publisher], tmp_path: Path) -> None:  # noqa: F811
    app = await make_server(**sfu_settings(sfu="local", media_mode="sfu", api_key=KEY,
                                           broadcast_dir=str(tmp_path / "live")))
    await publisher(app, "red", "show", "red", 440, publishers)
    await publisher(app, "blue", "show", "blue", 880, publishers)
    await asyncio.sleep(2)
    status, body = await api("POST", f"{app.url}/api/rooms/show/broadcast")
    assert status == 201, body
    assert body["publishers"] == 2 and body["playlist"] == "/live/show/index.m3u8"
    status, again = await api("POST", f"{app.url}/api/rooms/show/broadcast")
    assert status == 409 and again["error"]["code"] == "already-broadcasting"

    names = await wait_segments(app, "show", 2)
    info = await asyncio.to_thread(probe, f"{app.url}/live/show/index.m3u8")
    kinds = {s["codec_type"]: s for s in info["streams"]}
    assert kinds["video"]["codec_name"] == "h264" and (kinds["video"]["width"], kinds["video"]["height"]) == (
        1280, 720)
    assert kinds["audio"]["codec_name"] == "aac"
    # Two people side by side (the shared grid layout).
    left, right = await grid_colours(app, "show", names[-1], tmp_path, [(320, 360), (960, 360)])
    assert {frozenset(left), frozenset(right)} == {frozenset({"red"}), frozenset({"blue"})}

    async with chromium() as browser:
        page = await (await browser.new_context()).new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        await page.goto(f"{app.url}/watch?room=show")
        await page.wait_for_function("document.getElementById('player').currentTime > 0.5", timeout=40_000)
        t0 = await page.evaluate("document.getElementById('player').currentTime")
        await page.wait_for_function(f"document.getElementById('player').currentTime > {t0} + 2",
                                     timeout=30_000)
        await page.wait_for_function("window.rtchubWatch.behindRealTime !== null", timeout=10_000)
        watch = await page.evaluate("({latency: rtchubWatch.latency, behind: rtchubWatch.behindRealTime,"
                                    " w: document.getElementById('player').videoWidth})")
        assert watch["w"] == 1280 and watch["behind"] > 0
        assert not errors, errors
    report = ARTIFACTS / "broadcast-delay.txt"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(f"SFU call -> HLS -> /watch: behind the live edge {watch['latency']:.2f} s, "
                      f"behind real time {watch['behind']:.2f} s\n")

    # A third person publishes: the grid re-flows to 2x2 in the same playlist.
    await publisher(app, "green", "show", "green", 660, publishers)
    for _ in range(600):
        _, listing = await api("GET", f"{app.url}/api/broadcasts")
        if listing["broadcasts"][0]["publishers"] == 3:
            break
        await asyncio.sleep(0.1)
    assert listing["broadcasts"][0]["publishers"] == 3
    for _ in range(600):
        names = await segments(app, "show")
        cells = await grid_colours(app, "show", names[-1], tmp_path,
                                   [(320, 180), (960, 180), (320, 540), (960, 540)])
        if sorted(next(iter(c)) for c in cells if len(c) == 1) == ["black", "blue", "green", "red"]:
            break
        await asyncio.sleep(0.5)
    assert sorted(next(iter(c)) for c in cells if len(c) == 1) == ["black", "blue", "green", "red"], cells

    async with aiohttp.ClientSession() as http, http.get(app.url + "/metrics") as r:
        assert 'rtchub_broadcasts{state="live"} 1.0' in await r.text()
    status, body = await api("DELETE", f"{app.url}/api/rooms/show/broadcast")
    assert status == 200 and body["state"] == "stopped"
    playlist = (tmp_path / "live" / "show" / "index.m3u8").read_text()
    assert playlist.rstrip().endswith("#EXT-X-ENDLIST")
    status, body = await api("DELETE", f"{app.url}/api/rooms/show/broadcast")
    assert status == 409 and body["error"]["code"] == "not-broadcasting"


async def test_broadcast_refusals(make_server: Servers, tmp_path: Path) -> None:
    from tests.conftest import joined

    app = await make_server(**sfu_settings(sfu="local", api_key=KEY, broadcast_dir=str(tmp_path)))
    ws = await joined(app, "meshy", "alice")
    status, body = await api("POST", f"{app.url}/api/rooms/meshy/broadcast")
    assert status == 409 and body["error"]["code"] == "mesh-room"
    status, body = await api("POST", f"{app.url}/api/rooms/ghost/broadcast")
    assert status == 404 and body["error"]["code"] == "room-not-found"
    status, body = await api("GET", f"{app.url}/api/broadcasts")
    assert body == {"broadcasts": []}
    assert list(tmp_path.iterdir()) == []
    await ws.close()
    off = await make_server(api_key=KEY)
    status, body = await api("POST", f"{off.url}/api/rooms/meshy/broadcast")
    assert status == 409 and body["error"]["code"] == "broadcast-disabled"
