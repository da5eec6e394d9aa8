"""Run as a script: boots ComfyUI (CPU), loads the pack as ComfyUI does, prints what that import added as JSON."""

import asyncio
import json
import sys
import time

comfy_dir, base_dir, pack_dir = sys.argv[1:4]
sys.path.insert(0, comfy_dir)
import comfy.options  # noqa: E402

comfy.options.enable_args_parsing()
sys.argv = ["main.py", "--cpu", "--base-directory", base_dir, "--disable-api-nodes", "--database-url",
            "sqlite:///:memory:"]
import utils.extra_config  # noqa: E402,F401
from comfy.cli_args import args  # noqa: E402,F401

# isort: split
import nodes  # noqa: E402

asyncio.run(nodes.init_builtin_extra_nodes())
before = set(sys.modules)
t0 = time.perf_counter()
ok = asyncio.run(nodes.load_custom_node(pack_dir))
seconds = time.perf_counter() - t0
added = sorted({m.split(".")[0] for m in set(sys.modules) - before if "/" not in m and "_x_" not in m})
print(json.dumps({"ok": ok, "seconds": seconds, "added_top_level_modules": added}))
