"""``GET /ice-servers``: the RTCIceServer list a client passes to RTCPeerConnection.

Admission goes through the same :class:`~rtchub.auth.gate.Gatekeeper` as
every transport, so the rule that guards sessions (origin, and the token once
auth is on) also guards TURN credentials: handing them to anyone would make
the TURN server an open relay for the credentials' lifetime.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from rtchub.ice.credentials import ice_servers, random_user_id, valid_user_id
from rtchub.protocol.errors import ErrorCode

PATH = "/ice-servers"


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"type": "error", "code": code, "message": message}, status=status)


async def ice_servers_handler(app: Any, request: web.Request) -> web.Response:
    """``app`` is the :class:`rtchub.app.RtcHub` (bound by :func:`register`)."""
    query = dict(request.query)
    verdict = app.admit(request.headers, query, request.remote or "")
    if not verdict.ok:
        code = ErrorCode.FORBIDDEN if verdict.status == 403 else ErrorCode.UNAUTHORIZED
        return _error(verdict.status, code, verdict.reason or code)
    # An authenticated user id always wins: nobody gets credentials in another's name.
    user_id = verdict.user_id or query.get("userId") or random_user_id()
    if not valid_user_id(user_id):
        return _error(400, ErrorCode.INVALID_MESSAGE, "userId: 1-128 of A-Z a-z 0-9 _ . @ + = -")
    body = ice_servers(app.settings, user_id, time.time(), request_host=request.url.host)
    response = web.json_response(body, headers={"Cache-Control": "no-store"})
    origin = request.headers.get("Origin")
    if origin:
        # The gatekeeper accepted this origin above, so its pages may read the answer.
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Vary"] = "Origin"
    return response


def register(app: Any) -> None:
    """Add ``GET /ice-servers`` to an :class:`rtchub.app.RtcHub`'s HTTP router."""
    async def handler(request: web.Request) -> web.Response:
        return await ice_servers_handler(app, request)

    app.http.router.add_get(PATH, handler)
