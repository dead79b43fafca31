"""rtchub inside an ASGI application: ``app.mount("/rtc", create_asgi_app(...))``.

The convenient path for a team that already runs FastAPI or Starlette: one
process, one port, one server. It is the same :class:`~rtchub.app.RtcHub` as
``rtchub serve`` (same hub, settings, broker, limits, metrics, server API);
only the sockets belong to the host's ASGI server. The native server stays
the fast one (docs/asgi.md has the measured ratio).

How requests get in:

- **WebSocket** at ``/ws`` and ``/signaling`` is an
  :class:`AsgiEndpoint`, a :class:`~rtchub.transports.wsbase.WsEndpoint` like
  the picows and aiohttp ones, so it is the same protocol by construction.
  ASGI has no way to send a protocol Ping: dead peers are found by the
  ASGI server's own pings (uvicorn's ``--ws-ping-interval``/``--ws-ping-timeout``).
- **Everything else** (SSE, long-polling, ``/send``, ``/api``, ``/metrics``,
  ``/ice-servers``, the PeerJS ``/id``, the SDK and demo files) is answered by
  the very aiohttp routes the native server uses. Each ASGI request is
  written as HTTP/1.1 by h11 into an in-memory transport that an aiohttp
  request handler reads, and aiohttp's answer is parsed back by h11 into ASGI
  events as it is written, so SSE and long-polls stream and a client that
  goes away closes the transport the handler sees. No socket, no second
  port, and no second implementation of any route. The one exception is
  the files of the web root (the SDK, the demo and admin pages): aiohttp
  sends files with ``loop.sendfile``, which needs a real socket, so they are
  served by Starlette's ``StaticFiles`` from the same directory.

Lifespan: run directly by an ASGI server, the app starts and stops on the
lifespan events. Mounted, a host app does not forward those (Starlette's
``Mount`` does not); pass :meth:`RtcHubAsgi.lifespan` to the host
(``FastAPI(lifespan=rtc.lifespan)``), or the hub starts on the first request
and never shuts down cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

import h11
import orjson
from multidict import CIMultiDict

from rtchub.app import WEB_ROOT, RtcHub
from rtchub.peerjs.endpoint import PEER_SLOTS, PeerJsPeer
from rtchub.protocol.codec import JSON, SUBPROTOCOLS, choose_subprotocol
from rtchub.settings import Settings
from rtchub.transports.wsbase import ENDPOINT_SLOTS, WsEndpoint

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: Paths served by :class:`AsgiEndpoint` (the native server's WebSocket paths).
WS_PATHS = frozenset({"/ws", "/signaling"})
#: Request headers that describe the outer connection, not the request.
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"content-length",
                        b"upgrade", b"proxy-connection", b"te", b"trailer"})
#: Response headers the ASGI server writes itself.
SERVER_OWNED = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"date", b"server"})


def route_path(scope: Scope) -> str:
    """The path below the mount point (Starlette keeps the full path in ``path``)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        path = path[len(root):]
    return path or "/"


def _is_web_file(path: str) -> bool:
    """A file (or a folder with an index.html) of the web root, never outside it."""
    target = (WEB_ROOT / path.lstrip("/")).resolve()
    if not target.is_relative_to(WEB_ROOT.resolve()):
        return False
    return target.is_file() or (target / "index.html").is_file()


def _headers(scope: Scope) -> CIMultiDict[str]:
    return CIMultiDict((k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"])


# ====================================================================== HTTP
class _Pipe(asyncio.Transport):
    """The transport an aiohttp request handler writes its answer into.

    Every write is parsed by an h11 client connection at once and turned into
    ASGI ``http.response.*`` messages on ``events``; ``None`` ends the stream.
    ``get_write_buffer_size`` counts what the ASGI server has not taken yet,
    which is what the SSE and polling sinks read to find a slow reader.
    """

    def __init__(self, scope: Scope, conn: h11.Connection) -> None:
        super().__init__()
        self.conn = conn
        self.events: asyncio.Queue[Message | None] = asyncio.Queue()
        self.pending = 0
        self.closing = False
        self.protocol: asyncio.BaseProtocol | None = None
        client, server = scope.get("client"), scope.get("server")
        self.extra = {"peername": tuple(client) if client else None,
                      "sockname": tuple(server) if server else None,
                      "sslcontext": None, "socket": None}

    # -- what aiohttp calls ------------------------------------------------------
    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.closing:
            return
        try:
            self.conn.receive_data(bytes(data))
            self._parse()
        except h11.RemoteProtocolError:  # pragma: no cover - aiohttp writes valid HTTP
            self.abort()

    def writelines(self, chunks: Any) -> None:
        self.write(b"".join(chunks))

    def _parse(self) -> None:
        put = self.events.put_nowait
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED or isinstance(event, h11.ConnectionClosed):
                return
            if isinstance(event, h11.Response):
                put({"type": "http.response.start", "status": event.status_code,
                     "headers": [(k, v) for k, v in event.headers if k not in SERVER_OWNED]})
            elif isinstance(event, h11.Data):
                self.pending += len(event.data)
                put({"type": "http.response.body", "body": bytes(event.data), "more_body": True})
            elif isinstance(event, h11.EndOfMessage):
                put({"type": "http.response.body", "body": b"", "more_body": False})

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        if self.closing:
            return
        self.closing = True
        self.events.put_nowait(None)
        if self.protocol is not None:
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def get_write_buffer_size(self) -> int:
        return self.pending

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        value = self.extra.get(name)
        return default if value is None else value

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self.protocol is not None
        return self.protocol

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def is_reading(self) -> bool:
        return not self.closing

    def can_write_eof(self) -> bool:
        return False


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or None when it is over ``limit`` (413)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return b"".join(chunks)
        body = msg.get("body", b"")
        size += len(body)
        if size > limit:
            return None
        chunks.append(body)
        if not msg.get("more_body", False):
            return b"".join(chunks)


async def _plain(send: Send, status: int, text: str) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
    await send({"type": "http.response.body", "body": text.encode()})


# ================================================================= WebSocket
class AsgiEndpoint(WsEndpoint):
    """One ASGI WebSocket as the hub sees it: a Sink fed by one writer task.

    The hub delivers synchronously; ASGI ``send`` is a coroutine. Frames go
    into an ordered queue that a single task drains, so order is kept and the
    queue's size is the "unsent bytes" that ``max_pending_bytes`` bounds.
    """

    __slots__ = ENDPOINT_SLOTS + ("out", "out_bytes", "wake", "dead")

    def __init__(self, app: RtcHub, codec: str, peer: str, **kw: Any) -> None:
        super().__init__(app.hub, app.liveness, codec, peer, **kw)
        self.out: deque[tuple[bool | None, Any]] = deque()
        self.out_bytes = 0
        self.wake = asyncio.Event()
        self.dead = False

    def _send_frame(self, data: bytes, binary: bool) -> None:
        if self.dead:
            return
        self.out.append((binary, data))
        self.out_bytes += len(data)
        self.wake.set()

    def _pending_bytes(self) -> int:
        return self.out_bytes

    def _close_transport(self, code: int, reason: str) -> None:
        self.out.append((None, (code, reason[:120])))
        self.wake.set()

    def _abort_transport(self) -> None:
        self.dead = True
        self.wake.set()

    def send_ping(self) -> None:
        """ASGI cannot send a protocol Ping; the ASGI server pings on its own."""

    def opened(self) -> None:
        # Not in Liveness: without pings of our own, silence is no sign of death.
        self.hub.open(self, user_id=self.user_id, display_name=self.display_name, claims=self.claims)

    async def run(self, receive: Receive, send: Send) -> None:
        self.opened()
        writer = asyncio.get_running_loop().create_task(self._write(send))
        try:
            while True:
                msg = await receive()
                kind = msg["type"]
                if kind == "websocket.receive":
                    text = msg.get("text")
                    if text is not None:
                        self.incoming(text.encode(), False)
                    else:
                        self.incoming(msg.get("bytes") or b"", True)
                elif kind == "websocket.disconnect":
                    if not self.closing:
                        self.peer_closed(msg.get("code", 1005))
                    break
        finally:
            self.dead = True
            self.wake.set()
            self.closed()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(writer, 1.0)

    async def _write(self, send: Send) -> None:
        out = self.out
        while True:
            await self.wake.wait()
            self.wake.clear()
            while out:
                binary, data = out.popleft()
                if binary is None:
                    code, reason = data
                    await send({"type": "websocket.close", "code": code, "reason": reason})
                    self.dead = True
                    return
                self.out_bytes -= len(data)
                if self.dead:
                    continue
                if binary:
                    await send({"type": "websocket.send", "bytes": data})
                else:
                    await send({"type": "websocket.send", "text": data.decode()})
            if self.dead:
                return


class AsgiPeerJsEndpoint(PeerJsPeer, AsgiEndpoint):
    """A PeerJS peer (rtchub.peerjs) on an ASGI WebSocket."""

    __slots__ = PEER_SLOTS


# ======================================================================= app
class RtcHubAsgi:
    """The ASGI application around one :class:`~rtchub.app.RtcHub` (``.server``)."""

    def __init__(self, settings: Settings) -> None:
        from starlette.staticfiles import StaticFiles

        self.server = RtcHub(settings)
        self.settings = settings
        self.started = False
        self._lock = asyncio.Lock()
        self._files = StaticFiles(directory=WEB_ROOT, html=True, check_dir=False)

    # -- lifecycle ---------------------------------------------------------------
    async def start(self) -> None:
        async with self._lock:
            if not self.started:
                await self.server.start(listen=False)
                self.started = True

    async def stop(self) -> None:
        async with self._lock:
            if self.started:
                self.started = False
                await self.server.stop()

    @contextlib.asynccontextmanager
    async def lifespan(self, host_app: Any = None) -> AsyncIterator[None]:
        """For the host: ``FastAPI(lifespan=rtc.lifespan)`` starts and stops the hub with it."""
        await self.start()
        try:
            yield
        finally:
            await self.stop()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                try:
                    await self.start()
                except Exception as exc:  # pragma: no cover - reported to the ASGI server
                    await send({"type": "lifespan.startup.failed", "message": repr(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await self.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- ASGI ----------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
        if not self.started:
            await self.start()
        if kind == "http":
            if scope["method"] in ("GET", "HEAD") and _is_web_file(route_path(scope)):
                await self._files(scope, receive, send)
            else:
                await self._http(scope, receive, send)
        elif kind == "websocket":
            await self._websocket(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await _read_body(receive, self.settings.max_body_size)
        if body is None:
            await _plain(send, 413, "request body too large")
            return
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in HOP_BY_HOP]
        if not any(k.lower() == b"host" for k, _ in headers):
            server = scope.get("server") or ("localhost", None)
            headers.append((b"host", f"{server[0]}:{server[1]}".encode() if server[1] else
                            str(server[0]).encode()))
        if body:
            headers.append((b"content-length", str(len(body)).encode()))
        headers.append((b"connection", b"close"))
        target = route_path(scope).encode()
        if scope.get("query_string"):
            target += b"?" + scope["query_string"]
        conn = h11.Connection(h11.CLIENT)
        try:
            request = conn.send(h11.Request(method=scope["method"], target=target, headers=headers))
        except h11.LocalProtocolError as exc:
            await _plain(send, 400, f"bad request: {exc}")
            return
        if body:
            request += conn.send(h11.Data(data=body))
        request += conn.send(h11.EndOfMessage())
        pipe = _Pipe(scope, conn)
        handler = self.server.http_protocol_factory()
        pipe.set_protocol(handler)
        handler.connection_made(pipe)
        handler.data_received(request)
        watcher = asyncio.get_running_loop().create_task(self._watch_disconnect(receive, pipe))
        try:
            while True:
                event = await pipe.events.get()
                if event is None:
                    break
                await send(event)
                if event["type"] == "http.response.body":
                    pipe.pending -= len(event["body"])
                    if not event["more_body"]:
                        break
        finally:
            watcher.cancel()
            pipe.close()

    @staticmethod
    async def _watch_disconnect(receive: Receive, pipe: _Pipe) -> None:
        """The client went away (SSE tab closed, long-poll aborted): close the pipe."""
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                pipe.close()
                return

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        connect = await receive()
        if connect["type"] != "websocket.connect":  # pragma: no cover - ASGI says it is first
            return
        path = route_path(scope)
        headers = _headers(scope)
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        client = scope.get("client")
        peer = client[0] if client else ""
        peerjs = getattr(self.server, "peerjs", None)
        if peerjs is not None and path == peerjs.ws_path:
            await self._peerjs(peerjs, scope, receive, send, headers, query, peer)
            return
        if path not in WS_PATHS:
            await send({"type": "websocket.close", "code": 1008, "reason": "no WebSocket here"})
            return
        verdict = self.server.admit(headers, query, peer, first_message_auth=True)
        if not verdict.ok:
            await self._refuse(scope, send, verdict)
            return
        offered = [p.strip() for p in scope.get("subprotocols", ()) if p.strip()]
        chosen = choose_subprotocol(offered)
        await send({"type": "websocket.accept", "subprotocol": chosen})
        endpoint = AsgiEndpoint(self.server, SUBPROTOCOLS.get(chosen or "", JSON), verdict.client,
                                claims=verdict.claims, user_id=verdict.user_id,
                                display_name=verdict.display_name)
        await endpoint.run(receive, send)

    async def _peerjs(self, peerjs: Any, scope: Scope, receive: Receive, send: Send,
                      headers: CIMultiDict[str], query: dict[str, str], peer: str) -> None:
        """The PeerJS WebSocket, judged as rtchub.peerjs.server does it natively."""
        verdict = self.server.admit(headers, query, peer)
        if verdict.status in (403, 429):
            await self._refuse(scope, send, verdict)
            return
        await send({"type": "websocket.accept"})
        refusal = peerjs.judge(query, verdict)
        if refusal is not None:
            await send({"type": "websocket.send", "text": refusal.decode()})
            await send({"type": "websocket.close", "code": 1000})
            return
        peer_id, token = query["id"], query["token"]
        peerjs.take_over(peer_id, token)
        endpoint = AsgiPeerJsEndpoint(self.server, JSON, verdict.client, claims=verdict.claims,
                                      user_id=peer_id)
        endpoint.init_peer(peerjs, peer_id, token)
        await endpoint.run(receive, send)

    @staticmethod
    async def _refuse(scope: Scope, send: Send, verdict: Any) -> None:
        """The handshake refusal with its HTTP status where the server can send one
        (ASGI's WebSocket Denial Response extension), else a close before accept."""
        if "websocket.http.response" in scope.get("extensions", {}):
            body = orjson.dumps({"type": "error", "code": verdict.error_code(),
                                 "message": verdict.reason})
            await send({"type": "websocket.http.response.start", "status": verdict.status,
                        "headers": [(b"content-type", b"application/json"),
                                    *((k.encode(), v.encode()) for k, v in verdict.headers().items())]})
            await send({"type": "websocket.http.response.body", "body": body})
        else:
            await send({"type": "websocket.close", "code": 1008, "reason": verdict.reason[:120]})


def create_asgi_app(settings: Settings | None = None, **overrides: Any) -> RtcHubAsgi:
    """An ASGI app serving rtchub; the same settings as ``rtchub serve``
    (``settings``, then ``overrides`` of its fields). ``host``/``port`` are unused:
    the host's ASGI server owns the socket."""
    base = settings or Settings()
    if overrides:
        base = dataclasses.replace(base, **overrides)
    return RtcHubAsgi(base)
