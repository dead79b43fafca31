"""How much of the core's join path is cyclic-GC time, per GC threshold.

    .venv/bin/python tools/gc_joins.py                 # CPython's default thresholds
    .venv/bin/python tools/gc_joins.py 50000,20,100    # what ``rtchub serve`` uses

Joins 20,000 sessions into rooms of 4 on the I/O-free Hub (no sockets, so the
numbers are the core's alone) and prints CPU µs per join and the time spent in
collections (``gc.callbacks``). Process CPU time, so other load on the machine
barely moves it. The reason for ``rtchub.cli.GC_THRESHOLD``.
"""

from __future__ import annotations

import gc
import sys
import time
from typing import Any

from rtchub.core.hub import Hub
from rtchub.protocol.codec import json_frame
from rtchub.settings import Settings


class Sink:
    """Encodes each frame as the WebSocket transport does, then drops it."""

    transport_name = "ws"
    __slots__ = ("session", "last")

    def __init__(self) -> None:
        self.session = None
        self.last = b""

    def deliver(self, seq: int, out: Any) -> None:
        self.last = json_frame(seq, out.json)

    def close(self, code: int, reason: str) -> None:
        pass


def main(argv: list[str]) -> None:
    if argv:
        gc.freeze()
        gc.set_threshold(*(int(x) for x in argv[0].split(",")))
    spent = [0.0, 0]
    started = [0.0]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.process_time()
        else:
            spent[0] += time.process_time() - started[0]
            spent[1] += 1

    gc.callbacks.append(on_gc)
    hub = Hub(Settings(max_msg_rate=0, max_joins_per_second=0))
    n = 20_000
    t = time.process_time()
    for i in range(n):
        s = hub.open(Sink())
        hub.receive(s, {"type": "join", "roomId": f"r{i // 4}", "userId": f"u{i}", "id": 1})
    took = time.process_time() - t
    print(f"threshold {gc.get_threshold()}: {took / n * 1e6:.1f} µs/join, "
          f"{spent[0] * 1e3:.0f} ms in {spent[1]} collections ({spent[0] / took * 100:.0f} %)")


if __name__ == "__main__":
    main(sys.argv[1:])
