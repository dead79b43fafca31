// Call: a mesh of RTCPeerConnections, one per other member of a room.
//
// Negotiation follows the W3C "perfect negotiation" pattern
// (https://w3c.github.io/webrtc-pc/#perfect-negotiation-example): either side
// may offer whenever `negotiationneeded` fires; when two offers cross, the
// polite peer rolls its own back and answers, the impolite one ignores the
// incoming offer. Which side is polite must be agreed without talking, so it
// is derived from the two userIds (the larger one is polite).

import { Emitter } from './emitter.js';
import { onRoom, quiet } from './roomcall.js';
import { RtcHubError } from './hub.js';

const CHUNK = 16 * 1024; // fits every browser's SCTP message limit
const HIGH_WATER = 4 * 1024 * 1024;
const LOW_WATER = 1024 * 1024;
const MAX_PEERS = 5; // a 6-person mesh
const WAIT_FOR_OFFER_MS = 8000;

function hex(buf) {
  return Array.from(new Uint8Array(buf), (b) => b.toString(16).padStart(2, '0')).join('');
}

async function sha256(buf) {
  return hex(await crypto.subtle.digest('SHA-256', buf));
}

function randomId() {
  const a = new Uint8Array(6);
  crypto.getRandomValues(a);
  return hex(a.buffer);
}


export class Call extends Emitter {
  constructor(hub, roomId, opts = {}) {
    super();
    this.hub = hub;
    this.roomId = roomId;
    this.localStream = opts.localStream || null;
    this.displayName = opts.displayName;
    this.userId = opts.userId;
    this.iceTransportPolicy = opts.iceTransportPolicy || 'all';
    // The media mode asked for if this join creates the room (the server decides).
    this.media = opts.media || undefined;
    this.mode = 'mesh';
    // managed: an AutoCall joined the room and switches this path on and off
    // (activate / deactivate) as the server's media-route says.
    this.managed = !!opts.managed;
    this.active = !this.managed;
    this._iceServersOpt = opts.iceServers || null;
    this._iceServers = [];
    this.peers = new Map();
    this.micEnabled = true;
    this.cameraEnabled = true;
    this.screenTrack = null;
    this.started = false;
    this.ended = false;
    this.collisions = 0;
    this._warnedFull = false;
    this._subs = [];
  }

  // ------------------------------------------------------------------ public

  async start() {
    if (this.started) return this;
    this.started = true;
    this._iceServers = this._iceServersOpt || await this.hub.iceServers();
    const sub = (type, fn) => onRoom(this, type, fn);
    sub('room-info', this._onRoomInfo);
    sub('user-joined', this._onUserJoined);
    sub('user-left', this._onUserLeft);
    sub('offer', this._onSignal);
    sub('answer', this._onSignal);
    sub('candidate', this._onSignal);
    sub('signal', this._onSignal);
    const onState = ({ state }) => {
      if (this.ended) return;
      // A new session: every peer was told we left or rejoined; start over.
      // The room-info of the automatic rejoin then connects everyone again.
      if (state === 'rejoined') this._closeAllPeers('rejoined');
    };
    this.hub.on('state', onState);
    this._subs.push(['state', onState]);
    if (this.managed) return this;
    const info = await this.hub.join(this.roomId, {
      userId: this.userId || this.hub.userId, displayName: this.displayName, media: this.media,
    });
    this.mode = (info && info.media) || 'mesh';
    return this;
  }

  /** (managed) Media goes peer-to-peer from now on: connect to `members`
   * ([{userId, displayName}]); the member whose userId sorts first offers. */
  activate(members, { newcomer = false } = {}) {
    this.active = true;
    const me = String(this.hub.userId);
    for (const m of members) {
      if (m.userId === this.hub.userId || this.peers.has(m.userId)) continue;
      // A newcomer offers to everyone (as in a plain mesh); on a route switch
      // everyone is already there and the smaller userId offers.
      this._addPeer(m.userId, m.displayName, newcomer || me < String(m.userId));
    }
  }

  /** (managed) Keep the peer connections playing, but make no new ones. */
  freeze() {
    this.active = false;
  }

  /** (managed) Media goes another way now: close every peer connection, quietly. */
  deactivate() {
    this.active = false;
    for (const userId of [...this.peers.keys()]) this._closePeer(userId, 'route', false);
  }

  sendChat(text) {
    const data = JSON.stringify({ t: 'chat', text: String(text) });
    let sent = 0;
    for (const peer of this.peers.values()) {
      if (peer.dc && peer.dc.readyState === 'open') {
        peer.dc.send(data);
        sent += 1;
      }
    }
    return sent;
  }

  /** Send a File (or a Blob with `name`) to every peer, or to `to`. Resolves once all confirmed the SHA-256. */
  async sendFile(file, { to } = {}) {
    const buf = await file.arrayBuffer();
    const digest = await sha256(buf);
    const name = file.name || 'file';
    const mime = file.type || 'application/octet-stream';
    const targets = [...this.peers.values()].filter((p) => (to ? p.userId === to : true));
    if (!targets.length) throw new RtcHubError('peer-not-found', to ? `no peer ${to}` : 'nobody to send to');
    await Promise.all(targets.map((peer) => this._sendFileTo(peer, { name, mime, buf, digest })));
    return { sha256: digest, name, size: buf.byteLength };
  }

  setMicEnabled(on) {
    this.micEnabled = !!on;
    if (this.localStream) for (const t of this.localStream.getAudioTracks()) t.enabled = this.micEnabled;
    this._announceMedia();
  }

  setCameraEnabled(on) {
    this.cameraEnabled = !!on;
    if (this.localStream) for (const t of this.localStream.getVideoTracks()) t.enabled = this.cameraEnabled;
    this._announceMedia();
  }

  async startScreenShare() {
    const screen = await navigator.mediaDevices.getDisplayMedia({ video: true, audio: false });
    const track = screen.getVideoTracks()[0];
    if (this.screenTrack) this.screenTrack.stop();
    this.screenTrack = track;
    track.addEventListener('ended', () => {
      if (this.screenTrack === track) this.stopScreenShare();
    });
    await Promise.all([...this.peers.values()].map((p) => this._replaceVideo(p, track)));
    this._announceMedia();
    this.emit('screen-share', { active: true, stream: screen });
    return screen;
  }

  stopScreenShare() {
    const track = this.screenTrack;
    if (!track) return;
    this.screenTrack = null;
    track.stop();
    const cam = this._cameraTrack();
    for (const p of this.peers.values()) quiet(this._replaceVideo(p, cam));
    this._announceMedia();
    this.emit('screen-share', { active: false });
  }

  /** Connection figures of one peer, from getStats(). rtt in ms, bitrates in kbit/s. */
  async stats(userId) {
    const peer = this.peers.get(userId);
    if (!peer) throw new RtcHubError('peer-not-found', `no peer ${userId}`);
    const report = await peer.pc.getStats();
    let pair = null;
    let inBytes = 0;
    let outBytes = 0;
    let now = 0;
    const pairs = [];
    report.forEach((s) => {
      if (s.type === 'transport' && s.selectedCandidatePairId) pair = report.get(s.selectedCandidatePairId) || pair;
      if (s.type === 'candidate-pair') pairs.push(s);
      if (s.type === 'inbound-rtp') inBytes += s.bytesReceived || 0;
      if (s.type === 'outbound-rtp') outBytes += s.bytesSent || 0;
      if (s.timestamp > now) now = s.timestamp;
    });
    if (!pair) pair = pairs.find((p) => p.nominated && p.state === 'succeeded') || null;
    const local = pair && report.get(pair.localCandidateId);
    const remote = pair && report.get(pair.remoteCandidateId);
    const prev = peer.lastStats;
    let bitrateKbps = null;
    let sendBitrateKbps = null;
    if (prev && now > prev.ts) {
      bitrateKbps = Math.round(((inBytes - prev.inBytes) * 8) / (now - prev.ts));
      sendBitrateKbps = Math.round(((outBytes - prev.outBytes) * 8) / (now - prev.ts));
    }
    peer.lastStats = { ts: now, inBytes, outBytes };
    return {
      connectionState: peer.pc.connectionState,
      iceConnectionState: peer.pc.iceConnectionState,
      signalingState: peer.pc.signalingState,
      localCandidateType: local ? local.candidateType : null,
      remoteCandidateType: remote ? remote.candidateType : null,
      localAddress: local ? (local.address || local.ip || null) : null,
      remoteAddress: remote ? (remote.address || remote.ip || null) : null,
      rtt: pair && typeof pair.currentRoundTripTime === 'number' ? Math.round(pair.currentRoundTripTime * 1000) : null,
      bitrateKbps,
      sendBitrateKbps,
      bytesReceived: inBytes,
      bytesSent: outBytes,
    };
  }

  /** Force a fresh offer (with an ICE restart) to one peer or to all. */
  renegotiate(userId) {
    for (const peer of this.peers.values()) {
      if (!userId || peer.userId === userId) peer.pc.restartIce();
    }
  }

  hangup() {
    if (this.ended) return;
    this.ended = true;
    for (const [type, h] of this._subs) this.hub.off(type, h);
    this._subs = [];
    this._closeAllPeers('hangup');
    if (this.screenTrack) {
      this.screenTrack.stop();
      this.screenTrack = null;
    }
    if (this.hub.rooms.has(this.roomId)) quiet(this.hub.leave(this.roomId));
    this.emit('ended', {});
  }

  // ------------------------------------------------------------ membership

  _onRoomInfo(msg) {
    if (!this.active) return;
    const members = Array.isArray(msg.members) && msg.members.length
      ? msg.members
      : (msg.users || []).map((userId) => ({ userId, displayName: userId }));
    for (const m of members) {
      // We are the newcomer: we make the first offer to everyone here.
      if (!this.peers.has(m.userId)) this._addPeer(m.userId, m.displayName, true);
    }
  }

  _onUserJoined(msg) {
    if (msg.userId === this.hub.userId) return;
    if (!this.active) {
      this._closePeer(msg.userId, 'rejoined', false);
      return;
    }
    if (this.peers.has(msg.userId)) {
      // Back after a reconnect (rejoined: true) or a reload: the old
      // connection's other end is gone.
      this._closePeer(msg.userId, 'rejoined', false);
    }
    // The newcomer offers (it got a room-info listing us); we answer.
    this._addPeer(msg.userId, msg.displayName, false);
  }

  _onUserLeft(msg) {
    if (this.peers.has(msg.userId)) this._closePeer(msg.userId, msg.reason || 'left', true);
  }

  // ------------------------------------------------------------ peers

  /**
   * `initiator`: whether this side makes the first offer. Exactly one side of
   * a pair does (the newcomer, or the side that asked for a reset), so the
   * first negotiation never collides; perfect negotiation still resolves any
   * later collision (both sides renegotiating at once).
   */
  _addPeer(userId, displayName, initiator = true) {
    if (this.peers.size >= MAX_PEERS && !this._warnedFull) {
      this._warnedFull = true;
      console.warn(`rtchub: more than ${MAX_PEERS + 1} people in a mesh call; quality will suffer`);
    }
    const pc = new RTCPeerConnection({ iceServers: this._iceServers, iceTransportPolicy: this.iceTransportPolicy });
    const peer = {
      userId,
      displayName: displayName || userId,
      pc,
      stream: null,
      polite: String(this.hub.userId) > String(userId),
      makingOffer: false,
      ignoreOffer: false,
      settingRemoteAnswer: false,
      mayOffer: initiator,
      offerWanted: false,
      waitTimer: null,
      collisions: 0,
      chain: Promise.resolve(),
      dc: null,
      videoSender: null,
      lastStats: null,
      media: null,
    };
    this.peers.set(userId, peer);
    this.emit('peer-joined', { userId, displayName: peer.displayName });

    if (this.localStream) {
      for (const track of this.localStream.getTracks()) {
        const t = track.kind === 'video' && this.screenTrack ? this.screenTrack : track;
        const sender = pc.addTrack(t, this.localStream);
        if (track.kind === 'video') peer.videoSender = sender;
      }
    } else {
      // Receive-only participant: still ask for the others' media.
      pc.addTransceiver('audio', { direction: 'recvonly' });
      pc.addTransceiver('video', { direction: 'recvonly' });
    }

    // Chat: a channel both sides declare with the same id, so neither has to
    // wait for the other to announce it.
    const dc = peer.dc = pc.createDataChannel('rtchub', { negotiated: true, id: 0 });
    dc.onmessage = (ev) => this._onControl(peer, ev.data);
    dc.onopen = () => this._announceMedia(peer);
    pc.ondatachannel = (ev) => this._onDataChannel(peer, ev.channel);

    pc.ontrack = ({ track, streams }) => {
      let stream = streams && streams[0];
      if (!stream) {
        stream = peer.stream || new MediaStream();
        stream.addTrack(track);
      }
      if (peer.stream !== stream) {
        peer.stream = stream;
        this.emit('remote-stream', { userId, displayName: peer.displayName, stream });
      }
    };
    pc.onicecandidate = ({ candidate }) => {
      if (candidate) this._signal(peer, { type: 'candidate', candidate: candidate.toJSON() });
    };
    pc.onnegotiationneeded = async () => {
      if (!peer.mayOffer) {
        peer.offerWanted = true; // the other side's first offer comes first
        return;
      }
      try {
        peer.makingOffer = true;
        await pc.setLocalDescription();
        if (pc.localDescription.type === 'offer') {
          this._signal(peer, { type: 'offer', sdp: pc.localDescription.sdp });
        }
      } catch (err) {
        if (this.peers.get(userId) === peer) console.warn('rtchub: offer failed', err);
      } finally {
        peer.makingOffer = false;
      }
    };
    pc.onconnectionstatechange = () => {
      if (this.peers.get(userId) !== peer) return;
      const state = pc.connectionState;
      this.emit('peer-state', { userId, state });
      if (state === 'failed') this._restartIce(peer);
    };
    pc.oniceconnectionstatechange = () => {
      if (this.peers.get(userId) === peer && pc.iceConnectionState === 'failed') this._restartIce(peer);
    };
    if (!initiator) {
      // Should the other side's offer never come (it has no Call running
      // yet, or an old SDK), do not wait forever: offer ourselves.
      peer.waitTimer = setTimeout(() => {
        if (this.peers.get(userId) === peer && !peer.mayOffer) {
          peer.offerWanted = true;
          this._allowOffers(peer);
        }
      }, WAIT_FOR_OFFER_MS);
    }
    return peer;
  }

  /** The first offer did not come: offer ourselves (negotiationneeded was swallowed). */
  _allowOffers(peer) {
    clearTimeout(peer.waitTimer);
    if (peer.mayOffer) return;
    peer.mayOffer = true;
    if (peer.offerWanted && this.peers.get(peer.userId) === peer && peer.pc.signalingState === 'stable') {
      peer.offerWanted = false;
      peer.pc.onnegotiationneeded();
    }
  }

  async _restartIce(peer) {
    // TURN credentials expire: take the current list before restarting.
    if (!this._iceServersOpt) {
      try {
        this._iceServers = await this.hub.iceServers();
        peer.pc.setConfiguration({ iceServers: this._iceServers, iceTransportPolicy: this.iceTransportPolicy });
      } catch (err) {
        console.warn('rtchub: could not refresh ICE servers', err);
      }
    }
    if (this.peers.get(peer.userId) === peer) peer.pc.restartIce();
  }

  _closePeer(userId, reason, announce) {
    const peer = this.peers.get(userId);
    if (!peer) return;
    this.peers.delete(userId);
    clearTimeout(peer.waitTimer);
    peer.pc.ontrack = peer.pc.onicecandidate = peer.pc.onnegotiationneeded = null;
    peer.pc.onconnectionstatechange = peer.pc.oniceconnectionstatechange = null;
    for (const f of peer.files || []) f.fail(new RtcHubError('peer-left', `${userId} left`));
    peer.pc.close();
    if (announce) this.emit('peer-left', { userId, reason });
  }

  /** Replace the connection to one peer; `tell` asks the other end to do the same. */
  _resetPeer(peer, tell) {
    if (this.peers.get(peer.userId) !== peer) return;
    if (tell) this._signal(peer, { type: 'signal', data: { kind: 'reset' } });
    this._closePeer(peer.userId, 'reset', false);
    this._addPeer(peer.userId, peer.displayName, tell);
  }

  _closeAllPeers(reason) {
    for (const userId of [...this.peers.keys()]) this._closePeer(userId, reason, true);
  }

  // ------------------------------------------------------------ signaling

  _signal(peer, msg) {
    quiet(this.hub.send({ ...msg, roomId: this.roomId, to: peer.userId }));
  }

  _onSignal(msg) {
    const from = msg.from;
    if (!from || from === this.hub.userId) return;
    let peer = this.peers.get(from);
    if (!peer) {
      // An offer from someone we have not met yet (their user-joined crossed
      // our start): they are in the room, the server checked.
      if (msg.type !== 'offer' || !this.active) return;
      peer = this._addPeer(from, from, false);
    }
    // One message at a time per peer, in arrival order.
    peer.chain = peer.chain.then(() => this._handleSignal(peer, msg)).catch((err) => {
      if (this.peers.get(from) === peer) console.warn(`rtchub: ${msg.type} from ${from} failed`, err);
    });
  }

  async _handleSignal(peer, msg) {
    if (this.peers.get(peer.userId) !== peer) return;
    const pc = peer.pc;
    if (msg.type === 'offer' || msg.type === 'answer') {
      const sdp = typeof msg.sdp === 'string' ? msg.sdp : msg.sdp && msg.sdp.sdp;
      const description = { type: msg.type, sdp };
      const readyForOffer = !peer.makingOffer && (pc.signalingState === 'stable' || peer.settingRemoteAnswer);
      const collision = description.type === 'offer' && !readyForOffer;
      if (collision) {
        peer.collisions += 1;
        this.collisions += 1;
        this.emit('negotiation-collision', { userId: peer.userId, polite: peer.polite });
      }
      peer.ignoreOffer = !peer.polite && collision;
      if (peer.ignoreOffer) return;
      if (collision && pc.currentRemoteDescription) {
        // Chromium (seen in 156) freezes incoming video for good once a
        // local offer has been rolled back on a connection that was already
        // receiving (the receiver stays non-"receptive", w3c/webrtc-pc#3081).
        // A collision in the first negotiation is safe; in a renegotiation
        // the polite side starts the pair afresh instead: both ends build a
        // new RTCPeerConnection, whose first negotiation may collide safely.
        this._resetPeer(peer, true);
        return;
      }
      if (description.type === 'answer' && pc.signalingState !== 'have-local-offer') return; // stale
      peer.settingRemoteAnswer = description.type === 'answer';
      try {
        await pc.setRemoteDescription(description); // rolls our own offer back if needed
      } finally {
        peer.settingRemoteAnswer = false;
      }
      if (description.type === 'offer') {
        // From now on we may offer too. Set before answering: if something
        // here still needs negotiating, the browser fires negotiationneeded
        // again once the answer puts us back in 'stable'.
        clearTimeout(peer.waitTimer);
        peer.mayOffer = true;
        await pc.setLocalDescription();
        this._signal(peer, { type: 'answer', sdp: pc.localDescription.sdp });
      }
    } else if (msg.type === 'candidate') {
      if (!msg.candidate) return;
      const cand = typeof msg.candidate === 'string' ? { candidate: msg.candidate, sdpMid: msg.sdpMid ?? '0', sdpMLineIndex: msg.sdpMLineIndex ?? 0 } : msg.candidate;
      try {
        await pc.addIceCandidate(cand);
      } catch (err) {
        // Candidates of an ignored offer, or of the connection a reset or an
        // ICE restart replaced, do not apply: expected, not an error.
        if (!peer.ignoreOffer && pc.remoteDescription) console.debug('rtchub: candidate skipped', err.message);
      }
    } else if (msg.type === 'signal') {
      const data = msg.data || {};
      if (data.kind === 'reset') {
        this._resetPeer(peer, false);
      } else if (data.kind === 'media') {
        peer.media = { mic: !!data.mic, camera: !!data.camera, screen: !!data.screen };
        this.emit('peer-media', { userId: peer.userId, ...peer.media });
      } else {
        this.emit('signal', { userId: peer.userId, data });
      }
    }
  }

  _announceMedia(only) {
    const data = { kind: 'media', mic: this.micEnabled, camera: this.cameraEnabled, screen: !!this.screenTrack };
    const peers = only ? [only] : [...this.peers.values()];
    for (const peer of peers) this._signal(peer, { type: 'signal', data });
  }

  _cameraTrack() {
    return this.localStream ? this.localStream.getVideoTracks()[0] || null : null;
  }

  async _replaceVideo(peer, track) {
    let sender = peer.videoSender;
    if (!sender) sender = peer.pc.getSenders().find((s) => s.track && s.track.kind === 'video');
    if (sender) await sender.replaceTrack(track);
  }

  // ------------------------------------------------------------ data channels

  _onControl(peer, data) {
    if (typeof data !== 'string') return;
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      return;
    }
    if (msg.t === 'chat') this.emit('chat', { from: peer.userId, displayName: peer.displayName, text: String(msg.text) });
  }

  _onDataChannel(peer, channel) {
    if (!channel.label.startsWith('file:')) return;
    channel.binaryType = 'arraybuffer';
    let meta = null;
    const chunks = [];
    let received = 0;
    let lastEmit = 0;
    channel.onmessage = async (ev) => {
      if (typeof ev.data === 'string') {
        const msg = JSON.parse(ev.data);
        if (msg.t === 'file') {
          meta = msg;
          this.emit('file-progress', { from: peer.userId, name: meta.name, received: 0, size: meta.size });
          if (meta.size === 0) await finish();
        }
        return;
      }
      if (!meta) return;
      chunks.push(ev.data);
      received += ev.data.byteLength;
      const now = performance.now();
      if (received >= meta.size || now - lastEmit > 100) {
        lastEmit = now;
        this.emit('file-progress', { from: peer.userId, name: meta.name, received, size: meta.size });
      }
      if (received >= meta.size) await finish();
    };
    const finish = async () => {
      const blob = new Blob(chunks, { type: meta.mime || 'application/octet-stream' });
      const digest = await sha256(await blob.arrayBuffer());
      const ok = digest === meta.sha256 && received === meta.size;
      if (channel.readyState === 'open') channel.send(JSON.stringify({ t: 'file-ok', ok, sha256: digest }));
      this.emit('file-received', {
        from: peer.userId, name: meta.name, size: received, mime: meta.mime, blob,
        sha256: digest, expectedSha256: meta.sha256, ok,
      });
    };
  }

  _sendFileTo(peer, { name, mime, buf, digest }) {
    return new Promise((resolve, reject) => {
      const ch = peer.pc.createDataChannel(`file:${randomId()}`, { ordered: true });
      ch.binaryType = 'arraybuffer';
      ch.bufferedAmountLowThreshold = LOW_WATER;
      const job = { fail: (err) => { reject(err); try { ch.close(); } catch { /* closed */ } } };
      peer.files = peer.files || new Set();
      peer.files.add(job);
      const done = (fn) => (v) => { peer.files.delete(job); fn(v); };
      const ok = done(resolve);
      const bad = done(reject);
      ch.onmessage = (ev) => {
        const msg = JSON.parse(ev.data);
        if (msg.t !== 'file-ok') return;
        ch.close();
        if (msg.ok) ok({ to: peer.userId, sha256: msg.sha256 });
        else bad(new RtcHubError('checksum-mismatch', `${peer.userId} got SHA-256 ${msg.sha256}`));
      };
      ch.onerror = (ev) => bad(new RtcHubError('file-failed', String(ev.error || 'data channel error')));
      ch.onopen = async () => {
        try {
          ch.send(JSON.stringify({ t: 'file', name, mime, size: buf.byteLength, sha256: digest }));
          let sent = 0;
          let lastEmit = 0;
          this.emit('file-progress', { to: peer.userId, name, sent, size: buf.byteLength });
          while (sent < buf.byteLength) {
            if (ch.bufferedAmount > HIGH_WATER) {
              await new Promise((r) => { ch.onbufferedamountlow = () => { ch.onbufferedamountlow = null; r(); }; });
            }
            if (ch.readyState !== 'open') throw new RtcHubError('file-failed', 'channel closed while sending');
            const end = Math.min(sent + CHUNK, buf.byteLength);
            ch.send(buf.slice(sent, end));
            sent = end;
            const now = performance.now();
            if (sent === buf.byteLength || now - lastEmit > 100) {
              lastEmit = now;
              this.emit('file-progress', { to: peer.userId, name, sent, size: buf.byteLength });
            }
          }
        } catch (err) {
          bad(err);
        }
      };
    });
  }
}
