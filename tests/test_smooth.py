"""Temporal pose smoothing (dwpose/smooth.py) and the ControlNeXtSmoothPoses node, on synthetic skeletons whose true
trajectories are known: DWPose-like jitter (Gaussian, a few px) and dropouts are added, then the output is compared
with the truth."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import pack_import, run_graph

smooth = pack_import("dwpose.smooth")
kp = pack_import("dwpose.keypoints")

W, H = 1920, 1080
M = smooth.N_POINTS  # 128: body 18, face 68, left hand 21, right hand 21
METHODS = smooth.METHOD_CHOICES
JITTER_PX = 2.5  # DWPose's frame-to-frame noise is a few pixels at 1080p


def dancer_truth(frames: int, rng: np.random.Generator) -> np.ndarray:
    """(T, 128, 2) smooth true trajectories: a body swaying across the frame, every point with its own slow swing
    (about 1 px/frame^2 of acceleration at most, like a dancer at 15 fps)."""
    t = np.arange(frames, dtype=np.float64)[:, None]
    base = np.column_stack([rng.uniform(700, 1200, M), rng.uniform(150, 950, M)])[None]
    phase = rng.uniform(0, 2 * np.pi, (1, M))
    amp = rng.uniform(10, 40, (1, M))
    period = rng.uniform(40, 90, (1, M))
    sway = np.stack([100 * np.sin(2 * np.pi * t / 70), 30 * np.sin(2 * np.pi * t / 50)], axis=-1)
    own = np.stack([amp * np.sin(2 * np.pi * t / period + phase), amp * np.cos(2 * np.pi * t / period + phase)], -1)
    return base + sway + own


def observe(truth: np.ndarray, rng: np.random.Generator, dropout: float = 0.04) -> np.ndarray:
    """(T, 128, 3) what DWPose would give: jittered positions, scores 0.5..1, random dropouts (score below the 0.3
    threshold and a position off by tens of pixels, as a weak detection is)."""
    t_count = truth.shape[0]
    xy = truth + rng.normal(0.0, JITTER_PX, truth.shape)
    score = rng.uniform(0.5, 1.0, (t_count, M))
    drop = rng.random((t_count, M)) < dropout
    score[drop] = rng.uniform(0.05, 0.28, drop.sum())
    xy[drop] += rng.normal(0.0, 25.0, (drop.sum(), 2))
    return np.concatenate([xy, score[..., None]], axis=-1)


def to_frames(points: np.ndarray) -> list:
    """PoseFrames from (T, P, 128, 3); a slot that is all zeros is left out at the end of a frame's list."""
    frames = []
    for arr in points:
        people = [kp.Person(body=p[:18], face=p[18:86], left_hand=p[86:107], right_hand=p[107:]) for p in arr]
        while people and not people[-1].all_points().any():
            people.pop()
        frames.append(kp.PoseFrame(W, H, people))
    return frames


def from_frames(frames: list, slots: int) -> np.ndarray:
    out = np.zeros((len(frames), slots, M, 3))
    for t, f in enumerate(frames):
        for k, p in enumerate(f.people[:slots]):
            out[t, k] = p.all_points()
    return out


def rms(a: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.sum(a ** 2, axis=-1))))


@pytest.mark.parametrize("method", METHODS)
def test_jitter_drops_3x_and_the_error_to_the_truth_shrinks(method: str) -> None:
    rng = np.random.default_rng(7)
    truth = dancer_truth(150, rng)
    raw = observe(truth, rng)
    frames = to_frames(raw[:, None])
    out_frames, report = smooth.smooth_frames(frames, smooth.SmoothOptions(method=method))
    out = from_frames(out_frames, 1)[:, 0]
    valid = raw[..., 2] > smooth.SCORE_THRESHOLD
    for part, sl in smooth.PART_SLICES.items():
        v = valid[:, sl]
        before = smooth.jitter_rms(raw[:, sl, :2], v)
        after = smooth.jitter_rms(out[:, sl, :2], v)
        truth_jitter = smooth.jitter_rms(truth[:, sl], np.ones_like(v))
        assert before >= 3.0 * after, f"{part}: jitter {before:.2f} -> {after:.2f} px: less than 3x"
        assert after >= truth_jitter * 0.8, f"{part}: smoothed flatter than the true motion: over-smoothing"
        err_raw = rms((raw[:, sl, :2] - truth[:, sl])[v])
        err_out = rms((out[:, sl, :2] - truth[:, sl])[v])
        assert err_out < 0.75 * err_raw, f"{part}: error to the truth {err_raw:.2f} -> {err_out:.2f} px"
        assert report.jitter_before[part] == pytest.approx(before)
    # every dropout here lasts 1-2 frames (<= max_gap): filled, close to the truth, with a plausible score
    filled = ~valid & (out[..., 2] > smooth.SCORE_THRESHOLD)
    interior = ~valid
    interior[[0, -1]] = False
    assert filled[interior].mean() > 0.99
    assert rms((out[..., :2] - truth)[filled]) < 1.5 * JITTER_PX
    assert report.filled == int(filled.sum())


@pytest.mark.parametrize("method", METHODS)
def test_a_sudden_fast_movement_is_followed_within_2_frames(method: str) -> None:
    """A still dancer throws the right arm 250 px to the side within 2 frames at frame 40 and holds it there."""
    rng = np.random.default_rng(3)
    t_count = 80
    truth = np.repeat(np.column_stack([rng.uniform(700, 1200, M), rng.uniform(150, 950, M)])[None], t_count, axis=0)
    moved = np.r_[3, 4, 107:128]  # right elbow, right wrist, right hand
    ramp = np.clip((np.arange(t_count) - 40) / 2.0, 0.0, 1.0)  # 0 until frame 40, 1 from frame 42
    truth[:, moved, 0] += 250.0 * ramp[:, None]
    raw = observe(truth, rng, dropout=0.0)
    out = from_frames(smooth.smooth_frames(to_frames(raw[:, None]), smooth.SmoothOptions(method=method))[0], 1)[:, 0]
    x = out[:, moved, 0] - truth[0, moved, 0]
    for level in (0.5, 0.9):
        t_truth = int(np.argmax(ramp >= level))
        t_out = np.argmax(x >= 250.0 * level, axis=0)
        assert np.all(t_out - t_truth <= 2), f"reaches {level:.0%} of the move {t_out - t_truth} frames late"
        assert np.all(t_out - t_truth >= -2), "moves before the dancer does"
    after = np.abs(out[44:, moved, 0] - truth[44:, moved, 0])
    assert after.max() < 25.0, "no ringing or lag once the arm holds still"
    assert rms(out[44:, moved, :2] - truth[44:, moved]) < JITTER_PX


@pytest.mark.parametrize("method", METHODS)
def test_gaps_up_to_max_gap_are_filled_longer_ones_stay_missing(method: str) -> None:
    rng = np.random.default_rng(11)
    truth = dancer_truth(60, rng)
    raw = observe(truth, rng, dropout=0.0)
    raw[20:24, 4] = 0.0  # right wrist not found for 4 frames = max_gap: filled
    raw[30:35, 7, 2] = 0.2  # left wrist scores under 0.3 for 5 frames: left exactly as it is
    raw[30:35, 7, :2] += 80.0
    raw[0:2, 0] = 0.0  # nose missing in the first 2 frames: nothing to interpolate from, left out
    raw[40:43, 18:] = 0.0  # face and hands gone for 3 frames (only the body seen)
    raw[50:52] = 0.0  # the whole person missing for 2 frames
    frames = to_frames(raw[:, None])
    assert not frames[50].people and not frames[51].people
    out_frames, report = smooth.smooth_frames(frames, smooth.SmoothOptions(method=method, max_gap=4))
    out = from_frames(out_frames, 1)[:, 0]

    gap = out[20:24, 4]
    assert np.all(gap[:, 2] > smooth.SCORE_THRESHOLD)
    assert np.all(gap[:, 2] == np.float32(min(raw[19, 4, 2], raw[24, 4, 2]))), "filled score: the weaker end"
    assert rms(gap[:, :2] - truth[20:24, 4]) < 3 * JITTER_PX
    np.testing.assert_array_equal(out[30:35, 7], raw[30:35, 7].astype(np.float32))  # too long: untouched
    np.testing.assert_array_equal(out[0:2, 0], 0.0)  # at the clip's start: not invented
    assert np.all(out[40:43, 18:, 2] > smooth.SCORE_THRESHOLD)
    assert rms(out[40:43, 18:, :2] - truth[40:43, 18:]) < 3 * JITTER_PX
    assert len(out_frames[50].people) == 1 and len(out_frames[51].people) == 1, "a 2-frame dropout of the person"
    assert rms(out[50:52, :, :2] - truth[50:52]) < 3 * JITTER_PX
    assert report.left_missing == 5  # the left wrist's 5 frames

    # max_gap 0: nothing is filled, the person stays away for its 2 frames
    out0, report0 = smooth.smooth_frames(frames, smooth.SmoothOptions(method=method, max_gap=0))
    assert report0.filled == 0 and not out0[50].people and not out0[51].people
    np.testing.assert_array_equal(from_frames(out0, 1)[20:24, 0, 4], 0.0)


@pytest.mark.parametrize("method", METHODS)
def test_low_scores_do_not_pull_the_filter(method: str) -> None:
    """Weak detections 200 px off (score 0.25) count exactly as if nothing had been found there."""
    rng = np.random.default_rng(5)
    truth = dancer_truth(60, rng)
    raw = observe(truth, rng, dropout=0.0)
    raw[30, :18, 0] += 200.0
    raw[30, :18, 2] = 0.25
    raw[45:52, 5, 0] += 150.0  # and a longer weak run (7 frames > max_gap) on the left shoulder
    raw[45:52, 5, 2] = 0.1
    opts = smooth.SmoothOptions(method=method)
    gated = from_frames(smooth.smooth_frames(to_frames(raw[:, None]), opts)[0], 1)[:, 0]
    assert rms(gated[26:35, :18, :2] - truth[26:35, :18]) < 2 * JITTER_PX
    assert rms(gated[40:45, 5, :2] - truth[40:45, 5]) < 2 * JITTER_PX
    absent = raw.copy()
    absent[30, :18] = 0.0
    absent[45:52, 5] = 0.0
    reference = from_frames(smooth.smooth_frames(to_frames(absent[:, None]), opts)[0], 1)[:, 0]
    np.testing.assert_array_equal(gated[30], reference[30])  # filled the same way (a 1-frame gap)
    keep = np.ones(60, dtype=bool)
    keep[45:52] = False
    np.testing.assert_array_equal(gated[keep], reference[keep])
    np.testing.assert_array_equal(gated[45:52, 5], raw[45:52, 5].astype(np.float32))  # too long: as it came


def test_strength_zero_leaves_a_part_untouched_and_people_stay_apart() -> None:
    rng = np.random.default_rng(2)
    a, b = dancer_truth(40, rng), dancer_truth(40, rng) + np.array([-500.0, 0.0])
    raw = np.stack([observe(a, rng), observe(b, rng)], axis=1)
    raw[10:30, 1] = 0.0  # person 1 away for 20 frames
    frames = to_frames(raw)
    out = from_frames(smooth.smooth_frames(frames, smooth.SmoothOptions(body=0.5, hands=0.0, face=0.0))[0], 2)
    f32 = raw.astype(np.float32)
    np.testing.assert_array_equal(out[:, :, 18:], f32[:, :, 18:])  # face and hands exactly as they came
    assert not np.array_equal(out[:, :, :18], f32[:, :, :18])
    np.testing.assert_array_equal(out[10:30, 1], 0.0)  # a long absence stays an absence
    assert rms(out[:, 0, :18, :2] - a[:, :18]) < JITTER_PX  # person 0 is not pulled towards person 1
    off = smooth.smooth_frames(frames, smooth.SmoothOptions(body=0.0, hands=0.0, face=0.0))[0]
    np.testing.assert_array_equal(from_frames(off, 2), f32)


def test_savitzky_golay_matches_the_classical_filter() -> None:
    np.testing.assert_allclose(smooth.savgol_coefficients(2, 2), np.array([-3, 12, 17, 12, -3]) / 35, atol=1e-12)
    np.testing.assert_allclose(smooth.savgol_coefficients(3, 2), np.array([-2, 3, 6, 7, 6, 3, -2]) / 21, atol=1e-12)
    rng = np.random.default_rng(0)
    xy = rng.normal(0, 5, (50, 3, 2))
    present = np.ones((50, 3), dtype=bool)
    for h in (2, 4, 8):
        fixed = smooth.savgol_smooth(xy, present, h)  # no noise level: the plain fixed window
        coeffs = smooth.savgol_coefficients(h)
        classical = np.stack([np.stack([np.convolve(xy[:, m, c], coeffs[::-1], mode="valid") for c in range(2)], -1)
                              for m in range(3)], axis=1)
        np.testing.assert_allclose(fixed[h:-h], classical, atol=1e-9)
    # a quadratic trajectory passes through every two-sided window unchanged (no lag for accelerating motion)
    t = np.arange(30, dtype=np.float64)
    quad = np.stack([0.3 * t ** 2 - 4 * t, 2 * t + 5], axis=-1)[:, None]
    out = smooth.savgol_smooth(quad, np.ones((30, 1), dtype=bool), 6, np.ones(1))
    np.testing.assert_allclose(out[1:-1], quad[1:-1], atol=1e-6)


def test_bad_options_are_named() -> None:
    with pytest.raises(ValueError, match="body=1.5"):
        smooth.SmoothOptions(body=1.5)
    with pytest.raises(ValueError, match="max_gap"):
        smooth.SmoothOptions(max_gap=-1)
    with pytest.raises(ValueError, match="choose one of savitzky-golay, one-euro"):
        smooth.SmoothOptions(method="kalman")
    assert smooth.smooth_frames([])[0] == []


def test_smooth_node_in_a_graph() -> None:
    rng = np.random.default_rng(9)
    truth = dancer_truth(24, rng)
    frames = to_frames(observe(truth, rng)[:, None])
    graph = {
        "1": {"class_type": "ControlNeXtSmoothPoses",
              "inputs": {"poses": {"__value__": kp.to_pose_keypoint(frames)}, "body": 0.6, "hands": 0.4, "face": 0.5,
                         "max_gap": 3, "method": "one-euro"}},
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}},
    }
    run = run_graph(graph)
    assert run.success, run.error()
    got = json.loads(run.outputs["2"]["text"][0])
    expected, _ = smooth.smooth_frames(frames, smooth.SmoothOptions(body=0.6, hands=0.4, face=0.5, max_gap=3,
                                                                    method="one-euro"))
    assert got == kp.to_pose_keypoint(expected)
    assert "jitter body:" in run.outputs["1"]["text"][0]
    bad = graph | {"1": {**graph["1"], "inputs": {**graph["1"]["inputs"], "poses": {"__value__": []}}}}
    run = run_graph(bad)
    assert not run.success and "the poses input is empty" in run.error()["exception_message"]
