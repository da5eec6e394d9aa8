"""The pack's model folders, registered with ComfyUI's folder_paths so extra_model_paths.yaml can remap them.

  models/controlnext/  ControlNeXt-SVD v2 control network files (and the fine-tuned UNet, if kept beside it)
  models/dwpose/       DWPose detector and pose estimator files (.onnx and .torchscript.pt)
"""

from __future__ import annotations

import os

import folder_paths

CONTROLNEXT_FOLDER = "controlnext"
DWPOSE_FOLDER = "dwpose"
_EXTENSIONS = {".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".onnx"}


def register_model_folders() -> None:
    """Add models/controlnext and models/dwpose (idempotent; cheap: no disk access)."""
    for name in (CONTROLNEXT_FOLDER, DWPOSE_FOLDER):
        default = os.path.join(folder_paths.models_dir, name)
        if name in folder_paths.folder_names_and_paths:
            paths, exts = folder_paths.folder_names_and_paths[name]
            if default not in paths:
                paths.append(default)
            exts.update(_EXTENSIONS)
        else:
            folder_paths.folder_names_and_paths[name] = ([default], set(_EXTENSIONS))
