// Tutorial-style WebRTC signaling relay on Node `ws`: the reference rtchub is measured against.
//
// Written the way the tutorials write it (one Map of rooms, JSON.parse / JSON.stringify per
// message, no validation, no identity check, no limits), so the benchmark compares rtchub with
// what people actually deploy. `message` (chat) is broadcast to the other members, as the chat
// variants of those tutorials do, for the fanout scenario.
//
// usage: node relay.js PORT [--deflate]
'use strict';
const { WebSocketServer } = require('ws');

const port = Number(process.argv[2] || 8090);
const deflate = process.argv.includes('--deflate');
const wss = new WebSocketServer({ host: '127.0.0.1', port, perMessageDeflate: deflate });
const rooms = new Map(); // roomId -> Map(userId -> ws)

wss.on('connection', (ws) => {
  let roomId = null;
  let userId = null;

  ws.on('message', (data) => {
    let msg;
    try {
      msg = JSON.parse(data);
    } catch (e) {
      return;
    }
    switch (msg.type) {
      case 'join': {
        roomId = msg.roomId;
        userId = msg.userId;
        if (!rooms.has(roomId)) rooms.set(roomId, new Map());
        const room = rooms.get(roomId);
        ws.send(JSON.stringify({ type: 'room-info', roomId, users: [...room.keys()] }));
        for (const peer of room.values()) {
          peer.send(JSON.stringify({ type: 'user-joined', roomId, userId }));
        }
        room.set(userId, ws);
        break;
      }
      case 'offer':
      case 'answer':
      case 'candidate': {
        const room = rooms.get(roomId);
        const peer = room && room.get(msg.to);
        if (peer) {
          msg.from = userId;
          peer.send(JSON.stringify(msg));
        }
        break;
      }
      case 'message': {
        const room = rooms.get(roomId);
        if (!room) break;
        msg.from = userId;
        const out = JSON.stringify(msg);
        for (const [id, peer] of room) {
          if (id !== userId) peer.send(out);
        }
        break;
      }
      case 'leave':
        leave();
        break;
    }
  });

  ws.on('close', leave);

  function leave() {
    const room = roomId && rooms.get(roomId);
    if (!room) return;
    room.delete(userId);
    for (const peer of room.values()) {
      peer.send(JSON.stringify({ type: 'user-left', roomId, userId }));
    }
    if (room.size === 0) rooms.delete(roomId);
    roomId = null;
  }
});

wss.on('listening', () => console.log(`node ws relay listening on ${port}`));
process.on('SIGTERM', () => process.exit(0));
