"""Tiny SVD-architecture models built from ComfyUI's own classes, with a seeded explicit initialisation.

ComfyUI's ops skip reset_parameters (the memory stays uninitialised and sampling gives NaN), so every parameter is
set here from a seeded generator. The block pattern is SVD's (two res blocks per level, the first downsample at
input block 3, temporal res blocks and temporal attention) with channel counts that are multiples of 64, because the
attention head width (64 in ComfyUI's SVD config) is not stored in the weights.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import comfy.model_management as mm
import comfy.model_patcher
import comfy.supported_models
import torch

TINY_UNET_CONFIG = dict(
    use_checkpoint=False, image_size=32, use_spatial_transformer=True, legacy=False, num_classes="sequential",
    adm_in_channels=768, in_channels=8, out_channels=4, model_channels=64, num_res_blocks=[2, 2],
    channel_mult=[1, 2], transformer_depth=[1, 1, 1, 1], transformer_depth_output=[1, 1, 1, 1, 1, 1],
    transformer_depth_middle=1, use_linear_in_transformer=True, context_dim=64, extra_ff_mix_layer=True,
    use_spatial_context=True, merge_strategy="learned_with_images", merge_factor=0.0, video_kernel_size=[3, 1, 1],
    use_temporal_resblock=True, use_temporal_attention=True, disable_temporal_crossattention=False,
)


class TinySVDImg2Vid(comfy.supported_models.SVD_img2vid):
    """Test only: ComfyUI's SVD img2vid config, detected at the tiny test widths.

    Core's model detection (comfy.model_detection.model_config_from_unet) matches SVD_img2vid only at full size (320
    channels, context 1024, a fixed transformer depth list), so without this a tiny UNet file is "not a known model".
    Everything else (model class, head width 64, sampling, dtypes) is SVD_img2vid's; context 64 keeps it from
    matching any real model.
    """

    unet_config = {"model_channels": 64, "in_channels": 8, "context_dim": 64, "adm_in_channels": 768,
                   "use_linear_in_transformer": True, "use_temporal_attention": True, "use_temporal_resblock": True}
    controlnext_tiny_test_config = True  # marks it across the two import paths of this module (tiny_pack, node pack)


def _registered() -> list[type]:
    return [m for m in comfy.supported_models.models if getattr(m, "controlnext_tiny_test_config", False)]


def register_tiny_svd_detection() -> None:
    """Append TinySVDImg2Vid to comfy.supported_models.models (once), so core's loaders detect the tiny UNets.

    Done when the test node pack is imported, because tiny UNet files are loaded in every ComfyUI the tests start
    (in-process, the HTTP server, scripts/render.py --tiny), not in this process only.
    """
    if not _registered():
        comfy.supported_models.models.append(TinySVDImg2Vid)


@contextmanager
def tiny_svd_detection_removed() -> Iterator[None]:
    """Core's detection as shipped (tiny UNets not recognised) inside the block; registered again afterwards."""
    removed = _registered()
    for config in removed:
        comfy.supported_models.models.remove(config)
    try:
        yield
    finally:
        comfy.supported_models.models.extend(removed)


@torch.no_grad()
def init_weights_(module: torch.nn.Module, seed: int, std: float = 0.02) -> None:
    """Norms to identity, matrices and kernels N(0, std) from a seeded generator, vectors to zero."""
    gen = torch.Generator().manual_seed(seed)
    norm_types = (torch.nn.GroupNorm, torch.nn.LayerNorm)
    for name, param in module.named_parameters():
        owner = module.get_submodule(name.rsplit(".", 1)[0]) if "." in name else module
        if isinstance(owner, norm_types):
            param.fill_(1.0 if name.endswith("weight") else 0.0)
        elif param.ndim >= 2:
            param.copy_(torch.randn(param.shape, generator=gen) * std)
        elif name.endswith("mix_factor"):
            param.copy_(torch.randn(param.shape, generator=gen))  # the learned spatial/temporal blend
        else:
            param.zero_()


def build_tiny_svd(seed: int = 0, dtype: torch.dtype = torch.float32, **overrides):
    """A comfy.model_base.SVD_img2vid with tiny widths (V_PREDICTION_EDM, SVD's Karras sigmas 0.002..700)."""
    unet_config = dict(TINY_UNET_CONFIG, **overrides)
    cfg = comfy.supported_models.SVD_img2vid(unet_config)
    cfg.set_inference_dtype(dtype, None)
    model = cfg.get_model({}, device=torch.device("cpu"))
    init_weights_(model.diffusion_model, seed)
    return model


def tiny_svd_patcher(seed: int = 0, dtype: torch.dtype = torch.float32, **overrides):
    """The tiny model wrapped as ComfyUI's MODEL (a ModelPatcher managed by comfy.model_management)."""
    model = build_tiny_svd(seed, dtype, **overrides)
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


def tiny_svd_conditioning(frames: int, height: int, width: int, context_dim: int = 64, seed: int = 0):
    """Native SVD conditioning (as SVD_img2vid_Conditioning emits it) with a random image embedding and latent."""
    gen = torch.Generator().manual_seed(seed)
    embed = torch.randn(1, 1, context_dim, generator=gen)
    concat = torch.randn(1, 4, height // 8, width // 8, generator=gen)
    extras = {"motion_bucket_id": 127, "fps": 6, "augmentation_level": 0.0}
    positive = [[embed, dict(extras, concat_latent_image=concat)]]
    negative = [[torch.zeros_like(embed), dict(extras, concat_latent_image=torch.zeros_like(concat))]]
    latent = {"samples": torch.zeros(frames, 4, height // 8, width // 8)}
    return positive, negative, latent
