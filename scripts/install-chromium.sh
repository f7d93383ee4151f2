#!/usr/bin/env bash
# Browser tests drive Debian's chromium through Playwright; Playwright's own browser
# download cannot work offline, so the system package is used instead. The zoo translates
# into Bengali, which no default font draws: without one, the screenshots show boxes.
set -euo pipefail
if [ -x /usr/bin/chromium ] && fc-list :lang=bn | grep -q .; then exit 0; fi
if [ "$(id -u)" -ne 0 ]; then
  echo "error: install Debian's 'chromium' and 'fonts-lohit-beng-bengali' packages as root" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium fonts-lohit-beng-bengali >/dev/null
