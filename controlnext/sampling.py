"""ControlNeXt-SVD v2 sampling on ComfyUI's own machinery: a CFG guider that runs the official windows.

The official loop takes one Euler step per window and averages the stepped latents. An Euler step is affine in the
denoised prediction with per-frame coefficients that do not depend on the window, so averaging the per-window
CFG'd denoised predictions and then taking ONE step of any ComfyUI sampler gives exactly the official result for
Euler, and lets every other ComfyUI sampler, scheduler, preview and interruption work unchanged.

Only documented extension points of core are used, so whatever core's CFGGuider does around sampling (device
contexts, multi-GPU clones, weight caching, latent packing, denoise masks) applies here as to any guider:
- predict_noise, the override point of CFGGuider subclasses (as core's own Guider_DualCFG): the windows;
- a PREPARE_SAMPLING wrapper (as core's context windows): memory is planned for one window, not the whole clip;
- an OUTER_SAMPLE wrapper: the per-run window plan and its checks, before any model is loaded.
Core builds the conditions for the whole clip; each window gets them cut to its frames (see window_conds).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import comfy.model_management
import comfy.model_patcher
import comfy.patcher_extension
import comfy.samplers
import torch

from .windows import Window, cfg_ramp, coverage, plan_windows

log = logging.getLogger(__name__)

POSE_INDICES_KEY = "controlnext_pose_indices"  # transformer_options entry read by the ControlNeXt patch
POSE_FRAMES_KEY = "controlnext_pose_frames"  # transformer_options entry set by ControlNeXtApply: pose count
WRAPPER_KEY = "controlnext_windows"  # key of this guider's wrappers in its own model_options


def window_conds(conds: list[dict] | None, frames: int, window: Window) -> list[dict] | None:
    """Conditions that core processed for the whole clip, cut to one window.

    Tensors with one entry per frame (SVD's concat latent, a per-frame mask) keep the window's frames, and SVD's
    num_video_frames becomes the window length (the UNet reshapes its batch by it). Slices are views: no copies.
    """
    if conds is None or (window.start == 0 and window.length == frames):
        return conds
    frame_slice = slice(window.start, window.start + window.length)

    def per_frame(value: Any) -> bool:
        return isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == frames

    out = []
    for cond in conds:
        cut = {key: value[frame_slice] if per_frame(value) else value for key, value in cond.items()}
        model_conds = {}
        for key, value in cond.get("model_conds", {}).items():
            if key == "num_video_frames":
                value = value._copy_with(window.length)
            elif per_frame(getattr(value, "cond", None)):
                value = value._copy_with(value.cond[frame_slice])
            model_conds[key] = value
        cut["model_conds"] = model_conds
        out.append(cut)
    return out


@dataclass
class RunConstants:
    """What predict_noise needs at every step of one sampling run, built once on the sampling device."""

    conds: dict  # the processed conditions these were built from (core rebuilds them for every run)
    count: torch.Tensor  # windows averaged into each frame, (F, 1, 1, 1) float32
    ramp: torch.Tensor  # per-frame guidance inside a window, (n, 1, 1, 1) float32
    use_cfg: bool  # False for cfg 1 everywhere: the unconditional pass is skipped
    window_conds: list[list[list[dict] | None]]  # per window: [positive, negative or None] cut to its frames


class ControlNeXtGuider(comfy.samplers.CFGGuider):
    """Runs each step as the official overlapping windows with a per-window CFG ramp, averaging the results."""

    def __init__(self, model_patcher: comfy.model_patcher.ModelPatcher, frames_per_window: int, overlap: int,
                 cfg_min: float, cfg_max: float):
        super().__init__(model_patcher)
        # CFGGuider keeps a reference to the MODEL's options: the wrappers go on this guider's own copy, so the
        # user's MODEL (and every other sampler using it) is left as it was.
        self.model_options = comfy.model_patcher.create_model_options_clone(self.model_options)
        wrappers = comfy.patcher_extension.WrappersMP
        comfy.patcher_extension.add_wrapper_with_key(wrappers.OUTER_SAMPLE, WRAPPER_KEY, self._outer_sample_wrapper,
                                                     self.model_options, is_model_options=True)
        comfy.patcher_extension.add_wrapper_with_key(wrappers.PREPARE_SAMPLING, WRAPPER_KEY,
                                                     self._prepare_sampling_wrapper, self.model_options,
                                                     is_model_options=True)
        self.frames_per_window = frames_per_window
        self.overlap = overlap
        self.cfg_min = float(cfg_min)
        self.cfg_max = float(cfg_max)
        self.cfg = self.cfg_max
        self.windows: list[Window] = []  # the last run's plan
        self._run: RunConstants | None = None

    def plan(self, frames: int) -> list[Window]:
        windows = plan_windows(frames, self.frames_per_window, self.overlap)
        pose_frames = self.model_options.get("transformer_options", {}).get(POSE_FRAMES_KEY)
        if pose_frames is not None and pose_frames != frames:
            raise ValueError(
                f"The latent has {frames} frames but ControlNeXtApply was given {pose_frames} pose images. They must "
                f"match (pose frame 0 is the reference pose): set video_frames to {pose_frames} in the conditioning "
                "node, or pass that many pose frames.")
        return windows

    def _outer_sample_wrapper(self, executor: Any, noise: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        # Per run, before core loads anything: the window plan and its checks (clear errors before a model load).
        latent_shapes = kwargs.get("latent_shapes")
        if latent_shapes is not None and len(latent_shapes) > 1:
            raise ValueError("ControlNeXt sampling takes one video latent, not a nested latent of several streams: "
                             "pass the latent from the ControlNeXt/SVD conditioning node.")
        self.windows = self.plan(noise.shape[0])
        if "sampler_cfg_function" in self.model_options:
            log.warning("ControlNeXtSampler applies its own per-window CFG ramp (cfg_min..cfg_max); the CFG function "
                        "patched into the model (e.g. VideoLinearCFGGuidance) is not used.")
        self._run = None
        try:
            return executor(noise, *args, **kwargs)
        finally:
            self._run = None  # drop the device tensors and conditions of this run

    def _prepare_sampling_wrapper(self, executor: Any, model: Any, noise_shape: Any, *args: Any,
                                  **kwargs: Any) -> Any:
        # Core sizes the model load from noise_shape: one window (x2 for cond/uncond), not the whole clip, so a long
        # video needs no more VRAM than a short one.
        length = plan_windows(noise_shape[0], self.frames_per_window, self.overlap)[0].length
        return executor(model, torch.Size([length, *noise_shape[1:]]), *args, **kwargs)

    def _constants(self, x: torch.Tensor) -> RunConstants:
        if self._run is not None and self._run.conds is self.conds:
            return self._run
        frames = x.shape[0]
        if not self.windows or self.windows[-1].frames.stop != frames:
            self.windows = self.plan(frames)
        shape = (-1, *([1] * (x.ndim - 1)))
        use_cfg = not (self.cfg_min == 1.0 and self.cfg_max == 1.0)
        positive, negative = self.conds.get("positive"), self.conds.get("negative")
        self._run = RunConstants(
            conds=self.conds,
            count=coverage(self.windows, frames).to(x.device, torch.float32).view(shape),
            ramp=cfg_ramp(self.cfg_min, self.cfg_max, self.windows[0].length).to(x.device).view(shape),
            use_cfg=use_cfg,
            window_conds=[[window_conds(positive, frames, w), window_conds(negative, frames, w) if use_cfg else None]
                          for w in self.windows])
        return self._run

    def predict_noise(self, x: torch.Tensor, timestep: torch.Tensor, model_options: dict | None = None,
                      seed: int | None = None) -> torch.Tensor:
        model_options = model_options or {}
        run = self._constants(x)
        transformer_options = model_options.get("transformer_options", {})
        total = torch.zeros_like(x, dtype=torch.float32)
        for window, conds in zip(self.windows, run.window_conds, strict=True):
            comfy.model_management.throw_exception_if_processing_interrupted()
            frames = slice(window.start, window.start + window.length)
            x_w, t_w = x[frames], timestep[frames]
            options = dict(model_options)
            options["transformer_options"] = {**transformer_options, POSE_INDICES_KEY: window.pose_indices}
            cond_pred, uncond_pred = comfy.samplers.calc_cond_batch(self.inner_model, conds, x_w, t_w, options)
            for fn in options.get("sampler_pre_cfg_function", []):
                cond_pred, uncond_pred = fn({"conds": conds, "conds_out": [cond_pred, uncond_pred],
                                             "cond_scale": self.cfg_max, "timestep": t_w, "input": x_w,
                                             "sigma": t_w, "model": self.inner_model, "model_options": options})
            if run.use_cfg:
                denoised = uncond_pred + (cond_pred - uncond_pred) * run.ramp
            else:
                denoised = cond_pred
            kept = window.kept
            total[window.start + kept.start: window.start + kept.stop] += denoised[kept].float()
        return (total / run.count).to(x.dtype)
