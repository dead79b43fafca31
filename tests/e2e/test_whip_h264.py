"""H.264 ingest (issue 18: what OBS sends) with a real Janus, aiortc and ffmpeg.

A WHIP publisher that offers only H.264 is taken (rooms take VP8 and H.264,
rtchub.sfu.codecs); a room member decodes its frames; a broadcast of the
room gets the H.264 publisher into the HLS grid (the SDP given to ffmpeg
says H264); a recording turns its track into per-participant and composed
files. An offer whose video is in a codec the room does not take gets 422
(RFC 9725: no partially successful answers) and changes nothing.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from rtchub.client import Client
from rtchub.client.media import SfuMedia, _config
from tests.conftest import Servers
from tests.e2e.test_broadcast import grid_colours, wait_segments
from tests.e2e.test_recording import KEY, api, wait_state
from tests.e2e.test_sfu_bots import sfu_settings
from tests.media_probe import nearest_colour, probe, region_colours

pytestmark = pytest.mark.e2e
AUTH = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/sdp"}


class WhipPeer:
    """An aiortc WHIP publisher whose video offers only ``codec`` (as OBS offers only H.264)."""

    def __init__(self, colour: str, codec: str = "video/H264", tone: float | None = 440) -> None:
        from aiortc import RTCPeerConnection, RTCRtpSender
        from aiortc.contrib.media import MediaPlayer

        self.players = [MediaPlayer(f"color=c={colour}:size=320x240:rate=15", format="lavfi")]
        self.pc = RTCPeerConnection(_config())
        if tone is not None:
            self.players.append(MediaPlayer(f"sine=frequency={tone}:sample_rate=48000", format="lavfi"))
            self.pc.addTransceiver(self.players[1].audio, direction="sendonly")
        video = self.pc.addTransceiver(self.players[0].video, direction="sendonly")
        video.setCodecPreferences([c for c in RTCRtpSender.getCapabilities("video").codecs
                                   if c.mimeType == codec])
        self.location = ""

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return str(self.pc.localDescription.sdp)

    async def publish(self, url: str, sdp: str | None = None) -> tuple[int, str]:
        from aiortc import RTCSessionDescription

        body = sdp if sdp is not None else await self.offer()
        async with aiohttp.ClientSession() as http, http.post(url, data=body.encode(), headers=AUTH) as r:
            status, text = r.status, await r.text()
            self.location = r.headers.get("Location", "")
        if status == 201:
            await self.pc.setRemoteDescription(RTCSessionDescription(text, "answer"))
        return status, text

    async def close(self) -> None:
        await self.pc.close()
        for p in self.players:
            for t in (p.audio, p.video):
                if t is not None:
                    t.stop()


def rtpmaps(sdp: str, kind: str) -> list[str]:
    """The encoding names of the ``kind`` m-section (upper case)."""
    out, inside = [], False
    for line in sdp.splitlines():
        if line.startswith("m="):
            inside = line.startswith(f"m={kind} ") and line.split()[1] != "0"
        elif inside and line.startswith("a=rtpmap:"):
            out.append(line.split()[1].split("/")[0].upper())
    return out


async def test_h264_only_whip_publisher_is_seen_and_broadcast(make_server: Servers, tmp_path: Path) -> None:
    app = await make_server(**sfu_settings(sfu="local", media_mode="sfu", api_key=KEY,
                                           broadcast_dir=str(tmp_path / "live")))
    viewer = Client(app.url)
    await viewer.connect()
    await viewer.join("h264", "viewer", media="sfu")
    media = SfuMedia(viewer, "h264")
    whip = WhipPeer("red")
    try:
        offer = await whip.offer()
        assert set(rtpmaps(offer, "video")) == {"H264"}  # only H.264 is offered
        status, answer = await whip.publish(f"{app.url}/whip/h264", offer)
        assert status == 201, answer
        assert "H264" in rtpmaps(answer, "video") and "VP8" not in rtpmaps(answer, "video")
        (ws,) = app.whip.sessions.values()
        publisher = ws.session.user_id
        published = await viewer.recv_type("tracks-published", timeout=30)
        assert sorted(t["kind"] for t in published["tracks"]) == ["audio", "video"]
        # The SFU kept the codec Janus negotiated, per track (the one place the broadcast reads).
        (feed,) = (await app.sfu.feeds("h264")).values()
        assert sorted(feed["codecs"].values()) == ["h264", "opus"]
        # A member decodes H.264 frames (aiortc decodes what Janus forwards), and they keep coming.
        first = await media.wait_frames(publisher, 5, 30)
        assert await media.wait_frames(publisher, first + 15, 30) > first + 15

        status, body = await api("POST", f"{app.url}/api/rooms/h264/broadcast")
        assert status == 201, body
        broadcast = app.media.broadcasts["h264"]
        assert [i.video_codec for i in broadcast.hls.inputs] == ["h264"]
        names = await wait_segments(app, "h264", 2)
        info = await asyncio.to_thread(probe, f"{app.url}/live/h264/index.m3u8")
        kinds = {s["codec_type"]: s for s in info["streams"]}
        assert kinds["video"]["codec_name"] == "h264" and kinds["video"]["width"] == 1280
        assert kinds["audio"]["codec_name"] == "aac"
        # ffmpeg decoded the forwarded H.264: the one tile of the grid is the publisher's red.
        (centre,) = await grid_colours(app, "h264", names[-1], tmp_path, [(640, 360)])
        assert centre == {"red"}, centre
        status, body = await api("DELETE", f"{app.url}/api/rooms/h264/broadcast")
        assert status == 200 and body["state"] == "stopped", body
    finally:
        await whip.close()
        await media.close()
        await viewer.close()


async def test_h264_whip_publisher_is_recorded(make_server: Servers, tmp_path: Path) -> None:
    """janus-pp-rec turns the H.264 track into the participant's file; the grid is composed from it."""
    app = await make_server(**sfu_settings(sfu="local", media_mode="sfu", api_key=KEY,
                                           recordings_dir=str(tmp_path / "rec"),
                                           recordings_min_free_mb=1, media_jobs=1))
    viewer = Client(app.url)
    await viewer.connect()
    await viewer.join("rec264", "viewer", media="sfu")
    whip = WhipPeer("blue")
    try:
        status, answer = await whip.publish(f"{app.url}/whip/rec264")
        assert status == 201, answer
        await viewer.recv_type("tracks-published", timeout=30)
        status, rec = await api("POST", f"{app.url}/api/rooms/rec264/recording")
        assert status == 201, rec
        await asyncio.sleep(4)
        status, _ = await api("DELETE", f"{app.url}/api/rooms/rec264/recording")
        assert status == 200
        body, _ = await wait_state(app, rec["id"])
        assert body["state"] == "ready", body
        files = {f["kind"]: f for f in body["files"]}
        folder = tmp_path / "rec" / rec["id"]
        person = probe(folder / files["participant"]["name"])
        assert {s["codec_type"]: s["codec_name"] for s in person["streams"]} == {
            "video": "h264", "audio": "opus"}
        frames = region_colours(folder / files["participant"]["name"], 150, 110, 20, 20, 5)
        assert len(frames) >= 10 and nearest_colour(frames[len(frames) // 2]) == "blue", frames
        composed = probe(folder / files["composed"]["name"])
        assert {s["codec_type"] for s in composed["streams"]} == {"video", "audio"}
        assert float(composed["format"]["duration"]) > 2
    finally:
        await whip.close()
        await viewer.close()


@pytest.mark.parametrize("codec", ["VP9", "AV1"])
async def test_offer_in_a_codec_the_room_does_not_take_gets_422(make_server: Servers, codec: str) -> None:
    """aiortc cannot encode VP9/AV1, so its VP8 offer is renamed: what Janus sees is a VP9 (AV1) only
    video. Janus would answer with that m-section rejected; WHIP refuses the whole offer instead."""
    app = await make_server(**sfu_settings(sfu="local", media_mode="sfu", api_key=KEY))
    member = Client(app.url)
    await member.connect()
    await member.join("picky", "member", media="sfu")
    whip = WhipPeer("green", codec="video/VP8")
    try:
        offer = (await whip.offer()).replace("VP8/90000", f"{codec}/90000")
        status, text = await whip.publish(f"{app.url}/whip/picky", offer)
        assert status == 422, text
        assert "unsupported-codec" in text and f"offers {codec.lower()}" in text, text
        assert "rooms take vp8, h264" in text, text
        assert not app.whip.sessions and app.whip.stats["refused"] == 1
        assert list(app.hub.rooms["picky"].members) == ["member"]
        assert not await app.sfu.feeds("picky")
    finally:
        await whip.close()
        await member.close()

