// rtchub admin dashboard: polls the server API once a second and renders
// live rooms, members, transports and message rates, with the last minutes
// of connections and rates as small charts (./chart.js). The API key is typed
// in here, kept in sessionStorage (this tab only) and sent as X-API-Key.
// All server data goes into the page through textContent, never innerHTML:
// room ids and display names are chosen by users.

import { LineChart, Ring } from "./chart.js";

const KEY_STORE = "rtchub.admin.key";
const POLL_MS = 1000;
/** How far back the charts go: one sample per poll. */
const CHART_WINDOW_MS = 5 * 60 * 1000;
const $ = (id) => document.getElementById(id);

const samples = new Ring(Math.ceil(CHART_WINDOW_MS / POLL_MS) + 5);
const charts = [
  new LineChart($("c-conns"), {
    title: "Connections", windowMs: CHART_WINDOW_MS,
    series: [{ key: "conns", label: "open", cls: "s-conns" }],
  }),
  new LineChart($("c-rates"), {
    title: "Messages", windowMs: CHART_WINDOW_MS, unit: "/s",
    series: [{ key: "in", label: "in", cls: "s-in" }, { key: "out", label: "out", cls: "s-out" }],
  }),
];

let key = sessionStorage.getItem(KEY_STORE) || "";
let timer = null;
let busy = false;
let previous = null; // {t, received, sent} for message rates
let latestRooms = [];
const roomCards = new Map(); // roomId -> card element

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(path, body) {
  const init = { headers: { "X-API-Key": key }, cache: "no-store" };
  if (body !== undefined) {
    init.method = "POST";
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  let data = null;
  try { data = await res.json(); } catch { /* not JSON: keep null */ }
  if (!res.ok) {
    throw new ApiError(res.status, data?.error?.code, data?.error?.message || `HTTP ${res.status}`);
  }
  return data;
}

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

function setStatus(state, text) {
  const s = $("status");
  s.dataset.state = state;
  s.textContent = text;
}

// ------------------------------------------------------------------ sign in
function showLogin(message = "") {
  stop();
  $("dash").hidden = true;
  $("signout").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message;
  setStatus("closed", "Signed out");
  $("key").focus();
}

function showDash() {
  $("login").hidden = true;
  $("dash").hidden = false;
  $("signout").hidden = false;
  start();
}

function start() {
  stop();
  previous = null;
  refresh();
  timer = setInterval(refresh, POLL_MS);
}

function stop() {
  if (timer !== null) clearInterval(timer);
  timer = null;
}

$("login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  key = $("key").value.trim();
  if (!key) return;
  sessionStorage.setItem(KEY_STORE, key);
  $("key").value = "";
  showDash();
});

$("signout").addEventListener("click", () => {
  sessionStorage.removeItem(KEY_STORE);
  key = "";
  showLogin();
});

$("filter").addEventListener("input", () => renderRooms(latestRooms));

// ------------------------------------------------------------------ polling
async function refresh() {
  if (busy) return;
  busy = true;
  try {
    const [stats, rooms] = await Promise.all([
      api("/api/stats"),
      api("/api/rooms?members=true&limit=500"),
    ]);
    renderStats(stats);
    latestRooms = rooms.rooms;
    renderRooms(latestRooms, rooms.total);
    setStatus("connected", "Live");
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      sessionStorage.removeItem(KEY_STORE);
      key = "";
      showLogin("The server refused that key.");
    } else if (err instanceof ApiError && err.status === 404) {
      showLogin("The server API is off. Start rtchub with --api-key.");
    } else {
      setStatus("reconnecting", "Server unreachable");
    }
  } finally {
    busy = false;
  }
}

// ------------------------------------------------------------------ render
function fmtRate(n) {
  return n >= 100 ? Math.round(n).toLocaleString() : n.toFixed(n >= 10 ? 0 : 1);
}

function fmtDuration(s) {
  s = Math.floor(s);
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60), sec = s % 60;
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${m}m`;
  if (m) return `${m}m ${sec}s`;
  return `${sec}s`;
}

function renderStats(s) {
  const total = Object.values(s.connections).reduce((a, b) => a + b, 0);
  $("t-conns").textContent = total.toLocaleString();
  const parts = Object.entries(s.connections).filter(([, n]) => n > 0)
    .sort((a, b) => b[1] - a[1]).map(([t, n]) => `${n} ${t}`);
  $("t-transports").textContent = parts.join(" · ") || "none";
  $("t-rooms").textContent = s.rooms.toLocaleString();
  $("t-members").textContent = `${s.members.toLocaleString()} member${s.members === 1 ? "" : "s"}`;
  $("t-detached").textContent = s.sessionsDetached.toLocaleString();
  $("t-uptime").textContent = fmtDuration(s.uptimeSeconds);
  $("t-node").textContent = `node ${s.node}`;
  $("t-node").title = `rtchub ${s.version}, node ${s.node}`;
  const now = performance.now();
  if (previous) {
    const dt = Math.max(0.001, (now - previous.t) / 1000);
    const rateIn = Math.max(0, s.messagesReceived - previous.received) / dt;
    const rateOut = Math.max(0, s.messagesSent - previous.sent) / dt;
    $("t-in").textContent = fmtRate(rateIn);
    $("t-out").textContent = fmtRate(rateOut);
    samples.push(now, { conns: total, in: rateIn, out: rateOut });
    for (const chart of charts) chart.update(samples, now);
  }
  previous = { t: now, received: s.messagesReceived, sent: s.messagesSent };
}

function matches(room, q) {
  if (!q) return true;
  if (room.roomId.toLowerCase().includes(q)) return true;
  return (room.members || []).some((m) =>
    m.userId.toLowerCase().includes(q) || m.displayName.toLowerCase().includes(q));
}

function renderRooms(rooms, total) {
  const q = $("filter").value.trim().toLowerCase();
  const shown = rooms.filter((r) => matches(r, q));
  const box = $("rooms");
  const keep = new Set();
  shown.forEach((room, i) => {
    let card = roomCards.get(room.roomId);
    if (!card) {
      card = makeRoomCard(room.roomId);
      roomCards.set(room.roomId, card);
    }
    keep.add(room.roomId);
    updateRoomCard(card, room);
    if (box.children[i] !== card) box.insertBefore(card, box.children[i] || null);
  });
  for (const [id, card] of roomCards) {
    if (!keep.has(id)) {
      card.remove();
      roomCards.delete(id);
    }
  }
  const empty = $("empty");
  empty.hidden = shown.length > 0;
  empty.textContent = rooms.length ? "No room matches the filter." : "No rooms right now.";
  if (total !== undefined && total > rooms.length) {
    empty.hidden = false;
    empty.textContent = `Showing ${rooms.length} of ${total} rooms.`;
  }
}

function makeRoomCard(roomId) {
  const card = el("article", "card adm-room");
  card.dataset.room = roomId;
  const head = el("header");
  head.append(el("h3", "", roomId), el("span", "adm-meta"));
  card.append(head, el("ul", "adm-members"));
  return card;
}

function updateRoomCard(card, room) {
  const n = room.memberCount;
  card.querySelector(".adm-meta").textContent =
    `${n} member${n === 1 ? "" : "s"} · ${fmtDuration(room.ageSeconds)}`;
  const list = card.querySelector(".adm-members");
  const rows = new Map([...list.children].map((li) => [li.dataset.session, li]));
  const keep = new Set();
  (room.members || []).forEach((m, i) => {
    let li = rows.get(m.sessionId);
    if (!li) li = makeMemberRow(room.roomId, m);
    keep.add(m.sessionId);
    updateMemberRow(li, m);
    if (list.children[i] !== li) list.insertBefore(li, list.children[i] || null);
  });
  for (const [sid, li] of rows) if (!keep.has(sid)) li.remove();
}

function makeMemberRow(roomId, m) {
  const li = el("li", "adm-member");
  li.dataset.session = m.sessionId;
  li.dataset.user = m.userId;
  const who = el("div", "adm-who");
  who.append(el("span", "adm-name"), el("span", "adm-uid"));
  const side = el("div", "adm-side");
  const badge = el("span", "adm-pill");
  const kick = el("button", "btn btn-sm adm-kick", "Disconnect");
  kick.type = "button";
  kick.dataset.user = m.userId;
  kick.dataset.room = roomId;
  kick.title = `Disconnect ${m.userId}: the room sees user-left (kicked)`;
  kick.addEventListener("click", () => onKick(kick));
  side.append(badge, kick);
  li.append(who, side);
  return li;
}

function updateMemberRow(li, m) {
  li.querySelector(".adm-name").textContent = m.displayName;
  li.querySelector(".adm-uid").textContent = m.userId === m.displayName ? m.sessionId : m.userId;
  const badge = li.querySelector(".adm-pill");
  const remote = m.local === false;
  badge.textContent = remote ? `node ${m.node}` : m.connected ? m.transport : "reconnecting";
  badge.dataset.transport = m.connected ? m.transport : "";
  badge.classList.toggle("away", !m.connected && !remote);
}

// A first click arms the button (it turns red for three seconds); the second disconnects.
async function onKick(btn) {
  if (btn.dataset.armed !== "1") {
    btn.dataset.armed = "1";
    btn.textContent = "Confirm";
    btn.classList.add("btn-danger");
    btn._disarm = setTimeout(() => disarm(btn), 3000);
    return;
  }
  clearTimeout(btn._disarm);
  btn.disabled = true;
  btn.textContent = "Disconnecting…";
  try {
    await api("/api/disconnect", { userId: btn.dataset.user, roomId: btn.dataset.room, reason: "kicked" });
    refresh();
  } catch (err) {
    btn.disabled = false;
    disarm(btn);
    setStatus("reconnecting", `Disconnect failed: ${err.message}`);
  }
}

function disarm(btn) {
  btn.dataset.armed = "";
  btn.textContent = "Disconnect";
  btn.classList.remove("btn-danger");
}

if (key) showDash();
else showLogin();
