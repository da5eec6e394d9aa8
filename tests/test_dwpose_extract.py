"""DWPose extraction with fake models that have the real I/O: ONNX (onnxruntime) and TorchScript backends, the
POSE_KEYPOINT layout, the failure paths and a graph through ComfyUI's executor."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import COMFY, ROOT, pack_import, run_graph
from tiny_pack import fake_dwpose as fd

kp = pack_import("dwpose.keypoints")
pipeline = pack_import("dwpose.pipeline")
backends = pack_import("dwpose.backends")
detector = pack_import("dwpose.detector")
dwpose_nodes = pack_import("nodes.dwpose_nodes")


@pytest.fixture(scope="module")
def fakes(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("fake_dwpose")
    paths = {k: str(d / k) for k in ("blob.onnx", "pose_dyn.onnx", "pose_1.onnx", "blob.torchscript.pt",
                                     "pose_bs5.torchscript.pt")}
    fd.blob_det_onnx(paths["blob.onnx"])
    fd.marker_pose_onnx(paths["pose_dyn.onnx"], "batch")
    fd.marker_pose_onnx(paths["pose_1.onnx"], 1)
    fd.blob_det_torchscript(paths["blob.torchscript.pt"])
    fd.marker_pose_torchscript(paths["pose_bs5.torchscript.pt"])
    return paths


def scene(h: int, w: int, people: list[tuple[float, float]]) -> tuple[np.ndarray, list[dict]]:
    """Black RGB image; per person a red nose at (x, y), green left shoulder and blue right shoulder below it."""
    img = np.zeros((h, w, 3), np.uint8)
    truth = []
    for x, y in people:
        t = {"nose": (x, y), "lsho": (x + 41.3, y + 63.7), "rsho": (x - 38.6, y + 66.2)}
        fd.draw_marker(img, *t["nose"], fd.R)
        fd.draw_marker(img, *t["lsho"], fd.G)
        fd.draw_marker(img, *t["rsho"], fd.B)
        truth.append(t)
    return img, truth


def check_person(p, t: dict, tol: float = 1.5) -> None:
    peak = fd.PEAK_SCORE
    np.testing.assert_allclose(p.body[0, :2], t["nose"], atol=tol)
    np.testing.assert_allclose(p.body[5, :2], t["lsho"], atol=tol)  # OpenPose 5 = L-shoulder = COCO 5
    np.testing.assert_allclose(p.body[2, :2], t["rsho"], atol=tol)  # OpenPose 2 = R-shoulder = COCO 6
    np.testing.assert_allclose(p.body[1, :2], (np.add(t["lsho"], t["rsho"])) / 2, atol=tol)  # neck
    np.testing.assert_allclose(p.body[[0, 2, 5], 2], peak, rtol=0.03)  # the model's own score
    assert p.body[1, 2] == 1.0
    # never found (gain 0): exactly [0, 0, 0]
    assert not p.body[[3, 4, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17]].any()
    np.testing.assert_allclose(p.face[:, :2], np.tile(t["nose"], (68, 1)), atol=tol)
    np.testing.assert_allclose(p.face[:, 2], 0.2 * peak, rtol=0.03)
    np.testing.assert_allclose(p.left_hand[:, :2], np.tile(t["lsho"], (21, 1)), atol=tol)
    np.testing.assert_allclose(p.left_hand[:, 2], 1.3 * peak, rtol=0.03)  # above 1, kept
    np.testing.assert_allclose(p.right_hand[:, :2], np.tile(t["rsho"], (21, 1)), atol=tol)


@pytest.mark.parametrize("pose", ["pose_dyn.onnx", "pose_1.onnx"])
@pytest.mark.parametrize("hw", [(1022, 576), (576, 1022)])
def test_onnx_one_person_portrait_and_landscape(fakes, pose, hw):
    h, w = hw
    img, truth = scene(h, w, [(w * 0.37 + 0.3, h * 0.41 + 0.6)])
    model = pipeline.DWPose(fakes["blob.onnx"], fakes[pose])
    assert model.pose_model.batch == (1 if pose == "pose_1.onnx" else None)
    frames = model.detect(img[None])
    assert (frames[0].width, frames[0].height) == (w, h)
    assert len(frames[0].people) == 1
    p = frames[0].people[0]
    check_person(p, truth[0])
    # the BlobDet box is the bright (>200) area, seen through the letterbox
    ys, xs = np.nonzero(img.max(-1) > 200)
    r = min(640 / h, 640 / w)
    np.testing.assert_allclose(p.box, (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1), atol=1.5 / r + 0.5)
    assert p.box_score == pytest.approx(0.9)
    assert "onnxruntime CPUExecutionProvider" in model.describe()


def test_bgr_feed_follows_the_wrong_markers(fakes):
    img, truth = scene(700, 700, [(321.4, 250.2)])
    model = pipeline.DWPose(fakes["blob.onnx"], fakes["pose_dyn.onnx"])
    p = model.detect(img[..., ::-1].copy()[None])[0].people[0]  # red and blue swapped
    assert np.abs(p.body[0, :2] - truth[0]["nose"]).max() > 20
    check_person(model.detect(img[None])[0].people[0], truth[0])


def test_blank_frame_has_no_people_unless_whole_image_fallback(fakes):
    blank = np.zeros((2, 300, 500, 3), np.uint8)
    model = pipeline.DWPose(fakes["blob.onnx"], fakes["pose_dyn.onnx"])
    assert [f.people for f in model.detect(blank)] == [[], []]
    fallback = pipeline.DWPose(fakes["blob.onnx"], fakes["pose_dyn.onnx"], whole_image_fallback=True)
    people = [f.people for f in fallback.detect(blank)]
    assert [len(p) for p in people] == [1, 1]
    assert people[0][0].box == (0, 0, 500, 300) and people[0][0].box_score is None


@pytest.mark.parametrize("hw", [(1022, 576), (576, 1022)])
def test_onnx_two_people_with_const_detector(fakes, tmp_path, hw):
    h, w = hw
    r = min(640 / h, 640 / w)
    pos = [(w * 0.25 + 0.4, h * 0.3), (w * 0.72, h * 0.62 + 0.7)]
    img, truth = scene(h, w, pos)
    boxes = [(x - 60, y - 25, x + 60, y + 85) for x, y in pos]  # image pixels
    lb = [tuple(v * r for v in b) for b in boxes]
    # distractors: a class-1 box, a person below 0.3, a lower-scoring duplicate (IoU > 0.45) of person 0
    d = 0.1 * (lb[0][2] - lb[0][0])
    dup = (lb[0][0] + d, lb[0][1] + 3, lb[0][2] + d, lb[0][3] + 3)
    rows = fd.const_det_rows(lb + [(5, 5, 60, 60), (400 * r, 10, 400 * r + 50, 60), dup],
                             [0.6, 0.95, 0.99, 0.25, 0.5], classes=[0, 0, 1, 0, 0])
    fd.const_det_onnx(str(tmp_path / "const.onnx"), rows)
    model = pipeline.DWPose(str(tmp_path / "const.onnx"), fakes["pose_1.onnx"])
    people = model.detect(img[None])[0].people
    assert [round(p.box_score, 4) for p in people] == [0.95, 0.6]  # sorted by score, distractors gone
    for p, b, t in zip(people, boxes[::-1], truth[::-1], strict=True):
        np.testing.assert_allclose(p.box, b, atol=1e-3)
        check_person(p, t)


@pytest.mark.parametrize("n_frames", [1, 5, 7])
def test_torchscript_batch5_pads_and_trims(fakes, n_frames):
    frames_in, truths = [], []
    for i in range(n_frames):
        img, truth = scene(480, 854, [(300.3 + 23.1 * i, 170.2 + 7.7 * i)])
        frames_in.append(img)
        truths.append(truth[0])
    model = pipeline.DWPose(fakes["blob.torchscript.pt"], fakes["pose_bs5.torchscript.pt"])
    assert model.pose_model.batch == 5
    out = model.detect(np.stack(frames_in))
    assert [len(f.people) for f in out] == [1] * n_frames
    for f, t in zip(out, truths, strict=True):
        check_person(f.people[0], t)
    assert "torchscript cpu float32" in model.describe()
    assert model.pose_model.device.type == "cpu"  # released after the run


def test_onnx_and_torchscript_agree(fakes):
    img, _ = scene(600, 400, [(200.2, 200.9)])
    a = pipeline.DWPose(fakes["blob.onnx"], fakes["pose_dyn.onnx"]).detect(img[None])[0].people[0]
    b = pipeline.DWPose(fakes["blob.torchscript.pt"], fakes["pose_bs5.torchscript.pt"]).detect(img[None])[0].people[0]
    np.testing.assert_allclose(a.all_points(), b.all_points(), atol=1e-3)


def test_detector_decode_matches_spec_anchor_example():
    rows = fd.const_det_rows([(100.5, 200.25, 260.0, 520.75)], [0.8])
    boxes, scores = detector.select_people(*detector.decode(rows, 0.5))
    np.testing.assert_allclose(boxes, [[201, 400.5, 520, 1041.5]], atol=1e-3)
    np.testing.assert_allclose(scores, [0.8])


def test_pose_keypoint_round_trip_and_layout(fakes):
    img, _ = scene(500, 400, [(200.2, 150.9)])
    frames = pipeline.DWPose(fakes["blob.onnx"], fakes["pose_dyn.onnx"]).detect(img[None])
    data = kp.to_pose_keypoint(frames)
    json.dumps(data)  # plain JSON types only
    person = data[0]["people"][0]
    assert (data[0]["canvas_width"], data[0]["canvas_height"]) == (400, 500)
    assert [len(person[k]) for k in ("pose_keypoints_2d", "face_keypoints_2d", "hand_left_keypoints_2d",
                                     "hand_right_keypoints_2d")] == [54, 204, 63, 63]
    back = kp.from_pose_keypoint(data)
    np.testing.assert_allclose(back[0].people[0].all_points(), frames[0].people[0].all_points(), atol=1e-5)
    # normalised coordinates (and a single dict, and controlnet_aux's 70-point faces and null parts)
    norm = json.loads(json.dumps(data[0]))
    p = norm["people"][0]
    for key in ("pose_keypoints_2d", "face_keypoints_2d", "hand_left_keypoints_2d", "hand_right_keypoints_2d"):
        v = np.array(p[key]).reshape(-1, 3)
        v[:, 0] /= 400
        v[:, 1] /= 500
        p[key] = v.reshape(-1).tolist()
    p["face_keypoints_2d"] += [0.5, 0.5, 1.0, 0.5, 0.5, 1.0]
    p["hand_right_keypoints_2d"] = None
    p.pop("box")
    back = kp.from_pose_keypoint(norm)[0].people[0]
    np.testing.assert_allclose(back.body, frames[0].people[0].body, atol=1e-3)
    assert not back.right_hand.any()


def test_normalised_frames_with_a_point_off_the_picture_are_still_normalised():
    """A hand leaving the picture (x = 1.03) must not flip that frame to pixels (the skeleton would collapse)."""
    body = np.zeros((18, 3))
    body[:, :2], body[:, 2] = np.linspace(0.1, 0.9, 36).reshape(18, 2), 1.0
    frames = []
    for off in (0.9, 1.03):
        b = body.copy()
        b[4, 0] = off  # the right wrist
        frames.append({"people": [{"pose_keypoints_2d": b.reshape(-1).tolist()}], "canvas_width": 64,
                       "canvas_height": 128})
    a, b = (f.people[0].body for f in kp.from_pose_keypoint(frames))
    np.testing.assert_allclose(a[0, :2], body[0, :2] * [64, 128], rtol=1e-5)
    np.testing.assert_allclose(b[0, :2], a[0, :2], rtol=1e-5)
    assert b[4, 0] == pytest.approx(1.03 * 64)


@pytest.mark.parametrize("bad, message", [
    ("nope", "list of dicts"),
    ([{"people": []}], "canvas_width"),
    ([{"people": [{"pose_keypoints_2d": [1, 2]}], "canvas_width": 10, "canvas_height": 10}], "multiple of 3"),
    ([{"people": [{"pose_keypoints_2d": [1, 2, 3] * 17}], "canvas_width": 10, "canvas_height": 10}], "18 points"),
    ([{"people": [], "canvas_width": 0, "canvas_height": 10}], "positive"),
    ([{"people": [{"box": 5}], "canvas_width": 10, "canvas_height": 10}], "'box' must be .x0, y0, x1, y1."),
    ([{"people": [{"box": [0, 0, 1, "a"]}], "canvas_width": 10, "canvas_height": 10}], "four numbers"),
    ([{"people": [{"box_score": "high"}], "canvas_width": 10, "canvas_height": 10}], "'box_score' must be a number"),
    ([{"people": [{"pose_keypoints_2d": [1e12, 2, 1] * 18}], "canvas_width": 10, "canvas_height": 10}],
     "frame 0 person 0 pose_keypoints_2d: a coordinate lies beyond"),
])
def test_pose_keypoint_malformed(bad, message):
    with pytest.raises(ValueError, match=message):
        kp.from_pose_keypoint(bad)


def test_missing_file_names_file_folder_and_source():
    with pytest.raises(FileNotFoundError) as e:
        dwpose_nodes.resolve_model_file("dw-ll_ucoco_384_bs5.torchscript.pt")
    text = str(e.value)
    assert "dw-ll_ucoco_384_bs5.torchscript.pt" in text and os.path.join("models", "dwpose") in text
    assert "huggingface.co/hr16/DWPose-TorchScript-BatchSize5" in text


def test_wrong_model_files(fakes, tmp_path):
    with pytest.raises(backends.ModelFileError, match="bbox detector"):
        pipeline.DWPose(fakes["pose_dyn.onnx"], fakes["pose_dyn.onnx"])
    with pytest.raises(backends.ModelFileError, match="pose estimator"):
        pipeline.DWPose(fakes["blob.onnx"], fakes["blob.onnx"])
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model" * 10)
    with pytest.raises(backends.ModelFileError, match="junk.onnx"):
        pipeline.DWPose(str(junk), fakes["pose_dyn.onnx"])
    junk_pt = tmp_path / "junk.torchscript.pt"
    junk_pt.write_bytes(b"not a model" * 10)
    with pytest.raises(backends.ModelFileError, match="TorchScript"):
        pipeline.DWPose(fakes["blob.onnx"], str(junk_pt))
    # a TorchScript detector given as pose model: its output is caught at run time
    swapped = pipeline.DWPose(fakes["blob.torchscript.pt"], fakes["blob.torchscript.pt"])
    img, _ = scene(300, 300, [(150.5, 100.5)])
    with pytest.raises(backends.ModelFileError, match="pose estimator"):
        swapped.detect(img[None])


def test_without_onnxruntime_onnx_choice_says_what_to_install(fakes, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent("""
        import sys
        class _Block:
            def find_spec(self, name, path=None, target=None):
                if name == "onnxruntime" or name.startswith("onnxruntime."):
                    raise ImportError("onnxruntime hidden for this test")
                return None
        sys.meta_path.insert(0, _Block())
    """))
    script = textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{str(COMFY)!r}, {str(ROOT)!r}]
        import comfy.options
        comfy.options.enable_args_parsing()
        sys.argv = ["main.py", "--cpu"]
        import comfy.cli_args  # parses --cpu before comfy.model_management looks for CUDA
        try:
            import onnxruntime
            raise SystemExit("onnxruntime was importable")
        except ImportError:
            pass
        from dwpose import pipeline, keypoints  # nothing imports onnxruntime at import time
        from dwpose.backends import ModelFileError
        try:
            pipeline.DWPose({fakes["blob.onnx"]!r}, {fakes["pose_dyn.onnx"]!r})
            raise SystemExit("no error")
        except ModelFileError as e:
            print("ERROR:", e)
        m = pipeline.DWPose({fakes["blob.torchscript.pt"]!r}, {fakes["pose_bs5.torchscript.pt"]!r})
        print("TS:", m.describe())
    """)
    env = dict(os.environ, PYTHONPATH=str(site))
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120,
                         cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "pip install onnxruntime" in res.stdout and "blob.onnx" in res.stdout
    assert "TS: DWPose: bbox blob.torchscript.pt (torchscript" in res.stdout


def test_graph_loader_extract_preview(fakes, comfy_base, session_model_file):
    shutil.copy(fakes["blob.onnx"], session_model_file("dwpose", "yolox_l.onnx"))
    shutil.copy(fakes["pose_dyn.onnx"], session_model_file("dwpose", "dw-ll_ucoco_384.onnx"))
    img, truth = scene(400, 300, [(150.3, 120.8)])
    cv2.imwrite(str(comfy_base / "input" / "dwpose_scene.png"), img[..., ::-1])
    graph = {
        "1": {"class_type": "ControlNeXtDWPoseLoader",
              "inputs": {"bbox_detector": "yolox_l.onnx", "pose_estimator": "dw-ll_ucoco_384.onnx",
                         "onnx_provider": "auto", "whole_image_fallback": False}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "dwpose_scene.png"}},
        "3": {"class_type": "ControlNeXtExtractPoses", "inputs": {"dwpose": ["1", 0], "images": ["2", 0]}},
        "4": {"class_type": "PreviewAny", "inputs": {"source": ["3", 0]}},
        "5": {"class_type": "PreviewAny", "inputs": {"source": ["3", 1]}},
    }
    run = run_graph(graph)
    assert run.success, run.error()
    data = json.loads(run.outputs["4"]["text"][0])
    frame = kp.from_pose_keypoint(data)[0]
    assert (frame.width, frame.height) == (300, 400)
    check_person(frame.people[0], truth[0])
    assert "CPUExecutionProvider" in run.outputs["5"]["text"][0]

    graph["1"]["inputs"]["pose_estimator"] = "dw-ll_ucoco_384_bs5.torchscript.pt"  # listed, but not on disk
    run = run_graph(graph)
    assert not run.success
    message = run.error()["exception_message"]
    assert "dw-ll_ucoco_384_bs5.torchscript.pt" in message and str(Path("models") / "dwpose") in message
