// The three ways a browser can talk to rtchub (PROTOCOL.md "Endpoints",
// "SSE and long-polling"). Each transport is one connection attempt: it is
// opened once, reports decoded server messages through `onmessage` and its
// end through `onclose({code, reason})` exactly once, and never reconnects by
// itself - RtcHub owns reconnects, resume and fallback so that every
// transport behaves the same. After our own close() no callback fires.

import { SERVER_TYPES, SESSION_HEADER } from './protocol.js';

/** Server message types, registered as named SSE events (`event: <type>`):
 * generated from the server's own list (rtchub/protocol/constants.py). */
export { SERVER_TYPES };

const CLOSE_ABNORMAL = 1006;

function httpBase(url) {
  const u = new URL(url);
  if (u.protocol === 'ws:') u.protocol = 'http:';
  if (u.protocol === 'wss:') u.protocol = 'https:';
  u.pathname = u.pathname.replace(/\/+$/, '');
  u.search = '';
  u.hash = '';
  return u;
}

function endpoint(base, path, params = {}) {
  const u = new URL(base.href);
  u.pathname = u.pathname.replace(/\/+$/, '') + path;
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== '') u.searchParams.set(k, String(v));
  }
  return u;
}

class BaseTransport {
  constructor(opts) {
    this.base = httpBase(opts.url);
    this.token = opts.token || null;
    this.onmessage = () => {};
    this.onclose = () => {};
    this.closed = false;
    this.sessionId = null;
  }

  /** Report the end once; our own close() silences it. */
  _ended(code, reason) {
    if (this.closed) return;
    this.closed = true;
    this._teardown();
    const cb = this.onclose;
    this.onmessage = () => {};
    this.onclose = () => {};
    cb({ code, reason });
  }

  _deliver(msg) {
    if (this.closed || !msg || typeof msg !== 'object') return;
    if (msg.type === 'close' && typeof msg.code === 'number') {
      // SSE and polling have no close frame: the server says it in-band.
      this._ended(msg.code, msg.reason || 'closed by server');
      return;
    }
    // The downstream follows the session it feeds: a `welcome` starts one,
    // a `resumed` moves this connection onto the resumed (older) session.
    if ((msg.type === 'welcome' || msg.type === 'resumed') && msg.sessionId) {
      this.sessionId = msg.sessionId;
    }
    this.onmessage(msg);
  }

  close(code = 1000, reason = '') {
    if (this.closed) return;
    this.closed = true;
    this.onmessage = () => {};
    this.onclose = () => {};
    this._teardown(code, reason);
  }

  /**
   * Finish what is in flight without starting anything new, before another
   * transport resumes this session (RtcHub switching up). Resolves when done.
   */
  drain() {
    return Promise.resolve();
  }

  _teardown() {}
}

// ------------------------------------------------------------------ WebSocket

export class WebSocketTransport extends BaseTransport {
  constructor(opts) {
    super(opts);
    this.name = 'websocket';
    this.codec = opts.codec === 'msgpack' ? 'msgpack' : 'json';
    this.msgpack = opts.msgpack || null; // {encode, decode}, loaded by RtcHub
    this.ws = null;
  }

  open() {
    const u = endpoint(this.base, '/ws', { token: this.token });
    u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:';
    const protocols = this.codec === 'msgpack' && this.msgpack
      ? ['rtchub.v1.msgpack', 'rtchub.v1.json'] : ['rtchub.v1.json'];
    let ws;
    try {
      ws = this.ws = new WebSocket(u.href, protocols);
    } catch (err) {
      setTimeout(() => this._ended(CLOSE_ABNORMAL, String(err)), 0);
      return;
    }
    ws.binaryType = 'arraybuffer';
    ws.onmessage = (ev) => {
      let msg;
      try {
        msg = typeof ev.data === 'string'
          ? JSON.parse(ev.data)
          : this.msgpack.decode(new Uint8Array(ev.data));
      } catch (err) {
        console.warn('rtchub: undecodable frame dropped', err);
        return;
      }
      this._deliver(msg);
    };
    ws.onclose = (ev) => this._ended(ev.code || CLOSE_ABNORMAL, ev.reason || 'websocket closed');
    ws.onerror = () => {}; // a close event always follows
  }

  get binary() {
    return this.ws && this.ws.protocol === 'rtchub.v1.msgpack' && this.msgpack;
  }

  send(msg) {
    const ws = this.ws;
    if (this.closed || !ws || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(this.binary ? this.msgpack.encode(msg) : JSON.stringify(msg));
    return true;
  }

  _teardown(code = 1000, reason = '') {
    const ws = this.ws;
    if (!ws) return;
    ws.onmessage = ws.onclose = ws.onerror = null;
    if (ws.readyState === WebSocket.CONNECTING) {
      // Closing a socket that is still connecting logs a console error in
      // Chromium; let it open and close it then.
      ws.onopen = () => ws.close(code, reason);
    } else if (ws.readyState === WebSocket.OPEN) {
      try { ws.close(code, reason); } catch { ws.close(); }
    }
  }
}

// ------------------------------------------------ upstream for SSE / polling

/**
 * POST /send (session in the X-RtcHub-Session header), one request at a time so the server sees messages in
 * the order they were written; whatever piles up meanwhile goes as one array.
 */
class HttpUpstream {
  constructor(transport) {
    this.t = transport;
    this.pending = [];
    this.busy = false;
  }

  push(msg) {
    this.pending.push(msg);
    if (!this.busy) this._pump();
  }

  async _pump() {
    const t = this.t;
    this.busy = true;
    try {
      while (this.pending.length && !t.closed) {
        if (!t.sessionId) return; // not open yet; flushed after welcome
        const batch = this.pending.splice(0, this.pending.length);
        let resp;
        try {
          resp = await fetch(endpoint(t.base, '/send'), {
            method: 'POST',
            headers: t.headers({ 'Content-Type': 'application/json' }, t.sessionId),
            body: JSON.stringify(batch.length === 1 ? batch[0] : batch),
            cache: 'no-store',
          });
        } catch (err) {
          t._ended(CLOSE_ABNORMAL, `send failed: ${err}`);
          return;
        }
        if (!resp.ok) {
          let body = null;
          try { body = await resp.json(); } catch { /* not JSON */ }
          const code = body && (body.code || (body.error && body.error.code));
          if (resp.status === 401 || resp.status === 403) {
            t._ended(resp.status === 401 ? 4001 : 4003, code || `HTTP ${resp.status}`);
          } else if (resp.status >= 500 || resp.status === 404) {
            // Session unknown here (server restarted) or broken: reconnect.
            t._ended(CLOSE_ABNORMAL, code || `HTTP ${resp.status}`);
          } else {
            // 400/413: this batch is refused, the connection is fine. The
            // messages stay un-acked in RtcHub and are resent after a resume.
            console.warn('rtchub: /send refused', resp.status, body);
          }
        }
      }
    } finally {
      this.busy = false;
    }
  }
}

class HttpTransport extends BaseTransport {
  constructor(opts) {
    super(opts);
    this.up = new HttpUpstream(this);
  }

  /** Credentials go in headers, never in the URL (PROTOCOL.md "SSE and
   * long-polling"): the token as a Bearer token, the session id as
   * X-RtcHub-Session. Only EventSource, which cannot set headers, uses ?token=. */
  headers(extra = {}, sessionId = null) {
    const h = { ...extra };
    if (this.token) h.Authorization = `Bearer ${this.token}`;
    if (sessionId) h[SESSION_HEADER] = sessionId;
    return h;
  }

  send(msg) {
    if (this.closed || !this.sessionId) return false;
    this.up.push(msg);
    return true;
  }

  /** Leave for good: without a close frame, POST /close says it (else: grace period). */
  close(code = 1000, reason = '') {
    const sessionId = this.sessionId;
    if (!this.closed && code === 1000 && sessionId) {
      fetch(endpoint(this.base, '/close'), {
        method: 'POST', headers: this.headers({}, sessionId), keepalive: true, cache: 'no-store',
      }).catch(() => {});
    }
    super.close(code, reason);
  }
}

// ------------------------------------------------------------------------ SSE

export class SseTransport extends HttpTransport {
  constructor(opts) {
    super(opts);
    this.name = 'sse';
    this.es = null;
    this.extraTypes = opts.extraTypes || [];
  }

  open() {
    const es = this.es = new EventSource(endpoint(this.base, '/sse', { token: this.token }).href);
    const seen = new Set();
    const handle = (type) => (ev) => {
      // EventSource's own 'error' (connection trouble) has no data; a
      // server `error` message is a MessageEvent with data.
      if (typeof ev.data !== 'string') return;
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch {
        console.warn('rtchub: undecodable SSE event dropped', ev.data);
        return;
      }
      if (msg && typeof msg === 'object') {
        if (!msg.type && type !== 'message') msg.type = type;
        if (typeof msg.seq !== 'number' && ev.lastEventId) {
          const seq = Number(ev.lastEventId.split('.').pop());
          if (Number.isFinite(seq)) msg.seq = seq;
        }
      }
      this._deliver(msg);
    };
    for (const type of [...SERVER_TYPES, ...this.extraTypes]) {
      if (seen.has(type)) continue;
      seen.add(type);
      es.addEventListener(type, handle(type));
    }
    // The browser would reconnect by itself with Last-Event-ID; RtcHub does
    // it instead (with backoff, fallback and an explicit resume), so any
    // connection error ends this transport. A server `error` message arrives
    // as an event named "error" too, which also calls onerror: it is a
    // MessageEvent with data, handled above, and must not end the stream.
    es.onerror = (ev) => {
      if (typeof ev.data === 'string') return;
      this._ended(CLOSE_ABNORMAL, 'event stream failed');
    };
  }

  _teardown() {
    if (this.es) {
      this.es.onerror = null;
      this.es.close();
    }
  }
}

// ---------------------------------------------------------------- long-polling

export class PollingTransport extends HttpTransport {
  constructor(opts) {
    super(opts);
    this.name = 'polling';
    this.resumesByPolling = true;
    this.after = -1;
    this.timeout = opts.pollTimeout ?? 25;
    this.abort = new AbortController();
    this.draining = null; // {promise, resolve} while drain() waits for the loop
    this.polling = false;
  }

  /**
   * A poll the browser already sent cannot be called back by aborting it: if
   * it reaches the server after another transport resumed the session, the
   * server takes that poll for a resume over polling (that is how polling
   * resumes), moves the session back and closes the new transport with 4009.
   * So the loop stops before its next poll, a `ping` makes the server answer
   * the one in flight (its `pong`), and only then does the switch go on.
   */
  drain() {
    if (this.closed || !this.polling) return Promise.resolve();
    if (!this.draining) {
      let resolve;
      const promise = new Promise((r) => { resolve = r; });
      this.draining = { promise, resolve };
      this.up.push({ type: 'ping' });
    }
    return this.draining.promise;
  }

  /**
   * With `resume {sessionId, lastSeq}`, the first poll asks for the old
   * session directly (over polling the poll itself is the resume: the server
   * replays, then says `resumed`). If that session is gone (404), a fresh one
   * is opened and its `welcome` tells RtcHub to rejoin.
   */
  async open(resume = null) {
    if (resume && resume.sessionId) {
      this.sessionId = resume.sessionId;
      this.after = resume.lastSeq;
      this._loop(true);
      return;
    }
    await this._openFresh();
  }

  async _openFresh() {
    let resp;
    try {
      resp = await fetch(endpoint(this.base, '/poll/open'), {
        method: 'POST', headers: this.headers(), cache: 'no-store', signal: this.abort.signal,
      });
    } catch (err) {
      this._ended(CLOSE_ABNORMAL, `poll/open failed: ${err}`);
      return;
    }
    if (!resp.ok) {
      this._ended(resp.status === 401 ? 4001 : resp.status === 403 ? 4003 : CLOSE_ABNORMAL,
        `poll/open: HTTP ${resp.status}`);
      return;
    }
    let opened;
    try {
      opened = await resp.json();
    } catch {
      this._ended(CLOSE_ABNORMAL, 'poll/open: not JSON');
      return;
    }
    if (this.closed) return;
    this.sessionId = opened.sessionId;
    // The welcome (seq 0) may come with the open answer or from the first poll.
    const first = Array.isArray(opened.messages) ? opened.messages
      : opened.welcome ? [opened.welcome] : opened.type === 'welcome' ? [opened] : [];
    for (const msg of first) this._take(msg);
    this.up._pump();
    this._loop();
  }

  _take(msg) {
    if (typeof msg.seq === 'number') this.after = msg.seq;
    this._deliver(msg);
  }

  async _loop(resuming = false) {
    this.polling = true;
    try {
      await this._polls(resuming);
    } finally {
      this.polling = false;
      if (this.draining) this.draining.resolve();
    }
  }

  async _polls(resuming) {
    while (!this.closed && !this.draining) {
      // The resuming poll must not hang for a long-poll's length.
      const params = { timeout: resuming ? 0 : this.timeout };
      if (this.after >= 0) params.after = this.after;
      let resp;
      try {
        resp = await fetch(endpoint(this.base, '/poll', params), {
          headers: this.headers({}, this.sessionId), cache: 'no-store', signal: this.abort.signal,
        });
      } catch (err) {
        this._ended(CLOSE_ABNORMAL, `poll failed: ${err}`);
        return;
      }
      if (this.closed) return;
      if (resuming && resp.status === 404) {
        await this._openFresh(); // session expired: a new one, RtcHub rejoins
        return;
      }
      const wasResuming = resuming;
      resuming = false;
      if (!resp.ok) {
        this._ended(resp.status === 401 ? 4001 : resp.status === 403 ? 4003 : CLOSE_ABNORMAL,
          `poll: HTTP ${resp.status}`);
        return;
      }
      let batch;
      try {
        batch = await resp.json();
      } catch {
        this._ended(CLOSE_ABNORMAL, 'poll: not JSON');
        return;
      }
      if (!Array.isArray(batch)) batch = batch && Array.isArray(batch.messages) ? batch.messages : [];
      for (const msg of batch) {
        if (this.closed) return;
        this._take(msg);
      }
      if (wasResuming && !this.closed && !batch.some((m) => m && m.type === 'resumed')) {
        // The server still had this poller attached (it had not noticed the
        // drop), so the poll just continued the session: that is a resume too.
        this._deliver({ type: 'resumed', sessionId: this.sessionId, replayed: batch.length });
      }
    }
  }

  _teardown() {
    this.abort.abort();
  }
}

export const TRANSPORTS = {
  websocket: WebSocketTransport,
  sse: SseTransport,
  polling: PollingTransport,
};
