"""A recording's raw Janus files -> one file per participant and the composed room.

Steps, each a subprocess through the :class:`~rtchub.media.jobs.JobRunner`:

1. ``janus-pp-rec --json`` reads each ``.mjr`` header: codec and the time of
   the first frame written (``u``, microseconds since the epoch; ``s``, the
   file's creation, when no frame came). These times align everything.
2. ``janus-pp-rec`` turns each track into a media file: video to ``.webm``
   (VP8/VP9) or ``.mkv`` (H.264), Opus only to ``.opus`` (it cannot write
   Opus into WebM).
3. ``ffmpeg -itsoffset`` + ``-c copy`` muxes each participant's audio and
   video into ``<participant>.mkv``, the later track shifted by its start
   difference.
4. :func:`rtchub.media.layout.timeline_graph` composes everyone into
   ``composed.mp4`` (H.264 + AAC), each participant placed at their first
   frame's offset from the recording's first frame.

Each output is written as ``.part`` and listed by the store only when done.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from rtchub.media.jobs import Job, JobFailed, JobRunner
from rtchub.media.layout import Tile, output_args, timeline_graph
from rtchub.media.recordings import FileInfo, ParticipantInfo, RecordingInfo, RecordingStore

JANUS_PP_REC = shutil.which("janus-pp-rec") or "/usr/bin/janus-pp-rec"
FFMPEG = shutil.which("ffmpeg") or "/usr/bin/ffmpeg"
FFPROBE = shutil.which("ffprobe") or "/usr/bin/ffprobe"

#: Janus VideoRoom: ``videoroom-<room>-user-<publisher>-<unix us>-<audio|video|data>-<mindex>.mjr``.
MJR = re.compile(r"^videoroom-(?P<room>.+?)-user-(?P<user>.+)-(?P<ts>\d+)-"
                 r"(?P<kind>audio|video)-(?P<mid>\d+)\.mjr$")
VIDEO_EXT = {"vp8": "webm", "vp9": "webm", "h264": "mkv", "av1": "mkv", "h265": "mkv"}
COMPOSED = "composed.mp4"


def _safe(name: str) -> str:
    """A user id as a file-name part (API path ids allow A-Z a-z 0-9 _ . : @ -)."""
    return re.sub(r"[^A-Za-z0-9_.@-]", "_", name)[:40]


class MediaPipelineError(Exception):
    pass


@dataclass
class Track:
    path: Path
    kind: str
    codec: str = ""
    first_us: int = 0
    media: Path | None = None


@dataclass
class Person:
    key: str  # "<publisher>-<ts>": one publishing session
    user: str
    tracks: list[Track] = field(default_factory=list)

    @property
    def first_us(self) -> int:
        return min(t.first_us for t in self.tracks)


def group(raw: Path) -> list[Person]:
    """Tracks by publisher. Each track file has its own timestamp; a publisher who
    publishes again (a second audio or video file) starts a new person-session."""
    by_feed: dict[str, list[tuple[int, Track]]] = {}
    for path in sorted(raw.glob("*.mjr")):
        m = MJR.match(path.name)
        if m is not None:
            by_feed.setdefault(m["user"], []).append((int(m["ts"]), Track(path, m["kind"])))
    people: list[Person] = []
    for feed, tracks in by_feed.items():
        current: Person | None = None
        for _, track in sorted(tracks, key=lambda x: x[0]):
            if current is None or any(t.kind == track.kind for t in current.tracks):
                current = Person(f"{feed}-{len([p for p in people if p.user == feed]) + 1}", feed)
                people.append(current)
            current.tracks.append(track)
    return people


async def header(track: Track) -> None:
    proc = await asyncio.create_subprocess_exec(JANUS_PP_REC, "--json", str(track.path),
                                                stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await proc.communicate()
    text = stdout.decode(errors="replace")
    start = text.find("{")
    if proc.returncode != 0 or start < 0:
        raise MediaPipelineError(f"janus-pp-rec could not read {track.path.name}: "
                                 f"{stderr.decode(errors='replace').strip()[-300:]}")
    head = json.loads(text[start:text.rfind("}") + 1])
    track.codec = str(head.get("c", "")).lower()
    track.first_us = int(head.get("u") or head.get("s") or 0)


async def duration(path: Path) -> float | None:
    proc = await asyncio.create_subprocess_exec(
        FFPROBE, "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    stdout, _ = await proc.communicate()
    try:
        return round(float(stdout.decode().strip()), 3)
    except ValueError:
        return None


async def _run(runner: JobRunner, rec: RecordingInfo, name: str, argv: list[str],
               total: float | None = None) -> Job:
    try:
        return await runner.run(f"{rec.id}:{name}", argv, total=total)
    except JobFailed as exc:
        job = exc.job
        if job.disk_full:
            raise MediaPipelineError(f"disk full while processing ({name}): No space left on device") from exc
        raise MediaPipelineError(f"{name} failed: {job.error}") from exc


async def _mix_file(store: RecordingStore, rec: RecordingInfo, runner: JobRunner, wav: Path) -> None:
    """An audio-mix room: the AudioBridge's own recording of the mix, as Opus in Ogg."""
    total = await duration(wav)
    if not total:
        raise MediaPipelineError("the mix recording is empty (nobody was in the mix)")
    part = store.folder(rec.id) / "mix.ogg.part"
    await _run(runner, rec, "encode mix.ogg", [FFMPEG, "-v", "error", "-y", "-i", str(wav), "-c:a",
                                               "libopus", "-b:a", "64k", "-f", "ogg", str(part)],
               total=total)
    store.add_file(rec, part, FileInfo(name="mix.ogg", kind="mix", size=0, duration=await duration(part),
                                       content_type="audio/ogg"))


async def process_recording(store: RecordingStore, rec: RecordingInfo, runner: JobRunner) -> None:
    raw = store.raw(rec.id)
    out_dir = store.folder(rec.id)
    work = raw / "work"
    work.mkdir(exist_ok=True)
    mix = raw / "mix.wav"
    if mix.exists() and not any(raw.glob("*.mjr")):
        await _mix_file(store, rec, runner, mix)
        return
    people = [p for p in group(raw) if p.tracks]
    if not people:
        raise MediaPipelineError("nothing was recorded (no media reached the server)")
    for person in people:
        for track in person.tracks:
            await header(track)
    steps = sum(len(p.tracks) + 1 for p in people) + 1
    done = 0

    def advance(step_progress: float = 0.0) -> None:
        rec.progress = round(min(0.99, (done + step_progress) / steps), 3)

    # 2. each track to a media file
    for person in people:
        for track in person.tracks:
            ext = VIDEO_EXT.get(track.codec, "mkv") if track.kind == "video" else "opus"
            target = work / f"{track.path.stem}.{ext}"
            await _run(runner, rec, f"janus-pp-rec {track.path.name}",
                       [JANUS_PP_REC, str(track.path), str(target)])
            track.media = target if target.exists() and target.stat().st_size > 0 else None
            done += 1
            advance()
            store.save(rec)

    # 3. one file per participant
    first = min(p.first_us for p in people)
    tiles: list[Tile] = []
    inputs: list[Path] = []
    seen = {p.id: p for p in rec.participants}  # feed -> who, as seen live while recording
    rec.participants = []
    for person in people:
        media = [t for t in person.tracks if t.media is not None]
        if not media:
            done += 1
            continue
        argv = [FFMPEG, "-v", "error", "-y"]
        for t in media:
            argv += ["-itsoffset", f"{(t.first_us - person.first_us) / 1e6:.3f}", "-i", str(t.media)]
        for i in range(len(media)):
            argv += ["-map", str(i)]
        who = seen.get(person.user)
        user = who.user_id if who is not None and who.user_id else person.user
        name = f"{_safe(user)}-{person.key}.mkv"
        part = out_dir / f"{name}.part"
        await _run(runner, rec, f"mux {name}", [*argv, "-c", "copy", "-f", "matroska", str(part)])
        dur = await duration(part)
        store.add_file(rec, part, FileInfo(name=name, kind="participant", participant=person.key,
                                           size=0, duration=dur, content_type="video/x-matroska"))
        start = (person.first_us - first) / 1e6
        rec.participants.append(ParticipantInfo(id=person.key, user_id=user,
                                                display_name=who.display_name if who else None,
                                                joined_at=person.first_us / 1e6,
                                                left_at=person.first_us / 1e6 + (dur or 0)))
        idx = len(inputs)
        inputs.append(out_dir / name)
        has_v = any(t.kind == "video" for t in media)
        has_a = any(t.kind == "audio" for t in media)
        tiles.append(Tile(person.key, f"{idx}:v:0" if has_v else None, f"{idx}:a:0" if has_a else None,
                          start=start, end=start + (dur or 0)))
        done += 1
        advance()
        store.save(rec)

    # 4. the composed room
    total = max((t.end or 0) for t in tiles) if tiles else 0
    if total <= 0:
        raise MediaPipelineError("the recorded media holds no frames")
    graph = timeline_graph(tiles, total, width=1280, height=720, fps=25)
    part = out_dir / f"{COMPOSED}.part"
    argv = [FFMPEG, "-v", "error", "-y"]
    for p in inputs:
        argv += ["-i", str(p)]
    argv += [*output_args(graph), "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p"]
    if graph.audio_out:
        argv += ["-c:a", "aac", "-b:a", "128k"]
    argv += ["-movflags", "+faststart", "-f", "mp4", str(part)]
    task = asyncio.ensure_future(runner.run(f"{rec.id}:compose", argv, total=total))
    while not task.done():
        await asyncio.wait([task], timeout=0.5)
        current = next((j for j in runner.jobs.values() if j.name == f"{rec.id}:compose"), None)
        if current is not None and current.progress is not None:
            advance(current.progress)
    try:
        task.result()
    except JobFailed as exc:
        if exc.job.disk_full:
            raise MediaPipelineError("disk full while processing (compose): No space left on device") from exc
        raise MediaPipelineError(f"compose failed: {exc.job.error}") from exc
    store.add_file(rec, part, FileInfo(name=COMPOSED, kind="composed", size=0,
                                       duration=await duration(part), content_type="video/mp4"))
    shutil.rmtree(work, ignore_errors=True)
