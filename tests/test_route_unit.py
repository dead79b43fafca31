"""The ``auto`` media route: the pure policy (rtchub.core.route) and the hub that owns it.

Fake clock, fake sinks, no sockets: the hysteresis is a matter of seconds,
so it is tested by moving the clock, never by waiting.
"""

from __future__ import annotations

from rtchub.core.hub import Hub
from rtchub.core.route import P2P, SFU, AutoRoute, RoutePolicy
from rtchub.settings import Settings
from tests.test_hub_unit import Clock, FakeSink, connect


def test_policy_goes_to_sfu_at_three_at_once_and_back_only_after_the_delay() -> None:
    r = AutoRoute(RoutePolicy(sfu_from=3, p2p_after=10.0))
    assert r.route == P2P
    assert r.update(1, 0.0) is None and r.update(2, 1.0) is None
    assert r.update(3, 2.0) == SFU
    assert r.update(4, 3.0) is None and r.route == SFU
    assert r.update(2, 4.0) is None and r.deadline() == 14.0
    assert r.due(2, 13.9) is None and r.route == SFU
    assert r.due(2, 14.0) == P2P and r.route == P2P and r.deadline() is None
    assert r.due(2, 100.0) is None


def test_policy_hysteresis_a_flapping_member_does_not_flap_the_call() -> None:
    r = AutoRoute(RoutePolicy(sfu_from=3, p2p_after=10.0))
    assert r.update(3, 0.0) == SFU
    t = 0.0
    for _ in range(20):   # a phone reconnecting every 3 s: 3 -> 2 -> 3 -> ...
        t += 3.0
        assert r.update(2, t) is None
        t += 3.0
        assert r.update(3, t) is None
    assert r.route == SFU
    # The timer restarts each time the room drops below three again.
    assert r.update(2, t) is None and r.due(2, t + 9.9) is None and r.due(2, t + 10.0) == P2P


def test_policy_one_member_left_counts_as_below() -> None:
    r = AutoRoute(RoutePolicy(sfu_from=3, p2p_after=0.0))
    assert r.update(3, 0.0) == SFU
    assert r.update(1, 0.0) == P2P


def auto_join(hub: Hub, room: str, user: str, media: str | None = "auto") -> tuple[FakeSink, object]:
    sink, session = connect(hub)
    msg = {"type": "join", "roomId": room, "userId": user}
    if media is not None:
        msg["media"] = media
    hub.receive(session, msg)
    return sink, session


def routes(sink: FakeSink) -> list[str]:
    return [f["route"] for f in sink.frames if f["type"] == "media-route"]


def test_hub_tells_the_room_third_member_moves_it_and_the_tick_moves_it_back() -> None:
    clock = Clock()
    hub = Hub(Settings(auto_p2p_after=5.0), clock=clock)
    a, _ = auto_join(hub, "r", "a")
    b, _ = auto_join(hub, "r", "b")
    info_a = next(f for f in a.frames if f["type"] == "room-info")
    assert info_a["media"] == "auto" and info_a["route"] == P2P
    assert hub.rooms["r"].route == P2P and routes(a) == [] and routes(b) == []
    c, sc = auto_join(hub, "r", "c")
    # The newcomer's room-info already says sfu: it never starts a mesh.
    info_c = next(f for f in c.frames if f["type"] == "room-info")
    assert info_c["route"] == SFU and routes(c) == []
    assert routes(a) == [SFU] and routes(b) == [SFU]
    # The existing members hear the move before they hear of the newcomer.
    types = a.types()
    assert types.index("media-route") < max(i for i, t in enumerate(types) if t == "user-joined")
    hub.receive(sc, {"type": "leave", "roomId": "r"})
    assert hub.rooms["r"].route == SFU and routes(a) == [SFU]
    clock.t += 4.9
    hub.tick()
    assert routes(a) == [SFU]
    clock.t += 0.2
    hub.tick()
    assert routes(a) == [SFU, P2P] and routes(b) == [SFU, P2P]
    assert hub.rooms["r"].route == P2P
    assert not any(f["type"] == "error" for s in (a, b, c) for f in s.frames)


def test_hub_rejoin_within_the_delay_keeps_the_sfu() -> None:
    clock = Clock()
    hub = Hub(Settings(auto_p2p_after=5.0), clock=clock)
    a, _ = auto_join(hub, "r", "a")
    auto_join(hub, "r", "b")
    _, sc = auto_join(hub, "r", "c")
    hub.receive(sc, {"type": "leave", "roomId": "r"})
    clock.t += 3.0
    hub.tick()
    auto_join(hub, "r", "c2")
    clock.t += 10.0
    hub.tick()
    assert routes(a) == [SFU] and hub.rooms["r"].route == SFU


def test_hub_client_that_does_not_follow_routes_gets_explicit_errors() -> None:
    clock = Clock()
    hub = Hub(Settings(auto_p2p_after=5.0), clock=clock)
    auto_join(hub, "r", "old", media=None)   # without --media-mode auto (nor an SFU): mesh
    assert hub.rooms["r"].media == "mesh"
    hub2 = Hub(Settings(media_mode="auto"), clock=clock)
    legacy, sl = auto_join(hub2, "r", "old", media=None)
    assert hub2.rooms["r"].media == "auto"
    a, _ = auto_join(hub2, "r", "a")
    assert not any(f["type"] == "error" for f in legacy.frames)
    c, _ = auto_join(hub2, "r", "c")
    errors = [f for f in legacy.frames if f["type"] == "error"]
    assert [e["code"] for e in errors] == ["wrong-media-mode"]
    assert not any(f["type"] == "error" for f in a.frames + c.frames)
    # Its mesh offers are refused with the same code while the room is on the SFU.
    hub2.receive(sl, {"type": "offer", "roomId": "r", "to": "a", "sdp": "v=0", "id": 3})
    assert legacy.last()["code"] == "wrong-media-mode" and legacy.last()["id"] == 3
    # A fourth that cannot follow is refused at the door, with the reason.
    d, _ = auto_join(hub2, "r", "d", media=None)
    assert d.last()["code"] == "wrong-media-mode"
    assert "d" not in hub2.rooms["r"].members


def test_auto_rooms_have_the_sfu_member_limit() -> None:
    hub = Hub(Settings(media_mode="auto", max_room_members=2, max_sfu_room_members=4), clock=Clock())
    sinks = [auto_join(hub, "r", u)[0] for u in "abcde"]
    assert len(hub.rooms["r"].members) == 4 and sinks[-1].last()["code"] == "room-full"
