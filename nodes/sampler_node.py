"""ControlNeXtSampler: the official overlapping-window sampling on ComfyUI's samplers, schedulers and previews."""

from __future__ import annotations

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
from comfy_api.v0_0_2 import io

from ..controlnext.sampling import ControlNeXtGuider


def guidance_inputs() -> list[io.Input]:
    """The model and conditioning inputs shared by ControlNeXtSampler and ControlNeXtGuider."""
    return [
        io.Model.Input("model", tooltip="The ControlNeXt UNet with ControlNeXtApply attached (a plain SVD "
                       "model also works: windows without pose control)."),
        io.Conditioning.Input("positive", tooltip="From ControlNeXtSVDConditioning (or SVD_img2vid_Conditioning)."),
        io.Conditioning.Input("negative", tooltip="From the same conditioning node."),
    ]


def window_inputs() -> list[io.Input]:
    """The window and CFG-ramp inputs shared by ControlNeXtSampler and ControlNeXtGuider."""
    return [
        io.Float.Input("cfg_min", default=3.0, min=0.0, max=30.0, step=0.1, round=0.01,
                       tooltip="Guidance at the first frame of every window (official: 3.0)."),
        io.Float.Input("cfg_max", default=3.0, min=0.0, max=30.0, step=0.1, round=0.01,
                       tooltip="Guidance at the last frame of every window; frames in between are linearly "
                       "interpolated. 1.0 for both skips the unconditional pass (half the compute)."),
        io.Int.Input("frames_per_window", default=24, min=2, max=256,
                     tooltip="Frames denoised together, in frames (official: 24). Lower it to save VRAM; "
                     "clips shorter than this run as one window."),
        io.Int.Input("overlap", default=6, min=0, max=255,
                     tooltip="Frames shared by consecutive windows (official: 6); must be smaller than "
                     "frames_per_window. More overlap: smoother joins, more compute."),
    ]


class ControlNeXtSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ControlNeXtSampler",
            display_name="ControlNeXt Sampler (windows)",
            category="ControlNeXt-SVD",
            description=(
                "Samples an SVD video the way the official ControlNeXt-SVD v2 pipeline does: overlapping windows of "
                "frames_per_window frames, each anchored by the reference pose, a CFG ramp from cfg_min to cfg_max "
                "inside every window, and averaging where windows overlap. Memory follows the window length, not "
                "the video length. Uses ComfyUI's samplers, schedulers, seeds, previews and interruption. "
                "Defaults are the official settings (euler, karras, 25 steps, cfg 3, 24-frame windows, overlap 6)."
            ),
            inputs=[
                *guidance_inputs(),
                io.Latent.Input("latent_image", tooltip="The empty video latent: one frame per pose image, frame 0 "
                                "being the reference pose's frame."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Noise seed; the same seed gives the same noise as ComfyUI's KSampler."),
                io.Int.Input("steps", default=25, min=1, max=200, tooltip="Denoising steps (official: 25)."),
                *window_inputs(),
                io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS, default="euler",
                               tooltip="ComfyUI sampler; euler reproduces the official scheduler exactly."),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, default="karras",
                               tooltip="Sigma schedule; karras (0.002..700) is the official one."),
                io.Sigmas.Input("sigmas", optional=True,
                                tooltip="Optional custom sigmas (e.g. AlignYourStepsScheduler with model_type SVD, "
                                "or BasicScheduler); when connected they replace steps and scheduler."),
            ],
            outputs=[io.Latent.Output(tooltip="The denoised video latent, for ControlNeXtDecode.")],
        )

    @classmethod
    def execute(cls, model, positive, negative, latent_image, seed: int, steps: int, cfg_min: float, cfg_max: float,
                frames_per_window: int, overlap: int, sampler_name: str, scheduler: str,
                sigmas=None) -> io.NodeOutput:
        latent = latent_image["samples"]
        latent = comfy.sample.fix_empty_latent_channels(model, latent)
        noise = comfy.sample.prepare_noise(latent, seed, latent_image.get("batch_index"))
        guider = ControlNeXtGuider(model, frames_per_window, overlap, cfg_min, cfg_max)
        guider.set_conds(positive, negative)
        if sigmas is None:
            sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), scheduler, steps)
        sigmas = sigmas.cpu()
        sampler = comfy.samplers.sampler_object(sampler_name)
        callback = latent_preview.prepare_callback(model, max(len(sigmas) - 1, 1))
        samples = guider.sample(noise, latent, sampler, sigmas, denoise_mask=latent_image.get("noise_mask"),
                                callback=callback, disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
        out = latent_image.copy()
        out["samples"] = samples.to(comfy.model_management.intermediate_device())
        return io.NodeOutput(out)
