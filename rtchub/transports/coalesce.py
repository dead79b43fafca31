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
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

from picows.picows import WSProtocol


class _Flusher:
    """The per-loop list of connections with queued frames."""

    __slots__ = ("loop", "dirty", "scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.dirty: list[CoalescingTransport] = []
        self.scheduled = False

    def mark(self, tr: CoalescingTransport) -> None:
        self.dirty.append(tr)
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.scheduled = False
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

    __slots__ = ("_t", "_pending", "_size", "_flusher")

    def __init__(self, transport: asyncio.Transport, flusher: _Flusher) -> None:
        self._t = transport
        self._pending: list[bytes] | None = None
        self._size = 0
        self._flusher = flusher

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
        # Never 0: picows then skips its direct send(2) and every frame of
        # this loop turn goes through write(), to leave in one batch.
        return self._t.get_write_buffer_size() + self._size + 1

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
        if name == "socket" and not _PICOWS_LOG.isEnabledFor(logging.INFO):
            sock = self._t.get_extra_info(name, default)
            return _QuietSocket(sock) if sock is not None else sock
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


class _QuietSocket:
    """The socket picows' ``connection_made`` sees, without its log-only syscalls.

    picows sets TCP_NODELAY (uvloop already did, on every accepted socket) and
    TCP_QUICKACK, then reads five socket options only to format an INFO log
    line, eagerly, even when that logger is off. Under uvloop each of those
    calls builds and detaches a temporary ``socket.socket``: ~7 objects and
    syscalls per connection, ~5 % of a join storm's CPU. This stand-in makes
    the QUICKACK call and answers the log-only reads with 0; it is used only
    while ``picows.server`` does not log at INFO (then the real socket is given).
    """

    __slots__ = ("_sock",)

    def __init__(self, sock: Any) -> None:
        self._sock = sock

    def setsockopt(self, level: int, option: int, value: Any) -> None:
        if not (level == socket.IPPROTO_TCP and option == socket.TCP_NODELAY):
            self._sock.setsockopt(level, option, value)

    def getsockopt(self, level: int, option: int, *args: Any) -> int:
        return 0

    def fileno(self) -> int:
        return int(self._sock.fileno())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class CoalescingWSProtocol(WSProtocol):
    """picows' server protocol, writing through a :class:`CoalescingTransport`."""

    def connection_made(self, transport: Any) -> None:
        loop = asyncio.get_running_loop()
        super().connection_made(CoalescingTransport(transport, flusher_for(loop)))
