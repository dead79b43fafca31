"""Media subprocesses (janus-pp-rec, ffmpeg): bounded concurrency, progress, clear failures.

Every media step runs as a child process, so no decoding ever happens on the
event loop; the loop only awaits the child and reads its progress lines.
One :class:`JobRunner` per server holds a semaphore: post-processing a big
recording must not starve the calls running on the same machine (2 cores
here), so at most ``concurrency`` jobs run at once and the rest wait, visible
as ``queued``.

Progress: ffmpeg writes ``key=value`` lines to ``-progress pipe:1``
(``out_time_us``, then ``progress=continue|end``) about twice a second; with
the output's expected length the job knows its fraction done. Other tools
only show ``running``.

Failures keep the tail of the child's stderr and name the cause when it is
known: ``No space left on device`` (ENOSPC) is reported as ``disk full`` so
a recording can say why it failed.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("rtchub.media")

#: Jobs kept for the API after they end.
HISTORY = 200
STDERR_TAIL = 4096


class JobFailed(Exception):
    def __init__(self, job: Job) -> None:
        super().__init__(f"{job.name}: {job.error}")
        self.job = job


@dataclass
class Job:
    id: int
    name: str
    argv: list[str]
    #: Seconds of media the job writes (ffmpeg only): turns out_time into a fraction.
    total: float | None = None
    state: str = "queued"  # queued -> running -> done | failed | cancelled
    progress: float | None = None
    returncode: int | None = None
    error: str = ""
    disk_full: bool = False
    queued_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    pid: int | None = None

    def view(self) -> dict[str, object]:
        return {"id": self.id, "name": self.name, "state": self.state, "progress": self.progress,
                "error": self.error or None}


def _is_ffmpeg(argv: Sequence[str]) -> bool:
    return Path(argv[0]).name == "ffmpeg"


class JobRunner:
    """Runs media commands, at most ``concurrency`` at once, and remembers them."""

    def __init__(self, concurrency: int = 1) -> None:
        self.concurrency = max(1, concurrency)
        self._slots = asyncio.Semaphore(self.concurrency)
        self._ids = itertools.count(1)
        self.jobs: collections.OrderedDict[int, Job] = collections.OrderedDict()
        self._procs: dict[int, asyncio.subprocess.Process] = {}

    def active(self) -> list[Job]:
        return [j for j in self.jobs.values() if j.state in ("queued", "running")]

    def _remember(self, job: Job) -> None:
        self.jobs[job.id] = job
        while len(self.jobs) > HISTORY:
            oldest = next(iter(self.jobs.values()))
            if oldest.state in ("queued", "running"):
                break
            self.jobs.popitem(last=False)

    async def run(self, name: str, argv: Sequence[str], *, total: float | None = None,
                  cwd: str | os.PathLike[str] | None = None, timeout: float | None = None,
                  job: Job | None = None) -> Job:
        """Run ``argv`` when a slot is free; return the finished job or raise :class:`JobFailed`."""
        argv = list(argv)
        if _is_ffmpeg(argv):
            argv[1:1] = ["-nostdin", "-nostats", "-progress", "pipe:1"]
        job = job or Job(next(self._ids), name, argv, total=total)
        self._remember(job)
        async with self._slots:
            if job.state == "cancelled":
                raise JobFailed(job)
            job.state, job.started_at = "running", time.time()
            job.progress = 0.0 if total else None
            proc = await asyncio.create_subprocess_exec(
                *argv, cwd=cwd, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, start_new_session=True)
            job.pid = proc.pid
            self._procs[job.id] = proc
            try:
                err = await asyncio.wait_for(self._watch(job, proc), timeout)
            except TimeoutError:
                self._kill(proc)
                await proc.wait()
                err = b"timed out"
            finally:
                self._procs.pop(job.id, None)
            job.returncode = proc.returncode
            job.finished_at = time.time()
            if job.state == "cancelled":
                raise JobFailed(job)
            if proc.returncode != 0 or err == b"timed out":
                tail = err.decode(errors="replace").strip()[-STDERR_TAIL:]
                job.disk_full = "No space left on device" in tail
                job.error = ("disk full (No space left on device)" if job.disk_full
                             else f"exit {proc.returncode}: {tail.splitlines()[-1] if tail else ''}")
                job.state = "failed"
                log.warning("media job %s failed: %s", name, job.error)
                raise JobFailed(job)
            job.state = "done"
            if job.total:
                job.progress = 1.0
            return job

    async def _watch(self, job: Job, proc: asyncio.subprocess.Process) -> bytes:
        assert proc.stdout is not None and proc.stderr is not None
        err = bytearray()

        async def drain_err() -> None:
            assert proc.stderr is not None
            while chunk := await proc.stderr.read(65536):
                err.extend(chunk)
                del err[:-STDERR_TAIL * 4]

        drainer = asyncio.create_task(drain_err())
        async for line in proc.stdout:
            key, _, value = line.decode(errors="replace").strip().partition("=")
            if key == "out_time_us" and job.total and value.lstrip("-").isdigit():
                job.progress = round(min(1.0, max(0.0, int(value) / 1e6 / job.total)), 3)
        await drainer
        await proc.wait()
        return bytes(err)

    @staticmethod
    def _kill(proc: asyncio.subprocess.Process) -> None:
        if proc.returncode is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: the job and nothing else
            except ProcessLookupError:
                pass

    def cancel(self, job: Job) -> None:
        job.state = "cancelled"
        proc = self._procs.get(job.id)
        if proc is not None:
            self._kill(proc)

    async def stop(self) -> None:
        for job in list(self.jobs.values()):
            if job.state in ("queued", "running"):
                self.cancel(job)
        for _ in range(100):
            if not self._procs:
                break
            await asyncio.sleep(0.02)
