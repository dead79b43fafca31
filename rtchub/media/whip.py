"""WHIP ingest (RFC 9725): OBS, GStreamer or ffmpeg publish into a room's SFU.

``POST /whip/{roomId}`` with an SDP offer (``application/sdp``) and
``Authorization: Bearer <token>`` answers ``201 Created`` with the SDP answer
and a ``Location`` for the session (RFC 9725 section 4.2). ``DELETE`` on that
location ends it (section 4.4); ``PATCH`` with ``application/trickle-ice-sdpfrag``
(RFC 8840) trickles the client's candidates to Janus (section 4.3.1). An ICE
restart through PATCH is not offered: Janus would need a new offer from the
client, which WHIP's PATCH cannot carry. A server that supports trickle ICE
but not ICE restarts must answer such a PATCH with 422 (section 4.3.2), so
that is what it gets.

The stream is not a special case anywhere else: each WHIP session is an
ordinary hub session (with a sink that hands messages back to the HTTP
handler) that joins the room with media mode ``sfu`` and sends the SFU's own
``publish`` message. So the room's members see ``tracks-published`` and a
tile, grants and room limits apply, and ending the session is a plain leave.

Tokens: the JWT must grant the room (``rooms``) and not deny ``canPublish``;
the server API key is accepted too (a backend publishing). Status codes
follow RFC 9725 and RFC 9110: 401 without/with a bad token, 403 when the
token does not grant the room or publishing, 415 for a body that is not
``application/sdp``, 400 for an offer the SFU refuses, 422 for an offer with
a track in a codec the room does not take (VP8 or H.264 video, Opus audio:
:mod:`rtchub.sfu.codecs`; RFC 9725 wants the whole offer refused, not
answered in part), 404 for an unknown session, 503 when there is no SFU.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import time
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from rtchub.auth.gate import bearer_token
from rtchub.core.outgoing import Outgoing
from rtchub.core.session import Session
from rtchub.sfu.codecs import refused

if TYPE_CHECKING:
    from rtchub.app import RtcHub

log = logging.getLogger("rtchub.media")
ANSWER_TIMEOUT = 15.0
#: Hub error codes as HTTP statuses.
STATUS = {"forbidden": 403, "unauthorized": 401, "bad-sdp": 400, "invalid-message": 400,
          "room-full": 503, "sfu-unavailable": 503, "wrong-media-mode": 409, "rate-limited": 429,
          "unsupported-codec": 422}


class WhipSink:
    """The hub's messages for a WHIP session, turned into answers for the HTTP handler."""

    transport_name = "whip"

    def __init__(self) -> None:
        self.session: Session | None = None
        self.waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.closed = False

    def expect(self, key: str) -> asyncio.Future[dict[str, Any]]:
        fut = self.waiting[key] = asyncio.get_running_loop().create_future()
        return fut

    def _resolve(self, key: str, msg: dict[str, Any]) -> None:
        fut = self.waiting.pop(key, None)
        if fut is not None and not fut.done():
            fut.set_result(msg)

    def deliver(self, seq: int, out: Outgoing) -> None:
        msg = out.msg if out.msg is not None else orjson.loads(out.json)
        mtype = msg.get("type")
        if mtype == "room-info":
            self._resolve("join", msg)
        elif mtype == "publish-answer":
            self._resolve("publish", msg)
        elif mtype == "error":
            key = {"j": "join", "p": "publish"}.get(str(msg.get("id", ""))[:1])
            if key is not None:
                self._resolve(key, msg)

    def close(self, code: int, reason: str) -> None:
        self.closed = True
        for fut in self.waiting.values():
            if not fut.done():
                fut.set_result({"type": "error", "code": "closed", "message": reason})


class WhipSession:
    def __init__(self, rid: str, room_id: str, session: Session, sink: WhipSink, token: str) -> None:
        self.id = rid
        self.room_id = room_id
        self.session = session
        self.sink = sink
        self.token = token
        self.started_at = time.time()

    def view(self) -> dict[str, Any]:
        return {"id": self.id, "roomId": self.room_id, "userId": self.session.user_id,
                "startedAt": self.started_at}


def _problem(status: int, text: str, **headers: str) -> web.Response:
    return web.Response(status=status, text=text + "\n", headers=headers)


class WhipEndpoint:
    def __init__(self, app: RtcHub) -> None:
        self.app = app
        self.hub = app.hub
        self.sessions: dict[str, WhipSession] = {}
        self.stats = {"created": 0, "refused": 0, "deleted": 0, "publisher_gone": 0}
        sfu = app.sfu
        if sfu is not None:
            sfu.on_publisher_hangup.append(self._hangup)

    def _hangup(self, session: Session, room_id: str, reason: str) -> None:
        """A dead publisher ends its WHIP session: it leaves the room, nothing stays stuck."""
        ws = next((w for w in self.sessions.values() if w.session is session), None)
        if ws is None:
            return
        del self.sessions[ws.id]
        self.stats["publisher_gone"] += 1
        log.info("WHIP session %s in %s ended: the publisher hung up (%s)", ws.id, room_id, reason)
        self.hub.end(session, "whip-publisher-gone")

    def register(self, router: web.UrlDispatcher) -> None:
        router.add_post("/whip/{roomId}", self.create)
        router.add_route("OPTIONS", "/whip/{roomId}", self.options)
        router.add_delete("/whip/{roomId}/{rid}", self.delete)
        router.add_patch("/whip/{roomId}/{rid}", self.patch)

    async def options(self, request: web.Request) -> web.Response:
        return web.Response(status=204, headers={"Accept-Post": "application/sdp",
                                                 "Allow": "OPTIONS, POST"})

    def _who(self, token: str | None) -> tuple[int, str, dict[str, Any] | None, str]:
        """(status, reason, claims, user id): the bearer token is the API key or a JWT."""
        if not token:
            return 401, "a bearer token is required", None, ""
        key = self.app.settings.api_key
        if key and hmac.compare_digest(token.encode(), key.encode()):
            return 0, "", None, f"whip-{secrets.token_hex(3)}"
        verifier = self.app.gatekeeper.verifier
        if verifier is None:
            return 401, "unknown token (this server takes its API key or, with --auth jwt, a JWT)", None, ""
        from rtchub.auth.tokens import TokenError

        try:
            claims = verifier.verify(token)
        except TokenError as exc:
            return 401, str(exc), None, ""
        if claims.get("canPublish", True) is not True:
            return 403, "the token does not grant canPublish", None, ""
        return 0, "", claims, str(claims["sub"])

    async def create(self, request: web.Request) -> web.Response:
        room_id = request.match_info["roomId"]
        token = bearer_token(request.headers.get("Authorization"))
        status, reason, claims, user = self._who(token)
        if status:
            return _problem(status, reason, **({"WWW-Authenticate": "Bearer"} if status == 401 else {}))
        if request.content_type != "application/sdp":
            return _problem(415, "the offer must be application/sdp", **{"Accept-Post": "application/sdp"})
        sfu = self.app.sfu
        if sfu is None or not sfu.enabled:
            return _problem(503, "this server has no SFU (start it with --sfu local or --sfu-url)")
        offer = (await request.read()).decode(errors="replace")
        if not offer.startswith("v=0"):
            return _problem(400, "the body is not an SDP offer")
        sink = WhipSink()
        session = self.hub.open(sink, user_id=user, display_name=(claims or {}).get("name") or "WHIP",
                                claims=claims)
        try:
            joined = sink.expect("join")
            self.hub.receive(session, {"type": "join", "roomId": room_id, "media": "sfu", "id": "j1"})
            msg = await asyncio.wait_for(joined, ANSWER_TIMEOUT)
            if msg["type"] == "error":
                raise _Refused(msg)
            answered = sink.expect("publish")
            self.hub.receive(session, {"type": "publish", "roomId": room_id, "sdp": offer, "id": "p1",
                                       "sources": {}})
            msg = await asyncio.wait_for(answered, ANSWER_TIMEOUT)
            if msg["type"] == "error":
                raise _Refused(msg)
            why = refused(offer, {t["mid"] for t in msg.get("tracks", [])})
            if why:
                raise _Refused({"code": "unsupported-codec",
                                "message": "the SFU cannot take " + "; ".join(why)})
        except _Refused as exc:
            self.stats["refused"] += 1
            self.hub.end(session, "whip-refused")
            code = exc.msg.get("code", "")
            return _problem(STATUS.get(code, 400), f"{code}: {exc.msg.get('message', '')}")
        except TimeoutError:
            self.hub.end(session, "whip-timeout")
            return _problem(504, "the SFU did not answer in time")
        rid = secrets.token_urlsafe(12)
        self.stats["created"] += 1
        self.sessions[rid] = WhipSession(rid, room_id, session, sink, token or "")
        location = f"/whip/{room_id}/{rid}"
        return web.Response(status=201, body=msg["sdp"].encode(), content_type="application/sdp",
                            headers={"Location": location, "ETag": f'"{rid}"'})

    def _resource(self, request: web.Request) -> WhipSession | web.Response:
        ws = self.sessions.get(request.match_info["rid"])
        if ws is None or ws.room_id != request.match_info["roomId"]:
            return _problem(404, "no such WHIP session")
        token = bearer_token(request.headers.get("Authorization")) or ""
        if not hmac.compare_digest(token.encode(), ws.token.encode()):
            return _problem(401, "use the token the session was made with",
                            **{"WWW-Authenticate": "Bearer"})
        return ws

    async def delete(self, request: web.Request) -> web.Response:
        ws = self._resource(request)
        if isinstance(ws, web.Response):
            return ws
        del self.sessions[ws.id]
        self.stats["deleted"] += 1
        self.hub.end(ws.session, "whip-deleted")
        return web.Response(status=200)

    async def patch(self, request: web.Request) -> web.Response:
        ws = self._resource(request)
        if isinstance(ws, web.Response):
            return ws
        if request.content_type != "application/trickle-ice-sdpfrag":
            return _problem(415, "PATCH takes application/trickle-ice-sdpfrag (RFC 8840)")
        frag = (await request.read()).decode(errors="replace")
        if request.headers.get("If-Match") == "*":
            return _problem(422, "ICE restart is not offered: publish again with a new POST")
        mid: str | None = None
        for line in frag.splitlines():
            line = line.strip()
            if line.startswith("m="):
                mid = None
            elif line.startswith("a=mid:"):
                mid = line[6:]
            elif line.startswith("a=candidate:"):
                cand: dict[str, Any] = {"candidate": line[2:]}
                if mid is not None:
                    cand["sdpMid"] = mid
                self.hub.receive(ws.session, {"type": "media-candidate", "roomId": ws.room_id,
                                              "pc": "publish", "candidate": cand})
            elif line == "a=end-of-candidates":
                self.hub.receive(ws.session, {"type": "media-candidate", "roomId": ws.room_id,
                                              "pc": "publish", "candidate": None})
        return web.Response(status=204)

    async def stop(self) -> None:
        for ws in list(self.sessions.values()):
            self.hub.end(ws.session, "shutdown")
        self.sessions.clear()

    async def start(self) -> None:
        return None


class _Refused(Exception):
    def __init__(self, msg: dict[str, Any]) -> None:
        super().__init__(msg.get("code"))
        self.msg = msg
