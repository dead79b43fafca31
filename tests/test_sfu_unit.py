"""The SFU's pure parts and its seams with the core, without Janus.

- the hub's extension points it uses (``register``, ``media_policy``,
  ``room_cap``, ``Room.media``), with fake sinks and a fake clock;
- placement and shared maps on both broker engines (memory, and a real
  redis-server started by the fixture): compare-and-set semantics;
- what a server without an SFU answers (coded errors, not silence).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from rtchub.broker.memory import MemoryBroker
from rtchub.broker.redis import RedisBroker
from rtchub.core.hub import Hub
from rtchub.media.hls import RtpInput
from rtchub.protocol.errors import ProtocolError
from rtchub.settings import Settings
from rtchub.sfu.codecs import negotiated, offered, refused, rtp_sdp_lines
from rtchub.sfu.placement import Placed, Placement, SharedState
from rtchub.sfu.service import check_sdp, sdp_sections
from tests.conftest import joined as raw_joined
from tests.redis_fixture import redis_server  # noqa: F401
from tests.test_hub_unit import Clock, connect


def test_hub_register_adds_types_once_and_never_replaces_its_own() -> None:
    hub = Hub(Settings(), clock=Clock())
    seen: list[Any] = []
    hub.register("publish", lambda session, msg, msg_id: seen.append((msg["x"], msg_id)))
    sink, session = connect(hub)
    hub.receive(session, {"type": "publish", "x": 1, "id": 7})
    assert seen == [(1, 7)]
    with pytest.raises(ValueError):
        hub.register("publish", lambda *a: None)
    with pytest.raises(ValueError):
        hub.register("join", lambda *a: None)
    hub.receive(session, {"type": "subscribe"})
    assert sink.last()["code"] == "unknown-type"


def test_room_media_comes_from_policy_and_decides_the_limit() -> None:
    hub = Hub(Settings(max_room_members=2, max_sfu_room_members=3), clock=Clock())
    sinks = []
    for user in ("a", "b", "c"):
        sink, session = connect(hub)
        hub.receive(session, {"type": "join", "roomId": "m", "userId": user})
        sinks.append(sink)
    assert sinks[0].frames[1]["media"] == "mesh"
    assert sinks[2].last()["code"] == "room-full" and "mesh" in sinks[2].last()["message"]
    for user in ("a", "b", "c", "d"):
        sink, session = connect(hub)
        hub.receive(session, {"type": "join", "roomId": "s", "userId": user, "media": "sfu"})
        sinks.append(sink)
    assert hub.rooms["s"].media == "sfu" and len(hub.rooms["s"].members) == 3
    assert sinks[-1].last()["code"] == "room-full"
    sink, session = connect(hub)
    hub.receive(session, {"type": "join", "roomId": "x", "media": "p2p"})
    assert sink.last()["code"] == "invalid-message"
    # A policy decides instead of the join's field (the SFU's: API, token, join, default).
    hub.media_policy = lambda session, req: "sfu"
    sink, session = connect(hub)
    hub.receive(session, {"type": "join", "roomId": "y", "userId": "e", "media": "mesh"})
    assert hub.rooms["y"].media == "sfu" and sink.frames[-1]["media"] == "sfu"


def test_sdp_checks() -> None:
    offer = ("v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
             "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=sendonly\r\n"
             "m=video 0 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=inactive\r\n")
    assert sdp_sections(offer) == [
        {"kind": "audio", "port": "9", "mid": "0", "direction": "sendonly"},
        {"kind": "video", "port": "0", "mid": "1", "direction": "inactive"}]
    assert check_sdp(offer, 1) == offer
    for bad in (None, 5, "", "garbage", "v=0\r\ns=-\r\n", "v=0\r\nm=" + "x" * 70_000):
        with pytest.raises(ProtocolError) as info:
            check_sdp(bad, 1)
        assert info.value.code == "bad-sdp"


def test_codecs_negotiated_offered_refused_and_written_for_ffmpeg() -> None:
    # Janus's answer event to a publisher: one codec per mid; a disabled stream has none.
    streams = [{"type": "audio", "mid": "0", "codec": "opus"}, {"type": "video", "mid": "1", "codec": "h264"},
               {"type": "video", "mid": "2", "disabled": True}, "junk"]
    assert negotiated(streams) == {"0": "opus", "1": "h264"}
    assert negotiated(None) == {}
    offer = ("v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
             "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=sendonly\r\na=rtpmap:111 opus/48000/2\r\n"
             "m=video 9 UDP/TLS/RTP/SAVPF 98 99\r\na=mid:1\r\na=sendonly\r\n"
             "a=rtpmap:98 VP9/90000\r\na=rtpmap:99 rtx/90000\r\n"
             "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:2\r\na=recvonly\r\na=rtpmap:96 VP8/90000\r\n"
             "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:3\r\n")
    assert offered(offer) == [{"kind": "audio", "mid": "0", "codecs": ["opus"]},
                              {"kind": "video", "mid": "1", "codecs": ["vp9"]}]
    assert refused(offer, {"0", "1"}) == []
    assert refused(offer, {"0"}) == ["video (mid 1) offers vp9; rooms take vp8, h264"]
    assert rtp_sdp_lines(96, "h264") == ["a=rtpmap:96 H264/90000", "a=fmtp:96 packetization-mode=1"]
    assert rtp_sdp_lines(96, "VP8") == ["a=rtpmap:96 VP8/90000"]
    assert rtp_sdp_lines(111, "opus") == ["a=rtpmap:111 opus/48000/2"]
    with pytest.raises(ValueError, match="av1"):
        rtp_sdp_lines(96, "av1")
    sdp = RtpInput("x", audio_port=5000, video_port=5002, video_codec="h264").sdp()
    assert "m=video 5002 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=fmtp:96 packetization-mode=1\r\n" in sdp
    assert "m=audio 5000 RTP/AVP 111\r\na=rtpmap:111 opus/48000/2\r\n" in sdp


async def _placement_semantics(broker: Any) -> None:
    placement, shared = Placement(broker), SharedState(broker)
    # Least loaded live server; the same answer for everyone afterwards.
    a = await placement.place("r1", ["ws://a", "ws://b"])
    assert a is not None and a.server == "ws://a" and a.janus_room.startswith("r-")
    assert await placement.place("r1", ["ws://a", "ws://b"]) == a
    b = await placement.place("r2", ["ws://a", "ws://b"])
    assert b is not None and b.server == "ws://b"
    # Two nodes placing one room at once end up on the same placement.
    got = await asyncio.gather(*(placement.place("r3", ["ws://a", "ws://b"]) for _ in range(5)))
    assert len(set(got)) == 1
    # A dead server's rooms are evicted; the next place moves them to a live one.
    assert sorted(await placement.evict("ws://a")) == sorted(
        r for r, p in (("r1", a), ("r3", got[0])) if p.server == "ws://a")
    moved = await placement.place("r1", ["ws://b"])
    assert moved is not None and moved.server == "ws://b" and moved.janus_room != a.janus_room
    assert await placement.place("r9", []) is None
    # release only removes the placement it names.
    await placement.release("r1", Placed("ws://b", "r-other"))
    assert await placement.lookup("r1") == moved
    await placement.release("r1", moved)
    assert await placement.lookup("r1") is None
    # Modes: the first decision stands.
    assert await shared.decide_mode("room", "sfu") == "sfu"
    assert await shared.decide_mode("room", "mesh") == "sfu"
    await shared.put_track("room", "t1", {"u": "alice", "f": "f-1", "m": "0"})
    assert await shared.tracks("room") == {"t1": {"u": "alice", "f": "f-1", "m": "0"}}
    await shared.drop_track("room", "t1")
    assert await shared.tracks("room") == {}


async def test_placement_on_the_memory_broker() -> None:
    await _placement_semantics(MemoryBroker())


async def test_placement_on_the_redis_broker(redis_server: Any) -> None:  # noqa: F811
    broker = RedisBroker(redis_server.url, prefix="rtchub-test-sfu:")
    try:
        await _placement_semantics(broker)
    finally:
        await broker.r.aclose()
        await broker.sub.aclose()


async def test_server_without_sfu_answers_with_codes(make_server: Any) -> None:
    app = await make_server()
    c = await raw_joined(app, "plain", "alice")
    await c.send({"type": "publish", "roomId": "plain", "sdp": "v=0\r\nm=video 9 X 96\r\n", "id": 1})
    assert (await c.expect("error"))["code"] == "wrong-media-mode"
    await c.send({"type": "join", "roomId": "wants-sfu", "media": "sfu", "id": 2})
    err = await c.expect("error")
    assert err["code"] == "sfu-unavailable" and err["id"] == 2
    await c.send({"type": "subscribe", "roomId": "nope", "tracks": ["t-1"], "id": 3})
    assert (await c.expect("error"))["code"] == "not-in-room"
    await c.close()
    with pytest.raises(ValueError):
        await make_server(media_mode="sfu")


async def test_server_without_sfu_auto_is_mesh_and_layers_are_coded(make_server: Any) -> None:
    app = await make_server()
    c = await raw_joined(app, "warmup", "alice")
    await c.send({"type": "join", "roomId": "either", "media": "auto", "id": 0})
    assert (await c.expect("room-info"))["media"] == "mesh"   # auto = "I can do both": no SFU
    await c.expect("ack")
    await c.send({"type": "subscribe-layer", "roomId": "either", "trackId": "t-1", "layer": "h", "id": 1})
    assert (await c.expect("error"))["code"] == "wrong-media-mode"
    await c.send({"type": "unsubscribe", "roomId": "either", "all": True, "id": 2})
    assert (await c.expect("error"))["code"] == "wrong-media-mode"
    await c.close()
    with pytest.raises(ValueError):
        await make_server(media_mode="auto")
