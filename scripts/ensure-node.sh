#!/usr/bin/env bash
# Make sure npm (and Node.js) is there to install the browser libraries of the lab page from
# package-lock.json, installing Debian's nodejs and npm packages when run as root on Debian.
set -euo pipefail
if command -v npm >/dev/null 2>&1 && command -v node >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && [ -f /etc/debian_version ]; then
  echo "node: installing nodejs and npm"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
  command -v npm >/dev/null 2>&1 && exit 0
  echo "Installed nodejs and npm, but npm is still not on PATH." >&2
  exit 1
fi
echo "npm not found: Stacklab installs its browser libraries (xterm.js, uPlot) with it." >&2
echo "Install Node.js 18 or newer with npm (Debian/Ubuntu: sudo apt-get install nodejs npm), then run make again." >&2
exit 1
