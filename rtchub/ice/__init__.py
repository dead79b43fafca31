"""ICE services: the built-in STUN server, TURN REST credentials, ``GET /ice-servers``.

See docs/ice.md for what each does and how to run coturn next to rtchub.
"""

from __future__ import annotations

from typing import Any

from rtchub.ice.client import fetch_ice_servers
from rtchub.ice.credentials import ice_servers, turn_credentials, turn_password
from rtchub.ice.routes import register
from rtchub.ice.stun import StunServer

__all__ = ["StunServer", "fetch_ice_servers", "ice_servers", "register", "stun_service",
           "turn_credentials", "turn_password"]


def stun_service(settings: Any) -> StunServer | None:
    """The STUN service for ``settings`` (None when ``stun_port`` is 0)."""
    return StunServer.from_settings(settings) if settings.stun_port else None
