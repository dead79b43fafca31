"""Hostile clients, bounded: the floods of issue 13, and an honest probe to time them.

Each flood plays one finding of the review (docs/security.md) for a given
number of seconds from its own loopback address (``127.0.0.2`` by default:
the per-IP limits are what an attacker meets first), reconnecting whenever
the server closes it, as an attacker would. :func:`probe` is the honest
client next to it: a WebSocket that sends ``ping`` messages and times each
``pong``. ``rtchub bench --scenario abuse`` reports the probe's latency
during every flood next to the idle figure; ``tests/test_abuse_e2e.py``
runs them all against one server while 100 honest clients talk.

Everything is bounded in count and time, and only talks to the address it
is given (127.0.0.1 in the bench and the tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

#: The floods, in the order the bench runs them.
FLOODS = ("connections", "handshakes", "continuation", "pongs", "invalid-json", "resumes",
          "big-burst", "poll-sessions", "slowloris", "stun")
#: The most sockets one flood holds at once (below the per-IP cap, above half of it).
MAX_SOCKETS = 1500


class Target:
    """Where the floods go: an rtchub server on ``host:port`` (STUN on ``stun_port``)."""

    def __init__(self, port: int, stun_port: int = 0, host: str = "127.0.0.1",
                 source: str = "127.0.0.2") -> None:
        self.host = host
        self.port = port
        self.stun_port = stun_port
        self.source = source

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        sock = socket.socket()
        sock.setblocking(False)
        try:
            sock.bind((self.source, 0))
            await asyncio.get_running_loop().sock_connect(sock, (self.host, self.port))
        except OSError:
            sock.close()
            raise
        return await asyncio.open_connection(sock=sock)


class _Ws:
    """A WebSocket that sends whatever frames it is told (websockets' sans-I/O protocol)."""

    def __init__(self, target: Target) -> None:
        from websockets.client import ClientProtocol
        from websockets.uri import parse_uri

        self.target = target
        self.proto = ClientProtocol(parse_uri(f"ws://{target.host}:{target.port}/ws"),
                                    max_size=None)
        self.closed = False

    async def connect(self) -> bool:
        try:
            self.reader, self.writer = await self.target.open()
            self.proto.send_request(self.proto.connect())
            self.flush()
            while self.proto.handshake_exc is None and self.proto.state.name == "CONNECTING":
                if not await self.read(5.0):
                    return False
        except (OSError, TimeoutError):
            return False
        return self.proto.handshake_exc is None

    def flush(self) -> None:
        for data in self.proto.data_to_send():
            if data:
                self.writer.write(data)

    async def read(self, timeout: float) -> bool:
        """Read once (drop what arrives); False once the connection is over."""
        try:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
        except TimeoutError:
            return True
        except OSError:
            data = b""
        if not data:
            self.closed = True
            return False
        self.proto.receive_data(data)
        self.proto.events_received()
        if self.proto.close_rcvd is not None:
            self.flush()
            self.closed = True
            return False
        return True

    async def pump(self, send_some: Callable[[], None], until: float) -> None:
        """Send batches from ``send_some`` until closed or ``until``; read along."""
        while not self.closed and time.monotonic() < until:
            send_some()
            self.flush()
            try:
                await self.writer.drain()
            except OSError:
                break
            await self.read(0.001)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


async def _ws_flood(target: Target, seconds: float, send_some: Callable[[_Ws], None],
                    setup: Callable[[_Ws], Awaitable[None]] | None = None) -> dict[str, int]:
    until = time.monotonic() + seconds
    connections = refused = 0
    while time.monotonic() < until:
        ws = _Ws(target)
        if not await ws.connect():
            refused += 1
            ws.close()
            await asyncio.sleep(0.05)
            continue
        connections += 1
        if setup is not None:
            await setup(ws)
        await ws.pump(lambda ws=ws: send_some(ws), until)
        ws.close()
    return {"connections": connections, "refused": refused}


def _batch(ws: _Ws, frame: Callable[[Any], None], n: int = 100) -> None:
    for _ in range(n):
        frame(ws.proto)


async def flood_continuation(target: Target, seconds: float) -> dict[str, int]:
    """An unfinished text message, then empty continuation frames for ever."""
    async def start(ws: _Ws) -> None:
        ws.proto.send_text(b'{"type":"message"', fin=False)

    return await _ws_flood(target, seconds,
                           lambda ws: _batch(ws, lambda p: p.send_continuation(b"", fin=False)),
                           start)


async def flood_pongs(target: Target, seconds: float) -> dict[str, int]:
    return await _ws_flood(target, seconds, lambda ws: _batch(ws, lambda p: p.send_pong(b"x")))


async def flood_invalid_json(target: Target, seconds: float) -> dict[str, int]:
    frames = (b"{nope", b'{"type":"nope"}', b"[]", b'"x"')
    return await _ws_flood(target, seconds, lambda ws: _batch(
        ws, lambda p: p.send_text(frames[secrets.randbelow(len(frames))])))


async def flood_resumes(target: Target, seconds: float) -> dict[str, int]:
    body = orjson.dumps({"type": "resume", "sessionId": "x" * 16, "lastSeq": 0})
    return await _ws_flood(target, seconds, lambda ws: _batch(ws, lambda p: p.send_text(body)))


async def flood_big_burst(target: Target, seconds: float, room: str = "abuse") -> dict[str, int]:
    """A member sending 64 KiB messages as fast as it can, into ``room``."""
    blob = secrets.token_hex(32_000)

    async def join(ws: _Ws) -> None:
        ws.proto.send_text(orjson.dumps({"type": "join", "roomId": room}))
        ws.flush()

    return await _ws_flood(target, seconds, lambda ws: _batch(ws, lambda p: p.send_text(
        orjson.dumps({"type": "message", "roomId": room, "data": blob})), 4), join)


async def flood_connections(target: Target, seconds: float) -> dict[str, int]:
    """Idle TCP connections, opened as fast as possible and held."""
    until = time.monotonic() + seconds
    held: list[asyncio.StreamWriter] = []
    refused = 0
    try:
        while time.monotonic() < until and len(held) < MAX_SOCKETS:
            try:
                _, writer = await asyncio.wait_for(target.open(), 2)
            except (OSError, TimeoutError):
                refused += 1
                await asyncio.sleep(0.01)
                continue
            held.append(writer)
        await asyncio.sleep(max(0.0, until - time.monotonic()))
        alive = sum(_open(w) for w in held)
    finally:
        for w in held:
            w.close()
    return {"opened": len(held), "refused": refused, "alive": alive}


def _open(writer: asyncio.StreamWriter) -> bool:
    """Still open on the server's side: neither EOF nor a reset waits on the socket."""
    sock = writer.get_extra_info("socket")
    if sock is None or writer.transport.is_closing():
        return False
    # A duplicate of the descriptor: asyncio's own socket object refuses recv().
    with socket.socket(fileno=os.dup(sock.fileno())) as dup:
        try:
            return bool(dup.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
        except BlockingIOError:
            return True
        except OSError:
            return False


async def flood_handshakes(target: Target, seconds: float) -> dict[str, int]:
    """New connections with a request each, as fast as possible (4 at a time)."""
    until = time.monotonic() + seconds
    counts = {"ok": 0, "refused": 0}

    async def one() -> None:
        while time.monotonic() < until:
            try:
                reader, writer = await asyncio.wait_for(target.open(), 2)
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                line = await asyncio.wait_for(reader.readline(), 5)
                writer.close()
            except (OSError, TimeoutError):
                line = b""
            counts["ok" if line.startswith(b"HTTP/1.1 200") else "refused"] += 1

    await asyncio.gather(*(one() for _ in range(4)))
    return counts


async def flood_poll_sessions(target: Target, seconds: float, sessions: int = 300,
                              room: str = "abuse-poll") -> dict[str, int]:
    """Poll sessions that never read, in a room a member fills with large messages."""
    until = time.monotonic() + seconds
    opened = 0
    http = _Http(target)
    for i in range(sessions):
        if time.monotonic() >= until - seconds / 2:
            break
        status, body = await http.post("/poll/open", b"")
        if status != 200:
            await asyncio.sleep(0.02)
            continue
        sid = orjson.loads(body)["sessionId"]
        await http.post(f"/send?session={sid}",
                        orjson.dumps({"type": "join", "roomId": room, "userId": f"poll-{i}"}))
        opened += 1
    sent = await flood_big_burst(target, max(0.1, until - time.monotonic()), room)
    http.close()
    return {"sessions": opened, **sent}


class _Http:
    """HTTP/1.1 requests on one keep-alive connection (reopened when closed)."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        for _ in range(2):
            try:
                if self.conn is None:
                    self.conn = await asyncio.wait_for(self.target.open(), 2)
                reader, writer = self.conn
                writer.write(f"POST {path} HTTP/1.1\r\nHost: {self.target.host}\r\n"
                             f"Content-Type: application/json\r\nContent-Length: {len(body)}"
                             "\r\n\r\n".encode() + body)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                status = int(head.split(b" ", 2)[1])
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                return status, await asyncio.wait_for(reader.readexactly(length), 5)
            except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
                self.close()
        return 0, b""

    def close(self) -> None:
        if self.conn is not None:
            self.conn[1].close()
            self.conn = None


async def flood_slowloris(target: Target, seconds: float, sockets: int = 100) -> dict[str, int]:
    """Heads and ``/send`` bodies trickled a byte at a time."""
    until = time.monotonic() + seconds
    cut = 0

    async def trickle(first: bytes, drip: bytes) -> None:
        nonlocal cut
        while time.monotonic() < until:
            try:
                _, writer = await asyncio.wait_for(target.open(), 2)
                writer.write(first)
                while time.monotonic() < until:
                    await asyncio.sleep(0.5)
                    if writer.transport.is_closing():
                        break
                    writer.write(drip)
                    await writer.drain()
                cut += time.monotonic() < until
                writer.close()
            except (OSError, TimeoutError):
                cut += 1
                await asyncio.sleep(0.2)

    heads = [trickle(b"GET /healthz HTTP/1.1\r\nHost: x\r\n", b"X") for _ in range(sockets // 2)]
    bodies = [trickle(b"POST /send?session=x HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n[",
                      b" ") for _ in range(sockets // 2)]
    await asyncio.gather(*heads, *bodies)
    return {"sockets": sockets, "cut": cut}


async def flood_stun(target: Target, seconds: float) -> dict[str, int]:
    """Binding requests that earn errors (an unknown attribute), as fast as possible."""
    if not target.stun_port:
        return {"sent": 0}
    loop = asyncio.get_running_loop()
    answers = 0

    class Counter(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            nonlocal answers
            answers += 1

    transport, _ = await loop.create_datagram_endpoint(Counter, local_addr=(target.source, 0))
    until = time.monotonic() + seconds
    sent = 0
    try:
        while time.monotonic() < until:
            for _ in range(50):
                tid = os.urandom(12)
                transport.sendto(struct.pack("!HHI", 0x0001, 4, 0x2112A442) + tid +
                                 struct.pack("!HH", 0x0042, 0), (target.host, target.stun_port))
                sent += 1
            await asyncio.sleep(0.002)
    finally:
        transport.close()
    return {"sent": sent, "answered": answers}


RUNNERS: dict[str, Callable[[Target, float], Awaitable[dict[str, int]]]] = {
    "connections": flood_connections,
    "handshakes": flood_handshakes,
    "continuation": flood_continuation,
    "pongs": flood_pongs,
    "invalid-json": flood_invalid_json,
    "resumes": flood_resumes,
    "big-burst": flood_big_burst,
    "poll-sessions": flood_poll_sessions,
    "slowloris": flood_slowloris,
    "stun": flood_stun,
}


async def flood(name: str, target: Target, seconds: float) -> dict[str, int]:
    return await RUNNERS[name](target, seconds)


def flood_in_process(name: str, port: int, stun_port: int, seconds: float, results: Any) -> None:
    """:func:`flood` as a child process's main (``multiprocessing``): puts its counts on ``results``."""
    results.put(asyncio.run(flood(name, Target(port, stun_port), seconds)))


async def probe(url: str, seconds: float, every: float = 0.02, timeout: float = 10.0) -> list[float]:
    """An honest WebSocket client's ``ping`` -> ``pong`` times, in ms, for ``seconds``.

    A pong that never comes counts as ``timeout`` (in ms): a probe that
    cannot get through is the worst latency, not a missing sample.
    """
    import aiohttp

    rtts: list[float] = []
    until = time.monotonic() + seconds
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        await ws.receive_json(timeout=timeout)
        n = 0
        while time.monotonic() < until:
            n += 1
            t0 = time.perf_counter()
            await ws.send_json({"type": "ping", "id": n})
            try:
                while True:
                    msg = await ws.receive_json(timeout=timeout)
                    if msg.get("type") == "pong" and msg.get("id") == n:
                        break
                rtts.append((time.perf_counter() - t0) * 1000)
            except (TimeoutError, TypeError, ValueError):
                rtts.append(timeout * 1000)
                break
            await asyncio.sleep(every)
    return rtts


def summary(rtts: list[float]) -> dict[str, float | None]:
    """p50 / p99 / max of probe times (ms)."""
    if not rtts:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None, "samples": 0}
    ordered = sorted(rtts)

    def at(q: float) -> float:
        rank = int(-(-len(ordered) * q // 100))  # nearest rank, as rtchub.bench.stats
        return ordered[min(len(ordered) - 1, max(0, rank - 1))]

    return {"p50_ms": at(50), "p99_ms": at(99), "max_ms": ordered[-1], "samples": len(rtts)}
