"""Loads ControlNeXt-SVD v2 control-network files and wraps the network for ComfyUI's model management.

Accepted: the official `controlnet.bin` (torch pickle, read with weights_only=True) and kijai's fp16
`.safetensors`. Anything else (a UNet, a v1 file, missing or extra keys, wrong shapes) is refused with a message that
names the file and says what it is and what to load instead.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import comfy.model_management as mm
import comfy.model_patcher
import comfy.ops
import torch

from . import weights_file
from .detect import WeightKind, describe_weights, identify_weights, key_mismatches
from .network import ControlNeXtConfig, ControlNeXtSVD

log = logging.getLogger(__name__)

_UNET_KINDS = {WeightKind.SVD_UNET_DIFFUSERS, WeightKind.SVD_UNET_COMFY, WeightKind.SVD_FULL_CHECKPOINT,
               WeightKind.OTHER_UNET}


class ControlNeXtWeightsError(ValueError):
    """The file is not a usable ControlNeXt-SVD v2 control network."""


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file or a torch pickle (weights_only=True: no code runs from the file)."""
    return weights_file.read_state_dict(
        path, os.path.basename(path), ControlNeXtWeightsError,
        "Use the official ControlNeXt-SVD/v2/controlnet.bin or controlnext-svd_v2-controlnet-fp16.safetensors.")


def check_controlnext_state_dict(sd: Mapping[str, Any], name: str) -> ControlNeXtConfig:
    """The widths of a complete v2 state dict, or ControlNeXtWeightsError saying what the file is instead."""
    kind = identify_weights(sd)
    what = describe_weights(kind)
    if kind in _UNET_KINDS:
        raise ControlNeXtWeightsError(
            f"{name} is {what}, not a ControlNeXt control network. Load UNet files with ControlNeXtUNetLoader; "
            "this loader takes the small (7-14 MB) ControlNeXt-SVD v2 controlnet file.")
    if kind is WeightKind.CONTROLNEXT_V1:
        raise ControlNeXtWeightsError(
            f"{name} is {what}. This pack runs ControlNeXt-SVD v2 only: download ControlNeXt-SVD/v2/controlnet.bin "
            "(Pbihao/ControlNeXt) or controlnext-svd_v2-controlnet-fp16.safetensors (Kijai/ControlNeXt-SVD-V2-Comfy).")
    if kind is not WeightKind.CONTROLNEXT_V2:
        raise ControlNeXtWeightsError(
            f"{name} is {what}, not a ControlNeXt-SVD v2 control network (its keys do not match the official 52).")
    expected = ControlNeXtSVD(ControlNeXtConfig.from_state_dict(sd), operations=_MetaOps).state_dict()
    missing, unknown, wrong = key_mismatches(expected, sd)
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
    if unknown:
        problems.append(f"{len(unknown)} unknown keys (e.g. {', '.join(unknown[:3])})")
    if wrong:
        problems.append(f"{len(wrong)} tensors of the wrong shape (e.g. {'; '.join(wrong[:2])})")
    if problems:
        raise ControlNeXtWeightsError(
            f"{name} looks like a ControlNeXt-SVD v2 control network but is incomplete or altered: "
            f"{', '.join(problems)}. Re-download the file (it has {len(expected)} tensors).")
    return ControlNeXtConfig.from_state_dict(sd)


class _MetaOps:
    """Layer factory that allocates nothing (shape checking only)."""

    @staticmethod
    def Linear(*args: Any, **kwargs: Any) -> torch.nn.Linear:  # noqa: N802 (mirrors torch.nn names)
        return torch.nn.Linear(*args, device="meta", **kwargs)

    @staticmethod
    def Conv2d(*args: Any, **kwargs: Any) -> torch.nn.Conv2d:  # noqa: N802
        return torch.nn.Conv2d(*args, device="meta", **kwargs)

    @staticmethod
    def GroupNorm(*args: Any, **kwargs: Any) -> torch.nn.GroupNorm:  # noqa: N802
        return torch.nn.GroupNorm(*args, device="meta", **kwargs)


class ControlNeXtModel:
    """The CONTROLNEXT value: a loaded network (CPU, the file's dtype) and per-compute-dtype ModelPatchers."""

    def __init__(self, network: ControlNeXtSVD, name: str) -> None:
        self.network = network
        self.name = name
        self.dtype = next(network.parameters()).dtype
        self._patchers: dict[torch.dtype, comfy.model_patcher.ModelPatcher] = {}

    @property
    def output_channels(self) -> int:
        return self.network.config.output_channels

    def patcher(self, compute_dtype: torch.dtype) -> comfy.model_patcher.ModelPatcher:
        """The network cast once to `compute_dtype` (on the CPU), wrapped for ComfyUI's model management.

        ComfyUI moves it to the GPU together with the UNet and offloads it again; nothing here touches a GPU.
        """
        if compute_dtype not in self._patchers:
            if compute_dtype == self.dtype:
                net = self.network
            else:
                net = build_network(self.network.state_dict(), compute_dtype)
            self._patchers[compute_dtype] = comfy.model_patcher.ModelPatcher(
                net, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())
        return self._patchers[compute_dtype]

    def __repr__(self) -> str:
        return f"ControlNeXtModel({self.name!r}, {self.dtype}, output {self.output_channels} ch)"


def build_network(sd: Mapping[str, torch.Tensor], dtype: torch.dtype | None = None) -> ControlNeXtSVD:
    """A ControlNeXtSVD with comfy.ops.manual_cast layers holding `sd` (strict), in `dtype` or the tensors' own."""
    config = ControlNeXtConfig.from_state_dict(sd)
    dtype = dtype or next(iter(sd.values())).dtype
    net = ControlNeXtSVD(config, operations=comfy.ops.manual_cast)  # no weight init: every tensor is loaded
    net.to(dtype=dtype)
    net.load_state_dict(sd, strict=True)
    return net.eval().requires_grad_(False)


def load_controlnext(path: str) -> ControlNeXtModel:
    """Read, check and build a ControlNeXt-SVD v2 control network from `path` (.bin/.pt/.pth or .safetensors)."""
    name = os.path.basename(path)
    sd = read_state_dict(path)
    check_controlnext_state_dict(sd, name)
    dtypes = {v.dtype for v in sd.values()}
    if len(dtypes) != 1 or not next(iter(dtypes)).is_floating_point:
        raise ControlNeXtWeightsError(
            f"{name}: expected floating-point tensors of one dtype, found {sorted(map(str, dtypes))}.")
    net = build_network(sd)
    log.info("ControlNeXt: loaded %s (%s, output width %d)", name, next(iter(dtypes)), net.config.output_channels)
    return ControlNeXtModel(net, name)
