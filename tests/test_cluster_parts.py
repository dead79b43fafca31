"""Unit tests of the cluster's parts (issue 14) against a fake broker.

No network, no event-loop scheduling beyond what a part starts itself: the
fake broker records what it is asked and answers from a script, the hub has
fake sinks. The end-to-end behaviour is in tests/test_cluster.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

from rtchub.broker import ops
from rtchub.broker.base import Broker, Claim, Op, SessionState
from rtchub.broker.cluster import Cluster
from rtchub.core.hub import Hub
from rtchub.core.outgoing import Outgoing
from rtchub.settings import Settings
from tests.test_hub_unit import FakeSink


class FakeBroker(Broker):
    """Records every call; ``claims`` / ``states`` / ``owners`` script the answers."""

    def __init__(self) -> None:
        super().__init__()
        self.runs: list[list[Op]] = []
        self.requests: list[tuple[str, list[ops.Op]]] = []
        self.claims: dict[tuple[str, str], Claim] = {}
        self.states: dict[str, SessionState] = {}
        self.owners: dict[str, str] = {}
        self.moves: dict[tuple[str, str], tuple[int, dict[str, dict[str, Any]]]] = {}

    async def start(self, node_id: str, on_message: Any) -> None:
        self.node_id, self.on_message = node_id, on_message

    async def stop(self) -> None: ...

    async def subscribed(self, timeout: float) -> bool:
        return True

    async def heartbeat(self, ttl: float) -> bool:
        return True

    async def alive(self, nodes: set[str]) -> set[str]:
        return set()

    async def run(self, batch: list[Op]) -> list[str]:
        self.runs.append(batch)
        return []

    async def request(self, node: str, payload: bytes) -> int:
        self.requests.append((node, ops.decode_batch(payload)))
        return 0  # nobody answers: the node is gone

    async def claim(self, room: str, uid: str, sid: str, name: str, max_members: int,
                    ttl_ms: int) -> Claim:
        return self.claims.get((room, uid)) or Claim(
            "ok", 1, None, {uid: {"s": sid, "n": self.node_id, "d": name, "c": 1, "v": 1}})

    async def unclaim(self, room: str, uid: str, sid: str, replaced: Any) -> None: ...

    async def move(self, room: str, uid: str, sid: str, ttl_ms: int) -> Any:
        return self.moves.get((room, uid))

    async def owner(self, sid: str) -> str | None:
        return self.owners.get(sid)

    async def take(self, sid: str) -> SessionState | None:
        return self.states.pop(sid, None)

    async def drain(self, sids: list[str]) -> dict[str, list[bytes]]:
        return {}

    async def directory(self, room: str) -> dict[str, dict[str, Any]]:
        return {}

    async def nodes(self) -> set[str]:
        return set()

    def sent(self) -> list[tuple[str, list[ops.Op]]]:
        """The ``send`` ops of every flush: (node, decoded ops without the header)."""
        return [(op[1], ops.decode_batch(op[2])[1:]) for batch in self.runs
                for op in batch if op[0] == "send"]


SETTINGS = Settings(node_ttl=1.0, max_msg_rate=0, max_joins_per_second=0)


async def make_node(name: str = "me") -> tuple[Hub, Cluster, FakeBroker]:
    hub = Hub(SETTINGS, node_id=name)
    broker = FakeBroker()
    cluster = Cluster(hub, broker)
    await cluster.start()
    assert cluster.ready
    return hub, cluster, broker


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def joined_op(room: str, uid: str, sid: str, node: str, version: int = 5) -> bytes:
    return ops.encode_batch([ops.Joined(room, uid, sid, node, uid.title(), version, "")])


async def join(hub: Hub, room: str, uid: str) -> tuple[FakeSink, Any]:
    sink = FakeSink()
    s = hub.open(sink)
    hub.receive(s, {"type": "join", "roomId": room, "userId": uid, "id": 1})
    await settle()
    assert "room-info" in sink.types(), sink.types()
    return sink, s


async def test_router_is_the_hub_send_and_goes_away_on_stop() -> None:
    hub, cluster, _ = await make_node()
    assert hub.send == cluster.out.route
    await cluster.stop()
    assert hub.send == hub.deliver and hub.router is None


async def test_a_remote_joiner_is_a_stub_seat_and_messages_to_it_are_forwarded_batched() -> None:
    hub, cluster, broker = await make_node()
    sink, s = await join(hub, "r", "alice")
    cluster._on_message(joined_op("r", "bob", "sb", "other"))  # noqa: SLF001
    cluster._on_message(joined_op("r", "carol", "sc", "other"))  # noqa: SLF001
    room = hub.rooms["r"]
    assert {u: m.session.node for u, m in room.members.items()} == {
        "alice": "me", "bob": "other", "carol": "other"}
    assert set(hub.remote) == {"sb", "sc"}
    broker.runs.clear()
    hub.receive(s, {"type": "message", "roomId": "r", "data": "hi", "id": 2})
    await settle()
    # One delivery op for both members on "other": the body encoded once, sids appended.
    [(node, [deliver])] = broker.sent()
    assert node == "other" and isinstance(deliver, ops.Deliver)
    assert deliver.sids == ["sb", "sc"] and deliver.room == "r" and b'"hi"' in deliver.body
    # The local sender's own ack was mirrored, before the publish.
    kinds = [op[0] for batch in broker.runs for op in batch]
    assert kinds.index("mirror") < kinds.index("send")


async def test_a_remote_leave_removes_the_stub_and_the_room_when_no_local_member_is_left() -> None:
    hub, cluster, _ = await make_node()
    sink, s = await join(hub, "r", "alice")
    cluster._on_message(joined_op("r", "bob", "sb", "other"))  # noqa: SLF001
    cluster._on_message(ops.encode_batch([ops.Left("r", "bob", "sb")]))  # noqa: SLF001
    assert list(hub.rooms["r"].members) == ["alice"] and not hub.remote
    hub.receive(s, {"type": "leave", "roomId": "r"})
    await settle()
    assert "r" not in hub.rooms


async def test_a_dead_nodes_member_leaves_with_one_user_left_to_local_members_only() -> None:
    hub, cluster, broker = await make_node()
    sink, _ = await join(hub, "r", "alice")
    cluster._on_message(joined_op("r", "bob", "sb", "other"))  # noqa: SLF001
    cluster._on_message(joined_op("r", "carol", "sc", "third"))  # noqa: SLF001
    broker.runs.clear()
    cluster.directory.drop_dead(hub.remote["sb"], "disconnected")
    await settle()
    left = [m for m in sink.frames if m["type"] == "user-left"]
    assert left == [{"type": "user-left", "roomId": "r", "userId": "bob", "reason": "disconnected",
                     "seq": left[0]["seq"]}]
    assert broker.sent() == []  # carol's node drops bob itself: nothing forwarded
    assert ("release", "r", "bob", "sb") in [op for batch in broker.runs for op in batch]


async def test_a_delivery_for_a_session_that_joined_later_skips_the_user_joined_it_already_saw() -> None:
    hub, cluster, broker = await make_node()
    broker.claims[("r", "alice")] = Claim("ok", 9, None, {
        "alice": {"s": "x", "n": "me", "d": "Alice", "c": 1, "v": 9},
        "bob": {"s": "sb", "n": "other", "d": "Bob", "c": 1, "v": 4}})
    sink, _ = await join(hub, "r", "alice")
    assert sink.frames[-2]["users"] == ["bob"]  # room-info named bob
    late = ops.Deliver("r", 4, b'{"type":"user-joined","roomId":"r","userId":"bob"}', "e:1", [])
    # bob's user-joined, still on its way, must not name him a second time.
    cluster.deliver(sink.session.id, late.room, late.minv, Outgoing.relayed(late.body), late.did)
    assert "user-joined" not in sink.types()


async def test_handover_releases_the_session_its_seats_become_stubs_of_the_new_node() -> None:
    hub, cluster, broker = await make_node()
    sink, s = await join(hub, "r", "alice")
    cluster._on_message(joined_op("r", "bob", "sb", "other"))  # noqa: SLF001
    broker.runs.clear()
    cluster._on_message(ops.encode_batch([ops.HandOver(s.id, "other", "q1")]))  # noqa: SLF001
    assert sink.closed and sink.closed[0] == 4009
    assert s.id not in hub.sessions and hub.remote[s.id].node == "other"
    assert hub.rooms["r"].members["alice"].session is hub.remote[s.id]
    await settle()
    # No member of this node is left in the room: it is forgotten here.
    assert "r" not in hub.rooms and not hub.remote
    assert ("other", [ops.HandedOver("q1")]) in broker.sent()
    # Its record now belongs to the new node: no drop.
    assert not [op for batch in broker.runs for op in batch if op[0] == "drop"]
    # Later deliveries for it follow it to its new node.
    cluster.deliver(s.id, "", 0, Outgoing({"type": "message"}), "e:7")
    await settle()
    assert [op for node, batch in broker.sent() for op in batch
            if isinstance(op, ops.Deliver) and op.sids == [s.id] and node == "other"]


async def test_take_over_adopts_the_session_from_the_mirror_when_its_node_is_gone() -> None:
    hub, cluster, broker = await make_node()
    broker.owners["old"] = "dead"
    broker.states["old"] = SessionState(
        {"node": "dead", "user": "alice", "name": "Alice", "fixed": "1", "claims": "",
         "rooms": '["r"]', "seq": "2"},
        [b'1 - {"type":"ack","id":7}', b'2 x:1 {"type":"message","data":"m"}'], [])
    broker.moves[("r", "alice")] = (3, {"alice": {"s": "old", "n": "me", "d": "Alice", "c": 1, "v": 3},
                                        "bob": {"s": "sb", "n": "other", "d": "Bob", "c": 1, "v": 2}})
    assert await cluster.take_over("old", 1) is None  # no refusal
    s = hub.sessions["old"]
    assert s.seq == 2
    assert [n for n, _ in s.buffered()] == [1, 2] and 7 in s.seen_ids
    room = hub.rooms["r"]
    assert room.members["alice"].session is s and room.members["bob"].session.node == "other"
    # The members' nodes hear that the seat moved here; the dead node is asked for nothing.
    await settle()
    assert ("other", [ops.Moved("r", "alice", "old", "me", "Alice", 3)]) in broker.sent()
    assert [node for node, _ in broker.requests] == ["dead", "other"]  # hand-over, then replay
    sink = FakeSink()
    hub.attach(s, sink, 1)
    assert sink.types() == ["message", "resumed"]


async def test_handover_to_a_foreign_identity_is_refused_and_moves_nothing() -> None:
    hub, cluster, broker = await make_node()
    hub.use_authenticator(lambda session, token: None)  # auth on (the token is not under test)
    sink = FakeSink()
    s = hub.open(sink, user_id="alice", claims={"sub": "alice"})
    broker.runs.clear()
    cluster._on_message(ops.encode_batch([ops.HandOver(s.id, "other", "q1", "mallory")]))  # noqa: SLF001
    await settle()
    [(node, [answer])] = broker.sent()
    assert node == "other" and isinstance(answer, ops.HandedOver) and answer.code == "forbidden"
    assert hub.sessions[s.id] is s and sink.closed is None and s.id not in hub.remote
    # The owner's own identity gets it.
    cluster._on_message(ops.encode_batch([ops.HandOver(s.id, "other", "q2", "alice")]))  # noqa: SLF001
    assert s.id not in hub.sessions and sink.closed is not None
