"""The DWPOSE object: YOLOX-L boxes -> DWPose whole-body keypoints for a batch of frames, at native resolution."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import comfy.model_management as mm
import comfy.utils
import numpy as np
import torch

from . import detector as det
from . import estimator as est
from .backends import ModelFileError, OnnxModel, TorchScriptModel, batch_from_name, load_model
from .keypoints import PoseFrame, person_from_wholebody

log = logging.getLogger(__name__)

DYNAMIC_POSE_BATCH = 16  # crops per call when the pose model's batch dim is symbolic
TORCHSCRIPT_POSE_BATCH = 5  # hr16's file is traced at batch 5


class DWPose:
    """Detector + pose estimator. detect() takes RGB uint8 [N,H,W,3] and returns one PoseFrame per image.

    With no detected person a frame has no people (comfyui_controlnet_aux's behaviour), unless
    whole_image_fallback is set: then the whole image is one box, as the official ControlNeXt code does.
    """

    def __init__(self, bbox_path: str, pose_path: str, provider: str = "auto",
                 whole_image_fallback: bool = False) -> None:
        self.bbox_path, self.pose_path = bbox_path, pose_path
        self.provider = provider
        self.whole_image_fallback = whole_image_fallback
        self.det_model = load_model(bbox_path, provider)
        ts_batch = batch_from_name(pose_path) or TORCHSCRIPT_POSE_BATCH
        self.pose_model = load_model(pose_path, provider, torchscript_batch=ts_batch)
        self.pose_size = (est.POSE_W, est.POSE_H)
        self._check_io()
        self.last_run: str | None = None

    def _check_io(self) -> None:
        """Catch swapped or foreign files at load time where the ONNX metadata allows it."""
        d, p = self.det_model, self.pose_model
        if isinstance(d, OnnxModel):
            shape = d.input_shape
            if len(shape) != 4 or shape[1] != 3 or shape[2:] != [det.DET_SIZE, det.DET_SIZE]:
                raise ModelFileError(f"{os.path.basename(self.bbox_path)} takes input {shape}, but the bbox detector "
                                     f"must take [1, 3, 640, 640] (yolox_l): choose yolox_l.onnx as bbox_detector")
        if isinstance(p, OnnxModel):
            shape = p.input_shape
            if len(shape) != 4 or shape[1] != 3 or not all(isinstance(v, int) for v in shape[2:]) \
                    or len(p.output_shapes) < 2:
                raise ModelFileError(f"{os.path.basename(self.pose_path)} takes input {shape} and has "
                                     f"{len(p.output_shapes)} output(s), but the pose estimator takes [N, 3, 384, 288] "
                                     f"and returns simcc_x, simcc_y: choose dw-ll_ucoco_384.onnx as pose_estimator")
            self.pose_size = (shape[3], shape[2])  # (w, h) read from the session, as the reference does

    def _pose_batch(self) -> int:
        b = self.pose_model.batch
        return b if b else DYNAMIC_POSE_BATCH

    def describe(self) -> str:
        parts = [f"bbox {os.path.basename(self.bbox_path)} ({self._where(self.det_model)})",
                 f"pose {os.path.basename(self.pose_path)} ({self._where(self.pose_model)}, "
                 f"batch {self.pose_model.batch or 'dynamic'})"]
        text = "DWPose: " + "; ".join(parts)
        return text + (f"; last run: {self.last_run}" if self.last_run else "")

    @staticmethod
    def _where(model: OnnxModel | TorchScriptModel) -> str:
        info = model.info
        return f"{info.backend} {info.where}"

    def _run_pose(self, crops: list[np.ndarray]) -> list[np.ndarray]:
        """Run crops through the pose model in chunks of its batch size; fixed-batch models get zero padding."""
        batch = self._pose_batch()
        fixed = self.pose_model.batch is not None
        xs, ys = [], []
        for start in range(0, len(crops), batch):
            chunk = crops[start:start + batch]
            n = len(chunk)
            x = np.stack(chunk + [np.zeros_like(chunk[0])] * (batch - n if fixed else 0))
            out = self._call(self.pose_model, x, self.pose_path,
                             "pose estimator (dw-ll_ucoco_384, [N,3,384,288] input)")
            if len(out) < 2:
                raise ModelFileError(f"{os.path.basename(self.pose_path)} returned {len(out)} output(s); the pose "
                                     "estimator returns (simcc_x, simcc_y): is it dw-ll_ucoco_384?")
            xs.append(out[0][:n])
            ys.append(out[1][:n])
        return [np.concatenate(xs), np.concatenate(ys)]

    @staticmethod
    def _call(model: OnnxModel | TorchScriptModel, x: np.ndarray, path: str, role: str) -> list[np.ndarray]:
        try:
            return model.run(x)
        except torch.OutOfMemoryError:
            raise
        except RuntimeError as e:  # a TorchScript file for the other role fails inside its graph
            raise ModelFileError(f"{os.path.basename(path)} failed on an input of shape {list(x.shape)}: is it the "
                                 f"{role}? ({str(e).splitlines()[0]})") from e

    def _detect_boxes(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x, r = det.letterbox(image)
        out = self._call(self.det_model, x, self.bbox_path, "bbox detector (yolox_l, [1,3,640,640] input)")
        try:
            boxes, scores = det.decode(out[0], r)
        except ValueError as e:
            raise ModelFileError(f"{os.path.basename(self.bbox_path)}: {e}") from e
        return det.select_people(boxes, scores)

    def detect(self, images: np.ndarray, progress: Callable[[int], None] | None = None) -> list[PoseFrame]:
        """Poses for RGB uint8 images [N,H,W,3] (or one [H,W,3]), each at its native resolution."""
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"detect() takes RGB uint8 images [N, H, W, 3]; got {images.dtype} {images.shape}")
        n = images.shape[0]
        pbar = comfy.utils.ProgressBar(n)
        frames: list[PoseFrame | None] = [None] * n
        pending: list[tuple[int, np.ndarray, float | None, np.ndarray, np.ndarray]] = []
        pending_frames: list[int] = []
        target = self._pose_batch()
        device = mm.get_torch_device()
        models = (self.det_model, self.pose_model)
        try:
            for m in models:
                m.activate(device)
            for i in range(n):
                mm.throw_exception_if_processing_interrupted()
                image = images[i]
                h, w = image.shape[:2]
                frames[i] = PoseFrame(width=w, height=h, people=[])
                boxes, scores = self._detect_boxes(image)
                box_list = [(b, float(s)) for b, s in zip(boxes, scores, strict=True)]
                if not box_list and self.whole_image_fallback:
                    box_list = [(np.array([0, 0, w, h], np.float32), None)]
                for box, score in box_list:
                    center, scale = est.box_center_scale(box, self.pose_size)
                    pending.append((i, box, score, center, scale))
                pending_frames.append(i)
                if len(pending) >= target or i == n - 1:
                    self._flush(images, pending, frames)
                    pending = []
                    pbar.update(len(pending_frames))
                    if progress:
                        progress(len(pending_frames))
                    pending_frames = []
        finally:
            for m in models:
                m.deactivate()
        self.last_run = f"{n} frame(s), {sum(len(f.people) for f in frames)} person(s), " \
                        f"{self._where(self.det_model)} / {self._where(self.pose_model)}"
        log.info("DWPose: %s", self.last_run)
        return frames  # type: ignore[return-value]

    def _flush(self, images: np.ndarray, pending: list, frames: list[PoseFrame | None]) -> None:
        if not pending:
            return
        crops = [est.crop(images[i], c, s, self.pose_size) for i, _, _, c, s in pending]
        simcc_x, simcc_y = self._run_pose(crops)
        try:
            pts = est.decode(simcc_x, simcc_y, np.stack([p[3] for p in pending]), np.stack([p[4] for p in pending]),
                             self.pose_size)
        except ValueError as e:
            raise ModelFileError(f"{os.path.basename(self.pose_path)}: {e}") from e
        for (i, box, score, _, _), kp in zip(pending, pts, strict=True):
            frames[i].people.append(person_from_wholebody(kp, box, score))

    def close(self) -> None:
        self.det_model.close()
        self.pose_model.close()


def images_to_uint8(images: torch.Tensor) -> np.ndarray:
    """ComfyUI IMAGE [B,H,W,C] float 0..1 -> RGB uint8 [B,H,W,3] (clip, round half to even; alpha dropped)."""
    if images.ndim != 4 or images.shape[-1] not in (3, 4):
        raise ValueError(f"expected an IMAGE batch [B, H, W, 3], got shape {tuple(images.shape)}")
    rgb = images[..., :3]
    if rgb.dtype != torch.float32:  # other dtypes round in their own precision: keep torch's arithmetic for them
        return (rgb.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    # Frame by frame through one reused float32 buffer, the same IEEE operations as the torch expression above:
    # on the whole batch that made three batch-sized float temporaries (2 GB each for 300 frames at 576x1024) and a
    # slow float->uint8 copy, ~4x the time of this loop (bench/bench_pose_extract.py).
    src = rgb.cpu().numpy()
    out = np.empty(src.shape, dtype=np.uint8)
    buf = np.empty(src.shape[1:], dtype=np.float32)
    for i in range(src.shape[0]):
        np.clip(src[i], 0, 1, out=buf)
        buf *= 255
        np.rint(buf, out=buf)
        out[i] = buf
    return out
