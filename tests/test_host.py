"""The pack loads in the real in-process ComfyUI host, and graphs run through ComfyUI's own executor."""

from __future__ import annotations

import sys

import nodes
import tomllib
import torch

from conftest import COMFY, PACK_MODULE_NAME, ROOT, pack_import, run_graph


def test_comfyui_is_0_3_75():
    import comfyui_version

    assert comfyui_version.__version__ == "0.3.75"
    assert nodes.__file__.startswith(str(COMFY.resolve())) or nodes.__file__.startswith(str(COMFY))


def test_pack_root_is_never_on_sys_path():
    roots = {str(ROOT), str(ROOT.resolve())}
    assert not roots.intersection(sys.path)
    assert "ControlNeXtEnvironmentInfo" in nodes.NODE_CLASS_MAPPINGS
    assert sys.modules[PACK_MODULE_NAME].__file__ == str(ROOT / "__init__.py") or \
        sys.modules[PACK_MODULE_NAME].__file__.endswith("controlnext-svd/__init__.py")


def test_version_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert pack_import("controlnext").VERSION == project["version"]


def test_environment_node_reports_device_and_onnxruntime():
    run = run_graph({"1": {"class_type": "ControlNeXtEnvironmentInfo", "inputs": {"check_onnxruntime": True}}})
    assert run.success, run.error()
    text = run.outputs["1"]["text"][0]
    assert f"pack {pack_import('controlnext').VERSION}" in text
    assert f"torch {torch.__version__}" in text
    assert "device cpu: fp16 yes, bf16 yes" in text
    import onnxruntime

    assert f"onnxruntime {onnxruntime.__version__}" in text and "CPUExecutionProvider" in text


def test_native_ksampler_runs_a_tiny_svd_graph_deterministically():
    graph = {
        "1": {"class_type": "ControlNeXtTestTinySVD", "inputs": {"seed": 3}},
        "2": {"class_type": "ControlNeXtTestTinySVDConditioning",
              "inputs": {"frames": 4, "width": 64, "height": 64, "seed": 1}},
        "3": {"class_type": "VideoLinearCFGGuidance", "inputs": {"model": ["1", 0], "min_cfg": 1.0}},
        "4": {"class_type": "KSampler", "inputs": {
            "model": ["3", 0], "positive": ["2", 0], "negative": ["2", 1], "latent_image": ["2", 2],
            "seed": 7, "steps": 3, "cfg": 2.5, "sampler_name": "euler", "scheduler": "karras", "denoise": 1.0}},
        "5": {"class_type": "SaveLatent", "inputs": {"samples": ["4", 0], "filename_prefix": "tiny_svd"}},
    }
    import folder_paths
    import safetensors.torch

    results = []
    for _ in range(2):
        run = run_graph(graph)
        assert run.success, run.error()
        saved = run.outputs["5"]["latents"][0]
        path = f"{folder_paths.get_output_directory()}/{saved['subfolder']}/{saved['filename']}"
        results.append(safetensors.torch.load_file(path)["latent_tensor"])
    assert results[0].shape == (4, 4, 8, 8)
    assert torch.isfinite(results[0]).all() and results[0].abs().max() > 0
    assert torch.equal(results[0], results[1])


def test_importing_the_pack_loads_no_heavy_modules(tmp_path):
    """ComfyUI imports every pack at start-up: ours must not pull in cv2, onnxruntime or model code there."""
    import json
    import subprocess

    (tmp_path / "custom_nodes").mkdir()
    pack = tmp_path / "custom_nodes" / "controlnext-svd"
    pack.symlink_to(ROOT, target_is_directory=True)
    out = subprocess.run([sys.executable, str(ROOT / "tests" / "import_probe.py"), str(COMFY), str(tmp_path),
                          str(pack)], capture_output=True, text=True, timeout=300, cwd=COMFY)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["ok"]
    heavy = {"cv2", "onnxruntime", "onnx", "diffusers", "scipy", "huggingface_hub"}
    assert not heavy.intersection(report["added_top_level_modules"]), report
