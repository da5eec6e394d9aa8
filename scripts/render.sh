#!/usr/bin/env bash
# Renders a video from a reference photo and a dance (or pose) video through the example workflow, headless.
#   bash scripts/render.sh --ref photo.jpg --driving dance.mp4 --out out.mp4            # real models (a GPU)
#   bash scripts/render.sh --tiny --ref photo.jpg --driving dance.mp4 --out check.mp4   # plumbing check, noise
# Runs scripts/setup_host.sh first (idempotent), then scripts/render.py with the host's venv; all options are
# render.py's (--pose-video --width --height --frames --stride --steps --seed --workflow; see --help).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/scripts/setup_host.sh"
exec "$root/.venv/bin/python" "$root/scripts/render.py" "$@"
