"""Session ids: 96 random bits from the OS CSPRNG, drawn 4 KiB at a time.

A session id is a bearer secret for ``resume`` (with ``--auth none`` it is
the only one), so it must come from ``os.urandom`` like ``secrets`` does.
``secrets.token_urlsafe`` makes one ``getrandom(2)`` call per id, ~5 % of the
server's CPU in a join storm; drawing 4 KiB at once serves ~340 ids per call
with the same bytes. After a fork (``--workers``) the child starts a fresh
pool, so two processes never hand out the same bytes.
"""

from __future__ import annotations

import base64
import os

_POOL_SIZE = 4096
_pool = b""
_pos = 0


def _reset() -> None:
    global _pool, _pos
    _pool, _pos = b"", 0


os.register_at_fork(after_in_child=_reset)


def session_id() -> str:
    """16 URL-safe characters (12 random bytes), as ``secrets.token_urlsafe(12)``."""
    global _pool, _pos
    pos = _pos
    if pos + 12 > len(_pool):
        _pool, pos = os.urandom(_POOL_SIZE), 0
    _pos = pos + 12
    return base64.urlsafe_b64encode(_pool[pos:pos + 12]).decode()
