"""The newest ComfyUI's (0.38.x) context windows with causal_window_fix, emulated on ComfyUI 0.3.75.

Written from the newest source, not copied:
- comfy/context_windows.py IndexListContextWindow: `__init__` (total_frames, context_overlap, center_ratio, the guide
  fields), `get_tensor` (a `causal_anchor_index` attribute, when set and >= 0, is prepended to index_list; then
  `retain_index_list` overwrites those window-local positions with the same global frames), `add_window` (index_list
  only, never the anchor), `get_region_index`, `get_window_for_modality`.
- comfy/context_windows.py IndexListContextHandler: `__init__` (freenoise, cond_retain_index_list and
  latent_retain_index_list parsed from comma strings, split_conds_to_windows, causal_window_fix=True),
  `should_use_context`, `get_resized_cond` (tensors and `.cond` tensors whose size along dim is the frame count are
  cut with window.get_tensor, so they get the anchor too; `num_video_frames` is set to `window.context_length`, the
  window's own length without the anchor), `set_step` (`timestep[0]`; no match keeps the last step),
  `get_context_windows`, `execute`, `evaluate_context_windows` (causal_window_fix: `anchor = index_list[0] - 1`, set as
  `window.causal_anchor_index` when `0 <= anchor < frames`, before the latent, timestep and conds are cut, so the model
  call holds one frame more than index_list names; `transformer_options["context_window"]` is the window object; the
  anchor's output frame is dropped with `narrow(dim, 1, n - 1)`), `combine_context_window_results` (weights from
  `fuse_method.func(..., context_overlap=window.context_overlap)`, as `get_context_weights` passes it).
- comfy_extras/nodes_context_windows.py ContextWindowsManualNode: the newest inputs, in order, with their defaults.

The methods are installed on 0.3.75's own classes (not on subclasses), as the newest host has only those classes: a
subclass the pack defined at import (controlnext/patch.py SVDIndexListContextHandler) inherits the newest behaviour,
as it would on the newest host. Not emulated (no SVD graph uses them): multimodal windows and guide frames
(WindowingState; SVD has one modality and no guide_attention_entries), the model's resize_cond_for_context_window hook
is called only when the model has it (0.3.75's BaseModel has none; the newest BaseModel's returns None and SVD does
not override it), FreeNoise (the node refuses freenoise=True here).
install(monkeypatch) applies it for one test.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import comfy.context_windows as cw
import comfy.model_management
import comfy.patcher_extension
import nodes
import pytest
import torch
from comfy_api.latest import io

RESIZE_COND_ITEM = "resize_cond_item"  # IndexListCallbacks.RESIZE_COND_ITEM (newest; 0.3.75 has no such callback)


def _parse_index_list(text: Any) -> list[int]:
    return [int(part.strip()) for part in text.split(",")] if text else []


def _at(dim: int, index: Any) -> tuple:
    return (slice(None),) * dim + (index,)


class _Window:
    """Method bodies for comfy.context_windows.IndexListContextWindow (newest)."""

    def __init__(self, index_list: list[int], dim: int = 0, total_frames: int = 0,
                 modality_windows: dict | None = None, context_overlap: int = 0) -> None:
        self.index_list = index_list
        self.context_length = len(index_list)
        self.context_overlap = context_overlap
        self.dim = dim
        self.total_frames = total_frames
        self.center_ratio = (min(index_list) + max(index_list)) / (2 * total_frames)
        self.modality_windows = modality_windows
        self.guide_frames_indices = []
        self.guide_overlap_info = []
        self.guide_kf_local_positions = []
        self.guide_downscale_factors = []

    def get_tensor(self, full: torch.Tensor, device: Any = None, dim: int | None = None,
                   retain_index_list: list[int] = []) -> torch.Tensor:  # noqa: B006 (the source's signature)
        dim = self.dim if dim is None else dim
        if dim == 0 and full.shape[dim] == 1:
            return full
        indices = list(self.index_list)
        anchor = getattr(self, "causal_anchor_index", None)
        if anchor is not None and anchor >= 0:
            indices = [anchor, *indices]
        window = full[_at(dim, indices)]
        if retain_index_list:
            window[_at(dim, list(retain_index_list))] = full[_at(dim, list(retain_index_list))]
        return window.to(device)

    def add_window(self, full: torch.Tensor, to_add: torch.Tensor, dim: int | None = None) -> torch.Tensor:
        dim = self.dim if dim is None else dim
        full[_at(dim, self.index_list)] += to_add
        return full

    def get_region_index(self, num_regions: int) -> int:
        return min(max(int(self.center_ratio * num_regions), 0), num_regions - 1)

    def get_window_for_modality(self, modality_idx: int) -> Any:
        return self if modality_idx == 0 else self.modality_windows[modality_idx]


class _Handler:
    """Method bodies for comfy.context_windows.IndexListContextHandler (newest, one modality, no guide frames)."""

    def __init__(self, context_schedule: cw.ContextSchedule, fuse_method: cw.ContextFuseMethod, context_length: int = 1,
                 context_overlap: int = 0, context_stride: int = 1, closed_loop: bool = False, dim: int = 0,
                 freenoise: bool = False, cond_retain_index_list: Any = "", split_conds_to_windows: bool = False,
                 latent_retain_index_list: Any = "", causal_window_fix: bool = True) -> None:
        self.context_schedule = context_schedule
        self.fuse_method = fuse_method
        self.context_length = context_length
        self.context_overlap = context_overlap
        self.context_stride = context_stride
        self.closed_loop = closed_loop
        self.dim = dim
        self._step = 0
        self.freenoise = freenoise
        self.cond_retain_index_list = _parse_index_list(cond_retain_index_list)
        self.split_conds_to_windows = split_conds_to_windows
        self.latent_retain_index_list = _parse_index_list(latent_retain_index_list)
        self.causal_window_fix = causal_window_fix
        self.callbacks = {}

    def should_use_context(self, model: Any, conds: list, x_in: torch.Tensor, timestep: torch.Tensor,
                           model_options: dict) -> bool:
        frames = x_in.size(self.dim)
        if frames > self.context_length:
            logging.info(f"\nUsing context windows: Context length {self.context_length} with overlap "
                         f"{self.context_overlap} for {frames} frames.")
            return True
        logging.info(f"\nNot using context windows since context length ({self.context_length}) exceeds input "
                     f"frames ({frames}).")
        return False

    def get_resized_cond(self, cond_in: list[dict] | None, x_in: torch.Tensor, window: Any,
                         device: Any = None) -> list | None:
        if cond_in is None:
            return None
        if self.split_conds_to_windows and len(cond_in) > 1:
            cond_in = [cond_in[window.get_region_index(len(cond_in))]]
        frames = x_in.size(self.dim)

        def is_per_frame(tensor: torch.Tensor) -> bool:
            return ((self.dim < tensor.ndim and tensor.size(self.dim) == frames)
                    or (tensor.ndim < self.dim and tensor.size(0) == frames))

        resized = []
        for actual in cond_in:
            out = actual.copy()
            for key, item in actual.items():
                if isinstance(item, torch.Tensor):
                    if self.dim < item.ndim and item.size(self.dim) == frames:
                        out[key] = window.get_tensor(item).to(device)
                    else:
                        out[key] = item.to(device)
                elif key == "control":
                    out[key] = self.prepare_control_objects(item, device)
                elif isinstance(item, dict):
                    new_item = item.copy()
                    for cond_key, value in new_item.items():
                        replaced = None
                        for callback in comfy.patcher_extension.get_all_callbacks(RESIZE_COND_ITEM, self.callbacks):
                            replaced = callback(cond_key, value, window, x_in, device, new_item)
                            if replaced is not None:
                                break
                        hook = getattr(getattr(self, "_model", None), "resize_cond_for_context_window", None)
                        if replaced is None and hook is not None:
                            replaced = hook(cond_key, value, window, x_in, device,
                                            retain_index_list=self.cond_retain_index_list)
                        if replaced is not None:
                            new_item[cond_key] = replaced
                        elif isinstance(value, torch.Tensor):
                            if is_per_frame(value):
                                new_item[cond_key] = window.get_tensor(value, device)
                        elif isinstance(getattr(value, "cond", None), torch.Tensor):
                            # (the source's audio_embed / vace_context branches: not SVD conds)
                            if is_per_frame(value.cond):
                                new_item[cond_key] = value._copy_with(window.get_tensor(
                                    value.cond, device, retain_index_list=self.cond_retain_index_list))
                        elif cond_key == "num_video_frames":
                            new_item[cond_key] = value._copy_with(value.cond)
                            new_item[cond_key].cond = window.context_length  # without the anchor
                    out[key] = new_item
            resized.append(out)
        return resized

    def set_step(self, timestep: torch.Tensor, model_options: dict) -> None:
        sample_sigmas = model_options["transformer_options"]["sample_sigmas"]
        matches = torch.nonzero(torch.isclose(sample_sigmas, timestep[0].to(sample_sigmas.dtype), rtol=0.0001))
        if torch.numel(matches) == 0:
            return
        self._step = int(matches[0].item())

    def get_context_windows(self, model: Any, x_in: torch.Tensor, model_options: dict) -> list:
        frames = x_in.size(self.dim)
        return [cw.IndexListContextWindow(indices, dim=self.dim, total_frames=frames,
                                          context_overlap=self.context_overlap)
                for indices in self.context_schedule.func(frames, self, model_options)]

    def execute(self, calc_cond_batch: Callable, model: Any, conds: list, x_in: torch.Tensor, timestep: torch.Tensor,
                model_options: dict) -> list[torch.Tensor]:
        self._model = model
        self.set_step(timestep, model_options)
        windows = list(enumerate(self.get_context_windows(model, x_in, model_options)))
        relative = self.fuse_method.name == cw.ContextFuseMethods.RELATIVE
        accum = [torch.zeros_like(x_in) for _ in conds]
        fill = torch.ones if relative else torch.zeros
        counts = [fill(cw.get_shape_for_dim(x_in, self.dim), device=x_in.device) for _ in conds]
        biases = [[0.0] * x_in.shape[self.dim] for _ in conds]
        for callback in comfy.patcher_extension.get_all_callbacks(cw.IndexListCallbacks.EXECUTE_START, self.callbacks):
            callback(self, model, x_in, conds, timestep, model_options)
        for numbered in windows:
            for result in self.evaluate_context_windows(calc_cond_batch, model, x_in, conds, timestep, [numbered],
                                                        model_options, total_windows=len(windows)):
                self.combine_context_window_results(x_in, result.sub_conds_out, result.sub_conds, result.window,
                                                    result.window_idx, len(windows), timestep, accum, counts, biases)
        try:
            if not relative:
                for i in range(len(accum)):
                    accum[i] /= counts[i]
            return accum
        finally:
            for callback in comfy.patcher_extension.get_all_callbacks(cw.IndexListCallbacks.EXECUTE_CLEANUP,
                                                                      self.callbacks):
                callback(self, model, x_in, conds, timestep, model_options)

    def evaluate_context_windows(self, calc_cond_batch: Callable, model: Any, x_in: torch.Tensor, conds: list,
                                 timestep: torch.Tensor, enumerated_context_windows: list, model_options: dict,
                                 window_state: Any = None, total_windows: int | None = None, device: Any = None,
                                 first_device: Any = None) -> list:
        results = []
        for window_idx, window in enumerated_context_windows:
            comfy.model_management.throw_exception_if_processing_interrupted()
            anchored = False
            if self.causal_window_fix:
                anchor = window.index_list[0] - 1
                if 0 <= anchor < x_in.size(self.dim):
                    window.causal_anchor_index = anchor  # set before anything is cut: latent and conds get it
                    anchored = True
            sub_x = window.get_tensor(x_in, device, retain_index_list=self.latent_retain_index_list)
            for callback in comfy.patcher_extension.get_all_callbacks(cw.IndexListCallbacks.EVALUATE_CONTEXT_WINDOWS,
                                                                      self.callbacks):
                callback(self, model, x_in, conds, timestep, model_options, window_idx, window, model_options, device,
                         first_device)
            logging.info(f"Context window {window_idx + 1}/{total_windows or len(enumerated_context_windows)}: "
                         f"frames {window.index_list[0]}-{window.index_list[-1]} of {x_in.shape[self.dim]}")
            model_options["transformer_options"]["context_window"] = window
            sub_timestep = window.get_tensor(timestep, dim=0)
            sub_conds = [self.get_resized_cond(cond, x_in, window) for cond in conds]
            sub_conds_out = calc_cond_batch(model, sub_conds, sub_x, sub_timestep, model_options)
            if anchored:  # the anchor only gives context: its output frame is dropped
                sub_conds_out = [out.narrow(self.dim, 1, out.shape[self.dim] - 1) for out in sub_conds_out]
            results.append(cw.ContextResults(window_idx, sub_conds_out, sub_conds, window))
        return results

    def combine_context_window_results(self, x_in: torch.Tensor, sub_conds_out: list, sub_conds: list, window: Any,
                                       window_idx: int, total_windows: int, timestep: torch.Tensor,
                                       conds_final: list, counts_final: list, biases_final: list) -> None:
        if self.fuse_method.name == cw.ContextFuseMethods.RELATIVE:
            first, last = window.index_list[0], window.index_list[-1]
            for pos, idx in enumerate(window.index_list):
                bias = max(1e-2, 1 - abs(idx - (first + last) / 2) / ((last - first + 1e-2) / 2))
                for i in range(len(sub_conds_out)):
                    total = biases_final[i][idx]
                    at, from_window = _at(self.dim, idx), _at(self.dim, pos)
                    conds_final[i][at] = (conds_final[i][at] * (total / (total + bias))
                                          + sub_conds_out[i][from_window] * (bias / (total + bias)))
                    biases_final[i][idx] = total + bias
        else:
            weights = self.fuse_method.func(window.context_length, sigma=timestep, handler=self,
                                            full_length=x_in.shape[self.dim], idxs=window.index_list,
                                            context_overlap=window.context_overlap)
            weights = cw.match_weights_to_dim(weights, x_in, self.dim, device=x_in.device)
            for i in range(len(sub_conds_out)):
                window.add_window(conds_final[i], sub_conds_out[i] * weights)
                window.add_window(counts_final[i], weights)
        for callback in comfy.patcher_extension.get_all_callbacks(
                cw.IndexListCallbacks.COMBINE_CONTEXT_WINDOW_RESULTS, self.callbacks):
            callback(self, x_in, sub_conds_out, sub_conds, window, window_idx, total_windows, timestep, conds_final,
                     counts_final, biases_final)


class ContextWindowsManual(io.ComfyNode):
    """The newest Context Windows (Manual) node (comfy_extras/nodes_context_windows.py ContextWindowsManualNode)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        schedules = [cw.ContextSchedules.STATIC_STANDARD, cw.ContextSchedules.UNIFORM_STANDARD,
                     cw.ContextSchedules.UNIFORM_LOOPED, cw.ContextSchedules.BATCHED]
        return io.Schema(
            node_id="ContextWindowsManual",
            display_name="Context Windows (Manual)",
            category="model_patches",
            description="Manually set context windows.",
            inputs=[
                io.Model.Input("model", tooltip="The model to apply context windows to during sampling."),
                io.Int.Input("context_length", min=1, default=16, tooltip="The length of the context window."),
                io.Int.Input("context_overlap", min=0, default=4, tooltip="The overlap of the context window."),
                io.Combo.Input("context_schedule", options=schedules, default=cw.ContextSchedules.STATIC_STANDARD,
                               tooltip="Step-dependent scheduling algorithm for context windows."),
                io.Int.Input("context_stride", min=1, default=1, tooltip="The stride of the context window."),
                io.Boolean.Input("closed_loop", default=False, tooltip="Whether to close the context window loop."),
                io.Combo.Input("fuse_method", options=cw.ContextFuseMethods.LIST_STATIC,
                               default=cw.ContextFuseMethods.PYRAMID, tooltip="How the windows are fused."),
                io.Int.Input("dim", min=0, max=5, default=0, tooltip="The dimension to apply the windows to."),
                io.Boolean.Input("freenoise", default=False, tooltip="FreeNoise noise shuffling."),
                io.String.Input("cond_retain_index_list", default="", tooltip="Cond positions kept per window."),
                io.Boolean.Input("split_conds_to_windows", default=False, tooltip="Split conds to windows."),
                io.String.Input("latent_retain_index_list", default="", tooltip="Latent positions kept per window."),
                io.Boolean.Input("causal_window_fix", default=True,
                                 tooltip="Whether to add a causal fix frame to non-0-indexed context windows."),
            ],
            outputs=[io.Model.Output(tooltip="The model with context windows applied during sampling.")],
            is_experimental=True,
        )

    @classmethod
    def execute(cls, model: Any, context_length: int, context_overlap: int, context_schedule: str,
                context_stride: int, closed_loop: bool, fuse_method: str, dim: int, freenoise: bool,
                cond_retain_index_list: str = "", split_conds_to_windows: bool = False,
                latent_retain_index_list: str = "", causal_window_fix: bool = True) -> io.NodeOutput:
        if freenoise:
            raise NotImplementedError("FreeNoise is not emulated")
        model = model.clone()
        model.model_options["context_handler"] = cw.IndexListContextHandler(
            context_schedule=cw.get_matching_context_schedule(context_schedule),
            fuse_method=cw.get_matching_fuse_method(fuse_method), context_length=context_length,
            context_overlap=context_overlap, context_stride=context_stride, closed_loop=closed_loop, dim=dim,
            freenoise=freenoise, cond_retain_index_list=cond_retain_index_list,
            split_conds_to_windows=split_conds_to_windows, latent_retain_index_list=latent_retain_index_list,
            causal_window_fix=causal_window_fix)
        cw.create_prepare_sampling_wrapper(model)
        return io.NodeOutput(model)


def install(monkeypatch: pytest.MonkeyPatch) -> None:
    """The newest context windows for one test (monkeypatch undoes it): the methods above on 0.3.75's
    IndexListContextWindow and IndexListContextHandler, and the newest ContextWindowsManual node."""
    for target, source in ((cw.IndexListContextWindow, _Window), (cw.IndexListContextHandler, _Handler)):
        for name, member in vars(source).items():
            if name == "__init__" or (callable(member) and not name.startswith("__")):
                monkeypatch.setattr(target, name, member, raising=False)  # some are new methods
    monkeypatch.setitem(nodes.NODE_CLASS_MAPPINGS, "ContextWindowsManual", ContextWindowsManual)
