"""WHIP from GStreamer (issue 18): webrtcbin + libnice publish into a room, Chromium sees the tile.

The outside client is tests/e2e/gst_whip_publish.py, run with the system
Python (PyGObject is a Debian package): the GStreamer WebRTC stack that
simple-whip-client uses, with urllib for HTTP. H.264 the way OBS sends it
(x264enc, constrained baseline, zerolatency) and VP8. SIGTERM makes it
DELETE its resource, and the tile leaves the page.

Debian 12's own whip-client aborts at load; the last test checks that this
is still so, and says to switch to it the day it is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import signal
from pathlib import Path

import pytest

from tests.conftest import Servers
from tests.e2e.conftest import PageWatch
from tests.e2e.test_sfu_browser import frames_advance, sfu, start

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]
KEY = "whip-gst-key"
SYSTEM_PYTHON = "/usr/bin/python3"
SCRIPT = Path(__file__).with_name("gst_whip_publish.py")
WHIP_CLIENT = "/usr/bin/whip-client"


async def read_until(proc: asyncio.subprocess.Process, prefix: str, seen: list[str], timeout: float) -> str:
    """Lines of the publisher's stdout until one starts with ``prefix`` (all kept in ``seen``)."""
    assert proc.stdout is not None

    async def scan() -> str:
        while line := (await proc.stdout.readline()).decode(errors="replace"):  # type: ignore[union-attr]
            seen.append(line.rstrip())
            if line.startswith(prefix):
                return line.rstrip()
        raise AssertionError(f"the publisher ended without {prefix!r}: {seen}")

    try:
        return await asyncio.wait_for(scan(), timeout)
    except TimeoutError:
        raise AssertionError(f"no {prefix!r} from the publisher in {timeout}s: {seen}") from None


@pytest.mark.parametrize("codec", ["h264", "vp8"])
async def test_gstreamer_publisher_shows_in_chromium_and_sigterm_deletes_it(
        make_e2e_server: Servers, open_page: PageWatch, codec: str) -> None:
    app = await make_e2e_server(**sfu(media_mode="sfu", api_key=KEY))
    page = await open_page(app.url + "/t/sfu", harness="sfu.html")
    await start(page, "stage", "viewer", media=False)
    proc = await asyncio.create_subprocess_exec(
        SYSTEM_PYTHON, str(SCRIPT), f"{app.url}/whip/stage", "--token", KEY, "--codec", codec,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    seen: list[str] = []
    try:
        created = await read_until(proc, "whip: created ", seen, 30)
        (ws,) = app.whip.sessions.values()
        assert created == f"whip: created /whip/stage/{ws.id}"
        publisher = ws.session.user_id
        frames = await frames_advance(page, [publisher])
        assert frames[publisher] > 5
        # Janus took the codec the encoder sends (for H.264 that needs rooms to take it).
        (feed,) = (await app.sfu.feeds("stage")).values()
        assert sorted(feed["codecs"].values()) == sorted([codec, "opus"]), feed
        # Chromium decodes it: the tile's frames keep advancing.
        again = await frames_advance(page, [publisher])
        assert again[publisher] > frames[publisher]

        proc.send_signal(signal.SIGTERM)
        assert await read_until(proc, "whip: deleted", seen, 15) == "whip: deleted 200"
        assert await asyncio.wait_for(proc.wait(), 15) == 0, seen
        await page.wait_for_function("(u) => !T.videos().some((v) => v.userId === u)",
                                     arg=publisher, timeout=15_000)
        assert not app.whip.sessions and app.whip.stats["deleted"] == 1
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


async def test_debian_whip_client_still_aborts_on_the_libsoup_clash(make_e2e_server: Servers) -> None:
    """Why the GStreamer publisher above is a script and not Debian's simple-whip-client.

    If this fails, whip-client (or its libraries) changed: use it as the outside client in
    the test above instead of gst_whip_publish.py, and update docs/broadcast.md.
    """
    app = await make_e2e_server(**sfu(media_mode="sfu", api_key=KEY))
    video = ("videotestsrc is-live=true ! videoconvert ! vp8enc deadline=1 ! rtpvp8pay pt=96 ! queue "
             "! application/x-rtp,media=video,encoding-name=VP8,payload=96")
    proc = await asyncio.create_subprocess_exec(
        WHIP_CLIENT, "-u", f"{app.url}/whip/stage", "-t", KEY, "-V", video,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        # It aborts (SIGTRAP from g_error): no core file in the checkout.
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_CORE, (0, 0)))
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 20)
    except TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
    text = out.decode(errors="replace")
    assert "libsoup2 symbols detected" in text and proc.returncode != 0, (
        f"whip-client no longer aborts on the libsoup clash (exit {proc.returncode}): switch the "
        f"GStreamer test to it and update docs/broadcast.md. Its output: {text[-800:]}")
    assert app.whip.stats["created"] == 0
