"""Heartbeats for every WebSocket from one timer, not one task per connection.

A task per connection would cost memory on every idle socket (the idle
target is ~12 KB per connection) and wake the loop N times per interval. One
sweep every second checks the ``last_seen`` stamp each endpoint keeps
up to date on every frame: idle for ``heartbeat`` seconds -> protocol Ping
(RFC 6455 section 5.5.2); silent ``heartbeat_timeout`` seconds after that ->
close 4008 and the session's rooms learn ``user-left`` reason ``timeout``.

The same sweep holds the output queued for every WebSocket together to
``pending_budget`` bytes (``--max-buffered-bytes``): each connection is
bounded by ``--max-pending-bytes`` on its own, but ten thousand slow readers
would be ten thousand times that. Over the budget, the connections holding
the most are dropped as slow readers (1008, their sessions kept for
resume), largest first, until the total is back under it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from rtchub.protocol.errors import CloseCode
from rtchub.timers import Periodic

if TYPE_CHECKING:
    from rtchub.transports.wsbase import WsEndpoint


class Liveness:
    def __init__(self, heartbeat: float, timeout: float, pending_budget: int = 0) -> None:
        self.heartbeat = heartbeat
        self.timeout = timeout
        self.pending_budget = pending_budget
        #: Bytes queued for all WebSockets together, as of the last sweep.
        self.pending = 0
        self.endpoints: set[WsEndpoint] = set()
        self.now = time.monotonic()
        step = max(0.05, min(1.0, heartbeat / 4, timeout / 4))
        self._timer = Periodic(step, self.sweep, "liveness")

    def add(self, ep: WsEndpoint) -> None:
        self.endpoints.add(ep)

    def discard(self, ep: WsEndpoint) -> None:
        self.endpoints.discard(ep)

    def start(self) -> None:
        self._timer.start()

    async def stop(self) -> None:
        await self._timer.stop()

    def sweep(self) -> None:
        now = self.now = time.monotonic()
        idle_after = self.heartbeat
        dead_after = self.heartbeat + self.timeout
        budget = self.pending_budget
        pending = 0
        heavy: list[tuple[int, WsEndpoint]] = []
        for ep in list(self.endpoints):
            if budget > 0 and not ep.closing:
                size = ep._pending_bytes()  # noqa: SLF001 - the stack's own count
                if size > 4096:
                    pending += size
                    heavy.append((size, ep))
            idle = now - ep.last_seen
            if idle >= dead_after:
                ep.close(CloseCode.HEARTBEAT_TIMEOUT, "heartbeat timeout")
                # A dead peer will never answer the close handshake.
                self.discard(ep)
            elif idle >= idle_after and not ep.ping_sent:
                ep.ping_sent = True
                ep.send_ping()
        self.pending = pending
        if pending > budget > 0:
            heavy.sort(key=lambda item: item[0], reverse=True)
            for size, ep in heavy:
                ep.deliver_overflowed()
                pending -= size
                if pending <= budget:
                    break
