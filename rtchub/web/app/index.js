// Landing page: pick a room and a name, then go to the call or the chat page.
import {
  $, cleanName, cleanRoom, copyText, hydrateIcons, params, pageUrl, randomRoom,
  saveName, savedName, toast, validRoom,
} from './common.js';

hydrateIcons();

const form = $('#join-form');
const room = $('#room');
const name = $('#name');
const invite = $('#invite-link');
const roomHint = $('#room-hint');
const nameHint = $('#name-hint');

room.value = cleanRoom(params.get('room')) || randomRoom();
name.value = cleanName(params.get('name')) || savedName();

function inviteLink() {
  // The landing page with the room filled in: whoever opens it types their
  // own name and chooses call or chat.
  const r = cleanRoom(room.value);
  const url = new URL('/', location.origin);
  if (r) url.searchParams.set('room', r);
  return url.href;
}

function refresh() {
  invite.value = inviteLink();
  const r = cleanRoom(room.value);
  const bad = room.value.trim() !== '' && !validRoom(r);
  roomHint.classList.toggle('error', bad);
}

room.addEventListener('input', refresh);
room.addEventListener('change', () => { room.value = cleanRoom(room.value); refresh(); });
name.addEventListener('input', () => { nameHint.hidden = true; });

$('#random-room').addEventListener('click', () => {
  room.value = randomRoom();
  refresh();
  room.focus();
});

$('#copy-link').addEventListener('click', async (e) => {
  const btn = e.currentTarget;
  const ok = await copyText(invite.value, invite);
  toast(ok ? 'Invite link copied' : 'Press Ctrl+C to copy the link');
  btn.dataset.copied = ok ? 'yes' : 'no';
});

function go(page) {
  const r = cleanRoom(room.value);
  const n = cleanName(name.value);
  if (!validRoom(r)) {
    room.value = r || randomRoom();
    refresh();
    room.focus();
    return;
  }
  if (!n) {
    nameHint.hidden = false;
    name.focus();
    return;
  }
  saveName(n);
  location.assign(pageUrl(page, r, n));
}

form.addEventListener('submit', (e) => {
  e.preventDefault();
  go('call.html');
});
$('#start-chat').addEventListener('click', () => go('chat.html'));
$('#start-audio').addEventListener('click', (e) => { e.preventDefault(); go('audio.html'); });

refresh();
(name.value ? $('#start-call') : name).focus();
