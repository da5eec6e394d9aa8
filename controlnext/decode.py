"""Decode SVD latents in fixed frame chunks, as the official pipeline does (decode_chunk_size=2).

SVD's temporal VAE decoder treats every decode call as one clip and mixes frames inside it, so the chunk size
changes the pixels. ComfyUI's VAE.decode sizes its batches from free memory, which makes the result depend on the
GPU; this module calls the VAE's first_stage_model.decode per chunk (under ComfyUI's model management) instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import comfy.model_management as mm
import torch

log = logging.getLogger(__name__)


def is_oom(exc: BaseException) -> bool:
    """Whether exc is an out-of-memory error, as ComfyUI sees it.

    Newer ComfyUI has model_management.is_oom, which also recognises accelerator errors that report running out of
    memory (torch.AcceleratorError) besides torch.cuda.OutOfMemoryError; older ones only have OOM_EXCEPTION.
    """
    core_is_oom = getattr(mm, "is_oom", None)
    if core_is_oom is not None:
        return bool(core_is_oom(exc))
    return isinstance(exc, mm.OOM_EXCEPTION)


def _decode_clip(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """One decode call: latents [n,4,h,w] as an n-frame clip -> pixels [n,H,W,3] in [0,1] on the output device."""
    x = vae.first_stage_model.decode(latents.to(device=vae.device, dtype=vae.vae_dtype))
    return (x.float() / 2 + 0.5).clamp(0, 1).movedim(1, -1).to(vae.output_device)


@torch.no_grad()
def decode_in_chunks(
    vae: Any, latents: torch.Tensor, chunk_size: int = 2,
    on_progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Decode SVD latents [F,4,h,w] (VAE space, as ComfyUI's LATENT holds them) in clips of chunk_size frames.

    Returns an IMAGE [F,H,W,3] = (x/2+0.5).clamp(0,1), frame 0 included. A chunk that runs out of memory is retried
    with half the chunk size (kept for the rest of the video, so chunks stay on the official grid); the smaller
    chunks change the temporal mixing, which is logged. on_progress(done, total) is called after each chunk, and
    ComfyUI's interrupt flag is checked between chunks.
    """
    if latents.ndim != 4:
        raise ValueError(f"ControlNeXt decode expects SVD latents [frames, 4, h, w], got shape {tuple(latents.shape)}"
                         " (a 5-D video latent belongs to another model family)")
    if latents.shape[0] == 0:
        raise ValueError("ControlNeXt decode got a latent with 0 frames")
    if chunk_size < 1:
        raise ValueError(f"decode_chunk_size must be at least 1, got {chunk_size}")
    vae.throw_exception_if_invalid()
    frames = latents.shape[0]
    size = min(chunk_size, frames)
    chunk_shape = (size,) + tuple(latents.shape[1:])
    mm.load_models_gpu([vae.patcher], memory_required=vae.memory_used_decode(chunk_shape, vae.vae_dtype),
                       force_full_load=vae.disable_offload)

    output: torch.Tensor | None = None
    pixels: torch.Tensor | None
    start = 0
    while start < frames:
        mm.throw_exception_if_processing_interrupted()
        n = min(size, frames - start)
        try:
            pixels = _decode_clip(vae, latents[start:start + n])
        except Exception as exc:  # only out-of-memory errors are handled; anything else is re-raised as it is
            if n == 1 or not is_oom(exc):
                raise
            pixels = None  # retried below, once the exception (and the tensors it references) is released
        if pixels is None:
            size = max(1, n // 2)
            log.warning("ControlNeXt decode ran out of memory on a %d-frame chunk; retrying with %d-frame chunks "
                        "(the temporal decoder mixes only inside a chunk, so frames from %d on differ slightly "
                        "from a %d-frame decode)", n, size, start, chunk_size)
            mm.soft_empty_cache(True)
            continue
        if output is None:
            output = torch.empty((frames,) + tuple(pixels.shape[1:]), dtype=pixels.dtype, device=pixels.device)
        output[start:start + n] = pixels
        start += n
        if on_progress is not None:
            on_progress(start, frames)
    return output
