"""ControlNeXtEnvironmentInfo: what the pack sees (version, torch device, dtypes, onnxruntime providers)."""

from __future__ import annotations

import logging

import comfy.model_management as mm
from comfy_api.v0_0_2 import io, ui

from ..controlnext.environment import environment_lines
from ..dwpose.onnx_runtime import onnxruntime_info

log = logging.getLogger(__name__)


class ControlNeXtEnvironmentInfo(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ControlNeXtEnvironmentInfo",
            display_name="ControlNeXt Environment Info",
            category="ControlNeXt-SVD/utils",
            description=(
                "Reports the pack's version and what it will run on: Python, torch, ComfyUI's compute device with "
                "its fp16/bf16 support and the precision ComfyUI would pick, and (optionally) onnxruntime's "
                "execution providers for the DWPose .onnx models. Paste its text into bug reports."
            ),
            inputs=[
                io.Boolean.Input(
                    "check_onnxruntime",
                    default=True,
                    tooltip="Also import onnxruntime and list its execution providers (CUDAExecutionProvider means "
                    "the DWPose .onnx models can run on the GPU).",
                ),
            ],
            outputs=[io.String.Output(display_name="report", tooltip="The report, one fact per line.")],
            is_output_node=True,
            not_idempotent=True,
        )

    @classmethod
    def execute(cls, check_onnxruntime: bool = True) -> io.NodeOutput:
        device = mm.get_torch_device()
        lines = environment_lines(device)
        lines.append(f"ComfyUI: VRAM state {mm.vram_state.name}, default UNet dtype {mm.unet_dtype()}")
        if check_onnxruntime:
            lines.append(onnxruntime_info().summary())
        text = "\n".join(lines)
        log.info("ControlNeXt environment:\n%s", text)
        return io.NodeOutput(text, ui=ui.PreviewText(text))
