"""ControlNeXtGuider: the official windowed guidance as a GUIDER for ComfyUI's SamplerCustomAdvanced."""

from __future__ import annotations

from comfy_api.v0_0_2 import io

from ..controlnext.sampling import ControlNeXtGuider as WindowGuider
from .sampler_node import guidance_inputs, window_inputs


class ControlNeXtGuider(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ControlNeXtGuider",
            display_name="ControlNeXt Guider (windows)",
            category="ControlNeXt-SVD",
            description=(
                "The guidance of ControlNeXt Sampler as a GUIDER for ComfyUI's SamplerCustomAdvanced: overlapping "
                "windows anchored by the reference pose, a CFG ramp inside every window, averaging where windows "
                "overlap. Use it to pick the noise, sampler and sigmas yourself (e.g. AlignYourStepsScheduler with "
                "model_type SVD, SplitSigmas). With RandomNoise, KSamplerSelect euler and BasicScheduler karras it "
                "gives exactly what ControlNeXt Sampler gives."
            ),
            inputs=[*guidance_inputs(), *window_inputs()],
            outputs=[io.Guider.Output(tooltip="For SamplerCustomAdvanced's guider input.")],
        )

    @classmethod
    def execute(cls, model, positive, negative, cfg_min: float, cfg_max: float, frames_per_window: int,
                overlap: int) -> io.NodeOutput:
        guider = WindowGuider(model, frames_per_window, overlap, cfg_min, cfg_max)
        guider.set_conds(positive, negative)
        return io.NodeOutput(guider)
