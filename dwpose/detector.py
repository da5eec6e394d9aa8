"""YOLOX-L person detection around a model backend: letterbox, grid decode and NMS as the official DWPose code does."""

from __future__ import annotations

import numpy as np

DET_SIZE = 640
PAD_VALUE = 114
STRIDES = (8, 16, 32)
NMS_SCORE = 0.1
NMS_IOU = 0.45
PERSON_SCORE = 0.3


def letterbox(image: np.ndarray, size: int = DET_SIZE) -> tuple[np.ndarray, float]:
    """RGB uint8 HxWx3 -> (1,3,size,size) float32 and the ratio r; resized top-left on a 114 canvas, no /255."""
    import cv2  # imported on first use: cv2 costs ~0.4 s, and the pack imports in milliseconds
    h, w = image.shape[:2]
    r = min(size / h, size / w)
    resized = cv2.resize(image, (int(w * r), int(h * r)), interpolation=cv2.INTER_LINEAR).astype(np.uint8)
    canvas = np.full((size, size, 3), PAD_VALUE, dtype=np.uint8)
    canvas[: resized.shape[0], : resized.shape[1]] = resized
    return canvas.transpose(2, 0, 1)[None].astype(np.float32), r


def _grids(size: int) -> tuple[np.ndarray, np.ndarray]:
    grids, strides = [], []
    for s in STRIDES:
        n = size // s
        gy, gx = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        grids.append(np.stack([gx, gy], -1).reshape(-1, 2))
        strides.append(np.full((n * n, 1), s))
    return np.concatenate(grids).astype(np.float32), np.concatenate(strides).astype(np.float32)


def decode(raw: np.ndarray, ratio: float, size: int = DET_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Raw head output (1, A, 85) -> person boxes xyxy in original pixels (A, 4) and person scores (A,)."""
    out = np.asarray(raw, dtype=np.float32).reshape(-1, raw.shape[-1])
    grids, strides = _grids(size)
    if out.shape[0] != grids.shape[0] or out.shape[1] < 6:
        raise ValueError(f"detector output has shape {tuple(raw.shape)}; a YOLOX model at {size}x{size} gives "
                         f"(1, {grids.shape[0]}, 85): is this the bbox detector (yolox_l)?")
    xy = (out[:, :2] + grids) * strides
    wh = np.exp(out[:, 2:4]) * strides
    boxes = np.concatenate([xy - wh / 2, xy + wh / 2], axis=1) / ratio  # not clipped, as the reference
    scores = out[:, 4] * out[:, 5]  # objectness * class 0 (person)
    return boxes, scores


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float = NMS_IOU) -> list[int]:
    """Greedy NMS with the reference's '+1 pixel' box sizes; indices by descending score."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size:
        i = order[0]
        keep.append(int(i))
        w = np.maximum(0.0, np.minimum(x2[i], x2[order[1:]]) - np.maximum(x1[i], x1[order[1:]]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[order[1:]]) - np.maximum(y1[i], y1[order[1:]]) + 1)
        inter = w * h
        overlap = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[1:][overlap <= iou]
    return keep


def select_people(boxes: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NMS over candidates scoring > 0.1 (class-aware NMS restricted to persons), then keep those > 0.3."""
    cand = np.nonzero(scores > NMS_SCORE)[0]
    if cand.size == 0:
        return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)
    keep = cand[nms(boxes[cand], scores[cand])]
    keep = keep[scores[keep] > PERSON_SCORE]
    return boxes[keep].astype(np.float32), scores[keep].astype(np.float32)
