"""Audio-mix rooms (issue 17, audio MCU) with a real Janus AudioBridge and aiortc participants.

Three participants each send one tone (440, 660, 880 Hz) and receive one
stream: the server's mix. Each must hear the other two tones and not its own.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaPlayer

from rtchub.client import Client, ClientError
from rtchub.client.media import _config
from tests.conftest import Servers
from tests.e2e.test_sfu_bots import sfu_settings
from tests.media_probe import tones_present

pytestmark = pytest.mark.e2e
TONES = {"low": 440.0, "mid": 660.0, "high": 880.0}


class Mixer:
    """One participant: its tone goes up, the mix comes down as 8 kHz mono samples."""

    def __init__(self, client: Client, tone: float) -> None:
        self.client = client
        self.player = MediaPlayer(f"sine=frequency={tone}:sample_rate=48000", format="lavfi")
        self.pc = RTCPeerConnection(_config())
        self.samples: list[int] = []
        self.recording = False
        self.tasks: list[asyncio.Task[Any]] = []
        self.pc.on("track", self._track)

    def _track(self, track: Any) -> None:
        async def read() -> None:
            while True:
                frame = await track.recv()
                if not self.recording:
                    continue
                raw = bytes(frame.planes[0])
                step = 2 * len(frame.layout.channels) * (frame.sample_rate // 8000)
                self.samples += [int.from_bytes(raw[i:i + 2], "little", signed=True)
                                 for i in range(0, len(raw) - 1, step)]

        self.tasks.append(asyncio.get_running_loop().create_task(read()))

    async def join(self, room: str) -> None:
        self.pc.addTransceiver(self.player.audio, direction="sendrecv")
        await self.pc.setLocalDescription(await self.pc.createOffer())
        await self.client.request({"type": "mix", "roomId": room, "sdp": self.pc.localDescription.sdp})
        answer = await self.client.recv_type("mix-answer", timeout=15)
        await self.pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        await self.pc.close()
        self.player.audio.stop()
        await self.client.close()


async def test_each_participant_hears_the_others_and_not_itself(make_server: Servers) -> None:
    app = await make_server(**sfu_settings(sfu="local"))
    mixers: dict[str, Mixer] = {}
    try:
        for name, tone in TONES.items():
            client = Client(app.url)
            await client.connect()
            info = await client.join("chorus", name, media="audio-mix")
            assert info["media"] == "audio-mix"
            mixers[name] = Mixer(client, tone)
            await mixers[name].join("chorus")
        await asyncio.sleep(3)  # everyone's audio reaches the mixer
        for m in mixers.values():
            m.recording = True
        await asyncio.sleep(4)
        for name, m in mixers.items():
            assert len(m.samples) > 8000 * 2, (name, len(m.samples))
            heard = tones_present(m.samples[-8000 * 3:], list(TONES.values()))
            own = TONES[name]
            others = [v for t, v in heard.items() if t != own]
            assert all(v > 20 for v in others), (name, heard)
            # Its own voice is not sent back: at least 30 dB under the others (880 Hz can still
            # show a trace: it is the second harmonic of 440 Hz after Opus and the mixer).
            assert heard[own] * 1000 < min(others), (name, heard)
    finally:
        for m in mixers.values():
            await m.close()


async def test_mix_is_refused_outside_audio_mix_rooms(make_server: Servers) -> None:
    app = await make_server(**sfu_settings(sfu="local"))
    client = Client(app.url)
    await client.connect()
    try:
        await client.join("plain", "a", media="sfu")
        with pytest.raises(ClientError) as err:
            await client.request({"type": "mix", "roomId": "plain", "sdp": "v=0\r\nm=audio 9 x 111\r\n"})
        assert err.value.code == "wrong-media-mode"
    finally:
        await client.close()


async def test_the_mix_is_recorded_through_the_recordings_api(make_server: Servers, tmp_path: Any) -> None:
    """AudioBridge's own recording of the mix: one mix.ogg with every voice, same API and states."""
    import time

    from tests.e2e.test_recording import KEY, api, wait_state
    from tests.media_probe import duration, pcm

    app = await make_server(**sfu_settings(sfu="local", api_key=KEY, recordings_dir=str(tmp_path)))
    mixers: dict[str, Mixer] = {}
    try:
        for name, tone in TONES.items():
            client = Client(app.url)
            await client.connect()
            await client.join("hall", name, media="audio-mix")
            mixers[name] = Mixer(client, tone)
            await mixers[name].join("hall")
        await asyncio.sleep(2)
        status, rec = await api("POST", f"{app.url}/api/rooms/hall/recording")
        assert status == 201, rec
        started = time.monotonic()
        notice = await mixers["low"].client.recv_type("recording", timeout=5)
        assert notice["active"] is True
        await asyncio.sleep(max(0.0, started + 6 - time.monotonic()))
        status, body = await api("DELETE", f"{app.url}/api/rooms/hall/recording")
        assert status == 200
        final, _ = await wait_state(app, rec["id"], timeout=60)
    finally:
        for m in mixers.values():
            await m.close()
    assert final["state"] == "ready", final.get("reason")
    assert {p["userId"] for p in final["participants"]} == set(TONES)
    (mix,) = final["files"]
    assert mix["name"] == "mix.ogg" and mix["kind"] == "mix" and mix["contentType"] == "audio/ogg"
    path = tmp_path / rec["id"] / "mix.ogg"
    assert abs(duration(path) - 6.0) <= 0.7, duration(path)
    heard = tones_present(pcm(path, start=1, length=4), list(TONES.values()))
    assert all(v > 20 for v in heard.values()), heard
