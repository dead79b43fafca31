// A tiny event emitter shared by RtcHub and Call.
//
// A handler that throws must not break the SDK's own state machine (a failed
// UI update must not stop a reconnect), yet an app bug must not vanish either:
// the error is re-thrown from a fresh task, where the browser reports it as an
// uncaught error with its stack.

export class Emitter {
  constructor() {
    this._handlers = new Map();
  }

  on(type, handler) {
    let set = this._handlers.get(type);
    if (!set) this._handlers.set(type, (set = new Set()));
    set.add(handler);
    return this;
  }

  off(type, handler) {
    const set = this._handlers.get(type);
    if (set) {
      if (handler === undefined) set.clear();
      else set.delete(handler);
    }
    return this;
  }

  /** Resolves with the next event of `type` (optionally one that matches `filter`). */
  once(type, filter = null) {
    return new Promise((resolve) => {
      const h = (ev) => {
        if (filter && !filter(ev)) return;
        this.off(type, h);
        resolve(ev);
      };
      this.on(type, h);
    });
  }

  emit(type, event) {
    const set = this._handlers.get(type);
    if (!set || set.size === 0) return false;
    for (const handler of [...set]) {
      try {
        handler(event);
      } catch (err) {
        setTimeout(() => { throw err; }, 0);
      }
    }
    return true;
  }
}
