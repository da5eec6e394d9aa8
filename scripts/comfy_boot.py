"""Importing ComfyUI in-process in the one order that works, and running prompts headless in a way every supported
ComfyUI version accepts (shared by tests, benchmarks and scripts).

ComfyUI's arguments must be parsed before anything imports comfy.model_management (else it initialises for CUDA),
and utils.extra_config must be imported before ComfyUI's `nodes` (which puts comfy/ first on sys.path, where
`utils` would then resolve to comfy/utils.py). The checkout's root is never put on sys.path: the pack's nodes/
package would shadow ComfyUI's `nodes`.
"""

# no `from __future__ import annotations`: with string annotations @dataclass looks its module up in sys.modules, and
# tests and benchmarks load this file by path without registering it there
import asyncio
import importlib.util
import inspect
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

# What a PromptExecutor with no cache is given. Every key any supported version reads is present, each with main.py's
# value for --cache-none: 0.3.75 reads cache_args["ram"] after each node (execution.py, PromptExecutor.execute_async);
# the newest (0.38.x) reads cache_args["ram"] and cache_args["ram_inactive"] at the start of execute_async (both
# multiplied by 1024**3, so numbers, never None) and main.py's prompt_worker passes
# {"lru": args.cache_lru, "ram": cache_ram, "ram_inactive": cache_ram_inactive}, with both ram values 0 under
# --cache-none. CacheSet only .get()s "lru" and "ram" for the LRU and RAM-pressure caches.
NO_CACHE_ARGS: dict[str, float] = {"lru": 0, "ram": 0.0, "ram_inactive": 0.0}


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


def import_pack_package(subdir: str, alias: str) -> ModuleType:
    """The pack's plain-code package `subdir` (dwpose, controlnext) imported from its files under the private name
    `alias`, for benchmarks and scripts that use the model code without ComfyUI loading the pack (the checkout's root
    is never put on sys.path). Its submodules then import as `alias.name`."""
    if alias not in sys.modules:
        folder = Path(__file__).resolve().parents[1] / subdir
        spec = importlib.util.spec_from_file_location(alias, folder / "__init__.py",
                                                      submodule_search_locations=[str(folder)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[alias] = module
        spec.loader.exec_module(module)
    return sys.modules[alias]


def make_executor(execution: ModuleType, server: Any, cache_type: Any = None) -> Any:
    """ComfyUI's own PromptExecutor, by default with no cache (one run, no reuse of outputs between runs; pass e.g.
    execution.CacheType.CLASSIC to keep outputs between prompts), built with only the arguments every version
    takes: the newest adds an optional `asset_manager` whose default (no asset registry) suits a headless run, so it
    is never passed."""
    executor_class = execution.PromptExecutor
    params = inspect.signature(executor_class).parameters
    missing = [name for name in ("cache_type", "cache_args") if name not in params]
    if missing:
        raise RuntimeError(f"this ComfyUI's execution.PromptExecutor takes no {', '.join(missing)} argument: it is not "
                           "a version the pack supports (see the README's supported ComfyUI versions)")
    cache_type = execution.CacheType.NONE if cache_type is None else cache_type
    return executor_class(server, cache_type=cache_type, cache_args=dict(NO_CACHE_ARGS))


@dataclass
class PromptRun:
    """What validating and executing one API-format prompt gave."""

    prompt_id: str
    valid: bool
    error: Any = None  # validate_prompt's error (a dict) when not valid
    node_errors: dict = field(default_factory=dict)
    success: bool = False
    outputs: dict[str, Any] = field(default_factory=dict)  # the UI outputs per node (history "outputs")
    messages: list[tuple[str, Any]] = field(default_factory=list)  # the executor's status messages

    def execution_error(self) -> dict | None:
        """The "execution_error" message's data, if a node failed."""
        return next((data for event, data in self.messages if event == "execution_error"), None)


def run_prompt(execution: ModuleType, server: Any, graph: dict[str, Any],
               extra_data: dict[str, Any] | None = None) -> PromptRun:
    """Validate `graph` with ComfyUI's validate_prompt and, when valid, run its outputs with make_executor's executor.

    `server` is what the executor reports to (ComfyUI's PromptServer, or an object with its attributes). Call it from
    synchronous code: both steps run their own event loop.
    """
    prompt_id = str(uuid.uuid4())
    valid, error, outputs, node_errors = asyncio.run(execution.validate_prompt(prompt_id, graph, None))
    if not valid:
        return PromptRun(prompt_id, False, error, node_errors or {})
    executor = make_executor(execution, server)
    executor.execute(graph, prompt_id, dict(extra_data or {}), outputs)
    return PromptRun(prompt_id, True, None, node_errors or {}, bool(executor.success),
                     executor.history_result.get("outputs", {}), list(executor.status_messages))
