"""The official overlapping-window scheme of ControlNeXt-SVD v2 (spec section 4.7), as plain functions.

Every window has the same length ``fpb = min(frames_per_window, frames)``. Windows start at
``range(0, frames - overlap, fpb - overlap)``; a window that would run past the end is moved back to end at the last
frame (at most one is). Frame 0 of every window is driven by the reference pose; its result is dropped from the
average except in the first window, where it is the real frame 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


class WindowSettingsError(ValueError):
    """frames_per_window / overlap / frame count that cannot make windows."""


@dataclass(frozen=True)
class Window:
    start: int
    length: int

    @property
    def frames(self) -> range:
        """Global indices of the latent frames the window denoises."""
        return range(self.start, self.start + self.length)

    @property
    def pose_indices(self) -> list[int]:
        """Pose frames driving the window: the reference pose (pose 0) anchors window frame 0."""
        return [0, *range(self.start + 1, self.start + self.length)]

    @property
    def kept(self) -> slice:
        """Window-local frames that enter the average: all for the first window, all but the anchor otherwise."""
        return slice(0, self.length) if self.start == 0 else slice(1, self.length)


def plan_windows(frames: int, frames_per_window: int, overlap: int) -> list[Window]:
    """Window placement as the official pipeline computes it, with its crashes turned into errors or clamps.

    A clip shorter than the window runs as one window of the clip's length (the official min()). Zero frames, a
    window shorter than 2 frames, an overlap outside [0, frames_per_window), and overlap 0 with several windows
    (the official code gives NaN frames there) are errors.
    """
    if frames < 1:
        raise WindowSettingsError("The latent has no frames: set video_frames to at least 1 in the conditioning node.")
    if frames_per_window < 2:
        raise WindowSettingsError(f"frames_per_window is {frames_per_window}; it must be at least 2 "
                                  "(the official model uses 24).")
    if not 0 <= overlap < frames_per_window:
        raise WindowSettingsError(f"overlap is {overlap} but must be at least 0 and smaller than frames_per_window "
                                  f"({frames_per_window}); the official setting is 6 for 24-frame windows.")
    fpb = min(frames_per_window, frames)
    if fpb == frames:
        return [Window(0, frames)]
    if overlap < 1:
        # each later window's first frame is the reference-pose anchor and is dropped, so with no overlap that frame
        # would get no prediction at all (the official code divides 0 by 0 there: NaN frames)
        raise WindowSettingsError(f"overlap is 0 but this {frames}-frame video needs several {fpb}-frame windows: use "
                                  "an overlap of at least 1 (official: 6), since each window's first frame is "
                                  "driven by the reference pose and dropped.")
    windows = []
    for start in range(0, frames - overlap, fpb - overlap):
        windows.append(Window(min(start, frames - fpb), fpb))
    return windows


def cfg_ramp(cfg_min: float, cfg_max: float, length: int) -> torch.Tensor:
    """Per-frame guidance for one window, indexed by the frame's position inside the window (float32 as official)."""
    return torch.linspace(cfg_min, cfg_max, length, dtype=torch.float32)


def coverage(windows: list[Window], frames: int) -> torch.Tensor:
    """How many windows contribute to each frame (every frame must be covered at least once)."""
    count = torch.zeros(frames, dtype=torch.int64)
    for w in windows:
        count[w.start + w.kept.start: w.start + w.kept.stop] += 1
    return count
