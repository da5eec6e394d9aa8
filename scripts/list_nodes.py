"""Waits for a ComfyUI server to answer, then prints the nodes of this pack it has loaded."""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request

PACK_MODULE = "custom_nodes.controlnext-svd"


def main(url: str, timeout: float = 180.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/object_info", timeout=30) as r:
                info = json.loads(r.read())
            break
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                print(f"ComfyUI did not answer at {url} within {timeout:.0f} s", file=sys.stderr)
                return 1
            time.sleep(0.5)
    ours = {k: v for k, v in info.items() if v.get("python_module") == PACK_MODULE}
    if not ours:
        print(f"The pack is not loaded ({len(info)} nodes, none from {PACK_MODULE}): see the log for IMPORT FAILED",
              file=sys.stderr)
        return 1
    print(f"{len(ours)} ControlNeXt-SVD nodes in ComfyUI at {url}:")
    for node_id, node in sorted(ours.items(), key=lambda kv: (kv[1]["category"], kv[0])):
        print(f"  {node_id:32s} [{node['category']}] {node['display_name']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8188"))
