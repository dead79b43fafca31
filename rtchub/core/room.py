"""Rooms and their members."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rtchub.core.route import SFU, AutoRoute, RoutePolicy

if TYPE_CHECKING:
    from rtchub.core.ratelimit import TokenBucket
    from rtchub.core.session import Session


class Member:
    __slots__ = ("user_id", "display_name", "session", "media")

    def __init__(self, user_id: str, display_name: str, session: Session,
                 media: str | None = None) -> None:
        self.user_id = user_id
        self.display_name = display_name
        self.session = session
        #: The ``media`` its join asked for: ``auto`` means the client follows
        #: ``media-route`` (it can do both p2p and the SFU).
        self.media = media

    def describe(self) -> dict[str, Any]:
        return {"userId": self.user_id, "displayName": self.display_name}


#: How a room's media flows: ``mesh`` (peer-to-peer, relayed offers), ``sfu``
#: (through Janus: rtchub.sfu), ``auto`` (either, by member count:
#: rtchub.core.route) or ``audio-mix`` (mixed by Janus AudioBridge). Decided
#: when the room is created (Hub.media_policy).
MEDIA_MODES = ("mesh", "sfu", "auto", "audio-mix")
#: Modes whose rooms use the SFU (at least some of the time).
SFU_MODES = ("sfu", "auto")


class Room:
    """A named set of members; exists while it has at least one."""

    __slots__ = ("id", "members", "created_at", "media", "auto", "byte_bucket")

    def __init__(self, room_id: str, now: float, media: str = "mesh",
                 policy: RoutePolicy | None = None) -> None:
        self.id = room_id
        self.members: dict[str, Member] = {}
        self.created_at = now
        self.media = media
        #: The route state of an ``auto`` room (None for mesh and sfu rooms).
        self.auto = AutoRoute(policy or RoutePolicy()) if media == "auto" else None
        #: Bytes the whole room may relay, only for rooms larger than
        #: ``max_room_members`` (Hub._spend); None otherwise.
        self.byte_bucket: TokenBucket | None = None

    def set_media(self, media: str, policy: RoutePolicy | None = None) -> None:
        """The room's mode learnt later (a cluster's shared decision)."""
        self.media = media
        self.auto = AutoRoute(policy or RoutePolicy()) if media == "auto" else None

    @property
    def route(self) -> str | None:
        """Where media flows now: ``p2p`` or ``sfu`` (``None`` for a mesh room)."""
        if self.auto is not None:
            return self.auto.route
        return SFU if self.media == "sfu" else None

    def reroute(self, members: int, now: float) -> str | None:
        """An ``auto`` room's member count is about to be ``members``: its new route, if it moves."""
        return self.auto.update(members, now) if self.auto is not None else None

    def route_due(self, now: float) -> str | None:
        """The hub's tick: a pending move back to p2p whose time has come."""
        return self.auto.due(len(self.members), now) if self.auto is not None else None

    def info(self, joiner: str) -> dict[str, Any]:
        """``room-info`` for ``joiner``: who is already there, the joiner excluded."""
        others = [mb for uid, mb in self.members.items() if uid != joiner]
        return {
            "type": "room-info",
            "roomId": self.id,
            "users": [mb.user_id for mb in others],
            "members": [mb.describe() for mb in others],
            "media": self.media,
            **({"route": self.auto.route} if self.auto is not None else {}),
        }
