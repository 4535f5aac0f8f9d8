#!/usr/bin/env bash
# `make run` after setup: migrate, load the course content (stopping with the report if a lesson
# or lab has a problem), create the demo accounts, then supervise every process
# (web, worker, beat, watcher, and a private Redis when REDIS_URL is unset) with honcho.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
mkdir -p "$STACKLAB_RUN_DIR"
processes=(web worker beat watcher)
if [ -z "${REDIS_URL:-}" ]; then
  scripts/ensure-redis.sh
  processes=(redis "${processes[@]}")
fi
python manage.py migrate --noinput
python manage.py load_content
python manage.py setup_demo
echo "Stacklab: starting at http://127.0.0.1:${STACKLAB_PORT}/  (Ctrl-C stops everything)"
exec honcho start --no-colour -f Procfile "${processes[@]}"
