"""Server API, metrics, webhooks and the admin dashboard, wired onto one server.

:func:`setup` is the one call ``rtchub.app`` makes: it attaches
``app.metrics`` (``/metrics``), ``app.webhooks`` / ``app.join_hook``, the
``/api`` routes with ``/openapi.json``, and ``/admin``. It must run before the
static route is added, which stays last.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from rtchub.metrics import setup_metrics
from rtchub.webhooks import setup_webhooks

if TYPE_CHECKING:
    from rtchub.app import RtcHub

ADMIN_PAGE = Path(__file__).resolve().parent.parent / "web" / "admin" / "index.html"


def setup(app: RtcHub) -> None:
    """Hook the parts the app built (``app.metrics``, ``app.webhooks``, ``app.join_hook``,
    ``app.api``) into the hub and the router."""
    setup_metrics(app, app.metrics)
    setup_webhooks(app, app.webhooks, app.join_hook)
    app.api.register(app.http.router)

    async def admin(request: web.Request) -> web.StreamResponse:
        resp = web.FileResponse(ADMIN_PAGE)
        resp.headers["Cache-Control"] = "no-cache"
        return resp

    app.http.router.add_get("/admin", admin)
    app.http.router.add_get("/admin/", admin)
