"""Preview nodes: ControlNeXtSideBySide (pose | result video) and ControlNeXtPoseOverlay (skeleton over the photo)."""

from __future__ import annotations

import logging

import torch
from comfy_api.v0_0_2 import io

from ..dwpose.draw import draw_frame
from ..dwpose.keypoints import from_pose_keypoint
from ..dwpose.overlay import MISMATCH_CHOICES, OVERLAY_MODES, overlay_poses, side_by_side
from .dwpose_nodes import PoseKeypoint

log = logging.getLogger(__name__)


class ControlNeXtSideBySide(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ControlNeXtSideBySide",
            display_name="ControlNeXt Side By Side",
            category="ControlNeXt-SVD/preview",
            description=(
                "Puts two frame batches next to each other, as the official demo videos show: pose images on the "
                "left, the generated frames on the right. The left batch is resized to the right's height (aspect "
                "kept). If the frame counts differ, frame_mismatch decides: cut to the shorter (a warning is "
                "logged), repeat the shorter's last frame, or stop with an error."
            ),
            inputs=[
                io.Image.Input("left", tooltip="Left frames, usually the pose images given to ControlNeXt Apply."),
                io.Image.Input("right", tooltip="Right frames, usually the decoded video; sets the output height."),
                io.Combo.Input("frame_mismatch", options=list(MISMATCH_CHOICES), default=MISMATCH_CHOICES[0],
                               tooltip="When the two batches have different frame counts: shortest = drop the extra "
                               "frames, repeat last = hold the shorter's last frame, error = stop."),
                io.Int.Input("gap", default=0, min=0, max=256, tooltip="Black pixels between the two halves."),
            ],
            outputs=[io.Image.Output(display_name="images", tooltip="left | right, one image per frame.")],
        )

    @classmethod
    def execute(cls, left: torch.Tensor, right: torch.Tensor, frame_mismatch: str = MISMATCH_CHOICES[0],
                gap: int = 0) -> io.NodeOutput:
        if left.shape[0] != right.shape[0] and frame_mismatch == "shortest":
            log.warning("ControlNeXt SideBySide: left has %d frames, right %d; keeping the first %d",
                        left.shape[0], right.shape[0], min(left.shape[0], right.shape[0]))
        return io.NodeOutput(side_by_side(left, right, frame_mismatch, gap))


class ControlNeXtPoseOverlay(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ControlNeXtPoseOverlay",
            display_name="ControlNeXt Pose Overlay",
            category="ControlNeXt-SVD/preview",
            description=(
                "Draws skeletons over photos, one image per pose frame, so a problem shows before the GPU minutes "
                "are spent. Over the fitted reference (pose_images of ControlNeXt Poses For Animation): the "
                "alignment (frame 0, the reference's own pose, should sit on the person). Over the driving frames "
                "(its poses output, with raw_poses as compare_poses): what tracking, smoothing and retargeting "
                "changed, the processed skeleton in colour over DWPose's raw one in white."
            ),
            inputs=[
                io.Image.Input("reference", tooltip="The photos to draw on: the reference fitted to width x height "
                               "(the 'reference' output of ControlNeXt Poses For Animation), or the driving frames; "
                               "one image, or one per pose frame."),
                io.Image.Input("pose_images", optional=True, tooltip="Pose images, e.g. pose_images of ControlNeXt "
                               "Poses For Animation (resized to the reference's size if needed)."),
                PoseKeypoint.Input("poses", optional=True, tooltip="Or poses to draw instead, scaled from their "
                                   "canvas to the photos' size: aligned poses on the reference, or the poses output "
                                   "of ControlNeXt Poses For Animation on the driving frames."),
                io.Float.Input("opacity", default=0.8, min=0.0, max=1.0, step=0.05,
                               tooltip="How strongly the skeleton covers the photo (0 = photo only, 1 = opaque)."),
                io.Combo.Input("mode", options=list(OVERLAY_MODES), default=OVERLAY_MODES[0],
                               tooltip="skeleton only = the photo stays untouched around the skeleton; blend = mix the "
                               "whole pose image in (darkens the photo)."),
                PoseKeypoint.Input("compare_poses", optional=True,
                                   tooltip="Poses to compare with, drawn in white under the others, e.g. raw_poses of "
                                   "ControlNeXt Poses For Animation under its poses: white next to colour = what the "
                                   "pose stages changed. One frame per pose frame."),
            ],
            outputs=[io.Image.Output(display_name="images", tooltip="The photos with each pose drawn over them.")],
        )

    @classmethod
    def execute(cls, reference: torch.Tensor, pose_images: torch.Tensor | None = None, poses: object = None,
                opacity: float = 0.8, mode: str = OVERLAY_MODES[0], compare_poses: object = None) -> io.NodeOutput:
        if pose_images is None and poses is None:
            raise ValueError("ControlNeXt Pose Overlay needs pose_images or poses: connect one of them")
        if pose_images is not None and poses is not None:
            log.warning("ControlNeXt PoseOverlay: both pose_images and poses are connected; using pose_images")
        height, width = int(reference.shape[1]), int(reference.shape[2])
        if pose_images is None:
            pose_images = _drawn(poses, "poses", width, height)
        compare = None if compare_poses is None else _drawn(compare_poses, "compare_poses", width, height)
        return io.NodeOutput(overlay_poses(reference, pose_images, opacity, mode, compare))


def _drawn(poses: object, name: str, width: int, height: int) -> torch.Tensor:
    """POSE_KEYPOINT frames rendered (official style) at width x height, as an IMAGE batch."""
    frames = from_pose_keypoint(poses)
    if not frames:
        raise ValueError(f"no pose frames to draw: the {name} input is empty")
    drawn = [torch.from_numpy(draw_frame(f, width, height)) for f in frames]  # uint8 RGB
    return torch.stack(drawn).float().div_(255.0)
