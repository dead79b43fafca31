"""The PeerJS server's HTTP and WebSocket surface, on rtchub's port and hub.

With ``--peerjs-path /peerjs`` (the default) an app's unchanged
``new Peer(id, {host, port, path: "/peerjs"})`` finds:

- ``GET /peerjs`` - what the server is (JSON, as PeerJS's server answers);
- ``GET /peerjs/<key>/id`` - a fresh peer id (a UUID, ``text/html`` as PeerJS sends it);
- ``GET /peerjs/<key>/peers`` - the ids connected with that key, when
  ``--peerjs-discovery`` is on (401 otherwise, which the client explains);
- ``GET /peerjs/peerjs?key=&id=&token=`` - the WebSocket
  (:class:`~rtchub.peerjs.endpoint.PeerJsEndpoint`).

The handshake is judged by the same :class:`~rtchub.auth.gate.Gatekeeper` as
every transport: a refused Origin (403) or a client over the per-IP rate (429)
never gets the upgrade. Everything PeerJS itself refuses is said after the
upgrade, as PeerJS's server does, because a browser hides the status of a
failed upgrade from the page: ``ERROR`` (missing id/token/key, a refused
JWT, an id rtchub cannot hold), ``INVALID-KEY``, ``ID-TAKEN``; then close.

One instance per node holds the node's local peers by id and the
:class:`~rtchub.peerjs.queue.OfflineQueue` of messages waiting for peers that
have not connected, with the timer that expires them.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING

import orjson
from aiohttp import web

from rtchub.auth.gate import Admission
from rtchub.peerjs.endpoint import NORMAL, PeerJsEndpoint, server_message
from rtchub.peerjs.queue import OfflineQueue
from rtchub.protocol.messages import ID_PATTERN
from rtchub.timers import Periodic
from rtchub.transports.http_common import cors_headers

if TYPE_CHECKING:
    from rtchub.app import RtcHub
    from rtchub.peerjs.endpoint import PeerJsPeer

#: The hub room of a PeerJS key: every peer of the key is a member of it.
ROOM_PREFIX = "peerjs:"
INFO = {"name": "PeerJS Server (rtchub)",
        "description": "A server side element to broker connections between PeerJS clients.",
        "website": "https://peerjs.com/"}


def mount_prefix(path: str) -> str:
    """``/peerjs/`` -> ``/peerjs``; ``/`` -> ``""`` (mounted at the root)."""
    path = "/" + path.strip("/")
    return "" if path == "/" else path


class PeerJsServer:
    """The PeerJS compatibility layer of one node: routes, local peers, offline queue."""

    def __init__(self, app: RtcHub) -> None:
        s = app.settings
        self.app = app
        self.prefix = mount_prefix(s.peerjs_path)
        self.key = s.peerjs_key
        self.room_id = ROOM_PREFIX + s.peerjs_key
        if ID_PATTERN.fullmatch(self.room_id) is None:
            raise ValueError(f"--peerjs-key {s.peerjs_key!r}: use at most 57 characters "
                             "of A-Z a-z 0-9 _ . : @ -")
        self.queue = OfflineQueue(s.peerjs_expire_timeout)
        #: This node's connected peers, by PeerJS id.
        self.peers: dict[str, PeerJsPeer] = {}
        app.hub.room_caps[self.room_id] = s.peerjs_max_peers
        step = max(0.05, min(1.0, s.peerjs_expire_timeout / 5))
        self._timer = Periodic(step, self.expire, "peerjs-expire")

    @property
    def ws_path(self) -> str:
        """The WebSocket's path (PeerJS clients add ``peerjs`` to their ``path``)."""
        return self.prefix + "/peerjs"

    def register(self, router: web.UrlDispatcher) -> None:
        p = self.prefix
        if p:  # at the root, "/" stays the demo's page
            router.add_get(p, self._info)
        router.add_get(self.ws_path, self._websocket)
        router.add_get(p + "/{key}/id", self._new_id)
        router.add_get(p + "/{key}/peers", self._list_peers)

    async def start(self) -> None:
        self._timer.start()

    async def stop(self) -> None:
        await self._timer.stop()

    # ------------------------------------------------------------------ HTTP
    def _allowed(self, request: web.Request) -> bool:
        return self.app.gatekeeper.origin_allowed(request.headers.get("Origin"), request.host)

    async def _info(self, request: web.Request) -> web.Response:
        return web.json_response(INFO, headers=cors_headers(request))

    async def _new_id(self, request: web.Request) -> web.Response:
        if not self._allowed(request):
            return web.Response(status=403, text="origin not allowed")
        room = self.app.hub.rooms.get(self.room_id)
        peer_id = str(uuid.uuid4())
        while room is not None and peer_id in room.members:  # pragma: no cover - 2^-122
            peer_id = str(uuid.uuid4())
        return web.Response(text=peer_id, content_type="text/html",
                            headers={**cors_headers(request), "Cache-Control": "no-store"})

    async def _list_peers(self, request: web.Request) -> web.Response:
        if not self._allowed(request):
            return web.Response(status=403, text="origin not allowed")
        if not self.app.settings.peerjs_discovery or request.match_info["key"] != self.key:
            return web.Response(status=401, headers=cors_headers(request))
        ids = await self.peer_ids()
        return web.Response(body=orjson.dumps(ids), content_type="application/json",
                            headers={**cors_headers(request), "Cache-Control": "no-store"})

    async def peer_ids(self) -> list[str]:
        """Every connected peer of the key: the cluster's directory, or this node's room."""
        cluster = self.app.cluster
        if cluster is not None and cluster.ready:
            return sorted(await cluster.broker.directory(self.room_id))
        room = self.app.hub.rooms.get(self.room_id)
        return sorted(room.members) if room is not None else []

    # ------------------------------------------------------------- WebSocket
    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=self.app.settings.max_message_size,
                                   autoping=False, heartbeat=None)
        if not ws.can_prepare(request).ok:
            return web.Response(status=400, text="PeerJS WebSocket endpoint: upgrade required")
        query = request.query
        verdict = self.app.admit(request.headers, dict(query), request.remote or "")
        if verdict.status not in (403, 429) and not self.app.gatekeeper.hold_connection(
                request.transport, request.remote or "", verdict.client):
            verdict = Admission(429, "too many connections from this address")
        if verdict.status in (403, 429):
            return verdict.http_response()
        await ws.prepare(request)
        refusal = self.judge(query, verdict)
        if refusal is not None:
            await ws.send_str(refusal.decode())
            await ws.close(code=NORMAL)
            return ws
        peer_id, token = query["id"], query["token"]
        self.take_over(peer_id, token)
        endpoint = PeerJsEndpoint(self, verdict.client, ws, peer_id=peer_id, token=token,
                                  claims=verdict.claims)
        await endpoint.run()
        return ws

    def judge(self, query: Mapping[str, str], verdict: Admission) -> bytes | None:
        """What PeerJS says to refuse this connection after the upgrade, or None to admit it
        (``verdict``: the Gatekeeper's, whose 403/429 never got the upgrade)."""
        peer_id, token, key = query.get("id"), query.get("token"), query.get("key")
        if not peer_id or not token or not key:
            return server_message("ERROR", "No id, token, or key supplied to websocket server")
        if key != self.key:
            return server_message("INVALID-KEY", "Invalid key provided")
        if not verdict.ok:
            return server_message("ERROR", f"Invalid token: {verdict.reason}")
        if ID_PATTERN.fullmatch(peer_id) is None:
            return server_message("ERROR", f'ID "{peer_id[:80]}" is invalid: use 1-64 '
                                  "characters of A-Z a-z 0-9 _ . : @ -")
        if verdict.user_id is not None and verdict.user_id != peer_id:
            return server_message("ERROR", "the token is for another id")
        return None

    def take_over(self, peer_id: str, token: str) -> None:
        """PeerJS's reconnect: the same id and token replace the peer on this node."""
        old = self.peers.get(peer_id)
        if old is not None and old.token == token and old.session is not None:
            self.app.hub.detach(old.session, clean=True)
            old.close(NORMAL, "replaced by a reconnect")

    # ------------------------------------------------------------ offline queue
    def arrived(self, peer_id: str | None) -> None:
        """``peer_id`` joined the key's room (here or on another node): hand it its queue.

        Deferred by one loop turn: the hub announces a member before it
        seats it, and the flush relays to the seated member.
        """
        if peer_id is not None and (self.room_id, peer_id) in self.queue.queues:
            asyncio.get_running_loop().call_soon(self._flush, peer_id)

    def _flush(self, peer_id: str) -> None:
        hub = self.app.hub
        room = hub.rooms.get(self.room_id)
        if room is None or peer_id not in room.members:
            return  # gone again: the queue waits for the next arrival or expires
        for src, data in self.queue.take(self.room_id, peer_id):
            hub.publish(self.room_id, {"type": "signal", "roomId": self.room_id, "to": peer_id,
                                       "from": src, "data": data}, to=peer_id)

    def expire(self) -> None:
        """Drop the queues nobody came for, and tell their senders with ``EXPIRE``."""
        for _, src, dst in self.queue.expire(self.app.hub.clock()):
            endpoint = self.peers.get(src)
            if endpoint is not None and not endpoint.closing:
                endpoint.send_raw(orjson.dumps({"type": "EXPIRE", "src": dst, "dst": src}))


def setup(app: RtcHub) -> None:
    """Serve the PeerJS API on ``app`` unless ``--peerjs-path ''`` turned it off."""
    if not app.settings.peerjs_path:
        return
    server = app.peerjs = PeerJsServer(app)
    server.register(app.http.router)
    app.services.append(server)
