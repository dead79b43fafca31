"""The SFU scenario of ``rtchub bench`` (issue 15): mesh vs SFU, rtchub and Janus CPU.

It measures, with aiortc bots sending a synthetic VP8 video:

- *join -> first remote frame*, p50/p99: a bot joins a room where another
  bot is already sending, and the clock runs from its ``join`` until its
  first decoded frame of the other's video; a 2-party mesh call (the
  joiner offers to the member, relayed by rtchub) and an SFU call (the
  member publishes to Janus, the joiner subscribes);
- *rtchub CPU per SFU join*: CPU seconds of the rtchub process (not Janus,
  not the bots) over a series of SFU joins with publish and subscribe,
  divided by their number;
- *Janus CPU per forwarded stream*: one publisher (``WIDTH``x``HEIGHT`` at
  ``FPS``) and ``SUBSCRIBERS`` subscribers for ``WINDOW`` seconds: the Janus
  process's CPU divided by the forwarded streams.

Media may only flow inside a private network namespace (TESTING-NOTES.md):
``rtchub bench`` runs this module through ``tools/netns-run``
(:func:`run_in_namespace`), and it refuses to run outside one. rtchub and
Janus are real processes (``rtchub serve --sfu local``), measured with psutil.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import sys
import time
from typing import Any

from rtchub.bench import netns

WIDTH, HEIGHT, FPS = 320, 240, 30
SUBSCRIBERS = 4
WINDOW = 10.0


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


class Server(netns.SfuServer):
    """``rtchub serve --sfu local`` as a child process, watched with psutil."""

    def __init__(self) -> None:
        super().__init__()
        import psutil

        self.ps = psutil.Process(self.proc.pid)

    def janus(self) -> Any:
        kids = [p for p in self.ps.children(recursive=True) if "janus" in p.name()]
        return kids[0] if kids else None

    def cpu(self, proc: Any) -> float:
        t = proc.cpu_times()
        return t.user + t.system


async def _first_frame_sfu(url: str, rounds: int) -> list[float]:
    from rtchub.client import Client
    from rtchub.client.media import SfuMedia, SyntheticVideo

    out = []
    for i in range(rounds):
        room = f"sfu-{i}"
        pub = Client(url)
        await pub.connect()
        await pub.join(room, "pub", media="sfu")
        pm = SfuMedia(pub, room, auto_subscribe=False)
        await pm.publish([SyntheticVideo(WIDTH, HEIGHT, FPS)])
        # Wait until the track is announced: a joiner can subscribe to it at once.
        while not pm.tracks:
            await asyncio.sleep(0.02)
        sub = Client(url)
        await sub.connect()
        t0 = time.perf_counter()
        sm = SfuMedia(sub, room)
        await sub.join(room, "sub")
        await sm.wait_frames("pub", 0, timeout=20)
        out.append((time.perf_counter() - t0) * 1000)
        for m in (pm, sm):
            await m.close()
        await pub.close()
        await sub.close()
    return out


async def _first_frame_mesh(url: str, rounds: int) -> list[float]:
    """A 2-party mesh: the joiner offers to the member (relayed by rtchub), who answers with video."""
    from aiortc import RTCPeerConnection, RTCSessionDescription

    from rtchub.client import Client
    from rtchub.client.media import SyntheticVideo, _config

    out = []
    for i in range(rounds):
        room = f"mesh-{i}"
        a, b = Client(url), Client(url)
        await a.connect()
        await b.connect()
        await a.join(room, "a")
        pa = RTCPeerConnection(_config())
        pb = RTCPeerConnection(_config())
        first = asyncio.get_running_loop().create_future()

        async def on_offer(msg: dict[str, Any], pa: Any = pa, a: Any = a, room: str = room) -> None:
            pa.addTrack(SyntheticVideo(WIDTH, HEIGHT, FPS))
            await pa.setRemoteDescription(RTCSessionDescription(msg["sdp"], "offer"))
            await pa.setLocalDescription(await pa.createAnswer())
            await a.send({"type": "answer", "roomId": room, "to": "b", "sdp": pa.localDescription.sdp})

        a.on("offer", lambda m, f=on_offer: asyncio.get_running_loop().create_task(f(m)))

        @pb.on("track")
        def on_track(track: Any, first: Any = first) -> None:
            async def read() -> None:
                await track.recv()
                if not first.done():
                    first.set_result(time.perf_counter())
            asyncio.get_running_loop().create_task(read())

        answered = asyncio.get_running_loop().create_future()
        b.on("answer", lambda m, fut=answered: fut.done() or fut.set_result(m))
        t0 = time.perf_counter()
        await b.join(room, "b")
        pb.addTransceiver("video", direction="recvonly")
        await pb.setLocalDescription(await pb.createOffer())
        await b.send({"type": "offer", "roomId": room, "to": "a", "sdp": pb.localDescription.sdp})
        answer = await asyncio.wait_for(answered, 20)
        await pb.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
        got = await asyncio.wait_for(first, 20)
        out.append((got - t0) * 1000)
        for pc in (pa, pb):
            await pc.close()
        await a.close()
        await b.close()
    return out


async def _rtchub_cpu_per_join(server: Server, joins: int) -> float:
    """rtchub CPU seconds per SFU join (join, publish, subscribe to one track)."""
    from rtchub.client import Client
    from rtchub.client.media import SfuMedia, SyntheticVideo

    host = Client(server.url)
    await host.connect()
    await host.join("cpu", "host", media="sfu")
    hm = SfuMedia(host, "cpu", auto_subscribe=False)
    await hm.publish([SyntheticVideo(160, 120, 5)])
    await asyncio.sleep(1.0)
    before = server.cpu(server.ps)
    guests = []
    for i in range(joins):
        c = Client(server.url)
        await c.connect()
        m = SfuMedia(c, "cpu")
        await c.join("cpu", f"g{i}")
        await m.publish([SyntheticVideo(160, 120, 5)])
        await m.wait_frames("host", 0, timeout=20)
        guests.append((c, m))
    used = server.cpu(server.ps) - before
    for c, m in [*guests, (host, hm)]:
        await m.close()
        await c.close()
    return used / joins


async def _janus_cpu_per_stream(server: Server) -> tuple[float, float]:
    """Janus CPU (% of one core) per forwarded stream, and the subscribers' fps."""
    from rtchub.client import Client
    from rtchub.client.media import SfuMedia, SyntheticVideo

    pub = Client(server.url)
    await pub.connect()
    await pub.join("fwd", "pub", media="sfu")
    pm = SfuMedia(pub, "fwd", auto_subscribe=False)
    await pm.publish([SyntheticVideo(WIDTH, HEIGHT, FPS)])
    subs = []
    for i in range(SUBSCRIBERS):
        c = Client(server.url)
        await c.connect()
        m = SfuMedia(c, "fwd")
        await c.join("fwd", f"s{i}")
        subs.append((c, m))
    for _, m in subs:
        await m.wait_frames("pub", 10, timeout=30)
    janus = server.janus()
    frames0 = [m.frames_of("pub") for _, m in subs]
    c0, t0 = server.cpu(janus), time.monotonic()
    await asyncio.sleep(WINDOW)
    cpu = server.cpu(janus) - c0
    elapsed = time.monotonic() - t0
    fps = statistics.mean((m.frames_of("pub") - f) / elapsed for (_, m), f in zip(subs, frames0, strict=True))
    for c, m in [*subs, (pub, pm)]:
        await m.close()
        await c.close()
    return cpu / elapsed * 100 / SUBSCRIBERS, fps


async def measure(quick: bool) -> dict[str, Any]:
    rounds = 5 if quick else 20
    server = Server()
    try:
        mesh = await _first_frame_mesh(server.url, rounds)
        sfu = await _first_frame_sfu(server.url, rounds)
        per_join = await _rtchub_cpu_per_join(server, 4 if quick else 8)
        janus_pct, fps = await _janus_cpu_per_stream(server)
    finally:
        server.stop()
    return {
        "rounds": rounds,
        "mesh_first_frame_ms": {"p50": _pct(mesh, 0.5), "p99": _pct(mesh, 0.99), "all": mesh},
        "sfu_first_frame_ms": {"p50": _pct(sfu, 0.5), "p99": _pct(sfu, 0.99), "all": sfu},
        "rtchub_cpu_ms_per_sfu_join": per_join * 1000,
        "janus_cpu_pct_per_stream": janus_pct,
        "subscriber_fps": fps,
        "stream": f"VP8 {WIDTH}x{HEIGHT} at {FPS} fps (aiortc), {SUBSCRIBERS} subscribers",
    }


def run_in_namespace(quick: bool) -> dict[str, Any]:
    """Run :func:`measure` inside tools/netns-run (a private network namespace)."""
    if not shutil.which("janus"):
        raise RuntimeError("janus is not installed (make system-deps)")
    return netns.run_in_namespace("rtchub.bench.sfu", quick, timeout=900)


if __name__ == "__main__":
    sys.exit(netns.namespace_main(__doc__ or "", measure))
