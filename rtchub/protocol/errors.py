"""Error and close codes of PROTOCOL.md.

Error codes travel inside an ``error`` message and leave the connection open;
close codes end the transport. Keeping both in one place means the server,
both SDKs and the docs cannot drift apart.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any


class ErrorCode:
    """The ``code`` values of an ``error`` message (PROTOCOL.md, "Error codes")."""

    INVALID_JSON = "invalid-json"
    INVALID_MESSAGE = "invalid-message"
    UNKNOWN_TYPE = "unknown-type"
    NOT_IN_ROOM = "not-in-room"
    PEER_NOT_FOUND = "peer-not-found"
    ROOM_FULL = "room-full"
    USER_ID_TAKEN = "user-id-taken"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    RATE_LIMITED = "rate-limited"
    SESSION_EXPIRED = "session-expired"
    INTERNAL = "internal"
    # SFU rooms (docs/protocol.md "SFU media"):
    SFU_UNAVAILABLE = "sfu-unavailable"   # no Janus server reachable (retry later)
    BAD_SDP = "bad-sdp"                   # the SDP was refused (by rtchub or by Janus)
    TRACK_NOT_FOUND = "track-not-found"   # no such track in that room
    WRONG_MEDIA_MODE = "wrong-media-mode"  # an SFU message in a mesh room

    ALL = (
        INVALID_JSON, INVALID_MESSAGE, UNKNOWN_TYPE, NOT_IN_ROOM, PEER_NOT_FOUND,
        ROOM_FULL, USER_ID_TAKEN, UNAUTHORIZED, FORBIDDEN, RATE_LIMITED,
        SESSION_EXPIRED, INTERNAL, SFU_UNAVAILABLE, BAD_SDP, TRACK_NOT_FOUND, WRONG_MEDIA_MODE,
    )


class CloseCode(IntEnum):
    """WebSocket close codes: RFC 6455 section 7.4.1 plus the 4xxx private range."""

    NORMAL = 1000
    GOING_AWAY = 1001          # graceful shutdown: reconnect, maybe to another node
    POLICY = 1008              # origin rejected, repeated abuse, slow reader
    TOO_BIG = 1009             # a message above max_message_size
    INTERNAL = 1011
    UNAUTHORIZED = 4001
    FORBIDDEN = 4003
    HEARTBEAT_TIMEOUT = 4008
    TAKEN_OVER = 4009          # the session was resumed on another transport


class ProtocolError(Exception):
    """A bad client message: answered with an ``error``, connection stays open."""

    def __init__(self, code: str, message: str, msg_id: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.msg_id = msg_id

    def to_message(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "error", "code": self.code, "message": self.message}
        if self.msg_id is not None:
            out["id"] = self.msg_id
        return out
