"""Newer ComfyUI's dynamic VRAM (comfy-aimdo) as the pack's loaders meet it, emulated on ComfyUI 0.3.75.

Written from the newest source (Comfy-Org/ComfyUI, 0.38.x), three behaviours:

1. Lazily materialised comfy.ops Linear layers: comfy/ops.py `disable_weight_init.Linear.__init__` and
   `._load_from_state_dict`, `disable_weight_init._lazy_load_from_state_dict`. With
   `comfy.memory_management.aimdo_enabled`, a Linear whose class keeps that `_load_from_state_dict` (so also
   manual_cast.Linear) is built with `weight` and `bias` None (no storage), records the construction dtype as
   `weight_comfy_model_dtype` / `bias_comfy_model_dtype`, and gets its parameters only in `_load_from_state_dict`:
   `Parameter(tensor)` from the state dict, cloned unless `assign`, keeping the tensor's (the file's) dtype. A missing
   weight becomes zeros (of shape (in_features, out_features), as the source has it) and is reported missing. Classes
   that override `_load_from_state_dict` keep torch's eager path. Other layer types stay eager in the source too
   (Embedding is also lazy there, but neither the SVD UNet nor the control network has one).
2. Read-only memory-mapped safetensors: comfy/utils.py `load_torch_file` calls `load_safetensors` when aimdo is
   enabled: every tensor is `torch.frombuffer` over a read-only mapping of the file (writing to one faults).
   Here a Python mmap with ACCESS_READ stands in for comfy_aimdo.model_mmap.ModelMMAP; the header checks raise
   ValueError as there. Other files (torch pickles) load as before.
3. The host's patcher class: main.py sets `comfy.model_patcher.CoreModelPatcher = ModelPatcherDynamic` when aimdo
   starts (else the source binds `CoreModelPatcher = ModelPatcher`, comfy/model_patcher.py), and core's loaders build
   their patchers with it (comfy/sd.py `load_diffusion_model_state_dict`: the patcher is created, then weights load
   with `assign=model_patcher.is_dynamic()`). `core_model_patcher()` registers a ModelPatcher subclass under that
   name, with `is_dynamic()` as given (ModelPatcherDynamic's VRAM streaming itself is not emulated: it needs a GPU),
   and makes 0.3.75's `comfy.sd.load_diffusion_model_state_dict` build its patcher with it, as the newest one does
   (0.3.75 loads the weights before it builds the patcher, so it copies them where the newest would assign them).

Each context manager restores everything it changed on exit; models built inside are meant to be used inside.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import comfy.model_patcher
import comfy.ops
import comfy.sd
import comfy.utils
import torch

_Linear = comfy.ops.disable_weight_init.Linear
# comfy/utils.py _TYPES (safetensors dtype names), the ones a model file holds
_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
_MAX_HEADER = 100_000_000


def _eager(module: torch.nn.Module) -> bool:
    # "don't trust subclasses that BYO state dict loader to call us" (comfy/ops.py)
    return type(module)._load_from_state_dict is not _Linear._load_from_state_dict


def _lazy_load(module: torch.nn.Module, state_dict: dict, prefix: str, local_metadata: dict, missing_keys: list,
               unexpected_keys: list, weight_shape: tuple[int, ...], bias_shape: tuple[int, ...] | None) -> None:
    """comfy/ops.py disable_weight_init._lazy_load_from_state_dict."""
    assign = local_metadata.get("assign_to_params_buffers", False)
    for key, value in state_dict.items():
        name = key[len(prefix):]
        if name == "weight":
            module.weight = torch.nn.Parameter(value if assign else value.clone(), requires_grad=False)
        elif bias_shape is not None and name == "bias" and value is not None:
            module.bias = torch.nn.Parameter(value if assign else value.clone(), requires_grad=False)
        else:
            unexpected_keys.append(key)
    if module.weight is None:
        module.weight = torch.nn.Parameter(torch.zeros(weight_shape), requires_grad=False)
        missing_keys.append(prefix + "weight")
    if bias_shape is not None and module.bias is None and getattr(module, "comfy_need_lazy_init_bias", False):
        module.bias = torch.nn.Parameter(torch.zeros(bias_shape), requires_grad=False)
        missing_keys.append(prefix + "bias")


def _read_only_safetensors(path: str) -> tuple[dict[str, torch.Tensor], dict]:
    """comfy/utils.py load_safetensors: tensors over a read-only mapping of the whole file."""
    size = os.path.getsize(path)
    if size < 8:
        raise ValueError(f"The safetensors header is incomplete.\n\nFile path: {path}")
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    view = memoryview(mapped)
    (header_size,) = struct.unpack("<Q", view[:8])
    if header_size > _MAX_HEADER or 8 + header_size > size:
        raise ValueError(f"The safetensors header is too large or incomplete.\n\nFile path: {path}")
    try:
        header = json.loads(view[8:8 + header_size].tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{e}\n\nFile path: {path}") from e
    if not isinstance(header, dict):
        raise ValueError(f"The safetensors header is invalid.\n\nFile path: {path}")
    data = view[8 + header_size:]
    sd = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        dtype = _SAFETENSORS_DTYPES[info["dtype"]]
        if start < 0 or end < start or end > len(data) or math.prod(info["shape"]) * dtype.itemsize != end - start:
            raise ValueError(f"Tensor {name!r} has invalid data offsets.\n\nFile path: {path}")
        if start == end:
            sd[name] = torch.empty(info["shape"], dtype=dtype)
            continue
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given buffer is not writable")  # read-only by design
            sd[name] = torch.frombuffer(data[start:end], dtype=dtype).view(info["shape"])  # keeps the mapping alive
    return sd, header.get("__metadata__", {})


@contextmanager
def dynamic_vram() -> Iterator[None]:
    """Behaviours 1 and 2 (aimdo enabled) inside the block."""
    original_init = _Linear.__init__
    original_load = _Linear._load_from_state_dict
    original_load_torch_file = comfy.utils.load_torch_file

    def linear_init(self: torch.nn.Linear, in_features: int, out_features: int, bias: bool = True,
                    device: Any = None, dtype: torch.dtype | None = None) -> None:
        if _eager(self):
            original_init(self, in_features, out_features, bias, device, dtype)
            return
        torch.nn.Module.__init__(self)
        self.in_features = in_features
        self.out_features = out_features
        self.weight = None
        self.bias = None
        self.comfy_need_lazy_init_bias = bias
        self.weight_comfy_model_dtype = dtype
        self.bias_comfy_model_dtype = dtype

    def linear_load(self: torch.nn.Linear, state_dict: dict, prefix: str, local_metadata: dict, strict: bool,
                    missing_keys: list, unexpected_keys: list, error_msgs: list) -> None:
        if _eager(self):
            original_load(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
            return
        _lazy_load(self, state_dict, prefix, local_metadata, missing_keys, unexpected_keys,
                   weight_shape=(self.in_features, self.out_features), bias_shape=(self.out_features,))

    def load_torch_file(ckpt: str, safe_load: bool = False, device: Any = None,
                        return_metadata: bool = False) -> Any:
        if not ckpt.lower().endswith((".safetensors", ".sft")):
            return original_load_torch_file(ckpt, safe_load=safe_load, device=device, return_metadata=return_metadata)
        sd, metadata = _read_only_safetensors(ckpt)
        return (sd, metadata) if return_metadata else sd

    _Linear.__init__ = linear_init
    _Linear._load_from_state_dict = linear_load
    comfy.utils.load_torch_file = load_torch_file
    try:
        yield
    finally:
        _Linear.__init__ = original_init
        _Linear._load_from_state_dict = original_load
        comfy.utils.load_torch_file = original_load_torch_file


@contextmanager
def core_model_patcher(dynamic: bool = False) -> Iterator[type[comfy.model_patcher.ModelPatcher]]:
    """Behaviour 3 inside the block; yields the class registered as comfy.model_patcher.CoreModelPatcher."""

    class CoreModelPatcher(comfy.model_patcher.ModelPatcher):
        """The host's core patcher class (ModelPatcherDynamic under aimdo: is_dynamic() True)."""

        def is_dynamic(self) -> bool:
            return dynamic

    module = comfy.model_patcher
    had_core = hasattr(module, "CoreModelPatcher")
    previous_core = getattr(module, "CoreModelPatcher", None)
    original_load_unet = comfy.sd.load_diffusion_model_state_dict

    def load_diffusion_model_state_dict(sd: dict, model_options: dict | None = None, metadata: Any = None,
                                        disable_dynamic: bool = False) -> Any:
        # 0.3.75 builds `comfy.model_patcher.ModelPatcher(...)` as its last step; the newest builds
        # `ModelPatcher if disable_dynamic else CoreModelPatcher`
        kwargs = {} if metadata is None else {"metadata": metadata}
        base = module.ModelPatcher
        module.ModelPatcher = base if disable_dynamic else CoreModelPatcher
        try:
            return original_load_unet(sd, model_options=model_options or {}, **kwargs)
        finally:
            module.ModelPatcher = base

    module.CoreModelPatcher = CoreModelPatcher
    comfy.sd.load_diffusion_model_state_dict = load_diffusion_model_state_dict
    try:
        yield CoreModelPatcher
    finally:
        comfy.sd.load_diffusion_model_state_dict = original_load_unet
        if had_core:
            module.CoreModelPatcher = previous_core
        else:
            del module.CoreModelPatcher
