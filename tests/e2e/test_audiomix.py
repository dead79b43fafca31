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
