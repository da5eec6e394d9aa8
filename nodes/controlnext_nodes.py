"""ControlNeXtLoader (the v2 control network) and ControlNeXtApply (the UNet patch that injects it)."""

from __future__ import annotations

import folder_paths
from comfy_api.v0_0_2 import io

from ..controlnext.controlnext_loader import ControlNeXtWeightsError, load_controlnext
from ..controlnext.model_manifest import SETUP_HINT
from ..controlnext.patch import apply_controlnext
from .paths import CONTROLNEXT_FOLDER

ControlNeXtType = io.Custom("CONTROLNEXT")


class ControlNeXtLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ControlNeXtLoader",
            display_name="ControlNeXt Loader",
            category="ControlNeXt-SVD/loaders",
            description=(
                "Loads the ControlNeXt-SVD v2 control network (3.5M parameters): the official controlnet.bin "
                "(Pbihao/ControlNeXt, ControlNeXt-SVD/v2; read safely, tensors only) or kijai's "
                "controlnext-svd_v2-controlnet-fp16.safetensors, from models/controlnext. A UNet, a v1 file or an "
                "incomplete file is refused with a message saying what it is. ComfyUI loads and offloads the "
                "network together with the UNet it is applied to."
            ),
            inputs=[
                io.Combo.Input(
                    "controlnext_name",
                    options=folder_paths.get_filename_list(CONTROLNEXT_FOLDER),
                    tooltip="The control network file in models/controlnext (about 14 MB fp32 .bin or 7 MB fp16 "
                    ".safetensors), not the multi-GB UNet.",
                ),
            ],
            outputs=[ControlNeXtType.Output(display_name="CONTROLNEXT",
                                            tooltip="The control network, for ControlNeXt Apply.")],
        )

    @classmethod
    def execute(cls, controlnext_name: str) -> io.NodeOutput:
        path = folder_paths.get_full_path(CONTROLNEXT_FOLDER, controlnext_name)
        if path is None:
            raise ControlNeXtWeightsError(
                f"{controlnext_name!r} was not found in models/controlnext (or its extra_model_paths.yaml folders): "
                f"put the control network file there and refresh the page, {SETUP_HINT}.")
        return io.NodeOutput(load_controlnext(path))


class ControlNeXtApply(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ControlNeXtApply",
            display_name="ControlNeXt Apply",
            category="ControlNeXt-SVD",
            description=(
                "Patches the ControlNeXt SVD UNet so that the pose video steers it, exactly as the official "
                "ControlNeXt-SVD-v2 inference: after the first downsample (input block 3) the control is "
                "cross-normalised to the UNet features, pooled to their size and added times 0.2*strength, on the "
                "conditional (positive) rows only. Works with KSampler (one pose per frame), ComfyUI's Context "
                "Windows (Manual) node and the ControlNeXt sampler."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The ControlNeXt-SVD v2 UNet (ControlNeXt UNet Loader)."),
                ControlNeXtType.Input("controlnext", tooltip="The control network (ControlNeXt Loader)."),
                io.Image.Input(
                    "pose_images",
                    tooltip="Drawn pose frames at the generation size (width x height in pixels, multiples of 64 "
                    "for the official UNet), one per video frame; frame 0 is the reference image's own pose.",
                ),
                io.Float.Input("strength", default=1.0, min=0.0, max=10.0, step=0.01,
                               tooltip="Multiplies the official control weight 0.2. 1.0 = official; 0 = no control."),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.001, optional=True,
                               tooltip="Fraction of the sampling (0 = first step) where the control starts."),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.001, optional=True,
                               tooltip="Fraction of the sampling (1 = last step) where the control stops."),
            ],
            outputs=[io.Model.Output(display_name="MODEL", tooltip="The patched UNet, for a sampler.")],
        )

    @classmethod
    def execute(cls, model: io.Model.Type, controlnext, pose_images, strength: float = 1.0,
                start_percent: float = 0.0, end_percent: float = 1.0) -> io.NodeOutput:
        return io.NodeOutput(apply_controlnext(model, controlnext, pose_images, strength, start_percent, end_percent))
