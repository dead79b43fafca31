"""One task that calls a function every N seconds: the shape of every sweep in rtchub.

Heartbeats, grace-period expiry, token expiry and the HTTP transports' idle
checks all scan their own state periodically. One timer each, rather than a
timer per connection, keeps idle connections cheap; this class keeps the four
timers the same (an exception is logged and never ends the timer).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

log = logging.getLogger("rtchub")


class Periodic:
    def __init__(self, interval: float, fn: Callable[[], object], name: str) -> None:
        self.interval = interval
        self.fn = fn
        self.name = name
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"rtchub-{self.name}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.fn()
            except Exception:  # pragma: no cover - a bug must not stop the sweeps
                log.exception("%s timer failed", self.name)
