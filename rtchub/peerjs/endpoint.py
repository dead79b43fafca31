"""One PeerJS client's WebSocket, as a hub session.

The translation, both ways (docs/peerjs.md has the table):

- the connection opens a hub session whose userId is the PeerJS id and joins
  the room of its key (``peerjs:<key>``); the room-info that answers the join
  becomes ``OPEN``, a ``user-id-taken`` refusal ``ID-TAKEN``, any other
  refusal ``ERROR``;
- ``OFFER``/``ANSWER``/``CANDIDATE``/``LEAVE``/``EXPIRE`` with a ``dst`` in
  the room become the hub's ``signal`` relay (``data`` = ``{type, payload}``):
  the hub stamps ``from`` with the sender's real id, which comes back out as
  ``src``, and the cluster forwards it to ``dst``'s node like any relay;
- a ``dst`` that is not in the room yet goes to the node's
  :class:`~rtchub.peerjs.queue.OfflineQueue`, flushed when that peer joins
  (seen as ``user-joined``), else answered with ``EXPIRE``;
- ``HEARTBEAT`` only proves the peer is alive (every frame does).

Unlike an rtchub session, a PeerJS peer has no resume: PeerJS's server
forgets a client as soon as its socket closes, and so does this endpoint
(the hub ends the session at once, without a grace period).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from rtchub.protocol.codec import JSON
from rtchub.protocol.errors import ErrorCode
from rtchub.protocol.messages import ID_PATTERN
from rtchub.transports.ws_aiohttp import AiohttpEndpoint
from rtchub.transports.wsbase import WsEndpoint

if TYPE_CHECKING:
    from aiohttp import web

    from rtchub.core.outgoing import Outgoing
    from rtchub.peerjs.server import PeerJsServer

#: Client messages relayed to ``dst`` (PeerJS's server transmits exactly these).
TRANSMITTED = frozenset({"OFFER", "ANSWER", "CANDIDATE", "LEAVE", "EXPIRE"})
#: Client messages kept while the join is in flight (the client sends nothing
#: but HEARTBEAT before OPEN; this is only a bound).
MAX_EARLY = 64
#: WebSocket close code after a refusal (PeerJS's server closes without one).
NORMAL = 1000


def server_message(mtype: str, msg: str | None = None, **fields: Any) -> bytes:
    """A server-to-client PeerJS message; ``msg`` goes into ``payload.msg`` as PeerJS puts it."""
    out: dict[str, Any] = {"type": mtype, **fields}
    if msg is not None:
        out["payload"] = {"msg": msg}
    return orjson.dumps(out)


#: Slots of the PeerJS peer state, added to each concrete endpoint's own.
PEER_SLOTS = ("server", "peer_id", "token", "joined", "early")


class PeerJsPeer(WsEndpoint):
    """The PeerJS side of an endpoint, whatever carries its frames.

    Mixed in before a concrete WebSocket endpoint: :class:`PeerJsEndpoint`
    (aiohttp, the native server) or ``rtchub.asgi``'s ASGI endpoint.
    """

    __slots__ = ()
    server: PeerJsServer
    peer_id: str
    token: str
    joined: bool
    early: list[dict[str, Any]]

    def init_peer(self, server: PeerJsServer, peer_id: str, token: str) -> None:
        self.server = server
        self.transport_name = "peerjs"
        self.peer_id = peer_id
        self.token = token
        self.joined = False
        self.early: list[dict[str, Any]] = []
        # No resume in PeerJS: whatever ends the socket ends the peer.
        self.clean = True

    # -- lifecycle ------------------------------------------------------------------
    def opened(self) -> None:
        super().opened()  # the session (and, natively, the liveness sweep)
        session = self.session
        assert session is not None
        self.hub.receive(session, {"type": "join", "roomId": self.server.room_id,
                                   "userId": self.peer_id})

    def closed(self) -> None:
        if self.server.peers.get(self.peer_id) is self:
            del self.server.peers[self.peer_id]
        super().closed()

    def peer_closed(self, code: int | None) -> None:
        self.close_code = code  # every close is final for a PeerJS peer (see init_peer)

    # -- client -> hub ----------------------------------------------------------------
    def incoming(self, data: bytes, binary: bool) -> None:
        session = self.session
        if session is None or self.closing:
            return
        try:
            msg = orjson.loads(data)
        except orjson.JSONDecodeError:
            return  # PeerJS's server drops what it cannot parse
        if type(msg) is not dict or msg.get("type") not in TRANSMITTED:
            return  # HEARTBEAT (liveness is any frame) and unknown types
        if not self.joined:
            if len(self.early) < MAX_EARLY:
                self.early.append(msg)
            return
        self.transmit(msg)

    def transmit(self, msg: dict[str, Any]) -> None:
        """Relay one message to ``dst`` through the hub, or queue it for later."""
        session = self.session
        if session is None:
            return
        mtype, dst = msg["type"], msg.get("dst")
        if mtype == "LEAVE" and not dst:
            self.close(NORMAL, "leave")  # PeerJS: a LEAVE without dst removes the sender
            return
        if type(dst) is not str or ID_PATTERN.fullmatch(dst) is None:
            return
        server = self.server
        data = {"type": mtype, "payload": msg.get("payload")}
        room = self.hub.rooms.get(server.room_id)
        if room is not None and dst in room.members:
            self.hub.receive(session, {"type": "signal", "roomId": server.room_id,
                                       "to": dst, "data": data})
        else:
            server.queue.put(server.room_id, self.peer_id, dst, data, self.hub.clock())

    # -- hub -> client ----------------------------------------------------------------
    def deliver(self, seq: int, out: Outgoing) -> None:
        if self.closing:
            return
        mtype = out.type
        if mtype == "signal":
            msg = out.msg
            data = msg.get("data")
            if type(data) is dict and msg.get("roomId") == self.server.room_id:
                self.send_raw(orjson.dumps({"type": data.get("type"), "src": msg.get("from"),
                                            "dst": self.peer_id, "payload": data.get("payload")}))
        elif mtype == "user-joined":
            self.server.arrived(out.msg.get("userId"))
        elif mtype == "room-info" and not self.joined:
            self._open()
        elif mtype == "error" and not self.joined:
            self._refused(out.msg)
        if self._pending_bytes() > self.max_pending:
            self.deliver_overflowed()

    def send_raw(self, body: bytes) -> None:
        self._send_frame(body, False)

    def _open(self) -> None:
        self.joined = True
        self.server.peers[self.peer_id] = self
        self.send_raw(server_message("OPEN"))
        self.server.arrived(self.peer_id)
        early, self.early = self.early, []
        for msg in early:
            self.transmit(msg)

    def _refused(self, error: dict[str, Any]) -> None:
        code = error.get("code")
        if code == ErrorCode.USER_ID_TAKEN:
            self.send_raw(server_message("ID-TAKEN", "ID is taken"))
        elif code == ErrorCode.ROOM_FULL:
            self.send_raw(server_message("ERROR", "Server has reached its concurrent user limit"))
        else:
            self.send_raw(server_message("ERROR", str(error.get("message") or code)))
        self.close(NORMAL, str(code))


class PeerJsEndpoint(PeerJsPeer, AiohttpEndpoint):
    """A PeerJS peer on the native server's aiohttp WebSocket."""

    __slots__ = PEER_SLOTS

    def __init__(self, server: PeerJsServer, peer: str, ws: web.WebSocketResponse, *,
                 peer_id: str, token: str, claims: dict[str, Any] | None) -> None:
        app = server.app
        AiohttpEndpoint.__init__(self, app.hub, app.liveness, JSON, peer, ws, claims=claims,
                                 user_id=peer_id)
        self.init_peer(server, peer_id, token)
