#!/usr/bin/env bash
# Redis's own CPU per publish: PUBLISH (ephemeral), the XADD the durable
# path appends with, and FCALL ssegate_publish (durable; with and without
# an idempotency key), from Redis's INFO cpu around pipelined batches of
# generated commands (redis-cli --pipe) against a private redis-server.
# The cluster's durable publish capacity is about one Redis core divided
# by the FCALL figure.
#
#   scripts/redis-publish-cost.sh [runs] [library.lua]
#
# The library defaults to this tree's src/broker/redis/functions.lua (pass
# another, e.g. from `git show REV:src/broker/redis/functions.lua`, to
# compare). Prints every run and the median per command, in microseconds.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-5}
LIBRARY=${2:-src/broker/redis/functions.lua}
N=${N:-200000}
CHANNELS=${CHANNELS:-1500}
PAYLOAD='{"event":"tick","data":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}'
for tool in redis-server redis-cli python3; do
  command -v "$tool" >/dev/null || { echo "$tool is needed (apt-get install redis-server)" >&2; exit 1; }
done
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
DIR=$(mktemp -d)
redis-server --port "$PORT" --save '' --appendonly no --dir "$DIR" --daemonize yes --logfile "$DIR/redis.log"
trap 'redis-cli -p "$PORT" shutdown nosave >/dev/null 2>&1 || true; rm -rf "$DIR"' EXIT
until redis-cli -p "$PORT" ping >/dev/null 2>&1; do sleep 0.1; done
sed -e 's/__MAXLEN__/1000/' -e 's/__TTL_MS__/3600000/' -e 's/__PUBLISH__/PUBLISH/' "$LIBRARY" |
  redis-cli -p "$PORT" -x FUNCTION LOAD REPLACE >/dev/null

cpu() { redis-cli -p "$PORT" INFO cpu | awk -F: '/used_cpu_(user|sys):/ { s += $2 } END { printf "%.6f", s }'; }
# N commands in RESP, spread over CHANNELS channels: the command's words
# with {c} replaced by the channel's number and {n} by the command's.
commands() {
  python3 - "$N" "$CHANNELS" "$@" <<'PY'
import sys
n, channels, words = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
out = sys.stdout.buffer
for i in range(n):
    args = [w.replace("{c}", str(i % channels)).replace("{n}", str(i)).encode() for w in words]
    out.write(b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args))
PY
}
# Microseconds of Redis CPU per command, over N commands sent as one
# pipeline (redis-cli --pipe).
measure() {
  local before after
  commands "$@" >"$DIR/commands"
  before=$(cpu)
  redis-cli -p "$PORT" --pipe <"$DIR/commands" >/dev/null
  after=$(cpu)
  python3 -c "print(f'{($after - $before) * 1e6 / $N:.2f}')"
}
NAMES=(PUBLISH XADD FCALL FCALL+key)
declare -A RESULTS
for run in $(seq 1 "$RUNS"); do
  line="run $run:"
  for name in "${NAMES[@]}"; do
    case $name in
      PUBLISH) value=$(measure PUBLISH 'sse:{{c}}' "$PAYLOAD") ;;
      XADD) value=$(measure XADD 'x:{{c}}:log' MAXLEN '~' 1000 '*' p "$PAYLOAD") ;;
      FCALL) value=$(measure FCALL ssegate_publish 1 'sse:{{c}}:log' "$PAYLOAD") ;;
      # With an idempotency key, new each time (as an event source's).
      FCALL+key) value=$(measure FCALL ssegate_publish 1 'sse:{{c}}:log' "$PAYLOAD" "k$run-{n}") ;;
    esac
    RESULTS[$name]+="$value "
    line+=" $name $value"
  done
  echo "$line"
done
for name in "${NAMES[@]}"; do
  python3 -c "import statistics, sys; v = [float(x) for x in sys.argv[2:]]; print(f'{sys.argv[1]:9} median {statistics.median(v):6.2f} us of Redis CPU per command ({len(v)} runs)')" "$name" ${RESULTS[$name]}
done
