#!lua name=ssegate
-- ssegate's Redis Functions. The gateway loads this library at start with
-- FUNCTION LOAD REPLACE, so every node runs the same code. __MAXLEN__,
-- __TTL_MS__ and __PUBLISH__ are filled in from the node's configuration.
--
-- ssegate_publish(1, '<prefix>{C}:log', payload) -> id
--   Appends the payload to the channel's capped stream, refreshes its idle
--   expiry and publishes "\0<id>\0<payload>" on '<prefix>{C}', atomically.
-- ssegate_history(1, key, after, upto, count) -> {trimmed, tip, entries}
-- ssegate_tip(1, key) -> newest id ever added ('0-0' without history)

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

local function publish(keys, args)
  local key = keys[1]
  if #keys ~= 1 or string.sub(key, -5) ~= '}:log' then
    return redis.error_reply('ERR ssegate_publish takes one key, <prefix>{channel}:log')
  end
  local payload = args[1]
  if payload == nil then
    return redis.error_reply('ERR ssegate_publish needs the payload as its argument')
  end
  local id = redis.call('XADD', key, 'MAXLEN', '~', MAXLEN, '*', 'p', payload)
  if TTL_MS > 0 then redis.call('PEXPIRE', key, TTL_MS) end
  redis.call(PUBLISH, string.sub(key, 1, -5), '\0' .. id .. '\0' .. payload)
  return id
end

-- Mirrors gap_after() in src/broker/mod.rs.
local function history(keys, args)
  local key, after, upto, count = keys[1], args[1], args[2], tonumber(args[3])
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
  return {0, f['last-generated-id'], redis.call('XRANGE', key, '(' .. after, upto, 'COUNT', count)}
end

local function tip(keys)
  if redis.call('EXISTS', keys[1]) == 0 then return '0-0' end
  return info(keys[1])['last-generated-id']
end

redis.register_function('ssegate_publish', publish)
redis.register_function{function_name = 'ssegate_history', callback = history, flags = {'no-writes'}}
redis.register_function{function_name = 'ssegate_tip', callback = tip, flags = {'no-writes'}}
