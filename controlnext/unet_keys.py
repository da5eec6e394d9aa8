"""diffusers UNetSpatioTemporalConditionModel key names -> ComfyUI/SGM (openaimodel UNetModel) key names.

No ComfyUI helper covers the SVD UNet (comfy.utils.unet_to_diffusers has no temporal layers), so the rules live
here. They are spec section 3's rules, with the block offsets counted from the keys instead of hard-coded
(1 + 3b + l for SVD's two res blocks per level), so tiny test UNets with fewer levels convert by the same code:

  input_blocks:  0 = conv_in; then per down block b its resnets/attentions l at start_b + l, and its downsampler
                 at start_b + n_b (n_b = resnets in block b); start_{b+1} = start_b + n_b + 1 if b downsamples.
  output_blocks: per up block b its resnets/attentions l at start_b + l; the upsampler goes into the last
                 layer of the block, as sub-module 2 if the block has attentions, else 1.
Renames never reshape (no transposes; the temporal convs are 5-D in both formats).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_TOP_LEVEL = {
    "conv_in.": "input_blocks.0.0.",
    "time_embedding.linear_1.": "time_embed.0.",
    "time_embedding.linear_2.": "time_embed.2.",
    "add_embedding.linear_1.": "label_emb.0.0.",
    "add_embedding.linear_2.": "label_emb.0.2.",
    "conv_norm_out.": "out.0.",
    "conv_out.": "out.2.",
}

_RESNET_LAYERS = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}

_BLOCK_RE = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.+)$")
_MID_RE = re.compile(r"^mid_block\.(resnets|attentions)\.(\d+)\.(.+)$")


def _resnet_suffix(rest: str) -> str | None:
    """Inside a SpatioTemporalResBlock: spatial_res_block.X -> X', temporal_res_block.X -> time_stack.X'."""
    if rest == "time_mixer.mix_factor":
        return rest
    for part, target in (("spatial_res_block.", ""), ("temporal_res_block.", "time_stack.")):
        if rest.startswith(part):
            layer, _, param = rest[len(part):].partition(".")
            if layer in _RESNET_LAYERS and param:
                return f"{target}{_RESNET_LAYERS[layer]}.{param}"
    return None


def _attention_suffix(rest: str) -> str | None:
    """Inside a TransformerSpatioTemporalModel (spatial names are kept)."""
    if rest == "time_mixer.mix_factor" or rest.startswith(("norm.", "proj_in.", "proj_out.", "transformer_blocks.")):
        return rest
    if rest.startswith("temporal_transformer_blocks."):
        return "time_stack." + rest[len("temporal_transformer_blocks."):]
    for i, j in (("1", "0"), ("2", "2")):
        if rest.startswith(f"time_pos_embed.linear_{i}."):
            return f"time_pos_embed.{j}." + rest[len(f"time_pos_embed.linear_{i}."):]
    return None


class _Layout:
    """Block offsets of a diffusers SVD UNet, counted from its keys."""

    def __init__(self, keys: Iterable[str]) -> None:
        counts: dict[tuple[str, int], int] = {}
        self.has_attention: set[tuple[str, int]] = set()
        self.has_sampler: set[tuple[str, int]] = set()
        for key in keys:
            m = _BLOCK_RE.match(key)
            if not m:
                continue
            side, b, kind, idx = m.group(1), int(m.group(2)), m.group(3), int(m.group(4))
            if kind == "resnets":
                counts[(side, b)] = max(counts.get((side, b), 0), idx + 1)
            elif kind == "attentions":
                self.has_attention.add((side, b))
            else:
                self.has_sampler.add((side, b))
        self.resnets = counts
        self.input_start: dict[int, int] = {}
        self.output_start: dict[int, int] = {}
        start = 1
        for b in range(self._num_blocks("down_blocks")):
            self.input_start[b] = start
            start += counts.get(("down_blocks", b), 0) + (1 if ("down_blocks", b) in self.has_sampler else 0)
        start = 0
        for b in range(self._num_blocks("up_blocks")):
            self.output_start[b] = start
            start += counts.get(("up_blocks", b), 0)

    def _num_blocks(self, side: str) -> int:
        blocks = [b for s, b in self.resnets if s == side]
        return max(blocks) + 1 if blocks else 0


def _convert_block_key(m: re.Match[str], layout: _Layout) -> str | None:
    side, b, kind, idx, rest = m.group(1), int(m.group(2)), m.group(3), int(m.group(4)), m.group(5)
    down = side == "down_blocks"
    starts = layout.input_start if down else layout.output_start
    if b not in starts:
        return None
    start, n = starts[b], layout.resnets.get((side, b), 0)
    prefix = "input_blocks" if down else "output_blocks"
    if kind in ("downsamplers", "upsamplers"):
        if idx != 0 or not rest.startswith("conv.") or down != (kind == "downsamplers"):
            return None
        if down:
            return f"{prefix}.{start + n}.0.op.{rest[len('conv.'):]}"
        sub = 2 if (side, b) in layout.has_attention else 1
        return f"{prefix}.{start + n - 1}.{sub}.{rest}"
    if idx >= n:
        return None
    suffix = _resnet_suffix(rest) if kind == "resnets" else _attention_suffix(rest)
    if suffix is None:
        return None
    return f"{prefix}.{start + idx}.{0 if kind == 'resnets' else 1}.{suffix}"


def diffusers_to_comfy_keys(keys: Iterable[str]) -> tuple[dict[str, str], list[str]]:
    """Map every diffusers SVD UNet key to its ComfyUI name. Returns (mapping, keys no rule covers)."""
    keys = list(keys)
    layout = _Layout(keys)
    mapping: dict[str, str] = {}
    unknown: list[str] = []
    for key in keys:
        new = None
        for old_prefix, new_prefix in _TOP_LEVEL.items():
            if key.startswith(old_prefix):
                new = new_prefix + key[len(old_prefix):]
                break
        if new is None and (m := _BLOCK_RE.match(key)):
            new = _convert_block_key(m, layout)
        elif new is None and (m := _MID_RE.match(key)):
            kind, idx, rest = m.group(1), int(m.group(2)), m.group(3)
            # mid_block: resnets.0 -> middle_block.0, attentions.0 -> .1, resnets.1 -> .2
            sub = {("resnets", 0): 0, ("attentions", 0): 1, ("resnets", 1): 2}.get((kind, idx))
            suffix = _resnet_suffix(rest) if kind == "resnets" else _attention_suffix(rest)
            if sub is not None and suffix is not None:
                new = f"middle_block.{sub}.{suffix}"
        if new is None:
            unknown.append(key)
        else:
            mapping[key] = new
    return mapping, unknown
