"""The newest ComfyUI's (0.38.1) file VIDEO with a trim and a crop, and its Trim Video node, on ComfyUI 0.3.75.

Written from the newest source, not copied:
- comfy_api/latest/_input_impl/video_types.py: VideoFromFile.__init__(file, *, start_time=0, duration=0, crop=None),
  get_active_trim_window, get_duration/_get_raw_duration, get_dimensions/_get_display_dimensions,
  get_components/get_components_internal (the video frames), as_trimmed, as_cropped, _rotation_quadrant;
- comfy_api/latest/_util/video_types.py: normalize_crop_rect;
- comfy_extras/nodes_video.py: VideoSlice (node id "Video Slice", shown as "Trim Video"); LoadVideo without an edit
  returns a plain InputImpl.VideoFromFile(path).

The class is named VideoFromFile and subclasses 0.3.75's, so its private attributes get the same mangled names as the
newest ones (_VideoFromFile__file, _VideoFromFile__start_time, _VideoFromFile__duration, _VideoFromFile__crop).
Not emulated (the pack never reads them from a VIDEO): audio (get_components returns none), alpha channels,
saving and frame counting of an edited video (those raise NotImplementedError rather than answer untrimmed).
install(monkeypatch) applies it for one test: InputImpl.VideoFromFile and Load Video's class become this one, and the
Trim Video node is registered.
"""

from __future__ import annotations

import io as std_io
import logging
import sys
from fractions import Fraction

import av
import nodes
import numpy as np
import pytest
import torch
from comfy_api.latest import InputImpl as InputImplLatest
from comfy_api.latest import Types, io

OldVideoFromFile = InputImplLatest.VideoFromFile


def normalize_crop_rect(x: int, y: int, width: int, height: int, source_width: int,
                        source_height: int) -> tuple[int, int, int, int] | None:
    """Core's crop rectangle on a source_width x source_height frame: None for no crop (an empty size or the whole
    frame); else the origin clamped into the frame and rounded down to even pixels, the size clamped to what is left
    of the frame and rounded down to even pixels."""
    width, height = int(width), int(height)
    if width <= 0 or height <= 0:
        return None
    x = max(0, min(int(x), source_width - 1))
    y = max(0, min(int(y), source_height - 1))
    x, y = x - x % 2, y - y % 2
    width, height = min(width, source_width - x), min(height, source_height - y)
    if (x, y, width, height) == (0, 0, source_width, source_height):
        return None
    width, height = width - width % 2, height - height % 2
    if width <= 0 or height <= 0:
        return None
    return x, y, width, height


def rotation_quadrant(frame: av.VideoFrame) -> int:
    """Quarter turns (counter-clockwise, for np.rot90) of a frame's display rotation, as core rounds it."""
    if not frame.rotation:
        return 0
    return int(round(frame.rotation // 90)) % 4


class VideoFromFile(OldVideoFromFile):
    """The newest ComfyUI's VideoFromFile: a file or BytesIO plus a trim (seconds) and a crop (pixels)."""

    def __init__(self, file: str | std_io.BytesIO, *, start_time: float = 0, duration: float = 0,
                 crop: tuple[int, int, int, int] | None = None) -> None:
        super().__init__(file)  # sets self.__file (the same mangled name in both classes)
        self.__start_time = start_time
        self.__duration = duration
        self.__crop = crop

    def _open(self) -> av.container.InputContainer:
        source = self.get_stream_source()  # rewinds a BytesIO
        return av.open(source, mode="r")

    def _get_raw_duration(self) -> float:
        return OldVideoFromFile.get_duration(self)  # 0.3.75's get_duration is the newest _get_raw_duration

    def get_active_trim_window(self) -> tuple[float, float]:
        """(start, duration): a negative start counts back from the end of the file, at the earliest its start."""
        start = self.__start_time
        if start < 0:
            start = max(self._get_raw_duration() + start, 0.0)
        return float(start), float(self.__duration)

    def get_duration(self) -> float:
        raw = self._get_raw_duration()
        from_start = min(raw, -self.__start_time) if self.__start_time < 0 else raw - self.__start_time
        return min(self.__duration, from_start) if self.__duration else from_start

    def _get_display_dimensions(self) -> tuple[int, int]:
        """The stream's size, width and height swapped when the first frame has an odd number of quarter turns."""
        with self._open() as container:
            if not container.streams.video:
                raise ValueError(f"No video stream found in file '{self.get_stream_source()}'")
            stream = container.streams.video[0]
            width, height = stream.width, stream.height
            try:
                first = next(container.decode(stream), None)
            except av.error.FFmpegError:
                first = None
            if first is not None and rotation_quadrant(first) % 2:
                width, height = height, width
            return width, height

    def get_dimensions(self) -> tuple[int, int]:
        """Uncropped: the stream's stored size (not turned); cropped: the crop's size on the upright frame."""
        if self.__crop is None:
            return OldVideoFromFile.get_dimensions(self)
        display = self._get_display_dimensions()
        rect = normalize_crop_rect(*self.__crop, *display)
        return (rect[2], rect[3]) if rect is not None else display

    def get_components(self) -> Types.VideoComponents:
        with self._open() as container:
            if not container.streams.video:
                raise ValueError(f"No video stream found in file '{self.get_stream_source()}'")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            start, duration = self.get_active_trim_window()
            # the window is compared with the frames' raw timestamps (even untrimmed: start 0 drops negative ones)
            start_pts = int(start / stream.time_base)
            end_pts = int((start + duration) / stream.time_base)
            if start_pts != 0:
                container.seek(start_pts, stream=stream)
            frames: list[torch.Tensor] = []
            to_float = None
            crop_rect, crop_resolved = None, False
            align = None  # (graph, source, sink) padding frames whose width is not a multiple of 32
            done = False
            for packet in container.demux(stream):
                if done:
                    break
                try:
                    for frame in packet.decode():
                        if frame.pts < start_pts:
                            continue
                        if duration and frame.pts >= end_pts:
                            done = True
                            break
                        if to_float is None:
                            if any(c.is_alpha for c in frame.format.components) or frame.format.name == "pal8":
                                raise NotImplementedError("alpha channels are not emulated")
                            eight_bit = frame.format.name in ("yuvj420p", "yuvj422p", "yuvj444p", "rgb24", "rgba")
                            image_format = "rgb24" if eight_bit else "gbrpf32le"
                            to_float = (lambda a: a.float() / 255.0) if eight_bit else (lambda a: a)
                        if image_format == "gbrpf32le" and frame.width % 32:
                            # the float conversion is done on a frame padded to multiples of 32 (its border
                            # smeared outwards), then cut back: core's fix for non-deterministic conversion
                            if align is None:
                                align = self._align_graph(frame, stream.time_base)
                            align[1].push(frame)
                            padded = align[2].pull().to_ndarray(format=image_format)
                            img = np.ascontiguousarray(padded[:frame.height, :frame.width])
                        else:
                            img = frame.to_ndarray(format=image_format)
                        turns = rotation_quadrant(frame)
                        if turns:
                            img = np.rot90(img, k=turns, axes=(0, 1)).copy()
                        if self.__crop is not None:
                            if not crop_resolved:  # resolved once, on the first upright frame
                                crop_rect = normalize_crop_rect(*self.__crop, img.shape[1], img.shape[0])
                                crop_resolved = True
                            if crop_rect is not None:
                                cx, cy, cw, ch = crop_rect
                                img = np.ascontiguousarray(img[cy:cy + ch, cx:cx + cw])
                        frames.append(torch.from_numpy(img))
                except av.error.InvalidDataError:
                    logging.info("pyav decode error")
            images = to_float(torch.stack(frames)) if frames else torch.zeros(0, 0, 0, 3)
            rate = Fraction(stream.average_rate) if stream.average_rate else Fraction(1)
            return Types.VideoComponents(images=images, audio=None, frame_rate=rate, metadata=container.metadata)

    @staticmethod
    def _align_graph(frame: av.VideoFrame, time_base: Fraction) -> tuple:
        pad_w, pad_h = -(-frame.width // 32) * 32, -(-frame.height // 32) * 32
        graph = av.filter.Graph()
        source = graph.add_buffer(width=frame.width, height=frame.height, format=frame.format.name,
                                  time_base=time_base)
        pad = graph.add("pad", f"{pad_w}:{pad_h}:0:0")
        smear = graph.add("fillborders", f"left=0:right={pad_w - frame.width}:top=0:"
                                         f"bottom={pad_h - frame.height}:mode=smear")
        sink = graph.add("buffersink")
        source.link_to(pad)
        pad.link_to(smear)
        smear.link_to(sink)
        graph.configure()
        return graph, source, sink

    def as_trimmed(self, start_time: float = 0, duration: float = 0,
                   strict_duration: bool = True) -> VideoFromFile | None:
        """A new trim: start_time is added to this one's start, duration replaces its duration, the crop is kept;
        None when strict_duration and less than duration is left."""
        trimmed = VideoFromFile(self.get_stream_source(), start_time=start_time + self.__start_time,
                                duration=duration, crop=self.__crop)
        if strict_duration and duration and trimmed.get_duration() < duration:
            return None
        return trimmed

    def as_cropped(self, x: int = 0, y: int = 0, width: int = 0, height: int = 0) -> VideoFromFile:
        """A crop in the upright frame (inside an earlier crop, if any); itself when the crop changes nothing."""
        if int(width) <= 0 or int(height) <= 0:
            return self
        display = self._get_display_dimensions()
        outer = normalize_crop_rect(*self.__crop, *display) if self.__crop is not None else None
        if outer is None:
            rect = normalize_crop_rect(x, y, width, height, *display)
        else:
            inner = normalize_crop_rect(x, y, width, height, outer[2], outer[3])
            rect = (outer[0] + inner[0], outer[1] + inner[1], inner[2], inner[3]) if inner is not None else None
        if rect is None:
            return self
        return VideoFromFile(self.get_stream_source(), start_time=self.__start_time, duration=self.__duration,
                             crop=rect)

    def _edited(self) -> bool:
        return bool(self.__start_time or self.__duration or self.__crop is not None)

    def get_frame_count(self) -> int:
        if self._edited():
            raise NotImplementedError("the frame count of an edited video is not emulated")
        return super().get_frame_count()

    def save_to(self, *args, **kwargs) -> None:
        if self._edited():
            raise NotImplementedError("saving an edited video is not emulated")
        super().save_to(*args, **kwargs)


class VideoSlice(io.ComfyNode):
    """The newest Trim Video node (comfy_extras/nodes_video.py VideoSlice)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Video Slice",
            display_name="Trim Video",
            category="video",
            inputs=[
                io.Video.Input("video"),
                io.Float.Input("start_time", default=0.0, max=1e5, min=-1e5, step=0.001,
                               tooltip="Start time in seconds"),
                io.Float.Input("duration", default=0.0, min=0.0, step=0.001,
                               tooltip="Duration in seconds, or 0 for unlimited duration"),
                io.Boolean.Input("strict_duration", default=False,
                                 tooltip="If True, when the specified duration is not possible, an error will be "
                                 "raised."),
            ],
            outputs=[io.Video.Output()],
        )

    @classmethod
    def execute(cls, video, start_time: float, duration: float, strict_duration: bool) -> io.NodeOutput:
        trimmed = video.as_trimmed(start_time, duration, strict_duration=strict_duration)
        if trimmed is None:
            raise ValueError(f"Failed to slice video:\nSource duration: {video.get_duration()}\n"
                             f"Start time: {start_time}\nTarget duration: {duration}")
        return io.NodeOutput(trimmed)


def install(monkeypatch: pytest.MonkeyPatch) -> None:
    """The newest file VIDEO and Trim Video for one test (monkeypatch undoes it): InputImpl.VideoFromFile (all API
    versions inherit it from latest) and the class Load Video builds become VideoFromFile above."""
    monkeypatch.setattr(InputImplLatest, "VideoFromFile", VideoFromFile)
    load_video = nodes.NODE_CLASS_MAPPINGS["LoadVideo"]
    monkeypatch.setattr(sys.modules[load_video.__module__], "VideoFromFile", VideoFromFile)
    monkeypatch.setitem(nodes.NODE_CLASS_MAPPINGS, "Video Slice", VideoSlice)
    monkeypatch.setitem(nodes.NODE_DISPLAY_NAME_MAPPINGS, "Video Slice", "Trim Video")
