"""Browser fixtures: Debian's Chromium through Playwright, fake camera and mic.

Never ``playwright install``: the browser is /usr/bin/chromium (``make
system-deps`` installs it). The flags are the ones TESTING-NOTES.md lists as
making a headless fake-media call connect on one machine; without
``WebRtcHideLocalIpsWithMdns`` disabled, host candidates become ``.local``
names that headless Chromium cannot resolve and ICE never connects.

Launching Chromium costs 1-2 s, so test modules that opt in share one browser
per module: they run on a module-scoped event loop
(``pytestmark = pytest.mark.asyncio(loop_scope="module")``) and use
``make_e2e_server`` - ``make_server`` of tests/conftest.py on that same loop
(a fixture on the function loop would be torn down on the wrong loop). Every
page is opened in its own context (separate storage, separate fake devices).

``open_page`` watches each page: any uncaught exception (``pageerror``) or
console error fails the test, except the network errors Chromium logs by
itself while a server is deliberately down or a route is blocked (the test
says which with ``allow_network_errors``).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from playwright.async_api import Browser, BrowserContext, ConsoleMessage, Page, async_playwright

from rtchub.bench import netns
from tests.conftest import Servers

# One list of flags for the tests and the media benchmarks (rtchub.bench.netns).
CHROMIUM = netns.CHROMIUM
FLAGS = netns.CHROMIUM_FLAGS
PAGES = Path(__file__).parent / "pages"
#: What Chromium logs on its own when a connection is refused or aborted.
NETWORK_ERROR = re.compile(
    r"WebSocket connection to .* failed|Failed to load resource|net::ERR_|"
    r"EventSource's response has a MIME type|ERR_CONNECTION_REFUSED")


#: Where test media may go: loopback, or the veth pair of the namespace that
#: tools/netns-run made for this run (10.77.0.0/24). Never the machine's eth0.
PRIVATE_NETS = [ipaddress.ip_network(n) for n in ("127.0.0.0/8", "::1/128", "10.77.0.0/24")]


def require_private_network() -> None:
    """Fail unless this run is inside tools/netns-run's private namespace.

    Outside it Chromium (and aioice, and Janus) gather the machine's real
    addresses and test media would be sent on them; ``make test`` runs pytest
    through tools/netns-run, and so must anyone running browser tests by hand.
    """
    if not os.environ.get("RTCHUB_NETNS"):
        pytest.fail("browser/media tests must run in a private network namespace: "
                    "tools/netns-run .venv/bin/python -m pytest ... (make test does this)")
    names = {name for _, name in socket.if_nameindex()}
    if not names <= {"lo", "v0", "v1"}:
        pytest.fail(f"network namespace has foreign interfaces {sorted(names)}; use tools/netns-run")


def in_private_network(address: str | None) -> bool:
    """True when ``address`` is loopback or inside the test namespace."""
    if not address:
        return False
    ip = ipaddress.ip_address(address)
    return any(ip in net for net in PRIVATE_NETS)


@contextlib.asynccontextmanager
async def chromium(*extra_flags: str) -> AsyncIterator[Browser]:
    """Debian's Chromium through Playwright (never a downloaded browser)."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (make system-deps)")
    require_private_network()
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, args=[*FLAGS, *extra_flags],
                                     headless=True)
        try:
            yield b
        finally:
            await b.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as b:
        yield b


@pytest_asyncio.fixture(loop_scope="module")
async def make_e2e_server() -> AsyncIterator[Servers]:
    """``make_server`` (tests/conftest.py) on the module loop the browser lives on."""
    servers = Servers()
    yield servers
    await servers.stop_all()


def shows_fake_camera(video: dict[str, Any]) -> bool:
    """True when a remote ``<video>`` shows Chromium's fake camera (640x480).

    The sender's WebRTC stack may scale the stream down when the machine is
    busy (CPU-overuse and bandwidth adaptation keep the aspect ratio), so the
    check is "4:3 and at most 640 wide", not an exact 640: a black or
    placeholder track would be 0 wide or another shape.
    """
    width, height = int(video.get("width", 0)), int(video.get("height", 0))
    return 0 < width <= 640 and width * 3 == height * 4


class PageWatch:
    """Opens pages (one context each) and collects what went wrong in them."""

    def __init__(self, browser: Browser) -> None:
        self.browser = browser
        self.contexts: list[BrowserContext] = []
        self.errors: list[str] = []
        self.network_errors: list[str] = []
        self.allow_network_errors = False

    async def __call__(self, url: str, *, harness: str | None = "harness.html",
                       name: str | None = None) -> Page:
        """Open ``url``; with ``harness``, serve tests/e2e/pages/<harness> at that URL.

        Serving the harness through ``page.route`` keeps it on the server's own
        origin (so ``/sdk/rtchub.js`` is a same-origin module import) without
        adding test files to the server's web root.
        """
        ctx = await self.browser.new_context(permissions=["camera", "microphone"])
        self.contexts.append(ctx)
        page = await ctx.new_page()
        label = name or f"page{len(self.contexts)}"

        def on_console(msg: ConsoleMessage) -> None:
            if msg.type != "error":
                return
            text = f"{label}: console error: {msg.text}"
            if NETWORK_ERROR.search(msg.text):
                self.network_errors.append(text)
            else:
                self.errors.append(text)

        page.on("console", on_console)
        page.on("pageerror", lambda exc: self.errors.append(f"{label}: uncaught: {exc}"))
        if harness is not None:
            body = (PAGES / harness).read_text()

            async def serve(route: Any) -> None:
                await route.fulfill(status=200, content_type="text/html; charset=utf-8", body=body)

            await page.route(url, serve)
        await page.goto(url)
        if harness is not None:
            await page.wait_for_function("window.T && window.T.ready === true")
        return page

    async def media_flowing(self, page: Page, peers: int, timeout: float = 20.0) -> list[dict[str, Any]]:
        """Wait until ``page`` shows ``peers`` remote videos that decode frames, and keep doing so."""
        await page.wait_for_function(
            """(n) => { const v = T.videos();
                return v.length === n && v.every((x) => x.width > 0 && x.frames > 0); }""",
            arg=peers, timeout=timeout * 1000)
        before = {v["userId"]: v["frames"] for v in await page.evaluate("T.videos()")}
        await page.wait_for_function(
            """(before) => T.videos().every((x) => x.width > 0 && x.frames > (before[x.userId] ?? 1e9))""",
            arg=before, timeout=timeout * 1000)
        return await page.evaluate("T.videos()")

    def check(self) -> None:
        problems = list(self.errors)
        if not self.allow_network_errors:
            problems += self.network_errors
        assert not problems, "errors in the pages:\n" + "\n".join(problems)


@pytest_asyncio.fixture(loop_scope="module")
async def open_page(browser: Browser) -> AsyncIterator[PageWatch]:
    watch = PageWatch(browser)
    yield watch
    try:
        watch.check()
    finally:
        for ctx in watch.contexts:
            await ctx.close()
