"""The ControlNeXt-SVD v2 control network against an independent functional statement of the spec, and its loader."""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F

from conftest import pack_import
from tiny_pack.tiny_controlnext import controlnext_shapes, tiny_controlnext_state_dict

network = pack_import("controlnext.network")
loader = pack_import("controlnext.controlnext_loader")

OFFICIAL_KEYS = list(controlnext_shapes(320))


# ---- independent statement of spec section 1 (functional, from the table) ----

def ref_time_embedding(sd: dict, t: torch.Tensor) -> torch.Tensor:
    half = sd["time_embedding.linear_1.weight"].shape[1] // 2
    k = torch.arange(half, dtype=torch.float32)
    freq = torch.exp(-math.log(10000.0) * k / half)
    arg = t.float()[:, None] * freq[None]
    emb = torch.cat([torch.cos(arg), torch.sin(arg)], dim=1)  # cos first (flip_sin_to_cos)
    emb = F.linear(emb, sd["time_embedding.linear_1.weight"], sd["time_embedding.linear_1.bias"])
    return F.linear(F.silu(emb), sd["time_embedding.linear_2.weight"], sd["time_embedding.linear_2.bias"])


def ref_resnet(sd: dict, p: str, x: torch.Tensor, temb: torch.Tensor, groups: int) -> torch.Tensor:
    h = F.silu(F.group_norm(x, groups, sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps=1e-6))
    h = F.conv2d(h, sd[p + "conv1.weight"], sd[p + "conv1.bias"], padding=1)
    h = h + F.linear(F.silu(temb), sd[p + "time_emb_proj.weight"], sd[p + "time_emb_proj.bias"])[:, :, None, None]
    h = F.silu(F.group_norm(h, groups, sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps=1e-6))
    h = F.conv2d(h, sd[p + "conv2.weight"], sd[p + "conv2.bias"], padding=1)
    if p + "conv_shortcut.weight" in sd:
        x = F.conv2d(x, sd[p + "conv_shortcut.weight"], sd[p + "conv_shortcut.bias"])
    return x + h


def ref_controlnext(sd: dict, poses: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """poses (B, F, 3, H, W) in [0,1], t (B,): the official forward, written out layer by layer."""
    b, f = poses.shape[:2]
    temb = ref_time_embedding(sd, t).repeat_interleave(f, dim=0)
    x = poses.flatten(0, 1)
    x = F.conv2d(x, sd["embedding.0.weight"], sd["embedding.0.bias"], stride=2, padding=1)
    x = F.relu(F.group_norm(x, 2, sd["embedding.1.weight"], sd["embedding.1.bias"], eps=1e-5))
    x = F.conv2d(x, sd["embedding.3.weight"], sd["embedding.3.bias"], stride=1, padding=0)
    x = F.relu(F.group_norm(x, 2, sd["embedding.4.weight"], sd["embedding.4.bias"], eps=1e-5))
    x = F.conv2d(x, sd["embedding.6.weight"], sd["embedding.6.bias"], stride=1, padding=0)
    x = F.relu(F.group_norm(x, 2, sd["embedding.7.weight"], sd["embedding.7.bias"], eps=1e-5))
    x = ref_resnet(sd, "down_res.0.", x, temb, 4)
    x = F.conv2d(x, sd["down_sample.0.conv.weight"], sd["down_sample.0.conv.bias"], stride=2, padding=1)
    x = ref_resnet(sd, "down_res.1.", x, temb, 8)
    x = F.conv2d(x, sd["down_sample.1.conv.weight"], sd["down_sample.1.conv.bias"], stride=2, padding=1)
    m = F.conv2d(x, sd["mid_convs.0.0.weight"], sd["mid_convs.0.0.bias"], padding=1)
    m = F.group_norm(F.relu(m), 8, sd["mid_convs.0.2.weight"], sd["mid_convs.0.2.bias"], eps=1e-5)
    m = F.conv2d(m, sd["mid_convs.0.3.weight"], sd["mid_convs.0.3.bias"], padding=1)
    m = F.group_norm(m, 8, sd["mid_convs.0.4.weight"], sd["mid_convs.0.4.bias"], eps=1e-5)
    x = m + x
    return F.conv2d(x, sd["mid_convs.1.weight"], sd["mid_convs.1.bias"])


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


# ---- the module ----

def test_module_has_exactly_the_official_keys_and_parameter_count():
    net = network.ControlNeXtSVD()
    sd = net.state_dict()
    assert list(sd) == OFFICIAL_KEYS
    assert {k: tuple(v.shape) for k, v in sd.items()} == controlnext_shapes(320)
    assert sum(p.numel() for p in net.parameters()) == 3_526_400


def test_module_matches_the_independent_statement():
    sd = tiny_controlnext_state_dict(seed=1, output_channels=320, time_gain=4.0)
    net = network.ControlNeXtSVD(network.ControlNeXtConfig.from_state_dict(sd))
    net.load_state_dict(sd)
    gen = torch.Generator().manual_seed(0)
    poses = torch.rand(2, 3, 3, 64, 48, generator=gen)
    t = torch.tensor([-1.2, 0.9])
    expected = ref_controlnext(sd, poses, t)
    with torch.no_grad():
        got_official_layout = net(poses, t)  # (B, F, ...) + per-clip timestep
        got_per_frame = net(poses.flatten(0, 1), t.repeat_interleave(3))  # how the patch calls it
    assert expected.shape == (6, 320, 64 // 8 - 1, 48 // 8 - 1)
    assert rel(got_official_layout, expected) < 1e-5
    assert rel(got_per_frame, expected) < 1e-5
    # the timestep matters (so the check above would see a wrong time embedding)
    assert rel(ref_controlnext(sd, poses, t + 0.5), expected) > 1e-2


def test_output_size_is_ceil_formula():
    net = network.ControlNeXtSVD(network.ControlNeXtConfig(output_channels=64))
    for h, w in ((64, 64), (72, 40), (70, 50)):
        with torch.no_grad():
            out = net(torch.rand(1, 3, h, w), 0.0)
        hc = math.ceil(math.ceil((math.ceil(h / 2) - 4) / 2) / 2)
        wc = math.ceil(math.ceil((math.ceil(w / 2) - 4) / 2) / 2)
        assert out.shape == (1, 64, hc, wc)


# ---- the loader ----

def _check_loaded(model, sd: dict, dtype: torch.dtype) -> None:
    assert model.dtype == dtype and model.output_channels == sd["mid_convs.1.weight"].shape[0]
    loaded = model.network.state_dict()
    assert list(loaded) == OFFICIAL_KEYS
    assert all(torch.equal(loaded[k], sd[k]) for k in sd)
    poses = torch.rand(1, 2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([0.3])
    with torch.no_grad():
        got = model.network(poses.to(dtype), t.to(dtype))
    expected = ref_controlnext({k: v.float() for k, v in sd.items()}, poses, t)
    assert rel(got, expected) < (1e-5 if dtype == torch.float32 else 2e-2)


def test_loads_official_bin_with_real_shapes(tmp_path):
    sd = OrderedDict(tiny_controlnext_state_dict(seed=2, output_channels=320))
    path = tmp_path / "controlnet.bin"
    torch.save(sd, path)
    assert 14_000_000 < path.stat().st_size < 14_300_000  # the real file is 14,122,234 bytes
    _check_loaded(loader.load_controlnext(str(path)), sd, torch.float32)


def test_loads_fp16_safetensors_with_real_shapes(tmp_path):
    sd = tiny_controlnext_state_dict(seed=3, output_channels=320, dtype=torch.float16)
    path = tmp_path / "controlnext-svd_v2-controlnet-fp16.safetensors"
    safetensors.torch.save_file(sd, str(path))
    assert 7_000_000 < path.stat().st_size < 7_100_000  # the real file is 7,057,480 bytes
    _check_loaded(loader.load_controlnext(str(path)), sd, torch.float16)


def test_patcher_casts_once_per_compute_dtype(tmp_path):
    sd = tiny_controlnext_state_dict(seed=4, output_channels=64)
    path = tmp_path / "c.safetensors"
    safetensors.torch.save_file(sd, str(path))
    model = loader.load_controlnext(str(path))
    fp32 = model.patcher(torch.float32)
    assert fp32.model is model.network and model.patcher(torch.float32) is fp32
    for dtype in (torch.float16, torch.bfloat16):
        p = model.patcher(dtype)
        assert all(v.dtype == dtype for v in p.model.state_dict().values())
        assert torch.equal(p.model.state_dict()["mid_convs.1.weight"], sd["mid_convs.1.weight"].to(dtype))
        assert p.load_device.type == "cpu" and next(p.model.parameters()).device.type == "cpu"
    assert next(model.network.parameters()).dtype == torch.float32  # the original is left alone


def _save(tmp_path, name: str, sd: dict):
    path = tmp_path / name
    if name.endswith(".safetensors"):
        safetensors.torch.save_file(sd, str(path))
    else:
        torch.save(sd, path)
    return str(path)


def _refusal(tmp_path, name: str, sd: dict) -> str:
    with pytest.raises(loader.ControlNeXtWeightsError) as info:
        loader.load_controlnext(_save(tmp_path, name, sd))
    message = str(info.value)
    assert name in message
    return message


def test_refuses_unets(tmp_path):
    diffusers_unet = {k: torch.zeros(2) for k in (
        "conv_in.weight", "down_blocks.0.resnets.0.temporal_res_block.conv1.weight",
        "up_blocks.0.resnets.0.spatial_res_block.conv1.weight")}
    comfy_unet = {k: torch.zeros(2) for k in (
        "input_blocks.0.0.weight", "input_blocks.1.0.time_stack.in_layers.2.weight",
        "middle_block.0.in_layers.0.weight")}
    for name, sd in (("unet.bin", diffusers_unet), ("unet_converted.safetensors", comfy_unet),
                     ("prefixed.safetensors", {"model.diffusion_model." + k: v for k, v in comfy_unet.items()})):
        message = _refusal(tmp_path, name, sd)
        assert "ControlNeXtUNetLoader" in message and "UNet" in message


def test_refuses_v1_files(tmp_path):
    sd = tiny_controlnext_state_dict(output_channels=1280)
    sd["scale"] = torch.ones(1)
    sd["down_res.2.conv1.weight"] = torch.zeros(1)
    message = _refusal(tmp_path, "controlnet_v1.bin", sd)
    assert "v1" in message and "v2" in message


def test_refuses_partial_unknown_and_misshapen(tmp_path):
    full = tiny_controlnext_state_dict(output_channels=64)
    partial = {k: v for k, v in full.items() if k != "down_res.1.conv_shortcut.bias"}
    assert "1 missing keys" in _refusal(tmp_path, "partial.safetensors", partial)
    extra = dict(full, **{"mid_convs.2.weight": torch.zeros(3)})
    assert "1 unknown keys" in _refusal(tmp_path, "extra.safetensors", extra)
    wrong = dict(full, **{"down_res.0.conv2.weight": torch.zeros(128, 128, 1, 1)})
    assert "wrong shape" in _refusal(tmp_path, "wrong.safetensors", wrong)
    assert "no tensors" in _refusal(tmp_path, "empty.bin", {}) or "empty" in _refusal(tmp_path, "empty.bin", {})
    other = {"foo.weight": torch.zeros(2)}
    assert "not a ControlNeXt-SVD v2" in _refusal(tmp_path, "other.safetensors", other)


def test_refuses_pickles_with_code(tmp_path):
    path = tmp_path / "evil.bin"
    torch.save({"embedding.0.weight": torch.zeros(1), "object": OrderedDict}, path)  # a class: not weights-only
    with pytest.raises(loader.ControlNeXtWeightsError, match="evil.bin"):
        loader.load_controlnext(str(path))
