"""The official reference-image fit: resize so it covers width x height, then centre crop.

ControlNeXt-SVD-v2's preprocess (utils/pre_process.py) works on the uint8 PIL image: torchvision `resize(...,
antialias=None)` (bilinear, no antialias, for tensors), rounded back to uint8, then `center_crop` with offsets
int(round((h - H) / 2)) (Python's banker's rounding). This module states that math on ComfyUI IMAGE batches.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def cover_size(src_height: int, src_width: int, height: int, width: int) -> tuple[int, int]:
    """The (h, w) the official code resizes to before cropping (same float arithmetic, so the same ceil)."""
    h_w_ratio = float(src_height) / float(src_width)
    if h_w_ratio < height / width:
        return height, math.ceil(height / h_w_ratio)
    return math.ceil(width * h_w_ratio), width


def fit_reference(images: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Fit ComfyUI IMAGEs [B,H,W,3] (0..1) to [B,height,width,3] exactly as the official preprocessing does.

    The input is quantised to uint8 first (a loaded image is uint8/255, so this is lossless for it), resized with
    bilinear interpolation without antialias, rounded half-to-even to uint8 like torchvision, and centre cropped.
    The result is float uint8/255 on the input's device.
    """
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"fit_reference expects an IMAGE batch [B,H,W,3], got shape {tuple(images.shape)}")
    if width < 1 or height < 1:
        raise ValueError(f"fit_reference needs a positive target size, got {width}x{height}")
    src_h, src_w = int(images.shape[1]), int(images.shape[2])
    resize_h, resize_w = cover_size(src_h, src_w, height, width)

    pixels = torch.round(images.clamp(0.0, 1.0) * 255.0).to(torch.float32).movedim(-1, 1)
    if (resize_h, resize_w) != (src_h, src_w):
        pixels = F.interpolate(pixels, size=(resize_h, resize_w), mode="bilinear", align_corners=False,
                               antialias=False)
        pixels = torch.round(pixels).clamp_(0.0, 255.0)  # torchvision's cast back to uint8

    top = int(round((resize_h - height) / 2.0))
    left = int(round((resize_w - width) / 2.0))
    cropped = pixels[:, :, top:top + height, left:left + width]
    return (cropped / 255.0).movedim(1, -1).contiguous()
