"""The ControlNeXt-SVD v2 control network (official `ControlNeXtSDVModel`), 1:1 in plain torch.

State-dict keys are exactly the official 52 (time_embedding, embedding, down_res, down_sample, mid_convs). Layer
types come from `operations` (torch.nn by default; the loader passes comfy.ops.manual_cast so ComfyUI's model
management can load it partially and cast weights to the input dtype on the fly). Every layer is built with the given
dtype and device, as ComfyUI's own models build theirs: newer ComfyUI's comfy.ops layers record that dtype as the
model dtype when they hold no weight until the state dict is loaded (dynamic VRAM).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

# Group counts and eps are not stored in the weights: they are the official config's values.
EMBEDDING_GROUPS = 2
DOWN_RES_GROUPS = (4, 8)
MID_GROUPS = 8
NORM_EPS = 1e-5
RESNET_EPS = 1e-6


@dataclass(frozen=True)
class ControlNeXtConfig:
    """Channel widths; the official v2 values are the defaults."""

    time_in: int = 128  # sinusoidal projection width
    time_dim: int = 256
    embed_channels: int = 64
    in_channels: tuple[int, int] = (128, 128)
    out_channels: tuple[int, int] = (128, 256)
    output_channels: int = 320  # the UNet width at input block 3

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, Any]) -> ControlNeXtConfig:
        """Widths read from weight shapes (works on lazy tensors: only `.shape` is used)."""
        def rows(key: str) -> int:
            return int(sd[key].shape[0])

        return cls(
            time_in=int(sd["time_embedding.linear_1.weight"].shape[1]),
            time_dim=rows("time_embedding.linear_1.weight"),
            embed_channels=rows("embedding.0.weight"),
            in_channels=(rows("embedding.6.weight"), rows("down_res.0.conv1.weight")),
            out_channels=(rows("down_res.0.conv1.weight"), rows("down_res.1.conv1.weight")),
            output_channels=rows("mid_convs.1.weight"),
        )


class _Placed:
    """`operations` whose layers are all built with one dtype and device (None: torch's defaults)."""

    def __init__(self, operations: Any, dtype: torch.dtype | None, device: torch.device | str | None) -> None:
        self._operations = operations
        self._placement = {"dtype": dtype, "device": device}

    def __getattr__(self, name: str) -> Any:
        return functools.partial(getattr(self._operations, name), **self._placement)


def timestep_projection(timesteps: torch.Tensor, dim: int) -> torch.Tensor:
    """diffusers Timesteps(dim, flip_sin_to_cos=True, downscale_freq_shift=0): [cos, sin], in float32."""
    half = dim // 2
    exponent = -math.log(10000) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    args = timesteps[:, None].float() * torch.exp(exponent)[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedding(nn.Module):
    def __init__(self, in_dim: int, dim: int, ops: Any) -> None:
        super().__init__()
        self.linear_1 = ops.Linear(in_dim, dim)
        self.act = nn.SiLU()
        self.linear_2 = ops.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


class ResnetBlock2D(nn.Module):
    """diffusers ResnetBlock2D as the official config builds it (default time-embedding norm, no dropout)."""

    def __init__(self, in_ch: int, out_ch: int, temb_dim: int, groups: int, ops: Any) -> None:
        super().__init__()
        self.norm1 = ops.GroupNorm(groups, in_ch, eps=RESNET_EPS, affine=True)
        self.conv1 = ops.Conv2d(in_ch, out_ch, 3, stride=1, padding=1)
        self.time_emb_proj = ops.Linear(temb_dim, out_ch)
        self.norm2 = ops.GroupNorm(groups, out_ch, eps=RESNET_EPS, affine=True)
        self.conv2 = ops.Conv2d(out_ch, out_ch, 3, stride=1, padding=1)
        self.act = nn.SiLU()
        self.conv_shortcut = ops.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.act(self.norm1(x)))
        h = h + self.time_emb_proj(self.act(temb))[:, :, None, None]
        h = self.conv2(self.act(self.norm2(h)))
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return skip + h


class Downsample2D(nn.Module):
    """Stride-2 3x3 conv; the official name="op" still stores the weight under `.conv.`."""

    def __init__(self, ch: int, ops: Any) -> None:
        super().__init__()
        self.conv = ops.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class ControlNeXtSVD(nn.Module):
    """Pose frames [0,1] RGB (N, 3, H, W) + timestep -> control (N, output_channels, H/8-1, W/8-1)."""

    def __init__(self, config: ControlNeXtConfig | None = None, operations: Any = nn,
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> None:
        super().__init__()
        cfg = config or ControlNeXtConfig()
        ops = _Placed(operations, dtype, device)
        self.config = cfg
        self.time_embedding = TimestepEmbedding(cfg.time_in, cfg.time_dim, ops)
        e, c = cfg.embed_channels, cfg.in_channels[0]
        self.embedding = nn.Sequential(
            ops.Conv2d(3, e, 3, stride=2, padding=1),
            ops.GroupNorm(EMBEDDING_GROUPS, e, eps=NORM_EPS),
            nn.ReLU(),
            ops.Conv2d(e, e, 3, stride=1, padding=0),
            ops.GroupNorm(EMBEDDING_GROUPS, e, eps=NORM_EPS),
            nn.ReLU(),
            ops.Conv2d(e, c, 3, stride=1, padding=0),
            ops.GroupNorm(EMBEDDING_GROUPS, c, eps=NORM_EPS),
            nn.ReLU(),
        )
        self.down_res = nn.ModuleList([
            ResnetBlock2D(i, o, cfg.time_dim, g, ops)
            for i, o, g in zip(cfg.in_channels, cfg.out_channels, DOWN_RES_GROUPS, strict=True)
        ])
        self.down_sample = nn.ModuleList([Downsample2D(o, ops) for o in cfg.out_channels])
        mid = cfg.out_channels[-1]
        self.mid_convs = nn.ModuleList([
            nn.Sequential(
                ops.Conv2d(mid, mid, 3, stride=1, padding=1),
                nn.ReLU(),
                ops.GroupNorm(MID_GROUPS, mid, eps=NORM_EPS),
                ops.Conv2d(mid, mid, 3, stride=1, padding=1),
                ops.GroupNorm(MID_GROUPS, mid, eps=NORM_EPS),
            ),
            ops.Conv2d(mid, cfg.output_channels, 1),
        ])

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float) -> torch.Tensor:
        """sample: (N, 3, H, W) or official (B, F, 3, H, W); timestep: scalar, (N,) per frame, or (B,) per clip."""
        frames = 1
        if sample.ndim == 5:
            frames = sample.shape[1]
            sample = sample.flatten(0, 1)
        n = sample.shape[0]
        t = torch.as_tensor(timestep, device=sample.device).reshape(-1)
        if t.numel() == 1:
            t = t.expand(n // frames)
        emb = self.time_embedding(timestep_projection(t, self.config.time_in).to(sample.dtype))
        if frames > 1 or emb.shape[0] != n:
            emb = emb.repeat_interleave(n // emb.shape[0], dim=0)  # per clip -> per frame, as the official code
        x = self.embedding(sample)
        for res, down in zip(self.down_res, self.down_sample, strict=True):
            x = down(res(x, emb))
        x = self.mid_convs[0](x) + x
        return self.mid_convs[1](x)
