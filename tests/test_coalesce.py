"""The write coalescer's turn rule, with a fake loop and fake transports (no sockets).

Under light load picows sends each frame itself (``get_write_buffer_size``
answers 0), and what did get queued leaves right after the socket read that
produced it; after a heavy turn frames wait for the end of the turn, so that
the frames of many reads for one connection leave in one write.
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
        self.closing = False
        #: Bytes uvloop still holds for this socket.
        self.queued = 0

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return self.queued


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


def test_light_turn_lets_picows_send_each_frame_itself() -> None:
    loop, flusher, raw, conns = make(2)
    assert conns[0].get_write_buffer_size() == 0  # picows send(2)s this frame at once
    assert len(loop.soon) == 1  # the frame counts towards this turn's load
    assert conns[0].buffered() == 0
    loop.end_turn()
    assert flusher.last_marked == 1


def test_no_direct_send_past_queued_bytes_or_on_a_closing_transport() -> None:
    _, _, raw, conns = make(3)
    conns[0].write(b"partial")  # picows hands the rest of a partial send to write()
    assert conns[0].get_write_buffer_size() == len(b"partial") + 1  # the next frame queues behind it
    assert conns[0].buffered() == len(b"partial")
    raw[1].queued = 10  # uvloop still holds bytes: a direct send would overtake them
    assert conns[1].get_write_buffer_size() == 11
    assert conns[1].buffered() == 10
    raw[2].closing = True  # closed or aborted: the descriptor may already be reused
    assert conns[2].get_write_buffer_size() == 1


def test_many_frames_in_a_light_turn_make_the_next_turn_coalesce() -> None:
    loop, flusher, raw, conns = make(1)
    for _ in range(LIGHT_TURN + 1):  # say a fanout: one read, a frame for every member
        assert conns[0].get_write_buffer_size() == 0
    loop.end_turn()
    assert conns[0].get_write_buffer_size() > 0  # heavy: the frame goes through write()
    conns[0].write(b"a")
    flusher.after_read()
    conns[0].write(b"b")
    flusher.after_read()
    assert raw[0].writes == []
    loop.end_turn()
    assert raw[0].writes == [b"ab"]
