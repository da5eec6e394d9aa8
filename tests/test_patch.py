"""ControlNeXtApply's UNet patch against an independent statement of the official injection (spec section 2).

The tiny SVD (64 channels) gets a tiny control network (mid_convs.1 width 64) with a strong time path, so a wrong
timestep, wrong pose range, wrong rows or pooling before the statistics each change the UNet output clearly.
"""

from __future__ import annotations

import logging
import math

import comfy.context_windows
import comfy.model_management as mm
import comfy.patcher_extension
import comfy.sample
import numpy as np
import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from test_controlnext_network import ref_controlnext

from conftest import pack_import, run_graph
from tiny_pack.tiny_controlnext import tiny_controlnext_state_dict
from tiny_pack.tiny_svd import tiny_svd_conditioning, tiny_svd_patcher

loader = pack_import("controlnext.controlnext_loader")
patch_mod = pack_import("controlnext.patch")

FRAMES, SIZE = 4, 64  # 64 px: control 7x7 pooled to h's 4x4 (so statistics-before-pooling matters)
SD = tiny_controlnext_state_dict(seed=5, output_channels=64, time_gain=8.0, narrow=4)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def make_poses(frames: int = FRAMES, size: int = SIZE, seed: int = 0) -> torch.Tensor:
    """Smooth random RGB images in [0,1], ComfyUI layout (N, H, W, 3)."""
    gen = torch.Generator().manual_seed(seed)
    low = torch.rand(frames, 3, size // 8, size // 8, generator=gen)
    return F.interpolate(low, size=(size, size), mode="bilinear").clamp(0, 1).movedim(1, -1).contiguous()


def controlnext_model():
    return loader.ControlNeXtModel(loader.build_network(SD), "tiny-controlnext")


# ---- the independent statement ----

def reference_patch(poses_nhwc: torch.Tensor, strength: float, variant: str = "official"):
    """input_block_patch_after_skip written from spec section 2 (variants are the known ways to get it wrong)."""
    poses = poses_nhwc.movedim(-1, 1)

    def patch(h: torch.Tensor, to: dict) -> torch.Tensor:
        if to["block"] != ("input", 3):
            return h
        kinds = to["cond_or_uncond"]
        n = h.shape[0] // len(kinds)
        window = to.get("context_window")
        if window is not None:
            # newest comfy/context_windows.py IndexListContextWindow.get_tensor: the causal anchor frame goes first
            anchor = getattr(window, "causal_anchor_index", None)
            frames = poses[([anchor] if anchor is not None and anchor >= 0 else []) + list(window.index_list)]
        else:
            frames = poses
        sigma = to["sigmas"].reshape(-1)[0]
        if variant == "kijai_timestep":
            t = (torch.log(sigma) - math.log(0.0002)) / (math.log(700) - math.log(0.0002))
        else:
            t = 0.25 * torch.log(sigma)
        if variant == "poses_minus1_1":
            frames = frames * 2 - 1
        c = ref_controlnext(SD, frames[None], t.reshape(1))
        out = []
        for i, kind in enumerate(kinds):
            x = h[i * n:(i + 1) * n]
            if kind == (1 if variant == "uncond_rows" else 0):
                cc = F.adaptive_avg_pool2d(c, x.shape[-2:]) if variant == "pool_first" else c
                cc = (cc - cc.mean((1, 2, 3), keepdim=True)) / (cc.std((1, 2, 3), keepdim=True) + 1e-5)
                cc = cc * x.std((1, 2, 3), keepdim=True) + x.mean((1, 2, 3), keepdim=True)
                if variant != "pool_first":
                    cc = F.adaptive_avg_pool2d(cc, x.shape[-2:])
                x = x + cc * 0.2 * strength
            out.append(x)
        return torch.cat(out)

    return patch


def with_reference(model, poses, strength=1.0, variant="official"):
    m = model.clone()
    m.set_model_input_block_patch_after_skip(reference_patch(poses, strength, variant))
    return m


# ---- direct UNet calls with chosen cond/uncond batching ----

def _conds(base, frames: int, size: int):
    positive, negative, _ = tiny_svd_conditioning(frames, size, size, seed=1)
    noise = torch.zeros(frames, 4, size // 8, size // 8)
    out = {}
    for kind, cond in ((0, positive), (1, negative)):
        embed, extras = cond[0]
        conds = base.extra_conds(noise=noise, cross_attn=embed, **extras)
        out[kind] = {k: v.process_cond(batch_size=frames, area=None).cond for k, v in conds.items()
                     if k != "num_video_frames"}
    return out


def unet(model, x: torch.Tensor, sigma: float, kinds: list[int], extra_to: dict | None = None) -> list[torch.Tensor]:
    """One apply_model call with h holding one chunk per entry of `kinds`; returns the chunks."""
    base = model.model
    frames = x.shape[0]
    conds = _conds(base, frames, x.shape[-1] * 8)
    to = comfy.patcher_extension.copy_nested_dicts(model.model_options["transformer_options"])
    to.update(cond_or_uncond=list(kinds), sigmas=torch.full((frames,), sigma), **(extra_to or {}))
    kw = {k: torch.cat([conds[kind][k] for kind in kinds]) for k in conds[0]}
    with torch.no_grad():
        out = base.apply_model(x.repeat(len(kinds), 1, 1, 1), torch.full((frames * len(kinds),), sigma),
                               transformer_options=to, num_video_frames=frames, **kw)
    return list(out.chunk(len(kinds)))


@torch.no_grad()
def damp_skips(unet_model: torch.nn.Module, factor: float) -> None:
    """Scale the output blocks' weights on the skip channels: the skips from input blocks 0-3 carry no control, and
    with plain tiny weights they dominate the output (the control then moves it by under 10%)."""
    prev = unet_model.middle_block[-1].out_layers[3].weight.shape[0]
    for block in unet_model.output_blocks:
        res = block[0]
        res.in_layers[2].weight[:, prev:] *= factor
        if isinstance(res.skip_connection, torch.nn.Conv2d):
            res.skip_connection.weight[:, prev:] *= factor
        prev = res.out_layers[3].weight.shape[0]


@pytest.fixture(scope="module")
def setup():
    svd = tiny_svd_patcher(seed=0)
    damp_skips(svd.model.diffusion_model, 0.1)
    poses = make_poses()
    applied = patch_mod.apply_controlnext(svd, controlnext_model(), poses, strength=1.0)
    x = torch.randn(FRAMES, 4, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(9))
    return svd, poses, applied, x


# float32 agreement of the pack with the independent statement (measured ~5e-6); the wrong variants differ by
# 1.6e-2 (kijai's timestep) to 0.36 (control on the unconditional rows), the control itself moves the output 36%.
TOL = 5e-5
SIGMA = 10.0  # high noise: the denoised latent is almost all model output (c_skip ~0.01), not the input


def test_patch_matches_reference_cond_only_call(setup):
    svd, poses, applied, x = setup
    (ours,) = unet(applied, x, SIGMA, [0])
    (ref,) = unet(with_reference(svd, poses), x, SIGMA, [0])
    (plain,) = unet(svd, x, SIGMA, [0])
    assert rel(ours, ref) < TOL
    assert rel(ref, plain) > 0.10, "the control must visibly change the result, else wrong variants pass"


@pytest.mark.parametrize("variant", ["uncond_rows", "kijai_timestep", "poses_minus1_1", "pool_first"])
def test_wrong_variants_fail_the_check(setup, variant):
    svd, poses, applied, x = setup
    kinds = [1, 0]
    ours = unet(applied, x, SIGMA, kinds)
    wrong = unet(with_reference(svd, poses, variant=variant), x, SIGMA, kinds)
    diff = max(rel(o, w) for o, w in zip(ours, wrong, strict=True))
    assert diff > 5e-3, f"{variant} is indistinguishable from the official statement ({diff:.2e})"


@pytest.mark.parametrize("kinds", [[1, 0], [0, 1], [0], [1]])
def test_cond_rows_only_whatever_the_batching(setup, kinds):
    svd, poses, applied, x = setup
    ours = unet(applied, x, SIGMA, kinds)
    ref = unet(with_reference(svd, poses), x, SIGMA, kinds)
    plain = unet(svd, x, SIGMA, kinds)
    for kind, o, r, p in zip(kinds, ours, ref, plain, strict=True):
        assert rel(o, r) < TOL
        if kind == 1:
            assert torch.equal(o, p), "the unconditional rows must be the plain UNet"
    # batched equals separate calls
    for kind, o in zip(kinds, ours, strict=True):
        (alone,) = unet(applied, x, SIGMA, [kind])
        assert rel(o, alone) < TOL


def test_strength_scales_the_injection(setup):
    svd, poses, applied, x = setup
    half = patch_mod.apply_controlnext(svd, controlnext_model(), poses, strength=0.5)
    (ours,) = unet(half, x, SIGMA, [0])
    (ref,) = unet(with_reference(svd, poses, strength=0.5), x, SIGMA, [0])
    (full,) = unet(applied, x, SIGMA, [0])
    assert rel(ours, ref) < TOL and rel(ours, full) > 1e-2
    off = patch_mod.apply_controlnext(svd, controlnext_model(), poses, strength=1.0, end_percent=0.0)
    assert torch.equal(unet(off, x, SIGMA, [0])[0], unet(svd, x, SIGMA, [0])[0])


def test_pose_indices_and_context_window_select_frames(setup):
    svd, _, _, x = setup
    poses = make_poses(frames=7, seed=4)
    applied = patch_mod.apply_controlnext(svd, controlnext_model(), poses)
    window = comfy.context_windows.IndexListContextWindow([0, 3, 5, 6])
    ref = unet(with_reference(svd, poses), x, SIGMA, [1, 0], {"context_window": window})
    ours_window = unet(applied, x, SIGMA, [1, 0], {"context_window": window})
    ours_indices = unet(applied, x, SIGMA, [1, 0], {patch_mod.POSE_INDICES_KEY: [0, 3, 5, 6]})
    other = unet(applied, x, SIGMA, [1, 0], {patch_mod.POSE_INDICES_KEY: [0, 1, 2, 3]})
    assert rel(ours_window[1], ref[1]) < TOL and rel(ours_indices[1], ref[1]) < TOL
    assert rel(other[1], ref[1]) > 1e-3
    with pytest.raises(patch_mod.ControlNeXtPoseError, match="7 pose images but the model is sampling 4 frames"):
        unet(applied, x, SIGMA, [0])
    with pytest.raises(patch_mod.ControlNeXtPoseError, match="asks for pose frame 9 but .* only 7"):
        unet(applied, x, SIGMA, [0], {patch_mod.POSE_INDICES_KEY: [0, 1, 2, 9]})
    with pytest.raises(patch_mod.ControlNeXtPoseError, match="lists 3 pose frames but the model call has 4"):
        unet(applied, x, SIGMA, [0], {patch_mod.POSE_INDICES_KEY: [0, 1, 2]})


def test_causal_anchor_frame_gets_its_own_pose(setup):
    """Newer ComfyUI's causal_window_fix puts the frame before the window in front of it (window.causal_anchor_index,
    not in index_list): the model call holds frames [2, 3, 5, 6] for index_list [3, 5, 6]."""
    svd, _, _, x = setup
    poses = make_poses(frames=7, seed=4)
    applied = patch_mod.apply_controlnext(svd, controlnext_model(), poses)
    window = comfy.context_windows.IndexListContextWindow([3, 5, 6])
    window.causal_anchor_index = 2  # set by the newest IndexListContextHandler.evaluate_context_windows
    ref = unet(with_reference(svd, poses), x, SIGMA, [1, 0], {"context_window": window})
    ours = unet(applied, x, SIGMA, [1, 0], {"context_window": window})
    by_indices = unet(applied, x, SIGMA, [1, 0], {patch_mod.POSE_INDICES_KEY: [2, 3, 5, 6]})
    assert rel(ours[1], ref[1]) < TOL and torch.equal(ours[1], by_indices[1])
    window.causal_anchor_index = -1  # no anchor (the source checks >= 0): the window's own three frames
    with pytest.raises(patch_mod.ControlNeXtPoseError, match="lists 3 pose frames but the model call has 4"):
        unet(applied, x, SIGMA, [0], {"context_window": window})


def test_pose_size_must_match_the_latent(setup):
    svd, _, _, x = setup
    big = patch_mod.apply_controlnext(svd, controlnext_model(), make_poses(size=128))
    with pytest.raises(patch_mod.ControlNeXtPoseError, match="128x128 px but the video being sampled is 64x64"):
        unet(big, x, SIGMA, [0])
    with pytest.raises(patch_mod.ControlNeXtPoseError, match="multiple of 8"):
        patch_mod.apply_controlnext(svd, controlnext_model(), torch.rand(2, 60, 64, 3))
    wide = loader.ControlNeXtModel(loader.build_network(tiny_controlnext_state_dict(output_channels=320)), "w.bin")
    with pytest.raises(patch_mod.ControlNeXtPoseError, match="320 channels but this UNet has 64"):
        patch_mod.apply_controlnext(svd, wide, make_poses())
    # a window that can never be active would silently give plain SVD
    with pytest.raises(ValueError, match="start_percent 0.8 is after end_percent 0.2"):
        patch_mod.apply_controlnext(svd, controlnext_model(), make_poses(), start_percent=0.8, end_percent=0.2)


def test_network_is_a_managed_additional_model_and_sampling_matches_reference(setup):
    svd, poses, applied, _ = setup
    extra = applied.get_additional_models()
    assert len(extra) == 1 and isinstance(extra[0].model, torch.nn.Module)
    assert extra[0].model is applied.model_options["transformer_options"]["patches"][
        "input_block_patch_after_skip"][0].network
    positive, negative, latent = tiny_svd_conditioning(FRAMES, SIZE, SIZE, seed=1)
    noise = torch.randn(latent["samples"].shape, generator=torch.Generator().manual_seed(3))

    def sample(model):
        return comfy.sample.sample(model, noise, 3, 2.5, "euler", "karras", positive, negative,
                                   latent["samples"], seed=3, disable_pbar=True)

    ours, ref, plain = sample(applied), sample(with_reference(svd, poses)), sample(svd)
    assert rel(ours, ref) < 1e-4
    assert rel(ref, plain) > 0.05
    loaded = [lm.model for lm in mm.current_loaded_models]
    assert extra[0] in loaded, "ComfyUI's model management must have loaded the control network"
    patch = applied.model_options["transformer_options"]["patches"]["input_block_patch_after_skip"][0]
    assert patch._device_poses is None, "no pose copy may outlive the sampling run"


# ---- graphs ----

def _graph(name: str, frames: int, pose_frames: int, apply: bool = True, context: bool = False) -> dict:
    graph = {
        "1": {"class_type": "ControlNeXtTestTinySVD", "inputs": {"seed": 0}},
        "2": {"class_type": "ControlNeXtTestTinySVDConditioning",
              "inputs": {"frames": frames, "width": 64, "height": 64, "seed": 1}},
        "3": {"class_type": "ControlNeXtLoader", "inputs": {"controlnext_name": name}},
        "4": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": pose_frames,
                                                     "color": 0x80FF40}},
        "5": {"class_type": "ControlNeXtApply", "inputs": {"model": ["1", 0], "controlnext": ["3", 0],
                                                           "pose_images": ["4", 0], "strength": 1.0}},
        "7": {"class_type": "KSampler", "inputs": {
            "model": ["5", 0] if apply else ["1", 0], "positive": ["2", 0], "negative": ["2", 1],
            "latent_image": ["2", 2], "seed": 7, "steps": 2, "cfg": 2.5, "sampler_name": "euler",
            "scheduler": "karras", "denoise": 1.0}},
        "8": {"class_type": "SaveLatent", "inputs": {"samples": ["7", 0], "filename_prefix": "controlnext_patch"}},
    }
    if context:
        graph["6"] = {"class_type": "ContextWindowsManual", "inputs": {
            "model": ["5", 0], "context_length": 4, "context_overlap": 2, "context_schedule": "standard_static",
            "context_stride": 1, "closed_loop": False, "fuse_method": "pyramid", "dim": 0}}
        graph["7"]["inputs"]["model"] = ["6", 0]
    return graph


def _latent(run) -> torch.Tensor:
    import folder_paths

    saved = run.outputs["8"]["latents"][0]
    path = f"{folder_paths.get_output_directory()}/{saved['subfolder']}/{saved['filename']}"
    return safetensors.torch.load_file(path)["latent_tensor"]


@pytest.fixture(scope="module")
def controlnext_file():
    import os

    import folder_paths

    folder = folder_paths.get_folder_paths("controlnext")[0]
    os.makedirs(folder, exist_ok=True)
    name = "tiny-controlnext-fp16.safetensors"
    safetensors.torch.save_file({k: v.half() for k, v in SD.items()}, os.path.join(folder, name))
    return name


def test_graph_apply_feeds_native_ksampler(controlnext_file):
    run = run_graph(_graph(controlnext_file, 4, 4))
    assert run.success, run.error()
    plain = run_graph(_graph(controlnext_file, 4, 4, apply=False))
    assert plain.success, plain.error()
    a, b = _latent(run), _latent(plain)
    assert torch.isfinite(a).all() and rel(a, b) > 1e-3


def test_graph_pose_count_mismatch_is_a_clear_error(controlnext_file):
    run = run_graph(_graph(controlnext_file, 4, 3))
    assert not run.success
    assert "3 pose images but the model is sampling 4 frames" in run.error()["exception_message"]


def test_stock_context_handler_crashes_for_svd_and_the_subclass_does_not():
    stock = comfy.context_windows.IndexListContextHandler(
        comfy.context_windows.get_matching_context_schedule("standard_static"),
        comfy.context_windows.get_matching_fuse_method("pyramid"), context_length=4, context_overlap=2)
    options = {"transformer_options": {"sample_sigmas": torch.tensor([700.0, 20.0, 0.002, 0.0])},
               "context_handler": stock}
    with pytest.raises(RuntimeError):
        stock.set_step(torch.full((6,), 20.0), options)  # ComfyUI 0.3.75 bug: per-frame sigma vector
    patch_mod.fix_context_handler(options)
    fixed = options["context_handler"]
    assert type(fixed) is patch_mod.SVDIndexListContextHandler and fixed is not stock
    assert fixed.context_length == 4 and fixed.context_overlap == 2
    fixed.set_step(torch.full((6,), 20.0), options)
    assert fixed._step == 1


def test_graph_context_windows_manual_works_for_svd(controlnext_file, caplog):
    caplog.set_level(logging.INFO)
    run = run_graph(_graph(controlnext_file, 6, 6, context=True))
    assert run.success, run.error()
    assert "Using context windows 4 for 6 frames" in caplog.text
    assert torch.isfinite(_latent(run)).all()


def test_large_pose_batches_upload_as_exact_bytes():
    """Poses too many to keep on the device go up per window as uint8 (a quarter of the bytes) with the same values."""
    frames = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (5, 16, 8, 3), dtype=np.uint8))
    poses = frames.float() / 255.0  # how decoded and drawn pose images are made
    as_bytes = patch_mod.as_bytes(poses)
    assert as_bytes is not None and torch.equal(as_bytes, frames)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        expected = poses[[0, 3, 4]].to(dtype).movedim(-1, 1)
        got = patch_mod.upload(as_bytes, [0, 3, 4], torch.device("cpu"), dtype)
        assert got.dtype == dtype and got.shape == (3, 3, 16, 8) and torch.equal(got, expected)
    assert torch.equal(patch_mod.upload(poses, None, torch.device("cpu"), torch.float16), poses.half().movedim(-1, 1))
    assert patch_mod.as_bytes(poses * 0.999) is None  # not k / 255: uploaded as floats
