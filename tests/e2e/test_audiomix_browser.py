"""The audio-only room page (audio.html, media mode audio-mix) in Chromium with a real Janus:
three pages, each receiving exactly one audio stream (the mix) that carries sound."""

from __future__ import annotations

import pytest

from tests.conftest import Servers
from tests.e2e.conftest import PageWatch
from tests.e2e.test_sfu_browser import sfu

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

INBOUND = """async () => {
  const out = [];
  (await window.rtchubAudio.pc.getStats()).forEach((r) => {
    if (r.type === 'inbound-rtp' && r.kind === 'audio') out.push(r.totalAudioEnergy || 0);
  });
  return out;
}"""


async def test_three_pages_each_get_one_mixed_stream_with_sound(make_e2e_server: Servers,
                                                                open_page: PageWatch) -> None:
    app = await make_e2e_server(**sfu())
    pages = [await open_page(f"{app.url}/audio.html?room=hall&name={n}", harness=None)
             for n in ("Ana", "Ben", "Cyd")]
    for page in pages:
        await page.wait_for_selector('#mix-state[data-state="connected"], #mix-state[data-state="completed"]',
                                     timeout=30_000)
    for page in pages:
        await page.wait_for_function("document.querySelectorAll('#members .member').length === 3",
                                     timeout=15_000)
        first = await page.evaluate(INBOUND)
        assert len(first) == 1, first  # one stream down, not one per other member
        await page.wait_for_function(f"({INBOUND})().then((e) => e[0] > {first[0]} + 0.001)",
                                     timeout=20_000)
        assert await page.evaluate("document.getElementById('mix').srcObject !== null")


async def test_the_call_page_sends_an_audio_mix_room_to_the_audio_page(make_e2e_server: Servers,
                                                                        open_page: PageWatch) -> None:
    app = await make_e2e_server(**sfu(media_mode="audio-mix"))
    page = await open_page(f"{app.url}/call.html?room=radio&name=Dee", harness=None)
    await page.wait_for_url("**/audio.html?room=radio&name=Dee", timeout=15_000)
    await page.wait_for_selector('#members .member:has-text("Dee (you)")', timeout=15_000)
