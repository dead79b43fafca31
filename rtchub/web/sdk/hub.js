// RtcHub: one logical connection to an rtchub server that survives any
// number of transport connections (docs/sdk-browser.md).
//
// The server numbers every message it sends to a session (`seq`) and keeps
// them for a grace period; the client acks nothing but remembers the highest
// seq it processed. After a drop the SDK opens a new transport, gets a fresh
// session's `welcome`, and asks with `resume {sessionId, lastSeq}` to be put
// back on the old session: the server replays what was missed (old seq space)
// and says `resumed`. In the other direction every message carries an `id`
// and stays un-acked until the server's `ack`; un-acked messages are written
// again after `resumed`, and the server drops the duplicates by
// (session, id). Net effect: no signaling message lost or doubled across a
// reconnect, which is what keeps a WebRTC negotiation alive through it.

import { Emitter } from './emitter.js';
import { CLOSE_CODES, RELAY_TYPES } from './protocol.js';
import { TRANSPORTS } from './transports.js';

export class RtcHubError extends Error {
  constructor(code, message, extra = {}) {
    super(message || code);
    this.name = 'RtcHubError';
    this.code = code;
    Object.assign(this, extra);
  }
}

const LADDER = ['websocket', 'sse', 'polling'];
const ONLINE = new Set(['connected', 'resumed', 'rejoined']);
const UNTRACKED = new Set(['ping', 'resume', 'auth']);
const RELAY = new Set(RELAY_TYPES);
/** Close codes after which reconnecting would be wrong (PROTOCOL.md "Close codes"). */
const FINAL_CLOSE = {
  [CLOSE_CODES.UNAUTHORIZED]: 'unauthorized',
  [CLOSE_CODES.FORBIDDEN]: 'forbidden',
  [CLOSE_CODES.TAKEN_OVER]: 'taken-over',
};

function randomId(prefix, bytes = 5) {
  const a = new Uint8Array(bytes);
  crypto.getRandomValues(a);
  return prefix + Array.from(a, (b) => b.toString(16).padStart(2, '0')).join('');
}

function defaultUrl() {
  return typeof location !== 'undefined' ? location.origin : 'http://127.0.0.1:8080';
}

let msgpackModule = null;
async function loadMsgpack() {
  if (!msgpackModule) {
    const mod = await import('./vendor/msgpack/index.mjs');
    msgpackModule = { encode: (m) => mod.encode(m), decode: (b) => mod.decode(b) };
  }
  return msgpackModule;
}

export class RtcHub extends Emitter {
  constructor(opts = {}) {
    super();
    this.url = String(opts.url || defaultUrl()).replace(/\/+$/, '');
    this.mode = opts.transport || 'auto';
    if (this.mode !== 'auto' && !TRANSPORTS[this.mode]) {
      throw new RtcHubError('invalid-option', `unknown transport ${this.mode}`);
    }
    this.token = opts.token || null;
    this.codec = opts.codec === 'msgpack' ? 'msgpack' : 'json';
    this.options = {
      welcomeTimeoutMs: opts.welcomeTimeoutMs ?? 4000,
      heartbeatMs: opts.heartbeatMs ?? null,
      pongTimeoutMs: opts.pongTimeoutMs ?? 5000,
      backoffBaseMs: opts.backoffBaseMs ?? 500 + Math.random() * 500,
      backoffCapMs: opts.backoffCapMs ?? 30000,
      probeIntervalMs: opts.probeIntervalMs ?? 60000,
      reconnect: opts.reconnect ?? true,
      pollTimeout: opts.pollTimeout ?? 25,
    };
    this.state = 'idle';
    this.sessionId = null;
    this.lastSeq = 0;
    this.userId = opts.userId || null;
    this.transport = null; // name of the current transport
    this.rooms = new Map(); // roomId -> {userId, displayName}
    this.serverInfo = null;
    this.rtt = null;

    this._t = null; // current transport object
    this._level = this.mode === 'auto' ? 0 : LADDER.indexOf(this.mode);
    this._goodLevel = this._level;
    this._writable = false;
    this._resuming = null; // {id, newSessionId, timer}
    this._everWelcomed = false;
    this._queue = []; // entries not written yet
    this._unacked = new Map(); // id -> entry, written, waiting for ack
    this._joins = new Map(); // roomId -> {resolve, reject}
    this._nextId = 1;
    this._idPrefix = randomId('', 3) + '-';
    this._attempt = 0;
    this._timers = { reconnect: null, welcome: null, heartbeat: null, probe: null };
    this._closedByUser = false;
    this._connectWaiters = [];
    this._lastRx = 0;
    this._ice = null; // {servers, expires}
    this._onOnline = () => {
      if (this._timers.reconnect) {
        clearTimeout(this._timers.reconnect);
        this._timers.reconnect = null;
        this._openTransport();
      }
    };
    if (typeof window !== 'undefined') window.addEventListener('online', this._onOnline);
  }

  get online() {
    return ONLINE.has(this.state);
  }

  // ------------------------------------------------------------------ public

  /**
   * While waiting out a reconnect backoff, try now (a "Retry now" button; the
   * browser's `online` event does the same). Returns whether an attempt started.
   */
  reconnectNow() {
    const waiting = Boolean(this._timers.reconnect);
    this._onOnline();
    return waiting;
  }

  /** Connect (or keep reconnecting) until the first `welcome`. */
  connect() {
    if (this.online) return Promise.resolve(this);
    if (this._closedByUser && this.state === 'closed') {
      this._closedByUser = false;
    }
    const p = new Promise((resolve, reject) => this._connectWaiters.push({ resolve, reject }));
    if (!this._t && !this._timers.reconnect) {
      this._attempt = 0;
      this._openTransport();
    }
    return p;
  }

  /**
   * Join a room. Resolves with the `room-info` message; rejects with an
   * RtcHubError (`room-full`, `user-id-taken`, ...).
   */
  join(roomId, { userId, displayName, media } = {}) {
    if (userId) this.userId = userId;
    if (!this.userId) this.userId = randomId('u-');
    const prev = this._joins.get(roomId);
    const entryDone = new Promise((resolve, reject) => {
      this._joins.set(roomId, {
        userId: this.userId,
        displayName,
        media,
        resolve: (v) => { resolve(v); if (prev) prev.resolve(v); },
        reject: (e) => { reject(e); if (prev) prev.reject(e); },
      });
    });
    entryDone.catch(() => {});
    const msg = { type: 'join', roomId, userId: this.userId };
    if (displayName) msg.displayName = displayName;
    if (media) msg.media = media;
    this.send(msg).catch((err) => this._settleJoin(roomId, null, err));
    if (this.state === 'idle') this.connect().catch(() => {});
    return entryDone;
  }

  leave(roomId) {
    this.rooms.delete(roomId);
    const pending = this._joins.get(roomId);
    if (pending) {
      this._joins.delete(roomId);
      pending.reject(new RtcHubError('left', `left ${roomId} before joining`));
    }
    return this.send({ type: 'leave', roomId });
  }

  /**
   * Send one message. Resolves with the server's `ack` (or the `pong` for a
   * ping), rejects with RtcHubError when the server answers `error`. Queued
   * while offline; fire-and-forget use never yields an unhandled rejection.
   */
  send(msg) {
    if (!msg || typeof msg.type !== 'string') {
      return Promise.reject(new RtcHubError('invalid-message', 'a message needs a string type'));
    }
    if (this._closedByUser) {
      const p = Promise.reject(new RtcHubError('closed', 'the hub is closed'));
      p.catch(() => {});
      return p;
    }
    if (UNTRACKED.has(msg.type)) {
      if (this._writable) this._write(msg);
      return Promise.resolve(null);
    }
    return this._tracked(msg);
  }

  /**
   * Replace the token before it expires (the answer to `token-expiring`).
   * Sends an `auth` message under the current token and, once the server
   * acked it, uses the new one from then on: on every SSE/polling request
   * (which prove the identity per request) and for reconnects. Rejects with
   * RtcHubError `forbidden` for another user's token; the current one stays.
   */
  async refreshToken(token) {
    const ack = await this._tracked({ type: 'auth', token });
    this.token = token;
    if (this._t) this._t.token = token;
    return ack;
  }

  _tracked(msg) {
    const out = { ...msg };
    if (out.id === undefined || out.id === null) out.id = this._idPrefix + this._nextId++;
    let entry;
    const p = new Promise((resolve, reject) => { entry = { msg: out, resolve, reject }; });
    p.catch(() => {});
    this._queue.push(entry);
    this._flush();
    return p;
  }

  /** Close for good: no reconnect; the server ends the session at once. */
  close() {
    this._closedByUser = true;
    this._clearTimers();
    const t = this._t;
    this._t = null;
    this._writable = false;
    if (t) t.close(1000, 'client closed');
    const err = new RtcHubError('closed', 'the hub is closed');
    this._failAll(err);
    if (typeof window !== 'undefined') window.removeEventListener('online', this._onOnline);
    this._setState('closed', {});
  }

  /** ICE servers from GET /ice-servers, cached until 80 % of their ttl. */
  async iceServers() {
    const now = Date.now();
    if (this._ice && this._ice.expires > now) return this._ice.servers;
    let servers = [];
    let ttl = 30;
    try {
      const headers = this.token ? { Authorization: `Bearer ${this.token}` } : {};
      const u = new URL(this.url.replace(/^ws/, 'http') + '/ice-servers');
      if (this.userId) u.searchParams.set('userId', this.userId);
      const resp = await fetch(u, { headers, cache: 'no-store' });
      if (resp.ok) {
        const body = await resp.json();
        servers = Array.isArray(body.iceServers) ? body.iceServers : [];
        if (typeof body.ttl === 'number' && body.ttl > 0) ttl = body.ttl;
      }
    } catch (err) {
      console.warn('rtchub: /ice-servers unavailable, using none', err);
    }
    this._ice = { servers, expires: now + ttl * 800 };
    return servers;
  }

  // ---------------------------------------------------------------- internals

  _setState(state, extra) {
    this.state = state;
    this.emit('state', { state, transport: this.transport, ...extra });
  }

  _clearTimers() {
    for (const k of Object.keys(this._timers)) {
      clearTimeout(this._timers[k]);
      clearInterval(this._timers[k]);
      this._timers[k] = null;
    }
    if (this._resuming) clearTimeout(this._resuming.timer);
  }

  async _openTransport(level = this._level, probe = false) {
    this._timers.reconnect = null;
    if (this._closedByUser) return;
    const name = LADDER[level];
    let msgpack = null;
    if (this.codec === 'msgpack' && name === 'websocket') {
      try {
        msgpack = await loadMsgpack();
      } catch (err) {
        console.warn('rtchub: msgpack codec unavailable, using JSON', err);
      }
    }
    const t = new TRANSPORTS[name]({
      url: this.url, token: this.token, codec: this.codec, msgpack,
      pollTimeout: this.options.pollTimeout,
    });
    t.level = level;
    t.welcomed = false;
    t.probe = probe;
    if (!probe) {
      this._t = t;
      this.transport = name;
      this._setState('connecting', { attempt: this._attempt, transport: name });
    }
    t.onmessage = (msg) => this._onMessage(t, msg);
    t.onclose = (ev) => this._onClose(t, ev);
    let resume = null;
    if (t.resumesByPolling && this._everWelcomed && this.sessionId && !probe) {
      // Over polling the resume is the first poll of the old session.
      resume = { sessionId: this.sessionId, lastSeq: this.lastSeq };
      this._resuming = { id: null, newSessionId: null, byPoll: true, timer: null };
    }
    const timer = setTimeout(() => {
      if (!t.welcomed) {
        t.close(4000, 'no welcome');
        this._onClose(t, { code: 4000, reason: `no welcome within ${this.options.welcomeTimeoutMs} ms` });
      }
    }, this.options.welcomeTimeoutMs);
    t.welcomeTimer = timer;
    t.open(resume);
    return t;
  }

  _onClose(t, { code, reason }) {
    clearTimeout(t.welcomeTimer);
    if (t.probe) {
      // A failed probe upward changes nothing; try again later.
      if (this._t !== t) {
        this._scheduleProbe(this.options.probeIntervalMs * 2);
        return;
      }
    }
    if (t !== this._t) return;
    this._t = null;
    this._writable = false;
    clearInterval(this._timers.heartbeat);
    clearTimeout(this._timers.probe);
    if (this._resuming) {
      clearTimeout(this._resuming.timer);
      this._resuming = null;
    }
    if (this._closedByUser) return;
    const final = FINAL_CLOSE[code];
    if (final) {
      const err = new RtcHubError(final, reason || final, { closeCode: code });
      this._closedByUser = true;
      this._failAll(err);
      this._setState('closed', { error: err });
      return;
    }
    const error = new RtcHubError('disconnected', `${t.name}: ${reason || 'closed'} (${code})`, { closeCode: code });
    if (!t.welcomed && this.mode === 'auto' && t.level < LADDER.length - 1) {
      // Fallback: this transport does not get through; try the next one now.
      this._level = t.level + 1;
      this._setState('reconnecting', { attempt: this._attempt, delayMs: 0, error, fallback: LADDER[this._level] });
      this._openTransport(this._level);
      return;
    }
    if (!this.options.reconnect) {
      this._closedByUser = true;
      this._failAll(error);
      this._setState('closed', { error });
      return;
    }
    // Every transport failed (or a working one dropped): back off, then start
    // again from the best transport that worked.
    this._level = this._goodLevel;
    this._attempt += 1;
    const cap = Math.min(this.options.backoffCapMs, this.options.backoffBaseMs * 2 ** (this._attempt - 1));
    const delayMs = Math.round(Math.random() * cap);
    this._setState('reconnecting', { attempt: this._attempt, delayMs, error });
    this._timers.reconnect = setTimeout(() => this._openTransport(this._level), delayMs);
  }

  _onMessage(t, msg) {
    if (t.probe && this._t !== t) {
      if (msg.type === 'welcome') this._probeWelcomed(t, msg);
      return;
    }
    if (t !== this._t) return;
    this._lastRx = Date.now();
    if (msg.type === 'welcome') {
      this._onWelcome(t, msg);
      return;
    }
    const seq = msg.seq;
    const r = this._resuming;
    if (r && r.byPoll && !t.welcomed) {
      // The old session answered the poll: it is alive, this is its replay.
      clearTimeout(t.welcomeTimer);
      t.welcomed = true;
    }
    if (r) {
      if (msg.type === 'error' && msg.id === r.id) {
        this._resumeFailed(t, msg);
        return;
      }
      if (msg.type === 'resumed') {
        if (typeof seq === 'number') this.lastSeq = seq;
        this._resumed(t, msg);
        return;
      }
    }
    if (typeof seq === 'number') {
      if (seq <= this.lastSeq) return; // already processed before the reconnect
      this.lastSeq = seq;
    }
    this._dispatch(msg);
  }

  _dispatch(msg) {
    switch (msg.type) {
      case 'ack': {
        const e = this._unacked.get(msg.id);
        if (e) {
          this._unacked.delete(msg.id);
          e.resolve(msg);
        }
        break;
      }
      case 'error': {
        let handled = false;
        if (msg.id !== undefined && msg.id !== null) {
          const e = this._unacked.get(msg.id);
          if (e) {
            this._unacked.delete(msg.id);
            e.reject(new RtcHubError(msg.code, msg.message, { id: msg.id }));
            handled = true;
          }
        }
        if (!handled) this.emit('error', msg);
        break;
      }
      case 'room-info': {
        const j = this._joins.get(msg.roomId);
        if (j) {
          this._joins.delete(msg.roomId);
          this.rooms.set(msg.roomId, { userId: j.userId, displayName: j.displayName, media: j.media });
          j.resolve(msg);
        }
        break;
      }
      case 'pong':
        if (typeof msg.timestamp === 'number') this.rtt = Date.now() - msg.timestamp;
        break;
      default:
        break;
    }
    if (msg.type !== 'error') this.emit(msg.type, msg);
    this.emit('*', msg);
  }

  _settleJoin(roomId, info, err) {
    const j = this._joins.get(roomId);
    if (!j) return;
    this._joins.delete(roomId);
    if (err) j.reject(err);
    else j.resolve(info);
  }

  _onWelcome(t, msg) {
    clearTimeout(t.welcomeTimer);
    t.welcomed = true;
    this.serverInfo = msg.server || null;
    if (msg.userId) this.userId = msg.userId;
    this._goodLevel = t.level;
    this._level = t.level;
    this.transport = t.name;
    this._heartbeatMs = this.options.heartbeatMs
      ?? Math.min(10000, Math.max(1000, ((msg.heartbeat || 20) * 1000) / 2));
    if (this._resuming && this._resuming.byPoll) {
      // Polling could not resume the old session and opened a new one.
      this._resuming.newSessionId = msg.sessionId;
      this._resumeFailed(t, { seq: msg.seq, message: 'session expired' });
      return;
    }
    if (this._everWelcomed && this.sessionId) {
      this._startResume(t, msg);
      return;
    }
    this._everWelcomed = true;
    this.sessionId = msg.sessionId;
    this.lastSeq = typeof msg.seq === 'number' ? msg.seq : 0;
    this._goOnline(t, 'connected', {});
  }

  _startResume(t, welcome) {
    const id = this._idPrefix + 'resume-' + this._nextId++;
    const timer = setTimeout(() => {
      if (this._resuming && this._resuming.id === id && this._t === t) {
        t.close(4000, 'no answer to resume');
        this._onClose(t, { code: 4000, reason: 'no answer to resume' });
      }
    }, this.options.welcomeTimeoutMs * 2);
    this._resuming = { id, newSessionId: welcome.sessionId, timer };
    t.send({ type: 'resume', sessionId: this.sessionId, lastSeq: this.lastSeq, id });
  }

  _resumed(t, msg) {
    clearTimeout(this._resuming.timer);
    this._resuming = null;
    this.sessionId = msg.sessionId || this.sessionId;
    // Whatever the server had not acked may or may not have arrived: write it
    // again, in order, before anything new. Duplicates are acked, not delivered.
    const again = [...this._unacked.values()];
    this._unacked.clear();
    this._queue.unshift(...again);
    this._goOnline(t, 'resumed', { replayed: msg.replayed });
  }

  _resumeFailed(t, err) {
    clearTimeout(this._resuming.timer);
    const newId = this._resuming.newSessionId;
    this._resuming = null;
    this.sessionId = newId;
    this.lastSeq = typeof err.seq === 'number' ? err.seq : 0;
    // A new session: the rooms must be joined again. Un-acked chat is sent
    // again (it may be lost otherwise); un-acked signaling is dropped, it
    // belonged to peer connections that calls rebuild after `rejoined`. That
    // holds for signaling queued while offline too (written to no session
    // yet, but made for the old peer connections). The Python SDK does the
    // same (rtchub/client/client.py, tests/test_protocol_constants.py).
    const again = [];
    const expired = new RtcHubError('session-expired', err.message || 'session expired');
    this._queue = this._queue.filter((e) => {
      if (!RELAY.has(e.msg.type)) return true;
      e.reject(expired);
      return false;
    });
    for (const e of this._unacked.values()) {
      const type = e.msg.type;
      if (RELAY.has(type)) e.reject(expired);
      else if (type === 'join') {
        if (!this.rooms.has(e.msg.roomId)) again.push(e);
        else e.resolve({ type: 'ack', id: e.msg.id });
      } else if (type === 'leave') e.resolve({ type: 'ack', id: e.msg.id });
      else again.push(e);
    }
    this._unacked.clear();
    const rejoin = [];
    for (const [roomId, { userId, displayName, media }] of this.rooms) {
      const msg = { type: 'join', roomId, userId: userId || this.userId };
      if (displayName) msg.displayName = displayName;
      if (media) msg.media = media;
      this._joins.set(roomId, {
        userId, displayName, media, resolve: () => {},
        reject: (e2) => this.emit('error', { type: 'error', code: e2.code, message: e2.message, roomId }),
      });
      rejoin.push(this._makeEntry(msg, (e2) => this._settleJoin(roomId, null, e2)));
    }
    this._queue.unshift(...rejoin, ...again);
    this._goOnline(t, 'rejoined', { rooms: [...this.rooms.keys()] });
  }

  _makeEntry(msg, onError) {
    const out = { ...msg, id: this._idPrefix + this._nextId++ };
    return { msg: out, resolve: () => {}, reject: onError || (() => {}) };
  }

  _goOnline(t, state, extra) {
    this._attempt = 0;
    this._writable = true;
    this._setState(state, extra);
    for (const w of this._connectWaiters.splice(0)) w.resolve(this);
    this._flush();
    this._startHeartbeat(t);
    if (this.mode === 'auto' && t.level > 0) this._scheduleProbe(this.options.probeIntervalMs);
  }

  _flush() {
    if (!this._writable || !this._t) return;
    while (this._queue.length) {
      const e = this._queue.shift();
      this._unacked.set(e.msg.id, e);
      this._write(e.msg);
    }
  }

  _write(msg) {
    const t = this._t;
    if (!t || !t.send(msg)) {
      // The transport refused the write: it is going down, and the message
      // stays in the un-acked list for the resume.
      return false;
    }
    return true;
  }

  _startHeartbeat(t) {
    clearInterval(this._timers.heartbeat);
    const every = this._heartbeatMs;
    this._lastRx = Date.now();
    this._timers.heartbeat = setInterval(() => {
      if (this._t !== t) return;
      if (Date.now() - this._lastRx > every + this.options.pongTimeoutMs) {
        t.close(4008, 'heartbeat timeout');
        this._onClose(t, { code: 4008, reason: 'no pong: connection dead' });
        return;
      }
      this._write({ type: 'ping', timestamp: Date.now() });
    }, every);
  }

  _scheduleProbe(ms) {
    clearTimeout(this._timers.probe);
    this._timers.probe = setTimeout(() => this._probe(), ms);
  }

  /** Connected on SSE or polling: see whether a better transport gets through now. */
  async _probe() {
    const cur = this._t;
    if (!cur || !this.online || cur.level === 0) return;
    await this._openTransport(0, true);
  }

  _probeWelcomed(t, msg) {
    clearTimeout(t.welcomeTimer);
    const old = this._t;
    if (!old || !this.online || this._closedByUser) {
      t.close(1000, 'probe not needed');
      return;
    }
    // Switch: the old transport finishes what it has in flight (a late poll
    // would take the session back), then goes quietly (its session waits in
    // the grace period) and the probe resumes it with everything the old one
    // missed. The probe's own fresh session is left unused meanwhile.
    const drained = Promise.race([old.drain(), new Promise((r) => setTimeout(r, this.options.welcomeTimeoutMs))]);
    drained.then(() => {
      if (this._t !== old || !this.online || this._closedByUser || t.closed) {
        t.close(1000, 'probe not needed');
        return;
      }
      old.close(4000, 'switching transport');
      clearInterval(this._timers.heartbeat);
      this._t = t;
      this._writable = false;
      t.probe = false;
      this._onMessage(t, msg);
    });
  }

  _failAll(err) {
    for (const e of this._queue.splice(0)) e.reject(err);
    for (const e of this._unacked.values()) e.reject(err);
    this._unacked.clear();
    for (const j of this._joins.values()) j.reject(err);
    this._joins.clear();
    for (const w of this._connectWaiters.splice(0)) w.reject(err);
  }
}
