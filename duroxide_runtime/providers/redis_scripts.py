"""The Lua scripts of the Redis store's hot paths (``RedisProvider``): one round trip each, atomic.

Why scripts: an optimistic ``WATCH`` transaction costs a round trip per read plus the
``EXEC``, and every writer of the store contends on one version key. A script runs
all its reads and writes inside the server, atomically, in one round trip, so
concurrent processes never redo each other's work and the server can fsync their
writes together (``appendfsync always`` syncs once per event-loop pass).

Every script has the same calling convention (:func:`keys_of`):

* ``KEYS[1]`` a fresh marker key, ``KEYS[2..13]`` the store's fixed keys
  (:data:`FIXED`), ``KEYS[14..]`` the per-instance keys the operation names
  (queue sets, histories, executions), so that every key a script touches is declared;
* ``ARGV[1]`` the wake-up channel, ``ARGV[2]`` the operation as JSON (timestamps as
  strings: Lua numbers print with 14 digits, ids and ms times stay far below that).

A script that wrote anything increments ``ver`` (so the remaining ``WATCH``
transactions, which watch it, redo their reads), stores its reply under the
marker for 10 minutes, and publishes its wake-ups. A retry after a lost reply
sends the same marker and gets the stored reply back: nothing is applied twice.
Replies are one JSON string (``cjson``; an empty Lua table encodes as ``{}``).
"""

from __future__ import annotations

#: The fixed keys every script receives, in this order, as KEYS[2..13] (attribute names of ``_Keys``).
FIXED = ("ver", "seq", "inst", "q", "qvis", "tk", "locks", "work", "wcall", "hb", "waiting", "wtok")
#: The first KEYS index of a script's per-operation keys.
FIRST_EXTRA = len(FIXED) + 2

_PRELUDE = """
local done = redis.call('GET', KEYS[1])
if done then return done end
local CH = ARGV[1]
local S = cjson.decode(ARGV[2])
local VER, SEQ, INST, Q, QVIS, TK = KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local LOCKS, WORK, WCALL, HB, WAITING, WTOK = KEYS[8], KEYS[9], KEYS[10], KEYS[11], KEYS[12], KEYS[13]
local wrote, wakes = false, {}

-- A queued orchestrator message e = {value, visible_at, timer field or ''} for the set KEYS[qi].
local function enqueue(qi, e)
  local id = redis.call('INCR', SEQ)
  redis.call('HSET', Q, id, e[1])
  redis.call('ZADD', QVIS, e[2], id)
  redis.call('SADD', KEYS[qi], id)
  if e[3] ~= '' then redis.call('HSET', TK, e[3], id) end
  wrote = true
  wakes['o'] = true
  return id
end

-- Whether a guarded write goes ahead: the row exists and, if guarded (a list), its status is listed.
local function admits(statuses, row)
  if not row then return false end
  if statuses == nil then return true end
  local s = cjson.decode(row)['s']
  for _, x in ipairs(statuses) do if x == s then return true end end
  return false
end

local function holds(lock, token)
  return lock and string.sub(lock, 1, #token + 1) == token .. '|'
end

-- The instance a queued message belongs to ("i"; older entries only have it inside the message).
local function owner(body)
  local iid = body['i']
  if iid == nil then iid = cjson.decode(body['m'])['instance_id'] end
  return iid
end

local function finish(result)
  local out = cjson.encode(result)
  if wrote then
    redis.call('INCR', VER)
    redis.call('SET', KEYS[1], out, 'EX', 600)
    for w in pairs(wakes) do redis.call('PUBLISH', CH, w) end
  end
  return out
end
"""

#: send: S = {i, s (statuses, absent: any), set (new status, absent: none), now, e (entry)}; KEYS[14] qi.
SEND = _PRELUDE + """
local row = redis.call('HGET', INST, S.i)
if admits(S.s, row) then
  enqueue(14, S.e)
  if S.set and row then
    local r = cjson.decode(row)
    r['s'] = S.set
    r['u'] = tonumber(S.now)
    redis.call('HSET', INST, S.i, cjson.encode(r))
  end
end
return finish({row})
"""

#: a start without queue, key or replacement: S = {i, inc, row, e, more: [[qi, entry]]}; KEYS[14] qi.
#: Reply ['c'] created (or our own earlier commit), ['x', row] the id is taken.
START = _PRELUDE + """
local row = redis.call('HGET', INST, S.i)
if row then
  if cjson.decode(row)['inc'] == S.inc then return finish({'c'}) end
  return finish({'x', row})
end
redis.call('HSET', INST, S.i, S.row)
wrote = true
enqueue(14, S.e)
for _, m in ipairs(S.more) do enqueue(m[1], m[2]) end
return finish({'c'})
"""

#: S = {now, until, max, scan, woff, tokens, queues (bool)}. Reply ['slow'] when waiting instances
#: must be admitted first (the WATCH path does that), else [items, next_due or false] with items
#: [iid, token, [[qid, message]...], row or false, dequeue count].
FETCH_ORCH = _PRELUDE + """
if S.queues and redis.call('HLEN', WAITING) > 0 then return cjson.encode({'slow'}) end
local now = tonumber(S.now)
local ids = {}
for _, m in ipairs(redis.call('ZRANGEBYSCORE', QVIS, '-inf', S.now, 'LIMIT', 0, S.scan)) do
  ids[#ids + 1] = tonumber(m)
end
table.sort(ids)  -- oldest message first, as ids ascend with arrival
local chosen, order, skip, n = {}, {}, {}, 0
for _, qid in ipairs(ids) do
  local raw = redis.call('HGET', Q, qid)
  if raw then
    local body = cjson.decode(raw)
    local iid = owner(body)
    if chosen[iid] then
      table.insert(chosen[iid], {qid, body})
    elseif not skip[iid] then
      local ok = n < S.max and redis.call('HEXISTS', WAITING, iid) == 0
      if ok then
        local lock = redis.call('HGET', LOCKS, iid)
        if lock then
          local held_until = tonumber(string.match(lock, '|(%d+)$'))
          if held_until and held_until > now then ok = false end
        end
      end
      if ok then
        n = n + 1
        chosen[iid] = {{qid, body}}
        order[n] = iid
      else
        skip[iid] = true
      end
    end
  end
end
local items = {}
for j, iid in ipairs(order) do
  local token = S.tokens[j]
  redis.call('HSET', LOCKS, iid, token .. '|' .. S['until'])
  local msgs, deq = {}, 0
  for _, pair in ipairs(chosen[iid]) do
    local body = pair[2]
    body['d'] = body['d'] + 1
    body['t'] = token
    if body['d'] > deq then deq = body['d'] end
    redis.call('HSET', Q, pair[1], cjson.encode(body))
    msgs[#msgs + 1] = {pair[1], body['m']}
  end
  items[j] = {iid, token, msgs, redis.call('HGET', INST, iid), deq}
  wrote = true
end
local next_due = false
local later = redis.call('ZRANGEBYSCORE', QVIS, '(' .. S.now, '(' .. S.woff, 'WITHSCORES', 'LIMIT', 0, 200)
for j = 1, #later, 2 do
  local raw = redis.call('HGET', Q, later[j])
  if raw and redis.call('HEXISTS', WAITING, owner(cjson.decode(raw))) == 0 then
    next_due = later[j + 1]
    break
  end
end
return finish({items, next_due})
"""

#: S = {now, turns: [turn]}; a turn is {i, t, qi, h, x (KEYS indexes), ex, c (consumed ids), ev (events),
#: a ([work value, call field]), cx (call fields to cancel), dt ([timer field, qi]), ch ({i, row, qi, e,
#: tq, it}), m ([qi, entry]), u (row fields, absent: none), fin}. Reply: one boolean per turn.
COMMIT = _PRELUDE + """
local results = {}
for n, T in ipairs(S.turns) do
  if not holds(redis.call('HGET', LOCKS, T.i), T.t) then
    results[n] = false  -- the lease lapsed and someone else holds (or held) the instance: fenced
  else
    wrote = true
    local qi = KEYS[T.qi]
    for _, qid in ipairs(T.c) do
      redis.call('HDEL', Q, qid)
      redis.call('ZREM', QVIS, qid)
      redis.call('SREM', qi, qid)
    end
    if #T.ev > 0 then
      for s = 1, #T.ev, 500 do
        redis.call('RPUSH', KEYS[T.h], unpack(T.ev, s, math.min(s + 499, #T.ev)))
      end
      redis.call('SADD', KEYS[T.x], T.ex)
    end
    for _, a in ipairs(T.a) do
      local wid = redis.call('INCR', SEQ)
      redis.call('HSET', WORK, wid, a[1])
      redis.call('HSET', WCALL, a[2], wid)
      wakes['w'] = true
    end
    for _, f in ipairs(T.cx) do
      local wid = redis.call('HGET', WCALL, f)
      local raw = wid and redis.call('HGET', WORK, wid)
      if raw then
        local item = cjson.decode(raw)
        if item['t'] == cjson.null then
          redis.call('HDEL', WORK, wid)
          redis.call('HDEL', WCALL, f)
        else
          item['c'] = true
          redis.call('HSET', WORK, wid, cjson.encode(item))
        end
      end
    end
    for _, d in ipairs(T.dt) do
      local qid = redis.call('HGET', TK, d[1])
      if qid then
        redis.call('HDEL', TK, d[1])
        redis.call('HDEL', Q, qid)
        redis.call('ZREM', QVIS, qid)
        redis.call('SREM', KEYS[d[2]], qid)
      end
    end
    for _, c in ipairs(T.ch) do
      if redis.call('HEXISTS', INST, c.i) == 1 then
        if c.it then enqueue(c.tq, c.it) end
      else
        redis.call('HSET', INST, c.i, c.row)
        enqueue(c.qi, c.e)
      end
    end
    for _, m in ipairs(T.m) do enqueue(m[1], m[2]) end
    if T.u then
      local old = redis.call('HGET', INST, T.i)
      if old then
        local r = cjson.decode(old)
        for k, v in pairs(T.u) do r[k] = v end
        r['u'] = tonumber(S.now)
        redis.call('HSET', INST, T.i, cjson.encode(r))
      end
    end
    redis.call('HDEL', LOCKS, T.i)
    if T.fin then wakes['i:' .. T.i] = true end
    results[n] = true
  end
end
return finish(results)
"""

#: S = {now, until, fb (foreign-before ms), names (absent: any), max, tokens}. Reply [[token, work, dequeues]...].
FETCH_WORK = _PRELUDE + """
local now, fb = tonumber(S.now), tonumber(S.fb)
local names = nil
if S.names then
  names = {}
  for _, x in ipairs(S.names) do names[x] = true end
end
local all = redis.call('HGETALL', WORK)
local cands = {}
for j = 1, #all, 2 do
  local item = cjson.decode(all[j + 1])
  local v = tonumber(item['v'])
  local leased = item['t'] ~= cjson.null and tonumber(item['u']) > now
  if v <= now and not item['c'] and not leased then
    local name, prio = item['n'], item['p']
    if name == nil then
      local w = cjson.decode(item['w'])
      name, prio = w['name'], w['priority']
    end
    if prio == nil or prio == cjson.null then prio = 0 end
    if names == nil or names[name] or v <= fb then cands[#cands + 1] = {tonumber(all[j]), prio, item} end
  end
end
table.sort(cands, function(a, b)
  if a[2] ~= b[2] then return a[2] > b[2] end
  return a[1] < b[1]
end)
local leases = {}
for j = 1, math.min(#cands, S.max) do
  local wid, item = cands[j][1], cands[j][3]
  if item['t'] ~= cjson.null then redis.call('HDEL', WTOK, item['t']) end
  item['t'] = S.tokens[j]
  item['u'] = tonumber(S['until'])
  item['d'] = item['d'] + 1
  redis.call('HSET', WORK, wid, cjson.encode(item))
  redis.call('HSET', WTOK, S.tokens[j], wid)
  leases[j] = {S.tokens[j], item['w'], item['d']}
  wrote = true
end
return finish(leases)
"""

#: S = {s (statuses, absent: any), done: [[token, heartbeat field or '', entry, qi, instance id]]}.
COMPLETE = _PRELUDE + """
for _, d in ipairs(S.done) do
  local wid = redis.call('HGET', WTOK, d[1])
  if wid then
    redis.call('HDEL', WTOK, d[1])
    wrote = true
    local raw = redis.call('HGET', WORK, wid)
    local item = raw and cjson.decode(raw)
    if item and item['t'] == d[1] then
      local k = item['k']
      if k == nil then
        local w = cjson.decode(item['w'])
        k = w['instance_id'] .. '\\31' .. w['execution_id'] .. '\\31' .. w['event_id']
      end
      redis.call('HDEL', WORK, wid)
      redis.call('HDEL', WCALL, k)
      if d[2] ~= '' then redis.call('HDEL', HB, d[2]) end
      if admits(S.s, redis.call('HGET', INST, d[5])) then enqueue(d[4], d[3]) end
    end
  end
end
return finish({})
"""

#: S = {until, locks: [[iid, token]]}. Reply: one boolean per lock.
RENEW_ORCH = _PRELUDE + """
local res = {}
for j, p in ipairs(S.locks) do
  if holds(redis.call('HGET', LOCKS, p[1]), p[2]) then
    redis.call('HSET', LOCKS, p[1], p[2] .. '|' .. S['until'])
    wrote = true
    res[j] = true
  else
    res[j] = false
  end
end
return finish(res)
"""
