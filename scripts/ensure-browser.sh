#!/usr/bin/env bash
# The browser tests drive Debian's Chromium (never a downloaded browser build): make sure it is
# there, installing chromium on Debian as root when it is missing.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && [ -f /etc/debian_version ]; then
  echo "browser: installing chromium"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  exit 0
fi
echo "Chromium not found at /usr/bin/chromium: install it (Debian/Ubuntu: sudo apt-get install chromium) to run the browser tests." >&2
exit 1
