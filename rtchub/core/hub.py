"""The hub: every routing decision of rtchub, and none of its I/O.

Transports call :meth:`Hub.open`, :meth:`Hub.receive` and :meth:`Hub.detach`;
a timer calls :meth:`Hub.tick`. The hub answers by calling ``deliver`` and
``close`` on the :class:`~rtchub.core.session.Sink` of the sessions concerned.
Because nothing here awaits, the whole protocol can be unit-tested with fake
sinks and a fake clock, and one incoming message costs one synchronous call.
(Over 500 lines on purpose: every routing decision of one node, read top to
bottom; the state changes only a cluster needs are in rtchub.core.remote.)

Observers (:class:`HubObserver`) hear about joins, leaves and errors; metrics,
webhooks, logs and the cluster broker hang off that, not off the hot path.

The hub owns every change to its sessions and rooms, including the ones a
cluster needs (section "cluster": members on other nodes, sessions handed
to or taken from another node); rtchub.broker decides *when*, the hub does
the change, fires the observers and sends what members must see. Outgoing
messages go through ``self.send``: :meth:`deliver` on one node, a
:class:`~rtchub.core.router.Router` on a cluster node.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any

from orjson import JSONEncodeError

from rtchub import SERVER_NAME, __version__
from rtchub.core.ids import session_id
from rtchub.core.outgoing import Outgoing
from rtchub.core.ratelimit import TokenBucket
from rtchub.core.remote import ClusterState, user_left
from rtchub.core.resume import GONE, NOT_BUFFERED, Identity, ResumeVerdict
from rtchub.core.room import MEDIA_MODES, SFU_MODES, Member, Room
from rtchub.core.route import SFU, RoutePolicy
from rtchub.core.router import Router
from rtchub.core.session import Session, Sink, State
from rtchub.protocol import messages as m
from rtchub.protocol.errors import CloseCode, ErrorCode, ProtocolError
from rtchub.settings import Settings

#: Bytes a relayed body may exceed ``max_message_size`` by: the ``from`` and
#: ``seq`` the server adds, and re-encoding (RFC 8259 escapes, number forms).
RELAY_ENVELOPE = 1024
#: Bytes charged per relayed message on top of its body: the ``seq`` field
#: and the WebSocket frame header (RFC 6455 section 5.2), rounded up.
FRAME_OVERHEAD = 32


class HubObserver:
    """Hooks for everything that watches the hub. Override what you need."""

    def session_opened(self, session: Session) -> None: ...

    def session_ended(self, session: Session, reason: str) -> None: ...

    def session_detached(self, session: Session, reason: str) -> None: ...

    def session_resumed(self, session: Session, replayed: int) -> None: ...

    def room_created(self, room: Room) -> None: ...

    def room_closed(self, room: Room) -> None: ...

    def member_joined(self, room: Room, member: Member, rejoined: bool) -> None: ...

    def member_left(self, room: Room, member: Member, reason: str) -> None: ...

    def message_received(self, session: Session, mtype: str) -> None: ...

    def error_sent(self, session: Session, code: str) -> None: ...


#: ``gate(session, request, complete)``: decide (possibly asynchronously) whether
#: a join may proceed - room grants, the join webhook, cluster-wide claims - and
#: call ``complete(allowed, extra)`` once: ``extra`` is a dict of overrides
#: (``displayName``) when allowed, or a ProtocolError to send when refused.
#: Gates run in the order of ``Hub.join_gates``; each one runs after the
#: previous allowed the join.
JoinGate = Callable[[Session, "JoinRequest", Callable[..., None]], None]


#: Handler of one client message type: ``handler(session, msg, msg_id)``. It
#: raises ProtocolError for a bad message; anything it starts asynchronously
#: answers later through :meth:`Hub.send` / :meth:`Hub.error` / :meth:`Hub.accept`.
Handler = Callable[[Session, dict[str, Any], Any], None]


class JoinRequest:
    __slots__ = ("room_id", "user_id", "display_name", "msg_id", "media")

    def __init__(self, room_id: str, user_id: str, display_name: str | None, msg_id: Any,
                 media: str | None = None) -> None:
        self.room_id = room_id
        self.user_id = user_id
        self.display_name = display_name
        self.msg_id = msg_id
        #: The media mode the join asks for (``media`` field), or one a gate decided.
        self.media = media


class Hub(ClusterState):
    def __init__(
        self,
        settings: Settings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        node_id: str = "",
    ) -> None:
        self.settings = settings or Settings()
        self.clock = clock
        self.node_id = node_id or secrets.token_hex(4)
        self.sessions: dict[str, Session] = {}
        self.rooms: dict[str, Room] = {}
        #: Read-only outside the hub: :meth:`add_observer` / :meth:`remove_observer`
        #: change it, so the per-message hook list below stays in step.
        self.observers: list[HubObserver] = []
        #: ``message_received`` of the observers that override it: the one
        #: observer event fired for every message, so observers that leave it
        #: as the base class's no-op cost nothing on the relay path (8 kinds of
        #: observers exist; most only care about joins and sessions).
        self._received_hooks: tuple[Callable[[Session, str], None], ...] = ()
        #: Asked in order before a join completes; changed only through
        #: :meth:`add_join_gate` / :meth:`remove_join_gate`.
        self.join_gates: list[JoinGate] = []
        #: ``authenticate(session, token) -> None`` raising ProtocolError when
        #: the token is refused; set by the auth layer. ``None`` = open mode.
        self.authenticate: Callable[[Session, str], None] | None = None
        self._handlers: dict[str, Handler] = {
            "offer": self._relay,
            "answer": self._relay,
            "candidate": self._relay,
            "signal": self._relay,
            "message": self._message,
            "join": self._join,
            "leave": self._leave,
            "ping": self._ping,
            "auth": self._auth,
            "resume": self._resume,
        }
        self.welcome_extra: dict[str, Any] = {}
        #: Thresholds of ``auto`` rooms, and the rooms whose move back to p2p is pending.
        self.route_policy = RoutePolicy(self.settings.auto_sfu_from, self.settings.auto_p2p_after)
        self._rerouting: set[str] = set()
        #: ``media_policy(session, request) -> "mesh" | "sfu"``: the media mode of a
        #: room this join creates (may raise ProtocolError). ``None``: the join's
        #: own ``media`` field, else ``--media-mode``. Set by rtchub.sfu.
        self.media_policy: Callable[[Session, JoinRequest], str] | None = None
        #: Member limits of particular rooms (roomId -> limit) instead of
        #: ``max_room_members``: a PeerJS key is one room holding a whole app's peers.
        self.room_caps: dict[str, int] = {}
        #: ``resume_elsewhere(session, old_id, last_seq, msg_id)``: the router's, to
        #: resume a session another node holds (it answers asynchronously).
        #: ``None`` on a single node.
        self.resume_elsewhere: Callable[[Session, str, int, Any], None] | None = None
        #: Where every outgoing message goes: ``send(session, out)``. Without a
        #: router it is :meth:`deliver` itself, stored on the instance so the
        #: single-node hot path costs one bound-method call, as before there
        #: were routers. Changed only by :meth:`use_router`.
        self.send: Callable[[Session, Outgoing], None] = self.deliver
        #: Where transports hand every decoded message: ``receive(session, msg)``.
        #: :meth:`handle` itself, or its timed wrapper once :meth:`time_receive`
        #: hooks metrics in; stored on the instance like ``send`` so the untimed
        #: path costs nothing extra.
        self.receive: Callable[[Session, Any], None] = self.handle
        self.router: Router | None = None
        #: Sessions of other nodes that are members of our rooms ("stubs"): a
        #: room holds one per remote member, with ``node`` set to its node. They
        #: are born ended (the hub never ends them) and observers never see them.
        self.remote: dict[str, Session] = {}
        #: Messages numbered by :meth:`send`, by type: plain ints, so counting costs the
        #: hot path one dict update; rtchub.metrics exports them at scrape time.
        self.sent: dict[str, int] = {}
        s = self.settings
        #: The largest body a client message may become once stamped and
        #: re-encoded as JSON (MessagePack strings can grow 6x when escaped).
        self.max_relayed = s.max_message_size + RELAY_ENVELOPE
        #: A byte bucket always holds at least one largest message.
        self.byte_burst = max(s.max_byte_burst, self.max_relayed + FRAME_OVERHEAD)
        #: Bytes one session's resume buffer may hold now: ``resume_buffer_bytes``,
        #: or a fair share of ``max_buffered_bytes`` while the total is over it
        #: (:meth:`_enforce_total`). Kept in one attribute so :meth:`send` pays nothing.
        self.buffer_cap = s.resume_buffer_bytes
        #: Bytes held by every resume buffer together, as of the last :meth:`tick`.
        self.buffered = 0
        #: Buffer bytes freed since someone last looked (rtchub.memory returns
        #: freed heap to the OS when this grows large).
        self.released = 0

    def use_authenticator(self, authenticate: Callable[[Session, str], None] | None) -> None:
        """Turn auth on: ``authenticate(session, token)`` checks the ``auth`` message's
        token and calls :meth:`set_identity` (rtchub.auth.gate), or raises ProtocolError."""
        self.authenticate = authenticate

    def set_identity(self, session: Session, user_id: str, claims: dict[str, Any],
                     display_name: str | None = None) -> None:
        """A verified token proved ``user_id`` for ``session``: fixed from now on, with
        the token's claims (expiry, rooms); ``display_name`` if the session has none."""
        session.user_id = user_id
        session.user_fixed = True
        if display_name and session.display_name is None:
            session.display_name = display_name
        session.claims = claims

    def use_media_policy(self, policy: Callable[[Session, JoinRequest], str] | None) -> None:
        """Who decides the media mode of a room a join creates (rtchub.sfu)."""
        self.media_policy = policy

    def set_room_media(self, room_id: str, mode: str) -> None:
        """Room ``room_id`` (if here) uses media mode ``mode`` (decided cluster-wide)."""
        room = self.rooms.get(room_id)
        if room is not None and mode in MEDIA_MODES and mode != room.media:
            room.set_media(mode, self.route_policy)

    def set_room_cap(self, room_id: str, cap: int) -> None:
        """At most ``cap`` members in ``room_id`` instead of the settings' limits."""
        self.room_caps[room_id] = cap

    def add_observer(self, observer: HubObserver) -> None:
        """Tell ``observer`` about sessions, rooms, members and messages from now on."""
        self.observers.append(observer)
        self._observers_changed()

    def remove_observer(self, observer: HubObserver) -> None:
        if observer in self.observers:
            self.observers.remove(observer)
            self._observers_changed()

    def add_join_gate(self, gate: JoinGate, *, first: bool = False) -> None:
        """Ask ``gate`` before every join; ``first`` puts it ahead of the others
        (room grants are checked before anything slower, such as a webhook)."""
        if first:
            self.join_gates.insert(0, gate)
        else:
            self.join_gates.append(gate)

    def remove_join_gate(self, gate: JoinGate) -> None:
        if gate in self.join_gates:
            self.join_gates.remove(gate)

    def _observers_changed(self) -> None:
        base = HubObserver.message_received
        self._received_hooks = tuple(
            obs.message_received for obs in self.observers
            if getattr(type(obs), "message_received", None) is not base)

    def use_router(self, router: Router | None) -> None:
        """Send through ``router`` from now on (``None``: back to :meth:`deliver`)."""
        self.router = router
        if router is None:
            self.send = self.deliver
            self.resume_elsewhere = None
        else:
            self.send = router.route
            self.resume_elsewhere = router.resume_elsewhere

    def time_receive(self, observe: Callable[[float], None], types: frozenset[str] | set[str]) -> None:
        """Time :meth:`handle` of messages of ``types`` into ``observe(seconds)`` (metrics).

        Transports call ``hub.receive``; from now on that is a wrapper around
        :meth:`handle`. The cost per message is two ``perf_counter`` calls, and
        nothing at all when metrics are not hooked in.
        """
        handle = self.handle
        perf = time.perf_counter

        def timed(session: Session, msg: Any) -> None:
            t0 = perf()
            handle(session, msg)
            # ``type`` may be any JSON value (a list is unhashable): check it is a str.
            if type(msg) is dict and type(mtype := msg.get("type")) is str and mtype in types:
                observe(perf() - t0)

        self.receive = timed

    def register(self, mtype: str, handler: Handler) -> None:
        """Add a client message type (the SFU's ``publish``, ``subscribe``...).

        The one way other parts extend the protocol: a type can be registered
        once, and the hub's own types cannot be replaced.
        """
        if mtype in self._handlers:
            raise ValueError(f"message type {mtype!r} is already handled")
        self._handlers[mtype] = handler

    @property
    def default_media(self) -> str:
        """The mode of a room nobody chose one for: ``--media-mode``, else mesh
        (rtchub.sfu's media policy makes that ``auto`` when an SFU is configured)."""
        return self.settings.media_mode or "mesh"

    # ------------------------------------------------------------------ sessions
    def open(self, sink: Sink | None, *, user_id: str | None = None,
             display_name: str | None = None, claims: dict[str, Any] | None = None) -> Session:
        """A new transport connection opened: make its session and say ``welcome``."""
        session = self._new_session(session_id(), sink)
        if user_id is not None:
            session.user_id = user_id
            session.user_fixed = True
        session.display_name = display_name
        session.claims = claims
        self.sessions[session.id] = session
        if sink is not None:
            sink.session = session
            sink.deliver(0, Outgoing(self._welcome(session)))
        for obs in self.observers:
            obs.session_opened(session)
        return session

    def _new_session(self, sid: str, sink: Sink | None) -> Session:
        """A session of this node with its rate limits (not yet in ``sessions``)."""
        now = self.clock()
        session = Session(sid, sink, now)
        session.node = self.node_id
        s = self.settings
        if s.rate_limited:
            session.bucket = TokenBucket(s.max_msg_rate, s.max_msg_burst, now)
            if s.max_byte_rate > 0:
                session.byte_bucket = TokenBucket(s.max_byte_rate, self.byte_burst, now)
        if s.max_joins_per_second > 0:
            session.join_bucket = TokenBucket(
                s.max_joins_per_second, max(1.0, s.max_joins_per_second), now
            )
        return session

    def _welcome(self, session: Session) -> dict[str, Any]:
        msg: dict[str, Any] = {
            "type": "welcome",
            "sessionId": session.id,
            "heartbeat": self.settings.heartbeat,
            "server": {"name": SERVER_NAME, "version": __version__, "node": self.node_id},
        }
        if session.user_id is not None:
            msg["userId"] = session.user_id
        msg.update(self.welcome_extra)
        return msg

    def deliver(self, session: Session, out: Outgoing) -> None:
        """Number ``out`` for local ``session``, keep it for resume, and hand it to the sink."""
        # Encode first (cached on ``out``): a message that cannot be encoded
        # raises here, before any seq is taken or anything is buffered.
        body = out.json
        seq = session.seq = session.seq + 1
        sent = self.sent
        mtype = out.type
        sent[mtype] = sent.get(mtype, 0) + 1
        # The buffer keeps the encoded body only (see Session.buffer): the
        # message dict and Outgoing would be tracked by the cyclic GC. With 512
        # messages per session the dicts made full collections take tens of ms
        # (relay-rate p99 13 ms with GC on, 1 ms with it off).
        session.keep(seq, body)
        s = self.settings
        if len(session.buffer) > s.resume_buffer_messages or session.buffer_bytes > self.buffer_cap:
            self._trim(session)
        sink = session.sink
        if sink is not None:
            sink.deliver(seq, out)

    def _trim(self, session: Session) -> None:
        """Drop the oldest buffered messages beyond the count and byte bounds.

        Seqs in the buffer are contiguous, so whether a resume has a gap is
        exactly ``lastSeq + 1 < first buffered seq`` (:meth:`can_replay`);
        dropping messages the client already read costs nothing.
        """
        s = self.settings
        buf = session.buffer
        cap = self.buffer_cap
        while buf and (len(buf) > s.resume_buffer_messages or session.buffer_bytes > cap):
            session.drop_oldest()

    def send_msg(self, session: Session, msg: dict[str, Any]) -> None:
        self.send(session, Outgoing(msg))

    def error(self, session: Session, err: ProtocolError) -> None:
        self.send(session, Outgoing(err.to_message()))
        for obs in self.observers:
            obs.error_sent(session, err.code)

    def detach(self, session: Session, *, clean: bool, reason: str = "disconnected") -> None:
        """The session's transport is gone.

        A clean close (or ``leave``-then-close) ends the session at once. An
        unclean drop keeps it for ``grace_period`` seconds so the client can
        ``resume``; members see nothing until the grace period runs out.
        """
        state = session.state
        if state is State.ENDED:
            return
        if clean or self.settings.grace_period <= 0:
            self.end(session, "left" if clean else reason)
            return
        if state is State.DETACHED:
            return  # already waiting out its grace period
        session.detach(self.clock(), reason)
        for obs in self.observers:
            obs.session_detached(session, reason)

    def end(self, session: Session, reason: str) -> None:
        """End a session for good: leave its rooms, free its buffer."""
        if session.state is State.ENDED:
            return
        sink = session.end()
        for room_id in list(session.rooms):
            room = self.rooms.get(room_id)
            if room is not None:
                self._remove_member(room, session, reason)
        session.rooms.clear()
        session.buffer.clear()
        self.released += session.buffer_bytes
        session.buffer_bytes = 0
        self.sessions.pop(session.id, None)
        if sink is not None and sink.session is session:
            sink.session = None
        for obs in self.observers:
            obs.session_ended(session, reason)

    def tick(self) -> None:
        """Expire sessions whose grace period is over (called about once a second)."""
        now = self.clock()
        limit = now - self.settings.grace_period
        detached = State.DETACHED
        expired = [s for s in self.sessions.values()
                   if s.state is detached and s.detached_at <= limit]  # type: ignore[operator]
        for session in expired:
            self.end(session, session.detach_reason)
        if self._rerouting:
            self._reroute_due()
        self._enforce_total()

    def _enforce_total(self) -> None:
        """Hold every resume buffer together to ``max_buffered_bytes``.

        The policy when the total is over: every session keeps at most an
        equal share (the budget divided by the sessions), the largest
        buffers are trimmed at once, and :meth:`send` trims to that share
        from then on. A session that later resumes from before what its
        share kept gets ``session-expired``, never a silent gap. Once the
        total is back under half the budget, the per-session bound is
        ``resume_buffer_bytes`` again. One pass over the sessions a second,
        sharing the grace-period sweep's.
        """
        s = self.settings
        budget = s.max_buffered_bytes
        sessions = self.sessions
        total = sum(x.buffer_bytes for x in sessions.values())
        if budget <= 0 or not sessions:
            self.buffered = total
            self.buffer_cap = s.resume_buffer_bytes
            return
        if total > budget:
            cap = self.buffer_cap = min(s.resume_buffer_bytes, budget // len(sessions))
            for session in [x for x in sessions.values() if x.buffer_bytes > cap]:
                before = session.buffer_bytes
                self._trim(session)
                self.released += before - session.buffer_bytes
                total -= before - session.buffer_bytes
        elif total <= budget // 2:
            self.buffer_cap = s.resume_buffer_bytes
        self.buffered = total

    def close(self, session: Session, code: int, reason: str) -> None:
        """Close the transport of a session (the session's fate follows from ``detach``)."""
        sink = session.sink
        if sink is not None:
            sink.close(code, reason)

    # ------------------------------------------------------------------- input
    def handle(self, session: Session, msg: Any) -> None:
        """Handle one decoded client message (through ``receive``). Never raises for bad input.

        Every message costs a token first, whatever it is: a ``resume``, an
        unknown type or a malformed object costs the server as much to
        answer as a valid one, so a flood of them ends in 1008 too.
        """
        bucket = session.bucket
        if bucket is not None and not bucket.take(self.clock()):
            self._over_rate(session, m.safe_id(msg))
            return
        session.strikes = 0
        try:
            mtype = m.message_type(msg, self._handlers)
            msg_id = m.message_id(msg)
        except ProtocolError as err:
            self.error(session, err)
            return
        if msg_id is not None and mtype not in ("ping", "resume") and msg_id in session.seen_ids:
            # A resend after resume: accepted before, so acknowledge, never redeliver.
            self.send(session, Outgoing({"type": "ack", "id": msg_id, "duplicate": True}))
            return
        for hook in self._received_hooks:
            hook(session, mtype)
        try:
            self._handlers[mtype](session, msg, msg_id)
        except ProtocolError as err:
            if err.msg_id is None:
                err.msg_id = msg_id
            self.error(session, err)
        except JSONEncodeError:
            # Decodable but not re-encodable: nesting deeper than orjson writes
            # (255) or MessagePack bin/ext values. Nothing was sent (send()
            # encodes first), so this is a plain bad message, not a crash.
            self.error(session, ProtocolError(
                ErrorCode.INVALID_MESSAGE,
                "message cannot be relayed: nested too deeply or not JSON-representable", msg_id))

    def _over_rate(self, session: Session, msg_id: Any) -> None:
        session.strikes += 1
        self.error(session, ProtocolError(ErrorCode.RATE_LIMITED, "too many messages, slow down", msg_id))
        if session.strikes >= self.settings.abuse_strikes:
            self._abuse_close(session)

    def _abuse_close(self, session: Session) -> None:
        """Close with 1008 and end the session now: a flood earns no grace
        period, so an attacker who reconnects in a loop leaves no resume
        buffers behind (each would hold up to ``resume_buffer_bytes``)."""
        self.close(session, CloseCode.POLICY, "rate limit exceeded repeatedly")
        self.end(session, "disconnected")

    def reject(self, session: Session, err: ProtocolError) -> None:
        """A frame that is not a message at all (invalid JSON or MessagePack):
        it costs a token like any message, then the error is sent."""
        bucket = session.bucket
        if bucket is not None and not bucket.take(self.clock()):
            self._over_rate(session, None)
            return
        session.strikes = 0
        self.error(session, err)

    def charge(self, session: Session) -> None:
        """An inbound frame that carries no message (WebSocket ping, pong, a
        fragment of a message): it costs a token, and a flood of them ends in
        1008 as a message flood does. Nothing is answered: an error per
        frame would double the flood."""
        bucket = session.bucket
        if bucket is None or bucket.take(self.clock()):
            return
        session.strikes += 1
        if session.strikes >= self.settings.abuse_strikes:
            self._abuse_close(session)

    def receive_all(self, session: Session, msgs: list[Any]) -> int:
        """:meth:`receive` each of ``msgs`` in order until the session ends (a ``POST
        /send`` body, here or forwarded from another node); how many were taken."""
        accepted = 0
        for msg in msgs:
            if session.ended:
                break
            self.receive(session, msg)
            accepted += 1
        return accepted
    def accept(self, session: Session, msg_id: Any) -> None:
        """Acknowledge a message handled asynchronously (``ack``, and resend dedup)."""
        self._accepted(session, msg_id)

    def _accepted(self, session: Session, msg_id: Any) -> None:
        if msg_id is not None:
            session.remember_id(msg_id)
            self.send(session, Outgoing({"type": "ack", "id": msg_id}))

    def _require_auth(self, session: Session, msg_id: Any) -> None:
        if self.authenticate is not None and session.claims is None:
            raise ProtocolError(ErrorCode.UNAUTHORIZED, "authenticate first", msg_id)

    # --------------------------------------------------------------- handlers
    def _ping(self, session: Session, msg: dict[str, Any], msg_id: Any) -> None:
        pong: dict[str, Any] = {"type": "pong"}
        if "timestamp" in msg:
            pong["timestamp"] = msg["timestamp"]
        if msg_id is not None:
            pong["id"] = msg_id
        self.send(session, Outgoing(pong))

    def _auth(self, session: Session, msg: dict[str, Any], msg_id: Any) -> None:
        token = msg.get("token")
        if type(token) is not str or not token:
            raise ProtocolError(ErrorCode.INVALID_MESSAGE, "token must be a non-empty string", msg_id)
        if self.authenticate is not None:
            self.authenticate(session, token)
        self._accepted(session, msg_id)

    def _join(self, session: Session, msg: dict[str, Any], msg_id: Any) -> None:
        self._require_auth(session, msg_id)
        room_id = m.check_id(msg.get("roomId"), "roomId", msg_id)
        wanted = m.optional_id(msg, "userId", msg_id)
        name = m.display_name(msg, msg_id)
        media = msg.get("media")
        if media is not None and media not in MEDIA_MODES:
            raise ProtocolError(ErrorCode.INVALID_MESSAGE,
                                f"media must be one of {', '.join(MEDIA_MODES)}", msg_id)
        bucket = session.join_bucket
        if bucket is not None and not bucket.take(self.clock()):
            raise ProtocolError(ErrorCode.RATE_LIMITED, "too many join attempts", msg_id)
        if session.user_fixed:
            if wanted is not None and wanted != session.user_id:
                code = ErrorCode.FORBIDDEN if session.claims is not None else ErrorCode.INVALID_MESSAGE
                raise ProtocolError(code, "userId differs from this session's identity", msg_id)
            user_id = session.user_id
            assert user_id is not None
        else:
            user_id = wanted or session.user_id or ("u-" + secrets.token_hex(5))
        if room_id in session.rooms:
            # Joining twice is harmless: answer with the current picture.
            room = self.rooms[room_id]
            self.send_msg(session, room.info(user_id))
            self._accepted(session, msg_id)
            return
        if len(session.rooms) >= self.settings.max_rooms_per_connection:
            raise ProtocolError(
                ErrorCode.FORBIDDEN,
                f"at most {self.settings.max_rooms_per_connection} rooms per connection", msg_id)
        request = JoinRequest(room_id, user_id, name or session.display_name, msg_id, media)
        self._run_gates(session, request, 0)

    def _run_gates(self, session: Session, req: JoinRequest, index: int) -> None:
        gates = self.join_gates
        if index >= len(gates):
            self.complete_join(session, req, True)
            return

        def complete(allowed: bool, extra: Any = None) -> None:
            if not allowed:
                self.complete_join(session, req, False, extra)
                return
            if isinstance(extra, dict) and extra.get("displayName"):
                req.display_name = str(extra["displayName"])[: m.MAX_DISPLAY_NAME]
            self._run_gates(session, req, index + 1)

        try:
            gates[index](session, req, complete)
        except ProtocolError as err:
            self.complete_join(session, req, False, err)

    def complete_join(self, session: Session, req: JoinRequest, allowed: bool,
                      extra: Any = None) -> None:
        """Finish a join once every gate allowed it (``extra``: overrides or an error)."""
        if session.ended:
            return
        try:
            if not allowed:
                if isinstance(extra, ProtocolError):
                    raise extra
                raise ProtocolError(ErrorCode.FORBIDDEN, "join refused", req.msg_id)
            if isinstance(extra, dict) and extra.get("displayName"):
                req.display_name = str(extra["displayName"])[: m.MAX_DISPLAY_NAME]
            self._admit(session, req)
        except ProtocolError as err:
            if err.msg_id is None:
                err.msg_id = req.msg_id
            self.error(session, err)

    def _admit(self, session: Session, req: JoinRequest) -> None:
        room_id, user_id = req.room_id, req.user_id
        room = self.rooms.get(room_id)
        rejoined = False
        if room is not None:
            holder = room.members.get(user_id)
            if holder is not None and holder.session is not session:
                old = holder.session
                if old.sink is not None:
                    raise ProtocolError(ErrorCode.USER_ID_TAKEN,
                                        f"userId {user_id!r} is already in room {room_id!r}", req.msg_id)
                # The holder's transport is gone (grace period): a tutorial-style
                # client rejoining after a reconnect takes the place over.
                del room.members[user_id]
                if self.remote.get(old.id) is old:  # a member on another node
                    self._unlink_remote(old, room_id)
                else:
                    old.rooms.pop(room_id, None)
                    if not old.rooms:
                        self.end(old, "rejoined")
                rejoined = True
            elif room.auto is not None and req.media != "auto" and (
                    room.auto.route == SFU or len(room.members) + 1 >= room.auto.policy.sfu_from):
                raise ProtocolError(ErrorCode.WRONG_MEDIA_MODE,
                                    f"room {room_id!r} is an auto room on the SFU; this client "
                                    "does not follow media-route (join with media 'auto')", req.msg_id)
            elif len(room.members) >= (limit := self.room_cap(room_id, room.media)):
                raise ProtocolError(ErrorCode.ROOM_FULL,
                                    f"{room.media} room {room_id!r} is full ({limit})", req.msg_id)
        else:
            policy = self.media_policy
            room = self.open_room(room_id, policy(session, req) if policy is not None else req.media)
        session.user_id = user_id
        session.user_fixed = True
        if req.display_name:
            session.display_name = req.display_name
        member = Member(user_id, req.display_name or session.display_name or user_id, session,
                        req.media)
        if not rejoined:
            moved = room.reroute(len(room.members) + 1, self.clock())
            if moved is not None:
                self._route_moved(room, moved)
        self.send_msg(session, room.info(user_id))
        joined: dict[str, Any] = {"type": "user-joined", "roomId": room_id, "userId": user_id,
                                  "displayName": member.display_name}
        if rejoined:
            joined["rejoined"] = True
        self._broadcast(room, Outgoing(joined), exclude=None)
        room.members[user_id] = member
        session.rooms[room_id] = None
        if req.msg_id is not None:
            self._accepted(session, req.msg_id)
        for obs in self.observers:
            obs.member_joined(room, member, rejoined)

    def room_limit(self, media: str | None) -> int:
        """Members allowed in a room of this media mode (``None``: the server's
        default): a mesh costs every member one stream per other member, an SFU
        (and an ``auto`` room, which moves to it) or a mix one stream up."""
        s = self.settings
        mode = media or self.default_media
        return s.max_sfu_room_members if mode in SFU_MODES or mode == "audio-mix" else s.max_room_members

    def room_cap(self, room_id: str, media: str | None = None) -> int:
        """How many members ``room_id`` may hold: its own cap (``room_caps``), else the
        limit of its media mode (:meth:`room_limit`)."""
        cap = self.room_caps.get(room_id)
        return cap if cap is not None else self.room_limit(media)

    def _leave(self, session: Session, msg: dict[str, Any], msg_id: Any) -> None:
        room_id = m.check_id(msg.get("roomId"), "roomId", msg_id)
        room = self.rooms.get(room_id) if room_id in session.rooms else None
        if room is None:
            raise ProtocolError(ErrorCode.NOT_IN_ROOM, f"not in room {room_id!r}", msg_id)
        self._remove_member(room, session, "left")
        session.rooms.pop(room_id, None)
        self._accepted(session, msg_id)

    def _remove_member(self, room: Room, session: Session, reason: str) -> None:
        user_id = session.user_id
        member = room.members.get(user_id) if user_id is not None else None
        if member is None or member.session is not session:
            return
        del room.members[user_id]
        if reason != "rejoined":
            self._broadcast(room, user_left(room.id, user_id, reason), exclude=None)
        for obs in self.observers:
            obs.member_left(room, member, reason)
        if not room.members:
            self._close_room(room)
        else:
            self.membership_changed(room)

    # ------------------------------------------------------------ media route
    def _route_moved(self, room: Room, route: str) -> None:
        """An ``auto`` room's media moves (rtchub.core.route): tell its members.

        Members whose client does not follow ``media-route`` (their join did
        not say ``media: "auto"``) get an explicit ``wrong-media-mode`` error
        instead of a silent call when the room moves to the SFU.
        """
        self._rerouting.discard(room.id)
        out = Outgoing({"type": "media-route", "roomId": room.id, "route": route})
        for mb in room.members.values():
            # Each node tells its own members (in a cluster every node decides from
            # the same membership; rtchub.broker.cluster calls membership_changed).
            if mb.session.node == self.node_id:
                self.send(mb.session, out)
        if route != SFU:
            return
        for mb in room.members.values():
            # Only members of this node: a cluster's stubs do not know their client's join.
            if mb.media != "auto" and mb.session.node == self.node_id:
                self.error(mb.session, ProtocolError(
                    ErrorCode.WRONG_MEDIA_MODE,
                    f"room {room.id!r} moved to the SFU; this client does not follow media-route "
                    "(join with media 'auto')"))

    def membership_changed(self, room: Room) -> None:
        """A member of ``room`` left, or (a cluster's remote members) came or went
        elsewhere: an ``auto`` room may move now, or start its delay back to p2p."""
        if room.auto is None or not room.members:
            return
        moved = room.reroute(len(room.members), self.clock())
        if moved is not None:
            self._route_moved(room, moved)
        elif room.auto.deadline() is not None:
            self._rerouting.add(room.id)

    def _reroute_due(self) -> None:
        now = self.clock()
        for room_id in list(self._rerouting):
            room = self.rooms.get(room_id)
            if room is None:
                self._rerouting.discard(room_id)
                continue
            moved = room.route_due(now)
            if moved is not None:
                self._route_moved(room, moved)
            elif room.auto is None or room.auto.deadline() is None:
                self._rerouting.discard(room_id)

    def _room_of(self, session: Session, msg: dict[str, Any], msg_id: Any) -> Room:
        room_id = msg.get("roomId")
        if room_id in session.rooms:
            return self.rooms[room_id]
        m.check_id(room_id, "roomId", msg_id)
        raise ProtocolError(ErrorCode.NOT_IN_ROOM, f"not in room {room_id!r}", msg_id)

    def _target(self, room: Room, msg: dict[str, Any], msg_id: Any) -> Member:
        to = msg.get("to")
        member = room.members.get(to) if type(to) is str else None
        if member is None:
            m.check_id(to, "to", msg_id)
            raise ProtocolError(ErrorCode.PEER_NOT_FOUND,
                                f"{to!r} is not in room {room.id!r}", msg_id)
        return member

    def _relay(self, session: Session, msg: dict[str, Any], msg_id: Any) -> None:
        room = self._room_of(session, msg, msg_id)
        if room.auto is not None and room.auto.route == SFU:
            sender = room.members.get(session.user_id or "")
            if sender is not None and sender.media != "auto":
                raise ProtocolError(ErrorCode.WRONG_MEDIA_MODE,
                                    f"room {room.id!r} is on the SFU now: publish there", msg_id)
        m.relay_payload(msg["type"], msg, msg_id)
        target = self._target(room, msg, msg_id)
        out = Outgoing(self._stamped(session, msg))
        self._spend(session, out, msg_id, room)
        self.send(target.session, out)
        if msg_id is not None:
            self._accepted(session, msg_id)

    def _spend(self, session: Session, out: Outgoing, msg_id: Any, room: Room) -> None:
        """Charge a relayed message to its sender, at its encoded size.

        What a member receives from a room is bounded by what its members
        may send: ``max_byte_rate`` per sender sustained, ``byte_burst`` at
        once, counted as stored and sent (the JSON body), not as received.
        A room allowed more members than ``max_room_members`` (an SFU room,
        a room with its own cap) also has a room-wide bucket, the sum of
        ``max_room_members - 1`` senders', so its members are never sent
        more than those of a full ordinary room. docs/security.md "The
        budget" has the arithmetic that makes this fit every member's
        ``max_pending_bytes``.
        """
        size = len(out.json)  # encodes once; cached for every recipient
        if size > self.max_relayed:
            raise ProtocolError(ErrorCode.INVALID_MESSAGE,
                                f"message too big once encoded ({size} bytes, at most "
                                f"{self.max_relayed})", msg_id)
        bucket = session.byte_bucket
        if bucket is None:
            return
        now = self.clock()
        cost = size + FRAME_OVERHEAD
        shared = room.byte_bucket
        senders = self.settings.max_room_members - 1
        if shared is None and len(room.members) > senders + 1:
            shared = room.byte_bucket = TokenBucket(senders * self.settings.max_byte_rate,
                                                    senders * self.byte_burst, now)
        if shared is not None and not shared.take(now, cost):
            self._over_bytes(session, msg_id)
        if not bucket.take(now, cost):
            if shared is not None:
                shared.tokens += cost  # not sent: the room's bytes are not spent
            self._over_bytes(session, msg_id)

    def _over_bytes(self, session: Session, msg_id: Any) -> None:
        session.strikes += 1
        if session.strikes >= self.settings.abuse_strikes:
            self._abuse_close(session)
        raise ProtocolError(ErrorCode.RATE_LIMITED,
                            f"too many bytes, slow down: {self.settings.max_byte_rate:g} bytes/s",
                            msg_id)

    @staticmethod
    def _stamped(session: Session, msg: dict[str, Any]) -> dict[str, Any]:
        """The message as relayed: ``from`` is the sender's real userId.

        ``id`` is the sender's own ack handle and ``seq`` is stamped per
        recipient; a client-supplied ``seq`` would otherwise shadow it. The
        dict was decoded for this message alone, so it is changed in place
        rather than copied (one allocation less per relayed message).
        """
        msg["from"] = session.user_id
        if "id" in msg:
            del msg["id"]
        if "seq" in msg:
            del msg["seq"]
        return msg

    def _message(self, session: Session, msg: dict[str, Any], msg_id: Any) -> None:
        room = self._room_of(session, msg, msg_id)
        if "data" not in msg and "content" not in msg:
            raise ProtocolError(ErrorCode.INVALID_MESSAGE, "data or content is required", msg_id)
        echo = msg.get("echo")
        if echo is not None and type(echo) is not bool:
            raise ProtocolError(ErrorCode.INVALID_MESSAGE, "echo must be a boolean", msg_id)
        out = Outgoing(self._stamped(session, msg))
        self._spend(session, out, msg_id, room)
        if msg.get("to") is not None:
            self.send(self._target(room, msg, msg_id).session, out)
            if echo:
                self.send(session, out)
        else:
            self._broadcast(room, out, exclude=None if echo else session)
        if msg_id is not None:
            self._accepted(session, msg_id)

    def _broadcast(self, room: Room, out: Outgoing, exclude: Session | None) -> None:
        send = self.send
        for member in room.members.values():
            if member.session is not exclude:
                send(member.session, out)

    def publish(self, room_id: str, msg: dict[str, Any], to: str | None = None) -> int:
        """Server-side push (HTTP API): deliver ``msg`` to a room or one member."""
        room = self.rooms.get(room_id)
        if room is None:
            return 0
        if "seq" in msg:
            # ``seq`` is each recipient's own number (resume, dedup): never the caller's.
            msg = {k: v for k, v in msg.items() if k != "seq"}
        out = Outgoing(msg)
        if to is not None:
            member = room.members.get(to)
            if member is None:
                return 0
            self.send(member.session, out)
            return 1
        self._broadcast(room, out, exclude=None)
        return len(room.members)

    # ------------------------------------------------------------------ resume
    def _resume(self, session: Session, msg: dict[str, Any], msg_id: Any) -> None:
        """The ``resume`` message: this connection takes over session ``sessionId``."""
        old_id = msg.get("sessionId")
        last_seq = msg.get("lastSeq")
        if type(old_id) is not str or type(last_seq) is not int or last_seq < 0:
            raise ProtocolError(ErrorCode.INVALID_MESSAGE,
                                "resume needs sessionId (string) and lastSeq (integer >= 0)", msg_id)
        sink = session.sink
        if sink is None:
            return
        if sink.resume_hint is not None:
            # This transport resumes another way (polling: by polling the old
            # session); a ``resume`` message would move it under the id it keeps using.
            raise ProtocolError(ErrorCode.INVALID_MESSAGE, sink.resume_hint, msg_id)
        if session.rooms:
            raise ProtocolError(ErrorCode.INVALID_MESSAGE,
                                "resume must come before joining rooms", msg_id)
        if old_id == session.id:
            raise ProtocolError(ErrorCode.SESSION_EXPIRED, "session is gone; join again", msg_id)
        identity = Identity.of(session)
        verdict = self.resume_decision(old_id, last_seq, identity)
        if not verdict.held and self.resume_elsewhere is not None \
                and verdict.code == ErrorCode.SESSION_EXPIRED:
            # Another node may hold it: the cluster fetches it, then sends this
            # ``resume`` again, and the verdict is asked again here.
            self.resume_elsewhere(session, old_id, last_seq, msg_id)
            return
        if not verdict.ok:
            raise verdict.error(msg_id)
        # The fresh session only said welcome; it is replaced by the old one.
        self.end(session, "resumed")
        self.resume(verdict, sink, identity, msg_id)

    def resume_decision(self, old_id: str, last_seq: int, identity: Identity | None
                        ) -> ResumeVerdict:
        """May ``old_id`` be resumed from ``last_seq`` by a request that proved ``identity``?

        The one decision for every transport (:mod:`rtchub.core.resume`).
        With auth on: an unauthenticated request is ``unauthorized``; a
        session that never authenticated, or whose userId is not the token's
        ``sub``, is ``forbidden``. Then the session must exist and still hold
        every message after ``last_seq`` (else ``session-expired``, never a
        gap). Pure: nothing changes until :meth:`resume` acts on the verdict.
        """
        auth_on = self.authenticate is not None
        if auth_on and identity is None:
            return ResumeVerdict(None, last_seq, ErrorCode.UNAUTHORIZED,
                                 "authenticate before resuming a session")
        old = self.sessions.get(old_id)
        if old is None or old.state is State.ENDED:
            return ResumeVerdict(None, last_seq, ErrorCode.SESSION_EXPIRED, GONE,
                                 held=old is not None)
        refusal = self.identity_refusal(old, identity)
        if refusal is not None:
            return ResumeVerdict(None, last_seq, ErrorCode.FORBIDDEN, refusal)
        if not self.can_replay(old, last_seq):
            return ResumeVerdict(None, last_seq, ErrorCode.SESSION_EXPIRED, NOT_BUFFERED)
        return ResumeVerdict(old, last_seq)

    def identity_refusal(self, session: Session, identity: Identity | None) -> str | None:
        """Why a request that proved ``identity`` may not act for ``session`` (None: it may).

        Open mode: anyone holding the id may. With auth on: only a request whose
        token's ``sub`` is the userId of a session that authenticated. Used by
        :meth:`resume_decision` and by every HTTP request on a session (``/send``,
        ``/poll``, ``/close``), so both ask the same question.
        """
        if self.authenticate is None:
            return None
        if identity is None:
            return "authenticate first"
        if session.claims is None:
            return "that session never authenticated; it cannot be taken over"
        if session.user_id != identity.user_id:
            return "that session belongs to another user"
        return None

    def resume(self, verdict: ResumeVerdict, sink: Sink, identity: Identity | None,
               msg_id: Any = None) -> int:
        """Act on a favourable verdict: ``sink`` takes the session over and gets the replay.

        The identity is fixed from the token that proved it: its claims are the
        fresh ones (expiry, rooms) from now on, as a fresh ``auth`` would make them.
        """
        session = verdict.session
        assert verdict.ok and session is not None
        if identity is not None:
            session.user_id = identity.user_id
            session.user_fixed = True
            session.claims = identity.claims
        return self.attach(session, sink, verdict.last_seq, msg_id)

    def can_replay(self, session: Session, last_seq: int) -> bool:
        """True when every message after ``last_seq`` is still in the buffer."""
        if last_seq > session.seq:
            return False
        if last_seq == session.seq:
            return True
        return session.first_buffered_seq() <= last_seq + 1

    def attach(self, session: Session, sink: Sink, last_seq: int, msg_id: Any = None) -> int:
        """Move ``sink`` onto ``session`` and replay everything after ``last_seq``.

        Use :meth:`resume` after :meth:`resume_decision` for a resume; this
        is its mechanics, without any check. A transport still attached to the session is closed with
        4009: two readers would each miss what the other took.
        """
        old_sink = session.attach(sink)
        sink.session = session
        if old_sink is not None and old_sink is not sink:
            old_sink.session = None
            old_sink.close(CloseCode.TAKEN_OVER, "session resumed elsewhere")
        replayed = 0
        for seq, body in session.buffered(last_seq):
            sink.deliver(seq, Outgoing.from_json(body))
            replayed += 1
        resumed: dict[str, Any] = {"type": "resumed", "sessionId": session.id,
                                   "lastSeq": last_seq, "replayed": replayed}
        if msg_id is not None:
            resumed["id"] = msg_id
        self.send_msg(session, resumed)
        for obs in self.observers:
            obs.session_resumed(session, replayed)
        return replayed

    # ---------------------------------------------------------------- queries
    def disconnect_user(self, user_id: str, reason: str = "kicked", room_id: str | None = None) -> int:
        """Server-side kick: members see ``user-left`` with ``reason``; the transport closes."""
        victims = [s for s in self.sessions.values() if s.user_id == user_id
                   and (room_id is None or room_id in s.rooms)]
        for session in victims:
            sink = session.sink
            self.end(session, reason)
            if sink is not None:
                sink.close(CloseCode.POLICY if reason != "kicked" else CloseCode.FORBIDDEN, reason)
        return len(victims)

    def shutdown(self) -> None:
        """Close every transport with 1001 (going away) so clients reconnect elsewhere."""
        for session in list(self.sessions.values()):
            sink = session.sink
            if sink is not None:
                sink.close(CloseCode.GOING_AWAY, "server shutting down")

    def open_room(self, room_id: str, media: str | None = None) -> Room:
        """Room ``room_id``, created (and announced to observers) if needed, with media
        mode ``media`` (else ``--media-mode``): a join decides it (Hub.media_policy)."""
        room = self.rooms.get(room_id)
        if room is None:
            room = self.rooms[room_id] = Room(room_id, self.clock(),
                                              media or self.default_media, self.route_policy)
            for obs in self.observers:
                obs.room_created(room)
        return room

    def _close_room(self, room: Room) -> None:
        del self.rooms[room.id]
        self._rerouting.discard(room.id)
        for obs in self.observers:
            obs.room_closed(room)

