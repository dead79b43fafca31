"""One node of a cluster: the parts that make a :class:`~rtchub.core.hub.Hub` share a broker.

How many nodes act as one (docs/scaling.md has the operator's view,
docs/architecture.md the seam with the hub):

*The hub owns the state.* Remote members are stub sessions the hub keeps in
``hub.remote`` and seats in its rooms, so routing stays exactly as on one
node; every change (a remote member joins, leaves, moves; a session is
released to or adopted from another node) is a hub method. The cluster
decides when, from the broker's answers and other nodes' ops.

*Delivery through a router.* :meth:`Hub.use_router` makes ``hub.send`` the
cluster router's ``route`` (rtchub.broker.outbound): a stub's message goes to
the stub's node, a local one is delivered and mirrored. Deliveries for
another node are queued per node and flushed once per event-loop turn as one
publish on that node's own channel. A node that has no member in a room
never hears of it.

*The parts*, one concern each:

- :mod:`rtchub.broker.ops`: the typed node-to-node ops and their wire codec;
- :mod:`rtchub.broker.outbound`: the router, batching, mirror, the flusher;
- :mod:`rtchub.broker.directory`: join claims, remote members, dead nodes;
- :mod:`rtchub.broker.handover`: resume of a session another node held;
- :mod:`rtchub.broker.requests`: ``POST /send`` / ``/close`` / server API across nodes;
- this module: lifecycle, the inbound dispatch table, liveness and recovery.

*Failure.* Each node refreshes a heartbeat key (TTL ``node_ttl``). A node
whose key is gone is dead: its stubs stay for ``grace_period`` and are then
removed with ``user-left`` reason ``disconnected``. Bound: ``node_ttl +
grace_period + sweep interval`` after the crash. When the broker is
unreachable the node keeps serving local traffic, refuses joins and resumes
that need the directory, queues what it must tell other nodes, reports
not-ready, and on its own reconnects, resubscribes, republishes its state and
drains the inboxes of its sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from rtchub.broker import ops
from rtchub.broker.base import Broker, BrokerDown, Op
from rtchub.broker.directory import Directory
from rtchub.broker.handover import Handover
from rtchub.broker.outbound import Outbound
from rtchub.broker.requests import CloseSession, ReceiveBatch, Requests
from rtchub.core.hub import Hub, HubObserver
from rtchub.core.outgoing import Outgoing
from rtchub.core.room import Member, Room
from rtchub.core.session import Session

log = logging.getLogger("rtchub.cluster")


class ClusterRouter:
    """What :meth:`Hub.use_router` installs: plain attributes, so ``hub.send`` is
    :meth:`Outbound.route` itself, without a call in between."""

    def __init__(self, route: Callable[[Session, Outgoing], None],
                 resume_elsewhere: Callable[[Session, str, int, Any], None]) -> None:
        self.route = route
        self.resume_elsewhere = resume_elsewhere


class Cluster(HubObserver):
    """Makes ``hub`` one node of a cluster sharing ``broker``. A service of the app.

    ``receive_batch`` / ``close_session``: how this node's transports take a
    ``POST /send`` body and a ``POST /close`` forwarded from another node
    (the app passes the HTTP transports' own; the defaults are the hub's).
    """

    def __init__(self, hub: Hub, broker: Broker, *, receive_batch: ReceiveBatch | None = None,
                 close_session: CloseSession | None = None) -> None:
        self.hub = hub
        self.broker = broker
        self.node = hub.node_id
        self.settings = s = hub.settings
        #: Seconds between heartbeats and dead-node sweeps.
        self.interval = max(0.1, min(1.0, s.node_ttl / 3))
        #: What went over the broker: ``received`` payloads and ``deliveries``
        #: (session ids) on our channel, ``published`` payloads. Tests read it.
        self.stats: Counter[str] = Counter()
        self.directory: Directory
        self.out = Outbound(hub, broker, self.stats, lambda room, uid: self.directory.minv_of(room, uid))
        self.directory = Directory(self)
        self.handover = Handover(self)
        self.requests = Requests(self, receive_batch or hub.receive_all,
                                 close_session or (lambda sess: hub.detach(sess, clean=True)))
        self.router = ClusterRouter(self.out.route, self.handover.resume_elsewhere)
        self.out.on_down = self.down
        self.out.on_emptied = self._emptied
        self.room_finished: list[Callable[[str], None]] = []
        #: ``callback(room, member, reason)`` when a member of a dead node is dropped
        #: here (observers never see remote members): the SFU forgets its tracks.
        self.remote_gone: list[Callable[[Room, Member, str], None]] = []
        self.seen_batches: dict[str, tuple[str, int]] = {}
        d, h, r = self.directory, self.handover, self.requests
        self._dispatch: ops.Handlers = {
            ops.Deliver: self._on_deliver, ops.Joined: d.on_joined, ops.Left: d.on_left,
            ops.Moved: d.on_moved, ops.HandOver: h.on_handover, ops.HandedOver: h.on_handed,
            ops.Replay: h.on_replay, ops.Replayed: h.on_replayed, ops.Receive: r.on_receive,
            ops.Close: r.on_close, ops.Kick: r.on_kick, ops.Answer: r.on_answer,
        }
        self._up_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._beats = 0
        # The operations the app and the transports call.
        self.take_over = self.handover.take_over
        self.forward_receive = self.requests.forward_receive
        self.forward_close = self.requests.forward_close
        self.publish = self.requests.publish
        self.disconnect_user = self.requests.disconnect_user
        self.first_join = self.directory.first_join

    @property
    def ready(self) -> bool:
        """True while the broker answers, our channel is subscribed and our state is published."""
        return self.out.ready

    def watch_rooms(self, finished: Callable[[str], None]) -> None:
        """Report cluster-wide room lifecycle (webhooks): :meth:`first_join` says which
        join started a room, ``finished(room)`` when a release removed its last seat."""
        self.directory.track_first = True
        self.room_finished.append(finished)

    def _emptied(self, rooms: list[str]) -> None:
        for room_id in rooms:
            for callback in self.room_finished:
                callback(room_id)

    # ================================================================ lifecycle
    async def start(self) -> None:
        hub = self.hub
        hub.use_router(self.router)
        hub.add_observer(self)
        hub.add_join_gate(self.directory.gate)
        await self.broker.start(self.node, self._on_message)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self.out.flusher()), loop.create_task(self._beat())]
        try:  # come up now if the broker is there; otherwise the beat loop keeps trying
            await asyncio.wait_for(self._up(), 3.0)
        except (BrokerDown, TimeoutError) as exc:
            log.warning("node %s: broker not reachable at start (%s); serving locally", self.node, exc)

    async def stop(self) -> None:
        if self.ready:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.broker.run(self.out.take_batch()), 2.0)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.broker.stop(), 3.0)
        self.out.ready = False
        hub = self.hub
        hub.use_router(None)
        hub.remove_observer(self)
        hub.remove_join_gate(self.directory.gate)

    # ============================================================= inbound path
    def _on_message(self, payload: bytes) -> None:
        self.stats["received"] += 1
        batch = ops.decode_batch(payload)
        if batch and type(batch[0]) is ops.BatchHeader:
            head: ops.BatchHeader = batch[0]  # type: ignore[assignment]
            prev = self.seen_batches.get(head.origin)
            if prev is not None and prev[0] == head.epoch and head.n <= prev[1]:
                self.stats["duplicate_batches"] += 1
                return
            self.seen_batches[head.origin] = (head.epoch, head.n)
        dispatch = self._dispatch
        for op in batch:
            handler = dispatch.get(type(op))
            if handler is not None:
                handler(op)

    def _on_deliver(self, op: ops.Deliver) -> None:
        out = Outgoing.relayed(op.body)
        self.stats["deliveries"] += len(op.sids)
        room, minv, did, deliver = op.room, op.minv, op.did, self.deliver
        for sid in op.sids:
            deliver(sid, room, minv, out, did)

    def deliver(self, sid: str, room: str, minv: int, out: Outgoing, did: str | None) -> None:
        """Hand a forwarded message to local session ``sid`` (which numbers it)."""
        s = self.hub.sessions.get(sid)
        if s is None:
            queued = self.handover.resuming.get(sid)
            if queued is not None:
                queued.append((room, minv, out, did))
                return
            moved = self.handover.moved.get(sid)
            if moved is not None and did is not None:
                self.out.forward_to(moved[0], [sid], room, minv, out.json, did)
            return
        if room and not self.directory.wanted(s, room, minv, out, did):
            return
        if did is not None and self.handover.recent_dids and self.handover.seen(sid, did):
            return
        self.out.did = did
        try:
            self.hub.send(s, out)
        finally:
            self.out.did = None

    # ================================================================ observers
    def member_joined(self, room: Room, member: Member, rejoined: bool) -> None:
        if member.session.node is self.node:
            self.directory.member_joined(room, member)

    def member_left(self, room: Room, member: Member, reason: str) -> None:
        if member.session.node is self.node:
            self.directory.member_left(room, member)

    def session_opened(self, session: Session) -> None:
        # In the directory from the start: a POST /send or an SSE resume may
        # reach another node before the session has said or received anything.
        if self.ready and session.node is self.node:
            self.out.note_meta(session)

    def session_detached(self, session: Session, reason: str) -> None:
        if session.node is self.node:
            for room_id in session.rooms:
                self.out.cmds.append(("conn", room_id, session.user_id, session.id, False))
            self.out.kick()

    def session_resumed(self, session: Session, replayed: int) -> None:
        if session.node is self.node:
            for room_id in session.rooms:
                self.out.cmds.append(("conn", room_id, session.user_id, session.id, True))
            self.out.note_meta(session)

    def session_ended(self, session: Session, reason: str) -> None:
        if reason == "moved":
            return  # released to another node, which owns its record now
        out = self.out
        if session.node is self.node and (session.id in out.meta_known or session.seq):
            out.command(("drop", session.id))
            out.meta_known.discard(session.id)

    # ====================================================== liveness, recovery
    def down(self, exc: BaseException) -> None:
        if self.ready:
            log.warning("node %s: broker unreachable (%s); serving local traffic only", self.node, exc)
        self.out.down()

    async def _beat(self) -> None:
        while True:
            try:
                if not self.ready:
                    await self._up()
                else:
                    if not await self.broker.heartbeat(self.settings.node_ttl):
                        log.warning("node %s: broker lost our state; republishing", self.node)
                        self.out.ready = False
                        await self._up(had_state=False)
                    now = time.monotonic()
                    self.handover.expire(now)
                    self.out.expire(now)
                    await self.directory.sweep(now)
                    self._beats += 1
                    if self._beats % max(1, int(self.settings.node_ttl / self.interval)) == 0:
                        self._touch()
            except BrokerDown as exc:
                self.down(exc)
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
            self.out.ready = True
            sids = [sid for sid, s in self.hub.sessions.items() if s.node is self.node]
            for sid, box in (await self.broker.drain(sids)).items():
                for raw in box:
                    d = ops.decode_inbox(raw, sid)
                    self.deliver(sid, d.room, d.minv, Outgoing.relayed(d.body), d.did)
            log.info("node %s: cluster ready (%d sessions republished)", self.node, len(sids))
            self.out.kick()

    def _republish(self, full: bool) -> list[Op]:
        """What this node holds, written again (after a reconnect, or Redis losing its data)."""
        out = self.out
        ttl = out.ttl_ms
        me = self.node
        result: list[Op] = []
        out.mirror.clear()
        for s in self.hub.sessions.values():
            if s.node is not me or (not s.seq and not s.rooms):
                continue
            result.append(("meta", s.id, out.meta(s), ttl))
            result.append(("buffer", s.id, [b"%d - %s" % (n, body) for n, body in s.buffered()], ttl))
            out.meta_known.add(s.id)
        if full:
            jv = self.directory.jv
            result.insert(0, ("version", max(jv.values(), default=0)))
            for room in self.hub.rooms.values():
                for uid, m in room.members.items():
                    s = m.session
                    if s.node is me:
                        result.append(("member", room.id, uid,
                                       {"s": s.id, "n": me, "d": m.display_name,
                                        "c": 1 if s.sink is not None else 0,
                                        "v": jv.get((room.id, s.id), 0)}, ttl))
        return result

    def _touch(self) -> None:
        me = self.node
        known = self.out.meta_known
        sids = [sid for sid, s in self.hub.sessions.items() if s.node is me and sid in known]
        rooms = [rid for rid, r in self.hub.rooms.items()
                 if any(m.session.node is me for m in r.members.values())]
        if sids or rooms:
            self.out.command(("touch", sids, rooms, self.out.ttl_ms))


def make_cluster(hub: Hub, broker_url: str, **parts: Any) -> Cluster | None:
    """The cluster node for ``--broker`` (None for ``memory``: one node, no cluster)."""
    if not broker_url or broker_url == "memory":
        return None
    from rtchub.broker.base import make_broker

    return Cluster(hub, make_broker(broker_url), **parts)
