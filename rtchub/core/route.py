"""Where the media of an ``auto`` room flows: peer-to-peer or through the SFU.

A call between two people is best peer-to-peer (lowest latency, no server
cost); from three on, one upstream per member through the SFU beats a mesh
where every member sends once per other member. An ``auto`` room therefore
moves to the SFU the moment a third member joins (someone is waiting for
video now) and back to peer-to-peer only after it has held at most two
members for ``p2p_after`` seconds: the hysteresis that keeps a member who
flaps between two and three people (a reconnecting phone, a misclick on
"leave") from making the whole call flap with it. Each move costs every
client a new set of connections, so it must be rare.

Pure: no I/O, the caller passes the member count and the time (the hub's
clock), and asks :meth:`AutoRoute.due` on its tick. Unit-tested with a fake
clock (tests/test_route_unit.py).
"""

from __future__ import annotations

from dataclasses import dataclass

P2P = "p2p"
SFU = "sfu"
ROUTES = (P2P, SFU)


@dataclass(frozen=True)
class RoutePolicy:
    """The thresholds of every ``auto`` room of a server (``--auto-sfu-from``, ``--auto-p2p-after``)."""

    #: Members from which the room goes through the SFU.
    sfu_from: int = 3
    #: Seconds a room must stay below ``sfu_from`` before it goes back to peer-to-peer.
    p2p_after: float = 10.0


class AutoRoute:
    """The route of one ``auto`` room and the clock of its pending move back to p2p."""

    __slots__ = ("policy", "route", "below_since")

    def __init__(self, policy: RoutePolicy, route: str = P2P) -> None:
        self.policy = policy
        self.route = route
        #: When the room (on the SFU) last dropped below ``sfu_from`` members; None while it is not.
        self.below_since: float | None = None

    def update(self, members: int, now: float) -> str | None:
        """The member count changed (or time passed): the new route, or ``None`` if it stays."""
        p = self.policy
        if members >= p.sfu_from:
            self.below_since = None
            if self.route != SFU:
                self.route = SFU
                return SFU
            return None
        if self.route == P2P:
            return None
        if self.below_since is None:
            self.below_since = now
        if now - self.below_since >= p.p2p_after:
            self.route = P2P
            self.below_since = None
            return P2P
        return None

    def deadline(self) -> float | None:
        """When a move back to p2p falls due, if one is pending."""
        if self.route == SFU and self.below_since is not None:
            return self.below_since + self.policy.p2p_after
        return None

    def due(self, members: int, now: float) -> str | None:
        """Called on the hub's tick: the move back to p2p, once its time has come."""
        deadline = self.deadline()
        if deadline is None or now < deadline:
            return None
        return self.update(members, now)
