#!/usr/bin/env bash
# Make sure a Docker engine is reachable (used by `make run` and `make test`).
# On a Debian-family machine where we are root, install docker.io and start dockerd if needed.
set -euo pipefail

repo_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
run_dir="${STACKLAB_RUN_DIR:-$repo_dir/.run}"
deadline_s="${STACKLAB_DOCKER_TIMEOUT:-60}"

engine_version() {
    docker version --format '{{.Server.Version}}' 2>/dev/null
}

is_engine_up() {
    command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1
}

report_up() {
    echo "docker: engine reachable (version $(engine_version || echo unknown))"
}

if is_engine_up; then
    report_up
    exit 0
fi

if [[ "$(id -u)" -ne 0 || ! -f /etc/debian_version ]]; then
    echo "Docker engine not reachable: install Docker Engine (https://docs.docker.com/engine/install/)" \
        "and start it, or set DOCKER_HOST to a reachable engine." >&2
    exit 1
fi

if [[ -n "${DOCKER_HOST:-}" && "$DOCKER_HOST" != "unix:///var/run/docker.sock" ]]; then
    # Starting a local dockerd would not help a client pointed elsewhere.
    echo "Docker engine not reachable at DOCKER_HOST=$DOCKER_HOST: start that engine or unset DOCKER_HOST." >&2
    exit 1
fi

if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; then
    echo "docker: installing docker.io with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq docker.io >/dev/null
fi

mkdir -p "$run_dir"
log="$run_dir/dockerd.log"

# A dockerd may already be starting (e.g. a parallel `make test`); only launch one if none runs.
if ! pgrep -x dockerd >/dev/null 2>&1; then
    setsid nohup dockerd >>"$log" 2>&1 </dev/null &
fi

end=$((SECONDS + deadline_s))
while ((SECONDS < end)); do
    if is_engine_up; then
        report_up
        exit 0
    fi
    sleep 0.5
done

echo "docker: dockerd did not become reachable within ${deadline_s}s; last lines of $log:" >&2
tail -n 20 "$log" >&2 2>/dev/null || true
exit 1
