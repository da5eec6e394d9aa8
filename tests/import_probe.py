"""Run as a script: boots ComfyUI (CPU), loads the pack as ComfyUI does, prints what that import added as JSON."""

import asyncio
import importlib.util
import json
import sys
import time
from pathlib import Path

comfy_dir, base_dir, pack_dir = sys.argv[1:4]
_spec = importlib.util.spec_from_file_location(
    "comfy_boot", Path(__file__).resolve().parents[1] / "scripts" / "comfy_boot.py")
comfy_boot = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(comfy_boot)
nodes = comfy_boot.boot_comfy(comfy_dir, base_dir, cpu=True)

asyncio.run(nodes.init_builtin_extra_nodes())
before = set(sys.modules)
t0 = time.perf_counter()
ok = asyncio.run(nodes.load_custom_node(pack_dir))
seconds = time.perf_counter() - t0
added = sorted({m.split(".")[0] for m in set(sys.modules) - before if "/" not in m and "_x_" not in m})
print(json.dumps({"ok": ok, "seconds": seconds, "added_top_level_modules": added}))
