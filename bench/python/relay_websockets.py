"""Tutorial-style WebRTC signaling relay on the `websockets` package: a reference server.

Written the way the tutorials write it - a dict of rooms, ``json.loads`` /
``json.dumps`` per message, ``await ws.send`` per recipient, ``asyncio.run`` with
the default loop, no validation and no limits - so ``rtchub bench`` can show
rtchub next to what people deploy. `websockets` negotiates permessage-deflate by
default when the client offers it, as in the tutorials.

usage: python relay_websockets.py PORT
"""

import asyncio
import json
import sys

from websockets.asyncio.server import serve

rooms = {}  # room_id -> {user_id: websocket}


async def handler(ws):
    room_id = user_id = None
    try:
        async for raw in ws:
            try:
                msg = json.loads(raw)
            except ValueError:
                continue
            kind = msg.get("type")
            if kind == "join":
                room_id, user_id = msg["roomId"], msg["userId"]
                room = rooms.setdefault(room_id, {})
                await ws.send(json.dumps({"type": "room-info", "roomId": room_id,
                                          "users": list(room)}))
                for peer in list(room.values()):
                    await peer.send(json.dumps({"type": "user-joined", "roomId": room_id,
                                                "userId": user_id}))
                room[user_id] = ws
            elif kind in ("offer", "answer", "candidate"):
                peer = rooms.get(room_id, {}).get(msg.get("to"))
                if peer is not None:
                    msg["from"] = user_id
                    await peer.send(json.dumps(msg))
            elif kind == "message":
                msg["from"] = user_id
                out = json.dumps(msg)
                for uid, peer in list(rooms.get(room_id, {}).items()):
                    if uid != user_id:
                        await peer.send(out)
            elif kind == "leave":
                await leave(room_id, user_id)
                room_id = None
    finally:
        await leave(room_id, user_id)


async def leave(room_id, user_id):
    room = rooms.get(room_id)
    if room is None or room.get(user_id) is None:
        return
    del room[user_id]
    for peer in list(room.values()):
        try:
            await peer.send(json.dumps({"type": "user-left", "roomId": room_id, "userId": user_id}))
        except Exception:
            pass
    if not room:
        del rooms[room_id]


async def main(port):
    async with serve(handler, "127.0.0.1", port, max_size=2**20):
        print(f"python websockets relay listening on {port}", flush=True)
        await asyncio.get_running_loop().create_future()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
