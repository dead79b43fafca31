"""A session: one logical client, outliving any single transport connection.

The session owns the per-recipient ``seq`` counter and the replay buffer that
make ``resume`` exact (PROTOCOL.md "Sessions, heartbeat, resume"): every
message sent is numbered and kept (bounded by count and bytes) so that a
client reconnecting with ``lastSeq`` gets precisely what it missed, or a
``session-expired`` when that is no longer possible - never a silent gap.

A session is in exactly one :class:`State` at a time, and only the
transitions of :data:`TRANSITIONS` are legal (the shape of python-websockets'
``State``): the flags it replaces (``ended``, ``sink is None``,
``detached_at``) could be combined into states that mean nothing, such as an
ended session that still has a transport.
"""

from __future__ import annotations

import enum
import itertools
from collections import OrderedDict, deque
from collections.abc import Iterator
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
    #: None when a ``resume`` message may move this transport onto another
    #: session; else the transport resumes another way and this text says how
    #: (polling: a poll of the old session is the resume).
    resume_hint: str | None

    def deliver(self, seq: int, out: Outgoing) -> None: ...

    def close(self, code: int, reason: str) -> None: ...


class State(enum.Enum):
    """Where a session is in its life (PROTOCOL.md "Sessions, heartbeat, resume")."""

    #: A transport feeds it: ``sink`` is set.
    ATTACHED = "attached"
    #: Its transport is gone; it waits ``grace_period`` seconds for a resume.
    DETACHED = "detached"
    #: Over for good: out of its rooms, buffer freed, never resumable again.
    ENDED = "ended"


#: state -> the states it may move to. ATTACHED -> ATTACHED is a take-over (a
#: second transport resumes the session; the first is closed with 4009).
TRANSITIONS: dict[State, frozenset[State]] = {
    State.ATTACHED: frozenset({State.ATTACHED, State.DETACHED, State.ENDED}),
    State.DETACHED: frozenset({State.ATTACHED, State.ENDED}),
    State.ENDED: frozenset(),
}


class IllegalTransition(RuntimeError):
    """A state change that :data:`TRANSITIONS` does not allow: a bug in the caller."""


class Session:
    __slots__ = (
        "id", "user_id", "display_name", "rooms", "sink", "seq", "buffer",
        "buffer_first", "buffer_bytes", "seen_ids", "bucket", "byte_bucket", "strikes",
        "join_bucket", "detached_at", "detach_reason", "claims", "node",
        "state", "user_fixed", "created_at", "__weakref__",
    )

    def __init__(self, session_id: str, sink: Sink | None, now: float) -> None:
        self.id = session_id
        self.user_id: str | None = None
        #: True once the userId came from a token or a first join: it can no
        #: longer be changed by the client.
        self.user_fixed = False
        self.display_name: str | None = None
        self.rooms: dict[str, None] = {}
        #: The transport feeding the session; set only through :meth:`attach`,
        #: :meth:`detach` and :meth:`end`, so it is not None exactly when ATTACHED.
        #: A plain slot, not a property: :meth:`Hub.send` reads it per message.
        self.sink = sink
        self.state = State.ATTACHED if sink is not None else State.DETACHED
        self.seq = 0
        #: The encoded JSON body of every message sent, oldest first, bounded;
        #: the first has seq :attr:`buffer_first` and the seqs are consecutive.
        #: Bare ``bytes``, not ``(seq, body)`` tuples: bytes are not tracked by
        #: the cyclic GC, a new tuple is until a collection first looks at it.
        #: With 512 messages per session, relaying at 5,000 msgs/s made a
        #: young-generation collection of ~50,000 such tuples every ~10 s, one
        #: 19 ms pause each on this machine (the relay-rate max latency).
        self.buffer: deque[bytes] = deque()
        self.buffer_first = 1
        self.buffer_bytes = 0
        self.seen_ids: OrderedDict[Any, None] = OrderedDict()
        self.bucket: TokenBucket | None = None
        #: Bytes this session may relay (encoded size): see Hub._spend.
        self.byte_bucket: TokenBucket | None = None
        self.join_bucket: TokenBucket | None = None
        self.strikes = 0
        #: When the session became DETACHED (its grace period runs from here).
        self.detached_at: float | None = None if sink is not None else now
        self.detach_reason = "disconnected"
        self.claims: dict[str, Any] | None = None
        self.node: str | None = None
        self.created_at = now

    # ------------------------------------------------------------------ states
    def _move(self, to: State) -> None:
        if to not in TRANSITIONS[self.state]:
            raise IllegalTransition(f"{self!r}: {self.state.name} -> {to.name}")
        self.state = to

    def attach(self, sink: Sink) -> Sink | None:
        """A transport feeds the session now (open, resume, take-over); returns the previous one."""
        self._move(State.ATTACHED)
        previous = self.sink
        self.sink = sink
        self.detached_at = None
        return previous

    def detach(self, now: float, reason: str) -> None:
        """The transport is gone; the grace period starts at ``now``."""
        self._move(State.DETACHED)
        self.sink = None
        self.detached_at = now
        self.detach_reason = reason

    def end(self) -> Sink | None:
        """Over for good; returns the transport it still had, if any."""
        self._move(State.ENDED)
        sink = self.sink
        self.sink = None
        return sink

    @property
    def ended(self) -> bool:
        return self.state is State.ENDED

    @property
    def connected(self) -> bool:
        return self.state is State.ATTACHED

    def first_buffered_seq(self) -> int:
        return self.buffer_first if self.buffer else self.seq + 1

    def keep(self, seq: int, body: bytes) -> None:
        """Buffer message ``seq`` for resume.

        Seqs in the buffer are consecutive, which is what makes a gap in a
        resume visible (:meth:`first_buffered_seq`): a ``seq`` that does not
        follow the last one starts the buffer afresh (a hand-over whose
        mirror lost messages), so a resume from before it is refused rather
        than replayed with a hole.
        """
        buf = self.buffer
        if seq != self.buffer_first + len(buf):
            buf.clear()
            self.buffer_bytes = 0
            self.buffer_first = seq
        buf.append(body)
        self.buffer_bytes += len(body)

    def drop_oldest(self) -> int:
        """Forget the oldest buffered message; returns its size in bytes."""
        self.buffer_first += 1
        size = len(self.buffer.popleft())
        self.buffer_bytes -= size
        return size

    def buffered(self, after: int = 0) -> Iterator[tuple[int, bytes]]:
        """``(seq, body)`` of the buffered messages with ``seq > after``, oldest first."""
        skip = max(0, after + 1 - self.buffer_first)
        return zip(itertools.count(self.buffer_first + skip),
                   itertools.islice(self.buffer, skip, None), strict=False)

    def remember_id(self, msg_id: Any) -> None:
        seen = self.seen_ids
        seen[msg_id] = None
        if len(seen) > DEDUP_WINDOW:
            seen.popitem(last=False)

    def __repr__(self) -> str:
        return f"Session({self.id!r}, user={self.user_id!r}, seq={self.seq})"
