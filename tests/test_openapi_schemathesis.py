"""Schemathesis against ``/openapi.json`` of a live ``rtchub serve``.

Every check schemathesis has (``--checks all``): no 5xx, each response
matches its documented status, content type and schema, invalid input is
rejected with 4xx, auth is enforced, undeclared methods get 405. Examples
per operation are bounded so the run stays well under a minute.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from typing import Any

import aiohttp
import pytest

from tests.conftest import ROOT

KEY = "schemathesis-key"


@pytest.mark.e2e
async def test_schemathesis_finds_nothing(server_process: Any, tmp_path: Any) -> None:
    proc = server_process("--api-key", KEY)
    st = shutil.which("st", path=str(ROOT / ".venv" / "bin")) or "st"
    # Two members in the room named by the schema's example id, so room reads get 200 too.
    http = aiohttp.ClientSession()
    sockets = []
    try:
        for user in ("alice-st", "bob-st"):
            ws = await http.ws_connect(proc.ws_url)
            await ws.receive_json(timeout=5)
            await ws.send_str(json.dumps({"type": "join", "roomId": "room-1", "userId": user}))
            assert (await ws.receive_json(timeout=5))["type"] == "room-info"
            sockets.append(ws)
        run = await asyncio.create_subprocess_exec(
            st, "run", proc.url + "/openapi.json", "--wait-for-schema", "15",
            "-H", f"X-API-Key: {KEY}", "--checks", "all", "--max-examples", "20",
            "--seed", "20261121", "--generation-database", "none", "--no-color",
            "--request-timeout", "10",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=tmp_path)
        out, _ = await asyncio.wait_for(run.communicate(), 240)
        text = out.decode(errors="replace")
        assert run.returncode == 0, text[-6000:]
        # Every operation of the document was exercised (7 core + 6 recordings + 4 broadcast/WHIP).
        assert "17/17" in text and "Tested: 17" in text, text[-3000:]
    finally:
        for ws in sockets:
            await ws.close()
        await http.close()
