"""The I/O-free core: sessions, rooms, routing, seq/resume buffers and limits.

Nothing here touches a socket or awaits the network. Transports feed decoded
messages in (:meth:`Hub.receive`) and receive deliveries through the
:class:`~rtchub.core.session.Sink` they attached to a session.
"""

from rtchub.core.hub import Hub
from rtchub.core.outgoing import Outgoing
from rtchub.core.resume import Identity, ResumeVerdict
from rtchub.core.session import Session, Sink, State

__all__ = ["Hub", "Identity", "Outgoing", "ResumeVerdict", "Session", "Sink", "State"]
