"""ControlNeXtSideBySide and ControlNeXtPoseOverlay: pixels, frame-count handling, errors, and a graph run."""

from __future__ import annotations

import pytest
import torch

from conftest import pack_import, run_graph

overlay = pack_import("dwpose.overlay")
preview_nodes = pack_import("nodes.preview_nodes")


def test_side_by_side_pixels_and_resize():
    left = torch.zeros(2, 32, 16, 3)
    left[..., 0] = 1.0  # red poses, half the height of the right
    right = torch.full((2, 64, 48, 3), 0.5)
    out = overlay.side_by_side(left, right, gap=4)
    assert out.shape == (2, 64, 32 + 4 + 48, 3)
    assert torch.allclose(out[:, :, :32], torch.tensor([1.0, 0.0, 0.0]).expand(2, 64, 32, 3))
    assert out[:, :, 32:36].abs().max() == 0
    assert torch.equal(out[:, :, 36:], right)


def test_side_by_side_frame_mismatch():
    left = torch.arange(5, dtype=torch.float32).view(5, 1, 1, 1).expand(5, 8, 8, 3)
    right = torch.zeros(3, 8, 8, 3)
    assert overlay.side_by_side(left, right, "shortest").shape[0] == 3
    held = overlay.side_by_side(left, right, "repeat last")
    assert held.shape[0] == 5 and torch.equal(held[4, :, 8:], right[2])
    with pytest.raises(ValueError, match="5 frames and the right 3"):
        overlay.side_by_side(left, right, "error")


def test_side_by_side_refuses_a_strip_that_would_be_huge():
    with pytest.raises(ValueError, match="4000x1 px: resized to the right's height .64 px. they would be 256000 px"):
        overlay.side_by_side(torch.zeros(1, 1, 4000, 3), torch.zeros(1, 64, 36, 3))


def test_overlay_skeleton_only_keeps_the_photo_off_the_skeleton():
    ref = torch.full((1, 16, 16, 3), 0.25)
    poses = torch.zeros(3, 16, 16, 3)
    poses[:, 4, 4] = torch.tensor([0.0, 1.0, 0.0])
    out = overlay.overlay_poses(ref, poses, opacity=0.5)
    assert out.shape == (3, 16, 16, 3)
    assert torch.allclose(out[:, 4, 4], torch.tensor([0.125, 0.625, 0.125]))
    mask = torch.ones(16, 16, dtype=torch.bool)
    mask[4, 4] = False
    assert torch.equal(out[:, mask], ref.expand(3, 16, 16, 3)[:, mask])
    blended = overlay.overlay_poses(ref, poses, opacity=0.5, mode="blend")
    assert torch.allclose(blended[0, 0, 0], torch.full((3,), 0.125))


def test_overlay_errors_and_resize():
    with pytest.raises(ValueError, match="one reference"):
        overlay.overlay_poses(torch.zeros(2, 8, 8, 3), torch.zeros(3, 8, 8, 3))
    with pytest.raises(ValueError, match="opacity"):
        overlay.overlay_poses(torch.zeros(1, 8, 8, 3), torch.zeros(1, 8, 8, 3), opacity=2.0)
    assert overlay.overlay_poses(torch.zeros(1, 16, 8, 3), torch.ones(2, 32, 16, 3)).shape == (2, 16, 8, 3)
    with pytest.raises(ValueError, match="needs pose_images or poses"):
        preview_nodes.ControlNeXtPoseOverlay.execute(torch.zeros(1, 8, 8, 3))


def test_overlay_from_pose_keypoint_draws_on_the_reference():
    person = {"pose_keypoints_2d": [0.0] * 54}
    person["pose_keypoints_2d"][3:6] = [32.0, 20.0, 1.0]  # neck
    person["pose_keypoints_2d"][0:3] = [32.0, 8.0, 1.0]  # nose: the neck->nose limb is drawn
    person["pose_keypoints_2d"][6:9] = [24.0, 20.0, 1.0]  # shoulders (some readers derive the neck from them)
    person["pose_keypoints_2d"][15:18] = [40.0, 20.0, 1.0]
    poses = [{"people": [person], "canvas_width": 64, "canvas_height": 64}]
    ref = torch.zeros(1, 256, 256, 3)  # drawn on a 2160 px canvas then resized: strokes vanish at 64 px
    out = preview_nodes.ControlNeXtPoseOverlay.execute(ref, poses=poses, opacity=1.0).result[0]
    assert out.shape == (1, 256, 256, 3)
    assert out[0, :96].max() > 0.1 and out[0, 160:].max() == 0


def test_overlay_compare_poses_are_white_under_the_poses():
    ref = torch.full((1, 16, 16, 3), 0.25)
    poses = torch.zeros(2, 16, 16, 3)
    poses[:, 4, 4] = torch.tensor([0.0, 1.0, 0.0])  # the processed skeleton
    compare = torch.zeros(2, 16, 16, 3)
    compare[:, 4, 4] = torch.tensor([0.0, 0.0, 1.0])  # the raw skeleton: same place ...
    compare[:, 9, 9] = torch.tensor([0.6, 0.0, 0.0])  # ... and where the processing moved a limb (dimmed limb colour)
    out = overlay.overlay_poses(ref, poses, opacity=0.5, compare=compare)
    plain = overlay.overlay_poses(ref, poses, opacity=0.5)
    assert torch.equal(overlay.overlay_poses(ref, poses, opacity=0.5, compare=None), plain)
    # a 0.6 limb is solid white (gain 2, capped at 1) at the given opacity: 0.25 -> 0.625
    assert torch.allclose(out[:, 9, 9], torch.full((2, 3), 0.625))
    # the poses go on top of the white: green over (0.625 grey)
    assert torch.allclose(out[:, 4, 4], torch.tensor([0.3125, 0.8125, 0.3125]))
    untouched = torch.ones(16, 16, dtype=torch.bool)
    untouched[4, 4] = untouched[9, 9] = False
    assert torch.equal(out[:, untouched], plain[:, untouched])
    with pytest.raises(ValueError, match="3 compared pose frames for 2 pose frames"):
        overlay.overlay_poses(ref, poses, compare=torch.zeros(3, 16, 16, 3))


def test_overlay_node_draws_compare_poses_from_keypoints():
    person = {"pose_keypoints_2d": [0.0] * 54}
    person["pose_keypoints_2d"][0:6] = [32.0, 8.0, 1.0, 32.0, 20.0, 1.0]  # nose and neck: one limb
    moved = {"pose_keypoints_2d": [v + (8.0 if i % 3 == 0 and v else 0.0) for i, v in
                                   enumerate(person["pose_keypoints_2d"])]}  # 8 px to the right
    poses = [{"people": [person], "canvas_width": 64, "canvas_height": 64}]
    raw = [{"people": [moved], "canvas_width": 64, "canvas_height": 64}]
    ref = torch.zeros(1, 256, 256, 3)
    out = preview_nodes.ControlNeXtPoseOverlay.execute(ref, poses=poses, opacity=1.0, compare_poses=raw).result[0]
    grey = out[0].max(dim=-1).values - out[0].min(dim=-1).values < 0.02  # white / grey pixels
    bright = out[0].max(dim=-1).values > 0.5
    assert (grey & bright)[:, 150:175].any()  # the raw limb, white, at x = 40 / 64 * 256 = 160 px
    assert not (grey & bright)[:, 110:145].any() and out[0, :, 110:145].max() > 0.3  # the processed one, colour
    with pytest.raises(ValueError, match="the compare_poses input is empty"):
        preview_nodes.ControlNeXtPoseOverlay.execute(ref, poses=poses, compare_poses=[])


def test_nodes_in_a_graph():
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 16, "batch_size": 3, "color": 0xFF0000}},
        "2": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 2, "color": 0x00FF00}},
        "3": {"class_type": "ControlNeXtSideBySide",
              "inputs": {"left": ["1", 0], "right": ["2", 0], "frame_mismatch": "shortest", "gap": 0}},
        "4": {"class_type": "ControlNeXtPoseOverlay",
              "inputs": {"reference": ["2", 0], "pose_images": ["2", 0], "opacity": 0.5, "mode": "blend"}},
        "5": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
        "6": {"class_type": "PreviewImage", "inputs": {"images": ["4", 0]}},
    }
    run = run_graph(graph)
    assert run.success, run.error()
    assert len(run.outputs["5"]["images"]) == 2 and len(run.outputs["6"]["images"]) == 2
