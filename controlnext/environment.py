"""A plain description of the torch environment the pack runs in, for the environment node and bug reports."""

from __future__ import annotations

import platform

import torch

from . import VERSION


def dtype_support(device: torch.device) -> dict[str, bool]:
    """Which half precisions the device computes natively (the T4, for one, has fp16 but no bf16)."""
    if device.type == "cuda":
        return {"fp16": True, "bf16": bool(torch.cuda.is_bf16_supported())}
    if device.type == "mps":
        return {"fp16": True, "bf16": False}
    return {"fp16": True, "bf16": True}  # the CPU computes both (slowly); fp32 is the sensible choice there


def environment_lines(device: torch.device) -> list[str]:
    """Pack version, Python, torch and the compute device with its dtype support, one fact per line."""
    lines = [
        f"ControlNeXt-SVD pack {VERSION}",
        f"Python {platform.python_version()} on {platform.system()} {platform.machine()}",
        f"torch {torch.__version__} (CUDA build: {torch.version.cuda or 'no'})",
    ]
    name = str(device)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        name += f" ({props.name}, {props.total_memory / 2**30:.1f} GiB, sm{props.major}{props.minor})"
    support = dtype_support(device)
    lines.append(f"device {name}: fp16 {'yes' if support['fp16'] else 'no'}, bf16 {'yes' if support['bf16'] else 'no'}")
    return lines
