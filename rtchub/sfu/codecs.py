"""Which codecs an SFU room takes, and how a publisher's codec reaches ffmpeg: one place.

Rooms take VP8 and H.264 video, Opus audio. The order is a preference:
Janus VideoRoom gives each publisher the first codec of the room's list
that its offer has (janus_videoroom.c, the publisher's offer), so browsers,
which offer both, keep publishing VP8 (and its simulcast layers), while a
sender that offers only H.264 (OBS, a hardware encoder, GStreamer's
x264enc) gets H.264. Subscribers get what the publisher sends: Janus does
not transcode, and offers each subscriber exactly the publisher's codec
(with its ``profile-level-id``); Chromium decodes H.264 baseline,
constrained baseline, main and high 4:4:4 in WebRTC.

No room-wide ``h264_profile`` is set: it would only make Janus prefer one
profile when a sender offers several (it falls back to any H.264 when the
offer lacks it). Without it Janus answers the profile the sender offered,
which is all an SFU that does not decode needs.

The codec each publisher's stream got is what Janus says in the
``streams`` list of its answer event (``codec`` per ``mid``):
:func:`negotiated` reads it there, the SFU keeps it with the track, and
the RTP that Janus forwards to ffmpeg (broadcast) is described by
:func:`rtp_sdp_lines` from it. Recordings need nothing from here: each
``.mjr`` header names its codec, and janus-pp-rec reads it.
"""

from __future__ import annotations

from typing import Any

#: Video codecs of every SFU room, most preferred first (Janus ``videocodec``).
VIDEO_CODECS = ("vp8", "h264")
#: Audio codecs of every SFU room (Janus ``audiocodec``).
AUDIO_CODECS = ("opus",)
#: Janus codec name -> (RTP encoding name, clock rate, channels, fmtp) for an SDP
#: that describes forwarded RTP (RFC 7741 VP8, RFC 6184 H.264, RFC 7587 Opus).
#: H.264 from WebRTC senders is always packetization-mode 1 (FU-A / STAP-A).
RTP_FORMATS: dict[str, tuple[str, int, int | None, str | None]] = {
    "vp8": ("VP8", 90000, None, None),
    "h264": ("H264", 90000, None, "packetization-mode=1"),
    "opus": ("opus", 48000, 2, None),
}
#: Payload names that are not media codecs (retransmission, redundancy, FEC).
_NOT_CODECS = {"rtx", "red", "ulpfec", "flexfec-03", "cn", "telephone-event"}


def negotiated(streams: Any) -> dict[str, str]:
    """``mid -> codec`` from the ``streams`` of Janus's answer to a publisher (disabled ones left out)."""
    out: dict[str, str] = {}
    if not isinstance(streams, list):
        return out
    for s in streams:
        if isinstance(s, dict) and not s.get("disabled") and isinstance(s.get("mid"), str) \
                and isinstance(s.get("codec"), str):
            out[s["mid"]] = s["codec"].lower()
    return out


def offered(sdp: str) -> list[dict[str, Any]]:
    """Each audio/video m-section the sender sends: ``{kind, mid, codecs}`` (codecs lower case).

    Sections with port 0 or that only receive are left out: they carry nothing in.
    """
    out: list[dict[str, Any]] = []
    cur: dict[str, Any] | None = None
    for raw in sdp.splitlines():
        line = raw.strip()
        if line.startswith("m="):
            parts = line[2:].split()
            cur = {"kind": parts[0] if parts else "", "mid": None, "codecs": [],
                   "sends": len(parts) > 1 and parts[1] != "0"}
            out.append(cur)
        elif cur is None:
            continue
        elif line.startswith("a=mid:"):
            cur["mid"] = line[6:]
        elif line in ("a=recvonly", "a=inactive"):
            cur["sends"] = False
        elif line.startswith("a=rtpmap:"):
            name = line.split(None, 1)[1].split("/", 1)[0].lower() if " " in line else ""
            if name and name not in _NOT_CODECS and name not in cur["codecs"]:
                cur["codecs"].append(name)
    return [{"kind": s["kind"], "mid": s["mid"], "codecs": s["codecs"]} for s in out
            if s["sends"] and s["kind"] in ("audio", "video")]


def refused(offer_sdp: str, accepted_mids: set[str]) -> list[str]:
    """Why sections the sender wants to send got no track, in words (empty: all taken).

    RFC 9725 ("No Partially Successful Answers"): a WHIP endpoint should refuse the
    whole offer (422 or 400) rather than answer with some m-sections rejected, which
    would look like a working ingest to the person at the encoder.
    """
    reasons = []
    for sec in offered(offer_sdp):
        if sec["mid"] in accepted_mids:
            continue
        takes = VIDEO_CODECS if sec["kind"] == "video" else AUDIO_CODECS
        has = ", ".join(sec["codecs"]) or "no codec"
        reasons.append(f"{sec['kind']} (mid {sec['mid']}) offers {has}; rooms take {', '.join(takes)}")
    return reasons


def rtp_sdp_lines(pt: int, codec: str) -> list[str]:
    """The ``a=rtpmap`` (and ``a=fmtp``) lines that describe ``codec`` on payload type ``pt``."""
    try:
        name, rate, channels, fmtp = RTP_FORMATS[codec.lower()]
    except KeyError:
        raise ValueError(f"no RTP description for codec {codec!r}") from None
    lines = [f"a=rtpmap:{pt} {name}/{rate}" + (f"/{channels}" if channels else "")]
    if fmtp:
        lines.append(f"a=fmtp:{pt} {fmtp}")
    return lines
