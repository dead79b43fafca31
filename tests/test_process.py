"""`rtchub serve` as a real process: signals, environment configuration, CLI."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from typing import Any

import websockets

from tests.conftest import ROOT


async def _join(url: str, room: str, user: str) -> Any:
    ws = await websockets.connect(url)
    await ws.send(json.dumps({"type": "join", "roomId": room, "userId": user}))
    while json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] != "room-info":
        pass
    return ws


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
