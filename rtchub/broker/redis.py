"""The Redis engine (``--broker redis://host:port/db``), on ``redis.asyncio``.

Two connections: one for commands (pipelined: a cluster flush is one round
trip) and one for the node's own pub/sub channel. Every read-check-write is a
Lua script (:mod:`rtchub.broker.redis_lua`), so two nodes racing for the same
seat or session cannot both win.

Losing Redis is not fatal: commands raise :class:`BrokerDown`, the listener
keeps retrying its subscription every 250 ms, and :meth:`heartbeat` tells the
cluster when Redis lost its data (restart without persistence) so that the
node republishes what it holds. :meth:`heartbeat` also asks Redis whether
this node is really still subscribed (``PUBSUB NUMSUB``): a listener that
believes it is subscribed while Redis does not know it is the silent stall
this check exists to catch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import orjson
import redis.asyncio as aioredis
from hiredis import pack_command
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError

from rtchub.broker.base import ANY, Broker, BrokerDown, Claim, Op, SessionState
from rtchub.broker.redis_lua import SCRIPTS

log = logging.getLogger("rtchub.broker")

PREFIX = "rtchub:"
#: What frames a mirror (RedisBroker._mirror): no replies in between.
_REPLY_OFF = pack_command(("CLIENT", "REPLY", "OFF"))
_REPLY_ON = pack_command(("CLIENT", "REPLY", "ON"))



def _raise_if_cancelled() -> None:
    """Raise the cancellation a redis-py pipeline swallowed.

    Observed with redis-py 8.1: a task cancelled while its pipeline runs can
    get the pipeline's results instead of ``CancelledError`` (the pipeline's
    clean-up shields itself from cancellation). The cluster's flusher,
    cancelled by ``Cluster.stop`` in the middle of a flush, then went back to
    waiting for the next flush and ``stop`` waited for it forever
    (tests/test_cluster_http.py, the SSE resume after a node stopped, hung in
    its teardown about one run in two once the mirror added a round trip
    before the pipeline). Called after every pipeline: the task does what it
    was asked to.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def _as_is(response: Any) -> Any:
    """The pub/sub push handler: the message itself, not formatted (see ``_listen``)."""
    return response


def _pairs(flat: list[bytes]) -> dict[str, bytes]:
    return {flat[i].decode(): flat[i + 1] for i in range(0, len(flat), 2)}


def _members(flat: list[bytes]) -> dict[str, dict[str, Any]]:
    return {k: orjson.loads(v) for k, v in _pairs(flat).items()}


class RedisBroker(Broker):
    def __init__(self, url: str, prefix: str = PREFIX) -> None:
        super().__init__()
        self.url = url
        self.p = prefix
        kw: dict[str, Any] = {"socket_connect_timeout": 1.0, "retry": Retry(NoBackoff(), 0)}
        # Commands fail fast (the cluster retries on its own schedule); the
        # subscriber waits for messages, so it has no read timeout.
        # A bounded pool that waits for a free connection: a join storm runs
        # hundreds of claims at once, and redis-py's default pool raises "Too
        # many connections" past its limit instead of queueing them.
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=64, timeout=5.0, socket_timeout=3.0, **kw)
        self.r = aioredis.Redis.from_pool(pool)  # the client owns (and closes) the pool
        self.sub = aioredis.Redis.from_url(url, **kw)
        self.sha: dict[str, str] = {}
        self._subscribed = asyncio.Event()
        self._listener: asyncio.Task[None] | None = None

    @property
    def channel(self) -> str:
        return f"{self.p}n:{self.node_id}"

    # -------------------------------------------------------------- lifecycle
    async def start(self, node_id: str, on_message: Callable[[bytes], None]) -> None:
        self.node_id = node_id
        self.on_message = on_message
        self._listener = asyncio.get_running_loop().create_task(self._listen())

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(BaseException):
                await self._listener
        with contextlib.suppress(Exception):
            await self.r.delete(f"{self.p}node:{self.node_id}")
        for client in (self.r, self.sub):
            with contextlib.suppress(Exception):
                await client.aclose()
        self.connected = False

    async def _listen(self) -> None:
        while True:
            # Our own push handler: redis-py's default one logs every message at
            # DEBUG by formatting it whole first (``"..." + str(response)``), which
            # for a batch of ~1,000 deliveries was 8 % of a cluster node's time.
            ps = self.sub.pubsub(push_handler_func=_as_is)
            try:
                await ps.subscribe(self.channel)
                self._subscribed.set()
                while True:
                    # No timeout: a timeout per read costs an asyncio timer per
                    # message. A dead connection raises; a subscription Redis
                    # lost while the socket stays up is caught by heartbeat().
                    msg = await ps.get_message(ignore_subscribe_messages=True, timeout=None)
                    if msg is not None and msg.get("type") == "message":
                        try:
                            self.on_message(msg["data"])
                        except Exception:  # pragma: no cover - a bug must not stop routing
                            log.exception("handling a broker message failed")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("subscriber lost Redis: %r", exc)
            finally:
                self._subscribed.clear()
                self.connected = False
                with contextlib.suppress(Exception):
                    await ps.aclose()
            await asyncio.sleep(0.25)

    def _restart_listener(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
        self._subscribed.clear()
        self._listener = asyncio.get_running_loop().create_task(self._listen())

    async def subscribed(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._subscribed.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def _load_scripts(self) -> None:
        for name, src in SCRIPTS.items():
            self.sha[name] = await self.r.script_load(src)

    async def heartbeat(self, ttl: float) -> bool:
        try:
            if not self.sha:
                await self._load_scripts()
            async with self.r.pipeline(transaction=False) as p:
                p.set(f"{self.p}node:{self.node_id}", "1", px=max(1, int(ttl * 1000)), get=True)
                p.pubsub_numsub(self.channel)
                p.script_exists(self.sha["forward"])
                old, numsub, exists = await p.execute()
                _raise_if_cancelled()
        except (RedisError, OSError) as exc:
            self.connected = False
            self.sha.clear()
            raise BrokerDown(str(exc)) from exc
        if not exists[0]:
            await self._load_scripts()
        if not numsub or int(numsub[0][1]) == 0:
            # Redis does not know our subscription, whatever the listener thinks.
            self.connected = False
            if self._subscribed.is_set():
                self._restart_listener()
            raise BrokerDown("node channel not subscribed")
        self.connected = True
        return old is not None

    async def _eval(self, name: str, *args: Any) -> Any:
        try:
            try:
                return await self.r.evalsha(self.sha[name], 0, self.p, *args)
            except (NoScriptError, KeyError):
                await self._load_scripts()
                return await self.r.evalsha(self.sha[name], 0, self.p, *args)
        except (RedisError, OSError) as exc:
            raise BrokerDown(str(exc)) from exc

    # ------------------------------------------------------------- operations
    async def alive(self, nodes: set[str]) -> set[str]:
        if not nodes:
            return set()
        order = sorted(nodes)
        try:
            async with self.r.pipeline(transaction=False) as p:
                for n in order:
                    p.exists(f"{self.p}node:{n}")
                found = await p.execute()
                _raise_if_cancelled()
        except (RedisError, OSError) as exc:
            raise BrokerDown(str(exc)) from exc
        return {n for n, hit in zip(order, found, strict=True) if hit}

    async def run(self, ops: list[Op]) -> list[str]:
        if not ops:
            return []
        if not self.sha:
            raise BrokerDown("scripts not loaded")
        pfx = self.p
        sha = self.sha
        try:
            async with self.r.pipeline(transaction=False) as p:
                releases: list[tuple[int, str]] = []  # (index of its reply, room)
                sends: list[tuple[int, Op]] = []  # (index of its reply, op)
                for op in ops:
                    kind = op[0]
                    if kind == "send":
                        sends.append((len(p.command_stack), op))
                        p.publish(f"{pfx}n:{op[1]}", op[2])
                    elif kind == "mirror":
                        # Written before the pipeline (see _mirror): in order.
                        await self._mirror(op)
                    elif kind == "meta":
                        sk = f"{pfx}s:{op[1]}"
                        p.hset(sk, mapping=op[2])
                        p.pexpire(sk, op[3])
                    elif kind == "drop":
                        p.delete(f"{pfx}s:{op[1]}", f"{pfx}b:{op[1]}", f"{pfx}i:{op[1]}")
                    elif kind == "release":
                        releases.append((len(p.command_stack), op[1]))
                        p.evalsha(sha["release"], 0, pfx, op[1], op[2], op[3])
                    elif kind == "conn":
                        p.evalsha(sha["conn"], 0, pfx, op[1], op[2], op[3], 1 if op[4] else 0)
                    elif kind == "member":
                        rk = f"{pfx}r:{op[1]}"
                        p.hset(rk, op[2], orjson.dumps(op[3]))
                        p.pexpire(rk, op[4])
                    elif kind == "buffer":
                        bk = f"{pfx}b:{op[1]}"
                        p.delete(bk)
                        if op[2]:
                            p.rpush(bk, *op[2])
                            p.pexpire(bk, op[3])
                    elif kind == "touch":
                        _, sids, rooms, ttl = op
                        for sid in sids:
                            p.pexpire(f"{pfx}s:{sid}", ttl)
                            p.pexpire(f"{pfx}b:{sid}", ttl)
                        for room in rooms:
                            p.pexpire(f"{pfx}r:{room}", ttl)
                    elif kind == "version":
                        p.evalsha(sha["version"], 0, pfx, op[1])
                results = await p.execute(raise_on_error=False)
                _raise_if_cancelled()
        except (RedisError, OSError) as exc:
            self.connected = False
            raise BrokerDown(str(exc)) from exc
        for res in results:
            if isinstance(res, NoScriptError):
                self.sha.clear()  # reloaded by the next heartbeat
                raise BrokerDown("scripts were flushed")
            if isinstance(res, Exception):
                log.warning("broker op failed: %r", res)
        # Batches nobody received: rerouted or parked by the script, which
        # publishes once more first (the node may have just subscribed). Awaited
        # here, so the next flush's batches cannot overtake them.
        for i, op in sends:
            if results[i] == 0:
                await self._eval("forward", op[1], op[2], op[3] if len(op) > 3 else 60000)
        return [room for i, room in releases if results[i] == 2]

    async def _mirror(self, op: Op) -> None:
        """One flush's mirror: RPUSH, LTRIM and PEXPIRE per session, sent at once
        with replies off, then waited for (one round trip).

        Not a Lua script: Lua hashes every byte of every string it is given, and
        a mirror is every relayed body again; that hashing was most of Redis' CPU
        in the cross-node profile (docs/benchmarks.notes.md). Not redis-py
        commands either: its pipeline costs ~10 µs of Python per reply, and a
        flush mirrors hundreds of sessions. ``CLIENT REPLY OFF`` leaves one reply
        (the ``OK`` of ``CLIENT REPLY ON``) for the whole mirror. The session's
        seq is not written: it is the last mirrored entry's (handover._restore
        takes the larger of the record's and the entries').
        """
        _, batch, max_entries, ttl = op
        pfx = self.p
        limit = -int(max_entries)
        parts = [_REPLY_OFF]
        for sid, entries, _seq in batch:
            bk = f"{pfx}b:{sid}"
            parts.append(pack_command(("RPUSH", bk, *entries)))
            parts.append(pack_command(("LTRIM", bk, limit, -1)))
            parts.append(pack_command(("PEXPIRE", bk, ttl)))
        parts.append(_REPLY_ON)
        pool = self.r.connection_pool
        conn = await pool.get_connection()
        try:
            await conn.send_packed_command(b"".join(parts), check_health=False)
            reply = await conn.read_response()
        except BaseException:
            # Never hand back a connection that may still have replies off.
            with contextlib.suppress(Exception):
                await conn.disconnect()
            raise
        finally:
            await pool.release(conn)
        if isinstance(reply, Exception):
            raise reply

    async def request(self, node: str, payload: bytes) -> int:
        try:
            return int(await self.r.publish(f"{self.p}n:{node}", payload))
        except (RedisError, OSError) as exc:
            raise BrokerDown(str(exc)) from exc

    async def directory(self, room: str) -> dict[str, dict[str, Any]]:
        try:
            raw = await self.r.hgetall(f"{self.p}r:{room}")
        except (RedisError, OSError) as exc:
            raise BrokerDown(str(exc)) from exc
        return {k.decode(): orjson.loads(v) for k, v in raw.items()}

    async def nodes(self) -> set[str]:
        # SCAN, not KEYS: it never blocks Redis, however many keys there are.
        head = f"{self.p}node:"
        try:
            return {k.decode()[len(head):] async for k in self.r.scan_iter(match=head + "*", count=1000)}
        except (RedisError, OSError) as exc:
            raise BrokerDown(str(exc)) from exc

    async def claim(self, room: str, uid: str, sid: str, name: str,
                    max_members: int, ttl_ms: int) -> Claim:
        res = await self._eval("claim", room, uid, sid, self.node_id, name, max_members, ttl_ms)
        status = res[0].decode()
        if status != "ok":
            return Claim(status)
        return Claim("ok", int(res[1]), orjson.loads(res[2]) if res[2] else None, _members(res[3]))

    async def unclaim(self, room: str, uid: str, sid: str,
                      replaced: dict[str, Any] | None) -> None:
        await self._eval("unclaim", room, uid, sid, orjson.dumps(replaced) if replaced else "")

    async def move(self, room: str, uid: str, sid: str, ttl_ms: int
                   ) -> tuple[int, dict[str, dict[str, Any]]] | None:
        res = await self._eval("move", room, uid, sid, self.node_id, ttl_ms)
        if not res:
            return None
        return int(res[0]), _members(res[1])

    async def owner(self, sid: str) -> str | None:
        try:
            raw = await self.r.hget(f"{self.p}s:{sid}", "node")
        except (RedisError, OSError) as exc:
            raise BrokerDown(str(exc)) from exc
        return raw.decode() if raw else None

    async def take(self, sid: str) -> SessionState | None:
        res = await self._eval("take", sid, self.node_id)
        if not res:
            return None
        meta = {k: v.decode() for k, v in _pairs(res[0]).items()}
        return SessionState(meta, list(res[1]), list(res[2]))

    async def drain(self, sids: list[str]) -> dict[str, list[bytes]]:
        if not sids:
            return {}
        try:
            async with self.r.pipeline(transaction=False) as p:
                for sid in sids:
                    p.evalsha(self.sha["drain"], 0, self.p, sid)
                found = await p.execute()
                _raise_if_cancelled()
        except (RedisError, OSError, KeyError) as exc:
            raise BrokerDown(str(exc)) from exc
        return {sid: list(box) for sid, box in zip(sids, found, strict=True) if box}

    async def map_all(self, name: str) -> dict[str, str]:
        try:
            raw = await self.r.hgetall(f"{self.p}m:{name}")
        except (RedisError, OSError) as exc:
            raise BrokerDown(str(exc)) from exc
        return {k.decode(): v.decode() for k, v in raw.items()}

    async def map_set(self, name: str, key: str, value: str | None,
                      expect: str | None | object = ANY) -> tuple[bool, str | None]:
        conditional = expect is not ANY
        done, now = await self._eval("mapset", name, key, value or "", "1" if conditional else "0",
                                     (expect or "") if conditional else "")
        now = now.decode() if isinstance(now, bytes) else now
        return bool(done), now or None
