#!/usr/bin/python3
"""A GStreamer WHIP publisher (RFC 9725 client side): webrtcbin + libnice, like simple-whip-client.

Run it with the system Python (``/usr/bin/python3``): PyGObject and the
GStreamer typelibs are Debian packages (python3-gst-1.0,
gir1.2-gst-plugins-bad-1.0), not pip ones.

Why not Debian 12's ``whip-client`` itself: it links libsoup 2 for HTTP,
while libnice pulls libsoup 3 in through gupnp-igd, and libsoup aborts the
process ("libsoup2 symbols detected"). This script is the same GStreamer
WebRTC stack (webrtcbin, libnice, the same encoders and payloaders) with
the HTTP side done by urllib, so nothing loads libsoup 2.

What it does, as OBS does: a test pattern (``videotestsrc``) encoded as
H.264 (x264enc, constrained baseline, ``tune=zerolatency``) or VP8, and a
sine tone as Opus, into a ``sendonly`` webrtcbin; the offer is POSTed only
once ICE gathering is complete (no trickle), with the bearer token; the
201's answer is applied; it streams until SIGTERM or SIGINT, then DELETEs
the ``Location`` resource and exits 0. Lines on stdout say what happened
(``whip: created <location>``, ``whip: deleted <status>``), for the tests.
"""

from __future__ import annotations

import argparse
import signal
import sys
import urllib.error
import urllib.parse
import urllib.request

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstSdp", "1.0")
gi.require_version("GstWebRTC", "1.0")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC  # noqa: E402

VIDEO = {
    # OBS-like H.264: constrained baseline (no B-frames), low-latency tuning, a keyframe a second.
    "h264": "x264enc tune=zerolatency speed-preset=ultrafast key-int-max=15 bitrate=600 "
            "! video/x-h264,profile=constrained-baseline "
            "! rtph264pay pt=96 config-interval=-1 aggregate-mode=zero-latency "
            "! application/x-rtp,media=video,encoding-name=H264,payload=96",
    "vp8": "vp8enc deadline=1 keyframe-max-dist=15 target-bitrate=600000 "
           "! rtpvp8pay pt=96 ! application/x-rtp,media=video,encoding-name=VP8,payload=96",
}
AUDIO = ("audiotestsrc is-live=true wave=sine freq=440 ! audioconvert ! audioresample ! opusenc "
         "! rtpopuspay pt=111 ! application/x-rtp,media=audio,encoding-name=OPUS,payload=111")


def say(line: str) -> None:
    print(f"whip: {line}", flush=True)


class Publisher:
    def __init__(self, url: str, token: str, codec: str, audio: bool, pattern: str) -> None:
        self.url, self.token = url, token
        self.location: str | None = None
        self.loop = GLib.MainLoop()
        self.exit_code = 0
        desc = (f"webrtcbin name=wb bundle-policy=max-bundle "
                f"videotestsrc is-live=true pattern={pattern} "
                f"! video/x-raw,width=320,height=240,framerate=15/1 ! videoconvert ! {VIDEO[codec]} ! wb.")
        if audio:
            desc += f" {AUDIO} ! wb."
        self.pipe = Gst.parse_launch(desc)
        self.wb = self.pipe.get_by_name("wb")
        self.wb.connect("on-negotiation-needed", self._negotiate)
        self.wb.connect("notify::ice-gathering-state", self._gathering)
        self.pipe.get_bus().add_signal_watch()
        self.pipe.get_bus().connect("message::error", self._error)
        self._offered = False

    def run(self) -> int:
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, self.stop)
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGINT, self.stop)
        # Only send: the transceivers the request pads made would otherwise offer sendrecv.
        i = 0
        while (t := self.wb.emit("get-transceiver", i)) is not None:
            t.set_property("direction", GstWebRTC.WebRTCRTPTransceiverDirection.SENDONLY)
            i += 1
        self.pipe.set_state(Gst.State.PLAYING)
        self.loop.run()
        self.pipe.set_state(Gst.State.NULL)
        return self.exit_code

    def fail(self, why: str) -> None:
        say(f"failed: {why}")
        self.exit_code = 1
        self.loop.quit()

    def _error(self, _bus: Gst.Bus, msg: Gst.Message) -> None:
        err, _ = msg.parse_error()
        self.fail(f"pipeline error: {err.message}")

    def _negotiate(self, wb: Gst.Element) -> None:
        wb.emit("create-offer", None, Gst.Promise.new_with_change_func(self._offer_made, None))

    def _offer_made(self, promise: Gst.Promise, _data: object) -> None:
        reply = promise.get_reply()
        offer = reply.get_value("offer")
        self.wb.emit("set-local-description", offer, Gst.Promise.new())

    def _gathering(self, wb: Gst.Element, _pspec: object) -> None:
        if wb.get_property("ice-gathering-state") == GstWebRTC.WebRTCICEGatheringState.COMPLETE \
                and not self._offered:
            self._offered = True
            # Non-trickle, like OBS: the local description now holds every candidate.
            GLib.idle_add(self._post, wb.get_property("local-description").sdp.as_text())

    def _post(self, sdp: str) -> bool:
        req = urllib.request.Request(self.url, data=sdp.encode(), method="POST", headers={
            "Content-Type": "application/sdp", "Authorization": f"Bearer {self.token}"})
        try:
            with urllib.request.urlopen(req, timeout=20) as r:
                status, answer, location = r.status, r.read().decode(), r.headers.get("Location")
        except urllib.error.HTTPError as exc:
            self.fail(f"POST {exc.code}: {exc.read().decode(errors='replace').strip()}")
            return False
        except OSError as exc:
            self.fail(f"POST: {exc}")
            return False
        if status != 201 or not location:
            self.fail(f"POST answered {status} without a Location")
            return False
        self.location = urllib.parse.urljoin(self.url, location)
        ok, msg = GstSdp.SDPMessage.new_from_text(answer)
        if ok != GstSdp.SDPResult.OK:
            self.fail("the answer is not SDP")
            return False
        desc = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, msg)
        self.wb.emit("set-remote-description", desc, Gst.Promise.new())
        say(f"created {location}")
        return False

    def stop(self) -> bool:
        """SIGTERM/SIGINT: end the session at the server (RFC 9725 section 4.4), then quit."""
        if self.location is not None:
            req = urllib.request.Request(self.location, method="DELETE",
                                         headers={"Authorization": f"Bearer {self.token}"})
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    say(f"deleted {r.status}")
            except urllib.error.HTTPError as exc:
                say(f"deleted {exc.code}")
            except OSError as exc:
                say(f"delete failed: {exc}")
            self.location = None
        self.loop.quit()
        return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("url", help="the WHIP endpoint, e.g. http://127.0.0.1:8080/whip/ROOM")
    ap.add_argument("--token", required=True, help="bearer token (a JWT with the room, or the API key)")
    ap.add_argument("--codec", choices=sorted(VIDEO), default="h264")
    ap.add_argument("--no-audio", action="store_true")
    ap.add_argument("--pattern", default="smpte", help="videotestsrc pattern (smpte, red, ball, ...)")
    args = ap.parse_args()
    Gst.init(None)
    return Publisher(args.url, args.token, args.codec, not args.no_audio, args.pattern).run()


if __name__ == "__main__":
    sys.exit(main())
