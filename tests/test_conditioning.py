"""ControlNeXtSVDConditioning: official reference fit, CLIP preprocessing, pixel noise, time ids, native interop."""

from __future__ import annotations

import math

import comfy.clip_vision
import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import _resize_with_antialiasing
from PIL import Image

from conftest import pack_import, run_graph
from tiny_pack.tiny_svd import build_tiny_svd
from tiny_pack.tiny_vae_clip import tiny_clip_vision, tiny_svd_vae

fit = pack_import("controlnext.image_fit")
cond = pack_import("controlnext.conditioning")

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@pytest.fixture(scope="module")
def clip_vision():
    return tiny_clip_vision(seed=3)


@pytest.fixture(scope="module")
def vae():
    return tiny_svd_vae(seed=5)


@pytest.fixture(scope="module")
def svd_model():
    return build_tiny_svd(seed=0)


def random_image(height: int, width: int, seed: int) -> torch.Tensor:
    """A ComfyUI IMAGE [1,H,W,3] as LoadImage makes it (uint8 / 255), with some smooth structure."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, max(2, height // 8), max(2, width // 8), generator=gen)
    smooth = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    noisy = (smooth * 0.8 + 0.2 * torch.rand(1, 3, height, width, generator=gen)).clamp(0, 1)
    return (torch.round(noisy * 255) / 255).movedim(1, -1)


def official_fit(image: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """utils/pre_process.py of ControlNeXt-SVD-v2, on uint8 CHW with torchvision, as the official code runs it."""
    pixels = torch.round(image[0] * 255).to(torch.uint8).permute(2, 0, 1)
    h, w = pixels.shape[-2:]
    w_target, h_target = width, height
    h_w_ratio = float(h) / float(w)
    if h_w_ratio < h_target / w_target:
        h_resize, w_resize = h_target, math.ceil(h_target / h_w_ratio)
    else:
        h_resize, w_resize = math.ceil(w_target * h_w_ratio), w_target
    pixels = TF.resize(pixels, [h_resize, w_resize], antialias=None)
    pixels = TF.center_crop(pixels, [h_target, w_target])
    return pixels.permute(1, 2, 0).unsqueeze(0).float() / 255


@pytest.mark.parametrize(("src_h", "src_w", "width", "height"), [
    (150, 97, 64, 128),    # portrait source, portrait target: width-limited, crop top/bottom
    (97, 150, 64, 128),    # landscape source, portrait target: height-limited, crop left/right
    (97, 150, 192, 64),    # landscape onto a wider landscape
    (121, 65, 64, 64),     # odd excess (121*64/65 -> 120 rows, offset round(28) ... banker's rounding cases)
    (256, 144, 64, 128),   # same aspect up to float error (ceil may add a row)
    (64, 128, 128, 64),    # already the target size: no resize at all
])
def test_fit_reference_matches_the_official_preprocessing(src_h, src_w, width, height):
    image = random_image(src_h, src_w, seed=src_h + src_w)
    got = fit.fit_reference(image, width, height)
    want = official_fit(image, width, height)
    assert got.shape == (1, height, width, 3)
    assert torch.equal(got, want)


def test_fit_reference_uses_bankers_rounding_for_the_crop_offset():
    # 66 rows of which 64 are kept: the offset is round(1.0) = 1; 67 -> round(1.5) = 2; 69 -> round(2.5) = 2
    for rows, offset in ((66, 1), (67, 2), (69, 2)):
        image = (torch.arange(rows).view(1, rows, 1, 1).expand(1, rows, 64, 3) / 255).clone()
        got = fit.fit_reference(image, 64, 64)
        assert round(got[0, 0, 0, 0].item() * 255) == offset


def test_fit_reference_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\[B,H,W,3\]"):
        fit.fit_reference(torch.zeros(1, 3, 8, 8), 64, 64)
    with pytest.raises(ValueError, match="positive target size"):
        fit.fit_reference(torch.zeros(1, 8, 8, 3), 0, 64)


@pytest.mark.parametrize(("height", "width"), [(1024, 576), (96, 160), (64, 64), (300, 224)])
def test_clip_pixel_values_match_diffusers(height, width):
    image = random_image(height, width, seed=height)
    got = cond.clip_pixel_values(image, 224, list(CLIP_MEAN), list(CLIP_STD))
    x = _resize_with_antialiasing(image.movedim(-1, 1) * 2.0 - 1.0, (224, 224))
    want = ((x + 1.0) / 2.0 - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    assert got.shape == (1, 3, 224, 224)
    torch.testing.assert_close(got, want, rtol=0, atol=2e-6)


def test_clip_pixel_values_keep_the_whole_portrait_unlike_comfy_clip_preprocess():
    # a portrait whose top and bottom thirds are white: the official squash keeps them, ComfyUI's crop drops them
    image = torch.zeros(1, 672, 224, 3)
    image[:, :224] = 1.0
    image[:, -224:] = 1.0
    ours = cond.clip_pixel_values(image, 224, list(CLIP_MEAN), list(CLIP_STD))
    comfy_crop = comfy.clip_vision.clip_preprocess(image, 224, list(CLIP_MEAN), list(CLIP_STD), crop=True)
    white = (1 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    torch.testing.assert_close(ours[0, :, 2, 112], white, rtol=0, atol=1e-4)
    assert (comfy_crop[0, :, 2, 112] < 0).all()  # black there


def test_clip_embedding_is_the_vision_model_on_official_pixels(clip_vision):
    image = random_image(128, 64, seed=1)
    embeds = cond.encode_clip_image(clip_vision, image)
    pixels = _resize_with_antialiasing(image.movedim(-1, 1) * 2.0 - 1.0, (224, 224))
    pixels = ((pixels + 1.0) / 2.0 - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        want = clip_vision.model(pixel_values=pixels)[2]
    assert embeds.shape == (1, 1, 64)
    torch.testing.assert_close(embeds[:, 0], want, rtol=0, atol=1e-5)
    native = clip_vision.encode_image(image).image_embeds
    assert (native - want).abs().max() > 1e-3  # the native crop+quantise path is really different


def independent_concat_latent(vae, fitted: torch.Tensor, augmentation: float, seed: int) -> torch.Tensor:
    """x in [-1,1] + augmentation * N(0,1) (seeded CPU randn in NCHW, like diffusers' randn_tensor) -> encoder ->
    posterior mode (the mean half of the 8 moments)."""
    x = fitted.movedim(-1, 1) * 2.0 - 1.0
    x = x + augmentation * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        moments = vae.first_stage_model.encoder(x)
    return moments[:, :4]


@pytest.mark.parametrize("augmentation", [0.02, 0.3])
def test_concat_latent_is_the_mode_of_the_reference_plus_noise_in_minus_one_one_space(clip_vision, vae,
                                                                                       augmentation):
    image = random_image(96, 80, seed=7)
    out = cond.controlnext_svd_conditioning(clip_vision, vae, image, 64, 64, 5, augmentation=augmentation,
                                            noise_seed=11)
    fitted = official_fit(image, 64, 64)
    assert torch.equal(out.fitted_image, fitted)
    concat = out.positive[0][1]["concat_latent_image"]
    want = independent_concat_latent(vae, fitted, augmentation, seed=11)
    assert concat.shape == (1, 4, 8, 8)
    torch.testing.assert_close(concat, want, rtol=0, atol=1e-5)
    # ComfyUI's native [0,1]-space noise would be twice as strong: clearly farther away
    doubled = independent_concat_latent(vae, fitted, 2 * augmentation, seed=11)
    assert (doubled - want).abs().max() > 20 * (concat - want).abs().max()
    other_seed = cond.encode_reference_latent(vae, fitted, augmentation, seed=12)
    assert not torch.equal(other_seed, concat)


def test_outputs_have_the_native_svd_layout(clip_vision, vae):
    image = random_image(64, 64, seed=2)
    out = cond.controlnext_svd_conditioning(clip_vision, vae, image, 64, 64, 6)
    (pos_embed, pos), = out.positive
    (neg_embed, neg), = out.negative
    assert pos_embed.shape == neg_embed.shape == (1, 1, 64)
    assert not torch.any(neg_embed) and not torch.any(neg["concat_latent_image"])
    assert neg["concat_latent_image"].shape == pos["concat_latent_image"].shape == (1, 4, 8, 8)
    for extras in (pos, neg):
        assert {k: extras[k] for k in ("fps", "motion_bucket_id", "augmentation_level")} == \
            {"fps": 7, "motion_bucket_id": 128, "augmentation_level": 0.02}
    assert out.latent["samples"].shape == (6, 4, 8, 8) and not torch.any(out.latent["samples"])


def svd_embedder_ids(model, ids: list[float]) -> torch.Tensor:
    return torch.cat([model.embedder(torch.Tensor([v])) for v in ids]).flatten().unsqueeze(0)


@pytest.mark.parametrize(("fps", "motion", "time_aug", "ids"), [
    (7, 128, 0.02, [6, 128, 0.02]),   # the defaults give the official hard-coded ids
    (9, 40, 0.1, [8, 40, 0.1]),       # anything else passes through unchanged
])
def test_time_ids_reach_the_model_y_vector_unchanged(clip_vision, vae, svd_model, fps, motion, time_aug, ids):
    model = svd_model
    image = random_image(64, 64, seed=4)
    out = cond.controlnext_svd_conditioning(clip_vision, vae, image, 64, 64, 3, fps=fps, motion_bucket_id=motion,
                                            time_id_augmentation=time_aug)
    extras = out.positive[0][1]
    noise = torch.zeros(3, 4, 8, 8)
    conds = model.extra_conds(**extras, noise=noise, device=torch.device("cpu"))
    torch.testing.assert_close(conds["y"].cond, svd_embedder_ids(model, ids), rtol=0, atol=0)
    # c_concat is the latent as given, repeated over the frames: no second noise, no scaling
    concat = conds["c_concat"].cond
    assert concat.shape == (3, 4, 8, 8)
    assert torch.equal(concat, extras["concat_latent_image"].expand(3, -1, -1, -1))


@pytest.mark.parametrize("pixel_aug", [0.0, 0.02, 0.3])
def test_time_id_augmentation_is_0_02_whatever_pixel_noise_as_officially(clip_vision, vae, svd_model, pixel_aug):
    """Spec item 4: the official pipeline overwrites its time ids with [6, 128, 0.02] whatever noise_aug it applied
    to the pixels, so the y vector must not follow the pixel augmentation (e.g. 0 at augmentation 0)."""
    out = cond.controlnext_svd_conditioning(clip_vision, vae, random_image(64, 64, seed=5), 64, 64, 2,
                                            augmentation=pixel_aug)
    for extras in (out.positive[0][1], out.negative[0][1]):
        conds = svd_model.extra_conds(**extras, noise=torch.zeros(2, 4, 8, 8), device=torch.device("cpu"))
        torch.testing.assert_close(conds["y"].cond, svd_embedder_ids(svd_model, [6, 128, 0.02]), rtol=0, atol=0)


def test_time_id_augmentation_changes_only_the_time_id(clip_vision, vae):
    image = random_image(64, 64, seed=6)
    base = cond.controlnext_svd_conditioning(clip_vision, vae, image, 64, 64, 2, augmentation=0.1, noise_seed=3)
    other = cond.controlnext_svd_conditioning(clip_vision, vae, image, 64, 64, 2, augmentation=0.1, noise_seed=3,
                                              time_id_augmentation=0.5)
    assert base.positive[0][1]["augmentation_level"] == 0.02 and other.positive[0][1]["augmentation_level"] == 0.5
    assert torch.equal(base.positive[0][1]["concat_latent_image"], other.positive[0][1]["concat_latent_image"])
    assert torch.equal(base.positive[0][0], other.positive[0][0])


@pytest.mark.parametrize(("width", "height", "words"), [
    (600, 1024, ["width 600", "576 or 640"]),
    (576, 1000, ["height 1000", "960 or 1024"]),
    (32, 64, ["width 32", "64"]),
])
def test_sizes_that_are_not_multiples_of_64_are_refused_with_nearby_sizes(clip_vision, vae, width, height, words):
    with pytest.raises(ValueError) as err:
        cond.controlnext_svd_conditioning(clip_vision, vae, random_image(64, 64, 0), width, height, 4)
    message = str(err.value)
    for word in words + ["multiples of 64", "divisible by 8"]:
        assert word in message


def save_input_image(comfy_base, name: str, height: int, width: int) -> None:
    array = (random_image(height, width, seed=9)[0].numpy() * 255).round().astype(np.uint8)
    Image.fromarray(array).save(comfy_base / "input" / name)


def test_graph_official_conditioning_sampler_decode_and_native_interop(comfy_base):
    save_input_image(comfy_base, "ref_portrait.png", 90, 50)
    sampler = {"seed": 7, "steps": 1, "cfg": 2.5, "sampler_name": "euler", "scheduler": "karras", "denoise": 1.0}
    graph = {
        "clip": {"class_type": "ControlNeXtTestTinyCLIPVision", "inputs": {"seed": 3}},
        "vae": {"class_type": "ControlNeXtTestTinyVAE", "inputs": {"seed": 5}},
        "model": {"class_type": "ControlNeXtTestTinySVD", "inputs": {"seed": 1}},
        "img": {"class_type": "LoadImage", "inputs": {"image": "ref_portrait.png"}},
        "ours": {"class_type": "ControlNeXtSVDConditioning", "inputs": {
            "clip_vision": ["clip", 0], "vae": ["vae", 0], "image": ["img", 0], "width": 64, "height": 64,
            "video_frames": 2, "fps": 7, "motion_bucket_id": 128, "augmentation": 0.02, "noise_seed": 4}},
        # ours -> the native SVD model + KSampler -> our chunked decode and the native VAE Decode
        "ks": {"class_type": "KSampler", "inputs": dict(sampler, model=["model", 0], positive=["ours", 0],
                                                        negative=["ours", 1], latent_image=["ours", 2])},
        "dec": {"class_type": "ControlNeXtDecode", "inputs": {"vae": ["vae", 0], "samples": ["ks", 0],
                                                              "decode_chunk_size": 2}},
        "dec_native": {"class_type": "VAEDecode", "inputs": {"vae": ["vae", 0], "samples": ["ks", 0]}},
        # the native SVD conditioning node's latent -> our decode
        "native": {"class_type": "SVD_img2vid_Conditioning", "inputs": {
            "clip_vision": ["clip", 0], "init_image": ["img", 0], "vae": ["vae", 0], "width": 64, "height": 64,
            "video_frames": 3, "motion_bucket_id": 127, "fps": 6, "augmentation_level": 0.0}},
        "dec_of_native": {"class_type": "ControlNeXtDecode", "inputs": {"vae": ["vae", 0],
                                                                        "samples": ["native", 2],
                                                                        "decode_chunk_size": 2}},
        "out": {"class_type": "PreviewImage", "inputs": {"images": ["dec", 0]}},
        "out_native": {"class_type": "PreviewImage", "inputs": {"images": ["dec_native", 0]}},
        "out_of_native": {"class_type": "PreviewImage", "inputs": {"images": ["dec_of_native", 0]}},
    }
    run = run_graph(graph)
    assert run.success, run.error()
    assert len(run.outputs["out"]["images"]) == 2  # every frame, frame 0 included
    assert len(run.outputs["out_native"]["images"]) == 2
    assert len(run.outputs["out_of_native"]["images"]) == 3


def test_graph_reports_a_bad_size_clearly(comfy_base):
    save_input_image(comfy_base, "ref_small.png", 64, 64)
    graph = {
        "clip": {"class_type": "ControlNeXtTestTinyCLIPVision", "inputs": {"seed": 0}},
        "vae": {"class_type": "ControlNeXtTestTinyVAE", "inputs": {"seed": 0}},
        "img": {"class_type": "LoadImage", "inputs": {"image": "ref_small.png"}},
        "ours": {"class_type": "ControlNeXtSVDConditioning", "inputs": {
            "clip_vision": ["clip", 0], "vae": ["vae", 0], "image": ["img", 0], "width": 100, "height": 128,
            "video_frames": 2, "fps": 7, "motion_bucket_id": 128, "augmentation": 0.02}},
        "dec": {"class_type": "ControlNeXtDecode", "inputs": {"vae": ["vae", 0], "samples": ["ours", 2],
                                                              "decode_chunk_size": 2}},
        "out": {"class_type": "PreviewImage", "inputs": {"images": ["dec", 0]}},
    }
    run = run_graph(graph)
    assert not run.success
    error = run.error()
    assert error["exception_type"].endswith("ValueError")
    assert "width 100" in error["exception_message"] and "64 or 128" in error["exception_message"]
