"""The recordings store: one folder per recording, its metadata written atomically.

Layout under ``--recordings-dir``::

    <id>/recording.json   metadata (the only thing the API reads)
    <id>/raw/             what Janus writes while recording (.mjr)
    <id>/<name>           finished outputs, listed in recording.json once complete

States (one way, never back)::

    recording -> processing -> ready
        |            |
        +------------+-----> failed (with a reason)

Why it is built this way:

* ``recording.json`` is replaced with write-temp, fsync, ``os.replace``,
  fsync-the-folder (rename is atomic on POSIX; the fsyncs make it durable
  across a crash), so a reader sees the old or the new metadata, never half.
* Outputs are written as ``<name>.part`` and renamed when their job ends;
  a file is listed only after that rename, and the state becomes ``ready``
  only after every output is listed. Nothing half-written is ever listed as
  ready.
* After a restart (:meth:`RecordingStore.recover`) a recording caught in
  ``recording`` is marked failed (its media session died with the old
  process: we say so), and one caught in ``processing`` is handed back to be
  processed again from its raw files (or failed when they are gone).
* Disk full: :meth:`RecordingStore.disk_ok` is checked while recording and
  before processing; below ``--recordings-min-free-mb`` the recording is
  stopped and failed with the numbers in its reason.
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

META = "recording.json"
RAW = "raw"


class State(StrEnum):
    RECORDING = "recording"
    PROCESSING = "processing"
    READY = "ready"
    FAILED = "failed"


ALLOWED: dict[State, set[State]] = {
    State.RECORDING: {State.PROCESSING, State.FAILED},
    State.PROCESSING: {State.READY, State.FAILED},
    State.READY: set(),
    State.FAILED: set(),
}


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class ParticipantInfo(_Model):
    id: str = Field(description="the participant's publisher id in the room's media server")
    user_id: str | None = None
    display_name: str | None = None
    joined_at: float = Field(description="Unix time of their first recorded frame (or join)")
    left_at: float | None = Field(None, description="Unix time they left (None: until the end)")


class FileInfo(_Model):
    name: str
    kind: str = Field(description="participant (one person's audio+video), composed (the room) or "
                                  "mix (an audio-mix room's mixed audio)")
    participant: str | None = None
    size: int
    duration: float | None = Field(None, description="seconds (ffprobe)")
    content_type: str


class RecordingInfo(_Model):
    id: str
    room_id: str
    state: State
    reason: str | None = Field(None, description="why it failed")
    started_at: float
    stopped_at: float | None = None
    finished_at: float | None = Field(None, description="when it became ready or failed")
    started_by: str | None = None
    participants: list[ParticipantInfo] = Field(default_factory=list)
    files: list[FileInfo] = Field(default_factory=list)
    progress: float | None = Field(None, description="post-processing, 0..1, while processing")


class RecordingList(_Model):
    recordings: list[RecordingInfo]


class InvalidTransition(ValueError):
    pass


def new_id() -> str:
    """Sortable by start time (hex seconds) and unguessable."""
    return f"{int(time.time()):08x}{secrets.token_hex(6)}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


class RecordingStore:
    """Recordings on disk; the in-memory copies are what the API serves."""

    def __init__(self, root: str | os.PathLike[str], *, min_free_bytes: int = 0,
                 retention_seconds: float = 0.0) -> None:
        self.root = Path(root).resolve()  # Janus is told this path: absolute
        self.min_free_bytes = min_free_bytes
        self.retention_seconds = retention_seconds
        self.items: dict[str, RecordingInfo] = {}

    # ------------------------------------------------------------------ paths
    def folder(self, rec_id: str) -> Path:
        return self.root / rec_id

    def raw(self, rec_id: str) -> Path:
        return self.folder(rec_id) / RAW

    def file(self, rec_id: str, name: str) -> Path | None:
        """The path of a listed output file (only names in the metadata; no traversal)."""
        rec = self.items.get(rec_id)
        if rec is None or not any(f.name == name for f in rec.files):
            return None
        return self.folder(rec_id) / name

    # -------------------------------------------------------------- lifecycle
    def load(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.items.clear()
        for meta in sorted(self.root.glob(f"*/{META}")):
            try:
                rec = RecordingInfo.model_validate_json(meta.read_bytes())
            except (OSError, ValueError):
                continue
            if rec.id == meta.parent.name:
                self.items[rec.id] = rec

    def recover(self) -> tuple[list[RecordingInfo], list[RecordingInfo]]:
        """After a restart: fail what was being recorded. Returns (to process again, failed now)."""
        again: list[RecordingInfo] = []
        failed: list[RecordingInfo] = []
        for rec in list(self.items.values()):
            if rec.state is State.RECORDING:
                self.fail(rec, "interrupted: rtchub stopped while recording, and the media "
                               "session that recorded it ended with it")
                failed.append(rec)
            elif rec.state is State.PROCESSING:
                for part in self.folder(rec.id).glob("*.part"):
                    part.unlink(missing_ok=True)
                if any(self.raw(rec.id).glob("*.mjr")) or any(self.raw(rec.id).glob("*.wav")):
                    rec.files, rec.progress = [], 0.0
                    self.save(rec)
                    again.append(rec)
                else:
                    self.fail(rec, "interrupted: rtchub stopped while processing and the raw "
                                   "media is gone")
                    failed.append(rec)
        return again, failed

    def create(self, room_id: str, *, started_by: str | None = None) -> RecordingInfo:
        rec = RecordingInfo(id=new_id(), room_id=room_id, state=State.RECORDING,
                            started_at=time.time(), started_by=started_by)
        self.raw(rec.id).mkdir(parents=True)
        self.items[rec.id] = rec
        self.save(rec)
        return rec

    def save(self, rec: RecordingInfo) -> None:
        write_atomic(self.folder(rec.id) / META, rec.model_dump_json(by_alias=True, indent=1).encode())

    def transition(self, rec: RecordingInfo, state: State, reason: str | None = None) -> None:
        if state not in ALLOWED[rec.state]:
            raise InvalidTransition(f"recording {rec.id} is {rec.state}, cannot become {state}")
        rec.state = state
        if state is State.PROCESSING:
            rec.stopped_at = rec.stopped_at or time.time()
            rec.progress = 0.0
        if state in (State.READY, State.FAILED):
            rec.finished_at = time.time()
            rec.stopped_at = rec.stopped_at or rec.finished_at
            rec.progress = None
            rec.reason = reason
        self.save(rec)

    def fail(self, rec: RecordingInfo, reason: str) -> None:
        """Fail it, keeping only outputs that were complete (listed) as they were."""
        if rec.state in (State.READY, State.FAILED):
            return
        for part in self.folder(rec.id).glob("*.part"):
            part.unlink(missing_ok=True)
        self.transition(rec, State.FAILED, reason)

    def add_file(self, rec: RecordingInfo, part: Path, info: FileInfo) -> None:
        """Publish a finished output: rename ``<name>.part`` into place, then list it."""
        final = self.folder(rec.id) / info.name
        os.replace(part, final)
        _fsync_dir(final.parent)
        info.size = final.stat().st_size
        rec.files = [f for f in rec.files if f.name != info.name] + [info]
        self.save(rec)

    def delete(self, rec_id: str) -> bool:
        rec = self.items.pop(rec_id, None)
        if rec is None:
            return False
        shutil.rmtree(self.folder(rec_id), ignore_errors=True)
        return True

    def list(self) -> Iterator[RecordingInfo]:
        return iter(sorted(self.items.values(), key=lambda r: r.started_at, reverse=True))

    # ------------------------------------------------------ disk and retention
    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def disk_ok(self) -> tuple[bool, str]:
        """(ok, reason): below the floor, the reason has the numbers."""
        free = self.free_bytes()
        if free < self.min_free_bytes:
            return False, (f"disk full: {free / 2**20:.1f} MiB free in {self.root}, below "
                           f"--recordings-min-free-mb {self.min_free_bytes / 2**20:.0f}")
        return True, ""

    def expired(self, now: float | None = None) -> list[str]:
        if self.retention_seconds <= 0:
            return []
        now = time.time() if now is None else now
        return [r.id for r in self.items.values()
                if r.state in (State.READY, State.FAILED) and r.finished_at is not None
                and now - r.finished_at > self.retention_seconds]

    def sweep(self, now: float | None = None) -> list[str]:
        gone = self.expired(now)
        for rec_id in gone:
            self.delete(rec_id)
        return gone


def as_dict(rec: RecordingInfo) -> dict[str, Any]:
    return rec.model_dump(by_alias=True, mode="json")
