"""Per denoising step: time and peak RAM of the ControlNeXt-patched SVD-XT UNet against the same UNet unpatched (CPU).

    .venv/bin/python bench/bench_controlnext_step.py   # from the checkout, after scripts/setup_host.sh
        [--dtypes fp32,bf16] [--size 256] [--frames 8] [--steps 3] [--sweep 24,48,96] [--sweep-size 256]
        [--sweep-dtype bf16] [--no-step] [--no-sweep]

The full SVD-XT UNet (ComfyUI's SVD_img2vid with the config comfy.model_detection infers from the real 1428 keys'
shapes) is built once per worker process with a cheap seeded init; the
patched run is apply_controlnext's model.clone(), which shares those weights. The control network is the real-size
ControlNeXt-SVD v2 network (320 output channels) with seeded weights. Each denoising step runs as ControlNeXtSampler
runs it: ControlNeXtGuider (cfg 3 on every frame: cond and uncond) + ComfyUI's euler sampler, windows 24/overlap 6.

"plan f" / "plan MB" are the frames and bytes core's estimate_memory plans the model load for (what ComfyUI keeps
free in VRAM on a GPU): the guider's PREPARE_SAMPLING wrapper makes that one window, whatever the video length.
Memory is the process's resident-set high-water mark (VmHWM of /proc/self/status), reset before each run through
/proc/self/clear_refs (5) after gc and malloc_trim, so every run's peak is its own; "peak" is that high-water
mark, "+base" is peak minus the RSS just before the run (model, poses and latents already allocated).
Each configuration group runs in its own subprocess (a fresh allocator and high-water mark).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import importlib
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
COMFY = ROOT / ".host" / "ComfyUI"
# The SVD-XT UNet config that comfy.model_detection infers from the 1428 real UNet keys (checked against the key list
# by tests/test_unet_loader.py); written out so the benchmark needs no weight or key file.
SVD_XT_UNET_CONFIG = {
    "use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True, "legacy": False,
    "num_classes": "sequential", "adm_in_channels": 768, "in_channels": 8, "out_channels": 4, "model_channels": 320,
    "num_res_blocks": [2, 2, 2, 2], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], "channel_mult": [1, 2, 4, 4],
    "transformer_depth_middle": 1, "use_linear_in_transformer": True, "context_dim": 1024,
    "extra_ff_mix_layer": True, "use_spatial_context": True, "merge_strategy": "learned_with_images",
    "merge_factor": 0.0, "video_kernel_size": [3, 1, 1], "use_temporal_resblock": True,
    "use_temporal_attention": True, "disable_temporal_crossattention": False,
}
TINY_CONTROLNEXT = ROOT / "tests" / "tiny_pack" / "tiny_controlnext.py"
MB = 1024 * 1024
WINDOW, OVERLAP, CFG = 24, 6, 3.0


# ---- memory -----------------------------------------------------------------------------------------------------

def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def rss_mb() -> float:
    return _status_kb("VmRSS") / 1024


def hwm_mb() -> float:
    return _status_kb("VmHWM") / 1024


def reset_peak() -> float:
    """Free what can be freed, reset VmHWM to the current RSS; returns that RSS (MB)."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return rss_mb()


# ---- worker: boots ComfyUI, builds the model once, runs the requested configurations --------------------------

def boot_comfy() -> Any:
    """ComfyUI on the CPU (args parsed before comfy.model_management), the pack loaded as ComfyUI loads it."""
    import asyncio

    spec = importlib.util.spec_from_file_location("comfy_boot", ROOT / "scripts" / "comfy_boot.py")
    comfy_boot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(comfy_boot)
    nodes = comfy_boot.boot_comfy(COMFY, tempfile.mkdtemp(prefix="controlnext-bench-"), cpu=True)

    if not asyncio.run(nodes.load_custom_node(str(ROOT))):
        raise RuntimeError("ComfyUI could not load the pack: see the log above")
    return importlib.import_module(str(ROOT).replace(".", "_x_"))


def full_svd_config(dtype: Any) -> Any:
    """ComfyUI's SVD_img2vid model config for the real SVD-XT key shapes (as UNETLoader would detect it)."""
    import comfy.model_management as mm
    import comfy.supported_models

    config = comfy.supported_models.SVD_img2vid(dict(SVD_XT_UNET_CONFIG))
    # dtype handling as the pack's UNet loader (and comfy.sd) does it: bf16 on the CPU is stored bf16, computed fp32
    manual_cast = mm.unet_manual_cast(dtype, mm.get_torch_device(), list(config.supported_inference_dtypes))
    config.set_inference_dtype(dtype, manual_cast)
    return config


def seeded_init_(module: Any, seed: int) -> None:
    """Kernels N(0, 1/fan_in), norms identity, biases 0, mix factors N(0,1): finite, unit-scale activations.

    One generator draw per tensor in float32 (at most ~60 MB at a time), copied into the model's own storage.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    norm_types = (torch.nn.GroupNorm, torch.nn.LayerNorm)
    with torch.no_grad():
        for name, param in module.named_parameters():
            owner = module.get_submodule(name.rsplit(".", 1)[0]) if "." in name else module
            if isinstance(owner, norm_types):
                param.fill_(1.0 if name.endswith("weight") else 0.0)
            elif param.ndim >= 2:
                param.copy_(torch.randn(param.shape, generator=gen) * param[0].numel() ** -0.5)
            elif name.endswith("mix_factor"):
                param.copy_(torch.randn(param.shape, generator=gen))
            else:
                param.zero_()


def conditioning(frames: int, size: int, seed: int = 0) -> tuple[list, list, dict, Any]:
    """Native SVD conditioning (as SVD_img2vid_Conditioning emits it), empty latent and random pose images."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    embed = torch.randn(1, 1, 1024, generator=gen)
    concat = torch.randn(1, 4, size // 8, size // 8, generator=gen)
    extras = {"motion_bucket_id": 127, "fps": 6, "augmentation_level": 0.0}
    positive = [[embed, dict(extras, concat_latent_image=concat)]]
    negative = [[torch.zeros_like(embed), dict(extras, concat_latent_image=torch.zeros_like(concat))]]
    latent = torch.zeros(frames, 4, size // 8, size // 8)
    poses = torch.rand(frames, size, size, 3, generator=gen)  # ComfyUI IMAGE
    return positive, negative, latent, poses


def run_once(pack: Any, model: Any, frames: int, size: int, steps: int, patched: bool, controlnext: Any) -> dict:
    import comfy.samplers
    import torch

    apply_controlnext = importlib.import_module(pack.__name__ + ".controlnext.patch").apply_controlnext
    guider_cls = importlib.import_module(pack.__name__ + ".controlnext.sampling").ControlNeXtGuider
    positive, negative, latent, poses = conditioning(frames, size)
    # the pose IMAGE stays alive in both variants, as in ComfyUI's output cache
    run_model = apply_controlnext(model, controlnext, poses) if patched else model
    guider = guider_cls(run_model, WINDOW, OVERLAP, CFG, CFG)
    guider.set_conds(positive, negative)
    sampler = comfy.samplers.sampler_object("euler")
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "karras", steps)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(1))
    stamps: list[tuple[float, float]] = []

    def stamp(*_: Any) -> None:
        stamps.append((time.perf_counter(), time.process_time()))

    # what core plans the model load for (its estimate_memory, called from prepare_sampling): one window, cond+uncond
    import comfy.sampler_helpers

    estimate = comfy.sampler_helpers.estimate_memory
    plans: list[tuple[tuple[int, ...], float]] = []

    def recording_estimate(patcher: Any, noise_shape: Any, conds: Any) -> Any:
        required = estimate(patcher, noise_shape, conds)
        plans.append((tuple(noise_shape), required[0] / MB))
        return required

    base = reset_peak()
    stamp()
    comfy.sampler_helpers.estimate_memory = recording_estimate
    try:
        out = guider.sample(noise, latent, sampler, sigmas, callback=stamp, disable_pbar=True, seed=1)
    finally:
        comfy.sampler_helpers.estimate_memory = estimate
    peak = hwm_mb()
    if not torch.isfinite(out).all():
        raise RuntimeError("the sampled latent is not finite: the benchmark init is broken")
    times = [b[0] - a[0] for a, b in zip(stamps, stamps[1:], strict=False)]
    cpu = [b[1] - a[1] for a, b in zip(stamps, stamps[1:], strict=False)]
    return {
        "variant": "controlnext" if patched else "native", "frames": frames, "size": size,
        "windows": len(guider.windows), "steps": steps, "step_s": times,
        "median_s": statistics.median(times[1:]) if len(times) > 1 else times[0], "cpu_s": cpu,
        "median_cpu_s": statistics.median(cpu[1:]) if len(cpu) > 1 else cpu[0],
        "base_mb": base, "peak_mb": peak, "latent_mb": latent.numel() * latent.element_size() / MB,
        "pose_image_mb": frames * size * size * 3 * 4 / MB,
        "plan_frames": plans[0][0][0] if plans else None, "plan_mb": plans[0][1] if plans else None,
    }


def worker(spec: dict) -> None:
    """Build the model once, run each requested configuration, print one JSON line per run."""
    pack = boot_comfy()
    import comfy.model_management as mm
    import comfy.model_patcher
    import torch

    loader = importlib.import_module(pack.__name__ + ".controlnext.controlnext_loader")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[spec["dtype"]]
    t0 = time.perf_counter()
    config = full_svd_config(dtype)
    svd = config.get_model({}, device=torch.device("cpu"))
    seeded_init_(svd.diffusion_model, seed=0)
    model = comfy.model_patcher.ModelPatcher(svd, load_device=mm.get_torch_device(),
                                             offload_device=mm.unet_offload_device())
    params = sum(p.numel() for p in svd.diffusion_model.parameters())
    tiny = importlib.util.spec_from_file_location("bench_tiny_controlnext", TINY_CONTROLNEXT)
    tiny_mod = importlib.util.module_from_spec(tiny)
    tiny.loader.exec_module(tiny_mod)
    network = loader.build_network(tiny_mod.tiny_controlnext_state_dict(seed=0, output_channels=320))
    controlnext = loader.ControlNeXtModel(network, "seeded-controlnext-v2-320")
    print(json.dumps({"event": "built", "dtype": spec["dtype"], "params": params, "build_s": time.perf_counter() - t0,
                      "rss_mb": rss_mb(), "threads": torch.get_num_threads(),
                      "compute": str(svd.manual_cast_dtype or svd.get_dtype())}), flush=True)
    for run in spec["runs"]:
        result = run_once(pack, model, run["frames"], run["size"], run["steps"], run["patched"], controlnext)
        print(json.dumps(dict(result, event="run", dtype=spec["dtype"])), flush=True)
    if spec.get("profile"):
        run = spec["runs"][-1]
        result = profile_patch(pack, model, controlnext, run["frames"], run["size"])
        print(json.dumps(dict(result, event="profile", dtype=spec["dtype"])), flush=True)


def profile_patch(pack: Any, model: Any, controlnext: Any, frames: int, size: int, repeats: int = 3) -> dict:
    """Where the control's cost goes: the control network alone, and the whole patch call (network + inject)."""
    import torch

    patch_mod = importlib.import_module(pack.__name__ + ".controlnext.patch")
    _, _, _, poses = conditioning(frames, size)
    patched = patch_mod.apply_controlnext(model, controlnext, poses)
    patch = patched.model_options["transformer_options"]["patches"]["input_block_patch_after_skip"][0]
    dtype = patch_mod.compute_dtype(model)
    sigma = torch.full((2 * frames,), 30.0)
    h = torch.randn(2 * frames, 320, size // 16, size // 16, dtype=dtype)  # after input block 3, cond + uncond
    options = {"block": ("input", 3), "cond_or_uncond": [0, 1], "sigmas": sigma}
    x = patch.poses.to(dtype)
    t = model.model.model_sampling.timestep(sigma[:frames])

    def timed(fn: Any) -> tuple[float, float]:
        fn()  # warm-up
        base = reset_peak()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times), hwm_mb() - base

    with torch.no_grad():
        net_s, net_mb = timed(lambda: patch.network(x, t))
        call_s, call_mb = timed(lambda: patch(h, options))
    return {"frames": frames, "size": size, "network_s": net_s, "network_peak_mb": net_mb, "patch_s": call_s,
            "patch_peak_mb": call_mb}


# ---- parent: plans the worker processes and prints the table ------------------------------------------------------

def launch(spec: dict) -> list[dict]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    plan = [(r["frames"], r["size"], "cn" if r["patched"] else "native") for r in spec["runs"]]
    print(f"# worker {spec['dtype']}: {plan}", flush=True)
    rows = []
    # stderr (ComfyUI's log) goes to a file so a chatty worker cannot block on a full pipe
    with tempfile.TemporaryFile("w+") as log, subprocess.Popen(cmd, cwd=COMFY, stdout=subprocess.PIPE, stderr=log,
                                                               text=True) as proc:
        for line in proc.stdout:  # one JSON line per event, printed as it comes
            if line.startswith("{"):
                rows.append(json.loads(line))
                _show(rows[-1])
        proc.wait()
        log.seek(0)
        err = log.read()
    if proc.returncode != 0:
        sys.stderr.write(err[-5000:])
        raise RuntimeError(f"worker failed with exit code {proc.returncode}")
    return [r for r in rows if r["event"] == "run"]


def _show(row: dict) -> None:
    if row["event"] == "profile":
        print(f"#   profile {row['frames']}f {row['size']}px: control network {row['network_s']:.2f} s "
              f"(+{row['network_peak_mb']:.0f} MB), whole patch call {row['patch_s']:.2f} s "
              f"(+{row['patch_peak_mb']:.0f} MB)", flush=True)
    elif row["event"] == "built":
        print(f"#   built {row['params'] / 1e9:.3f} G params {row['dtype']} (compute {row['compute']}) in "
              f"{row['build_s']:.0f} s, RSS {row['rss_mb']:.0f} MB, {row['threads']} torch threads", flush=True)
    else:
        print(f"#   {row['variant']:>11} {row['frames']}f {row['size']}px: steps "
              f"{', '.join(f'{s:.1f}' for s in row['step_s'])} s; peak {row['peak_mb']:.0f} MB "
              f"(base {row['base_mb']:.0f}); memory planned for {row['plan_frames']} frames "
              f"({row['plan_mb']:.0f} MB)", flush=True)


def table(rows: list[dict], title: str) -> None:
    print(f"\n{title}")
    head = (f"{'configuration':<30}{'win':>4}{'s/step':>8}{'cpu s':>8}{'peak MB':>9}{'+base MB':>9}"
            f"{'d wall':>8}{'d cpu':>8}{'d peak MB':>10}{'latent MB':>10}{'poses MB':>9}{'plan f':>7}"
            f"{'plan MB':>8}")
    print(head)
    print("-" * len(head))
    native = {(r["dtype"], r["frames"], r["size"]): r for r in rows if r["variant"] == "native"}
    for r in rows:
        ref = native.get((r["dtype"], r["frames"], r["size"]))
        d_time = d_cpu = d_peak = ""
        if r["variant"] != "native" and ref is not None:
            d_time = f"{100 * (r['median_s'] / ref['median_s'] - 1):+.1f}%"
            d_cpu = f"{100 * (r['median_cpu_s'] / ref['median_cpu_s'] - 1):+.1f}%"
            d_peak = f"{r['peak_mb'] - ref['peak_mb']:+.0f}"
        name = f"{r['variant']} {r['dtype']} {r['size']}px {r['frames']}f"
        print(f"{name:<30}{r['windows']:>4}{r['median_s']:>8.2f}{r['median_cpu_s']:>8.2f}{r['peak_mb']:>9.0f}"
              f"{r['peak_mb'] - r['base_mb']:>9.0f}{d_time:>8}{d_cpu:>8}{d_peak:>10}{r['latent_mb']:>10.2f}"
              f"{r['pose_image_mb']:>9.1f}{r['plan_frames'] or '':>7}{r['plan_mb'] or 0:>8.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--size", type=int, default=256, help="square generation size in px (multiple of 64)")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="sampler steps per run; the first is the warm-up")
    parser.add_argument("--sweep", default="24,48,96", help="frame counts for the video-length sweep")
    parser.add_argument("--sweep-size", type=int, default=256)
    parser.add_argument("--sweep-dtype", default="bf16")
    parser.add_argument("--sweep-variants", default="native,controlnext",
                        help="which runs the sweep makes per length (native, controlnext or both)")
    parser.add_argument("--no-step", action="store_true", help="skip the per-step comparison")
    parser.add_argument("--no-sweep", action="store_true", help="skip the video-length sweep")
    parser.add_argument("--profile", action="store_true", help="also time the control network and patch call alone")
    args = parser.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return

    import platform

    print(f"# {time.strftime('%Y-%m-%d %H:%M %Z')}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; window {WINDOW}, overlap {OVERLAP}, cfg {CFG}")
    if not args.no_step:
        rows = []
        for dtype in args.dtypes.split(","):
            runs = [{"frames": args.frames, "size": args.size, "steps": args.steps, "patched": p}
                    for p in (False, True)]
            rows += launch({"dtype": dtype, "runs": runs, "profile": args.profile})
        table(rows, f"Per denoising step, {args.size}x{args.size}, {args.frames} frames (one window), cond+uncond, "
                    f"median of steps 2..{args.steps}")
    if not args.no_sweep:
        rows = []
        for frames in (int(f) for f in args.sweep.split(",")):
            runs = [{"frames": frames, "size": args.sweep_size, "steps": 1, "patched": v == "controlnext"}
                    for v in args.sweep_variants.split(",")]
            rows += launch({"dtype": args.sweep_dtype, "runs": runs})
        table(rows, f"Video length sweep, {args.sweep_dtype}, {args.sweep_size}px, window {WINDOW} overlap {OVERLAP}, "
                    "1 step (time = the whole step, all windows)")


if __name__ == "__main__":
    main()
