"""A real Chromium call over https:// and wss:// with a test-made certificate.

The server serves the page itself over TLS (``--certfile``/``--keyfile``),
with ``--auth jwt`` on: each page brings its token in ``?token=`` for the
WebSocket and in ``Authorization: Bearer`` for ``/ice-servers``, and the
same-host Origin rule admits it. Chromium does not know the test CA, hence
``--ignore-certificate-errors``; the page is still a secure context, which
``getUserMedia`` requires. The page is plain JavaScript (RTCPeerConnection
and JSON signaling, the tutorial protocol), independent of the SDK.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web
from playwright.async_api import async_playwright

from rtchub.app import create_app
from rtchub.auth.tokens import mint
from tests.e2e.conftest import CHROMIUM, FLAGS

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]
SECRET = "https-call-secret-0123456789-0123456789"

PAGE = """<!doctype html>
<meta charset="utf-8"><title>https call</title>
<body><script>
window.T = {log: [], state: "new", secure: window.isSecureContext, errors: []};
let chain = Promise.resolve();
T.start = async (token, room) => {
  const stream = await navigator.mediaDevices.getUserMedia({video: true, audio: false});
  const ice = await (await fetch("/ice-servers", {headers: {Authorization: "Bearer " + token}})).json();
  const ws = new WebSocket(`wss://${location.host}/ws?token=${encodeURIComponent(token)}`);
  T.ws = ws;
  const send = (m) => ws.send(JSON.stringify(m));
  let pc = null;
  const makePc = (to) => {
    pc = new RTCPeerConnection({iceServers: ice.iceServers || []});
    stream.getTracks().forEach((t) => pc.addTrack(t, stream));
    pc.onicecandidate = (e) => send({type: "candidate", roomId: room, to,
                                     candidate: e.candidate ? e.candidate.toJSON() : null});
    pc.ontrack = (e) => {
      const v = document.createElement("video");
      v.autoplay = true; v.muted = true; v.playsInline = true; v.srcObject = e.streams[0];
      document.body.appendChild(v); T.video = v;
    };
    pc.onconnectionstatechange = () => { T.state = pc.connectionState; };
  };
  const handle = async (m) => {
    T.log.push(m.type);
    if (m.type === "welcome") { T.me = m.userId; send({type: "join", roomId: room}); }
    else if (m.type === "room-info" && m.users.length) {
      makePc(m.users[0]);
      await pc.setLocalDescription(await pc.createOffer());
      send({type: "offer", roomId: room, to: m.users[0], sdp: pc.localDescription.sdp});
    } else if (m.type === "offer") {
      makePc(m.from);
      await pc.setRemoteDescription({type: "offer", sdp: m.sdp});
      await pc.setLocalDescription(await pc.createAnswer());
      send({type: "answer", roomId: room, to: m.from, sdp: pc.localDescription.sdp});
    } else if (m.type === "answer") {
      await pc.setRemoteDescription({type: "answer", sdp: m.sdp});
    } else if (m.type === "candidate" && m.candidate) {
      await pc.addIceCandidate(m.candidate);
    } else if (m.type === "error") {
      T.errors.push(m.code);
    }
  };
  ws.onmessage = (ev) => { const m = JSON.parse(ev.data); chain = chain.then(() => handle(m)); };
  await new Promise((ok, fail) => { ws.onopen = ok; ws.onerror = fail; });
};
T.frames = () => T.video ? T.video.getVideoPlaybackQuality().totalVideoFrames : 0;
T.width = () => T.video ? T.video.videoWidth : 0;
</script></body>
"""


async def test_chromium_call_over_https(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    app = create_app(host="127.0.0.1", port=0, stun_port=0, certfile=str(certfile),
                     keyfile=str(keyfile), auth="jwt", jwt_secret=SECRET)

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    app.http.router.add_get("/https-call.html", page)
    await app.start()
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                               args=[*FLAGS, "--ignore-certificate-errors"])
            try:
                pages: list[Any] = []
                for user in ("alice", "bob"):
                    ctx = await browser.new_context(permissions=["camera", "microphone"])
                    p = await ctx.new_page()
                    await p.goto(f"{app.url}/https-call.html")
                    assert app.url.startswith("https://")
                    assert await p.evaluate("T.secure") is True
                    await p.evaluate("([t, r]) => T.start(t, r)",
                                     [mint(sub=user, key=SECRET, rooms=["call-*"]), "call-1"])
                    pages.append(p)
                for p in pages:
                    await p.wait_for_function("T.state === 'connected'", timeout=30_000)
                    await p.wait_for_function("T.width() > 0 && T.frames() > 5", timeout=30_000)
                    assert await p.evaluate("T.errors") == []
                assert sorted(app.hub.rooms["call-1"].members) == ["alice", "bob"]
                assert [await p.evaluate("T.me") for p in pages] == ["alice", "bob"]
            finally:
                await browser.close()
    finally:
        await app.stop()
