"""The ControlNeXt-SVD v2 injection as a ComfyUI UNet patch (official unet_spatio_temporal_condition_controlnext.py).

After input block 3 (the first downsample, i.e. after diffusers down_blocks[0]) and after its output was taken as a
skip, each conditional chunk of h gets the cross-normalised, pooled control times 0.2*strength. The control network
sees the poses at pixel resolution in [0,1] and the UNet's own timestep 0.25*ln(sigma).
"""

from __future__ import annotations

import copy
import uuid
from typing import Any

import comfy.context_windows
import comfy.model_patcher
import comfy.patcher_extension
import torch
import torch.nn.functional as F

from .controlnext_loader import ControlNeXtModel

INJECT_BLOCK = ("input", 3)
CONTROL_SCALE = 0.2  # official fixed factor; strength multiplies it
CROSS_NORM_EPS = 1e-5
COND = 0  # cond_or_uncond value of the positive (conditional) rows
POSE_INDICES_KEY = "controlnext_pose_indices"  # set per window by ControlNeXtSampler; entry 0 = reference pose
POSE_FRAMES_KEY = "controlnext_pose_frames"  # set here: the pose count, read by ControlNeXtSampler
# Poses are cached on the compute device for one sampling run only if they are this small; else uploaded per call.
DEVICE_CACHE_BYTES = 256 * 1024 * 1024


class ControlNeXtPoseError(ValueError):
    """Pose images that do not fit the latent being sampled."""


def cross_normalize(control: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
    """Per frame, give control the mean/std of sample (unbiased std, eps added to the control's std)."""
    mean_c = control.mean(dim=(1, 2, 3), keepdim=True)
    std_c = control.std(dim=(1, 2, 3), keepdim=True)
    mean_s = sample.mean(dim=(1, 2, 3), keepdim=True)
    std_s = sample.std(dim=(1, 2, 3), keepdim=True)
    return (control - mean_c) * std_s / (std_c + CROSS_NORM_EPS) + mean_s


def inject(sample: torch.Tensor, control: torch.Tensor, scale: float) -> torch.Tensor:
    """sample + pool(cross_normalize(control)) * scale; statistics are taken before pooling, as officially."""
    control = cross_normalize(control.to(sample.dtype), sample)
    control = F.adaptive_avg_pool2d(control, sample.shape[-2:])
    return sample + control * scale


def window_frames(window: Any) -> list[int]:
    """The global latent frames a context-window model call holds, in order. Newer ComfyUI's causal_window_fix puts
    the frame before the window in front as an anchor (window.causal_anchor_index, prepended by
    IndexListContextWindow.get_tensor to the latent and the conds); index_list names the window's own frames only."""
    frames = [int(i) for i in window.index_list]
    anchor = getattr(window, "causal_anchor_index", None)
    if anchor is not None and anchor >= 0:
        frames.insert(0, int(anchor))
    return frames


def pose_indices(transformer_options: dict[str, Any], frames: int, pose_count: int) -> list[int] | None:
    """Which pose frames this UNet call uses (None: all of them, in order)."""
    if transformer_options.get(POSE_INDICES_KEY) is not None:
        indices, source = [int(i) for i in transformer_options[POSE_INDICES_KEY]], "the ControlNeXt sampler window"
    elif transformer_options.get("context_window") is not None:
        indices, source = window_frames(transformer_options["context_window"]), "the context window"
    else:
        if pose_count != frames:
            raise ControlNeXtPoseError(
                f"ControlNeXtApply got {pose_count} pose images but the model is sampling {frames} frames. Give one "
                "pose per video frame (frame 0 = reference pose), e.g. set video_frames in the conditioning node to "
                f"{pose_count}, or use context windows / the ControlNeXt sampler for longer clips.")
        return None
    if len(indices) != frames:
        raise ControlNeXtPoseError(
            f"{source} lists {len(indices)} pose frames but the model call has {frames} frames.")
    bad = [i for i in indices if not 0 <= i < pose_count]
    if bad:
        raise ControlNeXtPoseError(
            f"{source} asks for pose frame {bad[0]} but ControlNeXtApply got only {pose_count} pose images: give one "
            "pose per latent frame.")
    return indices


def frame_sigmas(sigmas: torch.Tensor, frames: int) -> torch.Tensor:
    """The per-frame sigma vector of one chunk (ComfyUI passes one sigma per frame, or a single one)."""
    sigmas = sigmas.reshape(-1)
    if sigmas.numel() == 1:
        return sigmas.expand(frames)
    if sigmas.numel() % frames == 0:
        return sigmas[:frames]  # every cond/uncond chunk shares the frames' sigmas
    raise ControlNeXtPoseError(f"ControlNeXt patch: got {sigmas.numel()} sigmas for {frames} frames per chunk.")


def as_bytes(poses: torch.Tensor) -> torch.Tensor | None:
    """The poses as uint8 when that is exact (pose images drawn or decoded from 8-bit sources hold k / 255 in
    float32), else None. Checked frame by frame, so no second full-size float copy is made."""
    out = torch.empty(poses.shape, dtype=torch.uint8)
    for i, frame in enumerate(poses):
        out[i] = frame.mul(255).round_().clamp_(0, 255)
        if not torch.equal(out[i].float().div_(255), frame.float()):
            return None
    return out


def upload(host: torch.Tensor, indices: list[int] | None, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Selected poses (N, H, W, 3), float in [0,1] or uint8 from as_bytes, to (n, 3, H, W) `dtype` on `device`.
    uint8 moves a quarter of the bytes and gives the same values: k / 255 is computed in float32 on the device."""
    # index_select: 4x faster than list indexing for uint8 on the host (measured in bench/bench_pose_upload.py)
    selected = host if indices is None else host.index_select(0, torch.tensor(indices, device=host.device))
    moved = selected.to(device, non_blocking=True)
    if moved.dtype == torch.uint8:
        moved = moved.float().div_(255)
    return moved.to(dtype).movedim(-1, 1).contiguous()


class ControlNeXtPatch:
    """input_block_patch_after_skip callable. Stateless between runs except a per-run device copy of the poses."""

    def __init__(self, network: torch.nn.Module, base_model: Any, poses: torch.Tensor, strength: float,
                 start_percent: float = 0.0, end_percent: float = 1.0) -> None:
        self.network = network
        self.base_model = base_model  # read .model_sampling at call time: object patches (ModelSampling*) apply
        self.poses = poses  # (N, H, W, 3) [0,1] on the CPU: the IMAGE itself, not a copy (it can be GBs)
        self.strength = float(strength)
        self.start_percent = float(start_percent)
        self.end_percent = float(end_percent)
        self._device_poses: torch.Tensor | None = None
        self._host_bytes: torch.Tensor | None | bool = False  # False = not checked yet

    def __deepcopy__(self, memo: dict) -> ControlNeXtPatch:
        return self  # ModelPatcher.clone deep-copies model_options; never copy the network or the poses

    def release(self, *_: Any) -> None:
        """Drop the per-run device copy of the poses (ModelPatcher ON_CLEANUP callback)."""
        self._device_poses = None

    def _poses_on(self, device: torch.device, dtype: torch.dtype, indices: list[int] | None) -> torch.Tensor:
        """The selected poses as (n, 3, H, W) on the device; the layout change happens there, not on the host."""
        cached = self._device_poses
        if cached is None or cached.device != device or cached.dtype != dtype:
            if self.poses.numel() * dtype.itemsize > DEVICE_CACHE_BYTES and device.type != "cpu":
                # too many poses to keep on the device: upload each window's frames, as bytes when that is exact
                if self._host_bytes is False:
                    self._host_bytes = as_bytes(self.poses)
                return upload(self.poses if self._host_bytes is None else self._host_bytes, indices, device, dtype)
            cached = self._device_poses = self.poses.to(device=device, dtype=dtype).movedim(-1, 1).contiguous()
        return cached if indices is None else cached[indices]

    def _active(self, sigmas: torch.Tensor) -> bool:
        if self.start_percent <= 0.0 and self.end_percent >= 1.0:
            return True  # default range: no host sync needed
        sampling = self.base_model.model_sampling
        sigma = float(sigmas.reshape(-1)[0])
        return sampling.percent_to_sigma(self.end_percent) <= sigma <= sampling.percent_to_sigma(self.start_percent)

    def __call__(self, h: torch.Tensor, transformer_options: dict[str, Any]) -> torch.Tensor:
        if transformer_options.get("block") != INJECT_BLOCK or self.strength == 0.0:
            return h
        cond_or_uncond = list(transformer_options.get("cond_or_uncond", [COND]))
        if COND not in cond_or_uncond or not self._active(transformer_options["sigmas"]):
            return h
        chunks = len(cond_or_uncond)
        if h.shape[0] % chunks:
            raise ControlNeXtPoseError(f"ControlNeXt patch: {h.shape[0]} rows do not split into {chunks} chunks.")
        frames = h.shape[0] // chunks
        self._check_size(transformer_options)
        indices = pose_indices(transformer_options, frames, self.poses.shape[0])
        poses = self._poses_on(h.device, h.dtype, indices)
        timestep = self.base_model.model_sampling.timestep(frame_sigmas(transformer_options["sigmas"], frames))
        control = self.network(poses, timestep.to(h.device))
        scale = CONTROL_SCALE * self.strength
        # Never in place: h is also the skip connection appended just before this patch.
        parts = [inject(part, control, scale) if kind == COND else part
                 for part, kind in zip(h.chunk(chunks), cond_or_uncond, strict=True)]
        return torch.cat(parts)

    def _check_size(self, transformer_options: dict[str, Any]) -> None:
        shape = transformer_options.get("original_shape")
        if shape is None:
            return
        latent_px = (int(shape[-2]) * 8, int(shape[-1]) * 8)
        pose_px = tuple(self.poses.shape[1:3])
        if pose_px != latent_px:
            raise ControlNeXtPoseError(
                f"The pose images are {pose_px[1]}x{pose_px[0]} px but the video being sampled is {latent_px[1]}x"
                f"{latent_px[0]} px (latent x8). Resize the poses to the generation size (or generate at the pose "
                "size).")


class SVDIndexListContextHandler(comfy.context_windows.IndexListContextHandler):
    """ContextWindowsManual's handler made right for SVD, where the frames are the batch. Both changes leave what the
    host already does right as it is, so the swap suits old and new ComfyUI alike."""

    def set_step(self, timestep: torch.Tensor, model_options: dict[str, Any]) -> None:
        # 0.3.75 compares the whole per-frame sigma vector with the schedule and crashes; all frames share one sigma,
        # so its first entry is exact (newer ComfyUI reads timestep[0] itself: the same step).
        super().set_step(timestep.reshape(-1)[:1], model_options)

    def get_resized_cond(self, cond_in: list[dict] | None, x_in: torch.Tensor, window: Any, *args: Any,
                         **kwargs: Any) -> list[dict] | None:
        # Newer ComfyUI's causal_window_fix cuts the latent and SVD's per-frame conds with the anchor frame in front
        # but still sets num_video_frames to the window's own length, so the UNet's temporal layers would group the
        # rows into wrong videos (an einops error, or silently for 2-frame windows). Give the frames the call holds.
        resized = super().get_resized_cond(cond_in, x_in, window, *args, **kwargs)
        frames = len(window_frames(window))
        if resized is None or frames == len(window.index_list):
            return resized
        for cond in resized:
            model_conds = cond.get("model_conds")
            if isinstance(model_conds, dict) and "num_video_frames" in model_conds:
                count = model_conds["num_video_frames"]
                cond["model_conds"] = dict(model_conds, num_video_frames=count._copy_with(frames))
        return resized


def fix_context_handler(model_options: dict[str, Any]) -> None:
    """Swap a stock IndexListContextHandler (ContextWindowsManual) for the SVD-safe subclass, in this dict only. A
    shallow copy with its class changed keeps every field the host's constructor set (causal_window_fix, the retain
    lists, freenoise on newer ComfyUI), and the subclass inherits all the host's other methods."""
    handler = model_options.get("context_handler")
    if type(handler) is comfy.context_windows.IndexListContextHandler:
        fixed = copy.copy(handler)
        fixed.__class__ = SVDIndexListContextHandler
        model_options["context_handler"] = fixed


def _outer_sample_wrapper(executor: Any, *args: Any, **kwargs: Any) -> Any:
    # Runs per sampling call on the guider's per-run model_options copy, so ContextWindowsManual may come after
    # ControlNeXtApply in the graph and the user's MODEL is not modified.
    model_options = getattr(executor.class_obj, "model_options", None)
    if isinstance(model_options, dict):
        fix_context_handler(model_options)
    return executor(*args, **kwargs)


def unet_width_at_injection(base_model: Any) -> int | None:
    """Channels of h after input block 3 (model_channels * channel_mult[0]), if the config says."""
    cfg = getattr(getattr(base_model, "model_config", None), "unet_config", {}) or {}
    if "model_channels" not in cfg:
        return None
    return int(cfg["model_channels"]) * int((cfg.get("channel_mult") or [1])[0])


def compute_dtype(model: comfy.model_patcher.ModelPatcher) -> torch.dtype:
    """The dtype the UNet computes in (its manual-cast dtype for fp8/low-precision storage)."""
    return getattr(model.model, "manual_cast_dtype", None) or model.model_dtype() or torch.float32


def apply_controlnext(model: comfy.model_patcher.ModelPatcher, controlnext: ControlNeXtModel,
                      pose_images: torch.Tensor, strength: float = 1.0, start_percent: float = 0.0,
                      end_percent: float = 1.0) -> comfy.model_patcher.ModelPatcher:
    """A clone of `model` with the ControlNeXt injection and the control network as a managed additional model.

    pose_images: ComfyUI IMAGE (N, H, W, C) in [0,1], frame 0 = the reference pose, at the generation size.
    """
    if pose_images.ndim != 4 or pose_images.shape[-1] < 3 or pose_images.shape[0] == 0:
        raise ControlNeXtPoseError(
            f"pose_images must be a batch of RGB images (N, H, W, 3); got shape {tuple(pose_images.shape)}.")
    if start_percent > end_percent:
        raise ValueError(
            f"start_percent {start_percent} is after end_percent {end_percent}: the control would never be active. "
            "Use start_percent <= end_percent (0 and 1 = the whole sampling, as the official pipeline).")
    height, width = pose_images.shape[1:3]
    if height % 8 or width % 8:
        raise ControlNeXtPoseError(
            f"The pose images are {width}x{height} px; ControlNeXt needs the generation size, a multiple of 8 "
            "(64 for the official UNet). Resize the poses and the reference image to e.g. 576x1024.")
    width_needed = unet_width_at_injection(model.model)
    if width_needed is not None and width_needed != controlnext.output_channels:
        raise ControlNeXtPoseError(
            f"{controlnext.name} outputs {controlnext.output_channels} channels but this UNet has {width_needed} "
            "at input block 3. ControlNeXt-SVD v2 goes with the ControlNeXt SVD(-XT) UNet (320).")
    poses = pose_images[..., :3]  # [0,1] as the official pipeline; a view (channels move on the device, per run)
    patcher = controlnext.patcher(compute_dtype(model))
    patch = ControlNeXtPatch(patcher.model, model.model, poses, strength, start_percent, end_percent)
    patched = model.clone()
    patched.set_model_input_block_patch_after_skip(patch)
    # One key per application, so two ControlNeXtApply in a chain keep both networks managed.
    key = f"controlnext_{uuid.uuid4().hex[:8]}"
    patched.set_additional_models(key, [patcher])
    patched.add_callback_with_key(comfy.patcher_extension.CallbacksMP.ON_CLEANUP, key, patch.release)
    wrappers = patched.wrappers.get(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, {})
    if "controlnext_context_windows" not in wrappers:
        patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, "controlnext_context_windows",
                                     _outer_sample_wrapper)
    patched.model_options["transformer_options"][POSE_FRAMES_KEY] = int(poses.shape[0])
    return patched
