"""Per-IP limits that hold before any session exists, and the process's fd budget.

Everything after the handshake is limited per connection, in the core (the
message-rate, byte-rate and join-rate token buckets, the outbound byte cap in
:mod:`rtchub.transports.wsbase`). What a connection cannot limit is the
number of connections itself, so this module counts, per client IP:

- open TCP connections (``max_connections_per_ip``): each costs a file
  descriptor and kernel buffers, and idle WebSockets are cheap to hold open
  for an attacker and for us alike, so the cap is on the count. A connection
  is counted the moment it is accepted, whatever happens to it next (a
  connection waiting for its 429 holds a descriptor just the same);
- new TCP connections per second (``max_handshakes_per_ip``): a TLS or HTTP
  handshake costs CPU before anything is known about the peer;
- new sessions per second (the same rate, a separate bucket): several
  sessions can be opened on one keep-alive connection (polling), and each
  holds a resume buffer.

And for the whole process, the file descriptors (``RLIMIT_NOFILE``): past
``fd_limit - headroom`` open connections, a new one is answered ``503`` at
once and closed, so that the descriptors left over stay free for what keeps
the server reachable and working (the listening sockets, Redis, log files,
the next accept). One IP may hold at most half of that budget, whatever
``max_connections_per_ip`` says, so a single host can never lock everyone
else out.

Slow clients (slowloris) are bounded by time: ``--request-timeout`` for a
request head (the mux) and a request body (``read_body``); a second head
trickled on a keep-alive connection by ``--keepalive-timeout``, as aiohttp
only restarts that clock once a whole head has arrived, so such a
connection costs no more than an idle keep-alive one.

Behind a reverse proxy every client has the proxy's address: list the proxy
in ``--forwarded-allow-ips`` and the limits count the client it names
(:mod:`rtchub.auth.forwarded`, :meth:`rtchub.auth.gate.Gatekeeper.admit_connection`).
"""

from __future__ import annotations

import asyncio
import resource
import time
from collections.abc import Callable

from rtchub.core.ratelimit import TokenBucket
from rtchub.settings import Settings

#: HTTP answer for a connection over the per-IP handshake rate (RFC 6585 section 4).
TOO_MANY_REQUESTS = 429
#: HTTP answer, sent at once, for a connection past the process's fd budget
#: (RFC 9110 section 15.6.4: a temporary overload, with ``Retry-After``).
SERVICE_UNAVAILABLE = 503
#: Prune idle per-IP state once the table is this big.
PRUNE_AT = 4096
#: File descriptors kept free: this share of ``RLIMIT_NOFILE``, at least :data:`MIN_HEADROOM`.
HEADROOM_SHARE = 0.05
MIN_HEADROOM = 32


def fd_limit() -> int:
    """The soft ``RLIMIT_NOFILE`` of this process (a large number when unlimited)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 1 << 20 if soft == resource.RLIM_INFINITY else int(soft)


class Limits:
    """Per-IP connection accounting, shared by every listener of one server."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic,
                 fds: int | None = None) -> None:
        self.settings = settings
        self.clock = clock
        fds = fd_limit() if fds is None else fds
        #: Connections the process may hold before new ones get 503.
        self.max_open = max(1, fds - max(MIN_HEADROOM, int(fds * HEADROOM_SHARE)))
        #: The per-IP cap in force: the setting, and never more than half the fd budget.
        per_ip = settings.max_connections_per_ip
        self.per_ip = min(per_ip, max(1, self.max_open // 2)) if per_ip > 0 else 0
        #: Every transport accepted and not yet seen closing. A transport leaves
        #: when it is found closing: after the mux hands a connection to picows
        #: or aiohttp it no longer hears ``connection_lost``, and wrapping every
        #: protocol would put a call on the hot path. So the sets are pruned
        #: when they reach a cap, O(their size), which only happens near it.
        self.all: set[asyncio.BaseTransport] = set()
        #: IP -> transports seen open (only kept when the per-IP cap is on).
        self.open: dict[str, set[asyncio.BaseTransport]] = {}
        self._prune_all_at = PRUNE_AT
        self.conn_buckets: dict[str, TokenBucket] = {}
        self.session_buckets: dict[str, TokenBucket] = {}
        self.refused: dict[str, int] = {"connections": 0, "handshakes": 0, "sessions": 0,
                                        "overload": 0}

    # ----------------------------------------------------------- connections
    def connections(self, ip: str) -> int:
        """Open connections from ``ip`` (closing ones are forgotten here)."""
        conns = self.open.get(ip)
        if not conns:
            return 0
        _prune_closed(conns)
        if not conns:
            del self.open[ip]
            return 0
        return len(conns)

    def open_connections(self) -> int:
        """Open connections of the whole process (closing ones are forgotten here)."""
        _prune_closed(self.all)
        return len(self.all)

    def admit_fd(self, transport: asyncio.BaseTransport) -> int:
        """Count ``transport`` in the process's fd budget: 0, or 503 when it is spent.

        Called on every accept, before anything else (a trusted proxy's
        connection included): near ``RLIMIT_NOFILE`` the answer is 503 at
        once, so that the descriptors left stay free.
        """
        every = self.all
        if transport in every:
            return 0  # asked again with the request head (a trusted proxy's connection)
        if len(every) >= self.max_open and self.open_connections() >= self.max_open:
            self.refused["overload"] += 1
            return SERVICE_UNAVAILABLE
        every.add(transport)
        if len(every) >= self._prune_all_at:
            # Amortised O(1): the set is swept each time it doubled since the last sweep.
            _prune_closed(every)
            self._prune_all_at = max(PRUNE_AT, 2 * len(every))
        return 0

    def admit_connection(self, transport: asyncio.BaseTransport, ip: str | None = None,
                         count: bool = True) -> int:
        """One more connection from ``ip`` (default: the TCP peer's address).

        Returns 0 to admit, a negative number to drop at once (over the
        per-IP cap: answering would cost what the cap saves), 503 to answer
        at once (the process is near its fd limit: say so, then close), or
        429 to answer once the request head arrived (over the rate: the
        client learns to back off rather than seeing a reset). ``count``:
        keep the connection in ``ip``'s open connections while it lives; it
        is counted before the rate is asked, so a flood of connections is
        counted whatever answer it is waiting for.
        """
        if self.admit_fd(transport):
            return SERVICE_UNAVAILABLE
        if ip is None:
            peer = transport.get_extra_info("peername")
            ip = peer[0] if peer else ""
        cap = self.per_ip
        if cap > 0:
            conns = self.open.get(ip)
            if conns is None:
                conns = self.open[ip] = set()
            elif len(conns) >= cap and transport not in conns:
                _prune_closed(conns)
                if len(conns) >= cap:
                    self.refused["connections"] += 1
                    return -1
            if count:
                conns.add(transport)
        if not self._take(self.conn_buckets, ip, self.settings.max_handshakes_per_ip):
            self.refused["handshakes"] += 1
            return TOO_MANY_REQUESTS
        return 0

    def hold(self, transport: asyncio.BaseTransport, ip: str) -> bool:
        """Count ``transport`` among ``ip``'s open connections, unless that is over the cap.

        For a connection whose client is known only after accept: a WebSocket
        upgraded on a reverse proxy's pooled keep-alive connection.
        """
        cap = self.per_ip
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


def _prune_closed(conns: set[asyncio.BaseTransport]) -> None:
    closed = [t for t in conns if t.is_closing()]
    for t in closed:
        conns.discard(t)


# ------------------------------------------------------------------ the budget
#: Bytes of a ``user-joined`` / ``user-left`` notification, as sent (with seq
#: and frame header), for the longest ids and display names.
NOTICE_BYTES = 300
#: Bytes of the largest answer a client's own message earns (ack, pong,
#: error), as sent.
REPLY_BYTES = 200
#: The slowest link the defaults promise to serve without a 1008 (bytes/s):
#: the "ordinary 2 MB/s link" of issue 13.
REFERENCE_LINK = 2_000_000


def budget(s: Settings) -> dict[str, float]:
    """The worst case one member of one full room can be sent, from the settings.

    Every number here is a bound the server enforces; docs/security.md ("The
    budget") walks through it. ``burst`` must fit in ``max_pending_bytes`` and
    ``sustained`` in the member's link, or an honest member could be closed
    with 1008 for what others were allowed to send.
    """
    from rtchub.core.hub import FRAME_OVERHEAD, RELAY_ENVELOPE

    others = max(0, s.max_room_members - 1)
    byte_burst = max(s.max_byte_burst, s.max_message_size + RELAY_ENVELOPE + FRAME_OVERHEAD)
    join_burst = max(1.0, s.max_joins_per_second)
    unlimited = not s.rate_limited or s.max_byte_rate <= 0
    burst = (others * (byte_burst + join_burst * NOTICE_BYTES)
             + s.max_msg_burst * REPLY_BYTES)
    sustained = (others * (s.max_byte_rate + s.max_joins_per_second * NOTICE_BYTES)
                 + s.max_msg_rate * REPLY_BYTES)
    return {
        "others": others,
        "byte_burst": byte_burst,
        "burst": float("inf") if unlimited else burst,
        "sustained": float("inf") if unlimited else sustained,
        "pending": float(s.max_pending_bytes or float("inf")),
        # Seconds of a full-rate room a dropped member can miss and still resume.
        "resume_window": (s.resume_buffer_bytes / sustained) if sustained and not unlimited
        else float("inf"),
    }


def budget_problems(s: Settings, link: float = REFERENCE_LINK) -> list[str]:
    """Where the settings contradict each other (empty when the budget holds)."""
    b = budget(s)
    problems = []
    if b["burst"] > b["pending"]:
        problems.append(
            f"a full room may send one member {b['burst']:.0f} bytes at once, more than "
            f"--max-pending-bytes {s.max_pending_bytes}: a slow member would be closed with 1008")
    if b["sustained"] > link:
        problems.append(
            f"a full room may send one member {b['sustained']:.0f} bytes/s, more than a "
            f"{link:.0f} bytes/s link carries")
    return problems
