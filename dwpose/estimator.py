"""DWPose (RTMPose SimCC) crops and decoding: box -> 288x384 affine crop -> SimCC argmax -> image pixels."""

from __future__ import annotations

import numpy as np

POSE_W, POSE_H = 288, 384
BOX_PADDING = 1.25
MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)  # RGB
STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)
N_KEYPOINTS = 133


def box_center_scale(box: np.ndarray, size: tuple[int, int] = (POSE_W, POSE_H)) -> tuple[np.ndarray, np.ndarray]:
    """Centre and aspect-fixed scale (w, h) of a box grown by 1.25, as mmpose's bbox_xyxy2cs + _fix_aspect_ratio."""
    x0, y0, x1, y1 = (float(v) for v in box)
    center = np.array([(x0 + x1) / 2, (y0 + y1) / 2], dtype=np.float64)
    sw, sh = (x1 - x0) * BOX_PADDING, (y1 - y0) * BOX_PADDING
    aspect = size[0] / size[1]
    scale = np.array([sw, sw / aspect] if sw > sh * aspect else [sh * aspect, sh], dtype=np.float64)
    return center, scale


def crop(image: np.ndarray, center: np.ndarray, scale: np.ndarray,
         size: tuple[int, int] = (POSE_W, POSE_H)) -> np.ndarray:
    """The normalised CHW float32 crop: centre -> crop centre, uniform scale size/scale, black border."""
    import cv2  # imported on first use: cv2 costs ~0.4 s, and the pack imports in milliseconds
    k = size[0] / scale[0]
    mat = np.array([[k, 0.0, size[0] / 2 - k * center[0]], [0.0, k, size[1] / 2 - k * center[1]]])
    warped = cv2.warpAffine(image, mat, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return ((warped.astype(np.float32) - MEAN) / STD).transpose(2, 0, 1)


def split_ratio(simcc_x: np.ndarray, simcc_y: np.ndarray, size: tuple[int, int] = (POSE_W, POSE_H)) -> float:
    """The SimCC bins per pixel (2.0 for DWPose), checked to agree on both axes."""
    if simcc_x.ndim != 3 or simcc_y.ndim != 3 or simcc_x.shape[:2] != simcc_y.shape[:2]:
        raise ValueError(f"pose model outputs have shapes {simcc_x.shape} and {simcc_y.shape}; DWPose gives "
                         f"simcc_x (N, 133, {2 * size[0]}) and simcc_y (N, 133, {2 * size[1]}): is this the pose "
                         "estimator (dw-ll_ucoco_384)?")
    rx, ry = simcc_x.shape[2] / size[0], simcc_y.shape[2] / size[1]
    if simcc_x.shape[1] != N_KEYPOINTS or abs(rx - ry) > 1e-6:
        raise ValueError(f"pose model outputs have shapes {simcc_x.shape} and {simcc_y.shape}; expected 133 "
                         f"COCO-WholeBody keypoints and equal SimCC ratios for a {size[0]}x{size[1]} input")
    return rx


def decode(simcc_x: np.ndarray, simcc_y: np.ndarray, centers: np.ndarray, scales: np.ndarray,
           size: tuple[int, int] = (POSE_W, POSE_H)) -> np.ndarray:
    """SimCC outputs (N,133,Wx), (N,133,Wy) -> (N,133,3) [x, y, score] in image pixels.

    score = min of the two peaks (the model's own value); score <= 0 puts the point at crop (-1, -1), as mmpose does.
    """
    ratio = split_ratio(simcc_x, simcc_y, size)
    locs = np.stack([simcc_x.argmax(-1), simcc_y.argmax(-1)], -1).astype(np.float64)
    vals = np.minimum(simcc_x.max(-1), simcc_y.max(-1))
    locs[vals <= 0] = -1
    locs /= ratio
    pts = locs / np.array(size) * scales[:, None] + centers[:, None] - scales[:, None] / 2
    return np.concatenate([pts, vals[..., None]], -1).astype(np.float32)
