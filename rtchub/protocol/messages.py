"""Validation of client messages (PROTOCOL.md, "Client -> server").

Validation is deliberately hand-rolled rather than done with a schema library:
it runs once per relayed message on the hot path, and a handful of ``type()``
checks on a dict that orjson already built cost far less than constructing a
model object. Unknown extra fields are ignored, never an error (PROTOCOL.md).
"""

from __future__ import annotations

import re
from collections.abc import Container
from typing import Any

from rtchub.protocol import constants
from rtchub.protocol.errors import ErrorCode, ProtocolError

#: roomId / userId: 1-64 characters that are safe in URLs, log lines, Redis keys
#: and file names. UUIDs, slugs and e-mail-like ids all fit.
ID_PATTERN = re.compile(r"[A-Za-z0-9_.:@\-]{1,64}")
ID_RULE = "1-64 characters of A-Z a-z 0-9 _ . : @ -"
MAX_DISPLAY_NAME = 64
MAX_MSG_ID_LEN = 64
#: Message ids may be numbers; keep them inside the range every JSON parser
#: (JavaScript included) represents exactly.
MAX_SAFE_INT = 2**53 - 1

#: As sets, for the checks of the hot path; the names live in rtchub.protocol.constants.
RELAY_TYPES = frozenset(constants.RELAY_TYPES)
CLIENT_TYPES = frozenset(constants.CLIENT_TYPES)

_match_id = ID_PATTERN.fullmatch


def message_id(msg: dict[str, Any]) -> Any:
    """Return the client's ``id`` if it is usable, else ``None``.

    A malformed id is reported, but the error cannot carry it (it might be a
    10 MB string), so the caller sees ``None``.
    """
    mid = msg.get("id")
    if mid is None:
        return None
    t = type(mid)
    if t is str:
        if 0 < len(mid) <= MAX_MSG_ID_LEN:
            return mid
    elif t is int and -MAX_SAFE_INT <= mid <= MAX_SAFE_INT:
        return mid
    raise ProtocolError(
        ErrorCode.INVALID_MESSAGE,
        f"id must be a string of 1-{MAX_MSG_ID_LEN} characters or a safe integer",
    )


def check_id(value: Any, field: str, msg_id: Any) -> str:
    if type(value) is not str or _match_id(value) is None:
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"{field} must be {ID_RULE}", msg_id)
    return value


def optional_id(msg: dict[str, Any], field: str, msg_id: Any) -> str | None:
    value = msg.get(field)
    if value is None:
        return None
    return check_id(value, field, msg_id)


def display_name(msg: dict[str, Any], msg_id: Any) -> str | None:
    value = msg.get("displayName")
    if value is None:
        return None
    if type(value) is not str or len(value) > MAX_DISPLAY_NAME:
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE,
            f"displayName must be a string of at most {MAX_DISPLAY_NAME} characters",
            msg_id,
        )
    # Control characters in a name end up in other people's DOM and log lines.
    return "".join(ch for ch in value if ch.isprintable()).strip() or None


def message_type(msg: Any, known: Container[str] = CLIENT_TYPES) -> str:
    """The ``type`` of a decoded message, or a ProtocolError explaining why not.

    ``known``: the types the hub handles (CLIENT_TYPES plus registered ones).
    """
    if type(msg) is not dict:
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "a message must be an object")
    mtype = msg.get("type")
    if type(mtype) is not str:
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "type must be a string", _safe_id(msg))
    if mtype not in known:
        raise ProtocolError(
            ErrorCode.UNKNOWN_TYPE, f"unknown message type {mtype[:40]!r}", _safe_id(msg)
        )
    return mtype


def safe_id(msg: Any) -> Any:
    """The usable ``id`` of anything decoded, or ``None`` (never raises)."""
    if type(msg) is not dict:
        return None
    return _safe_id(msg)


def _safe_id(msg: dict[str, Any]) -> Any:
    try:
        return message_id(msg)
    except ProtocolError:
        return None


def relay_payload(mtype: str, msg: dict[str, Any], msg_id: Any) -> None:
    """Check the payload field a relay message must carry.

    ``offer``/``answer`` carry ``sdp`` (a string, or the RTCSessionDescription
    object some tutorials send), ``candidate`` carries ``candidate`` (string,
    object, or null for end-of-candidates), ``signal`` carries ``data``.
    """
    if mtype == "candidate":
        if "candidate" not in msg:
            raise ProtocolError(ErrorCode.INVALID_MESSAGE, "candidate is required", msg_id)
        if type(msg["candidate"]) not in (str, dict, type(None)):
            raise ProtocolError(
                ErrorCode.INVALID_MESSAGE, "candidate must be a string, object or null", msg_id
            )
    elif mtype == "signal":
        if "data" not in msg:
            raise ProtocolError(ErrorCode.INVALID_MESSAGE, "data is required", msg_id)
    else:
        if type(msg.get("sdp")) not in (str, dict):
            raise ProtocolError(
                ErrorCode.INVALID_MESSAGE, "sdp must be a string or an object", msg_id
            )
