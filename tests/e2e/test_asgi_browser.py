"""The browser SDK through rtchub mounted in a FastAPI app under uvicorn (issue 19 part 2).

The app serves its own page at ``/`` (tests/e2e/pages/harness.html, importing
the SDK from ``/rtc/sdk/rtchub.js``) and mounts rtchub at ``/rtc``. Two pages
make a video call with the fake camera and chat, through the server and over
the data channel; one page is on WebSocket, the other on SSE + POST, so both
kinds of route cross the ASGI app.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.asgi_server import fastapi_with_rtchub
from tests.e2e.conftest import PAGES, shows_fake_camera

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(120)]

APP_PAGE = (PAGES / "harness.html").read_text().replace("'/sdk/rtchub.js'", "'/rtc/sdk/rtchub.js'")


async def test_call_and_chat_through_the_mounted_app(browser: Any, open_page: Any) -> None:
    assert "'/rtc/sdk/rtchub.js'" in APP_PAGE
    async with fastapi_with_rtchub(page=APP_PAGE) as srv:
        pages = {}
        for user, transport in (("alice", "websocket"), ("bob", "sse")):
            page = await open_page(f"{srv.url}/?{user}", harness=None, name=user)
            await page.wait_for_function("window.T && window.T.ready === true")
            got = await page.evaluate("(t) => T.connect({url: location.origin + '/rtc', transport: t})",
                                      transport)
            assert got["transport"] == transport
            pages[user] = page
        alice, bob = pages["alice"], pages["bob"]
        await asyncio.gather(*(p.evaluate("([room, user]) => T.startCall({room, user})", ["asgi", u])
                               for u, p in pages.items()))
        for page, other in ((alice, "bob"), (bob, "alice")):
            videos = await open_page.media_flowing(page, 1)
            assert videos[0]["userId"] == other and shows_fake_camera(videos[0]), videos
            stats = await page.evaluate("(u) => T.call.stats(u)", other)
            assert stats["connectionState"] == "connected"
        # Chat through the server (each way, one of them over SSE + POST /send) ...
        ack = await alice.evaluate("T.hub.send({type: 'message', roomId: 'asgi', data: {text: 'hi bob'}})")
        assert ack["type"] == "ack"
        await bob.wait_for_function("T.messages.some((m) => m.data.text === 'hi bob' && m.from === 'alice')")
        ack = await bob.evaluate("T.hub.send({type: 'message', roomId: 'asgi', data: {text: 'hi alice'}})")
        assert ack["type"] == "ack"
        await alice.wait_for_function(
            "T.messages.some((m) => m.data.text === 'hi alice' && m.from === 'bob')")
        # ... and over the call's data channel.
        await alice.wait_for_function(
            "T.call.peers.get('bob') && T.call.peers.get('bob').dc.readyState === 'open'")
        assert await alice.evaluate("T.call.sendChat('via data channel')") == 1
        await bob.wait_for_function(
            "T.chats.some((c) => c.text === 'via data channel' && c.from === 'alice')")
        # One hub behind the mount saw both, each on its transport.
        room = srv.rtc.server.hub.rooms["asgi"]
        assert {u: m.session.sink.transport_name for u, m in room.members.items()} == {
            "alice": "websocket", "bob": "sse"}
        for page in pages.values():
            await page.evaluate("T.call.hangup(); T.hub.close()")
        # Bob's leave is a fire-and-forget POST /close (SSE has no close
        # frame): let it arrive before the server goes, or the page logs the
        # refused request. Both leaving empties (and so removes) the room.
        hub = srv.rtc.server.hub
        for _ in range(200):
            if "asgi" not in hub.rooms:
                break
            await asyncio.sleep(0.05)
        assert "asgi" not in hub.rooms, {u: m.session.state for u, m in hub.rooms["asgi"].members.items()}
        open_page.check()
