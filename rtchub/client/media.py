"""SFU media for the Python SDK: publish and subscribe with aiortc through rtchub.

One publishing and one subscribing ``RTCPeerConnection`` per room, as in the
browser SDK (docs/protocol.md "SFU media"). A bot can send a synthetic track
(:class:`SyntheticVideo`) or a file (``aiortc.contrib.media.MediaPlayer``)
and count the frames it receives per track::

    client = Client("http://127.0.0.1:8080")
    await client.connect()
    await client.join("demo", media="sfu")
    media = SfuMedia(client, "demo")
    await media.publish([SyntheticVideo()])
    # every track published in the room is subscribed to automatically
    await media.wait_frames(track_id, 30)

``media-reset`` (the room's Janus died and the room moved) closes both
connections, publishes the same tracks again and subscribes again to
whatever the room announces next: the app does nothing.

aiortc is a test/bot dependency (``pip install rtchub[test]``); this module
imports it lazily so the rest of the SDK does not need it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import logging
import time
from typing import Any

from rtchub.client.client import Client

log = logging.getLogger("rtchub.client.media")


def _aiortc() -> Any:
    import aiortc

    return aiortc


def _config() -> Any:
    """No ICE servers at all: aiortc would otherwise ask a public STUN server."""
    aiortc = _aiortc()
    return aiortc.RTCConfiguration(iceServers=[])


class SyntheticVideo:
    """A VP8-friendly synthetic video track (no numpy): a frame whose shade changes.

    Made lazily as an ``aiortc.VideoStreamTrack`` subclass so that importing
    this module does not import aiortc.
    """

    def __new__(cls, width: int = 320, height: int = 240, fps: int = 30) -> Any:
        aiortc = _aiortc()
        from av import VideoFrame

        class _Track(aiortc.VideoStreamTrack):  # type: ignore[misc, name-defined]
            def __init__(self) -> None:
                super().__init__()
                self.sent = 0
                self._start = time.monotonic()

            async def recv(self) -> Any:
                n = self.sent
                # Pace at ``fps`` ourselves (VideoStreamTrack paces at 30).
                await asyncio.sleep(max(0.0, self._start + n / fps - time.monotonic()))
                frame = VideoFrame(width, height, "yuv420p")
                shade = bytes([(n * 4) % 256])
                for plane in frame.planes:
                    plane.update(shade * plane.buffer_size)
                frame.pts = int(n * 90000 / fps)
                frame.time_base = fractions.Fraction(1, 90000)
                self.sent += 1
                return frame

        return _Track()


class SfuMedia:
    """Publish local tracks into an SFU room and receive every other track in it."""

    def __init__(self, client: Client, room_id: str, *, auto_subscribe: bool = True) -> None:
        self.client = client
        self.room_id = room_id
        self.auto_subscribe = auto_subscribe
        self.pub: Any = None
        self.sub: Any = None
        self.local_tracks: list[Any] = []
        self.sources: list[str] = []
        #: trackId -> public track info (``userId``, ``kind``, ``source``, ``muted``).
        self.tracks: dict[str, dict[str, Any]] = {}
        #: trackId -> frames received; trackId -> receiving task.
        self.frames: dict[str, int] = {}
        self.published: list[dict[str, Any]] = []
        self.resets = 0
        self._mids: dict[str, str] = {}               # subscriber mid -> trackId
        self._readers: dict[str, asyncio.Task[None]] = {}
        self._answer: asyncio.Future[dict[str, Any]] | None = None
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.errors: list[dict[str, Any]] = []
        self.republished = asyncio.Event()
        self.closed = False
        for mtype, cb in (("tracks", self._on_tracks), ("tracks-published", self._on_published),
                          ("tracks-unpublished", self._on_unpublished),
                          ("track-muted", self._on_muted), ("publish-answer", self._on_answer),
                          ("subscribe-offer", self._on_offer), ("media-reset", self._on_reset)):
            client.on(mtype, self._mine(cb))
        # What the room announced before this object existed (the snapshot after
        # the join usually arrives first): replayed, so no track is missed.
        for msg in list(client.track_events.get(room_id, ())):
            {"tracks": self._on_tracks, "tracks-published": self._on_published,
             "tracks-unpublished": self._on_unpublished, "track-muted": self._on_muted}[msg["type"]](msg)

    def _mine(self, cb: Any) -> Any:
        def handler(msg: dict[str, Any]) -> None:
            if msg.get("roomId") == self.room_id:
                cb(msg)
        return handler

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---------------------------------------------------------------- publish
    async def publish(self, tracks: list[Any], sources: list[str] | None = None) -> list[dict[str, Any]]:
        """Send ``tracks`` to the SFU; returns their ``{trackId, mid, kind, source}``."""
        self.local_tracks = list(tracks)
        self.sources = list(sources or [])
        async with self._lock:
            return await self._publish()

    async def _publish(self) -> list[dict[str, Any]]:
        aiortc = _aiortc()
        if self.pub is not None:
            await self.pub.close()
        pc = self.pub = aiortc.RTCPeerConnection(_config())
        for track in self.local_tracks:
            pc.addTransceiver(track, direction="sendonly")
        # aiortc gathers every candidate inside setLocalDescription: no trickle needed.
        await pc.setLocalDescription(await pc.createOffer())
        mids = [t.mid for t in pc.getTransceivers()]
        msg: dict[str, Any] = {"type": "publish", "roomId": self.room_id, "sdp": pc.localDescription.sdp}
        if self.sources:
            msg["sources"] = {mid: src for mid, src in zip(mids, self.sources, strict=False) if mid}
        self._answer = asyncio.get_running_loop().create_future()
        await self.client.request(msg)
        answer = await asyncio.wait_for(self._answer, 10)
        await pc.setRemoteDescription(aiortc.RTCSessionDescription(answer["sdp"], "answer"))
        self.published = answer.get("tracks", [])
        return self.published

    def _on_answer(self, msg: dict[str, Any]) -> None:
        if self._answer is not None and not self._answer.done():
            self._answer.set_result(msg)

    async def unpublish(self) -> None:
        await self.client.request({"type": "unpublish", "roomId": self.room_id})
        if self.pub is not None:
            await self.pub.close()
            self.pub = None

    async def mute(self, track_id: str, muted: bool = True) -> None:
        await self.client.request({"type": "mute", "roomId": self.room_id, "trackId": track_id,
                                   "muted": muted})

    # -------------------------------------------------------------- subscribe
    async def subscribe(self, track_ids: list[str]) -> None:
        await self.client.request({"type": "subscribe", "roomId": self.room_id, "tracks": track_ids})

    def _on_tracks(self, msg: dict[str, Any]) -> None:
        self.tracks = {t["trackId"]: t for t in msg.get("tracks", [])}
        self._want([t for t in self.tracks.values() if t["userId"] != self.client.user_id])

    def _on_published(self, msg: dict[str, Any]) -> None:
        fresh = msg.get("tracks", [])
        for t in fresh:
            self.tracks[t["trackId"]] = t
        if msg.get("userId") != self.client.user_id:
            self._want(fresh)

    def _want(self, tracks: list[dict[str, Any]]) -> None:
        if self.auto_subscribe and tracks:
            ids = [t["trackId"] for t in tracks]

            async def go() -> None:
                try:
                    await self.subscribe(ids)
                except Exception as exc:  # a track that vanished meanwhile: not fatal
                    log.info("subscribe %s failed: %s", ids, exc)
            self._spawn(go())

    def _on_unpublished(self, msg: dict[str, Any]) -> None:
        for tid in msg.get("tracks", []):
            self.tracks.pop(tid, None)

    def _on_muted(self, msg: dict[str, Any]) -> None:
        t = self.tracks.get(msg.get("trackId", ""))
        if t is not None:
            t["muted"] = msg.get("muted")

    def _on_offer(self, msg: dict[str, Any]) -> None:
        self._spawn(self._answer_offer(msg))

    async def _answer_offer(self, msg: dict[str, Any]) -> None:
        aiortc = _aiortc()
        async with self._lock:
            if self.closed:
                return
            for st in msg.get("streams", []):
                if st.get("trackId"):
                    self._mids[st["mid"]] = st["trackId"]
            if self.sub is None or msg.get("restart") and self.sub.connectionState == "failed":
                pc = self.sub = aiortc.RTCPeerConnection(_config())
                pc.on("track", lambda track: self._receive(pc, track))
            pc = self.sub
            await pc.setRemoteDescription(aiortc.RTCSessionDescription(msg["sdp"], "offer"))
            await pc.setLocalDescription(await pc.createAnswer())
            try:
                await self.client.request({"type": "subscribe-answer", "roomId": self.room_id,
                                           "sdp": pc.localDescription.sdp})
            except Exception as exc:
                self.errors.append({"answer": str(exc)})

    def _receive(self, pc: Any, track: Any) -> None:
        mid = next((t.mid for t in pc.getTransceivers() if t.receiver.track is track), None)

        async def count() -> None:
            while True:
                try:
                    await track.recv()
                except Exception:
                    return
                tid = self._mids.get(mid or "", f"mid:{mid}")
                self.frames[tid] = self.frames.get(tid, 0) + 1

        self._readers[str(mid)] = asyncio.get_running_loop().create_task(count())

    def frames_of(self, user_id: str, kind: str = "video") -> int:
        return sum(n for tid, n in self.frames.items()
                   if self.tracks.get(tid, {}).get("userId") == user_id
                   and self.tracks.get(tid, {}).get("kind") == kind)

    async def wait_frames(self, user_id: str, more_than: int, timeout: float = 20.0,
                          kind: str = "video") -> int:
        """Wait until more than ``more_than`` frames of ``user_id``'s ``kind`` track arrived."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            n = self.frames_of(user_id, kind)
            if n > more_than:
                return n
            await asyncio.sleep(0.05)
        raise TimeoutError(f"{self.client.user_id}: no frames of {user_id} beyond {more_than} "
                           f"in {timeout}s (have {self.frames_of(user_id, kind)}, tracks {self.tracks})")

    # ---------------------------------------------------------------- failure
    def _on_reset(self, msg: dict[str, Any]) -> None:
        if self.closed:
            return
        self.resets += 1
        self.republished.clear()
        self._spawn(self._restart())

    async def _restart(self) -> None:
        async with self._lock:
            for task in self._readers.values():
                task.cancel()
            self._readers.clear()
            self._mids.clear()
            self.tracks.clear()
            if self.sub is not None:
                await self.sub.close()
                self.sub = None
            if self.local_tracks:
                for attempt in range(30):
                    try:
                        await self._publish()
                        break
                    except Exception as exc:
                        log.info("republish failed (%s), retrying", exc)
                        await asyncio.sleep(min(2.0, 0.2 * (attempt + 1)))
        self.republished.set()

    async def close(self) -> None:
        self.closed = True
        for task in list(self._tasks) + list(self._readers.values()):
            task.cancel()
        for pc in (self.pub, self.sub):
            if pc is not None:
                with contextlib.suppress(Exception):
                    await pc.close()
