#!/usr/bin/env bash
# Starts the real ComfyUI host with this pack (set-up included) and lists the pack's nodes once it answers.
#   bash scripts/serve.sh               # serve the UI on http://127.0.0.1:8188 until Ctrl-C
#   bash scripts/serve.sh --list-nodes  # start, list the pack's nodes, stop
#   PORT=8190 bash scripts/serve.sh     # another port; extra ComfyUI flags go in COMFY_ARGS
# Models go in .host/base/models/ (controlnext/, dwpose/, diffusion_models/, checkpoints/ ...).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/scripts/setup_host.sh"
port=${PORT:-8188}
device_flag=()
"$root/.venv/bin/python" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null \
  || device_flag=(--cpu)
cd "$root/.host/ComfyUI"
# shellcheck disable=SC2086
"$root/.venv/bin/python" main.py "${device_flag[@]}" --listen 127.0.0.1 --port "$port" --disable-auto-launch \
  --base-directory "$root/.host/base" --database-url "sqlite:///$root/.host/base/user/comfyui.db" ${COMFY_ARGS:-} &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null' EXIT INT TERM
"$root/.venv/bin/python" "$root/scripts/list_nodes.py" "http://127.0.0.1:$port"
if [ "${1:-}" = "--list-nodes" ]; then exit 0; fi
echo "ComfyUI with the ControlNeXt-SVD pack: http://127.0.0.1:$port (Ctrl-C stops it)"
wait $pid
