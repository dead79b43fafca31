// Load client for `rtchub bench`: speaks the tutorial signaling messages to any of the servers.
//
// One process, pinned by the harness to its own core. It reports its own CPU use so the
// harness can say when the client, not the server, was the limit. It works against rtchub
// (which sends `welcome` first and stamps `seq`) and the tutorial relays alike: it only looks
// at `type`, and at the `t` (send time, ms) / `n` (broadcast number) fields it put in itself.
//
// usage: node loadgen.js '<json config>'
// Prints `EVENT <name>` lines the harness syncs on (it samples server CPU / RSS there), and one
// final `RESULT <json>` line. Reads `stop` on stdin (idle mode). Every phase is time-bounded.
'use strict';
const WebSocket = require('ws');
const { performance } = require('perf_hooks');

const cfg = JSON.parse(process.argv[2] || '{}');
const urls = cfg.urls || ['ws://127.0.0.1:8080/ws'];
const mode = cfg.mode || 'relay';
const deflate = !!cfg.deflate;
const conns = cfg.connections || 400;
const roomSize = cfg.roomSize || 2;
const msgSize = cfg.msgSize || 350;
const window_ = cfg.window || 8;
const warmup = (cfg.warmup ?? 1) * 1000;
const duration = (cfg.duration ?? 3) * 1000;
const rate = cfg.rate || 5000;
const concurrency = cfg.concurrency || 200;
const senders = cfg.senders || 4;
const setupTimeout = (cfg.setupTimeout ?? 60) * 1000;
const hardLimit = (cfg.hardLimit ?? 180) * 1000;

setTimeout(() => fail('hard time limit reached'), hardLimit).unref();

function emit(name) { process.stdout.write(`EVENT ${name}\n`); }
function fail(why) {
  process.stdout.write('RESULT ' + JSON.stringify({ error: why, stats: stats() }) + '\n');
  process.exit(2);
}

// ---- latency histogram (µs): 1 µs bins to 2 ms, 10 µs to 20 ms, 100 µs to 200 ms, 1 ms above.
const hist = new Map();
let latMax = 0;
let latCount = 0;
function record(ms) {
  let us = ms * 1000;
  if (us < 0) us = 0;
  if (us > latMax) latMax = us;
  latCount++;
  let b;
  if (us < 2000) b = Math.floor(us);
  else if (us < 20000) b = Math.floor(us / 10) * 10;
  else if (us < 200000) b = Math.floor(us / 100) * 100;
  else b = Math.floor(us / 1000) * 1000;
  hist.set(b, (hist.get(b) || 0) + 1);
}
function resetLatency() { hist.clear(); latMax = 0; latCount = 0; }
function histogram() { return [...hist.entries()].sort((a, b) => a[0] - b[0]); }

let delivered = 0;
let errors = 0;
let lastError = null;
let unexpectedClose = 0;
let cpuMark = process.cpuUsage();
let wallMark = performance.now();
function markCpu() { cpuMark = process.cpuUsage(); wallMark = performance.now(); }
function cpuFraction() {
  const u = process.cpuUsage(cpuMark);
  const wall = performance.now() - wallMark;
  return wall > 0 ? (u.user + u.system) / 1000 / wall : 0;
}
function stats() { return { delivered, errors, lastError, unexpectedClose }; }

// ---- connections: a minimal RFC 6455 client, so the client is cheap per message.
//
// `ws` costs the client about as much CPU per message as the Node relay costs the server, which
// would make the client the bottleneck. This client writes each frame with a zero masking key
// (RFC 6455 section 5.3 requires a key, not a random-looking one from a load generator; the XOR
// is then a no-op) and sends all frames of one loop turn in one write per connection. With
// `deflate` (idle scenario, compression on) connections use the `ws` package instead, which
// negotiates permessage-deflate (RFC 7692).
const net = require('net');
const HANDSHAKE_TAIL = '\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
  'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n';
const dirty = [];
let flushScheduled = false;
function flushAll() {
  flushScheduled = false;
  for (const c of dirty) {
    const q = c.out;
    c.out = null;
    if (c.open) c.sock.write(q.length === 1 ? q[0] : Buffer.concat(q));
  }
  dirty.length = 0;
}

class RawConn {
  constructor(url, handlers) {
    const u = new URL(url);
    this.h = handlers;
    this.open = false;
    this.closed = false;
    this.out = null;
    this.buf = null;
    this.sock = net.connect({ host: u.hostname, port: Number(u.port) });
    this.sock.setNoDelay(true);
    this.sock.on('connect', () => {
      this.sock.write(`GET ${u.pathname} HTTP/1.1\r\nHost: ${u.host}${HANDSHAKE_TAIL}`);
    });
    this.sock.on('data', (d) => this.data(d));
    this.sock.on('close', () => { this.open = false; if (!this.closed) { this.closed = true; this.h.close(); } });
    this.sock.on('error', (e) => this.h.error(e));
  }
  get ready() { return this.open; }
  data(d) {
    let buf = this.buf ? Buffer.concat([this.buf, d]) : d;
    this.buf = null;
    if (!this.open) {
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0) { this.buf = buf; return; }
      if (buf.toString('latin1', 9, 12) !== '101') { this.h.error(new Error(buf.toString('latin1', 0, end))); this.sock.destroy(); return; }
      this.open = true;
      this.h.open();
      buf = buf.subarray(end + 4);
    }
    let off = 0;
    const n = buf.length;
    while (n - off >= 2) {
      const op = buf[off] & 0x0f;
      let len = buf[off + 1] & 0x7f;
      let hdr = 2;
      if (len === 126) { if (n - off < 4) break; len = buf.readUInt16BE(off + 2); hdr = 4; }
      else if (len === 127) { if (n - off < 10) break; len = Number(buf.readBigUInt64BE(off + 2)); hdr = 10; }
      if (n - off < hdr + len) break;
      const payload = buf.subarray(off + hdr, off + hdr + len);
      off += hdr + len;
      if (op === 1 || op === 2) this.h.message(payload);
      else if (op === 9) this.frame(0x8a, payload);
      else if (op === 8) { this.frame(0x88, payload.subarray(0, 2)); }
    }
    if (off < n) this.buf = Buffer.from(buf.subarray(off));
  }
  frame(b0, payload) {
    const len = payload.length;
    const hdr = len < 126 ? 6 : len < 65536 ? 8 : 14;
    const f = Buffer.allocUnsafe(hdr + len);
    f[0] = b0;
    if (len < 126) { f[1] = 0x80 | len; }
    else if (len < 65536) { f[1] = 0x80 | 126; f.writeUInt16BE(len, 2); }
    else { f[1] = 0x80 | 127; f.writeBigUInt64BE(BigInt(len), 2); }
    f.writeUInt32BE(0, hdr - 4); // masking key 0
    if (typeof payload === 'string') f.write(payload, hdr, 'latin1'); else payload.copy(f, hdr);
    this.queue(f);
  }
  send(text) { if (this.open) this.frame(0x81, text); }
  queue(f) {
    if (this.out === null) {
      this.out = [f];
      dirty.push(this);
      if (!flushScheduled) { flushScheduled = true; setImmediate(flushAll); }
    } else this.out.push(f);
  }
  terminate() { this.closed = true; this.open = false; this.sock.destroy(); }
}

class WsConn {
  constructor(url, h) {
    this.ws = new WebSocket(url, { perMessageDeflate: deflate, skipUTF8Validation: true, maxPayload: 1 << 20 });
    this.ws.on('open', () => h.open());
    this.ws.on('message', (b) => h.message(b));
    this.ws.on('close', () => h.close());
    this.ws.on('error', (e) => h.error(e));
  }
  get ready() { return this.ws.readyState === 1; }
  send(text) { if (this.ws.readyState === 1) this.ws.send(text); }
  terminate() { this.ws.terminate(); }
}
function send(c, text) { c.ws.send(text); }

// ---- connections
const pad = 'x'.repeat(4096);
function relayPayload(c, to) {
  // `t` first so the receiver finds it without a JSON parse; padded to msgSize bytes.
  const head = `{"type":"candidate","t":${performance.now().toFixed(3)},"roomId":"${c.room}","to":"${to}","candidate":"candidate:`;
  const fill = Math.max(0, msgSize - head.length - 2);
  return head + pad.slice(0, fill) + '"}';
}
let bcastN = 0;
function broadcastPayload(c) {
  const head = `{"type":"message","t":${performance.now().toFixed(3)},"n":${++bcastN},"roomId":"${c.room}","data":"`;
  const fill = Math.max(0, msgSize - head.length - 2);
  return head + pad.slice(0, fill) + '"}';
}

function fastField(buf, key) {
  const i = buf.indexOf(key);
  if (i < 0) return NaN;
  return parseFloat(buf.toString('latin1', i + key.length, i + key.length + 24));
}

let onBulk = null; // (conn, buf) for messages carrying "t"
let recording = false;
const T_KEY = '"t":';
const N_KEY = '"n":';

function open(i) {
  const url = urls[i % urls.length];
  const c = {
    i, user: `u${i}`, room: `r${Math.floor(i / roomSize)}`,     joined: false, started: performance.now(), joinedAt: 0, onJoined: null,
  };
  const Conn = deflate ? WsConn : RawConn;
  c.ws = new Conn(url, {
    open: () => c.ws.send(JSON.stringify({ type: 'join', roomId: c.room, userId: c.user })),
    message: (buf) => onMessage(c, buf),
    close: () => { if (!stopping) unexpectedClose++; },
    error: (e) => { lastError = String(e); },
  });
  return c;
}

const ROOM_INFO = '"room-info"';
const ERROR_TYPE = '"error"';

function onMessage(c, buf) {
  {
    if (buf.indexOf(T_KEY) >= 0) { if (onBulk) onBulk(c, buf); return; }
    // Parse only what the client acts on (a room-info it waits for, an error):
    // JSON.parse of every welcome, user-joined or pong made the load client the
    // join-storm's bottleneck (80-90 % of its core), penalising the server that
    // says more per join.
    if (c.joined || buf.indexOf(ROOM_INFO) < 0) {
      if (buf.indexOf(ERROR_TYPE) < 0) return;
    }
    let msg;
    try { msg = JSON.parse(buf); } catch (e) { errors++; return; }
    if (msg.type === 'room-info' && !c.joined) {
      c.joined = true;
      c.joinedAt = performance.now();
      if (c.onJoined) c.onJoined(c);
    } else if (msg.type === 'error') {
      errors++;
      lastError = msg;
    }
  }
}

// Open n connections, at most `concurrency` handshakes+joins in flight; resolve when all joined.
function openAll(n, onJoinedEach) {
  return new Promise((resolve, reject) => {
    const all = new Array(n);
    let next = 0;
    let done = 0;
    const timer = setTimeout(() => reject(new Error(`setup: only ${done}/${n} joined in time`)), setupTimeout);
    function launch() {
      if (next >= n) return;
      const c = open(next);
      all[next++] = c;
      c.onJoined = (cc) => {
        done++;
        if (onJoinedEach) onJoinedEach(cc);
        if (done === n) { clearTimeout(timer); resolve(all); } else launch();
      };
    }
    for (let k = 0; k < Math.min(concurrency, n); k++) launch();
  });
}

let stopping = false;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function measureWindow() {
  await sleep(warmup);
  delivered = 0; errors = 0; resetLatency(); recording = true;
  markCpu();
  emit('measure-start');
  const t0 = performance.now();
  await sleep(duration);
  const elapsed = (performance.now() - t0) / 1000;
  const count = delivered;
  const cpu = cpuFraction();
  recording = false;
  emit('measure-end');
  return { elapsed, count, cpu };
}

function closeAll(all) {
  stopping = true;
  for (const c of all) if (c) c.ws.terminate();
}

async function relay() {
  const all = await openAll(conns);
  emit('joined');
  let running = true;
  const peerOf = (c) => all[c.i ^ 1];
  onBulk = (c, buf) => {
    if (recording) { delivered++; record(performance.now() - fastField(buf, T_KEY)); }
    if (running) { const p = c; send(p, relayPayload(p, peerOf(p).user)); }
  };
  for (const c of all) for (let k = 0; k < window_; k++) send(c, relayPayload(c, peerOf(c).user));
  const w = await measureWindow();
  running = false;
  await sleep(200);
  closeAll(all);
  return { msgsPerSec: w.count / w.elapsed, delivered: w.count, elapsed: w.elapsed, clientCpu: w.cpu };
}

async function relayRate() {
  const all = await openAll(conns);
  emit('joined');
  onBulk = (c, buf) => {
    if (recording) { delivered++; record(performance.now() - fastField(buf, T_KEY)); }
  };
  let sent = 0;
  let rr = 0;
  const start = performance.now();
  const timer = setInterval(() => {
    const due = Math.floor(((performance.now() - start) / 1000) * rate);
    while (sent < due) {
      const c = all[rr];
      rr = (rr + 1) % all.length;
      send(c, relayPayload(c, all[c.i ^ 1].user));
      sent++;
    }
  }, 1);
  const w = await measureWindow();
  clearInterval(timer);
  await sleep(200);
  closeAll(all);
  return { msgsPerSec: w.count / w.elapsed, delivered: w.count, elapsed: w.elapsed, clientCpu: w.cpu };
}

async function joinStorm() {
  markCpu();
  emit('measure-start');
  const t0 = performance.now();
  const all = await openAll(conns, (c) => record(c.joinedAt - c.started));
  const elapsed = (performance.now() - t0) / 1000;
  const cpu = cpuFraction();
  emit('measure-end');
  closeAll(all);
  return { joinsPerSec: conns / elapsed, joined: conns, elapsed, clientCpu: cpu };
}

async function idle() {
  const all = await openAll(conns);
  emit('ready');
  // The harness samples server RSS now, then writes `stop` (bounded wait).
  await new Promise((resolve) => {
    const t = setTimeout(resolve, 60000);
    process.stdin.on('data', (d) => { if (String(d).includes('stop')) { clearTimeout(t); resolve(); } });
  });
  const alive = all.filter((c) => c.ws.ready).length;
  closeAll(all);
  return { connections: conns, alive };
}

async function fanout() {
  const all = await openAll(conns); // one room: roomSize = connections
  emit('joined');
  const members = all.length;
  const counts = new Map();
  let running = true;
  const senderConns = all.slice(0, senders);
  const ownerOf = new Map();
  function fire(c) {
    const p = broadcastPayload(c);
    counts.set(bcastN, 0);
    ownerOf.set(bcastN, c);
    send(c, p);
  }
  onBulk = (c, buf) => {
    if (recording) { delivered++; record(performance.now() - fastField(buf, T_KEY)); }
    const n = fastField(buf, N_KEY);
    const seen = counts.get(n) + 1;
    if (seen >= members - 1) {
      counts.delete(n);
      const owner = ownerOf.get(n);
      ownerOf.delete(n);
      if (running) fire(owner);
    } else counts.set(n, seen);
  };
  for (const c of senderConns) for (let k = 0; k < window_; k++) fire(c);
  const w = await measureWindow();
  running = false;
  await sleep(200);
  closeAll(all);
  return { deliveriesPerSec: w.count / w.elapsed, delivered: w.count, elapsed: w.elapsed, clientCpu: w.cpu };
}

const modes = { relay, 'relay-rate': relayRate, 'join-storm': joinStorm, idle, fanout };

(async () => {
  const run = modes[mode];
  if (!run) fail(`unknown mode ${mode}`);
  let result;
  try {
    result = await run();
  } catch (e) {
    fail(String(e && e.message || e));
  }
  result.histogram = histogram();
  result.latencyCount = latCount;
  result.latencyMaxUs = latMax;
  Object.assign(result, stats());
  process.stdout.write('RESULT ' + JSON.stringify(result) + '\n');
  setTimeout(() => process.exit(0), 100);
})();
