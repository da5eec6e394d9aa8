"""ControlNeXtRetargetPoses: the driving poses rebuilt with the reference person's bone lengths (dwpose/retarget.py)."""

from __future__ import annotations

import logging

from comfy_api.v0_0_2 import io, ui

from ..dwpose.keypoints import from_pose_keypoint, to_pose_keypoint
from ..dwpose.retarget import ANCHOR_CHOICES, LENGTH_CHOICES, PARTS, RetargetOptions, retarget_frames
from .dwpose_nodes import PoseKeypoint
from .pose_nodes import reference_frame

log = logging.getLogger(__name__)

_PART_TOOLTIPS = {
    "torso": "neck to hips (both sides)",
    "shoulders": "neck to each shoulder (shoulder width)",
    "upper_arm": "shoulder to elbow",
    "forearm": "elbow to wrist (the hands scale with it)",
    "thigh": "hip to knee",
    "shin": "knee to ankle",
    "head": "neck to nose, nose to eyes, eyes to ears (the face scales with it)",
}


def _multiplier_input(part: str) -> io.Float.Input:
    return io.Float.Input(part, default=1.0, min=0.25, max=4.0, step=0.01,
                          tooltip=f"Multiplies the target length of the {part.replace('_', ' ')} bones "
                          f"({_PART_TOOLTIPS[part]}) after measuring: 1 = exactly the reference's proportions.")


class ControlNeXtRetargetPoses(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ControlNeXtRetargetPoses",
            display_name="ControlNeXt Retarget Poses",
            category="ControlNeXt-SVD/pose",
            description=(
                "Gives the driving skeleton the reference person's proportions, bone by bone (left and right "
                "separately): each bone keeps its direction from the driving frame and gets the reference's length, "
                "rebuilt from the neck outward, and the anchor (feet, hips or neck) stays where the dancer had it. "
                "Bones the reference does not show (a half-body portrait's legs) are not invented: they keep the "
                "driving length times the fitted global scale, and info says so. Works before or after ControlNeXt "
                "Align Poses (after: bones get the reference's exact pixel lengths). strength 0 = unchanged."
            ),
            inputs=[
                PoseKeypoint.Input("reference", tooltip="Poses of the reference image (the person whose proportions "
                                   "to use); only its first frame and its highest-scoring person are measured."),
                PoseKeypoint.Input("driving", tooltip="Poses of the driving video (raw, or already aligned with "
                                   "ControlNeXt Align Poses); every person in every frame is retargeted."),
                io.Float.Input("strength", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="0 = the driving poses unchanged, 1 = the reference's proportions; values in "
                               "between interpolate every point."),
                io.Combo.Input("anchor", options=list(ANCHOR_CHOICES), default=ANCHOR_CHOICES[0],
                               tooltip="What stays where the dancer had it: feet (the lower ankle, so feet do not "
                               "slide or float), hips (their midpoint) or neck. If it is missing in a frame, the "
                               "next one (hips, neck, feet) is used without a jump."),
                *[_multiplier_input(part) for part in PARTS],
                io.Boolean.Input("retarget_hands_face", default=True,
                                 tooltip="On: hands follow the wrist and the face follows the nose, scaled like the "
                                 "forearm / head. Off: they only move with them, keeping the driving size."),
                io.Combo.Input("bone_lengths", options=list(LENGTH_CHOICES), default=LENGTH_CHOICES[0],
                               tooltip="scaled: each bone's length in a frame is scaled by the same factor, so a limb "
                               "pointing at the camera stays short (foreshortening kept). exact: every bone gets "
                               "exactly the reference's length in every frame (direction kept)."),
            ],
            outputs=[
                PoseKeypoint.Output(display_name="retargeted", tooltip="The driving poses with the reference's "
                                    "proportions, same frames, people and canvas (pixel coordinates)."),
                io.String.Output(display_name="info", tooltip="Global scale, each bone's reference and driving length "
                                 "and applied ratio, which bones fell back and why, anchor use."),
            ],
        )

    @classmethod
    def execute(cls, reference: object, driving: object, strength: float = 1.0, anchor: str = ANCHOR_CHOICES[0],
                retarget_hands_face: bool = True, bone_lengths: str = LENGTH_CHOICES[0],
                **multipliers: float) -> io.NodeOutput:
        ref_frame = reference_frame(reference, "RetargetPoses")
        frames = from_pose_keypoint(driving)
        opts = RetargetOptions(strength=float(strength), anchor=anchor, hands_face=bool(retarget_hands_face),
                               lengths=bone_lengths,
                               multipliers={p: float(multipliers[p]) for p in PARTS if multipliers.get(p) is not None})
        result = retarget_frames(ref_frame, frames, opts)
        text = result.describe()
        log.info("ControlNeXt pose retargeting:\n%s", text)
        return io.NodeOutput(to_pose_keypoint(result.frames), text, ui=ui.PreviewText(text))
