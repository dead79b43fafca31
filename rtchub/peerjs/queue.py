"""Messages for a PeerJS peer that is not connected (yet), and their expiry.

PeerJS's server does not drop an OFFER, ANSWER or CANDIDATE whose ``dst`` is
not connected: it keeps it in a queue per destination and hands the queue over
when that peer connects, because a caller often learns a peer's id a moment
before the peer's own WebSocket is open. A queue that nobody reads within
``expire_timeout`` (5 s by default) is dropped, and each sender whose messages
were in it gets one ``EXPIRE`` (``src`` = the absent peer), which the client
turns into a ``peer-unavailable`` error. LEAVE and EXPIRE are never queued.

This module is that rule and nothing else: no sockets, no timers, an explicit
``now``, so the behaviour is unit-tested with a fake clock
(tests/test_peerjs_unit.py). The caller owns the timer and the delivery.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

#: Types that are dropped rather than queued when ``dst`` is not connected.
NOT_QUEUED = frozenset({"LEAVE", "EXPIRE"})
#: Messages kept for one absent peer; beyond it the newest are dropped (a peer
#: that never connects must not grow memory without bound; PeerJS has no cap).
MAX_PER_PEER = 256


class _Queue:
    __slots__ = ("since", "items")

    def __init__(self, now: float) -> None:
        #: When the queue was made (PeerJS's ``lastReadAt``: a read empties it here).
        self.since = now
        self.items: list[tuple[str, dict[str, Any]]] = []


class OfflineQueue:
    """Queues keyed by ``(realm, dst)``: a realm is a PeerJS key, peers are ids within it."""

    def __init__(self, expire_timeout: float, max_per_peer: int = MAX_PER_PEER) -> None:
        self.expire_timeout = expire_timeout
        self.max_per_peer = max_per_peer
        self.queues: dict[tuple[Hashable, str], _Queue] = {}
        #: Messages dropped because a queue was full.
        self.dropped = 0

    def put(self, realm: Hashable, src: str, dst: str, message: dict[str, Any], now: float) -> bool:
        """Keep ``message`` from ``src`` until ``dst`` connects. False when it is not
        queued (LEAVE/EXPIRE, or the queue is full)."""
        if message.get("type") in NOT_QUEUED:
            return False
        key = (realm, dst)
        queue = self.queues.get(key)
        if queue is None:
            queue = self.queues[key] = _Queue(now)
        if len(queue.items) >= self.max_per_peer:
            self.dropped += 1
            return False
        queue.items.append((src, message))
        return True

    def take(self, realm: Hashable, dst: str) -> list[tuple[str, dict[str, Any]]]:
        """``dst`` connected: everything queued for it, oldest first, as ``(src, message)``."""
        queue = self.queues.pop((realm, dst), None)
        return queue.items if queue is not None else []

    def expire(self, now: float) -> list[tuple[Hashable, str, str]]:
        """Drop the queues older than ``expire_timeout``; return the EXPIRE notices
        due, one per ``(realm, src, dst)``, as ``(realm, src, dst)``: tell ``src``
        that ``dst`` never came."""
        limit = now - self.expire_timeout
        due = [key for key, q in self.queues.items() if q.since < limit]
        notices: list[tuple[Hashable, str, str]] = []
        for key in due:
            realm, dst = key
            seen: set[str] = set()
            for src, _ in self.queues.pop(key).items:
                if src not in seen:
                    seen.add(src)
                    notices.append((realm, src, dst))
        return notices

    def __len__(self) -> int:
        return sum(len(q.items) for q in self.queues.values())
