"""Node-to-node ops (rtchub.broker.ops): one codec, and the layout the engines read.

The Redis engine's ``forward`` Lua script unpacks a batch for a node that is
gone and re-routes its deliveries; it must read the same layout the codec
writes. These tests run the real script on a private redis-server (and the
memory engine's Python twin) and check what each parks or re-publishes.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest

from rtchub.broker import ops
from rtchub.broker.memory import MemoryBroker
from rtchub.broker.redis import RedisBroker
from tests.redis_fixture import RedisServer, redis_server  # noqa: F401

_names = itertools.count()

SAMPLES: list[ops.Op] = [
    ops.BatchHeader("n1", "ep", 7),
    ops.Deliver("room", 3, b'{"type":"message"}', "ep:9", ["s1", "s2"]),
    ops.Deliver("", 0, b"{}", "ep:1", ["s1"]),
    ops.Joined("room", "alice", "s1", "n1", "Alice", 4, ""),
    ops.Left("room", "alice", "s1"),
    ops.Moved("room", "alice", "s1", "n2", "Alice", 4),
    ops.HandOver("s1", "n2", "r1"),
    ops.HandedOver("r1"),
    ops.Replay("s1", "n2", "r2"),
    ops.Replayed("r2"),
    ops.Receive("s1", "n2", "r3", b'[{"type":"ping"}]'),
    ops.Close("s1", "n2", "r4"),
    ops.Kick("alice", "n2", "r5", "kicked", ""),
    ops.Answer("r5", 2),
]


@pytest.mark.parametrize("op", SAMPLES, ids=lambda op: type(op).__name__)
def test_every_op_survives_the_wire(op: ops.Op) -> None:
    assert ops.decode_batch(ops.encode_batch([op])) == [op]


def test_deliver_layout_is_what_the_lua_script_reads() -> None:
    wire = ops.encode(ops.Deliver("room", 3, b"body", "ep:9", ["s1", "s2"]))
    assert wire == ["d", "room", 3, b"body", "ep:9", "s1", "s2"]
    assert wire[0] == ops.DELIVER_TAG and wire[ops.DELIVER_FIRST_SID:] == ["s1", "s2"]


def test_unknown_tags_are_skipped() -> None:
    import msgpack

    payload = msgpack.packb([["?", 1], ops.encode(ops.HandedOver("r"))])
    assert ops.decode_batch(payload) == [ops.HandedOver("r")]


def test_every_tag_is_unique() -> None:
    assert len(ops.BY_TAG) == len(ops.OPS)


async def _forward_to_gone_node(broker: Any, got: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    """Send a batch to a node nobody listens on: s-live's delivery is re-published to
    its owner (this broker's node), s-parked's goes to its inbox."""
    await broker.start(f"owner-{next(_names)}", got.append)
    assert await broker.subscribed(5.0)
    await broker.heartbeat(5.0)
    await broker.run([("meta", "s-live", {"node": broker.node_id}, 60000),
                      ("meta", "s-parked", {"node": "gone-too"}, 60000)])
    batch = ops.encode_batch([
        ops.BatchHeader("n0", "ep", 1),
        ops.Deliver("room", 5, b'{"type":"message","data":1}', "ep:1", ["s-live", "s-parked"]),
        ops.Left("room", "u", "s-x"),
    ])
    await broker.run([("send", "gone", batch, 60000)])
    for _ in range(100):
        if got:
            break
        await asyncio.sleep(0.02)
    return got, (await broker.drain(["s-parked"]))["s-parked"]


def _check(got: list[bytes], parked: list[bytes]) -> None:
    assert [ops.decode_batch(p) for p in got] == [
        [ops.Deliver("room", 5, b'{"type":"message","data":1}', "ep:1", ["s-live"])]]
    assert [ops.decode_inbox(raw, "s-parked") for raw in parked] == [
        ops.Deliver("room", 5, b'{"type":"message","data":1}', "ep:1", ["s-parked"])]


async def test_redis_forward_script_reads_the_codec_layout(redis_server: RedisServer) -> None:  # noqa: F811
    broker = RedisBroker(redis_server.url, prefix=f"t{next(_names)}:")
    try:
        _check(*await _forward_to_gone_node(broker, []))
    finally:
        await broker.stop()


async def test_memory_engine_reroutes_with_the_same_codec() -> None:
    broker = MemoryBroker(f"ops-{next(_names)}")
    try:
        _check(*await _forward_to_gone_node(broker, []))
    finally:
        await broker.stop()
