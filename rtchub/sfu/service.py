"""The signaling side of the SFU: rtchub's ``publish`` / ``subscribe`` messages on Janus handles.

docs/protocol.md "SFU media" is the wire contract; this module is how it maps
onto the Janus VideoRoom (multistream, Janus 1.1):

- one *publisher* handle per member and room: ``joinandconfigure`` with the
  client's offer (later ``configure`` for renegotiation and ICE restarts);
- one *subscriber* handle per member and room: ``join`` / ``update`` with the
  tracks the client asked for, Janus's offer goes to the client, the client's
  answer comes back as ``start``.

What a client may do is decided here, never by Janus: it publishes only as
itself (the feed id is chosen by rtchub, random, and never shown), subscribes
only to tracks of rooms it is in (track ids are opaque and looked up in the
room's own directory), and the JWT grants ``canPublish`` / ``canSubscribe``
apply. Janus sessions, handles, room and feed ids never leave the server:
every Janus request is built from server-side state only, so a forged field
in a client message has nothing to point at.

Handlers run synchronously in the hub (checks, coded errors) and hand the
Janus work to one task chain per member (:class:`Peer`), so each member's
requests reach Janus in the order it sent them. Answers go out through
``hub.send``: numbered, buffered and replayed by ``resume`` like any message.

(Over 500 lines on purpose: publish, subscribe, trickle, ICE restart, layer
choice, media reset and a dead node's take-over all change the same per-member
:class:`Peer` records, and this module is their one owner. The next split,
when it grows again, is the node take-over (``_save`` and the adoption of a
dead node's handles) into a module of its own.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from rtchub.broker.base import Broker, BrokerDown
from rtchub.core.hub import Hub, HubObserver, JoinRequest
from rtchub.core.room import MEDIA_MODES, SFU_MODES, Member, Room
from rtchub.core.route import SFU as SFU_ROUTE
from rtchub.core.session import Session
from rtchub.protocol import messages as m
from rtchub.protocol.errors import ErrorCode, ProtocolError
from rtchub.sfu.codecs import AUDIO_CODECS, VIDEO_CODECS, negotiated
from rtchub.sfu.janus import JanusConnection, JanusError, JanusGone
from rtchub.sfu.placement import Placed, Placement, SharedState, peers_map
from rtchub.sfu.supervisor import LocalJanus

if TYPE_CHECKING:
    from rtchub.app import RtcHub

log = logging.getLogger("rtchub.sfu")

VIDEOROOM = "janus.plugin.videoroom"
#: How long a publish waits for a Janus server to be (again) reachable, e.g.
#: while ``--sfu local`` restarts a Janus that died.
SERVER_WAIT = 10.0
MAX_SDP = 60_000
MAX_CANDIDATE = 1024
MAX_TRACKS_PER_REQUEST = 200
#: Janus VideoRoom error codes that mean "your SDP / JSEP was refused".
SDP_ERRORS = {465, 466, 443}  # invalid SDP, invalid JSEP type, unsupported codec
SOURCES = ("camera", "microphone", "screen", "screen-audio", "custom")
PCS = ("publish", "subscribe")
#: ``subscribe-layer`` values -> Janus VideoRoom subscriber ``configure`` of one stream:
#: the simulcast substream (0 is the lowest quality) or no video at all.
LAYERS: dict[str, dict[str, Any]] = {
    "h": {"send": True, "substream": 2},
    "m": {"send": True, "substream": 1},
    "l": {"send": True, "substream": 0},
    "off": {"send": False},
}


def sdp_sections(sdp: str) -> list[dict[str, Any]]:
    """The m-sections of an SDP: ``{kind, mid, port, direction}`` each (RFC 8866 section 5.14)."""
    out: list[dict[str, Any]] = []
    for line in sdp.splitlines():
        if line.startswith("m="):
            parts = line[2:].split()
            out.append({"kind": parts[0] if parts else "", "port": parts[1] if len(parts) > 1 else "0",
                        "mid": None, "direction": "sendrecv"})
        elif out and line.startswith("a=mid:"):
            out[-1]["mid"] = line[6:].strip()
        elif out and line[2:] in ("sendrecv", "sendonly", "recvonly", "inactive") and line.startswith("a="):
            out[-1]["direction"] = line[2:]
    return out


def check_sdp(value: Any, msg_id: Any) -> str:
    if type(value) is not str or not value.startswith("v=0") or "\nm=" not in value \
            or len(value) > MAX_SDP:
        raise ProtocolError(ErrorCode.BAD_SDP, "sdp must be an SDP string (v=0 ..., with m= lines)",
                            msg_id)
    return value


class Server:
    """One Janus server as this node sees it: its key in the placement, its connection."""

    def __init__(self, key: str, url: str, secret: str) -> None:
        self.key = key
        self.url = url
        self.secret = secret
        self.conn: JanusConnection | None = None
        self.rooms: set[str] = set()          # Janus rooms created on this connection
        self._connecting: asyncio.Task[JanusConnection | None] | None = None
        self.enabled = True

    @property
    def live(self) -> bool:
        return self.conn is not None and self.conn.alive


class Peer:
    """One member's media in one SFU room, on this node."""

    def __init__(self, session: Session, room_id: str, server: Server, conn: JanusConnection,
                 placed: Placed) -> None:
        self.session = session
        self.room_id = room_id
        self.user_id = session.user_id or ""
        self.server = server
        self.conn = conn
        self.placed = placed
        self.feed = "f-" + secrets.token_hex(8)
        self.pub: int | None = None
        self.sub: int | None = None
        self.pub_up = False
        #: mid -> track record, for the tracks this member publishes.
        self.published: dict[str, dict[str, Any]] = {}
        self.announced: set[str] = set()
        #: trackIds the client asked for / has in its subscriber connection.
        self.want: set[str] = set()
        self.have: dict[str, tuple[str, str]] = {}   # trackId -> (feed, mid)
        self.offered = False                          # an offer waits for the client's answer
        #: trackId -> mid of its m-line in the subscriber connection (for ``subscribe-layer``).
        self.sub_mids: dict[str, str] = {}
        #: trackId -> the layer the client last asked for (h, m, l or off).
        self.layers: dict[str, str] = {}
        self.trickles: dict[str, list[dict[str, Any] | None]] = {"publish": [], "subscribe": []}
        self.chain: asyncio.Future[None] | None = None
        self.dead = False


class SfuService(HubObserver):
    """The SFU of one rtchub node. A service of the app (start/stop)."""

    def __init__(self, app: RtcHub, broker: Broker) -> None:
        self.app = app
        self.hub: Hub = app.hub
        s = self.settings = app.settings
        self.placement = Placement(broker)
        self.shared = SharedState(broker)
        self.clustered = app.cluster is not None
        self.servers: dict[str, Server] = {}
        self.local: LocalJanus | None = None
        if s.sfu == "local":
            self.local = LocalJanus(s)
            if not Path(self.local.binary).exists():
                raise ValueError(f"--sfu local needs Janus, and {self.local.binary} is missing "
                                 "(apt-get install janus; make run installs it)")
            self.servers["local"] = Server("local", "", "")
            self.local.on_up.append(self._local_up)
            self.local.on_down.append(lambda _j: self._lost(self.servers["local"]))
        elif s.sfu:
            raise ValueError(f"--sfu must be 'local' (or use --sfu-url), not {s.sfu!r}")
        for url in s.sfu_url:
            self.servers[url] = Server(url, url, s.sfu_api_secret)
        if s.media_mode and s.media_mode not in MEDIA_MODES:
            raise ValueError(f"--media-mode must be one of {MEDIA_MODES}")
        if (s.media_mode in SFU_MODES or s.media_mode == "audio-mix") and not self.servers:
            raise ValueError(f"--media-mode {s.media_mode} needs a Janus: --sfu local or --sfu-url ws://...")
        #: (roomId, sessionId) -> Peer
        self.peers: dict[tuple[str, str], Peer] = {}
        #: Media modes declared through the server API (PUT /api/rooms/{roomId}/media).
        self.declared: dict[str, str] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        #: Request chains of members whose Peer is being made (first publish/subscribe).
        self._pending_chain: dict[tuple[str, str], asyncio.Future[None]] = {}
        self._reconnector: asyncio.Task[None] | None = None
        #: Janus sessions of dead nodes that this node claimed: (server, session id) -> connection.
        self.adopted: dict[tuple[str, int], JanusConnection] = {}
        self.stats = {"publishes": 0, "subscribes": 0, "resets": 0, "errors": 0}
        #: roomId -> lock ordering directory reads sent to joiners with announcements.
        self._dir_locks: dict[str, asyncio.Lock] = {}
        #: ``callback(session, room_id, reason)`` when Janus reports a publisher's hangup
        #: (rtchub.media.whip ends a WHIP session whose publisher died).
        self.on_publisher_hangup: list[Callable[[Session, str, str], None]] = []
        hub = self.hub
        hub.use_media_policy(self._media_policy)
        hub.add_observer(self)
        for mtype, handler in (
            ("publish", self._on_publish), ("unpublish", self._on_unpublish),
            ("subscribe", self._on_subscribe), ("unsubscribe", self._on_unsubscribe),
            ("subscribe-answer", self._on_subscribe_answer),
            ("media-candidate", self._on_candidate), ("ice-restart", self._on_ice_restart),
            ("mute", self._on_mute), ("subscribe-layer", self._on_layer),
        ):
            hub.register(mtype, handler)
        if self.clustered and self.servers:
            # Without an SFU every room is mesh: nothing to agree on, no broker round trip.
            hub.add_join_gate(self._mode_gate)
            assert app.cluster is not None
            app.cluster.remote_gone.append(self._remote_gone)

    @property
    def enabled(self) -> bool:
        return bool(self.servers)

    # ================================================================ lifecycle
    async def start(self) -> None:
        if self.local is not None:
            await self.local.start()
        for server in self.servers.values():
            if server.key != "local":
                await self._connect(server)
        if self.servers:
            self._reconnector = asyncio.get_running_loop().create_task(self._reconnect_loop())

    async def stop(self) -> None:
        if self._reconnector is not None:
            self._reconnector.cancel()
        for task in list(self._tasks):
            task.cancel()
        for server in self.servers.values():
            server.enabled = False
            if server.conn is not None:
                await server.conn.close()
        for conn in list(self.adopted.values()):
            await conn.close()
        if self.local is not None:
            await self.local.stop()

    def ready(self) -> bool:
        return not self.servers or any(s.live for s in self.servers.values())

    def _local_up(self, janus: LocalJanus) -> None:
        server = self.servers["local"]
        server.url, server.secret = janus.url, janus.api_secret
        self._spawn(self._connect(server))

    async def _connect(self, server: Server) -> JanusConnection | None:
        if server.live:
            return server.conn
        if server._connecting is not None and not server._connecting.done():
            return await asyncio.shield(server._connecting)

        async def attempt() -> JanusConnection | None:
            if not server.url:
                return None
            conn = JanusConnection(server.url, server.secret, on_lost=lambda c: self._lost(server, c))
            try:
                await conn.open(timeout=3.0)
            except (JanusGone, JanusError) as exc:
                log.debug("Janus %s not reachable: %s", server.key, exc)
                return None
            if not server.enabled:
                await conn.close()
                return None
            server.conn = conn
            server.rooms = set()
            log.info("connected to Janus %s (%s)", server.key, server.url)
            return conn

        server._connecting = asyncio.get_running_loop().create_task(attempt())
        return await asyncio.shield(server._connecting)

    async def _reconnect_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            for server in self.servers.values():
                if not server.live and server.enabled:
                    await self._connect(server)

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ================================================================ failure
    def _lost(self, server: Server, conn: JanusConnection | None = None) -> None:
        """A Janus server is gone: its handles died with it. Tell every member to start over.

        The members' clients get ``media-reset`` and publish and subscribe
        again; the publish places the room on a live server (another one, or
        the restarted local Janus).
        """
        if conn is not None and server.conn is not conn:
            return
        dead_conn = server.conn
        server.conn = None
        server.rooms = set()
        rooms: dict[str, list[Peer]] = {}
        for key, peer in list(self.peers.items()):
            if peer.server is server and (dead_conn is None or peer.conn is dead_conn
                                          or not peer.conn.alive):
                peer.dead = True
                del self.peers[key]
                rooms.setdefault(peer.room_id, []).append(peer)
        if dead_conn is None and not rooms:
            return
        if dead_conn is not None:
            self._spawn(dead_conn.close())
        log.warning("Janus %s lost: moving %d room(s)", server.key, len(rooms))
        self.stats["resets"] += 1
        self._spawn(self._after_loss(server, rooms))

    async def _after_loss(self, server: Server, rooms: dict[str, list[Peer]]) -> None:
        with contextlib.suppress(BrokerDown):
            await self.placement.evict(server.key)
        for room_id, peers in rooms.items():
            for peer in peers:
                for track in peer.published.values():
                    with contextlib.suppress(BrokerDown):
                        await self.shared.drop_track(room_id, track["trackId"])
            room = self.hub.rooms.get(room_id)
            if room is None:
                continue
            # Every member of the room, wherever its node: the tracks are all gone.
            self.hub.publish(room_id, {"type": "media-reset", "roomId": room_id,
                                       "reason": "sfu-lost"})

    # ================================================================ media mode
    def _proposed_mode(self, session: Session, req: JoinRequest) -> str:
        claims = session.claims or {}
        claim = claims.get("media")
        # A join's ``auto`` says "I can do both", not "make it auto": an operator's
        # explicit --media-mode (audio-mix, say) wins over it; an explicit mode in
        # the join (mesh, sfu, audio-mix) wins over the operator's default.
        asked = req.media if req.media != "auto" else None
        return (self.declared.get(req.room_id)
                or (claim if claim in MEDIA_MODES else None)
                or asked or self.settings.media_mode or req.media
                or ("auto" if self.servers else "mesh"))

    def _media_policy(self, session: Session, req: JoinRequest) -> str:
        mode = req.media if self.clustered and req.media else self._proposed_mode(session, req)
        if mode == "auto" and not self.servers:
            return "mesh"  # auto = "I can do both": without an SFU the answer is peer-to-peer
        if mode in ("sfu", "audio-mix") and not self.servers:
            raise ProtocolError(ErrorCode.SFU_UNAVAILABLE,
                                "this server has no SFU (start it with --sfu local or --sfu-url)",
                                req.msg_id)
        return mode

    def _mode_gate(self, session: Session, req: JoinRequest, complete: Callable[..., None]) -> None:
        """In a cluster, the first join anywhere decides a room's mode (broker map)."""
        room = self.hub.rooms.get(req.room_id)
        if room is not None:
            req.media = room.media
            complete(True)
            return
        proposed = self._proposed_mode(session, req)

        async def decide() -> None:
            try:
                req.media = await self.shared.decide_mode(req.room_id, proposed)
            except BrokerDown:
                complete(False, ProtocolError(ErrorCode.INTERNAL, "cluster directory unavailable",
                                              req.msg_id))
                return
            complete(True)

        self._spawn(decide())

    def declare_mode(self, room_id: str, mode: str) -> str:
        """The server API's choice of a room's mode. A room in use keeps its mode."""
        if (mode in SFU_MODES or mode == "audio-mix") and not self.servers:
            raise ProtocolError(ErrorCode.SFU_UNAVAILABLE, "this server has no SFU")
        room = self.hub.rooms.get(room_id)
        if room is not None and room.media != mode:
            raise ProtocolError(ErrorCode.FORBIDDEN,
                                f"room {room_id!r} is in use as a {room.media} room")
        self.declared[room_id] = mode
        if self.clustered:
            self._spawn(self.shared.set_mode(room_id, mode))
        return mode

    # ================================================================ observers
    def room_created(self, room: Room) -> None:
        if self.clustered and self.servers and room.id not in self.declared:
            async def learn() -> None:
                with contextlib.suppress(BrokerDown):
                    mode = await self.shared.mode(room.id)
                    if mode in MEDIA_MODES:
                        self.hub.set_room_media(room.id, mode)
            self._spawn(learn())

    def member_joined(self, room: Room, member: Member, rejoined: bool) -> None:
        if room.media not in SFU_MODES or member.session.node not in (None, self.hub.node_id):
            return
        session = member.session
        key = (room.id, session.id)
        old = next((p for (r, _), p in self.peers.items() if r == room.id and p.user_id == member.user_id
                    and p.session is not session), None) if rejoined else None
        if old is not None:
            self._drop(old, announce=True)
        self._spawn(self._send_tracks(session, room.id, key))

    async def _send_tracks(self, session: Session, room_id: str, key: tuple[str, str]) -> None:
        # Under the room's directory lock: a ``tracks-published`` of this node
        # never overtakes the (older) list a joiner gets here, which would
        # make the client forget the tracks it was just told about.
        async with self._dir_lock(room_id):
            try:
                tracks = await self.shared.tracks(room_id)
            except BrokerDown:
                tracks = {}
            if session.ended or room_id not in session.rooms:
                return
            self.hub.send_msg(session, {"type": "tracks", "roomId": room_id,
                                        "tracks": [self._public(tid, t) for tid, t in tracks.items()]})

    def _dir_lock(self, room_id: str) -> asyncio.Lock:
        lock = self._dir_locks.get(room_id)
        if lock is None:
            lock = self._dir_locks[room_id] = asyncio.Lock()
        return lock

    # ================================================================ node failure
    async def _save(self, peer: Peer) -> None:
        """Record what another node needs to take this member's media over (cluster only)."""
        record = {"n": self.hub.node_id, "s": peer.server.key, "j": peer.conn.session_id,
                  "jr": peer.placed.janus_room, "f": peer.feed, "p": peer.pub, "b": peer.sub,
                  "up": peer.pub_up, "pub": peer.published, "a": sorted(peer.announced),
                  "w": sorted(peer.want), "h": {t: list(v) for t, v in peer.have.items()}}
        await self.shared.broker.map_set(peers_map(peer.room_id), peer.session.id,
                                         orjson.dumps(record).decode())

    def session_resumed(self, session: Session, replayed: int) -> None:
        if not self.clustered:
            return
        for room_id in session.rooms:
            room = self.hub.rooms.get(room_id)
            if room is not None and room.media in SFU_MODES and (room_id, session.id) not in self.peers:
                self._spawn(self._adopt(session, room_id))

    async def _adopt(self, session: Session, room_id: str) -> None:
        """A session resumed here from another node: take its Janus handles over.

        The node that made them died; Janus kept its session (and the media of
        its handles) for ``reclaim_session_timeout``, and a ``claim`` on a new
        connection makes it ours. The client notices nothing: no renegotiation.
        """
        try:
            raw = (await self.shared.broker.map_all(peers_map(room_id))).get(session.id)
        except BrokerDown:
            return
        if raw is None:
            return
        rec = orjson.loads(raw)
        server = self.servers.get(rec["s"])
        if rec["n"] == self.hub.node_id or server is None or not server.url:
            return
        key = (server.key, int(rec["j"]))
        conn = self.adopted.get(key)
        if conn is None or not conn.alive:
            conn = JanusConnection(server.url, server.secret,
                                   on_lost=lambda c: self._lost_adopted(c))
            try:
                await conn.open(claim=int(rec["j"]))
            except (JanusGone, JanusError) as exc:
                log.warning("could not claim Janus session of node %s: %s", rec["n"], exc)
                self.hub.send_msg(session, {"type": "media-reset", "roomId": room_id,
                                            "reason": "sfu-lost"})
                return
            self.adopted[key] = conn
        if session.ended or room_id not in session.rooms or (room_id, session.id) in self.peers:
            return
        peer = Peer(session, room_id, server, conn, Placed(server.key, rec["jr"]))
        peer.feed, peer.pub, peer.sub, peer.pub_up = rec["f"], rec["p"], rec["b"], rec["up"]
        peer.published = rec["pub"]
        peer.announced = set(rec["a"])
        peer.want = set(rec["w"])
        peer.have = {t: (v[0], v[1]) for t, v in rec["h"].items()}
        if peer.pub is not None:
            conn.listen(peer.pub, lambda ev: self._pub_event(peer, ev))
        if peer.sub is not None:
            conn.listen(peer.sub, lambda ev: self._sub_event(peer, ev))
        self.peers[(room_id, session.id)] = peer
        with contextlib.suppress(BrokerDown):
            for t in peer.published.values():  # its tracks are this node's now
                t["n"] = self.hub.node_id
                if t["trackId"] in peer.announced:
                    await self.shared.put_track(room_id, t["trackId"], t)
            await self._save(peer)
        log.info("took over the media of %s in %s from node %s", peer.user_id, room_id, rec["n"])

    def _lost_adopted(self, conn: JanusConnection) -> None:
        for key, c in list(self.adopted.items()):
            if c is conn:
                del self.adopted[key]
        for (room_id, sid), peer in list(self.peers.items()):
            if peer.conn is conn:
                peer.dead = True
                del self.peers[(room_id, sid)]
                if not peer.session.ended:
                    self.hub.send_msg(peer.session, {"type": "media-reset", "roomId": room_id,
                                                     "reason": "sfu-lost"})

    def member_left(self, room: Room, member: Member, reason: str) -> None:
        peer = self.peers.get((room.id, member.session.id))
        if peer is not None:
            self._drop(peer, announce=True)

    def _remote_gone(self, room: Room, member: Member, reason: str) -> None:
        if room.media in SFU_MODES:
            self._spawn(self._forget_remote(room.id, member))

    async def _forget_remote(self, room_id: str, member: Member) -> None:
        """A member of another node left. If that node died with it (nobody adopted its
        media), its tracks are gone: take them off the directory and tell our members.

        Every node with members in the room does this for its own members; the
        directory deletes are idempotent.
        """
        session = member.session
        try:
            tracks = await self.shared.tracks(room_id)
            gone = [tid for tid, t in tracks.items()
                    if t.get("sid") == session.id and t.get("n") == session.node]
            for tid in gone:
                await self.shared.drop_track(room_id, tid)
            await self.shared.broker.map_set(peers_map(room_id), session.id, None)
        except BrokerDown:
            return
        self._forget_tracks(room_id, gone)
        room = self.hub.rooms.get(room_id)
        if room is None or not gone:
            return
        msg = {"type": "tracks-unpublished", "roomId": room_id, "userId": member.user_id, "tracks": gone}
        for mb in room.members.values():
            if mb.session.node in (None, self.hub.node_id):
                self.hub.send_msg(mb.session, msg)

    def room_closed(self, room: Room) -> None:
        self._dir_locks.pop(room.id, None)
        if room.media not in SFU_MODES:
            return
        for key in [k for k in self.peers if k[0] == room.id]:
            self._drop(self.peers[key], announce=False)
        self._spawn(self._close_room(room.id))

    async def _close_room(self, room_id: str) -> None:
        try:
            placed = await self.placement.lookup(room_id)
            if placed is None:
                return
            if self.clustered:
                return  # other nodes may still have members: the room is freed by its last user
            await self.placement.release(room_id, placed)
            for tid in await self.shared.tracks(room_id):
                await self.shared.drop_track(room_id, tid)
        except BrokerDown:
            return
        server = self.servers.get(placed.server)
        if server is not None and server.live and placed.janus_room in server.rooms:
            server.rooms.discard(placed.janus_room)
            conn = server.conn
            assert conn is not None
            with contextlib.suppress(JanusError, JanusGone):
                handle = await conn.attach(VIDEOROOM)
                await conn.message(handle, {"request": "destroy", "room": placed.janus_room})
                await conn.detach(handle)

    # ================================================================ helpers
    @staticmethod
    def _public(track_id: str, t: dict[str, Any]) -> dict[str, Any]:
        """A track as clients see it: never the Janus feed or mid."""
        return {"trackId": track_id, "userId": t["u"], "kind": t["k"], "source": t["s"],
                "muted": bool(t.get("x"))}

    def _room(self, session: Session, msg: dict[str, Any], msg_id: Any) -> Room:
        room_id = msg.get("roomId")
        if room_id not in session.rooms:
            m.check_id(room_id, "roomId", msg_id)
            raise ProtocolError(ErrorCode.NOT_IN_ROOM, f"not in room {room_id!r}", msg_id)
        room = self.hub.rooms[room_id]
        if room.media not in SFU_MODES:
            raise ProtocolError(ErrorCode.WRONG_MEDIA_MODE,
                                f"room {room.id!r} is a {room.media} room: relay offers to peers", msg_id)
        return room

    @staticmethod
    def _grant(session: Session, name: str, msg_id: Any) -> None:
        claims = session.claims
        if claims is not None and claims.get(name, True) is not True:
            raise ProtocolError(ErrorCode.FORBIDDEN, f"your token does not grant {name}", msg_id)

    def _queue(self, session: Session, room: Room, msg_id: Any,
               work: Callable[[Peer], Awaitable[None]], *, create: bool = False) -> None:
        """Run ``work(peer)`` after the member's earlier requests; answer errors with codes."""
        key = (room.id, session.id)
        peer = self.peers.get(key)

        async def run(prev: asyncio.Future[None] | None) -> None:
            if prev is not None:
                with contextlib.suppress(BaseException):
                    await prev
            try:
                nonlocal peer
                peer = self.peers.get(key)
                if peer is None or peer.dead:
                    if not create:
                        raise ProtocolError(ErrorCode.INVALID_MESSAGE,
                                            "nothing published or subscribed in this room yet", msg_id)
                    peer = await self._new_peer(session, room.id, msg_id)
                await work(peer)
                if self.clustered and not peer.dead:
                    await self._save(peer)
            except ProtocolError as err:
                if err.msg_id is None:
                    err.msg_id = msg_id
                self._error(session, err)
                return
            except JanusError as exc:
                code = ErrorCode.BAD_SDP if exc.code in SDP_ERRORS else ErrorCode.INVALID_MESSAGE
                self._error(session, ProtocolError(code, f"refused by the SFU: {exc.reason}", msg_id))
                return
            except (JanusGone, BrokerDown) as exc:
                self._error(session, ProtocolError(ErrorCode.SFU_UNAVAILABLE,
                                                   f"SFU unavailable: {exc}", msg_id))
                return
            if msg_id is not None and not session.ended:
                self.hub.accept(session, msg_id)

        prev = peer.chain if peer is not None else self._pending_chain.get(key)
        task = self._spawn(run(prev))
        if peer is not None:
            peer.chain = task
        else:
            self._pending_chain[key] = task
            task.add_done_callback(lambda _t: self._pending_chain.pop(key, None)
                                   if self._pending_chain.get(key) is _t else None)

    def _error(self, session: Session, err: ProtocolError) -> None:
        self.stats["errors"] += 1
        if not session.ended:
            self.hub.error(session, err)

    async def _server_for(self, room_id: str) -> tuple[Server, Placed]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SERVER_WAIT
        while True:
            live = [k for k, s in self.servers.items() if s.live]
            if not live:
                for server in self.servers.values():
                    if server.enabled:
                        await self._connect(server)
                live = [k for k, s in self.servers.items() if s.live]
            if live:
                placed = await self.placement.place(room_id, live)
                if placed is not None:
                    server = self.servers.get(placed.server)
                    if server is not None and server.live:
                        return server, placed
            if loop.time() > deadline:
                raise ProtocolError(ErrorCode.SFU_UNAVAILABLE, "no SFU server is reachable; retry later")
            await asyncio.sleep(0.2)

    async def _new_peer(self, session: Session, room_id: str, msg_id: Any) -> Peer:
        server, placed = await self._server_for(room_id)
        conn = await self._ensure_room(server, placed)
        if session.ended or room_id not in session.rooms:
            raise ProtocolError(ErrorCode.NOT_IN_ROOM, f"not in room {room_id!r}", msg_id)
        peer = Peer(session, room_id, server, conn, placed)
        peer.chain = self._pending_chain.get((room_id, session.id))
        self.peers[(room_id, session.id)] = peer
        return peer

    async def _ensure_room(self, server: Server, placed: Placed) -> JanusConnection:
        """The room's VideoRoom exists on its Janus server (made once per connection)."""
        conn = server.conn
        assert conn is not None
        if placed.janus_room not in server.rooms:
            handle = await conn.attach(VIDEOROOM)
            try:
                await conn.message(handle, {
                    "request": "create", "room": placed.janus_room, "is_private": True,
                    "publishers": self.settings.max_sfu_room_members,
                    "videocodec": ",".join(VIDEO_CODECS), "audiocodec": ",".join(AUDIO_CODECS),
                    "notify_joining": False,
                    "fir_freq": 10, "bitrate": 0})
            except JanusError as exc:
                if exc.code != 427:  # 427: the room exists (another node made it)
                    raise
            finally:
                await conn.detach(handle)
            server.rooms.add(placed.janus_room)
        return conn

    def _drop(self, peer: Peer, *, announce: bool) -> None:
        """The member left (or was replaced): free its handles and its tracks."""
        key = (peer.room_id, peer.session.id)
        if self.peers.get(key) is peer:
            del self.peers[key]
        peer.dead = True
        gone = [t["trackId"] for t in peer.published.values() if t["trackId"] in peer.announced]
        if announce and gone and peer.room_id in self.hub.rooms:
            self.hub.publish(peer.room_id, {"type": "tracks-unpublished", "roomId": peer.room_id,
                                            "userId": peer.user_id, "tracks": gone})
        self._forget_tracks(peer.room_id, gone)

        async def free() -> None:
            if self.clustered:
                with contextlib.suppress(BrokerDown):
                    await self.shared.broker.map_set(peers_map(peer.room_id), peer.session.id, None)
            for tid in [t["trackId"] for t in peer.published.values()]:
                with contextlib.suppress(BrokerDown):
                    await self.shared.drop_track(peer.room_id, tid)
            for handle in (peer.pub, peer.sub):
                if handle is not None and peer.conn.alive:
                    await peer.conn.detach(handle)

        self._spawn(free())

    def _forget_tracks(self, room_id: str, track_ids: list[str]) -> None:
        """Local subscribers stop asking for tracks that are gone (Janus dropped them already)."""
        if not track_ids:
            return
        for (r, _), p in self.peers.items():
            if r == room_id:
                for tid in track_ids:
                    p.want.discard(tid)
                    p.have.pop(tid, None)

    # ================================================================ publish
    def _on_publish(self, session: Session, msg: dict[str, Any], msg_id: Any) -> None:
        room = self._room(session, msg, msg_id)
        self._grant(session, "canPublish", msg_id)
        sdp = check_sdp(msg.get("sdp"), msg_id)
        sources = msg.get("sources")
        if sources is not None and (type(sources) is not dict or len(sources) > 32 or any(
                type(k) is not str or v not in SOURCES for k, v in sources.items())):
            raise ProtocolError(ErrorCode.INVALID_MESSAGE,
                                f"sources must map mids to one of {', '.join(SOURCES)}", msg_id)
        offered = [s for s in sdp_sections(sdp) if s["kind"] in ("audio", "video")]
        if not offered:
            raise ProtocolError(ErrorCode.BAD_SDP, "the offer has no audio or video", msg_id)

        async def work(peer: Peer) -> None:
            await self._publish(peer, sdp, sources or {}, msg_id)

        self._queue(session, room, msg_id, work, create=True)

    async def _publish(self, peer: Peer, sdp: str, sources: dict[str, str], msg_id: Any) -> None:
        conn = peer.conn
        jsep = {"type": "offer", "sdp": sdp}
        if peer.pub is None:
            handle = await conn.attach(VIDEOROOM, lambda ev: self._pub_event(peer, ev))
            try:
                data, answer = await conn.message(handle, {
                    "request": "joinandconfigure", "room": peer.placed.janus_room,
                    "ptype": "publisher", "id": peer.feed, "display": peer.feed}, jsep)
            except JanusError:
                # Not joined: the next publish starts from a fresh handle.
                await conn.detach(handle)
                raise
            peer.pub = handle
        else:
            data, answer = await conn.message(peer.pub, {"request": "configure"}, jsep)
        if answer is None or answer.get("type") != "answer":
            raise ProtocolError(ErrorCode.BAD_SDP, "the SFU did not accept the offer", msg_id)
        self.stats["publishes"] += 1
        for pc_candidate in peer.trickles["publish"]:
            await conn.trickle(peer.pub, pc_candidate)
        peer.trickles["publish"].clear()
        # Tracks: the m-sections Janus receives on (its answer says recvonly), with
        # the codec Janus chose for each (rtchub.sfu.codecs).
        codecs = negotiated(data.get("streams"))
        videos = 0
        current: set[str] = set()
        for sec in sdp_sections(answer["sdp"]):
            mid, kind = sec["mid"], sec["kind"]
            if mid is None or kind not in ("audio", "video") or sec["port"] == "0" \
                    or sec["direction"] not in ("recvonly", "sendrecv"):
                continue
            current.add(mid)
            source = sources.get(mid) or ("microphone" if kind == "audio"
                                          else "camera" if videos == 0 else "screen")
            if kind == "video":
                videos += 1
            if mid not in peer.published:
                peer.published[mid] = {"trackId": "t-" + secrets.token_hex(8), "u": peer.user_id,
                                       "f": peer.feed, "m": mid, "k": kind, "s": source, "x": False,
                                       "n": self.hub.node_id, "sid": peer.session.id}
            if mid in codecs:
                peer.published[mid]["c"] = codecs[mid]
        removed = [peer.published.pop(mid) for mid in list(peer.published) if mid not in current]
        self.hub.send_msg(peer.session, {
            "type": "publish-answer", "roomId": peer.room_id, "sdp": answer["sdp"],
            "tracks": [{"trackId": t["trackId"], "mid": mid, "kind": t["k"], "source": t["s"]}
                       for mid, t in peer.published.items()]})
        if removed:
            await self._unannounce(peer, removed)
        if peer.pub_up:
            await self._announce(peer)

    def _pub_event(self, peer: Peer, ev: dict[str, Any]) -> None:
        kind = ev.get("janus")
        if kind == "webrtcup":
            peer.pub_up = True
            self._spawn(self._announce(peer))
        elif kind == "hangup" and not peer.dead:
            # The publisher's PeerConnection is gone (ICE failed, DTLS closed): Janus says so.
            peer.pub_up = False
            for callback in self.on_publisher_hangup:
                callback(peer.session, peer.room_id, str(ev.get("reason", "")))
        elif kind == "trickle":
            self._candidate_out(peer, "publish", ev.get("candidate"))

    async def _announce(self, peer: Peer) -> None:
        """Tell the room about tracks that are now flowing into Janus (subscribable)."""
        fresh = [t for t in peer.published.values() if t["trackId"] not in peer.announced]
        if not fresh or peer.dead:
            return
        async with self._dir_lock(peer.room_id):
            for t in fresh:
                peer.announced.add(t["trackId"])
                await self.shared.put_track(peer.room_id, t["trackId"], t)
            self.hub.publish(peer.room_id, {
                "type": "tracks-published", "roomId": peer.room_id, "userId": peer.user_id,
                "tracks": [self._public(t["trackId"], t) for t in fresh]})
        if self.clustered:
            await self._save(peer)

    async def _unannounce(self, peer: Peer, tracks: list[dict[str, Any]]) -> None:
        gone = [t["trackId"] for t in tracks if t["trackId"] in peer.announced]
        for t in tracks:
            peer.announced.discard(t["trackId"])
            await self.shared.drop_track(peer.room_id, t["trackId"])
        if gone:
            self._forget_tracks(peer.room_id, gone)
            self.hub.publish(peer.room_id, {"type": "tracks-unpublished", "roomId": peer.room_id,
                                            "userId": peer.user_id, "tracks": gone})

    def _on_unpublish(self, session: Session, msg: dict[str, Any], msg_id: Any) -> None:
        room = self._room(session, msg, msg_id)

        async def work(peer: Peer) -> None:
            if peer.pub is None:
                return
            handle, peer.pub, peer.pub_up = peer.pub, None, False
            tracks = list(peer.published.values())
            peer.published.clear()
            peer.feed = "f-" + secrets.token_hex(8)
            await peer.conn.detach(handle)
            await self._unannounce(peer, tracks)

        self._queue(session, room, msg_id, work)

    def _on_mute(self, session: Session, msg: dict[str, Any], msg_id: Any) -> None:
        room = self._room(session, msg, msg_id)
        track_id, muted = msg.get("trackId"), msg.get("muted")
        if type(track_id) is not str or type(muted) is not bool:
            raise ProtocolError(ErrorCode.INVALID_MESSAGE, "mute needs trackId and muted (boolean)", msg_id)

        async def work(peer: Peer) -> None:
            track = next((t for t in peer.published.values() if t["trackId"] == track_id), None)
            if track is None:
                raise ProtocolError(ErrorCode.TRACK_NOT_FOUND, "you publish no such track", msg_id)
            track["x"] = muted
            if track_id in peer.announced:
                await self.shared.put_track(peer.room_id, track_id, track)
                self.hub.publish(peer.room_id, {"type": "track-muted", "roomId": peer.room_id,
                                                "userId": peer.user_id, "trackId": track_id,
                                                "muted": muted})

        self._queue(session, room, msg_id, work)

    # ================================================================ subscribe
    def _track_list(self, msg: dict[str, Any], msg_id: Any) -> list[str]:
        tracks = msg.get("tracks")
        if type(tracks) is not list or not tracks or len(tracks) > MAX_TRACKS_PER_REQUEST \
                or any(type(t) is not str or len(t) > 64 for t in tracks):
            raise ProtocolError(ErrorCode.INVALID_MESSAGE, "tracks must be a list of trackIds", msg_id)
        return tracks

    def _on_subscribe(self, session: Session, msg: dict[str, Any], msg_id: Any) -> None:
        room = self._room(session, msg, msg_id)
        self._grant(session, "canSubscribe", msg_id)
        wanted = self._track_list(msg, msg_id)

        async def work(peer: Peer) -> None:
            directory = await self.shared.tracks(room.id)
            unknown = [t for t in wanted if t not in directory]
            if unknown:
                raise ProtocolError(ErrorCode.TRACK_NOT_FOUND,
                                    f"no such track in room {room.id!r}: {unknown[0]!r}", msg_id)
            peer.want.update(wanted)
            await self._sync_subscription(peer, directory)

        self._queue(session, room, msg_id, work, create=True)

    def _on_unsubscribe(self, session: Session, msg: dict[str, Any], msg_id: Any) -> None:
        room = self._room(session, msg, msg_id)
        if msg.get("all") is True:
            # The client closed its subscribing connection (an auto room went back
            # to peer-to-peer): drop the handle, the next subscribe starts afresh.
            async def close(peer: Peer) -> None:
                handle, peer.sub = peer.sub, None
                peer.want.clear()
                peer.have.clear()
                peer.sub_mids.clear()
                peer.layers.clear()
                peer.offered = False
                peer.trickles["subscribe"].clear()
                if handle is not None:
                    await peer.conn.detach(handle)

            self._queue(session, room, msg_id, close)
            return
        unwanted = self._track_list(msg, msg_id)

        async def work(peer: Peer) -> None:
            peer.want.difference_update(unwanted)
            await self._sync_subscription(peer, await self.shared.tracks(room.id))

        self._queue(session, room, msg_id, work)

    async def _sync_subscription(self, peer: Peer, directory: dict[str, dict[str, Any]]) -> None:
        """Bring the subscriber handle to ``peer.want``; one renegotiation at a time.

        While an offer waits for the client's answer, changes wait too: the
        answer (``subscribe-answer``) runs this again.
        """
        if peer.offered or peer.dead:
            return
        peer.want &= set(directory)
        add = [t for t in peer.want if t not in peer.have]
        drop = [t for t in peer.have if t not in peer.want]
        if not add and not drop:
            return
        streams = [{"feed": directory[t]["f"], "mid": directory[t]["m"]} for t in add]
        conn = peer.conn
        if peer.sub is None:
            if not add:
                return
            peer.sub = await conn.attach(VIDEOROOM, lambda ev: self._sub_event(peer, ev))
            data, offer = await conn.message(peer.sub, {
                "request": "join", "room": peer.placed.janus_room, "ptype": "subscriber",
                "streams": streams, "use_msid": False})
        else:
            body: dict[str, Any] = {"request": "update"}
            if streams:
                body["subscribe"] = streams
            if drop:
                body["unsubscribe"] = [{"feed": peer.have[t][0], "mid": peer.have[t][1]} for t in drop]
            data, offer = await conn.message(peer.sub, body)
        for t in add:
            peer.have[t] = (directory[t]["f"], directory[t]["m"])
        for t in drop:
            peer.have.pop(t, None)
        self.stats["subscribes"] += 1
        if offer is not None:
            await self._offer_out(peer, data, offer)

    async def _offer_out(self, peer: Peer, data: dict[str, Any], offer: dict[str, Any],
                         restart: bool = False) -> None:
        """Hand Janus's subscriber offer to the client, with its mids mapped to trackIds."""
        directory = await self.shared.tracks(peer.room_id)
        by_feed = {(t["f"], t["m"]): (tid, t) for tid, t in directory.items()}
        streams = []
        for st in data.get("streams") or []:
            hit = by_feed.get((st.get("feed_id"), st.get("feed_mid")))
            entry: dict[str, Any] = {"mid": str(st.get("mid")), "kind": st.get("type"),
                                     "active": bool(st.get("active", True)) and hit is not None}
            if hit is not None:
                entry["trackId"], entry["userId"] = hit[0], hit[1]["u"]
                peer.sub_mids[hit[0]] = entry["mid"]
            streams.append(entry)
        peer.offered = True
        msg: dict[str, Any] = {"type": "subscribe-offer", "roomId": peer.room_id, "sdp": offer["sdp"],
                               "streams": streams}
        if restart:
            msg["restart"] = True
        if not peer.session.ended:
            self.hub.send_msg(peer.session, msg)

    def _sub_event(self, peer: Peer, ev: dict[str, Any]) -> None:
        kind = ev.get("janus")
        if kind == "trickle":
            self._candidate_out(peer, "subscribe", ev.get("candidate"))
            return
        jsep = ev.get("jsep")
        data = (ev.get("plugindata") or {}).get("data") or {}
        if kind == "event" and jsep is not None and jsep.get("type") == "offer":
            # Janus renegotiates on its own when a subscribed publisher goes away.
            async def relay(prev: asyncio.Future[None] | None) -> None:
                if prev is not None:
                    with contextlib.suppress(BaseException):
                        await prev
                with contextlib.suppress(BrokerDown):
                    await self._offer_out(peer, data, jsep)
            peer.chain = self._spawn(relay(peer.chain))

    def _on_subscribe_answer(self, session: Session, msg: dict[str, Any], msg_id: Any) -> None:
        room = self._room(session, msg, msg_id)
        sdp = check_sdp(msg.get("sdp"), msg_id)

        async def work(peer: Peer) -> None:
            if peer.sub is None or not peer.offered:
                raise ProtocolError(ErrorCode.INVALID_MESSAGE, "no subscribe-offer is waiting", msg_id)
            await peer.conn.message(peer.sub, {"request": "start"}, {"type": "answer", "sdp": sdp})
            peer.offered = False
            for cand in peer.trickles["subscribe"]:
                await peer.conn.trickle(peer.sub, cand)
            peer.trickles["subscribe"].clear()
            await self._sync_subscription(peer, await self.shared.tracks(peer.room_id))

        self._queue(session, room, msg_id, work)

    def _on_layer(self, session: Session, msg: dict[str, Any], msg_id: Any) -> None:
        """Adaptive simulcast: forward one layer of a subscribed track, or none.

        Applied to the subscriber handle with VideoRoom ``configure`` on that
        stream alone: no renegotiation; Janus switches at the next keyframe.
        """
        room = self._room(session, msg, msg_id)
        track_id, layer = msg.get("trackId"), msg.get("layer")
        if type(track_id) is not str or layer not in LAYERS:
            raise ProtocolError(ErrorCode.INVALID_MESSAGE,
                                "subscribe-layer needs trackId and layer (h, m, l or off)", msg_id)

        async def work(peer: Peer) -> None:
            mid = peer.sub_mids.get(track_id)
            if peer.sub is None or track_id not in peer.have or mid is None:
                raise ProtocolError(ErrorCode.TRACK_NOT_FOUND,
                                    f"you do not receive track {track_id!r}", msg_id)
            peer.layers[track_id] = layer
            await peer.conn.message(peer.sub, {"request": "configure",
                                               "streams": [{"mid": mid, **LAYERS[layer]}]})

        self._queue(session, room, msg_id, work)

    def _on_ice_restart(self, session: Session, msg: dict[str, Any], msg_id: Any) -> None:
        """Subscriber ICE restart: Janus makes a new offer with fresh credentials (RFC 8445 9).

        A publisher restarts by sending ``publish`` again with an ICE-restart offer.
        """
        room = self._room(session, msg, msg_id)
        if msg.get("pc", "subscribe") != "subscribe":
            raise ProtocolError(ErrorCode.INVALID_MESSAGE,
                                "publishers restart ICE with a new publish offer", msg_id)

        async def work(peer: Peer) -> None:
            if peer.sub is None:
                raise ProtocolError(ErrorCode.INVALID_MESSAGE, "nothing subscribed", msg_id)
            peer.offered = False
            data, offer = await peer.conn.message(peer.sub, {"request": "configure", "restart": True})
            if offer is not None:
                await self._offer_out(peer, data, offer, restart=True)

        self._queue(session, room, msg_id, work)

    # ================================================================ trickle
    def _on_candidate(self, session: Session, msg: dict[str, Any], msg_id: Any) -> None:
        room = self._room(session, msg, msg_id)
        pc = msg.get("pc")
        if pc not in PCS:
            raise ProtocolError(ErrorCode.INVALID_MESSAGE, "pc must be publish or subscribe", msg_id)
        raw = msg.get("candidate")
        cand: dict[str, Any] | None
        if raw is None or (type(raw) is dict and raw.get("completed") is True):
            cand = None
        elif type(raw) is dict and type(raw.get("candidate")) is str \
                and len(raw["candidate"]) <= MAX_CANDIDATE:
            cand = {"candidate": raw["candidate"]}
            mid, index = raw.get("sdpMid"), raw.get("sdpMLineIndex")
            if type(mid) is str and len(mid) <= 32:
                cand["sdpMid"] = mid
            if type(index) is int and 0 <= index < 1000:
                cand["sdpMLineIndex"] = index
            if not raw["candidate"]:
                cand = None  # an empty candidate string is the end-of-candidates marker
        else:
            raise ProtocolError(ErrorCode.INVALID_MESSAGE,
                                "candidate must be {candidate, sdpMid, sdpMLineIndex} or null", msg_id)

        async def work(peer: Peer) -> None:
            handle = peer.pub if pc == "publish" else peer.sub
            waiting = pc == "subscribe" and peer.offered
            if handle is None or waiting:
                peer.trickles[pc].append(cand)
                return
            await peer.conn.trickle(handle, cand)

        self._queue(session, room, msg_id, work, create=pc == "publish")

    def _candidate_out(self, peer: Peer, pc: str, cand: Any) -> None:
        if peer.dead or peer.session.ended or not isinstance(cand, dict):
            return
        out = None if cand.get("completed") else {
            "candidate": cand.get("candidate"), "sdpMid": cand.get("sdpMid"),
            "sdpMLineIndex": cand.get("sdpMLineIndex")}
        self.hub.send_msg(peer.session, {"type": "media-candidate", "roomId": peer.room_id, "pc": pc,
                                         "candidate": out})

    # ================================================================ API
    def room_view(self, room_id: str) -> dict[str, Any]:
        """What the server API shows of a room's media (GET /api/rooms/{roomId})."""
        room = self.hub.rooms.get(room_id)
        return {"media": room.media if room is not None else self.declared.get(room_id)}


    # ================================================================ media (rtchub.media)
    def is_sfu_room(self, room_id: str) -> bool:
        """Whether the room's media passes through Janus (what recording and broadcast need)."""
        room = self.hub.rooms.get(room_id)
        return self.enabled and room is not None and (
            room.media == "sfu" or room.media == "auto" and room.route == SFU_ROUTE)

    async def janus_for(self, room_id: str) -> tuple[Server, Placed]:
        """The Janus server that holds (or now gets) ``room_id``, placed like any SFU room."""
        return await self._server_for(room_id)

    async def _videoroom(self, room_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """One VideoRoom request about ``room_id`` on a short-lived handle of its Janus."""
        server, placed = await self._server_for(room_id)
        conn = await self._ensure_room(server, placed)
        handle = await conn.attach(VIDEOROOM)
        try:
            data, _ = await conn.message(handle, {**body, "room": placed.janus_room})
            return data
        finally:
            with contextlib.suppress(JanusError, JanusGone):
                await conn.detach(handle)

    async def start_recording(self, room_id: str, rec_dir: Path) -> None:
        """Janus records every publisher of the room into ``rec_dir`` (.mjr per track).

        VideoRoom ``edit`` with ``new_rec_dir`` sets where, then
        ``enable_recording`` starts it for the publishers there now and for
        those who come later.
        """
        await self._videoroom(room_id, {"request": "edit", "new_rec_dir": str(rec_dir)})
        await self._videoroom(room_id, {"request": "enable_recording", "record": True})

    async def stop_recording(self, room_id: str) -> None:
        await self._videoroom(room_id, {"request": "enable_recording", "record": False})

    async def feeds(self, room_id: str) -> dict[str, dict[str, Any]]:
        """Publishers of a room, from its track directory.

        feed -> ``{user, tracks: {mid: kind}, codecs: {mid: codec}}``; the codec is
        what Janus negotiated with the publisher (absent for a track announced by a
        node that predates codecs).
        """
        out: dict[str, dict[str, Any]] = {}
        for t in (await self.shared.tracks(room_id)).values():
            feed = out.setdefault(t["f"], {"user": t["u"], "tracks": {}, "codecs": {}})
            feed["tracks"][t["m"]] = t["k"]
            if t.get("c"):
                feed["codecs"][t["m"]] = t["c"]
        return out

    async def rtp_forward(self, room_id: str, feed: str, streams: list[dict[str, Any]],
                          host: str = "127.0.0.1") -> list[int]:
        """Janus sends ``feed``'s tracks as plain RTP to ``host`` (VideoRoom ``rtp_forward``).

        ``streams`` are ``{mid, port, pt}``; returns the forwarder ids (for
        :meth:`stop_rtp_forward`).
        """
        data = await self._videoroom(room_id, {"request": "rtp_forward", "publisher_id": feed,
                                               "host": host, "streams": streams})
        return [int(s["stream_id"]) for s in data.get("forwarders", []) if "stream_id" in s]

    async def stop_rtp_forward(self, room_id: str, feed: str, stream_id: int) -> None:
        with contextlib.suppress(JanusError, JanusGone):
            await self._videoroom(room_id, {"request": "stop_rtp_forward", "publisher_id": feed,
                                            "stream_id": stream_id})


def setup(app: RtcHub) -> SfuService:
    """Install the SFU on ``app``: handlers, media policy, Janus servers (rtchub.app calls this)."""
    cluster = app.cluster
    if cluster is not None:
        broker = cluster.broker
    else:
        from rtchub.broker.memory import MemoryBroker

        broker = MemoryBroker()
    service = SfuService(app, broker)
    if service.enabled:
        app.services.append(service)
        app.ready_checks.append(("sfu", service.ready))
    return service
