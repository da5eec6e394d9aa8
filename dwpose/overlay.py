"""Preview compositing on ComfyUI IMAGE batches ([B, H, W, 3] float 0..1): pose over photo, and side by side."""

from __future__ import annotations

import torch
import torch.nn.functional as F

OVERLAY_MODES = ("skeleton only", "blend")
MISMATCH_CHOICES = ("shortest", "repeat last", "error")


def _check_images(images: torch.Tensor, what: str) -> None:
    if images.ndim != 4 or images.shape[-1] < 3 or images.shape[0] < 1:
        raise ValueError(f"{what} must be a non-empty IMAGE batch [frames, height, width, 3], got shape "
                         f"{tuple(images.shape)}")


def resize_images(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear resize of an IMAGE batch (returned as is when the size already matches)."""
    if images.shape[1] == height and images.shape[2] == width:
        return images
    pixels = F.interpolate(images.movedim(-1, 1), size=(height, width), mode="bilinear", align_corners=False)
    return pixels.movedim(1, -1).clamp_(0.0, 1.0)


COMPARE_COLOUR = (1.0, 1.0, 1.0)  # the compared (e.g. raw) skeleton: white, a colour the pose palette never uses
# "skeleton only" coverage = the pose pixel's brightest channel x this: the official limbs are dimmed to 60 % and
# scaled by their scores, so at x1 a confident limb let 40-50 % of the photo through (pale lines); x2 draws it solid,
# while weak limbs (low scores) stay faint, as they should
COVERAGE_GAIN = 2.0


def overlay_poses(reference: torch.Tensor, poses: torch.Tensor, opacity: float = 0.8,
                  mode: str = OVERLAY_MODES[0], compare: torch.Tensor | None = None) -> torch.Tensor:
    """Each pose image drawn over the reference: one output frame per pose frame, at the reference's size.

    reference: 1 image (used under every pose frame) or as many images as poses (paired, e.g. generated frames).
    "skeleton only" covers the photo only where the pose image is drawn (its brightest channel times COVERAGE_GAIN is
    the coverage, so the black ground leaves the photo untouched); "blend" mixes the whole pose image in, black ground
    included.
    compare: pose images (one per pose frame) drawn first, in white, under the poses: e.g. the raw detections under
    the processed poses, so what a stage changed shows as white next to colour.
    """
    _check_images(reference, "reference")
    _check_images(poses, "pose images")
    if mode not in OVERLAY_MODES:
        raise ValueError(f"unknown overlay mode {mode!r}: use one of {list(OVERLAY_MODES)}")
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be between 0 and 1, got {opacity}")
    n_ref, n_pose = reference.shape[0], poses.shape[0]
    if n_ref not in (1, n_pose):
        raise ValueError(f"reference has {n_ref} images and there are {n_pose} pose frames: give one reference "
                         "image (drawn under every pose) or exactly one image per pose frame")
    ref = reference[..., :3]
    pose = resize_images(poses[..., :3].to(ref.device, ref.dtype), ref.shape[1], ref.shape[2])
    base = ref.expand_as(pose)
    if compare is not None:
        _check_images(compare, "compared pose images")
        if compare.shape[0] != n_pose:
            raise ValueError(f"{compare.shape[0]} compared pose frames for {n_pose} pose frames: compare poses of the "
                             "same frames (e.g. raw_poses with poses of ControlNeXt Poses For Animation)")
        other = resize_images(compare[..., :3].to(ref.device, ref.dtype), ref.shape[1], ref.shape[2])
        cover = other.amax(dim=-1, keepdim=True).mul_(COVERAGE_GAIN).clamp_(0.0, 1.0).mul_(opacity)
        base = torch.lerp(base, torch.tensor(COMPARE_COLOUR, dtype=ref.dtype, device=ref.device).expand_as(base),
                          cover)
    if mode == "blend":
        alpha = torch.full_like(pose[..., :1], opacity)
    else:
        alpha = pose.amax(dim=-1, keepdim=True).mul_(COVERAGE_GAIN).clamp_(0.0, 1.0).mul_(opacity)
    return torch.lerp(base, pose, alpha)


def match_frame_counts(left: torch.Tensor, right: torch.Tensor,
                       mismatch: str = MISMATCH_CHOICES[0]) -> tuple[torch.Tensor, torch.Tensor]:
    """Make two batches the same length: cut to the shorter, repeat the shorter's last frame, or refuse."""
    if mismatch not in MISMATCH_CHOICES:
        raise ValueError(f"unknown frame-count handling {mismatch!r}: use one of {list(MISMATCH_CHOICES)}")
    n_left, n_right = left.shape[0], right.shape[0]
    if n_left == n_right:
        return left, right
    if mismatch == "error":
        raise ValueError(f"side by side: the left input has {n_left} frames and the right {n_right}. Usually the pose "
                         "images include the reference pose as frame 0 and the video has as many frames (set "
                         "video_frames to the pose count); or choose frame_mismatch = shortest / repeat last.")
    if mismatch == "shortest":
        n = min(n_left, n_right)
        return left[:n], right[:n]
    n = max(n_left, n_right)

    def pad(x: torch.Tensor) -> torch.Tensor:
        return x if x.shape[0] == n else torch.cat([x, x[-1:].expand(n - x.shape[0], *x.shape[1:])])

    return pad(left), pad(right)


MAX_SIDE_BY_SIDE_WIDTH = 16384  # px; wider is a wiring mistake (and would need tens of GB)


def side_by_side(left: torch.Tensor, right: torch.Tensor, mismatch: str = MISMATCH_CHOICES[0],
                 gap: int = 0) -> torch.Tensor:
    """left | right as one IMAGE batch; left is resized to right's height (aspect kept), gap black columns between."""
    _check_images(left, "left images")
    _check_images(right, "right images")
    if gap < 0:
        raise ValueError(f"gap must be 0 or more pixels, got {gap}")
    left, right = match_frame_counts(left[..., :3], right[..., :3].to(left.device, left.dtype), mismatch)
    height = right.shape[1]
    width = max(1, round(left.shape[2] * height / left.shape[1]))
    if width > MAX_SIDE_BY_SIDE_WIDTH:
        raise ValueError(
            f"The left images are {left.shape[2]}x{left.shape[1]} px: resized to the right's height ({height} px) "
            f"they would be {width} px wide. Connect frames of a similar shape, e.g. the pose images on the left and "
            "the decoded video on the right.")
    left = resize_images(left, height, width)
    parts = [left, right]
    if gap:
        parts.insert(1, left.new_zeros((left.shape[0], height, gap, 3)))
    return torch.cat(parts, dim=2)
