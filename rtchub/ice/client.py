"""Python SDK side of ``GET /ice-servers``."""

from __future__ import annotations

from typing import Any

import aiohttp


def http_base(url: str) -> str:
    """The server's HTTP base: ``ws://h:p/ws`` -> ``http://h:p``; a mount prefix
    stays (``ws://h:p/rtc/ws`` or ``http://h:p/rtc`` -> ``http://h:p/rtc``)."""
    from rtchub.client.transports import base_url

    return base_url(url)


async def fetch_ice_servers(base_url: str, token: str | None = None, user_id: str | None = None,
                            session: aiohttp.ClientSession | None = None,
                            timeout: float = 10.0) -> dict[str, Any]:
    """Fetch ``{"iceServers": [...], "ttl": s}`` from an rtchub server.

    ``base_url`` may be the server's HTTP URL or its WebSocket URL. The token
    goes both as ``?token=`` (what every rtchub endpoint reads) and as a
    Bearer header. Refresh before ``ttl`` runs out: TURN credentials expire.
    Raises :class:`aiohttp.ClientResponseError` on a non-2xx answer.
    """
    params: dict[str, str] = {}
    headers: dict[str, str] = {}
    if token:
        params["token"] = token
        headers["Authorization"] = f"Bearer {token}"
    if user_id:
        params["userId"] = user_id
    own = session is None
    http = session or aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout))
    try:
        async with http.get(http_base(base_url) + "/ice-servers", params=params,
                            headers=headers) as response:
            response.raise_for_status()
            result: dict[str, Any] = await response.json()
            return result
    finally:
        if own:
            await http.close()
