"""Per-bone retargeting (dwpose/retarget.py) and the ControlNeXtRetargetPoses node, on synthetic skeletons whose truth
is known: every skeleton is built by forward kinematics from bone lengths and bone directions, so the expected lengths,
directions and anchor positions are exact numbers, not "looks right"."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import pack_import, run_graph

rt = pack_import("dwpose.retarget")
kp = pack_import("dwpose.keypoints")
align = pack_import("dwpose.align")
draw = pack_import("dwpose.draw")
retarget_node = pack_import("nodes.retarget_node")

W, H = 576, 1024  # the reference canvas
FW, FH = 720, 1280  # the driving video
# per bone, in rt.BONES order: neck-nose, shoulders R/L, upper arms R/L, forearms R/L, torso R/L, thighs R/L,
# shins R/L, nose-eye R/L, eye-ear R/L
REF_LEN = np.array([60, 65, 63, 110, 112, 95, 93, 230, 228, 170, 172, 160, 158, 18, 18, 25, 25], dtype=float)
FACTORS = np.array([0.85, 1.1, 1.05, 1.3, 1.25, 0.8, 0.85, 1.15, 1.1, 1.2, 1.1, 0.9, 0.95, 0.9, 0.9, 0.8, 0.85])
DRIVER_SIZE = 1.25  # the driver is also bigger overall (the global fit takes that out)
REST = np.array([-90, 180, 0, 100, 80, 95, 85, 100, 80, 92, 88, 90, 90, -120, -60, 190, -10], dtype=float)  # degrees
ARMS, LEGS = [3, 4, 5, 6], [9, 10, 11, 12]
LEG_BONES = [9, 10, 11, 12]
TEMPLATE_RNG = np.random.default_rng(7)
HAND = TEMPLATE_RNG.uniform(-1, 1, (21, 2)) * [12, 10] + [0, 25]  # hand points relative to the wrist, px at size 1
HAND[0] = 0
FACE = TEMPLATE_RNG.uniform(-1, 1, (68, 2)) * [28, 34]  # face points relative to the nose


def fk(lengths: np.ndarray, angles: np.ndarray, neck: tuple[float, float]) -> np.ndarray:
    """(18, 2) joint positions: each bone from its parent, angle in degrees from +x (y points down)."""
    pts = np.zeros((18, 2))
    pts[1] = neck
    for b, (c, p, _, _) in enumerate(rt.BONES):
        a = np.deg2rad(angles[b])
        pts[c] = pts[p] + lengths[b] * np.array([np.cos(a), np.sin(a)])
    return pts


def person(body_xy: np.ndarray, size: float, score: float = 0.9) -> object:
    body = np.column_stack([body_xy, np.full(18, score)])
    hands = [np.column_stack([body_xy[w] + HAND * size, np.full(21, 0.8)]) for w in (4, 7)]
    face = np.column_stack([body_xy[0] + FACE * size, np.full(68, 0.7)])
    return kp.Person(body=body, right_hand=hands[0], left_hand=hands[1], face=face)


def driver_angles(t: int) -> np.ndarray:
    """A dance: arms swing, one leg lifted well above the other (alternating), torso and head sway."""
    ang = REST.copy()
    ang[ARMS] += 45 * np.sin(0.7 * t + np.arange(4))
    lift = t % 2 == 0
    ang[9], ang[11] = (150, 110) if lift else (95, 92)  # R thigh, R shin
    ang[10], ang[12] = (85, 88) if lift else (30, 70)  # L thigh, L shin
    ang[[7, 8]] += 4 * np.sin(0.3 * t)
    ang[[0, 13, 14, 15, 16]] += 8 * np.sin(0.5 * t)
    return ang


def reference_frame(lengths: np.ndarray = REF_LEN) -> object:
    return kp.PoseFrame(W, H, [person(fk(lengths, REST, (288, 250)), 1.0)])


def driving_frames(n: int = 12, factors: np.ndarray = FACTORS, size: float = DRIVER_SIZE) -> list:
    return [kp.PoseFrame(FW, FH, [person(fk(REF_LEN * factors * size, driver_angles(t),
                                             (360 + 15 * np.sin(t), 290 + 8 * np.cos(t))), size)])
            for t in range(n)]


def bodies(frames: list) -> np.ndarray:
    return np.array([f.people[0].body for f in frames], dtype=np.float64)


def lengths_and_angles(body: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    vec = body[:, rt.CHILD, :2] - body[:, rt.PARENT, :2]
    return np.hypot(vec[..., 0], vec[..., 1]), np.degrees(np.arctan2(vec[..., 1], vec[..., 0]))


def angle_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs((a - b + 180) % 360 - 180)


def anchor_point(body: np.ndarray, anchor: str) -> np.ndarray:
    if anchor == "neck":
        return body[:, 1, :2]
    if anchor == "hips":
        return body[:, [8, 11], :2].mean(axis=1)
    lower = np.where(body[:, 10, 1] > body[:, 13, 1], 10, 13)  # the standing foot
    return body[np.arange(len(body)), lower, :2]


# ----------------------------------------------------------------------------------------------------------------
# Known truth: bone lengths, directions, anchor
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("anchor", ["feet", "hips", "neck"])
def test_after_alignment_every_bone_gets_the_reference_length_and_keeps_the_driving_direction(anchor):
    reference = reference_frame()
    aligned, _ = align.align_frames(reference, driving_frames())
    result = rt.retarget_frames(reference, aligned, rt.RetargetOptions(anchor=anchor))
    assert abs(result.scale - 1) < 1e-6, "refitting aligned poses is the identity: global scale 1"
    before, after = bodies(aligned), bodies(result.frames)
    len_before, ang_before = lengths_and_angles(before)
    len_after, ang_after = lengths_and_angles(after)
    assert np.abs(len_before / REF_LEN - 1).max() > 0.2, "the driver's proportions really differ"
    np.testing.assert_array_less(np.abs(len_after / REF_LEN - 1), 0.01)
    np.testing.assert_array_less(angle_diff(ang_after, ang_before), 0.5)
    np.testing.assert_array_less(np.hypot(*(anchor_point(after, anchor) - anchor_point(before, anchor)).T), 1.0)
    np.testing.assert_array_equal(after[..., 2], before[..., 2])  # scores untouched
    assert all(b.source == "reference" for b in result.bones)


def test_before_alignment_bones_get_the_reference_length_over_the_fitted_global_scale():
    reference, driving = reference_frame(), driving_frames()
    result = rt.retarget_frames(reference, driving)
    fit = align.compute_fit(reference, driving)
    s = fit.a[1] * H / FH  # canvas px per driving px
    assert result.scale == pytest.approx(s, rel=1e-9) and 0.5 < s < 0.9
    len_after, ang_after = lengths_and_angles(bodies(result.frames))
    np.testing.assert_array_less(np.abs(len_after * s / REF_LEN - 1), 0.01)
    np.testing.assert_array_less(angle_diff(ang_after, lengths_and_angles(bodies(driving))[1]), 0.5)
    for frame in result.frames:  # still the driving video's canvas
        assert (frame.width, frame.height) == (FW, FH)


def test_identical_proportions_give_identical_poses():
    reference = reference_frame()
    # same proportions at another size and on another canvas; only the arms move and the figure only shifts
    # sideways, so the official fit recovers the true global scale exactly
    driving = []
    for t in range(8):
        ang = REST.copy()
        ang[ARMS] += 40 * np.sin(0.9 * t + np.arange(4))
        driving.append(kp.PoseFrame(FW, FH, [person(fk(REF_LEN * DRIVER_SIZE, ang, (340 + 9 * t, 300)), 1.25)]))
    for frames in (driving, align.align_frames(reference, driving)[0]):
        result = rt.retarget_frames(reference, frames)
        for before, after in zip(frames, result.frames, strict=True):
            for part in ("body", "left_hand", "right_hand", "face"):
                np.testing.assert_allclose(getattr(after.people[0], part), getattr(before.people[0], part),
                                           atol=2e-3)
        assert all(b.ratio == pytest.approx(1, abs=1e-6) for b in result.bones)


def test_strength_zero_is_unchanged_and_strength_interpolates():
    reference, driving = reference_frame(), driving_frames(6)
    still = rt.retarget_frames(reference, driving, rt.RetargetOptions(strength=0.0))
    assert still.frames == driving and "unchanged" in still.describe()
    full = bodies(rt.retarget_frames(reference, driving).frames)
    half = bodies(rt.retarget_frames(reference, driving, rt.RetargetOptions(strength=0.5)).frames)
    np.testing.assert_allclose(half[..., :2], (bodies(driving)[..., :2] + full[..., :2]) / 2, atol=1e-3)


def test_multipliers_scale_their_part():
    reference = reference_frame()
    aligned, _ = align.align_frames(reference, driving_frames())
    opts = rt.RetargetOptions(multipliers={"thigh": 1.2, "forearm": 0.9, "head": 1.1})
    length, _ = lengths_and_angles(bodies(rt.retarget_frames(reference, aligned, opts).frames))
    expected = REF_LEN * opts.multiplier_array()
    assert expected[9] == pytest.approx(1.2 * REF_LEN[9]) and expected[5] == pytest.approx(0.9 * REF_LEN[5])
    np.testing.assert_array_less(np.abs(length / expected - 1), 0.01)


def test_hands_and_face_follow_their_parent_joint_scaled_with_it():
    reference = reference_frame()
    aligned, _ = align.align_frames(reference, driving_frames(4))
    len_before, _ = lengths_and_angles(bodies(aligned))
    for scaled in (True, False):
        result = rt.retarget_frames(reference, aligned, rt.RetargetOptions(hands_face=scaled))
        for before, after, lengths in zip(aligned, result.frames, len_before, strict=True):
            b, a = before.people[0], after.people[0]
            for hand, wrist, bone in (("right_hand", 4, 5), ("left_hand", 7, 6)):
                k = REF_LEN[bone] / lengths[bone] if scaled else 1.0
                np.testing.assert_allclose(getattr(a, hand)[:, :2] - a.body[wrist, :2],
                                           k * (getattr(b, hand)[:, :2] - b.body[wrist, :2]), atol=2e-3)
            face_bones = [13, 14, 15, 16]
            k = REF_LEN[face_bones].sum() / lengths[face_bones].sum() if scaled else 1.0
            np.testing.assert_allclose(a.face[:, :2] - a.body[0, :2], k * (b.face[:, :2] - b.body[0, :2]), atol=2e-3)


def test_exact_lengths_versus_scaled_with_foreshortening():
    reference = reference_frame()
    driving = driving_frames(10)
    factor = np.ones(10)
    factor[[3, 6]] = 0.5  # the right forearm points at the camera in two frames: it looks half as long
    for t, f in enumerate(driving):
        body = f.people[0].body
        body[4, :2] = body[3, :2] + factor[t] * (body[4, :2] - body[3, :2])
    aligned, _ = align.align_frames(reference, driving)
    scaled, _ = lengths_and_angles(bodies(rt.retarget_frames(reference, aligned).frames))
    exact, _ = lengths_and_angles(bodies(rt.retarget_frames(
        reference, aligned, rt.RetargetOptions(lengths="exact")).frames))
    np.testing.assert_allclose(scaled[:, 5], REF_LEN[5] * factor, rtol=0.01)  # foreshortening kept
    np.testing.assert_allclose(exact[:, 5], REF_LEN[5], rtol=0.01)


# ----------------------------------------------------------------------------------------------------------------
# Partial bodies
# ----------------------------------------------------------------------------------------------------------------
def half_body_reference(knees_below_frame: bool) -> object:
    """A portrait cut at the waist: hips at the bottom edge, no knees or ankles (or knees 'detected' below the image,
    scored 0.6, as a pose model guesses them)."""
    ref = reference_frame()
    body = ref.people[0].body
    body[:, 1] += 520  # the hips land near the bottom edge (y ~ 1000)
    for part in ("left_hand", "right_hand", "face"):
        getattr(ref.people[0], part)[:, 1] += 520
    body[[9, 10, 12, 13]] = 0.0
    if knees_below_frame:
        body[9] = (260, 1150, 0.6)
        body[12] = (320, 1150, 0.6)
    return ref


@pytest.mark.parametrize("knees_below_frame", [False, True])
def test_half_body_reference_invents_no_legs(knees_below_frame):
    reference = half_body_reference(knees_below_frame)
    raw = driving_frames()
    raw[5].people[0].body[[10, 13]] = 0.0  # the driver's ankles are not found in one frame
    aligned, fit = align.align_frames(reference, raw)
    s0 = fit.a[1] * H / FH
    result = rt.retarget_frames(reference, aligned)
    out = bodies(result.frames)
    length, _ = lengths_and_angles(out)
    raw_length, _ = lengths_and_angles(bodies(raw))
    ok = np.ones_like(length, dtype=bool)
    ok[5, [11, 12]] = False
    # legs: the driving length times the fitted global scale; the rest: the reference's lengths
    np.testing.assert_allclose(length[:, LEG_BONES][ok[:, LEG_BONES]],
                               (raw_length[:, LEG_BONES] * s0)[ok[:, LEG_BONES]], rtol=0.01)
    upper = [b for b in range(17) if b not in LEG_BONES]
    np.testing.assert_array_less(np.abs(length[:, upper] / REF_LEN[upper] - 1), 0.01)
    # points not found stay not found, nothing is added
    np.testing.assert_array_equal(out[..., 2] > 0, bodies(aligned)[..., 2] > 0)
    assert not out[5, [10, 13]].any()
    text = result.describe()
    for name in ("R thigh", "L thigh", "R shin", "L shin"):
        line = next(line for line in text.splitlines() if line.startswith(name))
        assert "FALLBACK: the reference does not show it -> driving length x global scale" in line
    assert "4 bone(s) keep the driving length x global scale" in text


def test_one_side_hidden_on_the_reference_takes_the_other_side():
    reference = reference_frame()
    reference.people[0].body[4] = (reference.people[0].body[4, 0], reference.people[0].body[4, 1], 0.1)  # weak wrist
    aligned, _ = align.align_frames(reference, driving_frames())
    result = rt.retarget_frames(reference, aligned)
    length, _ = lengths_and_angles(bodies(result.frames))
    np.testing.assert_allclose(length[:, 5], REF_LEN[6], rtol=0.01)  # R forearm = the reference's L forearm
    assert result.bones[5].source.startswith("mirrored from L forearm")


def test_a_driver_leaving_the_frame_neither_explodes_nor_invents_limbs():
    reference = reference_frame()
    raw = driving_frames(16)
    for t in (4, 5, 6):  # walks out at the bottom: legs not found, then garbage at the border with low scores
        raw[t].people[0].body[[9, 10, 12, 13]] = 0.0
    for t in (7, 8):
        body = raw[t].people[0].body
        body[[10, 13], 1] = FH - 1
        body[[10, 13], 2] = 0.2
    for t in (*range(4), *range(7, 16)):  # one shin is only ever seen as a 3 px stub: a misdetection, not anatomy
        body = raw[t].people[0].body
        body[13, :2] = body[12, :2] + (0, 3)
    aligned, _ = align.align_frames(reference, raw)
    for anchor in rt.ANCHOR_CHOICES:
        result = rt.retarget_frames(reference, aligned, rt.RetargetOptions(anchor=anchor))
        before, after = bodies(aligned), bodies(result.frames)
        np.testing.assert_array_equal(after[..., 2] > 0, before[..., 2] > 0)
        assert np.isfinite(after).all()
        moved = np.hypot(*(after[..., :2] - before[..., :2]).transpose(2, 0, 1))
        assert moved.max() < 0.3 * H, "a point moved by more than 30 % of the frame height"
        assert "L shin" in result.describe() and "implausible" in result.bones[12].source
    # feet anchor: frames without reliable ankles fall back to the hips, carrying the hip-to-feet offset
    result = rt.retarget_frames(reference, aligned, rt.RetargetOptions(anchor="feet"))
    assert result.anchor_use["feet"] == 11 and result.anchor_use["hips (fallback)"] == 5
    shift = (bodies(result.frames) - bodies(aligned))[:, 1, :2]  # the neck's displacement per frame
    assert np.abs(np.diff(shift[2:10], axis=0)).max() < 0.2 * H


def test_a_missing_anchor_falls_back_without_a_jump():
    reference = reference_frame()
    short_legs = np.where(np.isin(np.arange(17), LEG_BONES), 0.75, 1.0)
    still = [kp.PoseFrame(FW, FH, [person(fk(REF_LEN * short_legs * DRIVER_SIZE, REST, (360, 290)), 1.25)])
             for _ in range(9)]
    for t in (3, 4, 5):
        still[t].people[0].body[[10, 13]] = 0.0  # the feet leave the picture for three frames
    aligned, _ = align.align_frames(reference, still)
    result = rt.retarget_frames(reference, aligned)  # anchor feet
    assert result.anchor_use["feet"] == 6 and result.anchor_use["hips (fallback)"] == 3
    out = bodies(result.frames)
    lift = out[:, 1, 1] - bodies(aligned)[:, 1, 1]
    assert abs(lift[0]) > 20, "the longer reference legs lift the body (the feet stay put)"
    np.testing.assert_allclose(out[:, 1, :2], np.broadcast_to(out[0, 1, :2], (9, 2)), atol=0.5)  # no jump


def test_missing_and_unreliable_joints_are_bridged():
    reference = reference_frame()
    aligned, _ = align.align_frames(reference, driving_frames(6))
    aligned[2].people[0].body[3] = 0.0  # R elbow not found
    aligned[3].people[0].body[1] = 0.0  # neck not found (weak shoulders are stored like this)
    aligned[3].people[0].body[[2, 5], 2] = 0.25
    result = rt.retarget_frames(reference, aligned, rt.RetargetOptions(anchor="hips"))
    out = bodies(result.frames)
    assert not out[2, 3].any() and not out[3, 1].any()
    # the wrist hangs on the shoulder with the mean ratio of upper arm and forearm
    drv_len, _ = lengths_and_angles(bodies(align.align_frames(reference, driving_frames(6))[0]))
    k = (REF_LEN[3] + REF_LEN[5]) / (drv_len[2, 3] + drv_len[2, 5])
    before = bodies(aligned)[2]
    np.testing.assert_allclose(out[2, 4, :2] - out[2, 2, :2], k * (before[4, :2] - before[2, :2]), rtol=0.03)
    # without a neck the hips are roots: the legs still get the reference lengths, the hips stay put
    length, _ = lengths_and_angles(out)
    np.testing.assert_allclose(length[3, LEG_BONES], REF_LEN[LEG_BONES], rtol=0.01)
    np.testing.assert_allclose(out[3, [8, 11], :2], bodies(aligned)[3, [8, 11], :2], atol=1e-3)


def test_every_person_of_a_multi_person_clip_is_retargeted():
    reference = reference_frame()
    raw = [kp.PoseFrame(FW, FH, [person(fk(REF_LEN * FACTORS * f, driver_angles(t), (360 + dx, 300)), f)
                                 for dx, f in ((-90, 1.0), (80, 0.9))]) for t in range(8)]
    aligned, _ = align.align_frames(reference, raw, align.AlignOptions(fit_frames=align.FIT_FRAME_CHOICES[1]))
    result = rt.retarget_frames(reference, aligned)
    assert "no driving frame has exactly one person" in result.describe()
    assert "each list position is measured on its own" in result.describe()
    assert abs(result.scale - 1) < 1e-6  # the same fit as the alignment's: the identity
    for j in range(2):
        length, _ = lengths_and_angles(np.array([f.people[j].body for f in result.frames], dtype=np.float64))
        np.testing.assert_array_less(np.abs(length / REF_LEN - 1), 0.01)


def test_no_reference_person_or_no_driving_person():
    driving = driving_frames(3)
    result = rt.retarget_frames(kp.PoseFrame(W, H, []), driving)
    assert "NO RETARGET" in result.describe() and result.frames == driving
    empty = [kp.PoseFrame(FW, FH, [])]
    assert rt.retarget_frames(reference_frame(), empty).frames == empty
    with pytest.raises(ValueError, match="no driving pose frames"):
        rt.retarget_frames(reference_frame(), [])


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"strength": 1.5}, "strength must be between 0 and 1"),
    ({"anchor": "knees"}, "choose one of feet, hips, neck"),
    ({"multipliers": {"neck": 1.0}}, "unknown body part"),
    ({"multipliers": {"thigh": 0.0}}, "thigh multiplier must be a positive number"),
    ({"lengths": "fixed"}, "bone lengths 'fixed'"),
])
def test_bad_options_say_what_is_wrong(kwargs, message):
    with pytest.raises(ValueError, match=message):
        rt.RetargetOptions(**kwargs)


# ----------------------------------------------------------------------------------------------------------------
# The node in ComfyUI
# ----------------------------------------------------------------------------------------------------------------
def _pose_value(frames: list) -> dict:
    return {"__value__": kp.to_pose_keypoint(frames)}


def test_node_retargets_in_a_comfyui_graph():
    reference = reference_frame()
    aligned, _ = align.align_frames(reference, driving_frames(3))
    inputs = {"reference": _pose_value([reference]), "driving": _pose_value(aligned), "strength": 1.0,
              "anchor": "hips", "torso": 1.0, "shoulders": 1.0, "upper_arm": 1.0, "forearm": 1.0, "thigh": 1.1,
              "shin": 1.0, "head": 1.0, "retarget_hands_face": True, "bone_lengths": "scaled (keeps foreshortening)"}
    graph = {
        "1": {"class_type": "ControlNeXtRetargetPoses", "inputs": inputs},
        "2": {"class_type": "ControlNeXtDrawPoses",
              "inputs": {"poses": ["1", 0], "width": W, "height": H, "include_body": True, "include_hand": True,
                         "include_face": True}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
        "4": {"class_type": "PreviewAny", "inputs": {"source": ["1", 1]}},
    }
    run = run_graph(graph)
    assert run.success, run.error()
    text = run.outputs["1"]["text"][0]
    assert "global scale s = 1.0000" in text and "anchor per person-frame: hips 3" in text
    assert "(x1.10 thigh)" in text

    direct = retarget_node.ControlNeXtRetargetPoses.execute(**{k: v["__value__"] if isinstance(v, dict) else v
                                                              for k, v in inputs.items()})
    frames = kp.from_pose_keypoint(direct.result[0])
    length, _ = lengths_and_angles(bodies(frames))
    expected = REF_LEN * np.where(np.isin(np.arange(17), [9, 10]), 1.1, 1.0)
    np.testing.assert_array_less(np.abs(length / expected - 1), 0.01)
    assert direct.result[1] == text
    # strength 0 through the node: the input, unchanged
    still = retarget_node.ControlNeXtRetargetPoses.execute(kp.to_pose_keypoint([reference]),
                                                           kp.to_pose_keypoint(aligned), strength=0.0)
    assert still.result[0] == kp.to_pose_keypoint(aligned)


def test_node_rejects_an_empty_reference_with_a_clear_message():
    graph = {"1": {"class_type": "ControlNeXtRetargetPoses",
                   "inputs": {"reference": {"__value__": []}, "driving": _pose_value(driving_frames(1)),
                              "strength": 1.0, "anchor": "feet", "torso": 1.0, "shoulders": 1.0, "upper_arm": 1.0,
                              "forearm": 1.0, "thigh": 1.0, "shin": 1.0, "head": 1.0, "retarget_hands_face": True,
                              "bone_lengths": "exact"}},
             "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 1]}}}
    run = run_graph(graph)
    assert not run.success and "the reference POSE_KEYPOINT is empty" in run.error()["exception_message"]


def test_a_collapsed_skeleton_stays_finite():
    """Every keypoint on one spot (a detection that collapsed, e.g. on a blank frame): no bone has a length, so
    nothing can be scaled; the poses must stay finite (they used to become NaN and crash the drawing)."""
    def collapsed(x: float, y: float) -> object:
        return kp.Person(body=np.column_stack([np.full((18, 2), (x, y)), np.full(18, 0.9)]))

    reference = kp.PoseFrame(W, H, [collapsed(300, 400)])
    driving = [kp.PoseFrame(FW, FH, [collapsed(350, 500)]) for _ in range(3)]
    result = rt.retarget_frames(reference, driving, rt.RetargetOptions())
    bodies = np.array([p.body for f in result.frames for p in f.people])
    assert np.isfinite(bodies).all()
    assert np.array_equal(bodies[..., :2], np.full((3, 18, 2), (350, 500)))
