"""The demo call page and recording (issue 17): the Record button and the indicator everyone sees.

Two Chromium pages (fake camera) in an SFU room with a real Janus: one starts
recording from the page, both show the indicator, a page that joins later
shows it at once, and stopping hides it everywhere; the API then has the
recording.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.conftest import Servers
from tests.e2e.conftest import PageWatch
from tests.e2e.test_recording import KEY, api, wait_state
from tests.e2e.test_sfu_browser import sfu

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]


async def test_record_button_and_indicator_on_every_page(make_e2e_server: Servers, open_page: PageWatch,
                                                        tmp_path: Path) -> None:
    app = await make_e2e_server(**sfu(media_mode="sfu", api_key=KEY, recordings_dir=str(tmp_path)))
    ana = await open_page(f"{app.url}/call.html?room=rec-demo&media=sfu&name=Ana", harness=None)
    ben = await open_page(f"{app.url}/call.html?room=rec-demo&media=sfu&name=Ben", harness=None)
    for page in (ana, ben):
        await page.wait_for_selector('#status[data-state="connected"]', timeout=20_000)
        assert await page.locator("#rec-indicator").is_hidden()
    # Wait until Janus has both publishers (the page's tiles play each other's video).
    await ana.wait_for_function("[...document.querySelectorAll('.tile:not(.local) video')]"
                                ".some((v) => v.videoWidth > 0)", timeout=30_000)

    await ana.click("#btn-record")
    for page, by in ((ana, "you"), (ben, "Ana")):
        await page.locator("#rec-indicator").wait_for(state="visible", timeout=10_000)
        banner = page.locator('[data-banner="recording"]')
        assert f"This room is being recorded by {by}." in (await banner.text_content() or "")
    assert await ana.text_content("#btn-record") == "Stop recording"
    cyd = await open_page(f"{app.url}/call.html?room=rec-demo&media=sfu&name=Cyd", harness=None)
    await cyd.locator("#rec-indicator").wait_for(state="visible", timeout=15_000)

    await asyncio.sleep(3)
    await ben.click("#btn-record")  # anyone may stop it: no --auth jwt here
    for page in (ana, ben, cyd):
        await page.locator("#rec-indicator").wait_for(state="hidden", timeout=10_000)
        assert await page.locator('[data-banner="recording"]').count() == 0
    _, listing = await api("GET", f"{app.url}/api/recordings")
    (rec,) = listing["recordings"]
    assert rec["roomId"] == "rec-demo" and rec["startedBy"]
    final, _ = await wait_state(app, rec["id"])
    assert final["state"] == "ready", final.get("reason")
    assert any(f["kind"] == "composed" for f in final["files"])
