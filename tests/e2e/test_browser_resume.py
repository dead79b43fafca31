"""Signaling that survives a dropped connection, in Chromium (issue 6).

During a real call one page's signaling connection is cut (server side: its
TCP connection aborted, as a network failure would; page side: closed with a
non-1000 code). Media is peer-to-peer and must not notice; the SDK must
reconnect on its own and ``resume`` the same session (state ``resumed``, not
``rejoined``), every message sent meanwhile in either direction must arrive
exactly once, and the other page must never see the user leave.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(120)]


def abort_connection_of(app: Any, user_id: str) -> None:
    """Cut the WebSocket of ``user_id`` at the TCP level (no close frame)."""
    for ep in list(app.liveness.endpoints):
        session = ep.session
        if session is not None and session.user_id == user_id:
            ep._abort_transport()  # noqa: SLF001 - a test standing in for a network failure
            return
    raise AssertionError(f"no WebSocket for {user_id}")


async def in_call(make_e2e_server: Any, open_page: Any, room: str,
                  transport: str = "websocket") -> tuple[Any, Any, Any]:
    app = await make_e2e_server()
    a = await open_page(app.url + "/t/a", name="a")
    b = await open_page(app.url + "/t/b", name="b")
    for page in (a, b):
        await page.evaluate("(t) => T.connect({transport: t})", transport)
    await asyncio.gather(
        a.evaluate("(r) => T.startCall({room: r, user: 'ada'})", room),
        b.evaluate("(r) => T.startCall({room: r, user: 'bea'})", room))
    for page in (a, b):
        await open_page.media_flowing(page, 1)
    return app, a, b


async def check_resumed_call(open_page: Any, app: Any, a: Any, b: Any, room: str,
                             session_before: str) -> None:
    # b talks to a while a is away or just back; a talked while offline (queued).
    await asyncio.gather(
        b.evaluate("(r) => T.hub.send({type: 'message', roomId: r, data: {text: 'while away'}})", room),
        a.evaluate("(r) => T.hub.send({type: 'message', roomId: r, data: {text: 'from the gap'}})", room))
    await a.wait_for_function("T.hub.state === 'resumed'", timeout=20_000)
    states = await a.evaluate("T.states.map((s) => s.state)")
    assert "reconnecting" in states and "rejoined" not in states
    assert await a.evaluate("T.hub.sessionId") == session_before
    # Media kept flowing the whole time, on the same RTCPeerConnection.
    for page in (a, b):
        await open_page.media_flowing(page, 1)
    assert await a.evaluate("T.peerLeft.length") == 0
    assert await b.evaluate("T.peerLeft.length") == 0
    # Exactly once, both directions.
    await a.wait_for_function("T.messages.some((m) => m.data.text === 'while away')")
    await b.wait_for_function("T.messages.some((m) => m.data.text === 'from the gap')")
    await asyncio.sleep(0.5)
    assert [m["data"]["text"] for m in await a.evaluate("T.messages")] == ["while away"]
    assert [m["data"]["text"] for m in await b.evaluate("T.messages")] == ["from the gap"]
    # Signaling works after the resume: a full renegotiation (ICE restart) goes through.
    await a.evaluate("T.call.renegotiate()")
    await a.wait_for_function(
        """(() => { const s = T.peerStates().bea;
            return s && s.signaling === 'stable' && s.connection === 'connected'; })()""")
    for page in (a, b):
        await open_page.media_flowing(page, 1)
    # The other side never saw ada leave, and the server never said so.
    assert await b.evaluate("T.userLeft.length") == 0
    assert sorted(app.hub.rooms[room].members) == ["ada", "bea"]


async def test_server_side_abort_resumes_call(make_e2e_server: Any, open_page: Any) -> None:
    app, a, b = await in_call(make_e2e_server, open_page, "cut")
    session_before = await a.evaluate("T.hub.sessionId")
    open_page.allow_network_errors = True
    abort_connection_of(app, "ada")
    await check_resumed_call(open_page, app, a, b, "cut", session_before)
    open_page.check()


async def test_page_side_close_resumes_call(make_e2e_server: Any, open_page: Any) -> None:
    app, a, b = await in_call(make_e2e_server, open_page, "close")
    session_before = await a.evaluate("T.hub.sessionId")
    # The page's socket goes down with a non-normal code (what a flaky network
    # or a proxy restart looks like to the page).
    await a.evaluate("T.hub._t.ws.close(4000, 'test: flaky network')")
    await check_resumed_call(open_page, app, a, b, "close", session_before)
    open_page.check()


@pytest.mark.parametrize("transport", ["sse", "polling"])
async def test_http_transport_drop_resumes_call(make_e2e_server: Any, open_page: Any, transport: str) -> None:
    app, a, b = await in_call(make_e2e_server, open_page, "http-" + transport, transport)
    session_before = await a.evaluate("T.hub.sessionId")
    open_page.allow_network_errors = True
    # Page side: the event stream / the pending poll dies; RtcHub sees a drop.
    await a.evaluate("""() => { const t = T.hub._t; t._ended(1006, 'test: connection lost'); }""")
    await check_resumed_call(open_page, app, a, b, "http-" + transport, session_before)
    assert (await a.evaluate("T.hub.transport")) == transport
    open_page.check()


async def test_after_session_expired_stale_signaling_is_dropped_and_chat_resent(
        make_e2e_server: Any, open_page: Any) -> None:
    """The browser half of the SDK behaviour the Python SDK shares
    (tests/test_protocol_constants.py): after ``session-expired``, signaling
    sent before the rejoin fails with ``session-expired`` and never reaches
    the peer; chat is sent again in the new session."""
    from tests.e2e.test_browser_transports import gate_websocket

    app = await make_e2e_server(grace_period=0)  # a dropped session ends at once
    page = await open_page(app.url + "/t/s", name="s")
    peer = await open_page(app.url + "/t/p", name="p")
    await peer.evaluate("T.connect({}).then(() => T.hub.join('stale', {userId: 'pia'}))")
    blocked = await gate_websocket(page)
    blocked["on"] = False
    open_page.allow_network_errors = True
    await page.evaluate(
        "T.connect({transport: 'websocket'}).then(() => T.hub.join('stale', {userId: 'sam'}))")
    blocked["on"] = True
    abort_connection_of(app, "sam")
    await page.wait_for_function("T.states.some((s) => s.state === 'reconnecting')")
    await page.evaluate("""() => {
        T.outcome = {};
        T.hub.send({type: 'offer', roomId: 'stale', to: 'pia', sdp: 'v=0 stale'})
          .then(() => { T.outcome.offer = 'acked'; }, (e) => { T.outcome.offer = e.code; });
        T.hub.send({type: 'message', roomId: 'stale', data: {text: 'chat'}})
          .then(() => { T.outcome.chat = 'acked'; }, (e) => { T.outcome.chat = e.code; });
    }""")
    blocked["on"] = False
    await page.wait_for_function("T.outcome.offer && T.outcome.chat", timeout=20_000)
    assert await page.evaluate("T.outcome") == {"offer": "session-expired", "chat": "acked"}
    assert "rejoined" in await page.evaluate("T.states.map((s) => s.state)")
    await peer.wait_for_function("T.messages.some((m) => m.from === 'sam' && m.data.text === 'chat')")
    assert "offer" not in await peer.evaluate("T.types")
