#!/usr/bin/env bash
# Ray's own command line with the pack's Ray (scripts/setup_ray.sh) and the host venv, for a cluster over several
# machines that scripts/render_batch.py --ray ADDRESS then uses. On every machine, in a checkout set up at the same
# path as on the machine that runs the batch:
#   bash scripts/ray.sh start --head --port 6379            # the first machine
#   bash scripts/ray.sh start --address HEAD_IP:6379        # each other machine
#   bash scripts/ray.sh status                              # what the cluster has (GPUs, CPUs)
#   bash scripts/ray.sh stop                                # on each machine, when done
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/scripts/setup_host.sh"
bash "$root/scripts/setup_ray.sh"
export RAY_USAGE_STATS_ENABLED=${RAY_USAGE_STATS_ENABLED:-0}
export PYTHONPATH="$root/.host/ray-site${PYTHONPATH:+:$PYTHONPATH}"
exec "$root/.venv/bin/python" -c 'import sys; from ray.scripts.scripts import main; sys.argv[0] = "ray"; sys.exit(main())' "$@"
