"""Client transports: how the SDK's messages travel (WebSocket, SSE, long-polling).

Each transport turns the connection into an async iterator of decoded
server messages plus ``send(msg)``; the :class:`~rtchub.client.Client` on top
is the same whatever carries it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import aiohttp
import msgpack
import orjson


class TransportClosed(Exception):
    pass


class Transport:
    name = "?"
    close_code: int | None = None
    #: The token the transport sends with its requests (HTTP transports send
    #: it with every request; a WebSocket only at the handshake).
    token: str | None = None

    async def send(self, msg: dict[str, Any]) -> None:
        raise NotImplementedError

    def messages(self) -> AsyncIterator[dict[str, Any]]:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def drain(self) -> None:
        """Let ``messages()`` end without ending the session, which then waits in the
        server's grace period for a ``resume`` on another transport (the Client
        switching up). HTTP transports first finish the request in flight."""
        self.abort()

    def drop(self) -> None:
        """Stop at once without ending the session."""
        self.abort()


def base_url(url: str) -> str:
    """The HTTP base beside a WebSocket URL: ``ws://h:p/ws`` or ``http://h:p`` ->
    ``http://h:p``. A mount prefix before ``/ws`` (or ``/signaling``) stays:
    ``ws://h:p/rtc/ws`` -> ``http://h:p/rtc`` (rtchub mounted in an ASGI app);
    any other path is the WebSocket's alone."""
    parts = urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    path = parts.path.rstrip("/")
    prefix = ""
    for ws_path in ("/ws", "/signaling"):
        if path.endswith(ws_path):
            prefix = path[: -len(ws_path)]
    return urlunsplit((scheme, parts.netloc, prefix, "", ""))


def ws_url(url: str, token: str | None = None) -> str:
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    path = parts.path if parts.path not in ("", "/") else "/ws"
    query = parts.query
    if token:
        query = (query + "&" if query else "") + urlencode({"token": token})
    return urlunsplit((scheme, parts.netloc, path, query, ""))


class WebSocketTransport(Transport):
    name = "websocket"

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, codec: str) -> None:
        self.ws = ws
        self.codec = codec

    @classmethod
    async def open(cls, http: aiohttp.ClientSession, url: str, *, codec: str = "json",
                   token: str | None = None) -> WebSocketTransport:
        proto = "rtchub.v1.msgpack" if codec == "msgpack" else "rtchub.v1.json"
        # The token goes in a header (RFC 6750 section 2.1), not the URL: URLs
        # end up in proxy logs. (Browsers cannot set it; they send ``auth``.)
        headers = {"Authorization": f"Bearer {token}"} if token else None
        ws = await http.ws_connect(ws_url(url), protocols=(proto,), autoping=True,
                                   max_msg_size=0, heartbeat=None, headers=headers)
        return cls(ws, codec)

    async def send(self, msg: dict[str, Any]) -> None:
        if self.codec == "msgpack":
            await self.ws.send_bytes(msgpack.packb(msg))
        else:
            await self.ws.send_str(orjson.dumps(msg).decode())

    async def send_raw(self, data: str | bytes) -> None:
        """Send a frame as is (tests: malformed input)."""
        if isinstance(data, bytes):
            await self.ws.send_bytes(data)
        else:
            await self.ws.send_str(data)

    async def messages(self) -> AsyncIterator[dict[str, Any]]:  # type: ignore[override]
        async for frame in self.ws:
            if frame.type == aiohttp.WSMsgType.TEXT:
                yield orjson.loads(frame.data)
            elif frame.type == aiohttp.WSMsgType.BINARY:
                yield msgpack.unpackb(frame.data, raw=False) if self.codec == "msgpack" \
                    else orjson.loads(frame.data)
            elif frame.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING,
                                aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                break
        self.close_code = self.ws.close_code

    async def close(self) -> None:
        await self.ws.close(code=1000)
        self.close_code = 1000

    def abort(self) -> None:
        # No close frame: to the server this looks like a network failure.
        conn = self.ws._response.connection  # noqa: SLF001
        if conn is not None and conn.transport is not None:
            conn.transport.abort()
        else:  # pragma: no cover
            self.ws._response.close()  # noqa: SLF001


Opener = Callable[..., Awaitable[Transport]]
#: name -> opener(http, url, codec=..., token=...). SSE and polling register here.
TRANSPORTS: dict[str, Opener] = {"websocket": WebSocketTransport.open}
AUTO_ORDER = ("websocket", "sse", "polling")


class Welcomed(Transport):
    """A transport whose first message ``auto`` already read (to see a ``welcome``).

    Everything but :meth:`messages` is the wrapped transport's; ``messages()``
    yields the kept message first, then the rest of the same stream.
    """

    def __init__(self, inner: Transport, stream: AsyncIterator[dict[str, Any]],
                 first: dict[str, Any]) -> None:
        self.inner = inner
        self.stream = stream
        self.first = first
        self.name = inner.name

    @property
    def close_code(self) -> int | None:  # type: ignore[override]
        return self.inner.close_code

    async def messages(self) -> AsyncIterator[dict[str, Any]]:
        yield self.first
        async for msg in self.stream:
            yield msg

    async def send(self, msg: dict[str, Any]) -> None:
        await self.inner.send(msg)

    async def close(self) -> None:
        await self.inner.close()

    def abort(self) -> None:
        self.inner.abort()

    def drain(self) -> None:
        self.inner.drain()

    def drop(self) -> None:
        self.inner.drop()


async def _open_welcomed(opener: Opener, http: aiohttp.ClientSession, url: str, *,
                         codec: str, token: str | None, welcome_timeout: float) -> Transport:
    """Open and wait for ``welcome``: a proxy that accepts the handshake and then
    passes nothing (a buffering proxy in front of SSE, say) counts as a failure."""
    transport = await opener(http, url, codec=codec, token=token)
    stream = transport.messages()
    try:
        first = await asyncio.wait_for(anext(stream), welcome_timeout)
    except BaseException:
        transport.abort()
        raise
    if first.get("type") != "welcome":
        transport.abort()
        raise ConnectionError(f"{transport.name}: first message was {first.get('type')!r}, "
                              "not welcome")
    return Welcomed(transport, stream, first)


async def make_transport(kind: str, http: aiohttp.ClientSession, url: str, *,
                         codec: str = "json", token: str | None = None,
                         welcome_timeout: float = 4.0) -> Transport:
    """Open ``kind``; ``auto`` takes the first of :data:`AUTO_ORDER` that opens and
    says ``welcome`` within ``welcome_timeout`` seconds (as the browser SDK does)."""
    if kind != "auto":
        return await TRANSPORTS[kind](http, url, codec=codec, token=token)
    last: BaseException | None = None
    for name in AUTO_ORDER:
        opener = TRANSPORTS.get(name)
        if opener is None:
            continue
        try:
            return await _open_welcomed(opener, http, url, codec=codec, token=token,
                                        welcome_timeout=welcome_timeout)
        except (Exception, TimeoutError) as exc:  # try the next, more conservative transport
            last = exc
    raise ConnectionError(f"no transport could connect: {last}")
