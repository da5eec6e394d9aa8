#!/usr/bin/env bash
# Renders every job of a manifest (CSV or JSONL: id, ref, driving, ...) in one ComfyUI that keeps its models loaded.
#   bash scripts/render_batch.sh --manifest jobs.csv --out renders/           # real models (a GPU)
#   bash scripts/render_batch.sh --tiny --manifest jobs.csv --out check/      # plumbing check, noise
#   bash scripts/render_batch.sh --manifest jobs.csv --out renders/ --ray local --workers 2   # Ray on this machine
#   bash scripts/render_batch.sh --manifest jobs.csv --out /shared/renders/ --ray HEAD_IP:6379  # a Ray cluster
# Runs scripts/setup_host.sh first (idempotent), and scripts/setup_ray.sh when --ray is given, then
# scripts/render_batch.py with the host's venv; see its --help (--retry-failed, --threads, --max-attempts).
# Outputs: DIR/<id>.mp4, DIR/<id>-side-by-side.mp4, DIR/results.jsonl; a rerun resumes.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/scripts/setup_host.sh"
for arg in "$@"; do
  case "$arg" in --ray|--ray=*) bash "$root/scripts/setup_ray.sh"; break ;; esac
done
exec "$root/.venv/bin/python" "$root/scripts/render_batch.py" "$@"
