#!/usr/bin/env bash
# Starts a WebSocket benchmark peer in the foreground:
#
#   bench/peers/start.sh socketio|ws PORT REDIS_URL
#
# Installs its locked Node packages first when they are missing (npm ci,
# from the local cache when it can), then runs `node server.js PORT REDIS_URL`,
# which prints `ready PORT` once it accepts connections.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
[ $# -eq 3 ] || { echo "usage: $0 socketio|ws PORT REDIS_URL" >&2; exit 2; }
peer=$1
case "$peer" in
  socketio|ws) ;;
  *) echo "start.sh: unknown peer $peer (socketio or ws)" >&2; exit 2 ;;
esac
dir=$here/$peer
if [ ! -d "$dir/node_modules" ] || [ "$dir/package-lock.json" -nt "$dir/node_modules" ]; then
  (cd "$dir" && npm ci --prefer-offline --no-audit --no-fund --loglevel=error >&2)
fi
cd "$dir"
exec node server.js "$2" "$3"
