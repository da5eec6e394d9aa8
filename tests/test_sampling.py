"""ControlNeXtSampler against an independent plain-torch statement of the official windowed sampling loop."""

from __future__ import annotations

import math

import comfy.samplers
import folder_paths
import pytest
import safetensors.torch
import torch

from conftest import GraphInvalid, pack_import, run_graph
from tiny_pack.tiny_svd import tiny_svd_conditioning, tiny_svd_patcher

windows = pack_import("controlnext.windows")


# ---- independent statement of the official pipeline (spec 4.5-4.7), written without the pack's code -------------

def official_window_starts(frames: int, frames_per_batch: int, overlap: int) -> list[int]:
    fpb = min(frames_per_batch, frames)
    starts = []
    for s in range(0, frames - overlap, fpb - overlap):
        if s + fpb > frames:
            s = frames - fpb
        starts.append(s)
    return starts


def official_karras(n: int, sigma_min: float = 0.002, sigma_max: float = 700.0) -> torch.Tensor:
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / 7), sigma_max ** (1 / 7)
    sigmas = (hi + ramp * (lo - hi)) ** 7
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)]).float()


def svd_added_time_embedding(ids: list[float]) -> torch.Tensor:
    """diffusers' add_time_proj: Timesteps(256, flip_sin_to_cos=True, shift 0) per id, concatenated."""
    k = torch.arange(128, dtype=torch.float32)
    freqs = torch.exp(-math.log(10000) * k / 128)
    parts = [torch.cat([torch.cos(i * freqs), torch.sin(i * freqs)]) for i in ids]
    return torch.cat(parts).unsqueeze(0)


def official_sample(unet, noise, sigmas, embed, concat, time_ids, fpb, overlap, g_min, g_max,
                    keep_anchor=False, global_ramp=False, control=None, own_anchor_pose=False):
    """The official denoising loop: per window CFG on v with a ramp, one Euler step, average the stepped latents.

    control(window_poses_indices, sigma) -> an input_block_patch_after_skip for the conditional pass, or None.
    keep_anchor, global_ramp and own_anchor_pose are deliberately wrong variants (sensitivity checks).
    """
    frames = noise.shape[0]
    fpb = min(fpb, frames)
    y = svd_added_time_embedding(time_ids)
    x = noise * math.sqrt(float(sigmas[0]) ** 2 + 1)
    starts = official_window_starts(frames, fpb, overlap)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        pred = torch.zeros_like(x)
        counter = torch.zeros(frames, 1, 1, 1)
        for s in starts:
            x_w = x[s:s + fpb]
            x_in = x_w / math.sqrt(sigma ** 2 + 1)
            t = torch.full((fpb,), 0.25 * math.log(sigma))

            def v_pred(context, concat_latent, patch=None, x_in=x_in, t=t):
                inp = torch.cat([x_in, concat_latent.expand(fpb, -1, -1, -1)], dim=1)
                options = {"patches": {"input_block_patch_after_skip": [patch]}} if patch else {}
                return unet(inp, t, context=context.expand(fpb, -1, -1), y=y.expand(fpb, -1),
                            num_video_frames=fpb, transformer_options=options)

            # control_w = control[s:s+fpb] with its frame 0 replaced by the reference pose (pose 0)
            pose_idx = list(range(s, s + fpb)) if own_anchor_pose else [0, *range(s + 1, s + fpb)]
            v_c = v_pred(embed, concat, control(pose_idx, sigma) if control else None)
            v_u = v_pred(torch.zeros_like(embed), torch.zeros_like(concat))
            g = torch.linspace(g_min, g_max, fpb).view(-1, 1, 1, 1)
            if global_ramp:
                g = torch.linspace(g_min, g_max, frames)[s:s + fpb].view(-1, 1, 1, 1)
            v = v_u + g * (v_c - v_u)
            x0 = v * (-sigma / math.sqrt(sigma ** 2 + 1)) + x_w / (sigma ** 2 + 1)
            stepped = x_w + (x_w - x0) / sigma * (sigma_next - sigma)
            if s == 0 or keep_anchor:
                pred[s:s + fpb] += stepped
                counter[s:s + fpb] += 1
            else:
                pred[s + 1:s + fpb] += stepped[1:]
                counter[s + 1:s + fpb] += 1
        x = pred / counter
    return x


# ---- window placement ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("frames,fpb,overlap", [(81, 24, 6), (24, 24, 6), (25, 24, 6), (7, 4, 2), (30, 24, 6),
                                                (100, 16, 1), (13, 5, 4), (240, 24, 6)])
def test_window_placement_matches_official(frames, fpb, overlap):
    plan = windows.plan_windows(frames, fpb, overlap)
    assert [w.start for w in plan] == official_window_starts(frames, fpb, overlap)
    assert all(w.length == min(fpb, frames) for w in plan)
    assert (windows.coverage(plan, frames) >= 1).all()


def test_window_example_from_the_spec():
    plan = windows.plan_windows(81, 24, 6)
    assert [w.start for w in plan] == [0, 18, 36, 54, 57]
    cover = windows.coverage(plan, 81)
    assert cover[19:24].tolist() == [2] * 5 and cover[:19].tolist() == [1] * 19
    assert plan[1].pose_indices == [0, *range(19, 42)]
    assert plan[0].pose_indices == list(range(24))


def test_official_overlap_zero_leaves_frames_uncovered():
    # why overlap 0 is refused: the official scheme drops every later window's anchor frame
    starts = official_window_starts(40, 8, 0)
    covered = set(range(8)) | {f for s in starts[1:] for f in range(s + 1, s + 8)}
    assert set(range(40)) - covered == {8, 16, 24, 32}
    assert [(w.start, w.length) for w in windows.plan_windows(8, 8, 0)] == [(0, 8)]  # one window: fine


def test_short_clips_clamp_to_one_window():
    assert [(w.start, w.length) for w in windows.plan_windows(5, 24, 6)] == [(0, 5)]
    assert [(w.start, w.length) for w in windows.plan_windows(3, 24, 6)] == [(0, 3)]  # official: NaN (F <= overlap)


@pytest.mark.parametrize("frames,fpb,overlap,message", [
    (0, 24, 6, "no frames"), (10, 1, 0, "at least 2"), (10, 6, 6, "smaller than frames_per_window"),
    (10, 6, -1, "at least 0"), (100, 16, 0, "overlap of at least 1"),
])
def test_window_settings_errors(frames, fpb, overlap, message):
    with pytest.raises(windows.WindowSettingsError, match=message):
        windows.plan_windows(frames, fpb, overlap)


def test_comfy_karras_matches_official_schedule():
    model = tiny_svd_patcher(0)
    ours = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "karras", 25)
    ref = official_karras(25)
    assert torch.allclose(ours.float(), ref, rtol=4e-6, atol=0)
    assert ref[1].item() == pytest.approx(545.73, abs=0.01)


# ---- the node against the official loop ------------------------------------------------------------------------

def sampler_graph(frames: int, fpb: int, overlap: int, cfg_min: float, cfg_max: float, steps: int = 3,
                  seed: int = 5, model_seed: int = 11, cfg_function: bool = False) -> dict:
    """Tiny SVD -> ControlNeXtSampler -> SaveLatent (optionally with VideoLinearCFGGuidance on the model)."""
    graph = {
        "1": {"class_type": "ControlNeXtTestTinySVD", "inputs": {"seed": model_seed}},
        "2": {"class_type": "ControlNeXtTestTinySVDConditioning",
              "inputs": {"frames": frames, "width": 64, "height": 64, "seed": 2}},
        "3": {"class_type": "ControlNeXtSampler", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["2", 1], "latent_image": ["2", 2], "seed": seed,
            "steps": steps, "cfg_min": cfg_min, "cfg_max": cfg_max, "frames_per_window": fpb, "overlap": overlap,
            "sampler_name": "euler", "scheduler": "karras"}},
        "4": {"class_type": "SaveLatent", "inputs": {"samples": ["3", 0], "filename_prefix": "cnx_sampler"}},
    }
    if cfg_function:
        graph["1b"] = {"class_type": "VideoLinearCFGGuidance", "inputs": {"model": ["1", 0], "min_cfg": 1.0}}
        graph["3"]["inputs"]["model"] = ["1b", 0]
    return graph


def saved_latent(run) -> torch.Tensor:
    assert run.success, run.error()
    saved = run.outputs["4"]["latents"][0]
    path = f"{folder_paths.get_output_directory()}/{saved['subfolder']}/{saved['filename']}"
    return safetensors.torch.load_file(path)["latent_tensor"]


def run_sampler(frames: int, fpb: int, overlap: int, cfg_min: float, cfg_max: float, steps: int = 3, seed: int = 5,
                model_seed: int = 11):
    return saved_latent(run_graph(sampler_graph(frames, fpb, overlap, cfg_min, cfg_max, steps, seed, model_seed)))


def reference(frames, fpb, overlap, cfg_min, cfg_max, steps=3, seed=5, model_seed=11, sigmas=None, **variant):
    model = tiny_svd_patcher(model_seed).model
    positive, negative, _ = tiny_svd_conditioning(frames, 64, 64, seed=2)
    embed, concat = positive[0][0], positive[0][1]["concat_latent_image"]
    noise = torch.randn((frames, 4, 8, 8), generator=torch.manual_seed(seed))
    sigmas = official_karras(steps) if sigmas is None else sigmas
    with torch.no_grad():
        return official_sample(model.diffusion_model, noise, sigmas, embed, concat, [6 - 1, 127, 0.0], fpb, overlap,
                               cfg_min, cfg_max, **variant)


def latent_out(x: torch.Tensor) -> torch.Tensor:
    return x / 0.18215  # comfy SD15 latent format: process_latent_out divides by the scale factor


@pytest.mark.parametrize("frames,fpb,overlap,cfg_min,cfg_max", [(7, 4, 2, 1.5, 3.0), (5, 8, 2, 3.0, 3.0)])
def test_sampler_node_equals_official_loop(frames, fpb, overlap, cfg_min, cfg_max):
    ours = run_sampler(frames, fpb, overlap, cfg_min, cfg_max)
    ref = latent_out(reference(frames, fpb, overlap, cfg_min, cfg_max))
    assert ours.shape == (frames, 4, 8, 8)
    err = (ours - ref).abs().max() / ref.abs().max()
    assert err < 1e-4, err


def test_sampler_check_catches_wrong_window_math():
    # the same comparison must fail for an anchor frame kept in the average or a ramp indexed by global frame
    ours = run_sampler(7, 4, 2, 1.0, 6.0)
    for variant in ({"keep_anchor": True}, {"global_ramp": True}):
        wrong = latent_out(reference(7, 4, 2, 1.0, 6.0, **variant))
        err = (ours - wrong).abs().max() / wrong.abs().max()
        assert err > 1e-2, (variant, err)


def test_sampler_is_deterministic_and_seed_dependent():
    a = run_sampler(6, 4, 1, 2.0, 2.0, steps=2, seed=1)
    b = run_sampler(6, 4, 1, 2.0, 2.0, steps=2, seed=1)
    c = run_sampler(6, 4, 1, 2.0, 2.0, steps=2, seed=2)
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_sampler_window_errors_are_clear():
    graph = sampler_graph(8, 4, 4, 1.0, 1.0, steps=1, seed=0, model_seed=0)
    run = run_graph(graph)
    assert not run.success
    assert "overlap is 4 but must be" in run.error()["exception_message"]
    graph["3"]["inputs"]["frames_per_window"] = 1
    with pytest.raises(GraphInvalid):  # below the input's min: refused by ComfyUI's validation before running
        run_graph(graph)


def test_guider_node_with_sampler_custom_advanced_equals_sampler_node():
    """ControlNeXtGuider in core's SamplerCustomAdvanced (RandomNoise, euler, BasicScheduler karras) is the sampler."""
    graph = sampler_graph(7, 4, 2, 1.5, 3.0)
    model, cond = ["1", 0], "2"
    graph["3"] = {"class_type": "SamplerCustomAdvanced", "inputs": {
        "noise": ["n", 0], "guider": ["g", 0], "sampler": ["s", 0], "sigmas": ["k", 0], "latent_image": [cond, 2]}}
    graph["n"] = {"class_type": "RandomNoise", "inputs": {"noise_seed": 5}}
    graph["s"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}}
    graph["k"] = {"class_type": "BasicScheduler",
                  "inputs": {"model": model, "scheduler": "karras", "steps": 3, "denoise": 1.0}}
    graph["g"] = {"class_type": "ControlNeXtGuider", "inputs": {
        "model": model, "positive": [cond, 0], "negative": [cond, 1], "cfg_min": 1.5, "cfg_max": 3.0,
        "frames_per_window": 4, "overlap": 2}}
    custom = saved_latent(run_graph(graph))
    assert torch.equal(custom, run_sampler(7, 4, 2, 1.5, 3.0))
    ref = latent_out(reference(7, 4, 2, 1.5, 3.0))
    assert (custom - ref).abs().max() / ref.abs().max() < 1e-4


# Align Your Steps' published SVD noise levels (10 steps); ComfyUI's scheduler ends them at 0 instead of 0.002
AYS_SVD_10 = [700.00, 54.5, 15.886, 7.977, 4.248, 1.789, 0.981, 0.403, 0.173, 0.034, 0.0]


def test_sampler_sigmas_input_replaces_steps_and_scheduler():
    graph = sampler_graph(7, 4, 2, 1.5, 3.0, steps=1)
    graph["3"]["inputs"].update(scheduler="normal", sigmas=["ays", 0])
    graph["ays"] = {"class_type": "AlignYourStepsScheduler",
                    "inputs": {"model_type": "SVD", "steps": 10, "denoise": 1.0}}
    ours = saved_latent(run_graph(graph))
    ref = latent_out(reference(7, 4, 2, 1.5, 3.0, sigmas=torch.tensor(AYS_SVD_10)))
    assert (ours - ref).abs().max() / ref.abs().max() < 1e-4
    karras = latent_out(reference(7, 4, 2, 1.5, 3.0, steps=10))
    assert (ours - karras).abs().max() / karras.abs().max() > 1e-2  # the check can tell the schedules apart


# ---- windows and the control path together ----------------------------------------------------------------------

def test_windowed_sampling_with_control_equals_official_loop():
    """The pack's guider + ControlNeXtApply against the official loop with an independently written control
    injection (network layer by layer, cross-normalisation, pooling, 0.2): the reference pose anchors every window."""
    import torch.nn.functional as F
    from test_controlnext_network import ref_controlnext
    from test_patch import SD, controlnext_model, damp_skips, make_poses

    patch_mod = pack_import("controlnext.patch")
    guider_cls = pack_import("controlnext.sampling").ControlNeXtGuider
    frames, fpb, overlap, steps, g_min, g_max = 7, 4, 2, 2, 1.5, 3.0
    svd = tiny_svd_patcher(seed=0)
    damp_skips(svd.model.diffusion_model, 0.1)  # so the control visibly moves the result (see test_patch)
    poses = make_poses(frames, 64, seed=4)
    positive, negative, latent = tiny_svd_conditioning(frames, 64, 64, seed=2)
    noise = torch.randn((frames, 4, 8, 8), generator=torch.manual_seed(5))
    sigmas = official_karras(steps)

    def sample(model):
        guider = guider_cls(model, fpb, overlap, g_min, g_max)
        guider.set_conds(positive, negative)
        return guider.sample(noise, latent["samples"], comfy.samplers.sampler_object("euler"), sigmas,
                             disable_pbar=True, seed=5)

    ours = sample(patch_mod.apply_controlnext(svd, controlnext_model(), poses, strength=1.0))
    plain = sample(svd)

    def control(pose_idx, sigma):
        c = ref_controlnext(SD, poses.movedim(-1, 1)[pose_idx][None], torch.tensor([0.25 * math.log(sigma)]))

        def patch(h, to):
            if to["block"] != ("input", 3):
                return h
            cc = (c - c.mean((1, 2, 3), keepdim=True)) / (c.std((1, 2, 3), keepdim=True) + 1e-5)
            cc = cc * h.std((1, 2, 3), keepdim=True) + h.mean((1, 2, 3), keepdim=True)
            return h + F.adaptive_avg_pool2d(cc, h.shape[-2:]) * 0.2

        return patch

    def reference(**variant):
        with torch.no_grad():
            x = official_sample(svd.model.diffusion_model, noise, sigmas, positive[0][0],
                                positive[0][1]["concat_latent_image"], [6 - 1, 127, 0.0], fpb, overlap, g_min, g_max,
                                control=control, **variant)
        return latent_out(x)

    def rel(a, b):
        return float((a - b).norm() / b.norm())

    # float32 agreement measured at 5e-5 (two Euler steps amplify the per-call ~5e-6); the wrong anchoring differs
    # by 7.7e-3, and the control itself moves the result by 0.39
    ref = reference()
    assert rel(ours, ref) < 2e-4
    assert rel(plain, ref) > 0.05
    assert rel(ours, reference(own_anchor_pose=True)) > 2e-3  # windows not anchored by the reference pose


def test_model_cfg_functions_are_not_applied_and_say_so(caplog):
    """VideoLinearCFGGuidance on the model would fight the per-window ramp: the sampler ignores it, with a warning."""
    plain = run_sampler(5, 4, 1, 2.0, 2.0, steps=1)
    with caplog.at_level("WARNING"):
        patched = saved_latent(run_graph(sampler_graph(5, 4, 1, 2.0, 2.0, steps=1, cfg_function=True)))
    assert torch.equal(patched, plain)
    assert "CFG function patched into the model" in caplog.text
