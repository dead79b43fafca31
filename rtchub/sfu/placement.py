"""Which Janus server holds which room, kept in the broker so every node agrees.

A room lives on one Janus server (no cascading of one room across servers).
The first publish of a room places it on the live server that holds the
fewest rooms (its load), with a compare-and-set in the broker, so two nodes
placing the same room at once end up on the same server. Each placement has
its own Janus room id, random and never shown to clients.

When a server dies, :meth:`Placement.evict` takes its rooms away (again by
compare-and-set: only the placement that pointed at the dead server is
removed), and the next publish places the room on a live server.

The same broker maps hold the rest of the SFU's cluster-wide state
(:class:`SharedState`): the media mode of each room (decided once, by the
first join anywhere) and the directory of published tracks per room.
``--broker memory`` uses a private in-memory broker: same code, one node.
"""

from __future__ import annotations

import secrets
from collections import Counter
from dataclasses import dataclass
from typing import Any

import orjson

from rtchub.broker.base import Broker

ROOMS = "sfu:rooms"      # roomId -> {"s": server key, "j": Janus room id}
MODES = "sfu:modes"      # roomId -> "mesh" | "sfu" (declared by the API, or the first join)


def tracks_map(room_id: str) -> str:
    """The map of a room's published tracks: trackId -> :class:`Track` JSON."""
    return f"sfu:tracks:{room_id}"


@dataclass(frozen=True)
class Placed:
    server: str
    janus_room: str

    def encode(self) -> str:
        return orjson.dumps({"s": self.server, "j": self.janus_room}).decode()

    @classmethod
    def decode(cls, raw: str) -> Placed:
        d = orjson.loads(raw)
        return cls(str(d["s"]), str(d["j"]))


class Placement:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    async def lookup(self, room_id: str) -> Placed | None:
        raw = (await self.broker.map_all(ROOMS)).get(room_id)
        return Placed.decode(raw) if raw else None

    async def loads(self) -> Counter[str]:
        """Rooms per server."""
        return Counter(Placed.decode(raw).server for raw in (await self.broker.map_all(ROOMS)).values())

    async def place(self, room_id: str, live: list[str]) -> Placed | None:
        """The room's placement, placing it on the least loaded of ``live`` if needed.

        A placement on a server that is not in ``live`` is replaced. ``None``
        when no server is live.
        """
        placements = await self.broker.map_all(ROOMS)
        raw = placements.get(room_id)
        if raw is not None:
            cur = Placed.decode(raw)
            if cur.server in live:
                return cur
        if not live:
            return None
        load = Counter(Placed.decode(r).server for r in placements.values())
        # Least rooms first; the order of ``live`` (the configuration's) breaks ties.
        server = min(live, key=lambda s: (load[s], live.index(s)))
        new = Placed(server, "r-" + secrets.token_hex(8))
        done, now = await self.broker.map_set(ROOMS, room_id, new.encode(), expect=raw)
        if done:
            return new
        return Placed.decode(now) if now else await self.place(room_id, live)

    async def release(self, room_id: str, placed: Placed) -> None:
        """Forget the room's placement, if it is still ``placed``."""
        await self.broker.map_set(ROOMS, room_id, None, expect=placed.encode())

    async def evict(self, server: str) -> list[str]:
        """Remove every placement on ``server`` (it died); returns the rooms."""
        gone = []
        for room_id, raw in (await self.broker.map_all(ROOMS)).items():
            if Placed.decode(raw).server == server:
                done, _ = await self.broker.map_set(ROOMS, room_id, None, expect=raw)
                if done:
                    gone.append(room_id)
        return gone


class SharedState:
    """Room media modes and track directories, in the broker's maps."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    async def mode(self, room_id: str) -> str | None:
        return (await self.broker.map_all(MODES)).get(room_id)

    async def decide_mode(self, room_id: str, proposed: str) -> str:
        """The room's mode: the one already decided, else ``proposed`` (first one wins)."""
        done, now = await self.broker.map_set(MODES, room_id, proposed, expect=None)
        return proposed if done or now is None else now

    async def set_mode(self, room_id: str, mode: str | None) -> None:
        await self.broker.map_set(MODES, room_id, mode)

    async def tracks(self, room_id: str) -> dict[str, dict[str, Any]]:
        found = await self.broker.map_all(tracks_map(room_id))
        return {tid: orjson.loads(raw) for tid, raw in found.items()}

    async def put_track(self, room_id: str, track_id: str, track: dict[str, Any]) -> None:
        await self.broker.map_set(tracks_map(room_id), track_id, orjson.dumps(track).decode())

    async def drop_track(self, room_id: str, track_id: str) -> None:
        await self.broker.map_set(tracks_map(room_id), track_id, None)
