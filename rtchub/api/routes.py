"""The server API handlers (``/api/...``), ``/openapi.json`` and ``/admin``.

Access: every ``/api`` call needs ``X-API-Key`` equal to ``--api-key``
(compared in constant time). With no key configured the API does not exist:
every ``/api`` path answers 404, so a forgotten flag never leaves an open
door. ``/openapi.json`` and the ``/admin`` page itself are public; they hold
no data, and the page asks for the key before it can show anything.
"""

from __future__ import annotations

import hmac
import inspect
import itertools
import re
import time
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from rtchub import __version__
from rtchub.api.media import media_operations
from rtchub.api.models import (
    ID_REGEX,
    DisconnectRequest,
    DisconnectResult,
    ErrorBody,
    ErrorDetail,
    MediaMode,
    MediaModeRequest,
    MemberInfo,
    PublishRequest,
    PublishResult,
    RoomInfo,
    RoomList,
    RoomMembers,
    RoomsQuery,
    RoomSummary,
    Stats,
)
from rtchub.api.openapi import Operation, build_openapi
from rtchub.broker.base import BrokerDown

if TYPE_CHECKING:
    from rtchub.app import RtcHub
    from rtchub.core.room import Member, Room

_valid_id = re.compile(ID_REGEX).match


def _template(path: str) -> re.Pattern[str]:
    """``/api/rooms/{roomId}`` -> a regex matching concrete paths of that route."""
    return re.compile(re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(path)))


def _error(status: int, code: str, message: str, details: list[dict[str, Any]] | None = None
           ) -> web.Response:
    body = ErrorBody(error=ErrorDetail(code=code, message=message, details=details))  # type: ignore[arg-type]
    return web.Response(status=status, body=body.model_dump_json(by_alias=True, exclude_none=True),
                        content_type="application/json")


def _invalid(exc: ValidationError, where: str) -> web.Response:
    details = [{"loc": [where, *e["loc"]], "msg": e["msg"], "type": e["type"]}
               for e in exc.errors(include_url=False, include_context=False, include_input=False)]
    return _error(400, "invalid-request", f"invalid {where}", details)


class ServerApi:
    """Handlers bound to one server; :meth:`register` adds them to its router."""

    def __init__(self, app: RtcHub) -> None:
        self.app = app
        self.hub = app.hub
        self.key = app.settings.api_key.encode("utf-8", "surrogateescape")
        self.ops = [
            Operation("GET", "/api/stats", "getStats", "Server statistics", self.stats,
                      {200: (Stats, "counters and gauges of this node")}),
            Operation("GET", "/api/rooms", "listRooms", "List rooms", self.rooms,
                      {200: (RoomList, "rooms on this node")}, query=RoomsQuery),
            Operation("GET", "/api/rooms/{roomId}", "getRoom", "Room info with its members",
                      self.room, {200: (RoomInfo, "the room")}, path_params=["roomId"]),
            Operation("GET", "/api/rooms/{roomId}/members", "getRoomMembers",
                      "Members of a room with display names", self.members,
                      {200: (RoomMembers, "the room's members")}, path_params=["roomId"]),
            Operation("PUT", "/api/rooms/{roomId}/media", "setRoomMedia",
                      "Set a room's media mode (mesh or sfu)", self.set_media,
                      {200: (MediaMode, "the mode new joins of the room get"),
                       409: (ErrorBody, "`room-in-use`: the room is in use with the other mode; "
                                        "`sfu-unavailable`: this server has no SFU")},
                      path_params=["roomId"], body=MediaModeRequest,
                      description="Outranks the JWT `media` claim and the join's `media` field. "
                                  "A room in use keeps its mode (409 `room-in-use`); `sfu` "
                                  "needs an SFU (409 `sfu-unavailable`)."),
            Operation("POST", "/api/publish", "publish", "Publish a message to a room or one member",
                      self.publish, {200: (PublishResult, "handed to this many sessions")},
                      body=PublishRequest,
                      description="Members receive `{type, roomId, data, server: true}` (no "
                                  "`from`: it comes from the server, not a member). A room "
                                  "nobody is in gets nothing: `delivered: 0`. In a cluster it "
                                  "reaches members on every node."),
            Operation("POST", "/api/disconnect", "disconnectUser", "Disconnect a user",
                      self.disconnect, {200: (DisconnectResult, "sessions ended")},
                      body=DisconnectRequest,
                      description="Ends the user's sessions now (no grace period). Their "
                                  "rooms' members get `user-left` with `reason` (default "
                                  "`kicked`); the transport closes with 4003 for `kicked`, "
                                  "1008 otherwise. In a cluster, on every live node."),
        ]
        self.ops += media_operations(app)
        self.openapi = orjson.dumps(build_openapi(self.ops))

    # ---------------------------------------------------------------- wiring
    def register(self, router: web.UrlDispatcher) -> None:
        for op in self.ops:
            router.add_route(op.method, op.path, self._wrap(op))
        router.add_route("*", "/api", self._unknown)
        router.add_route("*", "/api/{tail:.*}", self._unknown)
        router.add_get("/openapi.json", self._openapi)

    def _check_key(self, request: web.Request) -> web.Response | None:
        if not self.key:
            return _error(404, "api-disabled", "the server API is off (start with --api-key)")
        # aiohttp decodes header bytes that are not UTF-8 as lone surrogates
        # (surrogateescape): encoding them back the same way gives the bytes
        # that were sent, so any header is compared, none raises (a 500 and
        # a traceback per request would be a log flood for anyone).
        given = request.headers.get("X-API-Key", "").encode("utf-8", "surrogateescape")
        if not hmac.compare_digest(given, self.key):
            return _error(401, "unauthorized", "missing or wrong X-API-Key")
        return None

    def _wrap(self, op: Operation) -> Any:
        async def handler(request: web.Request) -> web.Response:
            refused = self._check_key(request)
            if refused is not None:
                return refused
            kwargs: dict[str, Any] = {}
            for name in op.path_params:
                value = request.match_info[name]
                if not _valid_id(value):
                    return _error(400, "invalid-request", f"{name} is not a valid id")
                kwargs[name] = value
            if op.query is not None:
                try:
                    kwargs["query"] = op.query.model_validate(dict(request.query))
                except ValidationError as exc:
                    return _invalid(exc, "query")
            if op.body is not None:
                raw = await request.read()
                try:
                    kwargs["body"] = op.body.model_validate_json(raw)
                except ValidationError as exc:
                    return _invalid(exc, "body")
            result = op.handler(**kwargs)
            if inspect.isawaitable(result):
                result = await result
            if isinstance(result, web.StreamResponse):
                return result  # type: ignore[return-value]
            assert isinstance(result, BaseModel)
            return web.Response(body=result.model_dump_json(by_alias=True),
                                content_type="application/json")

        handler.__name__ = op.op_id
        return handler

    async def _unknown(self, request: web.Request) -> web.Response:
        refused = self._check_key(request)
        if refused is not None:
            return refused
        allowed = sorted({op.method for op in self.ops if _template(op.path).fullmatch(request.path)})
        if allowed:
            # RFC 9110 section 15.5.6: the resource exists, the method does not; say which do.
            allowed += ["HEAD"] if "GET" in allowed else []
            resp = _error(405, "method-not-allowed", f"{request.method} is not allowed here")
            resp.headers["Allow"] = ", ".join(allowed)
            return resp
        return _error(404, "not-found", f"no API at {request.path}")

    async def _openapi(self, request: web.Request) -> web.Response:
        return web.Response(body=self.openapi, content_type="application/json")

    # -------------------------------------------------------------- helpers
    def _member(self, mb: Member) -> MemberInfo:
        s = mb.session
        sink = s.sink
        return MemberInfo(user_id=mb.user_id, display_name=mb.display_name, session_id=s.id,
                          transport=sink.transport_name if sink is not None else None,
                          connected=sink is not None, node=s.node,
                          local=s.node in (None, self.hub.node_id))

    def _age(self, room: Room) -> float:
        return max(0.0, round(self.hub.clock() - room.created_at, 3))

    # ------------------------------------------------------------- handlers
    def stats(self) -> Stats:
        app = self.app
        metrics = app.metrics
        hub = self.hub
        conns = metrics.connections()
        webhooks = app.webhooks
        return Stats(
            node=hub.node_id, version=__version__,
            uptime_seconds=max(0.0, time.time() - metrics.started),
            sessions=len(hub.sessions), sessions_detached=len(hub.sessions) - sum(conns.values()),
            connections=conns, rooms=len(hub.rooms),
            members=sum(len(r.members) for r in hub.rooms.values()),
            messages_received=sum(metrics.received.values()),
            messages_sent=sum(metrics.sent().values()),
            errors=sum(metrics.errors.values()),
            webhook_queue=webhooks.queued(),
            webhook_failures=webhooks.stats["failures"],
        )

    def rooms(self, query: RoomsQuery) -> RoomList:
        hub = self.hub
        page = itertools.islice(hub.rooms.values(), query.offset, query.offset + query.limit)
        out = [RoomSummary(room_id=r.id, member_count=len(r.members), age_seconds=self._age(r),
                           members=[self._member(mb) for mb in r.members.values()]
                           if query.members else None)
               for r in page]
        return RoomList(rooms=out, total=len(hub.rooms))

    async def _remote_members(self, room_id: str) -> list[MemberInfo] | None:
        """A room no member of which is on this node, from the cluster's directory."""
        cluster = self.app.cluster
        if cluster is None or not cluster.ready:
            return None
        try:
            seats = await cluster.broker.directory(room_id)
        except BrokerDown:
            return None
        if not seats:
            return None
        return [MemberInfo(user_id=uid, display_name=str(seat.get("d") or uid),
                           session_id=str(seat.get("s", "")), transport=None,
                           connected=bool(seat.get("c")), node=seat.get("n"),
                           local=seat.get("n") == self.hub.node_id)
                for uid, seat in sorted(seats.items())]

    async def room(self, roomId: str) -> RoomInfo | web.Response:  # noqa: N803 - the path's name
        room = self.hub.rooms.get(roomId)
        if room is None:
            members = await self._remote_members(roomId)
            if members is None:
                return _error(404, "not-found", f"no room {roomId!r}")
            # Its age is known only where it has members.
            return RoomInfo(room_id=roomId, member_count=len(members), age_seconds=0.0, members=members)
        return RoomInfo(room_id=room.id, member_count=len(room.members), age_seconds=self._age(room),
                        members=[self._member(mb) for mb in room.members.values()], media=room.media,
                        route=room.auto.route if room.auto is not None else None)

    def set_media(self, roomId: str, body: MediaModeRequest) -> MediaMode | web.Response:  # noqa: N803
        from rtchub.protocol.errors import ErrorCode, ProtocolError

        try:
            mode = self.app.sfu.declare_mode(roomId, body.mode)
        except ProtocolError as err:
            # 409 both: the request conflicts with the room's or the server's state.
            code = err.code if err.code == ErrorCode.SFU_UNAVAILABLE else "room-in-use"
            return _error(409, code, err.message)
        return MediaMode(room_id=roomId, mode=mode)  # type: ignore[arg-type]

    async def members(self, roomId: str) -> RoomMembers | web.Response:  # noqa: N803
        room = self.hub.rooms.get(roomId)
        if room is None:
            members = await self._remote_members(roomId)
            if members is None:
                return _error(404, "not-found", f"no room {roomId!r}")
            return RoomMembers(room_id=roomId, members=members)
        return RoomMembers(room_id=room.id, members=[self._member(mb) for mb in room.members.values()])

    async def publish(self, body: PublishRequest) -> PublishResult:
        msg = {"type": body.type, "roomId": body.room_id, "data": body.data, "server": True}
        cluster = self.app.cluster
        if cluster is not None:
            return PublishResult(delivered=await cluster.publish(body.room_id, msg, body.to))
        return PublishResult(delivered=self.hub.publish(body.room_id, msg, body.to))

    async def disconnect(self, body: DisconnectRequest) -> DisconnectResult:
        cluster = self.app.cluster
        if cluster is not None:
            n = await cluster.disconnect_user(body.user_id, body.reason, body.room_id)
        else:
            n = self.hub.disconnect_user(body.user_id, body.reason, body.room_id)
        return DisconnectResult(disconnected=n)
