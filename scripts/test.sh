#!/usr/bin/env bash
# The whole test suite on a fresh machine: builds (or reuses) the host, lints, then runs pytest in the real ComfyUI.
#   bash scripts/test.sh [pytest args...]
#   CONTROLNEXT_COMFYUI=v0.38.1 bash scripts/test.sh   # the same suite on another ComfyUI: a git ref of
#                                                     # Comfy-Org/ComfyUI or a ComfyUI folder (scripts/setup_host.sh)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bash scripts/setup_host.sh
bash scripts/setup_browser.sh
bash scripts/setup_ray.sh
.venv/bin/ruff check .
# run the venv's pytest script, not `python -m pytest`: the latter puts this checkout on sys.path, where the pack's
# nodes/ package would shadow ComfyUI's nodes module
exec .venv/bin/pytest "$@"
