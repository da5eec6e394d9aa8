#!/usr/bin/env bash
# What tests/test_browser.py needs besides the host. Idempotent.
#   bash scripts/setup_browser.sh
# - headless Chromium from Debian's packages (no browser downloads);
# - the newest ComfyUI frontend, comfyui-frontend-package $NEWEST_FRONTEND_VERSION from PyPI (data only, no
#   dependencies), beside the one the host venv pins: installed once into <cache>/frontend-package-<version> (the
#   same <cache> as scripts/setup_host.sh: $CONTROLNEXT_HOST_CACHE, else $XDG_CACHE_HOME/controlnext-svd-host, else
#   ~/.cache/controlnext-svd-host; marked .complete last, so an interrupted install is redone) and linked as
#   .host/frontend-newest. The test serves it with `main.py --front-end-root .host/frontend-newest/
#   comfyui_frontend_package/static`.
set -euo pipefail

NEWEST_FRONTEND_VERSION=1.58.1   # the newest comfyui-frontend-package on PyPI, October 2026

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-python3}
cache=${CONTROLNEXT_HOST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/controlnext-svd-host}
log() { printf '[setup_browser] %s\n' "$*" >&2; }

install_chromium() {
  command -v chromium >/dev/null 2>&1 && return 0
  if [ "$(id -u)" -ne 0 ]; then
    log "chromium is missing and installing it needs root:"
    log "  sudo apt-get update && sudo apt-get install -y chromium chromium-driver"
    log "  (tests/test_browser.py fails until it is installed)"
    return 0
  fi
  apt-get update && apt-get install -y chromium chromium-driver
}

install_frontend() {  # the cache entry is named so that setup_host.sh's pruning (venv-*, comfyui-*) never takes it
  local entry="$cache/frontend-package-$NEWEST_FRONTEND_VERSION" t0=$SECONDS
  if [ ! -f "$entry/.complete" ]; then
    mkdir -p "$cache"
    exec 9>"$cache/.lock-$(basename "$entry")"
    flock 9   # two checkouts setting up at once install it once
    if [ ! -f "$entry/.complete" ]; then
      rm -rf "$entry"
      if ! "$python" -m pip install -q --disable-pip-version-check --no-deps --target "$entry" \
          "comfyui-frontend-package==$NEWEST_FRONTEND_VERSION" 2>"$cache/frontend-package-pip.log"; then
        grep -v "^WARNING: Location" "$cache/frontend-package-pip.log" | tail -n 20 >&2
        log "could not install comfyui-frontend-package==$NEWEST_FRONTEND_VERSION (tests/test_browser.py fails" \
            "for the newest frontend until it is installed)"
        exec 9>&-
        return 0
      fi
      touch "$entry/.complete"
      log "installed comfyui-frontend-package $NEWEST_FRONTEND_VERSION into $entry in $((SECONDS - t0)) s"
    fi
    exec 9>&-
  fi
  mkdir -p "$root/.host"
  ln -sfn "$entry" "$root/.host/frontend-newest"
}

install_chromium
install_frontend
