"""The ``auto`` scenario of ``rtchub bench`` (issue 16): adaptive calls in Chromium.

It measures, with Debian's Chromium (fake camera) on the demo call page
(AutoCall) against ``rtchub serve --sfu local`` (a real Janus):

- *the longest video gap during a move*: two pages talk peer-to-peer, a
  third joins (everyone moves to the SFU), then leaves (back to
  peer-to-peer after ``--auto-p2p-after``). On the two pages that stay,
  every 100 ms, the frame counter of each remote tile's <video> is read;
  the longest time it did not advance during each move is the gap, and
  the time without a new frame just before the tile swapped to the new
  path is the gap of the switch itself. The newcomer's own tile is not
  counted (it had nothing to show before).
- *subscriber downlink in a 10-person room*: nine publish-only pages
  (SfuCall, ``autoSubscribe: false``; cameras at ``SMALL``, 15 fps, three
  simulcast layers each) in one SFU room, and one demo page (AutoCall)
  that shows the room with one member large and eight small tiles; its
  received video bitrate is measured over ``WINDOW`` seconds, once with
  adaptive layers (the default) and once with every tile forced to the
  high layer (``?adaptive=0``).

Like rtchub.bench.sfu, it runs only inside tools/netns-run (media never
leaves the private namespace) and prints one JSON line.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

from rtchub.bench import netns

CHROMIUM = netns.CHROMIUM
FLAGS = netns.CHROMIUM_FLAGS
SMALL = "640x360"
WINDOW = 8.0
P2P_AFTER = 2.0

#: The longest stretch without a new frame on each tile playing before a move,
#: and when the tile's element was swapped (shared with tests/e2e/test_auto_call.py).
SAMPLER = """() => {
  const g = window.__gap = { per: {}, since: performance.now() };
  const watched = [...rtchubDemo.tiles.keys()];  // tiles playing before the move
  window.__gapTimer = setInterval(() => {
    const now = performance.now();
    for (const id of watched) {
      const tile = rtchubDemo.tiles.get(id);
      if (!tile) continue;
      const v = tile.video;
      const n = v.getVideoPlaybackQuality().totalVideoFrames;
      const p = g.per[id] || (g.per[id] = { el: v, n, last: now, max: 0, advances: 0 });
      if (p.el !== v) { p.swapAt = Math.round(now - g.since); p.gapAtSwap = Math.round(now - p.last); }
      if (p.el !== v ? n > 0 : n > p.n) {
        if (now - p.last > p.max) { p.max = now - p.last; p.maxEndAt = Math.round(now - g.since); }
        p.last = now;
        p.advances += 1;
      }
      p.el = v;
      p.n = n;
    }
  }, 100);
}"""

STOP_SAMPLER = """() => {
  clearInterval(window.__gapTimer);
  const now = performance.now();
  const out = { sampledMs: Math.round(now - window.__gap.since) };
  for (const [id, p] of Object.entries(window.__gap.per)) {
    if (!rtchubDemo.tiles.has(id)) continue;  // the member who left
    out[id] = { maxGapMs: Math.round(Math.max(p.max, now - p.last)), advances: p.advances,
                gapEndedAtMs: p.maxEndAt, swappedAtMs: p.swapAt, gapAtSwapMs: p.gapAtSwap };
  }
  return out;
}"""
SETTLED = """([route, n]) => { const a = rtchubDemo; const c = a.call;
  if (!c || a.route !== route || a.tiles.size !== n) return false;
  const last = c.switches[c.switches.length - 1];
  if (c.switches.length > 1 && (!last || last.done === null)) return false;
  return [...a.tiles.values()].every((t) => t.video.videoWidth > 0
    && t.video.getVideoPlaybackQuality().totalVideoFrames > 3
    && c.shown.get(t.userId) && c.shown.get(t.userId).path === route); }"""
DOWNLINK = """async () => { const pc = rtchubDemo.call.sfu.sub; const r = await pc.getStats();
  let b = 0;
  r.forEach((s) => { if (s.type === 'inbound-rtp' && s.kind === 'video') b += s.bytesReceived || 0; });
  return { bytes: b, t: performance.now() }; }"""


class Server(netns.SfuServer):
    """``rtchub serve --sfu local`` (media mode ``auto``, the default with an SFU)."""

    def __init__(self) -> None:
        super().__init__("--auto-p2p-after", str(P2P_AFTER))


def _gaps(sampled: dict[str, Any]) -> list[tuple[float, float | None]]:
    """(longest gap, gap when the element was swapped) per tile, from STOP_SAMPLER."""
    return [(tile["maxGapMs"], tile.get("gapAtSwapMs")) for key, tile in sampled.items()
            if key != "sampledMs"]


async def _page(browser: Any, url: str) -> Any:
    ctx = await browser.new_context(viewport={"width": 1280, "height": 800})
    page = await ctx.new_page()
    await page.goto(url)
    await page.wait_for_function("window.rtchubDemo && rtchubDemo.hub && rtchubDemo.hub.userId")
    return page


async def _moves(browser: Any, base: str, rounds: int) -> dict[str, list[float]]:
    up: list[float] = []
    down: list[float] = []
    swaps_up: list[float | None] = []
    swaps_down: list[float | None] = []
    for i in range(rounds):
        room = f"move-{i}"
        a = await _page(browser, f"{base}/call.html?room={room}&name=A")
        b = await _page(browser, f"{base}/call.html?room={room}&name=B")
        for p in (a, b):
            await p.wait_for_function(SETTLED, arg=["p2p", 1], timeout=60000)
        for p in (a, b):
            await p.evaluate(SAMPLER)
        c = await _page(browser, f"{base}/call.html?room={room}&name=C")
        for p in (a, b, c):
            await p.wait_for_function(SETTLED, arg=["sfu", 2], timeout=60000)
        for p in (a, b):
            for gap, swap in _gaps(await p.evaluate(STOP_SAMPLER)):
                up.append(gap)
                swaps_up.append(swap)
            await p.evaluate(SAMPLER)
        await c.context.close()
        for p in (a, b):
            await p.wait_for_function(SETTLED, arg=["p2p", 1], timeout=60000)
        for p in (a, b):
            for gap, swap in _gaps(await p.evaluate(STOP_SAMPLER)):
                down.append(gap)
                swaps_down.append(swap)
        for p in (a, b):
            await p.context.close()
    return {"p2p_to_sfu_ms": up, "sfu_to_p2p_ms": down,
            "swap_p2p_to_sfu_ms": [s for s in swaps_up if s is not None],
            "swap_sfu_to_p2p_ms": [s for s in swaps_down if s is not None]}


#: A publish-only member: the SDK's SfuCall with autoSubscribe off (a 10-person
#: room where every page decoded nine videos would measure the machine, not rtchub).
PUBLISHER = """<!doctype html><meta charset="utf-8"><script type="module">
import { RtcHub, SfuCall } from '/sdk/rtchub.js';
const q = new URLSearchParams(location.search);
const [w, h] = q.get('video').split('x').map(Number);
const localStream = await navigator.mediaDevices.getUserMedia({
  audio: true, video: { width: { ideal: w }, height: { ideal: h }, frameRate: { ideal: 15 } } });
const hub = new RtcHub();
await hub.connect();
const call = new SfuCall(hub, q.get('room'), { localStream, autoSubscribe: false });
await call.start();
window.published = () => call.published.size;
</script>"""


async def _publisher(browser: Any, base: str, room: str, i: int) -> Any:
    ctx = await browser.new_context()
    page = await ctx.new_page()
    url = f"{base}/bench-publisher.html?room={room}&video={SMALL}&n={i}"

    async def serve(route: Any) -> None:
        await route.fulfill(status=200, content_type="text/html; charset=utf-8", body=PUBLISHER)

    await page.route(url, serve)
    await page.goto(url)
    await page.wait_for_function("window.published && window.published() >= 2", timeout=60000)
    return page


async def _downlink(browser: Any, base: str, members: int, adaptive: bool) -> dict[str, Any]:
    room = f"big-{'a' if adaptive else 'h'}"
    others = [await _publisher(browser, base, room, i) for i in range(members - 1)]
    flag = "" if adaptive else "&adaptive=0"
    viewer = await _page(browser, f"{base}/call.html?room={room}&name=V&media=auto&video={SMALL}{flag}")
    await viewer.wait_for_function(SETTLED, arg=["sfu", members - 1], timeout=120000)
    # One speaker large, the others small (what the demo does for the active speaker).
    first = await viewer.evaluate("[...rtchubDemo.tiles.keys()][0]")
    await viewer.evaluate("(u) => rtchubDemo.spotlight(u)", first)
    await asyncio.sleep(4.0)  # layer switches happen at keyframes
    s0 = await viewer.evaluate(DOWNLINK)
    await asyncio.sleep(WINDOW)
    s1 = await viewer.evaluate(DOWNLINK)
    kbps = (s1["bytes"] - s0["bytes"]) * 8 / (s1["t"] - s0["t"])
    layers = await viewer.evaluate("[...rtchubDemo.call.sfu.layers.values()]")
    for p in [viewer, *others]:
        await p.context.close()
    return {"kbps": round(kbps), "layers": layers}


async def measure(quick: bool) -> dict[str, Any]:
    from playwright.async_api import async_playwright

    rounds = 1 if quick else 3
    members = 5 if quick else 10
    server = Server()
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            try:
                moves = await _moves(browser, server.url, rounds)
                adaptive = await _downlink(browser, server.url, members, True)
                high = await _downlink(browser, server.url, members, False)
            finally:
                await browser.close()
    finally:
        server.stop()

    def summary(values: list[float]) -> dict[str, Any]:
        return {"max": round(max(values)) if values else None,
                "median": round(statistics.median(values)) if values else None,
                "all": [round(v) for v in values]}

    return {
        "rounds": rounds,
        "gap_p2p_to_sfu_ms": summary(moves["p2p_to_sfu_ms"]),
        "gap_sfu_to_p2p_ms": summary(moves["sfu_to_p2p_ms"]),
        # The time without a new frame just before the tile swapped paths (the switch itself).
        "gap_at_swap_p2p_to_sfu_ms": summary(moves["swap_p2p_to_sfu_ms"]),
        "gap_at_swap_sfu_to_p2p_ms": summary(moves["swap_sfu_to_p2p_ms"]),
        "members": members,
        "downlink_adaptive_kbps": adaptive["kbps"],
        "downlink_all_high_kbps": high["kbps"],
        "adaptive_layers": adaptive["layers"],
        "camera": f"{SMALL} at 15 fps, 3 simulcast layers",
    }


def run_in_namespace(quick: bool) -> dict[str, Any]:
    """Run :func:`measure` inside tools/netns-run (a private network namespace)."""
    if not shutil.which("janus") or not Path(CHROMIUM).exists():
        raise RuntimeError("janus and chromium are needed (make system-deps)")
    return netns.run_in_namespace("rtchub.bench.auto", quick, timeout=1200)


if __name__ == "__main__":
    sys.exit(netns.namespace_main(__doc__ or "", measure))
