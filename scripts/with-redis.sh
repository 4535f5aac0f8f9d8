#!/usr/bin/env bash
# Run a command with a Redis: REDIS_URL if it is set, else a private redis-server on a Unix
# socket under $STACKLAB_RUN_DIR, stopped again when the command ends.
set -euo pipefail
run_dir="${STACKLAB_RUN_DIR:-$(cd "$(dirname "$0")/.." && pwd)/.run}"
mkdir -p "$run_dir"
if [ -z "${REDIS_URL:-}" ]; then
  "$(dirname "$0")/ensure-redis.sh"
  socket="$run_dir/redis.sock"
  pidfile="$run_dir/redis-test.pid"
  redis-server --port 0 --unixsocket "$socket" --unixsocketperm 700 --save "" --appendonly no \
    --dir "$run_dir" --daemonize yes --pidfile "$pidfile" --logfile "$run_dir/redis.log"
  trap 'kill "$(cat "$pidfile" 2>/dev/null)" 2>/dev/null || true' EXIT
  for _ in $(seq 1 100); do
    [ -S "$socket" ] && redis-cli -s "$socket" ping >/dev/null 2>&1 && break
    sleep 0.1
  done
  export REDIS_URL="unix://$socket"
fi
"$@"
