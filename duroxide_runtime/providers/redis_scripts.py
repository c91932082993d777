"""The Lua scripts of the Redis store's hot paths (``RedisProvider``): one round trip each, atomic.

Why scripts: an optimistic ``WATCH`` transaction costs a round trip per read plus the
``EXEC``, and every writer of the store contends on one version key. A script runs
all its reads and writes inside the server, atomically, in one round trip, so
concurrent processes never redo each other's work and the server can fsync their
writes together (``appendfsync always`` syncs once per event-loop pass).

Every script has the same calling convention (:func:`keys_of`):

* ``KEYS[1]`` a fresh marker key, ``KEYS[2..17]`` the store's fixed keys
  (:data:`FIXED`), ``KEYS[18..]`` the per-instance keys the operation names
  (queue sets, histories, executions), so that every key a script touches is declared;
* ``ARGV[1]`` the wake-up channel, ``ARGV[2]`` the operation as JSON (timestamps as
  strings: Lua numbers print with 14 digits, ids and ms times stay far below that).

Leases are not made durable (as SQLite's store, which commits locks and leases
without waiting for its fsync): the fetch and renewal scripts call
``redis.set_repl(redis.REPL_NONE)``, so their writes (locks, lease tokens, delivery
counts) stay in memory and never wait for an fsync. What they write is consistent
to lose: after a server crash an instance is unlocked and a call unleased, as if
the lease had expired; every later durable write (a commit, a result) is replicated
whole. The cost: delivery counts made since the last AOF rewrite restart lower.
One trap: the server propagates only writes that change its memory, so removing a
member that a lease's unreplicated write already took out of a sorted set (a
parked message from ``qvis``, a leased call from ``wq``) would never reach the
AOF, and would come back after a restart. ``zdel`` removes such a member so that
the removal is written.

An orchestrator message visible at once is scored ``id - 2**53`` in ``qvis``
(:func:`immediate_score`): always due, and ordered by arrival (ids ascend), so the
fetch reads the oldest first with ``LIMIT``; a timer is scored by its due time.
A fetched message is parked: moved from ``qvis`` to ``qpark``, scored by its
lease's expiry, so later fetches never read it while the lease holds; a fetch
first moves the parked messages whose lease lapsed back. The lock (``locks``:
``token|until|id,id,...``) lists the parked ids: a commit deletes the consumed
ones and puts any other back, a renewal moves them to the new expiry, an abandon
puts them back. Activity calls likewise: ``wq`` holds the calls to lease (by
priority, then id), ``wlease`` the leased ones by lease expiry.

The length of an instance's current history is kept in ``hlen`` (``incarnation|
execution|length``, written by the commit that appends): the fetch reports it
without reading the history list, which it could not declare in advance. An entry
of another incarnation or execution means no history yet (length 0).

A script that wrote anything increments ``ver`` (so the remaining ``WATCH``
transactions, which watch it, redo their reads), stores its reply under the
marker for 10 minutes, and publishes its wake-ups. A retry after a lost reply
sends the same marker and gets the stored reply back: nothing is applied twice.
Replies are one JSON string (``cjson``; an empty Lua table encodes as ``{}``).
"""

from __future__ import annotations

#: The fixed keys every script receives, in this order, as KEYS[2..17] (attribute names of ``_Keys``).
FIXED = ("ver", "seq", "inst", "q", "qvis", "tk", "locks", "work", "wcall", "hb", "waiting", "wtok", "wq", "qpark",
         "hlen", "wlease")
#: The first KEYS index of a script's per-operation keys.
FIRST_EXTRA = len(FIXED) + 2
assert FIRST_EXTRA == 18  # the prelude's X

_PRELUDE = """
local done = redis.call('GET', KEYS[1])
if done then return done end
local CH = ARGV[1]
local S = cjson.decode(ARGV[2])
local VER, SEQ, INST, Q, QVIS, TK = KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local LOCKS, WORK, WCALL, HB, WAITING, WTOK = KEYS[8], KEYS[9], KEYS[10], KEYS[11], KEYS[12], KEYS[13]
local WQ, QPARK, HLEN, WLEASE = KEYS[14], KEYS[15], KEYS[16], KEYS[17]
local X = 18  -- the first per-operation key (FIRST_EXTRA)
local wrote, wakes = false, {}

-- A queued orchestrator message e = {value, visible-at score ('' = now), timer field or ''} for KEYS[qi].
local function enqueue(qi, e)
  local id = redis.call('INCR', SEQ)
  local score = e[2]
  if score == '' then score = string.format('%.0f', id - 9007199254740992) end
  redis.call('HSET', Q, id, e[1])
  redis.call('ZADD', QVIS, score, id)
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

-- ZREM whose removal reaches the AOF even when memory no longer holds the member (see above).
local function zdel(key, member)
  if redis.call('ZREM', key, member) == 0 then
    redis.call('ZADD', key, 0, member)
    redis.call('ZREM', key, member)
  end
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

-- The same from the stored text: a pattern match on what Python wrote ('{"i":"<id>",...'), else a decode.
local function owner_of(raw)
  local iid = string.match(raw, '^{"i":"([^"\\\\]*)",')
  if iid then return iid end
  return owner(cjson.decode(raw))
end

-- A queued message's stored text, "i" first as Python writes it (what owner_of matches cheaply).
local function dump_q(b)
  return '{"i":' .. cjson.encode(b['i']) .. ',"m":' .. cjson.encode(b['m']) .. ',"v":' .. cjson.encode(b['v']) ..
    ',"d":' .. cjson.encode(b['d']) .. ',"t":' .. cjson.encode(b['t']) .. '}'
end

-- Put a parked message back in qvis at its own score: its visibility, or its arrival order.
local function unpark(qid)
  wrote = true
  redis.call('ZREM', QPARK, qid)
  local raw = redis.call('HGET', Q, qid)
  if not raw then return end
  local v = tonumber(cjson.decode(raw)['v'])
  local score = string.format('%.0f', v)
  if v <= 0 then score = string.format('%.0f', tonumber(qid) - 9007199254740992) end
  redis.call('ZADD', QVIS, score, qid)
end

-- A work item's place in WQ (the calls to lease) and WLEASE (the leased): higher priority first, then by id.
local function wq_member(wid)
  return string.format('%020d', wid)
end

-- A call out of both indexes (done, or cancelled: never leased again).
local function unindex(wid)
  zdel(WQ, wq_member(wid))
  zdel(WLEASE, wq_member(wid))
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

#: send: S = {i, s (statuses, absent: any), set (new status, absent: none), now, e (entry)}; KEYS[X] qi.
SEND = _PRELUDE + """
local row = redis.call('HGET', INST, S.i)
if admits(S.s, row) then
  enqueue(X, S.e)
  if S.set and row then
    local r = cjson.decode(row)
    r['s'] = S.set
    r['u'] = tonumber(S.now)
    redis.call('HSET', INST, S.i, cjson.encode(r))
  end
end
return finish({row})
"""

#: a start without queue, key or replacement: S = {i, inc, row, e, more: [[qi, entry]]}; KEYS[X] qi.
#: Reply ['c'] created (or our own earlier commit), ['x', row] the id is taken.
START = _PRELUDE + """
local row = redis.call('HGET', INST, S.i)
if row then
  if cjson.decode(row)['inc'] == S.inc then return finish({'c'}) end
  return finish({'x', row})
end
redis.call('HSET', INST, S.i, S.row)
wrote = true
enqueue(X, S.e)
for _, m in ipairs(S.more) do enqueue(m[1], m[2]) end
return finish({'c'})
"""

#: S = {now, until, max, scan, woff, tok (token stem), queues (bool)}. Reply ['slow'] when waiting
#: instances must be admitted first (the WATCH path does that), else [items, next_due or false] with
#: items [iid, token, [[qid, message]...], row or false, dequeue count, history length].
FETCH_ORCH = _PRELUDE + """
if S.queues and redis.call('HLEN', WAITING) > 0 then return cjson.encode({'slow'}) end
redis.set_repl(redis.REPL_NONE)  -- a lease: kept in memory, never waits for an fsync (see above)
local now = tonumber(S.now)
for _, qid in ipairs(redis.call('ZRANGEBYSCORE', QPARK, '-inf', S.now, 'LIMIT', 0, S.scan)) do
  unpark(qid)  -- its lease lapsed
end
local chosen, order, skip, n = {}, {}, {}, 0
-- Oldest first (the scores order by arrival), in chunks: at most S.scan due messages, and once
-- S.max instances are chosen, one more chunk for their other messages (the rest wait a turn).
local offset, after_full = 0, 0
while offset < S.scan and after_full < 128 do
  local chunk = redis.call('ZRANGEBYSCORE', QVIS, '-inf', S.now, 'LIMIT', offset, 128)
  offset = offset + 128
  if #chunk < 128 then offset = S.scan end
  for _, qid in ipairs(chunk) do
    if n >= S.max then after_full = after_full + 1 end
    local raw = redis.call('HGET', Q, qid)
    if not raw then redis.call('ZREM', QVIS, qid) end  -- a leftover without its message
    local iid = raw and owner_of(raw)
    if iid and chosen[iid] then
      table.insert(chosen[iid], {qid, cjson.decode(raw)})
    elseif iid and not skip[iid] then
      if n >= S.max then
        skip[iid] = true
      else
        local body = cjson.decode(raw)
        local ok = n < S.max and redis.call('HEXISTS', WAITING, iid) == 0
        if ok then
          local lock = redis.call('HGET', LOCKS, iid)
          if lock then
            local held_until = tonumber(string.match(lock, '^[^|]*|(%d+)'))
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
end
local items = {}
for j, iid in ipairs(order) do
  local token = S.tok .. j
  local msgs, parked, deq = {}, {}, 0
  for _, pair in ipairs(chosen[iid]) do
    local body = pair[2]
    body['d'] = body['d'] + 1
    body['t'] = token
    if body['d'] > deq then deq = body['d'] end
    if body['i'] == nil then body['i'] = iid end
    redis.call('HSET', Q, pair[1], dump_q(body))
    redis.call('ZREM', QVIS, pair[1])
    redis.call('ZADD', QPARK, S['until'], pair[1])  -- parked until the lease lapses
    msgs[#msgs + 1] = {pair[1], body['m']}
    parked[#parked + 1] = pair[1]
  end
  redis.call('HSET', LOCKS, iid, token .. '|' .. S['until'] .. '|' .. table.concat(parked, ','))
  local row, hlen = redis.call('HGET', INST, iid), 0
  if row then
    local r = cjson.decode(row)
    local known = redis.call('HGET', HLEN, iid)
    if known then
      local inc, ex, len = string.match(known, '^(.*)|(%d+)|(%d+)$')
      if inc == tostring(r['inc']) and tonumber(ex) == r['e'] then hlen = tonumber(len) end
    end
  end
  items[j] = {iid, token, msgs, row, deq, hlen}
  wrote = true
end
local next_due = false  -- the first message to come due that is not of a waiting instance
local later = redis.call('ZRANGEBYSCORE', QVIS, '(' .. S.now, '(' .. S.woff, 'WITHSCORES', 'LIMIT', 0, 200)
for j = 1, #later, 2 do
  local raw = redis.call('HGET', Q, later[j])
  if raw and redis.call('HEXISTS', WAITING, owner_of(raw)) == 0 then
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
  local lock = redis.call('HGET', LOCKS, T.i)
  if not holds(lock, T.t) then
    results[n] = false  -- the lease lapsed and someone else holds (or held) the instance: fenced
  else
    wrote = true
    local qi = KEYS[T.qi]
    local consumed = {}
    for _, qid in ipairs(T.c) do
      redis.call('HDEL', Q, qid)
      zdel(QVIS, qid)
      redis.call('ZREM', QPARK, qid)
      redis.call('SREM', qi, qid)
      consumed[tostring(qid)] = true
    end
    for qid in string.gmatch(string.match(lock, '^[^|]*|[^|]*|(.*)$') or '', '[^,]+') do
      if not consumed[qid] then unpark(qid) end  -- fetched, not consumed: back in the queue
    end
    if #T.ev > 0 then
      local len = 0
      for s = 1, #T.ev, 500 do
        len = redis.call('RPUSH', KEYS[T.h], unpack(T.ev, s, math.min(s + 499, #T.ev)))
      end
      redis.call('SADD', KEYS[T.x], T.ex)
      local row = redis.call('HGET', INST, T.i)
      if row then redis.call('HSET', HLEN, T.i, tostring(cjson.decode(row)['inc']) .. '|' .. T.ex .. '|' .. len) end
    end
    for _, a in ipairs(T.a) do
      local wid = redis.call('INCR', SEQ)
      redis.call('HSET', WORK, wid, a[1])
      redis.call('HSET', WCALL, a[2], wid)
      redis.call('ZADD', WQ, -a[3], wq_member(wid))
      wakes['w'] = true
    end
    for _, f in ipairs(T.cx) do
      local wid = redis.call('HGET', WCALL, f)
      local raw = wid and redis.call('HGET', WORK, wid)
      if raw then
        local item = cjson.decode(raw)
        unindex(wid)  -- never leased again
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
        zdel(QVIS, qid)
        redis.call('ZREM', QPARK, qid)
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

#: S = {now, until, fb (foreign-before ms), names (absent: any), max, scan, tok}. Reply [[token, work, dequeues]...].
#: Reads WQ in order (priority, then id) and skips what is leased, not yet visible, cancelled or foreign,
#: at most ``scan`` entries.
FETCH_WORK = _PRELUDE + """
redis.set_repl(redis.REPL_NONE)  -- a lease: kept in memory, never waits for an fsync (see above)
local now, fb = tonumber(S.now), tonumber(S.fb)
local names = nil
if S.names then
  names = {}
  for _, x in ipairs(S.names) do names[x] = true end
end
for _, member in ipairs(redis.call('ZRANGEBYSCORE', WLEASE, '-inf', S.now, 'LIMIT', 0, S.scan)) do
  -- a lease that lapsed: the call is to lease again
  wrote = true
  redis.call('ZREM', WLEASE, member)
  local raw = redis.call('HGET', WORK, tonumber(member))
  local item = raw and cjson.decode(raw)
  if item and not item['c'] then
    local prio = item['p']
    if prio == nil then prio = cjson.decode(item['w'])['priority'] end
    if prio == nil or prio == cjson.null then prio = 0 end
    redis.call('ZADD', WQ, -prio, member)
  end
end
local leases, n = {}, 0
for _, member in ipairs(redis.call('ZRANGE', WQ, 0, S.scan - 1)) do
  if n >= S.max then break end
  local wid = tonumber(member)
  local raw = redis.call('HGET', WORK, wid)
  if not raw then
    redis.call('ZREM', WQ, member)  -- done or purged by a transaction that left its entry
  else
    local item = cjson.decode(raw)
    local v = tonumber(item['v'])
    local leased = item['t'] ~= cjson.null and tonumber(item['u']) > now
    if item['c'] then redis.call('ZREM', WQ, member) end  -- cancelled: never leased again
    if v <= now and not item['c'] and not leased then
      local name = item['n']
      if name == nil then name = cjson.decode(item['w'])['name'] end
      if names == nil or names[name] or v <= fb then
        n = n + 1
        local token = S.tok .. n
        if item['t'] ~= cjson.null then redis.call('HDEL', WTOK, item['t']) end
        item['t'] = token
        item['u'] = tonumber(S['until'])
        item['d'] = item['d'] + 1
        redis.call('HSET', WORK, wid, cjson.encode(item))
        redis.call('HSET', WTOK, token, wid)
        redis.call('ZREM', WQ, member)
        redis.call('ZADD', WLEASE, S['until'], member)
        leases[n] = {token, item['w'], item['d']}
        wrote = true
      end
    end
  end
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
      unindex(wid)
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
redis.set_repl(redis.REPL_NONE)  -- a lease: kept in memory, never waits for an fsync (see above)
local res = {}
for j, p in ipairs(S.locks) do
  local lock = redis.call('HGET', LOCKS, p[1])
  if holds(lock, p[2]) then
    local parked = string.match(lock, '^[^|]*|[^|]*|(.*)$') or ''
    for qid in string.gmatch(parked, '[^,]+') do redis.call('ZADD', QPARK, 'XX', S['until'], qid) end
    redis.call('HSET', LOCKS, p[1], p[2] .. '|' .. S['until'] .. '|' .. parked)
    wrote = true
    res[j] = true
  else
    res[j] = false
  end
end
return finish(res)
"""


def immediate_score(qid: int) -> int:
    """The ``qvis`` score of message ``qid`` visible at once: due at any time, in arrival order."""
    return qid - 2**53


def wq_member(wid: int) -> str:
    """A work item's member in ``wq`` (zero-padded: equal priorities order by id)."""
    return f"{wid:020d}"
