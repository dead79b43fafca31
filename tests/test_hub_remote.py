"""The hub's state changes for a cluster node (rtchub.core.remote), with fake sinks.

Pure core: no broker, no loop. What the cluster asks, the hub does, and the
members see exactly what they would on one node.
"""

from __future__ import annotations

from typing import Any

from rtchub.core.hub import Hub
from rtchub.core.outgoing import Outgoing
from rtchub.core.session import Session
from tests.test_hub_unit import Clock, FakeSink, joined, make_hub


class Recorder:
    """A router that records where the hub sends, and delivers local messages."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.forwarded: list[tuple[str, str]] = []

    def route(self, session: Session, out: Outgoing) -> None:
        if session.node != self.hub.node_id:
            self.forwarded.append((session.id, out.type))
            return
        self.hub.deliver(session, out)

    def resume_elsewhere(self, session: Session, old_id: str, last_seq: int, msg_id: Any) -> None:
        raise AssertionError("not used here")


def test_a_remote_member_is_seen_and_reached_through_the_router() -> None:
    hub = make_hub(Clock())
    router = Recorder(hub)
    hub.use_router(router)
    sink, alice = joined(hub, "r", "alice")
    assert hub.seat_remote("r", "bob", "sb", "other", "Bob")
    hub.receive(alice, {"type": "offer", "roomId": "r", "to": "bob", "sdp": "x"})
    assert router.forwarded == [("sb", "offer")]
    _, carol = joined(hub, "r", "carol")
    info = [f for f in hub.sessions[carol.id].sink.frames if f["type"] == "room-info"][-1]  # type: ignore[union-attr]
    assert sorted(info["users"]) == ["alice", "bob"]
    hub.use_router(None)
    assert hub.send == hub.deliver


def test_seat_remote_leaves_a_local_holder_alone_and_needs_the_room_unless_told() -> None:
    hub = make_hub(Clock())
    joined(hub, "r", "alice")
    assert not hub.seat_remote("r", "alice", "sx", "other", "Impostor")
    assert hub.rooms["r"].members["alice"].session.node == hub.node_id
    assert not hub.seat_remote("nowhere", "bob", "sb", "other", "Bob")
    assert hub.seat_remote("new", "bob", "sb", "other", "Bob", create=True)
    assert hub.rooms["new"].members["bob"].session is hub.remote["sb"]


def test_a_dead_nodes_member_leaves_with_user_left_to_local_members_only() -> None:
    hub = make_hub(Clock())
    router = Recorder(hub)
    hub.use_router(router)
    sink, _ = joined(hub, "r", "alice")
    hub.seat_remote("r", "bob", "sb", "other", "Bob")
    hub.seat_remote("r", "carol", "sc", "third", "Carol")
    assert hub.unseat_remote("r", "bob", "sb", "disconnected")
    assert sink.last() == {"type": "user-left", "roomId": "r", "userId": "bob",
                           "reason": "disconnected", "seq": sink.last()["seq"]}
    assert router.forwarded == []  # carol's own node says it to carol
    assert "sb" not in hub.remote and "bob" not in hub.rooms["r"].members


def test_forget_room_keeps_a_room_with_a_local_member() -> None:
    hub = make_hub(Clock())
    _, alice = joined(hub, "r", "alice")
    hub.seat_remote("r", "bob", "sb", "other", "Bob")
    hub.forget_room("r")
    assert "r" in hub.rooms
    hub.receive(alice, {"type": "leave", "roomId": "r"})
    hub.forget_room("r")
    assert "r" not in hub.rooms and not hub.remote


def test_a_rejoin_on_another_node_takes_the_seat_and_ends_the_session() -> None:
    hub = make_hub(Clock(), grace_period=30)
    sink, alice = joined(hub, "r", "alice")
    hub.detach(alice, clean=False)
    assert hub.give_up_seat(alice.id, "r", "alice")
    assert alice.ended and "alice" not in hub.rooms["r"].members


def test_a_local_rejoin_takes_a_remote_holders_seat_as_a_rejoin() -> None:
    hub = make_hub(Clock())
    router = Recorder(hub)
    hub.use_router(router)
    hub.seat_remote("r", "bob", "sb", "other", "Bob", create=True)
    sink, bob = joined(hub, "r", "bob")
    assert hub.rooms["r"].members["bob"].session is bob and "sb" not in hub.remote


def test_release_hands_the_session_over_its_seats_become_stubs() -> None:
    hub = make_hub(Clock())
    ended: list[str] = []

    class Obs:
        def __getattr__(self, name: str) -> Any:
            return lambda *a: ended.append(a[1]) if name == "session_ended" else None

    hub.add_observer(Obs())  # type: ignore[arg-type]
    sink, alice = joined(hub, "r", "alice")
    _, bob = joined(hub, "r", "bob")
    bob_frames = len(hub.sessions[bob.id].sink.frames)  # type: ignore[union-attr]
    assert hub.release(alice.id, "other") == ["r"]
    assert sink.closed is not None and sink.closed[0] == 4009
    stub = hub.rooms["r"].members["alice"].session
    assert stub is hub.remote[alice.id] and stub.node == "other"
    assert ended == ["moved"] and alice.id not in hub.sessions
    assert len(hub.sessions[bob.id].sink.frames) == bob_frames  # bob saw nothing  # type: ignore[union-attr]


def test_adopt_bounds_the_buffer_and_remembers_acknowledged_ids() -> None:
    hub = make_hub(Clock(), resume_buffer_messages=3)
    buffer = [(1, b'{"type":"ack","id":"m1"}')] + [
        (n, b'{"type":"message","data":%d}' % n) for n in range(2, 6)]
    s = hub.adopt("old", user_id="alice", user_fixed=True, display_name="Alice", claims=None,
                  seq=5, buffer=buffer)
    assert [n for n, _ in s.buffered()] == [3, 4, 5] and "m1" in s.seen_ids
    assert "old" not in hub.sessions and s.connected is False
    hub.seat_remote("r", "bob", "sb", "other", "Bob", create=True)
    assert hub.seat_adopted(s, "r")
    hub.open_adopted(s)
    assert hub.sessions["old"] is s and hub.rooms["r"].members["alice"].session is s
    sink = FakeSink()
    hub.attach(s, sink, 3)
    assert sink.types() == ["message", "message", "resumed"]
