// SfuCall: a room's call through the SFU (Janus), with the same events as Call.
//
// One publishing RTCPeerConnection (our camera, microphone and an optional
// screen share, each a track of its own) and one subscribing
// RTCPeerConnection that carries every other member's tracks (Janus
// multistream). rtchub relays the SDP and candidates (docs/protocol.md
// "SFU media"): we offer to publish, the server offers what we subscribe to.
//
// The camera is sent as three VP8 simulcast layers (full, 1/2 and 1/4 size);
// the SFU forwards the one that suits each subscriber. When the SFU that
// holds the room dies, the server says `media-reset`: both connections are
// dropped and made again (publish, then subscribe to what the room
// announces), without the app doing anything.
//
// Events (as Call's): peer-joined, remote-stream {userId, stream}, peer-state,
// peer-left, peer-media {userId, mic, camera, screen}, screen-share,
// plus remote-stream-ended {userId, source}, media-reset {reason}. Chat is a
// room `message` through the server (the hub's `message` event).

import { Emitter } from './emitter.js';
import { onRoom, quiet } from './roomcall.js';
import { RtcHubError } from './hub.js';

export const SIMULCAST = [
  { rid: 'h', maxBitrate: 900_000 },
  { rid: 'm', maxBitrate: 300_000, scaleResolutionDownBy: 2 },
  { rid: 'l', maxBitrate: 100_000, scaleResolutionDownBy: 4 },
];


export class SfuCall extends Emitter {
  constructor(hub, roomId, opts = {}) {
    super();
    this.hub = hub;
    this.roomId = roomId;
    this.localStream = opts.localStream || null;
    this.displayName = opts.displayName;
    this.userId = opts.userId;
    this.simulcast = opts.simulcast !== false;
    // autoSubscribe: false makes a publish-only member (a camera, a bot):
    // it receives nothing unless subscribe() is called.
    this.autoSubscribe = opts.autoSubscribe !== false;
    this._iceServersOpt = opts.iceServers || null;
    this._iceServers = [];
    this.mode = 'sfu';
    this.pub = null;
    this.sub = null;
    this.tracks = new Map();     // trackId -> {trackId, userId, kind, source, muted}
    this.published = new Map();  // mid -> {trackId, kind, source}
    this.midTrack = new Map();   // subscriber mid -> trackId
    this.streams = new Map();    // userId -> MediaStream (their camera + microphone)
    this.screenTrack = null;
    this.micEnabled = true;
    this.cameraEnabled = true;
    this.resets = 0;
    this.started = false;
    this.ended = false;
    this._subs = [];
    this._pubChain = Promise.resolve();
    this._subChain = Promise.resolve();
    this._answerWaiter = null;
    this._members = new Set();
    // managed: an AutoCall joined the room and switches this path on and off.
    this.managed = !!opts.managed;
    this.active = !this.managed;
    this.layers = new Map();     // userId -> the simulcast layer asked for (h, m, l, off)
    this._sentLayer = new Map(); // trackId -> the layer last sent to the server
  }

  // ------------------------------------------------------------------ public

  async start() {
    if (this.started) return this;
    this.started = true;
    this._iceServers = this._iceServersOpt || await this.hub.iceServers();
    const on = (type, fn) => onRoom(this, type, fn);
    on('room-info', this._onRoomInfo);
    on('user-joined', (m) => { this._members.add(m.userId); this.emit('peer-joined', { userId: m.userId, displayName: m.displayName }); });
    on('user-left', (m) => this._peerGone(m.userId, m.reason));
    on('tracks', this._onTracks);
    on('tracks-published', this._onPublished);
    on('tracks-unpublished', this._onUnpublished);
    on('track-muted', this._onMuted);
    on('publish-answer', (m) => { if (this._answerWaiter) this._answerWaiter(m); });
    on('subscribe-offer', (m) => this._queueSub(() => this._answerOffer(m)));
    on('media-candidate', this._onCandidate);
    on('media-reset', (m) => this._reset(m.reason));
    const onState = ({ state }) => {
      // A new session (the old one expired): the server forgot our media; start over.
      if (!this.ended && state === 'rejoined') this._reset('rejoined');
    };
    this.hub.on('state', onState);
    this._subs.push(['state', onState]);
    if (this.managed) return this;
    const info = await this.hub.join(this.roomId, {
      userId: this.userId || this.hub.userId, displayName: this.displayName, media: 'sfu',
    });
    this.mode = info && info.media ? info.media : 'sfu';
    if (this.mode !== 'sfu') {
      throw new RtcHubError('wrong-media-mode', `room ${this.roomId} is a ${this.mode} room`, { media: this.mode });
    }
    if (this.localStream && this.localStream.getTracks().length) await this._queuePub(() => this._publish());
    return this;
  }

  /** (managed) Media goes through the SFU from now on: publish, subscribe to everyone. */
  async activate() {
    if (this.active) return;
    this.active = true;
    this._want([...this.tracks.values()]);
    if ((this.localStream && this.localStream.getTracks().length) || this.screenTrack) {
      await this._queuePub(() => this._publish());
    }
  }

  /** (managed) Keep playing what we receive, but subscribe to nothing new. */
  freeze() {
    this.active = false;
  }

  /** (managed) Media goes peer-to-peer now: unpublish (Janus keeps no publisher of ours). */
  deactivate() {
    this.active = false;
    this.streams.clear();
    this._sentLayer.clear();
    if (this.sub) {
      const sub = this.sub;
      this.sub = null;
      this.midTrack.clear();
      quiet(this.hub.send({ type: 'unsubscribe', roomId: this.roomId, all: true }));
      sub.close();
    }
    quiet(this._queuePub(async () => {
      if (!this.pub) return;
      const pc = this.pub;
      this.pub = null;
      this.published.clear();
      await this.hub.send({ type: 'unpublish', roomId: this.roomId });
      pc.close();
    }));
  }

  /**
   * Adaptive simulcast: forward this layer of userId's camera to us
   * (`h` full, `m` half, `l` quarter size, `off` no video). Sent as
   * `subscribe-layer` when the track is (or becomes) part of our subscription.
   */
  setLayer(userId, layer) {
    this.layers.set(userId, layer);
    this._applyLayer(userId);
  }

  _applyLayer(userId) {
    const layer = this.layers.get(userId);
    if (!layer || !this.active) return;
    const subscribed = new Set(this.midTrack.values());
    for (const t of this.tracks.values()) {
      if (t.userId !== userId || t.kind !== 'video' || t.source !== 'camera' || !subscribed.has(t.trackId)) continue;
      if (this._sentLayer.get(t.trackId) === layer) continue;
      this._sentLayer.set(t.trackId, layer);
      this.hub.send({ type: 'subscribe-layer', roomId: this.roomId, trackId: t.trackId, layer })
        .catch(() => this._sentLayer.delete(t.trackId));
    }
  }

  /** Chat goes through the server as a room `message` (there are no data channels to
   * other members): apps read it from the hub's `message` events. */
  sendChat(text) {
    quiet(this.hub.send({ type: 'message', roomId: this.roomId, data: { t: 'chat', text: String(text) } }));
    return this._members.size;
  }

  async sendFile() {
    throw new RtcHubError('unsupported', 'file transfer needs peer-to-peer data channels (mesh rooms)');
  }

  setMicEnabled(on) {
    this.micEnabled = !!on;
    this._setEnabled('audio', this.micEnabled);
  }

  setCameraEnabled(on) {
    this.cameraEnabled = !!on;
    this._setEnabled('video', this.cameraEnabled);
  }

  async startScreenShare(stream) {
    const screen = stream || await navigator.mediaDevices.getDisplayMedia({ video: true, audio: false });
    const track = screen.getVideoTracks()[0];
    if (this.screenTrack) this.screenTrack.stop();
    this.screenTrack = track;
    track.addEventListener('ended', () => { if (this.screenTrack === track) this.stopScreenShare(); });
    await this._queuePub(() => this._publish());
    this.emit('screen-share', { active: true, stream: screen });
    return screen;
  }

  stopScreenShare() {
    const track = this.screenTrack;
    if (!track) return;
    this.screenTrack = null;
    track.stop();
    quiet(this._queuePub(() => this._publish()));
    this.emit('screen-share', { active: false });
  }

  /** Ask for a fresh ICE negotiation on both connections (RFC 8445 section 9). */
  renegotiate() {
    if (this.pub) quiet(this._queuePub(() => this._publish({ iceRestart: true })));
    if (this.sub) quiet(this.hub.send({ type: 'ice-restart', roomId: this.roomId, pc: 'subscribe' }));
  }

  /** Figures of the subscriber connection (which carries userId's media), as Call.stats(). */
  async stats(userId) {
    const pc = userId ? this.sub : this.pub;
    if (!pc) throw new RtcHubError('peer-not-found', 'no media yet');
    const report = await pc.getStats();
    let pair = null;
    let inBytes = 0;
    let outBytes = 0;
    let now = 0;
    report.forEach((s) => {
      if (s.type === 'transport' && s.selectedCandidatePairId) pair = report.get(s.selectedCandidatePairId) || pair;
      if (s.type === 'inbound-rtp') inBytes += s.bytesReceived || 0;
      if (s.type === 'outbound-rtp') outBytes += s.bytesSent || 0;
      if (s.timestamp > now) now = s.timestamp;
    });
    const local = pair && report.get(pair.localCandidateId);
    const remote = pair && report.get(pair.remoteCandidateId);
    const prev = pc._rtchubLast;
    pc._rtchubLast = { ts: now, inBytes, outBytes };
    const rate = (a, b) => (prev && now > prev.ts ? Math.round(((a - b) * 8) / (now - prev.ts)) : null);
    return {
      mode: 'sfu',
      connectionState: pc.connectionState,
      iceConnectionState: pc.iceConnectionState,
      signalingState: pc.signalingState,
      localCandidateType: local ? local.candidateType : null,
      remoteCandidateType: remote ? remote.candidateType : null,
      localAddress: local ? (local.address || local.ip || null) : null,
      remoteAddress: remote ? (remote.address || remote.ip || null) : null,
      rtt: pair && typeof pair.currentRoundTripTime === 'number' ? Math.round(pair.currentRoundTripTime * 1000) : null,
      bitrateKbps: prev ? rate(inBytes, prev.inBytes) : null,
      sendBitrateKbps: prev ? rate(outBytes, prev.outBytes) : null,
      bytesReceived: inBytes,
      bytesSent: outBytes,
    };
  }

  /** Every selected candidate pair of both connections (tests check where media goes). */
  async candidatePairs() {
    const out = [];
    for (const pc of [this.pub, this.sub]) {
      if (!pc) continue;
      const report = await pc.getStats();
      report.forEach((s) => {
        if (s.type === 'transport' && s.selectedCandidatePairId) {
          const pair = report.get(s.selectedCandidatePairId);
          const l = pair && report.get(pair.localCandidateId);
          const r = pair && report.get(pair.remoteCandidateId);
          if (l && r) out.push({ local: l.address || l.ip, remote: r.address || r.ip });
        }
      });
    }
    return out;
  }

  hangup() {
    if (this.ended) return;
    this.ended = true;
    for (const [type, h] of this._subs) this.hub.off(type, h);
    this._subs = [];
    this._closePcs();
    if (this.screenTrack) this.screenTrack.stop();
    quiet(this.hub.leave(this.roomId));
    this.emit('ended', {});
  }

  // ---------------------------------------------------------------- publish

  _queuePub(fn) {
    const p = this._pubChain.then(fn);
    this._pubChain = p.catch(() => {});
    return p;
  }

  _queueSub(fn) {
    const p = this._subChain.then(fn);
    this._subChain = p.catch((err) => this.emit('error', err));
    return p;
  }

  _newPc(kind) {
    const pc = new RTCPeerConnection({ iceServers: this._iceServers });
    pc.addEventListener('icecandidate', (e) => {
      const c = e.candidate;
      quiet(this.hub.send({
        type: 'media-candidate', roomId: this.roomId, pc: kind,
        candidate: c && c.candidate ? { candidate: c.candidate, sdpMid: c.sdpMid, sdpMLineIndex: c.sdpMLineIndex } : null,
      }));
    });
    pc.addEventListener('connectionstatechange', () => {
      if (pc !== this.pub && pc !== this.sub) return;
      if (kind === 'subscribe') {
        for (const userId of this.streams.keys()) this.emit('peer-state', { userId, state: pc.connectionState });
      }
      if (pc.connectionState === 'failed') this.renegotiate();
    });
    return pc;
  }

  async _publish({ iceRestart = false } = {}) {
    if (this.ended) return;
    const tracks = [];
    for (const t of this.localStream ? this.localStream.getTracks() : []) tracks.push([t, t.kind === 'audio' ? 'microphone' : 'camera']);
    if (this.screenTrack) tracks.push([this.screenTrack, 'screen']);
    if (!tracks.length) {
      if (this.pub) { quiet(this.hub.send({ type: 'unpublish', roomId: this.roomId })); this.pub.close(); this.pub = null; }
      return;
    }
    let pc = this.pub;
    if (!pc) {
      pc = this.pub = this._newPc('publish');
    }
    // Keep the transceivers in step with the tracks: one per track, in order.
    const used = new Set();
    for (const [track, source] of tracks) {
      let tr = pc.getTransceivers().find((x) => x._rtchubSource === source && !x.stopped && x.currentDirection !== 'stopped');
      if (!tr) {
        const init = { direction: 'sendonly', streams: this.localStream ? [this.localStream] : [] };
        if (track.kind === 'video' && this.simulcast && source === 'camera') init.sendEncodings = SIMULCAST.map((e) => ({ ...e }));
        tr = pc.addTransceiver(track, init);
        tr._rtchubSource = source;
      } else if (tr.sender.track !== track) {
        await tr.sender.replaceTrack(track);
      }
      used.add(tr);
    }
    for (const tr of pc.getTransceivers()) {
      if (!used.has(tr) && tr.currentDirection !== 'stopped' && !tr.stopped) tr.stop();
    }
    const offer = await pc.createOffer({ iceRestart });
    await pc.setLocalDescription(offer);
    const sources = {};
    for (const tr of pc.getTransceivers()) if (tr.mid && tr._rtchubSource && !tr.stopped) sources[tr.mid] = tr._rtchubSource;
    const answer = new Promise((resolve) => { this._answerWaiter = resolve; });
    await this.hub.send({ type: 'publish', roomId: this.roomId, sdp: pc.localDescription.sdp, sources });
    const msg = await answer;
    this._answerWaiter = null;
    if (pc !== this.pub) return;
    await pc.setRemoteDescription({ type: 'answer', sdp: msg.sdp });
    this.published = new Map((msg.tracks || []).map((t) => [t.mid, t]));
    this._setEnabled('audio', this.micEnabled);
    this._setEnabled('video', this.cameraEnabled);
  }

  _setEnabled(kind, on) {
    if (this.localStream) for (const t of this.localStream.getTracks()) if (t.kind === kind) t.enabled = on;
    const source = kind === 'audio' ? 'microphone' : 'camera';
    for (const t of this.published.values()) {
      if (t.source === source) quiet(this.hub.send({ type: 'mute', roomId: this.roomId, trackId: t.trackId, muted: !on }));
    }
  }

  // -------------------------------------------------------------- subscribe

  _onRoomInfo(m) {
    this._members = new Set((m.members || []).map((x) => x.userId));
    for (const mem of m.members || []) this.emit('peer-joined', { userId: mem.userId, displayName: mem.displayName });
  }

  _onTracks(m) {
    this.tracks = new Map((m.tracks || []).map((t) => [t.trackId, t]));
    this._want([...this.tracks.values()]);
    for (const t of this.tracks.values()) this._mediaState(t.userId);
  }

  _onPublished(m) {
    for (const t of m.tracks || []) this.tracks.set(t.trackId, t);
    this._want(m.tracks || []);
    this._mediaState(m.userId);
  }

  /** Receive these tracks (trackIds), also with autoSubscribe: false. */
  subscribe(trackIds) {
    return this.hub.send({ type: 'subscribe', roomId: this.roomId, tracks: trackIds });
  }

  _want(tracks) {
    if (!this.active || !this.autoSubscribe) return;
    const me = this.hub.userId;
    const ids = tracks.filter((t) => t.userId !== me).map((t) => t.trackId);
    if (ids.length) quiet(this.hub.send({ type: 'subscribe', roomId: this.roomId, tracks: ids }));
  }

  _onUnpublished(m) {
    for (const id of m.tracks || []) {
      const t = this.tracks.get(id);
      this.tracks.delete(id);
      if (t && t.source === 'screen') this.emit('remote-stream-ended', { userId: t.userId, source: 'screen', trackId: id });
      for (const [mid, tid] of this.midTrack) {
        if (tid !== id) continue;
        this.midTrack.delete(mid);
        const stream = t && this.streams.get(t.userId);
        const tr = this.sub && this.sub.getTransceivers().find((x) => x.mid === mid);
        if (stream && tr) stream.removeTrack(tr.receiver.track);
      }
    }
    this._mediaState(m.userId);
  }

  _onMuted(m) {
    const t = this.tracks.get(m.trackId);
    if (t) t.muted = !!m.muted;
    this._mediaState(m.userId);
  }

  _mediaState(userId) {
    if (!userId || userId === this.hub.userId) return;
    const mine = [...this.tracks.values()].filter((t) => t.userId === userId);
    const live = (src) => mine.some((t) => t.source === src && !t.muted);
    this.emit('peer-media', { userId, mic: live('microphone'), camera: live('camera'), screen: live('screen') });
  }

  async _answerOffer(m) {
    if (this.ended) return;
    if (!this.sub) {
      const pc = this.sub = this._newPc('subscribe');
      pc.addEventListener('track', (e) => this._onTrack(pc, e));
    }
    const pc = this.sub;
    for (const s of m.streams || []) if (s.trackId) this.midTrack.set(String(s.mid), s.trackId);
    await pc.setRemoteDescription({ type: 'offer', sdp: m.sdp });
    await pc.setLocalDescription(await pc.createAnswer());
    await this.hub.send({ type: 'subscribe-answer', roomId: this.roomId, sdp: pc.localDescription.sdp });
    // A transceiver reused for another track: attach the track to its new owner.
    for (const tr of pc.getTransceivers()) if (tr.mid && this.midTrack.has(tr.mid)) this._place(tr);
  }

  _onTrack(pc, e) {
    if (pc !== this.sub) return;
    this._place(e.transceiver);
  }

  _place(tr) {
    const trackId = this.midTrack.get(tr.mid);
    const info = trackId && this.tracks.get(trackId);
    if (!info) return;
    const track = tr.receiver.track;
    if (info.source === 'screen') {
      const stream = new MediaStream([track]);
      this.emit('remote-stream', { userId: info.userId, stream, source: 'screen', trackId });
      return;
    }
    let stream = this.streams.get(info.userId);
    const fresh = !stream;
    if (!stream) { stream = new MediaStream(); this.streams.set(info.userId, stream); }
    if (stream.getTracks().includes(track)) return;
    for (const old of stream.getTracks()) if (old.kind === track.kind) stream.removeTrack(old);
    stream.addTrack(track);
    if (track.kind === 'video') queueMicrotask(() => this._applyLayer(info.userId));
    // A new MediaStream object for each change: <video> elements re-read srcObject.
    const view = new MediaStream(stream.getTracks());
    this.streams.set(info.userId, view);
    this.emit('remote-stream', { userId: info.userId, stream: view, fresh });
  }

  _onCandidate(m) {
    const pc = m.pc === 'publish' ? this.pub : this.sub;
    if (!pc) return;
    quiet(pc.addIceCandidate(m.candidate || null));
  }

  _peerGone(userId, reason) {
    this._members.delete(userId);
    this.streams.delete(userId);
    for (const [id, t] of this.tracks) if (t.userId === userId) this.tracks.delete(id);
    this.emit('peer-left', { userId, reason });
  }

  // ---------------------------------------------------------------- failure

  _closePcs() {
    for (const pc of [this.pub, this.sub]) if (pc) try { pc.close(); } catch { /* closed */ }
    this.pub = null;
    this.sub = null;
    this.midTrack.clear();
    this.published.clear();
  }

  _reset(reason) {
    // The SFU that held the room is gone (or our session was replaced): every
    // track in the room is void. Publish again; the room announces the others.
    this.resets += 1;
    this._closePcs();
    this.tracks.clear();
    this.streams.clear();
    if (this._answerWaiter) this._answerWaiter({ sdp: null });
    this._subChain = Promise.resolve();
    this.emit('media-reset', { reason });
    const retry = async (attempt) => {
      try {
        await this._queuePub(() => this._publish());
      } catch (err) {
        if (this.ended || attempt > 20) { this.emit('error', err); return; }
        setTimeout(() => quiet(retry(attempt + 1)), Math.min(2000, 200 * (attempt + 1)));
      }
    };
    if ((this.localStream || this.screenTrack) && this.active) quiet(retry(0));
  }
}
