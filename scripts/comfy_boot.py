"""Importing ComfyUI in-process, in the one order that works (shared by tests, benchmarks and scripts).

ComfyUI's arguments must be parsed before anything imports comfy.model_management (else it initialises for CUDA),
and utils.extra_config must be imported before ComfyUI's `nodes` (which puts comfy/ first on sys.path, where
`utils` would then resolve to comfy/utils.py). The checkout's root is never put on sys.path: the pack's nodes/
package would shadow ComfyUI's `nodes`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType


def boot_comfy(comfy_dir: Path | str, base_dir: Path | str, cpu: bool = True) -> ModuleType:
    """Parse ComfyUI's arguments for `base_dir` (API nodes off, in-memory database), import it; returns `nodes`.

    The caller's sys.argv is restored afterwards. Loading custom nodes is left to the caller.
    """
    comfy_dir = Path(comfy_dir)
    if str(comfy_dir) not in sys.path:
        sys.path.insert(0, str(comfy_dir))
    import comfy.options

    comfy.options.enable_args_parsing()
    argv, sys.argv = sys.argv, ["main.py", "--base-directory", str(base_dir), "--disable-api-nodes",
                                "--database-url", "sqlite:///:memory:", *(["--cpu"] if cpu else [])]
    try:
        from comfy.cli_args import args  # noqa: F401  (parses the argv above)
    finally:
        sys.argv = argv
    import utils.extra_config  # noqa: F401

    # isort: split
    import nodes

    if Path(nodes.__file__).resolve().parent != comfy_dir.resolve():
        raise RuntimeError(f"`import nodes` found {nodes.__file__}, not ComfyUI's: something shadows it")
    return nodes
