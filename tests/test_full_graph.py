"""The whole generation graph (loaders, conditioning, apply, windowed sampler, chunked decode) with tiny models,
in-process and over HTTP, deterministic for a fixed seed."""

from __future__ import annotations

from pathlib import Path

import folder_paths
import numpy as np
import safetensors.torch
import torch
from PIL import Image

from comfy_server import ComfyServer
from conftest import run_graph
from tiny_pack.tiny_controlnext import tiny_controlnext_state_dict
from tiny_pack.tiny_svd import build_tiny_svd

FRAMES = 6


def install_tiny_models(base: Path) -> None:
    """A tiny ComfyUI-key UNet, a tiny control network (64 wide, matching the UNet) and a reference photo."""
    unet_dir = base / "models" / "diffusion_models"
    cnx_dir = base / "models" / "controlnext"
    for d in (unet_dir, cnx_dir, base / "input"):
        d.mkdir(parents=True, exist_ok=True)
    unet = build_tiny_svd(seed=3).diffusion_model.state_dict()
    safetensors.torch.save_file({"model.diffusion_model." + k: v.contiguous() for k, v in unet.items()},
                                unet_dir / "tiny_cnx_unet.safetensors")
    safetensors.torch.save_file(tiny_controlnext_state_dict(seed=4, output_channels=64),
                                cnx_dir / "tiny_cnx_control.safetensors")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (96, 72, 3), dtype=np.uint8)).save(base / "input" / "tiny_ref.png")


def generation_graph(seed: int) -> dict:
    return {
        "1": {"class_type": "ControlNeXtUNetLoader",
              "inputs": {"unet_name": "tiny_cnx_unet.safetensors", "weight_dtype": "fp32"}},
        "2": {"class_type": "ControlNeXtLoader", "inputs": {"controlnext_name": "tiny_cnx_control.safetensors"}},
        "3": {"class_type": "ControlNeXtTestTinyCLIPVision", "inputs": {"seed": 0}},
        "4": {"class_type": "ControlNeXtTestTinyVAE", "inputs": {"seed": 0}},
        "5": {"class_type": "LoadImage", "inputs": {"image": "tiny_ref.png"}},
        "6": {"class_type": "ControlNeXtSVDConditioning", "inputs": {
            "clip_vision": ["3", 0], "vae": ["4", 0], "image": ["5", 0], "width": 64, "height": 64,
            "video_frames": FRAMES, "fps": 7, "motion_bucket_id": 128, "augmentation": 0.02}},
        "7": {"class_type": "ImageScale", "inputs": {"image": ["5", 0], "upscale_method": "bilinear",
                                                    "width": 64, "height": 64, "crop": "center"}},
        "8": {"class_type": "RepeatImageBatch", "inputs": {"image": ["7", 0], "amount": FRAMES}},
        "9": {"class_type": "ControlNeXtApply", "inputs": {
            "model": ["1", 0], "controlnext": ["2", 0], "pose_images": ["8", 0], "strength": 1.0}},
        "10": {"class_type": "ControlNeXtSampler", "inputs": {
            "model": ["9", 0], "positive": ["6", 0], "negative": ["6", 1], "latent_image": ["6", 2], "seed": seed,
            "steps": 2, "cfg_min": 1.5, "cfg_max": 3.0, "frames_per_window": 4, "overlap": 2,
            "sampler_name": "euler", "scheduler": "karras"}},
        "11": {"class_type": "ControlNeXtDecode", "inputs": {"vae": ["4", 0], "samples": ["10", 0],
                                                            "decode_chunk_size": 2}},
        "12": {"class_type": "SaveLatent", "inputs": {"samples": ["10", 0], "filename_prefix": f"full_{seed}"}},
        "13": {"class_type": "SaveImage", "inputs": {"images": ["11", 0], "filename_prefix": f"full_{seed}"}},
    }


def read_outputs(outputs: dict, output_dir: str) -> tuple[torch.Tensor, list[np.ndarray]]:
    saved = outputs["12"]["latents"][0]
    latent = safetensors.torch.load_file(f"{output_dir}/{saved['subfolder']}/{saved['filename']}")["latent_tensor"]
    frames = [np.asarray(Image.open(f"{output_dir}/{img['subfolder']}/{img['filename']}"))
              for img in outputs["13"]["images"]]
    return latent, frames


def test_full_graph_in_process_is_deterministic(comfy_base):
    install_tiny_models(comfy_base)
    results = []
    for seed in (1, 1, 2):
        run = run_graph(generation_graph(seed))
        assert run.success, run.error()
        results.append(read_outputs(run.outputs, folder_paths.get_output_directory()))
    (lat_a, img_a), (lat_b, img_b), (lat_c, _) = results
    assert lat_a.shape == (FRAMES, 4, 8, 8) and torch.isfinite(lat_a).all()
    assert len(img_a) == FRAMES and img_a[0].shape == (64, 64, 3)
    assert torch.equal(lat_a, lat_b) and all(np.array_equal(x, y) for x, y in zip(img_a, img_b, strict=True))
    assert not torch.allclose(lat_a, lat_c)


def test_full_graph_over_http():
    with ComfyServer(extra_args=("--cache-none",)) as srv:  # no output cache: the second run really runs
        install_tiny_models(srv.base)
        entries = [srv.wait(srv.queue(generation_graph(7))) for _ in range(2)]
        for entry in entries:
            assert entry["status"]["status_str"] == "success", entry["status"]
        first, second = (read_outputs(e["outputs"], str(srv.base / "output")) for e in entries)
        assert torch.equal(first[0], second[0])
        assert len(first[1]) == FRAMES
