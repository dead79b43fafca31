"""Codecs: JSON (orjson) text frames and MessagePack binary frames.

The server stamps ``seq`` on every message per recipient, yet a broadcast
should be encoded once. For JSON we therefore encode the body once and splice
``"seq":N,`` in front of its first key (:func:`json_frame`); the result is
byte-for-byte a valid JSON object.
"""

from __future__ import annotations

import re
from typing import Any

import msgpack
import orjson

JSON = "json"
MSGPACK = "msgpack"

#: WebSocket subprotocol -> codec name (PROTOCOL.md "Endpoints").
SUBPROTOCOLS = {
    "rtchub.v1.json": JSON,
    "webrtc-signaling": JSON,
    "rtchub.v1.msgpack": MSGPACK,
}

decode_json = orjson.loads
encode_json = orjson.dumps


def json_frame(seq: int, body: bytes) -> bytes:
    """Prefix an encoded JSON object with its ``seq`` without re-encoding it."""
    if len(body) <= 2:  # "{}" - cannot happen for server messages, but be exact
        return b'{"seq":%d}' % seq
    return b'{"seq":%d,%s' % (seq, body[1:])


def msgpack_frame(seq: int, msg: dict[str, Any]) -> bytes:
    """The message with its per-recipient ``seq`` first, as :func:`json_frame` does.

    ``seq`` is set again after the update: a ``seq`` inside ``msg`` (a server
    API publish, say) must never shadow the recipient's own number.
    """
    out: dict[str, Any] = {"seq": seq}
    out.update(msg)
    out["seq"] = seq
    return msgpack.packb(out)


#: First bytes of the MessagePack types outside the JSON data model: bin 8/16/32
#: (0xc4-0xc6), ext 8/16/32 (0xc7-0xc9) and fixext 1-16 (0xd4-0xd8), timestamps
#: included. Such a byte may also occur inside a string or number, so a hit
#: only triggers the exact check.
_NON_JSON_MARKER = re.compile(rb"[\xc4-\xc9\xd4-\xd8]")


def _json_model(value: Any) -> bool:
    t = type(value)
    if t is dict:
        return all(type(k) is str and _json_model(v) for k, v in value.items())
    if t is list:
        return all(_json_model(v) for v in value)
    return t in (str, int, float, bool) or value is None


def decode_msgpack(data: bytes) -> Any:
    """Decode a binary frame into the same data model as JSON, or raise ValueError.

    ``raw=False`` rejects invalid UTF-8 in strings; ``strict_map_key`` refuses
    non-string keys. bin and ext values (and timestamps) are refused: the core
    relays messages to JSON clients too, and JSON has no bytes (a bytes value
    would only fail later, while encoding for some other recipient).
    """
    msg = msgpack.unpackb(data, raw=False, strict_map_key=True)
    if _NON_JSON_MARKER.search(data) is not None and not _json_model(msg):
        raise ValueError("MessagePack bin/ext values have no JSON equivalent")
    return msg


def choose_subprotocol(offered: list[str]) -> str | None:
    """First offered subprotocol we speak; ``None`` means plain JSON without one."""
    for name in offered:
        if name in SUBPROTOCOLS:
            return name
    return None
