"""The media job runner and the recordings store, on real processes and real files."""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from rtchub.media.jobs import JobFailed, JobRunner
from rtchub.media.recordings import META, FileInfo, InvalidTransition, RecordingStore, State
from tests.media_probe import FFMPEG


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs (root can mount one; the test suite runs as root on these machines)."""
    if os.geteuid() != 0:
        pytest.fail("mounting a tmpfs needs root: run the suite as root (make test does)")
    mnt = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


async def test_jobs_run_at_most_concurrency_at_once_and_all_finish(tmp_path: Path) -> None:
    runner = JobRunner(concurrency=2)
    log = tmp_path / "log"
    script = f"echo start >> {log}; sleep 0.3; echo end >> {log}"
    jobs = await asyncio.gather(*(runner.run(f"j{i}", ["sh", "-c", script]) for i in range(5)))
    assert [j.state for j in jobs] == ["done"] * 5
    # Replay the log: never more than two running at once.
    running = peak = 0
    for line in log.read_text().split():
        running += 1 if line == "start" else -1
        peak = max(peak, running)
    assert peak == 2


async def test_ffmpeg_job_reports_progress_and_its_end(tmp_path: Path) -> None:
    runner = JobRunner()
    out = tmp_path / "x.mkv"
    seen: list[float] = []
    task = asyncio.create_task(runner.run(
        "encode", [FFMPEG, "-v", "error", "-re", "-f", "lavfi", "-i",  # -re: 3 s at its own pace
                   "testsrc=size=320x240:rate=25:duration=3",
                   "-c:v", "libvpx", "-deadline", "realtime", "-f", "matroska", str(out)], total=3.0))
    while not task.done():
        await asyncio.sleep(0.05)
        seen += [j.progress for j in runner.jobs.values() if j.progress is not None]
    job = task.result()
    assert job.state == "done" and job.progress == 1.0
    assert any(0 < p < 1 for p in seen), seen  # visible while it ran
    assert seen == sorted(seen)


async def test_a_failing_job_says_why() -> None:
    runner = JobRunner()
    with pytest.raises(JobFailed) as err:
        await runner.run("bad", [FFMPEG, "-v", "error", "-i", "/nonexistent.webm", "-f", "null", "-"])
    assert err.value.job.state == "failed"
    assert "No such file or directory" in err.value.job.error
    assert not err.value.job.disk_full


async def test_a_full_disk_is_named_as_such(tiny_disk: Path) -> None:
    runner = JobRunner()
    with pytest.raises(JobFailed) as err:
        await runner.run("fill", [FFMPEG, "-v", "error", "-f", "lavfi", "-i",
                                  "testsrc=size=640x480:rate=25:duration=20", "-c:v", "rawvideo",
                                  "-f", "nut", str(tiny_disk / "big.nut")])
    assert err.value.job.disk_full
    assert err.value.job.error == "disk full (No space left on device)"


def test_states_go_one_way_and_metadata_is_replaced_whole(tmp_path: Path) -> None:
    store = RecordingStore(tmp_path)
    store.load()
    rec = store.create("room1", started_by="alice")
    assert (tmp_path / rec.id / "raw").is_dir()
    assert store.items[rec.id].state is State.RECORDING
    store.transition(rec, State.PROCESSING)
    part = tmp_path / rec.id / "alice.mkv.part"
    part.write_bytes(b"x" * 100)
    store.add_file(rec, part, FileInfo(name="alice.mkv", kind="participant", size=0,
                                       content_type="video/x-matroska"))
    store.transition(rec, State.READY)
    with pytest.raises(InvalidTransition):
        store.transition(rec, State.PROCESSING)
    assert not list((tmp_path / rec.id).glob(".*tmp")) and not part.exists()

    again = RecordingStore(tmp_path)
    again.load()
    got = again.items[rec.id]
    assert got.state is State.READY and got.files[0].size == 100 and got.started_by == "alice"
    assert again.file(rec.id, "alice.mkv") == tmp_path / rec.id / "alice.mkv"
    assert again.file(rec.id, "../" + rec.id + "/" + META) is None


def test_restart_fails_a_recording_and_resumes_processing(tmp_path: Path) -> None:
    store = RecordingStore(tmp_path)
    store.load()
    live = store.create("r1")
    busy = store.create("r2")
    (store.raw(busy.id) / "videoroom-r2-user-1-1-video-1.mjr").write_bytes(b"MJR")
    store.transition(busy, State.PROCESSING)
    (store.folder(busy.id) / "half.mkv.part").write_bytes(b"half")
    lost = store.create("r3")
    store.transition(lost, State.PROCESSING)

    after = RecordingStore(tmp_path)
    after.load()
    again, failed = after.recover()
    assert [r.id for r in again] == [busy.id]
    assert {r.id for r in failed} == {live.id, lost.id}
    assert after.items[live.id].state is State.FAILED
    assert "stopped while recording" in (after.items[live.id].reason or "")
    assert after.items[lost.id].state is State.FAILED
    assert after.items[busy.id].state is State.PROCESSING
    assert not (store.folder(busy.id) / "half.mkv.part").exists()


def test_retention_deletes_only_finished_recordings_past_their_time(tmp_path: Path) -> None:
    store = RecordingStore(tmp_path, retention_seconds=3600)
    store.load()
    old, new, live = store.create("a"), store.create("b"), store.create("c")
    store.fail(old, "x")
    store.fail(new, "y")
    old.finished_at = 1000.0
    assert store.sweep(now=1000.0 + 3601) == [old.id]
    assert not store.folder(old.id).exists()
    assert set(store.items) == {new.id, live.id}


def test_disk_floor_reason_has_the_numbers(tiny_disk: Path) -> None:
    store = RecordingStore(tiny_disk, min_free_bytes=1 * 2**20)
    store.load()
    assert store.disk_ok() == (True, "")
    (tiny_disk / "filler").write_bytes(b"\0" * (int(1.5 * 2**20)))
    ok, reason = store.disk_ok()
    assert not ok
    assert reason.startswith("disk full: 0.") and "below --recordings-min-free-mb 1" in reason
