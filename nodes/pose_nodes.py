"""Pose alignment and rendering nodes: ControlNeXtAlignPoses, ControlNeXtDrawPoses, ControlNeXtPosesForAnimation."""

from __future__ import annotations

import logging
from functools import partial

import comfy.model_management as mm
import comfy.utils
import torch
from comfy_api.v0_0_2 import io, ui

from ..controlnext.conditioning import check_video_size
from ..controlnext.image_fit import fit_reference
from ..dwpose.align import (
    FIT_FRAME_CHOICES,
    MODE_CHOICES,
    PERSON_CHOICES,
    AlignOptions,
    align_frames,
)
from ..dwpose.draw import draw_frame, draw_pose_arrays, frame_arrays
from ..dwpose.keypoints import PoseFrame, from_pose_keypoint, to_pose_keypoint
from ..dwpose.pipeline import STAGE_ORDER, PoseStages, images_to_uint8, run_pose_stages
from ..dwpose.retarget import ANCHOR_CHOICES, RetargetOptions
from ..dwpose.smooth import METHOD_CHOICES, SmoothOptions
from ..dwpose.track import KEEP_CHOICES, SELECT_CHOICES, TrackOptions
from .dwpose_nodes import DWPoseType, PoseKeypoint

log = logging.getLogger(__name__)

SIZE_STEP = 64


def _toggle_inputs() -> list[io.Input]:
    return [
        io.Boolean.Input("include_body", default=True, tooltip="Draw the body skeleton (limbs and joints)."),
        io.Boolean.Input("include_hand", default=True, tooltip="Draw both hands (21 points each)."),
        io.Boolean.Input("include_face", default=True, tooltip="Draw the 68 face points (grey dots)."),
    ]


def _alignment_inputs() -> list[io.Input]:
    return [
        io.Combo.Input("person", options=list(PERSON_CHOICES), default=PERSON_CHOICES[0], optional=True,
                       tooltip="Which person of the reference to align to: highest score = the detector's best person "
                       "(the official choice), largest, most central, or person_index."),
        io.Int.Input("person_index", default=0, min=0, max=64, optional=True,
                     tooltip="The person's position in the reference's people list when person = index (0 = first)."),
        io.Combo.Input("fit_frames", options=list(FIT_FRAME_CHOICES), default=FIT_FRAME_CHOICES[0], optional=True,
                       tooltip="Driving frames the fit uses: only frames with exactly one person (official), or the "
                       "person chosen as above in every frame. Every frame is moved either way."),
        io.Boolean.Input("mask_low_confidence", default=False, optional=True,
                         tooltip="Leave driving keypoints scoring 0.3 or less out of the fit (the official fit uses "
                         "them all; turn on if hidden joints pull the figure)."),
        io.Combo.Input("mode", options=list(MODE_CHOICES), default=MODE_CHOICES[0], optional=True,
                       tooltip="fit = the official least-squares scale and offset; manual = no fit: the driving "
                       "frame's height is mapped to the canvas height times scale, centred, square pixels."),
        io.Float.Input("scale", default=1.0, min=0.05, max=20.0, step=0.01, optional=True,
                       tooltip="fit mode: multiplies the fitted scale (about the canvas centre); manual mode: the "
                       "scale (1 = the driving frame's height fills the canvas height)."),
        io.Float.Input("offset_x", default=0.0, min=-8192.0, max=8192.0, step=1.0, optional=True,
                       tooltip="Extra horizontal shift in canvas pixels (positive = right), applied last."),
        io.Float.Input("offset_y", default=0.0, min=-8192.0, max=8192.0, step=1.0, optional=True,
                       tooltip="Extra vertical shift in canvas pixels (positive = down), applied last."),
    ]


TRACK_CHOICES = ("off", *SELECT_CHOICES)


def _stage_inputs() -> list[io.Input]:
    """The optional pose stages, in the order they run (after the alignment inputs: saved workflows keep their
    widget positions). Their defaults switch every stage off: the official preprocessing."""
    return [
        io.Combo.Input("track", options=list(TRACK_CHOICES), default=TRACK_CHOICES[0], optional=True,
                       tooltip="Follow the people through the driving video and keep only the dancer, chosen in the "
                       "first frame with people: largest, highest score, track_index, or nearest to track_x, "
                       "track_y. Stops bystanders and identity swaps from driving the video. off = official."),
        io.Int.Input("track_index", default=0, min=0, max=64, optional=True,
                     tooltip="track = index: the dancer's position in the first driving frame's people list (0 = "
                     "first)."),
        io.Float.Input("track_x", default=0.5, min=0.0, max=1.0, step=0.01, optional=True,
                       tooltip="track = nearest to point: horizontal position as a fraction of the driving frame "
                       "width (0 = left, 1 = right)."),
        io.Float.Input("track_y", default=0.5, min=0.0, max=1.0, step=0.01, optional=True,
                       tooltip="track = nearest to point: vertical position as a fraction of the driving frame "
                       "height (0 = top, 1 = bottom)."),
        io.Float.Input("smooth_strength", default=0.0, min=0.0, max=1.0, step=0.05, optional=True,
                       tooltip="Take DWPose's jitter out of the driving poses over time (body, hands and face alike; "
                       "dropouts up to 4 frames filled). 0 = off (official); 0.5 = a good start; 1 = strongest. "
                       "Fast moves stay sharp."),
        io.Combo.Input("smooth_method", options=list(METHOD_CHOICES), default=METHOD_CHOICES[0], optional=True,
                       tooltip="savitzky-golay = local quadratic fits with a window that shrinks on fast moves; "
                       "one-euro = the speed-adaptive 1-euro low-pass, run forwards and backwards (no lag)."),
        io.Float.Input("retarget_strength", default=0.0, min=0.0, max=1.0, step=0.05, optional=True,
                       tooltip="Give the aligned driving skeleton the reference person's proportions, bone by bone "
                       "(directions kept). 0 = off (official: one scale for the whole clip); 1 = the reference's "
                       "bone lengths. Bones the reference does not show keep the fitted scale."),
        io.Combo.Input("retarget_anchor", options=list(ANCHOR_CHOICES), default=ANCHOR_CHOICES[0], optional=True,
                       tooltip="What retargeting keeps where the aligned dancer had it: feet (the lower ankle), hips "
                       "or neck; a missing anchor falls back to the next one without a jump."),
    ]


def _stages(kwargs: dict) -> PoseStages:
    track = kwargs.get("track") or TRACK_CHOICES[0]
    if track not in TRACK_CHOICES:
        raise ValueError(f"track={track!r}: choose one of {', '.join(TRACK_CHOICES)}")
    stages = PoseStages()
    if track != "off":  # inside this node only the dancer goes on: the drawn video shows one person
        stages.track = TrackOptions(select=track, keep=KEEP_CHOICES[0], index=int(kwargs.get("track_index") or 0),
                                    x=float(_given(kwargs, "track_x", 0.5)), y=float(_given(kwargs, "track_y", 0.5)))
    smooth = float(kwargs.get("smooth_strength") or 0.0)
    if smooth > 0:
        stages.smooth = SmoothOptions(body=smooth, hands=smooth, face=smooth,
                                      method=kwargs.get("smooth_method") or METHOD_CHOICES[0])
    retarget = float(kwargs.get("retarget_strength") or 0.0)
    if retarget > 0:
        stages.retarget = RetargetOptions(strength=retarget, anchor=kwargs.get("retarget_anchor") or ANCHOR_CHOICES[0])
    return stages


def _given(kwargs: dict, key: str, default: object) -> object:
    value = kwargs.get(key)
    return default if value is None else value


def _options(kwargs: dict) -> AlignOptions:
    keys = ("person", "person_index", "fit_frames", "mask_low_confidence", "mode", "scale", "offset_x", "offset_y")
    return AlignOptions(**{k: kwargs[k] for k in keys if kwargs.get(k) is not None})


def _render_all(jobs: list, height: int, width: int) -> torch.Tensor:
    """Run the render callables into one float IMAGE batch, filled in place (no uint8 list + stack + copy)."""
    out = torch.empty((len(jobs), height, width, 3), dtype=torch.float32)
    bar = comfy.utils.ProgressBar(len(jobs))
    for i, job in enumerate(jobs):
        mm.throw_exception_if_processing_interrupted()  # ~30 ms a frame at 576x1024: long videos take a while
        out[i] = torch.from_numpy(job())
        bar.update(1)
    return out.div_(255.0)


def reference_frame(data: object, node: str) -> PoseFrame:
    """The reference POSE_KEYPOINT's first frame (an empty one is an error; extra frames are ignored with a warning
    naming `node`)."""
    frames = from_pose_keypoint(data)
    if not frames:
        raise ValueError("the reference POSE_KEYPOINT is empty: connect the poses detected on the reference image")
    if len(frames) > 1:
        log.warning("ControlNeXt %s: the reference has %d frames; using the first", node, len(frames))
    return frames[0]


class ControlNeXtAlignPoses(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ControlNeXtAlignPoses",
            display_name="ControlNeXt Align Poses",
            category="ControlNeXt-SVD/pose",
            description=(
                "Moves the driving video's poses onto the reference image, as the official ControlNeXt-SVD-v2 "
                "preprocessing does: one scale and offset fitted (least squares on the vertical positions of nose, "
                "neck, shoulders, hips, knees, ankles, eyes and ears; the horizontal scale keeps pixels square) and "
                "applied to every frame. Output poses live on the reference's canvas. If no fit is possible (no "
                "person, no single-person frame, too few points) it falls back to an identity fit and says why. The "
                "fitted scale and offset are in the info output."
            ),
            inputs=[
                PoseKeypoint.Input("reference", tooltip="Poses of the reference image (already fitted to the output "
                                   "size); its canvas size is the output canvas. Only its first frame is used."),
                PoseKeypoint.Input("driving", tooltip="Poses of the driving video frames, at their own resolution."),
                *_alignment_inputs(),
            ],
            outputs=[
                PoseKeypoint.Output(display_name="aligned", tooltip="The driving poses moved onto the reference "
                                    "canvas, one frame per driving frame (pixel coordinates of that canvas)."),
                io.String.Output(display_name="info", tooltip="The fitted scale and offset, frames used, warnings."),
            ],
        )

    @classmethod
    def execute(cls, reference: object, driving: object, **kwargs: object) -> io.NodeOutput:
        opts = _options(kwargs)
        ref = reference_frame(reference, "AlignPoses")
        frames = from_pose_keypoint(driving)
        aligned, fit = align_frames(ref, frames, opts)
        text = fit.describe()
        return io.NodeOutput(to_pose_keypoint(aligned), text, ui=ui.PreviewText(text))


class ControlNeXtDrawPoses(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ControlNeXtDrawPoses",
            display_name="ControlNeXt Draw Poses",
            category="ControlNeXt-SVD/pose",
            description=(
                "Renders POSE_KEYPOINT frames exactly like the official ControlNeXt-SVD-v2 pose images (the ones its "
                "network was trained on): drawn on a canvas whose short side is 2160 px, then resized, with limbs "
                "dimmed to 60%, hands and face without a score threshold, and the colours channel-swapped against "
                "the usual OpenPose palette. Keypoints are scaled from each frame's canvas to width x height."
            ),
            inputs=[
                PoseKeypoint.Input("poses", tooltip="Pose frames to draw (e.g. from ControlNeXt Align Poses)."),
                io.Int.Input("width", default=576, min=8, max=8192, step=8,
                             tooltip="Output width in pixels (ControlNeXt-SVD generation needs a multiple of 64)."),
                io.Int.Input("height", default=1024, min=8, max=8192, step=8,
                             tooltip="Output height in pixels (ControlNeXt-SVD generation needs a multiple of 64)."),
                *_toggle_inputs(),
            ],
            outputs=[io.Image.Output(display_name="images", tooltip="One pose image per frame, RGB, black ground.")],
        )

    @classmethod
    def execute(cls, poses: object, width: int, height: int, include_body: bool = True, include_hand: bool = True,
                include_face: bool = True) -> io.NodeOutput:
        frames = from_pose_keypoint(poses)
        if not frames:
            raise ValueError("no pose frames to draw: the POSE_KEYPOINT input is empty")
        toggles = (include_body, include_hand, include_face)
        jobs = [partial(draw_frame, frame, width, height, *toggles) for frame in frames]
        return io.NodeOutput(_render_all(jobs, height, width))


class ControlNeXtPosesForAnimation(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ControlNeXtPosesForAnimation",
            display_name="ControlNeXt Poses For Animation",
            category="ControlNeXt-SVD/pose",
            description=(
                "The official ControlNeXt-SVD-v2 preprocessing in one node: fits the reference image to width x height "
                "(cover resize, centre crop), detects poses on it and on every driving frame (native resolution), "
                "aligns the driving poses to the reference person and renders them. pose_images has one more frame "
                "than the driving video: frame 0 is the reference's own pose, as ControlNeXt Apply expects. "
                f"Optional stages, all off by default (= official), run in the order {STAGE_ORDER}: keep only the "
                "dancer, take out DWPose's jitter, give the skeleton the reference person's proportions. poses and "
                "raw_poses (driving-frame pixels) go to ControlNeXt Pose Overlay with the driving frames to compare."
            ),
            inputs=[
                DWPoseType.Input("dwpose", tooltip="From ControlNeXt DWPose Loader."),
                io.Image.Input("reference", tooltip="The image to animate, any size; only its first image is used."),
                io.Image.Input("driving_frames", tooltip="The driving video frames, any size or aspect (all used: "
                               "ControlNeXt Driving Video Frames takes every 2nd frame, as the official demo)."),
                io.Int.Input("width", default=576, min=64, max=4096, step=SIZE_STEP,
                             tooltip="Output width in pixels, a multiple of 64 (official: 576)."),
                io.Int.Input("height", default=1024, min=64, max=4096, step=SIZE_STEP,
                             tooltip="Output height in pixels, a multiple of 64 (official: 1024)."),
                *_toggle_inputs(),
                *_alignment_inputs(),
                *_stage_inputs(),
            ],
            outputs=[
                io.Image.Output(display_name="pose_images", tooltip="Reference pose + aligned driving poses "
                                "(driving frames + 1), width x height."),
                io.Image.Output(display_name="reference", tooltip="The reference image fitted to width x height."),
                io.String.Output(display_name="info", tooltip="The fitted scale and offset, frames used, warnings; "
                                 "with stages on, what each stage did."),
                PoseKeypoint.Output(display_name="poses", tooltip="The driving poses as drawn (after the stages), in "
                                    "the driving frames' pixels: for ControlNeXt Pose Overlay on the driving frames."),
                PoseKeypoint.Output(display_name="raw_poses", tooltip="DWPose's detections on the driving frames, "
                                    "untouched (driving-frame pixels): Pose Overlay's compare_poses shows them."),
            ],
        )

    @classmethod
    def execute(cls, dwpose: object, reference: torch.Tensor, driving_frames: torch.Tensor, width: int, height: int,
                include_body: bool = True, include_hand: bool = True, include_face: bool = True,
                **kwargs: object) -> io.NodeOutput:
        check_video_size(width, height)
        opts = _options(kwargs)
        stages = _stages(kwargs)  # bad stage settings fail before the detector runs
        if reference.shape[0] > 1:
            log.warning("ControlNeXt PosesForAnimation: %d reference images; using the first", reference.shape[0])
        fitted = fit_reference(reference[:1, ..., :3], width, height)
        ref_frame = dwpose.detect(images_to_uint8(fitted))[0]
        driving = dwpose.detect(images_to_uint8(driving_frames))
        staged = run_pose_stages(ref_frame, driving, opts, stages)
        toggles = (include_body, include_hand, include_face)
        jobs = [partial(draw_pose_arrays, *frame_arrays(ref_frame), height, width, *toggles)]  # frame 0: the reference
        jobs += [partial(draw_pose_arrays, *staged.draw_arrays(i), height, width, *toggles)
                 for i in range(len(driving))]
        text = staged.describe()
        return io.NodeOutput(_render_all(jobs, height, width), fitted, text, to_pose_keypoint(staged.processed()),
                             to_pose_keypoint(driving), ui=ui.PreviewText(text))
