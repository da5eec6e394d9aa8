"""ControlNeXtDrivingFrames: the official frame sampling (every stride-th frame, fps // stride) on real video files,
phone videos turned upright by their display rotation, and clear errors."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from comfy_api.v0_0_2 import InputImpl, Types
from PIL import Image

from conftest import pack_import, run_graph

video_frames = pack_import("controlnext.video_frames")
video_nodes = pack_import("nodes.video_nodes")

H, W = 64, 32  # upright (portrait) frame size


def upright_frame(i: int) -> np.ndarray:
    """Frame i: grey level 10 + 20 i, with a white square in the top-left corner (to see the orientation)."""
    img = np.full((H, W, 3), 10 + 20 * i, np.uint8)
    img[4:12, 4:12] = 255
    return img


def write_video(path: Path, frames: list[np.ndarray], fps: int = 29, rotation: int = 0) -> Path:
    """Near-lossless H.264 with an optional display rotation (degrees counter-clockwise, PyAV/FFmpeg convention)."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv444p"
        stream.options = {"crf": "0"}
        if rotation:
            stream.set_display_rotation(rotation)
        for img in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def grey_levels(images: torch.Tensor) -> list[int]:
    return [round(float(img[32:, :, :].mean()) * 255) for img in images]  # the marker-free bottom half


def test_official_sampling_of_frames_and_fps(tmp_path):
    path = write_video(tmp_path / "dance.mp4", [upright_frame(i) for i in range(9)], fps=29)
    frames, fps = video_frames.read_frames(str(path), stride=2)
    assert frames.shape == (5, H, W, 3) and frames.dtype == torch.float32
    assert grey_levels(frames) == pytest.approx([10, 50, 90, 130, 170], abs=2)
    assert video_frames.output_fps(fps, 2) == 14.0  # official: int(29 // 2)
    assert video_frames.output_fps(7.0, 8) == 1.0
    frames, _ = video_frames.read_frames(str(path), stride=2, start_frame=1, max_frames=2)
    assert grey_levels(frames) == pytest.approx([30, 70], abs=2)
    every, _ = video_frames.read_frames(str(path), stride=1)
    assert every.shape[0] == 9
    # the in-memory path selects the same frames
    picked = video_frames.select_frames(every, 2, start_frame=1, max_frames=2)
    assert torch.equal(picked, frames)


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_phone_videos_come_out_upright(tmp_path, rotation):
    # a player shows the stored frame rotated `rotation` degrees counter-clockwise: store the upright frame turned
    # the other way, so what the player shows is the upright frame
    stored = [np.ascontiguousarray(np.rot90(upright_frame(i), -rotation // 90)) for i in range(3)]
    path = write_video(tmp_path / "phone.mp4", stored, rotation=rotation)
    frames, _ = video_frames.read_frames(str(path), stride=1)
    assert frames.shape == (3, H, W, 3)
    expected = torch.from_numpy(np.stack([upright_frame(i) for i in range(3)])).float() / 255
    assert (frames - expected).abs().max() < 0.03


def test_node_in_a_graph_turns_phone_videos_upright_unlike_get_video_components(comfy_base):
    name = "test-driving-phone.mp4"
    stored = [np.ascontiguousarray(np.rot90(upright_frame(i), 1)) for i in range(5)]  # shown with -90
    path = write_video(comfy_base / "input" / name, stored, fps=30, rotation=-90)
    try:
        run = run_graph({
            "1": {"class_type": "LoadVideo", "inputs": {"file": name}},
            "2": {"class_type": "ControlNeXtDrivingFrames",
                  "inputs": {"video": ["1", 0], "stride": 2, "start_frame": 0, "max_frames": 0}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "driving_frames"}},
            "4": {"class_type": "GetVideoComponents", "inputs": {"video": ["1", 0]}},
            "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "core_components"}},
        })
        assert run.success, run.error()
        ours = saved_images(comfy_base, run.outputs["3"])
        core = saved_images(comfy_base, run.outputs["5"])
    finally:
        path.unlink(missing_ok=True)
    assert [img.shape for img in ours] == [(H, W, 3)] * 3  # frames 0, 2, 4, upright
    assert ours[0][4:12, 4:12].min() > 240  # the marker is top-left, as a player shows it
    assert core[0].shape == (W, H, 3)  # core leaves the phone video on its side


def saved_images(comfy_base: Path, ui: dict) -> list[np.ndarray]:
    return [np.asarray(Image.open(comfy_base / "output" / img["subfolder"] / img["filename"]))
            for img in ui["images"]]


def test_node_takes_decoded_videos_too():
    images = torch.rand(7, 8, 8, 3)
    video = InputImpl.VideoFromComponents(Types.VideoComponents(images=images, frame_rate=Fraction(24)))
    frames, fps, count, audio = video_nodes.ControlNeXtDrivingFrames.execute(video, 3, 1, 0).args
    assert torch.equal(frames, images[1::3]) and fps == 8.0 and count == 2
    # no sound in the components: silence of the kept span (2 frames x stride 3 at 24 fps = 0.25 s)
    assert audio["waveform"].shape == (1, 1, round(0.25 * audio["sample_rate"])) and not audio["waveform"].any()


def test_clear_errors(tmp_path):
    path = write_video(tmp_path / "short.mp4", [upright_frame(i) for i in range(3)])
    with pytest.raises(ValueError, match="start_frame is 5 but the driving video has only 3 frames"):
        video_frames.read_frames(str(path), stride=1, start_frame=5, name="the driving video")
    with pytest.raises(ValueError, match="start_frame is 9 but the video has only 7 frames"):
        video_frames.select_frames(torch.zeros(7, 2, 2, 3), 1, start_frame=9)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"this is not a video" * 100)
    with pytest.raises(ValueError, match="could not be decoded.*re-encode it as H.264"):
        video_frames.read_frames(str(broken))
    with pytest.raises(ValueError, match="stride must be at least 1"):
        video_frames.read_frames(str(path), stride=0)
    with pytest.raises(ValueError, match=r"has only 0 frames in its trim \(5 s, duration 1 s\): lower start_frame "
                                         "or change the trim"):
        video_frames.read_frames(str(path), stride=1, start_time=5.0, duration=1.0)


def test_a_trim_keeps_the_frames_whose_timestamps_fall_in_it(tmp_path):
    # frames at 0, 0.1, ... 0.8 s; [0.15 s, 0.15 + 0.4 s) holds frames 2..5, then every 2nd from the 2nd kept
    path = write_video(tmp_path / "ten.mp4", [upright_frame(i) for i in range(9)], fps=10)
    frames, fps = video_frames.read_frames(str(path), stride=2, start_frame=1, start_time=0.15, duration=0.4)
    assert grey_levels(frames) == pytest.approx([70, 110], abs=2) and fps == 10.0
    frames, _ = video_frames.read_frames(str(path), stride=1, start_time=0.65)  # duration 0: to the end
    assert grey_levels(frames) == pytest.approx([150, 170], abs=2)
