"""Every model file the pack's workflows use: where it is published, which ComfyUI model folder it goes to, and what
is known of its size and hash. Plain data (no ComfyUI imports), shared by scripts/setup_models.py and the
ControlNeXtModelSetup node.

Sizes and hashes are only recorded where published or measured (the spec's table of released weights); the rest are
None, and such files are checked for presence only. The spec gives only the first 8 hex digits of two sha256 sums, so
those are kept as prefixes; a prefix still catches a wrong or corrupt file.
"""

from __future__ import annotations

from dataclasses import dataclass

SETUP_COMMAND = "python scripts/setup_models.py --download"
SETUP_HINT = f"or run: {SETUP_COMMAND} (from the ControlNeXt-SVD node pack's folder) to fetch the missing model files"

SVD_REPO = "stabilityai/stable-video-diffusion-img2vid-xt-1-1"
SVD_LICENCE_URL = f"https://huggingface.co/{SVD_REPO}"


@dataclass(frozen=True)
class ModelFile:
    """One file: `repo_id`/`filename` on the Hugging Face Hub, saved as models/<folder>/<name>."""

    key: str  # short id used in sets and reports
    repo_id: str
    filename: str  # path inside the repository
    folder: str  # ComfyUI model folder name (checkpoints, diffusion_models, controlnext, dwpose)
    name: str  # file name in that folder
    size: int | None = None  # bytes, when known
    sha256: str | None = None  # full hex digest, or a prefix of it, when known
    gated: bool = False
    revision: str = "main"
    note: str = ""

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{self.repo_id}/blob/{self.revision}/{self.filename}"


FILES: tuple[ModelFile, ...] = (
    ModelFile("svd_xt_1_1", SVD_REPO, "svd_xt_1_1.safetensors", "checkpoints", "svd_xt_1_1.safetensors", gated=True,
              note="VAE + CLIP vision (ImageOnlyCheckpointLoader); gated: accept the licence first"),
    ModelFile("unet_fp16", "Kijai/ControlNeXt-SVD-V2-Comfy", "controlnext-svd_v2-unet-fp16.safetensors",
              "diffusion_models", "controlnext-svd_v2-unet-fp16.safetensors", size=3_049_435_868,
              note="fine-tuned UNet, fp16, diffusers keys"),
    ModelFile("controlnet_fp16", "Kijai/ControlNeXt-SVD-V2-Comfy", "controlnext-svd_v2-controlnet-fp16.safetensors",
              "controlnext", "controlnext-svd_v2-controlnet-fp16.safetensors", size=7_057_480,
              note="control network, fp16"),
    ModelFile("unet_fp32", "Pbihao/ControlNeXt", "ControlNeXt-SVD/v2/unet.bin", "controlnext", "unet.bin",
              sha256="e32948c7", note="official fine-tuned UNet, fp32 (~6.1 GB)"),
    ModelFile("controlnet_fp32", "Pbihao/ControlNeXt", "ControlNeXt-SVD/v2/controlnet.bin", "controlnext",
              "controlnet.bin", size=14_122_234, sha256="2a60c6e9", note="official control network, fp32"),
    ModelFile("yolox_onnx", "yzd-v/DWPose", "yolox_l.onnx", "dwpose", "yolox_l.onnx",
              note="DWPose person detector (onnxruntime)"),
    ModelFile("pose_onnx", "yzd-v/DWPose", "dw-ll_ucoco_384.onnx", "dwpose", "dw-ll_ucoco_384.onnx",
              note="DWPose whole-body estimator (onnxruntime)"),
    ModelFile("yolox_torchscript", "hr16/yolox-onnx", "yolox_l.torchscript.pt", "dwpose", "yolox_l.torchscript.pt",
              note="DWPose person detector (TorchScript)"),
    ModelFile("pose_torchscript", "hr16/DWPose-TorchScript-BatchSize5", "dw-ll_ucoco_384_bs5.torchscript.pt", "dwpose",
              "dw-ll_ucoco_384_bs5.torchscript.pt", note="DWPose whole-body estimator (TorchScript, batch 5)"),
)

_FP16 = ("svd_xt_1_1", "unet_fp16", "controlnet_fp16")
_TORCHSCRIPT_DWPOSE = ("yolox_torchscript", "pose_torchscript")
_ONNX_DWPOSE = ("yolox_onnx", "pose_onnx")
SETS: dict[str, tuple[str, ...]] = {
    # What the example workflows load: fp16 ControlNeXt files + TorchScript DWPose (needs only torch).
    "default": _FP16 + _TORCHSCRIPT_DWPOSE,
    # Same, with the ONNX DWPose files (onnxruntime; onnxruntime-gpu to run them on the GPU).
    "onnx": _FP16 + _ONNX_DWPOSE,
    # No DWPose: for workflows that take an already drawn pose video.
    "no_dwpose": _FP16,
    # The official fp32 release (as the upstream inference runs it), with TorchScript DWPose.
    "fp32": ("svd_xt_1_1", "unet_fp32", "controlnet_fp32") + _TORCHSCRIPT_DWPOSE,
    "all": tuple(f.key for f in FILES),
}
DEFAULT_SET = "default"

# Which set each example workflow (example_workflows/<name>) needs.
WORKFLOW_SETS: dict[str, str] = {
    "controlnext_svd_dance_video.json": "default",
    "controlnext_svd_long_video_16gb.json": "default",
    "controlnext_svd_low_vram_t4.json": "default",
    "controlnext_svd_pose_video.json": "no_dwpose",
}


def files_in_set(set_name: str, files: tuple[ModelFile, ...] = FILES,
                 sets: dict[str, tuple[str, ...]] | None = None) -> list[ModelFile]:
    """The files of a named set, in manifest order; an unknown name raises ValueError listing the valid ones."""
    sets = SETS if sets is None else sets
    if set_name not in sets:
        raise ValueError(f"Unknown model set {set_name!r}: choose one of {', '.join(sets)}.")
    wanted = set(sets[set_name])
    return [f for f in files if f.key in wanted]


def format_size(size: int | None) -> str:
    if size is None:
        return "size unknown"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.2f} {unit}"
    return f"{size} B"


def load_manifest_json(path: str) -> tuple[tuple[ModelFile, ...], dict[str, tuple[str, ...]]]:
    """A replacement manifest (for mirrors and tests): {"files": [{ModelFile fields}], "sets": {name: [keys]}}."""
    import json

    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    try:
        files = tuple(ModelFile(**entry) for entry in data["files"])
        sets = {name: tuple(keys) for name, keys in data["sets"].items()}
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a model manifest: it needs 'files' (a list of {{key, repo_id, filename, "
                         f"folder, name, size, sha256, gated}}) and 'sets' ({{name: [keys]}}). ({e})") from e
    known = {f.key for f in files}
    for name, keys in sets.items():
        unknown = [k for k in keys if k not in known]
        if unknown:
            raise ValueError(f"{path}: set {name!r} names unknown files {unknown}.")
    return files, sets
