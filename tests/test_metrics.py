"""/metrics after a scripted session: every count exact."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import aiohttp
from aioice import stun
from prometheus_client.parser import text_string_to_metric_families

from rtchub.app import RtcHub
from tests.conftest import eventually, free_port, joined


async def scrape(app: RtcHub) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with aiohttp.ClientSession() as http, http.get(app.url + "/metrics") as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        text = await r.text()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def by_label(samples: dict[Any, float], name: str, label: str) -> dict[str, float]:
    return {dict(k[1])[label]: v for k, v in samples.items() if k[0] == name and v}


def value(samples: dict[Any, float], name: str) -> float:
    return samples[(name, ())]


async def test_counts_after_a_scripted_session(make_server: Any) -> None:
    app = await make_server()
    before = await scrape(app)
    assert value(before, "rtchub_rooms") == 0
    assert by_label(before, "rtchub_messages_received_total", "type") == {}

    a = await joined(app, "room", "alice")
    b = await joined(app, "room", "bob")
    await a.expect("user-joined")
    mid = await scrape(app)
    assert by_label(mid, "rtchub_connections", "transport") == {"websocket": 2}
    assert value(mid, "rtchub_rooms") == 1 and value(mid, "rtchub_room_members") == 2

    await b.send({"type": "offer", "roomId": "room", "to": "alice", "sdp": "o"})
    await a.expect("offer")
    await a.send({"type": "answer", "roomId": "room", "to": "bob", "sdp": "a"})
    await b.expect("answer")
    for i in range(2):
        await b.send({"type": "candidate", "roomId": "room", "to": "alice", "candidate": str(i)})
        await a.expect("candidate")
    await a.send({"type": "message", "roomId": "room", "data": "hello"})
    await b.expect("message")
    await b.send({"type": "signal", "roomId": "room", "to": "ghost", "data": 1})
    assert (await b.expect("error"))["code"] == "peer-not-found"
    await b.send({"type": "leave", "roomId": "room"})
    await a.expect("user-left")
    await b.close()
    await a.close()
    await eventually(lambda: not app.hub.sessions)

    m = await scrape(app)
    assert by_label(m, "rtchub_messages_received_total", "type") == {
        "join": 2, "offer": 1, "answer": 1, "candidate": 2, "message": 1, "signal": 1, "leave": 1}
    assert by_label(m, "rtchub_messages_sent_total", "type") == {
        "welcome": 2, "room-info": 2, "user-joined": 1, "offer": 1, "answer": 1, "candidate": 2,
        "message": 1, "error": 1, "user-left": 1}
    assert by_label(m, "rtchub_errors_total", "code") == {"peer-not-found": 1}
    assert by_label(m, "rtchub_connections_opened_total", "transport") == {"websocket": 2}
    assert by_label(m, "rtchub_connections", "transport") == {}
    assert by_label(m, "rtchub_members_left_total", "reason") == {"left": 2}
    assert by_label(m, "rtchub_sessions_ended_total", "reason") == {"left": 2}
    assert value(m, "rtchub_rooms_created_total") == 1
    assert value(m, "rtchub_joins_total") == 2
    assert value(m, "rtchub_rooms") == 0 and value(m, "rtchub_room_members") == 0
    assert value(m, "rtchub_sessions") == 0
    # offer, answer, 2 candidates, message, and the refused signal were timed
    assert value(m, "rtchub_relay_latency_seconds_count") == 6
    assert m[("rtchub_relay_latency_seconds_bucket", (("le", "+Inf"),))] == 6
    assert value(m, "rtchub_relay_latency_seconds_sum") > 0
    assert value(m, "rtchub_broker_published_total") == 0
    assert ("process_cpu_seconds_total", ()) in m


async def test_broker_and_webhook_and_stun_families(make_server: Any) -> None:
    port = free_port(socket.SOCK_DGRAM)
    app = await make_server(stun_port=port, webhook_url=["http://127.0.0.1:9/never"])
    app.metrics.broker_published(3)
    app.metrics.broker_received()
    app.metrics.broker_lag(0.002)
    app.metrics.broker_lag(0.3)

    loop = asyncio.get_running_loop()
    got: asyncio.Future[bytes] = loop.create_future()

    class Proto(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            if not got.done():
                got.set_result(data)

    transport, _ = await loop.create_datagram_endpoint(Proto, remote_addr=("127.0.0.1", port))
    try:
        req = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
        transport.sendto(bytes(req))
        reply = stun.parse_message(await asyncio.wait_for(got, 5))
        assert reply.message_class == stun.Class.RESPONSE
    finally:
        transport.close()

    m = await scrape(app)
    assert value(m, "rtchub_broker_published_total") == 3
    assert value(m, "rtchub_broker_received_total") == 1
    assert value(m, "rtchub_broker_lag_seconds_count") == 2
    assert m[("rtchub_broker_lag_seconds_bucket", (("le", "0.0025"),))] == 1
    assert by_label(m, "rtchub_stun_requests_total", "outcome") == {"success": 1}
    assert value(m, "rtchub_stun_datagrams_total") == 1
    assert value(m, "rtchub_webhook_failures_total") == 0
    assert value(m, "rtchub_webhook_queue") == 0


async def test_each_server_has_its_own_registry(make_server: Any) -> None:
    one = await make_server()
    two = await make_server()
    c = await joined(one, "only-here", "alice")
    assert value(await scrape(one), "rtchub_rooms") == 1
    assert value(await scrape(two), "rtchub_rooms") == 0
    await c.close()


async def test_broker_counters_across_two_nodes(make_server: Any) -> None:
    """Two nodes on one in-process broker: the relay crosses it, and /metrics says so."""
    broker = f"memory://metrics-{free_port()}"
    one = await make_server(broker=broker, node_id="m-one")
    two = await make_server(broker=broker, node_id="m-two")
    for app in (one, two):
        await eventually(lambda app=app: app.cluster.ready)
    a = await joined(one, "cross", "alice")
    b = await joined(two, "cross", "bob")
    await a.expect("user-joined")
    await b.send({"type": "offer", "roomId": "cross", "to": "alice", "sdp": "x"})
    assert (await a.expect("offer"))["from"] == "bob"
    m1, m2 = await scrape(one), await scrape(two)
    assert value(m1, "rtchub_broker_ready") == 1 and value(m2, "rtchub_broker_ready") == 1
    assert value(m2, "rtchub_broker_published_total") >= 1
    assert value(m1, "rtchub_broker_received_total") >= 1
    assert value(m1, "rtchub_broker_published_total") == one.cluster.stats["published"]
    await a.close()
    await b.close()
