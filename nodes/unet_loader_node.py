"""ControlNeXtUNetLoader: the fine-tuned ControlNeXt-SVD v2 UNet as a MODEL (any released file format)."""

from __future__ import annotations

import folder_paths
from comfy_api.v0_0_2 import io

from ..controlnext.model_manifest import SETUP_HINT
from ..controlnext.unet_loader import WEIGHT_DTYPES, UNetLoadError, load_controlnext_unet
from .paths import CONTROLNEXT_FOLDER

_FOLDERS = ("diffusion_models", CONTROLNEXT_FOLDER)


def unet_file_options() -> list[str]:
    """Files of models/diffusion_models and models/controlnext, in one sorted list (read when the node is shown)."""
    names: set[str] = set()
    for folder in _FOLDERS:
        names.update(folder_paths.get_filename_list(folder))
    return sorted(names)


def resolve_unet_path(unet_name: str) -> str:
    for folder in _FOLDERS:
        path = folder_paths.get_full_path(folder, unet_name)
        if path is not None:
            return path
    raise UNetLoadError(f"UNet file {unet_name!r} was not found in models/diffusion_models or models/controlnext "
                        "(or their extra_model_paths.yaml folders): put it there and refresh the page, "
                        f"{SETUP_HINT}.")


class ControlNeXtUNetLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ControlNeXtUNetLoader",
            display_name="ControlNeXt UNet Loader",
            category="ControlNeXt-SVD/loaders",
            description=(
                "Loads the ControlNeXt-SVD v2 fine-tuned UNet as an SVD img2vid MODEL. Accepts every released form: "
                "the official unet.bin (diffusers keys, fp32, read safely and memory-mapped), kijai's "
                "controlnext-svd_v2-unet-fp16.safetensors (diffusers keys) and the _converted file (ComfyUI keys). "
                "Every tensor must match: a ControlNeXt control network, a v1 file, a full SVD checkpoint or a "
                "partial file is refused with a message saying what to use instead. Take the VAE and CLIP vision "
                "model from svd_xt_1_1.safetensors with ImageOnlyCheckpointLoader."
            ),
            inputs=[
                io.Combo.Input(
                    "unet_name",
                    options=unet_file_options(),
                    tooltip="The UNet file, from models/diffusion_models or models/controlnext.",
                ),
                io.Combo.Input(
                    "weight_dtype",
                    options=list(WEIGHT_DTYPES),
                    default="default",
                    tooltip="Precision of the UNet weights in memory. default: ComfyUI's choice for your device "
                    "(fp16 on most GPUs, fp32 on CPU). fp32 matches the official inference but needs about 6.1 GB; "
                    "fp16 about 3 GB; bf16 needs an Ampere or newer GPU to run fast (not the Colab T4).",
                ),
            ],
            outputs=[io.Model.Output(display_name="MODEL", tooltip="The fine-tuned SVD UNet, for ControlNeXt Apply "
                                     "and the samplers.")],
        )

    @classmethod
    def execute(cls, unet_name: str, weight_dtype: str = "default") -> io.NodeOutput:
        return io.NodeOutput(load_controlnext_unet(resolve_unet_path(unet_name), weight_dtype, name=unet_name))
