"""Boots the real ComfyUI host in-process (at module level: see the host spec's traps) and offers graph execution.

Order matters: ComfyUI's arguments must be parsed before anything imports comfy.model_management (else it
initialises for CUDA), and utils.extra_config must be imported before ComfyUI's `nodes` (which puts comfy/ first on
sys.path). This checkout's root is never put on sys.path: its nodes/ package would shadow ComfyUI's `nodes`.
"""

from __future__ import annotations

import asyncio
import atexit
import importlib
import importlib.util
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
COMFY = ROOT / ".host" / "ComfyUI"
PACK_LINK_NAME = "controlnext-svd"
TEST_PACK_LINK_NAME = "controlnext_test_nodes"
SHARED_MEDIA = ROOT.parent / "shared" / "media"

if not (COMFY / "main.py").is_file():
    raise RuntimeError(f"No ComfyUI host at {COMFY}: run `bash scripts/setup_host.sh` (or scripts/test.sh) first.")

# A throw-away ComfyUI base directory per test session: models, input, output and custom_nodes of its own.
BASE = Path(tempfile.mkdtemp(prefix="controlnext-test-base-"))
atexit.register(shutil.rmtree, BASE, True)
for sub in ("custom_nodes", "models", "input", "output", "temp", "user"):
    (BASE / sub).mkdir()
(BASE / "custom_nodes" / PACK_LINK_NAME).symlink_to(ROOT, target_is_directory=True)
(BASE / "custom_nodes" / TEST_PACK_LINK_NAME).symlink_to(TESTS / "tiny_pack", target_is_directory=True)

def _load_script_module(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


comfy_boot = _load_script_module("comfy_boot")
nodes = comfy_boot.boot_comfy(COMFY, BASE, cpu=True)

# isort: split
import execution  # noqa: E402
import folder_paths  # noqa: E402
import server  # noqa: E402


class StubServer:
    """The attributes PromptExecutor uses of ComfyUI's PromptServer; records every message it is sent."""

    def __init__(self) -> None:
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.sockets_metadata: dict = {}
        self.messages: list[tuple[str, Any]] = []

    def send_sync(self, event: str, data: Any, sid: str | None = None) -> None:
        self.messages.append((event, data))

    def queue_updated(self) -> None:
        pass

    def send_progress_text(self, text: str, node_id: str, sid: str | None = None) -> None:
        self.messages.append(("progress_text", {"text": text, "node": node_id}))


STUB_SERVER = StubServer()
server.PromptServer.instance = STUB_SERVER
asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))

PACK_MODULE_NAME = os.path.join(folder_paths.get_folder_paths("custom_nodes")[0], PACK_LINK_NAME).replace(".", "_x_")
if PACK_MODULE_NAME not in sys.modules or "ControlNeXtEnvironmentInfo" not in nodes.NODE_CLASS_MAPPINGS:
    raise RuntimeError("ComfyUI did not load the pack: see the log above for its import error")


def pack_import(submodule: str) -> ModuleType:
    """A module of the pack, as ComfyUI loaded it (same objects the nodes use), e.g. pack_import('controlnext.x')."""
    return importlib.import_module(f"{PACK_MODULE_NAME}.{submodule}")


@dataclass
class GraphRun:
    success: bool
    outputs: dict[str, Any]
    messages: list[tuple[str, Any]] = field(default_factory=list)

    def error(self) -> dict | None:
        for event, data in self.messages:
            if event == "execution_error":
                return data
        return None


class GraphInvalid(Exception):
    def __init__(self, error: Any, node_errors: Any) -> None:
        super().__init__(f"{error}\n{node_errors}")
        self.error = error
        self.node_errors = node_errors


def run_graph(graph: dict[str, Any]) -> GraphRun:
    """Validate and execute an API-format graph with ComfyUI's own validate_prompt and PromptExecutor (no cache), the
    way scripts/render.py does (scripts/comfy_boot.py: run_prompt)."""
    STUB_SERVER.messages.clear()
    run = comfy_boot.run_prompt(execution, STUB_SERVER, graph)
    if not run.valid:
        raise GraphInvalid(run.error, run.node_errors)
    return GraphRun(run.success, run.outputs, run.messages)


@pytest.fixture
def comfy_base() -> Path:
    """The session's ComfyUI base directory (models/, input/, output/ ...)."""
    return BASE


@pytest.fixture
def session_model_file(comfy_base: Path):
    """Path factory for files in the session's shared models folders (`folder/name`); each is removed afterwards, so
    tests that expect a model file to be absent are not affected by the order tests run in."""
    created: list[Path] = []

    def make(folder: str, name: str) -> Path:
        path = comfy_base / "models" / folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        created.append(path)
        return path

    yield make
    for path in created:
        path.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models on a shared 2-core host: two intra-op threads spin against each other (measured 10-40x slower)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
