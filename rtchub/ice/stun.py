"""Built-in STUN Binding server (RFC 8489) on UDP, IPv4 and IPv6.

What it is for: a browser behind a NAT asks "which address do you see me
as?" and puts the answer into its ICE candidates as a server-reflexive
(``srflx``) candidate. That is all a STUN server does; it relays nothing
(that is TURN, see docs/ice.md).

Message encoding and attribute parsing come from :mod:`aioice.stun` (the ICE
library aiortc uses). aioice does not, by itself, check the magic cookie,
detect attributes that run past the end of a message, or answer 420 to
unknown comprehension-required attributes; those checks are what
:func:`handle_datagram` adds, following RFC 8489 section 6.3 ("Receiving a
STUN Message").

Rules, in order (each with its RFC reason):

* Datagrams that cannot be STUN (shorter than the 20-byte header, top two
  bits not zero, length not a multiple of 4 or not matching the datagram)
  are silently discarded (RFC 8489 section 6.3). So are indications and
  responses: a Binding server only answers requests, and a Binding
  indication is a keep-alive that needs no answer.
* A FINGERPRINT that does not match means the datagram is not STUN after
  all (section 7 / 14.7): discarded silently.
* No magic cookie: an RFC 3489 ("classic STUN") client. Section 11 asks the
  server to answer it with MAPPED-ADDRESS (not XOR-MAPPED-ADDRESS) and to
  echo the 32 bits where the cookie would be, since for such a client they
  are part of the 128-bit transaction ID.
* Attributes that overrun the message, or known attributes whose value
  does not decode, get 400 Bad Request (section 14.8).
* Comprehension-required attributes (type < 0x8000) the server does not
  understand get 420 with UNKNOWN-ATTRIBUTES listing them (section 6.3.1).
* CHANGE-REQUEST (RFC 5780 section 7.2) with no flag set asks for nothing and
  is answered normally; classic clients (Debian's ``stun``) always send it.
  With a flag set the server would have to answer from another address,
  which it does not have: RFC 5780 section 6.1 requires a 420 then.
* A request of any other method than Binding gets 400: this is not a TURN
  server, and saying so fast beats letting the client time out.
* Everything else: success with XOR-MAPPED-ADDRESS, SOFTWARE and
  FINGERPRINT (sections 14.2, 14.14, 14.7).

Against reflection (a spoofed source address turns a STUN server into an
amplifier aimed at the victim, RFC 8489 section 16.1.4 on DoS):

* no error response is ever bigger than the request it answers: SOFTWARE,
  then the reason phrase, then FINGERPRINT are left out until it fits
  (all three are optional, sections 14.8 and 14.14), and a request too
  small for even that is discarded (counted as ``ignored``, and as
  ``suppressed``);
* each source address may send ``--stun-rate-per-ip`` requests a second
  (twice that at once); the rest are discarded unanswered (``rate_limited``).

Nothing in the datagram path may raise: an exception out of
``datagram_received`` would be logged by asyncio once per datagram, which an
attacker could turn into a log flood. Internal errors are counted instead.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections.abc import Callable
from struct import pack, unpack_from
from typing import Any

from aioice import stun

from rtchub import __version__
from rtchub.core.ratelimit import TokenBucket

log = logging.getLogger("rtchub.stun")

SOFTWARE = f"rtchub {__version__}"
#: Forget sources whose bucket is full once this many are tracked.
PRUNE_AT = 4096

#: RFC 8489 section 14.9; aioice 0.13 has no codec for it (see _register_unknown_attributes).
UNKNOWN_ATTRIBUTES = 0x000A
CHANGE_REQUEST = 0x0003
FINGERPRINT = 0x8028
CHANGE_IP = 0x04
CHANGE_PORT = 0x02

#: Comprehension-required attributes this server understands (reads or may safely
#: ignore): the RFC 8489 registry (section 18.3.1) plus RFC 5780's CHANGE-REQUEST,
#: whose flags are checked separately. Authentication attributes are "understood"
#: in the sense that the server does not authenticate Binding requests (section 9
#: makes that optional) and so answers without them.
UNDERSTOOD = frozenset({
    0x0001,  # MAPPED-ADDRESS
    0x0006,  # USERNAME
    0x0008,  # MESSAGE-INTEGRITY
    0x0009,  # ERROR-CODE
    UNKNOWN_ATTRIBUTES,
    0x0014,  # REALM
    0x0015,  # NONCE
    0x001C,  # MESSAGE-INTEGRITY-SHA256
    0x001D,  # PASSWORD-ALGORITHM
    0x001E,  # USERHASH
    0x0020,  # XOR-MAPPED-ADDRESS
    CHANGE_REQUEST,
})

#: Keys of :attr:`StunServer.stats` (the metrics exporter reads these).
STAT_KEYS = (
    "datagrams",          # every datagram received
    "requests",           # well-formed STUN requests (any outcome below)
    "success",            # Binding success responses sent
    "classic",            # ... of which to RFC 3489 clients (no magic cookie)
    "bad_request",        # 400 error responses sent
    "unknown_attribute",  # 420 error responses sent
    "ignored",            # datagrams silently discarded (not STUN, indications, responses)
    "suppressed",         # ... of which errors that would have been bigger than their request
    "rate_limited",       # datagrams dropped unread: their source was over its rate
    "internal_errors",    # bugs: exceptions caught in the datagram path (should stay 0)
)


def _pack_unknown_attributes(value: list[int]) -> bytes:
    return b"".join(pack("!H", t) for t in value)


def _unpack_unknown_attributes(data: bytes) -> list[int]:
    if len(data) % 2:
        raise ValueError("UNKNOWN-ATTRIBUTES length is odd")
    return [t for (t,) in (unpack_from("!H", data, i) for i in range(0, len(data), 2))]


def _register_unknown_attributes() -> None:
    """Teach aioice's attribute table UNKNOWN-ATTRIBUTES (RFC 8489 section 14.9).

    aioice 0.13 lists no codec for it, so a 420 could not be encoded with
    :class:`aioice.stun.Message`. Adding a row to its table (once, only if
    missing) lets both our server and aioice clients encode and decode it.
    """
    if UNKNOWN_ATTRIBUTES in stun.ATTRIBUTES_BY_TYPE:
        return
    entry = (UNKNOWN_ATTRIBUTES, "UNKNOWN-ATTRIBUTES", _pack_unknown_attributes,
             _unpack_unknown_attributes)
    stun.ATTRIBUTES.append(entry)
    stun.ATTRIBUTES_BY_TYPE[UNKNOWN_ATTRIBUTES] = entry
    stun.ATTRIBUTES_BY_NAME["UNKNOWN-ATTRIBUTES"] = entry


_register_unknown_attributes()


def _client_address(addr: tuple[Any, ...]) -> tuple[str, int]:
    """The (host, port) to report: IPv6 4-tuples shortened, scope and v4-mapping removed."""
    host = str(addr[0]).split("%", 1)[0]
    ip = ipaddress.ip_address(host)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        host = str(ip.ipv4_mapped)
    return host, int(addr[1])


class _Outcome:
    """What :func:`handle_datagram` decided: the reply bytes (or None) and the counter to bump."""

    __slots__ = ("reply", "stat", "classic", "suppressed")

    def __init__(self, reply: bytes | None, stat: str, classic: bool = False,
                 suppressed: bool = False) -> None:
        self.reply = reply
        self.stat = stat
        self.classic = classic
        self.suppressed = suppressed


def _encode(message: stun.Message, cookie: bytes, classic: bool) -> bytes:
    """Serialize with aioice; for classic clients echo their 'cookie' bytes, no FINGERPRINT.

    RFC 3489 has no FINGERPRINT, and since aioice always writes the magic
    cookie, the echoed bytes are patched in after encoding (section 11).
    """
    if classic:
        data = bytes(message)
        return data[:4] + cookie + data[8:]
    message.add_fingerprint()
    return bytes(message)


def _error(code: int, reason: str, transaction_id: bytes, cookie: bytes, classic: bool,
           unknown: list[int] | None = None, most: int = 1 << 16) -> bytes | None:
    """The error response, at most ``most`` bytes (the request's size), or None.

    Optional parts go first: SOFTWARE, then the reason phrase, then
    FINGERPRINT. A server must never answer with more than it was sent,
    else a spoofed source makes it an amplifier.
    """
    for software, phrase, fingerprint in ((True, reason, True), (False, reason, True),
                                          (False, "", True), (False, "", False)):
        attributes: dict[str, Any] = {"ERROR-CODE": (code, phrase)}
        if unknown:
            attributes["UNKNOWN-ATTRIBUTES"] = unknown
        if software:
            attributes["SOFTWARE"] = SOFTWARE
        message = stun.Message(stun.Method.BINDING, stun.Class.ERROR, transaction_id, attributes)
        data = _encode(message, cookie, classic) if classic or fingerprint else bytes(message)
        if len(data) <= most:
            return data
    return None


def _refuse(code: int, reason: str, data: bytes, cookie: bytes, classic: bool,
            unknown: list[int] | None = None) -> _Outcome:
    reply = _error(code, reason, data[8:20], cookie, classic, unknown, most=len(data))
    if reply is None:
        return _Outcome(None, "ignored", classic, suppressed=True)
    return _Outcome(reply, "bad_request" if code == 400 else "unknown_attribute", classic)


def handle_datagram(data: bytes, addr: tuple[Any, ...]) -> _Outcome:
    """Decide the answer to one datagram from ``addr``. Pure: no I/O, may raise only on bugs."""
    if len(data) < stun.HEADER_LENGTH or data[0] & 0xC0:
        return _Outcome(None, "ignored")
    message_type, length, cookie_value = unpack_from("!HHI", data)
    if length % 4 or len(data) != stun.HEADER_LENGTH + length:
        return _Outcome(None, "ignored")
    if message_type & 0x0110 != stun.Class.REQUEST:
        return _Outcome(None, "ignored")  # indications (keep-alives), stray responses
    cookie = data[4:8]
    classic = cookie_value != stun.COOKIE
    transaction_id = data[8:20]

    # Walk the attributes ourselves: aioice's parser silently truncates an
    # attribute that runs past the end, and skips types it does not know.
    unknown: list[int] = []
    change_flags = 0
    pos = stun.HEADER_LENGTH
    while pos < len(data):
        if pos + 4 > len(data):
            return _refuse(400, "Bad Request", data, cookie, classic)
        attr_type, attr_len = unpack_from("!HH", data, pos)
        end = pos + 4 + attr_len
        if end > len(data):
            return _refuse(400, "Bad Request", data, cookie, classic)
        if attr_type == FINGERPRINT:
            # Must be last and must match, else this is not STUN (section 14.7).
            if attr_len != 4 or end + stun.padding_length(attr_len) != len(data):
                return _Outcome(None, "ignored")
            (value,) = unpack_from("!I", data, pos + 4)
            if value != stun.message_fingerprint(data[:pos]):
                return _Outcome(None, "ignored")
        elif attr_type == CHANGE_REQUEST and attr_len == 4:
            (change_flags,) = unpack_from("!I", data, pos + 4)
        elif attr_type < 0x8000 and attr_type not in UNDERSTOOD and attr_type not in unknown:
            unknown.append(attr_type)
        pos = end + stun.padding_length(attr_len)

    method = message_type & 0x3EEF
    if method != stun.Method.BINDING:
        return _refuse(400, "Bad Request: only Binding is served here", data, cookie, classic)
    if change_flags & (CHANGE_IP | CHANGE_PORT):
        # RFC 5780 section 6.1: no alternate address, so CHANGE-REQUEST is "unknown".
        unknown.append(CHANGE_REQUEST)
    if unknown:
        return _refuse(420, "Unknown Attribute", data, cookie, classic, unknown)

    try:
        # Decodes every attribute aioice knows: a known one with a broken value
        # (wrong length, bad address family, invalid UTF-8...) is a 400.
        stun.parse_message(data)
    except Exception:
        return _refuse(400, "Bad Request", data, cookie, classic)

    mapped = _client_address(addr)
    if classic:
        attributes: dict[str, Any] = {"MAPPED-ADDRESS": mapped, "SOFTWARE": SOFTWARE}
    else:
        attributes = {"XOR-MAPPED-ADDRESS": mapped, "SOFTWARE": SOFTWARE}
    response = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE, transaction_id, attributes)
    return _Outcome(_encode(response, cookie, classic), "success", classic)


class _StunProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: StunServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        server = self.server
        stats = server.stats
        stats["datagrams"] += 1
        try:
            if server.rate > 0 and not server.admit(addr[0]):
                stats["rate_limited"] += 1
                return
            outcome = handle_datagram(data, addr)
            if outcome.stat != "ignored":
                stats["requests"] += 1
                if outcome.classic:
                    stats["classic"] += 1
            elif outcome.suppressed:
                stats["suppressed"] += 1
            stats[outcome.stat] += 1
            if outcome.reply is not None and self.transport is not None:
                self.transport.sendto(outcome.reply, addr)
        except Exception:
            stats["internal_errors"] += 1
            if stats["internal_errors"] <= 10:  # enough to debug, never a flood
                log.exception("STUN: failed to handle a %d-byte datagram", len(data))

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a client that went away: nothing to do.
        log.debug("STUN socket error: %s", exc)


def bind_addresses(host: str) -> list[str]:
    """Addresses to listen on for ``host``: both families where that is what it means.

    ``''``/``0.0.0.0``/``::`` mean "everywhere": IPv4 and IPv6 wildcards.
    A loopback host means "this machine only": 127.0.0.1 and ::1, so a
    browser that resolves ``localhost`` to ::1 still gets an answer.
    """
    if host in ("", "0.0.0.0", "::", "*"):
        return ["0.0.0.0", "::"]
    if host == "localhost":
        return ["127.0.0.1", "::1"]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return [host]
    if ip.is_loopback:
        return ["127.0.0.1", "::1"]
    return [host]


class StunServer:
    """The STUN service: ``await start()`` binds, ``await stop()`` closes.

    ``stats`` holds the counters of :data:`STAT_KEYS`; ``addresses`` the
    bound ``(host, port)`` pairs once started.
    """

    def __init__(self, host: str, port: int, rate: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.host = host
        self.port = port
        #: Requests per second per source address (0 = no limit), burst twice that.
        self.rate = rate
        self.clock = clock
        self.buckets: dict[str, TokenBucket] = {}
        self.stats: dict[str, int] = dict.fromkeys(STAT_KEYS, 0)
        self.addresses: list[tuple[str, int]] = []
        self._transports: list[asyncio.DatagramTransport] = []

    @classmethod
    def from_settings(cls, settings: Any) -> StunServer:
        return cls(settings.stun_host or settings.host, settings.stun_port,
                   rate=settings.stun_rate_per_ip)

    def admit(self, host: str) -> bool:
        """One more datagram from ``host`` within its rate?"""
        now = self.clock()
        bucket = self.buckets.get(host)
        if bucket is None:
            if len(self.buckets) >= PRUNE_AT:
                # Full buckets carry no information: forget them.
                for key in [k for k, b in self.buckets.items()
                            if b.tokens + (now - b.stamp) * b.rate >= b.burst]:
                    del self.buckets[key]
            bucket = self.buckets[host] = TokenBucket(self.rate, 2 * self.rate, now)
        return bucket.take(now)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        hosts = bind_addresses(self.host)
        port = self.port
        for index, host in enumerate(hosts):
            try:
                sock = self._socket(host, port)
            except OSError as exc:
                if index == 0:
                    raise
                # The second family is a bonus (a host without IPv6 must still serve IPv4).
                log.warning("STUN: cannot listen on [%s]:%d: %s", host, port, exc)
                continue
            transport, _ = await loop.create_datagram_endpoint(lambda: _StunProtocol(self), sock=sock)
            self._transports.append(transport)
            bound = sock.getsockname()
            self.addresses.append((bound[0], bound[1]))
            port = bound[1]  # port 0 (tests): the second family gets the same port when it can
        log.info("STUN server on %s", ", ".join(f"udp [{h}]:{p}" for h, p in self.addresses))

    @staticmethod
    def _socket(host: str, port: int) -> socket.socket:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, sockaddr = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            if family == socket.AF_INET6:
                # Keep the families apart so '::' and '0.0.0.0' can share the port.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(sockaddr)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return sock

    async def stop(self) -> None:
        for transport in self._transports:
            transport.close()
        self._transports.clear()
        self.addresses.clear()
