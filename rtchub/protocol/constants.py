"""The protocol's names in one place: message types, error and close codes, headers.

Both SDKs take theirs from here, so that they cannot drift from the server
(issue 14: the browser SDK's list of server types lacked ``token-expiring``).
The Python SDK imports this module; the browser SDK imports
``rtchub/web/sdk/protocol.js``, which :func:`browser_module` generates from it
(``python -m rtchub.protocol.constants > rtchub/web/sdk/protocol.js``) and a
test compares with the file on every run.
"""

from __future__ import annotations

import orjson

from rtchub.protocol.errors import CloseCode, ErrorCode

#: Client -> server message types (PROTOCOL.md "Client -> server").
RELAY_TYPES = ("offer", "answer", "candidate", "signal")
CLIENT_TYPES = ("join", "leave", "message", "ping", "auth", "resume", *RELAY_TYPES)
#: Server -> client message types (PROTOCOL.md "Server -> client", plus
#: ``resumed``, ``token-expiring``, and the transports' own ``close``).
SERVER_TYPES = (
    "welcome", "room-info", "user-joined", "user-left", *RELAY_TYPES, "message",
    "pong", "ack", "error", "resumed", "token-expiring", "close",
    # auto rooms: where media flows now (docs/protocol.md "Media route"; rtchub.core.route)
    "media-route",
    # SFU rooms (docs/protocol.md "SFU media"; rtchub.sfu)
    "publish-answer", "subscribe-offer", "media-candidate", "tracks", "tracks-published",
    "tracks-unpublished", "track-muted", "media-reset",
    # audio-mix rooms and recording (docs/protocol.md "Audio-mix rooms", "Recording")
    "mix-answer", "recording",
)
#: Client -> server message types of SFU rooms (registered by rtchub.sfu with Hub.register).
SFU_CLIENT_TYPES = ("publish", "unpublish", "subscribe", "unsubscribe", "subscribe-answer",
                    "media-candidate", "ice-restart", "mute", "subscribe-layer")
#: Request header naming the session on the HTTP transports; preferred to
#: ``?session=`` so that the id stays out of URLs that proxies log.
SESSION_HEADER = "X-RtcHub-Session"
#: ``code`` values of an ``error`` message (PROTOCOL.md "Error codes").
ERROR_CODES = ErrorCode.ALL
#: WebSocket close codes (PROTOCOL.md "Close codes"), also the ``code`` of the
#: HTTP transports' ``close`` pseudo-message.
CLOSE_CODES = {c.name: int(c) for c in CloseCode}

GENERATED_BY = "make docs (python -m rtchub.protocol.constants > rtchub/web/sdk/protocol.js)"


def browser_module() -> str:
    """The browser SDK's ``protocol.js``: the same constants as an ES module."""

    def js(value: object) -> str:
        return orjson.dumps(value).decode()

    lines = [
        "// The protocol's names, generated from rtchub/protocol/constants.py: do not edit.",
        f"// Regenerate with: {GENERATED_BY}",
        "// (tests/test_protocol_constants.py fails when this file and the server differ.)",
        "",
        f"export const CLIENT_TYPES = Object.freeze({js(list(CLIENT_TYPES))});",
        f"export const RELAY_TYPES = Object.freeze({js(list(RELAY_TYPES))});",
        f"export const SERVER_TYPES = Object.freeze({js(list(SERVER_TYPES))});",
        f"export const ERROR_CODES = Object.freeze({js(list(ERROR_CODES))});",
        f"export const CLOSE_CODES = Object.freeze({js(CLOSE_CODES)});",
        f"export const SESSION_HEADER = {js(SESSION_HEADER)};",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(browser_module(), end="")
