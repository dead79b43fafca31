// AutoCall: a call that is peer-to-peer for two and goes through the SFU from
// three, as the server's `media-route` says (docs/protocol.md "Media route").
//
// It joins the room once (`media: "auto"`) and drives two paths, a mesh Call
// and an SfuCall, both `managed`: only the current one is active. On a route
// change the new path is started while the old one keeps playing; a remote
// member's tile is handed the new path's stream only once that stream has
// decoded its first video frame (getStats framesDecoded on its receiver), and
// the old path is closed when every member has moved (or after
// SWITCH_TIMEOUT_MS). Nothing rings twice: membership events come from the
// room, never from the paths.
//
// On the SFU path it also picks the simulcast layer of every remote camera
// (adaptive stream): observe(userId, element) follows the element's rendered
// size (ResizeObserver), whether it is on screen (IntersectionObserver,
// document.visibilityState), and caps the layer when our own receive stats
// show loss. It reports the loudest remote member (`active-speaker`, from the
// receivers' audioLevel) and per-member quality (stats(userId)).
//
// Events: peer-joined, peer-left, remote-stream {userId, stream, path},
// remote-stream-ended, peer-state, peer-media, chat, route {route, from},
// route-complete {route, ms}, active-speaker {userId, level}, error.

import { Emitter } from './emitter.js';
import { onRoom, quiet } from './roomcall.js';
import { Call } from './call.js';
import { SfuCall } from './sfu.js';
import { RtcHubError } from './hub.js';

const SWITCH_TIMEOUT_MS = 10000;
const TEARDOWN_GRACE_MS = 2000;
const FIRST_FRAME_POLL_MS = 50;
const SPEAKER_POLL_MS = 400;
const LAYER_POLL_MS = 1000;
// Layer widths assumed for a 1280-wide camera (h, m = 1/2, l = 1/4): a tile
// gets the smallest layer at least as wide as the tile is rendered (device pixels).
const LAYER_WIDTH = { l: 320, m: 640, h: 1280 };
const ORDER = ['off', 'l', 'm', 'h'];

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export function layerForWidth(px) {
  for (const layer of ['l', 'm']) if (LAYER_WIDTH[layer] >= px) return layer;
  return 'h';
}

export class AutoCall extends Emitter {
  constructor(hub, roomId, opts = {}) {
    super();
    this.hub = hub;
    this.roomId = roomId;
    this.opts = opts;
    this.localStream = opts.localStream || null;
    this.displayName = opts.displayName;
    this.userId = opts.userId;
    this.mesh = new Call(hub, roomId, { ...opts, managed: true });
    this.sfu = new SfuCall(hub, roomId, { ...opts, managed: true });
    this.mode = 'auto';
    this.route = null;
    this.members = new Map();   // userId -> displayName
    this.shown = new Map();     // userId -> {path, stream}
    this._latest = new Map();   // userId -> {path, stream}: the newest stream a path offered
    this.speaker = null;
    this.switches = [];         // [{route, from, started, done}]
    this.views = new Map();     // userId -> {width, visible, observers}
    this.layerCap = 'h';        // lowered by our own receive loss
    this.started = false;
    this.ended = false;
    this._subs = [];
    this._timers = [];
    this._lastLoss = null;
    this._teardownTimer = null;
  }

  get micEnabled() { return this.mesh.micEnabled; }
  get cameraEnabled() { return this.mesh.cameraEnabled; }

  async start() {
    if (this.started) return this;
    this.started = true;
    const on = (type, fn) => onRoom(this, type, fn);
    on('room-info', this._onRoomInfo);
    on('user-joined', (m) => {
      if (m.userId === this.hub.userId) return;
      this.members.set(m.userId, m.displayName || m.userId);
      this.emit('peer-joined', { userId: m.userId, displayName: m.displayName });
    });
    on('user-left', (m) => {
      this.members.delete(m.userId);
      this.shown.delete(m.userId);
      this._latest.delete(m.userId);
      this._unobserve(m.userId);
      this.emit('peer-left', { userId: m.userId, reason: m.reason });
      this._maybeTeardown();
    });
    on('media-route', (m) => this._switch(m.route));
    for (const [path, call] of [['p2p', this.mesh], ['sfu', this.sfu]]) {
      call.on('remote-stream', (e) => this._onRemoteStream(path, e));
      call.on('remote-stream-ended', (e) => { if (path === this.route) this.emit('remote-stream-ended', e); });
      call.on('peer-state', (e) => { if (this._pathOf(e.userId) === path) this.emit('peer-state', { ...e, path }); });
      call.on('peer-media', (e) => { if (path === this.route) this.emit('peer-media', e); });
      call.on('chat', (e) => this.emit('chat', e));
      call.on('file-progress', (e) => this.emit('file-progress', e));
      call.on('file-received', (e) => this.emit('file-received', e));
      call.on('screen-share', (e) => { if (path === this.route) this.emit('screen-share', e); });
      call.on('error', (e) => this.emit('error', e));
    }
    await this.mesh.start();
    await this.sfu.start();
    const info = await this.hub.join(this.roomId, {
      userId: this.userId || this.hub.userId, displayName: this.displayName, media: 'auto',
    });
    this.mode = (info && info.media) || 'mesh';
    this._switch(info && info.route ? info.route : (this.mode === 'sfu' ? 'sfu' : 'p2p'));
    const onVis = () => this._updateLayers();
    document.addEventListener('visibilitychange', onVis);
    this._subs.push(['__doc', onVis]);
    this._timers.push(setInterval(() => quiet(this._pollSpeaker()), SPEAKER_POLL_MS));
    this._timers.push(setInterval(() => quiet(this._pollBandwidth()), LAYER_POLL_MS));
    return this;
  }

  _pathOf(userId) {
    const s = this.shown.get(userId);
    return s ? s.path : this.route;
  }

  _call(path) { return path === 'sfu' ? this.sfu : this.mesh; }

  // --------------------------------------------------------------- members

  _onRoomInfo(m) {
    const members = Array.isArray(m.members) ? m.members : (m.users || []).map((userId) => ({ userId }));
    const present = new Set();
    for (const mem of members) {
      if (mem.userId === this.hub.userId) continue;
      present.add(mem.userId);
      if (!this.members.has(mem.userId)) {
        this.members.set(mem.userId, mem.displayName || mem.userId);
        this.emit('peer-joined', { userId: mem.userId, displayName: mem.displayName });
      }
    }
    for (const id of [...this.members.keys()]) {
      if (!present.has(id)) { this.members.delete(id); this.shown.delete(id); this.emit('peer-left', { userId: id, reason: 'left' }); }
    }
    if (m.route && this.route && m.route !== this.route) this._switch(m.route);
  }

  _memberList() {
    return [...this.members].map(([userId, displayName]) => ({ userId, displayName }));
  }

  // ----------------------------------------------------------------- route

  _switch(route) {
    if (!route || route === this.route || this.ended) return;
    const from = this.route;
    this.route = route;
    this.switches.push({ route, from, started: performance.now(), done: null });
    this.emit('route', { route, from });
    if (route === 'sfu') {
      this.mesh.freeze();
      quiet(this.sfu.activate().catch((err) => this.emit('error', err)));
    } else {
      this.sfu.freeze();
      this.mesh.activate(this._memberList(), { newcomer: from === null });
    }
    // Streams the new path may already carry (a quick flap back): check them too.
    const call = this._call(route);
    if (route === 'sfu') for (const [userId, stream] of call.streams) this._verify(route, userId, stream);
    else for (const peer of call.peers.values()) if (peer.stream) this._verify(route, peer.userId, peer.stream);
    clearTimeout(this._teardownTimer);
    if (from === null) return;
    this._teardownTimer = setTimeout(() => this._teardown(), SWITCH_TIMEOUT_MS);
    this._maybeTeardown();
  }

  _maybeTeardown() {
    if (!this.route || this.switches.length < 2) return;
    const last = this.switches[this.switches.length - 1];
    if (last.done !== null) return;
    for (const userId of this.members.keys()) {
      const s = this.shown.get(userId);
      if (!s || s.path !== this.route) return;
    }
    // Every member's new stream decodes; give the app's <video> elements a
    // moment to paint from it before the old path stops.
    clearTimeout(this._teardownTimer);
    this._teardownTimer = setTimeout(() => this._teardown(), TEARDOWN_GRACE_MS);
  }

  _teardown() {
    clearTimeout(this._teardownTimer);
    const last = this.switches[this.switches.length - 1];
    if (!last || last.done !== null) return;
    last.done = performance.now();
    // Members whose new stream never got video (camera off): hand it over now.
    for (const [userId, latest] of this._latest) {
      const shown = this.shown.get(userId);
      if (latest.path !== this.route || !this.members.has(userId) || (shown && shown.path === this.route)) continue;
      this.shown.set(userId, latest);
      this.emit('remote-stream', { userId, displayName: this.members.get(userId), stream: latest.stream, path: latest.path });
    }
    // The old path goes only now: every tile plays the new one.
    if (this.route === 'sfu') this.mesh.deactivate();
    else this.sfu.deactivate();
    this.emit('route-complete', { route: this.route, ms: Math.round(last.done - last.started) });
  }

  _onRemoteStream(path, e) {
    if (e.source === 'screen') {
      if (path === this.route) this.emit('remote-stream', { ...e, path });
      return;
    }
    if (path !== this.route) return; // the old path's late changes
    this._verify(path, e.userId, e.stream);
  }

  /** Hand a stream to the app once it has decoded a video frame (audio-only: at once,
   * unless the tile still plays video from the old path: then the new path's
   * video, which follows in a moment, takes over, or the teardown hands it over). */
  async _verify(path, userId, stream) {
    const key = `${path}|${userId}`;
    const token = {};
    this._verifying = this._verifying || new Map();
    this._verifying.set(key, token);
    this._latest.set(userId, { path, stream });
    const video = stream.getVideoTracks()[0];
    const old = this.shown.get(userId);
    if (!video && old && old.path !== path
        && old.stream.getVideoTracks().some((t) => t.readyState === 'live')) return;
    const deadline = performance.now() + SWITCH_TIMEOUT_MS;
    while (video && !this.ended && this.route === path && this._verifying.get(key) === token
           && performance.now() < deadline) {
      const pc = this._pcFor(path, userId);
      let frames = 0;
      if (pc) {
        try {
          const report = await pc.getStats(video);
          report.forEach((s) => { if (s.type === 'inbound-rtp' && s.kind === 'video') frames = Math.max(frames, s.framesDecoded || 0); });
        } catch { /* the track's receiver went away */ }
      }
      if (frames > 0) break;
      await sleep(FIRST_FRAME_POLL_MS);
    }
    if (this.ended || this.route !== path || this._verifying.get(key) !== token || !this.members.has(userId)) return;
    this.shown.set(userId, { path, stream });
    this.emit('remote-stream', { userId, displayName: this.members.get(userId), stream, path });
    if (path === 'sfu') this._updateLayer(userId);
    this._maybeTeardown();
  }

  _pcFor(path, userId) {
    if (path === 'sfu') return this.sfu.sub;
    const peer = this.mesh.peers.get(userId);
    return peer ? peer.pc : null;
  }

  // ---------------------------------------------------------- media controls

  setMicEnabled(on) { this.mesh.setMicEnabled(on); this.sfu.setMicEnabled(on); }
  setCameraEnabled(on) { this.mesh.setCameraEnabled(on); this.sfu.setCameraEnabled(on); }

  async startScreenShare() {
    const screen = await navigator.mediaDevices.getDisplayMedia({ video: true, audio: false });
    return this.route === 'sfu' ? this.sfu.startScreenShare(screen) : this.mesh.startScreenShare(screen);
  }

  stopScreenShare() { this.mesh.stopScreenShare(); this.sfu.stopScreenShare(); }

  /** Chat through the server (works on both paths, and during a switch). */
  sendChat(text) {
    quiet(this.hub.send({ type: 'message', roomId: this.roomId, data: { t: 'chat', text: String(text) } }));
    return this.members.size;
  }

  async sendFile(file, opts) {
    if (this.route !== 'p2p') throw new RtcHubError('unsupported', 'file transfer needs a peer-to-peer call (two people)');
    return this.mesh.sendFile(file, opts);
  }

  renegotiate(userId) {
    if (this._pathOf(userId) === 'sfu') this.sfu.renegotiate();
    else if (this.mesh.peers.has(userId)) this.mesh.renegotiate(userId);
  }

  // ------------------------------------------------------- adaptive layers

  /** Follow `element` (the tile of userId) to pick its simulcast layer. */
  observe(userId, element) {
    this._unobserve(userId);
    const view = { width: element.clientWidth || 0, visible: true, observers: [] };
    this.views.set(userId, view);
    const ro = new ResizeObserver(() => {
      view.width = element.clientWidth * (window.devicePixelRatio || 1);
      this._updateLayer(userId);
    });
    ro.observe(element);
    const io = new IntersectionObserver((entries) => {
      for (const e of entries) view.visible = e.isIntersecting;
      this._updateLayer(userId);
    });
    io.observe(element);
    view.observers.push(ro, io);
    this._updateLayer(userId);
  }

  _unobserve(userId) {
    const view = this.views.get(userId);
    if (!view) return;
    for (const o of view.observers) o.disconnect();
    this.views.delete(userId);
  }

  layerFor(userId) {
    const view = this.views.get(userId);
    if (!view) return null;
    if (this.opts.adaptive === false) return 'h'; // every tile at full quality (the bench's baseline)
    if (!view.visible || document.visibilityState === 'hidden') return 'off';
    const want = layerForWidth(view.width);
    return ORDER.indexOf(want) > ORDER.indexOf(this.layerCap) ? this.layerCap : want;
  }

  _updateLayer(userId) {
    const layer = this.layerFor(userId);
    if (layer) this.sfu.setLayer(userId, layer);
  }

  _updateLayers() {
    for (const userId of this.views.keys()) this._updateLayer(userId);
  }

  /** Our own downlink: loss above 5 % lowers the layer cap one step, a clean
   * 10 s raises it again (availableIncomingBitrate, where the browser has it,
   * caps by the layers' bitrates). */
  async _pollBandwidth() {
    const pc = this.sfu.sub;
    if (!pc || this.route !== 'sfu') return;
    const report = await pc.getStats();
    let lost = 0;
    let got = 0;
    let avail = null;
    report.forEach((s) => {
      if (s.type === 'inbound-rtp' && s.kind === 'video') { lost += s.packetsLost || 0; got += s.packetsReceived || 0; }
      if (s.type === 'candidate-pair' && s.nominated && typeof s.availableIncomingBitrate === 'number') avail = s.availableIncomingBitrate;
    });
    const prev = this._lastLoss;
    this._lastLoss = { lost, got, t: performance.now(), clean: prev ? prev.clean : performance.now() };
    if (!prev) return;
    const dl = lost - prev.lost;
    const dg = got - prev.got;
    const loss = dg + dl > 0 ? dl / (dg + dl) : 0;
    let cap = this.layerCap;
    if (loss > 0.05 || (avail !== null && avail < 300_000)) {
      cap = ORDER[Math.max(1, ORDER.indexOf(cap) - 1)];
      this._lastLoss.clean = performance.now();
    } else if (loss > 0.01) {
      this._lastLoss.clean = performance.now();
    } else if (performance.now() - this._lastLoss.clean > 10000 && cap !== 'h') {
      cap = ORDER[ORDER.indexOf(cap) + 1];
      this._lastLoss.clean = performance.now();
    }
    if (cap !== this.layerCap) {
      this.layerCap = cap;
      this._updateLayers();
    }
  }

  // ---------------------------------------------------------- active speaker

  async _pollSpeaker() {
    let best = null;
    for (const [userId, { path, stream }] of this.shown) {
      const audio = stream.getAudioTracks()[0];
      const pc = audio && this._pcFor(path, userId);
      if (!pc) continue;
      let level = 0;
      try {
        const report = await pc.getStats(audio);
        report.forEach((s) => { if (s.type === 'inbound-rtp' && s.kind === 'audio') level = Math.max(level, s.audioLevel || 0); });
      } catch { continue; }
      if (level > 0.02 && (!best || level > best.level)) best = { userId, level };
    }
    if (best && best.userId !== this.speaker) {
      this.speaker = best.userId;
      this.emit('active-speaker', best);
    }
  }

  // ------------------------------------------------------------------ stats

  /** Quality of one remote member's media as shown now: path (P2P / SFU / TURN),
   * resolution, fps, bitrate (kbit/s), packet loss (%), the SFU layer asked for. */
  async stats(userId) {
    const shown = this.shown.get(userId);
    const path = shown ? shown.path : this.route;
    const pc = this._pcFor(path, userId);
    if (!pc) throw new RtcHubError('peer-not-found', `no media from ${userId} yet`);
    const base = path === 'sfu' ? await this.sfu.stats(userId) : await this.mesh.stats(userId);
    const out = { ...base, path, pathLabel: path === 'sfu' ? 'SFU' : 'P2P' };
    if (base.localCandidateType === 'relay' || base.remoteCandidateType === 'relay') out.pathLabel = 'TURN';
    const video = shown && shown.stream.getVideoTracks()[0];
    if (video) {
      const report = await pc.getStats(video);
      report.forEach((s) => {
        if (s.type !== 'inbound-rtp' || s.kind !== 'video') return;
        out.width = s.frameWidth || null;
        out.height = s.frameHeight || null;
        out.fps = s.framesPerSecond ?? null;
        out.framesDecoded = s.framesDecoded || 0;
        const prev = this._videoPrev && this._videoPrev.get(userId);
        const t = s.timestamp;
        if (prev && t > prev.t) {
          out.videoKbps = Math.round(((s.bytesReceived - prev.bytes) * 8) / (t - prev.t));
          const dl = (s.packetsLost || 0) - prev.lost;
          const dg = (s.packetsReceived || 0) - prev.got;
          out.lossPct = dg + dl > 0 ? Math.round((1000 * Math.max(0, dl)) / (dg + dl)) / 10 : 0;
        }
        this._videoPrev = this._videoPrev || new Map();
        this._videoPrev.set(userId, { t, bytes: s.bytesReceived || 0, lost: s.packetsLost || 0, got: s.packetsReceived || 0 });
      });
    }
    out.layer = path === 'sfu' ? (this.sfu.layers.get(userId) || null) : null;
    return out;
  }

  async candidatePairs() {
    const out = [];
    for (const peer of this.mesh.peers.values()) {
      const report = await peer.pc.getStats();
      report.forEach((s) => {
        if (s.type === 'transport' && s.selectedCandidatePairId) {
          const pair = report.get(s.selectedCandidatePairId);
          const l = pair && report.get(pair.localCandidateId);
          const r = pair && report.get(pair.remoteCandidateId);
          if (l && r) out.push({ path: 'p2p', userId: peer.userId, local: l.address || l.ip, remote: r.address || r.ip });
        }
      });
    }
    for (const p of await this.sfu.candidatePairs()) out.push({ path: 'sfu', ...p });
    return out;
  }

  hangup() {
    if (this.ended) return;
    this.ended = true;
    for (const [type, h] of this._subs) {
      if (type === '__doc') document.removeEventListener('visibilitychange', h);
      else this.hub.off(type, h);
    }
    for (const t of this._timers) clearInterval(t);
    clearTimeout(this._teardownTimer);
    for (const userId of [...this.views.keys()]) this._unobserve(userId);
    this.mesh.hangup();
    this.sfu.hangup();
    this.emit('ended', {});
  }
}
