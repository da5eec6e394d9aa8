"""The UNet loader and the control network under newer ComfyUI's dynamic VRAM loading (emulated on 0.3.75).

tests/newest_comfy/dynamic_vram.py emulates, from the newest source, what the pack meets there: comfy.ops Linear layers
that hold no weight until their state dict is loaded (then in the file's dtype), read-only memory-mapped safetensors,
and the host's own patcher class (comfy.model_patcher.CoreModelPatcher, which loads with assign=is_dynamic()).
The real nodes load the tiny UNet files and the control network in real graphs; outputs must equal the normal run.
"""

from __future__ import annotations

from pathlib import Path

import comfy.model_patcher
import comfy.ops
import comfy.sd
import folder_paths
import numpy as np
import pytest
import safetensors.torch
import torch
from diffusers import UNetSpatioTemporalConditionModel
from PIL import Image

from conftest import BASE, pack_import, run_graph
from newest_comfy.dynamic_vram import core_model_patcher, dynamic_vram
from tiny_pack.tiny_controlnext import tiny_controlnext_state_dict
from tiny_pack.tiny_svd import build_tiny_svd

loader = pack_import("controlnext.controlnext_loader")
FRAMES = 3
UNET_FILES = [("tiny_dv_diffusers.bin", "fp32"), ("tiny_dv_diffusers_fp16.safetensors", "fp16"),
              ("tiny_dv_comfy.safetensors", "fp32")]
CONTROL_FILE = "tiny_dv_control_fp16.safetensors"
pytestmark = pytest.mark.usefixtures("one_torch_thread")




@torch.no_grad()
def _diffusers_unet_sd(seed: int = 0) -> dict[str, torch.Tensor]:
    """A two-level SVD UNet in diffusers layout (64 channels, one 64-wide head), seeded."""
    torch.manual_seed(seed)
    unet = UNetSpatioTemporalConditionModel(
        block_out_channels=(64, 64), num_attention_heads=(1, 1), cross_attention_dim=64,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"))
    gen = torch.Generator().manual_seed(seed)
    for name, p in unet.named_parameters():  # distinct, non-trivial values everywhere (zero-init layers included)
        if p.ndim == 1 and "norm" in name and name.endswith("weight"):
            p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
        else:
            p.copy_(torch.randn(p.shape, generator=gen) * (0.05 if p.ndim == 1 else 0.5 / p[0].numel() ** 0.5))
    return {k: v.contiguous() for k, v in unet.state_dict().items()}


@pytest.fixture(scope="module")
def model_files() -> Path:
    base = BASE
    controlnext, diffusion = base / "models" / "controlnext", base / "models" / "diffusion_models"
    for folder in (controlnext, diffusion, base / "input"):
        folder.mkdir(parents=True, exist_ok=True)
    diffusers = _diffusers_unet_sd()
    torch.save(diffusers, controlnext / "tiny_dv_diffusers.bin")
    safetensors.torch.save_file({k: v.half() for k, v in diffusers.items()},
                                diffusion / "tiny_dv_diffusers_fp16.safetensors")
    comfy_keys = build_tiny_svd(seed=7, channel_mult=[1], num_res_blocks=[2], transformer_depth=[1, 1],
                                transformer_depth_output=[1, 1, 1]).diffusion_model.state_dict()
    safetensors.torch.save_file({"model.diffusion_model." + k: v.contiguous() for k, v in comfy_keys.items()},
                                diffusion / "tiny_dv_comfy.safetensors")
    safetensors.torch.save_file(tiny_controlnext_state_dict(seed=3, output_channels=64, time_gain=4.0,
                                                            dtype=torch.float16), controlnext / CONTROL_FILE)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(base / "input" / "tiny_dv_pose.png")
    created = [controlnext / "tiny_dv_diffusers.bin", diffusion / "tiny_dv_diffusers_fp16.safetensors",
               diffusion / "tiny_dv_comfy.safetensors", controlnext / CONTROL_FILE, base / "input" / "tiny_dv_pose.png"]
    yield base
    for path in created:
        path.unlink(missing_ok=True)


def _graph(unet_name: str, weight_dtype: str, prefix: str) -> dict:
    return {
        "1": {"class_type": "ControlNeXtUNetLoader", "inputs": {"unet_name": unet_name, "weight_dtype": weight_dtype}},
        "2": {"class_type": "ControlNeXtLoader", "inputs": {"controlnext_name": CONTROL_FILE}},
        "3": {"class_type": "LoadImage", "inputs": {"image": "tiny_dv_pose.png"}},
        "4": {"class_type": "RepeatImageBatch", "inputs": {"image": ["3", 0], "amount": FRAMES}},
        "5": {"class_type": "ControlNeXtApply", "inputs": {
            "model": ["1", 0], "controlnext": ["2", 0], "pose_images": ["4", 0], "strength": 1.0}},
        "6": {"class_type": "ControlNeXtTestTinySVDConditioning",
              "inputs": {"frames": FRAMES, "width": 64, "height": 64, "seed": 2}},
        "7": {"class_type": "KSampler", "inputs": {
            "model": ["5", 0], "positive": ["6", 0], "negative": ["6", 1], "latent_image": ["6", 2], "seed": 5,
            "steps": 1, "cfg": 2.0, "sampler_name": "euler", "scheduler": "karras", "denoise": 1.0}},
        "8": {"class_type": "SaveLatent", "inputs": {"samples": ["7", 0], "filename_prefix": prefix}},
    }


def _sample(unet_name: str, weight_dtype: str, prefix: str) -> torch.Tensor:
    run = run_graph(_graph(unet_name, weight_dtype, prefix))
    assert run.success, run.error()
    saved = run.outputs["8"]["latents"][0]
    path = Path(folder_paths.get_output_directory()) / saved["subfolder"] / saved["filename"]
    return safetensors.torch.load_file(str(path))["latent_tensor"]


@pytest.mark.parametrize(("unet_name", "weight_dtype"), UNET_FILES)
def test_graph_under_dynamic_vram_equals_the_normal_run(model_files, unet_name, weight_dtype):
    normal = _sample(unet_name, weight_dtype, "dv_normal")
    assert torch.isfinite(normal).all() and normal.abs().mean() > 0.05
    with dynamic_vram():
        assert comfy.ops.manual_cast.Linear(4, 2).weight is None  # the emulation is in force
        emulated = _sample(unet_name, weight_dtype, "dv_emulated")
    assert torch.equal(emulated, normal)


def test_control_network_dtypes_under_dynamic_vram(model_files):
    """Each compute-dtype copy holds every tensor in that dtype, also the Linear weights created at load time."""
    path = str(model_files / "models" / "controlnext" / CONTROL_FILE)
    sd = safetensors.torch.load_file(path)
    poses, t = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)), torch.tensor([0.4, 0.4])
    normal = loader.load_controlnext(path).patcher(torch.float32).model
    with dynamic_vram():
        model = loader.load_controlnext(path)
        for dtype in (torch.float16, torch.float32, torch.bfloat16):
            net = model.patcher(dtype).model
            params = dict(net.named_parameters())
            assert params.keys() == sd.keys()
            assert {p.dtype for p in params.values()} == {dtype}, dtype
            for key, value in sd.items():
                assert torch.equal(params[key], value.to(dtype)), key
        with torch.no_grad():
            emulated_out = model.patcher(torch.float32).model(poses, t)
    with torch.no_grad():
        assert torch.equal(emulated_out, normal(poses, t))


def test_patchers_are_the_hosts_core_model_patcher(model_files):
    """The UNet is the very patcher core's loader built, the control network is wrapped in the same class."""
    built = []
    node = pack_import("nodes.unet_loader_node").ControlNeXtUNetLoader
    with dynamic_vram(), core_model_patcher(dynamic=False) as core_class:
        core_load = comfy.sd.load_diffusion_model_state_dict

        def spy(sd, model_options=None, **kwargs):
            built.append((core_load(sd, model_options=model_options, **kwargs), dict(model_options or {})))
            return built[-1][0]

        comfy.sd.load_diffusion_model_state_dict = spy
        try:
            unet = node.execute(unet_name="tiny_dv_diffusers_fp16.safetensors", weight_dtype="fp16").result[0]
        finally:
            comfy.sd.load_diffusion_model_state_dict = core_load
        controlnext = loader.load_controlnext(str(model_files / "models" / "controlnext" / CONTROL_FILE))
        assert [(p, options) for p, options in built] == [(unet, {"dtype": torch.float16})]
        assert type(unet) is core_class and type(unet.model).__name__ == "SVD_img2vid"
        for dtype in (torch.float16, torch.float32):
            assert type(controlnext.patcher(dtype)) is core_class
    assert not hasattr(comfy.model_patcher, "CoreModelPatcher")  # 0.3.75 has none: the pack falls back
    assert type(loader.load_controlnext(str(model_files / "models" / "controlnext" / CONTROL_FILE))
                .patcher(torch.float32)) is comfy.model_patcher.ModelPatcher


@pytest.mark.parametrize("dynamic", [False, True])
def test_control_network_assigns_the_tensors_where_the_patcher_is_dynamic(dynamic):
    """As core's loaders: assign=patcher.is_dynamic(), so a dynamic patcher streams the loaded file's own tensors."""
    sd = tiny_controlnext_state_dict(seed=1, output_channels=64)
    with dynamic_vram(), core_model_patcher(dynamic=dynamic) as core_class:
        patcher = loader.load_network(sd)
        assert type(patcher) is core_class
        params = dict(patcher.model.named_parameters())
        shared = [k for k, v in sd.items() if params[k].data_ptr() == v.data_ptr()]
        assert shared == (list(sd) if dynamic else [])
        assert all(torch.equal(params[k], v) for k, v in sd.items())


def test_patchers_carry_the_recipe_newer_core_reloads_them_with(model_files):
    """Newer ModelPatcher.clone(disable_dynamic=True) and deepclone_multigpu re-create a model through
    cached_patcher_init[0](*cached_patcher_init[1], disable_dynamic=...) and raise where it is missing (core's own
    load_diffusion_model sets it). The recipes give plain ModelPatchers holding the same weights."""
    node = pack_import("nodes.unet_loader_node").ControlNeXtUNetLoader
    control_path = str(model_files / "models" / "controlnext" / CONTROL_FILE)
    with dynamic_vram(), core_model_patcher(dynamic=True) as core_class:
        unet = node.execute(unet_name="tiny_dv_comfy.safetensors", weight_dtype="fp32").result[0]
        control = loader.load_controlnext(control_path).patcher(torch.float32)
        for patcher in (unet, control):
            assert type(patcher) is core_class and patcher.is_dynamic()
            factory, args = patcher.cached_patcher_init
            plain = factory(*args, disable_dynamic=True)
            assert type(plain) is comfy.model_patcher.ModelPatcher and plain.cached_patcher_init == (factory, args)
            again = factory(*args)
            assert type(again) is core_class
            want, got = patcher.model.state_dict(), plain.model.state_dict()
            assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
