"""ControlNeXt-SVD v2 sampling on ComfyUI's own machinery: a CFG guider that runs the official windows.

The official loop takes one Euler step per window and averages the stepped latents. An Euler step is affine in the
denoised prediction with per-frame coefficients that do not depend on the window, so averaging the per-window
CFG'd denoised predictions and then taking ONE step of any ComfyUI sampler gives exactly the official result for
Euler, and lets every other ComfyUI sampler, scheduler, preview and interruption work unchanged.
"""

from __future__ import annotations

import logging

import comfy.model_management
import comfy.patcher_extension
import comfy.sampler_helpers
import comfy.samplers
import torch

from .windows import Window, cfg_ramp, coverage, plan_windows

log = logging.getLogger(__name__)

POSE_INDICES_KEY = "controlnext_pose_indices"  # transformer_options entry read by the ControlNeXt patch
POSE_FRAMES_KEY = "controlnext_pose_frames"  # transformer_options entry set by ControlNeXtApply: pose count


class ControlNeXtGuider(comfy.samplers.CFGGuider):
    """Runs each step as the official overlapping windows with a per-window CFG ramp, averaging the results."""

    def __init__(self, model_patcher, frames_per_window: int, overlap: int, cfg_min: float, cfg_max: float):
        super().__init__(model_patcher)
        self.frames_per_window = frames_per_window
        self.overlap = overlap
        self.cfg_min = float(cfg_min)
        self.cfg_max = float(cfg_max)
        self.cfg = self.cfg_max
        self.windows: list[Window] = []

    def plan(self, frames: int) -> list[Window]:
        windows = plan_windows(frames, self.frames_per_window, self.overlap)
        pose_frames = self.model_options.get("transformer_options", {}).get(POSE_FRAMES_KEY)
        if pose_frames is not None and pose_frames != frames:
            raise ValueError(
                f"The latent has {frames} frames but ControlNeXtApply was given {pose_frames} pose images. They must "
                f"match (pose frame 0 is the reference pose): set video_frames to {pose_frames} in the conditioning "
                "node, or pass that many pose frames.")
        return windows

    def outer_sample(self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None,
                     disable_pbar=False, seed=None, latent_shapes=None):
        self.windows = self.plan(noise.shape[0])
        if "sampler_cfg_function" in self.model_options:
            log.warning("ControlNeXtSampler applies its own per-window CFG ramp (cfg_min..cfg_max); the CFG function "
                        "patched into the model (e.g. VideoLinearCFGGuidance) is not used.")
        # Memory is planned for one window (x2 for cond/uncond), not the whole clip: a long video needs no more VRAM.
        window_shape = (self.windows[0].length, *noise.shape[1:])
        self.inner_model, self.conds, self.loaded_models = comfy.sampler_helpers.prepare_sampling(
            self.model_patcher, window_shape, self.conds, self.model_options)
        device = self.model_patcher.load_device
        if denoise_mask is not None:
            denoise_mask = comfy.sampler_helpers.prepare_mask(denoise_mask, noise.shape, device)
        noise = noise.to(device)
        latent_image = latent_image.to(device)
        sigmas = sigmas.to(device)
        comfy.samplers.cast_to_load_options(self.model_options, device=device, dtype=self.model_patcher.model_dtype())
        try:
            self.model_patcher.pre_run()
            output = self.inner_sample(noise, latent_image, device, sampler, sigmas, denoise_mask, callback,
                                       disable_pbar, seed, latent_shapes=latent_shapes)
        finally:
            self.model_patcher.cleanup()
        comfy.sampler_helpers.cleanup_models(self.conds, self.loaded_models)
        del self.inner_model
        del self.loaded_models
        return output

    def inner_sample(self, noise, latent_image, device, sampler, sigmas, denoise_mask, callback, disable_pbar, seed,
                     latent_shapes=None):
        if latent_image is not None and torch.count_nonzero(latent_image) > 0:
            latent_image = self.inner_model.process_latent_in(latent_image)
        # Conditions are encoded for one window: SVD's num_video_frames and the repeated concat latent follow the
        # frame count of the noise they are built with, and every window has the same length.
        n = self.windows[0].length
        # per-run constants, moved to the device once rather than at every step and window
        shape = (-1, *([1] * (noise.ndim - 1)))
        self._count = coverage(self.windows, noise.shape[0]).to(device, torch.float32).view(shape)
        self._ramp = cfg_ramp(self.cfg_min, self.cfg_max, n).to(device).view(shape)
        self.conds = comfy.samplers.process_conds(
            self.inner_model, noise[:n], self.conds, device, latent_image[:n],
            None if denoise_mask is None else denoise_mask[:n], seed)
        model_options = comfy.model_patcher.create_model_options_clone(self.model_options)
        model_options.setdefault("transformer_options", {})["sample_sigmas"] = sigmas
        extra_args = {"model_options": model_options, "seed": seed}
        executor = comfy.patcher_extension.WrapperExecutor.new_class_executor(
            sampler.sample, sampler,
            comfy.patcher_extension.get_all_wrappers(comfy.patcher_extension.WrappersMP.SAMPLER_SAMPLE,
                                                     extra_args["model_options"], is_model_options=True))
        samples = executor.execute(self, sigmas, extra_args, callback, noise, latent_image, denoise_mask,
                                   disable_pbar)
        return self.inner_model.process_latent_out(samples.to(torch.float32))

    def predict_noise(self, x, timestep, model_options=None, seed=None):
        model_options = model_options or {}
        positive = self.conds.get("positive")
        negative = self.conds.get("negative")
        use_cfg = not (self.cfg_min == 1.0 and self.cfg_max == 1.0)
        total = torch.zeros_like(x, dtype=torch.float32)
        for window in self.windows:
            comfy.model_management.throw_exception_if_processing_interrupted()
            frames = slice(window.start, window.start + window.length)
            x_w, t_w = x[frames], timestep[frames]
            options = dict(model_options)
            options["transformer_options"] = dict(model_options.get("transformer_options", {}))
            options["transformer_options"][POSE_INDICES_KEY] = window.pose_indices
            conds = [positive, negative if use_cfg else None]
            cond_pred, uncond_pred = comfy.samplers.calc_cond_batch(self.inner_model, conds, x_w, t_w, options)
            for fn in options.get("sampler_pre_cfg_function", []):
                cond_pred, uncond_pred = fn({"conds": conds, "conds_out": [cond_pred, uncond_pred],
                                             "cond_scale": self.cfg_max, "timestep": t_w, "input": x_w,
                                             "sigma": t_w, "model": self.inner_model, "model_options": options})
            if use_cfg:
                denoised = uncond_pred + (cond_pred - uncond_pred) * self._ramp
            else:
                denoised = cond_pred
            kept = window.kept
            total[window.start + kept.start: window.start + kept.stop] += denoised[kept].float()
        return (total / self._count).to(x.dtype)
