"""Where the hub hands each outgoing message: a :class:`Router`.

On one node there is no router object at all: ``Hub.send`` *is*
:meth:`Hub.deliver <rtchub.core.hub.Hub.deliver>` (number the message for the
session, keep it for resume, give it to the sink), so the hottest call of the
server pays nothing for the indirection. A cluster node installs its router
with :meth:`Hub.use_router <rtchub.core.hub.Hub.use_router>`: a message for a
member on another node is forwarded to that node (which numbers it), a
message for a local session is delivered by the hub and mirrored to the
broker (rtchub.broker.outbound).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from rtchub.core.outgoing import Outgoing
    from rtchub.core.session import Session


class Router(Protocol):
    def route(self, session: Session, out: Outgoing) -> None:
        """Deliver ``out`` to ``session``, wherever that session lives."""

    def resume_elsewhere(self, session: Session, old_id: str, last_seq: int, msg_id: Any) -> None:
        """A ``resume`` of ``old_id``, a session this node does not hold (answers later)."""
