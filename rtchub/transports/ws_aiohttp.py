"""The WebSocket path on aiohttp: for what picows cannot do.

Used when permessage-deflate (RFC 7692) is enabled and offered, and when an
upgrade arrives on a keep-alive connection that aiohttp already owns. It is
the same protocol as :mod:`rtchub.transports.ws`, only slower per message.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from rtchub.protocol.errors import CloseCode
from rtchub.transports.wsbase import ENDPOINT_SLOTS, WsEndpoint

if TYPE_CHECKING:
    from rtchub.core.hub import Hub
    from rtchub.transports.liveness import Liveness


class AiohttpEndpoint(WsEndpoint):
    __slots__ = ENDPOINT_SLOTS + ("ws", "loop")

    def __init__(self, hub: Hub, liveness: Liveness, codec: str, peer: str,
                 ws: web.WebSocketResponse, **kw: Any) -> None:
        super().__init__(hub, liveness, codec, peer, **kw)
        self.ws = ws
        self.loop = asyncio.get_running_loop()

    def _send_frame(self, data: bytes, binary: bool) -> None:
        writer = self.ws._writer  # noqa: SLF001 - the sync path; send_* are coroutines
        if writer is None or self.ws.closed:
            return
        # aiohttp's writer is async only for flow control; schedule it without
        # awaiting so the hub stays synchronous. Order is kept by the loop.
        self.loop.create_task(writer.send_frame(data, WSMsgType.BINARY if binary else WSMsgType.TEXT))

    def _pending_bytes(self) -> int:
        transport = self.ws._req.transport if self.ws._req is not None else None  # noqa: SLF001
        return transport.get_write_buffer_size() if transport is not None else 0

    def _close_transport(self, code: int, reason: str) -> None:
        self.loop.create_task(self.ws.close(code=code, message=reason.encode()[:120]))

    def _abort_transport(self) -> None:
        transport = self.ws._req.transport if self.ws._req is not None else None  # noqa: SLF001
        if transport is not None:
            transport.abort()

    def send_ping(self) -> None:
        self.loop.create_task(self.ws.ping())

    async def run(self) -> None:
        self.opened()
        ws = self.ws
        try:
            async for msg in ws:
                self.last_seen = self.liveness.now
                self.ping_sent = False
                if msg.type == WSMsgType.TEXT:
                    self.incoming(msg.data.encode(), False)
                elif msg.type == WSMsgType.BINARY:
                    self.incoming(msg.data, True)
                elif msg.type == WSMsgType.PING:
                    # autoping is off so that pongs reach this loop (aiohttp
                    # swallows them otherwise, and an idle client answering
                    # every ping would still be closed with 4008), and so
                    # that pings and pongs are counted against the budget.
                    self.control_frame()
                    if not self.closing:
                        await ws.pong(msg.data)
                elif msg.type == WSMsgType.PONG:
                    self.control_frame()
                elif msg.type == WSMsgType.ERROR:
                    break
            code = ws.close_code
            if code == CloseCode.TOO_BIG:
                self.clean = False
            elif code is not None and not self.closing:
                self.peer_closed(code)
        finally:
            self.closed()
