#!/usr/bin/env bash
# `make run` after setup: migrate, load the course content (stopping with the report if a lesson
# or lab has a problem), create the demo accounts, then supervise every process of the Procfile
# (web, worker, beat, watcher, and a private Redis when REDIS_URL is unset) with supervisord in the
# foreground: a process that exits is started again, Ctrl-C or SIGTERM stops them all.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
mkdir -p "$STACKLAB_RUN_DIR"
processes=(web worker beat watcher)
if [ -z "${REDIS_URL:-}" ]; then
  scripts/ensure-redis.sh
  processes=(redis "${processes[@]}")
fi
# First, before anything is changed: refused while a `make run` already runs from this directory.
python scripts/supervise.py conf "${processes[@]}"
python manage.py migrate --noinput
python manage.py load_content
python manage.py setup_demo
echo "Stacklab: starting at http://127.0.0.1:${STACKLAB_PORT}/  (Ctrl-C stops everything)"
# supervisord prints the processes' lines through its own, appending, handle on /dev/stdout and
# its own lines through fd 1: into a file (`make run >log`) both must append, or they overwrite
# each other.
if [ -f /dev/stdout ]; then exec >>/dev/stdout; fi
if [ -f /dev/stderr ]; then exec 2>>/dev/stderr; fi
# Not exec'd: supervisord takes SIGHUP as "reload and carry on", but here a hangup (the terminal
# closed) means stop, like Ctrl-C and SIGTERM. Every one of them becomes a SIGTERM to supervisord,
# which stops the processes and exits; this script then exits with its status.
supervisord --nodaemon --configuration "$STACKLAB_RUN_DIR/supervisord.conf" &
supervisor=$!
trap 'kill -TERM "$supervisor" 2>/dev/null || true' HUP INT TERM
while kill -0 "$supervisor" 2>/dev/null; do
  wait "$supervisor" || true
done
wait "$supervisor"
