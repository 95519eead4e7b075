#!/usr/bin/env bash
# Checks ssegate-bench's WebSocket modes against the peers in this folder:
# starts a redis-server and each peer on free loopback ports, runs a short
# broadcast through the bench (the publisher going through Redis the way
# each peer expects), and requires every socket to open, every event to
# arrive once and in order, and no socket to be closed by the server. The
# Socket.IO peer pings every 200 ms here, so a client that did not answer
# Engine.IO pings would be dropped within the run.
#
#   bench/peers/test.sh [path/to/ssegate-bench]   (default: target/debug/ssegate-bench)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
BENCH=${1:-${CARGO_TARGET_DIR:-$root/target}/debug/ssegate-bench}
[ -x "$BENCH" ] || { echo "peers/test.sh: no $BENCH (cargo build -p ssegate-bench)" >&2; exit 1; }
command -v redis-server >/dev/null || { echo "peers/test.sh: redis-server is missing" >&2; exit 1; }

dir=$(mktemp -d /tmp/ssegate-peers.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$dir"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# wait_ready LOG: until the peer printed its ready line (or exited).
wait_ready() {
  local log=$1 pid=$2
  while ! grep -q '^ready ' "$log"; do
    kill -0 "$pid" 2>/dev/null || { echo "peer exited:" >&2; cat "$log" >&2; return 1; }
    sleep 0.05
  done
}

rport=$(free_port)
redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" \
  --logfile "$dir/redis.log" &
pids+=($!)
until redis-cli -p "$rport" ping >/dev/null 2>&1; do sleep 0.05; done
redis_url=redis://127.0.0.1:$rport

failed=0
for peer in socketio ws; do
  port=$(free_port)
  log=$dir/$peer.log
  PING_INTERVAL_MS=200 PING_TIMEOUT_MS=200 "$here/start.sh" "$peer" "$port" "$redis_url" >"$log" 2>&1 &
  pid=$!
  pids+=("$pid")
  wait_ready "$log" "$pid"
  echo "== $peer: 200 sockets over 4 channels, 200 publishes/s"
  "$BENCH" --target "$peer" --transport ws --url "http://127.0.0.1:$port" --redis-url "$redis_url" \
    --streams 200 --channels 4 --rate 200 --warmup 300ms --duration 1500ms --drain 500ms --settle 200ms \
    --source-addrs 2 --server-pid "$pid" --quiet --json "$dir/$peer.json" >/dev/null
  if ! python3 - "$dir/$peer.json" <<'PY'; then failed=$((failed + 1)); fi
import json, sys
r = json.load(open(sys.argv[1]))
s, e = r["streams"], r["events"]
checks = {
    "every socket opened": s["opened"] == s["requested"] == 200,
    "none closed by the server": s["closed_by_server"] == 0,
    "events expected": e["expected"] > 0,
    "none lost": e["lost"] == 0 and e["delivered"] == e["expected"],
    "none duplicated": e["duplicated"] == 0,
    "none reordered": e["reordered"] == 0,
    "latency measured": r["latency_ms"]["p50"] > 0,
    "server memory read": (r["server"]["rss_per_stream_kib"] or 0) > 0,
}
for name, ok in checks.items():
    print(f"  {'ok  ' if ok else 'FAIL'} {name}")
print(f"  delivered {e['delivered']}/{e['expected']}, p99 {r['latency_ms']['p99']:.2f} ms, "
      f"{r['server']['rss_per_stream_kib']:.1f} KiB/socket, closures {s['closures']}, failures {s['failures']}")
sys.exit(0 if all(checks.values()) else 1)
PY
  kill "$pid" 2>/dev/null || true
done
echo "$((2 - failed)) passed, $failed failed"
[ "$failed" -eq 0 ]
