"""The glue between one node's :class:`~rtchub.core.hub.Hub` and a shared broker.

How many nodes act as one (docs/scaling.md has the operator's view):

*Remote members are stubs.* A room on this node holds its local members and
one stub :class:`~rtchub.core.session.Session` per member on another node
(``stub.node`` = that node). The hub keeps routing exactly as on one node;
the cluster replaces ``hub.send`` by a function whose first line is the only
cluster cost of a local delivery: a stub's message goes to the stub's node
instead. Stubs are born ``ended`` so the hub never ends them (they are not
its sessions) and are invisible to observers.

*Targeted routing.* Deliveries for another node are queued per node and
flushed once per event-loop turn as one publish on that node's own channel
(a room broadcast to three members on node B is one message with three
session ids). A node that has no member in a room never hears of it.

*Shared state.* A join is a cluster-wide claim (a join gate, so it may
await): the broker checks userId uniqueness and capacity atomically and
returns the room's directory, from which stubs are made. Joins, leaves and
moves are announced to the nodes that have members of the room. Each claim
gets a *join version* from one counter; a member learns of members with a
smaller version from ``room-info`` and of larger ones from ``user-joined``,
which is how two joins racing on two nodes never show a member twice or not
at all.

*Seq stays with the session's node.* A forwarded message is numbered by the
node that holds the session (``hub.send`` on the local session), which also
mirrors every numbered message to the broker, so a resume on another node -
even after this node died - replays from the mirror. A resume for a session
this node does not have asks its owner to hand it over (or takes it from the
mirror when the owner is dead), moves its seats, and then lets the hub's own
``resume`` run. The HTTP transports use the same take-over (:meth:`take_over`:
an SSE ``Last-Event-ID`` or a poll on another node) and forward a ``POST
/send`` to the session's node (:meth:`forward_receive`), so neither needs
sticky sessions.

*Failure.* Each node refreshes a heartbeat key (TTL ``node_ttl``). A node
whose key is gone is dead: its stubs stay for ``grace_period`` (the client
may resume elsewhere; a move updates the stub) and are then removed with
``user-left`` reason ``disconnected``. Bound: ``node_ttl + grace_period +
sweep interval`` after the crash. When the broker is unreachable the node
keeps serving local traffic, refuses joins and resumes that need the
directory, queues what it must tell other nodes, reports not-ready, and on
its own reconnects, resubscribes, republishes its state and drains the
inboxes of its sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import Counter, deque
from typing import TYPE_CHECKING, Any

import msgpack
import orjson

from rtchub.broker.base import Broker, BrokerDown, Op, SessionState, make_broker
from rtchub.core.hub import Hub, HubObserver, JoinRequest
from rtchub.core.outgoing import Outgoing
from rtchub.core.ratelimit import TokenBucket
from rtchub.core.resume import Identity, ResumeVerdict
from rtchub.core.room import Member, Room
from rtchub.core.session import Session
from rtchub.protocol.errors import CloseCode, ErrorCode, ProtocolError

if TYPE_CHECKING:
    from rtchub.app import RtcHub

log = logging.getLogger("rtchub.cluster")

#: Ops queued for one node while the broker is down, beyond which the oldest go.
MAX_QUEUED = 50_000
#: Answer to a forwarded request whose proven identity may not act for the session.
FORBIDDEN = -2
#: How long a resume waits for the old node to hand a session over.
HANDOVER_TIMEOUT = 2.0


class Cluster(HubObserver):
    """Makes ``hub`` one node of a cluster sharing ``broker``. A service of the app."""

    def __init__(self, hub: Hub, broker: Broker) -> None:
        self.hub = hub
        self.broker = broker
        self.node = hub.node_id
        s = hub.settings
        self.settings = s
        #: True while the broker answers, our channel is subscribed and our state is published.
        self.ready = False
        #: Seconds between heartbeats and dead-node sweeps.
        self.interval = max(0.1, min(1.0, s.node_ttl / 3))
        ttl = s.grace_period + 2 * s.node_ttl + 10
        self.ttl_ms = int(ttl * 1000)
        self.stubs: dict[str, Session] = {}
        self.jv: dict[tuple[str, str], int] = {}        # (room, local sid) -> join version
        self.jv_user: dict[tuple[str, str], int] = {}   # (room, userId) -> join version
        self.pending: dict[tuple[str, str], list[tuple[int, Outgoing, str | None]]] = {}
        self.pending_rooms: Counter[str] = Counter()
        #: (local sid, room) -> {userId: version}: later joiners our room-info named.
        self.named: dict[tuple[str, str], dict[str, int]] = {}
        self.replaced: dict[tuple[str, str], tuple[str, str]] = {}
        self.tomb: dict[str, float] = {}                # remote sids that left, recently
        self.moved: dict[str, tuple[str, float]] = {}   # sids handed over -> (node, when)
        self.resuming: dict[str, list[tuple[str, int, Outgoing, str | None]]] = {}
        self.handovers: dict[str, asyncio.Future[None]] = {}
        self.dead_since: dict[str, float] = {}
        self.outq: dict[str, list[list[Any]]] = {}
        self._last: dict[str, Outgoing] = {}
        self.cmds: list[Op] = []
        self.retry_sends: list[Op] = []
        self.epoch = secrets.token_hex(4)
        self.batch_no = 0
        self.seen_batches: dict[str, tuple[str, int]] = {}
        #: Delivery ids ("epoch:n") make every forwarded message identifiable
        #: across a crash: the mirror records them, origins keep what they sent
        #: for a while (``retained``) and resend it to whoever restores a session
        #: from a dead node, which drops the ones the mirror already has.
        self.dseq = 0
        self.retained: dict[str, deque[tuple[float, str, str, int, bytes]]] = {}
        self.retain_for = 2 * s.node_ttl + 2.0
        self.replays: dict[str, list[Any]] = {}
        self._did: str | None = None
        #: Restored sessions -> (when, delivery ids seen): late resends are dropped.
        self.recent_dids: dict[str, tuple[float, set[str]]] = {}
        self.mirror: list[tuple[Session, int, Outgoing, str | None]] = []
        self.meta_known: set[str] = set()
        #: What went over the broker: ``received`` payloads and ``deliveries``
        #: (session ids) on our channel, ``published`` payloads. Tests read it.
        self.stats: Counter[str] = Counter()
        self._wake = asyncio.Event()
        self._kicked = False
        self._up_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._prev_send: Any = None
        self._beats = 0
        #: POST /send forwarded to the owning node, waiting for its answer: reqid -> future.
        self.forwards: dict[str, asyncio.Future[int]] = {}
        #: How the owning node hands a forwarded POST /send body to its session
        #: (messages in order; returns how many were accepted): the same loop as
        #: rtchub.transports.http_common.receive_all.
        self.receive_batch: Any = self._receive_batch
        #: Cluster-wide room lifecycle, for the webhooks (a node's own Room objects
        #: come and go with its local members, so they would fire once per node):
        #: a room starts with the claim that takes its first seat (``first_joins``,
        #: filled only while ``track_first``) and finishes with the release that
        #: removes its last one (``room_finished`` callbacks). Both are decided
        #: atomically by the broker, so exactly one node reports each.
        self.track_first = False
        self.first_joins: set[tuple[str, str]] = set()
        self.room_finished: list[Any] = []
        #: How a ``POST /close`` forwarded from another node ends a session (set by
        #: the HTTP transports; the default detaches it cleanly).
        self.close_session: Any = lambda s: self.hub.detach(s, clean=True)
        self._ops = {"d": self._op_deliver, "j": self._op_join, "l": self._op_leave,
                     "m": self._op_move, "h": self._op_handover, "H": self._op_handed,
                     "r": self._op_replay, "R": self._op_replayed,
                     "s": self._op_receive, "S": self._op_received,
                     "k": self._op_kick, "K": self._op_received,
                     "c": self._op_close, "C": self._op_received}

    # ================================================================ lifecycle
    async def start(self) -> None:
        hub = self.hub
        self._install_send()
        hub.observers.append(self)
        hub.join_gates.append(self._gate)
        hub.resume_elsewhere = self._resume_elsewhere
        await self.broker.start(self.node, self._on_message)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._flusher()), loop.create_task(self._beat())]
        try:  # come up now if the broker is there; otherwise the beat loop keeps trying
            await asyncio.wait_for(self._up(), 3.0)
        except (BrokerDown, TimeoutError) as exc:
            log.warning("node %s: broker not reachable at start (%s); serving locally", self.node, exc)

    async def stop(self) -> None:
        if self.ready:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.broker.run(self._take_batch()), 2.0)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.broker.stop(), 3.0)
        self.ready = False
        hub = self.hub
        hub.__dict__.pop("send", None)
        with contextlib.suppress(ValueError):
            hub.observers.remove(self)
        with contextlib.suppress(ValueError):
            hub.join_gates.remove(self._gate)
        hub.resume_elsewhere = None

    def _install_send(self) -> None:
        """Replace ``hub.send`` (the hub calls ``self.send`` everywhere) with the cluster-aware one."""
        local_send = self._prev_send = self.hub.send
        node = self.node
        mirror = self.mirror
        forward = self._forward
        cluster = self

        def send(session: Session, out: Outgoing) -> None:
            if session.node is not node:
                forward(session, out)
                return
            local_send(session, out)
            if cluster.ready:
                mirror.append((session, session.seq, out, cluster._did))
                if not cluster._kicked:
                    cluster._kick()

        self.hub.send = send  # type: ignore[method-assign]

    def _kick(self) -> None:
        self._kicked = True
        self._wake.set()

    # ============================================================ outbound path
    def _forward(self, session: Session, out: Outgoing) -> None:
        """Queue ``out`` for stub ``session``: one op per message per node, sids appended."""
        node = session.node
        assert node is not None
        q = self.outq.get(node)
        if q is None:
            q = self.outq[node] = []
        if q and self._last.get(node) is out:
            q[-1].append(session.id)
            op = q[-1]
        else:
            msg = out.msg
            room = msg.get("roomId")
            if type(room) is not str:
                room = ""
            minv = 0
            if msg.get("type") == "user-joined":
                minv = self.jv_user.get((room, msg.get("userId")), 0)
            self.dseq += 1
            q.append(["d", room, minv, out.json, f"{self.epoch}:{self.dseq}", session.id])
            self._last[node] = out
            op = q[-1]
            if not self.ready and len(q) > MAX_QUEUED:
                q.pop(0)
                self.stats["dropped"] += 1
        kept = self.retained.get(session.id)
        if kept is None:
            kept = self.retained[session.id] = deque(maxlen=self.settings.resume_buffer_messages)
        kept.append((time.monotonic(), op[4], op[1], op[2], op[3]))
        if not self._kicked:
            self._kick()

    def _forward_to(self, node: str, sids: list[str], room: str, minv: int, body: bytes,
                    did: str) -> None:
        """A delivery op for ``node``'s sessions ``sids``, queued after everything before it."""
        self.outq.setdefault(node, []).append(["d", room, minv, body, did, *sids])
        self._last.pop(node, None)
        self._kick()

    def _emit(self, nodes: set[str], op: list[Any]) -> None:
        """A control op to each of ``nodes``, ordered after what was queued before it."""
        for n in nodes:
            if n == self.node:
                continue
            self.outq.setdefault(n, []).append(op)
            self._last.pop(n, None)
        if nodes:
            self._kick()

    def _nodes_of(self, room: Room) -> set[str]:
        me = self.node
        return {m.session.node for m in room.members.values()  # type: ignore[misc]
                if m.session.node is not me}

    def _meta(self, s: Session) -> dict[str, Any]:
        return {"node": self.node, "user": s.user_id or "", "name": s.display_name or "",
                "fixed": "1" if s.user_fixed else "0",
                "claims": orjson.dumps(s.claims).decode() if s.claims is not None else "",
                "rooms": orjson.dumps(list(s.rooms)).decode(), "seq": s.seq}

    def _note_meta(self, s: Session) -> None:
        if s.node is self.node and not s.ended:
            self.cmds.append(("meta", s.id, self._meta(s), self.ttl_ms))
            self.meta_known.add(s.id)
            self._kick()

    def _take_batch(self) -> list[Op]:
        """Everything queued, in the order that keeps it correct: mirror, commands, publishes."""
        ops: list[Op] = []
        if self.mirror:
            grouped: dict[str, tuple[Session, list[bytes]]] = {}
            for session, seq, out, did in self.mirror:
                rec = grouped.get(session.id)
                if rec is None:
                    rec = grouped[session.id] = (session, [])
                rec[1].append(b"%d %s %s" % (seq, (did or "-").encode(), out.json))
            self.mirror.clear()
            for sid, (session, _) in grouped.items():
                if sid not in self.meta_known and not session.ended:
                    ops.append(("meta", sid, self._meta(session), self.ttl_ms))
                    self.meta_known.add(sid)
            ops.append(("mirror", [(sid, entries, session.seq)
                                   for sid, (session, entries) in grouped.items()],
                        self.settings.resume_buffer_messages, self.ttl_ms))
        if self.cmds:
            ops.extend(self.cmds)
            self.cmds.clear()
        if self.retry_sends:
            ops.extend(self.retry_sends)
            self.retry_sends = []
        if self.outq:
            for node, q in self.outq.items():
                if q:
                    # Numbered, so that a batch resent after a broker failure is
                    # recognised by its receiver if the first attempt got through.
                    self.batch_no += 1
                    q.insert(0, ["#", self.node, self.epoch, self.batch_no])
                    # Bodies as msgpack str, not bin: the broker's Lua (cmsgpack)
                    # unpacks a batch for a dead node to re-route it, and rejects bin.
                    ops.append(("send", node, msgpack.packb(q, use_bin_type=False), self.ttl_ms))
                    self.stats["published"] += 1
            self.outq.clear()
            self._last.clear()
        return ops

    async def _flusher(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            self._kicked = False
            if not self.ready:
                continue
            ops = self._take_batch()
            if not ops:
                continue
            try:
                emptied = await self.broker.run(ops)
                for room_id in emptied:
                    for callback in self.room_finished:
                        callback(room_id)
            except BrokerDown as exc:
                # Retried after the reconnect: commands are idempotent, and a publish
                # that got through before the failure is dropped by its receiver
                # (batch numbers). Mirrors are rewritten whole by the republish.
                self.cmds[:0] = [op for op in ops if op[0] not in ("send", "mirror")]
                self.retry_sends = [op for op in ops if op[0] == "send"] + self.retry_sends
                self._down(exc)
            except Exception:  # pragma: no cover
                log.exception("cluster flush failed")

    # ============================================================= inbound path
    def _on_message(self, payload: bytes) -> None:
        self.stats["received"] += 1
        ops = msgpack.unpackb(payload, raw=False)
        if ops and ops[0][0] == "#":
            _, origin, epoch, n = ops[0]
            prev = self.seen_batches.get(origin)
            if prev is not None and prev[0] == epoch and n <= prev[1]:
                self.stats["duplicate_batches"] += 1
                return
            self.seen_batches[origin] = (epoch, n)
        for op in ops:
            handler = self._ops.get(op[0])
            if handler is not None:
                handler(op)

    def _op_deliver(self, op: list[Any]) -> None:
        room, minv, body, did = op[1], op[2], op[3], op[4]
        if isinstance(body, str):
            body = body.encode()
        out = Outgoing.relayed(body)
        for sid in op[5:]:
            self.stats["deliveries"] += 1
            self._deliver(sid, room, minv, out, did)

    def _deliver(self, sid: str, room: str, minv: int, out: Outgoing, did: str | None) -> None:
        """Hand a forwarded message to local session ``sid`` (which numbers it)."""
        s = self.hub.sessions.get(sid)
        if s is None:
            queued = self.resuming.get(sid)
            if queued is not None:
                queued.append((room, minv, out, did))
                return
            moved = self.moved.get(sid)
            if moved is not None and did is not None:
                self._forward_to(moved[0], [sid], room, minv, out.json, did)
            return
        if room:
            if room not in s.rooms:
                waiting = self.pending.get((sid, room))
                if waiting is not None:
                    waiting.append((minv, out, did))
                return
            if minv:
                if self.jv.get((room, sid), 0) >= minv:
                    return  # joined after that member: room-info already named it
                named = self.named.get((sid, room))
                if named is not None and named.get(out.msg.get("userId")) == minv:
                    del named[out.msg["userId"]]
                    if not named:
                        del self.named[(sid, room)]
                    return  # room-info named it already (see member_joined)
        if did is not None and self.recent_dids:
            recent = self.recent_dids.get(sid)
            if recent is not None:
                if did in recent[1]:
                    return
                recent[1].add(did)
        self._did = did
        try:
            self.hub.send(s, out)
        finally:
            self._did = None

    def _op_join(self, op: list[Any]) -> None:
        _, room_id, uid, sid, node, name, version, replaced = op
        if replaced:
            self._give_up(room_id, uid, replaced)
        if sid in self.tomb:
            return
        room = self.hub.rooms.get(room_id)
        if room is None:
            if not self.pending_rooms.get(room_id):
                return
            room = self._new_room(room_id)
        self._put_stub(room, uid, sid, node, name, version)

    def _op_leave(self, op: list[Any]) -> None:
        _, room_id, uid, sid = op
        self.tomb[sid] = time.monotonic()
        room = self.hub.rooms.get(room_id)
        if room is None:
            return
        m = room.members.get(uid)
        if m is not None and m.session.id == sid and m.session.node is not self.node:
            del room.members[uid]
            self._unlink_stub(m.session, room_id)
            self._gc_room(room_id)

    def _op_move(self, op: list[Any]) -> None:
        _, room_id, uid, sid, node, name, version = op
        stub = self.stubs.get(sid)
        if stub is not None:
            stub.node = node
        room = self.hub.rooms.get(room_id)
        if room is not None and sid not in self.tomb:
            self._put_stub(room, uid, sid, node, name, version)

    # ----------------------------------------------------------- stubs, rooms
    def _stub(self, sid: str, node: str, uid: str) -> Session:
        stub = self.stubs.get(sid)
        if stub is None:
            stub = Session(sid, None, self.hub.clock())
            stub.end()  # a remote member's placeholder: never resumed or fed here
            stub.user_fixed = True
            self.stubs[sid] = stub
        stub.node = node
        stub.user_id = uid
        return stub

    def _put_stub(self, room: Room, uid: str, sid: str, node: str, name: str,
                  version: int) -> None:
        if node == self.node:
            return
        self.jv_user[(room.id, uid)] = version
        cur = room.members.get(uid)
        if cur is not None:
            if cur.session.id == sid:
                if cur.session.node is not self.node:
                    cur.session.node = node
                return
            if cur.session.node is self.node:
                return  # a local holder: the join op that replaces it says so first
            self._unlink_stub(cur.session, room.id)
        stub = self._stub(sid, node, uid)
        stub.rooms[room.id] = None
        room.members[uid] = Member(uid, name or uid, stub)

    def _unlink_stub(self, stub: Session, room_id: str) -> None:
        stub.rooms.pop(room_id, None)
        if not stub.rooms and self.stubs.get(stub.id) is stub:
            del self.stubs[stub.id]

    def _new_room(self, room_id: str, media: str | None = None) -> Room:
        """A room made here for members elsewhere; ``media``: its mode when a join knew it
        (rtchub.sfu's gate decides it cluster-wide before the claim)."""
        room = self.hub.rooms[room_id] = Room(room_id, self.hub.clock(),
                                              media or self.settings.media_mode)
        for obs in self.hub.observers:
            if obs is not self:
                obs.room_created(room)
        return room

    def _gc_room(self, room_id: str) -> None:
        """Forget a room once no local member (or pending join) is left in it."""
        room = self.hub.rooms.get(room_id)
        if room is None or self.pending_rooms.get(room_id):
            return
        me = self.node
        if any(m.session.node is me for m in room.members.values()):
            return
        del self.hub.rooms[room_id]
        for m in room.members.values():
            self._unlink_stub(m.session, room_id)
        for obs in self.hub.observers:
            if obs is not self:
                obs.room_closed(room)

    def _give_up(self, room_id: str, uid: str, sid: str) -> None:
        """Another node's join took the seat of our session ``sid`` (rejoin after a reconnect)."""
        s = self.hub.sessions.get(sid)
        room = self.hub.rooms.get(room_id)
        if s is None or room is None:
            return
        m = room.members.get(uid)
        if m is None or m.session is not s:
            return
        del room.members[uid]
        s.rooms.pop(room_id, None)
        self.jv.pop((room_id, sid), None)
        if not s.rooms:
            sink = s.sink
            self.hub.end(s, "rejoined")
            if sink is not None:
                sink.close(CloseCode.TAKEN_OVER, "rejoined on another connection")
        else:
            self._note_meta(s)
        asyncio.get_running_loop().call_soon(self._gc_room, room_id)

    def _drop_stub(self, stub: Session, reason: str) -> None:
        """A remote member is gone for good (its node died): tell our local members."""
        me = self.node
        uid = stub.user_id
        for room_id in list(stub.rooms):
            room = self.hub.rooms.get(room_id)
            m = room.members.get(uid) if room is not None and uid is not None else None
            if room is None or m is None or m.session is not stub:
                continue
            del room.members[uid]  # type: ignore[arg-type]
            left = Outgoing({"type": "user-left", "roomId": room_id, "userId": uid, "reason": reason})
            for other in room.members.values():
                if other.session.node is me:
                    self.hub.send(other.session, left)
            self.cmds.append(("release", room_id, uid, stub.id))
            self._gc_room(room_id)
        stub.rooms.clear()
        self.stubs.pop(stub.id, None)
        self.tomb[stub.id] = time.monotonic()
        self._kick()

    # ================================================================ observers
    def member_joined(self, room: Room, member: Member, rejoined: bool) -> None:
        s = member.session
        if s.node is not self.node:
            return
        key = (s.id, room.id)
        replaced_sid, replaced_node = self.replaced.pop(key, ("", ""))
        nodes = self._nodes_of(room)
        if replaced_sid:
            old = self.stubs.get(replaced_sid)
            if old is not None:
                self._unlink_stub(old, room.id)
            if replaced_node:
                nodes.add(replaced_node)
        mine = self.jv.get((room.id, s.id), 0)
        self._emit(nodes, ["j", room.id, member.user_id, s.id, self.node, member.display_name,
                           mine, replaced_sid])
        # Members that joined after us (larger version) but whose stub was already
        # here - from another local joiner's claim - were named by our room-info:
        # their user-joined, still on its way, must not name them twice.
        jv_user = self.jv_user
        early = {u: v for u in room.members if u != member.user_id
                 and (v := jv_user.get((room.id, u), 0)) > mine}
        if early:
            self.named[key] = early
        self._note_meta(s)
        waiting = self.pending.pop(key, None)
        if waiting is not None:
            self._unpend_room(room.id)
            for minv, out, did in waiting:
                self._deliver(s.id, room.id, minv, out, did)

    def member_left(self, room: Room, member: Member, reason: str) -> None:
        s = member.session
        if s.node is not self.node:
            return
        self._emit(self._nodes_of(room), ["l", room.id, member.user_id, s.id])
        self.cmds.append(("release", room.id, member.user_id, s.id))
        self.jv.pop((room.id, s.id), None)
        self.named.pop((s.id, room.id), None)
        self._note_meta(s)
        # After the hub finished removing the member (it may delete the room itself).
        asyncio.get_running_loop().call_soon(self._gc_room, room.id)

    def session_opened(self, session: Session) -> None:
        # In the directory from the start: a POST /send or an SSE resume may
        # reach another node before the session has said or received anything.
        if self.ready and session.node is self.node:
            self._note_meta(session)

    def session_detached(self, session: Session, reason: str) -> None:
        if session.node is self.node:
            for room_id in session.rooms:
                self.cmds.append(("conn", room_id, session.user_id, session.id, False))
            self._kick()

    def session_resumed(self, session: Session, replayed: int) -> None:
        if session.node is self.node:
            for room_id in session.rooms:
                self.cmds.append(("conn", room_id, session.user_id, session.id, True))
            self._note_meta(session)

    def session_ended(self, session: Session, reason: str) -> None:
        if session.node is self.node and (session.id in self.meta_known or session.seq):
            self.cmds.append(("drop", session.id))
            self.meta_known.discard(session.id)
            self._kick()

    # ================================================================ join gate
    def _gate(self, session: Session, req: JoinRequest, complete: Any) -> None:
        if not self.ready:
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
        try:
            limit = self.hub.room_cap(room_id, req.media or self.settings.media_mode)
            res = await self.broker.claim(room_id, uid, session.id, req.display_name or uid,
                                          limit, self.ttl_ms)
        except BrokerDown as exc:
            self._down(exc)
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
        room = self.hub.rooms.get(room_id)
        others = {u: e for u, e in res.members.items() if e["n"] != self.node}
        if room is None and (others or rep is not None and rep["n"] != self.node):
            room = self._new_room(room_id, req.media)
        if room is not None:
            for u, e in others.items():
                if e["s"] not in self.tomb:
                    self._put_stub(room, u, e["s"], e["n"], e["d"], int(e["v"]))
            if rep is not None and rep["n"] != self.node and uid not in room.members:
                # So that the hub takes the seat over as a rejoin, as it would locally.
                self._put_stub(room, uid, rep["s"], rep["n"], rep["d"], int(rep["v"]))
        complete(True)
        if key in self.pending:  # the join did not (yet) happen
            if session.ended or self.hub.join_gates[-1] is self._gate:
                await self._settle(session, req, key, rep)
            else:  # a later gate may still be deciding
                await asyncio.sleep(self.settings.join_hook_timeout + 1.0)
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
            await self.broker.unclaim(req.room_id, req.user_id, session.id, rep)
        self._gc_room(req.room_id)

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

    # ================================================================== resume
    def _resume_elsewhere(self, fresh: Session, old_id: str, last_seq: int, msg_id: Any) -> None:
        """Hub hook: ``resume`` of a session this node does not hold."""
        if not self.ready or old_id in self.resuming:
            raise ProtocolError(ErrorCode.SESSION_EXPIRED, "session is gone; join again", msg_id)
        self.resuming[old_id] = []
        asyncio.get_running_loop().create_task(self._resume_task(fresh, old_id, last_seq, msg_id))

    async def _resume_task(self, fresh: Session, old_id: str, last_seq: int, msg_id: Any) -> None:
        restored, refusal = await self._take(old_id, last_seq, Identity.of(fresh))
        if fresh.ended or fresh.sink is None:
            return  # the client went away meanwhile; the session waits in its grace period
        if refusal is not None:
            self.hub.error(fresh, refusal.error(msg_id))
            return
        if restored is None:
            self.hub.error(fresh, ProtocolError(ErrorCode.SESSION_EXPIRED,
                                                "session is gone; join again", msg_id))
            return
        msg: dict[str, Any] = {"type": "resume", "sessionId": old_id, "lastSeq": last_seq}
        if msg_id is not None:
            msg["id"] = msg_id
        self.hub.receive(fresh, msg)  # now local: the hub's own resume replays it

    async def take_over(self, sid: str, last_seq: int, identity: Identity | None = None
                        ) -> ResumeVerdict | None:
        """Make session ``sid``, held by another node (or only mirrored), a session of this node.

        The HTTP transports' resume on another node: an SSE ``Last-Event-ID`` or
        a poll reaching a node that does not hold the session. The same hand-over
        as a WebSocket ``resume`` (:meth:`_resume_task`), but there is no fresh
        session to replace: the caller attaches its transport with
        :meth:`Hub.resume` after :meth:`Hub.resume_decision`, as for a local
        session. Returns the holder's refusal (the session is not moved), else
        None: the session, if any node could give it, is now in ``hub.sessions``.
        """
        if sid in self.hub.sessions or not self.ready or sid in self.resuming:
            return None
        self.resuming[sid] = []
        return (await self._take(sid, last_seq, identity))[1]

    async def _take(self, old_id: str, last_seq: int, identity: Identity | None
                    ) -> tuple[Session | None, ResumeVerdict | None]:
        """Hand-over (or restore from the mirror) of ``old_id``; ``resuming[old_id]`` is set.

        The node holding the session asks its hub's :meth:`Hub.resume_decision`
        for ``identity`` first and refuses the hand-over when the identity may
        not have it: a foreign token must not even move the session (its
        transport would be closed with 4009). The refusal is returned.
        """
        restored: Session | None = None
        refusal: ResumeVerdict | None = None
        inbox: list[tuple[str, int, Outgoing, str | None]] = []
        mirrored: set[str] = set()
        try:
            owner = await self.broker.owner(old_id)
            if owner and owner != self.node:
                handed = False
                reqid = secrets.token_hex(6)
                fut = self.handovers[reqid] = asyncio.get_running_loop().create_future()
                uid = identity.user_id if identity is not None else ""
                try:
                    if await self.broker.request(
                            owner, msgpack.packb([["h", old_id, self.node, reqid, uid]])):
                        with contextlib.suppress(TimeoutError):
                            answer = await asyncio.wait_for(fut, HANDOVER_TIMEOUT)
                            handed = True
                            if answer:
                                refusal = ResumeVerdict(None, last_seq, answer[0], answer[1])
                finally:
                    self.handovers.pop(reqid, None)
                state = await self.broker.take(old_id) if refusal is None else None
                if state is not None:
                    restored, mirrored, nodes = await self._restore(old_id, state, last_seq)
                    inbox = [_inboxed(raw) for raw in state.inbox]
                    if not handed and nodes:
                        # The owner died: what it received but never mirrored is
                        # still kept by the nodes that sent it.
                        await self._ask_replay(old_id, nodes)
        except BrokerDown as exc:
            self._down(exc)
        except Exception:  # pragma: no cover
            log.exception("resume of %s failed", old_id)
        finally:
            queued = self.resuming.pop(old_id, [])
        if restored is not None:
            self._activate(restored, inbox + queued, mirrored)
        return restored, refusal

    async def _restore(self, sid: str, state: SessionState, last_seq: int
                       ) -> tuple[Session, set[str], set[str]]:
        """Rebuild session ``sid`` here from the broker's record and mirror, seats included.

        Returns the session (not yet in ``hub.sessions``), the delivery ids its
        mirror holds, and the nodes that may have sent it something.
        """
        hub = self.hub
        cfg = self.settings
        meta = state.meta
        now = hub.clock()
        s = Session(sid, None, now)
        s.node = self.node
        s.user_id = meta.get("user") or None
        s.user_fixed = meta.get("fixed") == "1"
        s.display_name = meta.get("name") or None
        s.claims = orjson.loads(meta["claims"]) if meta.get("claims") else None
        seq = int(meta.get("seq") or 0)
        mirrored: set[str] = set()
        for raw in state.entries:
            n, did, body = raw.split(b" ", 2)
            out = Outgoing(orjson.loads(body), body)
            s.buffer.append((int(n), body))
            s.buffer_bytes += len(body)
            seq = max(seq, int(n))
            if did != b"-":
                mirrored.add(did.decode())
            if out.msg.get("type") == "ack" and "id" in out.msg and not out.msg.get("duplicate"):
                s.remember_id(out.msg["id"])
        while s.buffer and (len(s.buffer) > cfg.resume_buffer_messages
                            or s.buffer_bytes > cfg.resume_buffer_bytes):
            s.buffer_bytes -= len(s.buffer.popleft()[1])
        # Messages the dead node delivered but had not mirrored yet: the client has them.
        s.seq = max(seq, last_seq)
        if cfg.rate_limited:
            s.bucket = TokenBucket(cfg.max_msg_rate, cfg.max_msg_burst, now)
        if cfg.max_joins_per_second > 0:
            s.join_bucket = TokenBucket(cfg.max_joins_per_second,
                                        max(1.0, cfg.max_joins_per_second), now)
        s.detached_at = now
        s.detach_reason = "disconnected"
        uid = s.user_id
        seats: list[tuple[str, int, dict[str, dict[str, Any]]]] = []
        if uid is not None:
            for room_id in orjson.loads(meta.get("rooms") or "[]"):
                res = await self.broker.move(room_id, uid, sid, self.ttl_ms)
                if res is not None:
                    seats.append((room_id, res[0], res[1]))
        # From here on no await: the session takes all its seats at once.
        senders: set[str] = set()
        old_stub = self.stubs.pop(sid, None)
        for room_id, version, members in seats:
            room = hub.rooms.get(room_id) or self._new_room(room_id)
            cur = room.members.get(uid)  # type: ignore[arg-type]
            if cur is not None and cur.session.node is self.node:
                continue  # a local holder already (should not happen: the seat was ours)
            for u, e in members.items():
                if u != uid:
                    senders.add(e["n"])
                if e["n"] != self.node and e["s"] not in self.tomb and u != uid:
                    self._put_stub(room, u, e["s"], e["n"], e["d"], int(e["v"]))
            room.members[uid] = Member(uid, s.display_name or uid, s)  # type: ignore[index]
            s.rooms[room_id] = None
            self.jv[(room_id, sid)] = version
            self._emit(self._nodes_of(room), ["m", room_id, uid, sid, self.node,
                                              s.display_name or uid, version])
        if old_stub is not None:
            for room_id in list(old_stub.rooms):
                room = hub.rooms.get(room_id)
                if room is not None and room_id not in s.rooms:
                    m = room.members.get(uid)  # type: ignore[arg-type]
                    if m is not None and m.session is old_stub:
                        del room.members[uid]  # type: ignore[arg-type]
                    self._gc_room(room_id)
        senders.discard(self.node)
        return s, mirrored, senders

    async def _ask_replay(self, sid: str, nodes: set[str]) -> None:
        """Ask ``nodes`` to resend what they kept for ``sid``; wait for all (or 1 s)."""
        reqid = secrets.token_hex(6)
        fut = asyncio.get_running_loop().create_future()
        rec = self.replays[reqid] = [fut, None, 0]
        try:
            asked = 0
            for node in nodes:
                asked += await self.broker.request(node, msgpack.packb([["r", sid, self.node, reqid]]))
            rec[1] = asked
            if asked and rec[2] < asked:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(fut, 1.0)
        finally:
            self.replays.pop(reqid, None)

    def _op_replay(self, op: list[Any]) -> None:
        _, sid, to_node, reqid = op
        for _t, did, room, minv, body in self.retained.get(sid, ()):
            self._forward_to(to_node, [sid], room, minv, body, did)
        self._emit({to_node}, ["R", reqid])

    def _op_replayed(self, op: list[Any]) -> None:
        rec = self.replays.get(op[1])
        if rec is None:
            return
        rec[2] += 1
        if rec[1] is not None and rec[2] >= rec[1] and not rec[0].done():
            rec[0].set_result(None)

    def _activate(self, s: Session, items: list[tuple[str, int, Outgoing, str | None]],
                  mirrored: set[str]) -> None:
        """The restored session joins the hub; what reached it meanwhile is delivered
        once each (by delivery id) and in each sender's order."""
        hub = self.hub
        sid = s.id
        hub.sessions[sid] = s
        for obs in hub.observers:
            if obs is not self:
                obs.session_opened(s)
        seen = set(mirrored)
        uniq: list[tuple[str, int, Outgoing, str | None]] = []
        for item in items:
            did = item[3]
            if did is not None:
                if did in seen:
                    continue
                seen.add(did)
            uniq.append(item)
        slots: dict[str, list[int]] = {}
        for i, item in enumerate(uniq):
            if item[3] is not None:
                slots.setdefault(item[3].partition(":")[0], []).append(i)
        for positions in slots.values():
            ordered = sorted((uniq[i] for i in positions),
                             key=lambda it: int((it[3] or ":0").partition(":")[2]))
            for i, item in zip(positions, ordered, strict=True):
                uniq[i] = item
        for room_id, minv, out, did in uniq:
            self._deliver(sid, room_id, minv, out, did)
        self.recent_dids[sid] = (time.monotonic(), seen)
        for room_id in s.rooms:  # the seat is connected again once the client attaches
            self.cmds.append(("conn", room_id, s.user_id, sid, False))
        self._note_meta(s)
    def _op_handover(self, op: list[Any]) -> None:
        """Another node resumes our session ``sid``: let go of it, keep nothing."""
        _, sid, to_node, reqid = op[:4]
        hub = self.hub
        s = hub.sessions.get(sid)
        if s is not None:
            uid = op[4] if len(op) > 4 else ""
            verdict = hub.resume_decision(sid, s.seq, Identity(uid, {}) if uid else None)
            if verdict.code in (ErrorCode.FORBIDDEN, ErrorCode.UNAUTHORIZED):
                self._emit({to_node}, ["H", reqid, verdict.code, verdict.message])
                return
            sink = s.end()
            if sink is not None:
                if sink.session is s:
                    sink.session = None
                sink.close(CloseCode.TAKEN_OVER, "session resumed on another node")
            del hub.sessions[sid]
            stub = self._stub(sid, to_node, s.user_id or "")
            for room_id in list(s.rooms):
                room = hub.rooms.get(room_id)
                m = room.members.get(s.user_id) if room is not None and s.user_id else None
                if m is not None and m.session is s:
                    m.session = stub
                    stub.rooms[room_id] = None
                self.jv.pop((room_id, sid), None)
                asyncio.get_running_loop().call_soon(self._gc_room, room_id)
            if not stub.rooms:
                self.stubs.pop(sid, None)
            s.rooms.clear()
            self.meta_known.discard(sid)
            self.moved[sid] = (to_node, time.monotonic())
            for obs in hub.observers:
                if obs is not self:
                    obs.session_ended(s, "moved")
        # Queued after this session's mirror entries: the new node reads a complete mirror.
        self._emit({to_node}, ["H", reqid])

    def _op_handed(self, op: list[Any]) -> None:
        fut = self.handovers.get(op[1])
        if fut is not None and not fut.done():
            fut.set_result(op[2:])  # [] when handed over, [code, message] when refused

    # ================================================= HTTP upstream forwarding
    async def forward_receive(self, sid: str, msgs: list[Any], user_id: str | None = None
                              ) -> int | None:
        """``POST /send`` for a session another node holds: that node receives ``msgs``.

        The owning node (the session record in the directory) hands them to its
        session in order and answers with how many it accepted; the caller
        answers its HTTP request only then, so a client that waits for each
        ``202`` keeps its order whichever nodes its requests reach. None when no
        live node holds ``sid`` (the caller says ``session-expired``);
        :data:`FORBIDDEN` when ``user_id`` (what the request's token proved, with
        auth on) may not act for the session (:meth:`Hub.identity_refusal`).
        """
        accepted = await self._ask_owner("s", sid, orjson.dumps(msgs), user_id or "")
        return accepted if accepted is not None and accepted not in (-1,) else None

    async def forward_close(self, sid: str, user_id: str | None = None) -> int | None:
        """``POST /close`` for a session another node holds: that node ends it.

        1 when closed; None when no live node holds ``sid`` (the caller says
        ``session-expired``); :data:`FORBIDDEN` as for :meth:`forward_receive`.
        """
        closed = await self._ask_owner("c", sid, user_id or "")
        return closed if closed is not None and closed not in (-1, 0) else None

    async def _ask_owner(self, kind: str, sid: str, *args: Any) -> int | None:
        """Op ``[kind, sid, this node, request id, *args]`` to the node holding ``sid``.

        Returns its answer (an ``S``/``C`` op), or None when no live node holds
        ``sid``, the broker is down, or no answer came within HANDOVER_TIMEOUT.
        """
        if not self.ready:
            return None
        try:
            owner = await self.broker.owner(sid)
        except BrokerDown as exc:
            self._down(exc)
            return None
        if not owner or owner == self.node:
            return None
        return await self._ask(owner, kind, sid, *args)

    async def _ask(self, node: str, kind: str, key: str, *args: Any) -> int | None:
        """Op ``[kind, key, this node, request id, *args]`` to ``node``; its numeric
        answer (an op ``[answer kind, request id, n]``, see :meth:`_op_received`),
        or None when the node is gone, the broker is down or no answer came
        within HANDOVER_TIMEOUT."""
        reqid = secrets.token_hex(6)
        fut = self.forwards[reqid] = asyncio.get_running_loop().create_future()
        try:
            if not await self.broker.request(node, msgpack.packb([[kind, key, self.node, reqid, *args]])):
                return None  # its node is dead: the client resumes its stream elsewhere
            return await asyncio.wait_for(fut, HANDOVER_TIMEOUT)
        except TimeoutError:
            return None
        except BrokerDown as exc:
            self._down(exc)
            return None
        finally:
            self.forwards.pop(reqid, None)

    def _owned(self, op: list[Any], answer: str) -> Session | None:
        """The live local session an ``_ask_owner`` op is for; else None, once the
        op went on to the session's new node or ``answer`` -1 went back."""
        sid, from_node, reqid = op[1], op[2], op[3]
        s = self.hub.sessions.get(sid)
        if s is not None and not s.ended:
            return s
        moved = self.moved.get(sid)
        if moved is not None and moved[0] != from_node:
            self._emit({moved[0]}, op)  # handed over meanwhile: its new node answers
        else:
            self._emit({from_node}, [answer, reqid, -1])
        return None

    def _refused(self, s: Session, op: list[Any], answer: str, uid: Any) -> bool:
        """The requester's proven identity (``uid``, "" for none) may not act for ``s``:
        answer :data:`FORBIDDEN` (the one identity rule of the hub decides)."""
        identity = Identity(uid, {}) if uid else None
        if self.hub.identity_refusal(s, identity) is None:
            return False
        self._emit({op[2]}, [answer, op[3], FORBIDDEN])
        return True

    def _op_close(self, op: list[Any]) -> None:
        s = self._owned(op, "C")
        if s is not None:
            if self._refused(s, op, "C", op[4] if len(op) > 4 else ""):
                return
            self.close_session(s)
            self._emit({op[2]}, ["C", op[3], 1])

    def _receive_batch(self, session: Session, msgs: list[Any]) -> int:
        accepted = 0
        for msg in msgs:
            if session.ended:
                break
            self.hub.receive(session, msg)
            accepted += 1
        return accepted

    def _op_receive(self, op: list[Any]) -> None:
        s = self._owned(op, "S")
        if s is None:
            return
        if self._refused(s, op, "S", op[5] if len(op) > 5 else ""):
            return
        body = op[4]
        if isinstance(body, str):
            body = body.encode()
        accepted = self.receive_batch(s, orjson.loads(body))
        # Queued after what those messages sent to ``from_node``'s sessions.
        self._emit({op[2]}, ["S", op[3], accepted])

    def _op_received(self, op: list[Any]) -> None:
        fut = self.forwards.get(op[1])
        if fut is not None and not fut.done():
            fut.set_result(int(op[2]))

    # ======================================================= server API, cluster-wide
    async def publish(self, room_id: str, msg: dict[str, Any], to: str | None = None) -> int:
        """``POST /api/publish`` on any node: every member of the room, wherever it is.

        The room's seats come from the shared directory, so a node with no
        member in the room publishes too. Each remote member's own node numbers
        the message (the ``d`` op a relay uses), so resume and dedup work as for
        any message. Without the broker: the members this node knows.
        """
        if not self.ready:
            return self.hub.publish(room_id, msg, to)
        try:
            seats = await self.broker.directory(room_id)
        except BrokerDown as exc:
            self._down(exc)
            return self.hub.publish(room_id, msg, to)
        if to is not None:
            seats = {to: seats[to]} if to in seats else {}
        if not seats:
            return 0
        out = Outgoing({k: v for k, v in msg.items() if k != "seq"})
        delivered = 0
        by_node: dict[str, list[str]] = {}
        for seat in seats.values():
            if seat.get("n") == self.node:
                s = self.hub.sessions.get(seat.get("s", ""))
                if s is not None and not s.ended and room_id in s.rooms:
                    self.hub.send(s, out)
                    delivered += 1
            else:
                by_node.setdefault(seat.get("n", ""), []).append(seat.get("s", ""))
        for node, sids in by_node.items():
            self.dseq += 1
            self._forward_to(node, sids, room_id, 0, out.json, f"{self.epoch}:{self.dseq}")
            delivered += len(sids)
        return delivered

    async def disconnect_user(self, user_id: str, reason: str, room_id: str | None) -> int:
        """``POST /api/disconnect`` on any node: the user's sessions on every live node.

        Each other node is asked to kick and answers with its count (``k`` /
        ``K``); a node that does not answer within ``HANDOVER_TIMEOUT`` counts 0.
        """
        n = self.hub.disconnect_user(user_id, reason, room_id)
        if not self.ready:
            return n
        try:
            others = await self.broker.nodes() - {self.node}
        except BrokerDown as exc:
            self._down(exc)
            return n
        answers = await asyncio.gather(*(self._ask(node, "k", user_id, reason, room_id or "")
                                         for node in sorted(others)))
        return n + sum(a for a in answers if a is not None and a > 0)

    def _op_kick(self, op: list[Any]) -> None:
        _, user_id, from_node, reqid, reason, room_id = op
        n = self.hub.disconnect_user(user_id, reason, room_id or None)
        self._emit({from_node}, ["K", reqid, n])

    # ====================================================== liveness, recovery
    def _down(self, exc: BaseException) -> None:
        if self.ready:
            log.warning("node %s: broker unreachable (%s); serving local traffic only", self.node, exc)
        self.ready = False
        self.mirror.clear()  # the whole buffers are republished on reconnect

    async def _beat(self) -> None:
        while True:
            try:
                if not self.ready:
                    await self._up()
                else:
                    if not await self.broker.heartbeat(self.settings.node_ttl):
                        log.warning("node %s: broker lost our state; republishing", self.node)
                        self.ready = False
                        await self._up(had_state=False)
                    await self._sweep()
                    self._beats += 1
                    if self._beats % max(1, int(self.settings.node_ttl / self.interval)) == 0:
                        self._touch()
            except BrokerDown as exc:
                self._down(exc)
            except asyncio.CancelledError:
                raise
            except Exception:  # pragma: no cover - the beat must go on
                log.exception("cluster heartbeat failed")
            await asyncio.sleep(self.interval)

    async def _up(self, had_state: bool | None = None) -> None:
        """(Re)connect: subscribe, republish our state, drain our inboxes, then serve."""
        async with self._up_lock:
            if self.ready:
                return
            if not await self.broker.subscribed(self.interval * 2):
                raise BrokerDown("node channel not subscribed yet")
            had = await self.broker.heartbeat(self.settings.node_ttl)
            if had_state is not None:
                had = had_state
            await self.broker.run(self._republish(full=not had))
            self.ready = True
            sids = [sid for sid, s in self.hub.sessions.items() if s.node is self.node]
            for sid, box in (await self.broker.drain(sids)).items():
                for room_id, minv, out, did in map(_inboxed, box):
                    self._deliver(sid, room_id, minv, out, did)
            log.info("node %s: cluster ready (%d sessions republished)", self.node, len(sids))
            self._kick()

    def _republish(self, full: bool) -> list[Op]:
        """What this node holds, written again (after a reconnect, or Redis losing its data)."""
        ttl = self.ttl_ms
        me = self.node
        ops: list[Op] = []
        self.mirror.clear()
        for s in self.hub.sessions.values():
            if s.node is not me or (not s.seq and not s.rooms):
                continue
            ops.append(("meta", s.id, self._meta(s), ttl))
            ops.append(("buffer", s.id, [b"%d - %s" % (n, body) for n, body in s.buffer], ttl))
            self.meta_known.add(s.id)
        if full:
            ops.insert(0, ("version", max(self.jv.values(), default=0)))
            for room in self.hub.rooms.values():
                for uid, m in room.members.items():
                    s = m.session
                    if s.node is me:
                        ops.append(("member", room.id, uid,
                                    {"s": s.id, "n": me, "d": m.display_name,
                                     "c": 1 if s.sink is not None else 0,
                                     "v": self.jv.get((room.id, s.id), 0)}, ttl))
        return ops

    def _touch(self) -> None:
        me = self.node
        sids = [sid for sid, s in self.hub.sessions.items() if s.node is me and sid in self.meta_known]
        rooms = [rid for rid, r in self.hub.rooms.items()
                 if any(m.session.node is me for m in r.members.values())]
        if sids or rooms:
            self.cmds.append(("touch", sids, rooms, self.ttl_ms))
            self._kick()

    async def _sweep(self) -> None:
        """Remove members of dead nodes once their sessions' grace period is over."""
        now = time.monotonic()
        for store in (self.tomb, ):
            for k in [k for k, t in store.items() if now - t > 60]:
                del store[k]
        for k in [k for k, (_, t) in self.moved.items() if now - t > self.ttl_ms / 1000]:
            del self.moved[k]
        for k in [k for k, (t, _) in self.recent_dids.items() if now - t > self.retain_for]:
            del self.recent_dids[k]
        horizon = now - self.retain_for
        for k in list(self.retained):
            kept = self.retained[k]
            while kept and kept[0][0] < horizon:
                kept.popleft()
            if not kept:
                del self.retained[k]
        nodes = {s.node for s in self.stubs.values() if s.node is not None}
        if not nodes:
            self.dead_since.clear()
            return
        alive = await self.broker.alive(nodes)
        for n in nodes:
            if n in alive:
                self.dead_since.pop(n, None)
            elif n not in self.dead_since:
                log.warning("node %s: node %s stopped heartbeating", self.node, n)
                self.dead_since[n] = now
        for n in [n for n in self.dead_since if n not in nodes]:
            del self.dead_since[n]
        grace = self.settings.grace_period
        for stub in list(self.stubs.values()):
            since = self.dead_since.get(stub.node or "")
            if since is not None and now - since >= grace:
                self._drop_stub(stub, "disconnected")


def attach_cluster(app: RtcHub) -> Cluster | None:
    """Make ``app`` a node of the cluster named by ``--broker`` (nothing for ``memory``)."""
    url = app.settings.broker
    if not url or url == "memory":
        return None
    cluster = Cluster(app.hub, make_broker(url))
    app.services.append(cluster)
    app.ready_checks.append(("broker", lambda: cluster.ready))
    return cluster


def _inboxed(raw: bytes) -> tuple[str, int, Outgoing, str | None]:
    """An inbox entry (parked by the broker while no node held the session)."""
    room_id, minv, body, did = msgpack.unpackb(raw, raw=False)
    if isinstance(body, str):
        body = body.encode()
    return room_id, minv, Outgoing(orjson.loads(body), body), did
