"""ESTIMATE of the peak CUDA memory of the example-workflow presets, computed without a GPU.

    .venv/bin/python bench/bench_vram_estimate.py            # from the checkout, after scripts/setup_host.sh
        [--presets all|official,16gb,...] [--attention fused,math] [--no-validate] [--json out.json]

Method: the real models are built and run under torch's FakeTensorMode on a fake "cuda" device (shapes, dtypes and
strides are exact; no memory is allocated and nothing is computed). A TorchDispatchMode (LiveCudaBytes) sees every
aten op and counts the bytes of each new "cuda" storage an op creates, and uncounts them when the storage is
released (a weakref on the storage), so its high-water mark is the peak of live tensor bytes, what
torch.cuda.max_memory_allocated() would report, minus allocator rounding and fragmentation.

  (1) UNet step: one window of ControlNeXtSampler = BaseModel.apply_model of ComfyUI's SVD_img2vid (SVD-XT config,
      fp16 weights, the CUDA path: no manual cast) on 2 x frames_per_window rows (cond + uncond batched, as
      calc_cond_batch does when memory allows), with the pack's ControlNeXt patch (apply_controlnext, the real-size
      control network, 320 channels, fp16) attached, and again on the cond rows alone (what runs when ComfyUI
      does not batch cond and uncond). The pose cache on the device is taken at its largest
      (patch.DEVICE_CACHE_BYTES, reached by clips of ~75 frames at 576x1024). For each card the table then applies
      ComfyUI 0.3.75's own rules (load_models_gpu, calc_cond_batch; see comfy_plan) with its memory_required
      estimate and reserves, plus an assumed CUDA context, to say how the window runs and whether it fits.
  (2) VAE chunk: the pack's decode._decode_clip (ControlNeXtDecode) on 2 latent frames with the AutoencodingEngine +
      temporal VideoDecoder that comfy.sd.VAE builds for SVD checkpoints, in bf16 (what ComfyUI picks on
      Ampere and newer: SVD's VAE working dtypes are bf16, fp32) and fp32 (what it picks on a T4, which has no bf16).
  (3) CLIP vision ViT-H/14 weights (fp16), which ComfyUI offloads before sampling when memory is short.

Attention: ComfyUI on NVIDIA uses PyTorch SDPA (attention_pytorch, SDP_BATCH_LIMIT 2**15) for the UNet and the
VAE; both are forced here. FakeTensorMode decomposes F.scaled_dot_product_attention into the MATH kernel (it
materialises the N x N scores), which is not what a CUDA GPU runs for fp16/bf16. "fused" mode routes
comfy.ops.scaled_dot_product_attention to aten._scaled_dot_product_flash_attention (fp16/bf16, head dim <= 256)
or _scaled_dot_product_efficient_attention (others), whose fake kernels allocate only the output (+ logsumexp):
that is the realistic CUDA case. "math" is the upper bound if neither fused kernel is available.

Not modelled: the CUDA context (~300-500 MB, outside PyTorch's allocator), caching-allocator rounding and
fragmentation (typically +5-15% over allocated), cuDNN/cuBLAS workspaces (tens of MB to a few hundred MB for
convolutions when cudnn.benchmark picks a workspace-hungry algorithm), temporaries inside kernels that the fake
kernels do not allocate, and the sampler's per-clip latents (~150 KB per frame, negligible).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import importlib
import importlib.util
import json
import shutil
import sys
import tempfile
import time
import types
import weakref
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MB = 1024 * 1024
GIB = 1024 * MB


@dataclass(frozen=True)
class Preset:
    name: str
    height: int
    width: int
    window: int
    vae_dtype: str  # what ComfyUI picks on the preset's target GPU


# Sizes as the example workflows set them (ControlNeXtSVDConditioning width, height); memory is symmetric in h/w.
PRESETS = {
    "official": Preset("official 576x1024 w24", 1024, 576, 24, "bf16"),
    "16gb": Preset("16 GB 576x1024 w16", 1024, 576, 16, "bf16"),
    "t4": Preset("T4 384x640 w12", 640, 384, 12, "fp32"),
    "512x896": Preset("512x896 w16", 896, 512, 16, "bf16"),
    "w12": Preset("576x1024 w12", 1024, 576, 12, "bf16"),
}
CARDS_MIB = {"16 GB": 16 * 1024, "T4 15 GB": 15 * 1024}  # nvidia-smi totals; a T4 shows 15360 MiB
CUDA_CONTEXT_MIB = 400  # middle of the usual 300-500 MB, not in torch's allocator


# ---- the tracker --------------------------------------------------------------------------------------------------

def _tracker_class() -> type:
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    class LiveCudaBytes(TorchDispatchMode):
        """Peak of live bytes of device storages created by ops run under this mode (weights registered apart)."""

        def __init__(self, device_type: str = "cuda") -> None:
            super().__init__()
            self.device_type = device_type
            self._refs: dict[int, Any] = {}  # id(storage) -> weakref; torch keeps one Python object per storage
            self.live = 0
            self.peak = 0
            self.ops: set[str] = set()

        def register(self, tensors: Any) -> int:
            """Mark existing storages (weights) as known without counting them; returns their unique bytes."""
            total = 0
            for t in tensors:
                st = t.untyped_storage()
                if id(st) not in self._refs:
                    self._refs[id(st)] = weakref.ref(st)
                    total += st.nbytes()
            return total

        def reset_peak(self) -> None:
            self.peak = self.live

        def _release(self, key: int, nbytes: int) -> None:
            self.live -= nbytes
            self._refs.pop(key, None)

        def __torch_dispatch__(self, func: Any, types_: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
            out = func(*args, **(kwargs or {}))
            self.ops.add(func.name())
            for t in tree_flatten(out)[0]:
                if not isinstance(t, __import__("torch").Tensor) or t.device.type != self.device_type:
                    continue
                st = t.untyped_storage()
                key = id(st)
                if key in self._refs:  # a view or an in-place result: no new memory
                    continue
                nbytes = st.nbytes()
                self.live += nbytes
                self.peak = max(self.peak, self.live)
                self._refs[key] = weakref.ref(st, lambda _r, k=key, n=nbytes: self._release(k, n))
            return out

    return LiveCudaBytes


def validate_tracker() -> list[str]:
    """Hand-checkable cases; raises if the tracker disagrees with the arithmetic."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    tracker_cls = _tracker_class()
    lines = []
    with FakeTensorMode(), torch.device("cuda"), torch.no_grad():
        lin = torch.nn.Linear(1024, 4096, dtype=torch.float16)
        tr = tracker_cls()
        weights = tr.register(lin.parameters())
        expect_w = (1024 * 4096 + 4096) * 2
        with tr:
            x = torch.empty(64, 1024, dtype=torch.float16)
            y = lin(x)
            expect = 64 * 1024 * 2 + 64 * 4096 * 2
            got = tr.peak
            del y
            after = tr.live
            # chain with a freed intermediate: a = x*2 (128K), b = a+1 (128K), del a -> peak x+a+b, live x+b
            tr.reset_peak()
            a = x * 2
            b = a + 1
            del a
            chain_peak, chain_live = tr.peak, tr.live
            del b
        checks = [
            ("Linear 1024->4096 fp16 weights", weights, expect_w),
            ("Linear batch 64: input + output", got, expect),
            ("output freed on del", after, 64 * 1024 * 2),
            ("chain peak (x, x*2, +1)", chain_peak, 3 * 64 * 1024 * 2),
            ("chain live after del a", chain_live, 2 * 64 * 1024 * 2),
        ]
    for what, got_b, want in checks:
        if got_b != want:
            raise RuntimeError(f"tracker validation failed: {what}: counted {got_b} bytes, expected {want}")
        lines.append(f"  ok  {what}: {got_b} bytes")
    return lines


# ---- ComfyUI and the pack ------------------------------------------------------------------------------------------

def boot() -> Any:
    """ComfyUI on the CPU with the pack loaded (bench_controlnext_step's boot), switched to NVIDIA's attention."""
    spec = importlib.util.spec_from_file_location("bench_controlnext_step",
                                                  ROOT / "bench" / "bench_controlnext_step.py")
    step = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(step)
    pack = step.boot_comfy()

    import folder_paths

    base = Path(folder_paths.base_path)
    if base.parent == Path(tempfile.gettempdir()) and base.name.startswith("controlnext-bench-"):
        atexit.register(shutil.rmtree, base, ignore_errors=True)  # boot_comfy's throwaway base directory
    import comfy.ldm.modules.attention as attention
    import comfy.model_management as mm

    mm.ENABLE_PYTORCH_ATTENTION = True  # as on NVIDIA: the VAE picks pytorch_attention when it is built
    attention.optimized_attention = attention.attention_pytorch
    attention.optimized_attention_masked = attention.attention_pytorch
    attention.SDP_BATCH_LIMIT = 2 ** 15  # ComfyUI's NVIDIA value
    return types.SimpleNamespace(pack=pack, step=step)


def fused_sdpa(q: Any, k: Any, v: Any, attn_mask: Any = None, dropout_p: float = 0.0, is_causal: bool = False,
               **kwargs: Any) -> Any:
    """What SDPA runs on a CUDA GPU for these inputs: flash (fp16/bf16, head dim <= 256) or memory-efficient."""
    import torch

    if attn_mask is None and q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] <= 256:
        return torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, dropout_p, is_causal)[0]
    return torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, attn_mask, False, dropout_p, is_causal)[0]


def set_attention(mode: str) -> None:
    import comfy.ops
    import torch

    if mode == "fused":
        comfy.ops.scaled_dot_product_attention = fused_sdpa
    elif mode == "math":
        comfy.ops.scaled_dot_product_attention = torch.nn.functional.scaled_dot_product_attention
    else:
        raise ValueError(f"unknown attention mode {mode!r}: use fused or math")


@contextlib.contextmanager
def default_dtype(dtype: Any) -> Iterator[None]:
    """Build modules directly in `dtype`: Module.to() cannot swap fake parameters."""
    import torch

    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def unique_bytes(tensors: Any) -> int:
    seen, total = set(), 0
    for t in tensors:
        st = t.untyped_storage()
        if id(st) not in seen:
            seen.add(id(st))
            total += st.nbytes()
    return total


def build_unet(env: Any, pack_mod: Any) -> Any:
    """SVD-XT UNet (ComfyUI SVD_img2vid) with fp16 weights, the CUDA path (no manual cast), as a ModelPatcher."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models
    import torch

    config = comfy.supported_models.SVD_img2vid(dict(env.step.SVD_XT_UNET_CONFIG))
    config.set_inference_dtype(torch.float16, None)
    model = config.get_model({}, "")
    model.eval().requires_grad_(False)
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


def build_controlnext(pack_mod: Any) -> Any:
    import comfy.ops
    import torch

    network = importlib.import_module(pack_mod.__name__ + ".controlnext.network")
    loader = importlib.import_module(pack_mod.__name__ + ".controlnext.controlnext_loader")
    with default_dtype(torch.float16):
        net = network.ControlNeXtSVD(network.ControlNeXtConfig(), operations=comfy.ops.manual_cast)
    net.eval().requires_grad_(False)
    return loader.ControlNeXtModel(net, "controlnext-svd_v2-controlnet-fp16 (fake)")


def unet_window_peak(env: Any, unet: Any, cnx: Any, preset: Preset, tracker_cls: type,
                     cond_or_uncond: tuple[int, ...] = (0, 1)) -> dict:
    """Peak live bytes of one window's apply_model (cond + uncond batched, or one of them), weights excluded."""
    import torch

    patch_mod = importlib.import_module(env.pack.__name__ + ".controlnext.patch")
    f, h, w = preset.window, preset.height // 8, preset.width // 8
    rows = len(cond_or_uncond) * f
    frame_bytes = preset.height * preset.width * 3 * 2
    pose_count = max(f, patch_mod.DEVICE_CACHE_BYTES // frame_bytes)  # the largest clip still cached on the device
    poses = torch.empty(pose_count, preset.height, preset.width, 3, device="cpu")
    patched = patch_mod.apply_controlnext(unet, cnx, poses, 1.0)
    tr = tracker_cls()
    tr.register(list(unet.model.parameters()) + list(unet.model.buffers()) + list(cnx.network.parameters()))
    with tr:
        x = torch.empty(rows, 4, h, w)  # sampler latents are float32
        sigma = torch.full((rows,), 2.0)
        concat = torch.empty(rows, 4, h, w)
        context = torch.empty(rows, 1, 1024)
        y = torch.empty(rows, 768)
        opts = dict(patched.model_options["transformer_options"])
        opts.update(cond_or_uncond=list(cond_or_uncond), sigmas=sigma)
        opts[patch_mod.POSE_INDICES_KEY] = list(range(f))
        before = tr.live
        out = patched.model.apply_model(x, sigma, c_concat=concat, c_crossattn=context, transformer_options=opts,
                                        y=y, num_video_frames=f)
        if tuple(out.shape) != (rows, 4, h, w):
            raise RuntimeError(f"UNet output shape {tuple(out.shape)}, expected {(rows, 4, h, w)}")
        del out
    pose_cache = patched.model_options["transformer_options"]["patches"]["input_block_patch_after_skip"][0]
    cache = pose_cache._device_poses
    result = {"activations": tr.peak, "inputs": before, "pose_cache": 0 if cache is None else cache.nbytes,
              "pose_count": pose_count, "sdpa_ops": sorted(o for o in tr.ops if "attention" in o or "softmax" in o)}
    pose_cache.release()
    return result


def comfy_estimate(unet: Any, shape: tuple[int, ...], flash: bool) -> float:
    """ComfyUI's BaseModel.memory_required for this input: its flash-capable formula (NVIDIA) or the other one."""
    import comfy.model_management as mm

    saved = mm.pytorch_attention_flash_attention
    mm.pytorch_attention_flash_attention = lambda: flash
    try:
        return float(unet.model.memory_required(list(shape)))
    finally:
        mm.pytorch_attention_flash_attention = saved


def build_vae(dtype: Any) -> Any:
    """The first_stage_model comfy.sd.VAE builds for an SVD checkpoint (keys with decoder.mid.block_1.mix_factor)."""
    from comfy.ldm.models.autoencoder import AutoencodingEngine

    encoder_config = {'double_z': True, 'z_channels': 4, 'resolution': 256, 'in_channels': 3, 'out_ch': 3, 'ch': 128,
                      'ch_mult': [1, 2, 4, 4], 'num_res_blocks': 2, 'attn_resolutions': [], 'dropout': 0.0}
    decoder_config = dict(encoder_config, video_kernel_size=[3, 1, 1], alpha=0.0)
    with default_dtype(dtype):
        model = AutoencodingEngine(
            regularizer_config={'target': "comfy.ldm.models.autoencoder.DiagonalGaussianRegularizer"},
            encoder_config={'target': "comfy.ldm.modules.diffusionmodules.model.Encoder", 'params': encoder_config},
            decoder_config={'target': "comfy.ldm.modules.temporal_ae.VideoDecoder", 'params': decoder_config})
    return model.eval().requires_grad_(False)


def vae_chunk_peak(env: Any, vae_model: Any, dtype: Any, preset: Preset, tracker_cls: type, chunk: int = 2) -> dict:
    import torch

    decode = importlib.import_module(env.pack.__name__ + ".controlnext.decode")
    vae = types.SimpleNamespace(first_stage_model=vae_model, device=torch.device("cuda"), vae_dtype=dtype,
                                output_device=torch.device("cpu"))
    tr = tracker_cls()
    tr.register(list(vae_model.parameters()) + list(vae_model.buffers()))
    with tr:
        latents = torch.empty(chunk, 4, preset.height // 8, preset.width // 8, device="cpu")
        pixels = decode._decode_clip(vae, latents)
        if tuple(pixels.shape) != (chunk, preset.height, preset.width, 3):
            raise RuntimeError(f"VAE output shape {tuple(pixels.shape)}")
    return {"activations": tr.peak,
            "sdpa_ops": sorted(o for o in tr.ops if "attention" in o or "softmax" in o)}


def clip_vision_bytes() -> int | None:
    """ViT-H/14 weights as ComfyUI's ClipVisionModel holds them on CUDA (fp16)."""
    import comfy.clip_model
    import comfy.ops
    import torch

    config_path = Path(comfy.clip_model.__file__).parent / "clip_vision_config_h.json"
    if not config_path.is_file():
        return None
    config = json.loads(config_path.read_text())
    model = comfy.clip_model.CLIPVisionModelProjection(config, torch.float16, None, comfy.ops.manual_cast)
    return unique_bytes(list(model.parameters()) + list(model.buffers()))


# ---- main ------------------------------------------------------------------------------------------------------------

def comfy_plan(weights: float, act2: float, act1: float, est2: float, est1: float, card: float,
               reserve: dict) -> dict:
    """What ComfyUI 0.3.75 does on a CUDA card of `card` MiB (all MiB), and the resulting peak.

    load_models_gpu loads the whole UNet iff it leaves max(minimum_inference_memory, est(1x) + extra_reserved) free;
    calc_cond_batch batches cond+uncond iff est(2x) * 1.5 < free memory, else runs them one after the other.
    est() is BaseModel.memory_required (memory_usage_factor formula), not a measurement.
    """
    free = card - CUDA_CONTEXT_MIB
    minimum = max(reserve["minimum_inference"], est1 + reserve["extra_reserved"])
    full_load = weights <= free - minimum
    batched = full_load and est2 * 1.5 < free - weights
    need = CUDA_CONTEXT_MIB + weights + (act2 if batched else act1)
    return {"full_load": full_load, "batched": batched, "need_mib": need, "fits": need <= card}


def plan_text(plan: dict) -> str:
    how = ("2x" if plan["batched"] else "1x") if plan["full_load"] else "lowvram"
    return f"{how} {plan['need_mib'] / 1024:4.1f}G {'ok' if plan['fits'] else 'NO'}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default="all", help=f"comma list of {', '.join(PRESETS)} or all")
    parser.add_argument("--attention", default="fused,math", help="fused (flash/mem-efficient, the CUDA case), math")
    parser.add_argument("--no-validate", action="store_true", help="skip the tracker's hand-checked cases")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    a = parser.parse_args()
    names = list(PRESETS) if a.presets == "all" else [p.strip() for p in a.presets.split(",")]
    unknown = [n for n in names if n not in PRESETS]
    if unknown:
        parser.error(f"unknown preset(s) {unknown}; choose from {', '.join(PRESETS)}")
    modes = [m.strip() for m in a.attention.split(",")]

    env = boot()
    import comfy.model_management as mm
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    if not a.no_validate:
        print("tracker validation (fake cuda):")
        print("\n".join(validate_tracker()))
    tracker_cls = _tracker_class()
    # ComfyUI's reserve on a Linux CUDA machine (model_management: EXTRA_RESERVED_VRAM 400 MB; Windows 600-700 MB)
    extra = 400 * MB
    reserve = {"extra_reserved": extra / MB, "minimum_inference": (0.8 * GIB + extra) / MB,
               "comfy_here_extra": mm.extra_reserved_memory() / MB}

    t0 = time.perf_counter()
    rows, results = [], {}
    with FakeTensorMode(allow_non_fake_inputs=False), torch.device("cuda"), torch.no_grad():
        unet = build_unet(env, env.pack)
        cnx = build_controlnext(env.pack)
        unet_w = unique_bytes(list(unet.model.diffusion_model.parameters()) + list(unet.model.buffers()))
        cnx_w = unique_bytes(cnx.network.parameters())
        vaes = {"bf16": build_vae(torch.bfloat16), "fp32": build_vae(torch.float32)}
        vae_w = {k: unique_bytes(v.parameters()) for k, v in vaes.items()}
        clip_w = clip_vision_bytes()
        print(f"built in {time.perf_counter() - t0:.1f}s: UNet {unet_w / MB:.0f} MB fp16 "
              f"({sum(p.numel() for p in unet.model.diffusion_model.parameters()) / 1e9:.3f} G params), "
              f"ControlNeXt {cnx_w / MB:.1f} MB fp16, VAE {vae_w['bf16'] / MB:.0f} MB bf16 / "
              f"{vae_w['fp32'] / MB:.0f} MB fp32"
              + ("" if clip_w is None else f", CLIP vision ViT-H/14 {clip_w / MB:.0f} MB fp16"))
        for mode in modes:
            set_attention(mode)
            for name in names:
                p = PRESETS[name]
                t1 = time.perf_counter()
                u = unet_window_peak(env, unet, cnx, p, tracker_cls)
                vdt = {"bf16": torch.bfloat16, "fp32": torch.float32}[p.vae_dtype]
                v = vae_chunk_peak(env, vaes[p.vae_dtype], vdt, p, tracker_cls)
                u1 = unet_window_peak(env, unet, cnx, p, tracker_cls, (0,))  # cond alone: the larger pass
                weights = (unet_w + cnx_w) / MB
                act2, act1 = u["activations"] / MB, u1["activations"] / MB
                est2, est1 = (comfy_estimate(unet, (n * p.window, 4, p.height // 8, p.width // 8), mode == "fused") / MB
                              for n in (2, 1))
                vae_total = (vae_w[p.vae_dtype] + v["activations"]) / MB
                row = {"mode": mode, "preset": p.name, "weights_mib": weights, "unet_act_2x_mib": act2,
                       "unet_act_1x_mib": act1, "comfy_est_2x_mib": est2, "comfy_est_1x_mib": est1,
                       "unet_step_2x_mib": weights + act2, "pose_cache_mib": u["pose_cache"] / MB,
                       "vae_dtype": p.vae_dtype, "vae_act_mib": v["activations"] / MB, "vae_total_mib": vae_total,
                       "sdpa_ops": u["sdpa_ops"], "seconds": time.perf_counter() - t1}
                row["plan"] = {card: comfy_plan(weights, act2, act1, est2, est1, mib, reserve)
                               for card, mib in CARDS_MIB.items()}
                rows.append(row)
                if u["pose_cache"] == 0:
                    raise RuntimeError("the ControlNeXt patch did not run (no pose cache on the device)")
                print(f"  [{mode}] {p.name}: {row['seconds']:.1f}s; UNet inputs {u['inputs'] / MB:.0f} MiB, pose "
                      f"cache {u['pose_cache'] / MB:.0f} MiB ({u['pose_count']} poses); attention ops: UNet "
                      f"{', '.join(u['sdpa_ops'])}; VAE {', '.join(v['sdpa_ops'])}", flush=True)
    results = {"presets": {k: asdict(v) for k, v in PRESETS.items()}, "rows": rows, "reserve_mib": reserve,
               "cuda_context_mib": CUDA_CONTEXT_MIB,
               "weights_mib": {"unet": unet_w / MB, "controlnext": cnx_w / MB,
                               "vae": {k: x / MB for k, x in vae_w.items()},
                               "clip_vision": None if clip_w is None else clip_w / MB}}

    print(f"\nComfyUI reserve (Linux CUDA): extra_reserved {reserve['extra_reserved']:.0f} MiB, "
          f"minimum_inference_memory {reserve['minimum_inference']:.0f} MiB; CUDA context assumed "
          f"{CUDA_CONTEXT_MIB} MiB.")
    header = (f"{'attn':5} {'preset':22} {'weights':>7} {'act 2x':>7} {'act 1x':>7} {'est 2x':>7} {'step 2x':>8} "
              f"{'VAE chunk':>14}  " + " ".join(f"{c:>18}" for c in CARDS_MIB))
    print(header + "\n" + "-" * len(header))
    for r in rows:
        print(f"{r['mode']:5} {r['preset']:22} {r['weights_mib']:7.0f} {r['unet_act_2x_mib']:7.0f} "
              f"{r['unet_act_1x_mib']:7.0f} {r['comfy_est_2x_mib']:7.0f} {r['unet_step_2x_mib']:8.0f} "
              f"{r['vae_total_mib']:8.0f} {r['vae_dtype']:>5}  "
              + " ".join(f"{plan_text(r['plan'][c]):>18}" for c in CARDS_MIB))
    print("MiB. weights = UNet + ControlNeXt (fp16). act 2x / 1x = measured peak live activations of one window's\n"
          "UNet call with cond+uncond batched / the cond pass alone (incl. the device pose cache). est 2x = ComfyUI's\n"
          "own memory_required for the batched call. step 2x = weights + act 2x. VAE chunk = VAE weights + 2-frame\n"
          "decode peak (ComfyUI unloads the UNet first if needed). Per card: how ComfyUI runs the window (2x batched,\n"
          "1x = cond and uncond one after the other, lowvram = UNet partially loaded) and context+weights+activations.")
    if a.json:
        a.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
