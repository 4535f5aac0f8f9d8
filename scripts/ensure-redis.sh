#!/usr/bin/env bash
# Make sure a redis-server binary exists for the private Redis that `make run`/`make test` start
# when REDIS_URL is unset.
set -euo pipefail
if command -v redis-server >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && [ -f /etc/debian_version ]; then
  echo "redis: installing redis-server"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  exit 0
fi
echo "redis-server not found: install Redis (e.g. 'sudo apt-get install redis-server') or set REDIS_URL to a running Redis." >&2
exit 1
