// The message list used by the call page and the chat page: chat bubbles,
// system lines (joined / left) and file-transfer cards with progress.
import { colorFor, el, formatBytes, icon, timeLabel } from './common.js';

export class ChatLog {
  constructor(container, emptyNode) {
    this.box = container;
    this.empty = emptyNode;
    this.files = new Map();
    this.unread = 0;
    this.onActivity = null;
  }

  _append(node) {
    if (this.empty) {
      this.empty.remove();
      this.empty = null;
    }
    // Stay pinned to the bottom only if the reader already was there.
    const atBottom = this.box.scrollHeight - this.box.scrollTop - this.box.clientHeight < 60;
    this.box.append(node);
    if (atBottom || node.classList.contains('mine')) this.box.scrollTop = this.box.scrollHeight;
    return node;
  }

  /** A chat bubble. Returns the element so a caller can mark it pending/failed. */
  message({ name, text, mine = false, from = '', time = new Date() }) {
    const node = el('div', { class: `msg${mine ? ' mine' : ''}`, dataset: { from } },
      el('div', { class: 'meta' },
        mine ? null : el('b', { style: { color: colorFor(from || name) } }, name || 'Someone'),
        timeLabel(time)),
      el('div', { class: 'bubble' }, text));
    if (!mine) this._bump();
    return this._append(node);
  }

  /** A centered grey line: "Ana joined", "Ben left". */
  system(...parts) {
    return this._append(el('div', { class: 'sys' }, ...parts));
  }

  /**
   * A file-transfer card, created on the first progress event and updated in
   * place (key: direction + peer + file name).
   */
  file(key, { name, size, mine, who }) {
    let card = this.files.get(key);
    if (card) return card;
    const bar = el('progress', { max: String(size || 1), value: '0' });
    const status = el('span', { class: 'fstatus' }, mine ? 'Sending…' : 'Receiving…');
    const box = el('div', { class: 'file-card', dataset: { file: name } },
      icon('file'),
      el('div', { class: 'fname', title: name }, name),
      el('div', { class: 'fmeta' }, el('span', {}, formatBytes(size)), status),
      bar);
    const node = el('div', { class: `msg${mine ? ' mine' : ''}` },
      el('div', { class: 'meta' }, mine ? null : el('b', {}, who || 'Someone'), timeLabel()),
      box);
    card = { node, box, bar, status, size, done: false };
    this.files.set(key, card);
    this._append(node);
    if (!mine) this._bump();
    return card;
  }

  fileProgress(key, done, size) {
    const card = this.files.get(key);
    if (!card || card.done) return;
    if (size) card.bar.max = size;
    card.bar.value = Math.min(done, card.bar.max);
    const pct = card.bar.max ? Math.floor((100 * card.bar.value) / card.bar.max) : 0;
    card.status.textContent = `${pct}%`;
  }

  fileSent(key, text = 'Sent') {
    const card = this.files.get(key);
    if (!card) return;
    card.done = true;
    card.bar.value = card.bar.max;
    card.box.classList.add('done');
    card.status.textContent = text;
  }

  fileFailed(key, text) {
    const card = this.files.get(key);
    if (!card) return;
    card.done = true;
    card.status.textContent = text;
    card.node.classList.add('failed');
  }

  fileReceived(key, { name, blob, sha256 }) {
    const card = this.files.get(key);
    if (!card) return;
    card.done = true;
    card.bar.value = card.bar.max;
    card.box.classList.add('done');
    const url = URL.createObjectURL(blob);
    const link = el('a', { class: 'dl', href: url, download: name }, icon('download'), 'Save');
    const parts = [link];
    if (sha256) {
      parts.push(el('code', { title: `SHA-256 ${sha256}` }, `sha256 ${String(sha256).slice(0, 10)}…`));
    }
    card.status.replaceChildren(...parts);
  }

  _bump() {
    this.unread += 1;
    this.onActivity?.(this.unread);
  }

  markRead() {
    this.unread = 0;
    this.onActivity?.(0);
  }
}

/** Grow a textarea with its content (up to its CSS max-height); Enter sends. */
export function wireComposer(form, textarea, onSend) {
  const fit = () => {
    textarea.style.height = 'auto';
    textarea.style.height = `${textarea.scrollHeight + 2}px`;
  };
  textarea.addEventListener('input', fit);
  textarea.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      form.requestSubmit();
    }
  });
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const text = textarea.value.trim();
    if (!text) return;
    textarea.value = '';
    fit();
    onSend(text);
  });
}
