"""Driving-video frames as the official pipeline samples them: every `stride`-th frame, upright, decoded one by one.

Only the selected frames are converted to float, so a long or high-resolution phone video does not have to fit
in system RAM as a whole (ComfyUI's GetVideoComponents converts every frame to float32 first: a 60 s 1080p clip
would take about 45 GB). Phone videos usually store portrait footage as landscape frames plus a display rotation;
the frames are turned upright here, as video players do. A trim that newer ComfyUI keeps on a file VIDEO (Load
Video's edit, Trim Video) is applied here as core's decoder applies it, keeping the same frames (file_trim, trim_pts).
decode_frames also gives the first kept frame's timestamp, where the sound of the kept span starts (video_audio).
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import IO, Any, NamedTuple

import comfy.model_management
import numpy as np
import torch


def output_fps(source_fps: float, stride: int) -> float:
    """The official output frame rate: the source's average rate floor-divided by the stride, at least 1."""
    return float(max(1, math.floor(source_fps / stride)))


def upright(image: np.ndarray, rotation: float) -> np.ndarray:
    """Applies a display rotation (degrees counter-clockwise, FFmpeg's display-matrix convention, as PyAV's
    VideoFrame.rotation reports it) to an H x W x C frame."""
    quarter_turns = round(rotation / 90) % 4
    return np.rot90(image, quarter_turns) if quarter_turns else image


def select_frames(images: torch.Tensor, stride: int, start_frame: int = 0, max_frames: int = 0) -> torch.Tensor:
    """The same selection as read_frames on an already decoded IMAGE batch (a view, no copy)."""
    check_selection(stride, start_frame, max_frames)
    if start_frame >= images.shape[0]:
        raise ValueError(f"start_frame is {start_frame} but the video has only {images.shape[0]} frames: lower "
                         "start_frame.")
    picked = images[start_frame::stride]
    return picked[:max_frames] if max_frames else picked


def file_trim(video: Any) -> tuple[float, float] | None:
    """The trim (start, duration in seconds; (0, 0) = none) that ComfyUI's own decoding of this file VIDEO (a
    VideoFromFile) would apply, or None when the VIDEO carries an edit this module does not reproduce, which the
    caller then leaves to core (video.get_components()).

    Newer ComfyUI's VideoFromFile carries a trim and a crop: get_active_trim_window() gives the trim as its decoder
    uses it (a negative start already counted from the end); the crop has no public getter, only the private
    attribute read here. A class that can crop or trim but does not expose them the way read here (a future core)
    gets None: core's slower decoding is used rather than silently ignoring an edit. ComfyUI 0.3.75's VideoFromFile
    has neither: (0, 0).
    """
    if hasattr(video, "as_cropped") and getattr(video, "_VideoFromFile__crop", "unknown") is not None:
        return None  # a crop (core normalises it to even pixels after turning the frame upright), or unknown
    trim_window = getattr(video, "get_active_trim_window", None)
    if trim_window is not None:
        start, duration = trim_window()
        return float(start), float(duration)
    return None if hasattr(video, "as_trimmed") else (0.0, 0.0)


def trim_pts(start_time: float, duration: float, time_base: Fraction) -> tuple[int, int | None]:
    """The presentation-timestamp window [start, end) of a trim, as newer ComfyUI's VideoFromFile decoder computes
    it (seconds divided by the stream's time base, truncated; no end when duration is 0)."""
    start_pts = int(start_time / time_base)
    end_pts = int((start_time + duration) / time_base) if duration else None
    return start_pts, end_pts


def check_selection(stride: int, start_frame: int, max_frames: int) -> None:
    if stride < 1 or start_frame < 0 or max_frames < 0:
        raise ValueError(f"stride must be at least 1 and start_frame and max_frames at least 0 (got {stride}, "
                         f"{start_frame}, {max_frames}).")


class DecodedFrames(NamedTuple):
    frames: torch.Tensor  # IMAGE [F,H,W,3] float32 in 0..1, upright
    fps: float  # the stream's average frame rate
    first_time: float  # the first kept frame's timestamp in seconds (the clock of the file's sound, too)


def read_frames(source: str | IO[bytes], stride: int = 2, start_frame: int = 0, max_frames: int = 0,
                name: str = "the video", start_time: float = 0.0, duration: float = 0.0,
                ) -> tuple[torch.Tensor, float]:
    """decode_frames' (frames, fps)."""
    decoded = decode_frames(source, stride, start_frame, max_frames, name, start_time, duration)
    return decoded.frames, decoded.fps


def decode_frames(source: str | IO[bytes], stride: int = 2, start_frame: int = 0, max_frames: int = 0,
                  name: str = "the video", start_time: float = 0.0, duration: float = 0.0) -> DecodedFrames:
    """Decodes frames start_frame, start_frame + stride, ... (at most max_frames; 0 = to the end) of the first
    video stream, upright, and says when the first of them is shown (for the sound of the span).

    start_time/duration (seconds, 0 = none) trim the video first, as newer ComfyUI's VideoFromFile decoder does: it
    seeks to the start and keeps the frames whose timestamps fall in trim_pts' window; start_frame counts from the
    first frame kept."""
    import av  # ComfyUI's own dependency; imported on first use, not when the pack loads

    check_selection(stride, start_frame, max_frames)
    trimmed = bool(start_time or duration)
    picked: list[np.ndarray | None] = []
    size: tuple[int, int] | None = None
    first_time = 0.0
    decoded = 0
    try:
        with av.open(source) as container:
            if not container.streams.video:
                raise ValueError(f"{name} has no video stream: load a video file (mp4, webm, mov, ...).")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"  # frame-parallel decoding: most of the cost here is the decoder
            fps = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
            start_pts, end_pts = 0, None
            if trimmed:
                if stream.time_base is None:
                    raise ValueError(f"{name} has no timestamps, so its trim cannot be applied: remove the trim or "
                                     "re-encode the video, e.g. with ffmpeg -i in.mov -c:v libx264 out.mp4.")
                start_pts, end_pts = trim_pts(start_time, duration, stream.time_base)
                if start_pts:
                    container.seek(start_pts, stream=stream)  # the key frame at or before the start, as core
            for frame in container.decode(stream):
                comfy.model_management.throw_exception_if_processing_interrupted()
                if trimmed:
                    if frame.pts is None:
                        raise ValueError(f"{name} has frames without timestamps, so its trim cannot be applied: "
                                         "remove the trim or re-encode the video, e.g. with "
                                         "ffmpeg -i in.mov -c:v libx264 out.mp4.")
                    if frame.pts < start_pts:
                        continue
                    if end_pts is not None and frame.pts >= end_pts:
                        break
                index, decoded = decoded, decoded + 1
                if index < start_frame or (index - start_frame) % stride:
                    continue
                if size is None:
                    size = (frame.width, frame.height)
                    # no timestamp: where a constant frame rate puts it
                    first_time = float(frame.time) if frame.time is not None else index / fps
                elif (frame.width, frame.height) != size:  # a mid-stream resolution change: keep one size
                    frame = frame.reformat(width=size[0], height=size[1])
                picked.append(upright(frame.to_ndarray(format="rgb24"), frame.rotation))
                if max_frames and len(picked) >= max_frames:
                    break
    except av.error.FFmpegError as exc:
        raise ValueError(f"{name} could not be decoded ({exc}): re-encode it as H.264 mp4, e.g. with "
                         "ffmpeg -i in.mov -c:v libx264 out.mp4.") from exc
    if not picked:
        span = f" in its trim ({start_time:g} s, duration {duration:g} s)" if trimmed else ""
        raise ValueError(f"start_frame is {start_frame} but {name} has only {decoded} frames{span}: lower "
                         f"start_frame{' or change the trim' if trimmed else ''}.")
    out = torch.empty((len(picked), *picked[0].shape), dtype=torch.float32)
    for i in range(len(picked)):  # frame by frame, freeing each decoded frame: no second copy of the whole clip
        out[i] = torch.from_numpy(np.ascontiguousarray(picked[i]))
        picked[i] = None
    return DecodedFrames(out.div_(255.0), fps, first_time)
