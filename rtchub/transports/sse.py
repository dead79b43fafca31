"""Server-Sent Events downstream: ``GET /sse`` (WHATWG HTML, "Server-sent events").

One event per server message: ``event: <type>``, ``id: <sessionId>.<seq>``,
``data: <json>`` (the same JSON object, ``seq`` included, that a WebSocket
client gets). Because the id names the session, the browser's own
EventSource reconnect - the same URL with a ``Last-Event-ID`` header - is a
resume: the hub replays everything after ``seq`` and then says ``resumed``.
Upstream goes through ``POST /send`` (:mod:`rtchub.transports.http_common`).

The hub calls :meth:`SseStream.deliver` synchronously, so deliver only
appends to a list and wakes the stream's handler, which is the one writer of
its response: a burst of messages becomes one write, and there is no task per
message. Comment lines (``: ping``) every ``sse_heartbeat`` seconds keep
proxies from timing the stream out and make a dead peer show up on write.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import orjson
from aiohttp import web

from rtchub.core.outgoing import Outgoing
from rtchub.protocol.codec import json_frame
from rtchub.protocol.errors import ErrorCode
from rtchub.transports.http_common import (
    admit,
    cors_headers,
    error_response,
    refused,
    registry_of,
    rtchub_of,
    verdict_response,
)

if TYPE_CHECKING:
    from rtchub.core.hub import Hub
    from rtchub.core.session import Session

#: ``retry:`` sent first: milliseconds EventSource waits before reconnecting.
#: Short, because a reconnect within the grace period is a resume.
RETRY_MS = 1000


def _event_name(out: Outgoing) -> bytes:
    mtype = out.msg.get("type")
    if type(mtype) is not str or not mtype or "\n" in mtype or "\r" in mtype:
        return b"message"  # a field may not span lines; never seen for server messages
    return mtype.encode()


class SseStream:
    """One open event stream: a :class:`~rtchub.core.session.Sink` of the hub."""

    __slots__ = ("session", "transport_name", "hub", "request", "response", "chunks", "pending",
                 "waiter", "closing", "dead", "close_code", "max_pending", "peer")
    #: A ``resume`` sent through ``POST /send`` moves the stream onto the old session.
    resume_hint: str | None = None

    def __init__(self, hub: Hub, request: web.Request, response: web.StreamResponse,
                 peer: str = "") -> None:
        self.session: Session | None = None
        self.transport_name = "sse"
        #: The client's address (the gatekeeper's verdict): what the connection log shows.
        self.peer = peer
        self.hub = hub
        self.request = request
        self.response = response
        self.chunks: list[bytes] = []
        self.pending = 0
        self.waiter: asyncio.Future[None] | None = None
        self.closing = False
        self.dead = False
        self.close_code: int | None = None
        self.max_pending = hub.settings.max_pending_bytes

    # -- Sink ---------------------------------------------------------------------
    def deliver(self, seq: int, out: Outgoing) -> None:
        if self.closing:
            return
        session = self.session
        sid = session.id.encode() if session is not None else b""
        chunk = b"id: %s.%d\nevent: %s\ndata: %s\n\n" % (
            sid, seq, _event_name(out), json_frame(seq, out.json))
        self._push(chunk)
        transport = self.request.transport
        buffered = transport.get_write_buffer_size() if transport is not None else 0
        if self.pending + buffered > self.max_pending:
            # A reader that cannot keep up: end the stream (unclean, so the
            # session waits for a Last-Event-ID resume) instead of growing memory.
            self.dead = True
            self.closing = True
            self.chunks.clear()
            self._wake()

    def close(self, code: int, reason: str) -> None:
        """End the stream; a final ``close`` event tells SDKs why (4009: do not come back)."""
        if self.closing:
            return
        self.close_code = int(code)
        self._push(b"event: close\ndata: %s\n\n" % orjson.dumps(
            {"type": "close", "code": int(code), "reason": reason}))
        self.closing = True
        self._wake()

    # -- internals ------------------------------------------------------------------
    def raw(self, chunk: bytes) -> None:
        self._push(chunk)

    def _push(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        self.pending += len(chunk)
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def connection_gone(self) -> bool:
        transport = self.request.transport
        return transport is None or transport.is_closing()

    def gone(self) -> None:
        """The TCP connection is gone (seen by the registry's sweep)."""
        self.dead = True
        self.closing = True
        self._wake()

    async def run(self) -> None:
        """Write what deliver() queued, a heartbeat when idle, until closed or gone."""
        loop = asyncio.get_running_loop()
        heartbeat = max(0.05, self.hub.settings.sse_heartbeat)
        response = self.response
        while not self.dead:
            if not self.chunks:
                if self.closing:
                    return
                waiter = self.waiter = loop.create_future()
                timer = loop.call_later(heartbeat, _resolve, waiter)
                try:
                    await waiter
                finally:
                    timer.cancel()
                    self.waiter = None
                if self.dead:
                    return
                if not self.chunks:
                    self.chunks.append(b": ping\n\n")
            data = b"".join(self.chunks)
            self.chunks.clear()
            self.pending = 0
            try:
                await response.write(data)
            except (ConnectionError, RuntimeError):
                self.dead = True
                return

    def finished(self) -> None:
        """The handler is done: an unclean detach keeps the session for its grace period."""
        self.closing = True
        session = self.session
        if session is not None:
            self.session = None
            if session.sink is self:
                self.hub.detach(session, clean=False)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _parse_last_event_id(value: str) -> tuple[str, int] | None:
    sid, dot, seq = value.strip().rpartition(".")
    if not dot or not sid or not seq.isdigit() or len(seq) > 15:
        return None
    return sid, int(seq)


async def handle(request: web.Request) -> web.StreamResponse:
    """``GET /sse``: a new session, or with ``Last-Event-ID`` the old one resumed.

    A ``Last-Event-ID`` that can no longer be resumed (grace period over,
    buffer overflowed, unknown) is not refused with a 4xx - EventSource
    would stop reconnecting for good - but answered on the stream: first an
    ``error`` event ``session-expired`` (no ``id``), then a fresh session's
    ``welcome``. The client joins its rooms again, as after a WebSocket
    resume that failed. A resume that the identity forbids (with auth on, the
    token's ``sub`` is not the session's) is refused before the stream: 403.
    The verdict is :meth:`Hub.resume_decision`'s, as for every transport.
    """
    app = rtchub_of(request)
    hub = app.hub
    registry = registry_of(request)
    if registry.stopping:
        return error_response(request, 503, ErrorCode.INTERNAL, "server shutting down")
    verdict = await admit(request)
    if not verdict.ok:
        return refused(request, verdict)
    raw_last = request.headers.get("Last-Event-ID") or request.query.get("lastEventId") or ""
    last = _parse_last_event_id(raw_last) if raw_last else None
    identity = verdict.identity
    if last is not None:
        refusal = None
        if last[0] not in hub.sessions and app.cluster is not None:
            # Held by another node, or only mirrored after its node died: take
            # it over (no sticky sessions needed), then resume it here as usual.
            refusal = await app.cluster.take_over(last[0], last[1], identity)
        decision = refusal or hub.resume_decision(last[0], last[1], identity)
        if decision.code in (ErrorCode.FORBIDDEN, ErrorCode.UNAUTHORIZED):
            return verdict_response(request, decision)
    headers = {
        "Cache-Control": "no-store",
        # nginx: do not buffer this response (a buffered event stream
        # arrives in lumps, or never).
        "X-Accel-Buffering": "no",
        **cors_headers(request),
    }
    response = web.StreamResponse(status=200, headers=headers)
    response.content_type = "text/event-stream"
    await response.prepare(request)
    stream = SseStream(hub, request, response, verdict.client)
    registry.streams.add(stream)
    try:
        stream.raw(b"retry: %d\n\n" % RETRY_MS)
        # Asked again: the session may have changed while the headers went out.
        decision = hub.resume_decision(last[0], last[1], identity) if last is not None else None
        if decision is not None and decision.ok:
            hub.resume(decision, stream, identity)
        else:
            if raw_last:
                stream.raw(b"event: error\ndata: %s\n\n" % orjson.dumps({
                    "type": "error", "code": ErrorCode.SESSION_EXPIRED,
                    "message": "cannot resume that session; this is a new one: join again",
                    "lastEventId": raw_last[:64]}))
            hub.open(stream, user_id=verdict.user_id, display_name=verdict.display_name,
                     claims=verdict.claims)
        await stream.run()
    finally:
        registry.streams.discard(stream)
        stream.finished()
    if stream.dead and request.transport is not None:
        # Nothing more can be written (or the reader is too slow): drop the connection.
        request.transport.abort()
    return response
