// What every kind of call (mesh Call, SfuCall, AutoCall, AudioMixCall) does
// with the hub: listen to its own room's messages until it ends. One copy, so
// a rule such as "a message for another room is not ours" is decided once.

/**
 * Ignore a rejected promise. Signaling sends fail harmlessly when the peer
 * just left (peer-not-found) or the session was replaced; the teardown that
 * follows covers it.
 */
export function quiet(p) {
  if (p && typeof p.catch === 'function') p.catch(() => {});
}

/**
 * `call.hub.on(type)`, called as `fn.call(call, msg)` for messages of
 * `call.roomId` (or of no room) while `call.ended` is false; kept in
 * `call._subs` so that the call's teardown can `hub.off` it.
 */
export function onRoom(call, type, fn) {
  const h = (msg) => {
    if (call.ended) return;
    if (msg && msg.roomId !== undefined && msg.roomId !== call.roomId) return;
    fn.call(call, msg);
  };
  call.hub.on(type, h);
  call._subs.push([type, h]);
}
