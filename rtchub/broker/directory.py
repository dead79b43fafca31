"""The directory of rooms: cluster-wide seats, and this node's picture of remote members.

A join is a cluster-wide claim (a join gate, so it may await): the broker
checks userId uniqueness and capacity atomically and returns the room's
directory, from which the hub seats stubs of the remote members
(:meth:`Hub.seat_remote <rtchub.core.hub.Hub.seat_remote>`). Joins, leaves
and moves are announced to the nodes that have members of the room
(:class:`~rtchub.broker.ops.Joined`, :class:`~rtchub.broker.ops.Left`,
:class:`~rtchub.broker.ops.Moved`). Each claim gets a *join version* from
one counter; a member learns of members with a smaller version from
``room-info`` and of larger ones from ``user-joined``, which is how two joins
racing on two nodes never show a member twice or not at all
(:meth:`Directory.wanted` filters the forwarded ``user-joined``).

Members of a node that stopped heartbeating stay for ``grace_period`` (their
client may resume elsewhere; a move updates the stub), then the hub removes
them with ``user-left`` reason ``disconnected`` (:meth:`Directory.sweep`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from rtchub.broker.base import BrokerDown
from rtchub.broker.ops import Joined, Left, Moved
from rtchub.core.hub import JoinRequest
from rtchub.core.outgoing import Outgoing
from rtchub.core.room import Member, Room
from rtchub.core.session import Session
from rtchub.protocol.errors import ErrorCode, ProtocolError

if TYPE_CHECKING:
    from rtchub.broker.cluster import Cluster

log = logging.getLogger("rtchub.cluster")


class Directory:
    def __init__(self, cluster: Cluster) -> None:
        self.c = cluster
        self.hub = cluster.hub
        self.node = cluster.node
        self.out = cluster.out
        self.jv: dict[tuple[str, str], int] = {}        # (room, local sid) -> join version
        self.jv_user: dict[tuple[str, str], int] = {}   # (room, userId) -> join version
        #: Joins being claimed: (local sid, room) -> deliveries that arrived meanwhile.
        self.pending: dict[tuple[str, str], list[tuple[int, Outgoing, str | None]]] = {}
        self.pending_rooms: Counter[str] = Counter()
        #: (local sid, room) -> {userId: version}: later joiners our room-info named.
        self.named: dict[tuple[str, str], dict[str, int]] = {}
        self.replaced: dict[tuple[str, str], tuple[str, str]] = {}
        self.tomb: dict[str, float] = {}                # remote sids that left, recently
        self.dead_since: dict[str, float] = {}
        #: Cluster-wide room lifecycle, for the webhooks (a node's own Room objects
        #: come and go with its local members, so they would fire once per node):
        #: a room starts with the claim that takes its first seat (``first_joins``,
        #: filled only while ``track_first``). Decided atomically by the broker,
        #: so exactly one node reports each.
        self.track_first = False
        self.first_joins: set[tuple[str, str]] = set()

    def minv_of(self, room: str, uid: Any) -> int:
        return self.jv_user.get((room, uid), 0)

    def nodes_of(self, room: Room) -> set[str]:
        me = self.node
        return {m.session.node for m in room.members.values()  # type: ignore[misc]
                if m.session.node is not me}

    # ------------------------------------------------------ inbound filter
    def wanted(self, s: Session, room: str, minv: int, out: Outgoing, did: str | None) -> bool:
        """Whether a delivery for local session ``s`` in ``room`` is delivered now.

        Held back while ``s``'s join of ``room`` is being claimed; dropped when
        ``s`` is not in ``room`` or already saw the joiner in its ``room-info``.
        """
        if room not in s.rooms:
            waiting = self.pending.get((s.id, room))
            if waiting is not None:
                waiting.append((minv, out, did))
            return False
        if minv:
            if self.jv.get((room, s.id), 0) >= minv:
                return False  # joined after that member: room-info already named it
            named = self.named.get((s.id, room))
            if named is not None and named.get(out.msg.get("userId")) == minv:
                del named[out.msg["userId"]]
                if not named:
                    del self.named[(s.id, room)]
                return False  # room-info named it already (see member_joined)
        return True

    # -------------------------------------------------------- remote members
    def put_stub(self, room_id: str, uid: str, sid: str, node: str, name: str, version: int,
                 create: bool = False, media: str | None = None) -> None:
        if node == self.node:
            return
        if self.hub.rooms.get(room_id) is None and not create:
            return
        self.jv_user[(room_id, uid)] = version
        self.hub.seat_remote(room_id, uid, sid, node, name, create=create, media=media)

    def on_joined(self, op: Joined) -> None:
        if op.replaced:
            self.give_up(op.room, op.uid, op.replaced)
        if op.sid in self.tomb:
            return
        create = bool(self.pending_rooms.get(op.room))
        self.put_stub(op.room, op.uid, op.sid, op.node, op.name, op.version, create)

    def on_left(self, op: Left) -> None:
        self.tomb[op.sid] = time.monotonic()
        if self.hub.unseat_remote(op.room, op.uid, op.sid):
            self.gc_room(op.room)

    def on_moved(self, op: Moved) -> None:
        self.hub.move_remote(op.sid, op.node)
        if op.sid not in self.tomb:
            self.put_stub(op.room, op.uid, op.sid, op.node, op.name, op.version)

    def gc_room(self, room_id: str) -> None:
        """Forget a room once no local member (or pending join) is left in it."""
        if not self.pending_rooms.get(room_id):
            self.hub.forget_room(room_id)

    def gc_later(self, room_id: str) -> None:
        """:meth:`gc_room` after the hub finished what it is doing (it may remove the room)."""
        asyncio.get_running_loop().call_soon(self.gc_room, room_id)

    def give_up(self, room_id: str, uid: str, sid: str) -> None:
        """Another node's join took the seat of our session ``sid`` (rejoin after a reconnect)."""
        if not self.hub.give_up_seat(sid, room_id, uid):
            return
        self.jv.pop((room_id, sid), None)
        s = self.hub.sessions.get(sid)
        if s is not None:
            self.out.note_meta(s)
        self.gc_later(room_id)

    def drop_dead(self, stub: Session, reason: str) -> None:
        """A remote member is gone for good (its node died): tell our local members."""
        uid = stub.user_id or ""
        for room_id in list(stub.rooms):
            member = self.hub.unseat_remote(room_id, uid, stub.id, reason)
            if member is not None:
                room = self.hub.rooms[room_id]
                for callback in self.c.remote_gone:
                    callback(room, member, reason)
                self.out.command(("release", room_id, uid, stub.id))
                self.gc_room(room_id)
        self.hub.forget_remote(stub.id)
        self.tomb[stub.id] = time.monotonic()

    async def sweep(self, now: float) -> None:
        """Remove members of dead nodes once their sessions' grace period is over."""
        for k in [k for k, t in self.tomb.items() if now - t > 60]:
            del self.tomb[k]
        stubs = self.hub.remote
        nodes = {s.node for s in stubs.values() if s.node is not None}
        if not nodes:
            self.dead_since.clear()
            return
        alive = await self.c.broker.alive(nodes)
        for n in nodes:
            if n in alive:
                self.dead_since.pop(n, None)
            elif n not in self.dead_since:
                log.warning("node %s: node %s stopped heartbeating", self.node, n)
                self.dead_since[n] = now
        for n in [n for n in self.dead_since if n not in nodes]:
            del self.dead_since[n]
        grace = self.c.settings.grace_period
        for stub in list(stubs.values()):
            since = self.dead_since.get(stub.node or "")
            if since is not None and now - since >= grace:
                self.drop_dead(stub, "disconnected")

    # ------------------------------------------------------- local members
    def member_joined(self, room: Room, member: Member) -> None:
        s = member.session
        key = (s.id, room.id)
        replaced_sid, replaced_node = self.replaced.pop(key, ("", ""))
        nodes = self.nodes_of(room)
        if replaced_node:
            nodes.add(replaced_node)
        mine = self.jv.get((room.id, s.id), 0)
        self.out.emit(nodes, Joined(room.id, member.user_id, s.id, self.node,
                                    member.display_name, mine, replaced_sid))
        # Members that joined after us (larger version) but whose stub was already
        # here - from another local joiner's claim - were named by our room-info:
        # their user-joined, still on its way, must not name them twice.
        jv_user = self.jv_user
        early = {u: v for u in room.members if u != member.user_id
                 and (v := jv_user.get((room.id, u), 0)) > mine}
        if early:
            self.named[key] = early
        self.out.note_meta(s)
        waiting = self.pending.pop(key, None)
        if waiting is not None:
            self._unpend_room(room.id)
            for minv, out, did in waiting:
                self.c.deliver(s.id, room.id, minv, out, did)

    def member_left(self, room: Room, member: Member) -> None:
        s = member.session
        self.out.emit(self.nodes_of(room), Left(room.id, member.user_id, s.id))
        self.out.command(("release", room.id, member.user_id, s.id))
        self.jv.pop((room.id, s.id), None)
        self.named.pop((s.id, room.id), None)
        self.out.note_meta(s)
        self.gc_later(room.id)

    # ------------------------------------------------------------ join gate
    def gate(self, session: Session, req: JoinRequest, complete: Any) -> None:
        if not self.out.ready:
            raise ProtocolError(ErrorCode.INTERNAL, "cluster directory unavailable; retry the join",
                                req.msg_id)
        key = (session.id, req.room_id)
        if key in self.pending:
            raise ProtocolError(ErrorCode.INVALID_MESSAGE, "a join of this room is in progress",
                                req.msg_id)
        self.pending[key] = []
        self.pending_rooms[req.room_id] += 1
        asyncio.get_running_loop().create_task(self._claim(session, req, complete, key))

    def _unpend_room(self, room_id: str) -> None:
        n = self.pending_rooms[room_id] - 1
        if n > 0:
            self.pending_rooms[room_id] = n
        else:
            self.pending_rooms.pop(room_id, None)

    async def _claim(self, session: Session, req: JoinRequest, complete: Any,
                     key: tuple[str, str]) -> None:
        room_id, uid = req.room_id, req.user_id
        settings = self.c.settings
        try:
            limit = self.hub.room_cap(room_id, req.media or settings.media_mode)
            res = await self.c.broker.claim(room_id, uid, session.id, req.display_name or uid,
                                            limit, self.out.ttl_ms)
        except BrokerDown as exc:
            self.c.down(exc)
            self._abandon(key)
            complete(False, ProtocolError(ErrorCode.INTERNAL,
                                          "cluster directory unavailable; retry the join", req.msg_id))
            return
        if res.status != "ok":
            self._abandon(key)
            if res.status == "full":
                err = ProtocolError(ErrorCode.ROOM_FULL, f"room {room_id!r} is full "
                                    f"({limit})", req.msg_id)
            else:
                err = ProtocolError(ErrorCode.USER_ID_TAKEN,
                                    f"userId {uid!r} is already in room {room_id!r}", req.msg_id)
            complete(False, err)
            return
        self.jv[(room_id, session.id)] = res.version
        self.jv_user[(room_id, uid)] = res.version
        if self.track_first and res.replaced is None and list(res.members) == [uid]:
            self.first_joins.add((room_id, session.id))
        rep = res.replaced
        if rep is not None:
            self.replaced[key] = (rep["s"], rep["n"])
        others = {u: e for u, e in res.members.items() if e["n"] != self.node}
        create = bool(others) or (rep is not None and rep["n"] != self.node)
        for u, e in others.items():
            if e["s"] not in self.tomb:
                self.put_stub(room_id, u, e["s"], e["n"], e["d"], int(e["v"]), create, req.media)
        if rep is not None and rep["n"] != self.node:
            room = self.hub.rooms.get(room_id)
            if room is None or uid not in room.members:
                # So that the hub takes the seat over as a rejoin, as it would locally.
                self.put_stub(room_id, uid, rep["s"], rep["n"], rep["d"], int(rep["v"]), True,
                              req.media)
        complete(True)
        if key in self.pending:  # the join did not (yet) happen
            if session.ended or self.hub.join_gates[-1] == self.gate:
                await self._settle(session, req, key, rep)
            else:  # a later gate may still be deciding
                await asyncio.sleep(settings.join_hook_timeout + 1.0)
                if key in self.pending and req.room_id not in session.rooms:
                    await self._settle(session, req, key, rep)

    async def _settle(self, session: Session, req: JoinRequest, key: tuple[str, str],
                      rep: dict[str, Any] | None) -> None:
        """The join failed after the claim: give the seat back."""
        self._abandon(key)
        self.jv.pop((req.room_id, session.id), None)
        self.replaced.pop(key, None)
        self.first_joins.discard((req.room_id, session.id))
        with contextlib.suppress(BrokerDown):
            await self.c.broker.unclaim(req.room_id, req.user_id, session.id, rep)
        self.gc_room(req.room_id)

    def first_join(self, room_id: str, sid: str) -> bool:
        """Whether this member's claim took the room's first seat (asked once)."""
        try:
            self.first_joins.remove((room_id, sid))
        except KeyError:
            return False
        return True

    def _abandon(self, key: tuple[str, str]) -> None:
        if self.pending.pop(key, None) is not None:
            self._unpend_room(key[1])
