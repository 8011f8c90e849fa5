#!/usr/bin/env bash
# Installs Debian's Chromium for the browser tests when it is missing (needs root and apt).
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "setup_browser: chromium is missing and cannot be installed here (needs root and apt-get)." >&2
  echo "setup_browser: install Debian's 'chromium' package, or run 'make test-fast' without browser tests." >&2
  exit 1
fi
echo "setup_browser: installing chromium with apt-get"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium >/dev/null
chromium --version
