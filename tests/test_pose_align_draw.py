"""Pose alignment (dwpose/align.py), official rendering (dwpose/draw.py) and the pose nodes.

The references here are independent, literal numpy statements of the official ControlNeXt-SVD-v2 code
(dwpose/util.draw_pose and dwpose/preprocess.get_video_pose) working on its own dict layout (candidate, subset,
hands stacked left-then-right, normalised coordinates), plus hand-computed pixels at known coordinates.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from conftest import SHARED_MEDIA, pack_import, run_graph

draw = pack_import("dwpose.draw")
align = pack_import("dwpose.align")
kp = pack_import("dwpose.keypoints")
pose_nodes = pack_import("nodes.pose_nodes")

PALETTE = [[255, 0, 0], [255, 85, 0], [255, 170, 0], [255, 255, 0], [170, 255, 0], [85, 255, 0], [0, 255, 0],
           [0, 255, 85], [0, 255, 170], [0, 255, 255], [0, 170, 255], [0, 85, 255], [0, 0, 255], [85, 0, 255],
           [170, 0, 255], [255, 0, 255], [255, 0, 170], [255, 0, 85]]


# ----------------------------------------------------------------------------------------------------------------
# The official renderer, restated on its own data layout
# ----------------------------------------------------------------------------------------------------------------
def _hsv(h: float) -> np.ndarray:
    i = int(h * 6.0)
    f = h * 6.0 - i
    return np.array([[1, f, 0], [1 - f, 1, 0], [0, 1, f], [0, 1 - f, 1], [f, 0, 1], [1, 0, 1 - f]][i % 6], float)


def official_draw_pose(pose: dict, H: int, W: int) -> np.ndarray:
    """util.draw_pose, line for line (returns HWC RGB instead of CHW)."""
    candidate, subset, score = pose["bodies"]["candidate"], pose["bodies"]["subset"], pose["bodies"]["score"]
    sz = min(H, W)
    sr = (2160 / sz) if sz != 2160 else 1
    canvas = np.zeros(shape=(int(H * sr), int(W * sr), 3), dtype=np.uint8)
    h, w, _ = canvas.shape
    limb_seq = [[2, 3], [2, 6], [3, 4], [4, 5], [6, 7], [7, 8], [2, 9], [9, 10], [10, 11], [2, 12], [12, 13],
                [13, 14], [2, 1], [1, 15], [15, 17], [1, 16], [16, 18], [3, 17], [6, 18]]
    for i in range(17):
        for n in range(len(subset)):
            index = subset[n][np.array(limb_seq[i]) - 1]
            conf = score[n][np.array(limb_seq[i]) - 1]
            if conf[0] < 0.3 or conf[1] < 0.3:
                continue
            Y = candidate[index.astype(int), 0] * float(w)
            X = candidate[index.astype(int), 1] * float(h)
            mX, mY = np.mean(X), np.mean(Y)
            length = ((X[0] - X[1]) ** 2 + (Y[0] - Y[1]) ** 2) ** 0.5
            angle = math.degrees(math.atan2(X[0] - X[1], Y[0] - Y[1]))
            polygon = cv2.ellipse2Poly((int(mY), int(mX)), (int(length / 2), 4), int(angle), 0, 360, 1)
            cv2.fillConvexPoly(canvas, polygon, [int(c * conf[0] * conf[1]) for c in PALETTE[i]])
    canvas = (canvas * 0.6).astype(np.uint8)
    for i in range(18):
        for n in range(len(subset)):
            index = int(subset[n][i])
            if index == -1:
                continue
            x, y = candidate[index][0:2]
            cv2.circle(canvas, (int(x * w), int(y * h)), 4, [int(c * score[n][i]) for c in PALETTE[i]], thickness=-1)
    edges = [[0, 1], [1, 2], [2, 3], [3, 4], [0, 5], [5, 6], [6, 7], [7, 8], [0, 9], [9, 10], [10, 11], [11, 12],
             [0, 13], [13, 14], [14, 15], [15, 16], [0, 17], [17, 18], [18, 19], [19, 20]]
    for peaks, scores in zip(pose["hands"], pose["hands_score"], strict=True):
        for ie, e in enumerate(edges):
            x1, y1 = peaks[e[0]]
            x2, y2 = peaks[e[1]]
            x1, y1, x2, y2 = int(x1 * w), int(y1 * h), int(x2 * w), int(y2 * h)
            s = int(scores[e[0]] * scores[e[1]] * 255)
            if x1 > 0.01 and y1 > 0.01 and x2 > 0.01 and y2 > 0.01:
                cv2.line(canvas, (x1, y1), (x2, y2), _hsv(ie / float(len(edges))) * s, thickness=2)
        for i, (x, y) in enumerate(peaks):
            x, y = int(x * w), int(y * h)
            if x > 0.01 and y > 0.01:
                cv2.circle(canvas, (x, y), 4, (0, 0, int(scores[i] * 255)), thickness=-1)
    for lmks, scores in zip(pose["faces"], pose["faces_score"], strict=True):
        for (x, y), s in zip(lmks, scores, strict=True):
            x, y = int(x * w), int(y * h)
            c = int(s * 255)
            if x > 0.01 and y > 0.01:
                cv2.circle(canvas, (x, y), 3, (c, c, c), thickness=-1)
    return cv2.cvtColor(cv2.resize(canvas, (W, H)), cv2.COLOR_BGR2RGB)


def official_dict(bodies: np.ndarray, hands: np.ndarray, faces: np.ndarray) -> dict:
    """The DWposeDetector output dict for normalised (P,18,3), (2P,21,3), (P,68,3) arrays."""
    n = len(bodies)
    score = bodies[:, :, 2]
    subset = np.where(score > 0.3, np.arange(18 * n).reshape(n, 18), -1).astype(float)
    return {"bodies": {"candidate": bodies[:, :, :2].reshape(-1, 2), "subset": subset, "score": score},
            "hands": hands[:, :, :2], "hands_score": hands[:, :, 2], "faces": faces[:, :, :2],
            "faces_score": faces[:, :, 2]}


def random_people(rng: np.random.Generator, n: int, low_scores: bool = True) -> tuple[np.ndarray, ...]:
    bodies = np.zeros((n, 18, 3))
    bodies[:, :, :2] = rng.uniform(0.05, 0.95, (n, 18, 2))
    bodies[:, :, 2] = rng.uniform(0.0, 1.2, (n, 18)) if low_scores else rng.uniform(0.5, 1.0, (n, 18))
    hands = np.zeros((2 * n, 21, 3))
    hands[:, :, :2] = rng.uniform(0.0, 0.9, (2 * n, 21, 2))
    hands[:, :, 2] = rng.uniform(0.0, 1.1, (2 * n, 21))
    faces = np.zeros((n, 68, 3))
    faces[:, :, :2] = rng.uniform(0.1, 0.6, (n, 68, 2))
    faces[:, :, 2] = rng.uniform(0.0, 1.0, (n, 68))
    return bodies, hands, faces


# ----------------------------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(1024, 576), (576, 1024), (1022, 576), (512, 512), (700, 300)])
def test_render_matches_the_official_code_pixel_for_pixel(size):
    rng = np.random.default_rng(sum(size))
    H, W = size
    for n in (1, 2):
        bodies, hands, faces = random_people(rng, n)
        bodies[:, 3, 2] = 0.3 + 1e-9  # just above / below the thresholds (exactly 0.3 is a documented deviation:
        bodies[:, 6, 2] = 0.3 - 1e-9  # the official code then draws the limb to candidate[-1])
        ours = draw.draw_pose_arrays(bodies, hands, faces, H, W)
        ref = official_draw_pose(official_dict(bodies, hands, faces), H, W)
        assert ours.shape == (H, W, 3) and ours.dtype == np.uint8
        assert ours.any()
        np.testing.assert_array_equal(ours, ref)


def _single(points: dict[int, tuple[float, float, float]], kind: str = "body") -> tuple[np.ndarray, ...]:
    bodies, hands, faces = np.zeros((1, 18, 3)), np.zeros((2, 21, 3)), np.zeros((1, 68, 3))
    target = {"body": bodies[0], "hand": hands[0], "face": faces[0]}[kind]
    for i, p in points.items():
        target[i] = p
    return bodies, hands, faces


# At W=2160 the canvas is the output (sr = 1, the resize is the identity): pixels are exactly the drawn ones.
W2, H2 = 2160, 2400


def test_limb_colour_dimming_and_channel_order():
    # neck (1) -> right shoulder (2): palette[0] (255, 0, 0) written as BGR, so the RGB output is blue, dimmed 0.6
    y = 1000.5 / H2
    bodies, hands, faces = _single({1: (800.5 / W2, y, 1.0), 2: (1400.5 / W2, y, 1.0)})
    img = draw.draw_pose_arrays(bodies, hands, faces, H2, W2)
    assert tuple(img[1000, 1100]) == (0, 0, 153)  # int(255 * 0.6)
    assert tuple(img[1000 + 4, 1100]) == (0, 0, 153) and not img[1000 + 6, 1100].any()  # half-width 4
    # the joints (radius 4, colour * score, not dimmed): neck palette[1] (255, 85, 0) -> RGB (0, 85, 255),
    # right shoulder palette[2] (255, 170, 0) -> (0, 170, 255)
    assert tuple(img[1000, 800]) == (0, 85, 255) and tuple(img[1000, 1400]) == (0, 170, 255)
    # weaker scores: limb int(255 * 0.5 * 0.8) = 102 -> int(102 * 0.6) = 61; joints colour * score
    bodies[0, 1, 2], bodies[0, 2, 2] = 0.5, 0.8
    img = draw.draw_pose_arrays(bodies, hands, faces, H2, W2)
    assert tuple(img[1000, 1100]) == (0, 0, 61)
    assert tuple(img[1000, 800]) == (0, 42, 127) and tuple(img[1000, 1400]) == (0, 136, 204)
    # neck -> nose (limb 12, palette[12] (0, 0, 255)) comes out red
    bodies, hands, faces = _single({1: (1000.5 / W2, 1200.5 / H2, 1.0), 0: (1000.5 / W2, 600.5 / H2, 1.0)})
    img = draw.draw_pose_arrays(bodies, hands, faces, H2, W2)
    assert tuple(img[900, 1000]) == (153, 0, 0)


def test_scores_saturate_and_thresholds():
    y = 1000.5 / H2
    base = {1: (800.5 / W2, y, 1.3), 2: (1400.5 / W2, y, 1.3)}
    img = draw.draw_pose_arrays(*_single(base), H2, W2)
    assert tuple(img[1000, 1100]) == (0, 0, 153)  # int(255 * 1.69) saturates to 255, then dimmed
    # one end below 0.3: no limb, and no dot for that end
    img = draw.draw_pose_arrays(*_single({1: (800.5 / W2, y, 1.0), 2: (1400.5 / W2, y, 0.29)}), H2, W2)
    assert not img[1000, 1100].any() and not img[1000, 1400].any() and img[1000, 800].any()
    # exactly 0.3: the limb is drawn (official `conf < 0.3` skip) but the dot is not (`score > 0.3` for a joint)
    img = draw.draw_pose_arrays(*_single({1: (800.5 / W2, y, 1.0), 2: (1400.5 / W2, y, 0.3)}), H2, W2)
    assert tuple(img[1000, 1100]) == (0, 0, int(int(255 * 0.3) * 0.6))
    assert tuple(img[1000, 1400]) == (0, 0, int(int(255 * 0.3) * 0.6))


def test_hand_edges_dots_and_eps_rule():
    # left hand wrist (0) -> index base (5): edge 4, HSV(0.2, 1, 1) = (0.8, 1, 0) * 255 written as BGR
    pts = {0: (1000.5 / W2, 1000.5 / H2, 1.0), 5: (1000.5 / W2, 1300.5 / H2, 1.0)}
    img = draw.draw_pose_arrays(*_single(pts, "hand"), H2, W2)
    assert tuple(img[1150, 1000]) == (0, 255, 204)
    assert tuple(img[1000, 1000]) == (255, 0, 0) and tuple(img[1300, 1000]) == (255, 0, 0)  # dots: red after swap
    # no threshold: score 0.1 still draws, dim: edge int(0.01 * 255) = 2 -> (0, 2, round(1.6)) ; dot int(25.5)
    pts = {0: (1000.5 / W2, 1000.5 / H2, 0.1), 5: (1000.5 / W2, 1300.5 / H2, 0.1)}
    img = draw.draw_pose_arrays(*_single(pts, "hand"), H2, W2)
    assert tuple(img[1150, 1000]) == (0, 2, 2) and tuple(img[1000, 1000]) == (25, 0, 0)
    # a point at x < 1 px is not drawn, nor its edges (the official `> eps` on integer pixels)
    pts = {0: (0.4 / W2, 1000.5 / H2, 1.0), 5: (1000.5 / W2, 1300.5 / H2, 1.0)}
    img = draw.draw_pose_arrays(*_single(pts, "hand"), H2, W2)
    assert not img[1150, 500:1010].any() and not img[1000, :5].any() and tuple(img[1300, 1000]) == (255, 0, 0)


def test_face_dots_and_toggles():
    pts = {10: (700.5 / W2, 500.5 / H2, 0.8)}
    img = draw.draw_pose_arrays(*_single(pts, "face"), H2, W2)
    assert tuple(img[500, 700]) == (204, 204, 204)
    assert tuple(img[500, 703]) == (204, 204, 204) and not img[500, 705].any()  # radius 3
    body = {1: (800.5 / W2, 1000.5 / H2, 1.0), 2: (1400.5 / W2, 1000.5 / H2, 1.0)}
    bodies, _, _ = _single(body)
    _, hands, _ = _single({0: (1000.5 / W2, 1500.5 / H2, 1.0), 5: (1000.5 / W2, 1800.5 / H2, 1.0)}, "hand")
    _, _, faces = _single(pts, "face")
    full = draw.draw_pose_arrays(bodies, hands, faces, H2, W2)
    assert full[1000, 1100].any() and full[1650, 1000].any() and full[500, 700].any()
    off_body = draw.draw_pose_arrays(bodies, hands, faces, H2, W2, include_body=False)
    assert not off_body[1000, 1100].any() and off_body[1650, 1000].any() and off_body[500, 700].any()
    off_hand = draw.draw_pose_arrays(bodies, hands, faces, H2, W2, include_hand=False)
    assert off_hand[1000, 1100].any() and not off_hand[1650, 1000].any() and off_hand[500, 700].any()
    off_face = draw.draw_pose_arrays(bodies, hands, faces, H2, W2, include_face=False)
    assert off_face[1000, 1100].any() and off_face[1650, 1000].any() and not off_face[500, 700].any()


def test_render_is_resized_from_the_2160_canvas():
    assert draw.canvas_size(1024, 576) == (3840, 2160)
    assert draw.canvas_size(576, 1024) == (2160, 3840)
    assert draw.canvas_size(2160, 3000) == (2160, 3000)
    rng = np.random.default_rng(5)
    people = random_people(rng, 1, low_scores=False)
    big = draw.draw_pose_arrays(*people, 3840, 2160)
    small = draw.draw_pose_arrays(*people, 1024, 576)
    # cv2.resize of the RGB canvas == RGB of the resized BGR canvas (per-channel filter)
    np.testing.assert_array_equal(small, cv2.resize(big, (576, 1024)))


@pytest.mark.skipif(not (SHARED_MEDIA / "official-output-03-1.mp4").is_file(), reason="shared media not present")
def test_channel_order_matches_the_official_demo_video():
    av = pytest.importorskip("av")
    with av.open(str(SHARED_MEDIA / "official-output-03-1.mp4")) as container:
        for i, f in enumerate(container.decode(video=0)):
            if i == 10:
                frame = f.to_ndarray(format="rgb24").astype(int)
                break
    # the shoulder line of that frame (left half = pose): right shoulder limb blue, left shoulder limb (palette[1]
    # (255, 85, 0) as BGR) blue with some green
    r_sho = frame[402:404, 190:210].mean(axis=(0, 1))
    l_sho = frame[402:404, 320:340].mean(axis=(0, 1))
    assert r_sho[2] > 5 * r_sho[0] and r_sho[2] > 5 * r_sho[1]
    assert l_sho[2] > l_sho[1] > 2 * l_sho[0]
    # ours, same limbs
    y = 1000.5 / H2
    img = draw.draw_pose_arrays(*_single({1: (800.5 / W2, y, 1.0), 2: (400.5 / W2, y, 1.0),
                                          5: (1200.5 / W2, y, 1.0)}), H2, W2)
    ours_r, ours_l = img[1000, 600].astype(int), img[1000, 1000].astype(int)
    assert ours_r[2] > 5 * max(ours_r[0], ours_r[1]) and ours_l[2] > ours_l[1] > 2 * ours_l[0]


# ----------------------------------------------------------------------------------------------------------------
# Alignment
# ----------------------------------------------------------------------------------------------------------------
def official_fit(ref: dict, ref_hw: tuple[int, int], poses: list[dict], frame_hw: tuple[int, int]):
    """get_video_pose's rescale, line for line; returns a, b and the rescaled poses."""
    ref_keypoint_id = [0, 1, 2, 5, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17]
    ref_keypoint_id = [i for i in ref_keypoint_id if len(ref["bodies"]["subset"]) > 0
                       and ref["bodies"]["subset"][0][i] >= 0.0]
    ref_body = ref["bodies"]["candidate"][ref_keypoint_id]
    height, width = ref_hw
    detected = np.stack([p["bodies"]["candidate"] for p in poses if p["bodies"]["candidate"].shape[0] == 18])[
        :, ref_keypoint_id]
    ay, by = np.polyfit(detected[:, :, 1].flatten(), np.tile(ref_body[:, 1], len(detected)), 1)
    fh, fw = frame_hw
    ax = ay / (fh / fw / height * width)
    bx = np.mean(np.tile(ref_body[:, 0], len(detected)) - detected[:, :, 0].flatten() * ax)
    a, b = np.array([ax, ay]), np.array([bx, by])
    out = []
    for p in poses:
        out.append({"bodies": {"candidate": p["bodies"]["candidate"] * a + b}, "faces": p["faces"] * a + b,
                    "hands": p["hands"] * a + b})
    return a, b, out


def _person(body_norm: np.ndarray, size: tuple[int, int], rng: np.random.Generator, box_score: float = 0.9):
    """A Person in pixels with random hands/face near the body, from a normalised (18, 3) body."""
    scale = np.array([size[0], size[1], 1.0])
    face = np.column_stack([rng.uniform(0.4, 0.6, (68, 2)), rng.uniform(0.2, 1.0, 68)])
    hands = [np.column_stack([rng.uniform(0.3, 0.7, (21, 2)), rng.uniform(0.2, 1.0, 21)]) for _ in range(2)]
    return kp.Person(body=body_norm * scale, face=face * scale, left_hand=hands[0] * scale,
                     right_hand=hands[1] * scale, box_score=box_score)


def _dancer(rng: np.random.Generator) -> np.ndarray:
    body = np.zeros((18, 3))
    body[:, 0] = rng.uniform(0.35, 0.65, 18)
    body[:, 1] = np.linspace(0.1, 0.9, 18)[rng.permutation(18)]
    body[:, 2] = rng.uniform(0.5, 1.0, 18)
    return body


def _as_official(frame, size=None) -> dict:
    """A PoseFrame in the official dict layout (normalised by its own size), from the float32 pixels we store."""
    bodies, hands, faces = draw.frame_arrays(frame)
    d = official_dict(bodies, hands, faces)
    d["bodies"]["candidate"] = d["bodies"]["candidate"].reshape(-1, 2)
    return d


@pytest.mark.parametrize("driving_size", [(576, 1024), (1920, 1080)], ids=["portrait", "landscape"])
def test_fit_matches_the_official_formulas(driving_size):
    rng = np.random.default_rng(driving_size[0])
    W, H = 576, 1024
    ref_body = _dancer(rng)
    ref_body[[4, 7], 2] = 0.2  # invisible reference points (wrists are not in K anyway) ...
    ref_body[14, 2] = 0.25  # ... and an eye that must drop out of K
    reference = kp.PoseFrame(W, H, [_person(ref_body, (W, H), rng)])
    a_true, b_true = np.array([0.8, 0.9]), np.array([0.05, -0.02])
    frames = []
    for i in range(6):
        body = ref_body.copy()
        body[:, :2] = (body[:, :2] - b_true) / a_true + rng.normal(0, 0.01, (18, 2))
        body[:, 2] = rng.uniform(0.0, 1.0, 18)  # driving scores are not checked by the official fit
        people = [_person(body, driving_size, rng)]
        if i == 2:  # a two-person frame: left out of the fit, moved anyway
            people.append(_person(_dancer(rng), driving_size, rng, 0.5))
        frames.append(kp.PoseFrame(*driving_size, people))
    frames.append(kp.PoseFrame(*driving_size, []))  # nobody: left out, stays empty

    aligned, fit = align.align_frames(reference, frames)
    usable = [f for f in frames if f.people]
    a_off, b_off, moved = official_fit(_as_official(reference), (H, W), [_as_official(f) for f in usable],
                                       driving_size[::-1])
    np.testing.assert_allclose(fit.a, a_off, rtol=1e-9)
    np.testing.assert_allclose(fit.b, b_off, rtol=1e-9, atol=1e-12)
    assert fit.fallback is None and fit.reference_person == 0
    assert fit.fit_mask.tolist() == [True, True, False, True, True, True, False]
    assert fit.ref_ids == (0, 1, 2, 5, 8, 9, 10, 11, 12, 13, 15, 16, 17)
    assert fit.a[1] == pytest.approx(a_true[1], rel=0.05)  # near the true y scale (noise shrinks it a little)
    # the aspect term: equal pixel scale on both axes
    assert fit.a[0] * W / driving_size[0] == pytest.approx(fit.a[1] * H / driving_size[1], rel=1e-12)
    # every frame moved, multi-person ones too; points land where the official rescale puts them (canvas pixels)
    for mine, off in zip([a for a, f in zip(aligned, frames, strict=True) if f.people], moved, strict=True):
        assert (mine.width, mine.height) == (W, H)
        got = np.array([p.body[:, :2] for p in mine.people]).reshape(-1, 2) / [W, H]
        np.testing.assert_allclose(got, off["bodies"]["candidate"], atol=1e-6)
        hands = np.array([p.left_hand[:, :2] for p in mine.people] + [p.right_hand[:, :2] for p in mine.people])
        np.testing.assert_allclose(hands / [W, H], off["hands"], atol=1e-6)
        faces = np.array([p.face[:, :2] for p in mine.people])
        np.testing.assert_allclose(faces / [W, H], off["faces"], atol=1e-6)
    assert aligned[-1].people == []
    assert "scale a = (" in fit.describe() and "fitted on 5/7 frames" in fit.describe()


def test_fit_recovers_a_known_transform_and_renders_the_official_image():
    rng = np.random.default_rng(11)
    W, H = 576, 1024
    ref_body = _dancer(rng)
    reference = kp.PoseFrame(W, H, [_person(ref_body, (W, H), rng)])
    a_true, b_true = np.array([1.1, 1.1]), np.array([-0.03, 0.04])  # same aspect: a_x = a_y
    frames = []
    for _ in range(3):
        body = ref_body.copy()
        body[:, :2] = (body[:, :2] - b_true) / a_true
        frames.append(kp.PoseFrame(W, H, [_person(body, (W, H), rng)]))
    fit = align.compute_fit(reference, frames)
    np.testing.assert_allclose(fit.a, a_true, rtol=1e-5)
    np.testing.assert_allclose(fit.b, b_true, atol=1e-5)
    # the renders of aligned frames equal the official renderer fed the official rescaled dicts
    _, _, moved = official_fit(_as_official(reference), (H, W), [_as_official(f) for f in frames], (H, W))
    for frame, off in zip(frames, moved, strict=True):
        mine = draw.draw_pose_arrays(*align.aligned_arrays(frame, fit), H, W)
        d = _as_official(frame)
        d["bodies"]["candidate"], d["hands"], d["faces"] = off["bodies"]["candidate"], off["hands"], off["faces"]
        np.testing.assert_array_equal(mine, official_draw_pose(d, H, W))


def _simple_case(n_frames: int = 3, size=(576, 1024)):
    rng = np.random.default_rng(3)
    body = _dancer(rng)
    reference = kp.PoseFrame(576, 1024, [_person(body, (576, 1024), rng)])
    frames = [kp.PoseFrame(*size, [_person(body, size, rng)]) for _ in range(n_frames)]
    return reference, frames, body, rng


def test_no_person_in_the_reference_falls_back_with_a_message(caplog):
    _, frames, _, _ = _simple_case()
    with caplog.at_level(logging.WARNING):
        fit = align.compute_fit(kp.PoseFrame(576, 1024, []), frames)
    assert "no person was found in the reference image" in fit.fallback
    assert "no person was found in the reference image" in caplog.text
    np.testing.assert_array_equal(fit.a, [1.0, 1.0])
    np.testing.assert_array_equal(fit.b, [0.0, 0.0])
    assert "FALLBACK (identity fit)" in fit.describe()


def test_identity_fallback_keeps_square_pixels_for_a_landscape_video():
    ref, frames, _, _ = _simple_case(size=(1920, 1080))
    fit = align.compute_fit(kp.PoseFrame(576, 1024, []), frames)
    ax = (1920 / 1080) * (1024 / 576)
    np.testing.assert_allclose(fit.a, [ax, 1.0])
    np.testing.assert_allclose(fit.b, [0.5 - 0.5 * ax, 0.0])  # centred: the frame centre maps to the canvas centre
    assert fit.a[0] * 576 / 1920 == pytest.approx(fit.a[1] * 1024 / 1080)


def test_no_usable_driving_frame_falls_back():
    ref, frames, body, rng = _simple_case()
    crowd = [kp.PoseFrame(576, 1024, [_person(body, (576, 1024), rng)] * 2), kp.PoseFrame(576, 1024, [])]
    fit = align.compute_fit(ref, crowd)
    assert "none of the 2 driving frames has exactly one person" in fit.fallback
    assert not fit.fit_mask.any()
    # the option that uses the selected person of every frame can fit them
    fit = align.compute_fit(ref, crowd, align.AlignOptions(fit_frames=align.FIT_FRAME_CHOICES[1]))
    assert fit.fallback is None and fit.fit_mask.tolist() == [True, False]
    np.testing.assert_allclose(fit.a, [1.0, 1.0], rtol=1e-5)


def test_single_keypoint_and_zero_spread_fall_back():
    ref, frames, body, rng = _simple_case()
    ref.people[0].body[:, 2] = 0.1
    ref.people[0].body[0, 2] = 0.9  # only the nose is usable
    fit = align.compute_fit(ref, frames)
    assert fit.fallback.startswith("only 1 reference keypoint(s) scored > 0.3")
    assert fit.ref_ids == (0,)
    ref, frames, body, rng = _simple_case()
    for f in frames:
        f.people[0].body[:, 1] = 500.0  # everyone on one line
    fit = align.compute_fit(ref, frames)
    assert "no vertical spread" in fit.fallback
    ref, frames, body, rng = _simple_case()
    for f in frames:  # upside down: the fitted scale is negative
        f.people[0].body[:, 1] = 1024 - f.people[0].body[:, 1]
    fit = align.compute_fit(ref, frames)
    assert "non-positive or non-finite scale" in fit.fallback


def test_several_people_in_the_reference_and_person_choices():
    rng = np.random.default_rng(8)
    small, big, central = _dancer(rng), _dancer(rng), _dancer(rng)
    small[:, :2] = small[:, :2] * 0.2 + [0.0, 0.0]  # corner, tiny
    big[:, 0] = big[:, 0] * 1.2 - 0.3  # wide, left of centre
    central[:, :2] = (central[:, :2] - 0.5) * 0.5 + 0.5
    people = [_person(small, (576, 1024), rng, 0.95), _person(big, (576, 1024), rng, 0.6),
              _person(central, (576, 1024), rng, 0.7)]
    ref = kp.PoseFrame(576, 1024, people)
    assert align.select_person(ref, "highest score") == 0
    assert align.select_person(ref, "largest") == 1
    assert align.select_person(ref, "most central") == 2
    assert align.select_person(ref, "index", 2) == 2
    _, frames, _, _ = _simple_case()
    fit = align.compute_fit(ref, frames, align.AlignOptions(person="largest"))
    assert fit.reference_person == 1
    assert "3 people in the reference: using person 1 (largest)" in fit.warnings
    fit = align.compute_fit(ref, frames, align.AlignOptions(person="index", person_index=5))
    assert "person_index 5 is out of range: the reference has 3 people (0..2)" in fit.fallback


def test_points_without_position_are_left_out_and_a_weak_neck_keeps_the_official_position():
    ref, frames, body, rng = _simple_case(3)
    for person in [ref.people[0]] + [f.people[0] for f in frames]:
        person.body[1, :2] = (person.body[2, :2] + person.body[5, :2]) / 2  # the neck is the shoulders' mean
    frames[0].people[0].body[1] = 0.0  # shoulders too weak: keypoints.py stores the neck as [0, 0, 0]
    frames[1].people[0].body[9] = 0.0  # a knee the model did not find at all
    fit = align.compute_fit(ref, frames)
    assert fit.fallback is None and 1 in fit.ref_ids and 9 in fit.ref_ids
    np.testing.assert_allclose(fit.a, [1.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(fit.b, [0.0, 0.0], atol=1e-6)
    np.testing.assert_array_equal(align.fit_body(frames[0].people[0])[1, :2], ref.people[0].body[1, :2])


def test_mask_low_confidence_drops_points_from_the_fit():
    ref, frames, body, rng = _simple_case(4)
    for f in frames:  # garbage, low-score hips and knees
        f.people[0].body[[8, 9, 11, 12], 1] = 10.0
        f.people[0].body[[8, 9, 11, 12], 2] = 0.1
    plain = align.compute_fit(ref, frames)
    masked = align.compute_fit(ref, frames, align.AlignOptions(mask_low_confidence=True))
    assert abs(plain.a[1] - 1.0) > 0.05  # the official fit is pulled by the garbage
    np.testing.assert_allclose(masked.a, [1.0, 1.0], rtol=1e-5)
    np.testing.assert_allclose(masked.b, [0.0, 0.0], atol=1e-5)


def test_manual_mode_scale_and_offsets():
    ref, frames, body, rng = _simple_case()
    opts = align.AlignOptions(mode="manual", scale=0.5, offset_x=10.0, offset_y=-20.0)
    fit = align.compute_fit(ref, frames, opts)
    np.testing.assert_allclose(fit.a, [0.5, 0.5])
    np.testing.assert_allclose(fit.b, [0.25 + 10 / 576, 0.25 - 20 / 1024])
    moved = align.apply_fit(frames[0], fit)
    p = frames[0].people[0].body[3, :2].astype(float)
    np.testing.assert_allclose(moved.people[0].body[3, :2], p * 0.5 + [144 + 10, 256 - 20], atol=1e-3)
    # fit mode: the multiplier scales about the canvas centre; offsets in canvas pixels
    base = align.compute_fit(ref, frames)
    fit = align.compute_fit(ref, frames, align.AlignOptions(scale=2.0, offset_x=5.0))
    np.testing.assert_allclose(fit.a, base.a * 2)
    np.testing.assert_allclose(fit.b, 0.5 + 2 * (base.b - 0.5) + [5 / 576, 0])
    with pytest.raises(ValueError, match="alignment scale must be a positive number"):
        align.AlignOptions(scale=0.0)
    with pytest.raises(ValueError, match="choose one of"):
        align.AlignOptions(person="tallest")
    with pytest.raises(ValueError, match="no driving pose frames to align"):
        align.compute_fit(ref, [])


def test_missing_points_stay_missing():
    ref, frames, body, rng = _simple_case()
    frames[0].people[0].left_hand[:] = 0.0
    fit = align.compute_fit(ref, frames, align.AlignOptions(offset_x=30.0))
    moved = align.apply_fit(frames[0], fit)
    assert not moved.people[0].left_hand.any() and moved.people[0].right_hand.any()
    _, hands, _ = align.aligned_arrays(frames[0], fit)
    assert not hands[0].any() and hands[1].any()


# ----------------------------------------------------------------------------------------------------------------
# Nodes through ComfyUI's executor
# ----------------------------------------------------------------------------------------------------------------
def _pose_value(frames) -> dict:
    return {"__value__": kp.to_pose_keypoint(frames)}  # a literal list input (a bare list would read as a link)


def test_align_and_draw_nodes_run_in_a_graph():
    rng = np.random.default_rng(21)
    W, H = 576, 1024
    body = _dancer(rng)
    reference = kp.PoseFrame(W, H, [_person(body, (W, H), rng)])
    driving = [kp.PoseFrame(480, 854, [_person(body, (480, 854), rng)]) for _ in range(2)]
    graph = {
        "1": {"class_type": "ControlNeXtAlignPoses",
              "inputs": {"reference": _pose_value([reference]), "driving": _pose_value(driving)}},
        "2": {"class_type": "ControlNeXtDrawPoses",
              "inputs": {"poses": ["1", 0], "width": W, "height": H, "include_body": True, "include_hand": False,
                         "include_face": True}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
    }
    run = run_graph(graph)
    assert run.success, run.error()
    text = run.outputs["1"]["text"][0]
    # same person, the frame's aspect is a bit wider: a_x = (480 / 854) * (1024 / 576)
    assert "scale a = (0.9992, 1.0000)" in text and "fitted on 2/2 frames" in text
    # the node's image equals the direct render of the aligned frames
    aligned, _ = align.align_frames(reference, driving)
    expected = draw.draw_frame(aligned[0], W, H, include_hand=False)
    direct = pose_nodes.ControlNeXtDrawPoses.execute(kp.to_pose_keypoint(aligned), W, H, True, False, True)
    images = direct.result[0]
    assert images.shape == (2, H, W, 3) and images.dtype == torch.float32
    np.testing.assert_array_equal((images[0].numpy() * 255).round().astype(np.uint8), expected)


def test_align_node_reports_a_fallback_and_draw_rejects_empty_input():
    graph = {"1": {"class_type": "ControlNeXtAlignPoses",
                   "inputs": {"reference": _pose_value([kp.PoseFrame(576, 1024, [])]),
                              "driving": _pose_value([kp.PoseFrame(576, 1024, [])])}}}
    run = run_graph(graph | {"2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 1]}}})
    assert run.success, run.error()
    assert "FALLBACK (identity fit): no person was found in the reference image" in run.outputs["1"]["text"][0]
    graph = {"1": {"class_type": "ControlNeXtDrawPoses",
                   "inputs": {"poses": {"__value__": []}, "width": 576, "height": 1024, "include_body": True,
                              "include_hand": True, "include_face": True}},
             "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}
    run = run_graph(graph)
    assert not run.success and "no pose frames to draw" in run.error()["exception_message"]


def test_draw_node_scales_each_frame_canvas_to_the_output_size(caplog):
    rng = np.random.default_rng(4)
    small = kp.PoseFrame(288, 512, [_person(_dancer(rng), (288, 512), rng)])
    out = pose_nodes.ControlNeXtDrawPoses.execute(kp.to_pose_keypoint([small]), 576, 1024).result[0]
    got = (out[0].numpy() * 255).round().astype(np.uint8)
    np.testing.assert_array_equal(got, draw.draw_pose_arrays(*draw.frame_arrays(small), 1024, 576))
    assert got.any()
    # a reference with several frames: the first is used, with a warning
    ref = kp.PoseFrame(576, 1024, [_person(_dancer(rng), (576, 1024), rng)])
    with caplog.at_level(logging.WARNING):
        res = pose_nodes.ControlNeXtAlignPoses.execute(kp.to_pose_keypoint([ref, small]), kp.to_pose_keypoint([small]))
    assert "the reference has 2 frames; using the first" in caplog.text
    assert res.result[0][0]["canvas_width"] == 576 and "reference person 0" in res.result[1]


def test_generation_size_must_be_a_multiple_of_64():
    pose_nodes.check_video_size(576, 1024)
    with pytest.raises(ValueError, match=r"multiples of 64, got width 570 \(nearby sizes that work: 512 or 576\)"):
        pose_nodes.check_video_size(570, 1024)


FAKE = Path(__file__).resolve().parent / "tiny_pack" / "fake_dwpose.py"


# PosesForAnimation needs a DWPOSE object: the loader with the fake models of tests/tiny_pack/fake_dwpose.py
# (real onnxruntime sessions; the marker pose model finds nose, shoulders (so the neck), face and hands).
@pytest.fixture(scope="module")
def fake_dwpose_files(tmp_path_factory) -> dict[str, str]:
    from tiny_pack import fake_dwpose as fd

    d = tmp_path_factory.mktemp("fake_dwpose_pose_nodes")
    paths = {"det": str(d / "blob.onnx"), "pose": str(d / "pose.onnx")}
    fd.blob_det_onnx(paths["det"])
    fd.marker_pose_onnx(paths["pose"], "batch")
    return paths


def _marker_scene(h: int, w: int, x: float, y: float, spread: float = 1.0) -> np.ndarray:
    from tiny_pack import fake_dwpose as fd

    img = np.zeros((h, w, 3), np.uint8)
    fd.draw_marker(img, x, y, fd.R)  # nose
    fd.draw_marker(img, x + 41.3 * spread, y + 63.7 * spread, fd.G)  # left shoulder
    fd.draw_marker(img, x - 38.6 * spread, y + 66.2 * spread, fd.B)  # right shoulder
    return img


def test_poses_for_animation_graph_matches_the_official_pipeline(fake_dwpose_files, comfy_base):
    import shutil

    folder = comfy_base / "models" / "dwpose"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(fake_dwpose_files["det"], folder / "pose_nodes_det.onnx")
    shutil.copy(fake_dwpose_files["pose"], folder / "pose_nodes_pose.onnx")
    W, H = 320, 576
    ref = _marker_scene(700, 430, 211.7, 240.3)  # cover-resized to 336x576... then cropped to 320x576
    drv = [_marker_scene(360, 640, 300.4 + 20 * i, 120.6 + 9 * i, spread=0.8) for i in range(2)]  # landscape
    cv2.imwrite(str(comfy_base / "input" / "pn_ref.png"), ref[..., ::-1])
    for i, img in enumerate(drv):
        cv2.imwrite(str(comfy_base / "input" / f"pn_drv{i}.png"), img[..., ::-1])
    graph = {
        "1": {"class_type": "ControlNeXtDWPoseLoader",
              "inputs": {"bbox_detector": "pose_nodes_det.onnx", "pose_estimator": "pose_nodes_pose.onnx"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "pn_ref.png"}},
        "3": {"class_type": "LoadImage", "inputs": {"image": "pn_drv0.png"}},
        "4": {"class_type": "LoadImage", "inputs": {"image": "pn_drv1.png"}},
        "5": {"class_type": "ImageBatch", "inputs": {"image1": ["3", 0], "image2": ["4", 0]}},
        "6": {"class_type": "ControlNeXtPosesForAnimation",
              "inputs": {"dwpose": ["1", 0], "reference": ["2", 0], "driving_frames": ["5", 0], "width": W,
                         "height": H, "include_body": True, "include_hand": True, "include_face": True}},
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}},
        "8": {"class_type": "PreviewImage", "inputs": {"images": ["6", 1]}},
    }
    run = run_graph(graph)
    assert run.success, run.error()
    text = run.outputs["6"]["text"][0]
    assert "fitted on 2/2 frames, 4 reference keypoints" in text and "FALLBACK" not in text

    # the same steps by hand: the official fit and renderer on the detector's output
    pipeline = pack_import("dwpose.pipeline")
    image_fit = pack_import("controlnext.image_fit")
    model = pipeline.DWPose(fake_dwpose_files["det"], fake_dwpose_files["pose"])
    fitted = image_fit.fit_reference(torch.from_numpy(ref[None]).float() / 255, W, H)
    ref_frame = model.detect(pipeline.images_to_uint8(fitted))[0]
    drv_frames = model.detect(np.stack(drv))
    assert len(ref_frame.people) == 1 and all(len(f.people) == 1 for f in drv_frames)
    a, b, moved = official_fit(_as_official(ref_frame), (H, W), [_as_official(f) for f in drv_frames], (360, 640))
    expected = [official_draw_pose(_as_official(ref_frame), H, W)]
    for frame, off in zip(drv_frames, moved, strict=True):
        d = _as_official(frame)
        d["bodies"]["candidate"], d["hands"], d["faces"] = off["bodies"]["candidate"], off["hands"], off["faces"]
        expected.append(official_draw_pose(d, H, W))
    assert f"scale a = ({a[0]:.4f}, {a[1]:.4f})" in text
    node = pose_nodes.ControlNeXtPosesForAnimation.execute(
        model, torch.from_numpy(ref[None]).float() / 255, torch.from_numpy(np.stack(drv)).float() / 255, W, H)
    poses, fitted_out = node.result[0], node.result[1]
    assert poses.shape == (3, H, W, 3) and fitted_out.shape == (1, H, W, 3)
    torch.testing.assert_close(fitted_out, fitted)
    got = (poses.numpy() * 255).round().astype(np.uint8)
    for i in range(3):
        assert expected[i].any()
        np.testing.assert_array_equal(got[i], expected[i])

    graph["6"]["inputs"]["width"] = 570
    run = run_graph(graph)
    assert not run.success and "got width 570 (nearby sizes that work: 512 or 576)" in run.error()["exception_message"]


def test_canvas_is_official_except_for_extreme_aspect_ratios():
    assert draw.canvas_size(1024, 576) == (3840, 2160)  # the official rule: short side 2160
    assert draw.canvas_size(2160, 3840) == (2160, 3840)
    assert draw.canvas_size(512, 64) == (16384, 2048)  # 8:1 -> capped at 16384 rows (officially 17280)
    assert draw.canvas_size(8192, 8) == (16384, 16)  # the official rule would give 2211840 x 2160 (~14 GB)
