"""`rtchub serve` as a real process: signals, environment configuration, CLI."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from typing import Any

import pytest
import websockets

from tests.conftest import ROOT


async def _join(url: str, room: str, user: str) -> Any:
    ws = await websockets.connect(url)
    await ws.send(json.dumps({"type": "join", "roomId": room, "userId": user}))
    while json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] != "room-info":
        pass
    return ws


async def _close_code(reader: asyncio.StreamReader) -> int:
    """Read server frames (unmasked, RFC 6455 section 5.2) up to a Close; its status code."""
    while True:
        opcode, size = await asyncio.wait_for(reader.readexactly(2), 5)
        size &= 0x7F
        if size == 126:
            size = int.from_bytes(await reader.readexactly(2), "big")
        elif size == 127:
            size = int.from_bytes(await reader.readexactly(8), "big")
        payload = await reader.readexactly(size)
        if opcode & 0x0F == 0x8:
            return int.from_bytes(payload[:2], "big")


async def test_sigterm_closes_clients_with_1001_and_exits(server_process: Any) -> None:
    proc = server_process()
    clients = [await _join(proc.ws_url, "r", f"u{i}") for i in range(5)]
    started = time.monotonic()
    proc.proc.send_signal(15)
    for ws in clients:
        try:
            while True:
                await asyncio.wait_for(ws.recv(), 5)
        except websockets.ConnectionClosed as exc:
            assert exc.rcvd is not None and exc.rcvd.code == 1001
    assert proc.proc.wait(10) == 0
    assert time.monotonic() - started < 5
    assert "shutting down" in proc.output()


async def test_sigint_also_shuts_down_gracefully(server_process: Any) -> None:
    proc = server_process()
    ws = await _join(proc.ws_url, "r", "alice")
    proc.proc.send_signal(2)
    try:
        while True:
            await asyncio.wait_for(ws.recv(), 5)
    except websockets.ConnectionClosed as exc:
        assert exc.rcvd is not None and exc.rcvd.code == 1001
    assert proc.proc.wait(10) == 0


async def test_environment_variables_configure_the_server(server_process: Any) -> None:
    proc = server_process(env={"RTCHUB_MAX_ROOM_MEMBERS": "1", "RTCHUB_LOG_LEVEL": "debug"})
    ws = await _join(proc.ws_url, "r", "alice")
    async with websockets.connect(proc.ws_url) as other:
        await other.send(json.dumps({"type": "join", "roomId": "r", "userId": "bob"}))
        msgs = [json.loads(await asyncio.wait_for(other.recv(), 5)) for _ in range(2)]
        assert msgs[1]["type"] == "error" and msgs[1]["code"] == "room-full"
    await ws.close()


def test_cli_lists_every_option_with_its_env_var() -> None:
    out = subprocess.run([str(ROOT / ".venv" / "bin" / "rtchub"), "serve", "--help"],
                         capture_output=True, text=True, check=True).stdout
    for flag, env in (("--max-msg-rate", "RTCHUB_MAX_MSG_RATE"), ("--max-msg-burst", "RTCHUB_MAX_MSG_BURST"),
                      ("--log-level", "RTCHUB_LOG_LEVEL"), ("--port", "RTCHUB_PORT"),
                      ("--grace-period", "RTCHUB_GRACE_PERIOD")):
        assert flag in out and env in out


async def test_a_stopping_server_refuses_new_connections_while_it_drains(make_server: Any) -> None:
    """Told 1001, a client reconnects at once: it must be refused (and go elsewhere), not
    accepted by the server that is draining and then left on a connection nobody serves."""
    app = await make_server(shutdown_timeout=3.0)
    # A client that never answers the close frame keeps the drain waiting.
    reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
    writer.write(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101"), head
    stopping = asyncio.get_running_loop().create_task(app.stop())
    await asyncio.sleep(0.3)
    assert not stopping.done()  # still draining: the silent client holds it
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", app.port)
    assert await _close_code(reader) == 1001  # the welcome first, then Close 1001
    writer.close()
    await asyncio.wait_for(stopping, 10)
