#!/usr/bin/env bash
# Make sure "$1" (default python3) is Python >= 3.11 with venv, installing python3-venv on Debian
# as root when only that is missing.
set -euo pipefail
python="${1:-python3}"
if ! command -v "$python" >/dev/null 2>&1; then
  echo "$python not found: install Python 3.11 or newer (Debian/Ubuntu: apt-get install python3 python3-venv)." >&2
  exit 1
fi
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "Stacklab needs Python >= 3.11; $python is $("$python" -V 2>&1). Set PYTHON=python3.11 (or newer)." >&2
  exit 1
fi
if "$python" -c 'import venv, ensurepip' 2>/dev/null; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && [ -f /etc/debian_version ]; then
  echo "python: installing python3-venv"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
  exit 0
fi
echo "$python has no venv module: install it (Debian/Ubuntu: sudo apt-get install python3-venv)." >&2
exit 1
