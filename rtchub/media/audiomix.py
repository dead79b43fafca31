"""Audio rooms mixed on the server (issue 17, "audio MCU"): media mode ``audio-mix``.

In an ``audio-mix`` room every member sends one Opus stream to Janus's
AudioBridge and receives one stream back: the mix of everyone else (the
AudioBridge leaves each participant's own voice out of what it sends them).
A 30-person room costs each client one stream down instead of 29, and one
up. The mixing is Janus's (C, in the media server); rtchub only moves SDP.

Protocol (docs/protocol.md "Audio-mix rooms"): the client sends
``{type: "mix", roomId, sdp}`` with an offer holding one ``sendrecv`` audio
m-line; the server answers ``{type: "mix-answer", roomId, sdp}`` and ``ack``.
Sending ``mix`` again renegotiates (or ICE-restarts). Leaving the room
leaves the mix. The room is placed on a Janus server exactly like an SFU
room (rtchub.sfu.placement), under the same Janus room id, in the
AudioBridge plugin's namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from typing import TYPE_CHECKING, Any

from rtchub.core.hub import HubObserver
from rtchub.protocol.errors import ErrorCode, ProtocolError
from rtchub.sfu.janus import JanusError, JanusGone
from rtchub.sfu.service import check_sdp

if TYPE_CHECKING:
    from rtchub.app import RtcHub
    from rtchub.core.room import Member, Room
    from rtchub.core.session import Session
    from rtchub.sfu.janus import JanusConnection

log = logging.getLogger("rtchub.media")
AUDIOBRIDGE = "janus.plugin.audiobridge"
#: AudioBridge error: the room already exists (made by another node or an earlier run).
ROOM_EXISTS = 486


class MixPeer:
    def __init__(self, conn: JanusConnection, handle: int, janus_room: str) -> None:
        self.conn = conn
        self.handle = handle
        self.janus_room = janus_room
        self.lock = asyncio.Lock()


class AudioMix(HubObserver):
    """The ``mix`` message and the AudioBridge handles of audio-mix rooms on this node."""

    def __init__(self, app: RtcHub) -> None:
        self.app = app
        self.hub = app.hub
        self.peers: dict[tuple[str, str], MixPeer] = {}
        self._made: set[tuple[str, str]] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.hub.register("mix", self._on_mix)
        self.hub.add_observer(self)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_mix(self, session: Session, msg: dict[str, Any], msg_id: Any) -> None:
        room_id = msg.get("roomId")
        if type(room_id) is not str or room_id not in session.rooms:
            raise ProtocolError(ErrorCode.NOT_IN_ROOM, f"not in room {room_id!r}", msg_id)
        room = self.hub.rooms[room_id]
        if room.media != "audio-mix":
            raise ProtocolError(ErrorCode.WRONG_MEDIA_MODE,
                                f"room {room_id!r} is a {room.media} room, not audio-mix", msg_id)
        claims = session.claims
        if claims is not None and claims.get("canPublish", True) is not True:
            raise ProtocolError(ErrorCode.FORBIDDEN, "your token does not grant canPublish", msg_id)
        sdp = check_sdp(msg.get("sdp"), msg_id)

        async def work() -> None:
            try:
                answer = await self._join(session, room_id, sdp)
            except ProtocolError as err:
                err.msg_id = msg_id
                self.hub.error(session, err)
                return
            except (JanusError, JanusGone) as exc:
                code = ErrorCode.BAD_SDP if isinstance(exc, JanusError) else ErrorCode.SFU_UNAVAILABLE
                self.hub.error(session, ProtocolError(code, f"the audio mixer refused: {exc}", msg_id))
                return
            if session.ended or room_id not in session.rooms:
                return
            self.hub.send_msg(session, {"type": "mix-answer", "roomId": room_id, "sdp": answer})
            self.hub.accept(session, msg_id)

        self._spawn(work())

    async def _ensure(self, room_id: str) -> tuple[JanusConnection, str]:
        """The room's AudioBridge room on its Janus server (placed like an SFU room)."""
        sfu = self.app.sfu  # type: ignore[attr-defined]
        server, placed = await sfu.janus_for(room_id)
        conn = server.conn
        assert conn is not None
        if (server.key, placed.janus_room) not in self._made:
            handle = await conn.attach(AUDIOBRIDGE)
            try:
                await conn.message(handle, {"request": "create", "room": placed.janus_room,
                                            "is_private": True, "sampling_rate": 48000})
            except JanusError as exc:
                if exc.code != ROOM_EXISTS:
                    raise
            finally:
                await conn.detach(handle)
            self._made.add((server.key, placed.janus_room))
        return conn, placed.janus_room

    async def _request(self, room_id: str, body: dict[str, Any]) -> None:
        conn, janus_room = await self._ensure(room_id)
        handle = await conn.attach(AUDIOBRIDGE)
        try:
            await conn.message(handle, {**body, "room": janus_room})
        finally:
            with contextlib.suppress(JanusError, JanusGone):
                await conn.detach(handle)

    async def start_recording(self, room_id: str, rec_dir: Any) -> None:
        """AudioBridge records its mix of the room as ``<rec_dir>/mix.wav`` (enable_recording)."""
        await self._request(room_id, {"request": "enable_recording", "record": True,
                                      "record_dir": str(rec_dir), "record_file": "mix.wav"})

    async def stop_recording(self, room_id: str) -> None:
        await self._request(room_id, {"request": "enable_recording", "record": False})

    async def _join(self, session: Session, room_id: str, sdp: str) -> str:
        key = (room_id, session.id)
        jsep = {"type": "offer", "sdp": sdp}
        peer = self.peers.get(key)
        if peer is not None:
            async with peer.lock:
                _, answer = await peer.conn.message(peer.handle, {"request": "configure"}, jsep)
        else:
            conn, janus_room = await self._ensure(room_id)
            handle = await conn.attach(AUDIOBRIDGE)
            try:
                _, answer = await conn.message(handle, {
                    "request": "join", "room": janus_room, "id": "m-" + secrets.token_hex(8),
                    "display": session.user_id or "", "muted": False}, jsep)
            except (JanusError, JanusGone):
                with contextlib.suppress(JanusError, JanusGone):
                    await conn.detach(handle)
                raise
            if session.ended or room_id not in session.rooms:
                with contextlib.suppress(JanusError, JanusGone):
                    await conn.detach(handle)
                raise ProtocolError(ErrorCode.NOT_IN_ROOM, f"not in room {room_id!r}")
            self.peers[key] = MixPeer(conn, handle, janus_room)
        if answer is None or answer.get("type") != "answer":
            raise ProtocolError(ErrorCode.BAD_SDP, "the audio mixer did not accept the offer")
        return str(answer["sdp"])

    # ------------------------------------------------------------- observers
    def member_left(self, room: Room, member: Member, reason: str) -> None:
        peer = self.peers.pop((room.id, member.session.id), None)
        if peer is not None:
            self._spawn(self._leave(peer))

    async def _leave(self, peer: MixPeer) -> None:
        with contextlib.suppress(JanusError, JanusGone):
            await peer.conn.detach(peer.handle)  # detaching leaves the AudioBridge room

    def room_closed(self, room: Room) -> None:
        if room.media == "audio-mix":
            self._spawn(self._close(room.id))

    async def _close(self, room_id: str) -> None:
        sfu = self.app.sfu  # type: ignore[attr-defined]
        with contextlib.suppress(Exception):
            placed = await sfu.placement.lookup(room_id)
            if placed is None or sfu.clustered:
                return
            await sfu.placement.release(room_id, placed)
            server = sfu.servers.get(placed.server)
            if server is None or not server.live or (server.key, placed.janus_room) not in self._made:
                return
            self._made.discard((server.key, placed.janus_room))
            conn = server.conn
            handle = await conn.attach(AUDIOBRIDGE)
            try:
                await conn.message(handle, {"request": "destroy", "room": placed.janus_room})
            finally:
                await conn.detach(handle)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
