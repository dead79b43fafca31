"""HLS out (issue 18), before the SFU: RTP from ffmpeg senders on 127.0.0.1 -> the broadcast's
ffmpeg -> /live with CDN cache headers -> ffprobe and Chromium's /watch page (hls.js).

The senders stand in for Janus rtp_forward: the same payload types (Opus 111,
VP8 96) on local UDP ports. Each sends one solid colour and one tone, so the
grid (the layout shared with the composed recording) can be checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from playwright.async_api import Browser

from rtchub.media.broadcast import free_udp_port
from rtchub.media.hls import HlsBroadcast, RtpInput
from tests.conftest import ARTIFACTS
from tests.e2e.conftest import require_private_network
from tests.media_probe import FFMPEG, nearest_colour, probe, region_colours

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]


def sender(colour: str, tone: float, video_port: int, audio_port: int) -> subprocess.Popen[bytes]:
    """What Janus would forward for one publisher: VP8 (pt 96) and Opus (pt 111) over RTP."""
    return subprocess.Popen(
        [FFMPEG, "-v", "error", "-re", "-f", "lavfi", "-i", f"color=c={colour}:size=320x240:rate=25",
         "-f", "lavfi", "-i", f"sine=frequency={tone}:sample_rate=48000",
         "-map", "0:v", "-c:v", "libvpx", "-deadline", "realtime", "-b:v", "200k", "-g", "25",
         "-payload_type", "96", "-f", "rtp", f"rtp://127.0.0.1:{video_port}",
         "-map", "1:a", "-c:a", "libopus", "-payload_type", "111", "-f", "rtp",
         f"rtp://127.0.0.1:{audio_port}"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class Live:
    def __init__(self, app: Any, broadcast: HlsBroadcast, senders: list[subprocess.Popen[bytes]]) -> None:
        self.app, self.broadcast, self.senders = app, broadcast, senders

    @property
    def playlist_url(self) -> str:
        return f"{self.app.url}/live/{self.broadcast.room_id}/index.m3u8"


async def segments_in(url: str) -> list[str]:
    async with aiohttp.ClientSession() as http, http.get(url) as r:
        if r.status != 200:
            return []
        return re.findall(r"^[^#\s].*\.ts$", await r.text(), re.M)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def live(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Live]:
    """A two-person broadcast (red 440 Hz, blue 880 Hz) served by rtchub from --broadcast-dir."""
    require_private_network()
    from rtchub.app import create_app

    root = tmp_path_factory.mktemp("broadcast")
    app = create_app(host="127.0.0.1", port=0, stun_port=0, broadcast_dir=str(root))
    await app.start()
    ports = [(free_udp_port(), free_udp_port()) for _ in range(2)]
    inputs = [RtpInput(name, audio_port=a, video_port=v)
              for name, (v, a) in zip(("red", "blue"), ports, strict=True)]
    broadcast = HlsBroadcast("stage", root / "stage", inputs, width=640, height=360)
    await broadcast.start()
    senders = [sender("red", 440, *ports[0]), sender("blue", 880, *ports[1])]
    live = Live(app, broadcast, senders)
    try:
        for _ in range(300):
            if len(await segments_in(live.playlist_url)) >= 3:
                break
            assert broadcast.state != "failed", broadcast.reason
            await asyncio.sleep(0.1)
        yield live
    finally:
        for s in senders:
            s.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                s.wait(5)
        await broadcast.stop()
        await app.stop()


async def test_playlist_and_segments_carry_cdn_cache_headers(live: Live) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(live.playlist_url) as r:
            assert r.status == 200
            assert r.headers["Content-Type"] == "application/vnd.apple.mpegurl"
            assert r.headers["Cache-Control"] == "public, max-age=1"
            text = await r.text()
        assert "#EXT-X-TARGETDURATION:2" in text and "#EXT-X-PROGRAM-DATE-TIME" in text
        durations = [float(d) for d in re.findall(r"#EXTINF:([\d.]+)", text)]
        assert durations and all(d <= 2.5 for d in durations)
        first = re.findall(r"^[^#\s].*\.ts$", text, re.M)[0]
        async with http.get(f"{live.app.url}/live/stage/{first}") as r:
            assert r.status == 200 and r.headers["Content-Type"] == "video/mp2t"
            assert r.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        for bad in ("/live/nobody/index.m3u8", "/live/stage/..%2Findex.m3u8",
                    "/live/stage/.in-x-0.sdp", "/live/stage/missing.ts"):
            async with http.get(live.app.url + bad) as r:
                assert r.status == 404, bad
                assert r.headers.get("Cache-Control") == "no-store", bad


async def test_ffprobe_reads_the_playlist_and_sees_both_people(live: Live, tmp_path: Path) -> None:
    # In a thread: the server answering ffprobe runs on this test's event loop.
    info = await asyncio.to_thread(probe, live.playlist_url)
    kinds = {s["codec_type"]: s for s in info["streams"]}
    assert kinds["video"]["codec_name"] == "h264" and kinds["audio"]["codec_name"] == "aac"
    assert (kinds["video"]["width"], kinds["video"]["height"]) == (640, 360)
    # One segment, probed frame by frame: the two-tile grid of the shared layout.
    name = (await segments_in(live.playlist_url))[-1]
    seg = tmp_path / "seg.ts"
    async with aiohttp.ClientSession() as http, http.get(f"{live.app.url}/live/stage/{name}") as r:
        seg.write_bytes(await r.read())
    left = {nearest_colour(c) for c in region_colours(seg, 150, 170, 20, 20, 5)}
    right = {nearest_colour(c) for c in region_colours(seg, 470, 170, 20, 20, 5)}
    assert (left, right) == ({"red"}, {"blue"})


async def test_watch_page_plays_and_shows_the_delay(live: Live, browser: Browser) -> None:
    ctx = await browser.new_context()
    page = await ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        await page.goto(f"{live.app.url}/watch?room=stage")
        await page.wait_for_function("document.getElementById('player').currentTime > 0.5",
                                     timeout=30_000)
        t0 = await page.evaluate("document.getElementById('player').currentTime")
        await page.wait_for_function(f"document.getElementById('player').currentTime > {t0} + 2",
                                     timeout=30_000)
        await page.wait_for_function("window.rtchubWatch.behindRealTime !== null", timeout=10_000)
        watch = await page.evaluate("({latency: rtchubWatch.latency, "
                                    "behind: rtchubWatch.behindRealTime, "
                                    "text: document.getElementById('delay').textContent, "
                                    "w: document.getElementById('player').videoWidth})")
        assert watch["w"] == 640
        assert watch["text"].startswith("Behind live: ") and "behind real time" in watch["text"]
        assert watch["behind"] > 0
        report = ARTIFACTS / "hls-delay.txt"
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(f"behind the live edge {watch['latency']:.2f} s, "
                          f"behind real time {watch['behind']:.2f} s\n")
        print(f"/watch delay: {report.read_text().strip()}")
        assert not errors, errors
    finally:
        await ctx.close()


async def test_a_dying_ffmpeg_ends_the_broadcast_in_failed_with_a_reason(tmp_path: Path) -> None:
    ended: list[HlsBroadcast] = []
    b = HlsBroadcast("doomed", tmp_path / "doomed", [RtpInput("x", video_port=free_udp_port())],
                     width=320, height=180, on_end=ended.append)
    await b.start()
    assert b.proc is not None
    b.proc.kill()  # the process this test started, by its own handle
    for _ in range(100):
        if ended:
            break
        await asyncio.sleep(0.05)
    assert ended == [b]
    assert b.state == "failed" and b.reason == "ffmpeg exited with -9"
    await b.stop()
    assert b.state == "failed"


async def test_new_publishers_restart_the_grid_and_the_playlist_continues(tmp_path: Path) -> None:
    """A second publisher arrives: a new graph (two tiles), same playlist, a discontinuity; stop ends it."""
    ports = [(free_udp_port(), free_udp_port()) for _ in range(2)]
    red = RtpInput("red", audio_port=ports[0][1], video_port=ports[0][0])
    blue = RtpInput("blue", audio_port=ports[1][1], video_port=ports[1][0])
    b = HlsBroadcast("grow", tmp_path / "grow", [red], width=320, height=180)
    senders = [sender("red", 440, *ports[0]), sender("blue", 880, *ports[1])]

    async def segments(at_least: int) -> list[str]:
        for _ in range(300):
            names = re.findall(r"^[^#\s].*\.ts$", b.playlist.read_text(), re.M) if b.playlist.exists() else []
            if len(names) >= at_least:
                return names
            assert b.state != "failed", b.reason
            await asyncio.sleep(0.1)
        raise AssertionError(f"fewer than {at_least} segments")

    try:
        await b.start()
        first_run = b.run_id
        before = await segments(2)
        await b.restart([red, blue])
        assert b.run_id != first_run
        for _ in range(300):
            after = await segments(1)
            if any(n.startswith(b.run_id) for n in after):
                break
            await asyncio.sleep(0.1)
        text = b.playlist.read_text()
        # One playlist holding both runs' segments, the old ones first.
        assert before[0] in text and text.index(before[0]) < text.index(b.run_id)
        assert text.count("#EXT-X-DISCONTINUITY") >= 1
        newest = b.dir / [n for n in after if n.startswith(b.run_id)][-1]
        colours = [{nearest_colour(c) for c in region_colours(newest, x, 80, 16, 16, 5)} for x in (70, 230)]
        assert colours == [{"red"}, {"blue"}]
    finally:
        await b.stop()
        for s in senders:
            s.terminate()
            s.wait(5)
    assert b.state == "stopped"
    assert b.playlist.read_text().rstrip().endswith("#EXT-X-ENDLIST")
