"""The WebSocket hot path on picows: a callback per frame, no coroutine per message.

picows parses RFC 6455 frames in Cython and calls :meth:`PicowsEndpoint.on_ws_frame`
synchronously; from there one message is one call into the hub. STACKS.md
measured this stack at ~1.7x the Node ``ws`` reference, before write
coalescing (see :mod:`rtchub.transports.coalesce`).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from picows import WSFrame, WSListener, WSMsgType, WSTransport

from rtchub.core.outgoing import Outgoing
from rtchub.protocol.codec import MSGPACK, json_frame, msgpack_frame
from rtchub.protocol.errors import CloseCode
from rtchub.transports.wsbase import ENDPOINT_SLOTS, WsEndpoint

if TYPE_CHECKING:
    from rtchub.core.hub import Hub
    from rtchub.transports.liveness import Liveness

_TEXT = WSMsgType.TEXT
_BINARY = WSMsgType.BINARY
_CONT = WSMsgType.CONTINUATION
_CLOSE = WSMsgType.CLOSE
_PING = WSMsgType.PING
#: Seconds to wait for the client's Close frame after ours.
CLOSE_HANDSHAKE_TIMEOUT = 2.0


class PicowsEndpoint(WsEndpoint, WSListener):
    __slots__ = ENDPOINT_SLOTS + ("ws", "frag_binary")

    def __init__(self, hub: Hub, liveness: Liveness, codec: str, peer: str, **kw: Any) -> None:
        WsEndpoint.__init__(self, hub, liveness, codec, peer, **kw)
        self.ws: WSTransport | None = None
        self.frag_binary = False

    # -- picows callbacks ---------------------------------------------------------
    def on_ws_connected(self, transport: WSTransport) -> None:
        self.ws = transport
        self.opened()

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        self.last_seen = self.liveness.now
        self.ping_sent = False
        mtype = frame.msg_type
        if mtype is _TEXT or mtype is _BINARY:
            if frame.fin:
                self.incoming(frame.get_payload_as_bytes(), mtype is _BINARY)
            else:
                self.frag_binary = mtype is _BINARY
                self.fragment(frame.get_payload_as_bytes(), False, self.frag_binary, True)
        elif mtype is _CONT:
            self.fragment(frame.get_payload_as_bytes(), frame.fin, self.frag_binary, False)
        elif mtype is _CLOSE:
            if not self.closing:  # the client starts the close handshake: echo it
                code = frame.get_close_code()
                self.peer_closed(int(code) if code is not None else None)
                self.closing = True
                transport.send_close(code)
            transport.disconnect()
        elif mtype is _PING:
            # picows' auto-pong is off (rtchub.transports.mux) so that pings are counted.
            self.control_frame()
            if not self.closing:
                transport.send_pong(frame.get_payload_as_bytes())
        else:  # PONG: solicited or not, it costs a token (a pong flood is a flood)
            self.control_frame()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.closed()

    # -- Sink: WsEndpoint.deliver with the picows calls inlined (one per relayed message)
    def deliver(self, seq: int, out: Outgoing) -> None:
        ws = self.ws
        if self.closing or ws is None:
            return
        if self.codec == MSGPACK:
            ws.send(_BINARY, msgpack_frame(seq, out.msg))
        else:
            ws.send(_TEXT, json_frame(seq, out.json))
        if ws.underlying_transport.buffered() > self.max_pending:
            WsEndpoint.deliver_overflowed(self)

    # -- WsEndpoint -----------------------------------------------------------------
    def _send_frame(self, data: bytes, binary: bool) -> None:
        ws = self.ws
        if ws is not None:
            ws.send(_BINARY if binary else _TEXT, data)

    def _pending_bytes(self) -> int:
        ws = self.ws
        if ws is None:
            return 0
        return ws.underlying_transport.buffered()

    def _close_transport(self, code: int, reason: str) -> None:
        ws = self.ws
        if ws is None:
            return
        ws.send_close(code, reason.encode()[:120])
        if code == CloseCode.HEARTBEAT_TIMEOUT:
            ws.disconnect(graceful=True)  # a dead peer will not answer the handshake
            return
        # RFC 6455 section 7.1.1: wait for the peer's Close before closing TCP.
        # Closing a socket with unread input makes the kernel send RST, and the
        # client would then see 1006 instead of our close code.
        asyncio.get_running_loop().call_later(CLOSE_HANDSHAKE_TIMEOUT, ws.disconnect)

    def _abort_transport(self) -> None:
        ws = self.ws
        if ws is not None:
            ws.underlying_transport.abort()

    def send_ping(self) -> None:
        ws = self.ws
        if ws is not None:
            ws.send_ping()
