"""The demo web app (landing, chat and call pages) in Debian's real Chromium.

Each test serves the pages from an in-process rtchub (``make_e2e_server``)
and drives headless /usr/bin/chromium through Playwright with fake camera and
microphone (the shared browser and flags of tests/e2e/conftest.py). Any console error or uncaught page
exception fails the test. Screenshots of every page at a laptop and a phone
viewport go to artifacts/screenshots/ (gitignored) for a human to look at.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from playwright.async_api import Browser, BrowserContext, ConsoleMessage, Page
from playwright.async_api import TimeoutError as PlaywrightTimeoutError

from tests.conftest import ARTIFACTS
from tests.e2e.conftest import NETWORK_ERROR

# Share the browser of tests/e2e/conftest.py (one per module, on the module's loop).
pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

SHOTS = ARTIFACTS / "screenshots"
LAPTOP: dict[str, Any] = {"viewport": {"width": 1280, "height": 800}}
PHONE: dict[str, Any] = {
    "viewport": {"width": 390, "height": 844}, "device_scale_factor": 2,
    "is_mobile": True, "has_touch": True,
}


class Pages:
    """Opens pages in fresh contexts and records every console error they log."""

    def __init__(self, browser: Browser) -> None:
        self.browser = browser
        self.contexts: list[BrowserContext] = []
        self.errors: list[str] = []

    async def open(self, url: str, device: dict[str, Any] | None = None,
                   init_script: str | None = None, color_scheme: str = "light") -> Page:
        ctx = await self.browser.new_context(**(device or LAPTOP), color_scheme=color_scheme,
                                             permissions=["camera", "microphone", "clipboard-read",
                                                          "clipboard-write"])
        self.contexts.append(ctx)
        page = await ctx.new_page()
        label = f"{url} [{len(self.contexts)}]"

        def on_console(msg: ConsoleMessage) -> None:
            if msg.type == "error":
                self.errors.append(f"{label}: console error: {msg.text} @ {msg.location}")

        page.on("console", on_console)
        page.on("pageerror", lambda exc: self.errors.append(f"{label}: uncaught: {exc}"))
        if init_script:
            await page.add_init_script(init_script)
        await page.goto(url)
        return page

    def assert_clean(self) -> None:
        assert not self.errors, "errors in page consoles:\n" + "\n".join(self.errors)

    async def close(self) -> None:
        for ctx in self.contexts:
            await ctx.close()


@pytest_asyncio.fixture(loop_scope="module")
async def pages(browser: Browser) -> AsyncIterator[Pages]:
    p = Pages(browser)
    try:
        yield p
    finally:
        await p.close()


@pytest_asyncio.fixture(loop_scope="module")
async def base_url(make_e2e_server: Callable[..., Awaitable[Any]]) -> str:
    app = await make_e2e_server()
    return app.url


async def shot(page: Page, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    await page.screenshot(path=str(path))
    assert path.stat().st_size > 5000, f"screenshot {path} looks empty"
    return path


async def wait_online(page: Page) -> None:
    await page.wait_for_selector('#status[data-state="connected"]', timeout=15000)


async def wait_members(app: Any, room_id: str, names: list[str], within_s: float = 15.0) -> None:
    """Until the server's room ``room_id`` holds exactly the members called ``names``."""
    deadline = asyncio.get_running_loop().time() + within_s

    def now() -> list[str]:
        room = app.hub.rooms.get(room_id)
        return sorted(m.display_name for m in room.members.values()) if room else []

    while now() != sorted(names):
        assert asyncio.get_running_loop().time() < deadline, f"{room_id} holds {now()}, not {names}"
        await asyncio.sleep(0.05)


async def retry_until_online(page: Page, within_s: float = 30.0) -> None:
    """Click "Retry now" (as a user would) until the page is back online.

    While a server is down the SDK's backoff doubles with full jitter up to
    30 s, so after a restart the page's next attempt may still be far away;
    the banner's button starts one at once. An attempt already under way when
    the server came back may fail and schedule another wait, hence the loop.
    """
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        await page.evaluate("document.querySelector('[data-action=retry]')?.click()")
        try:
            await page.wait_for_selector('#status[data-state="connected"]', timeout=2000)
            return
        except PlaywrightTimeoutError:
            if asyncio.get_running_loop().time() > deadline:
                raise


# ---------------------------------------------------------------- landing


async def test_landing_renders_prefills_and_navigates(base_url: str, pages: Pages) -> None:
    page = await pages.open(f"{base_url}/?room=team-sync&name=Ana")
    assert await page.title() == "rtchub — video calls and chat rooms"
    assert await page.input_value("#room") == "team-sync"
    assert await page.input_value("#name") == "Ana"
    assert await page.input_value("#invite-link") == f"{base_url}/?room=team-sync"
    # Icons are inline SVG, hydrated by the module.
    assert await page.locator("#start-call svg").count() == 1
    await shot(page, "landing-laptop")

    # Random room: a fresh, valid id that the invite link follows.
    await page.click("#random-room")
    rnd = await page.input_value("#room")
    assert re.fullmatch(r"[a-z]+-[a-z]+-\d{3}", rnd), rnd
    assert (await page.input_value("#invite-link")).endswith(f"/?room={rnd}")

    # Copy link puts the invite into the clipboard.
    await page.click("#copy-link")
    await page.wait_for_selector(".toast")
    assert await page.evaluate("navigator.clipboard.readText()") == f"{base_url}/?room={rnd}"

    # Spaces and stray characters are cleaned into a valid room id.
    await page.fill("#room", "Weekly sync #3")
    await page.click("#start-chat")
    await page.wait_for_url(re.compile(r"/chat\.html\?room=Weekly-sync-3&name=Ana$"))
    await wait_online(page)

    # Back on the landing page, the name is remembered; "Start video call" goes to the call.
    await page.goto(f"{base_url}/?room=team-sync")
    assert await page.input_value("#name") == "Ana"
    await page.click("#start-call")
    await page.wait_for_url(re.compile(r"/call\.html\?room=team-sync&name=Ana$"))
    await page.wait_for_selector(".tile.local")
    pages.assert_clean()


async def test_landing_needs_a_name_and_fits_a_phone(base_url: str, pages: Pages) -> None:
    page = await pages.open(f"{base_url}/", device=PHONE)
    assert await page.input_value("#room")  # a random room is offered right away
    await page.fill("#name", "")
    await page.click("#start-call")
    assert await page.is_visible("#name-hint")
    assert page.url == f"{base_url}/"
    # Nothing sticks out sideways on a 390 px screen.
    assert await page.evaluate("document.documentElement.scrollWidth") <= 390
    await page.fill("#name", "Ben")
    await shot(page, "landing-phone")
    await page.emulate_media(color_scheme="dark")
    await shot(page, "landing-phone-dark")
    pages.assert_clean()


# ------------------------------------------------------------------- chat


async def send_chat(page: Page, text: str) -> None:
    await page.fill("#text", text)
    await page.press("#text", "Enter")


async def test_chat_page_messages_and_presence(base_url: str, pages: Pages) -> None:
    ana = await pages.open(f"{base_url}/chat.html?room=lobby&name=Ana")
    await wait_online(ana)
    await ana.wait_for_selector('#members .member:has-text("Ana")')

    ben = await pages.open(f"{base_url}/chat.html?room=lobby&name=Ben", device=PHONE)
    await wait_online(ben)
    # Presence both ways: the joiner sees who is there, the others see the joiner.
    await ben.wait_for_selector('#members .member:has-text("Ana")')
    await ana.wait_for_selector('#members .member:has-text("Ben")')
    await ana.wait_for_selector('.sys:has-text("Ben joined")')
    assert await ana.text_content("#member-count") == "2"

    await send_chat(ana, "Hi Ben, welcome to the lobby!")
    await ben.wait_for_selector('.msg:has-text("Hi Ben, welcome to the lobby!")')
    assert "Ana" in (await ben.text_content(".msg .meta b") or "")
    # The sender's own bubble is delivered (acked), not left pending.
    await ana.wait_for_selector(".msg.mine:not(.pending)")

    await send_chat(ben, "Thanks! <b>not bold</b>")
    await ana.wait_for_selector('.msg:has-text("Thanks! <b>not bold</b>")')
    assert await ana.locator(".msg .bubble b").count() == 0  # text, never HTML

    cyd = await pages.open(f"{base_url}/chat.html?room=lobby&name=Cyd")
    await wait_online(cyd)
    await ana.wait_for_selector('#members .member:has-text("Cyd")')
    await send_chat(cyd, "Hello both")
    await ana.wait_for_selector('.msg:has-text("Hello both")')
    await ben.wait_for_selector('.msg:has-text("Hello both")')

    await shot(ana, "chat-laptop")
    await shot(ben, "chat-phone")

    await cyd.close()
    await ana.wait_for_selector('.sys:has-text("Cyd left")')
    await ana.wait_for_selector('#members .member:has-text("Cyd")', state="detached")
    assert await ana.text_content("#member-count") == "2"
    pages.assert_clean()


async def test_chat_page_room_full_is_explained(make_e2e_server: Any,
                                                pages: Pages) -> None:
    app = await make_e2e_server(max_room_members=1)
    first = await pages.open(f"{app.url}/chat.html?room=solo&name=Ana")
    await wait_online(first)
    second = await pages.open(f"{app.url}/chat.html?room=solo&name=Ben")
    await second.wait_for_selector('.overlay:has-text("This room is full")')
    assert await second.is_disabled("#text")
    pages.assert_clean()


async def test_chat_page_asks_for_a_name_when_the_link_has_none(base_url: str, pages: Pages) -> None:
    page = await pages.open(f"{base_url}/chat.html?room=open-room")
    await page.wait_for_selector("#ask-name")
    await page.fill("#ask-name", "Dee")
    await page.click('.overlay button[type="submit"]')
    await wait_online(page)
    await page.wait_for_selector('#members .member:has-text("Dee")')
    pages.assert_clean()


async def test_server_down_shows_reconnect_countdown_then_recovers(
        make_e2e_server: Any, pages: Pages) -> None:
    app = await make_e2e_server()
    port = app.port
    ana = await pages.open(f"{app.url}/chat.html?room=resilient&name=Ana")
    ben = await pages.open(f"{app.url}/chat.html?room=resilient&name=Ben")
    await wait_online(ana)
    await wait_online(ben)
    await ana.wait_for_selector('#members .member:has-text("Ben")')

    await make_e2e_server.stop(app)
    await ana.wait_for_selector('#status[data-state="reconnecting"]', timeout=15000)
    banner = ana.locator('[data-banner="connection"]')
    await banner.wait_for(timeout=15000)
    await ana.wait_for_function(
        "/Reconnecting (in \\d+ s|now)/.test("
        "document.querySelector('[data-banner=connection]')?.textContent || '')",
        timeout=15000)
    await shot(ana, "chat-reconnecting-laptop")

    assert await banner.locator('[data-action="retry"]').count() == 1
    app2 = await make_e2e_server(port=port)
    # The backoff may have grown past the wait below while the server was
    # down (full jitter, doubling): "Retry now" tries at once; Ben's page
    # has no one clicking and reconnects on its own schedule (cap 30 s).
    # (clicked in the page: if Ana's own timer got there first, the banner is gone)
    await retry_until_online(ana)
    await ben.wait_for_selector('#status[data-state="connected"]', timeout=35000)
    await banner.wait_for(state="detached", timeout=15000)
    # "connected" comes with the new session's welcome; the page rejoins the
    # room right after. A chat sent before Ben is back in the room is not his
    # to get (rooms keep no history), so wait until the server has both.
    await wait_members(app2, "resilient", ["Ana", "Ben"])
    await send_chat(ana, "still here after the restart")
    await ben.wait_for_selector('.msg:has-text("still here after the restart")', timeout=15000)
    # While the server was down the browser itself logs the refused
    # connections; those are expected here, anything else is not.
    pages.errors = [e for e in pages.errors if not NETWORK_ERROR.search(e)]
    pages.assert_clean()




# ------------------------------------------------------------------- call

REMOTE_FRAMES = """
() => [...document.querySelectorAll('.tile.remote video')].map(v => ({
  user: v.closest('.tile').dataset.userId,
  width: v.videoWidth,
  frames: v.getVideoPlaybackQuality().totalVideoFrames,
}))
"""


async def remote_videos_playing(page: Page, count: int) -> list[dict[str, Any]]:
    """Wait until ``count`` remote tiles show video whose frame counter grows."""
    await page.wait_for_function(
        f"""() => {{
          const v = [...document.querySelectorAll('.tile.remote video')];
          return v.length === {count} && v.every(x => x.videoWidth > 0
            && x.getVideoPlaybackQuality().totalVideoFrames > 0);
        }}""", timeout=30000)
    first = await page.evaluate(REMOTE_FRAMES)
    await page.wait_for_function(
        f"""(before) => {{
          const now = ({REMOTE_FRAMES})();
          return now.length === before.length && now.every(n => {{
            const b = before.find(x => x.user === n.user);
            return b && n.frames > b.frames;
          }});
        }}""", arg=first, timeout=15000)
    return first


async def test_call_three_party_mesh_with_chat_and_diagnostics(base_url: str, pages: Pages) -> None:
    ana = await pages.open(f"{base_url}/call.html?room=standup&name=Ana")
    await wait_online(ana)
    await ana.wait_for_selector("#waiting")  # alone: the invite card shows
    ben = await pages.open(f"{base_url}/call.html?room=standup&name=Ben")
    cyd = await pages.open(f"{base_url}/call.html?room=standup&name=Cyd", device=PHONE)

    for page in (ana, ben, cyd):
        await remote_videos_playing(page, 2)
        assert await page.locator(".tile.local").count() == 1
        assert await page.locator("#waiting").count() == 0
        assert await page.get_attribute("#grid", "data-count") == "3"
    names = await ana.locator(".tile.remote .nameplate .name").all_text_contents()
    assert sorted(names) == ["Ben", "Cyd"]

    # Chat over the data channels reaches both other people.
    await send_chat(ben, "Can everyone see my screen?")
    await ana.wait_for_selector('.msg:has-text("Can everyone see my screen?")')
    await cyd.wait_for_selector('#log .msg:has-text("Can everyone see my screen?")', state="attached")

    # Diagnostics: connection state, candidate types of the selected pair, RTT, bitrate.
    await ana.click("#btn-diag")
    await ana.wait_for_selector("#pane-diag:not([hidden])")
    await ana.wait_for_function(
        """() => {
          const cards = [...document.querySelectorAll('#diag .diag-card')]
            .filter(c => c.dataset.peer !== 'session');
          const f = (c, n) => c.querySelector(`[data-field="${n}"]`)?.textContent || '';
          return cards.length === 2 && cards.every(c =>
            c.querySelector('.pill').textContent === 'connected'
            && f(c, 'Local candidate') !== '–' && f(c, 'Remote candidate') !== '–'
            && /ms$/.test(f(c, 'Round-trip time')) && /kbps$/.test(f(c, 'Bitrate in')));
        }""", timeout=20000)
    await ana.wait_for_timeout(1500)  # let the bitrate settle for the screenshot
    await shot(ana, "call-3party-laptop-diagnostics")
    await ana.click("#tab-chat")
    await shot(ana, "call-3party-laptop")
    await shot(cyd, "call-3party-phone")
    await cyd.click("#btn-chat")
    await cyd.wait_for_timeout(400)  # the bottom sheet slides in
    await shot(cyd, "call-3party-phone-chat")
    await cyd.click("#close-panel")

    # Mute and camera off are reflected on the buttons and the local tile.
    await ben.click("#btn-mic")
    assert await ben.get_attribute("#btn-mic", "aria-pressed") == "true"
    await ben.click("#btn-cam")
    assert await ben.get_attribute("#btn-cam", "aria-pressed") == "true"
    assert await ben.locator(".tile.local.cam-off").count() == 1
    await ben.click("#btn-cam")
    assert await ben.get_attribute("#btn-cam", "aria-pressed") == "false"

    # Hanging up removes Cyd's tile from the others' grids.
    await cyd.click("#btn-hangup")
    await cyd.wait_for_selector('.overlay:has-text("You left the call")')
    for page in (ana, ben):
        await page.wait_for_function(
            "document.querySelectorAll('.tile.remote').length === 1", timeout=15000)
    pages.assert_clean()


async def test_call_file_transfer_shows_progress_and_checksum(base_url: str, pages: Pages) -> None:
    ana = await pages.open(f"{base_url}/call.html?room=files&name=Ana")
    ben = await pages.open(f"{base_url}/call.html?room=files&name=Ben")
    await remote_videos_playing(ana, 1)
    await remote_videos_playing(ben, 1)
    payload = bytes(range(256)) * 4096  # 1 MiB
    await ana.set_input_files("#file-input", files=[{
        "name": "notes.bin", "mimeType": "application/octet-stream", "buffer": payload}])
    await ben.wait_for_selector('.file-card[data-file="notes.bin"] a.dl', timeout=30000)
    await ana.wait_for_selector('.file-card.done[data-file="notes.bin"]', timeout=30000)
    digest = hashlib.sha256(payload).hexdigest()
    title = await ben.get_attribute('.file-card[data-file="notes.bin"] code', "title")
    assert title == f"SHA-256 {digest}"
    size = await ben.evaluate(
        """async () => (await (await fetch(document.querySelector('.file-card a.dl').href)).blob()).size""")
    assert size == len(payload)
    pages.assert_clean()


DENY_MEDIA = """
navigator.mediaDevices.getUserMedia = async () => {
  throw new DOMException('Permission denied', 'NotAllowedError');
};
"""


async def test_call_camera_denied_joins_receive_only(base_url: str, pages: Pages) -> None:
    ana = await pages.open(f"{base_url}/call.html?room=shy&name=Ana", init_script=DENY_MEDIA)
    await ana.wait_for_selector('[data-banner="media"]:has-text("blocked")')
    assert await ana.get_attribute("body", "data-media") == "receive-only"
    assert await ana.is_disabled("#btn-mic")
    assert await ana.is_disabled("#btn-cam")
    ben = await pages.open(f"{base_url}/call.html?room=shy&name=Ben")
    # Ana still sees and hears Ben; Ben sees Ana's tile (her initials, no video).
    await remote_videos_playing(ana, 1)
    await ben.wait_for_selector('.tile.remote:has-text("Ana")')
    await shot(ana, "call-receive-only-laptop")
    pages.assert_clean()


async def test_call_room_full_is_explained(make_e2e_server: Any,
                                           pages: Pages) -> None:
    app = await make_e2e_server(max_room_members=1)
    ana = await pages.open(f"{app.url}/call.html?room=tiny&name=Ana")
    await wait_online(ana)
    await ana.wait_for_selector(".tile.local")
    ben = await pages.open(f"{app.url}/call.html?room=tiny&name=Ben")
    await ben.wait_for_selector('.overlay:has-text("This call is full")')
    await shot(ben, "call-room-full-laptop")
    pages.assert_clean()


async def test_call_screen_share_toggles_and_media_keeps_flowing(base_url: str, pages: Pages) -> None:
    ana = await pages.open(f"{base_url}/call.html?room=present&name=Ana")
    ben = await pages.open(f"{base_url}/call.html?room=present&name=Ben")
    await remote_videos_playing(ana, 1)
    await remote_videos_playing(ben, 1)
    await ana.click("#btn-screen")
    await ana.wait_for_selector('#btn-screen[aria-pressed="true"]', timeout=15000)
    # Ana's own tile now previews the shared screen, not mirrored like a camera.
    await ana.wait_for_selector(".tile.local:not(.cam-off)")
    assert await ana.locator(".tile.local video").evaluate(
        "v => getComputedStyle(v).transform") == "none"
    assert await ana.locator(".tile.local.mirror").count() == 0
    await remote_videos_playing(ben, 1)  # Ben keeps getting frames (now the screen)
    await shot(ana, "call-screen-share-laptop")
    await ana.click("#btn-screen")
    await ana.wait_for_selector('#btn-screen[aria-pressed="false"]')
    await ana.wait_for_selector(".tile.local.mirror")  # back to the camera
    await remote_videos_playing(ben, 1)
    pages.assert_clean()


async def test_call_page_survives_a_server_restart(make_e2e_server: Any, pages: Pages) -> None:
    app = await make_e2e_server()
    port = app.port
    ana = await pages.open(f"{app.url}/call.html?room=sturdy&name=Ana")
    ben = await pages.open(f"{app.url}/call.html?room=sturdy&name=Ben")
    await remote_videos_playing(ana, 1)
    await remote_videos_playing(ben, 1)

    await make_e2e_server.stop(app)
    await ana.wait_for_selector('#status[data-state="reconnecting"]', timeout=15000)
    await ana.wait_for_selector('[data-banner="connection"]:has-text("Reconnecting")', timeout=15000)
    await make_e2e_server(port=port)
    for page in (ana, ben):
        await retry_until_online(page)
        await page.wait_for_selector('[data-banner="connection"]', state="detached", timeout=15000)
    # The SDK rebuilt the peer connection: media flows again, chat works again.
    await remote_videos_playing(ana, 1)
    await remote_videos_playing(ben, 1)
    await send_chat(ana, "back after the restart")
    await ben.wait_for_selector('.msg:has-text("back after the restart")', timeout=15000)
    pages.errors = [e for e in pages.errors if not NETWORK_ERROR.search(e)]
    pages.assert_clean()
