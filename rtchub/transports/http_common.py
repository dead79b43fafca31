"""What the HTTP transports (SSE, long-polling) share: CORS, errors, ``POST /send``.

SSE and polling sessions are ordinary core sessions (:mod:`rtchub.core.hub`):
only the downstream differs (an event stream, or answers to polls), while the
upstream is the same for both - ``POST /send?session=ID`` with one message or
an array, each handed to :meth:`Hub.receive` exactly as a WebSocket frame would
be. Works for a WebSocket session's id too.

A session id is never the only credential (PROTOCOL.md "SSE and
long-polling"). With auth on, every request proves the session's identity
with a token (``Authorization: Bearer``, or ``?token=`` where a header cannot
be set), checked by the same :meth:`Hub.identity_refusal` that decides a
resume: missing or expired -> 401, someone else's -> 403. In open mode the
SDKs send the id in the :data:`SESSION_HEADER` header rather than the URL
(``?session=`` stays accepted for other clients), so proxies that log URLs do
not log it; rtchub itself keeps no access log.

:func:`rtchub.transports.http_routes.register` adds the routes and one
:class:`HttpTransports` service that sweeps every open stream and poller once
a second (one timer for all of them, as :mod:`rtchub.transports.liveness`
does for WebSocket).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from rtchub.auth.gate import CORS_ALLOW_HEADERS, Admission
from rtchub.core.resume import GONE, Identity, ResumeVerdict
from rtchub.protocol.constants import SESSION_HEADER
from rtchub.protocol.errors import CloseCode, ErrorCode
from rtchub.timers import Periodic

if TYPE_CHECKING:
    from rtchub.app import RtcHub
    from rtchub.core.hub import Hub
    from rtchub.core.session import Session
    from rtchub.transports.poll import PollSink
    from rtchub.transports.sse import SseStream

log = logging.getLogger("rtchub.http")

#: Headers a browser may send cross-origin on these routes (Fetch standard,
#: CORS protocol): ``Last-Event-ID`` for SSE resume, ``Content-Type`` for a
#: JSON body, ``Authorization`` for tokens and ``X-RtcHub-Session`` for the
#: session id, both kept out of URLs.
ALLOW_HEADERS = CORS_ALLOW_HEADERS
ALLOW_METHODS = "GET, POST, OPTIONS"
#: Seconds a browser may cache a preflight answer.
PREFLIGHT_MAX_AGE = "600"
JSON_TYPE = "application/json"


#: The server and the transport registry, as the route handlers find them.
SERVER_KEY: web.AppKey[Any] = web.AppKey("rtchub.http_transports.server")
REGISTRY_KEY: web.AppKey[Any] = web.AppKey("rtchub.http_transports.registry")


def rtchub_of(request: web.Request) -> RtcHub:
    return request.app[SERVER_KEY]


def cors_headers(request: web.Request) -> dict[str, str]:
    """CORS answer headers for an allowed cross-origin caller, else none.

    Same-origin requests carry no ``Origin`` (or one equal to the host) and
    need nothing; a disallowed origin gets no ``Access-Control-Allow-Origin``,
    so the browser withholds the answer from the page.
    """
    origin = request.headers.get("Origin")
    if not origin:
        return {}
    if not rtchub_of(request).gatekeeper.origin_allowed(origin, request.host):
        return {}
    # No Allow-Credentials: tokens travel in the query or Authorization
    # header, never in cookies (rtchub.auth.gate).
    return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}


def origin_refused(request: web.Request) -> bool:
    origin = request.headers.get("Origin")
    return bool(origin) and not rtchub_of(request).gatekeeper.origin_allowed(origin, request.host)


def error_response(request: web.Request, status: int, code: str, message: str,
                   **extra: Any) -> web.Response:
    """A 4xx with the protocol's ``error`` object as body (PROTOCOL.md "Error codes")."""
    body: dict[str, Any] = {"type": "error", "code": code, "message": message}
    body.update(extra)
    return web.Response(status=status, body=orjson.dumps(body), content_type=JSON_TYPE,
                        headers={**cors_headers(request), "Cache-Control": "no-store"})


def json_response(request: web.Request, body: bytes, status: int = 200) -> web.Response:
    return web.Response(status=status, body=body, content_type=JSON_TYPE,
                        headers={**cors_headers(request), "Cache-Control": "no-store"})


def session_expired(request: web.Request, message: str = "session is gone; open a new one and join again"
                    ) -> web.Response:
    """Unknown, ended or no longer resumable session: 404 ``session-expired``.

    404 rather than 410 because the server cannot tell "never existed" from
    "expired" (it forgets ended sessions); the code says what to do: start over.
    """
    return error_response(request, 404, ErrorCode.SESSION_EXPIRED, message)


async def preflight(request: web.Request) -> web.Response:
    """``OPTIONS``: the CORS preflight of the Fetch standard, for allowed origins only."""
    headers = cors_headers(request)
    if not headers:
        return web.Response(status=403, text="origin not allowed")
    headers["Access-Control-Allow-Methods"] = ALLOW_METHODS
    headers["Access-Control-Allow-Headers"] = (
        request.headers.get("Access-Control-Request-Headers") or ALLOW_HEADERS)
    headers["Access-Control-Max-Age"] = PREFLIGHT_MAX_AGE
    return web.Response(status=204, headers=headers)


async def admit(request: web.Request) -> Admission:
    """The handshake check every transport shares (:mod:`rtchub.auth.gate`)."""
    verdict = rtchub_of(request).admit(request.headers, dict(request.query), request.remote or "")
    if inspect.isawaitable(verdict):  # an auth layer may check tokens asynchronously
        verdict = await verdict
    return verdict


def refused(request: web.Request, verdict: Admission) -> web.Response:
    """The gatekeeper's refusal (401 / 403 / 429) with its headers, CORS added."""
    response = verdict.http_response()
    response.headers.update(cors_headers(request))
    return response


def session_id_of(request: web.Request) -> str:
    """The session a request is for: the :data:`SESSION_HEADER` header, else ``?session=``."""
    return request.headers.get(SESSION_HEADER) or request.query.get("session", "")


def identify(request: web.Request) -> tuple[Identity | None, web.Response | None]:
    """The identity this request's token proves (None in open mode), or the 401 to answer."""
    verdict = rtchub_of(request).gatekeeper.identify(headers=request.headers, query=request.query)
    if not verdict.ok:
        return None, refused(request, verdict)
    return verdict.identity, None


def verdict_response(request: web.Request, verdict: ResumeVerdict) -> web.Response:
    """A refused :class:`ResumeVerdict` as a 401 / 403 / 404 with the ``error`` body."""
    assert verdict.code is not None
    if verdict.message == GONE:
        return session_expired(request)  # the HTTP wording: open a new session
    response = error_response(request, verdict.http_status, verdict.code, verdict.message)
    if verdict.http_status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="rtchub", error="invalid_token"'
    return response


def find_session(request: web.Request, identity: Identity | None
                 ) -> tuple[Session | None, web.Response | None]:
    """The live local session of this request, after :meth:`Hub.identity_refusal`.

    ``(None, None)`` when no live session of that id is here (another node
    may hold it); ``(None, 403)`` when the request may not act for it.
    """
    sid = session_id_of(request)
    hub = rtchub_of(request).hub
    session = hub.sessions.get(sid) if sid else None
    if session is None or session.ended:
        return None, None
    refusal = hub.identity_refusal(session, identity)
    if refusal is not None:
        return None, error_response(request, 403, ErrorCode.FORBIDDEN, refusal)
    return session, None


async def read_body(request: web.Request) -> tuple[Any, web.Response | None]:
    """The decoded JSON body, or the 4xx answer to give instead.

    The size is checked before reading (``Content-Length``) and while reading
    (aiohttp's ``client_max_size`` is ``max_body_size``), so a chunked body
    cannot get around it.
    """
    settings = rtchub_of(request).settings
    limit = settings.max_body_size
    if request.content_length is not None and request.content_length > limit:
        return None, error_response(request, 413, ErrorCode.INVALID_MESSAGE,
                                    f"body larger than {limit} bytes")
    try:
        # A body trickled byte by byte would hold the handler for ever (slowloris).
        async with asyncio.timeout(settings.request_timeout):
            raw = await request.read()
    except TimeoutError:
        return None, error_response(request, 408, ErrorCode.INVALID_MESSAGE,
                                    f"body not received within {settings.request_timeout:g} s")
    except web.HTTPRequestEntityTooLarge:
        return None, error_response(request, 413, ErrorCode.INVALID_MESSAGE,
                                    f"body larger than {limit} bytes")
    if len(raw) > limit:
        return None, error_response(request, 413, ErrorCode.INVALID_MESSAGE,
                                    f"body larger than {limit} bytes")
    try:
        return orjson.loads(raw), None
    except orjson.JSONDecodeError:
        return None, error_response(request, 400, ErrorCode.INVALID_JSON, "body is not valid JSON")


async def send(request: web.Request) -> web.Response:
    """``POST /send?session=ID``: one message object or an array of them -> 202.

    Each message goes through :meth:`Hub.receive`, so errors about a message
    (bad field, not in room...) come back downstream as ``error`` messages with
    its ``id``, exactly as on WebSocket; only a body that cannot be read at
    all is answered here with a 4xx.
    """
    if origin_refused(request):
        return error_response(request, 403, ErrorCode.FORBIDDEN, "origin not allowed")
    app = rtchub_of(request)
    identity, problem = identify(request)
    if problem is not None:
        return problem
    session, problem = find_session(request, identity)
    if problem is not None:
        return problem
    sid = session_id_of(request)
    cluster = app.cluster
    if session is None and (cluster is None or not sid):
        return session_expired(request)
    body, problem = await read_body(request)
    if problem is not None:
        return problem
    if isinstance(body, dict):
        msgs = [body]
    elif isinstance(body, list):
        msgs = body
    else:
        return error_response(request, 400, ErrorCode.INVALID_MESSAGE,
                              "body must be a message object or an array of them")
    too_big = oversized(app.settings.max_message_size, msgs)
    if too_big is not None:
        # What a WebSocket closes with 1009 (RFC 6455 section 7.4.1): here a
        # 413 (RFC 9110 section 15.5.14), and no message of the body is taken.
        return error_response(request, 413, ErrorCode.INVALID_MESSAGE,
                              f"message {too_big} is larger than "
                              f"{app.settings.max_message_size} bytes", index=too_big)
    if session is None:
        # Another node holds the session (no sticky sessions needed): it
        # receives the messages, in order, and answers before we do.
        assert cluster is not None
        forwarded = await cluster.forward_receive(
            sid, msgs, identity.user_id if identity is not None else None)
        if forwarded is None:
            return session_expired(request)
        if forwarded < 0:
            return error_response(request, 403, ErrorCode.FORBIDDEN,
                                  "that session belongs to another user")
        return json_response(request, orjson.dumps({"accepted": forwarded}), status=202)
    accepted = receive_all(app.hub, session, msgs)
    return json_response(request, orjson.dumps({"accepted": accepted}), status=202)


def oversized(limit: int, msgs: list[Any]) -> int | None:
    """The index of the first message larger than ``limit`` bytes as JSON, or None.

    The same limit as a WebSocket frame (PROTOCOL.md: ``/send`` holds each
    message to the same size and rate limits), measured on the message
    re-encoded compactly, so whitespace in the body neither helps nor hurts.
    """
    for i, msg in enumerate(msgs):
        try:
            if len(orjson.dumps(msg)) > limit:
                return i
        except orjson.JSONEncodeError:
            return None  # nested too deeply: Hub.receive answers it as any bad message
    return None


def receive_all(hub: Hub, session: Session, msgs: list[Any]) -> int:
    """Hand ``msgs`` to ``session`` in order; how many were accepted (:meth:`Hub.receive_all`).

    A ``resume`` from a transport that resumes another way (polling) is
    refused by the hub itself (:attr:`Sink.resume_hint`).
    """
    return hub.receive_all(session, msgs)


async def close(request: web.Request) -> web.Response:
    """``POST /close?session=ID``: the client is leaving for good (like close 1000).

    SSE and polling have no close frame: a dropped stream looks the same as a
    tab that went away on purpose. Without this call the session waits out
    its grace period and members see ``user-left`` ``disconnected`` late.
    ``navigator.sendBeacon`` can make this call from ``pagehide``.
    """
    if origin_refused(request):
        return error_response(request, 403, ErrorCode.FORBIDDEN, "origin not allowed")
    identity, problem = identify(request)
    if problem is not None:
        return problem
    session, problem = find_session(request, identity)
    if problem is not None:
        return problem
    app = rtchub_of(request)
    if session is None:
        sid = session_id_of(request)
        # Another node holds the session: it closes it there.
        closed = await app.cluster.forward_close(
            sid, identity.user_id if identity is not None else None
        ) if app.cluster is not None and sid else None
        if closed is not None and closed < 0:
            return error_response(request, 403, ErrorCode.FORBIDDEN,
                                  "that session belongs to another user")
        if closed:
            return json_response(request, b'{"closed":true}')
        return session_expired(request)
    close_session(app.hub, session)
    return json_response(request, b'{"closed":true}')


def close_session(hub: Hub, session: Session) -> None:
    """End ``session`` as a clean client close would (members see ``user-left`` ``left``)."""
    sink = session.sink
    hub.detach(session, clean=True)
    if sink is not None:
        sink.session = None
        sink.close(CloseCode.NORMAL, "closed by client")


class HttpTransports:
    """The registry and the one timer of all SSE streams and pollers of a server.

    Every second: SSE streams whose TCP connection is gone are ended (aiohttp
    does not cancel handlers on disconnect, and a write would only notice at
    the next heartbeat); pollers silent for longer than ``poll_timeout_max``
    plus :attr:`POLL_SLACK` seconds are detached unclean, so their session
    enters its grace period as a dropped WebSocket would.
    """

    #: Seconds a poller may take between two polls (round trip, processing,
    #: a retry after a failed request) before it counts as gone.
    POLL_SLACK = 10.0
    SWEEP_EVERY = 1.0

    def __init__(self, app: RtcHub) -> None:
        self.app = app
        self.streams: set[SseStream] = set()
        self.pollers: set[PollSink] = set()
        self._timer = Periodic(self.SWEEP_EVERY, self.sweep, "http-transports")
        self.stopping = False

    async def start(self) -> None:
        self.stopping = False
        self._timer.start()

    async def stop(self) -> None:
        """End every stream and answer every poll, so the HTTP server can close."""
        self.stopping = True
        for stream in list(self.streams):
            stream.close(CloseCode.GOING_AWAY, "server shutting down")
        for poller in list(self.pollers):
            poller.close(CloseCode.GOING_AWAY, "server shutting down")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 2.0
        while (self.streams or any(p.waiter is not None for p in self.pollers)) \
                and loop.time() < deadline:
            await asyncio.sleep(0.02)
        await self._timer.stop()

    def sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for stream in list(self.streams):
            if stream.connection_gone():
                stream.gone()
        idle_limit = self.app.settings.poll_timeout_max + self.POLL_SLACK
        hub = self.app.hub
        for poller in list(self.pollers):
            session = poller.session
            if session is None or session.sink is not poller:
                self.pollers.discard(poller)
                continue
            poller.drop_dead_waiter()
            if poller.waiter is None and now - poller.last_poll > idle_limit:
                self.pollers.discard(poller)
                poller.session = None
                hub.detach(session, clean=False, reason="timeout")


def registry_of(request: web.Request) -> HttpTransports:
    return request.app[REGISTRY_KEY]
