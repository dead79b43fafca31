"""The same tutorial relay as relay.js, on picows + uvloop + orjson: the floor of a Python server.

Not a reference rtchub is judged against (the targets compare with Node's
``ws``), but the answer to "how much of a Python server's cost per message is
the language and how much is the server's own work": one dict of rooms, one
decode and one encode per message, picows writing each frame with its own
``send(2)``, nothing else (no validation, identity, resume buffer, limits or
metrics). ``rtchub bench --scenario relay-rate --servers rtchub,node-ws,py-picows``
puts it beside the two.

usage: python relay_picows.py PORT
"""

import sys

import orjson
import uvloop
from picows import WSListener, WSMsgType, ws_create_server

rooms = {}  # room_id -> {user_id: listener}


class Relay(WSListener):
    def __init__(self):
        self.transport = None
        self.room_id = None
        self.user_id = None

    def on_ws_connected(self, transport):
        self.transport = transport

    def on_ws_frame(self, transport, frame):
        if frame.msg_type is WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()
            return
        if frame.msg_type is not WSMsgType.TEXT:
            return
        try:
            msg = orjson.loads(frame.get_payload_as_bytes())
        except orjson.JSONDecodeError:
            return
        kind = msg.get("type")
        if kind == "join":
            self.room_id, self.user_id = msg["roomId"], msg["userId"]
            room = rooms.setdefault(self.room_id, {})
            transport.send(WSMsgType.TEXT, orjson.dumps(
                {"type": "room-info", "roomId": self.room_id, "users": list(room)}))
            joined = orjson.dumps({"type": "user-joined", "roomId": self.room_id, "userId": self.user_id})
            for peer in room.values():
                peer.transport.send(WSMsgType.TEXT, joined)
            room[self.user_id] = self
        elif kind in ("offer", "answer", "candidate"):
            peer = rooms.get(self.room_id, {}).get(msg.get("to"))
            if peer is not None:
                msg["from"] = self.user_id
                peer.transport.send(WSMsgType.TEXT, orjson.dumps(msg))
        elif kind == "message":
            msg["from"] = self.user_id
            out = orjson.dumps(msg)
            for uid, peer in rooms.get(self.room_id, {}).items():
                if uid != self.user_id:
                    peer.transport.send(WSMsgType.TEXT, out)

    def on_ws_disconnected(self, transport):
        room = rooms.get(self.room_id)
        if room is None or room.pop(self.user_id, None) is None:
            return
        left = orjson.dumps({"type": "user-left", "roomId": self.room_id, "userId": self.user_id})
        for peer in room.values():
            peer.transport.send(WSMsgType.TEXT, left)
        if not room:
            del rooms[self.room_id]


async def main(port):
    server = await ws_create_server(lambda request: Relay(), "127.0.0.1", port)
    print(f"python picows relay listening on {port}", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1])))
