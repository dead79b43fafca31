"""Abuse limits: per-IP connection cap, handshake rate, join and message rates,
and the slow reader (dropped with 1008 while its room keeps flowing).

Assertions are on counts, never on timings (CI machines are slow and noisy).
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import time
from typing import Any

import aiohttp
import orjson
import pytest
from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.frames import Close
from websockets.uri import parse_uri

from tests.conftest import eventually


@pytest.fixture
async def http() -> Any:
    async with aiohttp.ClientSession() as session:
        yield session


async def raw_get(port: int, path: bytes = b"/healthz") -> bytes:
    """One request on a fresh TCP connection; the status line, or b"" if dropped."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return b""
    try:
        writer.write(b"GET " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        data = await asyncio.wait_for(reader.read(), 5)
    except (OSError, asyncio.IncompleteReadError):
        return b""
    finally:
        writer.close()
    return data.split(b"\r\n", 1)[0]


# ---------------------------------------------------------------- per IP
async def test_connection_cap_per_ip(make_server, http):
    app = await make_server(max_connections_per_ip=5)
    sockets = []
    for _ in range(5):
        ws = await http.ws_connect(app.ws_url)
        assert (await ws.receive_json(timeout=5))["type"] == "welcome"
        sockets.append(ws)
    # The sixth connection from this IP is dropped on accept, before any parsing.
    with pytest.raises((aiohttp.ClientError, ConnectionError)):
        ws = await http.ws_connect(app.ws_url)
        await ws.receive_json(timeout=5)
    assert await raw_get(app.port) == b""
    assert len(app.hub.sessions) == 5
    assert app.gatekeeper.limits.refused["connections"] >= 2
    # Capacity comes back when a connection closes.
    await sockets.pop().close()
    await eventually(lambda: len(app.hub.sessions) == 4)
    ws = await http.ws_connect(app.ws_url)
    assert (await ws.receive_json(timeout=5))["type"] == "welcome"
    sockets.append(ws)
    assert app.gatekeeper.limits.connections("127.0.0.1") == 5
    for ws in sockets:
        await ws.close()


async def test_handshake_flood_is_refused(make_server, http):
    rate = 5
    app = await make_server(max_handshakes_per_ip=rate)
    start = time.monotonic()
    answers = await asyncio.gather(*(raw_get(app.port) for _ in range(40)))
    elapsed = time.monotonic() - start
    ok = sum(a.startswith(b"HTTP/1.1 200") for a in answers)
    refused = sum(a.startswith(b"HTTP/1.1 429") for a in answers)
    assert ok + refused == 40, answers
    # Burst of `rate`, then `rate` per second: whatever the machine's speed.
    assert 1 <= ok <= rate + rate * elapsed + 1, (ok, elapsed)
    assert refused >= 40 - (rate + rate * elapsed + 1)
    # A WebSocket client sees the same refusal as an HTTP status.
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        for _ in range(3 * rate):
            ws = await http.ws_connect(app.ws_url)
            await ws.close()
    assert err.value.status == 429
    assert err.value.headers.get("Retry-After") == "1"


async def test_session_handshakes_on_one_keepalive_connection(make_server):
    """Polling sessions can be opened without new TCP connections: counted too."""
    app = await make_server(max_handshakes_per_ip=3)
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as http:
        statuses = []
        for _ in range(12):
            async with http.post(f"{app.url}/poll/open") as resp:
                statuses.append(resp.status)
                await resp.read()
    assert statuses.count(429) >= 12 - 3 - 3, statuses  # burst 3, ~1 s of refill at most
    assert statuses[0] == 200
    assert app.gatekeeper.limits.refused["sessions"] == statuses.count(429)


# ------------------------------------------------------ per connection
async def test_join_rate(make_server, http):
    app = await make_server(max_joins_per_second=2)
    ws = await http.ws_connect(app.ws_url)
    await ws.receive_json(timeout=5)
    for i in range(8):
        await ws.send_json({"type": "join", "roomId": f"room-{i}", "id": i})
    codes = []
    while len(codes) < 8:
        msg = await ws.receive_json(timeout=5)
        if msg["type"] == "ack":
            codes.append("ok")
        elif msg["type"] == "error":
            codes.append(msg["code"])
    assert codes.count("rate-limited") >= 8 - 2 - 2, codes
    assert codes[:2] == ["ok", "ok"]
    await ws.close()


async def test_message_rate_then_abuse_close(make_server, http):
    app = await make_server(max_msg_rate=5, max_msg_burst=5, abuse_strikes=20)
    ws = await http.ws_connect(app.ws_url)
    await ws.receive_json(timeout=5)
    for i in range(200):
        await ws.send_json({"type": "ping", "timestamp": i})
    errors = pongs = 0
    while True:
        msg = await ws.receive(timeout=5)
        if msg.type != aiohttp.WSMsgType.TEXT:
            break
        body = orjson.loads(msg.data)
        errors += body["type"] == "error" and body["code"] == "rate-limited"
        pongs += body["type"] == "pong"
    assert ws.close_code == 1008
    assert 5 <= pongs < 20 and errors >= 20
    # The server waits for the client's Close (RFC 6455 section 7.1.1) before it drops TCP.
    await eventually(lambda: all(s.sink is None for s in app.hub.sessions.values()))


# ------------------------------------------------------------- slow reader
class StalledClient:
    """A WebSocket client that never reads: a tiny receive buffer and no reads.

    Built on websockets' sans-I/O protocol over a non-blocking socket, so no
    library reads behind the test's back; :meth:`drain` reads everything at the end.
    """

    def __init__(self, url: str, deflate: bool) -> None:
        exts = [ClientPerMessageDeflateFactory()] if deflate else None
        self.proto = ClientProtocol(parse_uri(url), extensions=exts, max_size=None)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.setblocking(False)
        self.loop = asyncio.get_running_loop()
        self.messages: list[dict[str, Any]] = []
        self.close: Close | None = None

    async def connect(self, port: int) -> None:
        await self.loop.sock_connect(self.sock, ("127.0.0.1", port))
        self.proto.send_request(self.proto.connect())
        await self._flush()
        while self.proto.handshake_exc is None and not self.messages:
            await self._read_once()  # until the welcome message
        assert self.proto.handshake_exc is None

    async def send(self, msg: dict[str, Any]) -> None:
        self.proto.send_text(orjson.dumps(msg))
        await self._flush()

    async def _flush(self) -> None:
        for data in self.proto.data_to_send():
            if data:
                await self.loop.sock_sendall(self.sock, data)

    async def _read_once(self) -> bool:
        data = await asyncio.wait_for(self.loop.sock_recv(self.sock, 65536), 10)
        if not data:
            self.proto.receive_eof()
        else:
            self.proto.receive_data(data)
        for event in self.proto.events_received():
            if getattr(event, "opcode", None) is not None and event.opcode.name == "TEXT":
                self.messages.append(orjson.loads(event.data))
        if self.proto.close_rcvd is not None:
            self.close = self.proto.close_rcvd
        return bool(data)

    async def drain(self) -> None:
        while self.close is None and await self._read_once():
            pass
        self.sock.close()


@pytest.mark.parametrize("compression", [False, True], ids=["picows", "aiohttp"])
async def test_slow_reader_is_dropped_and_peers_keep_flowing(make_server, http, compression):
    limit = 128 * 1024
    app = await make_server(max_pending_bytes=limit, max_msg_rate=0, compression=compression,
                            grace_period=30)
    compress = 15 if compression else 0
    slow = StalledClient(app.ws_url, deflate=compression)
    await slow.connect(app.port)
    await slow.send({"type": "join", "roomId": "r", "userId": "slow"})
    honest = await http.ws_connect(app.ws_url, compress=compress)
    flooder = await http.ws_connect(app.ws_url, compress=compress)
    for ws, user in ((honest, "honest"), (flooder, "flooder")):
        await ws.send_json({"type": "join", "roomId": "r", "userId": user, "id": "j"})
    await eventually(lambda: len(app.hub.rooms.get("r", {}).members if "r" in app.hub.rooms else {}) == 3)
    slow_session = app.hub.rooms["r"].members["slow"].session
    slow_sink = slow_session.sink

    received: list[int] = []

    async def read_honest() -> None:
        async for msg in honest:
            body = orjson.loads(msg.data)
            if body["type"] == "message":
                received.append(body["data"]["n"])

    reader = asyncio.create_task(read_honest())
    # Fresh random payload per message: permessage-deflate's shared window
    # (RFC 7692 context takeover) would shrink a repeated one to nothing.
    sent = 0
    dropped_at = None
    for _batch in range(400):
        for _ in range(20):
            blob = secrets.token_hex(1500)
            await flooder.send_json({"type": "message", "roomId": "r", "data": {"n": sent, "b": blob}})
            sent += 1
        # "On time", by counts: the honest member has everything sent so far
        # before the next batch goes out, stalled neighbour or not.
        await eventually(lambda n=sent: len(received) == n, timeout=10)
        if slow_sink.closing:
            dropped_at = sent
            break
    assert dropped_at is not None, "the stalled reader was never dropped"
    # The room keeps flowing after the drop too.
    for _ in range(100):
        await flooder.send_json({"type": "message", "roomId": "r", "data": {"n": sent, "b": ""}})
        sent += 1
    await eventually(lambda: len(received) == sent, timeout=10)
    assert received == list(range(sent))
    # The stalled client, reading at last, finds 1008 at the end of what it got.
    await slow.drain()
    assert slow.close is not None and slow.close.code == 1008, slow.close
    got = [m["data"]["n"] for m in slow.messages if m["type"] == "message"]
    assert got == list(range(len(got))) and len(got) < dropped_at
    await eventually(lambda: slow_session.sink is None)
    # Its session stays for resume (it was not the client's fault to be slow).
    assert slow_session.id in app.hub.sessions
    reader.cancel()
    await honest.close()
    await flooder.close()


async def test_reader_that_never_reads_is_cut_off(make_server, http):
    """The 1008 close frame waits behind unsent data; a peer that never reads is
    aborted after a few seconds instead of pinning its buffer forever."""
    app = await make_server(max_pending_bytes=64 * 1024, max_msg_rate=0, grace_period=30)
    slow = StalledClient(app.ws_url, deflate=False)
    await slow.connect(app.port)
    await slow.send({"type": "join", "roomId": "r", "userId": "slow"})
    flooder = await http.ws_connect(app.ws_url)
    await flooder.send_json({"type": "join", "roomId": "r", "userId": "flooder"})
    await eventually(lambda: "r" in app.hub.rooms and len(app.hub.rooms["r"].members) == 2)
    session = app.hub.rooms["r"].members["slow"].session
    sink = session.sink
    sent = 0
    while not sink.closing and sent < 20000:
        await flooder.send_json({"type": "message", "roomId": "r", "data": secrets.token_hex(2000)})
        sent += 1
        if sent % 50 == 0:
            await asyncio.sleep(0.01)
    assert sink.closing
    # Never read: the server lets go of the connection by itself.
    await eventually(lambda: session.sink is None, timeout=15)
    assert sink not in app.liveness.endpoints
    slow.sock.close()
    await flooder.close()
