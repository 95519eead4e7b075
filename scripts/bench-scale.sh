#!/usr/bin/env bash
# Many streams on one machine (docs/scaling.md, docs/benchmarks.md "Scale"):
# --nodes server processes on one Redis (a process may hold 20,000 open
# files here, so 500,000 streams need 25 or more), the streams spread over
# them round-robin by ssegate-bench's worker processes (18,000 streams each)
# from --source-addrs loopback addresses, one channel, a broadcast every
# 1/--rate seconds reaching every stream. Each run prints ssegate-bench's
# table (deliveries, lost, latency, node memory per stream, kernel memory
# per stream, CPU) and appends its JSON line to --out; with --runs N the
# systems take turns N times and a table of medians ends the output
# (bench/scale_summary.py).
#
# The run happens in a network namespace of its own (unshare; as root or
# with unprivileged user namespaces): the host's connection tracking, when
# a firewall or container runtime has turned it on, holds 262,144
# connections by default and then drops new ones silently. --no-netns runs
# on the host's network instead.
#
#   scripts/bench-scale.sh                                     # 500,000 streams, 28 ssegate nodes
#   scripts/bench-scale.sh --streams 100000 --nodes 6 --systems "ssegate rawfan"
#   scripts/bench-scale.sh --quick --debug                     # the harness check CI runs
#   SSEGATE_ARGS="--heartbeat 1h" scripts/bench-scale.sh       # extra ssegate flags (word-split)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

STREAMS=500000
NODES=28
SYSTEMS=ssegate
RATE=0.2
DURATION=150s
SOURCE_ADDRS=40
SETTLE=20s
BUILD=1
PROFILE=release
OUT=""
NETNS=1
RUNS=1
ARGS=("$@")
PEERS=${PEERS:-$ROOT/../shared/peers}
while [ $# -gt 0 ]; do
  case "$1" in
    --streams) STREAMS=$2; shift 2 ;;
    --nodes) NODES=$2; shift 2 ;;
    --systems) SYSTEMS=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --source-addrs) SOURCE_ADDRS=$2; shift 2 ;;
    --settle) SETTLE=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --quick) STREAMS=3000; NODES=3; RATE=2; DURATION=3s; SOURCE_ADDRS=4; SETTLE=1s; shift ;;
    --no-build) BUILD=0; shift ;;
    --debug) PROFILE=debug; shift ;;  # the test build: proves the harness, figures meaningless
    --out) OUT=$2; shift 2 ;;
    --no-netns) NETNS=0; shift ;;
    -h|--help) sed -n 2,21p "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
case " $SYSTEMS " in *" rawfan "*)
  [ -f "$PEERS/rawfan/Cargo.toml" ] || { echo "bench-scale.sh: $PEERS/rawfan not found" >&2; exit 1; } ;;
esac

if [ "$NETNS" = 1 ] && [ -z "${SSEGATE_BENCH_IN_NETNS:-}" ]; then
  if [ "$BUILD" = 1 ]; then
    if [ "$PROFILE" = release ]; then cargo build --release -q -p ssegate -p ssegate-bench
    else cargo build -q -p ssegate -p ssegate-bench; fi
    case " $SYSTEMS " in *" rawfan "*) CARGO_TARGET_DIR=$ROOT/target/peers cargo build --release -q \
      --manifest-path "$PEERS/rawfan/Cargo.toml" ;; esac
  fi
  UNSHARE=(unshare --net)
  [ "$(id -u)" = 0 ] || UNSHARE=(unshare --map-root-user --net)
  export SSEGATE_BENCH_IN_NETNS=1
  if "${UNSHARE[@]}" -- ip link set lo up 2>/dev/null; then
    exec "${UNSHARE[@]}" -- bash -c 'ip link set lo up && exec "$0" "$@"' "$0" "${ARGS[@]}" --no-build
  fi
  echo "bench-scale.sh: cannot make a network namespace here (unshare, ip); running on the host's network" >&2
  BUILD=0
fi

source "$ROOT/scripts/bench-setup.sh"
# Every process started from here may hold the most files allowed.
ulimit -n "$(ulimit -Hn)"
NOFILE=$(ulimit -n)
PER_NODE=$(( (STREAMS + NODES - 1) / NODES ))
if [ $((PER_NODE + 128)) -gt "$NOFILE" ]; then
  echo "bench-scale.sh: $PER_NODE streams per node do not fit $NOFILE open files; use more --nodes" >&2
  exit 2
fi
RAWFAN=$ROOT/target/peers/release/rawfan
case " $SYSTEMS " in *" rawfan "*)
  [ "$BUILD" = 1 ] && CARGO_TARGET_DIR=$ROOT/target/peers cargo build --release -q \
    --manifest-path "$PEERS/rawfan/Cargo.toml" ;;
esac

# start_nodes SYSTEM: starts NODES servers, sets URLS and NODE_PIDS (comma lists).
start_nodes() {
  local sys=$1 urls=() pids=() port
  for i in $(seq 1 "$NODES"); do
    port=$(free_port)
    case "$sys" in
      ssegate)
        RUST_LOG=warn "$BIN/ssegate" --listen "127.0.0.1:$port" --redis-url "$REDIS" \
          --allow-anonymous --ip-rate 0 --max-connections $((NOFILE - 128)) ${SSEGATE_ARGS:-} \
          >> "$WORK/$sys-$i.log" 2>&1 & ;;
      rawfan)
        "$RAWFAN" "127.0.0.1:$port" "$REDIS" >> "$WORK/$sys-$i.log" 2>&1 & ;;
      *) echo "bench-scale.sh: unknown system $sys (ssegate, rawfan)" >&2; exit 2 ;;
    esac
    pids+=($!); PIDS+=($!)
    urls+=("http://127.0.0.1:$port")
  done
  for u in "${urls[@]}"; do wait_port "${u##*:}"; done
  URLS=$(IFS=,; echo "${urls[*]}")
  NODE_PIDS=$(IFS=,; echo "${pids[*]}")
}

stop_nodes() {
  local p
  for p in ${NODE_PIDS//,/ }; do kill "$p" 2>/dev/null || true; done
  for p in ${NODE_PIDS//,/ }; do while kill -0 "$p" 2>/dev/null; do sleep 0.1; done; done
}

FAILED=0
for run in $(seq 1 "$RUNS"); do
  for sys in $SYSTEMS; do
    redis-cli -p "$REDIS_PORT" FLUSHALL > /dev/null
    echo "== $sys (run $run of $RUNS): $STREAMS streams on $NODES nodes, a broadcast every $(python3 -c "print(round(1/$RATE, 3))") s for $DURATION" >&2
    start_nodes "$sys"
    rm -f "$WORK/$sys.json"
    if ! "$BIN/ssegate-bench" --target "$sys" --url "$URLS" --server-pid "$NODE_PIDS" \
        --redis-url "$REDIS" --scenario broadcast --rate "$RATE" --streams "$STREAMS" \
        --name "scale-$STREAMS" --source-addrs "$SOURCE_ADDRS" --settle "$SETTLE" \
        --duration "$DURATION" --warmup 0s --drain 10s --connect-timeout 120s \
        --json "$WORK/$sys.json"; then
      echo "bench-scale.sh: $sys failed; node logs in $WORK" >&2
      FAILED=$((FAILED + 1))
    fi
    [ -f "$WORK/$sys.json" ] && { tr -d '\n' < "$WORK/$sys.json"; echo; } >> "$OUT"
    stop_nodes
  done
done
python3 "$ROOT/bench/scale_summary.py" "$OUT"
echo "results: $OUT" >&2
exit "$FAILED"
