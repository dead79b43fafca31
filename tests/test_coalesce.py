"""The write coalescer's turn rule, with a fake loop and fake transports (no sockets).

Under light load the frames a socket read produced leave right after that
read; after a heavy turn they wait for the end of the turn, so that the
frames of many reads for one connection leave in one write.
"""

from __future__ import annotations

from typing import Any

from rtchub.transports.coalesce import LIGHT_TURN, CoalescingTransport, _Flusher


class FakeLoop:
    def __init__(self) -> None:
        self.soon: list[Any] = []

    def call_soon(self, fn: Any) -> None:
        self.soon.append(fn)

    def end_turn(self) -> None:
        ready, self.soon = self.soon, []
        for fn in ready:
            fn()


class FakeTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0


def make(n: int) -> tuple[FakeLoop, _Flusher, list[FakeTransport], list[CoalescingTransport]]:
    loop = FakeLoop()
    flusher = _Flusher(loop)  # type: ignore[arg-type]
    raw = [FakeTransport() for _ in range(n)]
    return loop, flusher, raw, [CoalescingTransport(t, flusher) for t in raw]  # type: ignore[arg-type]


def test_light_turn_sends_after_each_read() -> None:
    loop, flusher, raw, conns = make(2)
    conns[0].write(b"a")
    conns[0].write(b"b")
    assert raw[0].writes == []  # frames of one read are still batched...
    flusher.after_read()
    assert raw[0].writes == [b"ab"]  # ...and leave when the read is done, not at the turn's end
    conns[1].write(b"c")
    flusher.after_read()
    assert raw[1].writes == [b"c"]
    loop.end_turn()  # the turn's end finds nothing left
    assert raw[0].writes == [b"ab"] and raw[1].writes == [b"c"]


def test_after_a_heavy_turn_frames_wait_for_the_turn_end() -> None:
    loop, flusher, raw, conns = make(LIGHT_TURN + 1)
    for c in conns:  # one turn marks more connections than a light turn does
        c.write(b"x")
    loop.end_turn()
    assert all(t.writes == [b"x"] for t in raw)
    conns[0].write(b"1")
    flusher.after_read()
    conns[0].write(b"2")  # a second read in the same turn, for the same connection
    flusher.after_read()
    assert raw[0].writes == [b"x"]
    loop.end_turn()
    assert raw[0].writes == [b"x", b"12"]  # one write for both reads
    # That turn marked one connection: light again, so the next read's frames go at once.
    conns[0].write(b"3")
    flusher.after_read()
    assert raw[0].writes == [b"x", b"12", b"3"]


def test_one_scheduled_turn_end_per_turn() -> None:
    loop, flusher, _, conns = make(3)
    for c in conns:
        c.write(b"x")
        flusher.after_read()
    assert len(loop.soon) == 1  # early sends do not schedule another turn end
    loop.end_turn()
    assert flusher.last_marked == 3 and flusher.marked == 0
