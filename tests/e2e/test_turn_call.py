"""A real call relayed through a real coturn, with credentials from ``/ice-servers``.

A ``rtchub serve`` child process (``--turn-secret``, ``--turn-url``) and a
private coturn (``use-auth-secret`` with the same secret) run on loopback.
Two headless Chromium pages (fake camera and microphone) fetch
``/ice-servers``, open an RTCPeerConnection with ``iceTransportPolicy:
'relay'``, signal over rtchub's ``/ws`` with plain join/offer/answer/candidate
messages, and must connect with a relay-relay candidate pair and play the
remote video. With a secret coturn does not know, the same call must not
connect, and Chromium must report coturn's 401.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from playwright import async_api as playwright_api

from tests.conftest import free_port
from tests.e2e.conftest import CHROMIUM, FLAGS, shows_fake_camera

pytestmark = pytest.mark.e2e

PAGES = Path(__file__).parent / "pages"


@pytest.fixture
async def browser() -> Any:
    assert Path(CHROMIUM).exists(), "Debian chromium is missing (make system-deps installs it)"
    async with playwright_api.async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        await b.close()


@pytest.fixture
async def page_server() -> Any:
    """Serves tests/e2e/pages on its own loopback port: the app's origin, not rtchub's.

    A real HTTP server (not Playwright's request interception) because
    Chromium's Local Network Access checks treat a page without a network
    address as public and block its requests to 127.0.0.1.
    """
    app = web.Application()
    app.router.add_static("/", PAGES)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def run_call(browser: Any, pages_url: str, server: str, timeout_ms: int) -> tuple[Any, Any, Any]:
    context = await browser.new_context()
    alice = await context.new_page()
    bob = await context.new_page()
    for page in (alice, bob):
        await page.goto(pages_url + "/turn_call.html")
    room = "turn-room"
    # Alice joins first; Bob, second, finds her in room-info and makes the offer.
    await alice.evaluate("a => runCall(a)", {"server": server, "roomId": room, "userId": "alice",
                                             "peerId": "bob", "timeoutMs": timeout_ms})
    await bob.evaluate("a => runCall(a)", {"server": server, "roomId": room, "userId": "bob",
                                           "peerId": "alice", "timeoutMs": timeout_ms})
    a, b = await asyncio.gather(alice.evaluate("() => finishCall()"), bob.evaluate("() => finishCall()"))
    return a, b, (context, alice, bob)


async def test_call_relayed_through_coturn(browser: Any, page_server: str, coturn: Any,
                                           server_process: Any) -> None:
    turn = coturn("e2e-shared-secret")
    rtchub = server_process("--turn-secret", "e2e-shared-secret", "--turn-url", turn.url,
                            "--stun-port", str(free_port()))
    a, b, (context, alice, bob) = await run_call(browser, page_server, rtchub.url, timeout_ms=30_000)
    try:
        for side in (a, b):
            turn_entry = [s for s in side["iceServers"] if "username" in s]
            assert turn_entry and turn_entry[0]["urls"] == [turn.url], side["iceServers"]
            assert turn_entry[0]["username"].endswith(":" + side["userId"])
            assert side["connectionState"] == "connected", side
            # Only relayed candidates were gathered, offered and used.
            assert side["candidateTypes"] and set(side["candidateTypes"]) == {"relay"}, side
            assert set(side["localCandidates"]) == {"relay"}, side
            assert set(side["remoteCandidates"]) == {"relay"}, side
            pair = side["selectedPair"]
            assert pair["local"] == "relay" and pair["remote"] == "relay", side
            assert pair["localUrl"] == turn.url, side
            assert pair["localRelayProtocol"] == "udp", side
            # The relayed address is one that this coturn allocated.
            assert pair["localAddress"] == "127.0.0.1" and pair["localPort"] in turn.relay_ports, side
            assert not side["candidateErrors"], side

        # Media flows through the relay: the remote <video> shows the fake camera.
        for page in (alice, bob):
            for _ in range(100):
                video = await page.evaluate("() => remoteFrames()")
                if video["frames"] > 5:
                    break
                await asyncio.sleep(0.1)
            assert shows_fake_camera(video) and video["frames"] > 5, video
    finally:
        await context.close()


async def test_call_fails_with_wrong_secret(browser: Any, page_server: str, coturn: Any,
                                            server_process: Any) -> None:
    turn = coturn("the-right-secret")
    rtchub = server_process("--turn-secret", "a-wrong-secret", "--turn-url", turn.url)
    a, b, (context, _, _) = await run_call(browser, page_server, rtchub.url, timeout_ms=10_000)
    await context.close()
    for side in (a, b):
        assert side["connectionState"] != "connected", side
        assert side.get("selectedPair") is None, side
        # No relay allocation succeeded, so no candidate at all under the 'relay' policy...
        assert side["candidateTypes"] == [], side
        # ...and the browser saw coturn refuse the credentials.
        assert any(e["errorCode"] == 401 for e in side["candidateErrors"]), side
