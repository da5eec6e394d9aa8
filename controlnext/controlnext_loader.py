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
    # plain torch layers on the meta device: the architecture's keys and shapes, nothing allocated or lazily absent
    expected = ControlNeXtSVD(ControlNeXtConfig.from_state_dict(sd), operations=torch.nn, device="meta").state_dict()
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


def host_patcher_class() -> type[comfy.model_patcher.ModelPatcher]:
    """The patcher class ComfyUI wraps its own models in, looked up at call time.

    Newer ComfyUI: comfy.model_patcher.CoreModelPatcher, which main.py rebinds to the dynamic-VRAM patcher
    (ModelPatcherDynamic) when dynamic VRAM is on; a plain ModelPatcher would opt out of it. 0.3.75 has no
    CoreModelPatcher and uses ModelPatcher itself.
    """
    return getattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcher)


def patcher_is_dynamic(patcher: comfy.model_patcher.ModelPatcher) -> bool:
    """ModelPatcher.is_dynamic() where the host has it (newer ComfyUI), else False (0.3.75: always legacy loading)."""
    is_dynamic = getattr(patcher, "is_dynamic", None)
    return bool(is_dynamic()) if callable(is_dynamic) else False


def load_network(sd: Mapping[str, torch.Tensor], dtype: torch.dtype | None = None,
                 disable_dynamic: bool = False) -> comfy.model_patcher.ModelPatcher:
    """A ControlNeXtSVD holding `sd` (strict) in `dtype` (default: the tensors' own), in the host's patcher class
    (a plain, never dynamic ModelPatcher with disable_dynamic, as core's loaders take it).

    Loaded the way ComfyUI loads its own models (comfy.sd.load_diffusion_model_state_dict): comfy.ops layers built
    with the model dtype, the patcher created first, then load_state_dict with assign=patcher.is_dynamic(). Nothing
    touches a parameter before the load: under dynamic VRAM comfy.ops Linear layers hold no weight until their
    _load_from_state_dict creates it from the given tensor, keeping that tensor's dtype, so the tensors are cast to
    `dtype` here first (a no-op when they already have it).
    """
    config = ControlNeXtConfig.from_state_dict(sd)
    dtype = dtype or next(iter(sd.values())).dtype
    net = ControlNeXtSVD(config, operations=comfy.ops.manual_cast, dtype=dtype)  # no weight init: all is loaded
    patcher_class = comfy.model_patcher.ModelPatcher if disable_dynamic else host_patcher_class()
    patcher = patcher_class(net, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())
    tensors = {k: v.to(dtype=dtype) for k, v in sd.items()}
    net.load_state_dict(tensors, strict=True, assign=patcher_is_dynamic(patcher))
    net.eval().requires_grad_(False)
    return patcher


def build_network(sd: Mapping[str, torch.Tensor], dtype: torch.dtype | None = None) -> ControlNeXtSVD:
    """The network of load_network (comfy.ops.manual_cast layers holding `sd`), without its patcher."""
    return load_network(sd, dtype).model


def load_network_file(path: str, dtype: torch.dtype | None = None,
                      disable_dynamic: bool = False) -> comfy.model_patcher.ModelPatcher:
    """The checked control network of a file, in `dtype`, in its patcher: the recipe newer ComfyUI re-runs (through
    ModelPatcher.cached_patcher_init) when it needs a non-dynamic or per-GPU copy of a model."""
    sd = read_state_dict(path)
    check_controlnext_state_dict(sd, os.path.basename(path))
    return _with_recipe(load_network(sd, dtype, disable_dynamic), path, dtype)


def _with_recipe(patcher: comfy.model_patcher.ModelPatcher, path: str | None,
                 dtype: torch.dtype | None) -> comfy.model_patcher.ModelPatcher:
    # as core's load_diffusion_model does: newer ModelPatcher.clone(disable_dynamic=True) and deepclone_multigpu call
    # cached_patcher_init[0](*cached_patcher_init[1], disable_dynamic=...) and raise without it; 0.3.75 ignores it
    if path is not None:
        patcher.cached_patcher_init = (load_network_file, (path, dtype))
    return patcher


class ControlNeXtModel:
    """The CONTROLNEXT value: a loaded network (CPU, the file's dtype) and per-compute-dtype patchers."""

    def __init__(self, network: ControlNeXtSVD, name: str,
                 patcher: comfy.model_patcher.ModelPatcher | None = None, path: str | None = None) -> None:
        self.network = network
        self.name = name
        self.path = path  # the file, for the patchers' re-load recipe (None: built in memory, no recipe)
        self.dtype = next(network.parameters()).dtype  # loaded: every parameter exists
        self._patchers: dict[torch.dtype, comfy.model_patcher.ModelPatcher] = {}
        if patcher is not None:
            self._patchers[self.dtype] = _with_recipe(patcher, path, self.dtype)

    @property
    def output_channels(self) -> int:
        return self.network.config.output_channels

    def patcher(self, compute_dtype: torch.dtype) -> comfy.model_patcher.ModelPatcher:
        """The network in `compute_dtype` (cast once, on the CPU), in the host's patcher class.

        ComfyUI moves it to the GPU together with the UNet and offloads it again; nothing here touches a GPU.
        """
        if compute_dtype not in self._patchers:
            if compute_dtype == self.dtype:
                patcher = host_patcher_class()(
                    self.network, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())
            else:
                patcher = load_network(self.network.state_dict(), compute_dtype)
            self._patchers[compute_dtype] = _with_recipe(patcher, self.path, compute_dtype)
        return self._patchers[compute_dtype]

    def __repr__(self) -> str:
        return f"ControlNeXtModel({self.name!r}, {self.dtype}, output {self.output_channels} ch)"


def load_controlnext(path: str) -> ControlNeXtModel:
    """Read, check and build a ControlNeXt-SVD v2 control network from `path` (.bin/.pt/.pth or .safetensors)."""
    name = os.path.basename(path)
    sd = read_state_dict(path)
    check_controlnext_state_dict(sd, name)
    dtypes = {v.dtype for v in sd.values()}
    if len(dtypes) != 1 or not next(iter(dtypes)).is_floating_point:
        raise ControlNeXtWeightsError(
            f"{name}: expected floating-point tensors of one dtype, found {sorted(map(str, dtypes))}.")
    patcher = load_network(sd)
    log.info("ControlNeXt: loaded %s (%s, output width %d, %s)", name, next(iter(dtypes)),
             patcher.model.config.output_channels, type(patcher).__name__)
    return ControlNeXtModel(patcher.model, name, patcher, path=path)
