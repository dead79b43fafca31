"""The Broker interface: what a cluster of rtchub nodes needs from shared storage.

The cluster (rtchub.broker.cluster and its parts) holds the routing logic; an
engine only has to provide these operations, each with the semantics written
on it (the Redis engine makes the ones marked *atomic* Lua scripts). Two
engines exist: :mod:`rtchub.broker.memory` (one process; several hubs of one
process may share a named in-memory bus, which is how the cluster logic is
tested without Redis) and :mod:`rtchub.broker.redis`.

Data model (docs/scaling.md "What is stored in Redis"):

- a *node channel* per node: every message for a node goes there, never to
  every node (targeted routing);
- a *room directory* per room: ``userId -> {s: sessionId, n: node,
  d: displayName, c: connected, v: join version}``, the shared truth for
  userId uniqueness, capacity and presence;
- a *session record* per session: owner node, identity, rooms, seq, and the
  mirror of its resume buffer, so that a session can be resumed on another
  node, even when its own node died;
- an *inbox* per session: deliveries that found their node gone, picked up
  by whichever node resumes the session;
- a *heartbeat key* per node with a TTL of ``node_ttl``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class BrokerDown(Exception):
    """The shared store is unreachable right now; the caller keeps serving locally."""


@dataclass
class Claim:
    """Answer of :meth:`Broker.claim`."""

    #: ``ok``, ``taken`` (a connected holder on a live node has the userId) or ``full``.
    status: str
    #: Join version: a cluster-wide counter, larger for later joins. A member
    #: learns of members with a smaller version from ``room-info`` and of the
    #: others from ``user-joined`` (see Directory.wanted).
    version: int = 0
    #: The directory entry this claim replaced (a holder in its grace period,
    #: or on a dead node): its session is told to give the seat up.
    replaced: dict[str, Any] | None = None
    #: The whole room directory after the claim: userId -> entry.
    members: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class SessionState:
    """Answer of :meth:`Broker.take`: everything needed to resume a session here."""

    meta: dict[str, str]
    #: Mirrored buffer entries, oldest first: ``b"<seq> <deliveryId or -> <json body>"``.
    entries: list[bytes]
    #: Deliveries that arrived while no node held the session: msgpack
    #: ``[roomId, minVersion, body, deliveryId]``.
    inbox: list[bytes]


#: ``expect`` of :meth:`Broker.map_set` meaning "whatever the current value is".
ANY: Any = object()


#: One operation of a :meth:`Broker.run` batch, as a tuple ``(name, *args)``:
#:
#: - ``("send", node, payload, inbox_ttl_ms)``: publish ``payload`` on ``node``'s channel; if
#:   no node listens, every delivery op in it is rerouted to the session's
#:   current node or put in the session's inbox (*atomic*).
#: - ``("mirror", [(sid, entries, seq), ...], max_entries, ttl_ms)``: for each
#:   session, append to its buffer mirror, keep the last ``max_entries`` (one
#:   op per flush: an engine can do it in one call). ``seq`` is the session's
#:   seq now; an engine may record it or not: the last entry carries it too.
#: - ``("meta", sid, fields, ttl_ms)``: write fields of the session record.
#: - ``("drop", sid)``: forget the session (record, mirror, inbox).
#: - ``("release", room, uid, sid)``: remove the directory entry if ``sid`` holds it.
#: - ``("conn", room, uid, sid, connected)``: set the entry's connected flag if ``sid`` holds it.
#: - ``("member", room, uid, entry, ttl_ms)``: (re)write a directory entry (republish).
#: - ``("buffer", sid, entries, ttl_ms)``: replace the whole mirror (republish).
#: - ``("touch", sids, rooms, ttl_ms)``: push the expiry of records and directories.
#: - ``("version", at_least)``: make the join-version counter at least this.
Op = tuple[Any, ...]


class Broker:
    """Abstract engine. ``on_message(payload)`` is called for each message on this node's channel."""

    #: True while the store answers and this node's channel is subscribed.
    connected: bool = False

    def __init__(self) -> None:
        self.on_message: Callable[[bytes], None] = lambda payload: None
        self.node_id = ""

    async def start(self, node_id: str, on_message: Callable[[bytes], None]) -> None:
        """Connect and subscribe to ``node_id``'s channel. Must not fail when the store is down."""
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def subscribed(self, timeout: float) -> bool:
        """Wait (up to ``timeout``) until this node's channel is subscribed."""
        raise NotImplementedError

    async def heartbeat(self, ttl: float) -> bool:
        """Refresh this node's heartbeat key; False when it had vanished (the store lost
        its data: the caller republishes its state). Raises BrokerDown, also when the
        store no longer counts this node as a subscriber of its channel."""
        raise NotImplementedError

    async def alive(self, nodes: set[str]) -> set[str]:
        """The nodes of ``nodes`` whose heartbeat key exists."""
        raise NotImplementedError

    async def run(self, ops: list[Op]) -> list[str]:
        """Execute ``ops`` in order, in one round trip when the engine can.

        Returns the rooms whose last seat one of the ``release`` ops removed.
        """
        raise NotImplementedError

    async def request(self, node: str, payload: bytes) -> int:
        """Publish on ``node``'s channel now; returns how many listeners got it (0 = node gone)."""
        raise NotImplementedError

    async def claim(self, room: str, uid: str, sid: str, name: str,
                    max_members: int, ttl_ms: int) -> Claim:
        """Take seat ``uid`` of ``room`` for session ``sid`` of this node (*atomic*).

        Refused with ``taken`` when a connected holder on a live node has it,
        ``full`` when the room has ``max_members`` entries and ``uid`` is new.
        """
        raise NotImplementedError

    async def unclaim(self, room: str, uid: str, sid: str,
                      replaced: dict[str, Any] | None) -> None:
        """Undo a claim whose join did not complete: put back what it replaced (*atomic*)."""
        raise NotImplementedError

    async def move(self, room: str, uid: str, sid: str, ttl_ms: int
                   ) -> tuple[int, dict[str, dict[str, Any]]] | None:
        """Seat ``uid`` of ``room`` now lives on this node, if ``sid`` still holds it (*atomic*).

        Returns ``(join version, directory)`` or None when the seat was lost.
        """
        raise NotImplementedError

    async def owner(self, sid: str) -> str | None:
        """The node holding session ``sid``, per the session record."""
        raise NotImplementedError

    async def take(self, sid: str) -> SessionState | None:
        """Make this node the owner of ``sid`` and return its state, emptying its inbox (*atomic*)."""
        raise NotImplementedError

    async def drain(self, sids: list[str]) -> dict[str, list[bytes]]:
        """Pop the inboxes of these sessions (after a resubscribe)."""
        raise NotImplementedError

    # The server API's cluster-wide view (read-only, not on any hot path).
    async def directory(self, room: str) -> dict[str, dict[str, Any]]:
        """Room ``room``'s seats: userId -> ``{s: sid, n: node, d: name, c: connected, v}``."""
        raise NotImplementedError

    async def nodes(self) -> set[str]:
        """Every node whose heartbeat key exists."""
        raise NotImplementedError

    # Shared maps: small cluster-wide state of other parts (the SFU's room
    # placement, room media modes and track directory: rtchub.sfu.placement).
    async def map_all(self, name: str) -> dict[str, str]:
        """Every ``key -> value`` of map ``name`` (empty when it does not exist)."""
        raise NotImplementedError

    async def map_set(self, name: str, key: str, value: str | None,
                      expect: str | None | object = ANY) -> tuple[bool, str | None]:
        """Set (``value``) or delete (``None``) ``key`` of map ``name`` (*atomic*).

        With ``expect`` given, only when the current value equals it (``None``:
        the key is absent): a compare-and-set, so two nodes placing the same
        room cannot both win. Returns ``(done, value now)``.
        """
        raise NotImplementedError


def make_broker(url: str) -> Broker:
    """``memory`` (private), ``memory://NAME`` (shared by the hubs of one process) or ``redis://...``."""
    if url.startswith(("redis://", "rediss://", "unix://")):
        from rtchub.broker.redis import RedisBroker

        return RedisBroker(url)
    if url == "memory" or url.startswith("memory://"):
        from rtchub.broker.memory import MemoryBroker

        return MemoryBroker(url.partition("://")[2] or None)
    raise ValueError(f"unknown broker {url!r}: use memory, memory://NAME or redis://host:port/db")
