"""Codecs and compression: ``rtchub.v1.msgpack`` binary frames next to JSON, permessage-deflate.

MessagePack and JSON clients in one room must see the same messages;
permessage-deflate (RFC 7692) is off by default and, when switched on, served
by the aiohttp WebSocket path for clients that offer it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import msgpack
import pytest

from rtchub.client import Client
from rtchub.transports.ws import PicowsEndpoint
from rtchub.transports.ws_aiohttp import AiohttpEndpoint
from tests.conftest import eventually

PAYLOAD = {
    "sdp": "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\n" + "a=x\r\n" * 200,
    "nested": {"list": [1, -2, 3.5, True, False, None, "ü€😀"], "big": 2**53 - 1},
}


async def mp_recv(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    frame = await ws.receive(timeout=5)
    assert frame.type == aiohttp.WSMsgType.BINARY, frame
    return msgpack.unpackb(frame.data, raw=False)


async def mp_send(ws: aiohttp.ClientWebSocketResponse, msg: dict[str, Any]) -> None:
    await ws.send_bytes(msgpack.packb(msg))


def endpoint_types(server: Any) -> set[type]:
    return {type(ep) for ep in server.liveness.endpoints}


@pytest.mark.parametrize("compression", [False, True])
async def test_msgpack_and_json_clients_understand_each_other(make_server: Any, compression: bool) -> None:
    server = await make_server(compression=compression)
    async with aiohttp.ClientSession() as http:
        mp = await http.ws_connect(server.ws_url, protocols=("rtchub.v1.msgpack",),
                                   compress=15 if compression else 0)
        assert mp.protocol == "rtchub.v1.msgpack"
        welcome = await mp_recv(mp)
        assert welcome["type"] == "welcome" and welcome["seq"] == 0
        js = await http.ws_connect(server.ws_url, protocols=("rtchub.v1.json",))
        assert js.protocol == "rtchub.v1.json"
        assert (await js.receive_json())["type"] == "welcome"
        # Deflate offered and on: the aiohttp path; otherwise picows.
        expected = {PicowsEndpoint, AiohttpEndpoint} if compression else {PicowsEndpoint}
        assert endpoint_types(server) == expected

        await mp_send(mp, {"type": "join", "roomId": "r", "userId": "mp", "id": 1})
        assert (await mp_recv(mp))["type"] == "room-info"
        assert await mp_recv(mp) == {"seq": 2, "type": "ack", "id": 1}
        await js.send_json({"type": "join", "roomId": "r", "userId": "js"})
        assert (await js.receive_json())["users"] == ["mp"]
        joined = await mp_recv(mp)
        assert joined["type"] == "user-joined" and joined["userId"] == "js"

        await mp_send(mp, {"type": "offer", "roomId": "r", "to": "js", **PAYLOAD})
        got = await js.receive_json()
        assert got["type"] == "offer" and got["from"] == "mp"
        assert {k: got[k] for k in PAYLOAD} == PAYLOAD
        await js.send_json({"type": "answer", "roomId": "r", "to": "mp", **PAYLOAD})
        got = await mp_recv(mp)
        assert got["type"] == "answer" and got["from"] == "js"
        assert {k: got[k] for k in PAYLOAD} == PAYLOAD
        await js.send_json({"type": "message", "roomId": "r", "data": {"text": "hi"}})
        got = await mp_recv(mp)
        assert got["data"] == {"text": "hi"} and got["seq"] == joined["seq"] + 2
        await mp.close()
        await js.close()


async def test_bad_msgpack_frames_get_an_error_and_the_connection_stays(server: Any) -> None:
    async with aiohttp.ClientSession() as http:
        mp = await http.ws_connect(server.ws_url, protocols=("rtchub.v1.msgpack",))
        await mp_recv(mp)
        await mp.send_bytes(b"\xc1 not msgpack")
        assert (await mp_recv(mp))["code"] == "invalid-json"
        # bin and ext values have no JSON form: refused, not relayed.
        await mp_send(mp, {"type": "ping", "data": b"\x00\x01"})
        assert (await mp_recv(mp))["code"] == "invalid-json"
        await mp.send_bytes(msgpack.packb({"type": "ping", "x": msgpack.ExtType(5, b"ab")}))
        assert (await mp_recv(mp))["code"] == "invalid-json"
        await mp.send_bytes(msgpack.packb([1, 2]))
        assert (await mp_recv(mp))["code"] == "invalid-message"
        # A text frame on a msgpack connection is read as JSON; answers stay binary.
        await mp.send_str('{"type": "ping", "timestamp": 1}')
        assert (await mp_recv(mp))["type"] == "pong"
        # Bytes that merely look like bin markers inside strings are fine.
        await mp_send(mp, {"type": "ping", "timestamp": "\u00c4\u00c5 \xd4"})
        pong = await mp_recv(mp)
        assert pong == {"seq": pong["seq"], "type": "pong", "timestamp": "\u00c4\u00c5 \xd4"}
        await mp.close()


async def test_published_seq_never_shadows_the_recipients_own(server: Any) -> None:
    async with aiohttp.ClientSession() as http:
        mp = await http.ws_connect(server.ws_url, protocols=("rtchub.v1.msgpack",))
        js = await http.ws_connect(server.ws_url)
        await mp_recv(mp)
        await js.receive_json()
        await mp_send(mp, {"type": "join", "roomId": "r", "userId": "mp"})
        await js.send_json({"type": "join", "roomId": "r", "userId": "js"})
        await mp_recv(mp)
        await js.receive_json()
        await mp_recv(mp)  # user-joined js
        assert server.hub.publish("r", {"type": "message", "seq": 999, "data": "server"}) == 2
        got_mp, got_js = await mp_recv(mp), await js.receive_json()
        assert (got_mp["seq"], got_js["seq"]) == (3, 2)
        assert got_mp["data"] == got_js["data"] == "server"
        await mp.close()
        await js.close()


async def test_permessage_deflate_negotiated_only_when_enabled(make_server: Any) -> None:
    off = await make_server()
    on = await make_server(compression=True)
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(off.ws_url, compress=15)
        assert ws.compress == 0
        assert "Sec-WebSocket-Extensions" not in ws._response.headers  # noqa: SLF001
        assert (await ws.receive_json())["type"] == "welcome"
        await ws.close()

        ws = await http.ws_connect(on.ws_url, compress=15)
        assert ws.compress == 15
        assert "permessage-deflate" in ws._response.headers["Sec-WebSocket-Extensions"]  # noqa: SLF001
        assert (await ws.receive_json())["type"] == "welcome"
        await eventually(lambda: endpoint_types(on) == {AiohttpEndpoint})
        plain = await http.ws_connect(on.ws_url)  # no offer: the fast path, uncompressed
        assert plain.compress == 0
        await plain.receive_json()
        await eventually(lambda: endpoint_types(on) == {AiohttpEndpoint, PicowsEndpoint})
        await ws.send_json({"type": "join", "roomId": "z", "userId": "deflated"})
        assert (await ws.receive_json())["type"] == "room-info"
        await plain.send_json({"type": "join", "roomId": "z", "userId": "plain"})
        assert (await plain.receive_json())["type"] == "room-info"
        await ws.receive_json()  # user-joined plain
        await plain.send_json({"type": "offer", "roomId": "z", "to": "deflated", **PAYLOAD})
        got = await ws.receive_json()
        assert got["sdp"] == PAYLOAD["sdp"] and got["from"] == "plain"
        await ws.send_json({"type": "answer", "roomId": "z", "to": "plain", **PAYLOAD})
        assert (await plain.receive_json())["nested"] == PAYLOAD["nested"]
        await ws.close()
        await plain.close()


async def test_sdk_msgpack_and_json_clients(server: Any) -> None:
    async with Client(server.url, codec="msgpack") as a, Client(server.url) as b:
        await a.join("r", user_id="a")
        await b.join("r", user_id="b")
        await a.send({"type": "signal", "roomId": "r", "to": "b", "data": PAYLOAD})
        got = await b.recv_type("signal")
        assert got["data"] == PAYLOAD and got["from"] == "a"
        await b.send({"type": "message", "roomId": "r", "data": PAYLOAD})
        assert (await a.recv_type("message"))["data"] == PAYLOAD


async def test_idle_deflate_connection_answering_pings_stays_open(make_server: Any) -> None:
    """The aiohttp path must see pongs: an idle, healthy client is not a dead one (4008)."""
    server = await make_server(compression=True, heartbeat=0.3, heartbeat_timeout=1.0)
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(server.ws_url, compress=15, autoping=True)
        assert ws.compress == 15
        assert (await ws.receive_json())["type"] == "welcome"
        with pytest.raises(TimeoutError):
            # Several ping/pong rounds and nothing else. (aiohttp's own receive
            # timeout restarts on every ping it answers: hence wait_for.)
            await asyncio.wait_for(ws.receive(), 3.0)
        assert not ws.closed
        await ws.send_json({"type": "ping", "timestamp": 5})
        assert (await ws.receive_json(timeout=5))["type"] == "pong"
        await ws.close()
