// Shared helpers for the rtchub demo pages: icons, DOM building, toasts,
// banners, the connection-state pill with its reconnect countdown, names and
// room ids. Plain ES module, no build step.

const PATHS = {
  mic: '<rect x="9" y="2" width="6" height="12" rx="3"/><path d="M19 10v1a7 7 0 0 1-14 0v-1"/><path d="M12 18v4"/><path d="M8 22h8"/>',
  micOff: '<path d="M15 9.3V5a3 3 0 0 0-5.7-1.3"/><path d="M9 9v2a3 3 0 0 0 5.1 2.1"/><path d="M19 10v1a7 7 0 0 1-.9 3.4"/><path d="M16.2 16.2A7 7 0 0 1 5 11v-1"/><path d="M12 18v4"/><path d="M8 22h8"/><path d="M3 3l18 18"/>',
  video: '<rect x="2" y="6" width="14" height="12" rx="2"/><path d="M16 10.5l6-3.5v10l-6-3.5z"/>',
  videoOff: '<path d="M10.7 6H14a2 2 0 0 1 2 2v3.3l1 1L22 7v10"/><path d="M16 16a2 2 0 0 1-2 2H4a2 2 0 0 1-2-2V8a2 2 0 0 1 2-2h2"/><path d="M3 3l18 18"/>',
  screen: '<rect x="2" y="3" width="20" height="14" rx="2"/><path d="M8 21h8M12 17v4"/><path d="M12 13V7M9 10l3-3 3 3"/>',
  hangup: '<path d="M2.6 14.8c5.4-4.9 13.4-4.9 18.8 0a1.2 1.2 0 0 1 .1 1.6l-1.6 2a1.2 1.2 0 0 1-1.5.3l-2.6-1.4a1.2 1.2 0 0 1-.6-1.1l.1-2a10.6 10.6 0 0 0-6.6 0l.1 2a1.2 1.2 0 0 1-.6 1.1l-2.6 1.4a1.2 1.2 0 0 1-1.5-.3l-1.6-2a1.2 1.2 0 0 1 .1-1.6z"/>',
  send: '<path d="M22 2L11 13"/><path d="M22 2l-7 20-4-9-9-4z"/>',
  clip: '<path d="M21 11.5l-8.6 8.6a5.5 5.5 0 0 1-7.8-7.8l8.6-8.6a3.7 3.7 0 0 1 5.2 5.2l-8.6 8.6a1.8 1.8 0 0 1-2.6-2.6l7.9-7.9"/>',
  copy: '<rect x="9" y="9" width="12" height="12" rx="2"/><path d="M5 15H4a2 2 0 0 1-2-2V4a2 2 0 0 1 2-2h9a2 2 0 0 1 2 2v1"/>',
  check: '<path d="M20 6L9 17l-5-5"/>',
  chat: '<path d="M21 12a8 8 0 0 1-11.6 7.1L3 21l1.9-6.4A8 8 0 1 1 21 12z"/>',
  users: '<circle cx="9" cy="8" r="4"/><path d="M2 21v-1a6 6 0 0 1 6-6h2a6 6 0 0 1 6 6v1"/><path d="M16 4.1a4 4 0 0 1 0 7.8"/><path d="M22 21v-1a6 6 0 0 0-4-5.6"/>',
  activity: '<path d="M22 12h-4l-3 9L9 3l-3 9H2"/>',
  shuffle: '<path d="M16 3h5v5"/><path d="M4 20L21 3"/><path d="M21 16v5h-5"/><path d="M15 15l6 6"/><path d="M4 4l5 5"/>',
  back: '<path d="M19 12H5M12 19l-7-7 7-7"/>',
  alert: '<path d="M12 9v4M12 17h.01"/><path d="M10.3 3.9L1.8 18a2 2 0 0 0 1.7 3h17a2 2 0 0 0 1.7-3L13.7 3.9a2 2 0 0 0-3.4 0z"/>',
  offline: '<path d="M2 2l20 20"/><path d="M8.5 16.5a5 5 0 0 1 7 0"/><path d="M5 12.9a10 10 0 0 1 5.2-2.8"/><path d="M19 12.9a10 10 0 0 0-2.3-1.6"/><path d="M2 8.8a15 15 0 0 1 4.2-2.6"/><path d="M22 8.8A15 15 0 0 0 11 4.3"/><path d="M12 20h.01"/>',
  download: '<path d="M21 15v4a2 2 0 0 1-2 2H5a2 2 0 0 1-2-2v-4"/><path d="M7 10l5 5 5-5M12 15V3"/>',
  file: '<path d="M14 2H6a2 2 0 0 0-2 2v16a2 2 0 0 0 2 2h12a2 2 0 0 0 2-2V8z"/><path d="M14 2v6h6"/>',
  close: '<path d="M18 6L6 18M6 6l12 12"/>',
  link: '<path d="M10 13a5 5 0 0 0 7.5.5l3-3a5 5 0 0 0-7-7l-1.7 1.7"/><path d="M14 11a5 5 0 0 0-7.5-.5l-3 3a5 5 0 0 0 7 7l1.7-1.7"/>',
  lock: '<rect x="4" y="11" width="16" height="10" rx="2"/><path d="M8 11V7a4 4 0 0 1 8 0v4"/>',
  grid: '<rect x="3" y="3" width="7" height="7" rx="1.5"/><rect x="14" y="3" width="7" height="7" rx="1.5"/><rect x="3" y="14" width="7" height="7" rx="1.5"/><rect x="14" y="14" width="7" height="7" rx="1.5"/>',
  wave: '<path d="M2 12h2M6 8v8M10 5v14M14 8v8M18 10v4M22 12h0"/>',
};

/** A span.icon holding an inline SVG (stroke icons drawn with currentColor). */
export function icon(name, extraClass = '') {
  const span = document.createElement('span');
  span.className = `icon ${extraClass}`.trim();
  span.setAttribute('aria-hidden', 'true');
  span.innerHTML = `<svg viewBox="0 0 24 24" fill="none" stroke="currentColor" stroke-width="2" stroke-linecap="round" stroke-linejoin="round">${PATHS[name] || ''}</svg>`;
  return span;
}

/** Replace every <span data-icon="name"> in the page by its SVG. */
export function hydrateIcons(root = document) {
  for (const el of root.querySelectorAll('[data-icon]')) {
    const fresh = icon(el.dataset.icon, el.className);
    el.replaceWith(fresh);
  }
}

/** Tiny element builder: el('div', {class: 'x', onclick}, child, 'text'). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') node.className = v;
    else if (k === 'dataset') Object.assign(node.dataset, v);
    else if (k === 'style' && typeof v === 'object') Object.assign(node.style, v);
    else if (k.startsWith('on') && typeof v === 'function') node.addEventListener(k.slice(2), v);
    else if (k in node && typeof v !== 'string') node[k] = v;
    else node.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

export const $ = (sel, root = document) => root.querySelector(sel);

// ------------------------------------------------------------------ params
export const params = new URLSearchParams(location.search);

const ROOM_RE = /^[A-Za-z0-9_.:@-]{1,64}$/;

/** Turn what a person typed into a room id the server accepts (protocol ID_PATTERN). */
export function cleanRoom(raw) {
  return String(raw || '')
    .trim()
    .replace(/\s+/g, '-')
    .replace(/[^A-Za-z0-9_.:@-]/g, '')
    .slice(0, 64);
}
export const validRoom = (r) => ROOM_RE.test(r);

export function cleanName(raw) {
  return String(raw || '').trim().replace(/\s+/g, ' ').slice(0, 64);
}

const ADJ = ['amber', 'bright', 'calm', 'clever', 'cosmic', 'crisp', 'gentle', 'golden', 'happy', 'lively', 'lucky', 'mellow', 'misty', 'quiet', 'rapid', 'silver', 'sunny', 'swift', 'velvet', 'witty'];
const NOUN = ['otter', 'falcon', 'maple', 'harbor', 'comet', 'meadow', 'panda', 'river', 'canyon', 'lynx', 'pixel', 'orbit', 'cedar', 'koala', 'island', 'breeze', 'heron', 'summit', 'tiger', 'willow'];

function pick(list) {
  const n = new Uint32Array(1);
  crypto.getRandomValues(n);
  return list[n[0] % list.length];
}

/** A readable random room id, e.g. "swift-otter-417". */
export function randomRoom() {
  const n = new Uint32Array(1);
  crypto.getRandomValues(n);
  return `${pick(ADJ)}-${pick(NOUN)}-${100 + (n[0] % 900)}`;
}

/** A per-tab user id (the server only checks it is unique within a room). */
export function newUserId() {
  return `u-${crypto.randomUUID().replace(/-/g, '').slice(0, 12)}`;
}

// Display name remembered across visits (a convenience, never required).
const NAME_KEY = 'rtchub.displayName';
export function savedName() {
  try { return localStorage.getItem(NAME_KEY) || ''; } catch { return ''; }
}
export function saveName(name) {
  try { localStorage.setItem(NAME_KEY, name); } catch { /* storage blocked: fine */ }
}

/** Links between the pages, always carrying room and name. */
export function pageUrl(page, room, name, absolute = false) {
  const q = new URLSearchParams();
  if (room) q.set('room', room);
  if (name) q.set('name', name);
  const path = `/${page}${q.toString() ? `?${q}` : ''}`;
  return absolute ? new URL(path, location.origin).href : path;
}

/** The link to give someone else: no name in it, they type their own. */
export const inviteUrl = (page, room) => pageUrl(page, room, '', true);

// ------------------------------------------------------------------ people
const AVATAR_COLORS = ['#4f5bd5', '#0e9f6e', '#d9480f', '#c2255c', '#1c7ed6', '#7048e8', '#2b8a3e', '#e8590c', '#0c8599', '#9c36b5'];

export function colorFor(key) {
  let h = 0;
  for (const ch of String(key)) h = (h * 31 + ch.codePointAt(0)) >>> 0;
  return AVATAR_COLORS[h % AVATAR_COLORS.length];
}

export function initials(name) {
  const parts = String(name || '?').trim().split(/\s+/).filter(Boolean);
  if (!parts.length) return '?';
  const first = [...parts[0]][0] || '?';
  const second = parts.length > 1 ? [...parts[parts.length - 1]][0] : '';
  return (first + second).toUpperCase();
}

export function formatBytes(n) {
  if (!Number.isFinite(n)) return '–';
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  if (n < 1024 ** 3) return `${(n / 1024 / 1024).toFixed(1)} MB`;
  return `${(n / 1024 ** 3).toFixed(2)} GB`;
}

export const timeLabel = (d = new Date()) =>
  d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });

// --------------------------------------------------------------- clipboard
export async function copyText(text, fallbackInput) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    // Older browsers or a denied permission: select-and-copy still works.
    const input = fallbackInput || el('textarea', { style: { position: 'fixed', opacity: '0' } }, text);
    if (!fallbackInput) document.body.append(input);
    input.select();
    let ok = false;
    try { ok = document.execCommand('copy'); } catch { ok = false; }
    if (!fallbackInput) input.remove();
    return ok;
  }
}

// ------------------------------------------------------------------ toasts
let toastBox;
export function toast(text, ms = 2600) {
  if (!toastBox) {
    toastBox = el('div', { class: 'toasts', role: 'status', 'aria-live': 'polite' });
    document.body.append(toastBox);
  }
  const t = el('div', { class: 'toast' }, text);
  toastBox.append(t);
  setTimeout(() => t.remove(), ms);
}

// ----------------------------------------------------------------- banners
/**
 * Named banners under the top bar. show(id, {kind, icon, text, actions}) adds
 * or updates one; hide(id) removes it. Used for "camera blocked", "offline,
 * reconnecting in 4 s" and similar lasting conditions (toasts are for events).
 */
export class Banners {
  constructor(container) {
    this.box = container;
    this.items = new Map();
  }

  show(id, { kind = 'info', iconName = 'alert', text = '', actions = [] } = {}) {
    let item = this.items.get(id);
    if (!item) {
      item = el('div', { class: 'banner', role: kind === 'error' ? 'alert' : 'status', dataset: { banner: id } });
      this.items.set(id, item);
      this.box.append(item);
    }
    item.className = `banner ${kind}`;
    item.replaceChildren(icon(iconName), el('div', { class: 'msg' }, text), ...actions);
    return item;
  }

  text(id, text) {
    const item = this.items.get(id);
    if (item) item.querySelector('.msg').textContent = text;
  }

  hide(id) {
    this.items.get(id)?.remove();
    this.items.delete(id);
  }
}

// ------------------------------------------------------ connection status
const STATE_LABEL = {
  connecting: 'Connecting…',
  connected: 'Connected',
  resumed: 'Connected',
  rejoined: 'Connected',
  reconnecting: 'Reconnecting…',
  closed: 'Disconnected',
};

/**
 * Follows the SDK's 'state' events: updates the status pill and, while the
 * server is unreachable, keeps a banner with a live countdown to the next
 * attempt (from the event's delayMs), so a person knows the page is trying.
 */
export class ConnectionView {
  constructor({ pill, banners, onBack, onRetry }) {
    this.pill = pill;
    this.banners = banners;
    this.onBack = onBack;
    this.onRetry = onRetry; // "Retry now" in the countdown banner (hub.reconnectNow)
    this.state = 'connecting';
    this.timer = null;
    this.deadline = 0;
    this.attempt = 0;
    this.wasDown = false;
    this.set({ state: 'connecting' });
  }

  set({ state, attempt, delayMs, error } = {}) {
    this.state = state;
    const shown = STATE_LABEL[state] ? state : 'connecting';
    this.pill.dataset.state = ['resumed', 'rejoined'].includes(shown) ? 'connected' : shown;
    this.pill.textContent = STATE_LABEL[shown] || state;
    document.body.dataset.session = state;
    if (state === 'reconnecting') {
      this.wasDown = true;
      this.attempt = attempt || this.attempt + 1;
      this.deadline = performance.now() + (Number(delayMs) || 0);
      this._tick();
      if (!this.timer) this.timer = setInterval(() => this._tick(), 250);
      return;
    }
    this._stopTimer();
    if (['connected', 'resumed', 'rejoined'].includes(state)) {
      this.banners.hide('connection');
      if (this.wasDown) {
        toast(state === 'resumed' ? 'Back online — session resumed' : 'Back online');
      }
      this.wasDown = false;
      this.attempt = 0;
    } else if (state === 'closed' && error) {
      // Closed by the server for good (auth refused, taken over); a close()
      // of our own (hang up, room full) needs no banner.
      const reason = error?.message || error?.code || '';
      this.banners.show('connection', {
        kind: 'error', iconName: 'offline',
        text: reason ? `Disconnected from the server: ${reason}` : 'Disconnected from the server.',
        actions: [el('button', { class: 'btn btn-sm', type: 'button', onclick: () => location.reload() }, 'Reconnect')],
      });
    }
  }

  _tick() {
    const left = Math.max(0, Math.ceil((this.deadline - performance.now()) / 1000));
    const text = left > 0
      ? `Can't reach the server. Reconnecting in ${left} s… (attempt ${this.attempt})`
      : `Can't reach the server. Reconnecting now… (attempt ${this.attempt})`;
    if (!this.banners.items.has('connection')) {
      const actions = this.onRetry
        ? [el('button', { class: 'btn btn-sm', type: 'button', dataset: { action: 'retry' },
          onclick: () => this.onRetry() }, 'Retry now')]
        : [];
      this.banners.show('connection', { kind: 'warn', iconName: 'offline', text, actions });
    } else {
      this.banners.items.get('connection').className = 'banner warn';
      this.banners.text('connection', text);
    }
  }

  _stopTimer() {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }
}

// ----------------------------------------------------------- overlays
/** A centered card over the page (room full, left the call, fatal error). */
export function showOverlay({ kind = 'info', iconName = 'alert', title, text, actions = [], body }) {
  document.querySelector('.overlay')?.remove();
  const card = el('div', { class: `card ${kind}`, role: kind === 'error' ? 'alertdialog' : 'dialog', 'aria-modal': 'true' },
    icon(iconName, 'big'),
    el('h2', {}, title),
    text ? el('p', {}, text) : null,
    body || null,
    actions.length ? el('div', { class: 'row' }, ...actions) : null);
  const overlay = el('div', { class: 'overlay', dataset: { overlay: kind } }, card);
  document.body.append(overlay);
  return overlay;
}

export const hideOverlay = () => document.querySelector('.overlay')?.remove();

/** Human words for the SDK's error codes (RtcHubError.code = protocol error code). */
export function describeError(err) {
  const code = err?.code || '';
  switch (code) {
    case 'room-full': return 'This room is full. Try another room or wait for someone to leave.';
    case 'user-id-taken': return 'You are already in this room in another tab.';
    case 'unauthorized': return 'The server needs a valid sign-in token for this room.';
    case 'forbidden': return 'You are not allowed to enter this room.';
    case 'rate-limited': return 'Too many requests — slow down and try again in a moment.';
    case 'invalid-message': return err?.message || 'The server rejected the request.';
    default: return err?.message || String(err || 'Something went wrong.');
  }
}

/** Ask for a display name when the URL has none (links shared without one). */
export function askName({ title, text, room, submitLabel }) {
  return new Promise((resolve) => {
    const input = el('input', {
      class: 'input', id: 'ask-name', name: 'name', required: true, maxlength: '64',
      autocomplete: 'nickname', placeholder: 'Your name', value: savedName(),
    });
    const form = el('form', {},
      el('div', { class: 'field' }, el('label', { for: 'ask-name' }, 'Display name'), input),
      el('button', { class: 'btn btn-primary btn-block', type: 'submit' }, submitLabel));
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      const name = cleanName(input.value);
      if (!name) return;
      saveName(name);
      hideOverlay();
      resolve(name);
    });
    showOverlay({ iconName: 'users', title, text: text || `You are joining “${room}”.`, body: form });
    input.focus();
  });
}
