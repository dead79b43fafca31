"""Per-IP limits that hold before any session exists.

Everything after the handshake is limited per connection, in the core (the
message-rate and join-rate token buckets, the outbound byte cap in
:mod:`rtchub.transports.wsbase`). What a connection cannot limit is the
number of connections itself, so this module counts, per client IP:

- open TCP connections (``max_connections_per_ip``): each costs a file
  descriptor and kernel buffers, and idle WebSockets are cheap to hold open
  for an attacker and for us alike, so the cap is on the count;
- new TCP connections per second (``max_handshakes_per_ip``): a TLS or HTTP
  handshake costs CPU before anything is known about the peer;
- new sessions per second (the same rate, a separate bucket): several
  sessions can be opened on one keep-alive connection (polling), and each
  holds a resume buffer.

Behind a reverse proxy every client has the proxy's address: list the proxy
in ``--forwarded-allow-ips`` and the limits count the client it names
(:mod:`rtchub.auth.forwarded`, :meth:`rtchub.auth.gate.Gatekeeper.admit_connection`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from rtchub.core.ratelimit import TokenBucket
from rtchub.settings import Settings

#: HTTP answer for a connection over the per-IP handshake rate (RFC 6585 section 4).
TOO_MANY_REQUESTS = 429
#: Seconds a connection may take to send its request head before it is dropped
#: (slowloris). picows and aiohttp have their own timeouts once they own it.
HEAD_TIMEOUT = 10.0
#: Prune idle per-IP state once the table is this big.
PRUNE_AT = 4096


class Limits:
    """Per-IP connection accounting, shared by every listener of one server."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        #: IP -> transports seen open. A transport leaves when it is found closing:
        #: after the mux hands a connection to picows or aiohttp it no longer
        #: hears ``connection_lost``, and wrapping every protocol would put a
        #: call on the hot path. Counting is O(open connections of that IP).
        self.open: dict[str, set[asyncio.BaseTransport]] = {}
        self.conn_buckets: dict[str, TokenBucket] = {}
        self.session_buckets: dict[str, TokenBucket] = {}
        self.refused: dict[str, int] = {"connections": 0, "handshakes": 0, "sessions": 0}

    # ----------------------------------------------------------- connections
    def connections(self, ip: str) -> int:
        """Open connections from ``ip`` (closing ones are forgotten here)."""
        conns = self.open.get(ip)
        if not conns:
            return 0
        closed = [t for t in conns if t.is_closing()]
        for t in closed:
            conns.discard(t)
        if not conns:
            del self.open[ip]
            return 0
        return len(conns)

    def admit_connection(self, transport: asyncio.BaseTransport, ip: str | None = None,
                         count: bool = True) -> int:
        """One more connection from ``ip`` (default: the TCP peer's address).

        Returns 0 to admit, a negative number to drop at once (over the
        connection cap: answering would cost what the cap saves), or an HTTP
        status to answer once the request head arrived (over the rate: the
        client learns to back off rather than seeing a reset). ``count``:
        keep the connection in ``ip``'s open connections while it lives.
        """
        if ip is None:
            peer = transport.get_extra_info("peername")
            ip = peer[0] if peer else ""
        s = self.settings
        if s.max_connections_per_ip > 0 and self.connections(ip) >= s.max_connections_per_ip:
            self.refused["connections"] += 1
            return -1
        if not self._take(self.conn_buckets, ip, s.max_handshakes_per_ip):
            self.refused["handshakes"] += 1
            return TOO_MANY_REQUESTS
        if count and s.max_connections_per_ip > 0:
            self.open.setdefault(ip, set()).add(transport)
        return 0

    def hold(self, transport: asyncio.BaseTransport, ip: str) -> bool:
        """Count ``transport`` among ``ip``'s open connections, unless that is over the cap.

        For a connection whose client is known only after accept: a WebSocket
        upgraded on a reverse proxy's pooled keep-alive connection.
        """
        cap = self.settings.max_connections_per_ip
        if cap <= 0 or transport in self.open.get(ip, ()):
            return True
        if self.connections(ip) >= cap:
            self.refused["connections"] += 1
            return False
        self.open.setdefault(ip, set()).add(transport)
        return True

    # --------------------------------------------------------------- sessions
    def admit_session(self, ip: str) -> bool:
        """One more session handshake (WebSocket upgrade, SSE, poll open) from ``ip``?"""
        if self._take(self.session_buckets, ip, self.settings.max_handshakes_per_ip):
            return True
        self.refused["sessions"] += 1
        return False

    def _take(self, buckets: dict[str, TokenBucket], ip: str, rate: float) -> bool:
        if rate <= 0:
            return True
        now = self.clock()
        bucket = buckets.get(ip)
        if bucket is None:
            if len(buckets) >= PRUNE_AT:
                self._prune(buckets, now)
            # Burst = one second's worth: a page that opens a few tabs at once is fine.
            bucket = buckets[ip] = TokenBucket(rate, max(1.0, rate), now)
        return bucket.take(now)

    def _prune(self, buckets: dict[str, TokenBucket], now: float) -> None:
        """Forget buckets that have refilled: they carry no information any more."""
        for ip in [ip for ip, b in buckets.items()
                   if b.tokens + (now - b.stamp) * b.rate >= b.burst]:
            del buckets[ip]
        for ip in [ip for ip in self.open if self.connections(ip) == 0]:
            self.open.pop(ip, None)
