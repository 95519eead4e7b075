#!/usr/bin/env bash
# Redis's own CPU per publish: PUBLISH (ephemeral), the XADD the durable
# path appends with, and FCALL ssegate_publish (durable), measured from
# Redis's INFO cpu around redis-benchmark runs against a private
# redis-server. The cluster's durable publish capacity is about one Redis
# core divided by the FCALL figure.
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
N=${N:-400000}
CHANNELS=${CHANNELS:-1500}
PAYLOAD='{"event":"tick","data":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}'
for tool in redis-server redis-cli redis-benchmark; do
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
# Microseconds of Redis CPU per command over N pipelined commands from 20
# connections, spread over CHANNELS channels.
measure() {
  local before after
  before=$(cpu)
  redis-benchmark -p "$PORT" -q -n "$N" -c 20 -P 8 -r "$CHANNELS" "$@" >/dev/null
  after=$(cpu)
  python3 -c "print(f'{($after - $before) * 1e6 / $N:.2f}')"
}
declare -A RESULTS
for run in $(seq 1 "$RUNS"); do
  publish=$(measure PUBLISH 'sse:{c__rand_int__}' "$PAYLOAD")
  xadd=$(measure XADD 'x:{c__rand_int__}:log' MAXLEN '~' 1000 '*' p "$PAYLOAD")
  fcall=$(measure FCALL ssegate_publish 1 'sse:{c__rand_int__}:log' "$PAYLOAD")
  RESULTS[PUBLISH]+="$publish " RESULTS[XADD]+="$xadd " RESULTS[FCALL]+="$fcall "
  echo "run $run: PUBLISH $publish  XADD $xadd  FCALL $fcall"
done
for cmd in PUBLISH XADD FCALL; do
  python3 -c "import statistics, sys; v = [float(x) for x in sys.argv[2:]]; print(f'{sys.argv[1]:8} median {statistics.median(v):6.2f} us of Redis CPU per command ({len(v)} runs)')" "$cmd" ${RESULTS[$cmd]}
done
