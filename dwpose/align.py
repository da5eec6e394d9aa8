"""Aligning driving poses onto the reference image: the official ControlNeXt-SVD-v2 linear rescale, made robust.

Official fit (dwpose/preprocess.get_video_pose), in coordinates normalised by each image's own size:
- K = nose, neck, shoulders, hips, knees, ankles, eyes, ears (no elbows or wrists), kept where the reference
  person's score is > 0.3;
- only driving frames with exactly one person are used, with all their K points (driving scores are not checked);
- (a_y, b_y) = least-squares line from the pooled driving y to the tiled reference y;
- a_x = a_y * (fw / fh) * (H / W): the same pixel scale on both axes for an fw x fh video on a W x H canvas;
- b_x = mean(ref_x - a_x * driving_x);
- p * (a_x, a_y) + (b_x, b_y) is applied to the bodies, hands and faces of every frame (multi-person frames too).
A pooled regression shrinks a_y under large vertical motion (a jumping dancer): that is the official behaviour.

Data differences (keypoints.py stores points the model did not find as [0, 0, 0], where the official detector always
has some position): such driving points are left out of the fit, except a neck stored as [0, 0, 0] because the
shoulders were weak, which gets its official position back (the shoulders' mean). Points stored as [0, 0, 0] stay
[0, 0, 0] when frames are moved, so they are never drawn.

Where the official code crashes (no reference person, no single-person frame, fewer than 2 usable points, no
vertical spread, a non-positive or non-finite scale) this module falls back, with a warning, to the
"identity" fit: the driving frame's height maps onto the canvas height, centred, at equal pixel scale (which is
exactly a = 1, b = 0 when the aspect ratios match).

Options beyond parity: the reference person (highest score = the official person 0, largest, most central, or
an index), fitting on the selected person of every frame, masking driving points scoring <= 0.3, a manual scale,
and a scale multiplier / pixel offset on top of the fit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from .draw import frame_arrays
from .keypoints import Person, PoseFrame

log = logging.getLogger(__name__)

FIT_IDS = (0, 1, 2, 5, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17)
SCORE_THRESHOLD = 0.3

PERSON_CHOICES = ("highest score", "largest", "most central", "index")
FIT_FRAME_CHOICES = ("single-person frames (official)", "selected person in every frame")
MODE_CHOICES = ("fit (official)", "manual")


class AlignmentError(ValueError):
    """A fit that cannot be computed; align_frames turns it into the identity fallback with a warning."""


@dataclass
class AlignOptions:
    person: str = "highest score"  # which reference person (and, optionally, driving person) to use
    person_index: int = 0  # for person == "index"
    fit_frames: str = FIT_FRAME_CHOICES[0]
    mask_low_confidence: bool = False  # drop driving points scoring <= 0.3 from the fit (not official)
    mode: str = MODE_CHOICES[0]
    scale: float = 1.0  # fit mode: multiplier on the fitted scale (about the canvas centre); manual: the scale
    offset_x: float = 0.0  # canvas pixels, added last
    offset_y: float = 0.0

    def __post_init__(self) -> None:
        for name, value, allowed in (("person", self.person, PERSON_CHOICES),
                                     ("fit_frames", self.fit_frames, FIT_FRAME_CHOICES),
                                     ("mode", self.mode, MODE_CHOICES)):
            if value not in allowed:
                raise ValueError(f"alignment option {name}={value!r}: choose one of {', '.join(allowed)}")
        if not np.isfinite(self.scale) or self.scale <= 0:
            raise ValueError(f"alignment scale must be a positive number, got {self.scale}")
        if not (np.isfinite(self.offset_x) and np.isfinite(self.offset_y)):
            raise ValueError("alignment offsets must be finite numbers of canvas pixels")


@dataclass
class PoseFit:
    """The transform p_canvas = a * p_frame + b, both in coordinates normalised by their own image size."""

    a: np.ndarray  # (2,) a_x, a_y
    b: np.ndarray  # (2,) b_x, b_y
    canvas: tuple[int, int]  # W, H
    frame_size: tuple[int, int]  # fw, fh of the driving frames
    fit_mask: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))  # driving frames used
    ref_ids: tuple[int, ...] = ()
    reference_person: int | None = None
    fallback: str | None = None  # why the identity fit was used, if it was
    warnings: list[str] = field(default_factory=list)

    def describe(self) -> str:
        w, h = self.canvas
        scale_px = self.a[1] * h / self.frame_size[1]
        lines = [
            f"scale a = ({self.a[0]:.4f}, {self.a[1]:.4f}) normalised ({scale_px:.4f} canvas px per driving px), "
            f"offset b = ({self.b[0]:.4f}, {self.b[1]:.4f}) normalised ({self.b[0] * w:.1f}, {self.b[1] * h:.1f}) px",
            f"canvas {w}x{h}, driving frames {self.frame_size[0]}x{self.frame_size[1]}, fitted on "
            f"{int(self.fit_mask.sum())}/{self.fit_mask.size} frames, {len(self.ref_ids)} reference keypoints"
            + ("" if self.reference_person is None else f", reference person {self.reference_person}"),
        ]
        if self.fallback:
            lines.append(f"FALLBACK (identity fit): {self.fallback}")
        lines += [f"warning: {w_}" for w_ in self.warnings if w_ != self.fallback]
        return "\n".join(lines)


def aspect_factor(canvas: tuple[int, int], frame_size: tuple[int, int]) -> float:
    """a_x / a_y that keeps pixels square: (fw / fh) * (H / W) (the official `ay / (fh / fw / H * W)`)."""
    (w, h), (fw, fh) = canvas, frame_size
    return (fw / fh) * (h / w)


def identity_fit(canvas: tuple[int, int], frame_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Frame height -> canvas height, centred horizontally, square pixels (a = 1, b = 0 for equal aspects)."""
    ax = aspect_factor(canvas, frame_size)
    return np.array([ax, 1.0]), np.array([0.5 - 0.5 * ax, 0.0])


def fit_official(ref_xy: np.ndarray, drv_xy: np.ndarray, canvas: tuple[int, int], frame_size: tuple[int, int],
                 weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The official least-squares fit. ref_xy (k, 2) and drv_xy (F, k, 2) normalised; weights (F, k) of 0/1
    drops points (the official fit uses all). Raises AlignmentError where the official code would crash or give a
    degenerate transform."""
    ref_xy = np.asarray(ref_xy, dtype=np.float64)
    drv_xy = np.asarray(drv_xy, dtype=np.float64)
    if ref_xy.shape[0] < 2:
        raise AlignmentError(f"only {ref_xy.shape[0]} reference keypoint(s) scored > {SCORE_THRESHOLD}: need at "
                             "least 2 of nose, neck, shoulders, hips, knees, ankles, eyes, ears")
    if drv_xy.shape[0] == 0:
        raise AlignmentError("no driving frame is usable for the fit (the official fit uses only frames with exactly "
                             "one person)")
    ref_t = np.broadcast_to(ref_xy, drv_xy.shape)
    keep = np.ones(drv_xy.shape[:2], dtype=bool) if weights is None else np.asarray(weights, dtype=bool)
    dx, dy = drv_xy[..., 0][keep], drv_xy[..., 1][keep]
    rx, ry = ref_t[..., 0][keep], ref_t[..., 1][keep]
    if dy.size < 2:
        raise AlignmentError(f"only {dy.size} driving point(s) left for the fit")
    if np.ptp(dy) == 0:
        raise AlignmentError("the driving keypoints have no vertical spread (all at one height): scale undefined")
    ay, by = np.polyfit(dy, ry, 1)
    if not (np.isfinite(ay) and np.isfinite(by)) or ay <= 0:
        raise AlignmentError(f"the fit gave a non-positive or non-finite scale ({ay:.4g}): the driving pose does not "
                             "match the reference's vertical layout")
    ax = ay * aspect_factor(canvas, frame_size)
    bx = np.mean(rx - dx * ax)
    return np.array([ax, ay]), np.array([bx, by])


def _visible_body(person: Person) -> np.ndarray:
    return person.body[person.body[:, 2] > SCORE_THRESHOLD, :2]


def select_person(frame: PoseFrame, how: str, index: int = 0) -> int | None:
    """Index of the chosen person in a frame, None if it has nobody (or the index is out of range)."""
    people = frame.people
    if not people:
        return None
    if how == "index":
        return index if 0 <= index < len(people) else None
    if how == "highest score":
        # the detector lists people best first (the official person 0); box_score makes it explicit when present
        scores = [p.box_score if p.box_score is not None else -np.inf for p in people]
        return int(np.argmax(scores)) if np.isfinite(max(scores)) else 0
    extents = []
    for p in people:
        pts = _visible_body(p)
        if p.box is not None:
            x0, y0, x1, y1 = p.box
        elif len(pts):
            (x0, y0), (x1, y1) = pts.min(axis=0), pts.max(axis=0)
        else:
            extents.append(None)
            continue
        extents.append((float(x0), float(y0), float(x1), float(y1)))
    if all(e is None for e in extents):
        return 0
    if how == "largest":
        areas = [-1.0 if e is None else (e[2] - e[0]) * (e[3] - e[1]) for e in extents]
        return int(np.argmax(areas))
    # most central: box centre nearest the image centre, in units of the image size
    cx, cy = frame.width / 2, frame.height / 2
    dist = [np.inf if e is None else np.hypot(((e[0] + e[2]) / 2 - cx) / frame.width,
                                              ((e[1] + e[3]) / 2 - cy) / frame.height) for e in extents]
    return int(np.argmin(dist))


def fit_body(person: Person) -> np.ndarray:
    """The body as the official fit sees it: a neck stored as not found (shoulders too weak) still has the official
    position, the mean of the shoulders (with score 0), whenever both shoulders have a position."""
    body = person.body
    if not body[1].any() and body[2, :2].any() and body[5, :2].any():
        body = body.copy()
        body[1, :2] = (body[2, :2].astype(np.float64) + body[5, :2]) / 2
    return body


def _normalised(points: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return points[:, :2].astype(np.float64) / np.array(size, dtype=np.float64)


def compute_fit(reference: PoseFrame, driving: list[PoseFrame], options: AlignOptions | None = None) -> PoseFit:
    """The transform for these frames; never raises for bad poses (falls back with a warning instead)."""
    opts = options or AlignOptions()
    canvas = (int(reference.width), int(reference.height))
    if not driving:
        raise ValueError("no driving pose frames to align: connect the poses detected on the driving video")
    frame_size = (int(driving[0].width), int(driving[0].height))
    warnings: list[str] = []
    if any((f.width, f.height) != frame_size for f in driving):
        warnings.append(f"driving frames differ in size; the aspect correction uses the first frame's "
                        f"{frame_size[0]}x{frame_size[1]}")
    fit = PoseFit(a=np.ones(2), b=np.zeros(2), canvas=canvas, frame_size=frame_size,
                  fit_mask=np.zeros(len(driving), dtype=bool), warnings=warnings)

    if opts.mode == "manual":
        ax = aspect_factor(canvas, frame_size)
        fit.a = np.array([ax, 1.0]) * opts.scale
        fit.b = 0.5 - 0.5 * fit.a  # the frame centre lands on the canvas centre
    else:
        try:
            _fit_from_people(fit, reference, driving, opts)
        except AlignmentError as e:
            fit.a, fit.b = identity_fit(canvas, frame_size)
            fit.fallback = str(e)
            warnings.append(str(e))
        if opts.scale != 1.0:  # scale about the canvas centre so the figure stays in place
            fit.b = 0.5 + opts.scale * (fit.b - 0.5)
            fit.a = fit.a * opts.scale
    fit.b = fit.b + np.array([opts.offset_x / canvas[0], opts.offset_y / canvas[1]])
    for w_ in warnings:
        log.warning("ControlNeXt pose alignment: %s", w_)
    log.info("ControlNeXt pose alignment:\n%s", fit.describe())
    return fit


def _fit_from_people(fit: PoseFit, reference: PoseFrame, driving: list[PoseFrame], opts: AlignOptions) -> None:
    n_ref = len(reference.people)
    ref_idx = select_person(reference, opts.person, opts.person_index)
    if ref_idx is None:
        if n_ref and opts.person == "index":
            raise AlignmentError(f"person_index {opts.person_index} is out of range: the reference has {n_ref} "
                                 f"people (0..{n_ref - 1})")
        raise AlignmentError("no person was found in the reference image (use a reference showing the person, or "
                             "set mode to manual)")
    if n_ref > 1:
        fit.warnings.append(f"{n_ref} people in the reference: using person {ref_idx} ({opts.person})")
    fit.reference_person = ref_idx
    ref_body = reference.people[ref_idx].body
    ids = tuple(i for i in FIT_IDS if ref_body[i, 2] > SCORE_THRESHOLD)
    fit.ref_ids = ids
    ref_xy = _normalised(ref_body[list(ids)], fit.canvas)

    drv, scores, found = [], [], []
    for i, frame in enumerate(driving):
        if opts.fit_frames == FIT_FRAME_CHOICES[0]:
            pick = 0 if len(frame.people) == 1 else None
        else:
            pick = select_person(frame, opts.person, opts.person_index)
        if pick is None:
            continue
        body = fit_body(frame.people[pick])[list(ids)]
        drv.append(_normalised(body, (frame.width, frame.height)))
        found.append(~np.all(body == 0, axis=1))
        scores.append(body[:, 2])
        fit.fit_mask[i] = True
    if not drv:
        what = "exactly one person" if opts.fit_frames == FIT_FRAME_CHOICES[0] else "a person"
        raise AlignmentError(f"none of the {len(driving)} driving frames has {what}: nothing to fit on")
    # points with no position at all ([0, 0, 0]) cannot enter the fit; the official detector always gives one
    weights = np.array(found)
    if opts.mask_low_confidence:
        weights &= np.array(scores) > SCORE_THRESHOLD
    fit.a, fit.b = fit_official(ref_xy, np.array(drv).reshape(len(drv), len(ids), 2), fit.canvas, fit.frame_size,
                                weights)


def apply_fit(frame: PoseFrame, fit: PoseFit) -> PoseFrame:
    """The frame's people moved onto the canvas (pixels of the canvas); points not found stay [0, 0, 0]."""
    w, h = fit.canvas
    src = np.array([float(frame.width), float(frame.height)])
    dst = np.array([float(w), float(h)])

    def move(points: np.ndarray) -> np.ndarray:
        out = points.astype(np.float64)
        found = ~np.all(points == 0, axis=1)
        out[found, :2] = (out[found, :2] / src * fit.a + fit.b) * dst
        return out.astype(np.float32)

    people = [Person(body=move(p.body), face=move(p.face), left_hand=move(p.left_hand),
                     right_hand=move(p.right_hand), box=None, box_score=p.box_score) for p in frame.people]
    return PoseFrame(width=w, height=h, people=people)


def unapply_fit(frame: PoseFrame, fit: PoseFit, size: tuple[int, int]) -> PoseFrame:
    """The inverse of apply_fit: a frame on the canvas moved back into a driving frame of `size` (width, height)
    pixels, so poses changed on the canvas (retargeted) can be drawn over the driving video. Points not found stay
    [0, 0, 0]."""
    w, h = fit.canvas
    src = np.array([float(w), float(h)])
    dst = np.array([float(size[0]), float(size[1])])

    def move(points: np.ndarray) -> np.ndarray:
        out = points.astype(np.float64)
        found = ~np.all(points == 0, axis=1)
        out[found, :2] = (out[found, :2] / src - fit.b) / fit.a * dst
        return out.astype(np.float32)

    people = [Person(body=move(p.body), face=move(p.face), left_hand=move(p.left_hand),
                     right_hand=move(p.right_hand), box=None, box_score=p.box_score) for p in frame.people]
    return PoseFrame(width=int(size[0]), height=int(size[1]), people=people)


def align_frames(reference: PoseFrame, driving: list[PoseFrame],
                 options: AlignOptions | None = None) -> tuple[list[PoseFrame], PoseFit]:
    """Fit once on all driving frames, then move every frame onto the reference canvas."""
    fit = compute_fit(reference, driving, options)
    return [apply_fit(f, fit) for f in driving], fit


def aligned_arrays(frame: PoseFrame, fit: PoseFit) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """draw.frame_arrays of the aligned frame, kept in float64 canvas-normalised coordinates (what the official
    renderer receives), so rendering does not go through float32 pixels."""
    arrays = frame_arrays(frame)
    for arr in arrays:
        flat = arr.reshape(-1, 3)
        found = ~np.all(flat == 0, axis=1)
        flat[found, :2] = flat[found, :2] * fit.a + fit.b
    return arrays
