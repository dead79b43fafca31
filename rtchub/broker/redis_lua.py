"""The Lua scripts of the Redis engine (:mod:`rtchub.broker.redis`), one per read-check-write.

Each runs atomically in Redis, so two nodes racing for the same seat or
session cannot both win. They touch only keys computed from their arguments
(``ARGV[1]`` is the key prefix), which standalone Redis and Sentinel allow
and Redis Cluster does not (docs/scaling.md). ``FORWARD`` reads the wire
form of a batch of node-to-node ops; tests/test_ops.py pins the layout it
reads against :mod:`rtchub.broker.ops`, the one codec.

Kept apart from the engine because they are another language: the engine
reads as Python, and the scripts can be read (and reviewed) on their own.
"""

from rtchub.broker.ops import DELIVER_FIRST_SID, DELIVER_TAG

CLAIM = """
local p = ARGV[1]
local rk = p .. 'r:' .. ARGV[2]
local cur = redis.call('HGET', rk, ARGV[3])
local prev = ''
if cur then
  local e = cjson.decode(cur)
  if e.s ~= ARGV[4] then
    if e.c == 1 and redis.call('EXISTS', p .. 'node:' .. e.n) == 1 then
      return {'taken'}
    end
    prev = cur
  end
elseif redis.call('HLEN', rk) >= tonumber(ARGV[7]) then
  return {'full'}
end
local v = redis.call('INCR', p .. 'jv')
redis.call('HSET', rk, ARGV[3], cjson.encode({s=ARGV[4], n=ARGV[5], d=ARGV[6], c=1, v=v}))
redis.call('PEXPIRE', rk, ARGV[8])
return {'ok', v, prev, redis.call('HGETALL', rk)}
"""

UNCLAIM = """
local rk = ARGV[1] .. 'r:' .. ARGV[2]
local cur = redis.call('HGET', rk, ARGV[3])
if not cur or cjson.decode(cur).s ~= ARGV[4] then return 0 end
if ARGV[5] ~= '' then redis.call('HSET', rk, ARGV[3], ARGV[5]) else redis.call('HDEL', rk, ARGV[3]) end
return 1
"""

# 2 when this release removed the room's last seat: exactly one release ends a
# room however many nodes release at once (the room_finished webhook).
RELEASE = """
local rk = ARGV[1] .. 'r:' .. ARGV[2]
local cur = redis.call('HGET', rk, ARGV[3])
if cur and cjson.decode(cur).s == ARGV[4] then
  redis.call('HDEL', rk, ARGV[3])
  if redis.call('EXISTS', rk) == 0 then return 2 end
  return 1
end
return 0
"""

CONN = """
local rk = ARGV[1] .. 'r:' .. ARGV[2]
local cur = redis.call('HGET', rk, ARGV[3])
if not cur then return 0 end
local e = cjson.decode(cur)
if e.s ~= ARGV[4] then return 0 end
e.c = tonumber(ARGV[5])
redis.call('HSET', rk, ARGV[3], cjson.encode(e))
return 1
"""

MOVE = """
local rk = ARGV[1] .. 'r:' .. ARGV[2]
local cur = redis.call('HGET', rk, ARGV[3])
if not cur then return false end
local e = cjson.decode(cur)
if e.s ~= ARGV[4] then return false end
e.n = ARGV[5]
e.c = 1
redis.call('HSET', rk, ARGV[3], cjson.encode(e))
redis.call('PEXPIRE', rk, ARGV[6])
return {e.v, redis.call('HGETALL', rk)}
"""

# Publish to a node; when nobody listens (the node died or is reconnecting),
# reroute each delivery to its session's current node, or park it in the
# session's inbox. One script, so a node subscribing concurrently either gets
# the message or finds it in the inbox it drains after subscribing. The layout
# of a delivery op comes from rtchub.broker.ops (tests/test_ops.py pins it).
#
# A flush first sends a batch with a plain PUBLISH and runs this script only
# when that reached nobody (RedisBroker.run): every string given to Lua is
# hashed byte by byte when Redis interns it (this Redis' Lua hashes all of a
# string, not a sample), and that hashing of whole batches was the largest
# part of Redis' CPU in the cross-node profile (docs/benchmarks.notes.md).
FORWARD = """
local p = ARGV[1]
local n = redis.call('PUBLISH', p .. 'n:' .. ARGV[2], ARGV[3])
if n > 0 then return n end
for _, op in ipairs(cmsgpack.unpack(ARGV[3])) do
  if op[1] == '$TAG' then
    for i = $FIRST, #op do
      local sid = op[i]
      local owner = redis.call('HGET', p .. 's:' .. sid, 'node')
      local sent = 0
      if owner and owner ~= ARGV[2] then
        sent = redis.call('PUBLISH', p .. 'n:' .. owner,
                          cmsgpack.pack({{'$TAG', $FIELDS, sid}}))
      end
      if sent == 0 then
        local ik = p .. 'i:' .. sid
        redis.call('RPUSH', ik, cmsgpack.pack({$FIELDS}))
        redis.call('PEXPIRE', ik, ARGV[4])
      end
    end
  end
end
return 0
""".replace("$TAG", DELIVER_TAG).replace(
    "$FIRST", str(DELIVER_FIRST_SID + 1)).replace(  # Lua arrays start at 1
    "$FIELDS", ", ".join(f"op[{i + 1}]" for i in range(1, DELIVER_FIRST_SID)))

# map_set: ARGV[2] map, ARGV[3] key, ARGV[4] value ('' deletes), ARGV[5] '1' when
# conditional, ARGV[6] the expected value ('' = absent). Returns {done, value now}.
MAPSET = """
local k = ARGV[1] .. 'm:' .. ARGV[2]
local cur = redis.call('HGET', k, ARGV[3]) or ''
if ARGV[5] == '1' and cur ~= ARGV[6] then return {0, cur} end
if ARGV[4] == '' then redis.call('HDEL', k, ARGV[3]) else redis.call('HSET', k, ARGV[3], ARGV[4]) end
return {1, ARGV[4]}
"""

TAKE = """
local p = ARGV[1]
local sk = p .. 's:' .. ARGV[2]
if redis.call('EXISTS', sk) == 0 then return false end
redis.call('HSET', sk, 'node', ARGV[3])
local ik = p .. 'i:' .. ARGV[2]
local inbox = redis.call('LRANGE', ik, 0, -1)
redis.call('DEL', ik)
return {redis.call('HGETALL', sk), redis.call('LRANGE', p .. 'b:' .. ARGV[2], 0, -1), inbox}
"""

DRAIN = """
local ik = ARGV[1] .. 'i:' .. ARGV[2]
local inbox = redis.call('LRANGE', ik, 0, -1)
redis.call('DEL', ik)
return inbox
"""

VERSION = """
local k = ARGV[1] .. 'jv'
if tonumber(redis.call('GET', k) or '0') < tonumber(ARGV[2]) then redis.call('SET', k, ARGV[2]) end
return 1
"""

SCRIPTS = {"claim": CLAIM, "unclaim": UNCLAIM, "release": RELEASE, "conn": CONN,
           "move": MOVE, "forward": FORWARD, "take": TAKE, "drain": DRAIN,
           "version": VERSION, "mapset": MAPSET}
