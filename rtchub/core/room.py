"""Rooms and their members."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rtchub.core.ratelimit import TokenBucket
    from rtchub.core.session import Session


class Member:
    __slots__ = ("user_id", "display_name", "session")

    def __init__(self, user_id: str, display_name: str, session: Session) -> None:
        self.user_id = user_id
        self.display_name = display_name
        self.session = session

    def describe(self) -> dict[str, Any]:
        return {"userId": self.user_id, "displayName": self.display_name}


#: How a room's media flows: ``mesh`` (peer-to-peer, relayed offers) or ``sfu``
#: (through Janus: rtchub.sfu). Decided when the room is created (Hub.media_policy).
MEDIA_MODES = ("mesh", "sfu", "audio-mix")


class Room:
    """A named set of members; exists while it has at least one."""

    __slots__ = ("id", "members", "created_at", "media", "byte_bucket")

    def __init__(self, room_id: str, now: float, media: str = "mesh") -> None:
        self.id = room_id
        self.members: dict[str, Member] = {}
        self.created_at = now
        self.media = media
        #: Bytes the whole room may relay, only for rooms larger than
        #: ``max_room_members`` (Hub._spend); None otherwise.
        self.byte_bucket: TokenBucket | None = None

    def info(self, joiner: str) -> dict[str, Any]:
        """``room-info`` for ``joiner``: who is already there, the joiner excluded."""
        others = [mb for uid, mb in self.members.items() if uid != joiner]
        return {
            "type": "room-info",
            "roomId": self.id,
            "users": [mb.user_id for mb in others],
            "members": [mb.describe() for mb in others],
            "media": self.media,
        }
