"""Who may open a session: the handshake check shared by every transport.

Each transport (WebSocket on either stack, SSE, polling) and ``/ice-servers``
asks the same :class:`Gatekeeper` before it creates a session, so a rule
added here holds everywhere at once. In order, cheapest first:

0. Host, when ``--allowed-host`` is set (DNS rebinding: a hostile page
   whose own name now resolves to this server sends an Origin equal to
   the Host it asked for, so the Origin check alone admits it; only the
   Host name tells the server which site the browser thinks it talks to,
   RFC 9110 section 7.2) -> 421 Misdirected Request;
1. Origin (cross-site WebSocket hijacking: a browser sends the page's
   Origin with every WebSocket handshake and CORS request, RFC 6455 section
   10.2, RFC 6454) -> 403 before any upgrade;
2. the per-IP session handshake rate (:mod:`rtchub.auth.limits`) -> 429;
3. the token (``?token=`` or ``Authorization: Bearer``, RFC 6750 section
   2.1 and 2.3) when ``--auth jwt`` -> 401 when missing or refused. Only a
   WebSocket may come without one and send an ``auth`` message first,
   within ``auth_timeout`` seconds, else it is closed with 4001.

After the handshake the Gatekeeper also owns what the token grants: the
``rooms`` claim (a join gate, ``forbidden`` elsewhere), ``sub`` as the fixed
userId, ``name`` as displayName, and the token's expiry (``token-expiring``,
then 4001 unless a fresh ``auth`` arrived).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import time
from collections.abc import Callable, Mapping
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from rtchub.auth import forwarded
from rtchub.auth.limits import TOO_MANY_REQUESTS, Limits
from rtchub.core.hub import HubObserver
from rtchub.core.resume import Identity
from rtchub.protocol.errors import CloseCode, ErrorCode, ProtocolError
from rtchub.settings import Settings
from rtchub.timers import Periodic
from rtchub.transports.mux import ASK_AGAIN

if TYPE_CHECKING:
    import asyncio

    from aiohttp import web

    from rtchub.core.hub import Hub, JoinRequest
    from rtchub.core.session import Session
    from rtchub.transports.mux import RequestHead

log = logging.getLogger("rtchub.auth")

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
#: Tell a session this many seconds before its token expires (at most half
#: the token's remaining lifetime), so the client can fetch and send a new one.
WARN_BEFORE = 60.0
#: Request headers a cross-origin page may send to the HTTP transports.
CORS_ALLOW_HEADERS = "Authorization, Content-Type, Last-Event-ID, X-RtcHub-Session"


#: RFC 9110 section 15.5.20: this server does not answer for that Host name.
MISDIRECTED = 421
#: Paths answered whatever the Host: load balancer probes use an address.
HOST_EXEMPT = frozenset({"/healthz", "/readyz"})


def host_middleware(gate: Gatekeeper) -> Any:
    """An aiohttp middleware refusing every other Host (``--allowed-host``) with 421.

    Installed only when the option is set, so the default costs nothing.
    The transports' handshakes check the Host in :meth:`Gatekeeper.check`
    too (the picows WebSocket path never reaches aiohttp).
    """
    from aiohttp import web

    @web.middleware
    async def check_host(request: web.Request, handler: Any) -> Any:
        if request.path not in HOST_EXEMPT and not gate.host_allowed(request.headers.get("Host")):
            return Admission(MISDIRECTED, "host not allowed").http_response()
        return await handler(request)

    return check_host


class Admission:
    """The verdict on a handshake: ``status`` 0 admits, else the HTTP status to answer."""

    __slots__ = ("status", "reason", "claims", "user_id", "display_name", "client")

    def __init__(self, status: int = 0, reason: str = "", claims: dict[str, Any] | None = None,
                 user_id: str | None = None, display_name: str | None = None,
                 client: str = "") -> None:
        self.status = status
        self.reason = reason
        self.claims = claims
        self.user_id = user_id
        self.display_name = display_name
        #: The client's address (:mod:`rtchub.auth.forwarded`): what the session logs and is limited by.
        self.client = client

    @property
    def ok(self) -> bool:
        return self.status == 0

    @property
    def identity(self) -> Identity | None:
        """What the token proved (None in open mode, or a WebSocket still to send ``auth``)."""
        if self.claims is None or self.user_id is None:
            return None
        return Identity(self.user_id, self.claims)

    def headers(self) -> dict[str, str]:
        """Headers that go with a refusal (RFC 6750 section 3; RFC 6585 section 4)."""
        if self.status == 401:
            return {"WWW-Authenticate": 'Bearer realm="rtchub", error="invalid_token"'}
        if self.status == 429:
            return {"Retry-After": "1"}
        return {}

    def error_code(self) -> str:
        return {401: ErrorCode.UNAUTHORIZED, 429: ErrorCode.RATE_LIMITED}.get(
            self.status, ErrorCode.FORBIDDEN)

    def http_response(self) -> web.Response:
        """The refusal as an aiohttp response with a PROTOCOL.md ``error`` body."""
        from aiohttp import web

        return web.json_response(
            {"type": "error", "code": self.error_code(), "message": self.reason},
            status=self.status, headers=self.headers())


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (RFC 6750 section 2.1)."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None


class Gatekeeper:
    def __init__(self, settings: Settings, limits: Limits | None = None) -> None:
        self.settings = settings
        self.allowed = {o.rstrip("/").lower() for o in settings.allowed_origin}
        #: ``--allowed-host`` names, lower case, fnmatch patterns (``*.example.com``).
        self.hosts = [h.strip().strip("[]").lower().rstrip(".") for h in settings.allowed_host
                      if h.strip()]
        self.limits = limits if limits is not None else Limits(settings)
        #: The one decision of a request's client address (trusted proxies' headers).
        self.client_address = forwarded.from_settings(settings)
        self.verifier = None
        if settings.auth == "jwt":
            from rtchub.auth.tokens import TokenVerifier

            self.verifier = TokenVerifier(settings)
        elif settings.auth != "none":
            raise ValueError(f"--auth must be none or jwt, not {settings.auth!r}")
        self.expiry: TokenClock | None = None
        #: The hub whose sessions ``authenticate`` fixes the identity of (set by ``install``).
        self.hub: Hub | None = None

    # ------------------------------------------------------------ handshake
    def origin_allowed(self, origin: str | None, host: str | None) -> bool:
        """Cross-site WebSocket hijacking defence: browsers always send Origin.

        Non-browser clients send none and are judged by their token alone.
        Default: the page's own host; plus loopback pages in ``--auth none``.
        """
        if not origin:
            return True
        origin = origin.rstrip("/").lower()
        if "*" in self.allowed or origin in self.allowed:
            return True
        parts = urlsplit(origin)
        if host and parts.netloc == host.lower():
            return True
        if self.settings.auth == "none" and not self.allowed:
            return (parts.hostname or "") in LOOPBACK_HOSTS
        return False

    def host_allowed(self, host: str | None) -> bool:
        """``--allowed-host``: the request's Host name (port ignored) is one we serve."""
        patterns = self.hosts
        if not patterns:
            return True
        if not host:
            return False
        name = urlsplit("//" + host).hostname or ""
        return any(fnmatchcase(name, p) for p in patterns)

    def check(self, *, headers: Mapping[str, str], query: Mapping[str, str], peer: str,
              first_message_auth: bool = False) -> Admission:
        """Decide a handshake from TCP peer ``peer``. ``first_message_auth``: the
        transport can carry an ``auth`` message (WebSocket), so a missing token
        is not yet a refusal. The verdict's ``client`` is the address the
        session is known by (the real client behind a trusted proxy)."""
        if self.hosts and not self.host_allowed(headers.get("Host")):
            return Admission(MISDIRECTED, "host not allowed")
        client = self.client_address(peer, headers)
        if not self.origin_allowed(headers.get("Origin"), headers.get("Host")):
            return Admission(403, "origin not allowed", client=client)
        if not self.limits.admit_session(client):
            return Admission(429, "too many handshakes from this address", client=client)
        verifier = self.verifier
        if verifier is None:
            return Admission(client=client)
        token = query.get("token") or bearer_token(headers.get("Authorization"))
        if not token:
            if first_message_auth:
                return Admission(client=client)
            return Admission(401, "token required", client=client)
        from rtchub.auth.tokens import TokenError

        try:
            claims = verifier.verify(token)
        except TokenError as exc:
            return Admission(401, str(exc), client=client)
        return Admission(claims=claims, user_id=claims["sub"], display_name=claims.get("name"),
                         client=client)

    def identify(self, *, headers: Mapping[str, str], query: Mapping[str, str]) -> Admission:
        """The token of one request on an existing session (``/send``, ``/poll``, ``/close``).

        No Origin or rate check (the caller did those, or the session's own
        limits apply): only the proof of identity that PROTOCOL.md asks of every
        HTTP request with auth on. Admits with no identity in open mode.
        """
        verifier = self.verifier
        if verifier is None:
            return Admission()
        token = bearer_token(headers.get("Authorization")) or query.get("token")
        if not token:
            return Admission(401, "token required")
        from rtchub.auth.tokens import TokenError

        try:
            claims = verifier.verify(token)
        except TokenError as exc:
            return Admission(401, str(exc))
        return Admission(claims=claims, user_id=claims["sub"], display_name=claims.get("name"))

    def check_request(self, request: web.Request) -> Admission:
        """:meth:`check` for a plain aiohttp route (``/ice-servers``, SSE, polling):
        a token is required there whenever auth is on."""
        return self.check(headers=request.headers, query=request.query,
                          peer=request.remote or "")

    def admit_connection(self, transport: asyncio.BaseTransport, head: RequestHead | None = None) -> int:
        """The per-IP connection limits (:meth:`Limits.admit_connection`) by client address.

        The port mux calls this on accept (``head`` None), where only the TCP
        peer is known. A connection from a trusted proxy is decided once its
        request head is in (:data:`~rtchub.transports.mux.ASK_AGAIN`), by the
        client the head names. A proxy pools its upstream connections and
        sends many clients' requests over one, so only a WebSocket upgrade (a
        connection that then belongs to one client for its life) is counted
        against that client's open connections; every connection still takes
        from its handshake rate.
        """
        peername = transport.get_extra_info("peername")
        peer = peername[0] if peername else ""
        if head is None:
            if self.client_address.enabled and self.client_address.trusted(peer):
                # Counted in the fd budget now; by client once the head is in.
                return self.limits.admit_fd(transport) or ASK_AGAIN
            return self.limits.admit_connection(transport, peer)
        verdict = self.limits.admit_connection(
            transport, self.client_address(peer, head.headers()), count=head.upgrade)
        # Over the cap: answer 429 rather than reset, the proxy would make that a 502.
        return TOO_MANY_REQUESTS if verdict < 0 else verdict

    def hold_connection(self, transport: asyncio.BaseTransport | None, peer: str,
                        client: str) -> bool:
        """A WebSocket admitted on an already open connection: count it for its client.

        A proxy may send an upgrade over one of its pooled connections, which
        the port mux judged by an earlier request (:meth:`admit_connection`);
        once upgraded, the connection is this client's until it closes.
        Direct clients were counted on accept.
        """
        if transport is None or client == peer:
            return True
        return self.limits.hold(transport, client)

    def cors_headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        """CORS answer headers for an admitted request (Fetch standard, CORS protocol).

        Only an Origin this gatekeeper accepts is echoed; tokens travel in the
        query or the Authorization header, never cookies, so no credentials flag.
        """
        origin = headers.get("Origin")
        if not origin or not self.origin_allowed(origin, headers.get("Host")):
            return {}
        return {"Access-Control-Allow-Origin": origin, "Vary": "Origin",
                "Access-Control-Allow-Headers": CORS_ALLOW_HEADERS,
                "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
                "Access-Control-Max-Age": "600"}

    # ------------------------------------------------------------ sessions
    def install(self, app: Any) -> None:
        """Wire the gatekeeper into a :class:`rtchub.app.RtcHub`: the ``auth``
        message, room grants, token expiry. Nothing to do in open mode."""
        if self.verifier is None:
            return
        hub: Hub = app.hub
        self.hub = hub
        hub.use_authenticator(self.authenticate)
        hub.add_join_gate(room_grant_gate, first=True)
        self.expiry = TokenClock(hub, self.settings)
        hub.add_observer(self.expiry)
        app.services.append(self.expiry)

    def authenticate(self, session: Session, token: str) -> None:
        """The ``auth`` message: first authentication, or a fresh token for a live session."""
        from rtchub.auth.tokens import TokenError

        assert self.verifier is not None
        try:
            claims = self.verifier.verify(token)
        except TokenError as exc:
            raise ProtocolError(ErrorCode.UNAUTHORIZED, str(exc)) from exc
        sub = claims["sub"]
        if session.user_fixed and session.user_id != sub:
            raise ProtocolError(ErrorCode.FORBIDDEN, "token is for another user than this session")
        assert self.hub is not None
        self.hub.set_identity(session, sub, claims, claims.get("name") or None)
        if self.expiry is not None:
            self.expiry.schedule(session)


def room_grant_gate(session: Session, req: JoinRequest, complete: Callable[..., None]) -> None:
    """Join gate: the token's ``rooms`` claim (names or fnmatch patterns) must match."""
    from rtchub.auth.tokens import room_patterns

    claims = session.claims
    patterns = room_patterns(claims) if claims is not None else None
    if patterns is None or any(fnmatchcase(req.room_id, p) for p in patterns):
        complete(True)
        return
    complete(False, ProtocolError(ErrorCode.FORBIDDEN,
                                  f"the token does not grant room {req.room_id!r}", req.msg_id))


class TokenClock(HubObserver):
    """Deadlines of sessions: the ``auth`` timeout, the token warning and expiry.

    One heap and one timer for the whole server rather than a timer per
    session. Entries are checked lazily: a deadline only acts when the
    session still holds the very claims it was scheduled for (a fresh
    ``auth`` replaces them, which cancels the old deadlines for free).
    """

    def __init__(self, hub: Hub, settings: Settings, step: float = 0.1) -> None:
        self.hub = hub
        self.settings = settings
        self.step = step
        self.heap: list[tuple[float, int, str, Session, Any]] = []
        self._n = itertools.count()
        self._timer = Periodic(step, self.run_due, "token-expiry")

    # -- HubObserver -------------------------------------------------------------
    def session_opened(self, session: Session) -> None:
        if session.claims is None:
            self._push(self.hub.clock() + self.settings.auth_timeout, "auth", session, None)
        else:
            self.schedule(session)

    def session_resumed(self, session: Session, replayed: int) -> None:
        self.schedule(session)

    # -- scheduling -------------------------------------------------------------
    def schedule(self, session: Session) -> None:
        claims = session.claims
        if not claims or "exp" not in claims:
            return
        left = float(claims["exp"]) - time.time()
        now = self.hub.clock()
        self._push(now + left - min(WARN_BEFORE, max(0.0, left) / 2), "warn", session, claims)
        self._push(now + left, "expire", session, claims)

    def _push(self, at: float, kind: str, session: Session, claims: Any) -> None:
        heapq.heappush(self.heap, (at, next(self._n), kind, session, claims))

    def run_due(self) -> None:
        now = self.hub.clock()
        heap = self.heap
        while heap and heap[0][0] <= now:
            _, _, kind, session, claims = heapq.heappop(heap)
            if session.ended or session.claims is not claims:
                continue
            try:
                self._act(kind, session, claims)
            except Exception:  # pragma: no cover - never kill the timer
                log.exception("auth deadline %s failed", kind)

    def _act(self, kind: str, session: Session, claims: Any) -> None:
        hub = self.hub
        if kind == "auth":
            if session.sink is not None:
                hub.error(session, ProtocolError(
                    ErrorCode.UNAUTHORIZED,
                    f"no valid auth message within {self.settings.auth_timeout:g} s"))
                hub.close(session, CloseCode.UNAUTHORIZED, "authentication timeout")
            # Never authenticated, so in no room: nothing to keep for a resume.
            hub.end(session, "disconnected")
        elif kind == "warn":
            exp = float(claims["exp"])
            hub.send_msg(session, {"type": "token-expiring", "expiresAt": exp,
                                   "expiresIn": max(0.0, round(exp - time.time(), 3))})
        elif kind == "expire" and session.sink is not None:
            hub.error(session, ProtocolError(ErrorCode.UNAUTHORIZED, "token expired"))
            # Unclean for the hub: the session keeps its grace period, so a
            # client back with a fresh token resumes without peers noticing.
            hub.close(session, CloseCode.UNAUTHORIZED, "token expired")

    # -- service -------------------------------------------------------------------
    async def start(self) -> None:
        self._timer.start()

    async def stop(self) -> None:
        await self._timer.stop()
