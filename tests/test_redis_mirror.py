"""The Redis engine's mirror and publish, as the cluster's flush uses them (issue 14).

The mirror is written with replies off (``CLIENT REPLY OFF`` ... ``ON``): these
tests prove it trims and expires what it writes, and that the connection it
used answers normally afterwards, and that a batch nobody receives still goes
through the ``forward`` script (rerouted or parked) after the plain PUBLISH.
"""

from __future__ import annotations

import asyncio
import itertools

from rtchub.broker import ops
from rtchub.broker.redis import RedisBroker
from tests.redis_fixture import RedisServer, redis_server  # noqa: F401

_names = itertools.count()


async def _started(url: str) -> RedisBroker:
    broker = RedisBroker(url, prefix=f"m{next(_names)}:")
    await broker.start(f"node-{next(_names)}", lambda payload: None)
    assert await broker.subscribed(5.0)
    await broker.heartbeat(5.0)
    return broker


async def test_mirror_appends_trims_and_expires(redis_server: RedisServer) -> None:  # noqa: F811
    broker = await _started(redis_server.url)
    try:
        await broker.run([("meta", "s1", {"node": broker.node_id, "seq": 0}, 60000)])
        first = [b"%d - {\"n\":%d}" % (n, n) for n in range(1, 4)]
        more = [b"%d ep:%d {\"n\":%d}" % (n, n, n) for n in range(4, 7)]
        await broker.run([("mirror", [("s1", first, 3), ("s2", [b"1 - x"], 1)], 4, 60000)])
        await broker.run([("mirror", [("s1", more, 6)], 4, 60000)])
        state = await broker.take("s1")
        assert state is not None
        assert state.entries == first[2:] + more  # the last 4 of 6
        ttl = await broker.r.pttl(f"{broker.p}b:s1")
        assert 0 < ttl <= 60000
        assert 0 < await broker.r.pttl(f"{broker.p}b:s2") <= 60000
        # Every pooled connection answers its own commands again (replies are back on).
        for _ in range(10):
            assert await broker.owner("s1") == broker.node_id
            assert await broker.r.ping()
    finally:
        await broker.stop()


async def test_batch_nobody_receives_is_parked_after_the_plain_publish(
        redis_server: RedisServer) -> None:  # noqa: F811
    broker = await _started(redis_server.url)
    try:
        await broker.run([("meta", "s-parked", {"node": "gone"}, 60000)])
        body = b'{"type":"message","data":1}'
        batch = ops.encode_batch([ops.BatchHeader("n0", "ep", 1),
                                  ops.Deliver("room", 0, body, "ep:7", ["s-parked"])])
        await broker.run([("send", "gone", batch, 60000)])
        parked = (await broker.drain(["s-parked"]))["s-parked"]
        assert [ops.decode_inbox(raw, "s-parked") for raw in parked] == [
            ops.Deliver("room", 0, body, "ep:7", ["s-parked"])]
        # A node that listens gets the batch itself, and nothing is parked.
        got: list[bytes] = []
        other = RedisBroker(redis_server.url, prefix=broker.p)
        await other.start("listener", got.append)
        try:
            assert await other.subscribed(5.0)
            await broker.run([("send", "listener", batch, 60000)])
            for _ in range(100):
                if got:
                    break
                await asyncio.sleep(0.02)
            assert got == [batch]
        finally:
            await other.stop()
    finally:
        await broker.stop()
