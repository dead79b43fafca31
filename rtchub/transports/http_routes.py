"""The routes of the HTTP transports, in one place: SSE, long-polling, ``/send``, ``/close``.

A module of its own so that nothing imports in a circle: :mod:`.sse` and
:mod:`.poll` build on :mod:`.http_common`, and this module, which knows all
three, is imported only by the app.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rtchub.transports import http_common, poll, sse
from rtchub.transports.http_common import REGISTRY_KEY, SERVER_KEY, HttpTransports

if TYPE_CHECKING:
    from rtchub.app import RtcHub


def register(app: RtcHub) -> HttpTransports:
    """Add ``/sse``, ``/poll/open``, ``/poll``, ``/send``, ``/close`` and their preflights."""
    registry = HttpTransports(app)
    app.http[SERVER_KEY] = app
    app.http[REGISTRY_KEY] = registry
    app.services.append(registry)
    cluster = getattr(app, "cluster", None)
    if cluster is not None:
        hub = app.hub
        cluster.close_session = lambda session: http_common.close_session(hub, session)
    r = app.http.router
    r.add_get("/sse", sse.handle, allow_head=False)
    r.add_post("/poll/open", poll.open_session)
    r.add_get("/poll", poll.handle, allow_head=False)
    r.add_post("/send", http_common.send)
    r.add_post("/close", http_common.close)
    for path in ("/sse", "/poll/open", "/poll", "/send", "/close"):
        r.add_route("OPTIONS", path, http_common.preflight)
    return registry
