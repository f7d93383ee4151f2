#!/usr/bin/env bash
# Browser tests drive Debian's chromium through Playwright; Playwright's own browser
# download cannot work offline, so the system package is used instead.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then exit 0; fi
if [ "$(id -u)" -ne 0 ]; then
  echo "error: /usr/bin/chromium is missing; install Debian's 'chromium' package as root" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium >/dev/null
