"""The hub's state changes for a cluster node (a part of :class:`~rtchub.core.hub.Hub`).

rtchub.broker decides *when* (from the broker's answers and other nodes'
ops); these methods make the change, fire the observers and send what
members must see, so nothing outside ``core/`` writes a Hub, Room or Session
field. Remote members are stub sessions in ``Hub.remote``: rooms hold them
like any member, so routing stays exactly as on one node.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rtchub.core.outgoing import Outgoing
from rtchub.core.room import Member, Room
from rtchub.core.session import Session
from rtchub.protocol.errors import CloseCode

if TYPE_CHECKING:
    from collections.abc import Callable

    from rtchub.core.hub import HubObserver


class ClusterState:
    """Mixed into :class:`~rtchub.core.hub.Hub`; uses its sessions, rooms and observers."""

    node_id: str
    sessions: dict[str, Session]
    rooms: dict[str, Room]
    remote: dict[str, Session]
    observers: list[HubObserver]
    clock: Callable[[], float]
    send: Callable[[Session, Outgoing], None]

    if TYPE_CHECKING:
        def open_room(self, room_id: str, media: str | None = None) -> Room: ...
        def _close_room(self, room: Room) -> None: ...
        def end(self, session: Session, reason: str) -> None: ...
        def _new_session(self, sid: str, sink: Any) -> Session: ...
        def _trim(self, session: Session) -> None: ...
        def membership_changed(self, room: Room) -> None: ...

    def forget_room(self, room_id: str) -> None:
        """Drop ``room_id`` if no member of this node is left in it (only stubs)."""
        room = self.rooms.get(room_id)
        if room is None:
            return
        me = self.node_id
        if any(mb.session.node is me for mb in room.members.values()):
            return
        for mb in room.members.values():
            self._unlink_remote(mb.session, room_id)
        self._close_room(room)

    def remote_session(self, sid: str, node: str, user_id: str) -> Session:
        """The stub of session ``sid`` of ``node`` (made on first use)."""
        stub = self.remote.get(sid)
        if stub is None:
            stub = self.remote[sid] = Session(sid, None, self.clock())
            stub.end()  # a placeholder: never resumed or fed here
            stub.user_fixed = True
        stub.node = node
        stub.user_id = user_id
        return stub

    def move_remote(self, sid: str, node: str) -> None:
        """Remote session ``sid`` now lives on ``node``."""
        stub = self.remote.get(sid)
        if stub is not None:
            stub.node = node

    def seat_remote(self, room_id: str, user_id: str, sid: str, node: str, name: str, *,
                    create: bool = False, media: str | None = None) -> bool:
        """Session ``sid`` of ``node`` holds seat ``user_id`` of ``room_id``.

        No ``user-joined`` here: the joiner's own node sends it to every
        member. A seat held by a local session is left alone (the op that
        replaces it, if any, says so first). ``create``: make the room if this
        node does not have it. False when nothing was seated.
        """
        if node == self.node_id:
            return False
        room = self.rooms.get(room_id)
        if room is None:
            if not create:
                return False
            room = self.open_room(room_id, media)
        me = self.node_id
        cur = room.members.get(user_id)
        if cur is not None:
            if cur.session.id == sid:
                if cur.session.node is not me:
                    cur.session.node = node
                return True
            if cur.session.node is me:
                return False
            self._unlink_remote(cur.session, room_id)
        stub = self.remote_session(sid, node, user_id)
        stub.rooms[room_id] = None
        room.members[user_id] = Member(user_id, name or user_id, stub)
        self.membership_changed(room)  # an auto room may move (rtchub.core.route)
        return True

    def unseat_remote(self, room_id: str, user_id: str, sid: str, reason: str | None = None
                      ) -> Member | None:
        """Remote session ``sid`` no longer holds seat ``user_id`` of ``room_id``.

        ``reason``: tell this node's members (``user-left``), which a remote
        member's own node cannot do when it died. The room is kept (see
        :meth:`forget_room`). Returns the member removed, if any.
        """
        room = self.rooms.get(room_id)
        mb = room.members.get(user_id) if room is not None else None
        if room is None or mb is None or mb.session.id != sid or mb.session.node is self.node_id:
            return None
        del room.members[user_id]
        self._unlink_remote(mb.session, room_id)
        self.membership_changed(room)
        if reason is not None:
            left = user_left(room_id, user_id, reason)
            me = self.node_id
            for other in room.members.values():
                if other.session.node is me:
                    self.send(other.session, left)
        return mb

    def forget_remote(self, sid: str) -> None:
        """Remote session ``sid`` is gone: its seats here are dropped without a word."""
        stub = self.remote.pop(sid, None)
        if stub is None:
            return
        for room_id in list(stub.rooms):
            room = self.rooms.get(room_id)
            mb = room.members.get(stub.user_id or "") if room is not None else None
            if mb is not None and mb.session is stub:
                del room.members[stub.user_id or ""]  # type: ignore[union-attr]
                self.membership_changed(room)  # type: ignore[arg-type]
        stub.rooms.clear()

    def _unlink_remote(self, stub: Session, room_id: str) -> None:
        stub.rooms.pop(room_id, None)
        if not stub.rooms and self.remote.get(stub.id) is stub:
            del self.remote[stub.id]

    def give_up_seat(self, sid: str, room_id: str, user_id: str) -> bool:
        """A join on another node took local session ``sid``'s seat (a rejoin there).

        Members were told by that join (``rejoined``); the session ends if this
        was its last room. True when the seat was ours.
        """
        s = self.sessions.get(sid)
        room = self.rooms.get(room_id)
        mb = room.members.get(user_id) if room is not None else None
        if s is None or room is None or mb is None or mb.session is not s:
            return False
        del room.members[user_id]
        s.rooms.pop(room_id, None)
        if not s.rooms:
            sink = s.sink
            self.end(s, "rejoined")
            if sink is not None:
                sink.close(CloseCode.TAKEN_OVER, "rejoined on another connection")
        return True

    def release(self, sid: str, node: str) -> list[str] | None:
        """Hand local session ``sid`` over to ``node`` (a resume there).

        Its transport is closed with 4009, its seats become stubs of ``node``
        (members see nothing: the session lives on), observers hear
        ``session_ended(reason="moved")``. Returns its rooms, or None when
        there is no such session here.
        """
        s = self.sessions.pop(sid, None)
        if s is None:
            return None
        sink = s.end()
        if sink is not None:
            if sink.session is s:
                sink.session = None
            sink.close(CloseCode.TAKEN_OVER, "session resumed on another node")
        stub = self.remote_session(sid, node, s.user_id or "")
        rooms = list(s.rooms)
        for room_id in rooms:
            room = self.rooms.get(room_id)
            mb = room.members.get(s.user_id) if room is not None and s.user_id else None
            if mb is not None and mb.session is s:
                mb.session = stub
                stub.rooms[room_id] = None
        if not stub.rooms:
            self.remote.pop(sid, None)
        s.rooms.clear()
        for obs in self.observers:
            obs.session_ended(s, "moved")
        return rooms

    def adopt(self, sid: str, *, user_id: str | None, user_fixed: bool,
              display_name: str | None, claims: dict[str, Any] | None, seq: int,
              buffer: list[tuple[int, bytes]]) -> Session:
        """Session ``sid`` taken over from another node, detached until a transport attaches.

        ``buffer``: the mirrored messages, oldest first (bounded here as
        :meth:`deliver` bounds them); ids the client saw acknowledged are
        remembered so that its resends are not redelivered. Seats follow with
        :meth:`seat_adopted`, then :meth:`open_adopted` makes it a session of
        this hub.
        """
        s = self._new_session(sid, None)
        s.user_id = user_id
        s.user_fixed = user_fixed
        s.display_name = display_name
        s.claims = claims
        for n, body in buffer:
            s.keep(n, body)
            if body.startswith(b'{"type":"ack"'):
                msg = Outgoing.from_json(body).msg
                if "id" in msg and not msg.get("duplicate"):
                    s.remember_id(msg["id"])
        self._trim(s)
        s.seq = seq
        s.detached_at = s.created_at
        s.detach_reason = "disconnected"
        return s

    def seat_adopted(self, s: Session, room_id: str) -> bool:
        """Adopted session ``s`` keeps its seat in ``room_id`` (members see nothing)."""
        uid = s.user_id
        assert uid is not None
        room = self.open_room(room_id)
        cur = room.members.get(uid)
        if cur is not None and cur.session.node is self.node_id:
            return False
        room.members[uid] = Member(uid, s.display_name or uid, s)
        s.rooms[room_id] = None
        return True

    def open_adopted(self, s: Session) -> None:
        self.remote.pop(s.id, None)
        self.sessions[s.id] = s
        for obs in self.observers:
            obs.session_opened(s)



def user_left(room_id: str, user_id: str, reason: str) -> Outgoing:
    return Outgoing({"type": "user-left", "roomId": room_id, "userId": user_id, "reason": reason})
