"""One TCP port, two HTTP stacks: picows for WebSocket, aiohttp for everything else.

picows only serves WebSocket upgrades; aiohttp serves HTTP (SSE streams, POST
bodies, static files, the API) but its WebSocket path is slower (STACKS.md).
Rather than giving up one port, each new connection starts on this small
protocol, which reads the request head (RFC 9112 section 2.1: everything up
to the first empty line), decides, and hands the transport and the bytes
already read to the chosen stack with ``transport.set_protocol``. The
decision is made once per connection; afterwards the mux is out of the path.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from multidict import CIMultiDict
from picows.picows import WSAutoPingStrategy

from rtchub.auth.limits import SERVICE_UNAVAILABLE
from rtchub.transports.coalesce import CoalescingWSProtocol

log = logging.getLogger("rtchub.mux")

#: Request heads larger than this are refused, as picows and aiohttp also do.
MAX_HEAD = 16 * 1024
WS_PATHS = (b"/ws", b"/signaling")
#: An ``admit`` verdict on accept: "ask me again with the request head"
#: (a connection from a trusted proxy is judged by the client its head names).
ASK_AGAIN = 1


class RequestHead:
    """Just enough of the request head to route it."""

    __slots__ = ("path", "upgrade", "deflate", "raw")

    def __init__(self, head: bytes) -> None:
        self.raw = head
        line, _, rest = head.partition(b"\r\n")
        parts = line.split(b" ")
        target = parts[1] if len(parts) == 3 else b""
        self.path = target.split(b"?", 1)[0]
        lower = rest.lower()
        self.upgrade = b"upgrade: websocket" in lower or b"upgrade:websocket" in lower
        self.deflate = b"permessage-deflate" in lower

    def headers(self) -> CIMultiDict[str]:
        """The header fields (RFC 9112 section 5), parsed only when asked for."""
        fields: CIMultiDict[str] = CIMultiDict()
        for line in self.raw.split(b"\r\n")[1:]:
            name, colon, value = line.partition(b":")
            if colon and name and name == name.strip():
                fields.add(name.decode("latin-1"), value.strip().decode("latin-1"))
        return fields


class PortMux(asyncio.Protocol):
    """First protocol of every connection; replaces itself after the request head.

    ``admit(transport, None)`` (per-IP limits, :mod:`rtchub.auth.limits`) runs
    on accept: 0 admits, a negative number drops the connection at once, 503
    (the process is near its fd limit) is answered at once, another HTTP
    status (429) once the request head has arrived, and :data:`ASK_AGAIN`
    calls ``admit(transport, head)`` once it has (a trusted proxy's
    connection, judged by the client it names). A
    connection that has not sent its head within ``head_timeout`` seconds is
    dropped (slowloris); picows and aiohttp time out on their own afterwards.
    """

    def __init__(self, route: Callable[[RequestHead], str],
                 make_ws: Callable[[asyncio.Transport], asyncio.BaseProtocol],
                 make_http: Callable[[], asyncio.BaseProtocol],
                 admit: Callable[[asyncio.Transport, RequestHead | None], int] | None = None,
                 head_timeout: float = 10.0,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        # The loop is passed in by the server: asyncio.get_running_loop() per
        # connection would cost a getpid(2) each.
        self._loop = loop
        self._route = route
        self._make_ws = make_ws
        self._make_http = make_http
        self._admit = admit
        self._head_timeout = head_timeout
        self._refuse = 0
        self._timer: asyncio.TimerHandle | None = None
        self._buf = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # No isinstance check: uvloop's TCPTransport is not an asyncio.Transport subclass.
        self._transport = transport  # type: ignore[assignment]
        if self._admit is not None:
            verdict = self._admit(transport, None)
            if verdict < 0:
                self._transport = None
                transport.abort()
                return
            if verdict == SERVICE_UNAVAILABLE:
                # Near the fd limit: say so at once and free the descriptor
                # (RFC 9110 section 15.6.4), rather than hold it for a head.
                self._answer(transport, b"503 Service Unavailable", b"Retry-After: 1\r\n")
                return
            self._refuse = verdict
        if self._head_timeout > 0:
            loop = self._loop or asyncio.get_running_loop()
            self._timer = loop.call_later(self._head_timeout, transport.abort)

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        self._buf += data
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > MAX_HEAD:
                self._answer(transport, b"431 Request Header Fields Too Large")
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        head = RequestHead(bytes(self._buf[:end]))
        if self._refuse == ASK_AGAIN:
            assert self._admit is not None
            self._refuse = self._admit(transport, head)
        if self._refuse:
            # RFC 6585 section 4: Too Many Requests, with a hint when to retry.
            self._answer(transport, b"%d Too Many Requests" % self._refuse, b"Retry-After: 1\r\n")
            return
        stack = self._route(head)
        proto = self._make_ws(transport) if stack == "ws" else self._make_http()
        pending = bytes(self._buf)
        self._buf = bytearray()
        self._transport = None
        transport.set_protocol(proto)
        proto.connection_made(transport)
        feed(proto, pending)

    def _answer(self, transport: asyncio.Transport, status: bytes, extra: bytes = b"") -> None:
        self._transport = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        transport.write(b"HTTP/1.1 " + status + b"\r\n" + extra +
                        b"Connection: close\r\nContent-Length: 0\r\n\r\n")
        transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def feed(proto: asyncio.BaseProtocol, data: bytes) -> None:
    """Give ``data`` to a protocol, whether it is a plain or a buffered one."""
    if isinstance(proto, asyncio.BufferedProtocol):
        view = memoryview(data)
        while view:
            buf = proto.get_buffer(len(view))
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            proto.buffer_updated(n)
            view = view[n:]
    else:
        proto.data_received(data)  # type: ignore[attr-defined]


def picows_protocol_factory(listener_factory: Callable[[Any, str], Any], *,
                            max_frame_size: int) -> Callable[[asyncio.Transport], asyncio.BaseProtocol]:
    """A factory of picows server protocols, as ``picows.ws_create_server`` builds them.

    picows exposes its server only as a whole listening socket; the mux needs
    the protocol object alone. The arguments mirror ``ws_create_server``'s.
    Heartbeats are ours (:mod:`rtchub.transports.liveness`), so auto-ping is
    off: it would start one task per connection.
    """
    # An adapter, not a Logger: picows makes a child Logger per connection
    # when given a Logger (an object kept for the connection's life: idle memory).
    logger = logging.LoggerAdapter(logging.getLogger("picows.server"), {})

    protocol = CoalescingWSProtocol.bound_to(asyncio.get_running_loop())

    def factory(transport: asyncio.Transport) -> asyncio.BaseProtocol:
        peername = transport.get_extra_info("peername")
        peer = peername[0] if peername else ""
        return protocol(
            None, None, False, lambda request: listener_factory(request, peer), logger,
            True,        # disconnect_on_exception
            5.0,         # handshake timeout
            False, 20.0, 20.0, WSAutoPingStrategy.PING_WHEN_IDLE,
            False,       # auto pong: off, pings are answered (and counted) by the endpoint
            max_frame_size,
            None,        # extra headers
            2048,        # initial read buffer: small, grows with need (idle memory)
        )

    return factory
