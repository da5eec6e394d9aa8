"""ControlNeXtGuider runs inside core's CFGGuider: on 0.3.75 and on the newest CFGGuider (emulated from its source in
tests/newest_comfy/cfg_guider.py), with memory planned for one window and conditions cut to each window's frames."""

from __future__ import annotations

import functools

import comfy.model_management
import comfy.model_patcher
import comfy.patcher_extension
import comfy.sampler_helpers
import comfy.samplers
import pytest
import torch
from test_sampling import latent_out, reference, run_sampler, sampler_graph, saved_latent

from conftest import pack_import, run_graph
from newest_comfy import cfg_guider as newest
from tiny_pack.tiny_svd import tiny_svd_conditioning, tiny_svd_patcher

sampling = pack_import("controlnext.sampling")
windows = pack_import("controlnext.windows")
HOSTS = ["0.3.75", "newest"]


def use_host(host: str, monkeypatch: pytest.MonkeyPatch) -> list:
    """The newest CFGGuider emulated for this test (its event list), or 0.3.75's as installed (an empty list)."""
    return newest.install(monkeypatch) if host == "newest" else []


def sample(model, frames: int, fpb: int, overlap: int, cfg_min: float, cfg_max: float, steps: int,
           positive=None, negative=None, latent=None, **kwargs) -> torch.Tensor:
    conds = tiny_svd_conditioning(frames, 64, 64, seed=2)
    positive, negative = positive or conds[0], negative or conds[1]
    latent = conds[2]["samples"] if latent is None else latent
    guider = sampling.ControlNeXtGuider(model, fpb, overlap, cfg_min, cfg_max)
    guider.set_conds(positive, negative)
    noise = torch.randn((frames, 4, 8, 8), generator=torch.manual_seed(5))
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "karras", steps)
    return guider.sample(noise, latent, comfy.samplers.sampler_object("euler"), sigmas, disable_pbar=True, seed=5,
                         **kwargs)


SETTINGS = dict(frames=7, fpb=4, overlap=2, cfg_min=1.5, cfg_max=3.0, steps=2)


@functools.cache
def sampler_node_on_the_old_host() -> torch.Tensor:
    """ControlNeXtSampler with SETTINGS on 0.3.75's CFGGuider (run once, before any emulation is installed)."""
    return run_sampler(**SETTINGS)


@functools.cache
def official() -> torch.Tensor:
    return latent_out(reference(**SETTINGS))


def custom_advanced_graph() -> dict:
    """ControlNeXtGuider in SamplerCustomAdvanced, set up to give what ControlNeXtSampler gives with SETTINGS."""
    graph = sampler_graph(**SETTINGS)
    graph["3"] = {"class_type": "SamplerCustomAdvanced", "inputs": {
        "noise": ["n", 0], "guider": ["g", 0], "sampler": ["s", 0], "sigmas": ["k", 0], "latent_image": ["2", 2]}}
    graph["n"] = {"class_type": "RandomNoise", "inputs": {"noise_seed": 5}}
    graph["s"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}}
    graph["k"] = {"class_type": "BasicScheduler",
                  "inputs": {"model": ["1", 0], "scheduler": "karras", "steps": SETTINGS["steps"], "denoise": 1.0}}
    graph["g"] = {"class_type": "ControlNeXtGuider", "inputs": {
        "model": ["1", 0], "positive": ["2", 0], "negative": ["2", 1], "cfg_min": 1.5, "cfg_max": 3.0,
        "frames_per_window": 4, "overlap": 2}}
    return graph


@pytest.mark.parametrize("node", ["ControlNeXtSampler", "SamplerCustomAdvanced"])
def test_sampling_goes_through_the_newest_cfg_guider(node, monkeypatch):
    """Everything the newest outer_sample / inner_sample do around sampling (device context, latent_shapes, full-clip
    conditions, denoise-mask handling moved to sample) happens for this guider too, with the same result."""
    on_old_host = sampler_node_on_the_old_host()
    seen = newest.install(monkeypatch)
    graph = sampler_graph(**SETTINGS) if node == "ControlNeXtSampler" else custom_advanced_graph()
    ours = saved_latent(run_graph(graph))
    clip = (7, 4, 8, 8)
    assert ("outer_sample", clip) in seen and ("inner_sample", [clip]) in seen  # core's methods ran, not copies
    assert ("cuda_device_context", comfy.model_management.get_torch_device()) in seen
    assert ("prepare_sampling", clip) in seen  # core asks for the whole clip; the guider's wrapper plans one window
    assert torch.equal(ours, on_old_host)
    ref = official()
    assert (ours - ref).abs().max() / ref.abs().max() < 1e-4


@pytest.mark.parametrize("host", HOSTS)
def test_memory_is_planned_for_one_window(host, monkeypatch):
    """Core sizes the model load (estimate_memory in _prepare_sampling) for a 4-frame window of an 11-frame clip,
    and the user's MODEL keeps its options (the guider's wrappers are on its own copy)."""
    seen = use_host(host, monkeypatch)
    planned = []
    estimate = comfy.sampler_helpers.estimate_memory

    def recording_estimate(model, noise_shape, conds):
        planned.append(tuple(noise_shape))
        return estimate(model, noise_shape, conds)

    monkeypatch.setattr(comfy.sampler_helpers, "estimate_memory", recording_estimate)
    model = tiny_svd_patcher(0)
    options_before = comfy.model_patcher.create_model_options_clone(model.model_options)
    out = sample(model, 11, 4, 2, 1.0, 1.0, steps=1)
    assert out.shape == (11, 4, 8, 8) and torch.isfinite(out).all()
    assert planned == [(4, 4, 8, 8)]
    if host == "newest":
        assert ("prepare_sampling", (11, 4, 8, 8)) in seen
    assert model.model_options == options_before
    assert all(sampling.WRAPPER_KEY not in keyed for keyed in model.wrappers.values())


@pytest.mark.parametrize("host", HOSTS)
def test_each_window_gets_its_frames_of_the_conditions(host, monkeypatch):
    """Core builds the conditions for the whole clip; every model call gets its window's frames of a per-frame
    concat latent, num_video_frames = the window length and its pose indices; previews get every step."""
    use_host(host, monkeypatch)
    frames, steps = 7, 2
    positive, negative, _ = tiny_svd_conditioning(frames, 64, 64, seed=2)
    concat = torch.randn((frames, 4, 8, 8), generator=torch.manual_seed(3))  # a different latent for every frame
    positive = [[positive[0][0], dict(positive[0][1], concat_latent_image=concat)]]
    negative = [[negative[0][0], dict(negative[0][1], concat_latent_image=torch.zeros_like(concat))]]
    calls, previews = [], []

    def record(executor, model, conds, x_in, timestep, model_options):
        cond = conds[0][0]["model_conds"]
        calls.append((x_in.shape[0], [c[0]["model_conds"]["num_video_frames"].cond for c in conds],
                      cond["c_concat"].cond.clone(),
                      model_options["transformer_options"][sampling.POSE_INDICES_KEY]))
        return executor(model, conds, x_in, timestep, model_options)

    model = tiny_svd_patcher(0).clone()
    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.CALC_COND_BATCH, "test_record", record)
    sample(model, frames, 4, 2, 1.5, 3.0, steps, positive=positive, negative=negative,
           callback=lambda i, x0, x, total: previews.append((i, tuple(x0.shape), total)))
    plan = windows.plan_windows(frames, 4, 2)
    assert [w.start for w in plan] == [0, 2, 3]
    assert len(calls) == steps * len(plan)
    for (length, video_frames, c_concat, pose_indices), window in zip(calls, plan * steps, strict=True):
        assert length == 4 and video_frames == [4, 4]  # positive and negative
        assert torch.equal(c_concat, concat[window.start:window.start + 4])
        assert pose_indices == window.pose_indices
    assert previews == [(i, (frames, 4, 8, 8), steps) for i in range(steps)]


def test_interruption_is_checked_between_windows(monkeypatch):
    calls = []

    def interrupt(executor, *args):
        calls.append(1)
        comfy.model_management.interrupt_current_processing(True)
        return executor(*args)

    model = tiny_svd_patcher(0).clone()
    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.CALC_COND_BATCH, "test_interrupt", interrupt)
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            sample(model, 7, 4, 2, 1.0, 1.0, steps=2)
    finally:
        comfy.model_management.interrupt_current_processing(False)
    assert len(calls) == 1  # the second window of the first step never ran


@pytest.mark.parametrize("host", HOSTS)
def test_denoise_mask_keeps_the_masked_frames(host, monkeypatch):
    """A noise mask (prepared by core: in outer_sample on 0.3.75, in sample on the newest) keeps the frames it
    masks out at the input latent, through the windows."""
    use_host(host, monkeypatch)
    frames = 7
    latent = torch.randn((frames, 4, 8, 8), generator=torch.manual_seed(9))
    mask = torch.ones((frames, 1, 8, 8))
    mask[:3] = 0.0
    out = sample(tiny_svd_patcher(0), frames, 4, 2, 1.0, 1.0, steps=2, latent=latent, denoise_mask=mask)
    assert torch.allclose(out[:3], latent[:3], atol=1e-4)
    assert (out[3:] - latent[3:]).abs().max() > 0.1
