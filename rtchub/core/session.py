"""A session: one logical client, outliving any single transport connection.

The session owns the per-recipient ``seq`` counter and the replay buffer that
make ``resume`` exact (PROTOCOL.md "Sessions, heartbeat, resume"): every
message sent is numbered and kept (bounded by count and bytes) so that a
client reconnecting with ``lastSeq`` gets precisely what it missed, or a
``session-expired`` when that is no longer possible - never a silent gap.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Any, Protocol

from rtchub.core.outgoing import Outgoing
from rtchub.core.ratelimit import TokenBucket

#: How many accepted message ids a session remembers to drop resent duplicates.
DEDUP_WINDOW = 512


class Sink(Protocol):
    """What a transport offers the core: somewhere to put a session's messages.

    ``session`` is the session the transport currently feeds; the hub rebinds
    it when a ``resume`` moves the transport onto an older session.
    """

    session: Session | None
    transport_name: str

    def deliver(self, seq: int, out: Outgoing) -> None: ...

    def close(self, code: int, reason: str) -> None: ...


class Session:
    __slots__ = (
        "id", "user_id", "display_name", "rooms", "sink", "seq", "buffer",
        "buffer_bytes", "seen_ids", "bucket", "byte_bucket", "strikes",
        "join_bucket", "detached_at", "detach_reason", "claims", "node",
        "ended", "user_fixed", "created_at", "__weakref__",
    )

    def __init__(self, session_id: str, sink: Sink | None, now: float) -> None:
        self.id = session_id
        self.user_id: str | None = None
        #: True once the userId came from a token or a first join: it can no
        #: longer be changed by the client.
        self.user_fixed = False
        self.display_name: str | None = None
        self.rooms: dict[str, None] = {}
        self.sink = sink
        self.seq = 0
        #: (seq, encoded JSON body) of every message sent, oldest first, bounded.
        self.buffer: deque[tuple[int, bytes]] = deque()
        self.buffer_bytes = 0
        self.seen_ids: OrderedDict[Any, None] = OrderedDict()
        self.bucket: TokenBucket | None = None
        #: Bytes this session may relay (encoded size): see Hub._spend.
        self.byte_bucket: TokenBucket | None = None
        self.join_bucket: TokenBucket | None = None
        self.strikes = 0
        self.detached_at: float | None = None
        self.detach_reason = "disconnected"
        self.claims: dict[str, Any] | None = None
        self.node: str | None = None
        self.ended = False
        self.created_at = now

    @property
    def connected(self) -> bool:
        return self.sink is not None

    def first_buffered_seq(self) -> int:
        return self.buffer[0][0] if self.buffer else self.seq + 1

    def remember_id(self, msg_id: Any) -> None:
        seen = self.seen_ids
        seen[msg_id] = None
        if len(seen) > DEDUP_WINDOW:
            seen.popitem(last=False)

    def __repr__(self) -> str:
        return f"Session({self.id!r}, user={self.user_id!r}, seq={self.seq})"
