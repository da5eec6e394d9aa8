"""The newest ComfyUI's (0.38.x) PromptExecutor, as far as how it is constructed and what it reads of cache_args.

Read from the newest source (GitHub Comfy-Org/ComfyUI, comfyui_version.py 0.38.1; execution.py at commits
cb707e9c29a8 and 04e2a9143342, main.py at 02018c7eb588):
- execution.py, PromptExecutor.__init__(self, server, cache_type=False, cache_args=None, asset_manager=None): stores
  cache_args as given (no defaults filled in); asset_manager is new and optional (None -> NoAssets(args)).
- execution.py, PromptExecutor.execute_async: right after sending "execution_start" (and notifying cache providers),
  before its try block, it reads cache_args["ram"] and cache_args["ram_inactive"] by plain subscript and turns each
  into bytes (int(value * 1024 ** 3)): a missing key raises KeyError, a None value TypeError, for every cache type
  (CacheType.NONE included), before any node runs.
- execution.py, CacheSet.__init__: unchanged from 0.3.75 (.get("ram", 16.0) / .get("lru", 0)).
- main.py, prompt_worker: builds cache_args={"lru": args.cache_lru, "ram": cache_ram, "ram_inactive":
  cache_ram_inactive}, both ram values 0 with --cache-none.
0.3.75 (.host/ComfyUI/execution.py) takes no asset_manager and reads only cache_args["ram"], after each node.

Emulated here: a subclass of the installed (0.3.75) PromptExecutor that takes asset_manager and performs the two
reads at the start of execute_async, then runs 0.3.75's execution unchanged. One difference: the newest has already
sent "execution_start" when the KeyError is raised; here it is raised just before (the caller sees the same error).

Use:
    with newest_executor() as seen: ...        # in-process (execution must be imported): undone on exit
    python tests/newest_comfy/executor.py scripts/render.py ARGS...   # runs a script with the emulation installed as
                                                                    # soon as the script imports `execution`
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import runpy
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

MARKER = "[newest_comfy] execution.PromptExecutor emulates ComfyUI 0.38.x"


def newest_executor_class(base: type, seen: list[dict] | None = None) -> type:
    """A PromptExecutor that is constructed and reads cache_args as the newest one does; `seen` collects the
    cache_args of each run (proof the emulation was used)."""

    class NewestPromptExecutor(base):
        def __init__(self, server: Any, cache_type: Any = False, cache_args: Any = None,
                     asset_manager: Any = None) -> None:
            super().__init__(server, cache_type=cache_type, cache_args=cache_args)
            # newest: asset_manager or NoAssets(args); 0.3.75 has no asset registry to give it
            self.asset_manager = asset_manager

        async def execute_async(self, prompt: Any, prompt_id: Any, extra_data: Any = None,
                                execute_outputs: Any = None) -> None:
            if seen is not None:
                seen.append(self.cache_args)
            # newest execute_async: both keys by subscript, each turned into bytes (KeyError / TypeError as there)
            ram_headroom = int(self.cache_args["ram"] * (1024 ** 3))
            ram_inactive_headroom = int(self.cache_args["ram_inactive"] * (1024 ** 3))
            del ram_headroom, ram_inactive_headroom  # only the RAM-pressure cache uses them
            await super().execute_async(prompt, prompt_id, {} if extra_data is None else extra_data,
                                        [] if execute_outputs is None else execute_outputs)

    return NewestPromptExecutor


def install(execution: ModuleType, seen: list[dict] | None = None) -> type:
    """Replace execution.PromptExecutor with the emulation; returns the class it replaced."""
    original = execution.PromptExecutor
    execution.PromptExecutor = newest_executor_class(original, seen)
    return original


@contextlib.contextmanager
def newest_executor() -> Iterator[list[dict]]:
    """The emulation for the duration of the block (ComfyUI's `execution` must already be imported); yields the
    list of cache_args each run was given."""
    import execution

    seen: list[dict] = []
    original = install(execution, seen)
    try:
        yield seen
    finally:
        execution.PromptExecutor = original


class _InstallOnImport(importlib.abc.MetaPathFinder):
    """Installs the emulation the moment ComfyUI's `execution` module has been executed (a script boots ComfyUI
    itself, so it cannot be installed earlier)."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != "execution":
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        sys.meta_path.remove(self)
        real_loader = spec.loader

        class Loader(importlib.abc.Loader):
            def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
                return real_loader.create_module(spec)

            def exec_module(self, module: ModuleType) -> None:
                real_loader.exec_module(module)
                install(module)
                print(MARKER, flush=True)

        spec.loader = Loader()
        return spec


def run_script(script: Path, args: list[str]) -> None:
    """Run `script` as `python script args...` would, with the emulation installed when it imports `execution`."""
    sys.argv = [str(script), *args]
    sys.path[0] = str(script.resolve().parent)  # as for `python script`: its folder first, not this one's
    sys.meta_path.insert(0, _InstallOnImport())
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python tests/newest_comfy/executor.py SCRIPT [ARGS...]")
    run_script(Path(sys.argv[1]), sys.argv[2:])
