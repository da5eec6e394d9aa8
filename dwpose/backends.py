"""Run a DWPose model file: ONNX through onnxruntime (CUDA when it works, else CPU) or TorchScript on ComfyUI's device.

Both backends take and return numpy float32 arrays, so the pre/post-processing is shared. Nothing here runs at import
time: onnxruntime is imported, and files are read, only when a model is loaded.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass

import comfy.model_management as mm
import numpy as np
import torch

log = logging.getLogger(__name__)

# Where the published files come from (the loader never downloads: it only names them in its errors)
MODEL_SOURCES = {
    "yolox_l.onnx": "https://huggingface.co/yzd-v/DWPose/blob/main/yolox_l.onnx",
    "dw-ll_ucoco_384.onnx": "https://huggingface.co/yzd-v/DWPose/blob/main/dw-ll_ucoco_384.onnx",
    "yolox_l.torchscript.pt": "https://huggingface.co/hr16/yolox-onnx/blob/main/yolox_l.torchscript.pt",
    "dw-ll_ucoco_384_bs5.torchscript.pt":
        "https://huggingface.co/hr16/DWPose-TorchScript-BatchSize5/blob/main/dw-ll_ucoco_384_bs5.torchscript.pt",
}
ORT_INSTALL_HINT = ("pip install onnxruntime-gpu (NVIDIA GPUs) or pip install onnxruntime (CPU) into ComfyUI's Python, "
                    "then restart ComfyUI; or pick the .torchscript.pt files, which need only torch")
PROVIDERS = ("auto", "CUDA", "CPU")
TORCHSCRIPT_SUFFIXES = (".torchscript.pt", ".torchscript", ".pt", ".pth", ".jit")


class ModelFileError(ValueError):
    """A model file that cannot be used (wrong kind, unreadable, unexpected inputs/outputs)."""


def source_hint(filename: str) -> str:
    """Where to download a known file, or where the published ones live."""
    base = os.path.basename(filename)
    if base in MODEL_SOURCES:
        return MODEL_SOURCES[base]
    return ("the published files: https://huggingface.co/yzd-v/DWPose (yolox_l.onnx, dw-ll_ucoco_384.onnx), "
            "https://huggingface.co/hr16/yolox-onnx (yolox_l.torchscript.pt), "
            "https://huggingface.co/hr16/DWPose-TorchScript-BatchSize5 (dw-ll_ucoco_384_bs5.torchscript.pt)")


def is_onnx(path: str) -> bool:
    return path.lower().endswith(".onnx")


@dataclass
class RunInfo:
    """What ran: for the node's report."""

    backend: str  # "onnxruntime" or "torchscript"
    where: str  # execution provider or torch device


def _ort_errors() -> tuple[type[BaseException], ...]:
    """onnxruntime's load errors (InvalidProtobuf, Fail, ...) derive from Exception only: name them explicitly."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    names = ("Fail", "InvalidArgument", "NoSuchFile", "NoModel", "InvalidProtobuf", "InvalidGraph", "ModelLoaded",
             "RuntimeException", "NotImplemented", "EPFail")
    return (RuntimeError, ValueError, OSError) + tuple(getattr(state, n) for n in names if hasattr(state, n))


class OnnxModel:
    """An onnxruntime session; `batch` is the declared static batch size, or None when the batch dim is symbolic."""

    def __init__(self, path: str, provider: str = "auto") -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ModelFileError(
                f"{os.path.basename(path)} is an ONNX model, but onnxruntime is not installed ({e}). "
                f"{ORT_INSTALL_HINT}.") from e
        if provider not in PROVIDERS:
            raise ValueError(f"provider must be one of {PROVIDERS}, got {provider!r}")
        available = ort.get_available_providers()
        wanted = ["CPUExecutionProvider"]
        if provider in ("auto", "CUDA") and "CUDAExecutionProvider" in available:
            wanted.insert(0, "CUDAExecutionProvider")
        elif provider == "CUDA":
            log.warning("DWPose: CUDAExecutionProvider is not available (onnxruntime providers: %s); using CPU. "
                        "Install onnxruntime-gpu matching your CUDA to run .onnx models on the GPU.", available)
        self._ort, self.path = ort, path
        try:
            self.session = self._open(wanted)
        except _ort_errors() as e:
            if len(wanted) > 1 and "CUDA" in str(e):
                log.warning("DWPose: onnxruntime could not start CUDA for %s (%s); using CPU.", path, e)
                wanted = ["CPUExecutionProvider"]
                self.session = self._open(wanted)
            else:
                raise ModelFileError(f"onnxruntime cannot load {path}: {e}. Re-download it from "
                                     f"{source_hint(path)}.") from e
        # a GPU wheel whose CUDA libraries fail to load silently falls back to CPU: report what really runs
        self.provider = self.session.get_providers()[0]
        self._providers = [self.provider] if self.provider == "CPUExecutionProvider" else wanted
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_shape = list(inp.shape)  # ints for static dims, strings/None for symbolic ones
        self.output_shapes = [list(o.shape) for o in self.session.get_outputs()]
        dim0 = self.input_shape[0] if self.input_shape else None
        self.batch = dim0 if isinstance(dim0, int) and dim0 > 0 else None

    def _open(self, providers: list[str]):
        options = self._ort.SessionOptions()
        options.log_severity_level = 3  # no shape-merge chatter from onnxruntime
        return self._ort.InferenceSession(self.path, sess_options=options, providers=providers)

    @property
    def info(self) -> RunInfo:
        return RunInfo("onnxruntime", self.provider)

    def activate(self, device: torch.device) -> None:
        if self.session is None:
            self.session = self._open(self._providers)

    def deactivate(self) -> None:
        if self.provider != "CPUExecutionProvider":
            self.session = None  # a CUDA session holds its VRAM arena: reopen it on the next run instead

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})

    def close(self) -> None:
        self.session = None


class TorchScriptModel:
    """A torch.jit module kept on the CPU between runs; `activate()` moves it to ComfyUI's device for one run."""

    def __init__(self, path: str, batch: int | None = None) -> None:
        try:
            self.module = torch.jit.load(path, map_location="cpu").eval()
        except (RuntimeError, ValueError) as e:
            raise ModelFileError(f"torch.jit.load cannot read {path}: {e}. It must be a TorchScript file "
                                 f"(*.torchscript.pt); re-download it from {source_hint(path)}.") from e
        params = list(self.module.parameters())
        self.dtype = params[0].dtype if params else torch.float32
        self.batch = batch
        self.device = torch.device("cpu")
        self.path = path

    @property
    def info(self) -> RunInfo:
        return RunInfo("torchscript", f"{self.device} {str(self.dtype).replace('torch.', '')}")

    def size_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.module.parameters())

    def activate(self, device: torch.device) -> None:
        if device.type == "cpu" and self.dtype == torch.float16:
            self.dtype = torch.float32  # fp16 convolutions are slow or missing on CPU
        mm.free_memory(self.size_bytes() * 2, device)
        self.module.to(device=device, dtype=self.dtype)
        self.device = device

    def deactivate(self) -> None:
        if self.device.type != "cpu":
            self.module.to("cpu")
            self.device = torch.device("cpu")
            mm.soft_empty_cache()

    @torch.inference_mode()
    def run(self, x: np.ndarray) -> list[np.ndarray]:
        t = torch.from_numpy(np.ascontiguousarray(x)).to(self.device, self.dtype)
        out = self.module(t)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        return [o.float().cpu().numpy() for o in outs]

    def close(self) -> None:
        self.module = None


def batch_from_name(path: str) -> int | None:
    """The traced batch size a TorchScript pose file declares in its name (`..._bs5...`), else None."""
    m = re.search(r"bs(\d+)", os.path.basename(path).lower())
    return int(m.group(1)) if m else None


def load_model(path: str, provider: str = "auto", torchscript_batch: int | None = None) -> OnnxModel | TorchScriptModel:
    """Load a model file by its extension: .onnx with onnxruntime, anything else as TorchScript."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"DWPose model file not found: {path}. Download it from {source_hint(path)}, "
                                "or run: python scripts/setup_models.py --download (from the node pack's folder).")
    if is_onnx(path):
        return OnnxModel(path, provider)
    return TorchScriptModel(path, torchscript_batch)
