"""Lua scripts of the Redis store: each runs atomically inside Redis, so replicas never race.

Keys under the prefix ``P`` (ARGV[1]): ``P nodes`` (set of node ids), ``P node:<id>`` (hash),
``P room:<room>`` (hash), ``P node_rooms:<id>`` (set of the rooms live on that node),
``P lost_on:<id>`` (set of the rooms lost on that node since it last registered).
Keys are built inside the scripts, so a single Redis (or a primary with replicas) is required,
not Redis Cluster.  ``PLACE`` is ``control.placement.choose`` in Lua: keep the two in step.
"""

from __future__ import annotations

PRELUDE = r"""
local P = ARGV[1]
local function nkey(id) return P .. 'node:' .. id end
local function rkey(room) return P .. 'room:' .. room end
local function nrkey(id) return P .. 'node_rooms:' .. id end
local function lose_rooms(id)
  local lost = {}
  for _, r in ipairs(redis.call('SMEMBERS', nrkey(id))) do
    local f = redis.call('HMGET', rkey(r), 'node_id', 'state')
    if f[1] == id and f[2] == 'live' then
      redis.call('HSET', rkey(r), 'state', 'lost')
      redis.call('SADD', P .. 'lost_on:' .. id, r)
      table.insert(lost, r)
    end
  end
  redis.call('DEL', nrkey(id))
  return lost
end
local function alive(id, now)
  local h = redis.call('HMGET', nkey(id), 'revoked', 'lease_expires_at')
  return h[2] ~= false and h[1] == '0' and tonumber(h[2]) > now
end
-- claim_rule (control/store/base.py) for the rooms node ``id`` lists: ARGV[first..] holds
-- (room, participants or '') pairs.  Returns the taken rooms, flat: room, node it was taken from, ...
local function claim(id, nowstr, first, learnt)
  local now = tonumber(nowstr)
  local taken = {}
  for i = first, #ARGV - 1, 2 do
    local r, cnt = ARGV[i], ARGV[i + 1]
    local rk = rkey(r)
    local f = redis.call('HMGET', rk, 'node_id', 'state', 'participants')
    if not f[1] then
      if cnt == '' then cnt = '0' end
      -- learnt back after a store loss: with the settings the node reported, when it did
      local st = (learnt and learnt[r]) or {'', '[]', '', '0'}
      redis.call('HSET', rk, 'room', r, 'node_id', id, 'state', 'live', 'placed_at', nowstr,
        'max_participants', st[1], 'codecs', st[2], 'region', '', 'empty_timeout_s', st[3],
        'participants', cnt, 'seen_at', nowstr, 'recording', st[4] or '0')
      redis.call('SADD', nrkey(id), r)
    else
      local move = f[1] == id
      if not move then
        if f[2] ~= 'live' or not alive(f[1], now) then
          -- not an empty copy: the away node may come back with the participants
          move = cnt == '' or tonumber(cnt) > 0
        elseif cnt ~= '' and tonumber(cnt) > 0 and tonumber(f[3] or '0') == 0 then
          move = true
          table.insert(taken, r)
          table.insert(taken, f[1])
        end
        if move then redis.call('SREM', nrkey(f[1]), r) end
      end
      if move then
        redis.call('HSET', rk, 'node_id', id, 'state', 'live', 'seen_at', nowstr)
        if cnt ~= '' then redis.call('HSET', rk, 'participants', cnt) end
        redis.call('SADD', nrkey(id), r)
      end
    end
  end
  return taken
end
"""

# ARGV: P, id, now, lease_expires_at, url, media_host, media_port, region, max_participants, max_rooms, version,
# instance ('' = none), takeover ('1'/'0'), the settings of rooms to learn (JSON {room: [max_participants,
# codecs JSON, empty_timeout_s]}), media_tcp_port ('' = none), then (room, participants or '') pairs: the rooms
# live on the node.
# Returns {outcome, taken (flat room, node pairs), dropped (rooms it held, lost now: it no longer lists them)}.
REGISTER = PRELUDE + r"""
local id = ARGV[2]
local now = tonumber(ARGV[3])
local k = nkey(id)
local old = redis.call('HMGET', k, 'revoked', 'lease_expires_at', 'instance')
local existed = old[2] ~= false
local held = {}
if existed then
  if old[1] == '1' then return {'revoked', {}, {}} end
  local same = ARGV[12] ~= '' and old[3] == ARGV[12]
  if tonumber(old[2]) > now and ARGV[13] ~= '1' and not same then return {'exists', {}, {}} end
  lose_rooms(id)
  -- every room lost on it (now, or earlier: lease lapsed, revoked) is dropped when not listed
  held = redis.call('SMEMBERS', P .. 'lost_on:' .. id)
  redis.call('DEL', P .. 'lost_on:' .. id)
end
redis.call('DEL', k)
redis.call('HSET', k, 'id', id, 'url', ARGV[5], 'media_host', ARGV[6], 'media_port', ARGV[7],
  'region', ARGV[8], 'max_participants', ARGV[9], 'max_rooms', ARGV[10], 'version', ARGV[11],
  'registered_at', ARGV[3], 'lease_expires_at', ARGV[4], 'revoked', '0', 'healthy', '1', 'draining', '0',
  'load_rooms', '0', 'load_participants', '0', 'load_cpu', '0', 'load_pps', '0', 'placed', '0',
  'instance', ARGV[12], 'media_tcp_port', ARGV[15])
redis.call('SADD', P .. 'nodes', id)
local taken = claim(id, ARGV[3], 16, cjson.decode(ARGV[14]))
local dropped = {}
if ARGV[12] == '' or old[3] == ARGV[12] then held = {} end  -- not a restart: its unlisted rooms ended
-- a restart: the rooms the old process still had (listed or placed within about a lease of its
-- last report; older records are rooms that ended there long ago)
local since = 0
if existed then since = tonumber(old[2]) - 2 * (tonumber(ARGV[4]) - now) end
for _, r in ipairs(held) do
  local f = redis.call('HMGET', rkey(r), 'node_id', 'state', 'placed_at', 'seen_at')
  local seen = math.max(tonumber(f[3] or '0') or 0, tonumber(f[4] or '0') or 0)
  if f[1] == id and f[2] == 'lost' and seen >= since then table.insert(dropped, r) end
end
if existed then return {'reregistered', taken, dropped} end
return {'created', taken, dropped}
"""

# ARGV: P, id, now, lease_expires_at, healthy, draining, rooms, participants, cpu, pps, instance ('' = none),
# then (room, participants) pairs when the node lists its rooms.  Returns {outcome, taken}.
HEARTBEAT = PRELUDE + r"""
local k = nkey(ARGV[2])
local f = redis.call('HMGET', k, 'revoked', 'lease_expires_at', 'instance')
if not f[2] then return {'unknown', {}} end
if f[1] == '1' then return {'revoked', {}} end
if ARGV[11] ~= '' and f[3] and f[3] ~= '' and f[3] ~= ARGV[11] then return {'superseded', {}} end
if tonumber(f[2]) <= tonumber(ARGV[3]) then return {'expired', {}} end
redis.call('HSET', k, 'healthy', ARGV[5], 'draining', ARGV[6], 'load_rooms', ARGV[7],
  'load_participants', ARGV[8], 'load_cpu', ARGV[9], 'load_pps', ARGV[10], 'placed', '0',
  'lease_expires_at', ARGV[4])
return {'ok', claim(ARGV[2], ARGV[3], 12)}
"""

# ARGV: P, id, now
REVOKE = PRELUDE + r"""
local id = ARGV[2]
local k = nkey(id)
local lease = redis.call('HGET', k, 'lease_expires_at')
if not lease then return 0 end
redis.call('HSET', k, 'revoked', '1')
if tonumber(lease) > tonumber(ARGV[3]) then redis.call('HSET', k, 'lease_expires_at', ARGV[3]) end
lose_rooms(id)
return 1
"""

# ARGV: P, id
PROVISION = PRELUDE + r"""
local k = nkey(ARGV[2])
if redis.call('EXISTS', k) == 0 then return 0 end
redis.call('HSET', k, 'revoked', '0', 'healthy', '1', 'draining', '0', 'placed', '0')
return 1
"""

# ARGV: P, id
MARK_UNHEALTHY = PRELUDE + r"""
local k = nkey(ARGV[2])
if redis.call('EXISTS', k) == 0 then return 0 end
redis.call('HSET', k, 'healthy', '0')
return 1
"""

# ARGV: P, room, now, region ('' = none), exclude (JSON list),
#       max_participants, codecs (JSON), spec region, empty_timeout_s  ('' = none), grace (ms),
#       recording ('1'/'0')
# Returns {outcome, node id, live nodes, passing nodes, previous room hash (flat), retry at (ms, AWAY)}.
PLACE = PRELUDE + r"""
local room = ARGV[2]
local now = tonumber(ARGV[3])
local region = ARGV[4]
local exclude = {}
for _, id in ipairs(cjson.decode(ARGV[5])) do exclude[id] = true end
local rk = rkey(room)
local prev = redis.call('HGETALL', rk)
local cur = redis.call('HMGET', rk, 'node_id', 'state')
if cur[1] and cur[2] ~= 'closed' then
  local h = redis.call('HMGET', nkey(cur[1]), 'revoked', 'lease_expires_at')
  if h[2] and h[1] == '0' then
    local expires = tonumber(h[2])
    if cur[2] == 'live' and expires > now then return {'existing', cur[1], 0, 0, prev, 0} end
    local grace_end = expires + tonumber(ARGV[10])
    if expires <= now and now < grace_end then return {'away', cur[1], 0, 0, prev, grace_end} end
  end
end
local function better(a, b)
  if b == nil then return true end
  if a.s ~= b.s then return a.s < b.s end
  if a.r ~= b.r then return a.r < b.r end
  return a.id < b.id
end
local live, passing = 0, 0
local best, best_local, preferred = nil, nil, nil
for _, id in ipairs(redis.call('SMEMBERS', P .. 'nodes')) do
  local f = redis.call('HMGET', nkey(id), 'revoked', 'lease_expires_at', 'healthy', 'draining', 'max_rooms',
    'max_participants', 'load_rooms', 'load_participants', 'load_cpu', 'placed', 'region')
  if f[2] and f[1] == '0' and tonumber(f[2]) > now then
    live = live + 1
    if not exclude[id] and f[3] == '1' and f[4] == '0' then
      passing = passing + 1
      local placed = tonumber(f[10])
      local rooms = tonumber(f[7]) + placed
      local parts = tonumber(f[8]) + placed
      local maxr = tonumber(f[5])
      local maxp = tonumber(f[6])
      if rooms < maxr and parts < maxp then
        local rf = rooms / maxr
        local c = {s = math.max(rf, parts / maxp, tonumber(f[9])), r = rf, id = id}
        if better(c, best) then best = c end
        if id == cur[1] then preferred = c end
        if region ~= '' and f[11] == region and better(c, best_local) then best_local = c end
      end
    end
  end
end
local chosen = preferred or best_local or best
if chosen == nil then
  local why = 'full'
  if live == 0 then why = 'no_nodes' elseif passing == 0 then why = 'all_failing' end
  return {why, '', live, passing, prev, 0}
end
if cur[1] and cur[1] ~= chosen.id then redis.call('SREM', nrkey(cur[1]), room) end
redis.call('HINCRBY', nkey(chosen.id), 'placed', 1)
redis.call('DEL', rk)
redis.call('HSET', rk, 'room', room, 'node_id', chosen.id, 'state', 'live', 'placed_at', ARGV[3],
  'max_participants', ARGV[6], 'codecs', ARGV[7], 'region', ARGV[8], 'empty_timeout_s', ARGV[9],
  'recording', ARGV[11])
redis.call('SADD', nrkey(chosen.id), room)
return {'placed', chosen.id, live, passing, prev, 0}
"""

# ARGV: P, room, node id, restore ('1'/'0'), then the restored record:
#       node_id, state, placed_at, max_participants, codecs, region, empty_timeout_s, participants, recording
RELEASE = PRELUDE + r"""
local room = ARGV[2]
local node = ARGV[3]
local rk = rkey(room)
local f = redis.call('HMGET', rk, 'node_id', 'state')
-- lost too: the node's lease may have lapsed while the failed call waited on it
if f[1] ~= node or (f[2] ~= 'live' and f[2] ~= 'lost') then return 0 end
local placed = tonumber(redis.call('HGET', nkey(node), 'placed') or '0')
if placed > 0 then redis.call('HINCRBY', nkey(node), 'placed', -1) end
redis.call('SREM', nrkey(node), room)
redis.call('DEL', rk)
if ARGV[4] == '1' then
  redis.call('HSET', rk, 'room', room, 'node_id', ARGV[5], 'state', ARGV[6], 'placed_at', ARGV[7],
    'max_participants', ARGV[8], 'codecs', ARGV[9], 'region', ARGV[10], 'empty_timeout_s', ARGV[11],
    'participants', ARGV[12], 'recording', ARGV[13])
  if ARGV[6] == 'live' then redis.call('SADD', nrkey(ARGV[5]), room) end
end
return 1
"""

# ARGV: P, now.  Returns the ids of nodes whose live rooms were marked lost.
EXPIRE = PRELUDE + r"""
local now = tonumber(ARGV[2])
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', P .. 'nodes')) do
  local f = redis.call('HMGET', nkey(id), 'revoked', 'lease_expires_at')
  if f[2] and (f[1] == '1' or tonumber(f[2]) <= now) and redis.call('SCARD', nrkey(id)) > 0 then
    if #lose_rooms(id) > 0 then table.insert(out, id) end
  end
end
return out
"""

#: ARGV: P, project, report id ('' for none), ms to keep the report id, then (period, participant
#: ms, recording ms) triples.  ``P usage:<project>:<period>`` is a hash {participant_ms,
#: recording_ms}; ``P usage_report:<id>`` marks an applied report (expires).  1 when added.
ADD_USAGE = r"""
local P, project, report, keep = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
if report ~= '' then
  if not redis.call('SET', P .. 'usage_report:' .. report, '1', 'NX', 'PX', keep) then
    return 0
  end
end
for i = 5, #ARGV, 3 do
  local key = P .. 'usage:' .. project .. ':' .. ARGV[i]
  redis.call('HINCRBY', key, 'participant_ms', ARGV[i + 1])
  redis.call('HINCRBY', key, 'recording_ms', ARGV[i + 2])
end
return 1
"""
