// Text-only room: no camera needed. Members with presence (user-joined /
// user-left), messages relayed by the server (`message`).
import { RtcHub } from '/sdk/rtchub.js';
import { ChatLog, wireComposer } from './chatlog.js';
import {
  $, Banners, ConnectionView, askName, cleanName, cleanRoom, colorFor, copyText, describeError,
  el, hydrateIcons, initials, inviteUrl, newUserId, pageUrl, params, saveName, showOverlay, toast,
  validRoom,
} from './common.js';

hydrateIcons();

const room = cleanRoom(params.get('room'));
if (!validRoom(room)) location.replace('/');

const banners = new Banners($('#banners'));
const conn = new ConnectionView({ pill: $('#status'), banners });
const log = new ChatLog($('#log'), $('#empty'));
const textInput = $('#text');
const sendBtn = $('#send');

$('#room-name').textContent = room;
document.title = `${room} · Chat · rtchub`;

// ------------------------------------------------------------------ members
class Members {
  constructor(list, counter) {
    this.list = list;
    this.counter = counter;
    this.people = new Map(); // userId -> {name, node}
  }

  name(userId) {
    return this.people.get(userId)?.name || userId || 'Someone';
  }

  upsert(userId, displayName, { me = false } = {}) {
    const name = displayName || this.people.get(userId)?.name || userId;
    let entry = this.people.get(userId);
    if (!entry) {
      const node = el('li', { class: 'member', dataset: { userId } });
      entry = { node };
      this.people.set(userId, entry);
      if (me) this.list.prepend(node); else this.list.append(node);
    }
    entry.name = name;
    entry.node.classList.remove('offline');
    entry.node.replaceChildren(
      el('span', { class: 'av', style: { '--avatar': colorFor(userId) }, 'aria-hidden': 'true' }, initials(name)),
      el('span', { class: 'who' }, el('b', {}, name), el('small', {}, me ? 'You' : 'Online')));
    this._count();
  }

  remove(userId) {
    this.people.get(userId)?.node.remove();
    this.people.delete(userId);
    this._count();
  }

  reset(members, me) {
    for (const id of [...this.people.keys()]) if (id !== me.userId) this.remove(id);
    this.upsert(me.userId, me.displayName, { me: true });
    for (const m of members || []) {
      if (m.userId !== me.userId) this.upsert(m.userId, m.displayName);
    }
  }

  _count() {
    this.counter.textContent = String(this.people.size);
  }
}

const members = new Members($('#members'), $('#member-count'));

// ------------------------------------------------------------- invite links
async function copyInvite() {
  const ok = await copyText(inviteUrl('chat.html', room));
  toast(ok ? 'Invite link copied' : 'Could not copy the link');
}
$('#copy-link').addEventListener('click', copyInvite);
$('#copy-link-2').addEventListener('click', copyInvite);

// -------------------------------------------------------------------- start
async function main() {
  const displayName = cleanName(params.get('name')) || await askName({
    title: 'Join the chat', room, submitLabel: 'Join chat',
  });
  saveName(displayName);
  $('#to-call').href = pageUrl('call.html', room, displayName);
  const userId = newUserId();
  const me = { userId, displayName };

  const hub = new RtcHub({ transport: params.get('transport') || 'auto', token: params.get('token') || undefined });
  window.rtchubDemo = { hub, room, me, members };
  conn.onRetry = () => hub.reconnectNow();

  hub.on('state', (s) => {
    conn.set(s);
    const online = ['connected', 'resumed', 'rejoined'].includes(s.state);
    // Typing stays possible while offline: the SDK queues and sends later.
    if (s.state === 'closed') setComposer(false);
    else if (online) setComposer(true);
  });

  hub.on('room-info', (m) => {
    if (m.roomId && m.roomId !== room) return;
    members.reset(m.members, me);
  });
  hub.on('user-joined', (m) => {
    if (m.roomId && m.roomId !== room) return;
    const known = members.people.has(m.userId);
    members.upsert(m.userId, m.displayName);
    if (!m.rejoined && !known) log.system(el('b', {}, members.name(m.userId)), ' joined');
  });
  hub.on('user-left', (m) => {
    if (m.roomId && m.roomId !== room) return;
    const name = members.name(m.userId);
    members.remove(m.userId);
    const why = m.reason === 'timeout' || m.reason === 'disconnected' ? ' (connection lost)' : '';
    log.system(el('b', {}, name), ` left${why}`);
  });
  hub.on('message', (m) => {
    if (m.roomId && m.roomId !== room) return;
    const data = m.data ?? m.content;
    const text = typeof data === 'string' ? data : data?.text;
    if (typeof text !== 'string' || !text) return;
    const name = members.people.get(m.from)?.name || (typeof data?.name === 'string' ? data.name : m.from);
    log.message({ name, text, from: m.from });
  });
  hub.on('error', (m) => {
    // Errors tied to a request reject that request's promise; the rest are
    // worth telling the person about.
    if (m && m.id === undefined) toast(describeError(m));
  });

  wireComposer($('#composer'), textInput, async (text) => {
    const node = log.message({ name: displayName, text, mine: true, from: userId });
    node.classList.add('pending');
    try {
      await hub.send({ type: 'message', roomId: room, data: { text, name: displayName } });
      node.classList.remove('pending');
    } catch (err) {
      node.classList.remove('pending');
      node.classList.add('failed');
      node.querySelector('.meta').append(` · not delivered: ${describeError(err)}`);
    }
  });

  try {
    await hub.connect();
    const info = await hub.join(room, { userId, displayName });
    members.reset(info?.members, me);
    setComposer(true);
    textInput.focus();
  } catch (err) {
    fail(err);
  }
}

function setComposer(on) {
  textInput.disabled = !on;
  sendBtn.disabled = !on;
}

function fail(err) {
  setComposer(false);
  const full = err?.code === 'room-full';
  showOverlay({
    kind: 'error',
    iconName: full ? 'users' : 'alert',
    title: full ? 'This room is full' : 'Could not join the chat',
    text: describeError(err),
    actions: [
      el('a', { class: 'btn', href: `/?room=${encodeURIComponent(room)}` }, 'Back to start'),
      el('button', { class: 'btn btn-primary', type: 'button', onclick: () => location.reload() }, 'Try again'),
    ],
  });
}

if (validRoom(room)) main().catch(fail);
