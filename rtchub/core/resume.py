"""Whether a session may be resumed: the one verdict every transport asks for.

A resume hands a session - its rooms, its userId, the messages it missed -
to whoever presents its id. So the id alone must not be enough when auth is
on (PROTOCOL.md "SSE and long-polling": "A session id is never the only
credential"): the request must also prove the session's identity with a
token whose ``sub`` is the session's userId, and a session that never
authenticated cannot be resumed at all under auth (it was only ever a
connection waiting for its ``auth`` message; resuming it into an
authenticated one would let the resumer pick any userId, issue 13).

:meth:`rtchub.core.hub.Hub.resume_decision` gives the verdict, for the
WebSocket ``resume`` message, SSE's ``Last-Event-ID``, a poll of a session
its poller does not hold, and the cluster's take-over alike; the transports
only translate it (an ``error`` message, or an HTTP status).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rtchub.protocol.errors import ErrorCode, ProtocolError

if TYPE_CHECKING:
    from rtchub.core.session import Session


class Identity:
    """Who a request proved to be: the verified token's ``sub`` and its claims."""

    __slots__ = ("user_id", "claims")

    def __init__(self, user_id: str, claims: dict[str, Any]) -> None:
        self.user_id = user_id
        self.claims = claims

    @classmethod
    def of(cls, session: Session) -> Identity | None:
        """The identity a session authenticated with, if it did."""
        if session.claims is None or session.user_id is None:
            return None
        return cls(session.user_id, session.claims)

    def __repr__(self) -> str:
        return f"Identity({self.user_id!r})"


#: ``session-expired`` messages: the session is unknown here or ended / no longer replayable.
GONE = "session is gone; join again"
NOT_BUFFERED = "missed messages are no longer buffered; join again"

#: HTTP status that answers each refusal on the HTTP transports.
HTTP_STATUS = {ErrorCode.SESSION_EXPIRED: 404, ErrorCode.FORBIDDEN: 403,
               ErrorCode.UNAUTHORIZED: 401}


class ResumeVerdict:
    """The answer of :meth:`Hub.resume_decision`: a session to resume, or why not.

    ``held`` is False when no session of that id lives on this node (a
    cluster may then fetch it from another node and ask again).
    """

    __slots__ = ("session", "last_seq", "code", "message", "held")

    def __init__(self, session: Session | None, last_seq: int, code: str | None = None,
                 message: str = "", held: bool = True) -> None:
        self.session = session
        self.last_seq = last_seq
        self.code = code
        self.message = message
        self.held = held

    @property
    def ok(self) -> bool:
        return self.code is None

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.code or "", 400)

    def error(self, msg_id: Any = None) -> ProtocolError:
        assert self.code is not None
        return ProtocolError(self.code, self.message, msg_id)

    def __repr__(self) -> str:
        return f"ResumeVerdict({self.code or 'ok'}, {self.session!r})"
