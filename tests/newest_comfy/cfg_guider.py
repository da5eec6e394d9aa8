"""The newest ComfyUI's (0.38.x) CFGGuider.sample / outer_sample / inner_sample and sampler_helpers.prepare_sampling,
on ComfyUI 0.3.75.

Written from the newest source (GitHub Comfy-Org/ComfyUI, comfy/samplers.py at commit e0d4ea77a9f6 and 311c01406130,
comfy/sampler_helpers.py at 53757775fa60, comfy/model_management.py cuda_device_context), not copied. What the newest
does that 0.3.75 does not, and this emulation reproduces:
- CFGGuider.sample prepares the denoise mask itself (prepare_mask to latent_shapes[i] on the load device, float),
  no longer outer_sample;
- CFGGuider.outer_sample: prepare_sampling with the FULL noise shape, then the multi-GPU clones of the loaded models
  (sampler_helpers.prepare_model_patcher_multigpu_clones: the loaded patchers with is_multigpu_base_clone; with any,
  a thread pool over all devices), then everything else inside model_management.cuda_device_context(load device):
  noise and latent moved to the device as float32, sigmas to the device, cast_to_load_options, pre_run of the model
  and of every multi-GPU clone, inner_sample; cleanup of all of them in `finally`;
- CFGGuider.inner_sample first sets inner_model.latent_shapes = latent_shapes (BaseModel has that attribute now),
  then processes the conditions for the full noise and runs the sampler as 0.3.75 does;
- sampler_helpers.prepare_sampling(model, noise_shape, conds, model_options=None, force_full_load=False,
  force_offload=False) passes the two new flags to the PREPARE_SAMPLING wrappers and _prepare_sampling, whose new
  first steps are model.match_multigpu_clones() and preprocess_multigpu_conds (both nothing on one device).
Not emulated: the multi-GPU thread pool and conds (refused here: the tests have one device), the NPU weight cache of
commit 311c014 (off unless --npu-w4a4-cache-mib is given), the `detail` debug log, nested latents (SVD has one).

install(monkeypatch) applies it for one test and returns the list of events it records (proof it was used):
("sample", latent_shapes), ("prepare_sampling", noise_shape as the caller gave it), ("outer_sample", noise shape),
("cuda_device_context", device), ("inner_sample", latent_shapes).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import comfy.hooks
import comfy.model_management
import comfy.model_patcher
import comfy.patcher_extension
import comfy.sampler_helpers
import comfy.samplers
import comfy.utils
import pytest
import torch

OldPrepareSampling = comfy.sampler_helpers._prepare_sampling


def install(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    seen: list[tuple[str, Any]] = []
    samplers = comfy.samplers
    wrappers = comfy.patcher_extension.WrappersMP

    @contextlib.contextmanager
    def cuda_device_context(device: torch.device) -> Iterator[None]:
        # newest model_management: makes `device` torch's current CUDA device for the block (nothing for the CPU or
        # an index-less device, or when it already is)
        seen.append(("cuda_device_context", device))
        previous = None
        if device.type == "cuda" and device.index is not None and torch.cuda.current_device() != device.index:
            previous = torch.cuda.current_device()
            torch.cuda.set_device(device)
        try:
            yield
        finally:
            if previous is not None:
                torch.cuda.set_device(previous)

    def newest_prepare_sampling_inner(model: Any, noise_shape: Any, conds: dict, model_options: dict | None = None,
                                      force_full_load: bool = False, force_offload: bool = False) -> Any:
        if force_full_load or force_offload:
            raise NotImplementedError("the emulation covers sampling, not training (force_full_load/force_offload)")
        # newest first steps, match_multigpu_clones and preprocess_multigpu_conds, do nothing without multi-GPU
        # clones; the rest (additional models, estimate_memory(noise_shape), load_models_gpu) is 0.3.75's
        return OldPrepareSampling(model, noise_shape, conds, model_options=model_options)

    def newest_prepare_sampling(model: Any, noise_shape: Any, conds: dict, model_options: dict | None = None,
                                force_full_load: bool = False, force_offload: bool = False) -> Any:
        seen.append(("prepare_sampling", tuple(noise_shape)))
        executor = comfy.patcher_extension.WrapperExecutor.new_executor(
            newest_prepare_sampling_inner,
            comfy.patcher_extension.get_all_wrappers(wrappers.PREPARE_SAMPLING, model_options, is_model_options=True))
        return executor.execute(model, noise_shape, conds, model_options=model_options,
                                force_full_load=force_full_load, force_offload=force_offload)

    def inner_sample(self: Any, noise: torch.Tensor, latent_image: torch.Tensor, device: torch.device, sampler: Any,
                     sigmas: torch.Tensor, denoise_mask: torch.Tensor | None, callback: Any, disable_pbar: bool,
                     seed: int | None, latent_shapes: list | None = None) -> torch.Tensor:
        seen.append(("inner_sample", [tuple(s) for s in latent_shapes or []]))
        self.inner_model.latent_shapes = latent_shapes
        if latent_image is not None and torch.count_nonzero(latent_image) > 0:  # an empty latent is not shifted
            latent_image = self.inner_model.process_latent_in(latent_image)
        self.conds = samplers.process_conds(self.inner_model, noise, self.conds, device, latent_image, denoise_mask,
                                            seed, latent_shapes=latent_shapes)
        sampler_options = comfy.model_patcher.create_model_options_clone(self.model_options)
        sampler_options.setdefault("transformer_options", {})["sample_sigmas"] = sigmas
        extra_args = {"model_options": sampler_options, "seed": seed}
        run = comfy.patcher_extension.WrapperExecutor.new_class_executor(
            sampler.sample, sampler,
            comfy.patcher_extension.get_all_wrappers(wrappers.SAMPLER_SAMPLE, sampler_options, is_model_options=True))
        samples = run.execute(self, sigmas, extra_args, callback, noise, latent_image, denoise_mask, disable_pbar)
        return self.inner_model.process_latent_out(samples.to(torch.float32))

    def outer_sample(self: Any, noise: torch.Tensor, latent_image: torch.Tensor, sampler: Any, sigmas: torch.Tensor,
                     denoise_mask: torch.Tensor | None = None, callback: Any = None, disable_pbar: bool = False,
                     seed: int | None = None, latent_shapes: list | None = None) -> torch.Tensor:
        seen.append(("outer_sample", tuple(noise.shape)))
        self.inner_model, self.conds, self.loaded_models = comfy.sampler_helpers.prepare_sampling(
            self.model_patcher, noise.shape, self.conds, self.model_options)
        device = self.model_patcher.load_device
        clones = [m for m in self.loaded_models if getattr(m, "is_multigpu_base_clone", False)]
        if clones:
            raise NotImplementedError("multi-GPU clones are not emulated")
        with comfy.model_management.cuda_device_context(device):
            try:
                noise = noise.to(device=device, dtype=torch.float32)
                latent_image = latent_image.to(device=device, dtype=torch.float32)
                sigmas = sigmas.to(device)
                samplers.cast_to_load_options(self.model_options, device=device,
                                              dtype=self.model_patcher.model_dtype())
                self.model_patcher.pre_run()
                output = self.inner_sample(noise, latent_image, device, sampler, sigmas, denoise_mask, callback,
                                           disable_pbar, seed, latent_shapes=latent_shapes)
            finally:
                self.model_patcher.cleanup()
        comfy.sampler_helpers.cleanup_models(self.conds, self.loaded_models)
        del self.inner_model
        del self.loaded_models
        return output

    def sample(self: Any, noise: torch.Tensor, latent_image: torch.Tensor, sampler: Any, sigmas: torch.Tensor,
               denoise_mask: torch.Tensor | None = None, callback: Any = None, disable_pbar: bool = False,
               seed: int | None = None) -> torch.Tensor:
        if sigmas.shape[-1] == 0:
            return latent_image
        if latent_image.is_nested:
            raise NotImplementedError("nested latents are not emulated")
        latent_shapes = [latent_image.shape]
        seen.append(("sample", [tuple(s) for s in latent_shapes]))
        if denoise_mask is not None:
            # newest: the mask is shaped to the latent here (one mask, one latent), as float on the load device
            denoise_mask = comfy.sampler_helpers.prepare_mask(denoise_mask, latent_shapes[0],
                                                              self.model_patcher.load_device).float()
        self.conds = {k: [c.copy() for c in conds] for k, conds in self.original_conds.items()}
        samplers.preprocess_conds_hooks(self.conds)
        original_options = self.model_options
        original_hook_mode = self.model_patcher.hook_mode
        try:
            self.model_options = comfy.model_patcher.create_model_options_clone(self.model_options)
            if samplers.get_total_hook_groups_in_conds(self.conds) <= 1:
                self.model_patcher.hook_mode = comfy.hooks.EnumHookMode.MinVram
            comfy.sampler_helpers.prepare_model_patcher(self.model_patcher, self.conds, self.model_options)
            samplers.filter_registered_hooks_on_conds(self.conds, self.model_options)
            run = comfy.patcher_extension.WrapperExecutor.new_class_executor(
                self.outer_sample, self,
                comfy.patcher_extension.get_all_wrappers(wrappers.OUTER_SAMPLE, self.model_options,
                                                         is_model_options=True))
            output = run.execute(noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar, seed,
                                 latent_shapes=latent_shapes)
        finally:
            samplers.cast_to_load_options(self.model_options, device=self.model_patcher.offload_device)
            self.model_options = original_options
            self.model_patcher.hook_mode = original_hook_mode
            self.model_patcher.restore_hook_patches()
        del self.conds
        return output

    monkeypatch.setattr(comfy.model_management, "cuda_device_context", cuda_device_context, raising=False)
    monkeypatch.setattr(comfy.sampler_helpers, "prepare_sampling", newest_prepare_sampling)
    monkeypatch.setattr(samplers.CFGGuider, "sample", sample)
    monkeypatch.setattr(samplers.CFGGuider, "outer_sample", outer_sample)
    monkeypatch.setattr(samplers.CFGGuider, "inner_sample", inner_sample)
    return seen
