#!lua name=ssegate
-- ssegate's Redis Functions. The gateway loads this library at start with
-- FUNCTION LOAD REPLACE, so every node runs the same code. __MAXLEN__,
-- __TTL_MS__ and __PUBLISH__ are filled in from the node's configuration.
--
-- ssegate_publish(1, '<prefix>{C}:log', payload) -> id
--   Appends the payload to the channel's capped stream, refreshes its idle
--   expiry (and the snapshot's; see SLACK_MS) and publishes
--   "\0<id>\0<payload>" on '<prefix>{C}', atomically.
-- ssegate_publish(1, '<prefix>{C}:log', payload, idempotency_key) -> {id, replayed}
--   The same, at most once per key within the channel's history window:
--   a key seen before answers {first id, 1} and appends nothing. Keys are
--   kept in '<prefix>{C}:idem' (key -> id) and '<prefix>{C}:idem:t' (key by
--   time), in the channel's slot, expiring with the history and pruned
--   once they outnumber its size by a quarter (see prune_keys).
-- ssegate_history(1, key, after, upto, count, max_bytes[, lenient]) -> {trimmed, tip, entries}
--   At most count entries after `after` up to `upto`, stopping once their
--   payloads reach max_bytes (at least one entry). When trimmed, no
--   entries, unless lenient is '1' (then those still retained).
-- ssegate_state_put(1, key, body) -> position
--   Stores body as the channel's snapshot at its newest id, atomically
--   (no event can slip between the two), in '<prefix>{C}:state', with the
--   history's idle expiry (each publish refreshes it).
-- ssegate_state_get(1, key) -> {position, body}, or nil without a snapshot
-- ssegate_presence_put(1, key, node, clients, ttl_ms, joined, left) -> 1
--   Stores a node's presence report of the channel ('[]': nobody) in the
--   hash '<prefix>{C}:presence' (field: the node; value: expiry ms '|'
--   clients JSON), drops reports past their expiry (a node that died), and
--   publishes "\0p\0{j:[...],l:[...]}" with who joined and who left
--   (including the clients of the dropped reports) on '<prefix>{C}'.
-- ssegate_presence_get(1, key) -> {now_ms, field, value, ...}
-- ssegate_tip(1, key) -> newest id ever added ('0-0' without history)
--
-- The Mercure hub's updates share one log, '<prefix>{$mercure}:log', and
-- one pub/sub channel, '<prefix>{$mercure}' (every node matches topics
-- itself):
-- ssegate_mercure_publish(1, '<prefix>{$mercure}:log', payload, mercure_id, maxlen) -> id
--   Appends and publishes like ssegate_publish (log capped at maxlen) and
--   remembers mercure_id -> id in '<prefix>{$mercure}:ids' (pruned with
--   the log, by '<prefix>{$mercure}:ids:t').
-- ssegate_mercure_find(1, key[, mercure_id]) -> the id of that update while
--   the log holds it (nil otherwise); without mercure_id, the position just
--   before the oldest retained update.
-- ssegate_mercure_registry(1, key, op, ...) -> the cluster's active Mercure
--   subscriptions in '<prefix>{$mercure}:subs' (field -> node\njson), each
--   node's lease in '<prefix>{$mercure}:nodes' (node -> expiry, Redis time):
--   'add', node, field, json, ...; 'del', field, ...; 'renew', node, ttl_ms;
--   'list' -> the JSON of entries whose node's lease is live (the others
--   are removed).
-- ssegate_lease(2, lease_key, pos_key, holder, ttl_ms, position) -> {held, position}
--   SET lease_key holder NX PX ttl_ms, or renews it when holder has it
--   (ttl_ms 0 releases it); while held, a non-empty position is stored in
--   pos_key. Answers whether holder holds it and the stored position.

local MAXLEN = __MAXLEN__
local TTL_MS = __TTL_MS__
local PUBLISH = '__PUBLISH__'
-- A channel's idle expiry is set to TTL_MS + SLACK_MS and refreshed only
-- once it has run down below TTL_MS: its history then expires between
-- TTL_MS and TTL_MS + SLACK_MS after the last durable publish, and a busy
-- channel pays one PTTL per publish instead of a PEXPIRE for each key.
local SLACK_MS = (TTL_MS - TTL_MS % 16) / 16
if SLACK_MS > 60000 then SLACK_MS = 60000 end

local function split(id)
  local d = string.find(id, '-', 1, true)
  if not d then return tonumber(id), 0 end
  return tonumber(string.sub(id, 1, d - 1)), tonumber(string.sub(id, d + 1))
end

local function gt(a, b)
  local am, as = split(a)
  local bm, bs = split(b)
  if am ~= bm then return am > bm end
  return as > bs
end

local function prev(id)
  local ms, seq = split(id)
  if seq > 0 then return ms .. '-' .. (seq - 1) end
  return (ms - 1) .. '-18446744073709551615'
end

local function info(key)
  local raw = redis.call('XINFO', 'STREAM', key)
  local f = {}
  for i = 1, #raw, 2 do f[raw[i]] = raw[i + 1] end
  return f
end

-- Forgets idempotency keys older than the channel's retained history once
-- they outnumber `maxlen` (the history's size) by a quarter: every key of
-- an event the history holds is kept, a channel holds at most about
-- maxlen * 5/4 keys, and a busy channel looks for old keys once per
-- maxlen/4 keyed publishes rather than at each.
local function prune_keys(key, idem, times, maxlen)
  if redis.call('ZCARD', times) <= maxlen + (maxlen - maxlen % 4) / 4 then return end
  local first = redis.call('XRANGE', key, '-', '+', 'COUNT', 1)[1]
  if not first then return end
  local first_ms = split(first[1])
  local old = redis.call('ZRANGEBYSCORE', times, '-inf', '(' .. first_ms, 'LIMIT', 0, 1000)
  if #old > 0 then
    redis.call('HDEL', idem, unpack(old))
    redis.call('ZREM', times, unpack(old))
  end
end

-- Keeps a channel's keys at least TTL_MS past now: once `gate` (one of
-- them) has run down below TTL_MS, or has no expiry yet, the log, the
-- snapshot and the idempotency keys are all set to TTL_MS + SLACK_MS, so
-- that they expire together.
local EXPIRING = {':log', ':state', ':idem', ':idem:t'}
local function refresh_expiry(gate, channel)
  if TTL_MS > 0 and redis.call('PTTL', gate) < TTL_MS then
    for _, suffix in ipairs(EXPIRING) do
      redis.call('PEXPIRE', channel .. suffix, TTL_MS + SLACK_MS)
    end
  end
end

local function publish(keys, args)
  local key = keys[1]
  if #keys ~= 1 or string.sub(key, -5) ~= '}:log' then
    return redis.error_reply('ERR ssegate_publish takes one key, <prefix>{channel}:log')
  end
  local payload, ikey = args[1], args[2]
  if payload == nil then
    return redis.error_reply('ERR ssegate_publish needs the payload as its argument')
  end
  local channel = string.sub(key, 1, -5)
  local idem, times = channel .. ':idem', channel .. ':idem:t'
  if ikey ~= nil then
    local seen = redis.call('HGET', idem, ikey)
    if seen then return {seen, 1} end
  end
  local id = redis.call('XADD', key, 'MAXLEN', '~', MAXLEN, '*', 'p', payload)
  redis.call(PUBLISH, channel, '\0' .. id .. '\0' .. payload)
  if ikey == nil then
    refresh_expiry(key, channel)
    return id
  end
  redis.call('HSET', idem, ikey, id)
  redis.call('ZADD', times, split(id), ikey)
  -- Gated on the keys' index: the channel's first key gives it no expiry yet.
  refresh_expiry(times, channel)
  prune_keys(key, idem, times, MAXLEN)
  return {id, 0}
end

-- Mirrors gap_after() in src/broker/mod.rs.
-- Entries after `after` up to `upto`, read in small batches so that a page
-- stops at max_bytes without reading (and holding) more.
local function range(key, after, upto, count, max_bytes)
  local out, bytes, from = {}, 0, '(' .. after
  while #out < count do
    local batch = redis.call('XRANGE', key, from, upto, 'COUNT', math.min(50, count - #out))
    if #batch == 0 then break end
    for _, e in ipairs(batch) do
      out[#out + 1] = e
      bytes = bytes + #e[2][2]
      if bytes >= max_bytes then return out end
      from = '(' .. e[1]
    end
  end
  return out
end

local function history(keys, args)
  local key, after, upto, count = keys[1], args[1], args[2], tonumber(args[3])
  local max_bytes = tonumber(args[4] or '0')
  if max_bytes == nil or max_bytes <= 0 then max_bytes = math.huge end
  if redis.call('EXISTS', key) == 0 then
    return {(after ~= '0-0') and 1 or 0, '0-0', {}}
  end
  local f = info(key)
  local first = f['first-entry']
  -- Redis 7.0 records XDEL in max-deleted-entry-id but not MAXLEN
  -- trimming, which removes from the front: when entries were removed,
  -- anything before the first retained entry may be gone.
  local maxdel = f['max-deleted-entry-id']
  if f['entries-added'] > f['length'] and type(first) == 'table' and gt(prev(first[1]), maxdel) then
    maxdel = prev(first[1])
  end
  local trimmed = gt(maxdel, after)
  if not trimmed and after ~= '0-0' and TTL_MS > 0 and type(first) == 'table' and gt(first[1], after) then
    local fm = split(first[1])
    local am = split(after)
    trimmed = (fm - am) >= TTL_MS
  end
  if trimmed and args[5] ~= '1' then return {1, f['last-generated-id'], {}} end
  return {trimmed and 1 or 0, f['last-generated-id'], range(key, after, upto, count, max_bytes)}
end

local function checked_log_key(keys, name)
  if #keys ~= 1 or string.sub(keys[1], -5) ~= '}:log' then
    return nil, redis.error_reply('ERR ' .. name .. ' takes one key, <prefix>{channel}:log')
  end
  return keys[1]
end

local function state_put(keys, args)
  local key, err = checked_log_key(keys, 'ssegate_state_put')
  if not key then return err end
  if args[1] == nil then
    return redis.error_reply('ERR ssegate_state_put needs the snapshot as its argument')
  end
  local position = '0-0'
  if redis.call('EXISTS', key) == 1 then position = info(key)['last-generated-id'] end
  local state = string.sub(key, 1, -5) .. ':state'
  redis.call('HSET', state, 'p', position, 'b', args[1])
  -- With the slack, as the log's: a publish that finds the log's expiry
  -- still fresh does not refresh the snapshot's either.
  if TTL_MS > 0 then redis.call('PEXPIRE', state, TTL_MS + SLACK_MS) end
  return position
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function presence_put(keys, args)
  local key, err = checked_log_key(keys, 'ssegate_presence_put')
  if not key then return err end
  local channel = string.sub(key, 1, -5)
  local hash = channel .. ':presence'
  local node, clients, ttl = args[1], args[2], tonumber(args[3])
  local joined, left = cjson.decode(args[4]), cjson.decode(args[5])
  local now = now_ms()
  if clients == '[]' then
    redis.call('HDEL', hash, node)
  else
    redis.call('HSET', hash, node, (now + ttl) .. '|' .. clients)
  end
  local all = redis.call('HGETALL', hash)
  for i = 1, #all, 2 do
    local value = all[i + 1]
    local bar = string.find(value, '|', 1, true)
    local expires = bar and tonumber(string.sub(value, 1, bar - 1))
    if not expires or expires < now then
      redis.call('HDEL', hash, all[i])
      if bar then
        for _, c in ipairs(cjson.decode(string.sub(value, bar + 1))) do
          table.insert(left, c.client)
        end
      end
    end
  end
  if redis.call('HLEN', hash) > 0 then redis.call('PEXPIRE', hash, ttl * 2) end
  if #joined > 0 or #left > 0 then
    redis.call(PUBLISH, channel, '\0p\0' .. cjson.encode({j = joined, l = left}))
  end
  return 1
end

local function presence_get(keys)
  local key, err = checked_log_key(keys, 'ssegate_presence_get')
  if not key then return err end
  local out = redis.call('HGETALL', string.sub(key, 1, -5) .. ':presence')
  table.insert(out, 1, tostring(now_ms()))
  return out
end

local function state_get(keys)
  local key, err = checked_log_key(keys, 'ssegate_state_get')
  if not key then return err end
  local v = redis.call('HMGET', string.sub(key, 1, -5) .. ':state', 'p', 'b')
  if not v[1] then return false end
  return {v[1], v[2]}
end

local function tip(keys)
  if redis.call('EXISTS', keys[1]) == 0 then return '0-0' end
  return info(keys[1])['last-generated-id']
end

local function mercure_log(keys, fname)
  local key = keys[1]
  if #keys ~= 1 or string.sub(key, -5) ~= '}:log' then
    return nil, redis.error_reply('ERR ' .. fname .. ' takes one key, <prefix>{$mercure}:log')
  end
  return string.sub(key, 1, -5)
end

local function mercure_publish(keys, args)
  local channel, err = mercure_log(keys, 'ssegate_mercure_publish')
  if not channel then return err end
  local payload, mid, maxlen = args[1], args[2], tonumber(args[3] or '')
  if payload == nil or mid == nil or mid == '' or maxlen == nil then
    return redis.error_reply('ERR ssegate_mercure_publish needs payload, mercure id and maxlen')
  end
  local key, ids, times = keys[1], channel .. ':ids', channel .. ':ids:t'
  local id = redis.call('XADD', key, 'MAXLEN', '~', maxlen, '*', 'p', payload)
  redis.call(PUBLISH, channel, '\0' .. id .. '\0' .. payload)
  redis.call('HSET', ids, mid, id)
  redis.call('ZADD', times, split(id), mid)
  if TTL_MS > 0 then
    redis.call('PEXPIRE', key, TTL_MS)
    redis.call('PEXPIRE', ids, TTL_MS)
    redis.call('PEXPIRE', times, TTL_MS)
  end
  prune_keys(key, ids, times, maxlen)
  return id
end

local function mercure_find(keys, args)
  local channel, err = mercure_log(keys, 'ssegate_mercure_find')
  if not channel then return err end
  local key = keys[1]
  if args[1] == nil then
    if redis.call('EXISTS', key) == 0 then return '0-0' end
    local first = redis.call('XRANGE', key, '-', '+', 'COUNT', 1)[1]
    if not first then return info(key)['last-generated-id'] end
    return prev(first[1])
  end
  local id = redis.call('HGET', channel .. ':ids', args[1])
  if not id or #redis.call('XRANGE', key, id, id) == 0 then return false end
  return id
end

local function redis_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function mercure_registry(keys, args)
  local channel, err = mercure_log(keys, 'ssegate_mercure_registry')
  if not channel then return err end
  local subs, nodes, op = channel .. ':subs', channel .. ':nodes', args[1]
  if op == 'add' then
    for i = 3, #args, 2 do redis.call('HSET', subs, args[i], args[2] .. '\n' .. args[i + 1]) end
    return {}
  elseif op == 'del' then
    for i = 2, #args do redis.call('HDEL', subs, args[i]) end
    return {}
  elseif op == 'renew' then
    redis.call('ZADD', nodes, redis_ms() + tonumber(args[3]), args[2])
    return {}
  elseif op == 'list' then
    local now = redis_ms()
    redis.call('ZREMRANGEBYSCORE', nodes, '-inf', now)
    local out, all = {}, redis.call('HGETALL', subs)
    for i = 1, #all, 2 do
      local v = all[i + 1]
      local nl = string.find(v, '\n', 1, true)
      if nl and redis.call('ZSCORE', nodes, string.sub(v, 1, nl - 1)) then
        out[#out + 1] = string.sub(v, nl + 1)
      else
        redis.call('HDEL', subs, all[i])
      end
    end
    return out
  end
  return redis.error_reply('ERR ssegate_mercure_registry: unknown operation')
end

redis.register_function('ssegate_publish', publish)
redis.register_function('ssegate_mercure_publish', mercure_publish)
redis.register_function('ssegate_mercure_registry', mercure_registry)
redis.register_function{function_name = 'ssegate_mercure_find', callback = mercure_find, flags = {'no-writes'}}
local function lease(keys, args)
  local lkey, pkey, holder, ttl, pos = keys[1], keys[2], args[1], tonumber(args[2]), args[3] or ''
  local mine = redis.call('GET', lkey) == holder
  if ttl == 0 then
    if mine then redis.call('DEL', lkey) end
    return {0, redis.call('GET', pkey) or ''}
  end
  local held = mine
  if mine then
    redis.call('PEXPIRE', lkey, ttl)
  else
    held = redis.call('SET', lkey, holder, 'NX', 'PX', ttl) ~= false
  end
  if held and pos ~= '' then redis.call('SET', pkey, pos) end
  return {held and 1 or 0, redis.call('GET', pkey) or ''}
end

redis.register_function('ssegate_lease', lease)
redis.register_function{function_name = 'ssegate_history', callback = history, flags = {'no-writes'}}
redis.register_function{function_name = 'ssegate_tip', callback = tip, flags = {'no-writes'}}
redis.register_function('ssegate_state_put', state_put)
redis.register_function('ssegate_presence_put', presence_put)
redis.register_function{function_name = 'ssegate_presence_get', callback = presence_get, flags = {'no-writes'}}
redis.register_function{function_name = 'ssegate_state_get', callback = state_get, flags = {'no-writes'}}
