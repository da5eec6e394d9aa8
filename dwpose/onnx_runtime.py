"""What onnxruntime offers on this machine, looked up only when asked (never at import time)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass, field

ORT_DISTRIBUTIONS = ("onnxruntime-gpu", "onnxruntime", "onnxruntime-directml", "onnxruntime-openvino")


@dataclass
class OnnxRuntimeInfo:
    installed: bool
    version: str | None = None
    distributions: list[str] = field(default_factory=list)  # pip packages providing the module
    providers: list[str] = field(default_factory=list)
    error: str | None = None

    def summary(self) -> str:
        if not self.installed:
            return "onnxruntime: not installed (only needed for .onnx DWPose files; TorchScript files work without it)"
        if self.error:
            return f"onnxruntime: installed but failed to load: {self.error}"
        text = f"onnxruntime {self.version} ({', '.join(self.distributions) or 'unknown package'}): " + (
            ", ".join(self.providers) or "no providers"
        )
        if len(self.distributions) > 1:
            # both wheels install the same module and the last one installed wins, often the CPU-only one
            text += " [several onnxruntime packages are installed: keep only one]"
        return text


def onnxruntime_info() -> OnnxRuntimeInfo:
    """Report whether onnxruntime imports and which execution providers it has; safe when it is missing or broken."""
    if importlib.util.find_spec("onnxruntime") is None:
        return OnnxRuntimeInfo(installed=False)
    dists = []
    for name in ORT_DISTRIBUTIONS:
        try:
            importlib.metadata.version(name)
            dists.append(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    try:
        import onnxruntime
    except (ImportError, OSError, RuntimeError) as e:  # a GPU wheel without its CUDA libraries fails here
        return OnnxRuntimeInfo(installed=True, distributions=dists, error=f"{type(e).__name__}: {e}")
    return OnnxRuntimeInfo(
        installed=True,
        version=getattr(onnxruntime, "__version__", None),
        distributions=dists,
        providers=list(onnxruntime.get_available_providers()),
    )
