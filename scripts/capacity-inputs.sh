#!/usr/bin/env bash
# Measures the inputs of docs/scaling.md that scripts/bench.sh does not:
#   M2  kernel memory per idle connection (slab growth with N idle streams)
#   M6  durable publishes per second one Redis takes (the ssegate function)
#   M7  Redis memory per retained event
# Uses target/release/ssegate (cargo build --release) and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-10000}
SSEGATE=target/release/ssegate
[ -x "$SSEGATE" ] || cargo build --release --quiet
ulimit -n "$(ulimit -Hn)"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
RP=$(port); HP=$(port); DIR=$(mktemp -d)
redis-server --port "$RP" --bind 127.0.0.1 --save "" --appendonly no --dir "$DIR" --daemonize yes --logfile "$DIR/redis.log"
sleep 0.3
"$SSEGATE" --listen "127.0.0.1:$HP" --redis-url "redis://127.0.0.1:$RP" --allow-anonymous --ip-rate 0 --history-size 1000 >"$DIR/node.log" 2>&1 &
NODE=$!
trap 'kill $NODE 2>/dev/null; redis-cli -p $RP shutdown nosave >/dev/null 2>&1; rm -rf "$DIR"' EXIT
sleep 0.5

echo "== M2: kernel memory per idle connection ($N streams; both ends are on this machine)"
python3 - "$HP" "$N" <<'PY'
import asyncio, resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, resource.getrlimit(resource.RLIMIT_NOFILE)[1:] * 2)
port, n = int(sys.argv[1]), int(sys.argv[2])
def slab():
    return next(int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("Slab:"))
async def one(i):
    r, w = await asyncio.open_connection("127.0.0.1", port, local_addr=(f"127.0.0.{2 + i % 8}", 0))
    w.write(f"GET /v1/stream/c{i % 1000} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await w.drain(); await r.read(200); return w
async def main():
    before = slab(); conns = []
    for k in range(0, n, 500):
        conns += await asyncio.gather(*[one(i) for i in range(k, min(n, k + 500))])
    await asyncio.sleep(3)
    grown = slab() - before
    print(f"slab grew {grown} KiB for {2 * n} sockets: {grown / (2 * n):.2f} KiB per socket")
asyncio.run(main())
PY

echo "== M6: durable publishes per second (redis-benchmark, pipelined; 3 runs)"
for i in 1 2 3; do
  redis-benchmark -p "$RP" -n 200000 -c 20 -P 16 -q -r 1500 \
    FCALL ssegate_publish 1 'sse:{bench__rand_int__}:log' 'order-7-status-shipped-user-u12345-amount-1999-currency-eur-at-1795361234' \
    2>/dev/null | tr '\r' '\n' | grep 'requests per second' | tail -1
done

echo "== M7: Redis memory per retained event (20,000 events of 72 bytes over 200 channels)"
redis-cli -p "$RP" FLUSHALL >/dev/null
redis-cli -p "$RP" FUNCTION LIST >/dev/null
before=$(redis-cli -p "$RP" INFO memory | awk -F: '/^used_memory:/ {print $2}' | tr -d '\r')
for c in $(seq 1 200); do for i in $(seq 1 100); do
  echo "FCALL ssegate_publish 1 sse:{m$c}:log order-$i-status-shipped-user-u12345-amount-1999-currency-eur-at-1795361234"
done; done | redis-cli -p "$RP" >/dev/null
after=$(redis-cli -p "$RP" INFO memory | awk -F: '/^used_memory:/ {print $2}' | tr -d '\r')
echo "$(( (after - before) / 20000 )) bytes per event"
