"""Load the ControlNeXt-SVD v2 fine-tuned UNet (any released format) as ComfyUI's SVD_img2vid MODEL.

Formats: the official torch-pickle unet.bin (diffusers keys, fp32), kijai's fp16 safetensors with diffusers keys, and
the ComfyUI-key conversion with or without the `model.diffusion_model.` prefix. This module does what only the pack
can: read the file safely, convert the keys to ComfyUI's, and check the key set against the complete architecture
(built from ComfyUI's own detect_unet_config on the meta device, never from a model's current state: under newer
ComfyUI's dynamic VRAM, comfy.ops Linear layers hold no weight until loaded). The official loader's strict=False
silently keeps plain SVD weights when the keys do not match; a file that fails the check is refused. The checked state
dict then goes to ComfyUI's own comfy.sd.load_diffusion_model_state_dict, so the host's patcher class, dynamic VRAM,
dtype and manual-cast rules apply on every ComfyUI version.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import comfy.ldm.modules.diffusionmodules.openaimodel
import comfy.model_base
import comfy.model_detection
import comfy.model_patcher
import comfy.sd
import comfy.supported_models
import torch

from . import weights_file
from .detect import COMFY_UNET_PREFIX, WeightKind, describe_weights, identify_weights, key_mismatches
from .unet_keys import diffusers_to_comfy_keys

log = logging.getLogger(__name__)

WEIGHT_DTYPES: dict[str, torch.dtype | None] = {
    "default": None,  # ComfyUI's choice for the device (mm.unet_dtype): fp16 on most GPUs, fp32 on CPU
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}
HEAD_WIDTH = 64  # ComfyUI's SVD config (num_head_channels); not stored in the weights
_EXPECTED = (
    "Expected the ControlNeXt-SVD v2 UNet: the official unet.bin (Pbihao/ControlNeXt, ControlNeXt-SVD/v2) or "
    "controlnext-svd_v2-unet-fp16.safetensors / controlnext-svd_v2-unet-fp16_converted.safetensors "
    "(Kijai/ControlNeXt-SVD-V2-Comfy), in models/diffusion_models or models/controlnext."
)


class UNetLoadError(ValueError):
    """A file that is not a loadable ControlNeXt-SVD UNet; the message says which file and what to use instead."""


def _examples(keys: list[str], n: int = 3) -> str:
    shown = ", ".join(sorted(keys)[:n])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def read_state_dict(path: str, name: str | None = None) -> dict[str, torch.Tensor]:
    """The file's tensors, memory-mapped where the format allows (safetensors always, torch zip pickles)."""
    return weights_file.read_state_dict(path, name or os.path.basename(path), UNetLoadError, _EXPECTED)


def _refusal(kind: WeightKind, name: str) -> str:
    looks = f"{name} looks like {describe_weights(kind)}, not a ControlNeXt-SVD v2 UNet."
    if kind is WeightKind.CONTROLNEXT_V2:
        return f"{looks} Load it with the ControlNeXt Loader node (ControlNeXtLoader) instead. {_EXPECTED}"
    if kind is WeightKind.CONTROLNEXT_V1:
        return (f"{looks} ControlNeXt-SVD v1 files do not work with v2: use the v2 files "
                f"(controlnet.bin and unet.bin from ControlNeXt-SVD/v2). {_EXPECTED}")
    if kind is WeightKind.SVD_FULL_CHECKPOINT:
        return (f"{looks} Load the full SVD checkpoint (e.g. svd_xt_1_1.safetensors) with ImageOnlyCheckpointLoader "
                f"for its VAE and CLIP vision model, and pick the ControlNeXt UNet file here. {_EXPECTED}")
    return f"{looks} {_EXPECTED}"


def to_comfy_unet_state_dict(sd: Mapping[str, torch.Tensor], name: str) -> tuple[dict[str, torch.Tensor], WeightKind]:
    """Rename a UNet state dict to ComfyUI keys without a prefix (same tensor objects: no copies)."""
    kind = identify_weights(sd)
    if kind is WeightKind.SVD_UNET_DIFFUSERS:
        mapping, unknown = diffusers_to_comfy_keys(sd.keys())
        if unknown:
            raise UNetLoadError(f"{name} looks like {describe_weights(kind)} but has {len(unknown)} keys that are not "
                                f"part of an SVD UNet: {_examples(unknown)}. {_EXPECTED}")
        return {mapping[k]: v for k, v in sd.items()}, kind
    if kind is WeightKind.SVD_UNET_COMFY:
        prefixed = [k for k in sd if k.startswith(COMFY_UNET_PREFIX)]
        if prefixed and len(prefixed) != len(sd):
            other = [k for k in sd if not k.startswith(COMFY_UNET_PREFIX)]
            raise UNetLoadError(f"{name} looks like {describe_weights(kind)} (prefix {COMFY_UNET_PREFIX!r}) but also "
                                f"holds {len(other)} other tensors: {_examples(other)}. {_EXPECTED}")
        cut = len(COMFY_UNET_PREFIX) if prefixed else 0
        return {k[cut:]: v for k, v in sd.items()}, kind
    raise UNetLoadError(_refusal(kind, name))


def infer_unet_config(sd: Mapping[str, torch.Tensor], name: str) -> dict[str, Any]:
    """The openaimodel UNetModel config of ComfyUI-key weights (ComfyUI's detect_unet_config), checked to be SVD."""
    try:
        config = comfy.model_detection.detect_unet_config(sd, "")
    except KeyError as e:  # detect_unet_config reads fixed companion keys of the blocks it finds
        raise UNetLoadError(
            f"{name} is an incomplete UNet: tensor {e.args[0]!r} is missing. A partial or delta file (e.g. ControlNeXt "
            f"learned_params) cannot be loaded on its own. {_EXPECTED}") from e
    problems = []
    if config is None:
        problems.append("no input_blocks.0.0.weight (conv_in)")
    else:
        if not (config.get("use_temporal_resblock") and config.get("use_temporal_attention")):
            problems.append("no temporal layers")
        if config.get("in_channels") != 8 or config.get("out_channels") != 4:
            problems.append(f"{config.get('in_channels')} input / {config.get('out_channels')} output channels "
                            f"(SVD: 8 / 4)")
        if config.get("adm_in_channels") != 768:
            problems.append(f"adm_in_channels {config.get('adm_in_channels')} (SVD: 768 = fps, motion, augmentation)")
        widths = [config["model_channels"] * m for m in config.get("channel_mult", [])]
        if any(w % HEAD_WIDTH for w in widths):
            problems.append(f"channel widths {widths} are not multiples of the attention head width {HEAD_WIDTH}")
    if problems:
        raise UNetLoadError(f"{name} has UNet-like keys but is not an SVD img2vid UNet: {'; '.join(problems)}. "
                            f"{_EXPECTED}")
    return config


class _PlainTorchOps:
    """torch.nn layers under the names comfy.ops uses: built on the meta device they give every tensor's key and shape
    and allocate nothing (comfy.ops layers may hold no weight before loading, and skip no allocation on 0.3.75)."""

    Linear = torch.nn.Linear
    Conv1d = torch.nn.Conv1d
    Conv2d = torch.nn.Conv2d
    Conv3d = torch.nn.Conv3d
    ConvTranspose1d = torch.nn.ConvTranspose1d
    ConvTranspose2d = torch.nn.ConvTranspose2d
    GroupNorm = torch.nn.GroupNorm
    LayerNorm = torch.nn.LayerNorm
    BatchNorm2d = torch.nn.BatchNorm2d
    Embedding = torch.nn.Embedding

    @classmethod
    def conv_nd(cls, dims: int, *args: Any, **kwargs: Any) -> torch.nn.Module:
        if dims == 2:
            return cls.Conv2d(*args, **kwargs)
        if dims == 3:
            return cls.Conv3d(*args, **kwargs)
        raise ValueError(f"unsupported dimensions: {dims}")


def expected_unet_tensors(unet_config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Every tensor (meta: key, shape) of the SVD UNet that ComfyUI builds for `unet_config`.

    The same UNetModel class and arguments comfy.model_base.SVD_img2vid passes (SVD_img2vid's config adds the head
    width etc. to the detected one), with plain torch layers in place of comfy.ops.
    """
    config = comfy.supported_models.SVD_img2vid(dict(unet_config)).unet_config
    meta = torch.device("meta")
    with meta:  # also tensors the blocks create without a device argument
        unet = comfy.ldm.modules.diffusionmodules.openaimodel.UNetModel(**config, device=meta,
                                                                        operations=_PlainTorchOps)
    return unet.state_dict()


def _check_coverage(expected: Mapping[str, torch.Tensor], sd: Mapping[str, torch.Tensor], name: str,
                    kind: WeightKind) -> None:
    missing, unexpected, wrong = key_mismatches(expected, sd)
    if not (missing or unexpected or wrong):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} of the UNet's {len(expected)} tensors are missing ({_examples(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} tensors are not part of it ({_examples(unexpected)})")
    if wrong:
        parts.append(f"{len(wrong)} have the wrong shape ({_examples(wrong)})")
    raise UNetLoadError(
        f"{name} looks like {describe_weights(kind)} but does not match a complete UNet: {'; '.join(parts)}. "
        "A partial or delta file (e.g. ControlNeXt learned_params) cannot be loaded on its own, and a partial load "
        f"would silently keep other weights. {_EXPECTED}"
    )


def _core_load(sd: dict[str, torch.Tensor], model_options: dict[str, Any],
               disable_dynamic: bool) -> comfy.model_patcher.ModelPatcher | None:
    if not disable_dynamic:
        return comfy.sd.load_diffusion_model_state_dict(sd, model_options=model_options)
    # only newer ComfyUI asks for a non-dynamic copy, and only its loader takes the argument
    return comfy.sd.load_diffusion_model_state_dict(sd, model_options=model_options, disable_dynamic=True)


def load_controlnext_unet(path: str, weight_dtype: str = "default", name: str | None = None,
                          disable_dynamic: bool = False) -> comfy.model_patcher.ModelPatcher:
    """Load a ControlNeXt-SVD UNet file as ComfyUI's MODEL (its patcher around comfy.model_base.SVD_img2vid).

    disable_dynamic: a plain (never dynamic-VRAM) patcher, as newer ComfyUI asks for when it re-creates the model from
    the patcher's cached_patcher_init recipe (non-dynamic delegates, multi-GPU copies).
    """
    name = name or os.path.basename(path)
    if weight_dtype not in WEIGHT_DTYPES:
        raise UNetLoadError(f"weight_dtype {weight_dtype!r} is not one of {', '.join(WEIGHT_DTYPES)}")
    sd, kind = to_comfy_unet_state_dict(read_state_dict(path, name), name)
    unet_config = infer_unet_config(sd, name)
    expected = expected_unet_tensors(unet_config)
    _check_coverage(expected, sd, name, kind)

    # ComfyUI's own loading: detection, dtype (default: mm.unet_dtype for the device), manual cast, patcher class
    # (CoreModelPatcher where the host has it) and assign-loading under dynamic VRAM.
    dtype = WEIGHT_DTYPES[weight_dtype]
    patcher = _core_load(sd, {} if dtype is None else {"dtype": dtype}, disable_dynamic)
    if patcher is None:
        raise UNetLoadError(
            f"{name} passed the ControlNeXt-SVD UNet checks, but this ComfyUI's model detection did not recognise it "
            f"as an SVD img2vid UNet ({unet_config['model_channels']} channels x {unet_config['channel_mult']}, "
            f"context {unet_config.get('context_dim')}), so it cannot load it. {_EXPECTED}")
    if type(patcher.model) is not comfy.model_base.SVD_img2vid:
        raise UNetLoadError(
            f"ComfyUI detected {name} as {type(patcher.model).__name__}, not an SVD img2vid UNet (e.g. SV3D has "
            f"another conditioning width). {_EXPECTED}")
    model = patcher.model
    log.info("ControlNeXt UNet %s: %s, %d tensors, %s (compute %s), channels %d x %s, %s", name,
             describe_weights(kind), len(expected), model.get_dtype(), model.manual_cast_dtype or model.get_dtype(),
             unet_config["model_channels"], unet_config["channel_mult"], type(patcher).__name__)
    # the recipe core's own load_diffusion_model leaves on its patchers (newer ModelPatcher.clone / multi-GPU re-load)
    patcher.cached_patcher_init = (load_controlnext_unet, (path, weight_dtype, name))
    return patcher
