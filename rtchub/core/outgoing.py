"""A server message on its way out, encoded at most once however many receive it."""

from __future__ import annotations

from typing import Any

from rtchub.protocol.codec import decode_json, encode_json


class Outgoing:
    """One message for one or many sessions.

    ``msg`` never holds ``seq``: that is stamped per recipient by the
    transport (see :func:`rtchub.protocol.codec.json_frame`). The JSON body is
    built lazily and cached, so a room broadcast is serialized once.
    """

    __slots__ = ("msg", "_json")

    def __init__(self, msg: dict[str, Any], body: bytes | None = None) -> None:
        self.msg = msg
        self._json = body

    @property
    def json(self) -> bytes:
        body = self._json
        if body is None:
            # orjson returns its 4 KiB working buffer as the bytes object, only
            # shortening its length: every body kept in a resume buffer would pin
            # 4 KiB of RSS (measured: 4,118 B per retained 60-byte message). A
            # copy of the exact size costs ~60 ns and is what the buffer keeps.
            body = self._json = bytes(memoryview(encode_json(self.msg)))
        return body

    @classmethod
    def from_json(cls, body: bytes) -> Outgoing:
        """A buffered body on its way out again (resume replay)."""
        return cls(decode_json(body), body)

    @property
    def type(self) -> str:
        return self.msg["type"]

    def __len__(self) -> int:
        return len(self.json)

    def __repr__(self) -> str:
        return f"Outgoing({self.msg!r})"
