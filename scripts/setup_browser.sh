#!/usr/bin/env bash
# Headless Chromium for tests/test_browser.py, from Debian's packages (no browser downloads). Idempotent.
#   bash scripts/setup_browser.sh
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "setup_browser.sh: chromium is missing and installing it needs root:" >&2
  echo "  sudo apt-get update && sudo apt-get install -y chromium chromium-driver" >&2
  echo "  (tests/test_browser.py fails until it is installed)" >&2
  exit 0
fi
apt-get update && apt-get install -y chromium chromium-driver
