"""Node-to-node ops: what one cluster node tells another, and their one wire form.

Every message on a node channel is a *batch*: a msgpack array of ops, each an
array whose first element is the op's tag and whose other elements are the
op's fields in declaration order (:func:`encode` / :func:`decode`). Three
readers depend on that layout and all take it from here:

- the cluster (``decode_batch`` on every message of its channel);
- the Redis engine's ``forward`` Lua script, which re-routes the
  :class:`Deliver` ops of a batch whose node is gone; its source is built from
  :data:`DELIVER_TAG` and :data:`DELIVER_FIRST_SID` (``tests/test_ops.py``
  runs it against a real Redis and checks what it parks);
- :meth:`rtchub.broker.memory.MemoryBus.forward`, the same re-routing in
  Python (:func:`reroute`).

Bodies travel as msgpack *str* (``use_bin_type=False``): Redis' ``cmsgpack``
rejects bin, and the Lua script must unpack a batch to re-route it.

A new kind of cluster-wide record (say, which SFU server hosts a room) is a
new dataclass here with a new tag, plus a handler in the part of the cluster
that owns it: the hub does not change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import msgpack


@dataclass(slots=True)
class Op:
    """Base of every op. ``TAG`` is its first element on the wire."""

    TAG: ClassVar[str] = ""
    #: The last field is a list spread over the rest of the array (see :class:`Deliver`).
    VARIADIC: ClassVar[bool] = False


@dataclass(slots=True)
class BatchHeader(Op):
    """First op of a batch: a resend after a broker failure is recognised by ``n``."""

    TAG: ClassVar[str] = "#"
    origin: str
    epoch: str
    n: int


@dataclass(slots=True)
class Deliver(Op):
    """Message ``body`` (encoded once) for the receiving node's sessions ``sids``.

    ``minv``: for a ``user-joined``, the joiner's join version (0 otherwise): a
    receiver that joined later already saw the joiner in its ``room-info``.
    ``did``: the delivery id (``epoch:n``) that makes a resend after a crash
    recognisable. Wire: ``["d", room, minv, body, did, sid, sid, ...]``.
    """

    TAG: ClassVar[str] = "d"
    VARIADIC: ClassVar[bool] = True
    room: str
    minv: int
    body: bytes
    did: str
    sids: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Joined(Op):
    """A member of ``room`` on ``node`` joined (``replaced``: the session whose seat it took)."""

    TAG: ClassVar[str] = "j"
    room: str
    uid: str
    sid: str
    node: str
    name: str
    version: int
    replaced: str


@dataclass(slots=True)
class Left(Op):
    TAG: ClassVar[str] = "l"
    room: str
    uid: str
    sid: str


@dataclass(slots=True)
class Moved(Op):
    """Session ``sid``'s seat in ``room`` now lives on ``node`` (a resume there)."""

    TAG: ClassVar[str] = "m"
    room: str
    uid: str
    sid: str
    node: str
    name: str
    version: int


@dataclass(slots=True)
class HandOver(Op):
    """Node ``to_node`` resumes session ``sid``: let go of it, answer :class:`HandedOver`."""

    TAG: ClassVar[str] = "h"
    sid: str
    to_node: str
    reqid: str
    #: What the resuming request proved (the token's ``sub``; "" for none): the
    #: holder asks its hub whether that identity may have the session first.
    uid: str = ""


@dataclass(slots=True)
class HandedOver(Op):
    """The answer to :class:`HandOver`: let go (``code`` ""), or refused (an error code)."""

    TAG: ClassVar[str] = "H"
    reqid: str
    code: str = ""
    message: str = ""


@dataclass(slots=True)
class Replay(Op):
    """Resend to ``to_node`` what was forwarded to ``sid`` lately (its node died)."""

    TAG: ClassVar[str] = "r"
    sid: str
    to_node: str
    reqid: str


@dataclass(slots=True)
class Replayed(Op):
    TAG: ClassVar[str] = "R"
    reqid: str


@dataclass(slots=True)
class Receive(Op):
    """``POST /send`` for session ``sid`` that reached ``from_node``: JSON array ``body``."""

    TAG: ClassVar[str] = "s"
    sid: str
    from_node: str
    reqid: str
    body: bytes
    #: What the request's token proved ("" for none), checked by the holder.
    uid: str = ""


@dataclass(slots=True)
class Close(Op):
    """``POST /close`` for session ``sid`` that reached ``from_node``."""

    TAG: ClassVar[str] = "c"
    sid: str
    from_node: str
    reqid: str
    uid: str = ""


@dataclass(slots=True)
class Kick(Op):
    """``POST /api/disconnect`` on ``from_node``: this node's sessions of ``uid``."""

    TAG: ClassVar[str] = "k"
    uid: str
    from_node: str
    reqid: str
    reason: str
    room: str


@dataclass(slots=True)
class Answer(Op):
    """The numeric answer to a :class:`Receive`, :class:`Close` or :class:`Kick`
    (-1: not here; -2: the requester's identity may not act for the session)."""

    TAG: ClassVar[str] = "a"
    reqid: str
    n: int


OPS: tuple[type[Op], ...] = (BatchHeader, Deliver, Joined, Left, Moved, HandOver, HandedOver,
                             Replay, Replayed, Receive, Close, Kick, Answer)
BY_TAG: dict[str, type[Op]] = {cls.TAG: cls for cls in OPS}
_FIELDS: dict[type[Op], tuple[str, ...]] = {cls: tuple(f.name for f in fields(cls)) for cls in OPS}

#: What the Redis ``forward`` script matches and where it finds the session ids
#: (0-based here; Lua arrays start at 1).
DELIVER_TAG = Deliver.TAG
DELIVER_FIRST_SID = 1 + _FIELDS[Deliver].index("sids")


def encode(op: Op) -> list[Any]:
    """The wire array of ``op``: ``[TAG, *fields]``, a variadic last field spread."""
    if type(op) is Deliver:  # the hot one, without the generic path
        return [DELIVER_TAG, op.room, op.minv, op.body, op.did, *op.sids]  # type: ignore[attr-defined]
    names = _FIELDS[type(op)]
    if type(op).VARIADIC:
        return [op.TAG, *(getattr(op, n) for n in names[:-1]), *getattr(op, names[-1])]
    return [op.TAG, *(getattr(op, n) for n in names)]


def decode(raw: list[Any]) -> Op:
    """The op of a wire array. Raises KeyError for an unknown tag."""
    cls = BY_TAG[raw[0]]
    if cls is Deliver:  # the hot one, without the generic path
        body = raw[3]
        return Deliver(raw[1], raw[2], body.encode() if isinstance(body, str) else body, raw[4],
                       raw[5:])
    if cls.VARIADIC:
        n = len(_FIELDS[cls])
        return cls(*raw[1:n], list(raw[n:]))
    op = cls(*raw[1:])
    if cls is Receive and isinstance(op.body, str):  # type: ignore[attr-defined]
        op.body = op.body.encode()  # type: ignore[attr-defined]
    return op


def encode_batch(ops: list[Op]) -> bytes:
    wire: list[list[Any]] = []
    append = wire.append
    for op in ops:
        if type(op) is Deliver:  # the hot one, inline (see encode)
            append([DELIVER_TAG, op.room, op.minv, op.body, op.did, *op.sids])
        else:
            append(encode(op))
    return msgpack.packb(wire, use_bin_type=False)


def decode_batch(payload: bytes) -> list[Op]:
    """Every op of a batch; ops with a tag this version does not know are skipped."""
    out: list[Op] = []
    append = out.append
    for raw in msgpack.unpackb(payload, raw=False):
        tag = raw[0] if raw else None
        if tag == "d":  # the hot one, inline (see decode)
            body = raw[3]
            append(Deliver(raw[1], raw[2], body.encode() if type(body) is str else body, raw[4],
                           raw[5:]))
        elif tag in BY_TAG:
            append(decode(raw))
    return out


# ------------------------------------------------------------------ inbox
def encode_inbox(op: Deliver) -> bytes:
    """An inbox entry: a delivery parked while no node held its session.

    ``[room, minv, body, did]``: the :class:`Deliver` fields before ``sids``;
    the Lua script writes the same (``cmsgpack.pack({op[2], .., op[5]})``).
    """
    return msgpack.packb([op.room, op.minv, op.body, op.did], use_bin_type=False)


def decode_inbox(raw: bytes, sid: str) -> Deliver:
    room, minv, body, did = msgpack.unpackb(raw, raw=False)
    return Deliver(room, minv, body.encode() if isinstance(body, str) else body, did, [sid])


def reroute(payload: bytes, node: str, owner_of: Callable[[str], str | None],
            publish: Callable[[str, bytes], int], park: Callable[[str, bytes], None]) -> None:
    """What to do with a batch for ``node`` when nobody listens on its channel.

    Each delivery goes to its session's current owner when that is another
    live node, else into the session's inbox. Control ops are dropped: they
    concern a node that is gone. The Redis engine does the same in Lua
    (``rtchub.broker.redis_lua.FORWARD``); the memory engine calls this.
    """
    for op in decode_batch(payload):
        if not isinstance(op, Deliver):
            continue
        for sid in op.sids:
            owner = owner_of(sid)
            single = Deliver(op.room, op.minv, op.body, op.did, [sid])
            if owner and owner != node and publish(owner, encode_batch([single])):
                continue
            park(sid, encode_inbox(single))


#: Dispatch of ops to their handlers, by type (see Cluster).
Handlers = dict[type[Op], Callable[[Any], None]]
