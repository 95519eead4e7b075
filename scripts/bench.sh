#!/usr/bin/env bash
# Benchmarks ssegate side by side with its peers, in one run on one Redis:
# Nchan (nginx module, ../shared/peers/nchan.conf) and rawfan (the fan-out
# "physical limit", ../shared/peers/rawfan). Every scenario runs against a
# freshly started server, with FLUSHALL before it, driven by the load
# generator in bench/ (ssegate-bench). Writes the raw JSON results (and
# beside each, Redis's per-command statistics: <system>--<scenario>.redis-
# latency.txt), then docs/benchmarks.md and docs/benchmarks.svg.
#
#   scripts/bench.sh                       # full run: 15,000 streams
#   scripts/bench.sh --quick               # harness check: 300 streams, ~1 min
#   scripts/bench.sh --streams 5000 --systems "ssegate rawfan" --scenarios "idle storm"
#
# Scenarios (N = --streams):
#   idle            N streams over N/10 channels, nothing published: memory per stream
#   idle-sessions   the same with a channel per stream (per-session channels)
#   sessions        N/10 channels x 10 streams, N*2/3 publishes/s (10,000/s at 15,000) via PUBLISH
#                   (Nchan: HTTP POST, its only way)
#   sessions-2k     the same layout at a fifth of the rate (2,000/s at 15,000), where
#                   the server's own latency shows rather than the load generator's
#   sessions-durable  the same through ssegate's Redis Function (ssegate only)
#   sessions-durable-2k  sessions-2k through the Redis Function (ssegate only)
#   sessions-durable-post  the same through ssegate's POST /v1/stream/<c> on 32 kept-alive
#                   connections (HTTP/1.1 answers in order: one publish at a time each) (ssegate only)
#   broadcast-20    1 channel x N streams, 20 publishes/s
#   broadcast-100   1 channel x N streams, 100 publishes/s
#   storm           sessions layout; all N streams connect at once while publishing:
#                   time until all are receiving, SUBSCRIBE commands Redis saw
#
# With --websocket (off by default until ssegate serves /v1/ws everywhere), the
# same run then compares WebSocket servers: ssegate over WebSocket, ssegate over
# SSE, Socket.IO 4 with its Redis adapter and a plain `ws` server (bench/peers),
# each at N sockets: idle memory per connection, and a broadcast (1 channel,
# 20 publishes/s) for delivered/s and latency. Their results go to websocket/
# in the results directory and to a section of the report.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

STREAMS=""
QUICK=0
SYSTEMS="ssegate nchan rawfan"
SCENARIOS="idle idle-sessions sessions sessions-2k sessions-durable sessions-durable-post broadcast-20 broadcast-100 storm"
DURATION=""
LOW_RATE_DURATION=""
OUT=""
RESULTS=""
SOURCE_ADDRS=8
BUILD=1
PROFILE=release
PEERS=${PEERS:-$ROOT/../shared/peers}
SSEGATE_ARGS=${SSEGATE_ARGS:-""}
WEBSOCKET=0
SSE_PART=1
WS_SYSTEMS="ssegate-ws ssegate socketio ws"
WS_SCENARIOS="idle broadcast-20"
COMMAND="${PUBLISH_PIPELINE:+PUBLISH_PIPELINE=$PUBLISH_PIPELINE }${PIN_SERVER:+PIN_SERVER=$PIN_SERVER }${PIN_OTHERS:+PIN_OTHERS=$PIN_OTHERS }${NCHAN_PING:+NCHAN_PING=$NCHAN_PING }scripts/bench.sh $*"

usage() {
  cat <<EOF
usage: scripts/bench.sh [options]
  --streams N         streams per scenario (default 15000; 300 with --quick)
  --quick             tiny, short run that only proves the harness works;
                      skips Nchan when nginx is missing instead of installing it
  --systems "A B"     among: ssegate nchan rawfan (default: all three)
  --scenarios "A B"   among: $SCENARIOS; and the sessions layout at any rate:
                      pub-<rate> (PUBLISH), fcall-<rate> (ssegate's Redis Function),
                      post-<rate> (HTTP POST: ssegate durable, Nchan its own), e.g. post-5k,
                      relay-<rate> (ssegate only: the POSTs go to ssegate-post-relay, the
                      leanest HTTP front of ssegate's Function, a yardstick for post-<rate>);
                      both on PUBLISH_CONNS kept-alive connections (environment; default 32);
                      lua-<rate> (ephemeral through a Function that only PUBLISHes) and
                      append-<rate> (through one that appends as ssegate_publish does but
                      PUBLISHes the payload without its id): bench/experiments/functions.lua
  --duration D        measured publishing window (default 20s; 1s with --quick)
  --low-rate-duration D  the window of the rows at a fifth of the rate (sessions-2k,
                      sessions-durable-2k), where a short window's p99 is a handful
                      of machine-wide stalls (default: --duration)
  --source-addrs N    client source addresses 127.0.0.1..127.0.0.N (default 8)
  --idle-settle D     how long the idle scenario holds its streams before reading
                      memory; its CPU is taken over this time (default 15s)
  --results DIR       where the JSON results go (default: target/bench-results/<date>)
  --out FILE          the report (default docs/benchmarks.md; with --quick: in the results dir)
  --no-build          use the binaries already built
  --debug             use debug builds (CI's harness check; figures meaningless)
  --websocket         also compare WebSocket servers (needs Node.js; runs npm ci in bench/peers):
                      ssegate-ws, ssegate (SSE), socketio, ws; scenarios: $WS_SCENARIOS
  --websocket-only    only that comparison
  --ws-systems "A B"  among: $WS_SYSTEMS (default: all four)
environment: PEERS (default ../shared/peers), SSEGATE_ARGS (extra ssegate flags,
default: none, the server's defaults), NCHAN_PING (Nchan's
nchan_eventsource_ping_interval in seconds, default: none, Nchan's default of no
pings; 15 matches ssegate's heartbeat), PIN_SERVER and PIN_OTHERS (CPU lists
for taskset: the server under test on PIN_SERVER, Redis and the load generator
on PIN_OTHERS, e.g. PIN_SERVER=1 PIN_OTHERS=0, to show a path's cost without
the server sharing its cores; default: no pinning), PUBLISH_PIPELINE (batches
a Redis publisher connection has in flight; default 1: the next batch waits
for the previous one's replies), CARGO_TARGET_DIR
EOF
}

while [ $# -gt 0 ]; do
  case "$1" in
    --streams) STREAMS=$2; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --systems) SYSTEMS=$2; shift 2 ;;
    --scenarios) SCENARIOS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --low-rate-duration) LOW_RATE_DURATION=$2; shift 2 ;;
    --source-addrs) SOURCE_ADDRS=$2; shift 2 ;;
    --idle-settle) IDLE_SETTLE_ARG=$2; shift 2 ;;
    --results) RESULTS=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --debug) PROFILE=debug; shift ;;
    --websocket) WEBSOCKET=1; shift ;;
    --websocket-only) WEBSOCKET=1; SSE_PART=0; shift ;;
    --ws-systems) WS_SYSTEMS=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "bench.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done

if [ "$QUICK" = 1 ]; then
  STREAMS=${STREAMS:-300}
  DURATION=${DURATION:-1s}
  WARMUP=500ms; DRAIN=1s; SETTLE=500ms; IDLE_SETTLE=1s; RECEIVE_TIMEOUT=20s
else
  STREAMS=${STREAMS:-15000}
  DURATION=${DURATION:-20s}
  WARMUP=3s; DRAIN=5s; SETTLE=5s; IDLE_SETTLE=15s; RECEIVE_TIMEOUT=60s
fi
IDLE_SETTLE=${IDLE_SETTLE_ARG:-$IDLE_SETTLE}
SESSION_RATE=$(( STREAMS * 2 / 3 ))
[ "$SESSION_RATE" -ge 1 ] || SESSION_RATE=1
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
BENCH_STARTED=$(date -u '+%Y-%m-%d %H:%M UTC')
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
RESULTS=${RESULTS:-$TARGET_DIR/bench-results/$STAMP}
if [ -z "$OUT" ]; then
  if [ "$QUICK" = 1 ]; then OUT=$RESULTS/benchmarks.md; else OUT=$ROOT/docs/benchmarks.md; fi
fi
mkdir -p "$RESULTS" "$(dirname "$OUT")"
RUNDIR=$(mktemp -d /tmp/ssegate-bench.XXXXXX)

say() { echo "== $*" >&2; }
warn() { echo "bench.sh: warning: $*" >&2; }

# Open files: every stream is a descriptor in the server and in a worker.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
say "open-file limit: $(ulimit -n)"

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo "$@"; else return 1; fi
}
apt_install() {
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null 2>&1 || true
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

command -v redis-server >/dev/null 2>&1 || { say "installing redis-server"; apt_install redis-server; }
command -v python3 >/dev/null 2>&1 || { say "installing python3"; apt_install python3; }

[ "$SSE_PART" = 1 ] || SYSTEMS=""
has_system() { case " $SYSTEMS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
drop_system() { SYSTEMS=$(echo " $SYSTEMS " | sed "s/ $1 / /; s/^ *//; s/ *$//"); }

NCHAN_MODULE=/usr/lib/nginx/modules/ngx_nchan_module.so
if has_system nchan; then
  if ! command -v nginx >/dev/null 2>&1 || [ ! -f "$NCHAN_MODULE" ]; then
    if [ "$QUICK" = 1 ]; then
      warn "nginx with the Nchan module is not installed: skipping Nchan (--quick installs nothing)"
      drop_system nchan
    else
      say "installing nginx and libnginx-mod-nchan"
      if ! apt_install nginx libnginx-mod-nchan; then
        warn "cannot install nginx/Nchan (not root?): skipping Nchan"
        drop_system nchan
      fi
    fi
  fi
  if has_system nchan && [ ! -f "$PEERS/nchan.conf" ]; then
    warn "$PEERS/nchan.conf not found: skipping Nchan"; drop_system nchan
  fi
fi
if has_system rawfan && [ ! -f "$PEERS/rawfan/Cargo.toml" ]; then
  warn "$PEERS/rawfan not found: skipping rawfan"; drop_system rawfan
fi
# The WebSocket peers are Node programs with locked dependencies: install them
# now (from npm's cache when it has them), not in the middle of the run.
if [ "$WEBSOCKET" = 1 ]; then
  command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || { say "installing nodejs and npm"; apt_install nodejs npm; }
  for peer in socketio ws; do
    case " $WS_SYSTEMS " in *" $peer "*) ;; *) continue ;; esac
    say "npm ci: bench/peers/$peer"
    (cd "$ROOT/bench/peers/$peer" && npm ci --prefer-offline --no-audit --no-fund --loglevel=error)
  done
fi
# The rawfan peer lives in a directory we may not write: build it elsewhere.
RAWFAN_TARGET=$TARGET_DIR/peers
RAWFAN=$RAWFAN_TARGET/release/rawfan

# ssegate itself is needed unless only the WebSocket peers are measured.
PACKAGES=(-p ssegate-bench)
NEED_SSEGATE=0
if has_system ssegate || { [ "$WEBSOCKET" = 1 ] && [[ " $WS_SYSTEMS " == *" ssegate"* ]]; }; then
  NEED_SSEGATE=1
  PACKAGES+=(-p ssegate)
fi
if [ "$BUILD" = 1 ]; then
  say "building ${PACKAGES[*]} ($PROFILE)"
  if [ "$PROFILE" = release ]; then
    cargo build --release --quiet "${PACKAGES[@]}"
  else
    cargo build --quiet "${PACKAGES[@]}"
  fi
  if has_system rawfan; then
    say "building rawfan"
    CARGO_TARGET_DIR=$RAWFAN_TARGET cargo build --release --quiet \
      --manifest-path "$PEERS/rawfan/Cargo.toml"
  fi
fi
SSEGATE=$TARGET_DIR/$PROFILE/ssegate
BENCH=$TARGET_DIR/$PROFILE/ssegate-bench
RELAY=$TARGET_DIR/$PROFILE/ssegate-post-relay
{ [ -x "$SSEGATE" ] || [ "$NEED_SSEGATE" = 0 ]; } && [ -x "$BENCH" ] ||
  { echo "bench.sh: missing $SSEGATE or $BENCH (drop --no-build)" >&2; exit 1; }
[[ " $SCENARIOS " != *" relay-"* ]] || [ -x "$RELAY" ] ||
  { echo "bench.sh: missing $RELAY (drop --no-build)" >&2; exit 1; }
! has_system rawfan || [ -x "$RAWFAN" ] ||
  { echo "bench.sh: missing $RAWFAN (drop --no-build)" >&2; exit 1; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_port() { # port seconds
  local i
  for ((i = 0; i < $2 * 20; i++)); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  return 1
}

SERVER_PID=""
REDIS_PID=""
RELAY_PID=""
stop_server() {
  if [ -n "$RELAY_PID" ]; then kill "$RELAY_PID" 2>/dev/null || true; wait "$RELAY_PID" 2>/dev/null || true; RELAY_PID=""; fi
  [ -n "$SERVER_PID" ] || return 0
  kill -TERM "$SERVER_PID" 2>/dev/null || true
  local i
  for ((i = 0; i < 300; i++)); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.05; done
  kill -KILL "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
}
cleanup() {
  stop_server
  if [ -n "$REDIS_PID" ]; then kill "$REDIS_PID" 2>/dev/null || true; wait "$REDIS_PID" 2>/dev/null || true; fi
  rm -rf "$RUNDIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Other work on the machine skews every figure: say so, and record it.
LOADAVG=$(cut -d' ' -f1-3 /proc/loadavg)
if awk -v l="${LOADAVG%% *}" 'BEGIN { exit !(l > 0.5) }'; then
  warn "load average is $LOADAVG before the run: other work on this machine will skew the figures"
fi

# Batches in flight per Redis publisher connection (ssegate-bench's default: 1).
PIPELINE_ARGS=()
[ -n "${PUBLISH_PIPELINE:-}" ] && PIPELINE_ARGS=(--publish-pipeline "$PUBLISH_PIPELINE")

# Optional CPU pinning (PIN_SERVER, PIN_OTHERS): empty prefixes when unset.
SERVER_PIN=(); OTHERS_PIN=()
if [ -n "${PIN_SERVER:-}${PIN_OTHERS:-}" ]; then
  command -v taskset >/dev/null 2>&1 || { echo "bench.sh: PIN_SERVER/PIN_OTHERS need taskset (util-linux)" >&2; exit 2; }
  [ -n "${PIN_SERVER:-}" ] && SERVER_PIN=(taskset -c "$PIN_SERVER")
  [ -n "${PIN_OTHERS:-}" ] && OTHERS_PIN=(taskset -c "$PIN_OTHERS")
  say "pinned: server on CPUs ${PIN_SERVER:-any}, Redis and the load generator on ${PIN_OTHERS:-any}"
fi

RPORT=$(free_port)
REDIS_URL=redis://127.0.0.1:$RPORT
"${OTHERS_PIN[@]}" redis-server --port "$RPORT" --bind 127.0.0.1 --save "" --appendonly no \
  --dir "$RUNDIR" --logfile "$RUNDIR/redis.log" &
REDIS_PID=$!
wait_port "$RPORT" 10 || { echo "bench.sh: redis-server did not start" >&2; cat "$RUNDIR/redis.log" >&2; exit 1; }
rcli() { redis-cli -p "$RPORT" "$@"; }
say "redis $(redis-server --version | sed 's/.* v=\([^ ]*\).*/\1/') on port $RPORT"
# The lua-<rate> and append-<rate> scenarios' Functions (FLUSHALL between
# scenarios keeps them).
if [[ " $SCENARIOS " == *" lua-"* || " $SCENARIOS " == *" append-"* ]]; then
  rcli -x FUNCTION LOAD REPLACE < "$ROOT/bench/experiments/functions.lua" >/dev/null
fi

# Flags of ssegate that only some versions have.
SSEGATE_HELP=$( ([ "$NEED_SSEGATE" = 1 ] && "$SSEGATE" --help) 2>&1 || true)
SSEGATE_FLAGS=()
grep -q -- '--allow-anonymous' <<<"$SSEGATE_HELP" && SSEGATE_FLAGS+=(--allow-anonymous)
# The load generator connects from a handful of addresses: no per-IP rate.
grep -q -- '--ip-rate' <<<"$SSEGATE_HELP" && SSEGATE_FLAGS+=(--ip-rate 0)
# Streams are gone when a run ends: no need for the graceful drain.
grep -q -- '--drain-delay' <<<"$SSEGATE_HELP" && SSEGATE_FLAGS+=(--drain-delay 0s)
grep -q -- '--close-spread' <<<"$SSEGATE_HELP" && SSEGATE_FLAGS+=(--close-spread 0s)
# shellcheck disable=SC2206
SSEGATE_FLAGS+=($SSEGATE_ARGS)

# start_server SYSTEM PORT: starts it, sets SERVER_PID and SERVER_ARGS (for ssegate-bench)
start_server() {
  local sys=$1 port=$2 log=$RUNDIR/$1.log
  case "$sys" in
    ssegate)
      RUST_LOG=${RUST_LOG:-warn} "${SERVER_PIN[@]}" "$SSEGATE" --listen "127.0.0.1:$port" --redis-url "$REDIS_URL" \
        "${SSEGATE_FLAGS[@]}" >>"$log" 2>&1 &
      SERVER_PID=$!
      SERVER_ARGS=(--target ssegate --server-pid "$SERVER_PID")
      ;;
    nchan)
      local dir=$RUNDIR/nchan
      mkdir -p "$dir"
      sed -e "s|redis://127.0.0.1:[0-9]*|$REDIS_URL|" \
          -e "s|listen 127.0.0.1:[0-9]*;|listen 127.0.0.1:$port;|" \
          -e "s|/tmp/nchan-peer/|$dir/|g" \
          "$PEERS/nchan.conf" >"$dir/nginx.conf"
      if [ -n "${NCHAN_PING:-}" ]; then
        sed -i "s|nchan_subscriber eventsource;|nchan_subscriber eventsource; nchan_eventsource_ping_interval $NCHAN_PING;|" "$dir/nginx.conf"
      fi
      "${SERVER_PIN[@]}" nginx -e "$dir/error.log" -p "$dir" -c "$dir/nginx.conf" >>"$log" 2>&1 &
      SERVER_PID=$!
      SERVER_ARGS=(--target nchan --server-pid "$SERVER_PID" --server-children)
      ;;
    rawfan)
      "${SERVER_PIN[@]}" "$RAWFAN" "127.0.0.1:$port" "$REDIS_URL" >>"$log" 2>&1 &
      SERVER_PID=$!
      SERVER_ARGS=(--target rawfan --server-pid "$SERVER_PID")
      ;;
    ssegate-ws)
      start_server ssegate "$port" || return 1
      SERVER_ARGS=(--target ssegate-ws --server-pid "$SERVER_PID")
      return 0
      ;;
    socketio|ws)
      # start.sh execs node: its pid is the server's.
      "$ROOT/bench/peers/start.sh" "$sys" "$port" "$REDIS_URL" >>"$log" 2>&1 &
      SERVER_PID=$!
      SERVER_ARGS=(--target "$sys" --server-pid "$SERVER_PID")
      ;;
  esac
  if ! wait_port "$port" 20; then
    warn "$sys did not start; its log:"; tail -20 "$log" >&2
    stop_server
    return 1
  fi
  sleep 0.3 # nginx workers, Redis connections
}

# scenario_args NAME SYSTEM: prints the ssegate-bench flags, or nothing to skip
scenario_args() {
  case "$1" in
    idle) echo "--scenario idle --settle $IDLE_SETTLE" ;;
    idle-sessions) echo "--scenario idle --channels $STREAMS --settle $IDLE_SETTLE" ;;
    sessions) echo "--scenario sessions --rate $SESSION_RATE --settle $SETTLE" ;;
    sessions-2k) echo "--scenario sessions --rate $(( SESSION_RATE / 5 > 0 ? SESSION_RATE / 5 : 1 )) --settle $SETTLE" ;;
    sessions-durable) [ "$2" = ssegate ] && echo "--scenario sessions --rate $SESSION_RATE --publish fcall --settle $SETTLE" ;;
    sessions-durable-2k) [ "$2" = ssegate ] && echo "--scenario sessions --rate $(( SESSION_RATE / 5 > 0 ? SESSION_RATE / 5 : 1 )) --publish fcall --settle $SETTLE" ;;
    sessions-durable-post) [ "$2" = ssegate ] && echo "--scenario sessions --rate $SESSION_RATE --publish http --publish-conns 32 --settle $SETTLE" ;;
    broadcast-20) echo "--scenario broadcast --rate 20 --settle $SETTLE" ;;
    broadcast-100) echo "--scenario broadcast --rate 100 --settle $SETTLE" ;;
    # The sessions layout at any rate, to compare ways of publishing rate by
    # rate: pub-<rate> PUBLISH (Nchan: its POST), fcall-<rate> ssegate's
    # Function, post-<rate> every publish an HTTP POST (durable for ssegate;
    # Nchan's own publish), for the rate one node sustains with a low tail.
    # relay-<rate>: the POSTs go to ssegate-post-relay (started beside the
    # node, its CPU and memory counted with the node's), the leanest HTTP
    # front of the same Function: what the HTTP leg itself costs here.
    pub-*|fcall-*|post-*|lua-*|append-*|relay-*)
      local r=${1#*-}; r=${r/k/000}
      [[ "$r" =~ ^[0-9]+$ ]] || { echo "bench.sh: bad rate in $1 (e.g. ${1%%-*}-5000, ${1%%-*}-5k)" >&2; return 1; }
      case "${1%%-*}:$2" in
        pub:*) echo "--scenario sessions --rate $r --settle $SETTLE" ;;
        fcall:ssegate) echo "--scenario sessions --rate $r --publish fcall --settle $SETTLE" ;;
        lua:ssegate|append:ssegate|lua:rawfan|append:rawfan)
          local f=bench_publish_only; [ "${1%%-*}" = append ] && f=bench_append_publish
          local key=""; [ "$2" = rawfan ] && key="--pub-key lim:%c:log"
          echo "--scenario sessions --rate $r --publish fcall --pub-function $f $key --settle $SETTLE" ;;
        post:ssegate|post:nchan|relay:ssegate) echo "--scenario sessions --rate $r --publish http --publish-conns ${PUBLISH_CONNS:-32} --settle $SETTLE" ;;
      esac ;;
    storm) echo "--scenario storm --rate $SESSION_RATE --receive-timeout $RECEIVE_TIMEOUT --settle $SETTLE" ;;
    *) echo "bench.sh: unknown scenario $1" >&2; return 1 ;;
  esac
  return 0
}

FAILED=0
# Scenario by scenario, each system in turn: the runs compared side by side
# are a minute or two apart, not the length of a system's whole series.
for sc in $SCENARIOS; do
  window=$DURATION
  case "$sc" in sessions-2k|sessions-durable-2k) window=${LOW_RATE_DURATION:-$DURATION} ;; esac
  for sys in $SYSTEMS; do
    args=$(scenario_args "$sc" "$sys") || exit 2
    [ -n "$args" ] || continue
    rcli FLUSHALL >/dev/null
    rcli CONFIG RESETSTAT >/dev/null
    port=$(free_port)
    say "$sys: $sc ($STREAMS streams)"
    if ! start_server "$sys" "$port"; then FAILED=$((FAILED + 1)); continue; fi
    RELAY_ARGS=()
    if [[ "$sc" == relay-* ]]; then
      rport=$(free_port)
      "${SERVER_PIN[@]}" "$RELAY" "127.0.0.1:$rport" "$REDIS_URL" >>"$RUNDIR/relay.log" 2>&1 &
      RELAY_PID=$!
      if ! wait_port "$rport" 10; then
        warn "ssegate-post-relay did not start"; cat "$RUNDIR/relay.log" >&2
        stop_server; FAILED=$((FAILED + 1)); continue
      fi
      RELAY_ARGS=(--pub-url "http://127.0.0.1:$rport" --server-pid "$RELAY_PID")
    fi
    # shellcheck disable=SC2086
    if ! "${OTHERS_PIN[@]}" "$BENCH" "${SERVER_ARGS[@]}" "${RELAY_ARGS[@]}" "${PIPELINE_ARGS[@]}" --url "http://127.0.0.1:$port" --redis-url "$REDIS_URL" \
        --label "$sys" --name "$sc" --streams "$STREAMS" --source-addrs "$SOURCE_ADDRS" \
        --duration "$window" --warmup "$WARMUP" --drain "$DRAIN" \
        $args --json "$RESULTS/$sys--$sc.json"; then
      warn "$sys $sc failed"
      FAILED=$((FAILED + 1))
    fi
    # Redis's own time per command over the scenario (its latency tracking:
    # p50, p99 and p99.9 of each command's execution, in µs; and the calls).
    { rcli INFO latencystats; rcli INFO commandstats; } > "$RESULTS/$sys--$sc.redis-latency.txt" 2>/dev/null || true
    stop_server
  done
done

# ws_supported PORT: does the ssegate on PORT upgrade /v1/ws? (Builds before the
# WebSocket transport answer 404.)
ws_supported() {
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 --http1.1 \
    -H 'Connection: Upgrade' -H 'Upgrade: websocket' -H 'Sec-WebSocket-Version: 13' \
    -H 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==' "http://127.0.0.1:$1/v1/ws" || true)
  [ "$code" = 101 ]
}

if [ "$WEBSOCKET" = 1 ]; then
  command -v curl >/dev/null 2>&1 || apt_install curl
  mkdir -p "$RESULTS/websocket"
  for sys in $WS_SYSTEMS; do
    for sc in $WS_SCENARIOS; do
      args=$(scenario_args "$sc" "$sys") || exit 2
      rcli FLUSHALL >/dev/null
      rcli CONFIG RESETSTAT >/dev/null
      port=$(free_port)
      say "websocket part, $sys: $sc ($STREAMS sockets)"
      if ! start_server "$sys" "$port"; then FAILED=$((FAILED + 1)); continue; fi
      if [ "$sys" = ssegate-ws ] && ! ws_supported "$port"; then
        warn "this ssegate build does not serve /v1/ws: skipping ssegate-ws"
        stop_server
        continue 2
      fi
      # shellcheck disable=SC2086
      if ! "${OTHERS_PIN[@]}" "$BENCH" "${SERVER_ARGS[@]}" "${PIPELINE_ARGS[@]}" --url "http://127.0.0.1:$port" --redis-url "$REDIS_URL" \
          --label "$sys" --name "$sc" --streams "$STREAMS" --source-addrs "$SOURCE_ADDRS" \
          --duration "$DURATION" --warmup "$WARMUP" --drain "$DRAIN" \
          $args --json "$RESULTS/websocket/$sys--$sc.json"; then
        warn "$sys $sc failed"
        FAILED=$((FAILED + 1))
      fi
      stop_server
    done
  done
fi

say "machine"
NGINX_VERSION=$( (nginx -v 2>&1 || true) | sed 's/.*nginx\///')
NCHAN_VERSION=$( (dpkg-query -W -f '${Version}' libnginx-mod-nchan 2>/dev/null || true) )
export BENCH_STARTED BENCH_DATE BENCH_NPROC BENCH_MEM BENCH_KERNEL BENCH_CPU BENCH_REDIS BENCH_NGINX BENCH_NCHAN \
  BENCH_RUSTC BENCH_COMMIT BENCH_COMMAND BENCH_STREAMS BENCH_QUICK BENCH_DURATION BENCH_LOADAVG
BENCH_LOADAVG="$LOADAVG (before) / $(cut -d' ' -f1-3 /proc/loadavg) (after)"
BENCH_DATE=$(date -u '+%Y-%m-%d %H:%M UTC')
BENCH_NPROC=$(nproc)
BENCH_MEM=$(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)
BENCH_KERNEL=$(uname -sr)
BENCH_CPU=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)
BENCH_REDIS=$(redis-server --version | sed 's/.* v=\([^ ]*\).*/\1/')
BENCH_NGINX=$NGINX_VERSION
BENCH_NCHAN=$NCHAN_VERSION
BENCH_RUSTC=$(rustc --version 2>/dev/null || echo unknown)
BENCH_COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then BENCH_COMMIT="$BENCH_COMMIT (with local changes)"; fi
BENCH_COMMAND=$COMMAND
BENCH_STREAMS=$STREAMS
BENCH_QUICK=$QUICK
BENCH_DURATION=$DURATION
python3 - "$RESULTS/meta.json" <<'EOF'
import json, os, sys
keys = ["STARTED", "DATE", "NPROC", "MEM", "KERNEL", "CPU", "REDIS", "NGINX", "NCHAN", "RUSTC",
        "COMMIT", "COMMAND", "STREAMS", "QUICK", "DURATION", "LOADAVG"]
meta = {k.lower(): os.environ.get("BENCH_" + k, "") for k in keys}
with open(sys.argv[1], "w") as f:
    json.dump(meta, f, indent=2)
EOF

python3 "$ROOT/bench/report.py" "$RESULTS" --out "$OUT" --svg "${OUT%.md}.svg"
say "results: $RESULTS"
say "report: $OUT"
if [ "$FAILED" -gt 0 ]; then
  echo "bench.sh: $FAILED run(s) failed" >&2
  exit 1
fi
