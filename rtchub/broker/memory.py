"""The in-memory engine: the default, and a stand-in for Redis inside one process.

``--broker memory`` (the default) runs one node and does not install a
cluster at all, so a single node pays nothing for the broker. The engine is
still complete: hubs of one process given the same ``memory://NAME`` share
one :class:`MemoryBus` and behave as a cluster, with the same semantics as
the Redis engine's scripts (each operation here runs without an ``await``,
which is what makes it atomic). Tests use it to exercise the cluster logic
without a Redis server.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import msgpack
import orjson

from rtchub.broker.base import ANY, Broker, Claim, Op, SessionState


class MemoryBus:
    """Shared state of one in-process cluster (what Redis holds for the Redis engine)."""

    def __init__(self) -> None:
        self.listeners: dict[str, Callable[[bytes], None]] = {}
        self.node_keys: dict[str, float] = {}          # node -> expiry (monotonic)
        self.rooms: dict[str, dict[str, str]] = {}     # room -> uid -> json entry
        self.sessions: dict[str, dict[str, str]] = {}  # sid -> record
        self.buffers: dict[str, list[bytes]] = {}
        self.inboxes: dict[str, list[bytes]] = {}
        self.version = 0
        self.maps: dict[str, dict[str, str]] = {}

    def node_alive(self, node: str) -> bool:
        return self.node_keys.get(node, 0.0) > time.monotonic()

    def publish(self, node: str, payload: bytes) -> int:
        cb = self.listeners.get(node)
        if cb is None:
            return 0
        asyncio.get_running_loop().call_soon(cb, payload)
        return 1

    def forward(self, node: str, payload: bytes) -> None:
        if self.publish(node, payload):
            return
        for op in msgpack.unpackb(payload, raw=False):
            if op[0] != "d":
                continue
            room, minv, body, did = op[1], op[2], op[3], op[4]
            for sid in op[5:]:
                owner = self.sessions.get(sid, {}).get("node")
                if owner and owner != node and self.publish(
                        owner, msgpack.packb([["d", room, minv, body, did, sid]])):
                    continue
                self.inboxes.setdefault(sid, []).append(msgpack.packb([room, minv, body, did]))


_BUSES: dict[str, MemoryBus] = {}


class MemoryBroker(Broker):
    def __init__(self, name: str | None = None) -> None:
        super().__init__()
        self.bus = _BUSES.setdefault(name, MemoryBus()) if name else MemoryBus()

    async def start(self, node_id: str, on_message: Callable[[bytes], None]) -> None:
        self.node_id = node_id
        self.on_message = on_message
        self.bus.listeners[node_id] = on_message
        self.connected = True

    async def stop(self) -> None:
        self.bus.listeners.pop(self.node_id, None)
        self.bus.node_keys.pop(self.node_id, None)
        self.connected = False

    async def subscribed(self, timeout: float) -> bool:
        return True

    async def heartbeat(self, ttl: float) -> bool:
        had = self.bus.node_alive(self.node_id)
        self.bus.node_keys[self.node_id] = time.monotonic() + ttl
        return had

    async def alive(self, nodes: set[str]) -> set[str]:
        return {n for n in nodes if self.bus.node_alive(n)}

    async def run(self, ops: list[Op]) -> list[str]:
        bus = self.bus
        emptied: list[str] = []
        for op in ops:
            kind = op[0]
            if kind == "send":
                bus.forward(op[1], op[2])
            elif kind == "mirror":
                _, batch, max_entries, _ttl = op
                for sid, entries, seq in batch:
                    buf = bus.buffers.setdefault(sid, [])
                    buf.extend(entries)
                    del buf[:-max_entries]
                    bus.sessions.setdefault(sid, {})["seq"] = str(seq)
            elif kind == "meta":
                bus.sessions.setdefault(op[1], {}).update(op[2])
            elif kind == "drop":
                for store in (bus.sessions, bus.buffers, bus.inboxes):
                    store.pop(op[1], None)
            elif kind == "release":
                _, room, uid, sid = op
                if self._holder(room, uid) == sid:
                    del bus.rooms[room][uid]
                    if not bus.rooms[room]:
                        del bus.rooms[room]
                        emptied.append(room)
            elif kind == "conn":
                _, room, uid, sid, conn = op
                if self._holder(room, uid) == sid:
                    entry = orjson.loads(bus.rooms[room][uid])
                    entry["c"] = 1 if conn else 0
                    bus.rooms[room][uid] = orjson.dumps(entry).decode()
            elif kind == "member":
                bus.rooms.setdefault(op[1], {})[op[2]] = orjson.dumps(op[3]).decode()
            elif kind == "buffer":
                bus.buffers[op[1]] = list(op[2])
            elif kind == "version":
                bus.version = max(bus.version, op[1])
            # "touch": nothing expires here but node keys.
        return emptied

    def _holder(self, room: str, uid: str) -> str | None:
        raw = self.bus.rooms.get(room, {}).get(uid)
        return orjson.loads(raw)["s"] if raw else None

    def _members(self, room: str) -> dict[str, dict[str, Any]]:
        return {u: orjson.loads(e) for u, e in self.bus.rooms.get(room, {}).items()}

    async def request(self, node: str, payload: bytes) -> int:
        return self.bus.publish(node, payload)

    async def directory(self, room: str) -> dict[str, dict[str, Any]]:
        return self._members(room)

    async def nodes(self) -> set[str]:
        return {n for n in self.bus.node_keys if self.bus.node_alive(n)}

    async def claim(self, room: str, uid: str, sid: str, name: str,
                    max_members: int, ttl_ms: int) -> Claim:
        bus = self.bus
        entries = bus.rooms.setdefault(room, {})
        replaced = None
        raw = entries.get(uid)
        if raw is not None:
            cur = orjson.loads(raw)
            if cur["s"] != sid:
                if cur["c"] == 1 and bus.node_alive(cur["n"]):
                    return Claim("taken")
                replaced = cur
        elif len(entries) >= max_members:
            if not entries:
                del bus.rooms[room]
            return Claim("full")
        bus.version += 1
        entries[uid] = orjson.dumps({"s": sid, "n": self.node_id, "d": name, "c": 1,
                                     "v": bus.version}).decode()
        return Claim("ok", bus.version, replaced, self._members(room))

    async def unclaim(self, room: str, uid: str, sid: str,
                      replaced: dict[str, Any] | None) -> None:
        if self._holder(room, uid) != sid:
            return
        if replaced is not None:
            self.bus.rooms[room][uid] = orjson.dumps(replaced).decode()
        else:
            await self.run([("release", room, uid, sid)])

    async def move(self, room: str, uid: str, sid: str, ttl_ms: int
                   ) -> tuple[int, dict[str, dict[str, Any]]] | None:
        if self._holder(room, uid) != sid:
            return None
        entry = orjson.loads(self.bus.rooms[room][uid])
        entry["n"] = self.node_id
        entry["c"] = 1
        self.bus.rooms[room][uid] = orjson.dumps(entry).decode()
        return int(entry["v"]), self._members(room)

    async def owner(self, sid: str) -> str | None:
        return self.bus.sessions.get(sid, {}).get("node")

    async def take(self, sid: str) -> SessionState | None:
        bus = self.bus
        meta = bus.sessions.get(sid)
        if meta is None:
            return None
        meta["node"] = self.node_id
        return SessionState(dict(meta), list(bus.buffers.get(sid, [])), bus.inboxes.pop(sid, []))

    async def drain(self, sids: list[str]) -> dict[str, list[bytes]]:
        return {sid: box for sid in sids if (box := self.bus.inboxes.pop(sid, None))}

    async def map_all(self, name: str) -> dict[str, str]:
        return dict(self.bus.maps.get(name, {}))

    async def map_set(self, name: str, key: str, value: str | None,
                      expect: str | None | object = ANY) -> tuple[bool, str | None]:
        m = self.bus.maps.setdefault(name, {})
        cur = m.get(key)
        if expect is not ANY and cur != expect:
            return False, cur
        if value is None:
            m.pop(key, None)
            if not m:
                del self.bus.maps[name]
        else:
            m[key] = value
        return True, value
