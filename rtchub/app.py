"""Wiring: one port, one process, every part of rtchub put together.

``create_app(settings)`` returns an :class:`RtcHub`; ``await app.start()``
listens, ``await app.stop()`` closes every client with 1001 and returns.
Tests and embedders start it in-process exactly as ``rtchub serve`` does.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web
from multidict import CIMultiDict
from picows import WSUpgradeRequest, WSUpgradeResponse, WSUpgradeResponseWithListener

from rtchub import api, ice, peerjs, sfu
from rtchub.api.routes import ServerApi
from rtchub.auth.gate import Admission, Gatekeeper, host_middleware
from rtchub.auth.limits import budget_problems
from rtchub.broker.cluster import Cluster, make_cluster
from rtchub.core.hub import Hub
from rtchub.media import hls
from rtchub.media.audiomix import AudioMix
from rtchub.media.service import MediaService
from rtchub.media.whip import WhipEndpoint
from rtchub.memory import HeapReturner
from rtchub.metrics import Metrics
from rtchub.protocol.codec import JSON, SUBPROTOCOLS, choose_subprotocol
from rtchub.settings import Settings
from rtchub.timers import Periodic
from rtchub.transports import http_common
from rtchub.transports import http_routes as http_transports
from rtchub.transports.liveness import Liveness
from rtchub.transports.mux import WS_PATHS, PortMux, RequestHead, picows_protocol_factory
from rtchub.transports.ws import PicowsEndpoint
from rtchub.transports.ws_aiohttp import AiohttpEndpoint
from rtchub.webhooks import JoinHook, WebhookSender

log = logging.getLogger("rtchub")
WEB_ROOT = Path(__file__).parent / "web"
#: Where route handlers find the server: ``request.app[APP_KEY]``.
APP_KEY: web.AppKey[RtcHub] = web.AppKey("rtchub")


class RtcHub:
    """A running (or ready to run) rtchub server."""


    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.hub = Hub(settings, node_id=settings.node_id)
        self.liveness = Liveness(settings.heartbeat, settings.heartbeat_timeout,
                                 pending_budget=settings.max_buffered_bytes)
        self.gatekeeper = Gatekeeper(settings)
        self.http = web.Application(
            client_max_size=settings.max_body_size,
            middlewares=[host_middleware(self.gatekeeper)] if self.gatekeeper.hosts else [])
        self.http[APP_KEY] = self
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None
        #: Grace-period expiry: one sweep over the sessions, about once a second.
        self._ticker = Periodic(min(1.0, max(0.05, settings.grace_period / 10 or 1.0)),
                                self.hub.tick, "hub-tick")
        #: Background parts (STUN, broker, webhooks...) started and stopped with the server.
        self.services: list[Any] = []
        #: Returns freed buffer memory to the OS (rtchub.memory).
        self.heap = HeapReturner(self.hub)
        self.services.append(self.heap)
        self.ready_checks: list[Any] = []
        # Tokens on the hub, room grants, token expiry (rtchub.auth.gate).
        self.gatekeeper.install(self)
        #: The built-in STUN server (None with --stun-port 0); its .stats are counters.
        self.stun = ice.stun_service(settings)
        if self.stun is not None:
            self.services.append(self.stun)
        #: The cluster node when --broker names a shared broker (None for memory):
        #: rtchub.broker. A POST /send or /close forwarded from another node is
        #: taken as the HTTP transports take their own.
        hub = self.hub
        self.cluster: Cluster | None = make_cluster(
            hub, settings.broker,
            receive_batch=hub.receive_all,
            close_session=lambda session: http_common.close_session(hub, session))
        if self.cluster is not None:
            cluster = self.cluster
            self.services.append(cluster)
            self.ready_checks.append(("broker", lambda: cluster.ready))
        #: The SFU (rtchub.sfu): media modes, publish/subscribe through Janus.
        self.sfu = sfu.setup(self)
        #: Audio-mix rooms (rtchub.media.audiomix): Janus AudioBridge.
        self.audiomix = AudioMix(self)
        self.services.append(self.audiomix)
        #: Recordings and broadcasts (rtchub.media): the API and /live use it.
        self.media = MediaService(self)
        self.services.append(self.media)
        # The server API's parts, built here and hooked in by rtchub.api.setup.
        self.metrics = Metrics(self)
        self.webhooks = WebhookSender(self)
        self.join_hook: JoinHook | None = JoinHook(self) if settings.join_hook_url else None
        self.api = ServerApi(self)
        self.port = settings.port
        self._setup_routes()

    # ------------------------------------------------------------------ routes
    def _setup_routes(self) -> None:
        r = self.http.router
        r.add_get("/healthz", self._healthz)
        r.add_get("/readyz", self._readyz)
        ice.register(self)
        # /metrics, /api + /openapi.json, /admin, webhooks, join hook (rtchub.api.setup).
        api.setup(self)
        for path in ("/ws", "/signaling"):
            r.add_get(path, self._aiohttp_ws)
        # /sse, /poll/open, /poll, /send, /close (rtchub.transports.http_routes).
        http_transports.register(self)
        # /live/{roomId}/... (HLS broadcasts) and the /watch page (rtchub.media.hls).
        hls.register(self)
        r.add_get("/watch", self._watch)
        # /whip/{roomId}: WHIP ingest into the room's SFU (rtchub.media.whip).
        self.whip = WhipEndpoint(self)
        self.whip.register(r)
        self.services.append(self.whip)
        # The PeerJS server API under --peerjs-path (rtchub.peerjs).
        peerjs.setup(self)
        if (WEB_ROOT / "index.html").exists():
            r.add_get("/", self._index)
        if WEB_ROOT.exists():
            r.add_static("/", WEB_ROOT, show_index=False, append_version=False)

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        problems = [name for name, check in self.ready_checks if not check()]
        if problems:
            return web.json_response({"status": "not-ready", "failing": problems}, status=503)
        return web.json_response({"status": "ready"})

    async def _index(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(WEB_ROOT / "index.html")

    async def _watch(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(WEB_ROOT / "watch.html")

    # -------------------------------------------------------------- WebSocket
    def admit(self, headers: Any, query: dict[str, str], peer: str, *,
              first_message_auth: bool = False) -> Admission:
        """Origin, per-IP rate and token check of every transport (rtchub.auth.gate).

        Only WebSocket passes ``first_message_auth``: it alone may bring its
        token in an ``auth`` message; elsewhere a missing token is a 401.
        """
        return self.gatekeeper.check(headers=headers, query=query, peer=peer,
                                     first_message_auth=first_message_auth)

    def _picows_listener(self, request: WSUpgradeRequest, peer: str) -> Any:
        target = request.path.decode("latin-1")
        path, _, qs = target.partition("?")
        if path.encode() not in WS_PATHS:
            return None
        headers = request.headers
        verdict = self.admit(headers, dict(parse_qsl(qs)), peer, first_message_auth=True)
        if not verdict.ok:
            return WSUpgradeResponseWithListener(
                WSUpgradeResponse.create_error_response(
                    verdict.status, verdict.reason.encode(), CIMultiDict(verdict.headers())),
                None)
        offered = [p.strip() for p in headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
        chosen = choose_subprotocol(offered)
        if offered and chosen is None:
            # RFC 6455 section 4.2.2: the server may refuse a subprotocol list it
            # does not speak. We answer without one; clients fall back to JSON.
            pass
        endpoint = PicowsEndpoint(
            self.hub, self.liveness, SUBPROTOCOLS.get(chosen or "", JSON), verdict.client,
            claims=verdict.claims, user_id=verdict.user_id, display_name=verdict.display_name)
        extra = CIMultiDict()
        if chosen:
            extra["Sec-WebSocket-Protocol"] = chosen
        return WSUpgradeResponseWithListener(WSUpgradeResponse.create_101_response(extra), endpoint)

    async def _aiohttp_ws(self, request: web.Request) -> web.StreamResponse:
        verdict = self.admit(request.headers, dict(request.query), request.remote or "",
                             first_message_auth=True)
        if verdict.ok and not self.gatekeeper.hold_connection(
                request.transport, request.remote or "", verdict.client):
            verdict = Admission(429, "too many connections from this address")
        if not verdict.ok:
            return verdict.http_response()
        ws = web.WebSocketResponse(
            protocols=tuple(SUBPROTOCOLS), compress=self.settings.compression,
            max_msg_size=self.settings.max_message_size, autoping=False, heartbeat=None)
        await ws.prepare(request)
        endpoint = AiohttpEndpoint(
            self.hub, self.liveness, SUBPROTOCOLS.get(ws.ws_protocol or "", JSON),
            verdict.client, ws, claims=verdict.claims, user_id=verdict.user_id,
            display_name=verdict.display_name)
        await endpoint.run()
        return ws

    def _route(self, head: RequestHead) -> str:
        if head.upgrade and head.path in WS_PATHS and not (self.settings.compression and head.deflate):
            return "ws"
        return "http"

    # -------------------------------------------------------------- lifecycle
    def _ssl_context(self) -> ssl.SSLContext | None:
        s = self.settings
        if not s.certfile:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(s.certfile, s.keyfile or None)
        return ctx

    async def start(self, *, listen: bool = True, reuse_port: bool = False) -> None:
        """Start the services and listen on ``host:port``; ``listen=False`` starts
        everything but the socket (rtchub.asgi serves through the host app's server);
        ``reuse_port``: a worker of ``--workers``, sharing its port with the others
        through SO_REUSEPORT."""
        s = self.settings
        logging.getLogger("picows").setLevel(logging.WARNING)
        # keepalive_timeout also bounds a second request head trickled on a
        # kept-alive connection (slowloris; rtchub.auth.limits).
        self._runner = web.AppRunner(self.http, access_log=None, handle_signals=False,
                                     keepalive_timeout=s.keepalive_timeout)
        await self._runner.setup()
        http_factory = self._runner.server
        assert http_factory is not None
        if listen:
            ws_factory = picows_protocol_factory(self._picows_listener, max_frame_size=s.max_message_size)
            loop = asyncio.get_running_loop()
            self._server = await loop.create_server(
                lambda: PortMux(self._route, ws_factory, http_factory,
                                admit=self.gatekeeper.admit_connection,
                                head_timeout=s.request_timeout, loop=loop),
                host=s.host, port=s.port, ssl=self._ssl_context(), reuse_address=True,
                reuse_port=reuse_port or None, backlog=4096)
            self.port = self._server.sockets[0].getsockname()[1]
        self.liveness.start()
        self._ticker.start()
        for service in self.services:
            await service.start()
        for problem in budget_problems(s):
            log.warning("limits contradict each other: %s (docs/security.md, \"The budget\")", problem)
        if listen:
            log.info("rtchub listening on %s://%s:%d (node %s)",
                     "https" if s.certfile else "http", s.host, self.port, self.hub.node_id)

    @property
    def http_protocol_factory(self) -> Any:
        """aiohttp's protocol factory for the HTTP routes (set by :meth:`start`)."""
        assert self._runner is not None and self._runner.server is not None, "start() first"
        return self._runner.server

    async def stop(self) -> None:
        """Graceful shutdown: stop accepting, 1001 to every client, then close within
        ``shutdown_timeout``.

        The listening socket closes first. A client told 1001 reconnects at
        once; while the old order drained connections it was still accepted
        here, by a server on its way out, and then left on a connection that
        nothing served any more (the call-page restart test caught a page
        sitting on one). Refused instead, it backs off and reconnects
        elsewhere: another worker on the same port (SO_REUSEPORT), another
        node behind the proxy, or this one once it is back.
        """
        if self._server is not None:
            self._server.close()
        self.hub.shutdown()
        deadline = asyncio.get_running_loop().time() + self.settings.shutdown_timeout
        while self.liveness.endpoints and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
        for service in reversed(self.services):
            try:
                await service.stop()
            except Exception:  # pragma: no cover
                log.exception("stopping %r failed", service)
        await self._ticker.stop()
        await self.liveness.stop()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def url(self) -> str:
        scheme = "https" if self.settings.certfile else "http"
        return f"{scheme}://{self.settings.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        scheme = "wss" if self.settings.certfile else "ws"
        return f"{scheme}://{self.settings.host}:{self.port}/ws"


def create_app(settings: Settings | None = None, **overrides: Any) -> RtcHub:
    """Build a server. ``overrides`` replace fields of ``settings`` (or the defaults)."""
    import dataclasses

    base = settings or Settings()
    if overrides:
        base = dataclasses.replace(base, **overrides)
    return RtcHub(base)
