#!/usr/bin/env bash
# History and presence benchmarked on one node over Redis (docs/benchmarks.md,
# "History and presence"):
#   history:  GET /v1/history/<c>?limit=100 pages per second on a channel of
#             --events events, from --concurrency kept-alive connections;
#   presence: --streams SSE streams with ?presence=1, each with a token of
#             its own `sub` (so every stream is a client), over --channels
#             channels; Redis commands/s, Redis CPU and the node's CPU in a
#             window at rest and in a window with --churn streams a second
#             leaving and coming back.
# Redis and the node are started here on free ports and stopped at the end;
# results are JSON lines in --out.
#
#   scripts/bench-state.sh                   # 15,000 streams, 30 s windows
#   scripts/bench-state.sh --quick --debug   # the harness check CI runs
#   SSEGATE_ARGS="--heartbeat 1h" scripts/bench-state.sh   # extra node flags
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

STREAMS=15000
CHANNELS=1500
CHURN=100
WINDOW=30s
DURATION=10s
EVENTS=10000
BUILD=1
PROFILE=release
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --streams) STREAMS=$2; shift 2 ;;
    --channels) CHANNELS=$2; shift 2 ;;
    --churn) CHURN=$2; shift 2 ;;
    --window) WINDOW=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --quick) STREAMS=200; CHANNELS=20; CHURN=10; WINDOW=3s; DURATION=2s; EVENTS=500; shift ;;
    --no-build) BUILD=0; shift ;;
    --debug) PROFILE=debug; shift ;;  # the test build: proves the harness, figures meaningless
    --out) OUT=$2; shift 2 ;;
    -h|--help) sed -n 2,15p "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

source "$ROOT/scripts/bench-setup.sh"
SECRET=bench-state-secret

NODE_PORT=$(free_port)
"$BIN/ssegate" --listen "127.0.0.1:$NODE_PORT" --redis-url "$REDIS" \
  --jwt-secret "$SECRET" --max-connections 19000 --ip-rate 0 --history-size 100000 \
  ${SSEGATE_ARGS:-} > "$WORK/node.log" 2>&1 &
NODE_PID=$!; PIDS+=($NODE_PID)
wait_port "$NODE_PORT"
NODE=http://127.0.0.1:$NODE_PORT

# An HS256 token that may read and publish every channel, for the history mode.
TOKEN=$(python3 - "$SECRET" <<'EOF'
import base64, hashlib, hmac, json, sys, time
b64 = lambda x: base64.urlsafe_b64encode(x).rstrip(b"=").decode()
head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
body = b64(json.dumps({"exp": int(time.time()) + 86400, "channels": ["*"], "publish": ["*"]}).encode())
sig = b64(hmac.new(sys.argv[1].encode(), f"{head}.{body}".encode(), hashlib.sha256).digest())
print(f"{head}.{body}.{sig}")
EOF
)

echo "== history (limit=100)" >&2
"$BIN/ssegate-bench" history --url "$NODE" --token "$TOKEN" --events "$EVENTS" --limit 100 --concurrency 4 \
  --duration "$DURATION" --redis-url "$REDIS" --server-pid "$NODE_PID" --json - | tee -a "$OUT"
echo "== presence ($STREAMS streams, $CHANNELS channels, churn $CHURN/s)" >&2
"$BIN/ssegate-bench" presence --url "$NODE" --streams "$STREAMS" --channels "$CHANNELS" \
  --jwt-secret "$SECRET" --churn "$CHURN" --window "$WINDOW" \
  --redis-url "$REDIS" --server-pid "$NODE_PID" --json - | tee -a "$OUT"
echo "results: $OUT" >&2
