"""One source of protocol constants: both SDKs and the docs must agree with it (issue 14).

``rtchub/protocol/constants.py`` holds the message types, error codes, close
codes and the session header. The browser SDK imports the generated
``rtchub/web/sdk/protocol.js``; the Python SDK imports the module. These
tests fail when the generated file is stale, when an SDK keeps a list of its
own, when the server sends a type the list lacks, or when the docs' tables
differ; and one test pins the SDK behaviour after ``session-expired``, the
same in both SDKs.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

from rtchub.client import Client
from rtchub.client.client import ClientError
from rtchub.protocol import constants
from rtchub.protocol.errors import CloseCode, ErrorCode
from tests.conftest import ROOT, eventually

SDK = ROOT / "rtchub" / "web" / "sdk"


def test_browser_protocol_module_is_generated_from_the_server_constants() -> None:
    assert (SDK / "protocol.js").read_text() == constants.browser_module(), (
        f"rtchub/web/sdk/protocol.js is stale: run {constants.GENERATED_BY}")


def test_browser_sdk_takes_its_names_from_protocol_js() -> None:
    exported = set(re.findall(r"^export const (\w+)", (SDK / "protocol.js").read_text(), re.M))
    for path in SDK.glob("*.js"):
        if path.name == "protocol.js":
            continue
        text = path.read_text()
        # No list of its own: a literal array of types or codes is drift waiting to happen.
        assert not re.search(r"\[\s*'welcome'|\[\s*'offer'|'session-expired',\s*'", text), path
        for names in re.findall(r"import \{([^}]*)\} from './protocol.js'", text):
            assert {n.strip() for n in names.split(",")} <= exported, path
    transports = (SDK / "transports.js").read_text()
    assert "import { SERVER_TYPES, SESSION_HEADER } from './protocol.js'" in transports
    assert "from './protocol.js'" in (SDK / "hub.js").read_text()


def test_python_sdk_takes_its_names_from_the_constants() -> None:
    from rtchub.client import client, transports_http

    assert transports_http.SESSION_HEADER is constants.SESSION_HEADER
    assert client.RELAY_TYPES is constants.RELAY_TYPES
    assert set(constants.CLOSE_CODES.values()) >= client.NO_RECONNECT_CODES


def test_every_type_the_server_sends_is_listed() -> None:
    """A server message type written anywhere in the server must be in SERVER_TYPES
    (the browser registers SSE listeners from it: ``token-expiring`` was missing)."""
    sent: set[str] = set()
    for part in ("core", "auth", "transports"):
        for path in (ROOT / "rtchub" / part).rglob("*.py"):
            sent |= set(re.findall(r'"type": "([a-z-]+)"', path.read_text()))
    assert sent, "the scan found nothing: the pattern is out of date"
    assert sent <= set(constants.SERVER_TYPES), sent - set(constants.SERVER_TYPES)
    assert "token-expiring" in constants.SERVER_TYPES


def test_docs_list_exactly_the_error_codes() -> None:
    section = (ROOT / "docs" / "protocol.md").read_text().split("## Error codes", 1)[1]
    section = section.split("\n## ", 1)[0]
    documented = re.findall(r"^\| `([a-z-]+)` \|", section, re.M)
    assert sorted(documented) == sorted(ErrorCode.ALL)


def test_close_codes_and_error_codes_are_the_enums() -> None:
    assert {c.name: int(c) for c in CloseCode} == constants.CLOSE_CODES
    assert constants.ERROR_CODES == ErrorCode.ALL
    assert len(set(constants.SERVER_TYPES)) == len(constants.SERVER_TYPES)
    assert set(constants.RELAY_TYPES) <= set(constants.CLIENT_TYPES) & set(constants.SERVER_TYPES)


# ------------------------------------------ behaviour shared with the browser SDK
async def test_sdk_after_session_expired_drops_stale_signaling_and_resends_chat(
        make_server: Any) -> None:
    """What the browser SDK's ``_resumeFailed`` does (rtchub/web/sdk/hub.js): un-acked
    signaling belongs to peer connections of the old session and is dropped (its
    sender gets ``session-expired``); un-acked chat is sent again in the new one."""
    app = await make_server(grace_period=0)  # a dropped session ends at once
    a, b = Client(app.url), Client(app.url)
    await a.connect()
    await b.connect()
    await a.join("r", "alice")
    await b.join("r", "bob")
    pending: list[asyncio.Future[dict[str, Any]]] = []

    def while_offline(event: dict[str, Any]) -> None:
        if event["state"] == "reconnecting" and not pending:
            pending.append(asyncio.ensure_future(b.request(
                {"type": "offer", "roomId": "r", "to": "alice", "sdp": "v=0 stale"})))
            pending.append(asyncio.ensure_future(b.request(
                {"type": "message", "roomId": "r", "data": "chat"})))

    b.on("state", while_offline)
    await b.abort()
    await eventually(lambda: len(pending) == 2)
    with pytest.raises(ClientError) as refused:
        await pending[0]
    assert refused.value.code == ErrorCode.SESSION_EXPIRED
    assert (await pending[1])["type"] == "ack"
    assert b.state == "rejoined" or "rejoined" in b.states
    got = []
    while not any(m.get("type") == "message" for m in got):
        got.append(await a.recv(5))
    assert [m["data"] for m in got if m["type"] == "message"] == ["chat"]
    assert not [m for m in got if m["type"] == "offer"]
    assert not b.unacked
    await a.close()
    await b.close()
