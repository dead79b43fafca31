"""Give freed heap back to the operating system after large frees.

Resume buffers hold message bodies as ``bytes``; bodies over 512 bytes are
allocated by the C library's ``malloc``, not by Python's small-object
allocator. When many sessions end at once (a grace period running out for
a thousand dropped clients), glibc keeps the freed chunks in its heap: they
are reused by later allocations but stay in the process's RSS. Measured in
issue 13: RSS stayed at 285 MB after every session expired, against a 69 MB
baseline. ``malloc_trim(0)`` (glibc, malloc_trim(3)) returns every whole free
page of the heap with ``madvise(MADV_DONTNEED)``.

It costs milliseconds over a large heap, so it runs from a timer only after
the hub freed at least :data:`TRIM_AFTER` bytes of buffers
(:attr:`rtchub.core.hub.Hub.released`), never on the message path. On a C
library without ``malloc_trim`` (musl) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from typing import TYPE_CHECKING, Any

from rtchub.timers import Periodic

if TYPE_CHECKING:
    from rtchub.core.hub import Hub

log = logging.getLogger("rtchub.memory")

#: Freed buffer bytes that make a trim worth its cost.
TRIM_AFTER = 8 * 1024 * 1024
#: Seconds between checks.
CHECK_EVERY = 2.0


def _malloc_trim() -> Any:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    fn = getattr(libc, "malloc_trim", None)
    if fn is not None:
        fn.argtypes = [ctypes.c_size_t]
        fn.restype = ctypes.c_int
    return fn


class HeapReturner:
    """A service: trims the C heap after the hub freed much buffer memory."""

    def __init__(self, hub: Hub, trim_after: int = TRIM_AFTER, every: float = CHECK_EVERY) -> None:
        self.hub = hub
        self.trim_after = trim_after
        self.trims = 0
        self._trim = _malloc_trim()
        self._timer = Periodic(every, self.check, "heap-returner")

    def check(self) -> None:
        if self.hub.released < self.trim_after:
            return
        self.hub.released = 0
        self.trim()

    def trim(self) -> bool:
        """Return free heap pages to the OS now; False when the C library cannot."""
        if self._trim is None:
            return False
        self._trim(0)
        self.trims += 1
        return True

    async def start(self) -> None:
        self._timer.start()

    async def stop(self) -> None:
        await self._timer.stop()
