# Sourced by scripts/bench-sources.sh, bench-state.sh and bench-mercure.sh
# once their options are parsed (ROOT, BUILD, PROFILE and OUT set): builds
# the gateway and the load generator, makes a work directory and the
# results file, defines free_port and wait_port, starts a Redis on a free
# port (REDIS_PORT, REDIS) and stops every process listed in PIDS at exit.
if [ "$BUILD" = 1 ]; then
  if [ "$PROFILE" = release ]; then cargo build --release -q -p ssegate -p ssegate-bench
  else cargo build -q -p ssegate -p ssegate-bench; fi
fi
BIN=$ROOT/target/$PROFILE
WORK=$(mktemp -d)
OUT=${OUT:-$WORK/results.jsonl}
: > "$OUT"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { # port
  for _ in $(seq 1 600); do (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
  echo "nothing listens on $1" >&2; return 1
}

REDIS_PORT=$(free_port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --logfile "" --dir "$WORK" > /dev/null &
PIDS+=($!)
wait_port "$REDIS_PORT"
REDIS=redis://127.0.0.1:$REDIS_PORT
