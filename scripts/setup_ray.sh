#!/usr/bin/env bash
# Ray for scripts/render_batch.py --ray (optional: nothing else in the pack needs it). Idempotent.
#   bash scripts/setup_ray.sh
# Installs ray==$RAY_VERSION (the version the tests run) beside the host venv, never into it: the venv is shared by
# every checkout with the same requirements (scripts/setup_host.sh). pip first resolves Ray against the venv, then
# only what the venv lacks (Ray and a few of its dependencies, ~260 MB) is installed with --no-deps into
# <cache>/ray-<key>/site, keyed by the Ray version and the venv, and linked as .host/ray-site. Marked .complete last,
# under a lock, so an interrupted install is redone and two checkouts install it once. <cache> is setup_host.sh's:
# $CONTROLNEXT_HOST_CACHE, else $XDG_CACHE_HOME/controlnext-svd-host, else ~/.cache/controlnext-svd-host.
# scripts/render_batch.py and scripts/ray.sh put .host/ray-site on PYTHONPATH; nothing in it shadows the venv.
set -euo pipefail

RAY_VERSION=2.60.0

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${CONTROLNEXT_HOST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/controlnext-svd-host}
log() { printf '[setup_ray] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

python="$root/.venv/bin/python"
[ -x "$python" ] || die "no host venv at $root/.venv: run bash scripts/setup_host.sh first"
venv=$(cd "$root/.venv" && pwd -P)
key=$(printf '%s\n' "ray==$RAY_VERSION" "$venv" | sha256sum | cut -c1-16)
entry="$cache/ray-$key"

install() {
  local t0=$SECONDS tmp
  rm -rf "$entry"
  mkdir -p "$entry"
  tmp=$(mktemp -d)
  # what the venv lacks for Ray, as pip resolves it against the venv's own packages
  if ! "$python" -m pip install -q --disable-pip-version-check --dry-run --report "$tmp/report.json" \
      "ray==$RAY_VERSION" 2>"$tmp/pip.log"; then
    grep -v "^WARNING: Location" "$tmp/pip.log" | tail -n 20 >&2
    rm -rf "$tmp"
    die "pip could not resolve ray==$RAY_VERSION for the host venv (see above)"
  fi
  mapfile -t wanted < <("$python" -c 'import json, sys
for item in json.load(open(sys.argv[1]))["install"]:
    print(item["metadata"]["name"] + "==" + item["metadata"]["version"])' "$tmp/report.json")
  if ! "$python" -m pip install -q --disable-pip-version-check --no-deps --target "$entry/site" "${wanted[@]}" \
      2>"$tmp/pip.log"; then
    grep -v "^WARNING: Location" "$tmp/pip.log" | tail -n 20 >&2
    rm -rf "$tmp"
    die "could not install ${wanted[*]}"
  fi
  rm -rf "$tmp"
  printf '%s\n' "$venv" >"$entry/venv"
  touch "$entry/.complete"
  log "installed ${wanted[*]} into $entry/site in $((SECONDS - t0)) s"
}

if [ ! -f "$entry/.complete" ]; then
  mkdir -p "$cache"
  exec 9>"$cache/.lock-$(basename "$entry")"
  flock 9
  [ -f "$entry/.complete" ] || install
  exec 9>&-
fi
# entries whose venv setup_host.sh has pruned are of no use any more
for d in "$cache"/ray-????????????????; do
  [ -f "$d/.complete" ] && [ "$d" != "$entry" ] || continue
  [ -d "$(cat "$d/venv" 2>/dev/null)" ] && continue
  (flock -n 9 || exit 0; log "pruning $d (its venv is gone)"; rm -rf "$d") 9>"$cache/.lock-$(basename "$d")"
done
mkdir -p "$root/.host"
ln -sfn "$entry/site" "$root/.host/ray-site"
