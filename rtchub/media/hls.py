"""HLS out (issue 18): one ffmpeg composes RTP inputs into a rolling HLS playlist; /live serves it.

Inputs are plain RTP on local UDP ports, described by an SDP file per
publisher (what Janus ``rtp_forward`` sends: Opus, and VP8 or H.264 as that
publisher negotiated it, on the payload types the forwarder was given;
:mod:`rtchub.sfu.codecs` writes the codec lines). ffmpeg lays them out with
:func:`rtchub.media.layout.live_graph` (the same grid as the composed
recording), encodes H.264 + AAC and writes MPEG-TS segments of :data:`SEGMENT_SECONDS` with a rolling playlist
(RFC 8216): old segments are deleted, the playlist keeps :data:`LIST_SIZE`.

Each run names its segments ``<run>-<n>.ts`` with a fresh run id, so a
segment name is never reused for different bytes: that is what lets /live
mark segments ``immutable`` (RFC 8246) and a CDN cache them for a year,
while the playlist, which changes every segment, gets ``max-age=1``.
``temp_file`` makes ffmpeg write the playlist and segments under temporary
names and rename them, so nothing half-written is ever served.

A live ffmpeg is not a batch job: it runs until stopped, so it does not go
through the :class:`~rtchub.media.jobs.JobRunner` queue. When it dies on its
own, the broadcast ends in ``failed`` with the last line ffmpeg printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import shutil
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from rtchub.api.models import ID_REGEX
from rtchub.media.layout import Tile, live_graph, output_args
from rtchub.sfu.codecs import rtp_sdp_lines

if TYPE_CHECKING:
    from rtchub.app import RtcHub

log = logging.getLogger("rtchub.media")

FFMPEG = shutil.which("ffmpeg") or "/usr/bin/ffmpeg"
SEGMENT_SECONDS = 2
LIST_SIZE = 6
PLAYLIST = "index.m3u8"

#: Playlist: at most half a segment old at a cache (Apple HLS authoring spec: a
#: playlist may be cached up to half its target duration).
PLAYLIST_CACHE = "public, max-age=1"
#: Segments: a name is used once, for one content.
SEGMENT_CACHE = "public, max-age=31536000, immutable"
CONTENT_TYPES = {".m3u8": "application/vnd.apple.mpegurl", ".ts": "video/mp2t"}
_file_name = re.compile(r"^[A-Za-z0-9_-]{1,80}\.(m3u8|ts)$").match
_room_id = re.compile(ID_REGEX).match


@dataclass(frozen=True)
class RtpInput:
    """One publisher's forwarded RTP: audio and/or video ports on 127.0.0.1."""

    label: str
    audio_port: int | None = None
    video_port: int | None = None
    audio_pt: int = 111
    video_pt: int = 96
    #: Janus codec names (``opus``, ``vp8``, ``h264``): what the publisher sends.
    audio_codec: str = "opus"
    video_codec: str = "vp8"
    host: str = "127.0.0.1"

    def sdp(self) -> str:
        lines = ["v=0", f"o=- 0 0 IN IP4 {self.host}", f"s=rtchub {self.label}",
                 f"c=IN IP4 {self.host}", "t=0 0"]
        if self.audio_port:
            lines += [f"m=audio {self.audio_port} RTP/AVP {self.audio_pt}",
                      *rtp_sdp_lines(self.audio_pt, self.audio_codec)]
        if self.video_port:
            lines += [f"m=video {self.video_port} RTP/AVP {self.video_pt}",
                      *rtp_sdp_lines(self.video_pt, self.video_codec)]
        return "\r\n".join(lines) + "\r\n"


class HlsBroadcast:
    """One room's live HLS: an ffmpeg process, its state, and its folder."""

    def __init__(self, room_id: str, out_dir: Path, inputs: Sequence[RtpInput], *,
                 width: int = 1280, height: int = 720, fps: int = 25,
                 on_end: Callable[[HlsBroadcast], None] | None = None) -> None:
        self.room_id = room_id
        self.dir = out_dir
        self.inputs = list(inputs)
        self.width, self.height, self.fps = width, height, fps
        self.on_end = on_end
        self.state = "starting"  # starting -> live -> stopped | failed
        self.reason: str | None = None
        self.started_at = time.time()
        self.run_id = ""
        self.proc: asyncio.subprocess.Process | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._stopping = False
        self._stderr = bytearray()

    @property
    def playlist(self) -> Path:
        return self.dir / PLAYLIST

    def command(self) -> list[str]:
        tiles = []
        argv = [FFMPEG, "-nostdin", "-v", "error", "-fflags", "+genpts"]
        for i, inp in enumerate(self.inputs):
            sdp = self.dir / f".in-{self.run_id}-{i}.sdp"
            sdp.write_text(inp.sdp())
            argv += ["-protocol_whitelist", "file,udp,rtp", "-reorder_queue_size", "200",
                     "-i", str(sdp)]
            tiles.append(Tile(inp.label, f"{i}:v:0" if inp.video_port else None,
                              f"{i}:a:0" if inp.audio_port else None))
        graph = live_graph(tiles, width=self.width, height=self.height, fps=self.fps)
        gop = SEGMENT_SECONDS * self.fps
        argv += [*output_args(graph), "-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency",
                 "-pix_fmt", "yuv420p", "-g", str(gop), "-keyint_min", str(gop), "-sc_threshold", "0"]
        if graph.audio_out:
            argv += ["-c:a", "aac", "-b:a", "96k", "-ar", "48000"]
        argv += ["-f", "hls", "-hls_time", str(SEGMENT_SECONDS), "-hls_list_size", str(LIST_SIZE),
                 "-hls_flags", "delete_segments+temp_file+independent_segments+program_date_time"
                 "+omit_endlist+discont_start+append_list",
                 "-hls_segment_type", "mpegts",
                 "-hls_segment_filename", str(self.dir / f"{self.run_id}-%05d.ts"),
                 str(self.playlist)]
        return argv

    async def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.run_id = secrets.token_hex(4)
        self._stopping = False
        self.proc = await asyncio.create_subprocess_exec(
            *self.command(), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, start_new_session=True)
        self._watcher = asyncio.get_running_loop().create_task(self._watch(self.proc))

    async def _watch(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        waiting = asyncio.get_running_loop().create_task(self._became_live())
        try:
            while chunk := await proc.stderr.read(4096):
                self._stderr.extend(chunk)
                del self._stderr[:-4096]
            await proc.wait()
        finally:
            waiting.cancel()
        if self._stopping:
            return
        tail = self._stderr.decode(errors="replace").strip().splitlines()
        self.state = "failed"
        self.reason = f"ffmpeg exited with {proc.returncode}" + (f": {tail[-1]}" if tail else "")
        log.warning("broadcast of %s failed: %s", self.room_id, self.reason)
        if self.on_end is not None:
            self.on_end(self)

    async def _became_live(self) -> None:
        while not self.playlist.exists():
            await asyncio.sleep(0.2)
        if self.state == "starting":
            self.state = "live"

    async def stop(self) -> None:
        """End the broadcast: players see ``#EXT-X-ENDLIST`` and stop waiting for more."""
        await self._halt()
        if self.playlist.exists():
            text = self.playlist.read_text()
            if "#EXT-X-ENDLIST" not in text:
                tmp = self.playlist.with_name(".index.m3u8.tmp")
                tmp.write_text(text.rstrip("\n") + "\n#EXT-X-ENDLIST\n")
                tmp.replace(self.playlist)

    async def _halt(self) -> None:
        self._stopping = True
        proc = self.proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)  # ffmpeg finishes the segment and the playlist
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self._watcher is not None:
            await asyncio.gather(self._watcher, return_exceptions=True)
        if self.state != "failed":
            self.state = "stopped"
        for sdp in self.dir.glob(".in-*.sdp"):
            sdp.unlink(missing_ok=True)

    async def restart(self, inputs: Sequence[RtpInput]) -> None:
        """New publishers: a new graph. The playlist continues with a discontinuity."""
        await self._halt()
        self.inputs = list(inputs)
        self.state = "starting"
        await self.start()


# ------------------------------------------------------------------ serving
def register(app: RtcHub) -> None:
    """``/live/{roomId}/{file}`` from ``--broadcast-dir``, with CDN-correct cache headers."""
    root = Path(app.settings.broadcast_dir) if app.settings.broadcast_dir else None

    async def live(request: web.Request) -> web.StreamResponse:
        room, name = request.match_info["roomId"], request.match_info["file"]
        headers = {"Access-Control-Allow-Origin": "*"}
        path = root / room / name if root is not None and _room_id(room) and _file_name(name) else None
        if path is None or not path.is_file():
            # Not cached anywhere: the playlist may appear a second later.
            return web.Response(status=404, text="no such broadcast file\n",
                                headers={**headers, "Cache-Control": "no-store"})
        suffix = path.suffix
        headers["Cache-Control"] = PLAYLIST_CACHE if suffix == ".m3u8" else SEGMENT_CACHE
        headers["Content-Type"] = CONTENT_TYPES[suffix]
        return web.FileResponse(path, headers=headers)

    app.http.router.add_get("/live/{roomId}/{file}", live)
