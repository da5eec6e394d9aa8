"""Load the ControlNeXt-SVD v2 fine-tuned UNet (any released format) as ComfyUI's SVD_img2vid MODEL.

Formats: the official torch-pickle unet.bin (diffusers keys, fp32), kijai's fp16 safetensors with diffusers keys, and
the ComfyUI-key conversion with or without the `model.diffusion_model.` prefix. The architecture is inferred from
the weights with ComfyUI's own detect_unet_config (so tiny test UNets go through the same path), and the model is
built like comfy.sd.load_diffusion_model_state_dict builds it, but with a strict all-keys check: the official
loader's strict=False silently keeps plain SVD weights when the keys do not match.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import comfy.model_detection
import comfy.model_management as mm
import comfy.model_patcher
import comfy.supported_models
import comfy.utils
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


def _check_coverage(model: torch.nn.Module, sd: Mapping[str, torch.Tensor], name: str, kind: WeightKind) -> None:
    expected = model.state_dict()
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


def load_controlnext_unet(path: str, weight_dtype: str = "default",
                          name: str | None = None) -> comfy.model_patcher.ModelPatcher:
    """Load a ControlNeXt-SVD UNet file as a ModelPatcher around comfy.model_base.SVD_img2vid."""
    name = name or os.path.basename(path)
    if weight_dtype not in WEIGHT_DTYPES:
        raise UNetLoadError(f"weight_dtype {weight_dtype!r} is not one of {', '.join(WEIGHT_DTYPES)}")
    sd, kind = to_comfy_unet_state_dict(read_state_dict(path, name), name)
    unet_config = infer_unet_config(sd, name)
    model_config = comfy.supported_models.SVD_img2vid(unet_config)

    # dtype selection as comfy.sd.load_diffusion_model_state_dict does it, with the node's override
    load_device = mm.get_torch_device()
    offload_device = mm.unet_offload_device()
    supported = list(model_config.supported_inference_dtypes)
    unet_dtype = WEIGHT_DTYPES[weight_dtype] or mm.unet_dtype(
        model_params=comfy.utils.calculate_parameters(sd), supported_dtypes=supported,
        weight_dtype=comfy.utils.weight_dtype(sd))
    manual_cast_dtype = mm.unet_manual_cast(unet_dtype, load_device, supported)
    model_config.set_inference_dtype(unet_dtype, manual_cast_dtype)

    model = model_config.get_model(sd, "")
    _check_coverage(model.diffusion_model, sd, name, kind)
    model = model.to(offload_device)
    model.load_model_weights(sd, "")
    log.info("ControlNeXt UNet %s: %s, %d tensors, %s (compute %s), channels %d x %s", name, describe_weights(kind),
             len(model.diffusion_model.state_dict()), unet_dtype, manual_cast_dtype or unet_dtype,
             unet_config["model_channels"], unet_config["channel_mult"])
    return comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=offload_device)
