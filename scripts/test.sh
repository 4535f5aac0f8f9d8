#!/usr/bin/env bash
# The README's test command (`make test`) after setup: the whole suite, real engine included.
# STACKLAB_REQUIRE_ALL turns any skipped test into a failure: here nothing may quietly not run.
set -euo pipefail
cd "$(dirname "$0")/.."
export STACKLAB_REQUIRE_ALL=1
export PATH="$PWD/.venv/bin:$PATH"
echo "test: database ${DATABASE_URL:-sqlite (default)}, redis ${REDIS_URL:-private (started now)}"
scripts/with-redis.sh .venv/bin/python -m pytest "$@"
