"""ControlNeXtDWPoseLoader and ControlNeXtExtractPoses: DWPose keypoints (POSE_KEYPOINT) from IMAGE frames."""

from __future__ import annotations

import logging
import os

import folder_paths
import torch
from comfy_api.v0_0_2 import io, ui

from ..controlnext.model_manifest import SETUP_HINT
from ..dwpose.backends import MODEL_SOURCES, PROVIDERS, source_hint
from ..dwpose.keypoints import to_pose_keypoint
from ..dwpose.pipeline import DWPose, images_to_uint8
from .paths import DWPOSE_FOLDER

log = logging.getLogger(__name__)

DWPoseType = io.Custom("DWPOSE")
PoseKeypoint = io.Custom("POSE_KEYPOINT")

BBOX_DEFAULTS = ["yolox_l.onnx", "yolox_l.torchscript.pt"]
POSE_DEFAULTS = ["dw-ll_ucoco_384.onnx", "dw-ll_ucoco_384_bs5.torchscript.pt"]


def _choices(defaults: list[str], prefer: str) -> list[str]:
    """The published names first (so a missing one gives a helpful error, not 'value not in list'), then other files
    of models/dwpose whose name suggests the role."""
    found = [f for f in folder_paths.get_filename_list(DWPOSE_FOLDER) if f not in defaults]
    return defaults + sorted(f for f in found if prefer in os.path.basename(f).lower()) + \
        sorted(f for f in found if prefer not in os.path.basename(f).lower())


def resolve_model_file(name: str) -> str:
    """Full path of a models/dwpose file, or an error naming the file, the folders searched and the download page."""
    path = folder_paths.get_full_path(DWPOSE_FOLDER, name)
    if path is None:
        folders = ", ".join(folder_paths.get_folder_paths(DWPOSE_FOLDER))
        raise FileNotFoundError(
            f"DWPose model file '{name}' was not found in the dwpose model folder(s): {folders}. Download it from "
            f"{source_hint(name)} and put it there (or map 'dwpose' in extra_model_paths.yaml), then press R to "
            f"refresh the node's file list; {SETUP_HINT}.")
    return path


class ControlNeXtDWPoseLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ControlNeXtDWPoseLoader",
            display_name="ControlNeXt DWPose Loader",
            category="ControlNeXt-SVD/pose",
            description=(
                "Loads the DWPose person detector (YOLOX-L) and whole-body pose estimator from models/dwpose. .onnx "
                "files run with onnxruntime (on the GPU when onnxruntime-gpu works, else on the CPU); "
                ".torchscript.pt files run with torch on ComfyUI's device. Files: "
                + ", ".join(f"{k} ({v})" for k, v in MODEL_SOURCES.items()) + ". Nothing is downloaded."
            ),
            inputs=[
                io.Combo.Input("bbox_detector", options=_choices(BBOX_DEFAULTS, "yolox"), default=BBOX_DEFAULTS[0],
                               tooltip="Person detector file in models/dwpose: yolox_l.onnx (onnxruntime) or "
                               "yolox_l.torchscript.pt (torch)."),
                io.Combo.Input("pose_estimator", options=_choices(POSE_DEFAULTS, "ucoco"), default=POSE_DEFAULTS[0],
                               tooltip="Whole-body pose file in models/dwpose: dw-ll_ucoco_384.onnx (onnxruntime) or "
                               "dw-ll_ucoco_384_bs5.torchscript.pt (torch, batches of 5)."),
                io.Combo.Input("onnx_provider", options=list(PROVIDERS), default="auto", optional=True,
                               tooltip="For .onnx files: auto = CUDA when onnxruntime-gpu works, else CPU; CPU forces "
                               "the CPU. TorchScript files always use ComfyUI's device."),
                io.Boolean.Input("whole_image_fallback", default=False, optional=True,
                                 tooltip="When no person is detected in a frame: off = the frame has no people; on = "
                                 "estimate a pose on the whole image, as the official ControlNeXt code does."),
            ],
            outputs=[DWPoseType.Output(display_name="dwpose", tooltip="The loaded detector + pose estimator.")],
        )

    @classmethod
    def execute(cls, bbox_detector: str, pose_estimator: str, onnx_provider: str = "auto",
                whole_image_fallback: bool = False) -> io.NodeOutput:
        model = DWPose(resolve_model_file(bbox_detector), resolve_model_file(pose_estimator), provider=onnx_provider,
                       whole_image_fallback=whole_image_fallback)
        log.info("%s", model.describe())
        return io.NodeOutput(model)


class ControlNeXtExtractPoses(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ControlNeXtExtractPoses",
            display_name="ControlNeXt Extract Poses (DWPose)",
            category="ControlNeXt-SVD/pose",
            description=(
                "Finds people and their body, face and hand keypoints in every frame, at the frame's own resolution. "
                "Outputs POSE_KEYPOINT: per frame an OpenPose-JSON dict (pixel coordinates, the model's confidences; "
                "the layout comfyui_controlnet_aux uses), and a line saying which backend and device ran."
            ),
            inputs=[
                DWPoseType.Input("dwpose", tooltip="From ControlNeXt DWPose Loader."),
                io.Image.Input("images", tooltip="Frames (or a reference image) to analyse, any size or aspect."),
            ],
            outputs=[
                PoseKeypoint.Output(display_name="pose_keypoint", tooltip="One OpenPose-JSON dict per frame."),
                io.String.Output(display_name="info", tooltip="Files, backend and provider/device that ran, counts."),
            ],
        )

    @classmethod
    def execute(cls, dwpose: DWPose, images: torch.Tensor) -> io.NodeOutput:
        frames = dwpose.detect(images_to_uint8(images))
        text = dwpose.describe()
        return io.NodeOutput(to_pose_keypoint(frames), text, ui=ui.PreviewText(text))
