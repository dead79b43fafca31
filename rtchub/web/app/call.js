// Video call page: by default an AutoCall (peer-to-peer for two, through the
// SFU from three, as the server's media-route says; adaptive simulcast per
// tile; the active speaker in the large tile), or (?media=mesh) a mesh call
// through the SDK's Call helper, or (?media=sfu) an SFU call through SfuCall, with a video grid, media controls, a chat +
// file panel, and a live diagnostics panel fed by call.stats() once a second.
// The room's media mode is the server's decision (room-info.media): a page
// that asked for the other one reloads itself with the room's mode.
import { AutoCall, Call, RtcHub, SfuCall } from '/sdk/rtchub.js';
import { ChatLog, wireComposer } from './chatlog.js';
import {
  $, Banners, ConnectionView, askName, cleanName, cleanRoom, colorFor, copyText, describeError,
  el, formatBytes, hydrateIcons, icon, initials, inviteUrl, newUserId, params, saveName,
  showOverlay, toast, validRoom,
} from './common.js';

hydrateIcons();

const room = cleanRoom(params.get('room'));
if (!validRoom(room)) location.replace('/');

const grid = $('#grid');
const banners = new Banners($('#banners'));
const conn = new ConnectionView({ pill: $('#status'), banners });
const log = new ChatLog($('#log'), $('#empty'));
const wide = window.matchMedia('(min-width: 901px)');

$('#room-name').textContent = room;
document.title = `${room} · Call · rtchub`;
document.body.classList.toggle('panel-open', wide.matches);

const wantedMedia = ['mesh', 'sfu', 'auto'].includes(params.get('media')) ? params.get('media') : null;

const app = {
  mode: wantedMedia || 'auto',
  route: null,
  speaker: null,
  errors: [], // error messages the server sent this page (tests read them)
  pinned: null,
  hub: null,
  call: null,
  me: null,
  localStream: null,
  tiles: new Map(), // userId -> Tile (remote)
  names: new Map(), // userId -> displayName
  mic: true,
  cam: true,
  sharing: false,
  left: false,
};
window.rtchubDemo = app;
/** Put userId in the large tile (null: follow the active speaker again). */
app.spotlight = (userId) => { app.pinned = userId; layout(); };

const nameOf = (userId) => app.names.get(userId) || userId || 'Someone';

// =================================================================== tiles
class Tile {
  constructor(userId, name, { local = false } = {}) {
    this.userId = userId;
    this.local = local;
    this.video = this._newVideo(local);
    this.pending = null;
    this.avatarText = el('span', { style: { '--avatar': colorFor(userId) } });
    this.nameText = el('span', { class: 'name' });
    this.micIcon = icon('micOff');
    this.micIcon.hidden = true;
    this.badge = el('span', { class: 'badge' });
    this.badge.hidden = true;
    this.node = el('div', { class: `tile ${local ? 'local' : 'remote'}`, dataset: { userId } },
      this.video,
      el('div', { class: 'avatar' }, this.avatarText),
      el('div', { class: 'nameplate' }, this.micIcon, this.nameText),
      this.badge);
    this.setName(name);
  }

  _newVideo(muted) {
    const video = el('video', { autoplay: true, playsInline: true, muted });
    video.muted = muted; // the property, not just the attribute, decides
    video.addEventListener('resize', () => this._checkVideo());
    video.addEventListener('loadeddata', () => this._checkVideo());
    return video;
  }

  setName(name) {
    this.name = name;
    this.nameText.textContent = this.local ? `${name} (you)` : name;
    this.avatarText.textContent = initials(name);
  }

  setStream(stream, { mirror = this.local } = {}) {
    this.node.classList.toggle('mirror', mirror);
    if (this.video.srcObject === stream) return;
    const showing = !this.local && stream && this.video.srcObject && this.video.videoWidth > 0
      && stream.getVideoTracks().length > 0;
    if (showing) {
      this._swapTo(stream);
      return;
    }
    this.video.srcObject = stream;
    this._checkVideo();
    if (!stream) return;
    this._play(this.video);
  }

  /**
   * A new stream for a tile that shows video (the call moved between
   * peer-to-peer and the SFU): it plays under the current picture, which is
   * removed only once the new one has painted its first frame. No black tile.
   */
  _swapTo(stream) {
    if (this.pending) this.pending.remove();
    const next = this._newVideo(this.video.muted);
    next.classList.add('incoming');
    next.srcObject = stream;
    this.pending = next;
    this.video.after(next);
    let timer = null;
    const done = () => {
      if (this.pending !== next) return;
      clearTimeout(timer);
      this.pending = null;
      const old = this.video;
      this.video = next;
      next.classList.remove('incoming');
      old.srcObject = null;
      old.remove();
      this._checkVideo();
    };
    if (next.requestVideoFrameCallback) next.requestVideoFrameCallback(() => done());
    else next.addEventListener('playing', done, { once: true });
    timer = setTimeout(done, 4000); // never keep a stale picture for long
    this._play(next);
  }

  _play(video) {
    const p = video.play();
    if (p) {
      p.catch((err) => {
        if (err?.name === 'NotAllowedError' && !video.muted) {
          // Autoplay with sound was refused: play muted, offer a click to unmute.
          video.muted = true;
          video.play().catch(() => {});
          soundBlocked();
        }
      });
    }
  }

  _checkVideo() {
    const s = this.video.srcObject;
    const live = s && s.getVideoTracks().some((t) => t.readyState === 'live');
    this.node.classList.toggle('has-video', Boolean(live && this.video.videoWidth > 0));
  }

  setCamOff(off) { this.node.classList.toggle('cam-off', off); }
  setMicOff(off) { this.micIcon.hidden = !off; }

  setBadge(text, kind = '') {
    this.badge.hidden = !text;
    this.badge.textContent = text || '';
    this.badge.dataset.kind = kind;
  }

  remove() {
    this.video.srcObject = null;
    if (this.pending) this.pending.srcObject = null;
    this.node.remove();
  }
}

let localTile = null;
const waiting = el('div', { class: 'tile waiting', id: 'waiting' },
  el('div', {},
    el('h3', {}, 'Waiting for others to join'),
    el('p', {}, 'Share the link — everyone who opens it joins this call.'),
    el('button', { class: 'btn btn-sm', type: 'button', onclick: copyInvite }, icon('copy'), 'Copy invite link')));

function layout() {
  const remotes = app.tiles.size;
  waiting.hidden = remotes > 0 || app.left;
  if (remotes === 0 && !app.left && !waiting.isConnected) grid.append(waiting);
  if (remotes > 0) waiting.remove();
  const count = (localTile ? 1 : 0) + remotes + (waiting.isConnected ? 1 : 0);
  grid.dataset.count = String(Math.max(1, count));
  // The spotlight: a pinned tile, else the active speaker, once there are two others.
  const spot = app.pinned && app.tiles.has(app.pinned) ? app.pinned
    : (remotes >= 2 && app.tiles.has(app.speaker) ? app.speaker : null);
  grid.classList.toggle('has-spotlight', Boolean(spot));
  for (const [id, tile] of app.tiles) tile.node.classList.toggle('spotlight', id === spot);
}

/**
 * Largest 16:9 tile size for which all tiles fit the stage without
 * scrolling: try every column count and keep the widest result. Phones use
 * the CSS layout (stacked full-width tiles) instead.
 */
function fitTiles() {
  const n = grid.children.length;
  if (!n || window.innerWidth <= 640) {
    grid.style.removeProperty('--tile-w');
    return;
  }
  const cs = getComputedStyle(grid);
  const gap = parseFloat(cs.columnGap) || 12;
  const W = grid.clientWidth - parseFloat(cs.paddingLeft) - parseFloat(cs.paddingRight);
  const H = grid.clientHeight - parseFloat(cs.paddingTop) - parseFloat(cs.paddingBottom);
  let best = 0;
  // A landscape stage reads best with at least as many columns as rows.
  const minCols = W > H ? Math.ceil(Math.sqrt(n)) : 1;
  for (let cols = minCols; cols <= n; cols += 1) {
    const rows = Math.ceil(n / cols);
    const w = Math.min((W - (cols - 1) * gap) / cols, ((H - (rows - 1) * gap) / rows) * (16 / 9));
    if (w > best) best = w;
  }
  grid.style.setProperty('--tile-w', `${Math.max(160, Math.floor(best))}px`);
}
new ResizeObserver(fitTiles).observe(grid);
new MutationObserver(fitTiles).observe(grid, { childList: true });

function remoteTile(userId, name) {
  let tile = app.tiles.get(userId);
  if (!tile) {
    tile = new Tile(userId, name || nameOf(userId));
    tile.setBadge('Connecting…');
    app.tiles.set(userId, tile);
    grid.append(tile.node);
    layout();
    // Adaptive simulcast: the tile's size and visibility pick its layer.
    if (app.call instanceof AutoCall && !userId.includes(':')) app.call.observe(userId, tile.node);
  } else if (name) {
    tile.setName(name);
  }
  return tile;
}

function dropTile(userId) {
  const tile = app.tiles.get(userId);
  if (!tile) return;
  tile.remove();
  app.tiles.delete(userId);
  diag.forget(userId);
  stuckSince.delete(userId);
  layout();
}

function soundBlocked() {
  banners.show('sound', {
    kind: 'info', iconName: 'mic',
    text: 'Your browser paused the call audio until you interact with the page.',
    actions: [el('button', {
      class: 'btn btn-sm', type: 'button',
      onclick: () => {
        for (const t of app.tiles.values()) {
          t.video.muted = false;
          t.video.play().catch(() => {});
        }
        banners.hide('sound');
      },
    }, 'Turn on sound')],
  });
}

// =================================================================== media
/**
 * Camera + microphone, else microphone only, else nothing (receive-only).
 * Each step down is explained in a banner: a blocked camera must never look
 * like a broken call.
 */
function captureSize() {
  // ?video=640x360 asks for a smaller camera (many pages on one machine: the bench).
  const m = /^(\d{2,4})x(\d{2,4})$/.exec(params.get('video') || '');
  const [w, h] = m ? [Number(m[1]), Number(m[2])] : [1280, 720];
  return { width: { ideal: w }, height: { ideal: h }, frameRate: { ideal: m ? 15 : 30 } };
}

async function getLocalMedia() {
  const md = navigator.mediaDevices;
  if (!md?.getUserMedia) {
    return { stream: null, problem: 'Camera and microphone need a secure (HTTPS) page. You joined receive-only.' };
  }
  try {
    const stream = await md.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: true },
      video: captureSize(),
    });
    return { stream, problem: null };
  } catch (err) {
    const denied = err?.name === 'NotAllowedError' || err?.name === 'SecurityError';
    try {
      const stream = await md.getUserMedia({ audio: true });
      return {
        stream,
        problem: denied
          ? 'Camera access was blocked, so others only hear you. Allow the camera in the address bar and rejoin to be seen.'
          : 'No camera found, so others only hear you.',
      };
    } catch {
      return {
        stream: null,
        problem: denied
          ? 'Camera and microphone access was blocked. You joined receive-only: you can see and hear others, and chat. Allow access in the address bar and rejoin to be seen and heard.'
          : 'No camera or microphone available. You joined receive-only: you can see and hear others, and chat.',
      };
    }
  }
}

function hasTrack(kind) {
  return Boolean(app.localStream?.getTracks().some((t) => t.kind === kind));
}

// ================================================================ controls
function setCtl(btn, { off, label, iconName, title }) {
  btn.classList.toggle('off', off);
  btn.setAttribute('aria-pressed', String(off));
  btn.querySelector('.lbl').textContent = label;
  btn.title = title;
  btn.querySelector('.bubble').replaceChildren(icon(iconName));
}

function renderControls() {
  const mic = $('#btn-mic');
  const cam = $('#btn-cam');
  const scr = $('#btn-screen');
  mic.disabled = !hasTrack('audio');
  cam.disabled = !hasTrack('video');
  setCtl(mic, app.mic && hasTrack('audio')
    ? { off: false, label: 'Mute', iconName: 'mic', title: 'Mute microphone' }
    : { off: true, label: hasTrack('audio') ? 'Unmute' : 'No mic', iconName: 'micOff', title: hasTrack('audio') ? 'Unmute microphone' : 'No microphone' });
  setCtl(cam, app.cam && hasTrack('video')
    ? { off: false, label: 'Stop video', iconName: 'video', title: 'Turn camera off' }
    : { off: true, label: hasTrack('video') ? 'Start video' : 'No camera', iconName: 'videoOff', title: hasTrack('video') ? 'Turn camera on' : 'No camera' });
  scr.setAttribute('aria-pressed', String(app.sharing));
  scr.querySelector('.lbl').textContent = app.sharing ? 'Stop share' : 'Share';
  scr.title = app.sharing ? 'Stop sharing your screen' : 'Share your screen';
  // The shared screen replaces the outgoing camera track, so it needs one.
  scr.disabled = !app.call || !navigator.mediaDevices?.getDisplayMedia || !hasTrack('video');
  if (!hasTrack('video')) scr.title = 'Screen sharing needs a camera track in this call';
  if (localTile) {
    localTile.setMicOff(!(app.mic && hasTrack('audio')));
    localTile.setCamOff(!app.sharing && !(app.cam && hasTrack('video')));
  }
}

$('#btn-mic').addEventListener('click', () => {
  if (!app.call || !hasTrack('audio')) return;
  app.mic = !app.mic;
  app.call.setMicEnabled(app.mic);
  renderControls();
});

$('#btn-cam').addEventListener('click', () => {
  if (!app.call || !hasTrack('video')) return;
  app.cam = !app.cam;
  app.call.setCameraEnabled(app.cam);
  renderControls();
});

$('#btn-screen').addEventListener('click', async () => {
  if (!app.call) return;
  if (app.sharing) {
    stopSharing();
    return;
  }
  try {
    const screen = await app.call.startScreenShare();
    app.sharing = true;
    if (screen instanceof MediaStream) {
      localTile?.setStream(screen, { mirror: false });
      // The browser's own "Stop sharing" button ends the track.
      screen.getVideoTracks()[0]?.addEventListener('ended', () => { if (app.sharing) stopSharing(); });
    }
    toast('You are sharing your screen');
  } catch (err) {
    if (err?.name === 'NotAllowedError' || err?.name === 'AbortError') toast('Screen sharing was cancelled');
    else toast(`Screen sharing failed: ${err?.message || err}`);
  }
  renderControls();
});

function stopSharing() {
  try { app.call?.stopScreenShare(); } catch { /* already stopped */ }
  app.sharing = false;
  if (localTile) localTile.setStream(app.localStream, { mirror: true });
  renderControls();
}

$('#btn-hangup').addEventListener('click', () => leave());

function leave({ reason } = {}) {
  if (app.left) return;
  app.left = true;
  diag.stop();
  try { app.call?.hangup(); } catch { /* nothing left to hang up */ }
  try { app.hub?.close(); } catch { /* already closed */ }
  for (const t of app.localStream?.getTracks() || []) t.stop();
  for (const id of [...app.tiles.keys()]) dropTile(id);
  localTile?.remove();
  localTile = null;
  waiting.remove();
  layout();
  if (reason === 'unload') return;
  showOverlay({
    iconName: 'hangup',
    title: 'You left the call',
    text: `Room “${room}”`,
    actions: [
      el('a', { class: 'btn', href: `/?room=${encodeURIComponent(room)}` }, icon('back'), 'Home'),
      el('button', { class: 'btn btn-primary', type: 'button', onclick: () => location.reload() }, 'Rejoin'),
    ],
  });
}

window.addEventListener('pagehide', () => leave({ reason: 'unload' }));

// ============================================================ side panel
const tabs = { chat: $('#tab-chat'), diag: $('#tab-diag') };
const panes = { chat: $('#pane-chat'), diag: $('#pane-diag') };
let activeTab = 'chat';

function panelOpen() { return document.body.classList.contains('panel-open'); }

function showTab(name) {
  activeTab = name;
  for (const [k, tab] of Object.entries(tabs)) {
    tab.setAttribute('aria-selected', String(k === name));
    panes[k].hidden = k !== name;
  }
  syncPanelButtons();
  if (name === 'chat') log.markRead();
  if (name === 'diag') diag.refresh();
}

function setPanel(open) {
  document.body.classList.toggle('panel-open', open);
  syncPanelButtons();
  if (open && activeTab === 'chat') log.markRead();
}

function syncPanelButtons() {
  $('#btn-chat').setAttribute('aria-pressed', String(panelOpen() && activeTab === 'chat'));
  $('#btn-diag').setAttribute('aria-pressed', String(panelOpen() && activeTab === 'diag'));
}

function togglePanel(name) {
  if (panelOpen() && activeTab === name) setPanel(false);
  else {
    showTab(name);
    setPanel(true);
  }
}

tabs.chat.addEventListener('click', () => showTab('chat'));
tabs.diag.addEventListener('click', () => showTab('diag'));
$('#btn-chat').addEventListener('click', () => togglePanel('chat'));
$('#btn-diag').addEventListener('click', () => togglePanel('diag'));
$('#close-panel').addEventListener('click', () => setPanel(false));
syncPanelButtons();

log.onActivity = (n) => {
  const visible = panelOpen() && activeTab === 'chat';
  if (visible && n) {
    log.unread = 0;
    n = 0;
  }
  const badge = $('#unread');
  badge.hidden = n === 0;
  badge.textContent = n > 9 ? '9+' : String(n);
};

// ==================================================================== chat
function showChat(from, text) {
  if (typeof text !== 'string' || !text) return;
  log.message({ name: nameOf(from), text, from });
}

wireComposer($('#composer'), $('#text'), async (text) => {
  const node = log.message({ name: app.me.displayName, text, mine: true, from: app.me.userId });
  try {
    if (app.tiles.size && app.call) {
      await app.call.sendChat(text);
    } else {
      // Nobody connected by data channel (yet): the server relays it.
      await app.hub.send({ type: 'message', roomId: room, data: { text, name: app.me.displayName } });
    }
  } catch (err) {
    node.classList.add('failed');
    node.querySelector('.meta').append(` · not delivered: ${describeError(err)}`);
  }
});

// =================================================================== files
const outgoing = new Map(); // file name -> {key, size, peers: Map(to -> sent)}

$('#btn-file').addEventListener('click', () => $('#file-input').click());
$('#file-input').addEventListener('change', async (e) => {
  const files = [...e.target.files];
  e.target.value = '';
  for (const file of files) sendFile(file);
});

async function sendFile(file) {
  if (!app.call || app.tiles.size === 0) {
    toast('Nobody else is in the call yet');
    return;
  }
  const key = `out|${file.name}|${Date.now()}`;
  outgoing.set(file.name, { key, size: file.size, peers: new Map(), n: app.tiles.size });
  log.file(key, { name: file.name, size: file.size, mine: true });
  try {
    await app.call.sendFile(file);
    log.fileSent(key, `Sent to ${app.tiles.size === 1 ? nameOf([...app.tiles.keys()][0]) : `${app.tiles.size} people`}`);
  } catch (err) {
    log.fileFailed(key, `Failed: ${err?.message || err}`);
  } finally {
    outgoing.delete(file.name);
  }
}

function onFileProgress(p) {
  const mine = p.sent !== undefined && (p.from === undefined || p.from === app.me.userId);
  if (mine) {
    const out = outgoing.get(p.name);
    if (!out) return;
    out.peers.set(p.to || '*', p.sent);
    const total = [...out.peers.values()].reduce((a, b) => a + b, 0);
    log.fileProgress(out.key, total, out.size * Math.max(1, out.n, out.peers.size));
    return;
  }
  const key = `in|${p.from}|${p.name}`;
  log.file(key, { name: p.name, size: p.size, mine: false, who: nameOf(p.from) });
  log.fileProgress(key, p.received ?? 0, p.size);
}

function onFileReceived(f) {
  const key = `in|${f.from}|${f.name}`;
  log.file(key, { name: f.name, size: f.size, mine: false, who: nameOf(f.from) });
  if (f.ok === false) {
    log.fileFailed(key, 'Damaged in transit (checksum mismatch) — ask to send it again');
    return;
  }
  log.fileReceived(key, f);
  toast(`${nameOf(f.from)} sent ${f.name} (${formatBytes(f.size)})`);
}

// ============================================================ diagnostics
const CAND = { host: 'host', srflx: 'server-reflexive (STUN)', prflx: 'peer-reflexive', relay: 'relay (TURN)' };

class Diagnostics {
  constructor(box) {
    this.box = box;
    this.cards = new Map();
    this.timer = null;
    this.busy = false;
    this.session = this._card('session', 'Signaling');
  }

  _card(id, title) {
    const pill = el('span', { class: 'pill' }, '–');
    const dl = el('dl');
    const node = el('section', { class: 'diag-card', dataset: { peer: id } }, el('h4', {}, el('span', { class: 'who' }, title), pill), dl);
    const card = { node, pill, dl, fields: new Map(), title: node.querySelector('.who') };
    this.box.append(node);
    return card;
  }

  _set(card, rows) {
    for (const [label, value] of rows) {
      let dd = card.fields.get(label);
      if (!dd) {
        dd = el('dd', { dataset: { field: label } });
        card.dl.append(el('dt', {}, label), dd);
        card.fields.set(label, dd);
      }
      const text = value === undefined || value === null || value === '' ? '–' : String(value);
      if (dd.textContent !== text) dd.textContent = text;
    }
  }

  _pill(card, text, kind) {
    card.pill.textContent = text;
    card.pill.className = `pill ${kind}`;
  }

  start() {
    if (!this.timer) this.timer = setInterval(() => this.refresh(), 1000);
    this.refresh();
  }

  stop() {
    clearInterval(this.timer);
    this.timer = null;
  }

  forget(userId) {
    this.cards.get(userId)?.node.remove();
    this.cards.delete(userId);
  }

  async refresh() {
    const hub = app.hub;
    const st = conn.state;
    this._pill(this.session, st, ['connected', 'resumed', 'rejoined'].includes(st) ? 'good' : st === 'closed' ? 'bad' : 'warn');
    this._set(this.session, [
      ['Room', room],
      ['You', app.me ? `${app.me.displayName} · ${hub?.userId || app.me.userId}` : ''],
      ['Transport', hub?.transport || hub?.transportName || params.get('transport') || 'auto'],
      ['Peers', String(app.tiles.size)],
      ['Media mode', app.mode === 'sfu' ? 'sfu (through the server)'
        : app.mode === 'auto' ? `auto (${app.route === 'sfu' ? 'through the server' : 'peer-to-peer'})`
          : 'mesh (peer-to-peer)'],
      ['Media', app.localStream ? app.localStream.getTracks().map((t) => t.kind).join(' + ') : 'receive-only'],
    ]);
    if (this.busy || !app.call) return;
    this.busy = true;
    try {
      await Promise.all([...app.tiles.keys()].map((id) => this._peer(id)));
    } finally {
      this.busy = false;
    }
  }

  async _peer(userId) {
    let card = this.cards.get(userId);
    if (!card) {
      card = this._card(userId, nameOf(userId));
      this.cards.set(userId, card);
    }
    card.title.textContent = nameOf(userId);
    let s;
    try {
      s = await app.call.stats(userId);
    } catch {
      s = null;
    }
    if (!this.cards.has(userId)) return;
    const state = s?.connectionState || 'new';
    unstick(userId, state);
    this._pill(card, state, state === 'connected' ? 'good' : ['failed', 'closed', 'disconnected'].includes(state) ? 'bad' : 'warn');
    const quality = app.call instanceof AutoCall ? [
      ['Path', s?.pathLabel],
      ['Resolution', s?.width ? `${s.width}×${s.height}` : ''],
      ['Frame rate', Number.isFinite(s?.fps) ? `${Math.round(s.fps)} fps` : ''],
      ['Video bitrate', Number.isFinite(s?.videoKbps) ? `${s.videoKbps} kbps` : ''],
      ['Packet loss', Number.isFinite(s?.lossPct) ? `${s.lossPct} %` : ''],
      ['Layer', s?.layer ? { h: 'high', m: 'medium', l: 'low', off: 'off (hidden)' }[s.layer] : ''],
    ] : [];
    this._set(card, [
      ...quality,
      ['Local candidate', CAND[s?.localCandidateType] || s?.localCandidateType],
      ['Remote candidate', CAND[s?.remoteCandidateType] || s?.remoteCandidateType],
      ['Round-trip time', formatRtt(s?.rtt)],
      ['Bitrate in', Number.isFinite(s?.bitrateKbps) ? `${Math.round(s.bitrateKbps)} kbps` : ''],
      ['Bitrate out', Number.isFinite(s?.sendBitrateKbps) ? `${Math.round(s.sendBitrateKbps)} kbps` : ''],
    ]);
  }
}

/** call.stats() gives the selected pair's round-trip time in milliseconds. */
function formatRtt(rtt) {
  if (!Number.isFinite(rtt)) return '';
  return `${rtt.toFixed(rtt < 10 ? 1 : 0)} ms`;
}

const diag = new Diagnostics($('#diag'));

/**
 * A peer connection that never leaves 'new'/'connecting' gets a fresh offer
 * with an ICE restart (call.renegotiate). Seen in Chromium when two offers
 * cross: the side that rolled its offer back sometimes never gathers for its
 * answer. The polite side (higher userId, as the SDK decides) retries first
 * so the two retries do not collide again.
 */
const stuckSince = new Map(); // userId -> ms timestamp of the last progress or retry
function unstick(userId, state) {
  const now = performance.now();
  if (!['new', 'connecting'].includes(state)) {
    stuckSince.delete(userId);
    return;
  }
  if (!stuckSince.has(userId)) stuckSince.set(userId, now);
  const wait = String(app.hub.userId) > String(userId) ? 5000 : 11000;
  if (now - stuckSince.get(userId) < wait) return;
  stuckSince.set(userId, now);
  try {
    app.call.renegotiate(userId);
  } catch { /* peer went away meanwhile */ }
}

// ============================================================= invite link
async function copyInvite() {
  const ok = await copyText(inviteUrl('call.html', room));
  toast(ok ? 'Invite link copied' : 'Could not copy the link');
}
$('#copy-link').addEventListener('click', copyInvite);

// ================================================================== start
const PEER_BADGE = {
  new: ['Connecting…', ''],
  connecting: ['Connecting…', ''],
  connected: ['', ''],
  disconnected: ['Reconnecting…', 'bad'],
  failed: ['Connection failed', 'bad'],
  closed: ['', ''],
};

async function main() {
  const displayName = cleanName(params.get('name')) || await askName({
    title: 'Join the call', room, submitLabel: 'Join call',
  });
  saveName(displayName);
  app.me = { userId: newUserId(), displayName };

  const media = await getLocalMedia();
  app.localStream = media.stream;
  if (media.problem) {
    banners.show('media', { kind: 'warn', iconName: media.stream ? 'videoOff' : 'micOff', text: media.problem });
    document.body.dataset.media = media.stream ? 'audio-only' : 'receive-only';
  } else {
    document.body.dataset.media = 'camera';
  }
  localTile = new Tile(app.me.userId, displayName, { local: true });
  grid.prepend(localTile.node);
  localTile.setStream(app.localStream);
  layout();
  renderControls();

  const hub = new RtcHub({
    transport: params.get('transport') || 'auto',
    token: params.get('token') || undefined,
    userId: app.me.userId,
  });
  app.hub = hub;
  conn.onRetry = () => hub.reconnectNow();
  hub.on('state', (s) => {
    conn.set(s);
    if (s.state === 'rejoined') log.system('Reconnected to the room');
  });
  hub.on('room-info', (m) => {
    if (m.roomId && m.roomId !== room) return;
    if (m.media === 'audio-mix') {
      // An audio room mixed on the server: it has its own page.
      app.left = true;
      const url = new URL('/audio.html', location.href);
      for (const k of ['room', 'name', 'token', 'transport']) if (params.get(k)) url.searchParams.set(k, params.get(k));
      location.replace(url.toString());
      return;
    }
    // An AutoCall plays mesh and auto rooms as they are; an SFU room (made
    // with ?media=sfu) is followed with a reload, as the other modes do.
    const fits = app.mode === 'auto' ? m.media !== 'sfu' || wantedMedia === 'auto' : m.media === app.mode;
    if (m.media && !fits) {
      // The room was made with the other mode: follow it.
      app.left = true;
      const url = new URL(location.href);
      url.searchParams.set('media', m.media);
      location.replace(url.toString());
      return;
    }
    document.body.dataset.mediaMode = app.mode === 'auto' && m.media === 'mesh' ? 'mesh' : app.mode;
    if (m.route) document.body.dataset.route = app.route = m.route;
    // After a reconnect this is the truth: drop tiles of people who left meanwhile.
    const present = new Set((m.members || []).map((mem) => mem.userId));
    for (const id of [...app.tiles.keys()]) if (!present.has(id)) dropTile(id);
    for (const mem of m.members || []) {
      if (mem.userId === hub.userId) continue;
      app.names.set(mem.userId, mem.displayName || mem.userId);
      remoteTile(mem.userId, mem.displayName);
    }
  });
  hub.on('user-joined', (m) => {
    if (m.roomId && m.roomId !== room) return;
    const known = app.tiles.has(m.userId);
    app.names.set(m.userId, m.displayName || m.userId);
    remoteTile(m.userId, m.displayName);
    if (!known && !m.rejoined) log.system(el('b', {}, nameOf(m.userId)), ' joined');
  });
  hub.on('user-left', (m) => {
    if (m.roomId && m.roomId !== room) return;
    if (app.tiles.has(m.userId)) log.system(el('b', {}, nameOf(m.userId)), ' left');
    dropTile(m.userId);
  });
  hub.on('message', (m) => {
    if (m.roomId && m.roomId !== room) return;
    const data = m.data ?? m.content;
    showChat(m.from, typeof data === 'string' ? data : data?.text);
  });
  hub.on('error', (m) => {
    app.errors.push(m);
    if (m && m.id === undefined) toast(describeError(m));
  });
  // Recording (docs/recording.md): everyone in the room must see that it is recorded.
  const recIndicator = $('#rec-indicator');
  const recButton = $('#btn-record');
  let recording = false;
  hub.on('recording', (m) => {
    if (m.roomId && m.roomId !== room) return;
    recording = !!m.active;
    recIndicator.hidden = !recording;
    document.body.dataset.recording = recording ? 'yes' : 'no';
    recButton.textContent = recording ? 'Stop recording' : 'Record';
    if (recording) {
      const who = m.startedBy === hub.userId ? 'you' : m.startedBy && m.startedBy !== 'api' ? nameOf(m.startedBy) : '';
      const by = who ? ` by ${who}` : '';
      banners.show('recording', { kind: 'error', iconName: 'alert', text: `This room is being recorded${by}.` });
      log.system('Recording started');
    } else {
      banners.hide('recording');
      log.system('Recording stopped');
    }
  });
  // The button is offered in SFU rooms (mesh media never reaches the server); the server
  // checks the canRecord grant and says no with a toast otherwise.
  recButton.hidden = app.mode !== 'sfu';
  recButton.addEventListener('click', () => {
    hub.send({ type: 'record', roomId: room, action: recording ? 'stop' : 'start' })
      .catch((e) => toast(describeError(e)));
  });

  // Call.start() joins the room itself; its room-info and the user-joined
  // events that follow build the mesh (and the tiles, through the handlers above).
  const opts = { localStream: app.localStream, userId: app.me.userId, displayName };
  const call = app.mode === 'auto' ? new AutoCall(hub, room, { ...opts, adaptive: params.get('adaptive') !== '0' })
    : app.mode === 'sfu' ? new SfuCall(hub, room, opts) : new Call(hub, room, { ...opts, media: wantedMedia || undefined });
  app.call = call;
  call.on('route', ({ route, from }) => {
    document.body.dataset.route = app.route = route;
    if (from) log.system(route === 'sfu' ? 'The call now goes through the server (3+ people)' : 'The call is peer-to-peer again');
  });
  call.on('route-complete', ({ route, ms }) => {
    app.lastSwitch = { route, ms };
  });
  call.on('active-speaker', ({ userId }) => {
    app.speaker = userId;
    for (const [id, tile] of app.tiles) tile.node.classList.toggle('speaking', id === userId);
    layout();
  });
  call.on('peer-joined', ({ userId, displayName: dn }) => {
    if (dn && dn !== userId) app.names.set(userId, dn);
    remoteTile(userId, app.names.get(userId));
  });
  call.on('remote-stream', ({ userId, displayName: dn, stream, source }) => {
    if (dn && dn !== userId) app.names.set(userId, dn);
    if (source === 'screen') {
      // SFU rooms carry a screen share as a track of its own: a tile of its own.
      remoteTile(`${userId}:screen`, `${nameOf(userId)} (screen)`).setStream(stream);
      return;
    }
    remoteTile(userId, app.names.get(userId)).setStream(stream);
  });
  call.on('remote-stream-ended', ({ userId, source }) => {
    if (source === 'screen') dropTile(`${userId}:screen`);
  });
  call.on('peer-state', ({ userId, state }) => {
    const tile = app.tiles.get(userId);
    if (!tile) return;
    const [text, kind] = PEER_BADGE[state] || ['', ''];
    tile.setBadge(text, kind);
  });
  call.on('peer-left', ({ userId, reason }) => {
    // After our own reconnect the SDK rebuilds every peer: keep the tiles.
    if (reason === 'rejoined') return;
    dropTile(userId);
    dropTile(`${userId}:screen`);
  });
  call.on('peer-media', ({ userId, mic, camera, screen }) => {
    const tile = app.tiles.get(userId);
    if (!tile) return;
    if (mic !== undefined) tile.setMicOff(mic === false);
    if (camera !== undefined || screen !== undefined) tile.setCamOff(camera === false && !screen);
  });
  call.on('screen-share', ({ active }) => {
    // Also fires when the browser's own "Stop sharing" ends the capture.
    if (!active && app.sharing) {
      app.sharing = false;
      localTile?.setStream(app.localStream, { mirror: true });
      renderControls();
    }
  });
  call.on('chat', ({ from, displayName: dn, text }) => {
    if (dn && dn !== from && !app.names.has(from)) app.names.set(from, dn);
    showChat(from, text);
  });
  call.on('file-progress', onFileProgress);
  call.on('file-received', onFileReceived);
  await hub.connect();
  await call.start();
  renderControls();
  diag.start();
}

function fail(err) {
  if (app.left) return;
  const full = err?.code === 'room-full';
  diag.stop();
  try { app.call?.hangup(); } catch { /* never started */ }
  try { app.hub?.close(); } catch { /* already closed */ }
  for (const t of app.localStream?.getTracks() || []) t.stop();
  showOverlay({
    kind: 'error',
    iconName: full ? 'users' : 'alert',
    title: full ? 'This call is full' : 'Could not join the call',
    text: describeError(err),
    actions: [
      el('a', { class: 'btn', href: `/?room=${encodeURIComponent(room)}` }, icon('back'), 'Back to start'),
      el('button', { class: 'btn btn-primary', type: 'button', onclick: () => location.reload() }, 'Try again'),
    ],
  });
}

if (validRoom(room)) main().catch(fail);
