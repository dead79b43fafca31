"""What both WebSocket paths share: decoding frames into hub calls, liveness.

rtchub accepts WebSocket on two stacks (see docs/architecture.md): picows for
the hot path and aiohttp where picows cannot serve (permessage-deflate, an
upgrade arriving on a reused keep-alive connection). Everything that is not
framing lives here once, so the two stay the same protocol.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from rtchub.core.outgoing import Outgoing
from rtchub.protocol.codec import MSGPACK, decode_json, decode_msgpack, json_frame, msgpack_frame
from rtchub.protocol.errors import CloseCode, ErrorCode, ProtocolError

if TYPE_CHECKING:
    from rtchub.core.hub import Hub
    from rtchub.core.session import Session
    from rtchub.transports.liveness import Liveness

log = logging.getLogger("rtchub.ws")

#: Close codes after which the client is gone for good rather than
#: reconnecting: 1000 and 1001 (a tab closing sends 1001). Any other code, or
#: a dropped TCP connection, keeps the session for the grace period.
CLEAN_CLOSE_CODES = frozenset({1000, 1001})
#: Seconds a slow reader's close frame may wait behind its unsent data before
#: the connection is aborted: a peer that never reads would otherwise keep the
#: socket and up to ``max_pending_bytes`` of buffer forever (TCP zero-window
#: probes never give up on a live peer).
SLOW_READER_ABORT = 5.0
#: Frames one fragmented message may arrive in (RFC 6455 section 5.4 sets no
#: limit). Browsers send a message in one frame; libraries that fragment use
#: frames of KiBs, so a 64 KiB message never needs more than a few.
MAX_FRAGMENTS = 64

ENDPOINT_SLOTS = ("hub", "session", "codec", "last_seen", "ping_sent", "clean", "reason",
                  "closing", "liveness", "peer", "transport_name", "max_pending", "claims",
                  "user_id", "display_name", "frags", "frags_size", "close_code")


class WsEndpoint:
    """One WebSocket connection as the hub sees it: a :class:`~rtchub.core.session.Sink`."""

    # The slots live in the concrete classes: picows' WSListener is a C type,
    # and two bases may not both bring an instance layout.
    __slots__ = ()
    #: A ``resume`` message moves a WebSocket onto the old session (Sink protocol).
    resume_hint: str | None = None

    def __init__(self, hub: Hub, liveness: Liveness, codec: str, peer: str,
                 claims: dict[str, Any] | None = None, user_id: str | None = None,
                 display_name: str | None = None) -> None:
        self.hub = hub
        self.session: Session | None = None
        self.codec = codec
        self.liveness = liveness
        self.last_seen = liveness.now
        self.ping_sent = False
        self.clean = False
        self.reason = "disconnected"
        self.closing = False
        self.peer = peer
        self.transport_name = "websocket"
        self.max_pending = hub.settings.max_pending_bytes
        self.claims = claims
        self.user_id = user_id
        self.display_name = display_name
        self.frags: list[bytes] | None = None
        self.frags_size = 0
        self.close_code: int | None = None

    # -- to implement by each stack -----------------------------------------------
    def _send_frame(self, data: bytes, binary: bool) -> None:
        raise NotImplementedError

    def _pending_bytes(self) -> int:
        raise NotImplementedError

    def _close_transport(self, code: int, reason: str) -> None:
        raise NotImplementedError

    def _abort_transport(self) -> None:
        """Drop the TCP connection now, unsent data included (no-op once closed)."""
        raise NotImplementedError

    def send_ping(self) -> None:
        raise NotImplementedError

    # -- lifecycle ------------------------------------------------------------------
    def opened(self) -> None:
        self.liveness.add(self)
        self.hub.open(self, user_id=self.user_id, display_name=self.display_name,
                      claims=self.claims)

    def closed(self) -> None:
        self.liveness.discard(self)
        session = self.session
        if session is not None:
            self.session = None
            if session.sink is self:
                self.hub.detach(session, clean=self.clean, reason=self.reason)

    def peer_closed(self, code: int | None) -> None:
        """The client sent a close frame (RFC 6455 section 5.5.1)."""
        self.close_code = code
        self.clean = code is None or code in CLEAN_CLOSE_CODES

    # -- input ----------------------------------------------------------------------
    def incoming(self, data: bytes, binary: bool) -> None:
        session = self.session
        if session is None or self.closing:
            return
        if len(data) > self.hub.settings.max_message_size:
            # RFC 6455 section 7.4.1: 1009, the message is too big to process.
            # Checked here too, not only by the frame parser, so that no stack
            # ever hands an oversized message to the hub.
            self.close(CloseCode.TOO_BIG, "message too big")
            return
        try:
            msg = decode_msgpack(data) if self.codec == MSGPACK and binary else decode_json(data)
        except Exception:
            self.hub.reject(session, ProtocolError(
                ErrorCode.INVALID_JSON,
                "frame is not valid MessagePack" if binary and self.codec == MSGPACK
                else "frame is not valid JSON"))
            return
        self.hub.receive(session, msg)

    def control_frame(self) -> None:
        """A ping or pong from the client: it costs a token of the message budget."""
        session = self.session
        if session is not None and not self.closing:
            self.hub.charge(session)

    def fragment(self, data: bytes, fin: bool, binary: bool, first: bool) -> None:
        """Reassemble a fragmented message (RFC 6455 section 5.4) within the size limit.

        Bounded in bytes (``max_message_size``) and in frames
        (:data:`MAX_FRAGMENTS`): empty continuation frames add no bytes, and
        would otherwise grow the list for ever. Every frame but the last
        costs a token of the connection's budget (the last one is charged as
        the message it completes).
        """
        if first:
            self.frags = []
            self.frags_size = 0
        frags = self.frags
        if frags is None:
            self.close(CloseCode.POLICY, "continuation frame without a start")
            return
        frags.append(data)
        self.frags_size += len(data)
        if self.frags_size > self.hub.settings.max_message_size or len(frags) > MAX_FRAGMENTS:
            self.frags = None
            self.close(CloseCode.TOO_BIG, "message too big" if len(frags) <= MAX_FRAGMENTS
                       else "message in too many frames")
            return
        if not fin:
            session = self.session
            if session is not None:
                self.hub.charge(session)
            return
        whole = b"".join(frags)
        self.frags = None
        self.incoming(whole, binary)

    # -- Sink --------------------------------------------------------------------------
    def deliver(self, seq: int, out: Outgoing) -> None:
        if self.closing:
            return
        if self.codec == MSGPACK:
            self._send_frame(msgpack_frame(seq, out.msg), True)
        else:
            self._send_frame(json_frame(seq, out.json), False)
        if self._pending_bytes() > self.max_pending:
            self.deliver_overflowed()

    def deliver_overflowed(self) -> None:
        """A reader that cannot keep up: drop it (its session keeps the
        messages for resume) rather than grow memory without bound."""
        self.reason = "disconnected"
        self.close(CloseCode.POLICY, "too slow: outbound buffer full")
        asyncio.get_running_loop().call_later(SLOW_READER_ABORT, self._abort_transport)

    def close(self, code: int, reason: str) -> None:
        if self.closing:
            return
        self.closing = True
        if code == CloseCode.HEARTBEAT_TIMEOUT:
            self.reason = "timeout"
        self._close_transport(int(code), reason)
