"""ControlNeXtDrivingFrames on the newest ComfyUI's VIDEO (emulated: tests/newest_comfy/video.py): a trim (Trim Video,
Load Video's edit) is honoured by the pack's own frame-by-frame decoder, exactly as core applies it; a crop makes the
node use core's decoding; a plain file still takes the fast path. Expectations come from an independent decode of the
file (PyAV, every frame, turned upright) sliced by hand."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch
from comfy_api.v0_0_2 import InputImpl
from PIL import Image

from conftest import pack_import, run_graph
from newest_comfy import video as newest

video_nodes = pack_import("nodes.video_nodes")
video_frames = pack_import("controlnext.video_frames")
Node = video_nodes.ControlNeXtDrivingFrames

H, W = 48, 40  # upright size; 40 is not a multiple of 32 (core's float conversion pads such frames)
FPS = 10
FRAMES = 12  # frame i is shown at i / 10 s; the file lasts 1.2 s


def frame_image(i: int) -> np.ndarray:
    """Frame i: red = frame number, green = column, blue = row, so a wrong frame or crop offset shows."""
    img = np.empty((H, W, 3), np.uint8)
    img[..., 0] = 10 + 20 * i
    img[..., 1] = np.arange(W, dtype=np.uint8)[None, :] * 6
    img[..., 2] = np.arange(H, dtype=np.uint8)[:, None] * 5
    return img


def write_video(path: Path, rotation: int = 0) -> Path:
    """Lossless H.264 (yuv444p, crf 0); with a display rotation the stored frames are turned so that a player (and
    an upright decode) shows frame_image."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stored = [np.ascontiguousarray(np.rot90(frame_image(i), -rotation // 90)) for i in range(FRAMES)]
        stream.height, stream.width = stored[0].shape[:2]
        stream.pix_fmt = "yuv444p"
        stream.options = {"crf": "0"}
        if rotation:
            stream.set_display_rotation(rotation)
        for img in stored:
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def independent_decode(path: Path) -> tuple[torch.Tensor, list[float]]:
    """Every frame (upright, rgb24 / 255) and its time in seconds, straight from PyAV."""
    images, times = [], []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            img = frame.to_ndarray(format="rgb24")
            images.append(np.ascontiguousarray(np.rot90(img, round(frame.rotation / 90) % 4)))
            times.append(float(frame.time))
    return torch.from_numpy(np.stack(images)).float() / 255, times


def in_window(times: list[float], start: float, duration: float) -> list[int]:
    return [i for i, t in enumerate(times) if t >= start and (not duration or t < start + duration)]


@pytest.fixture
def clip(tmp_path) -> Path:
    return write_video(tmp_path / "dance.mp4")


@pytest.fixture
def core_decodes(monkeypatch) -> list[int]:
    """Counts calls of the emulated VideoFromFile.get_components (core's decoding)."""
    calls: list[int] = []
    original = newest.VideoFromFile.get_components

    def counted(self):
        calls.append(1)
        return original(self)

    monkeypatch.setattr(newest.VideoFromFile, "get_components", counted)
    return calls


def run(video, stride: int = 2, start_frame: int = 0, max_frames: int = 0) -> tuple[torch.Tensor, float, int]:
    return Node.execute(video, stride, start_frame, max_frames).args[:3]  # the AUDIO: tests/test_driving_audio.py


@pytest.mark.parametrize(("start_time", "duration", "start_frame", "max_frames"),
                         [(0.25, 0.5, 0, 0), (0.25, 0.5, 1, 1), (0.25, 0.0, 0, 0), (0.0, 0.45, 0, 0),
                          (-0.45, 0.0, 0, 0)],
                         ids=["window", "window-selection", "from-start-time", "first-duration", "from-the-end"])
def test_a_trimmed_video_gives_the_frames_of_its_span(clip, core_decodes, start_time, duration, start_frame,
                                                      max_frames):
    video = newest.VideoFromFile(str(clip), start_time=start_time, duration=duration)
    frames, fps, count = run(video, 2, start_frame, max_frames)

    every, times = independent_decode(clip)
    start = start_time if start_time >= 0 else times[-1] + 1 / FPS + start_time  # from the end of the 1.2 s file
    span = in_window(times, start, duration)[start_frame::2]
    span = span[:max_frames] if max_frames else span
    assert span and span[0] > 0 or start_time == 0  # the trim really moves the first frame
    assert torch.equal(frames, every[span])  # the pack's own decoder: the same pixels as a plain decode
    assert fps == 5.0 and count == len(span)
    assert core_decodes == []  # decoded frame by frame, not by core

    # core's decoding of the same trimmed VIDEO keeps the same frames (its float conversion differs by < 1 level)
    core = video_frames.select_frames(video.get_components().images, 2, start_frame, max_frames)
    torch.testing.assert_close(frames, core, rtol=0, atol=1.5 / 255)


@pytest.mark.parametrize("rotation", [0, -90])
def test_a_cropped_video_is_decoded_by_core_with_its_crop(tmp_path, core_decodes, rotation):
    path = write_video(tmp_path / "phone.mp4", rotation=rotation)
    video = newest.VideoFromFile(str(path)).as_trimmed(0.25, 0.5, strict_duration=False).as_cropped(3, 5, 17, 30)
    frames, fps, count = run(video, stride=2)

    every, times = independent_decode(path)
    span = in_window(times, 0.25, 0.5)[::2]
    # core's crop rectangle on the upright 40 x 48 frame: origin (3, 5) rounded down to even pixels, 17 wide
    # rounded down to even, 30 high
    want = every[span][:, 4:34, 2:18]
    assert frames.shape == (3, 30, 16, 3) and count == 3 and fps == 5.0
    torch.testing.assert_close(frames, want, rtol=0, atol=1.5 / 255)
    assert core_decodes == [1]
    assert frames.is_contiguous()


def test_a_plain_file_takes_the_fast_path(clip, core_decodes):
    video = newest.VideoFromFile(str(clip))  # Load Video without an edit
    frames, fps, count = run(video, stride=2, start_frame=1)
    every, _ = independent_decode(clip)
    assert torch.equal(frames, every[1::2]) and fps == 5.0 and count == 6
    assert core_decodes == []


def test_only_edits_the_pack_reproduces_are_decoded_by_it(clip):
    assert video_frames.file_trim(InputImpl.VideoFromFile(str(clip))) == (0.0, 0.0)  # 0.3.75's: no edits at all
    plain = newest.VideoFromFile(str(clip))
    assert video_frames.file_trim(plain) == (0.0, 0.0)
    assert video_frames.file_trim(plain.as_trimmed(-0.5, 0.25)) == pytest.approx((0.7, 0.25))  # from the end
    assert video_frames.file_trim(plain.as_cropped(0, 0, 40, 48)) == (0.0, 0.0)  # the whole frame: no crop
    video = plain.as_cropped(0, 0, 20, 20)
    assert video_frames.file_trim(video) is None
    # a future VideoFromFile that keeps its crop under another name: not ignored, core decodes it
    video.__dict__["_VideoFromFile__spatial_ops"] = [("crop_aligned", 0, 0, 20, 20)]
    del video.__dict__["_VideoFromFile__crop"]
    assert video_frames.file_trim(video) is None


def test_trim_video_node_in_a_graph(comfy_base, monkeypatch):
    newest.install(monkeypatch)
    name = "test-newest-trim.mp4"
    path = write_video(comfy_base / "input" / name)
    try:
        run_ = run_graph({
            "1": {"class_type": "LoadVideo", "inputs": {"file": name}},
            "2": {"class_type": "Video Slice",
                  "inputs": {"video": ["1", 0], "start_time": 0.25, "duration": 0.5, "strict_duration": True}},
            "3": {"class_type": "ControlNeXtDrivingFrames",
                  "inputs": {"video": ["2", 0], "stride": 2, "start_frame": 0, "max_frames": 0}},
            "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "newest_trim"}},
        })
        assert run_.success, run_.error()
        saved = [np.asarray(Image.open(comfy_base / "output" / img["subfolder"] / img["filename"]))
                 for img in run_.outputs["4"]["images"]]
        every, times = independent_decode(path)
    finally:
        path.unlink(missing_ok=True)
    want = (every[in_window(times, 0.25, 0.5)[::2]] * 255).round().numpy()
    assert len(saved) == 3  # frames 3, 5 and 7 of 12
    assert np.abs(np.stack(saved).astype(float) - want).max() <= 1  # SaveImage truncates to 8 bits
