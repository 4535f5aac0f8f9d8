#!/usr/bin/env bash
# `make bench-page`: start a Stacklab of its own (make run on a free port, own run directory and
# engine label), measure fault -> page update in Chromium, then stop it and remove its labs.
set -euo pipefail
cd "$(dirname "$0")/.."
run_dir=$(mktemp -d /tmp/stacklab-bench-page.XXXXXX)
port=$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
instance="bench-page-$$"
cleanup() {
  [ -n "${server:-}" ] && kill -TERM -- "-$server" 2>/dev/null && wait "$server" 2>/dev/null || true
  docker ps -aq --filter "label=stacklab.instance=$instance" | xargs -r docker rm -f >/dev/null
  docker network ls -q --filter "label=stacklab.instance=$instance" | xargs -r docker network rm >/dev/null
  rm -rf "$run_dir"
}
trap cleanup EXIT
env -u DATABASE_URL -u REDIS_URL STACKLAB_RUN_DIR="$run_dir" STACKLAB_PORT="$port" STACKLAB_INSTANCE="$instance" \
  setsid make run >"$run_dir/make-run.log" 2>&1 &
server=$!
for _ in $(seq 1 600); do
  curl -fs -o /dev/null "http://127.0.0.1:$port/accounts/login/" && break
  sleep 0.5
done
.venv/bin/python bench/page_latency.py --url "http://127.0.0.1:$port" "$@"
