"""Outbound batching: everything a node tells the broker and other nodes, once per loop turn.

:meth:`Outbound.route` is the cluster router's ``route``. For a
local session :meth:`route` lets the hub deliver (number, buffer, sink) and
queues the numbered message for the session's mirror; for a remote member
(a stub, ``session.node`` is another node) it queues a
:class:`~rtchub.broker.ops.Deliver` for that node instead: one op per message
per node, the session ids appended, so a broadcast to three members on node B
is one op. A flusher task sends it all as one :meth:`Broker.run` per turn of
the event loop, in the order that keeps it correct: mirrors, then commands,
then one publish per node.

Delivery ids (``epoch:n``) make every forwarded message identifiable across a
crash: the mirror records them, and what we forwarded is kept for
``retain_for`` seconds (:attr:`retained`) so that a node restoring a session
whose node died can ask for it again (rtchub.broker.handover).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

import orjson

from rtchub.broker.base import Broker, BrokerDown, Op
from rtchub.broker.ops import BatchHeader, Deliver, encode_batch
from rtchub.broker.ops import Op as NodeOp
from rtchub.core.hub import Hub
from rtchub.core.outgoing import Outgoing
from rtchub.core.session import Session

log = logging.getLogger("rtchub.cluster")

#: Ops queued for one node while the broker is down, beyond which the oldest go.
MAX_QUEUED = 50_000


class Outbound:
    def __init__(self, hub: Hub, broker: Broker, stats: Counter[str],
                 minv_of: Callable[[str, Any], int]) -> None:
        self.hub = hub
        self.broker = broker
        self.node = hub.node_id
        s = hub.settings
        self.settings = s
        self.stats = stats
        #: ``minv_of(room, userId)``: the join version a ``user-joined`` carries.
        self.minv_of = minv_of
        ttl = s.grace_period + 2 * s.node_ttl + 10
        self.ttl_ms = int(ttl * 1000)
        #: True while the broker answers, our channel is subscribed and our state is published.
        self.ready = False
        self.outq: dict[str, list[NodeOp]] = {}
        self._last: dict[str, Outgoing] = {}
        self.cmds: list[Op] = []
        self.retry_sends: list[Op] = []
        #: What to mirror at the next flush: session id -> (session, entries
        #: ``b"<seq> <delivery id or -> <body>"``), grouped as they are made (one
        #: Redis command per session per flush, and no second pass over them).
        self.mirror: dict[str, tuple[Session, list[bytes]]] = {}
        self.meta_known: set[str] = set()
        self.epoch = secrets.token_hex(4)
        self.batch_no = 0
        self.dseq = 0
        #: session id -> (when, delivery op) of what was forwarded to it lately.
        self.retained: dict[str, deque[tuple[float, Deliver]]] = {}
        self.retain_for = 2 * s.node_ttl + 2.0
        #: The delivery id of the forwarded message being delivered right now
        #: (set by the inbound path around ``hub.send``), recorded in the mirror.
        self.did: str | None = None
        #: Called with the rooms whose last seat a flush released (webhooks).
        self.on_emptied: Callable[[list[str]], None] = lambda rooms: None
        #: Called when a flush finds the broker down.
        self.on_down: Callable[[BaseException], None] = lambda exc: None
        self._wake = asyncio.Event()
        self._kicked = False

    # ------------------------------------------------------------ the router
    def route(self, session: Session, out: Outgoing) -> None:
        """The hub's ``send`` on a cluster node: the only cluster cost of a local delivery
        is the first comparison."""
        if session.node is not self.node:
            self.forward(session, out)
            return
        self.hub.deliver(session, out)
        if self.ready:
            rec = self.mirror.get(session.id)
            if rec is None:
                rec = self.mirror[session.id] = (session, [])
            did = self.did
            rec[1].append(b"%d %s %s" % (session.seq, did.encode() if did else b"-", out.json))
            if not self._kicked:
                self.kick()

    def kick(self) -> None:
        self._kicked = True
        self._wake.set()

    def next_did(self) -> str:
        self.dseq += 1
        return f"{self.epoch}:{self.dseq}"

    def forward(self, session: Session, out: Outgoing) -> None:
        """Queue ``out`` for stub ``session``: one op per message per node, sids appended."""
        node = session.node
        assert node is not None
        q = self.outq.get(node)
        if q is None:
            q = self.outq[node] = []
        if q and self._last.get(node) is out:
            op = q[-1]
            op.sids.append(session.id)  # type: ignore[attr-defined]
        else:
            msg = out.msg
            room = msg.get("roomId")
            if type(room) is not str:
                room = ""
            minv = self.minv_of(room, msg.get("userId")) if out.type == "user-joined" else 0
            self.dseq += 1
            op = Deliver(room, minv, out.json, f"{self.epoch}:{self.dseq}", [session.id])
            q.append(op)
            self._last[node] = out
            if not self.ready and len(q) > MAX_QUEUED:
                q.pop(0)
                self.stats["dropped"] += 1
        kept = self.retained.get(session.id)
        if kept is None:
            kept = self.retained[session.id] = deque(maxlen=self.settings.resume_buffer_messages)
        kept.append((time.monotonic(), op))  # type: ignore[arg-type]
        if not self._kicked:
            self.kick()

    def forward_to(self, node: str, sids: list[str], room: str, minv: int, body: bytes,
                   did: str) -> None:
        """A delivery for ``node``'s sessions ``sids``, queued after everything before it."""
        self.outq.setdefault(node, []).append(Deliver(room, minv, body, did, list(sids)))
        self._last.pop(node, None)
        self.kick()

    def emit(self, nodes: set[str], op: NodeOp) -> None:
        """A control op to each of ``nodes``, ordered after what was queued before it."""
        for n in nodes:
            if n == self.node:
                continue
            self.outq.setdefault(n, []).append(op)
            self._last.pop(n, None)
        if nodes:
            self.kick()

    def command(self, op: Op) -> None:
        """A broker operation (``("release", ...)`` etc., see rtchub.broker.base.Op)."""
        self.cmds.append(op)
        self.kick()

    def meta(self, s: Session) -> dict[str, Any]:
        return {"node": self.node, "user": s.user_id or "", "name": s.display_name or "",
                "fixed": "1" if s.user_fixed else "0",
                "claims": orjson.dumps(s.claims).decode() if s.claims is not None else "",
                "rooms": orjson.dumps(list(s.rooms)).decode(), "seq": s.seq}

    def note_meta(self, s: Session) -> None:
        if s.node is self.node and not s.ended:
            self.cmds.append(("meta", s.id, self.meta(s), self.ttl_ms))
            self.meta_known.add(s.id)
            self.kick()

    def down(self) -> None:
        self.ready = False
        self.mirror.clear()  # the whole buffers are republished on reconnect

    def expire(self, now: float) -> None:
        horizon = now - self.retain_for
        for k in list(self.retained):
            kept = self.retained[k]
            while kept and kept[0][0] < horizon:
                kept.popleft()
            if not kept:
                del self.retained[k]

    # ------------------------------------------------------------- the flush
    def take_batch(self) -> list[Op]:
        """Everything queued, in the order that keeps it correct: mirror, commands, publishes."""
        ops: list[Op] = []
        if self.mirror:
            grouped = self.mirror
            self.mirror = {}
            for sid, (session, _) in grouped.items():
                if sid not in self.meta_known and not session.ended:
                    ops.append(("meta", sid, self.meta(session), self.ttl_ms))
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
                    q.insert(0, BatchHeader(self.node, self.epoch, self.batch_no))
                    ops.append(("send", node, encode_batch(q), self.ttl_ms))
                    self.stats["published"] += 1
            self.outq.clear()
            self._last.clear()
        return ops

    async def flusher(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            self._kicked = False
            if not self.ready:
                continue
            ops = self.take_batch()
            if not ops:
                continue
            try:
                emptied = await self.broker.run(ops)
                if emptied:
                    self.on_emptied(emptied)
            except BrokerDown as exc:
                # Retried after the reconnect: commands are idempotent, and a publish
                # that got through before the failure is dropped by its receiver
                # (batch numbers). Mirrors are rewritten whole by the republish.
                self.cmds[:0] = [op for op in ops if op[0] not in ("send", "mirror")]
                self.retry_sends = [op for op in ops if op[0] == "send"] + self.retry_sends
                self.on_down(exc)
            except Exception:  # pragma: no cover
                log.exception("cluster flush failed")
