"""The Python SDK on ``auto`` probes upward again, as the browser SDK does.

A client behind a gate that refuses WebSocket upgrades starts on SSE (or, with
``/sse`` refused as well, on long-polling); a peer
and the client exchange numbered messages without pause; then the gate lets
WebSocket through and the client must move its session there by itself
(``resume`` on the new transport), with every message delivered once and in
order in both directions.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiohttp
import pytest

from rtchub.client import Client
from tests.conftest import eventually

ROOM = "probe"


class WsGate:
    """A TCP proxy in front of a real server that answers WebSocket upgrades with
    503 until :attr:`ws_open` is set, and forwards everything else byte for byte
    (but ``GET /sse`` is refused too with ``no_sse``, to land on polling).

    It looks at the first request head of each connection only, so the client
    under test uses a connector without keep-alive: every request is a new
    connection and no upgrade can slip through on a reused one.
    """

    def __init__(self, upstream_port: int, no_sse: bool = False, mute_ws: bool = False) -> None:
        self.upstream_port = upstream_port
        self.no_sse = no_sse
        #: Let upgrades through but pass nothing after the 101 (no ``welcome``):
        #: a proxy that accepts WebSocket and then breaks it.
        self.mute_ws = mute_ws
        self.ws_open = False
        self.refused = 0
        self.upgrades = 0
        self.writers: set[asyncio.StreamWriter] = set()
        self.server: asyncio.Server | None = None

    async def start(self) -> WsGate:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            upgrade = b"upgrade: websocket" in head.lower()
            if (upgrade and not self.ws_open) or (self.no_sse and head.startswith(b"GET /sse")):
                self.refused += upgrade
                writer.write(b"HTTP/1.1 503 Service Unavailable\r\n"
                             b"Content-Length: 0\r\nConnection: close\r\n\r\n")
                await writer.drain()
                return
            self.upgrades += upgrade
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            self.writers.add(up_writer)
            up_writer.write(head)
            if upgrade and self.mute_ws:
                writer.write(await up_reader.readuntil(b"\r\n\r\n"))  # the 101 only
                await writer.drain()
                await reader.read()  # until the client gives up on it
                return
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        """Copy until EOF, then close the other side too (no half-open connections)."""
        try:
            while chunk := await src.read(65536):
                dst.write(chunk)
                await dst.drain()
        except OSError:
            pass
        finally:
            dst.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in list(self.writers):
            w.close()
        with contextlib.suppress(Exception):
            await self.server.wait_closed()


@pytest.mark.parametrize("fallback", ["sse", "polling"])
async def test_auto_moves_up_to_websocket_without_losing_a_message(make_server: Any,
                                                                   fallback: str) -> None:
    # Without keep-alive every request is a new connection: lift the per-IP
    # handshake limit, which would otherwise answer polls with 429.
    server = await make_server(max_msg_rate=0, max_handshakes_per_ip=0)
    gate = await WsGate(server.port, no_sse=fallback == "polling").start()
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
    client = Client(gate.url, transport="auto", probe_interval=0.3, session=http)
    events: list[dict[str, Any]] = []
    client.on("state", events.append)
    peer = Client(server.url)
    loop = asyncio.get_running_loop()
    tasks: list[asyncio.Task[Any]] = []
    try:
        await client.connect()
        assert client.transport_name == fallback and gate.refused == 1
        sid = client.session_id
        await peer.connect()
        await client.join(ROOM, user_id="c")
        await peer.join(ROOM, user_id="p")
        await client.recv_type("user-joined")

        sent = {"c": 0, "p": 0}
        got: dict[str, list[int]] = {"c": [], "p": []}
        stop = asyncio.Event()

        async def talk(me: Client, name: str, to: str) -> None:
            while not stop.is_set():
                await me.send({"type": "message", "roomId": ROOM, "to": to, "data": sent[name]})
                sent[name] += 1
                await asyncio.sleep(0.005)

        async def listen(me: Client, name: str, other: str) -> None:
            while True:
                msg = await me.recv(timeout=None)
                if msg["type"] == "message":
                    assert msg["from"] == other, msg
                    got[name].append(msg["data"])

        tasks += [loop.create_task(talk(client, "c", "p")), loop.create_task(talk(peer, "p", "c")),
                  loop.create_task(listen(client, "c", "p")), loop.create_task(listen(peer, "p", "c"))]

        # Probes run and are refused while the gate is shut: the client stays put.
        await eventually(lambda: gate.refused >= 3 and len(got["c"]) > 50, timeout=10)
        assert client.transport_name == fallback
        gate.ws_open = True
        # The next probe comes at most 2 * probe_interval later (after a failure).
        await eventually(lambda: client.transport_name == "websocket" and client.state == "resumed",
                         timeout=5)
        assert gate.upgrades == 1
        # Keep talking on WebSocket for a while, then stop and let everything arrive.
        at_switch = {name: len(got[name]) for name in got}
        await eventually(lambda: all(len(got[name]) > at_switch[name] + 50 for name in got),
                         timeout=10)
        stop.set()
        await asyncio.gather(*tasks[:2])
        await eventually(lambda: len(got["c"]) >= sent["p"] and len(got["p"]) >= sent["c"], timeout=10)
        # Exactly once and in order, in both directions, across the switch.
        assert got["c"] == list(range(sent["p"]))
        assert got["p"] == list(range(sent["c"]))
        # The same session, now on WebSocket on the server too; no rejoin happened.
        assert client.session_id == sid
        await eventually(lambda: server.hub.sessions[sid].sink is not None
                         and server.hub.sessions[sid].sink.transport_name == "websocket")
        assert "rejoined" not in client.states and client.states.count("resumed") == 1
        assert [(e["state"], e["transport"]) for e in events] == [
            ("connecting", None), ("connected", fallback), ("resumed", "websocket")]
        # Only the client's session and the peer's remain (the probe's own was replaced).
        await eventually(lambda: set(server.hub.sessions) == {sid, peer.session_id})
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await client.close()
        await peer.close()
        await http.close()
        await gate.stop()



async def test_auto_falls_back_when_websocket_opens_but_says_nothing(make_server: Any) -> None:
    """Handshake accepted, no ``welcome`` within the timeout: ``auto`` goes on to SSE."""
    server = await make_server(max_handshakes_per_ip=0, max_connections_per_ip=0)
    gate = await WsGate(server.port, mute_ws=True).start()
    gate.ws_open = True
    connector = aiohttp.TCPConnector(force_close=True)
    try:
        async with aiohttp.ClientSession(connector=connector) as http:
            client = Client(gate.url, transport="auto", probe_interval=None, session=http)
            t0 = asyncio.get_running_loop().time()
            await client.connect(timeout=15)
            waited = asyncio.get_running_loop().time() - t0
            try:
                assert gate.upgrades == 1 and client.transport_name == "sse"
                assert waited >= 3.5  # it did wait for a welcome on the WebSocket first
                info = await client.join("r", user_id="patient")
                assert info["type"] == "room-info"
                assert server.hub.rooms["r"].members["patient"].session.sink.transport_name == "sse"
            finally:
                await client.close()
    finally:
        await gate.stop()
