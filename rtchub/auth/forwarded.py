"""The client address of a request: the TCP peer, or what a trusted proxy says it was.

Behind a reverse proxy every TCP connection comes from the proxy, so per-IP
limits would count all clients as one and logs would name the proxy. The
proxy tells the real client in a header: ``X-Forwarded-For`` (the de-facto
standard nginx's ``$proxy_add_x_forwarded_for`` keeps) or ``Forwarded``
(RFC 7239). Anyone can send those headers, so they are believed only when
the TCP peer is one of ``--forwarded-allow-ips`` (uvicorn's and gunicorn's
name for the same option), and only the one header those proxies are known
to maintain (``--forwarded-header``): a proxy appends to the header it is
configured for and passes the other one through untouched, so reading both
would let a client write its own address into the one nobody checks.

Each proxy appends the address it received the request from, so the list
reads left to right from the client to the last proxy, and only its right
end is written by proxies we trust. The client is therefore the right-most
hop that is not itself a trusted proxy (RFC 7239 section 7.4; MDN's
"X-Forwarded-For: selecting an IP address"). Every hop left of it may be
forged by the client and is ignored.

:meth:`ClientAddress.__call__` is the one place that decides: the
gatekeeper asks it for every handshake of every transport (WebSocket on
either stack, SSE, polling, ``/ice-servers``) and the port mux for the
per-IP connection limits, so limits, logs and metrics all see the same
address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
HEADERS = ("x-forwarded-for", "forwarded")


class ClientAddress:
    """Decides a request's client address (see the module docstring)."""

    __slots__ = ("networks", "any_peer", "header")

    def __init__(self, allow: Iterable[str] = (), header: str = "x-forwarded-for") -> None:
        header = header.strip().lower()
        if header not in HEADERS:
            raise ValueError(f"--forwarded-header must be x-forwarded-for or forwarded, not {header!r}")
        self.header = header
        allow = [a.strip() for a in allow if a.strip()]
        self.any_peer = "*" in allow
        try:
            self.networks: tuple[IPNetwork, ...] = tuple(
                ipaddress.ip_network(a, strict=False) for a in allow if a != "*")
        except ValueError as exc:
            raise ValueError(f"--forwarded-allow-ips: {exc}") from exc

    @property
    def enabled(self) -> bool:
        return self.any_peer or bool(self.networks)

    def trusted(self, address: str) -> bool:
        """Is ``address`` one of the proxies whose header we believe?"""
        if not self.networks:
            return self.any_peer
        if self.any_peer:
            return True
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped is not None:  # "::ffff:127.0.0.1" on a dual-stack socket
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.networks)

    def __call__(self, peer: str, headers: Mapping[str, str]) -> str:
        """The client address of a request that arrived from TCP peer ``peer``."""
        if not self.enabled or not self.trusted(peer):
            return peer
        hops = (forwarded_for if self.header == "forwarded" else x_forwarded_for)(
            header_values(headers, self.header))
        client = peer
        for hop in reversed(hops):
            if hop is None:  # "unknown", an obfuscated name, garbage: nothing to go on beyond it
                break
            client = hop
            if not self.trusted(hop):
                break
        return client


def header_values(headers: Mapping[str, str], name: str) -> list[str]:
    """Every field line of ``name``, in order (RFC 9110 section 5.3: they form one list)."""
    getall = getattr(headers, "getall", None)
    if getall is not None:
        return list(getall(name, ()))
    value = headers.get(name)
    return [value] if value is not None else []


def node_address(node: str) -> str | None:
    """The IP in a hop (``192.0.2.1``, ``192.0.2.1:4711``, ``[2001:db8::1]:4711``), else None."""
    node = node.strip()
    if node.startswith("["):
        node = node[1:].partition("]")[0]
    elif node.count(":") == 1:
        node = node.partition(":")[0]
    try:
        return str(ipaddress.ip_address(node))
    except ValueError:
        return None


def x_forwarded_for(values: list[str]) -> list[str | None]:
    """``X-Forwarded-For: client, proxy1, proxy2`` as addresses (None for what is not one)."""
    return [node_address(part) for value in values for part in value.split(",") if part.strip()]


def forwarded_for(values: list[str]) -> list[str | None]:
    """The ``for=`` node of each ``Forwarded`` element (RFC 7239 section 4), in order.

    ``Forwarded: for=192.0.2.60;proto=https, for="[2001:db8:cafe::17]:4711"``.
    Elements are comma-separated, their pairs semicolon-separated, a value a
    token or a quoted-string (RFC 9110 section 5.6.4), so commas and
    semicolons inside quotes do not separate. An element without ``for=``
    names no address: it counts as an unknown hop.
    """
    hops: list[str | None] = []
    for value in values:
        for element in _split(value, ","):
            node: str | None = None
            for pair in _split(element, ";"):
                name, eq, raw = pair.partition("=")
                if eq and name.strip().lower() == "for":
                    node = _unquote(raw.strip())
            hops.append(node_address(node) if node is not None else None)
    return hops


def _split(text: str, sep: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for ch in text:
        if escaped:
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == sep and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return [p for p in (p.strip() for p in parts) if p]


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        out: list[str] = []
        it = iter(value[1:-1])
        for ch in it:
            out.append(next(it, "") if ch == "\\" else ch)
        return "".join(out)
    return value


def from_settings(settings: Any) -> ClientAddress:
    return ClientAddress(settings.forwarded_allow_ips, settings.forwarded_header)
