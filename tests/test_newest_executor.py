"""Headless execution as the newest ComfyUI (0.38.x) requires it: its PromptExecutor reads cache_args["ram"] and
cache_args["ram_inactive"] (tests/newest_comfy/executor.py, from the newest source). The renderer and the test
harness build their executor with scripts/comfy_boot.py, which both versions accept; each run here gives the same
output as under 0.3.75's own executor."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import av
import execution
import folder_paths
import numpy as np
import pytest
import torch
from PIL import Image
from test_full_graph import generation_graph, install_tiny_models, read_outputs
from test_render import write_synthetic_video

from conftest import ROOT, STUB_SERVER, run_graph
from newest_comfy.executor import MARKER, newest_executor

EMULATOR = ROOT / "tests" / "newest_comfy" / "executor.py"
RENDER = ROOT / "scripts" / "render.py"
TIMEOUT = 480  # per render; a render takes ~30 s alone, several minutes on a machine loaded 5x over


def test_the_emulation_rejects_cache_args_without_ram_inactive():
    """What broke render.py on the newest ComfyUI: the cache_args that 0.3.75's main.py passes."""
    graph = {"1": {"class_type": "ControlNeXtEnvironmentInfo", "inputs": {"check_onnxruntime": False}}}
    original = execution.PromptExecutor
    with newest_executor():
        executor = execution.PromptExecutor(STUB_SERVER, cache_type=execution.CacheType.NONE,
                                            cache_args={"lru": 0, "ram": 0})
        with pytest.raises(KeyError, match="ram_inactive"):
            executor.execute(graph, "old-cache-args", {}, ["1"])
    assert execution.PromptExecutor is original  # the emulation is undone after the block


def test_graph_runs_under_the_newest_executor_with_the_same_outputs(comfy_base):
    install_tiny_models(comfy_base)
    normal = run_graph(generation_graph(5))
    assert normal.success, normal.error()
    with newest_executor() as seen:
        newest = run_graph(generation_graph(5))
    assert newest.success, newest.error()
    assert seen and set(seen[0]) >= {"ram", "ram_inactive"}  # the emulated executor ran the graph
    (lat_a, img_a), (lat_b, img_b) = (read_outputs(r.outputs, folder_paths.get_output_directory())
                                      for r in (normal, newest))
    assert torch.equal(lat_a, lat_b)
    assert all(np.array_equal(x, y) for x, y in zip(img_a, img_b, strict=True))


def decode_frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def test_render_runs_under_the_newest_executor_with_the_same_video(tmp_path):
    """scripts/render.py --tiny as a subprocess, once as users run it and once with the newest executor emulated
    (installed when the script imports ComfyUI's execution module); both videos are identical."""
    write_synthetic_video(tmp_path / "dance.mp4", frames=6)
    ref = np.full((160, 120, 3), 40, np.uint8)
    ref[20:150, 40:80] = 230
    Image.fromarray(ref).save(tmp_path / "ref.png")
    args = ["--tiny", "--ref", str(tmp_path / "ref.png"), "--driving", str(tmp_path / "dance.mp4"), "--frames", "3",
            "--width", "64", "--height", "64", "--steps", "1", "--seed", "4"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    runs = {
        "normal": [sys.executable, str(RENDER)],
        "newest": [sys.executable, str(EMULATOR), str(RENDER)],
    }
    procs = {name: subprocess.Popen([*cmd, *args, "--out", str(tmp_path / name / "out.mp4")], cwd=ROOT, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, cmd in runs.items()}
    results = {}
    try:
        for name, proc in procs.items():
            stdout, stderr = proc.communicate(timeout=TIMEOUT)
            results[name] = (proc.returncode, stdout, stderr)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for name, (code, _, stderr) in results.items():
        assert code == 0, f"{name} render failed:\n{stderr[-3000:]}"
    assert MARKER in results["newest"][1] and MARKER not in results["normal"][1]
    for video in ("out.mp4", "out-side-by-side.mp4"):
        normal, newest = (decode_frames(tmp_path / name / video) for name in runs)
        assert len(normal) == 3 and len(newest) == len(normal)
        assert all(np.array_equal(a, b) for a, b in zip(normal, newest, strict=True)), video
