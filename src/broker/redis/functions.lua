#!lua name=ssegate
-- ssegate's Redis Functions. The gateway loads this library at start with
-- FUNCTION LOAD REPLACE, so every node runs the same code. __MAXLEN__,
-- __TTL_MS__ and __PUBLISH__ are filled in from the node's configuration.
--
-- ssegate_publish(1, '<prefix>{C}:log', payload) -> id
--   Appends the payload to the channel's capped stream, refreshes its idle
--   expiry and publishes "\0<id>\0<payload>" on '<prefix>{C}', atomically.
-- ssegate_publish(1, '<prefix>{C}:log', payload, idempotency_key) -> {id, replayed}
--   The same, at most once per key within the channel's history window:
--   a key seen before answers {first id, 1} and appends nothing. Keys are
--   kept in '<prefix>{C}:idem' (key -> id) and '<prefix>{C}:idem:t' (key by
--   time), in the channel's slot, pruned as the history is trimmed.
-- ssegate_history(1, key, after, upto, count, max_bytes) -> {trimmed, tip, entries}
--   At most count entries after `after` up to `upto`, stopping once their
--   payloads reach max_bytes (at least one entry).
-- ssegate_tip(1, key) -> newest id ever added ('0-0' without history)
-- ssegate_lease(2, lease_key, pos_key, holder, ttl_ms, position) -> {held, position}
--   SET lease_key holder NX PX ttl_ms, or renews it when holder has it
--   (ttl_ms 0 releases it); while held, a non-empty position is stored in
--   pos_key. Answers whether holder holds it and the stored position.

local MAXLEN = __MAXLEN__
local TTL_MS = __TTL_MS__
local PUBLISH = '__PUBLISH__'

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

-- Forgets idempotency keys older than the channel's retained history.
local function prune_keys(key, idem, times)
  local first = redis.call('XRANGE', key, '-', '+', 'COUNT', 1)[1]
  if not first then return end
  local first_ms = split(first[1])
  local old = redis.call('ZRANGEBYSCORE', times, '-inf', '(' .. first_ms, 'LIMIT', 0, 1000)
  if #old > 0 then
    redis.call('HDEL', idem, unpack(old))
    redis.call('ZREM', times, unpack(old))
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
  if TTL_MS > 0 then redis.call('PEXPIRE', key, TTL_MS) end
  redis.call(PUBLISH, channel, '\0' .. id .. '\0' .. payload)
  if ikey == nil then return id end
  redis.call('HSET', idem, ikey, id)
  redis.call('ZADD', times, split(id), ikey)
  if TTL_MS > 0 then
    redis.call('PEXPIRE', idem, TTL_MS)
    redis.call('PEXPIRE', times, TTL_MS)
  end
  prune_keys(key, idem, times)
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
  if trimmed then return {1, f['last-generated-id'], {}} end
  return {0, f['last-generated-id'], range(key, after, upto, count, max_bytes)}
end

local function tip(keys)
  if redis.call('EXISTS', keys[1]) == 0 then return '0-0' end
  return info(keys[1])['last-generated-id']
end

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

redis.register_function('ssegate_publish', publish)
redis.register_function('ssegate_lease', lease)
redis.register_function{function_name = 'ssegate_history', callback = history, flags = {'no-writes'}}
redis.register_function{function_name = 'ssegate_tip', callback = tip, flags = {'no-writes'}}
