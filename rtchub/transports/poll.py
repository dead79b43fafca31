"""HTTP long-polling downstream: ``POST /poll/open`` and ``GET /poll``.

The session's replay buffer (:attr:`Session.buffer`, every message with its
``seq``) already is the outbox, so a poll is a read of it: ``GET
/poll?session=ID&after=SEQ&timeout=T`` answers the messages with
``seq > SEQ``, waiting up to ``T`` seconds (at most ``poll_timeout_max``) for
the first one; ``timeout=0`` is short polling. ``after`` acknowledges
everything up to it, so a poll whose answer was lost is simply repeated with
the same ``after``: resume needs nothing else. A poll for a session that no
poller holds (grace period, or another transport) takes it over exactly like
``resume`` (replay, then ``resumed``; the older transport is closed with 4009),
after the same :meth:`Hub.resume_decision`; with auth on, every poll carries
the token and proves the session's identity.

When the hub closes a poller (token expired, abuse, shutdown), the session is
detached at once, as a WebSocket's would be when its connection closes: the
next poll answers the ``close``, and a later one is a resume, which an
expired token cannot make (401), so the session ends after its grace period.

:class:`PollSink` holds no messages and no connection: ``deliver`` only wakes
the poll that is waiting, if any. Only one poll waits per session; a newer
one answers the older with ``[]``, so two readers can never split a stream.
"""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from rtchub.core.outgoing import Outgoing
from rtchub.protocol.codec import json_frame
from rtchub.protocol.errors import ErrorCode
from rtchub.transports.http_common import (
    admit,
    error_response,
    identify,
    json_response,
    origin_refused,
    refused,
    registry_of,
    rtchub_of,
    session_id_of,
    verdict_response,
)

if TYPE_CHECKING:
    from rtchub.core.hub import Hub
    from rtchub.core.session import Session

#: What a waiting poll is woken with.
_NEW, _SUPERSEDED, _CLOSED, _TIMEOUT = "new", "superseded", "closed", "timeout"


class PollSink:
    """A polling client as the hub sees it: a :class:`~rtchub.core.session.Sink`."""

    __slots__ = ("session", "transport_name", "hub", "waiter", "waiter_request", "last_poll",
                 "closed_with", "welcome", "peer")
    #: Over polling, resume is the poll itself: a ``resume`` message would move
    #: the poller onto another session under the id it keeps polling with.
    resume_hint: str | None = (
        "over polling, resume by polling the old session: GET /poll?session=OLD&after=LASTSEQ")

    def __init__(self, hub: Hub, now: float, peer: str = "") -> None:
        self.session: Session | None = None
        self.transport_name = "polling"
        #: The client's address (the gatekeeper's verdict): what the connection log shows.
        self.peer = peer
        self.hub = hub
        self.waiter: asyncio.Future[str] | None = None
        self.waiter_request: web.Request | None = None
        self.last_poll = now
        #: The ``close`` pseudo-message once the hub closed this transport.
        self.closed_with: dict[str, Any] | None = None
        self.welcome: Outgoing | None = None

    def deliver(self, seq: int, out: Outgoing) -> None:
        if seq == 0:
            self.welcome = out  # not in the buffer: returned by POST /poll/open
        self._wake(_NEW)

    def close(self, code: int, reason: str) -> None:
        if self.closed_with is None:
            self.closed_with = {"type": "close", "code": int(code), "reason": reason}
        session = self.session
        if session is not None and session.sink is self:
            # No connection to drop: the close itself ends the transport, so the
            # session waits out its grace period now (unclean, as for WebSocket),
            # and only a resume - with a valid token when auth is on - brings it back.
            self.hub.detach(session, clean=False)
        self._wake(_CLOSED)

    def _wake(self, why: str) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(why)

    def drop_dead_waiter(self) -> None:
        """Release a poll whose client is gone, so the session can age out."""
        request = self.waiter_request
        if request is not None and (request.transport is None or request.transport.is_closing()):
            self._wake(_SUPERSEDED)


def _bad(request: web.Request, message: str) -> web.Response:
    return error_response(request, 400, ErrorCode.INVALID_MESSAGE, message)


def _batch(session: Session, after: int) -> list[bytes]:
    """Encoded messages with ``seq > after`` (buffer seqs are consecutive)."""
    return [json_frame(seq, body) for seq, body in session.buffered(after)]


def _encode(frames: list[bytes], closed: dict[str, Any] | None) -> bytes:
    if closed is not None:
        frames = [*frames, orjson.dumps(closed)]
    return b"[" + b",".join(frames) + b"]"


async def open_session(request: web.Request) -> web.Response:
    """``POST /poll/open`` -> the ``welcome`` message (``seq`` 0, ``sessionId``) plus ``pollTimeout``."""
    app = rtchub_of(request)
    registry = registry_of(request)
    if registry.stopping:
        return error_response(request, 503, ErrorCode.INTERNAL, "server shutting down")
    verdict = await admit(request)
    if not verdict.ok:
        return refused(request, verdict)
    sink = PollSink(app.hub, asyncio.get_running_loop().time(), verdict.client)
    session = app.hub.open(sink, user_id=verdict.user_id, display_name=verdict.display_name,
                           claims=verdict.claims)
    registry.pollers.add(sink)
    welcome: dict[str, Any] = {"seq": 0}
    welcome.update(sink.welcome.msg if sink.welcome is not None
                   else {"type": "welcome", "sessionId": session.id})
    welcome["pollTimeout"] = app.settings.poll_timeout_max
    return json_response(request, orjson.dumps(welcome))


async def handle(request: web.Request) -> web.Response:
    """``GET /poll?session=ID&after=SEQ&timeout=T`` -> JSON array of messages."""
    if origin_refused(request):
        return error_response(request, 403, ErrorCode.FORBIDDEN, "origin not allowed")
    app = rtchub_of(request)
    hub = app.hub
    registry = registry_of(request)
    q = request.query
    try:
        after = int(q.get("after", "0"))
        timeout = float(q.get("timeout", app.settings.poll_timeout_max))
    except ValueError:
        return _bad(request, "after must be an integer and timeout a number of seconds")
    if after < 0 or not math.isfinite(timeout):
        return _bad(request, "after must be >= 0 and timeout finite")
    timeout = min(max(timeout, 0.0), app.settings.poll_timeout_max)
    identity, problem = identify(request)
    if problem is not None:
        return problem
    sid = session_id_of(request)
    refusal = None
    if sid and app.cluster is not None and sid not in hub.sessions:
        # Held by another node: take it over; the poll below is then a resume.
        refusal = await app.cluster.take_over(sid, after, identity)
    # Every poll asks: the identity must be the session's, and every message
    # after ``after`` must still be buffered (never a silent gap).
    verdict = refusal or hub.resume_decision(sid, after, identity)
    if not verdict.ok:
        return verdict_response(request, verdict)
    session = verdict.session
    assert session is not None
    loop = asyncio.get_running_loop()
    sink = session.sink
    if not isinstance(sink, PollSink) or sink.closed_with is not None:
        # Nobody polls this session (grace period) or another transport holds
        # it: this poll is a resume (PROTOCOL.md "Sessions, heartbeat, resume").
        if registry.stopping:
            return error_response(request, 503, ErrorCode.INTERNAL, "server shutting down")
        sink = PollSink(hub, loop.time(),
                        app.gatekeeper.client_address(request.remote or "", request.headers))
        registry.pollers.add(sink)
        hub.resume(verdict, sink, identity)
    if sink.waiter is not None:
        sink._wake(_SUPERSEDED)  # noqa: SLF001 - one reader per session, the newest wins
    sink.last_poll = loop.time()
    frames = _batch(session, after)
    if not frames and timeout > 0 and sink.closed_with is None:
        waiter = sink.waiter = loop.create_future()
        sink.waiter_request = request
        timer = loop.call_later(timeout, _resolve, waiter)
        try:
            why = await waiter
        finally:
            timer.cancel()
            if sink.waiter is waiter:
                sink.waiter = None
                sink.waiter_request = None
        sink.last_poll = loop.time()
        if why == _SUPERSEDED:
            return json_response(request, b"[]")
        if sink.session is session:
            frames = _batch(session, after)
    if sink.closed_with is not None:
        registry.pollers.discard(sink)
    return json_response(request, _encode(frames, sink.closed_with))


def _resolve(fut: asyncio.Future[str]) -> None:
    if not fut.done():
        fut.set_result(_TIMEOUT)
