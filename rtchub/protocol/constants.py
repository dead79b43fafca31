"""The protocol's names in one place: message types, error and close codes, headers.

Both SDKs take theirs from here, so that they cannot drift from the server
(issue 14: the browser SDK's list of server types lacked ``token-expiring``).
The Python SDK imports this module; the browser SDK imports
``rtchub/web/sdk/protocol.js``, which :func:`browser_module` generates from it
(``python -m rtchub.protocol.constants > rtchub/web/sdk/protocol.js``) and a
test compares with the file on every run.
"""

from __future__ import annotations

#: Client -> server message types (PROTOCOL.md "Client -> server").
RELAY_TYPES = ("offer", "answer", "candidate", "signal")
CLIENT_TYPES = ("join", "leave", "message", "ping", "auth", "resume", *RELAY_TYPES)
#: Server -> client message types (PROTOCOL.md "Server -> client", plus
#: ``resumed``, ``token-expiring``, and the transports' own ``close``).
SERVER_TYPES = (
    "welcome", "room-info", "user-joined", "user-left", *RELAY_TYPES, "message",
    "pong", "ack", "error", "resumed", "token-expiring", "close",
)
#: Request header naming the session on the HTTP transports; preferred to
#: ``?session=`` so that the id stays out of URLs that proxies log.
SESSION_HEADER = "X-RtcHub-Session"
