"""Recording an SFU room (issue 17) with a real Janus (--sfu local) and aiortc publishers.

Each publisher sends one solid colour (lavfi ``color``) and one tone (lavfi
``sine``) through aiortc's MediaPlayer, so the outputs can be checked with
ffprobe/ffmpeg: durations, frames, the grid's cells and the mix's tones.
Everything runs inside tools/netns-run's namespace.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiortc.contrib.media import MediaPlayer

from rtchub.auth.tokens import mint
from rtchub.client import Client, ClientError
from rtchub.client.media import SfuMedia
from tests.conftest import Servers
from tests.e2e.test_sfu_bots import sfu_settings
from tests.media_probe import nearest_colour, pcm, probe, region_colours, tones_present
from tests.test_webhooks import SECRET, Receiver

pytestmark = pytest.mark.e2e
KEY = "rec-e2e-key"
H = {"X-API-Key": KEY}


class Publisher:
    def __init__(self, client: Client, media: SfuMedia, players: list[MediaPlayer]) -> None:
        self.client, self.media, self.players = client, media, players

    async def close(self) -> None:
        await self.media.close()
        await self.client.close()
        for p in self.players:
            for t in (p.audio, p.video):
                if t is not None:
                    t.stop()


@pytest.fixture
async def publishers() -> AsyncIterator[list[Publisher]]:
    made: list[Publisher] = []
    yield made
    for p in made:
        await p.close()


async def publisher(app: Any, user: str, room: str, colour: str, tone: float | None,
                    made: list[Publisher], token: str | None = None) -> Publisher:
    client = Client(app.url, token=token)
    await client.connect()
    await client.join(room, None if token else user, media="sfu")
    media = SfuMedia(client, room, auto_subscribe=False)
    players = [MediaPlayer(f"color=c={colour}:size=320x240:rate=15", format="lavfi")]
    tracks = [players[0].video]
    if tone is not None:
        players.append(MediaPlayer(f"sine=frequency={tone}:sample_rate=48000", format="lavfi"))
        tracks.insert(0, players[1].audio)
    pub = Publisher(client, media, players)
    made.append(pub)
    await media.publish(tracks)
    return pub


async def api(method: str, url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.request(method, url, headers=H) as r:
        return r.status, await r.json(content_type=None)


async def wait_state(app: Any, rec_id: str, timeout: float = 240.0) -> tuple[dict[str, Any], list[float]]:
    """Poll until the recording is ready or failed; the progress values seen on the way."""
    seen: list[float] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = await api("GET", f"{app.url}/api/recordings/{rec_id}")
        assert status == 200, body
        if body.get("progress") is not None:
            seen.append(body["progress"])
        if body["state"] in ("ready", "failed"):
            return body, seen
        await asyncio.sleep(0.25)
    raise AssertionError(f"recording {rec_id} still {body['state']} after {timeout}s")


async def test_record_three_then_a_fourth_per_participant_files_and_composed_grid(
        make_server: Servers, publishers: list[Publisher], tmp_path: Path) -> None:
    receiver = await Receiver().start()
    try:
        app = await make_server(**sfu_settings(sfu="local", media_mode="sfu", api_key=KEY,
                                               recordings_dir=str(tmp_path / "rec"),
                                               recordings_min_free_mb=1, media_jobs=1,
                                               webhook_url=[receiver.url], webhook_secret=SECRET))
        notices: list[dict[str, Any]] = []
        for user, colour, tone in (("red", "red", 440), ("green", "green", 660), ("blue", "blue", 880)):
            pub = await publisher(app, user, "rec", colour, tone, publishers)
            pub.client.on("recording", notices.append)
        await asyncio.sleep(3)  # media flowing into Janus

        status, rec = await api("POST", f"{app.url}/api/rooms/rec/recording")
        assert status == 201, rec
        assert rec["state"] == "recording"
        started = time.monotonic()
        for _ in range(100):
            if len(notices) >= 3:
                break
            await asyncio.sleep(0.05)
        assert [n["active"] for n in notices] == [True] * 3 and notices[0]["recordingId"] == rec["id"]
        status, body = await api("POST", f"{app.url}/api/rooms/rec/recording")
        assert status == 409 and body["error"]["code"] == "already-recording"

        await asyncio.sleep(max(0.0, started + 5 - time.monotonic()))
        # The fourth joins at ~5 s. Its media reaches the SFU when Janus reports its
        # connection up, which the room hears as tracks-published: that is "joined".
        arrived = asyncio.get_running_loop().create_future()
        publishers[0].client.on("tracks-published", lambda m: m["userId"] == "yellow"
                                and not arrived.done() and arrived.set_result(time.monotonic()))
        late = await publisher(app, "yellow", "rec", "yellow", None, publishers)
        late_joined = await asyncio.wait_for(arrived, 20) - started
        late_notice = await late.client.recv_type("recording", timeout=5)
        assert late_notice["active"] is True  # a newcomer is told at once
        await asyncio.sleep(max(0.0, started + 10 - time.monotonic()))
        status, body = await api("DELETE", f"{app.url}/api/rooms/rec/recording")
        assert status == 200 and body["state"] == "processing"

        final, progress = await wait_state(app, rec["id"])
        assert final["state"] == "ready", final.get("reason")
        assert progress, "progress was never visible while processing"
        names = {e["event"] for e in receiver.events}
        assert {"recording_started", "recording_ready"} <= names
        assert receiver.bad_signatures == 0
    finally:
        await receiver.stop()

    files = {f["name"]: f for f in final["files"]}
    people = [f for f in final["files"] if f["kind"] == "participant"]
    assert len(people) == 4 and "composed.mp4" in files
    folder = tmp_path / "rec" / rec["id"]
    assert {p["userId"] for p in final["participants"]} == {"red", "green", "blue", "yellow"}
    durations = {}
    for f in people:
        info = probe(folder / f["name"])
        video = [s for s in info["streams"] if s["codec_type"] == "video"]
        assert video and int(video[0].get("nb_frames") or 1) > 0, f"{f['name']} holds no video"
        frames = region_colours(folder / f["name"], 150, 110, 20, 20, 5)
        durations[f["name"].split("-")[0]] = (float(info["format"]["duration"]), len(frames),
                                              nearest_colour(frames[len(frames) // 2]))
    # Each file shows its publisher; the three who were there all along last 10 s +- 0.5 s.
    assert {user: colour for user, (_, _, colour) in durations.items()} == {
        "red": "red", "green": "green", "blue": "blue", "yellow": "yellow"}
    for user in ("red", "green", "blue"):
        assert abs(durations[user][0] - 10.0) <= 0.5, durations
        assert durations[user][1] >= 45, durations  # 5 fps sampled: frames all along
    assert abs(durations["yellow"][0] - (10.0 - late_joined)) <= 0.7, (durations, late_joined)

    composed = folder / "composed.mp4"
    info = probe(composed)
    video = next(s for s in info["streams"] if s["codec_type"] == "video")
    assert (video["width"], video["height"]) == (1280, 720)
    fps = 5
    cells = [[nearest_colour(c) for c in region_colours(composed, x - 20, y - 20, 40, 40, fps)]
             for x, y in ((320, 180), (960, 180), (320, 540), (960, 540))]
    at = lambda t: min(round(t * fps), len(cells[0]) - 1)  # noqa: E731
    # Before the fourth: three tiles and one empty cell of a 2x2 grid.
    assert sorted(c[at(2.5)] for c in cells) == sorted(["red", "green", "blue", "black"])
    # After: four tiles.
    assert sorted(c[at(8)] for c in cells) == sorted(["red", "green", "blue", "yellow"])
    first_yellow = next(i for i in range(len(cells[0])) if any(c[i] == "yellow" for c in cells)) / fps
    assert abs(first_yellow - late_joined) <= 0.5, (first_yellow, late_joined)
    tones = tones_present(pcm(composed, start=1, length=6), [440, 660, 880])
    assert all(v > 20 for v in tones.values()), tones


async def test_refusals_from_the_call_mesh_room_no_grant(make_server: Servers, tmp_path: Path) -> None:
    secret = "rec-jwt-secret-0123456789-0123456789"
    app = await make_server(**sfu_settings(sfu="local", api_key=KEY, auth="jwt", jwt_secret=secret,
                                           recordings_dir=str(tmp_path)))
    clients: list[Client] = []
    try:
        async def member(user: str, room: str, media: str, **grants: Any) -> Client:
            c = Client(app.url, token=mint(sub=user, key=secret, extra=grants or None))
            await c.connect()
            await c.join(room, media=media)
            clients.append(c)
            return c

        plain = await member("p", "sfu-room", "sfu")
        with pytest.raises(ClientError) as err:
            await plain.request({"type": "record", "roomId": "sfu-room", "action": "start"})
        assert err.value.code == "forbidden" and "canRecord" in err.value.message

        mesh = await member("m", "mesh-room", "mesh", canRecord=True)
        with pytest.raises(ClientError) as err:
            await mesh.request({"type": "record", "roomId": "mesh-room", "action": "start"})
        assert err.value.code == "wrong-media-mode" and "mesh-room" in err.value.message

        with pytest.raises(ClientError) as err:
            await mesh.request({"type": "record", "roomId": "not-joined", "action": "start"})
        assert err.value.code == "not-in-room"

        status, body = await api("POST", f"{app.url}/api/rooms/mesh-room/recording")
        assert status == 409 and body["error"]["code"] == "mesh-room"
        status, body = await api("POST", f"{app.url}/api/rooms/no-such-room/recording")
        assert status == 404 and body["error"]["code"] == "room-not-found"
        status, body = await api("GET", f"{app.url}/api/recordings")
        assert body == {"recordings": []}
    finally:
        for c in clients:
            await c.close()


async def test_a_full_disk_stops_the_recording_and_fails_it_with_the_reason(
        make_server: Servers, publishers: list[Publisher], tmp_path: Path) -> None:
    """Recordings on a 3 MiB tmpfs with a 2 MiB floor: Janus's files fill it within seconds."""
    import os
    import subprocess

    if os.geteuid() != 0:
        pytest.fail("mounting a tmpfs needs root: run the suite as root (make test does)")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)], check=True)
    receiver = await Receiver().start()
    try:
        app = await make_server(**sfu_settings(sfu="local", media_mode="sfu", api_key=KEY,
                                               recordings_dir=str(disk), recordings_min_free_mb=2,
                                               webhook_url=[receiver.url], webhook_secret=SECRET))
        pubs = [await publisher(app, u, "full", u, t, publishers)
                for u, t in (("red", 440), ("green", 660), ("blue", 880))]
        notices: list[dict[str, Any]] = []
        pubs[0].client.on("recording", notices.append)
        await asyncio.sleep(2)
        status, rec = await api("POST", f"{app.url}/api/rooms/full/recording")
        assert status == 201, rec
        final, _ = await wait_state(app, rec["id"], timeout=120)
        assert final["state"] == "failed"
        assert final["reason"].startswith("disk full: ") and "below --recordings-min-free-mb 2" in \
            final["reason"], final["reason"]
        # Stopped: Janus writes no more, the room is told, the webhook says why.
        raw = disk / rec["id"] / "raw"
        size = sum(p.stat().st_size for p in raw.iterdir())
        await asyncio.sleep(2)
        assert sum(p.stat().st_size for p in raw.iterdir()) == size
        assert [n["active"] for n in notices] == [True, False]
        await asyncio.sleep(0.5)
        failed = [e for e in receiver.events if e["event"] == "recording_failed"]
        assert failed and failed[0]["reason"] == final["reason"]
        status, body = await api("POST", f"{app.url}/api/rooms/full/recording")
        assert status == 507 and body["error"]["code"] == "disk-full"
    finally:
        await receiver.stop()
        for p in publishers:
            await p.close()
        publishers.clear()
        subprocess.run(["umount", "-l", str(disk)], check=False)


async def test_a_recording_over_an_rtchub_restart_is_processed_by_the_next_start(
        server_process: Any, publishers: list[Publisher], tmp_path: Path) -> None:
    """``rtchub serve`` (a real process, --sfu local) records; SIGTERM; a new process on the same
    --recordings-dir finishes the job: the recording ends ready, with what was recorded."""
    import os

    rec_dir = str(tmp_path / "rec")
    args = ["--sfu", "local", "--media-mode", "sfu", "--api-key", KEY, "--recordings-dir", rec_dir,
            "--sfu-ice-ip", os.environ["RTCHUB_NETNS"], "--sfu-rtp-ports", "31000-31999"]
    first = server_process(*args)
    for user, tone in (("red", 440), ("blue", 880)):
        await publisher(first, user, "restart", user, tone, publishers)
    await asyncio.sleep(2)
    status, rec = await api("POST", f"{first.url}/api/rooms/restart/recording")
    assert status == 201, rec
    await asyncio.sleep(4)
    assert await asyncio.to_thread(first.terminate) == 0
    for p in publishers:
        await p.close()
    publishers.clear()

    second = server_process(*args)
    final, _ = await wait_state(second, rec["id"], timeout=180)
    assert final["state"] == "ready", final.get("reason")
    people = [f for f in final["files"] if f["kind"] == "participant"]
    assert sorted(f["name"].split("-")[0] for f in people) == ["blue", "red"]
    for f in people:
        assert 3.0 <= f["duration"] <= 5.5, f  # ~4 s were recorded before the restart
    assert any(f["name"] == "composed.mp4" for f in final["files"])
