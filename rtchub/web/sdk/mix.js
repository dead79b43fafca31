// AudioMixCall: an audio-only room mixed on the server (media mode `audio-mix`).
//
// One RTCPeerConnection with one sendrecv audio transceiver: our microphone
// goes up, the server's mix of everyone else comes down (Janus AudioBridge;
// docs/protocol.md "Audio-mix rooms"). However many people talk, the page
// receives one stream.
//
// Events: peer-joined {userId, displayName}, peer-left {userId, reason},
// remote-stream {stream} (the mix: play it in an <audio>), state {state}
// (the connection's iceConnectionState).

import { Emitter } from './emitter.js';
import { onRoom } from './roomcall.js';
import { RtcHubError } from './hub.js';

export class AudioMixCall extends Emitter {
  constructor(hub, roomId, opts = {}) {
    super();
    this.hub = hub;
    this.roomId = roomId;
    this.localStream = opts.localStream || null;
    this.displayName = opts.displayName;
    this.userId = opts.userId;
    this._iceServersOpt = opts.iceServers || null;
    this.pc = null;
    this.mix = null;
    this.micEnabled = true;
    this.ended = false;
    this._subs = [];
    this._answer = null;
  }

  async start() {
    const iceServers = this._iceServersOpt || await this.hub.iceServers();
    const on = (type, fn) => onRoom(this, type, fn);
    on('user-joined', (m) => this.emit('peer-joined', { userId: m.userId, displayName: m.displayName }));
    on('user-left', (m) => this.emit('peer-left', { userId: m.userId, reason: m.reason }));
    on('mix-answer', (m) => { if (this._answer) this._answer(m); });
    const info = await this.hub.join(this.roomId, {
      userId: this.userId || this.hub.userId, displayName: this.displayName, media: 'audio-mix',
    });
    if (!info || info.media !== 'audio-mix') {
      throw new RtcHubError('wrong-media-mode', `room ${this.roomId} is a ${info && info.media} room`,
        { media: info && info.media });
    }
    const pc = this.pc = new RTCPeerConnection({ iceServers });
    const track = this.localStream && this.localStream.getAudioTracks()[0];
    pc.addTransceiver(track || 'audio', { direction: track ? 'sendrecv' : 'recvonly',
      streams: this.localStream ? [this.localStream] : [] });
    pc.addEventListener('track', (ev) => {
      this.mix = ev.streams[0] || new MediaStream([ev.track]);
      this.emit('remote-stream', { stream: this.mix });
    });
    pc.addEventListener('iceconnectionstatechange', () => this.emit('state', { state: pc.iceConnectionState }));
    await pc.setLocalDescription(await pc.createOffer());
    await this._gathered(pc);
    const answered = new Promise((resolve) => { this._answer = resolve; });
    await this.hub.send({ type: 'mix', roomId: this.roomId, sdp: pc.localDescription.sdp });
    const answer = await answered;
    await pc.setRemoteDescription({ type: 'answer', sdp: answer.sdp });
    return this;
  }

  // Janus takes the offer's candidates (no trickle for the mix): wait for gathering, 3 s at most.
  _gathered(pc) {
    if (pc.iceGatheringState === 'complete') return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => { if (pc.iceGatheringState === 'complete') resolve(); };
      pc.addEventListener('icegatheringstatechange', done);
      setTimeout(resolve, 3000);
    });
  }

  setMicEnabled(on) {
    this.micEnabled = !!on;
    if (this.localStream) for (const t of this.localStream.getAudioTracks()) t.enabled = this.micEnabled;
  }

  leave() {
    this.ended = true;
    for (const [type, h] of this._subs) this.hub.off(type, h);
    this._subs = [];
    if (this.pc) this.pc.close();
    this.hub.leave(this.roomId);
  }
}
