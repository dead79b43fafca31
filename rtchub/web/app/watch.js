// /watch?room=R: plays the room's HLS broadcast (/live/R/index.m3u8) with hls.js,
// and shows how far behind live the viewer is.
//
// Two numbers, both from hls.js:
// - behind the live edge: hls.latency, seconds between the newest media in the
//   playlist and what is on screen (what a player can catch up on);
// - behind real time: now minus hls.playingDate, the wall-clock time of the frame on
//   screen, from the playlist's EXT-X-PROGRAM-DATE-TIME (RFC 8216 section 4.3.2.6),
//   which includes the encoder and the segmenting: what a viewer actually lags the call.

const params = new URLSearchParams(location.search);
const room = params.get("room") || "";
const video = document.getElementById("player");
const statusEl = document.getElementById("status");
const delayEl = document.getElementById("delay");
document.getElementById("room-name").textContent = room || "(no room)";

function status(state, text) {
  statusEl.dataset.state = state;
  statusEl.textContent = text;
}

const src = `/live/${encodeURIComponent(room)}/index.m3u8`;
const watch = { room, src, latency: null, behindRealTime: null, errors: [] };
window.rtchubWatch = watch;

function showDelay(hls) {
  const edge = hls ? hls.latency : null;
  const date = hls ? hls.playingDate : null;
  watch.latency = Number.isFinite(edge) ? edge : null;
  watch.behindRealTime = date ? (Date.now() - date.getTime()) / 1000 : null;
  const parts = [];
  if (watch.latency !== null) parts.push(`${watch.latency.toFixed(1)} s behind the live edge`);
  if (watch.behindRealTime !== null) parts.push(`${watch.behindRealTime.toFixed(1)} s behind real time`);
  delayEl.textContent = parts.length ? `Behind live: ${parts.join(", ")}` : "Behind live: –";
}

if (!room) {
  status("error", "No room");
} else if (window.Hls && window.Hls.isSupported()) {
  const hls = new window.Hls({ lowLatencyMode: false, liveSyncDurationCount: 2 });
  watch.hls = hls;
  hls.on(window.Hls.Events.MANIFEST_PARSED, () => {
    status("connected", "Live");
    video.play().catch(() => {});
  });
  hls.on(window.Hls.Events.ERROR, (_event, data) => {
    watch.errors.push(`${data.type}: ${data.details}`);
    if (data.fatal) {
      status("error", "Not live");
      // The broadcast may not have started yet: try again shortly.
      setTimeout(() => { hls.loadSource(src); hls.startLoad(); }, 2000);
    }
  });
  hls.loadSource(src);
  hls.attachMedia(video);
  setInterval(() => showDelay(hls), 500);
} else if (video.canPlayType("application/vnd.apple.mpegurl")) {
  video.src = src; // Safari plays HLS natively
  video.addEventListener("playing", () => status("connected", "Live"));
} else {
  status("error", "This browser cannot play HLS");
}
