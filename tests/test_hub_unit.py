"""Unit tests of the I/O-free core: fake sinks, a fake clock, no sockets."""

from __future__ import annotations

from typing import Any

import pytest

from rtchub.core.hub import Hub
from rtchub.core.outgoing import Outgoing
from rtchub.core.resume import Identity
from rtchub.core.session import TRANSITIONS, IllegalTransition, Session, State
from rtchub.protocol.codec import decode_json, json_frame
from rtchub.protocol.errors import ErrorCode
from rtchub.settings import Settings


class FakeSink:
    transport_name = "fake"
    resume_hint = None

    def __init__(self) -> None:
        self.session: Session | None = None
        self.frames: list[dict[str, Any]] = []
        self.closed: tuple[int, str] | None = None

    def deliver(self, seq: int, out: Outgoing) -> None:
        self.frames.append(decode_json(json_frame(seq, out.json)))

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def types(self) -> list[str]:
        return [f["type"] for f in self.frames]

    def last(self) -> dict[str, Any]:
        return self.frames[-1]


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_hub(clock: Clock, **kw: Any) -> Hub:
    return Hub(Settings(**kw), clock=clock)


def connect(hub: Hub) -> tuple[FakeSink, Session]:
    sink = FakeSink()
    session = hub.open(sink)
    return sink, session


def joined(hub: Hub, room: str, user: str) -> tuple[FakeSink, Session]:
    sink, session = connect(hub)
    hub.receive(session, {"type": "join", "roomId": room, "userId": user})
    assert sink.last()["type"] == "room-info", sink.frames
    return sink, session


def test_welcome_has_seq_zero_and_session_id(clock: Clock) -> None:
    hub = make_hub(clock)
    sink, session = connect(hub)
    assert sink.frames == [{"seq": 0, "type": "welcome", "sessionId": session.id,
                            "heartbeat": 20.0, "server": sink.frames[0]["server"]}]


def test_seq_increments_per_session(clock: Clock) -> None:
    hub = make_hub(clock)
    a, sa = joined(hub, "r", "alice")
    b, sb = joined(hub, "r", "bob")
    for i in range(3):
        hub.receive(sa, {"type": "signal", "roomId": "r", "to": "bob", "data": i})
    assert [f["seq"] for f in b.frames] == list(range(len(b.frames)))
    assert [f["seq"] for f in a.frames] == list(range(len(a.frames)))


def test_relay_sets_from_and_strips_spoofed_fields(clock: Clock) -> None:
    hub = make_hub(clock)
    a, sa = joined(hub, "r", "alice")
    b, sb = joined(hub, "r", "bob")
    hub.receive(sa, {"type": "offer", "roomId": "r", "to": "bob", "sdp": "v=0",
                     "from": "mallory", "seq": 999, "id": 7, "extra": {"x": 1}})
    got = b.last()
    assert got["from"] == "alice" and got["sdp"] == "v=0" and got["extra"] == {"x": 1}
    assert got["seq"] != 999 and "id" not in got
    assert a.last() == {"seq": a.last()["seq"], "type": "ack", "id": 7}


def test_message_broadcast_and_echo(clock: Clock) -> None:
    hub = make_hub(clock)
    a, sa = joined(hub, "r", "alice")
    b, _ = joined(hub, "r", "bob")
    c, _ = joined(hub, "r", "carol")
    n_a = len(a.frames)
    hub.receive(sa, {"type": "message", "roomId": "r", "data": "hi"})
    assert b.last()["data"] == "hi" and c.last()["data"] == "hi"
    assert len(a.frames) == n_a
    hub.receive(sa, {"type": "message", "roomId": "r", "content": "echoed", "echo": True})
    assert a.last()["content"] == "echoed" and a.last()["from"] == "alice"
    hub.receive(sa, {"type": "message", "roomId": "r", "data": "dm", "to": "carol"})
    assert c.last()["data"] == "dm" and b.last()["content"] == "echoed"


@pytest.mark.parametrize("msg, code", [
    ({"type": "offer", "roomId": "r", "to": "bob", "sdp": "x"}, "not-in-room"),
    ({"type": "nope"}, "unknown-type"),
    ({"roomId": "r"}, "invalid-message"),
    ({"type": "join", "roomId": "bad room!"}, "invalid-message"),
    ({"type": "join", "roomId": "x" * 65}, "invalid-message"),
    ({"type": "join", "roomId": "r", "displayName": 5}, "invalid-message"),
    ({"type": "leave", "roomId": "r"}, "not-in-room"),
    ({"type": "join", "roomId": "r", "id": {"x": 1}}, "invalid-message"),
    ({"type": "resume", "sessionId": "nope", "lastSeq": 0}, "session-expired"),
    ({"type": "resume", "sessionId": 5}, "invalid-message"),
])
def test_errors(clock: Clock, msg: dict[str, Any], code: str) -> None:
    hub = make_hub(clock)
    sink, session = connect(hub)
    hub.receive(session, msg)
    assert sink.last()["type"] == "error" and sink.last()["code"] == code


def test_error_carries_id(clock: Clock) -> None:
    hub = make_hub(clock)
    sink, session = connect(hub)
    hub.receive(session, {"type": "leave", "roomId": "r", "id": "abc"})
    assert sink.last()["id"] == "abc" and sink.last()["code"] == "not-in-room"


def test_peer_not_found_and_payload_checks(clock: Clock) -> None:
    hub = make_hub(clock)
    a, sa = joined(hub, "r", "alice")
    hub.receive(sa, {"type": "offer", "roomId": "r", "to": "ghost", "sdp": "x"})
    assert a.last()["code"] == "peer-not-found"
    joined(hub, "r", "bob")
    hub.receive(sa, {"type": "offer", "roomId": "r", "to": "bob"})
    assert a.last()["code"] == "invalid-message"
    hub.receive(sa, {"type": "candidate", "roomId": "r", "to": "bob"})
    assert a.last()["code"] == "invalid-message"
    hub.receive(sa, {"type": "candidate", "roomId": "r", "to": "bob", "candidate": None, "id": 9})
    assert a.last()["type"] == "ack" and a.last()["id"] == 9


def test_room_full_and_user_id_taken(clock: Clock) -> None:
    hub = make_hub(clock, max_room_members=2)
    joined(hub, "r", "alice")
    joined(hub, "r", "bob")
    sink, s = connect(hub)
    hub.receive(s, {"type": "join", "roomId": "r", "userId": "carol"})
    assert sink.last()["code"] == "room-full"
    hub.receive(s, {"type": "join", "roomId": "r", "userId": "alice"})
    assert sink.last()["code"] == "user-id-taken"


def test_room_caps_replace_the_member_limit_for_their_room(clock: Clock) -> None:
    hub = make_hub(clock, max_room_members=2)
    hub.room_caps["big"] = 3
    for user in ("a", "b", "c"):
        joined(hub, "big", user)
    sink, s = connect(hub)
    hub.receive(s, {"type": "join", "roomId": "big", "userId": "d"})
    assert sink.last()["code"] == "room-full" and "(3)" in sink.last()["message"]
    joined(hub, "small", "a2")
    joined(hub, "small", "b2")
    hub.receive(s, {"type": "join", "roomId": "small", "userId": "c2"})
    assert sink.last()["code"] == "room-full" and "(2)" in sink.last()["message"]


def test_leave_and_clean_close_give_user_left(clock: Clock) -> None:
    hub = make_hub(clock)
    a, sa = joined(hub, "r", "alice")
    b, sb = joined(hub, "r", "bob")
    hub.receive(sb, {"type": "leave", "roomId": "r"})
    assert a.last() == {"seq": a.last()["seq"], "type": "user-left", "roomId": "r",
                        "userId": "bob", "reason": "left"}
    hub.receive(sb, {"type": "join", "roomId": "r"})
    hub.detach(sb, clean=True)
    assert a.last()["type"] == "user-left" and a.last()["reason"] == "left"
    assert "r" in hub.rooms
    hub.detach(sa, clean=True)
    assert "r" not in hub.rooms and not hub.sessions


def test_grace_period_then_disconnected_once(clock: Clock) -> None:
    hub = make_hub(clock, grace_period=30)
    a, sa = joined(hub, "r", "alice")
    b, sb = joined(hub, "r", "bob")
    hub.detach(sb, clean=False)
    clock.t += 29
    hub.tick()
    assert a.last()["type"] == "user-joined"
    clock.t += 2
    hub.tick()
    hub.tick()
    left = [f for f in a.frames if f["type"] == "user-left"]
    assert left == [{"seq": left[0]["seq"], "type": "user-left", "roomId": "r",
                     "userId": "bob", "reason": "disconnected"}]


def test_resume_replays_exactly_what_was_missed(clock: Clock) -> None:
    hub = make_hub(clock, grace_period=30)
    a, sa = joined(hub, "r", "alice")
    b, sb = joined(hub, "r", "bob")
    hub.receive(sa, {"type": "signal", "roomId": "r", "to": "bob", "data": 0})
    seen = b.last()["seq"]
    hub.detach(sb, clean=False)
    for i in range(1, 4):
        hub.receive(sa, {"type": "signal", "roomId": "r", "to": "bob", "data": i})
    b2, s2 = connect(hub)
    hub.receive(s2, {"type": "resume", "sessionId": sb.id, "lastSeq": seen, "id": "r1"})
    replay = b2.frames[1:]
    assert [f.get("data") for f in replay[:-1]] == [1, 2, 3]
    assert [f["seq"] for f in replay] == list(range(seen + 1, seen + 5))
    assert replay[-1]["type"] == "resumed" and replay[-1]["id"] == "r1"
    assert s2.id not in hub.sessions and sb.sink is b2
    assert not [f for f in a.frames if f["type"] == "user-left"]
    hub.receive(sa, {"type": "signal", "roomId": "r", "to": "bob", "data": 4})
    assert b2.last()["data"] == 4


def test_second_resume_closes_older_transport_4009(clock: Clock) -> None:
    hub = make_hub(clock)
    b, sb = joined(hub, "r", "bob")
    b2, s2 = connect(hub)
    hub.receive(s2, {"type": "resume", "sessionId": sb.id, "lastSeq": sb.seq})
    assert b.closed is not None and b.closed[0] == 4009
    assert sb.sink is b2


def test_resume_after_overflow_is_session_expired(clock: Clock) -> None:
    hub = make_hub(clock, resume_buffer_messages=5)
    a, sa = joined(hub, "r", "alice")
    b, sb = joined(hub, "r", "bob")
    last = sb.seq
    hub.detach(sb, clean=False)
    for i in range(6):
        hub.receive(sa, {"type": "signal", "roomId": "r", "to": "bob", "data": i})
    b2, s2 = connect(hub)
    hub.receive(s2, {"type": "resume", "sessionId": sb.id, "lastSeq": last})
    assert b2.last()["code"] == "session-expired"
    assert not [f for f in b2.frames if f.get("type") == "signal"]


def test_buffer_bytes_bound(clock: Clock) -> None:
    hub = make_hub(clock, resume_buffer_bytes=1000)
    a, sa = joined(hub, "r", "alice")
    b, sb = joined(hub, "r", "bob")
    for _ in range(20):
        hub.receive(sa, {"type": "signal", "roomId": "r", "to": "bob", "data": "x" * 100})
    assert sb.buffer_bytes <= 1000 and len(sb.buffer) < 20


def test_duplicate_ids_are_acked_not_redelivered(clock: Clock) -> None:
    hub = make_hub(clock)
    a, sa = joined(hub, "r", "alice")
    b, sb = joined(hub, "r", "bob")
    msg = {"type": "signal", "roomId": "r", "to": "bob", "data": 1, "id": 42}
    hub.receive(sa, dict(msg))
    hub.receive(sa, dict(msg))
    assert [f for f in b.frames if f["type"] == "signal"] == [b.frames[-1]]
    assert [f["type"] for f in a.frames[-2:]] == ["ack", "ack"]
    assert a.last()["duplicate"] is True


def test_tutorial_rejoin_takes_over_a_dropped_holder(clock: Clock) -> None:
    hub = make_hub(clock, grace_period=30)
    a, sa = joined(hub, "r", "alice")
    b, sb = joined(hub, "r", "bob")
    hub.detach(sb, clean=False)
    b2, sb2 = joined(hub, "r", "bob")
    rejoin = a.last()
    assert rejoin["type"] == "user-joined" and rejoin["rejoined"] is True
    clock.t += 60
    hub.tick()
    assert not [f for f in a.frames if f["type"] == "user-left"]
    hub.receive(sa, {"type": "signal", "roomId": "r", "to": "bob", "data": "x"})
    assert b2.last()["data"] == "x"


def test_connected_holder_keeps_user_id(clock: Clock) -> None:
    hub = make_hub(clock)
    joined(hub, "r", "bob")
    sink, s = connect(hub)
    hub.receive(s, {"type": "join", "roomId": "r", "userId": "bob"})
    assert sink.last()["code"] == "user-id-taken"


def test_rate_limit_then_policy_close(clock: Clock) -> None:
    hub = make_hub(clock, max_msg_rate=10, max_msg_burst=5, abuse_strikes=3)
    sink, s = connect(hub)
    for _ in range(5):
        hub.receive(s, {"type": "ping"})
    assert sink.types().count("pong") == 5
    hub.receive(s, {"type": "ping", "id": 1})
    assert sink.last() == {"seq": sink.last()["seq"], "type": "error", "code": "rate-limited",
                           "message": sink.last()["message"], "id": 1}
    clock.t += 0.1  # one token back
    hub.receive(s, {"type": "ping"})
    assert sink.last()["type"] == "pong"
    for _ in range(3):
        hub.receive(s, {"type": "ping"})
    assert sink.closed is not None and sink.closed[0] == 1008


def test_rooms_per_connection_limit(clock: Clock) -> None:
    hub = make_hub(clock, max_rooms_per_connection=2, max_joins_per_second=0)
    sink, s = connect(hub)
    for room in ("a", "b", "c"):
        hub.receive(s, {"type": "join", "roomId": room, "userId": "u"})
    assert sink.last()["code"] == "forbidden"


def test_ping_pong_keeps_timestamp(clock: Clock) -> None:
    hub = make_hub(clock)
    sink, s = connect(hub)
    hub.receive(s, {"type": "ping", "timestamp": 123.5})
    assert sink.last()["type"] == "pong" and sink.last()["timestamp"] == 123.5


def test_server_assigns_user_id_and_keeps_it(clock: Clock) -> None:
    hub = make_hub(clock)
    sink, s = connect(hub)
    hub.receive(s, {"type": "join", "roomId": "a"})
    uid = s.user_id
    assert uid and uid.startswith("u-")
    hub.receive(s, {"type": "join", "roomId": "b", "userId": "other"})
    assert sink.last()["code"] == "invalid-message"


def test_json_frame_is_valid_json() -> None:
    out = Outgoing({"type": "x", "a": [1, 2]})
    assert decode_json(json_frame(7, out.json)) == {"seq": 7, "type": "x", "a": [1, 2]}


def test_relayed_outgoing_reads_type_from_the_head_and_decodes_on_demand() -> None:
    body = b'{"type":"candidate","roomId":"r","from":"a","data":{"x":"\\"q\\""}}'
    out = Outgoing.relayed(body)
    assert out.type == "candidate" and out.json is body
    assert out.msg == decode_json(body)  # decoded on first read, then kept
    assert out.msg is out.msg
    # Another key order still works (full decode at once).
    other = Outgoing.relayed(b'{"roomId":"r","type":"signal"}')
    assert other.type == "signal" and other.msg == {"roomId": "r", "type": "signal"}
    # Sent like any other: numbered, buffered and counted by type.
    hub = Hub(Settings())
    sink = FakeSink()
    session = hub.open(sink)
    hub.send(session, Outgoing.relayed(body))
    assert sink.last()["type"] == "candidate" and sink.last()["seq"] == 1
    assert hub.sent["candidate"] == 1


def test_session_ids_are_random_url_safe_and_fresh_after_the_pool_refills() -> None:
    from rtchub.core import ids

    made = [ids.session_id() for _ in range(2000)]  # crosses several 4 KiB draws
    assert len(set(made)) == len(made)
    assert all(len(s) == 16 and s.replace("-", "").replace("_", "").isalnum() for s in made)
    # What a session gets.
    hub = Hub(Settings())
    a, b = hub.open(FakeSink()), hub.open(FakeSink())
    assert a.id != b.id and len(a.id) == 16


def test_all_resume_buffers_together_stay_within_max_buffered_bytes(clock: Clock) -> None:
    """Issue 13 item 6: many sessions that never read no longer add up without
    bound; each keeps a fair share, and a resume past it is refused, never gapped."""
    budget = 2 * 1024 * 1024
    hub = make_hub(clock, max_buffered_bytes=budget, max_msg_rate=0)
    members = [joined(hub, "r", f"u{i}") for i in range(50)]
    blob = "x" * 4000
    for n in range(300):
        hub.publish("r", {"type": "message", "roomId": "r", "data": {"n": n, "b": blob}})
        if n % 50 == 49:
            clock.t += 1
            hub.tick()
    held = sum(s.buffer_bytes for _, s in members)
    # Without the budget: 50 sessions x 512 KiB. With it: the budget, plus at
    # most one message per session sent since the last sweep trimmed them.
    assert held <= budget + 50 * 4100, held
    assert hub.buffered <= budget
    _, session = members[0]
    assert not hub.can_replay(session, 1)  # trimmed: a resume from seq 1 is refused
    assert hub.can_replay(session, session.seq - 1)
    assert hub.released > 0
    # The budget frees up: once the sessions end, the full per-session bound is back.
    for _, s in members[1:]:
        hub.end(s, "left")
    clock.t += 1
    hub.tick()
    assert hub.buffer_cap == hub.settings.resume_buffer_bytes


def test_relayed_size_is_counted_as_encoded(clock: Clock) -> None:
    """Issue 13 item 6: 20 KB of control characters (a 20 KB MessagePack frame)
    is 120 KB of JSON once escaped: refused, not stored 6x larger for every member."""
    hub = make_hub(clock)
    a, sa = joined(hub, "r", "a")
    b, _ = joined(hub, "r", "b")
    before = len(b.frames)
    hub.receive(sa, {"type": "message", "roomId": "r", "id": 1, "data": "\x01" * 20_000})
    assert len(b.frames) == before
    err = a.frames[-1]
    assert err["type"] == "error" and err["code"] == "invalid-message" and err["id"] == 1
    # The same bytes as plain text pass.
    hub.receive(sa, {"type": "message", "roomId": "r", "id": 2, "data": "x" * 20_000})
    assert b.frames[-1]["data"] == "x" * 20_000
# ------------------------------------------------------------ session states
def test_session_states_follow_the_transport(clock: Clock) -> None:
    hub = make_hub(clock, grace_period=30)
    sink, session = connect(hub)
    assert session.state is State.ATTACHED and session.sink is sink and session.detached_at is None
    hub.detach(session, clean=False)
    assert session.state is State.DETACHED and session.sink is None
    assert session.detached_at == clock.t
    clock.t += 10
    hub.detach(session, clean=False)  # a second drop does not restart the grace period
    assert session.detached_at == clock.t - 10
    sink2, s2 = connect(hub)
    hub.receive(s2, {"type": "resume", "sessionId": session.id, "lastSeq": 0})
    assert session.state is State.ATTACHED and session.sink is sink2 and s2.state is State.ENDED
    hub.detach(session, clean=True)
    assert session.state is State.ENDED and session.sink is None and session.ended
    hub.detach(session, clean=False)  # ended stays ended
    hub.end(session, "again")
    assert session.state is State.ENDED


def test_grace_period_runs_from_the_detach(clock: Clock) -> None:
    hub = make_hub(clock, grace_period=30)
    _, session = connect(hub)
    clock.t += 100  # attached sessions never expire
    hub.tick()
    assert session.state is State.ATTACHED
    hub.detach(session, clean=False)
    clock.t += 29
    hub.tick()
    assert session.state is State.DETACHED
    clock.t += 1
    hub.tick()
    assert session.state is State.ENDED and session.id not in hub.sessions


def test_illegal_transitions_raise() -> None:
    session = Session("s1", FakeSink(), 0.0)
    session.detach(1.0, "disconnected")
    with pytest.raises(IllegalTransition):
        session.detach(2.0, "disconnected")  # DETACHED -> DETACHED
    session.end()
    for move in (lambda: session.attach(FakeSink()), lambda: session.detach(3.0, "x"),
                 session.end):
        with pytest.raises(IllegalTransition):
            move()
    assert session.state is State.ENDED and session.sink is None
    assert all(State.ENDED in TRANSITIONS[s] for s in (State.ATTACHED, State.DETACHED))
    assert not TRANSITIONS[State.ENDED]


# ------------------------------------------------------ one resume decision
def auth_hub(clock: Clock) -> Hub:
    """A hub with auth on: a fake ``authenticate`` that trusts ``token`` as the sub."""
    hub = make_hub(clock, grace_period=30)

    def authenticate(session: Session, tok: str) -> None:
        session.user_id, session.user_fixed, session.claims = tok, True, {"sub": tok, "exp": 9e9}

    hub.authenticate = authenticate
    return hub


def test_resume_decision_with_auth(clock: Clock) -> None:
    hub = auth_hub(clock)
    _, alice = connect(hub)
    hub.receive(alice, {"type": "auth", "token": "alice"})
    _, never = connect(hub)  # waiting for its ``auth`` message
    hub.detach(alice, clean=False)
    as_alice = Identity("alice", {"sub": "alice", "exp": 9e10})
    cases = [
        (alice.id, None, ErrorCode.UNAUTHORIZED),
        (alice.id, Identity("mallory", {"sub": "mallory"}), ErrorCode.FORBIDDEN),
        (never.id, as_alice, ErrorCode.FORBIDDEN),  # issue 13: never authenticated
        ("nope", as_alice, ErrorCode.SESSION_EXPIRED),
    ]
    for sid, identity, code in cases:
        verdict = hub.resume_decision(sid, 0, identity)
        assert (verdict.ok, verdict.code, verdict.session) == (False, code, None), (sid, identity)
    assert hub.resume_decision(alice.id, alice.seq + 1, as_alice).code == ErrorCode.SESSION_EXPIRED
    verdict = hub.resume_decision(alice.id, 0, as_alice)
    assert verdict.ok and verdict.session is alice
    sink = FakeSink()
    hub.resume(verdict, sink, as_alice)
    # The identity and the claims are the token's from now on.
    assert alice.sink is sink and alice.claims is as_alice.claims and alice.user_fixed
    assert sink.last()["type"] == "resumed"


def test_unauthenticated_session_is_not_resumed_by_a_token(clock: Clock) -> None:
    """Issue 13 item 1 at the core: the resume fails and the join keeps the token's identity."""
    hub = auth_hub(clock)
    _, victim = connect(hub)
    sink, mallory = connect(hub)
    hub.receive(mallory, {"type": "auth", "token": "mallory"})
    hub.receive(mallory, {"type": "resume", "sessionId": victim.id, "lastSeq": 0, "id": 1})
    assert sink.last()["code"] == "forbidden" and mallory.sink is sink
    hub.receive(mallory, {"type": "join", "roomId": "r", "userId": "ceo", "id": 2})
    assert sink.last()["code"] == "forbidden"
    assert "r" not in hub.rooms and victim.claims is None


def test_polling_sink_refuses_a_resume_message(clock: Clock) -> None:
    hub = make_hub(clock, grace_period=30)
    _, old = connect(hub)
    hub.detach(old, clean=False)
    sink = FakeSink()
    sink.resume_hint = "resume by polling"  # type: ignore[assignment]
    session = hub.open(sink)
    hub.receive(session, {"type": "resume", "sessionId": old.id, "lastSeq": 0, "id": 3})
    assert sink.last() == {"seq": 1, "type": "error", "code": "invalid-message",
                           "message": "resume by polling", "id": 3}
    assert old.state is State.DETACHED


def test_a_room_bigger_than_max_room_members_shares_one_byte_budget(clock: Clock) -> None:
    """Issue 13 item 5: in a room allowed 100 members (an SFU room, a room cap),
    99 senders may not send a member more than 49 could in an ordinary room."""
    hub = make_hub(clock)
    hub.room_caps["big"] = 100
    members = [joined(hub, "big", f"u{i}") for i in range(100)]
    sink0, _ = members[0]
    before = len(sink0.frames)
    blob = "x" * 60_000
    for _, session in members[1:]:
        hub.receive(session, {"type": "message", "roomId": "big", "data": blob})
    got = sum(len(f.get("data", "")) for f in sink0.frames[before:] if f["type"] == "message")
    budget = 49 * hub.byte_burst
    assert 0 < got <= budget, (got, budget)
    # In an ordinary room nothing changes: every member's one message passes.
    hub2 = make_hub(clock)
    small = [joined(hub2, "r", f"v{i}") for i in range(50)]
    s0, _ = small[0]
    n0 = len(s0.frames)
    for _, session in small[1:]:
        hub2.receive(session, {"type": "message", "roomId": "r", "data": blob})
    assert sum(f["type"] == "message" for f in s0.frames[n0:]) == 49


def test_replay_buffer_keeps_bodies_with_consecutive_seqs() -> None:
    import gc

    s = Session("s1", None, 0.0)
    for n in range(1, 6):
        s.keep(n, b"m%d" % n)
    assert list(s.buffered()) == [(n, b"m%d" % n) for n in range(1, 6)]
    assert list(s.buffered(3)) == [(4, b"m4"), (5, b"m5")]
    assert s.drop_oldest() == 2 and s.first_buffered_seq() == 2 and s.buffer_bytes == 8
    # Nothing the buffer holds per message is tracked by the cyclic GC.
    assert not any(gc.is_tracked(body) for body in s.buffer)
    # A hand-over whose mirror lost messages 6-7: the buffer restarts at 8, so a
    # resume from before 8 is refused instead of replayed with a hole.
    s.keep(8, b"m8")
    assert list(s.buffered()) == [(8, b"m8")] and s.buffer_bytes == 2
    s.seq = 8
    assert s.first_buffered_seq() == 8
