"""Thin ComfyUI node definitions (V3 schema, pinned to comfy_api v0_0_2) over the pack's model code."""

from __future__ import annotations

from comfy_api.v0_0_2 import ComfyExtension, io

from .conditioning_nodes import ControlNeXtDecode, ControlNeXtSVDConditioning
from .controlnext_nodes import ControlNeXtApply, ControlNeXtLoader
from .dwpose_nodes import ControlNeXtDWPoseLoader, ControlNeXtExtractPoses
from .environment import ControlNeXtEnvironmentInfo
from .guider_node import ControlNeXtGuider
from .model_setup_node import ControlNeXtModelSetup
from .paths import register_model_folders
from .pose_filter_nodes import ControlNeXtSmoothPoses, ControlNeXtTrackPeople
from .pose_nodes import ControlNeXtAlignPoses, ControlNeXtDrawPoses, ControlNeXtPosesForAnimation
from .preview_nodes import ControlNeXtPoseOverlay, ControlNeXtSideBySide
from .retarget_node import ControlNeXtRetargetPoses
from .sampler_node import ControlNeXtSampler
from .unet_loader_node import ControlNeXtUNetLoader
from .video_nodes import ControlNeXtDrivingFrames

register_model_folders()  # a dict update: listing files happens only when a node's inputs are asked for

NODES: list[type[io.ComfyNode]] = [
    ControlNeXtEnvironmentInfo,
    ControlNeXtModelSetup,
    ControlNeXtDWPoseLoader,
    ControlNeXtDrivingFrames,
    ControlNeXtExtractPoses,
    ControlNeXtTrackPeople,
    ControlNeXtSmoothPoses,
    ControlNeXtAlignPoses,
    ControlNeXtDrawPoses,
    ControlNeXtPosesForAnimation,
    ControlNeXtRetargetPoses,
    ControlNeXtUNetLoader,
    ControlNeXtLoader,
    ControlNeXtApply,
    ControlNeXtSampler,
    ControlNeXtGuider,
    ControlNeXtSVDConditioning,
    ControlNeXtDecode,
    ControlNeXtSideBySide,
    ControlNeXtPoseOverlay,
]


class ControlNeXtExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> ControlNeXtExtension:
    return ControlNeXtExtension()
