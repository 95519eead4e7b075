#!lua name=benchexp
-- Bench-only Redis Functions, loaded by scripts/bench.sh for its lua-<rate>
-- and append-<rate> scenarios. Set beside PUBLISH and ssegate_publish,
-- they split what a durable publish costs on its way to the node:
--
-- bench_publish_only(1, '<prefix>{C}:log', payload) PUBLISHes the payload
--   on '<prefix>{C}' (the key without ':log') and appends nothing: the
--   Function call alone.
-- bench_append_publish(1, '<prefix>{C}:log', payload) appends the payload
--   to the stream as ssegate_publish does (XADD with its MAXLEN ~ trim, a
--   PTTL for the idle expiry) but PUBLISHes the payload alone, without the
--   id: the node handles an ephemeral event while Redis does a durable
--   publish's work.
local function publish_only(keys, args)
  return redis.call('PUBLISH', string.sub(keys[1], 1, -5), args[1])
end

local function append_publish(keys, args)
  local key = keys[1]
  local id = redis.call('XADD', key, 'MAXLEN', '~', 1000, '*', 'p', args[1])
  redis.call('PUBLISH', string.sub(key, 1, -5), args[1])
  redis.call('PTTL', key)
  return id
end

redis.register_function('bench_publish_only', publish_only)
redis.register_function('bench_append_publish', append_publish)
