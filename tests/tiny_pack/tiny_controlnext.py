"""Seeded ControlNeXt-SVD v2 state dicts for tests: the official 52 keys and shapes, any output width.

Written from the published key list (not from the pack's module) so the tests can check the module against it.
`time_gain` scales the time-embedding path: with plain small random weights the timestep barely changes the
control, and a wrong timestep input would go unnoticed.
"""

from __future__ import annotations

import torch


def controlnext_shapes(output_channels: int = 320, narrow: int = 1) -> dict[str, tuple[int, ...]]:
    """The official keys in file order with their shapes (mid_convs.1 maps 256 -> output_channels).

    narrow > 1 divides every inner width (64/128/256 channels, 128/256 time) by it, for fast tests.
    """
    shapes: dict[str, tuple[int, ...]] = {
        "time_embedding.linear_1.weight": (256, 128), "time_embedding.linear_1.bias": (256,),
        "time_embedding.linear_2.weight": (256, 256), "time_embedding.linear_2.bias": (256,),
        "embedding.0.weight": (64, 3, 3, 3), "embedding.0.bias": (64,),
        "embedding.1.weight": (64,), "embedding.1.bias": (64,),
        "embedding.3.weight": (64, 64, 3, 3), "embedding.3.bias": (64,),
        "embedding.4.weight": (64,), "embedding.4.bias": (64,),
        "embedding.6.weight": (128, 64, 3, 3), "embedding.6.bias": (128,),
        "embedding.7.weight": (128,), "embedding.7.bias": (128,),
    }
    for i, (cin, cout) in enumerate(((128, 128), (128, 256))):
        p = f"down_res.{i}."
        shapes.update({
            p + "norm1.weight": (cin,), p + "norm1.bias": (cin,),
            p + "conv1.weight": (cout, cin, 3, 3), p + "conv1.bias": (cout,),
            p + "time_emb_proj.weight": (cout, 256), p + "time_emb_proj.bias": (cout,),
            p + "norm2.weight": (cout,), p + "norm2.bias": (cout,),
            p + "conv2.weight": (cout, cout, 3, 3), p + "conv2.bias": (cout,),
        })
    shapes.update({"down_res.1.conv_shortcut.weight": (256, 128, 1, 1), "down_res.1.conv_shortcut.bias": (256,)})
    for i, ch in enumerate((128, 256)):
        shapes.update({f"down_sample.{i}.conv.weight": (ch, ch, 3, 3), f"down_sample.{i}.conv.bias": (ch,)})
    shapes.update({
        "mid_convs.0.0.weight": (256, 256, 3, 3), "mid_convs.0.0.bias": (256,),
        "mid_convs.0.2.weight": (256,), "mid_convs.0.2.bias": (256,),
        "mid_convs.0.3.weight": (256, 256, 3, 3), "mid_convs.0.3.bias": (256,),
        "mid_convs.0.4.weight": (256,), "mid_convs.0.4.bias": (256,),
        "mid_convs.1.weight": (output_channels, 256, 1, 1), "mid_convs.1.bias": (output_channels,),
    })
    if narrow == 1:
        return shapes
    inner = {64, 128, 256}
    return {k: tuple(d if (k.startswith("mid_convs.1.") and i == 0) or d not in inner else d // narrow
                     for i, d in enumerate(v)) for k, v in shapes.items()}


_NORMS = ("embedding.1.", "embedding.4.", "embedding.7.", "norm1.", "norm2.", "mid_convs.0.2.", "mid_convs.0.4.")


def tiny_controlnext_state_dict(seed: int = 0, output_channels: int = 64, time_gain: float = 1.0,
                                dtype: torch.dtype = torch.float32, narrow: int = 1) -> dict[str, torch.Tensor]:
    """Kernels He-scaled N(0, 2/fan_in), biases N(0, 0.1), norm scales 1 + N(0, 0.1); time path x time_gain."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in controlnext_shapes(output_channels, narrow).items():
        if any(n in key for n in _NORMS):
            base = 1.0 if key.endswith("weight") else 0.0
            value = base + 0.1 * torch.randn(shape, generator=gen)
        elif len(shape) >= 2:
            fan_in = 1
            for s in shape[1:]:
                fan_in *= s
            value = torch.randn(shape, generator=gen) * (2.0 / fan_in) ** 0.5
        else:
            value = 0.1 * torch.randn(shape, generator=gen)
        if key.startswith("time_embedding.") or "time_emb_proj" in key:
            value = value * time_gain
        sd[key] = value.to(dtype)
    return sd
