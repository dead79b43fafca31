"""The admin dashboard in Debian's real Chromium: sign in, see rooms, disconnect a user."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from playwright.async_api import Browser, Page

from tests.conftest import ARTIFACTS, joined
from tests.e2e.conftest import chromium

pytestmark = pytest.mark.e2e

KEY = "admin-key-e2e"


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Per test (this module runs on the default per-test loop)."""
    async with chromium() as b:
        yield b


async def open_admin(browser: Browser, url: str, errors: list[str]) -> Page:
    ctx = await browser.new_context(viewport={"width": 1280, "height": 800})
    page = await ctx.new_page()
    page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    await page.goto(url + "/admin")
    return page


async def test_admin_sees_room_and_disconnects_a_member(make_server: Any, browser: Browser) -> None:
    app = await make_server(api_key=KEY)
    alice = await joined(app, "standup", "alice", "Alice Liddell")
    bob = await joined(app, "standup", "bob", "Bob")
    assert (await alice.expect("user-joined"))["userId"] == "bob"
    errors: list[str] = []
    page = await open_admin(browser, app.url, errors)
    try:
        await page.fill("#key", KEY)
        await page.click("#login button[type=submit]")
        room = page.locator('article.adm-room[data-room="standup"]')
        await room.locator("li.adm-member").nth(1).wait_for(timeout=10_000)
        assert await room.locator("li.adm-member").count() == 2
        names = await room.locator(".adm-member .adm-name").all_text_contents()
        assert names == ["Alice Liddell", "Bob"]
        assert await page.locator("#t-conns").text_content() == "2"
        assert "2 websocket" in (await page.locator("#t-transports").text_content() or "")
        shots = ARTIFACTS / "screenshots"
        shots.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(shots / "admin.png"), full_page=True)

        kick = room.locator('button.adm-kick[data-user="bob"]')
        await kick.click()                      # arms the button
        assert await kick.text_content() == "Confirm"
        await kick.click()                      # disconnects
        left = await alice.expect("user-left")
        assert left["userId"] == "bob" and left["reason"] == "kicked"
        await page.wait_for_function(
            """() => document.querySelectorAll(
                'article.adm-room[data-room="standup"] li.adm-member').length === 1""",
            timeout=10_000)
        assert "bob" not in [m.user_id for m in app.hub.rooms["standup"].members.values()]
        assert not errors, errors
    finally:
        await page.context.close()
        await alice.close()
        await bob.close()


async def test_admin_refuses_a_wrong_key(make_server: Any, browser: Browser) -> None:
    app = await make_server(api_key=KEY)
    errors: list[str] = []
    page = await open_admin(browser, app.url, errors)
    try:
        await page.fill("#key", "not-the-key")
        await page.click("#login button[type=submit]")
        await page.wait_for_function(
            "() => document.getElementById('login-error').textContent.includes('refused')",
            timeout=10_000)
        assert await page.locator("#dash").is_hidden()
        assert await page.evaluate("sessionStorage.getItem('rtchub.admin.key')") is None
        assert all("401" in e for e in errors), errors   # only the refused fetch is logged
    finally:
        await page.context.close()


async def chart(page: Page, figure: str) -> dict[str, Any]:
    """What a dashboard chart shows: its data attributes and its lines' point counts."""
    return await page.evaluate("""(id) => {
        const fig = document.getElementById(id);
        const lines = [...fig.querySelectorAll("polyline")].map(
            (l) => l.getAttribute("points").trim().split(/\\s+/).filter(Boolean).length);
        return {...fig.dataset, lines, label: fig.querySelector("svg").getAttribute("aria-label"),
                legend: fig.querySelector(".adm-chart-legend").textContent};
    }""", figure)


async def test_admin_charts_connections_and_message_rates(make_server: Any, browser: Browser) -> None:
    """The charts fill with one sample per poll and follow what the server does, live."""
    app = await make_server(api_key=KEY)
    alice = await joined(app, "chat", "alice")
    bob = await joined(app, "chat", "bob")
    await alice.expect("user-joined")
    sending = True

    async def chatter() -> None:
        while sending:
            await alice.send({"type": "message", "roomId": "chat", "data": "hi"})
            await asyncio.sleep(0.02)

    traffic = asyncio.create_task(chatter())
    errors: list[str] = []
    page = await open_admin(browser, app.url, errors)
    carol = None
    try:
        await page.fill("#key", KEY)
        await page.click("#login button[type=submit]")
        await page.wait_for_function(
            """() => Number(document.getElementById('c-conns').dataset.samples) >= 3
                     && Number(document.getElementById('c-rates').dataset.lastIn) > 0""",
            timeout=15_000)
        conns, rates = await chart(page, "c-conns"), await chart(page, "c-rates")
        assert conns["lastConns"] == "2" and conns["peak"] == "2"
        assert conns["lines"] == [int(conns["samples"])]
        assert rates["lines"] == [int(rates["samples"])] * 2        # in and out
        assert float(rates["lastIn"]) > 0 and float(rates["lastOut"]) > 0
        assert re.match(r"Connections, last \d+ s: open now 2, peak 2$", conns["label"]), conns["label"]
        assert conns["legend"] == "open 2"

        # Live: a third connection shows up, and the rate drops when the talking stops.
        carol = await joined(app, "chat", "carol")
        await page.wait_for_function(
            "() => document.getElementById('c-conns').dataset.lastConns === '3'", timeout=10_000)
        assert (await chart(page, "c-conns"))["peak"] == "3"
        sending = False
        await traffic
        await page.wait_for_function(
            "() => document.getElementById('c-rates').dataset.lastIn === '0'", timeout=10_000)
        rates = await chart(page, "c-rates")
        assert float(rates["peak"]) > 0                              # the busy minutes stay on the chart
        shots = ARTIFACTS / "screenshots"
        shots.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(shots / "admin-charts.png"), full_page=True)
        assert not errors, errors
    finally:
        sending = False
        await traffic
        await page.context.close()
        for c in (alice, bob, carol):
            if c is not None:
                await c.close()
