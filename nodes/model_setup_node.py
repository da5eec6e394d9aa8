"""ControlNeXtModelSetup: checks (and, when asked, downloads) the model files of a set into ComfyUI's model folders."""

from __future__ import annotations

import logging
import os

import folder_paths
from comfy_api.v0_0_2 import io, ui

from ..controlnext import model_download, model_manifest

log = logging.getLogger(__name__)

ACTIONS = ("check", "download missing")


def _folder_for(name: str) -> str:
    """The first folder ComfyUI lists for a model type (models/<name> unless extra_model_paths.yaml says otherwise)."""
    if name in folder_paths.folder_names_and_paths:
        return folder_paths.get_folder_paths(name)[0]
    return os.path.join(folder_paths.models_dir, name)


def _find_existing(f: model_manifest.ModelFile) -> str | None:
    if f.folder not in folder_paths.folder_names_and_paths:
        return None
    return folder_paths.get_full_path(f.folder, f.name)


class ControlNeXtModelSetup(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ControlNeXtModelSetup",
            display_name="ControlNeXt Model Setup",
            category="ControlNeXt-SVD/utils",
            description=(
                "Lists the model files a set needs (SVD 1.1 checkpoint, ControlNeXt UNet and control network, DWPose "
                "files), which are present in ComfyUI's model folders, and, only when you choose 'download missing' "
                "and tick confirm, downloads the missing ones from Hugging Face (needs huggingface_hub; the token "
                "comes from HF_TOKEN; SVD 1.1 is gated, so accept its licence first). Same logic as "
                f"`{model_manifest.SETUP_COMMAND}`. The fp16 set is about 7 GB."
            ),
            inputs=[
                io.Combo.Input("model_set", options=list(model_manifest.SETS), default=model_manifest.DEFAULT_SET,
                               tooltip="default: SVD 1.1, the fp16 UNet + control network and the TorchScript "
                               "DWPose files (what the example workflows use); onnx: the same with the ONNX DWPose "
                               "files; no_dwpose: without DWPose (for a ready pose video); fp32: the official fp32 "
                               "release (about 6.1 GB UNet); all: every file."),
                io.Combo.Input("action", options=list(ACTIONS), default=ACTIONS[0],
                               tooltip="check: only report what is present. download missing: fetch the missing "
                               "files (several GB; resumes a cut download when run again)."),
                io.Boolean.Input("confirm_download", default=False,
                                 tooltip="Must be on for 'download missing' to download anything: a guard against "
                                 "starting a multi-GB download by accident."),
            ],
            outputs=[io.String.Output(display_name="report", tooltip="One line per file, then a summary.")],
            is_output_node=True,
            not_idempotent=True,
        )

    @classmethod
    def execute(cls, model_set: str, action: str = ACTIONS[0], confirm_download: bool = False) -> io.NodeOutput:
        files = model_manifest.files_in_set(model_set, model_manifest.FILES, model_manifest.SETS)
        download = action == ACTIONS[1]
        if download and not confirm_download:
            statuses, errors = model_download.setup_files(files, _folder_for, download=False,
                                                          find_existing=_find_existing)
            errors = ["Nothing was downloaded: turn on confirm_download to download the missing files."] \
                if not all(st.ok for st in statuses) else []
        else:
            statuses, errors = model_download.setup_files(files, _folder_for, download=download,
                                                          find_existing=_find_existing, log=log.info)
        text = model_download.format_report(statuses, errors)
        if not all(st.ok for st in statuses) and not download:
            text += f"\nTo fetch the missing files choose 'download missing' here, {model_manifest.SETUP_HINT}."
        log.info("ControlNeXt model setup:\n%s", text)
        return io.NodeOutput(text, ui=ui.PreviewText(text))
