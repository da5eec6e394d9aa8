"""The pose stages inside ControlNeXtPosesForAnimation (dwpose/pipeline.py: run_pose_stages) and what Pose Overlay
shows of them.

- All stages off: the node's output is the official one (the parity tests in test_pose_align_draw.py), and giving the
  stage inputs at their defaults changes no pixel and no word of info.
- Stages on, on a synthetic clip with a known truth (DWPose-like jitter and dropouts, a bystander who is listed first
  from frame 8 on, a reference person with other proportions): the result equals the stage functions called by hand
  in the order track -> smooth -> align -> retarget, and each stage did its job (only the dancer, less jitter, the
  reference's bone lengths on the canvas).
- The node in a real graph with real ONNX sessions (the fake DWPose files of tests/tiny_pack/fake_dwpose.py: two
  detector boxes, the bystander's scored higher), drawn pixels equal to the stages applied by hand to the same
  detections, and its poses / raw_poses going into Pose Overlay over the driving frames.
"""

from __future__ import annotations

import posixpath
import re
import shutil

import cv2
import numpy as np
import pytest
import torch
from test_retarget import FH, FW, REF_LEN, REST, H, W, fk  # the synthetic skeletons of the retargeting tests

from conftest import PACK_LINK_NAME, ROOT, pack_import, run_graph

kp = pack_import("dwpose.keypoints")
align = pack_import("dwpose.align")
draw = pack_import("dwpose.draw")
track = pack_import("dwpose.track")
smooth = pack_import("dwpose.smooth")
rt = pack_import("dwpose.retarget")
pipeline = pack_import("dwpose.pipeline")
overlay = pack_import("dwpose.overlay")
pose_nodes = pack_import("nodes.pose_nodes")
preview_nodes = pack_import("nodes.preview_nodes")
image_fit = pack_import("controlnext.image_fit")

FRAMES = 40
BYSTANDER_FROM = 8
JITTER = 2.5  # px, DWPose-like
# the dancer's proportions differ from the reference's: long legs, short arms, a smaller head
DANCER_FACTORS = np.array([0.9, 1.05, 1.05, 0.85, 0.85, 0.8, 0.8, 1.0, 1.0, 1.25, 1.25, 1.3, 1.3, 0.9, 0.9, 0.9, 0.9])
LIMBS_AND_TORSO = list(range(1, 13))  # shoulders, arms, torso, legs: long enough to measure within 1.5 %
RNG_TEMPLATE = np.random.default_rng(11)
HAND = RNG_TEMPLATE.uniform(-1, 1, (21, 2)) * [12, 10] + [0, 25]
FACE = RNG_TEMPLATE.uniform(-1, 1, (68, 2)) * [28, 34]


def make_person(body_xy: np.ndarray, size: float, rng: np.random.Generator | None, box_score: float | None,
                jitter: float = 0.0) -> object:
    def noisy(xy: np.ndarray, score: float) -> np.ndarray:
        out = xy + (rng.normal(0, jitter, xy.shape) if rng is not None and jitter else 0.0)
        return np.column_stack([out, np.full(len(xy), score)])

    body = noisy(body_xy, 0.9)
    lo, hi = body_xy.min(axis=0) - 20, body_xy.max(axis=0) + 20
    return kp.Person(body=body, right_hand=noisy(body_xy[4] + HAND * size, 0.8),
                     left_hand=noisy(body_xy[7] + HAND * size, 0.8), face=noisy(body_xy[0] + FACE * size, 0.7),
                     box=(*lo, *hi), box_score=box_score)


def dancer_angles(t: int) -> np.ndarray:
    ang = REST.copy()
    ang[[3, 4, 5, 6]] += 40 * np.sin(0.25 * t + np.arange(4))
    ang[[9, 11]] += 6 * np.sin(0.2 * t)
    return ang


def synthetic_clip(seed: int = 3) -> tuple[object, list, list[np.ndarray]]:
    """(reference PoseFrame, driving PoseFrames, the dancer's true body (18, 2) per frame).

    The dancer (driving px, bigger than the reference overall and with other proportions) sways and swings the arms,
    with Gaussian jitter on every point and two 2-frame wrist dropouts (score 0.1, position off by 30 px); from frame 8
    a smaller bystander stands at the right, listed first (higher detector score)."""
    rng = np.random.default_rng(seed)
    size = 1.3
    reference = kp.PoseFrame(W, H, [make_person(fk(REF_LEN, REST, (W / 2, 230.0)), 1.0, None, 0.9)])
    frames, truth = [], []
    for t in range(FRAMES):
        neck = (FW * 0.4 + 25 * np.sin(0.15 * t), 300.0 + 8 * np.sin(0.3 * t))
        body = fk(REF_LEN * DANCER_FACTORS * size, dancer_angles(t), neck)
        truth.append(body)
        dancer = make_person(body, size, rng, 0.8, JITTER)
        if t in (12, 13, 27, 28):
            dancer.body[4] = [dancer.body[4, 0] + 30, dancer.body[4, 1] - 30, 0.1]
        people = [dancer]
        if t >= BYSTANDER_FROM:
            by = fk(REF_LEN * 0.7, REST, (FW * 0.85, 420.0))
            people.insert(0, make_person(by, 0.7, rng, 0.95, JITTER))
        frames.append(kp.PoseFrame(FW, FH, people))
    return reference, frames, truth


STAGES_ON = dict(track="largest", smooth_strength=0.5, smooth_method="savitzky-golay", retarget_strength=1.0,
                 retarget_anchor="hips")


def by_hand(reference: object, driving: list, align_options: object, smooth_strength: float = 0.5,
            retarget_anchor: str = "hips") -> tuple[list, object, list]:
    """The stages called directly, in the documented order: (smoothed driving frames, fit, retargeted canvas)."""
    tracked, _ = track.track_frames(driving, track.TrackOptions(select="largest", keep="selected person"))
    smoothed, _ = smooth.smooth_frames(tracked, smooth.SmoothOptions(body=smooth_strength, hands=smooth_strength,
                                                                     face=smooth_strength))
    fit = align.compute_fit(reference, smoothed, align_options)
    aligned = [align.apply_fit(f, fit) for f in smoothed]
    ref = kp.PoseFrame(reference.width, reference.height, [reference.people[fit.reference_person]])
    result = rt.retarget_frames(ref, aligned, rt.RetargetOptions(strength=1.0, anchor=retarget_anchor))
    return smoothed, fit, result.frames


def assert_frames_equal(got: list, want: list) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert (g.width, g.height, len(g.people)) == (w.width, w.height, len(w.people))
        for pg, pw in zip(g.people, w.people, strict=True):
            np.testing.assert_array_equal(pg.all_points(), pw.all_points())


# ----------------------------------------------------------------------------------------------------------------
# Model level: run_pose_stages
# ----------------------------------------------------------------------------------------------------------------
def test_all_stages_off_is_the_official_fit_and_drawing():
    reference, driving, _ = synthetic_clip()
    staged = pipeline.run_pose_stages(reference, driving, align.AlignOptions(), pipeline.PoseStages())
    fit = align.compute_fit(reference, driving, align.AlignOptions())
    assert staged.driving == driving and staged.canvas is None and staged.processed() == driving
    np.testing.assert_array_equal(staged.fit.a, fit.a)
    np.testing.assert_array_equal(staged.fit.b, fit.b)
    assert staged.describe() == fit.describe()  # info reads exactly as before the stages existed
    for i in (0, 20):
        for got, want in zip(staged.draw_arrays(i), align.aligned_arrays(driving[i], fit), strict=True):
            np.testing.assert_array_equal(got, want)


def test_stages_on_equal_the_stage_functions_in_order_and_do_their_jobs():
    reference, driving, truth = synthetic_clip()
    stages = pipeline.PoseStages(track=track.TrackOptions(select="largest", keep="selected person"),
                                 smooth=smooth.SmoothOptions(body=0.5, hands=0.5, face=0.5),
                                 retarget=rt.RetargetOptions(strength=1.0, anchor="hips"))
    staged = pipeline.run_pose_stages(reference, driving, align.AlignOptions(), stages)
    smoothed, fit, canvas = by_hand(reference, driving, align.AlignOptions())
    assert_frames_equal(staged.driving, smoothed)
    np.testing.assert_array_equal(staged.fit.a, fit.a)
    np.testing.assert_array_equal(staged.fit.b, fit.b)
    assert_frames_equal(staged.canvas, canvas)
    assert staged.raw == driving

    # track: one person, the dancer, in every frame (the bystander is listed first from frame 8 on)
    assert all(len(f.people) == 1 for f in staged.driving)
    err = [np.abs(f.people[0].body[:, :2] - t).max() for f, t in zip(staged.driving, truth, strict=True)]
    assert max(err) < 40, "a frame's person is not the dancer"
    # the official fit uses single-person frames: without tracking only the 8 frames before the bystander
    assert fit.fit_mask.all()
    assert align.compute_fit(reference, driving).fit_mask.sum() == BYSTANDER_FROM
    # smooth: less jitter and closer to the truth than the raw dancer
    raw = np.array([f.people[-1].body[:, :2] if len(f.people) == 1 else f.people[1].body[:, :2] for f in driving])
    out = np.array([f.people[0].body[:, :2] for f in staged.driving])
    ok = np.array([f.people[-1].body[:, 2] > 0.3 for f in driving])
    truth = np.array(truth)
    assert smooth.jitter_rms(out, ok) < smooth.jitter_rms(raw, ok) / 2
    assert np.sqrt(np.mean((out - truth)[ok] ** 2)) < np.sqrt(np.mean((raw - truth)[ok] ** 2))
    # retarget: on the canvas every limb and torso bone has the reference's length (its clip length, the 90th
    # percentile the retargeting measures with, within 1 %)
    ref_len = rt.bone_lengths(reference.people[0].body, np.ones(18, dtype=bool))
    got = np.array([rt.bone_lengths(f.people[0].body, np.ones(18, dtype=bool)) for f in staged.canvas])
    rel = rt.clip_percentile(got)[LIMBS_AND_TORSO] / ref_len[LIMBS_AND_TORSO]
    assert np.abs(rel - 1).max() < 0.01, rel
    # ... while the official one-scale fit keeps the dancer's proportions (legs 25-30 % too long)
    official = np.array([rt.bone_lengths(align.apply_fit(f, fit).people[0].body, np.ones(18, dtype=bool))
                         for f in staged.driving])
    assert np.median(official, axis=0)[11] / ref_len[11] > 1.15
    # processed(): the retargeted canvas poses moved back into the driving frames' pixels
    back = staged.processed()
    assert (back[5].width, back[5].height) == (FW, FH)
    again = align.apply_fit(back[5], staged.fit)
    np.testing.assert_allclose(again.people[0].body, staged.canvas[5].people[0].body, atol=1e-3)

    text = staged.describe()
    assert text.splitlines()[0] == "pose stages: track -> smooth -> align -> retarget (off stages skipped)"
    assert [line for line in text.splitlines() if line.startswith("[")] == ["[track]", "[smooth]", "[align]",
                                                                          "[retarget]"]
    assert "fitted on 40/40 frames" in text and "1 other people left out" in text


def test_the_documented_order_beats_the_alternatives():
    """Why track -> smooth -> align -> retarget: retargeting before the alignment, or smoothing after retargeting,
    leaves the canvas bones further from the reference's lengths."""
    reference, driving, _ = synthetic_clip()
    smoothed, fit, canvas = by_hand(reference, driving, align.AlignOptions())
    ref_len = rt.bone_lengths(reference.people[0].body, np.ones(18, dtype=bool))[LIMBS_AND_TORSO]

    def error(frames: list) -> float:
        """The largest relative difference of a bone's clip length (the 90th percentile over the frames, the length
        retargeting sets) from the reference's."""
        got = np.array([rt.bone_lengths(f.people[0].body, np.ones(18, dtype=bool)) for f in frames])
        return float(np.abs(rt.clip_percentile(got)[LIMBS_AND_TORSO] / ref_len - 1).max())

    ours = error(canvas)
    # retarget in driving px, then align (the fit is recomputed on the new skeleton)
    ref = kp.PoseFrame(W, H, [reference.people[0]])
    early = rt.retarget_frames(ref, smoothed, rt.RetargetOptions(strength=1.0, anchor="hips")).frames
    late_aligned, _ = align.align_frames(reference, early)
    # retarget the jittery poses, smooth afterwards
    tracked, _ = track.track_frames(driving, track.TrackOptions(select="largest"))
    fit_raw = align.compute_fit(reference, tracked)
    rough = rt.retarget_frames(ref, [align.apply_fit(f, fit_raw) for f in tracked],
                               rt.RetargetOptions(strength=1.0, anchor="hips")).frames
    smoothed_late, _ = smooth.smooth_frames(rough, smooth.SmoothOptions(body=0.5, hands=0.5, face=0.5))
    assert ours < 1e-3  # the reference's pixels exactly (the refit on the canvas is the identity)
    assert error(late_aligned) > 0.005  # the alignment refits the scale on the new skeleton: all bones 1.2 % long
    assert error(smoothed_late) > 0.02  # smoothing moves joints independently: bones up to 3 % short


def test_tracking_survives_a_newcomer_out_of_everybody_s_reach():
    """The dancer leaves and somebody appears far away (several body sizes): no track can link to the newcomer, the
    frame's cost matrix is empty. This crashed the track stage (numpy argmin of an empty matrix; first seen on the
    example workflow's noise video); the newcomer must start a track of its own and never be drawn as the dancer."""
    reference, driving, _ = synthetic_clip()
    dancer = make_person(fk(REF_LEN * 0.4, REST, (100.0, 150.0)), 0.4, None, 0.9)  # about 300 px tall
    newcomer = make_person(fk(REF_LEN * 0.4, REST, (FW - 100.0, FH - 450.0)), 0.4, None, 0.9)
    clip = [kp.PoseFrame(FW, FH, [dancer])] * 5 + [kp.PoseFrame(FW, FH, [newcomer])] * 3
    stages = pipeline.PoseStages(track=track.TrackOptions(select="largest", keep="selected person"))
    staged = pipeline.run_pose_stages(reference, clip, align.AlignOptions(), stages)
    assert [len(f.people) for f in staged.driving] == [1] * 5 + [0] * 3
    assert "2 people tracked over 8 frames" in staged.describe()


# ----------------------------------------------------------------------------------------------------------------
# The node
# ----------------------------------------------------------------------------------------------------------------
# Real detector: the fake DWPose ONNX files. Two constant boxes (letterbox px): the dancer's (large, score 0.6) and a
# bystander's (small, score 0.95: listed first). The marker pose model finds nose and shoulders (so the neck), face
# and hands from coloured markers inside each box.
DRV_H, DRV_W = 360, 640
DANCER_BOX = (60, 20, 300, 340)
BYSTANDER_BOX = (420, 80, 600, 330)
N_DRIVING = 10


def marker_person(img: np.ndarray, x: float, y: float, spread: float) -> None:
    from tiny_pack import fake_dwpose as fd

    fd.draw_marker(img, x, y, fd.R)  # nose
    fd.draw_marker(img, x + 41.3 * spread, y + 63.7 * spread, fd.G)  # left shoulder
    fd.draw_marker(img, x - 38.6 * spread, y + 66.2 * spread, fd.B)  # right shoulder


@pytest.fixture(scope="module")
def two_box_dwpose(tmp_path_factory) -> dict[str, str]:
    from tiny_pack import fake_dwpose as fd

    d = tmp_path_factory.mktemp("stages_dwpose")
    paths = {"det": str(d / "stages_det.onnx"), "pose": str(d / "stages_pose.onnx")}
    fd.const_det_onnx(paths["det"], fd.const_det_rows([DANCER_BOX, BYSTANDER_BOX], [0.6, 0.95]))
    fd.marker_pose_onnx(paths["pose"], "batch")
    return paths


def driving_images() -> np.ndarray:
    """The dancer moves and jitters inside its box; the bystander appears in its box from frame 3 on (before, the box
    is empty and its 'person' has no keypoint above 0.3)."""
    rng = np.random.default_rng(5)
    out = np.zeros((N_DRIVING, DRV_H, DRV_W, 3), np.uint8)
    for t in range(N_DRIVING):
        x, y = 170 + 4 * t + rng.normal(0, 1.5), 120 + 2 * t + rng.normal(0, 1.5)
        marker_person(out[t], x, y, spread=1.0)
        if t >= 3:
            marker_person(out[t], 505.0, 170.0, spread=0.6)
    return out


def reference_image() -> np.ndarray:
    img = np.zeros((576, 320, 3), np.uint8)  # already the output size: fit_reference leaves it as it is
    marker_person(img, 150.0, 110.0, spread=1.4)  # other proportions: wider shoulders for the neck-nose length
    return img


def test_node_in_a_graph_with_the_real_detector_and_the_overlay(two_box_dwpose, comfy_base):
    folder = comfy_base / "models" / "dwpose"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(two_box_dwpose["det"], folder / "stages_det.onnx")
    shutil.copy(two_box_dwpose["pose"], folder / "stages_pose.onnx")
    ref, drv = reference_image(), driving_images()
    cv2.imwrite(str(comfy_base / "input" / "stages_ref.png"), ref[..., ::-1])
    graph = {
        "1": {"class_type": "ControlNeXtDWPoseLoader",
              "inputs": {"bbox_detector": "stages_det.onnx", "pose_estimator": "stages_pose.onnx"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "stages_ref.png"}},
    }
    last = None
    for t, img in enumerate(drv):
        cv2.imwrite(str(comfy_base / "input" / f"stages_drv{t}.png"), img[..., ::-1])
        graph[f"d{t}"] = {"class_type": "LoadImage", "inputs": {"image": f"stages_drv{t}.png"}}
        if last is None:
            last = [f"d{t}", 0]
        else:
            graph[f"b{t}"] = {"class_type": "ImageBatch", "inputs": {"image1": last, "image2": [f"d{t}", 0]}}
            last = [f"b{t}", 0]
    W2, H2 = 320, 576
    node = {"dwpose": ["1", 0], "reference": ["2", 0], "driving_frames": last, "width": W2, "height": H2,
            "include_body": True, "include_hand": True, "include_face": True, "person": "largest"}
    graph |= {
        "6": {"class_type": "ControlNeXtPosesForAnimation", "inputs": node | STAGES_ON},
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}},
        "8": {"class_type": "ControlNeXtPoseOverlay",
              "inputs": {"reference": last, "poses": ["6", 3], "compare_poses": ["6", 4], "opacity": 1.0,
                         "mode": "skeleton only"}},
        "9": {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}},
        "10": {"class_type": "ControlNeXtPosesForAnimation", "inputs": node},  # all stages off
        "11": {"class_type": "PreviewAny", "inputs": {"source": ["10", 2]}},
    }
    run = run_graph(graph)
    assert run.success, run.error()
    assert len(run.outputs["7"]["images"]) == N_DRIVING + 1 and len(run.outputs["9"]["images"]) == N_DRIVING
    staged_text, official_text = run.outputs["6"]["text"][0], run.outputs["10"]["text"][0]
    # two people in every driving frame: the official fit has no single-person frame; tracking gives all of them
    assert "FALLBACK (identity fit): none of the 10 driving frames has exactly one person" in official_text
    assert "fitted on 10/10 frames" in staged_text and "[retarget]" in staged_text

    # the same stages by hand on the same detector's output
    model = pipeline.DWPose(two_box_dwpose["det"], two_box_dwpose["pose"])
    ref_frame = model.detect(ref[None])[0]
    raw = model.detect(drv)
    assert all(len(f.people) == 2 for f in raw) and raw[5].people[0].box_score == pytest.approx(0.95)
    opts = align.AlignOptions(person="largest")
    smoothed, fit, canvas = by_hand(ref_frame, raw, opts)
    res = pose_nodes.ControlNeXtPosesForAnimation.execute(
        model, torch.from_numpy(ref[None]).float() / 255, torch.from_numpy(drv).float() / 255, W2, H2,
        person="largest", **STAGES_ON).result
    images = (res[0].numpy() * 255).round().astype(np.uint8)
    for i, frame in enumerate(canvas):
        np.testing.assert_array_equal(images[i + 1], draw.draw_frame(frame, W2, H2))
    assert all(len(f.people) == 1 and f.people[0].body[0, 0] < 320 for f in smoothed)  # the dancer, left box
    assert res[4] == kp.to_pose_keypoint(raw)
    # the overlay: processed skeleton in colour over the raw one in white, on the driving frames
    shown = preview_nodes.ControlNeXtPoseOverlay.execute(torch.from_numpy(drv).float() / 255, poses=res[3],
                                                         opacity=1.0, compare_poses=res[4]).result[0]
    drawn = torch.stack([torch.from_numpy(draw.draw_frame(f, DRV_W, DRV_H)) for f in kp.from_pose_keypoint(res[3])])
    raw_drawn = torch.stack([torch.from_numpy(draw.draw_frame(f, DRV_W, DRV_H)) for f in raw])
    expected = overlay.overlay_poses(torch.from_numpy(drv).float() / 255, drawn.float() / 255, 1.0,
                                     compare=raw_drawn.float() / 255)
    torch.testing.assert_close(shown, expected)
    bystander = (slice(150, 200), slice(470, 540))  # the bystander's shoulders: white (raw only), no colour
    assert shown[5][bystander].min(dim=-1).values.max() > 0.95


def test_node_with_stage_inputs_at_their_defaults_changes_nothing(two_box_dwpose):
    model = pipeline.DWPose(two_box_dwpose["det"], two_box_dwpose["pose"])
    ref, drv = torch.from_numpy(reference_image()[None]).float() / 255, torch.from_numpy(driving_images()).float() / 255
    plain = pose_nodes.ControlNeXtPosesForAnimation.execute(model, ref, drv, 320, 576, person="largest").result
    defaults = {i.id: i.default for i in pose_nodes._stage_inputs()}
    assert defaults == {"track": "off", "track_index": 0, "track_x": 0.5, "track_y": 0.5, "smooth_strength": 0.0,
                        "smooth_method": "savitzky-golay", "retarget_strength": 0.0, "retarget_anchor": "feet"}
    given = pose_nodes.ControlNeXtPosesForAnimation.execute(model, ref, drv, 320, 576, person="largest",
                                                            **defaults).result
    assert torch.equal(plain[0], given[0]) and plain[2] == given[2]
    raw = model.detect(driving_images())
    assert plain[2] == align.compute_fit(model.detect(reference_image()[None])[0], raw,
                                         align.AlignOptions(person="largest")).describe()
    assert plain[3] == plain[4] == kp.to_pose_keypoint(raw)  # nothing processed: poses = raw_poses
    with pytest.raises(ValueError, match="index 3 is out of range: frame 0 has 2 people"):
        pose_nodes.ControlNeXtPosesForAnimation.execute(model, ref, drv, 320, 576, track="index", track_index=3)


def test_the_help_pages_show_the_stage_pictures():
    """The pictures the help pages link resolve where ComfyUI's help panel looks for them: relative to
    /extensions/<pack folder>/docs/ (frontend src/utils/nodeHelpUtil.ts getNodeHelpBaseUrl), served from the pack's
    WEB_DIRECTORY (web/); small PNGs made by scripts/make_pose_stage_pictures.py."""
    base = f"/extensions/{PACK_LINK_NAME}/docs/"
    linked = set()
    for page in ("ControlNeXtPosesForAnimation", "ControlNeXtPoseOverlay"):
        text = (ROOT / "web" / "docs" / f"{page}.md").read_text(encoding="utf-8")
        for target in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
            url = posixpath.normpath(base + target)
            assert url.startswith(f"/extensions/{PACK_LINK_NAME}/"), f"{page}: {target} leaves the pack's folder"
            linked.add(ROOT / "web" / url.removeprefix(f"/extensions/{PACK_LINK_NAME}/"))
    names = {p.name for p in linked}
    assert names == {"pose_stage_track.png", "pose_stage_smooth.png", "pose_stage_retarget.png"}, names
    for path in linked:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    assert sum(p.stat().st_size for p in linked) < 300_000

