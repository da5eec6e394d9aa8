"""Pose rendering that matches the official ControlNeXt-SVD-v2 / MimicMotion `draw_pose` pixel for pixel.

What the official renderer does, and this module repeats (see the DWPose spec, section 5):
- draw on a black canvas whose SHORT side is 2160 px (scale sr = 2160 / min(H, W)), then cv2.resize to (W, H) with
  INTER_LINEAR (no area filter), so strokes come out thin (about 2 px limbs at 576x1024);
- body: 17 limbs as filled ellipses (half-axes int(len/2) x 4, angle int(deg)), colour int(c * s_a * s_b), skipped
  if either score < 0.3; then the whole canvas is dimmed to int(0.6 * v); then 18 joint dots (radius 4, colour
  int(c * s)) for points scoring > 0.3;
- hands: 20 edges (thickness 2, colour HSV(e/20, 1, 1) * int(s_a * s_b * 255)) and 21 dots (radius 4, (0, 0,
  int(s * 255))), drawn when the pixel coordinates are >= 1, with no score threshold;
- face: 68 dots (radius 3, grey int(s * 255)), drawn when the pixel coordinates are >= 1;
- the palette is written as BGR and the canvas converted BGR->RGB at the end, so the output is channel-swapped
  against the usual ControlNet OpenPose colours (neck->right shoulder is blue, neck->nose red). The official demo
  videos show exactly this, and the ControlNeXt network was trained on it, so it is kept.

Known, documented deviations: a body score of exactly 0.3 makes the official code index candidate[-1] (the last
person's left ear) for that limb end; here the point itself is used.

Time: full-canvas passes on the 2160-short-side canvas (8.3 Mpx, 25 MB at 576x1024) dominate. The official
`(canvas * 0.6).astype(uint8)` alone costs ~180 ms there in numpy. It is not needed: limbs are solid fills that
overwrite each other on a black canvas, so filling each limb with its dimmed colour int(0.6 * saturate(c)) gives the
same pixels (the tests compare against a literal restatement of the official code). What remains is allocating the
canvas, the final INTER_LINEAR resize and the per-shape cv2 calls (see bench/bench_pose_render.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .keypoints import PoseFrame

REF_SHORT_SIDE = 2160
BODY_THRESHOLD = 0.3
EPS = 0.01
STICK_WIDTH = 4

# OpenPose-18 limbs, 0-based; the official list has 19 entries but only the first 17 are drawn
LIMBS = ((1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),
         (1, 0), (0, 14), (14, 16), (0, 15), (15, 17))
PALETTE = ((255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
           (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
           (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85))
HAND_EDGES = ((0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10), (10, 11), (11, 12),
              (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20))
_DIM_LUT = (np.arange(256) * 0.6).astype(np.uint8)  # the same float64 product and truncation as canvas * 0.6


def hsv_to_rgb_full(h: float) -> np.ndarray:
    """matplotlib.colors.hsv_to_rgb([h, 1, 1]) (same float64 formula; matplotlib is not a dependency)."""
    i = int(h * 6.0)
    f = h * 6.0 - i
    q, t = 1.0 - f, f
    return np.array([(1.0, t, 0.0), (q, 1.0, 0.0), (0.0, 1.0, t), (0.0, q, 1.0), (t, 0.0, 1.0), (1.0, 0.0, q)][i % 6])


HAND_COLOURS = tuple(hsv_to_rgb_full(e / float(len(HAND_EDGES))) for e in range(len(HAND_EDGES)))


MAX_CANVAS_SIDE = 16384


def canvas_size(height: int, width: int, short_side: int = REF_SHORT_SIDE) -> tuple[int, int]:
    """The drawing canvas (rows, cols): the official code scales the short side to 2160 and truncates.

    The long side is capped at MAX_CANVAS_SIDE (only aspect ratios beyond 7.5:1 are affected): the official rule
    would need 28 GB for an 8 x 8192 canvas. Lines are then relatively thicker, nothing else changes."""
    sz = min(height, width)
    sr = (short_side / sz) if sz != short_side else 1
    sr = min(sr, MAX_CANVAS_SIDE / max(height, width))
    return int(height * sr), int(width * sr)


def _scaled(colour: Sequence[int], s: float) -> tuple[int, int, int]:
    return tuple(int(c * s) for c in colour)  # type: ignore[return-value]


def draw_bodies(canvas: np.ndarray, bodies: np.ndarray) -> np.ndarray:
    """Limbs, 0.6 dimming, then joints, on a BLANK canvas (the official order: the body is drawn first).

    bodies: (P, 18, 3) [x, y, score] normalised to 0..1. Returns the canvas."""
    import cv2  # imported on first use: the pack must import in milliseconds (cv2 costs ~0.4 s)
    h, w = canvas.shape[:2]
    # the official loops are limb-major / joint-major with people inside: keep that order (overlaps)
    for i, (ja, jb) in enumerate(LIMBS):
        for person in bodies:
            sa, sb = float(person[ja, 2]), float(person[jb, 2])
            if sa < BODY_THRESHOLD or sb < BODY_THRESHOLD:
                continue
            ys = (float(person[ja, 0]) * float(w), float(person[jb, 0]) * float(w))
            xs = (float(person[ja, 1]) * float(h), float(person[jb, 1]) * float(h))
            m_x, m_y = (xs[0] + xs[1]) / 2, (ys[0] + ys[1]) / 2
            length = ((xs[0] - xs[1]) ** 2 + (ys[0] - ys[1]) ** 2) ** 0.5
            angle = math.degrees(math.atan2(xs[0] - xs[1], ys[0] - ys[1]))
            polygon = cv2.ellipse2Poly((int(m_y), int(m_x)), (int(length / 2), STICK_WIDTH), int(angle), 0, 360, 1)
            # the official code fills with the colour, then dims the whole canvas: fills overwrite (no blending)
            # and the canvas starts black, so filling with the dimmed colour gives the same pixels
            colour = tuple(int(_DIM_LUT[min(max(c, 0), 255)]) for c in _scaled(PALETTE[i], sa * sb))
            cv2.fillConvexPoly(canvas, polygon, colour)
    for j in range(18):
        for person in bodies:
            s = float(person[j, 2])
            if not s > BODY_THRESHOLD:
                continue
            x, y = int(float(person[j, 0]) * w), int(float(person[j, 1]) * h)
            cv2.circle(canvas, (x, y), 4, _scaled(PALETTE[j], s), thickness=-1)
    return canvas


def draw_hands(canvas: np.ndarray, hands: np.ndarray) -> np.ndarray:
    """hands: (Q, 21, 3) normalised, all left hands then all right hands (the official order)."""
    import cv2  # imported on first use: the pack must import in milliseconds (cv2 costs ~0.4 s)
    h, w = canvas.shape[:2]
    for hand in hands:
        px = [(int(float(x) * w), int(float(y) * h)) for x, y in hand[:, :2]]
        for e, (a, b) in enumerate(HAND_EDGES):
            (x1, y1), (x2, y2) = px[a], px[b]
            score = int(float(hand[a, 2]) * float(hand[b, 2]) * 255)
            if x1 > EPS and y1 > EPS and x2 > EPS and y2 > EPS:
                colour = HAND_COLOURS[e] * score  # float colour: cv2 rounds it, as in the official call
                cv2.line(canvas, (x1, y1), (x2, y2), tuple(float(c) for c in colour), thickness=2)
        for (x, y), s in zip(px, hand[:, 2], strict=True):
            if x > EPS and y > EPS:
                cv2.circle(canvas, (x, y), 4, (0, 0, int(float(s) * 255)), thickness=-1)
    return canvas


def draw_faces(canvas: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """faces: (P, 68, 3) normalised."""
    import cv2  # imported on first use: the pack must import in milliseconds (cv2 costs ~0.4 s)
    h, w = canvas.shape[:2]
    for face in faces:
        for x, y, s in face:
            x, y = int(float(x) * w), int(float(y) * h)
            conf = int(float(s) * 255)
            if x > EPS and y > EPS:
                cv2.circle(canvas, (x, y), 3, (conf, conf, conf), thickness=-1)
    return canvas


def draw_pose_arrays(bodies: np.ndarray, hands: np.ndarray, faces: np.ndarray, height: int, width: int,
                     include_body: bool = True, include_hand: bool = True, include_face: bool = True,
                     short_side: int = REF_SHORT_SIDE) -> np.ndarray:
    """The official draw_pose on normalised arrays; returns uint8 [height, width, 3] RGB.

    bodies (P, 18, 3), hands (Q, 21, 3) (left hands then right hands), faces (P, 68, 3), each [x, y, score] with
    x, y in 0..1 of the canvas (points outside it are clipped by cv2).
    """
    import cv2  # imported on first use: the pack must import in milliseconds (cv2 costs ~0.4 s)
    if height < 1 or width < 1:
        raise ValueError(f"pose canvas must be at least 1x1 pixels, got {width}x{height}")
    canvas = np.zeros((*canvas_size(height, width, short_side), 3), dtype=np.uint8)
    if include_body and len(bodies):
        canvas = draw_bodies(canvas, np.asarray(bodies, dtype=np.float64))
    if include_hand and len(hands):
        canvas = draw_hands(canvas, np.asarray(hands, dtype=np.float64))
    if include_face and len(faces):
        canvas = draw_faces(canvas, np.asarray(faces, dtype=np.float64))
    return cv2.cvtColor(cv2.resize(canvas, (width, height)), cv2.COLOR_BGR2RGB)  # INTER_LINEAR, then BGR->RGB


def draw_frame(frame: PoseFrame, width: int | None = None, height: int | None = None, include_body: bool = True,
               include_hand: bool = True, include_face: bool = True) -> np.ndarray:
    """Render one PoseFrame (pixel keypoints of a frame.width x frame.height image) at width x height (default:
    the frame's own size); coordinates are normalised by the frame size first, as the official pipeline does."""
    width = frame.width if width is None else width
    height = frame.height if height is None else height
    bodies, hands, faces = frame_arrays(frame)
    return draw_pose_arrays(bodies, hands, faces, height, width, include_body, include_hand, include_face)


def frame_arrays(frame: PoseFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalised float64 (bodies (P,18,3), hands (2P,21,3) all left then all right, faces (P,68,3)) of a frame."""
    norm = np.array([float(frame.width), float(frame.height), 1.0])
    people = frame.people
    bodies = np.array([p.body.astype(np.float64) / norm for p in people]).reshape(-1, 18, 3)
    hands = np.array([p.left_hand.astype(np.float64) / norm for p in people]
                     + [p.right_hand.astype(np.float64) / norm for p in people]).reshape(-1, 21, 3)
    faces = np.array([p.face.astype(np.float64) / norm for p in people]).reshape(-1, 68, 3)
    return bodies, hands, faces
