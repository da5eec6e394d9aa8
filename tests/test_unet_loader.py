"""ControlNeXtUNetLoader: every released UNet format loads through the real node and computes what diffusers computes.

Tiny UNets (64/128 channels, SVD block pattern) are built from diffusers' UNetSpatioTemporalConditionModel and
from ComfyUI's own classes (tests/tiny_pack), saved in the released formats into the session's models folders. The
loader hands them to ComfyUI's own comfy.sd.load_diffusion_model_state_dict, whose detection knows SVD only at full
size: the test node pack registers TinySVDImg2Vid (tests/tiny_pack/tiny_svd.py) so it detects the tiny widths too.
"""

from __future__ import annotations

import os
from pathlib import Path

import comfy.model_management as mm
import comfy.sd
import comfy.supported_models
import pytest
import safetensors.torch
import torch
from diffusers import UNetSpatioTemporalConditionModel

from conftest import pack_import, run_graph
from tiny_pack.tiny_svd import TinySVDImg2Vid, build_tiny_svd, tiny_svd_detection_removed

FRAMES, H, W = 3, 8, 8  # latent size
SPEC = Path(__file__).resolve().parent / "data"  # copies of the project spec's key lists


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _models(comfy_base: Path, folder: str) -> Path:
    path = comfy_base / "models" / folder
    path.mkdir(parents=True, exist_ok=True)
    return path


def _loader():
    return pack_import("nodes.unet_loader_node").ControlNeXtUNetLoader


def _load(unet_name: str, weight_dtype: str = "fp32"):
    return _loader().execute(unet_name=unet_name, weight_dtype=weight_dtype).result[0]


@torch.no_grad()
def _tiny_diffusers_unet(seed: int = 0) -> UNetSpatioTemporalConditionModel:
    """Three levels so both upsampler placements occur (up block 0 has no attention, the others do)."""
    torch.manual_seed(seed)
    unet = UNetSpatioTemporalConditionModel(
        block_out_channels=(64, 64, 64), num_attention_heads=(1, 1, 1), cross_attention_dim=64,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "CrossAttnDownBlockSpatioTemporal",
                          "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
    )
    gen = torch.Generator().manual_seed(seed)
    for name, p in unet.named_parameters():
        if name.endswith("mix_factor"):
            p.copy_(torch.randn(p.shape, generator=gen))
        elif p.ndim == 1 and "norm" in name and name.endswith("weight"):
            p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))
        else:  # every tensor distinct, so a swapped or misplaced key changes the output
            p.copy_(torch.randn(p.shape, generator=gen) * (0.1 if p.ndim == 1 else 0.6 / p[0].numel() ** 0.5))
    # spec section 2: diffusers builds these resnet GroupNorms with eps 1e-6, ComfyUI (SGM) with 1e-5
    for name, m in unet.named_modules():
        if isinstance(m, torch.nn.GroupNorm) and ".resnets." in name:
            m.eps = 1e-5
    return unet.eval()


def _inputs(seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    sample = torch.randn(1, FRAMES, 8, H, W, generator=gen)
    context = torch.randn(1, 1, 64, generator=gen)
    return sample, context, torch.tensor(0.25 * torch.log(torch.tensor(17.0)).item())


@torch.no_grad()
def _comfy_out(patcher, sample, context, t) -> torch.Tensor:
    """One UNet call as ComfyUI makes it for SVD (frames in the batch, ADM from fps 7 / motion 128 / aug 0.02)."""
    model = patcher.model
    y = model.encode_adm(fps=7, motion_bucket_id=128, augmentation_level=0.02).repeat(FRAMES, 1)
    x = sample[0]
    return model.diffusion_model(x, t.repeat(FRAMES), context=context.repeat(FRAMES, 1, 1), y=y,
                                 num_video_frames=FRAMES)


@torch.no_grad()
def _diffusers_out(unet, sample, context, t) -> torch.Tensor:
    ids = torch.tensor([[6.0, 128.0, 0.02]])
    return unet(sample, t, encoder_hidden_states=context, added_time_ids=ids).sample[0]


@pytest.fixture(scope="module")
def diffusers_files():
    """The tiny diffusers UNet saved as fp32 .bin (torch zip pickle) and safetensors, like the released files."""
    unet = _tiny_diffusers_unet()
    sd = {k: v.contiguous() for k, v in unet.state_dict().items()}
    return unet, sd


def _save_diffusers(comfy_base: Path, sd: dict, stem: str) -> tuple[str, str]:
    folder = _models(comfy_base, "controlnext")
    safetensors.torch.save_file(sd, folder / f"{stem}.safetensors")
    torch.save(sd, folder / f"{stem}.bin")
    return f"{stem}.safetensors", f"{stem}.bin"


def test_diffusers_formats_match_diffusers_output(comfy_base, diffusers_files):
    unet, sd = diffusers_files
    names = _save_diffusers(comfy_base, sd, "tiny_diffusers_unet")
    sample, context, t = _inputs()
    ref = _diffusers_out(unet, sample, context, t)
    assert ref.abs().mean() > 0.1  # a real signal, not a near-zero output any mapping would match
    for name in names:
        patcher = _load(name)
        out = _comfy_out(patcher, sample, context, t)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)  # eps 1e-6 left in: 6e-5 off


def test_a_swapped_tensor_changes_the_output(comfy_base, diffusers_files):
    """The comparison above is sharp enough to see one misplaced tensor pair (same shape, so it still loads)."""
    unet, sd = diffusers_files
    a = "down_blocks.0.resnets.0.spatial_res_block.conv1.weight"
    b = "down_blocks.0.resnets.1.spatial_res_block.conv1.weight"
    swapped = dict(sd, **{a: sd[b], b: sd[a]})
    safetensors.torch.save_file(swapped, _models(comfy_base, "diffusion_models") / "tiny_swapped.safetensors")
    sample, context, t = _inputs()
    out = _comfy_out(_load("tiny_swapped.safetensors"), sample, context, t)
    ref = _diffusers_out(unet, sample, context, t)
    assert (out - ref).abs().max() > 1e-2


# one level (64 channels, two res blocks) keeps these loads fast; the diffusers test above covers three levels
ONE_LEVEL = dict(channel_mult=[1], num_res_blocks=[2], transformer_depth=[1, 1], transformer_depth_output=[1, 1, 1])
_COMFY_SD: dict[str, torch.Tensor] = {}


def _comfy_tiny_sd(prefix: str = "") -> dict[str, torch.Tensor]:
    if not _COMFY_SD:
        model = build_tiny_svd(seed=5, **ONE_LEVEL)
        _COMFY_SD.update({k: v.contiguous() for k, v in model.diffusion_model.state_dict().items()})
    return {prefix + k: v for k, v in _COMFY_SD.items()}


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."])
def test_comfy_key_files_load_with_and_without_prefix(comfy_base, prefix):
    sd = _comfy_tiny_sd(prefix)
    name = f"tiny_comfy{'_prefixed' if prefix else ''}.safetensors"
    safetensors.torch.save_file(sd, _models(comfy_base, "diffusion_models") / name)
    patcher = _load(name)
    loaded = patcher.model.diffusion_model.state_dict()
    assert loaded.keys() == {k[len(prefix):] for k in sd}
    for k, v in sd.items():
        assert torch.equal(loaded[k[len(prefix):]], v), k
    assert type(patcher.model).__name__ == "SVD_img2vid"
    assert patcher.model.model_config.unet_config["channel_mult"] == [1]


def test_loaded_model_samples_in_a_comfy_graph(comfy_base):
    safetensors.torch.save_file(_comfy_tiny_sd(), _models(comfy_base, "diffusion_models") / "tiny_graph.safetensors")
    graph = {
        "1": {"class_type": "ControlNeXtUNetLoader", "inputs": {"unet_name": "tiny_graph.safetensors",
                                                                "weight_dtype": "default"}},
        "2": {"class_type": "ControlNeXtTestTinySVDConditioning",
              "inputs": {"frames": 2, "width": 64, "height": 64, "seed": 1}},
        "4": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["2", 1], "latent_image": ["2", 2],
            "seed": 7, "steps": 1, "cfg": 2.5, "sampler_name": "euler", "scheduler": "karras", "denoise": 1.0}},
        "5": {"class_type": "SaveLatent", "inputs": {"samples": ["4", 0], "filename_prefix": "tiny_unet_loader"}},
    }
    run = run_graph(graph)
    assert run.success, run.error()


# ---- refusals ---------------------------------------------------------------------------------------------------

def _refusal(comfy_base: Path, name: str, sd: dict | None = None, raw: object = None) -> str:
    path = _models(comfy_base, "controlnext") / name
    if raw is not None:
        torch.save(raw, path)
    elif name.endswith(".safetensors"):
        safetensors.torch.save_file(sd, path)
    else:
        torch.save(sd, path)
    with pytest.raises(pack_import("controlnext.unet_loader").UNetLoadError) as info:
        _load(name)
    message = str(info.value)
    assert name in message
    return message


def _controlnext_v2_sd() -> dict[str, torch.Tensor]:
    sd = {}
    for line in (SPEC / "controlnext-keys.txt").read_text().splitlines():
        key, shape = line.split(" ", 1)
        sd[key] = torch.zeros(eval(shape))  # noqa: S307  (the spec's own "[a, b]" shape lists)
    return sd


@pytest.mark.parametrize("dropped", ["attn2.to_k", "attn2.to_v"])  # to_k is read by the architecture detection
def test_refuses_partial_diffusers_file(comfy_base, diffusers_files, dropped):
    _, sd = diffusers_files
    partial = {k: v for k, v in sd.items() if f"up_blocks.1.attentions.0.transformer_blocks.0.{dropped}" not in k}
    message = _refusal(comfy_base, f"tiny_partial_{dropped}.safetensors", partial)
    assert "missing" in message and "up_blocks" not in message  # reported in ComfyUI names
    assert f"output_blocks.3.1.transformer_blocks.0.{dropped}.weight" in message


def test_refuses_unexpected_keys(comfy_base):
    sd = _comfy_tiny_sd()
    sd["input_blocks.1.1.extra_adapter.weight"] = torch.zeros(4)
    message = _refusal(comfy_base, "tiny_extra.safetensors", sd)
    assert "not part of it" in message and "extra_adapter" in message


def test_refuses_unknown_diffusers_key(comfy_base, diffusers_files):
    _, sd = diffusers_files
    message = _refusal(comfy_base, "tiny_lora.bin", dict(sd, **{"down_blocks.0.lora_A.weight": torch.zeros(2)}))
    assert "down_blocks.0.lora_A.weight" in message


def test_refuses_controlnext_v2_control_network(comfy_base):
    message = _refusal(comfy_base, "controlnet.bin", _controlnext_v2_sd())
    assert "ControlNeXt-SVD v2 control network" in message and "ControlNeXtLoader" in message


def test_refusal_reaches_the_user_through_the_graph(comfy_base):
    torch.save(_controlnext_v2_sd(), _models(comfy_base, "controlnext") / "graph_controlnet.bin")
    graph = {"1": {"class_type": "ControlNeXtUNetLoader",
                   "inputs": {"unet_name": "graph_controlnet.bin", "weight_dtype": "default"}},
             "3": {"class_type": "ControlNeXtTestTinySVDConditioning",
                   "inputs": {"frames": 2, "width": 64, "height": 64, "seed": 1}},
             "4": {"class_type": "KSampler", "inputs": {
                 "model": ["1", 0], "positive": ["3", 0], "negative": ["3", 1], "latent_image": ["3", 2],
                 "seed": 7, "steps": 1, "cfg": 1.0, "sampler_name": "euler", "scheduler": "karras", "denoise": 1.0}},
             "5": {"class_type": "SaveLatent", "inputs": {"samples": ["4", 0], "filename_prefix": "refused"}}}
    run = run_graph(graph)
    assert not run.success
    error = run.error()
    assert error["node_type"] == "ControlNeXtUNetLoader"
    assert "graph_controlnet.bin looks like a ControlNeXt-SVD v2 control network" in error["exception_message"]
    assert "ControlNeXtLoader" in error["exception_message"]


def test_refuses_controlnext_v1(comfy_base):
    sd = _controlnext_v2_sd()
    sd.update({"down_res.2.conv1.weight": torch.zeros(1), "scale": torch.tensor(1.0),
               "mid_convs.1.weight": torch.zeros(1280, 256, 1, 1)})
    message = _refusal(comfy_base, "controlnet_v1.bin", sd)
    assert "v1" in message and "v2" in message


def test_refuses_full_svd_checkpoint(comfy_base):
    sd = _comfy_tiny_sd("model.diffusion_model.")
    sd["first_stage_model.decoder.conv_in.weight"] = torch.zeros(4, 4, 3, 3)
    sd["conditioner.embedders.0.open_clip.model.visual.proj"] = torch.zeros(4, 4)
    message = _refusal(comfy_base, "svd_xt_1_1_tiny.safetensors", sd)
    assert "full Stable Video Diffusion checkpoint" in message and "ImageOnlyCheckpointLoader" in message


def test_refuses_non_svd_unet_and_other_files(comfy_base):
    sd = {k: v for k, v in _comfy_tiny_sd().items() if "time_stack" not in k and "time_mixer" not in k}
    assert "another model family" in _refusal(comfy_base, "sd15_like.safetensors", sd)
    vae = {"encoder.conv_in.weight": torch.zeros(4, 3, 3, 3), "decoder.conv_out.weight": torch.zeros(3, 4, 3, 3)}
    assert "none of the known" in _refusal(comfy_base, "vae.safetensors", vae)


def test_refuses_pickles_with_objects_and_broken_files(comfy_base):
    message = _refusal(comfy_base, "evil.bin", raw={"weights": torch.zeros(2), "cfg": Path("/")})
    assert "weights_only" in message
    (_models(comfy_base, "controlnext") / "broken.safetensors").write_bytes(os.urandom(64))
    with pytest.raises(pack_import("controlnext.unet_loader").UNetLoadError, match="broken.safetensors"):
        _load("broken.safetensors")


def test_node_lists_both_folders(comfy_base):
    safetensors.torch.save_file({"a": torch.zeros(1)}, _models(comfy_base, "diffusion_models") / "listed_a.safetensors")
    safetensors.torch.save_file({"a": torch.zeros(1)}, _models(comfy_base, "controlnext") / "listed_b.safetensors")
    options = pack_import("nodes.unet_loader_node").unet_file_options()
    assert {"listed_a.safetensors", "listed_b.safetensors"} <= set(options)


# ---- dtypes and memory ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("choice", "dtype"), [("fp32", torch.float32), ("fp16", torch.float16),
                                               ("bf16", torch.bfloat16), ("default", None)])
def test_weight_dtype_choice(comfy_base, choice, dtype):
    name = "tiny_dtype.safetensors"
    path = _models(comfy_base, "diffusion_models") / name
    if not path.exists():
        safetensors.torch.save_file({k: v.half() for k, v in _comfy_tiny_sd().items()}, path)  # an fp16 file
    patcher = _load(name, choice)
    expected = dtype or mm.unet_dtype(model_params=patcher.model_size() // 2, weight_dtype=torch.float16)
    if choice == "default":
        assert expected == torch.float32  # ComfyUI's choice on this CPU host
    # ComfyUI keeps the temporal blend factors (plain nn.Parameter, not comfy.ops) in fp32
    params = {p.dtype for n, p in patcher.model.diffusion_model.named_parameters() if not n.endswith("mix_factor")}
    assert params == {expected}
    assert patcher.model.get_dtype() == expected


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_bin_is_memory_mapped(tmp_path):
    """A zip .bin is memory-mapped: reading it does not put its 64 MB into anonymous RAM."""
    path = tmp_path / "big.bin"
    torch.save({"w": torch.randn(16 * 1024 * 1024)}, path)
    read_state_dict = pack_import("controlnext.unet_loader").read_state_dict
    before = _rss()
    sd = read_state_dict(str(path))
    grown = _rss() - before
    assert sd["w"].numel() == 16 * 1024 * 1024
    assert grown < 16 * 1024 * 1024, grown
    legacy = tmp_path / "legacy.bin"
    torch.save({"w": torch.arange(4.0)}, legacy, _use_new_zipfile_serialization=False)
    assert torch.equal(read_state_dict(str(legacy))["w"], torch.arange(4.0))  # still loads, without mmap


# ---- ComfyUI's own loading ---------------------------------------------------------------------------------------

def test_the_loaded_model_is_core_s(comfy_base, monkeypatch):
    """The checked state dict goes to comfy.sd.load_diffusion_model_state_dict with the chosen dtype; its patcher is
    the MODEL (so the host's patcher class, dtype and manual-cast rules apply)."""
    safetensors.torch.save_file(_comfy_tiny_sd(), _models(comfy_base, "diffusion_models") / "tiny_core.safetensors")
    calls = []
    core_load = comfy.sd.load_diffusion_model_state_dict

    def spy(sd, model_options=None, **kwargs):
        calls.append((sorted(sd), dict(model_options or {})))
        calls.append(core_load(sd, model_options=model_options, **kwargs))
        return calls[-1]

    monkeypatch.setattr(comfy.sd, "load_diffusion_model_state_dict", spy)
    patcher = _load("tiny_core.safetensors", "bf16")
    keys, options = calls[0]
    assert calls[1] is patcher and options == {"dtype": torch.bfloat16}
    assert keys == sorted(_comfy_tiny_sd())  # ComfyUI keys without prefix
    assert _load("tiny_core.safetensors", "default") is calls[-1] and calls[-2][1] == {}  # core picks the dtype


def test_refuses_what_core_does_not_detect_as_svd_img2vid(comfy_base):
    """Core's detection matches SVD only at full size: without the tests' TinySVDImg2Vid a tiny UNet is unknown to
    it, and one detected as another model (here a tiny SV3D config) is not taken either."""
    safetensors.torch.save_file(_comfy_tiny_sd(), _models(comfy_base, "diffusion_models") / "tiny_unknown.safetensors")
    error = pack_import("controlnext.unet_loader").UNetLoadError
    with tiny_svd_detection_removed(), pytest.raises(error, match="tiny_unknown.safetensors passed the ControlNeXt"):
        _load("tiny_unknown.safetensors")

    class TinySV3D(comfy.supported_models.SV3D_u):
        unet_config = TinySVDImg2Vid.unet_config

    comfy.supported_models.models.insert(0, TinySV3D)
    try:
        with pytest.raises(error, match="ComfyUI detected tiny_unknown.safetensors as SV3D_u"):
            _load("tiny_unknown.safetensors")
    finally:
        comfy.supported_models.models.remove(TinySV3D)
