"""WHIP ingest (issue 18, RFC 9725) with a real Janus and aiortc.

A WHIP publisher puts a test pattern into a room; an aiortc member of the
room receives its frames; DELETE on the WHIP resource takes it out of the
room. Bad requests get RFC statuses and change nothing.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from rtchub.auth.tokens import mint
from rtchub.client import Client
from rtchub.client.media import SfuMedia
from tests.conftest import Servers
from tests.e2e.test_sfu_bots import sfu_settings

pytestmark = pytest.mark.e2e
KEY = "whip-key"
SECRET = "whip-jwt-secret-0123456789-0123456789"
async def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, str, Any]:
    async with aiohttp.ClientSession() as http, http.post(url, data=body, headers=headers) as r:
        return r.status, await r.text(), r.headers


async def test_whip_publisher_appears_in_the_room_and_delete_removes_it(make_server: Servers) -> None:
    """An aiortc WHIP publisher (RFC 9725 client side: POST offer, 201 + Location, DELETE).

    Debian bookworm's ``whip-client`` (simple-whip-client 0~git20230131-1)
    aborts before it sends anything on these machines: it links libsoup 2,
    and webrtcbin's libnice pulls in libsoup 3 through gupnp-igd ("libsoup2
    symbols detected. Using libsoup2 and libsoup3 in the same process is not
    supported"). So the outside client here is aiortc, speaking plain WHIP; a
    GStreamer publisher (webrtcbin + libnice) is in tests/e2e/test_whip_gstreamer.py.
    """
    from aiortc import RTCPeerConnection, RTCSessionDescription
    from aiortc.contrib.media import MediaPlayer

    from rtchub.client.media import _config

    app = await make_server(**sfu_settings(sfu="local", media_mode="sfu", api_key=KEY,
                                           auth="jwt", jwt_secret=SECRET))
    viewer = Client(app.url, token=mint(sub="viewer", key=SECRET))
    await viewer.connect()
    await viewer.join("stage", media="sfu")
    media = SfuMedia(viewer, "stage")
    token = mint(sub="obs", key=SECRET, rooms=["stage"], name="OBS")
    auth = {"Authorization": f"Bearer {token}"}
    player = MediaPlayer("testsrc=size=320x240:rate=15", format="lavfi")
    pc = RTCPeerConnection(_config())
    try:
        pc.addTransceiver(player.video, direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        status, answer, headers = await post(f"{app.url}/whip/stage", pc.localDescription.sdp.encode(),
                                             {**auth, "Content-Type": "application/sdp"})
        assert status == 201, answer
        assert headers["Content-Type"] == "application/sdp" and answer.startswith("v=0")
        location = headers["Location"]
        assert location.startswith("/whip/stage/")
        await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))

        published = await viewer.recv_type("tracks-published", timeout=30)
        assert published["userId"] == "obs" and [t["kind"] for t in published["tracks"]] == ["video"]
        async with aiohttp.ClientSession() as http, http.get(app.url + "/api/whip",
                                                             headers={"X-API-Key": KEY}) as r:
            (listed,) = (await r.json())["sessions"]
        assert listed["roomId"] == "stage" and listed["userId"] == "obs"
        assert location.endswith("/" + listed["id"])
        first = await media.wait_frames("obs", 5, 30)
        assert await media.wait_frames("obs", first + 15, 30) > first + 15  # frames keep coming

        async with aiohttp.ClientSession() as http:
            frag = "a=ice-ufrag:x\r\na=ice-pwd:y\r\nm=video 9 RTP/AVP 0\r\na=mid:0\r\na=end-of-candidates\r\n"
            async with http.patch(app.url + location, data=frag, headers={
                    **auth, "Content-Type": "application/trickle-ice-sdpfrag"}) as r:
                assert r.status == 204
            async with http.patch(app.url + location, data=frag, headers={
                    **auth, "Content-Type": "application/trickle-ice-sdpfrag", "If-Match": "*"}) as r:
                assert r.status == 422  # ICE restart: trickle yes, restart no (RFC 9725 4.3.2)
            async with http.delete(app.url + location) as r:
                assert r.status == 401  # the resource needs the session's token
            async with http.delete(app.url + location, headers=auth) as r:
                assert r.status == 200
            async with http.delete(app.url + location, headers=auth) as r:
                assert r.status == 404
        left = await viewer.recv_type("user-left", timeout=10)  # the WHIP session left the room...
        assert left["userId"] == "obs"
        gone = await viewer.recv_type("tracks-unpublished", timeout=10)  # ...and its tile went with it
        assert gone["userId"] == "obs"
        assert not app.whip.sessions
    finally:
        await pc.close()
        player.video.stop()
        await media.close()
        await viewer.close()


async def test_bad_whip_requests_get_rfc_statuses_and_change_nothing(make_server: Servers) -> None:
    app = await make_server(**sfu_settings(sfu="local", media_mode="sfu", api_key=KEY,
                                           auth="jwt", jwt_secret=SECRET))
    member = Client(app.url, token=mint(sub="m", key=SECRET))
    await member.connect()
    await member.join("stage", media="sfu")
    url = f"{app.url}/whip/stage"
    offer = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"
    sdp = {"Content-Type": "application/sdp"}
    try:
        status, _, headers = await post(url, offer, sdp)
        assert status == 401 and headers["WWW-Authenticate"] == "Bearer"
        status, _, _ = await post(url, offer, {**sdp, "Authorization": "Bearer not-a-jwt"})
        assert status == 401
        other = mint(sub="intruder", key=SECRET, rooms=["other-room"])
        status, text, _ = await post(url, offer, {**sdp, "Authorization": f"Bearer {other}"})
        assert status == 403 and "forbidden" in text
        no_pub = mint(sub="np", key=SECRET, rooms=["stage"], extra={"canPublish": False})
        status, _, _ = await post(url, offer, {**sdp, "Authorization": f"Bearer {no_pub}"})
        assert status == 403
        ok = mint(sub="ok", key=SECRET, rooms=["stage"])
        status, _, _ = await post(url, offer, {"Content-Type": "text/plain", "Authorization": f"Bearer {ok}"})
        assert status == 415
        status, _, _ = await post(url, b"garbage", {**sdp, "Authorization": f"Bearer {ok}"})
        assert status == 400
        status, text, _ = await post(url, offer, {**sdp, "Authorization": f"Bearer {ok}"})
        assert status == 400, text  # an offer without ICE/DTLS: refused by the SFU
        async with aiohttp.ClientSession() as http, http.delete(
                f"{app.url}/whip/stage/nope", headers={"Authorization": f"Bearer {ok}"}) as r:
            assert r.status == 404
        # Nothing else was affected: the room still has just its member, no WHIP session lives.
        assert list(app.hub.rooms["stage"].members) == ["m"]
        assert not app.whip.sessions
    finally:
        await member.close()


async def test_a_dead_whip_publisher_leaves_the_room_on_its_own(make_server: Servers) -> None:
    """The publisher closes its connection without DELETE: Janus reports the hangup, the WHIP
    session ends, the room sees it leave. Nothing stays stuck."""
    from aiortc import RTCPeerConnection, RTCSessionDescription
    from aiortc.contrib.media import MediaPlayer

    from rtchub.client.media import _config

    app = await make_server(**sfu_settings(sfu="local", media_mode="sfu", api_key=KEY))
    viewer = Client(app.url)
    await viewer.connect()
    await viewer.join("stage", "viewer", media="sfu")
    player = MediaPlayer("testsrc=size=320x240:rate=15", format="lavfi")
    pc = RTCPeerConnection(_config())
    try:
        pc.addTransceiver(player.video, direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        status, answer, _ = await post(f"{app.url}/whip/stage", pc.localDescription.sdp.encode(),
                                       {"Authorization": f"Bearer {KEY}", "Content-Type": "application/sdp"})
        assert status == 201
        await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        published = await viewer.recv_type("tracks-published", timeout=30)
        await pc.close()  # gone, without a DELETE
        left = await viewer.recv_type("user-left", timeout=30)
        assert left["userId"] == published["userId"]
        assert not app.whip.sessions
        async with aiohttp.ClientSession() as http, http.get(app.url + "/metrics") as r:
            text = await r.text()
        assert 'rtchub_whip_total{outcome="publisher_gone"} 1.0' in text
        assert "rtchub_whip_sessions 0.0" in text
    finally:
        await pc.close()
        player.video.stop()
        await viewer.close()
