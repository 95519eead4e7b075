#!/usr/bin/env bash
# Event sources benchmarked side by side in one run (docs/benchmarks.md,
# "Event sources"): for each backbone (Kafka through tansu, NATS JetStream,
# RabbitMQ), one fresh ssegate node consuming it, then
#   steady: --rate messages/s for --duration, latency from the append to
#           the SSE client (20 channels, one stream each, on the same node);
#   burst:  --messages appended as fast as the backbone takes them, the
#           node's ingest rate;
# and the cost of idempotence: durable POST /v1/stream/<c> publishes/s
# without and with an Idempotency-Key. Every server is started here on
# free ports and stopped at the end; results are JSON lines in --out.
#
#   scripts/bench-sources.sh                  # 5,000/s for 10 s, 20,000 burst
#   scripts/bench-sources.sh --quick          # 500/s for 2 s, 2,000 burst
#   scripts/bench-sources.sh --quick --debug  # the harness check CI runs
#   scripts/bench-sources.sh --backbones "nats amqp" --no-build
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

RATE=5000
DURATION=10s
MESSAGES=20000
BACKBONES="kafka nats amqp"
BUILD=1
PROFILE=release
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --rate) RATE=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --messages) MESSAGES=$2; shift 2 ;;
    --backbones) BACKBONES=$2; shift 2 ;;
    --quick) RATE=500; DURATION=2s; MESSAGES=2000; shift ;;
    --no-build) BUILD=0; shift ;;
    --debug) PROFILE=debug; shift ;;  # the test build: proves the harness, figures meaningless
    --out) OUT=$2; shift 2 ;;
    -h|--help) sed -n 2,17p "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

source "$ROOT/scripts/bench-setup.sh"

start_backbone() { # name -> sets URL, SOURCE
  local port; port=$(free_port)
  case "$1" in
    kafka)
      (cd "$WORK" && exec tansu broker --storage-engine "sqlite://tansu.db" \
        --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" > "$WORK/tansu.log" 2>&1) &
      PIDS+=($!); wait_port "$port"
      URL=127.0.0.1:$port
      SOURCE="kafka://$URL/bench?group=gw" ;;
    nats)
      nats-server -a 127.0.0.1 -p "$port" -js -sd "$WORK/nats" > "$WORK/nats.log" 2>&1 &
      PIDS+=($!); wait_port "$port"
      URL=nats://127.0.0.1:$port
      SOURCE="$URL/bench.>?stream=bench&durable=gw&channel={token:2}" ;;
    amqp)
      local d=$WORK/rabbit
      mkdir -p "$d"; echo "[]." > "$d/enabled_plugins"; echo -n "bench$port" > "$d/.erlang.cookie"; chmod 600 "$d/.erlang.cookie"
      HOME=$d RABBITMQ_NODENAME=bench$port@localhost RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
        RABBITMQ_NODE_PORT=$port RABBITMQ_DIST_PORT=$(free_port) RABBITMQ_BASE=$d \
        RABBITMQ_MNESIA_BASE=$d/mnesia RABBITMQ_LOG_BASE=$d/log RABBITMQ_LOGS=- \
        RABBITMQ_ENABLED_PLUGINS_FILE=$d/enabled_plugins RABBITMQ_CONFIG_FILE=$d/rabbitmq \
        RUNNING_UNDER_SYSTEMD=true /usr/lib/rabbitmq/bin/rabbitmq-server > "$WORK/rabbit.log" 2>&1 &
      PIDS+=($!); wait_port "$port"
      URL=amqp://guest:guest@127.0.0.1:$port/%2f
      SOURCE="$URL?queue=bench&exchange=bench&binding=%23" ;;
  esac
}

node() { # source -> sets NODE, NODE_PID
  local port; port=$(free_port)
  redis-cli -p "$REDIS_PORT" FLUSHALL > /dev/null
  "$BIN/ssegate" --listen "127.0.0.1:$port" --redis-url "$REDIS" --allow-anonymous \
    --history-size 100000 ${1:+--source "$1"} > "$WORK/node-$port.log" 2>&1 &
  NODE_PID=$!; PIDS+=($NODE_PID)
  wait_port "$port"
  NODE=http://127.0.0.1:$port
}

bench() { "$BIN/ssegate-sources-bench" "$@" | tee -a "$OUT"; }

for b in $BACKBONES; do
  echo "== $b" >&2
  start_backbone "$b"
  "$BIN/ssegate-sources-bench" --backbone "$b" --mode setup --backbone-url "$URL" > /dev/null
  node "$SOURCE"
  bench --backbone "$b" --mode steady --node "$NODE" --backbone-url "$URL" --rate "$RATE" --duration "$DURATION"
  kill "$NODE_PID"; wait "$NODE_PID" 2>/dev/null || true
  node "$SOURCE"
  bench --backbone "$b" --mode burst --node "$NODE" --backbone-url "$URL" --messages "$MESSAGES" --prefix burst
  kill "$NODE_PID"; wait "$NODE_PID" 2>/dev/null || true
done
echo "== idempotence" >&2
node ""
bench --backbone none --mode idempotence --node "$NODE" --duration "$DURATION"
echo "results: $OUT" >&2
