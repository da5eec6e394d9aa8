"""ControlNeXtApply with the core KSampler and Context Windows (Manual) on the newest ComfyUI's context windows.

The newest ContextWindowsManual has causal_window_fix (default on): every window but the first gets the frame before
it prepended as an anchor, so the model call holds one frame more than the window's index_list names. Emulated on
0.3.75 from the newest source in tests/newest_comfy/context_windows.py.
"""

from __future__ import annotations

import logging

import comfy.context_windows as cw
import comfy.sample
import pytest
import torch
from test_patch import _graph, _latent, controlnext_file  # noqa: F401 (controlnext_file is a fixture)

from conftest import pack_import, run_graph
from newest_comfy import context_windows as newest
from tiny_pack.tiny_svd import tiny_svd_conditioning, tiny_svd_patcher

patch_mod = pack_import("controlnext.patch")

FRAMES = 6
# standard_static, length 4, overlap 2 over 6 frames: windows [0..3] and [2..5]. With the causal fix the second model
# call also holds frame 1, in front (comfy/context_windows.py evaluate_context_windows: anchor = index_list[0] - 1).
WINDOWS_OFF = [[0, 1, 2, 3], [2, 3, 4, 5]]
WINDOWS_ON = [[0, 1, 2, 3], [1, 2, 3, 4, 5]]
STEPS = 2  # _graph's KSampler (euler): one model call per window and step, cond and uncond batched


def newest_graph(name: str, causal_window_fix: bool) -> dict:
    graph = _graph(name, FRAMES, FRAMES, context=True)
    graph["6"]["inputs"].update(freenoise=False, cond_retain_index_list="", split_conds_to_windows=False,
                                latent_retain_index_list="", causal_window_fix=causal_window_fix)
    return graph


@pytest.fixture
def pose_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[int], list[int] | None]]:
    """Per UNet call of the patch: the global frames the model's rows hold (the window cutting a frame-number ramp,
    as the latent was cut) and the pose frames the patch picked for them."""
    calls = []
    original = patch_mod.pose_indices

    def recording(transformer_options: dict, frames: int, pose_count: int) -> list[int] | None:
        window = transformer_options["context_window"]
        held = window.get_tensor(torch.arange(pose_count)).tolist()  # one pose per latent frame here
        assert len(held) == frames
        picked = original(transformer_options, frames, pose_count)
        calls.append((held, picked))
        return picked

    monkeypatch.setattr(patch_mod, "pose_indices", recording)
    return calls


def test_graph_causal_window_fix_on_gives_every_frame_its_own_pose(controlnext_file, monkeypatch,  # noqa: F811
                                                                  pose_calls, caplog):
    newest.install(monkeypatch)
    caplog.set_level(logging.INFO)
    run = run_graph(newest_graph(controlnext_file, causal_window_fix=True))
    assert run.success, run.error()
    assert "Context window 2/2: frames 2-5 of 6" in caplog.text
    assert [held for held, _ in pose_calls] == WINDOWS_ON * STEPS, "the emulated host must prepend the anchor"
    assert [picked for _, picked in pose_calls] == WINDOWS_ON * STEPS, "each frame, the anchor too, gets its own pose"
    assert torch.isfinite(_latent(run)).all()


def test_graph_causal_window_fix_off_equals_todays_context_windows(controlnext_file, monkeypatch,  # noqa: F811
                                                                   pose_calls):
    today = run_graph(_graph(controlnext_file, FRAMES, FRAMES, context=True))  # 0.3.75's node and handler
    assert today.success, today.error()
    pose_calls.clear()
    newest.install(monkeypatch)
    off = run_graph(newest_graph(controlnext_file, causal_window_fix=False))
    assert off.success, off.error()
    assert [picked for _, picked in pose_calls] == WINDOWS_OFF * STEPS
    assert torch.equal(_latent(off), _latent(today))


def _handler(**fields) -> cw.IndexListContextHandler:
    return cw.IndexListContextHandler(cw.get_matching_context_schedule("standard_static"),
                                      cw.get_matching_fuse_method("pyramid"), context_length=4, context_overlap=2,
                                      **fields)


def test_swapped_handler_keeps_newest_fields_and_set_step(monkeypatch):
    newest.install(monkeypatch)
    stock = _handler(causal_window_fix=False, latent_retain_index_list="0", cond_retain_index_list="0, 2")
    options = {"transformer_options": {"sample_sigmas": torch.tensor([700.0, 20.0, 0.002, 0.0])},
               "context_handler": stock}
    patch_mod.fix_context_handler(options)
    fixed = options["context_handler"]
    assert isinstance(fixed, cw.IndexListContextHandler) and fixed is not stock
    assert (fixed.causal_window_fix, fixed.latent_retain_index_list, fixed.cond_retain_index_list) == (False, [0],
                                                                                                      [0, 2])
    fixed.set_step(torch.full((6,), 20.0), options)  # SVD's per-frame sigma vector
    assert fixed._step == 1
    fixed.set_step(torch.full((6,), 5.0), options)  # a multistep sampler's substep: keeps the step (newest)
    assert fixed._step == 1


def test_swapped_handler_tells_svd_the_frames_the_anchored_call_holds(monkeypatch):
    """The newest get_resized_cond cuts SVD's per-frame conds with the anchor but sets num_video_frames to the
    window's own length; the SVD UNet's temporal layers need the frame count of the call."""
    newest.install(monkeypatch)
    svd = tiny_svd_patcher(seed=0)
    positive, _, _ = tiny_svd_conditioning(FRAMES, 64, 64, seed=1)
    noise = torch.zeros(FRAMES, 4, 8, 8)
    embed, extras = positive[0]
    conds = [{"model_conds": svd.model.extra_conds(noise=noise, cross_attn=embed, **extras)}]
    window = cw.IndexListContextWindow([2, 3, 4, 5], total_frames=FRAMES, context_overlap=2)
    window.causal_anchor_index = 1
    stock = _handler()
    (stock_cond,) = stock.get_resized_cond(conds, noise, window)
    assert stock_cond["model_conds"]["c_concat"].cond.shape[0] == 5
    assert stock_cond["model_conds"]["num_video_frames"].cond == 4, "the newest host's own count (no anchor)"
    options = {"context_handler": stock}
    patch_mod.fix_context_handler(options)
    (fixed_cond,) = options["context_handler"].get_resized_cond(conds, noise, window)
    assert fixed_cond["model_conds"]["num_video_frames"].cond == 5
    assert torch.equal(fixed_cond["model_conds"]["c_concat"].cond, stock_cond["model_conds"]["c_concat"].cond)
    del window.causal_anchor_index  # a first window: nothing changes
    (plain,) = options["context_handler"].get_resized_cond(conds, noise, window)
    assert plain["model_conds"]["num_video_frames"].cond == 4


def test_stock_newest_handler_with_causal_fix_breaks_plain_svd_in_core(monkeypatch):
    """Why the pack still swaps the handler on the newest host: without it SVD's temporal layers get 5-frame windows
    counted as 4 (here with no ControlNeXt at all)."""
    newest.install(monkeypatch)
    svd = tiny_svd_patcher(seed=0)
    svd.model_options["context_handler"] = _handler()
    positive, negative, latent = tiny_svd_conditioning(FRAMES, 64, 64, seed=1)
    noise = torch.randn(latent["samples"].shape, generator=torch.Generator().manual_seed(3))
    with pytest.raises(Exception, match=r"rearrange.*\(b t\) c h w"):
        comfy.sample.sample(svd, noise, 1, 2.5, "euler", "karras", positive, negative, latent["samples"], seed=3,
                            disable_pbar=True)
