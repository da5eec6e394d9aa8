"""The DWPOSE object: YOLOX-L boxes -> DWPose whole-body keypoints for a batch of frames, at native resolution; and
the pose stages between detection and drawing (run_pose_stages: track -> smooth -> align -> retarget)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import comfy.model_management as mm
import comfy.utils
import numpy as np
import torch

from . import detector as det
from . import estimator as est
from .align import AlignOptions, PoseFit, aligned_arrays, apply_fit, compute_fit, unapply_fit
from .backends import ModelFileError, OnnxModel, TorchScriptModel, batch_from_name, load_model
from .draw import frame_arrays
from .keypoints import PoseFrame, person_from_wholebody
from .retarget import RetargetOptions, retarget_frames
from .smooth import SmoothOptions, smooth_frames
from .track import TrackOptions, track_frames

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


# ----------------------------------------------------------------------------------------------------------------
# Pose stages between detection and drawing (ControlNeXtPosesForAnimation's options)
# ----------------------------------------------------------------------------------------------------------------
STAGE_ORDER = "track -> smooth -> align -> retarget"


@dataclass
class PoseStages:
    """The optional stages; None = off. All off = the official preprocessing, bit for bit."""

    track: TrackOptions | None = None
    smooth: SmoothOptions | None = None
    retarget: RetargetOptions | None = None

    @property
    def official(self) -> bool:
        return self.track is None and self.smooth is None and self.retarget is None


@dataclass
class StagedPoses:
    """The driving poses through the stages.

    raw: DWPose's detections (driving-frame pixels); driving: after track and smooth (driving-frame pixels, what the
    fit sees and, without retargeting, what is drawn through the fit); canvas: the retargeted poses on the reference
    canvas (None without retargeting)."""

    raw: list[PoseFrame]
    driving: list[PoseFrame]
    fit: PoseFit
    canvas: list[PoseFrame] | None = None
    sections: list[tuple[str, str]] = field(default_factory=list)  # (stage, its report)

    def draw_arrays(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Normalised canvas arrays of driving frame i for draw.draw_pose_arrays. Without retargeting they come
        from the fit in float64 (align.aligned_arrays, the official path); retargeted frames are canvas pixels."""
        if self.canvas is None:
            return aligned_arrays(self.driving[i], self.fit)
        return frame_arrays(self.canvas[i])

    def processed(self) -> list[PoseFrame]:
        """The final driving poses in the driving frames' pixels (retargeted ones moved back through the fit), to
        draw over the driving video next to the raw detections."""
        if self.canvas is None:
            return self.driving
        return [unapply_fit(c, self.fit, (d.width, d.height)) for c, d in zip(self.canvas, self.driving, strict=True)]

    def describe(self) -> str:
        """The fit's description alone when every stage is off (as before the stages existed); else one section per
        stage in the order they ran."""
        if len(self.sections) == 1:
            return self.sections[0][1]
        lines = [f"pose stages: {STAGE_ORDER} (off stages skipped)"]
        for name, text in self.sections:
            lines.append(f"[{name}]")
            lines += ["  " + line for line in text.splitlines()]
        return "\n".join(lines)


def run_pose_stages(reference: PoseFrame, driving: list[PoseFrame], align_options: AlignOptions | None = None,
                    stages: PoseStages | None = None) -> StagedPoses:
    """Track, smooth, align, retarget, in that order, each only when on:
    - track first: DWPose lists people in a new order every frame, and every later stage works per list position
      (smoothing filters slot k over time, retargeting measures slot k's bones); with only the dancer kept, every
      frame the dancer is seen in is a single-person frame, so the official fit can use it;
    - smooth on the driving video's own pixels, where DWPose's jitter is, before the fit and before retargeting
      measures the dancer's bone lengths (jitter lengthens the clip's typical bone, the 90th percentile);
    - retarget after the alignment, on the reference canvas: the one-scale refit there is the identity, so every
      bone gets exactly the reference's pixel length (aligning after retargeting would refit the scale on the new
      skeleton and change those lengths), and nothing after it moves a joint again.
    """
    stages = stages or PoseStages()
    frames = list(driving)
    sections: list[tuple[str, str]] = []
    if stages.track is not None:
        frames, tracked = track_frames(frames, stages.track)
        sections.append(("track", tracked.describe()))
    if stages.smooth is not None:
        frames, report = smooth_frames(frames, stages.smooth)
        sections.append(("smooth", report.describe()))
    fit = compute_fit(reference, frames, align_options)
    sections.append(("align", fit.describe()))
    staged = StagedPoses(raw=list(driving), driving=frames, fit=fit, sections=sections)
    if stages.retarget is not None:
        aligned = [apply_fit(f, fit) for f in frames]
        ref = reference
        if fit.reference_person is not None:  # measure the person the alignment used, not only the best-scoring
            ref = PoseFrame(reference.width, reference.height, [reference.people[fit.reference_person]])
        result = retarget_frames(ref, aligned, stages.retarget)
        staged.canvas = result.frames
        text = result.describe()
        if ref is not reference and len(reference.people) > 1:
            text += (f"\nmeasured reference person {fit.reference_person} of {len(reference.people)} (the one the "
                     "alignment uses; listed above as person 0)")
        sections.append(("retarget", text))
    for name, text in sections:
        if name != "align":  # compute_fit logs its own report
            log.info("ControlNeXt pose stage %s:\n%s", name, text)
    return staged
