"""One write per connection per event-loop turn.

Profiling the picows relay (STACKS.md) showed two thirds of the server's CPU
in the kernel's ``send``: one syscall per relayed frame. Under load many
frames for the same connection are produced in one loop turn (every frame
read from every socket in one ``epoll`` round is handled before the loop
polls again), so they can leave in one write.

:class:`CoalescingTransport` wraps the asyncio transport picows writes to.
Every frame of a loop turn is appended to a per-connection list, and a single
``loop.call_soon`` per turn flushes all dirty connections, each with one
``write``. picows has a fast path that calls ``send(2)`` itself whenever
``get_write_buffer_size()`` is 0; the wrapper never reports 0, so the first
frame of a turn is batched too. Measured on the relay scenario: letting the
first frame go out at once gave ~70k msgs/s at 14 µs of server CPU each,
batching all of them ~90-100k at 11-12 µs; the flush runs in the next loop
iteration, microseconds later. Byte order on the wire is unchanged.

Under light load the wait for the end of the turn is the latency, not the
CPU: at the bench's fixed 5,000 msgs/s a turn held ~3.6 socket reads and
batching saved nothing (one write per message either way), while the detour
through this wrapper (queue, mark, a write through uvloop's transport) cost
~10 µs of server CPU per message: 54 µs with it, 44 µs with picows writing on
its own, against 22 µs for a bare picows relay (``strace``/``perf`` on the
relay-rate load, docs/benchmarks.notes.md). So the wrapper measures each
turn's load (connections that queued frames plus frames sent at once); in
the turn after one that stayed at or under :data:`LIGHT_TURN`,
``get_write_buffer_size`` answers 0 while nothing is queued here or in
uvloop, and picows ``send(2)``s the frame itself, at once. Anything that did
get queued (a partial send, a TLS connection, where picows never asks)
leaves after the socket read that produced it (:meth:`_Flusher.after_read`).
Under load the turns are big (the saturated relay: ~140 connections per
turn) or fan out (one fanout read produces 199 frames), and everything waits
for the turn's end as before.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

from picows.picows import WSProtocol

#: A turn whose load (connections that queued frames plus frames sent at
#: once) stayed at or under this was light: in the turn after it, frames
#: leave at once instead of at the turn's end.
LIGHT_TURN = 32


class _Flusher:
    """The per-loop list of connections with queued frames."""

    __slots__ = ("loop", "dirty", "scheduled", "marked", "last_marked", "light")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.dirty: list[CoalescingTransport] = []
        self.scheduled = False
        #: Load of this turn, and of the last turn that had any: connections
        #: that queued frames plus frames sent at once.
        self.marked = 0
        self.last_marked = 0
        #: The last turn's load was at most LIGHT_TURN: frames may leave at
        #: once. Decided once per turn (:meth:`end_turn`), read per frame.
        self.light = True

    def mark(self, tr: CoalescingTransport) -> None:
        """``tr`` queued its first frame of this turn."""
        self.dirty.append(tr)
        self.marked += 1
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.end_turn)

    def sent_now(self) -> None:
        """A frame of a light turn left at once: it counts into this turn's load too.

        (``mark``'s count, without the queueing; kept apart so that a heavy
        turn pays no extra call per connection.)
        """
        self.marked += 1
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.end_turn)

    def after_read(self) -> None:
        """A socket read was handled: under light load, send what it produced now."""
        if self.dirty and self.light:
            self.flush()

    def end_turn(self) -> None:
        self.scheduled = False
        self.last_marked = self.marked
        self.light = self.marked <= LIGHT_TURN
        self.marked = 0
        self.flush()

    def flush(self) -> None:
        dirty = self.dirty
        self.dirty = []
        for tr in dirty:
            tr.flush()


_flushers: dict[asyncio.AbstractEventLoop, _Flusher] = {}


def flusher_for(loop: asyncio.AbstractEventLoop) -> _Flusher:
    f = _flushers.get(loop)
    if f is None or f.loop is not loop:
        if len(_flushers) > 8:  # loops of finished tests; never more than a few live
            for old in [k for k in _flushers if k.is_closed()]:
                del _flushers[old]
        f = _flushers[loop] = _Flusher(loop)
    return f


class CoalescingTransport:
    """An asyncio transport that batches the writes of one loop turn."""

    __slots__ = ("_t", "_pending", "_size", "_flusher", "_quiet")

    def __init__(self, transport: asyncio.Transport, flusher: _Flusher) -> None:
        self._t = transport
        self._pending: list[bytes] | None = None
        self._size = 0
        self._flusher = flusher
        #: While picows' connection_made runs with its logger off: the socket it
        #: is given (see _QuietSocket); None otherwise.
        self._quiet: _QuietSocket | None = None

    # -- writing --------------------------------------------------------------------
    def write(self, data: Any) -> None:
        pending = self._pending
        if pending is None:
            self._pending = [bytes(data)]
            self._size = len(data)
            self._flusher.mark(self)
        else:
            pending.append(bytes(data))
            self._size += len(data)

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def flush(self) -> None:
        pending = self._pending
        if pending is None:
            return
        self._pending = None
        self._size = 0
        t = self._t
        if t.is_closing():
            return
        t.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def get_write_buffer_size(self) -> int:
        """picows asks this before every frame (not on TLS): 0 lets it ``send(2)`` the frame itself.

        0 only in a light turn, with nothing queued here or in uvloop (order
        on the wire) and the transport not closing: uvloop closes the socket
        at ``close``/``abort`` when nothing is queued, and picows only learns
        of it at ``connection_lost``, so a send in between could reach a
        reused descriptor. Otherwise never 0: the frame comes through
        :meth:`write`, to leave with the rest of the turn's.
        """
        if self._pending is not None:  # queued behind this turn's frames: no count, no check
            return self._t.get_write_buffer_size() + self._size + 1
        size = self._t.get_write_buffer_size()
        flusher = self._flusher
        if not size and flusher.light and not self._t.is_closing():
            flusher.sent_now()
            return 0
        return size + 1

    def buffered(self) -> int:
        """Bytes not yet handed to the kernel: what the slow-reader checks read."""
        return self._t.get_write_buffer_size() + self._size

    # -- closing: queued frames (a close frame last) go out first -------------------
    def close(self) -> None:
        self.flush()
        self._t.close()

    def write_eof(self) -> None:
        self.flush()
        self._t.write_eof()

    def abort(self) -> None:
        self._pending = None
        self._size = 0
        self._t.abort()

    # -- everything else is the wrapped transport's ----------------------------------
    def is_closing(self) -> bool:
        return self._t.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        quiet = self._quiet
        if quiet is not None:
            if name == "socket":
                return quiet
            if name == "sockname":
                return default  # read only for picows' (disabled) log line
        return self._t.get_extra_info(name, default)

    def can_write_eof(self) -> bool:
        return self._t.can_write_eof()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._t.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._t.get_protocol()

    def pause_reading(self) -> None:
        self._t.pause_reading()

    def resume_reading(self) -> None:
        self._t.resume_reading()

    def is_reading(self) -> bool:
        return self._t.is_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._t.set_write_buffer_limits(high, low)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._t.get_write_buffer_limits()


_PICOWS_LOG = logging.getLogger("picows.server")
_SKIPPED_TCP_OPTIONS = frozenset(
    {socket.TCP_NODELAY, *((socket.TCP_QUICKACK,) if hasattr(socket, "TCP_QUICKACK") else ())})


class _QuietSocket:
    """The socket picows' ``connection_made`` sees, without its log-only syscalls.

    picows asks the transport for the socket twice and its address once, sets
    TCP_NODELAY and TCP_QUICKACK, then reads five socket options only to
    format an INFO log line, eagerly, even when that logger is off. Under
    uvloop each of those is a syscall (and each option call builds and
    detaches a temporary ``socket.socket``): ~11 per connection, ~8 % of a
    join storm's CPU on this machine (``strace -c``). This stand-in is asked
    for once per connection; the TCP options are skipped (uvloop sets
    TCP_NODELAY on every accepted socket, and TCP_QUICKACK is not sticky,
    tcp(7): the kernel leaves quick-ack mode on its own) and the log-only
    reads answer 0. Used only while ``picows.server`` does not log at INFO;
    with it on, picows gets the real socket.
    """

    __slots__ = ("_sock", "_fd")

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._fd = int(sock.fileno())

    def setsockopt(self, level: int, option: int, value: Any) -> None:
        if level != socket.IPPROTO_TCP or option not in _SKIPPED_TCP_OPTIONS:
            self._sock.setsockopt(level, option, value)

    def getsockopt(self, level: int, option: int, *args: Any) -> int:
        return 0

    def fileno(self) -> int:
        return self._fd

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class CoalescingWSProtocol(WSProtocol):
    """picows' server protocol, writing through a :class:`CoalescingTransport`.

    ``bound_to(loop)`` makes a subclass that knows its loop's flusher, so a new
    connection does not ask ``asyncio.get_running_loop()`` (a ``getpid(2)``
    each, for fork safety).
    """

    _flusher: _Flusher | None = None

    @classmethod
    def bound_to(cls, loop: asyncio.AbstractEventLoop) -> type[CoalescingWSProtocol]:
        return type(cls.__name__, (cls,), {"_flusher": flusher_for(loop)})

    def buffer_updated(self, nbytes: int) -> None:
        WSProtocol.buffer_updated(self, nbytes)  # called per socket read: no super() object
        flusher = self._flusher
        if flusher is not None:
            flusher.after_read()

    def connection_made(self, transport: Any) -> None:
        flusher = self._flusher or flusher_for(asyncio.get_running_loop())
        wrapped = CoalescingTransport(transport, flusher)
        if not _PICOWS_LOG.isEnabledFor(logging.INFO):
            sock = transport.get_extra_info("socket")
            if sock is not None:
                wrapped._quiet = _QuietSocket(sock)
        try:
            super().connection_made(wrapped)
        finally:
            wrapped._quiet = None
