"""DWPose results as data: Person / PoseFrame, and the OpenPose-JSON POSE_KEYPOINT layout shared with other packs.

Conventions (ours, and what comfyui_controlnet_aux's DWPose node emits):
- x, y are PIXELS of the analysed image (origin top-left, x right, y down); canvas_width/height give its size.
  controlnet_aux's `encode_poses_as_dict` writes its keypoints in pixels of the image it analysed, too.
- confidence is the pose model's own SimCC score (min of the x and y peaks; not a probability, may exceed 1).
  The neck is synthesised as in the reference: mean of the shoulders, score 1.0 if both shoulders score > 0.3,
  else 0 (so it renders exactly like the official code).
- "Not found" = the model's score is <= 0 (the reference decodes such points to location (-1, -1)), or the neck's
  shoulders are too weak: stored as [0, 0, 0]. Low positive scores are KEPT with their score: consumers apply the
  usual 0.3 threshold themselves (controlnet_aux drops points < 0.3 when it writes JSON; we keep them so the
  official renderer, which draws hands and faces without a threshold, can be matched).
- Body is OpenPose-18 order: 0 nose, 1 neck, 2 R-sho, 3 R-elb, 4 R-wri, 5 L-sho, 6 L-elb, 7 L-wri, 8 R-hip,
  9 R-knee, 10 R-ank, 11 L-hip, 12 L-knee, 13 L-ank, 14 R-eye, 15 L-eye, 16 R-ear, 17 L-ear. Face: 68 iBUG
  points. Hands: 21 points (wrist, thumb 1-4, index, middle, ring, pinky). Feet are not kept.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

N_BODY, N_FACE, N_HAND = 18, 68, 21
NECK_SCORE_THRESHOLD = 0.3

# COCO-WholeBody (133) + neck inserted at 17 = 134 points; OpenPose-18 slots taken from the post-insert indices
_OPENPOSE_SLOTS = [1, 2, 3, 4, 6, 7, 8, 9, 10, 12, 13, 14, 15, 16, 17]
_MMPOSE_SLOTS = [17, 6, 8, 10, 7, 9, 12, 14, 16, 13, 15, 2, 1, 4, 3]
FACE_SLICE = slice(24, 92)
LEFT_HAND_SLICE = slice(92, 113)
RIGHT_HAND_SLICE = slice(113, 134)

_PART_KEYS = {
    "body": ("pose_keypoints_2d", N_BODY),
    "face": ("face_keypoints_2d", N_FACE),
    "left_hand": ("hand_left_keypoints_2d", N_HAND),
    "right_hand": ("hand_right_keypoints_2d", N_HAND),
}


def _zeros(n: int) -> np.ndarray:
    return np.zeros((n, 3), dtype=np.float32)


@dataclass(eq=False)  # numpy fields: compare with np.array_equal, not ==
class Person:
    """One person's keypoints, each row [x, y, confidence] in pixels of the analysed image; [0,0,0] = not found."""

    body: np.ndarray = field(default_factory=lambda: _zeros(N_BODY))
    face: np.ndarray = field(default_factory=lambda: _zeros(N_FACE))
    left_hand: np.ndarray = field(default_factory=lambda: _zeros(N_HAND))
    right_hand: np.ndarray = field(default_factory=lambda: _zeros(N_HAND))
    box: tuple[float, float, float, float] | None = None  # detector box x0, y0, x1, y1 in pixels
    box_score: float | None = None

    def __post_init__(self) -> None:
        for name, (_, n) in _PART_KEYS.items():
            arr = np.asarray(getattr(self, name), dtype=np.float32)
            if arr.shape != (n, 3):
                raise ValueError(f"Person.{name} must have shape ({n}, 3) [x, y, confidence], got {arr.shape}")
            setattr(self, name, arr)

    def all_points(self) -> np.ndarray:
        """(128, 3): body, face, left hand, right hand stacked (handy for transforms)."""
        return np.concatenate([self.body, self.face, self.left_hand, self.right_hand])


@dataclass
class PoseFrame:
    """The people found in one image of width x height pixels (also the canvas size for drawing)."""

    width: int
    height: int
    people: list[Person] = field(default_factory=list)


def person_from_wholebody(points: np.ndarray, box: Sequence[float] | None = None,
                          box_score: float | None = None) -> Person:
    """A Person from DWPose output: (133, 3) COCO-WholeBody [x, y, score] in image pixels (score <= 0 = not found).

    Adds the neck and remaps the body to OpenPose-18 exactly as the official ControlNeXt/DWPose code does.
    """
    points = np.asarray(points, dtype=np.float32)
    if points.shape != (133, 3):
        raise ValueError(f"expected (133, 3) COCO-WholeBody keypoints, got {points.shape}")
    neck = points[[5, 6]].mean(axis=0)
    neck[2] = 1.0 if (points[5, 2] > NECK_SCORE_THRESHOLD and points[6, 2] > NECK_SCORE_THRESHOLD) else 0.0
    full = np.insert(points, 17, neck, axis=0)  # 134 points
    full[_OPENPOSE_SLOTS] = full[_MMPOSE_SLOTS]
    full[full[:, 2] <= 0] = 0.0  # the reference puts these at (-1, -1): mark them "not found"
    return Person(
        body=full[:N_BODY].copy(), face=full[FACE_SLICE].copy(), left_hand=full[LEFT_HAND_SLICE].copy(),
        right_hand=full[RIGHT_HAND_SLICE].copy(),
        box=None if box is None else tuple(float(v) for v in box),
        box_score=None if box_score is None else float(box_score),
    )


def _flat(arr: np.ndarray) -> list[float]:
    return [float(v) for v in np.asarray(arr, dtype=np.float64).reshape(-1)]


def to_pose_keypoint(frames: Sequence[PoseFrame]) -> list[dict]:
    """POSE_KEYPOINT: one OpenPose-JSON dict per frame, pixel coordinates, the model's confidences."""
    out = []
    for frame in frames:
        people = []
        for p in frame.people:
            entry: dict[str, Any] = {key: _flat(getattr(p, name)) for name, (key, _) in _PART_KEYS.items()}
            if p.box is not None:  # extra keys are ignored by other readers of the OpenPose format
                entry["box"] = [float(v) for v in p.box]
                entry["box_score"] = None if p.box_score is None else float(p.box_score)
            people.append(entry)
        out.append({"people": people, "canvas_width": int(frame.width), "canvas_height": int(frame.height)})
    return out


MAX_COORDINATE = 1e6  # px; larger values are corrupt data (and would overflow the drawing code's int32 pixels)
# Normalised data: every found point within the canvas, give or take one canvas (limbs leave the picture)
NORMALISED_RANGE = (-1.0, 2.0)


def _box(box: Any, box_score: Any, where: str) -> tuple[tuple[float, ...] | None, float | None]:
    if box is not None:
        if (not isinstance(box, (list, tuple)) or len(box) != 4
                or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in box)):
            raise ValueError(f"{where}: 'box' must be [x0, y0, x1, y1] (four numbers), got {box!r}")
        box = tuple(float(v) for v in box)
    if box_score is not None:
        if isinstance(box_score, bool) or not isinstance(box_score, (int, float)):
            raise ValueError(f"{where}: 'box_score' must be a number or null, got {box_score!r}")
        box_score = float(box_score)
    return box, box_score


def _part(values: Any, n: int, where: str) -> np.ndarray:
    if values is None or (isinstance(values, (list, tuple)) and len(values) == 0):
        return _zeros(n)  # controlnet_aux writes null for a part with nothing found
    try:
        arr = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: expected a flat list of numbers [x, y, confidence, ...] ({e})") from e
    if arr.size % 3:
        raise ValueError(f"{where}: length {arr.size} is not a multiple of 3 ([x, y, confidence] per point)")
    pts = arr.reshape(-1, 3)
    if n == N_FACE and pts.shape[0] == 70:
        pts = pts[:N_FACE]  # OpenPose faces have 70 points (68 + two pupils, which controlnet_aux copies from the eyes)
    if pts.shape[0] != n:
        raise ValueError(f"{where}: expected {n} points ({3 * n} numbers), got {pts.shape[0]}")
    if not np.isfinite(pts).all():
        raise ValueError(f"{where}: contains NaN or infinite values")
    if np.abs(pts[:, :2]).max(initial=0.0) > MAX_COORDINATE:
        raise ValueError(f"{where}: a coordinate lies beyond {MAX_COORDINATE:g} px: not a pose of an image")
    return pts.astype(np.float32)


def _as_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 1:
        raise ValueError(f"{where} must be a positive number of pixels, got {value!r}")
    return int(round(value))


def from_pose_keypoint(data: Any, normalized: bool | None = None) -> list[PoseFrame]:
    """PoseFrames from POSE_KEYPOINT data: a list of OpenPose-JSON dicts, or a single dict.

    Coordinates may be pixels (ours, controlnet_aux) or normalised to 0..1 of the canvas. normalized=None decides
    per frame: normalised when every found point (confidence > 0) lies within [-1, 2] on both axes (a point may
    leave the picture: real pixel coordinates are never all that small) and the canvas is larger than 2 px; pass
    True/False to force it.
    """
    if isinstance(data, Mapping):
        data = [data]
    if not isinstance(data, (list, tuple)):
        raise ValueError(f"POSE_KEYPOINT must be a list of dicts (or one dict) in OpenPose JSON layout, got "
                         f"{type(data).__name__}")
    frames = []
    for i, item in enumerate(data):
        if not isinstance(item, Mapping):
            raise ValueError(f"POSE_KEYPOINT frame {i}: expected a dict with 'people', 'canvas_width', "
                             f"'canvas_height', got {type(item).__name__}")
        missing = [k for k in ("canvas_width", "canvas_height") if k not in item]
        if missing:
            raise ValueError(f"POSE_KEYPOINT frame {i}: missing {', '.join(missing)} (the analysed image size)")
        width = _as_int(item["canvas_width"], f"POSE_KEYPOINT frame {i} canvas_width")
        height = _as_int(item["canvas_height"], f"POSE_KEYPOINT frame {i} canvas_height")
        raw_people = item.get("people") or []
        if not isinstance(raw_people, (list, tuple)):
            raise ValueError(f"POSE_KEYPOINT frame {i}: 'people' must be a list")
        parsed = []
        for j, person in enumerate(raw_people):
            if not isinstance(person, Mapping):
                raise ValueError(f"POSE_KEYPOINT frame {i} person {j}: expected a dict")
            parts = {name: _part(person.get(key), n, f"POSE_KEYPOINT frame {i} person {j} {key}")
                     for name, (key, n) in _PART_KEYS.items()}
            box, box_score = _box(person.get("box"), person.get("box_score"), f"POSE_KEYPOINT frame {i} person {j}")
            parsed.append((parts, box, box_score))
        norm = normalized
        if norm is None:
            found = np.concatenate([np.concatenate(list(p.values())) for p, _, _ in parsed]) if parsed else _zeros(0)
            found = found[found[:, 2] > 0]
            lo, hi = NORMALISED_RANGE
            norm = bool(len(found)) and max(width, height) > 2 and bool(
                (found[:, :2] >= lo).all() and (found[:, :2] <= hi).all())
        people = []
        for parts, box, box_score in parsed:
            if norm:
                for arr in parts.values():
                    hit = arr[:, 2] > 0
                    arr[hit, 0] *= width
                    arr[hit, 1] *= height
                if box is not None:
                    box = (box[0] * width, box[1] * height, box[2] * width, box[3] * height)
            people.append(Person(**parts, box=box, box_score=box_score))
        frames.append(PoseFrame(width=width, height=height, people=people))
    return frames
