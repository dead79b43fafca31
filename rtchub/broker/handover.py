"""Hand-over between nodes: a session resumed on a node that does not hold it.

*Seq stays with the session's node.* A forwarded message is numbered by the
node that holds the session, which mirrors every numbered message to the
broker, so a resume on another node - even after the first node died -
replays from the mirror. A resume for a session this node does not have asks
its owner to let go (:class:`~rtchub.broker.ops.HandOver`; the owner's hub
:meth:`releases <rtchub.core.hub.Hub.release>` it), takes the session record
from the broker (or only the mirror when the owner is dead), has the hub
:meth:`adopt <rtchub.core.hub.Hub.adopt>` it with its seats, and then lets
the hub's own ``resume`` run. The HTTP transports use the same take-over
(:meth:`Handover.take_over`: an SSE ``Last-Event-ID`` or a poll on another
node).

When the owner died, what it received but never mirrored is still kept by
the nodes that sent it (rtchub.broker.outbound ``retained``):
:class:`~rtchub.broker.ops.Replay` asks them to resend it, and delivery ids
make each message arrive once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from typing import TYPE_CHECKING, Any

import orjson

from rtchub.broker.base import BrokerDown, SessionState
from rtchub.broker.ops import HandedOver, HandOver, Moved, Replay, Replayed, decode_inbox, encode_batch
from rtchub.core.outgoing import Outgoing
from rtchub.core.resume import Identity, ResumeVerdict
from rtchub.core.session import Session
from rtchub.protocol.errors import ErrorCode, ProtocolError

if TYPE_CHECKING:
    from rtchub.broker.cluster import Cluster

log = logging.getLogger("rtchub.cluster")

#: How long a resume waits for the old node to hand a session over.
HANDOVER_TIMEOUT = 2.0

Item = tuple[str, int, Outgoing, str | None]  # (room, minv, message, delivery id)


class Handover:
    def __init__(self, cluster: Cluster) -> None:
        self.c = cluster
        self.hub = cluster.hub
        self.node = cluster.node
        self.out = cluster.out
        #: Sessions being taken over here -> deliveries that arrived meanwhile.
        self.resuming: dict[str, list[Item]] = {}
        self.handovers: dict[str, asyncio.Future[HandedOver]] = {}
        self.moved: dict[str, tuple[str, float]] = {}   # sids handed over -> (node, when)
        self.replays: dict[str, list[Any]] = {}
        #: Restored sessions -> (when, delivery ids seen): late resends are dropped.
        self.recent_dids: dict[str, tuple[float, set[str]]] = {}

    def expire(self, now: float) -> None:
        for k in [k for k, (_, t) in self.moved.items() if now - t > self.out.ttl_ms / 1000]:
            del self.moved[k]
        for k in [k for k, (t, _) in self.recent_dids.items() if now - t > self.out.retain_for]:
            del self.recent_dids[k]

    def seen(self, sid: str, did: str) -> bool:
        """Whether delivery ``did`` for a restored session already arrived (else remember it)."""
        recent = self.recent_dids.get(sid)
        if recent is None:
            return False
        if did in recent[1]:
            return True
        recent[1].add(did)
        return False

    # ------------------------------------------------------------- resume
    def resume_elsewhere(self, fresh: Session, old_id: str, last_seq: int, msg_id: Any) -> None:
        """Hub hook: ``resume`` of a session this node does not hold."""
        if not self.out.ready or old_id in self.resuming:
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

        There is no fresh session to replace: the caller attaches its transport
        with :meth:`Hub.resume` after :meth:`Hub.resume_decision`, as for a local
        session. Returns the holder's refusal (the session is not moved), else
        None: the session, if any node could give it, is now in ``hub.sessions``.
        """
        if sid in self.hub.sessions or not self.out.ready or sid in self.resuming:
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
        broker = self.c.broker
        restored: Session | None = None
        refusal: ResumeVerdict | None = None
        inbox: list[Item] = []
        mirrored: set[str] = set()
        try:
            owner = await broker.owner(old_id)
            if owner and owner != self.node:
                handed = False
                reqid = secrets.token_hex(6)
                fut = self.handovers[reqid] = asyncio.get_running_loop().create_future()
                uid = identity.user_id if identity is not None else ""
                try:
                    if await broker.request(
                            owner, encode_batch([HandOver(old_id, self.node, reqid, uid)])):
                        with contextlib.suppress(TimeoutError):
                            answer = await asyncio.wait_for(fut, HANDOVER_TIMEOUT)
                            handed = True
                            if answer.code:
                                refusal = ResumeVerdict(None, last_seq, answer.code, answer.message)
                finally:
                    self.handovers.pop(reqid, None)
                state = await broker.take(old_id) if refusal is None else None
                if state is not None:
                    restored, mirrored, nodes = await self._restore(old_id, state, last_seq)
                    for raw in state.inbox:
                        d = decode_inbox(raw, old_id)
                        inbox.append((d.room, d.minv, Outgoing.relayed(d.body), d.did))
                    if not handed and nodes:
                        # The owner died: what it received but never mirrored is
                        # still kept by the nodes that sent it.
                        await self._ask_replay(old_id, nodes)
        except BrokerDown as exc:
            self.c.down(exc)
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
        directory = self.c.directory
        meta = state.meta
        seq = int(meta.get("seq") or 0)
        mirrored: set[str] = set()
        buffer: list[tuple[int, bytes]] = []
        for raw in state.entries:
            n, did, body = raw.split(b" ", 2)
            buffer.append((int(n), body))
            seq = max(seq, int(n))
            if did != b"-":
                mirrored.add(did.decode())
        uid = meta.get("user") or None
        # Messages the dead node delivered but had not mirrored yet: the client has them.
        s = hub.adopt(sid, user_id=uid, user_fixed=meta.get("fixed") == "1",
                      display_name=meta.get("name") or None,
                      claims=orjson.loads(meta["claims"]) if meta.get("claims") else None,
                      seq=max(seq, last_seq), buffer=buffer)
        seats: list[tuple[str, int, dict[str, dict[str, Any]]]] = []
        if uid is not None:
            for room_id in orjson.loads(meta.get("rooms") or "[]"):
                res = await self.c.broker.move(room_id, uid, sid, self.out.ttl_ms)
                if res is not None:
                    seats.append((room_id, res[0], res[1]))
        # From here on no await: the session takes all its seats at once.
        senders: set[str] = set()
        old_stub = hub.remote.get(sid)
        old_rooms = list(old_stub.rooms) if old_stub is not None else []
        for room_id, version, members in seats:
            for u, e in members.items():
                if u != uid:
                    senders.add(e["n"])
                    if e["s"] not in directory.tomb:
                        directory.put_stub(room_id, u, e["s"], e["n"], e["d"], int(e["v"]), True)
            if not hub.seat_adopted(s, room_id):
                continue  # a local holder already (should not happen: the seat was ours)
            directory.jv[(room_id, sid)] = version
            room = hub.rooms[room_id]
            self.out.emit(directory.nodes_of(room), Moved(room_id, uid or "", sid, self.node,
                                                          s.display_name or uid or "", version))
        for room_id in old_rooms:
            if room_id not in s.rooms:
                hub.unseat_remote(room_id, uid or "", sid)
                directory.gc_room(room_id)
        senders.discard(self.node)
        return s, mirrored, senders

    def _activate(self, s: Session, items: list[Item], mirrored: set[str]) -> None:
        """The restored session joins the hub; what reached it meanwhile is delivered
        once each (by delivery id) and in each sender's order."""
        sid = s.id
        self.hub.open_adopted(s)
        seen = set(mirrored)
        uniq: list[Item] = []
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
            self.c.deliver(sid, room_id, minv, out, did)
        self.recent_dids[sid] = (time.monotonic(), seen)
        for room_id in s.rooms:  # the seat is connected again once the client attaches
            self.out.cmds.append(("conn", room_id, s.user_id, sid, False))
        self.out.note_meta(s)

    # ------------------------------------------------------ the old owner
    def on_handover(self, op: HandOver) -> None:
        """Another node resumes our session ``sid``: let go of it, keep nothing -
        unless the identity the resume proved may not have it (then nothing moves)."""
        s = self.hub.sessions.get(op.sid)
        if s is not None:
            verdict = self.hub.resume_decision(op.sid, s.seq,
                                               Identity(op.uid, {}) if op.uid else None)
            if verdict.code in (ErrorCode.FORBIDDEN, ErrorCode.UNAUTHORIZED):
                self.out.emit({op.to_node}, HandedOver(op.reqid, verdict.code, verdict.message))
                return
        rooms = self.hub.release(op.sid, op.to_node)
        if rooms is not None:
            for room_id in rooms:
                self.c.directory.jv.pop((room_id, op.sid), None)
                self.c.directory.gc_later(room_id)
            self.out.meta_known.discard(op.sid)
            self.moved[op.sid] = (op.to_node, time.monotonic())
        # Queued after this session's mirror entries: the new node reads a complete mirror.
        self.out.emit({op.to_node}, HandedOver(op.reqid))

    def on_handed(self, op: HandedOver) -> None:
        fut = self.handovers.get(op.reqid)
        if fut is not None and not fut.done():
            fut.set_result(op)

    # -------------------------------------------------------------- replay
    async def _ask_replay(self, sid: str, nodes: set[str]) -> None:
        """Ask ``nodes`` to resend what they kept for ``sid``; wait for all (or 1 s)."""
        reqid = secrets.token_hex(6)
        fut = asyncio.get_running_loop().create_future()
        rec = self.replays[reqid] = [fut, None, 0]
        try:
            asked = 0
            for node in nodes:
                asked += await self.c.broker.request(
                    node, encode_batch([Replay(sid, self.node, reqid)]))
            rec[1] = asked
            if asked and rec[2] < asked:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(fut, 1.0)
        finally:
            self.replays.pop(reqid, None)

    def on_replay(self, op: Replay) -> None:
        for _t, d in self.out.retained.get(op.sid, ()):
            self.out.forward_to(op.to_node, [op.sid], d.room, d.minv, d.body, d.did)
        self.out.emit({op.to_node}, Replayed(op.reqid))

    def on_replayed(self, op: Replayed) -> None:
        rec = self.replays.get(op.reqid)
        if rec is None:
            return
        rec[2] += 1
        if rec[1] is not None and rec[2] >= rec[1] and not rec[0].done():
            rec[0].set_result(None)
