"""Request and response models of the server API.

These classes are the single source of truth: handlers validate requests
with them and serialize responses through them, and ``/openapi.json`` is
generated from their JSON Schemas (:mod:`rtchub.api.openapi`). A field added
here is documented, validated and typed in one place.

Requests are ``strict`` (``"5"`` is not an integer) and ``extra="forbid"`` (a
misspelt field is an error, not silently ignored): a backend talking to this
API wants its mistakes reported.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from rtchub.protocol.messages import ID_RULE

#: roomId / userId as PROTOCOL.md defines them, minus "." and ".." which
#: cannot travel in a URL path (clients collapse them as dot-segments, RFC 3986
#: section 5.2.4).
ID_REGEX = r"^(?!\.\.?$)[A-Za-z0-9_.:@\-]{1,64}$"

Id = Annotated[str, Field(pattern=ID_REGEX, min_length=1, max_length=64,
                          description=ID_RULE, examples=["room-1"])]


class ApiModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid",
                              strict=True, regex_engine="python-re")


# ------------------------------------------------------------------ requests
class PublishRequest(ApiModel):
    """Push a message from the backend to every member of a room, or to one."""

    room_id: Id
    to: Id | None = Field(default=None, description="deliver to this member only")
    type: Literal["message", "signal"] = Field(
        default="message", description="type of the message the clients receive")
    data: Any = Field(description="any JSON value; delivered unchanged as `data`")


class MediaModeRequest(ApiModel):
    """Declare the media mode of a room (before it is in use)."""

    mode: Literal["mesh", "sfu", "auto", "audio-mix"] = Field(
        description="mesh: peer-to-peer; sfu: forwarded by Janus; auto: p2p for two, the SFU from three; "
                    "audio-mix: mixed by Janus AudioBridge")


class DisconnectRequest(ApiModel):
    """End a user's sessions; their rooms' members get `user-left` with `reason`."""

    user_id: Id
    room_id: Id | None = Field(
        default=None, description="only sessions that are in this room (default: all)")
    reason: str = Field(default="kicked", pattern=r"^[a-z][a-z0-9-]{0,31}$",
                        description="the `reason` of the `user-left` members receive")


class RoomsQuery(BaseModel):
    """Query string of ``GET /api/rooms`` (lax: query values are strings)."""

    model_config = ConfigDict(extra="ignore")

    limit: int = Field(default=1000, ge=1, le=10000, description="at most this many rooms")
    offset: int = Field(default=0, ge=0, le=10**9, description="skip this many rooms")
    members: bool = Field(default=False, description="include each room's member list")


# ----------------------------------------------------------------- responses
class MemberInfo(ApiModel):
    user_id: str
    display_name: str
    session_id: str
    transport: str | None = Field(description="websocket, sse, polling; null while detached")
    connected: bool = Field(description="false while in the reconnect grace period "
                                        "(and for members on other nodes, see `local`)")
    node: str | None = Field(default=None, description="the node the member is connected to")
    local: bool = Field(default=True, description="false for a member connected to another "
                                                  "node of the cluster (its transport is not known here)")


class RoomSummary(ApiModel):
    room_id: str
    member_count: int = Field(ge=0)
    age_seconds: float = Field(ge=0)
    members: list[MemberInfo] | None = Field(
        default=None, description="present when asked for with ?members=true")


class RoomList(ApiModel):
    rooms: list[RoomSummary]
    total: int = Field(ge=0, description="rooms on this node, before limit/offset")


class RoomInfo(ApiModel):
    room_id: str
    member_count: int = Field(ge=0)
    age_seconds: float = Field(ge=0)
    members: list[MemberInfo]
    media: Literal["mesh", "sfu", "auto", "audio-mix"] | None = Field(
        default=None, description="the room's media mode (null when not known on this node)")
    route: Literal["p2p", "sfu"] | None = Field(
        default=None, description="auto rooms: where media flows now")


class MediaMode(ApiModel):
    room_id: str
    mode: Literal["mesh", "sfu", "auto", "audio-mix"]


class RoomMembers(ApiModel):
    room_id: str
    members: list[MemberInfo]


class PublishResult(ApiModel):
    delivered: int = Field(ge=0, description="sessions the message was handed to")


class DisconnectResult(ApiModel):
    disconnected: int = Field(ge=0, description="sessions ended")


class Stats(ApiModel):
    node: str
    version: str
    uptime_seconds: float = Field(ge=0)
    sessions: int = Field(ge=0, description="sessions, including detached ones")
    sessions_detached: int = Field(ge=0)
    connections: dict[str, int] = Field(description="open transports by transport name")
    rooms: int = Field(ge=0)
    members: int = Field(ge=0)
    messages_received: int = Field(ge=0, description="client messages handled since start")
    messages_sent: int = Field(ge=0, description="messages sent to clients since start")
    errors: int = Field(ge=0, description="error messages sent since start")
    webhook_queue: int = Field(ge=0)
    webhook_failures: int = Field(ge=0)


class ErrorDetail(ApiModel):
    code: Literal["unauthorized", "not-found", "invalid-request", "api-disabled",
                  "method-not-allowed", "room-in-use", "sfu-unavailable",
                  # recordings and broadcasts (rtchub.media.service)
                  "recording-disabled", "broadcast-disabled", "room-not-found", "mesh-room",
                  "already-recording", "not-recording", "recording-busy", "disk-full",
                  "already-broadcasting", "not-broadcasting", "media-server-error", "wrong-media-mode"]
    message: str
    details: list[dict[str, Any]] | None = None


class ErrorBody(ApiModel):
    error: ErrorDetail

