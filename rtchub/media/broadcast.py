"""Broadcasting an SFU room as HLS (issue 18): Janus rtp_forward -> the HLS ffmpeg.

For each publisher of the room, rtchub asks Janus to forward its audio and
video as plain RTP to two free UDP ports on 127.0.0.1, with the payload
types the broadcast's SDP declares (Opus 111, video 96) and the codec
Janus negotiated with that publisher (VP8 or H.264, from the SFU's track
directory, :meth:`rtchub.sfu.service.SfuService.feeds`). One
:class:`~rtchub.media.hls.HlsBroadcast` composes them with the shared grid.

Publishers come and go: a watcher compares the room's publishers every
second and, on a change, moves the forwarders and restarts ffmpeg with the
new grid (the playlist continues, with a discontinuity). When ffmpeg dies on
its own the broadcast ends ``failed`` with ffmpeg's last words, and its
forwarders are stopped: nothing is left running for nobody.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from rtchub.media.hls import PLAYLIST, HlsBroadcast, RtpInput
from rtchub.sfu.codecs import AUDIO_CODECS, VIDEO_CODECS

if TYPE_CHECKING:
    from rtchub.sfu.service import SfuService

log = logging.getLogger("rtchub.media")
WATCH_INTERVAL = 1.0
AUDIO_PT, VIDEO_PT = 111, 96


class BroadcastInfo(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    room_id: str
    state: str = Field(description="starting, live, stopped or failed")
    reason: str | None = Field(None, description="why it failed")
    playlist: str = Field(description="path of the HLS playlist on this server")
    watch: str = Field(description="path of the watch page")
    publishers: int = Field(description="people in the grid now")
    started_at: float


class BroadcastList(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    broadcasts: list[BroadcastInfo]


def free_udp_port() -> int:
    """An even UDP port on 127.0.0.1 with its odd neighbour free too (RTP + RTCP)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1] & ~1
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a, \
                    socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise OSError("no free UDP port pair on 127.0.0.1")


class RoomBroadcast:
    """One room's broadcast: its forwarders in Janus and its ffmpeg."""

    def __init__(self, room_id: str, folder: Path, sfu: SfuService, *, width: int = 1280,
                 height: int = 720) -> None:
        self.room_id = room_id
        self.sfu = sfu
        self.hls = HlsBroadcast(room_id, folder, [], width=width, height=height, on_end=self._ended)
        #: feed -> (input, forwarder ids)
        self.forwards: dict[str, tuple[RtpInput, list[int]]] = {}
        self._watcher: asyncio.Task[None] | None = None

    def info(self) -> BroadcastInfo:
        return BroadcastInfo(room_id=self.room_id, state=self.hls.state, reason=self.hls.reason,
                             playlist=f"/live/{self.room_id}/{PLAYLIST}",
                             watch=f"/watch?room={self.room_id}", publishers=len(self.forwards),
                             started_at=self.hls.started_at)

    async def _forward(self, feed: str, info: dict[str, Any]) -> None:
        tracks: dict[str, str] = info["tracks"]
        codecs: dict[str, str] = info.get("codecs", {})
        audio = next((mid for mid, kind in tracks.items() if kind == "audio"), None)
        video = next((mid for mid, kind in tracks.items() if kind == "video"), None)
        a_port = free_udp_port() if audio is not None else None
        v_port = free_udp_port() if video is not None else None
        streams: list[dict[str, Any]] = []
        if audio is not None:
            streams.append({"mid": audio, "port": a_port, "pt": AUDIO_PT})
        if video is not None:
            streams.append({"mid": video, "port": v_port, "pt": VIDEO_PT})
        ids = await self.sfu.rtp_forward(self.room_id, feed, streams)
        # A track without a codec was announced by a node from before codecs were
        # kept, when rooms took only the first one.
        self.forwards[feed] = (RtpInput(feed, audio_port=a_port, video_port=v_port,
                                        audio_pt=AUDIO_PT, video_pt=VIDEO_PT,
                                        audio_codec=codecs.get(audio or "", AUDIO_CODECS[0]),
                                        video_codec=codecs.get(video or "", VIDEO_CODECS[0])), ids)

    async def _unforward(self, feed: str) -> None:
        _, ids = self.forwards.pop(feed)
        for stream_id in ids:
            await self.sfu.stop_rtp_forward(self.room_id, feed, stream_id)

    async def _sync(self) -> bool:
        """Forward exactly the room's publishers now. True when that changed anything."""
        feeds = await self.sfu.feeds(self.room_id)
        changed = False
        for feed in [f for f in self.forwards if f not in feeds]:
            await self._unforward(feed)
            changed = True
        for feed, info in feeds.items():
            if feed not in self.forwards:
                await self._forward(feed, info)
                changed = True
        return changed

    def _inputs(self) -> list[RtpInput]:
        return [inp for inp, _ in self.forwards.values()]

    async def start(self) -> None:
        await self._sync()
        # ffmpeg first binds its ports, Janus then sends; a keyframe request follows the
        # forwarder's creation, so the picture starts within a second or two.
        self.hls.inputs = self._inputs()
        await self.hls.start()
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while self.hls.state in ("starting", "live"):
            await asyncio.sleep(WATCH_INTERVAL)
            try:
                if await self._sync():
                    await self.hls.restart(self._inputs())
            except Exception as exc:  # Janus away for a moment: try again next second
                log.debug("broadcast %s: publishers not synced: %s", self.room_id, exc)

    def _ended(self, hls: HlsBroadcast) -> None:
        asyncio.get_running_loop().create_task(self._release())

    async def _release(self) -> None:
        for feed in list(self.forwards):
            with contextlib.suppress(Exception):
                await self._unforward(feed)

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        await self.hls.stop()
        await self._release()
