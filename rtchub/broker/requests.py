"""Requests between nodes: ask another node to act, wait for its numeric answer.

The HTTP transports need no sticky sessions: a ``POST /send`` or ``POST
/close`` that reaches a node not holding the session is forwarded to the
session's node (:class:`~rtchub.broker.ops.Receive`,
:class:`~rtchub.broker.ops.Close`), which answers with an
:class:`~rtchub.broker.ops.Answer`; the caller answers its HTTP request only
then, so a client that waits for each ``202`` keeps its order whichever nodes
its requests reach. The server API acts on the whole cluster the same way
(``POST /api/disconnect``: :class:`~rtchub.broker.ops.Kick` to every live
node; ``POST /api/publish``: one delivery per node, from the directory).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from rtchub.broker.base import BrokerDown
from rtchub.broker.handover import HANDOVER_TIMEOUT
from rtchub.broker.ops import Answer, Close, Kick, Op, Receive, encode_batch
from rtchub.core.outgoing import Outgoing
from rtchub.core.resume import Identity
from rtchub.core.session import Session

if TYPE_CHECKING:
    from rtchub.broker.cluster import Cluster

#: How the owning node hands a forwarded ``POST /send`` body to its session
#: (messages in order; returns how many were accepted).
ReceiveBatch = Callable[[Session, list[Any]], int]
#: How a ``POST /close`` forwarded from another node ends a session.
CloseSession = Callable[[Session], None]
#: Answer to a forwarded request whose proven identity may not act for the session.
FORBIDDEN = -2


class Requests:
    def __init__(self, cluster: Cluster, receive_batch: ReceiveBatch,
                 close_session: CloseSession) -> None:
        self.c = cluster
        self.hub = cluster.hub
        self.node = cluster.node
        self.out = cluster.out
        self.receive_batch = receive_batch
        self.close_session = close_session
        #: Requests waiting for their answer: reqid -> future.
        self.waiting: dict[str, asyncio.Future[int]] = {}

    # -------------------------------------------------------------- asking
    async def forward_receive(self, sid: str, msgs: list[Any], user_id: str | None = None
                              ) -> int | None:
        """``POST /send`` for a session another node holds: that node receives ``msgs``.

        None when no live node holds ``sid`` (the caller says ``session-expired``);
        :data:`FORBIDDEN` when ``user_id`` (what the request's token proved, with
        auth on) may not act for the session (:meth:`Hub.identity_refusal`).
        """
        accepted = await self._ask_owner(sid, lambda reqid: Receive(
            sid, self.node, reqid, orjson.dumps(msgs), user_id or ""))
        return accepted if accepted is not None and accepted != -1 else None

    async def forward_close(self, sid: str, user_id: str | None = None) -> int | None:
        """``POST /close`` for a session another node holds: that node ends it.

        1 when closed; None when no live node holds ``sid`` (the caller says
        ``session-expired``); :data:`FORBIDDEN` as for :meth:`forward_receive`.
        """
        closed = await self._ask_owner(sid, lambda reqid: Close(sid, self.node, reqid,
                                                                user_id or ""))
        return closed if closed is not None and closed not in (-1, 0) else None

    async def _ask_owner(self, sid: str, make: Callable[[str], Op]) -> int | None:
        """``make(reqid)`` to the node holding ``sid``; its answer, or None when no live
        node holds ``sid``, the broker is down, or no answer came in time."""
        if not self.out.ready:
            return None
        try:
            owner = await self.c.broker.owner(sid)
        except BrokerDown as exc:
            self.c.down(exc)
            return None
        if not owner or owner == self.node:
            return None
        return await self.ask(owner, make)

    async def ask(self, node: str, make: Callable[[str], Op]) -> int | None:
        """``make(reqid)`` to ``node``; its :class:`Answer`, or None when the node is gone,
        the broker is down or no answer came within HANDOVER_TIMEOUT."""
        reqid = secrets.token_hex(6)
        fut = self.waiting[reqid] = asyncio.get_running_loop().create_future()
        try:
            if not await self.c.broker.request(node, encode_batch([make(reqid)])):
                return None  # its node is dead: the client resumes its stream elsewhere
            return await asyncio.wait_for(fut, HANDOVER_TIMEOUT)
        except TimeoutError:
            return None
        except BrokerDown as exc:
            self.c.down(exc)
            return None
        finally:
            self.waiting.pop(reqid, None)

    def on_answer(self, op: Answer) -> None:
        fut = self.waiting.get(op.reqid)
        if fut is not None and not fut.done():
            fut.set_result(int(op.n))

    # ----------------------------------------------------------- answering
    def _owned(self, op: Receive | Close) -> Session | None:
        """The live local session ``op`` is for; else None, once the op went on to the
        session's new node or -1 went back."""
        s = self.hub.sessions.get(op.sid)
        if s is not None and not s.ended:
            return s
        moved = self.c.handover.moved.get(op.sid)
        if moved is not None and moved[0] != op.from_node:
            self.out.emit({moved[0]}, op)  # handed over meanwhile: its new node answers
        else:
            self.out.emit({op.from_node}, Answer(op.reqid, -1))
        return None

    def _refused(self, s: Session, op: Receive | Close) -> bool:
        """The requester's proven identity may not act for ``s``: answer
        :data:`FORBIDDEN` (the hub's one identity rule decides)."""
        identity = Identity(op.uid, {}) if op.uid else None
        if self.hub.identity_refusal(s, identity) is None:
            return False
        self.out.emit({op.from_node}, Answer(op.reqid, FORBIDDEN))
        return True

    def on_close(self, op: Close) -> None:
        s = self._owned(op)
        if s is not None and not self._refused(s, op):
            self.close_session(s)
            self.out.emit({op.from_node}, Answer(op.reqid, 1))

    def on_receive(self, op: Receive) -> None:
        s = self._owned(op)
        if s is None or self._refused(s, op):
            return
        accepted = self.receive_batch(s, orjson.loads(op.body))
        # Queued after what those messages sent to ``from_node``'s sessions.
        self.out.emit({op.from_node}, Answer(op.reqid, accepted))

    def on_kick(self, op: Kick) -> None:
        n = self.hub.disconnect_user(op.uid, op.reason, op.room or None)
        self.out.emit({op.from_node}, Answer(op.reqid, n))

    # ----------------------------------------------- server API, cluster-wide
    async def publish(self, room_id: str, msg: dict[str, Any], to: str | None = None) -> int:
        """``POST /api/publish`` on any node: every member of the room, wherever it is.

        The room's seats come from the shared directory, so a node with no
        member in the room publishes too. Each remote member's own node numbers
        the message (a :class:`Deliver`, as a relay), so resume and dedup work
        as for any message. Without the broker: the members this node knows.
        """
        if not self.out.ready:
            return self.hub.publish(room_id, msg, to)
        try:
            seats = await self.c.broker.directory(room_id)
        except BrokerDown as exc:
            self.c.down(exc)
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
            self.out.forward_to(node, sids, room_id, 0, out.json, self.out.next_did())
            delivered += len(sids)
        return delivered

    async def disconnect_user(self, user_id: str, reason: str, room_id: str | None) -> int:
        """``POST /api/disconnect`` on any node: the user's sessions on every live node.

        A node that does not answer within ``HANDOVER_TIMEOUT`` counts 0.
        """
        n = self.hub.disconnect_user(user_id, reason, room_id)
        if not self.out.ready:
            return n
        try:
            others = await self.c.broker.nodes() - {self.node}
        except BrokerDown as exc:
            self.c.down(exc)
            return n
        answers = await asyncio.gather(*(
            self.ask(node, lambda reqid: Kick(user_id, self.node, reqid, reason, room_id or ""))
            for node in sorted(others)))
        return n + sum(a for a in answers if a is not None and a > 0)
