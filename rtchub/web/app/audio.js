// audio.html?room=R&name=N: an audio-only room mixed on the server (media mode audio-mix).
import { AudioMixCall, RtcHub } from '/sdk/rtchub.js';
import {
  $, Banners, ConnectionView, cleanRoom, describeError, el, hydrateIcons, newUserId, params,
  savedName, toast, validRoom,
} from './common.js';

hydrateIcons();
const room = cleanRoom(params.get('room'));
if (!validRoom(room)) location.replace('/');
$('#room-name').textContent = room;
document.title = `${room} · Audio room · rtchub`;

const banners = new Banners($('#banners'));
const conn = new ConnectionView({ pill: $('#status'), banners });
const members = new Map();
const me = { userId: newUserId(), name: params.get('name') || savedName() || 'Guest' };

function render() {
  $('#members').replaceChildren(...[...members].map(([id, name]) =>
    el('li', { class: 'member', dataset: { user: id } }, id === me.userId ? `${name} (you)` : name)));
}

const hub = new RtcHub({ transport: params.get('transport') || 'auto', token: params.get('token') || undefined,
  userId: me.userId });
hub.on('state', (s) => conn.set(s));
hub.on('room-info', (m) => {
  if (m.roomId !== room) return;
  members.clear();
  members.set(me.userId, me.name);
  for (const mem of m.members || []) members.set(mem.userId, mem.displayName || mem.userId);
  render();
});
hub.on('error', (m) => { if (m && m.id === undefined) toast(describeError(m)); });

let stream = null;
try {
  stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: false });
} catch (err) {
  banners.show('media', { kind: 'warn', iconName: 'micOff', text: `No microphone (${err.name}): you can listen only.` });
}
const call = new AudioMixCall(hub, room, { localStream: stream, displayName: me.name, userId: me.userId });
window.rtchubAudio = call;
call.on('peer-joined', ({ userId, displayName }) => { members.set(userId, displayName || userId); render(); });
call.on('peer-left', ({ userId }) => { members.delete(userId); render(); });
call.on('remote-stream', ({ stream: mix }) => { $('#mix').srcObject = mix; });
call.on('state', ({ state }) => {
  const s = $('#mix-state');
  s.dataset.state = state;
  s.textContent = `Mix: ${state}`;
});
$('#btn-mute').addEventListener('click', () => {
  call.setMicEnabled(!call.micEnabled);
  $('#btn-mute').textContent = call.micEnabled ? 'Mute' : 'Unmute';
});
try {
  await call.start();
} catch (err) {
  banners.show('mix', { kind: 'error', text: describeError(err) });
}
