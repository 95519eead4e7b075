#!lua name=benchexp
-- A bench-only Redis Function, loaded by scripts/bench.sh for its lua-<rate>
-- scenarios: bench_publish_only(1, '<prefix>{C}:log', payload) PUBLISHes the
-- payload on '<prefix>{C}' as an ephemeral event and appends nothing. Set
-- beside PUBLISH and ssegate_publish, it splits what a durable publish
-- costs into the Function call and the append (XADD, its trim and expiry).
local function publish_only(keys, args)
  return redis.call('PUBLISH', string.sub(keys[1], 1, -5), args[1])
end
redis.register_function('bench_publish_only', publish_only)
