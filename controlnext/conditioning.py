"""The official ControlNeXt-SVD-v2 image conditioning, emitted in ComfyUI's native SVD conditioning format.

Official pipeline (spec section 4.2-4.4), all on the reference already fitted to width x height:
- CLIP: [0,1] -> x*2-1 -> `_resize_with_antialiasing` to 224x224 (squash, Gaussian blur then bicubic with
  align_corners=True) -> (x+1)/2 -> CLIP mean/std -> vision model -> image_embeds (1,1,D). ComfyUI's clip_preprocess
  centre crops and rounds to 8 bits instead, so the vision model is called on these pixel values directly.
- VAE: [-1,1] + augmentation * N(0,1) -> encode -> posterior mode (ComfyUI's SVD VAE encodes with the mode).
- Time ids: [fps-1, motion_bucket_id, time_id_augmentation] through model_base.SVD_img2vid.encode_adm, which reads
  fps / motion_bucket_id / augmentation_level from the conditioning. extra_conds uses augmentation_level only
  there and uses concat_latent_image as given (no noise, no scaling), so nothing is applied twice.
  The official pipeline overwrites its time ids with [6, 128, 0.02] whatever pixel noise it applied (spec item 4),
  so the time-id augmentation is its own value (default 0.02), not tied to the pixel augmentation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import comfy.model_management as mm
import torch
import torch.nn.functional as F

from .image_fit import fit_reference

log = logging.getLogger(__name__)

SIZE_MULTIPLE = 64
LATENT_CHANNELS = 4


def check_video_size(width: int, height: int) -> None:
    """Raise a ValueError naming working sizes unless width and height are positive multiples of 64."""
    problems = []
    for name, value in (("width", width), ("height", height)):
        if value < SIZE_MULTIPLE or value % SIZE_MULTIPLE:
            lower = max(SIZE_MULTIPLE, value // SIZE_MULTIPLE * SIZE_MULTIPLE)
            upper = max(SIZE_MULTIPLE, -(-value // SIZE_MULTIPLE) * SIZE_MULTIPLE)
            nearby = f"{lower}" if lower == upper else f"{lower} or {upper}"
            problems.append(f"{name} {value} (nearby sizes that work: {nearby})")
    if problems:
        raise ValueError(
            "ControlNeXt-SVD needs width and height that are multiples of 64, got " + "; ".join(problems) + ". "
            "The official pipeline only runs at such sizes (its UNet concatenates skip connections without "
            "resizing, so the latent sides, pixels / 8, must stay divisible by 8 through three downsamplings) and "
            "the model was trained at them; this pack keeps that rule. Official default: 576x1024."
        )


# --- CLIP preprocessing: diffusers' / the official _resize_with_antialiasing, restated ----------------------------

def _gaussian_kernel_1d(size: int, sigma: torch.Tensor) -> torch.Tensor:
    """Normalised Gaussian taps (float dtype of sigma), centred like kornia's (half-pixel shift for even sizes)."""
    x = torch.arange(size, dtype=sigma.dtype) - size // 2
    if size % 2 == 0:
        x = x + 0.5
    taps = torch.exp(-x.pow(2.0) / (2 * sigma.pow(2.0)))
    return taps / taps.sum()


def _blur_axis(x: torch.Tensor, taps: torch.Tensor, axis: int) -> torch.Tensor:
    """Depthwise 1-D convolution along H (axis 2) or W (axis 3) with reflect padding (asymmetric for even taps)."""
    channels, size = x.shape[1], taps.numel()
    front = (size - 1) // 2
    rear = size - 1 - front
    if axis == 3:
        kernel, pad = taps.view(1, 1, 1, size), (front, rear, 0, 0)
    else:
        kernel, pad = taps.view(1, 1, size, 1), (0, 0, front, rear)
    kernel = kernel.to(device=x.device, dtype=x.dtype).expand(channels, 1, -1, -1)
    return F.conv2d(F.pad(x, pad, mode="reflect"), kernel, groups=channels)


def resize_with_antialiasing(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Gaussian blur with skimage's sigma ((factor-1)/2, floor 1e-3) and kernel int(max(4 sigma, 3)) made odd, then
    bicubic resize with align_corners=True: SVD's (and ControlNeXt's) CLIP resize. x is [B,C,H,W] in [-1,1]."""
    h, w = x.shape[-2:]
    sigma_h = max((h / size[0] - 1.0) / 2.0, 0.001)
    sigma_w = max((w / size[1] - 1.0) / 2.0, 0.001)
    ks_h, ks_w = int(max(4.0 * sigma_h, 3)), int(max(4.0 * sigma_w, 3))
    ks_h += 1 - ks_h % 2
    ks_w += 1 - ks_w % 2
    # the reference computes the taps in the input's float dtype from sigma cast to it
    sigmas = torch.tensor([sigma_h, sigma_w], dtype=x.dtype)
    x = _blur_axis(x, _gaussian_kernel_1d(ks_w, sigmas[1]), axis=3)
    x = _blur_axis(x, _gaussian_kernel_1d(ks_h, sigmas[0]), axis=2)
    return F.interpolate(x, size=size, mode="bicubic", align_corners=True)


def clip_pixel_values(image: torch.Tensor, size: int, mean: list[float], std: list[float]) -> torch.Tensor:
    """IMAGE [B,H,W,3] in [0,1] -> CLIP pixel values [B,3,size,size] the official way (squash, no crop, no
    clamp, no 8-bit rounding), in float32."""
    x = image[..., :3].movedim(-1, 1).to(torch.float32) * 2.0 - 1.0
    x = (resize_with_antialiasing(x, (size, size)) + 1.0) / 2.0
    mean_t = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean_t) / std_t


@torch.no_grad()
def encode_clip_image(clip_vision: Any, image: torch.Tensor) -> torch.Tensor:
    """Official CLIP image embedding of a ComfyUI CLIP_VISION (comfy.clip_vision.ClipVisionModel): [B,1,D]."""
    mm.load_model_gpu(clip_vision.patcher)
    pixel_values = clip_pixel_values(image.to(clip_vision.load_device), clip_vision.image_size,
                                     clip_vision.image_mean, clip_vision.image_std)
    out = clip_vision.model(pixel_values=pixel_values, intermediate_output=-2)
    return out[2].to(mm.intermediate_device()).unsqueeze(1)


# --- VAE conditioning ----------------------------------------------------------------------------------------------

def pixel_noise(height: int, width: int, seed: int) -> torch.Tensor:
    """N(0,1) noise for the reference, drawn like diffusers' randn_tensor on CPU: shape (1,3,H,W), float32."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn((1, 3, height, width), generator=gen, dtype=torch.float32)


@torch.no_grad()
def encode_reference_latent(vae: Any, image: torch.Tensor, augmentation: float, seed: int) -> torch.Tensor:
    """VAE latent (posterior mode, no scaling factor) of image [1,H,W,3] + augmentation * N(0,1) in [-1,1] space.

    ComfyUI's VAE.encode maps [0,1] to [-1,1] itself (x*2-1), so the noise goes in as augmentation/2 in [0,1]
    space, which is the official augmentation in [-1,1] space. The sum is not clamped, as in the official code.
    """
    pixels = image[..., :3].to(torch.float32)
    if augmentation != 0.0:
        noise = pixel_noise(pixels.shape[1], pixels.shape[2], seed).movedim(1, -1).to(pixels.device)
        pixels = pixels + noise * (augmentation / 2.0)
    return vae.encode(pixels)


@dataclass
class SVDConditioning:
    positive: list
    negative: list
    latent: dict
    fitted_image: torch.Tensor


@torch.no_grad()
def controlnext_svd_conditioning(
    clip_vision: Any, vae: Any, image: torch.Tensor, width: int, height: int, video_frames: int,
    fps: int = 7, motion_bucket_id: int = 128, augmentation: float = 0.02, noise_seed: int = 0,
    time_id_augmentation: float = 0.02,
) -> SVDConditioning:
    """Native SVD conditioning (positive, negative, empty latent) computed the official ControlNeXt-SVD-v2 way.

    The time ids are exactly (fps-1, motion_bucket_id, time_id_augmentation); the pixel noise is augmentation *
    N(0,1) in [-1,1] space from noise_seed. The two augmentation values are independent, as officially. Only the
    first image of a batch is used (the official pipeline has one reference).
    """
    check_video_size(width, height)
    if video_frames < 1:
        raise ValueError(f"video_frames must be at least 1, got {video_frames}")
    if image.ndim != 4 or image.shape[-1] < 3:
        raise ValueError(f"image must be a ComfyUI IMAGE [B,H,W,3], got shape {tuple(image.shape)}")
    if image.shape[0] > 1:
        log.warning("ControlNeXt SVD conditioning got %d images; using the first as the reference", image.shape[0])

    fitted = fit_reference(image[:1, :, :, :3], width, height)
    embeds = encode_clip_image(clip_vision, fitted)
    concat = encode_reference_latent(vae, fitted, augmentation, noise_seed)

    time_ids = {"motion_bucket_id": motion_bucket_id, "fps": fps, "augmentation_level": time_id_augmentation}
    positive = [[embeds, dict(time_ids, concat_latent_image=concat)]]
    negative = [[torch.zeros_like(embeds), dict(time_ids, concat_latent_image=torch.zeros_like(concat))]]
    latent = {"samples": torch.zeros([video_frames, LATENT_CHANNELS, height // 8, width // 8],
                                     device=mm.intermediate_device())}
    return SVDConditioning(positive, negative, latent, fitted)
