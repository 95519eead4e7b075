#!/usr/bin/env bash
# The Mercure hub beside the native API, in one run on one node and one
# Redis (docs/benchmarks.md, "Mercure hub beside the native API"):
#   native:     --streams SSE streams on /v1/stream/<c> over --channels
#               channels, --rate publishes/s through FCALL ssegate_publish;
#   mercure:    the same streams on /.well-known/mercure?topic=<c>, updates
#               through FCALL ssegate_mercure_publish (the channel name is
#               the topic);
#   templates:  as mercure, each stream also holding one of 100 distinct
#               URI-template selectors (https://example.com/shelf/<n>/{id},
#               matching none of the updates): the cost of matching them.
# Each run gets a fresh node after FLUSHALL; results are JSON lines in --out.
#
#   scripts/bench-mercure.sh                  # 15,000 streams, 10,000/s, 10 s
#   scripts/bench-mercure.sh --quick --debug  # the harness check
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

STREAMS=15000
RATE=10000
DURATION=10s
BUILD=1
PROFILE=release
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --streams) STREAMS=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --quick) STREAMS=300; RATE=200; DURATION=2s; shift ;;
    --no-build) BUILD=0; shift ;;
    --debug) PROFILE=debug; shift ;;  # the test build: proves the harness, figures meaningless
    --out) OUT=$2; shift 2 ;;
    -h|--help) sed -n 2,16p "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
CHANNELS=$((STREAMS / 10))

source "$ROOT/scripts/bench-setup.sh"

# %m: the stream's channel number modulo 100, so 100 distinct templates.
TEMPLATE='&topic=https%3A%2F%2Fexample.com%2Fshelf%2F%m%2F%7Bid%7D'
for run in native mercure templates; do
  echo "== $run" >&2
  redis-cli -p "$REDIS_PORT" FLUSHALL > /dev/null
  port=$(free_port)
  "$BIN/ssegate" --listen "127.0.0.1:$port" --redis-url "$REDIS" --allow-anonymous --ip-rate 0 \
    --max-connections 19000 --mercure --mercure-publisher-jwt-key bench-key --mercure-anonymous \
    > "$WORK/node-$run.log" 2>&1 &
  pid=$!; PIDS+=($pid)
  wait_port "$port"
  case $run in
    native) sub=(); pub=() ;;
    mercure) sub=(--sub-path '/.well-known/mercure?topic=%c')
             pub=(--pub-function ssegate_mercure_publish --pub-key 'sse:{$mercure}:log') ;;
    templates) sub=(--sub-path "/.well-known/mercure?topic=%c$TEMPLATE")
               pub=(--pub-function ssegate_mercure_publish --pub-key 'sse:{$mercure}:log') ;;
  esac
  "$BIN/ssegate-bench" --url "http://127.0.0.1:$port" --redis-url "$REDIS" \
    --streams "$STREAMS" --channels "$CHANNELS" --rate "$RATE" --publish fcall \
    --duration "$DURATION" --warmup 2s --drain 3s --server-pid "$pid" --name "$run" \
    "${sub[@]}" "${pub[@]}" --json "$WORK/$run.json"
  cat "$WORK/$run.json" >> "$OUT"; echo >> "$OUT"
  kill "$pid"; wait "$pid" 2>/dev/null || true
done
echo "results: $OUT" >&2
