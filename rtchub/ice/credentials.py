"""ICE server lists and TURN REST API credentials (pure functions, no I/O).

The TURN REST API scheme (draft-uberti-behave-turn-rest-00, implemented by
coturn's ``use-auth-secret`` / ``static-auth-secret``) lets rtchub hand out
TURN credentials without talking to the TURN server: both share a secret,
and

* username   = ``"<unix expiry>:<userId>"``
* credential = ``base64(HMAC-SHA1(secret, username))``

coturn recomputes the HMAC from the username the client presents, and
refuses it once the expiry has passed. Because coturn accepts several
``static-auth-secret`` lines, secrets can be rotated: configure the new one
in coturn first, then put it first in rtchub's ``--turn-secret`` list (the
first one signs; the others are kept only so that configuration reads the
same on both sides during a rotation).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import re
import secrets
from typing import Any

from rtchub.settings import Settings

#: What a userId may look like inside a TURN username. coturn splits the
#: username at the first ':' (its ``rest-api-separator``) and the rest is free
#: text, but keeping it to printable ASCII avoids surprises in logs and
#: in coturn's own user database lookups.
USER_ID_RE = re.compile(r"^[A-Za-z0-9_.@+=-]{1,128}$")

WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "*"})


def turn_password(secret: str, username: str) -> str:
    """base64(HMAC-SHA1(secret, username)): the password coturn expects for ``username``."""
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def turn_credentials(secret: str, user_id: str, ttl: int, now: float) -> tuple[str, str]:
    """``(username, credential)`` valid until ``now + ttl`` (unix seconds)."""
    username = f"{int(now) + int(ttl)}:{user_id}"
    return username, turn_password(secret, username)


def valid_user_id(user_id: str) -> bool:
    return bool(USER_ID_RE.match(user_id))


def random_user_id() -> str:
    return "anon-" + secrets.token_hex(6)


def url_host(host: str) -> str:
    """A host as it goes into a ``stun:``/``turn:`` URI: IPv6 literals in brackets (RFC 7064)."""
    host = host.strip()
    if host.startswith("["):
        return host
    try:
        if isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address):
            return f"[{host}]"
    except ValueError:
        pass
    return host


def stun_host(settings: Settings, request_host: str | None = None) -> str | None:
    """The host name clients should use for the built-in STUN server.

    ``--public-host`` wins (the server is behind a load balancer or NAT).
    Else the address STUN (or the whole server) is bound to, unless that is
    a wildcard, which no client can send to: then the host name the client
    itself used to reach this HTTP server.
    """
    for candidate in (settings.public_host, settings.stun_host, settings.host):
        if candidate and candidate not in WILDCARD_HOSTS:
            return candidate
    return request_host or None


def ice_servers(settings: Settings, user_id: str, now: float,
                request_host: str | None = None) -> dict[str, Any]:
    """The ``GET /ice-servers`` body (PROTOCOL.md "ICE servers").

    ``{"iceServers": [RTCIceServer...], "ttl": seconds}``: one entry for the
    STUN URLs (built-in first, then ``--stun-url``), one for the TURN URLs
    with fresh credentials when ``--turn-secret`` is set. TURN URLs without a
    secret are left out: a browser rejects a ``turn:`` URL without
    credentials (InvalidAccessError), which would break the whole list.
    """
    servers: list[dict[str, Any]] = []
    stun_urls: list[str] = []
    if settings.stun_port:
        host = stun_host(settings, request_host)
        if host:
            stun_urls.append(f"stun:{url_host(host)}:{settings.stun_port}")
    stun_urls.extend(u for u in settings.stun_url if u not in stun_urls)
    if stun_urls:
        servers.append({"urls": stun_urls})
    if settings.turn_secret and settings.turn_url:
        username, credential = turn_credentials(settings.turn_secret[0], user_id, settings.turn_ttl, now)
        servers.append({"urls": list(settings.turn_url), "username": username, "credential": credential})
    return {"iceServers": servers, "ttl": settings.turn_ttl}
