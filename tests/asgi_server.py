"""A FastAPI app with rtchub mounted at ``/rtc``, served by uvicorn on a free port.

The server runs in the test's own event loop (``uvicorn.Server.serve`` as a
task), on real sockets: what a team that adds rtchub to its FastAPI app runs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from fastapi import FastAPI
from fastapi.responses import HTMLResponse

from rtchub.asgi import RtcHubAsgi, create_asgi_app
from tests.conftest import free_port


class Mounted:
    def __init__(self, rtc: RtcHubAsgi, port: int) -> None:
        self.rtc = rtc
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        #: What rtchub's SDKs are given: the WebSocket URL under the mount.
        self.ws_url = f"ws://127.0.0.1:{port}/rtc/ws"


@contextlib.asynccontextmanager
async def fastapi_with_rtchub(page: str | None = None, **settings: Any) -> AsyncIterator[Mounted]:
    """Serve ``FastAPI()`` + ``app.mount("/rtc", create_asgi_app(**settings))``;
    ``page`` (HTML) is the app's own page at ``/``."""
    settings.setdefault("stun_port", 0)
    rtc = create_asgi_app(**settings)
    app = FastAPI(lifespan=rtc.lifespan)

    @app.get("/app/health")
    async def health() -> dict[str, str]:
        return {"app": "ok"}

    if page is not None:
        @app.get("/", response_class=HTMLResponse)
        async def index() -> str:
            return page

    app.mount("/rtc", rtc)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                          lifespan="on", ws_ping_interval=5, ws_ping_timeout=5))
    task = asyncio.get_running_loop().create_task(server.serve())
    try:
        for _ in range(400):
            if server.started or task.done():
                break
            await asyncio.sleep(0.025)
        assert server.started, "uvicorn did not start"
        yield Mounted(rtc, port)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)
