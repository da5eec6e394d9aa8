"""Tiny CLIP vision and SVD video VAE built from ComfyUI's own classes, with seeded weights (tests only).

CLIP: comfy.clip_vision.ClipVisionModel from a tiny json config (224 px input, 32 px patches, 2 layers because
the native encode reads layer -2, and a 64-wide projection to match the tiny SVD UNet's context_dim).
VAE: comfy.sd.VAE only recognises the SVD temporal VAE at full width (ch 128, about 98M parameters, seconds per
decode on CPU), so the tiny one is the same classes ComfyUI's SVD branch builds (AutoencodingEngine with
Encoder + temporal_ae.VideoDecoder + DiagonalGaussianRegularizer, video_kernel_size [3,1,1]) at ch 32, set into a
comfy.sd.VAE with the attributes that branch sets.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import comfy.clip_vision
import comfy.model_management as mm
import comfy.model_patcher
import comfy.sd
import torch
from comfy.ldm.models.autoencoder import AutoencodingEngine

from .tiny_svd import init_weights_

TINY_CLIP_CONFIG = {
    "attention_dropout": 0.0, "dropout": 0.0, "hidden_act": "gelu", "hidden_size": 64, "image_size": 224,
    "initializer_factor": 1.0, "initializer_range": 0.02, "intermediate_size": 128, "layer_norm_eps": 1e-05,
    "model_type": "clip_vision_model", "num_attention_heads": 2, "num_channels": 3, "num_hidden_layers": 2,
    "patch_size": 32, "projection_dim": 64, "torch_dtype": "float32",
}


def tiny_clip_vision(seed: int = 0) -> comfy.clip_vision.ClipVisionModel:
    """A ComfyUI CLIP_VISION (ViT, 2 layers, 64 wide) with seeded weights; embeddings are (B, 64)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tiny_clip_vision.json"
        path.write_text(json.dumps(TINY_CLIP_CONFIG))
        clip = comfy.clip_vision.ClipVisionModel(str(path))
    init_weights_(clip.model, seed, std=0.2)
    with torch.no_grad():  # the class and position embeddings are matrices/vectors that must not stay zero
        emb = clip.model.vision_model.embeddings
        gen = torch.Generator().manual_seed(seed + 1)
        emb.class_embedding.copy_(torch.randn(emb.class_embedding.shape, generator=gen))
    return clip


def tiny_svd_vae_model(seed: int = 0, ch: int = 32) -> AutoencodingEngine:
    """The SVD VAE architecture of comfy.sd.VAE's temporal branch at width ch (ch_mult [1,1,1,1], one res block)."""
    encoder_config = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": ch,
                      "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}
    decoder_config = dict(encoder_config, video_kernel_size=[3, 1, 1], alpha=0.0)
    model = AutoencodingEngine(
        regularizer_config={"target": "comfy.ldm.models.autoencoder.DiagonalGaussianRegularizer"},
        encoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Encoder", "params": encoder_config},
        decoder_config={"target": "comfy.ldm.modules.temporal_ae.VideoDecoder", "params": decoder_config},
    ).eval()
    init_weights_(model, seed, std=0.1)
    return model


def tiny_svd_vae(seed: int = 0, dtype: torch.dtype = torch.float32) -> comfy.sd.VAE:
    """A ComfyUI VAE object around the tiny SVD VAE, set up as VAE.__init__ sets up the SVD branch."""
    vae = comfy.sd.VAE(sd={"pixel_space_vae": torch.tensor(1.0)}, dtype=dtype)  # cheap shell with device logic
    model = tiny_svd_vae_model(seed).to(dtype)
    vae.first_stage_model = model
    vae.downscale_ratio = vae.upscale_ratio = 8
    vae.latent_channels = 4
    vae.latent_dim = 2
    vae.output_channels = 3
    vae.memory_used_encode = lambda shape, dt: 1767 * shape[2] * shape[3] * mm.dtype_size(dt)
    vae.memory_used_decode = lambda shape, dt: 2178 * shape[2] * shape[3] * 64 * mm.dtype_size(dt)
    vae.vae_dtype = dtype
    vae.size = None
    vae.patcher = comfy.model_patcher.ModelPatcher(model, load_device=vae.device,
                                                   offload_device=mm.vae_offload_device())
    vae.model_size()
    return vae
