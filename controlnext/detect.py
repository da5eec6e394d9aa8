"""What a state dict looks like, from its key names (and a few shapes): lets loaders refuse the wrong file clearly.

Only keys and `.shape` are read, so the values may be lazy (safetensors slices, mmap'd tensors, meta tensors).
Facts used:
- ControlNeXt-SVD v2 control network: 52 keys (time_embedding, embedding.{0..7}, down_res.{0,1}, down_sample.{0,1},
  mid_convs.{0,1}); mid_convs.1 maps 256 -> 320 channels. No `scale` tensor.
- ControlNeXt-SVD v1 control network (official ControlNeXt-SVD/models/controlnext_vid_svd.py): three levels
  (down_res.2 / down_sample.2), mid_convs.1 maps 256 -> 1280 channels, and a learned `scale` parameter.
- SVD UNet, diffusers keys: conv_in / down_blocks / ... with temporal_res_block / temporal_transformer_blocks.
- SVD UNet, ComfyUI (SGM) keys: input_blocks / middle_block / output_blocks with time_stack / time_mixer,
  optionally prefixed `model.diffusion_model.`.
- Full checkpoint: `model.diffusion_model.` plus VAE (`first_stage_model.`) and/or image encoder (`conditioner.`).
A ControlNeXt v1 UNet has exactly the SVD architecture, so it cannot be told apart from a v2 UNet by its keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Any

COMFY_UNET_PREFIX = "model.diffusion_model."
_CHECKPOINT_OTHER_PREFIXES = ("first_stage_model.", "conditioner.", "cond_stage_model.", "embedder.")
_CONTROLNEXT_MARKERS = ("embedding.0.weight", "down_res.0.conv1.weight", "mid_convs.1.weight")
_DIFFUSERS_TEMPORAL = ("temporal_res_block.", "temporal_transformer_blocks.")
_COMFY_TEMPORAL = ("time_stack.", "time_mixer.")


class WeightKind(Enum):
    CONTROLNEXT_V2 = "controlnext_v2"
    CONTROLNEXT_V1 = "controlnext_v1"
    SVD_UNET_DIFFUSERS = "svd_unet_diffusers"
    SVD_UNET_COMFY = "svd_unet_comfy"
    SVD_FULL_CHECKPOINT = "svd_full_checkpoint"
    OTHER_UNET = "other_unet"  # a UNet or checkpoint of another model family (SD 1.5, SDXL, ...)
    EMPTY = "empty"
    UNKNOWN = "unknown"


_DESCRIPTIONS = {
    WeightKind.CONTROLNEXT_V2: "a ControlNeXt-SVD v2 control network",
    WeightKind.CONTROLNEXT_V1: "a ControlNeXt-SVD v1 control network (v1 is a different architecture, not v2)",
    WeightKind.SVD_UNET_DIFFUSERS: "a Stable Video Diffusion UNet with diffusers keys (e.g. the ControlNeXt unet.bin)",
    WeightKind.SVD_UNET_COMFY: "a Stable Video Diffusion UNet with ComfyUI keys",
    WeightKind.SVD_FULL_CHECKPOINT: "a full Stable Video Diffusion checkpoint (UNet + VAE + image encoder)",
    WeightKind.OTHER_UNET: "a UNet or checkpoint of another model family (not Stable Video Diffusion)",
    WeightKind.EMPTY: "an empty file (no tensors)",
    WeightKind.UNKNOWN: "none of the known ControlNeXt-SVD or Stable Video Diffusion weight layouts",
}


def describe_weights(kind: WeightKind) -> str:
    """A short phrase for messages, e.g. 'a ControlNeXt-SVD v2 control network'."""
    return _DESCRIPTIONS[kind]


def _shape0(sd: Mapping[str, Any], key: str) -> int | None:
    shape = getattr(sd.get(key), "shape", None)
    return int(shape[0]) if shape is not None and len(shape) > 0 else None


def _identify_controlnext(sd: Mapping[str, Any]) -> WeightKind | None:
    if not all(k in sd for k in _CONTROLNEXT_MARKERS):
        return None
    v1 = "scale" in sd or any(k.startswith(("down_res.2.", "down_sample.2.")) for k in sd)
    if v1 or _shape0(sd, "mid_convs.1.weight") == 1280:
        return WeightKind.CONTROLNEXT_V1
    return WeightKind.CONTROLNEXT_V2


def identify_weights(sd: Mapping[str, Any]) -> WeightKind:
    """Classify a state dict by its key layout (cheap: one pass over the keys, no tensor data read)."""
    if len(sd) == 0:
        return WeightKind.EMPTY
    control = _identify_controlnext(sd)
    if control is not None:
        return control
    keys = list(sd.keys())
    prefixed = [k for k in keys if k.startswith(COMFY_UNET_PREFIX)]
    if prefixed:
        unet_keys = [k[len(COMFY_UNET_PREFIX):] for k in prefixed]
        svd = any(m in k for k in unet_keys for m in _COMFY_TEMPORAL)
        full = any(k.startswith(_CHECKPOINT_OTHER_PREFIXES) for k in keys)
        if not svd:
            return WeightKind.OTHER_UNET
        return WeightKind.SVD_FULL_CHECKPOINT if full else WeightKind.SVD_UNET_COMFY
    if any(k.startswith(("input_blocks.", "middle_block.", "output_blocks.")) for k in keys):
        svd = any(m in k for k in keys for m in _COMFY_TEMPORAL)
        return WeightKind.SVD_UNET_COMFY if svd else WeightKind.OTHER_UNET
    if any(k.startswith(("down_blocks.", "up_blocks.", "mid_block.")) for k in keys):
        svd = any(m in k for k in keys for m in _DIFFUSERS_TEMPORAL)
        return WeightKind.SVD_UNET_DIFFUSERS if svd else WeightKind.OTHER_UNET
    return WeightKind.UNKNOWN


def key_mismatches(expected: Mapping[str, Any], sd: Mapping[str, Any]) -> tuple[list[str], list[str], list[str]]:
    """(missing keys, unknown keys, "key (shape) vs (expected shape)" for wrong shapes) of sd against expected.

    Both only need `.shape`, so meta tensors and lazily read files work.
    """
    missing = [k for k in expected if k not in sd]
    unknown = [k for k in sd if k not in expected]
    wrong = [f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if k in sd and tuple(sd[k].shape) != tuple(v.shape)]
    return missing, unknown, wrong
