"""Per-window cost of feeding pose images that are too many to keep on the device (ControlNeXtApply's patch).

    .venv/bin/python bench/bench_pose_upload.py [--frames 300] [--width 576] [--height 1024] [--window 24]

Above 256 MB of poses the patch uploads each window's frames at every step instead of caching all of them on the
device. It sends them as uint8 when that is exact (pose images are k / 255), a quarter of the float32 bytes. This
prints, per window, the host-side gather (two ways) and, when CUDA is present, the whole upload() with
the conversion to fp16 on the GPU, for both forms.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def load_patch_module():
    """controlnext/patch.py needs ComfyUI's comfy package: import it with ComfyUI on sys.path, as ComfyUI does."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import tempfile

    from comfy_boot import boot_comfy, import_pack_package

    base = tempfile.mkdtemp(prefix="controlnext-bench-")
    boot_comfy(ROOT / ".host" / "ComfyUI", base, cpu=not torch.cuda.is_available())
    import_pack_package("controlnext", "controlnext_bench_pkg")
    return importlib.import_module("controlnext_bench_pkg.patch")


def timed(fn, repeat: int = 5) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--width", type=int, default=576)
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--window", type=int, default=24)
    args = parser.parse_args()
    patch = load_patch_module()
    u8 = torch.randint(0, 256, (args.frames, args.height, args.width, 3), dtype=torch.uint8)
    poses = u8.float() / 255
    t0 = time.perf_counter()
    as_bytes = patch.as_bytes(poses)
    print(f"{args.frames} poses of {args.width}x{args.height}: {poses.numel() * 4 / 2**20:.0f} MB float32; "
          f"exact-bytes check and copy once: {time.perf_counter() - t0:.2f} s ({as_bytes.numel() / 2**20:.0f} MB)")
    idx = [0, *range(args.frames // 2 + 1, args.frames // 2 + args.window)]
    print(f"per window of {args.window} frames ({len(idx) * args.height * args.width * 3 * 4 / 2**20:.0f} MB "
          "as float32):")
    dev = torch.device("cuda") if torch.cuda.is_available() else None
    rows = torch.tensor(idx)
    for name, host in (("float32", poses), ("uint8", as_bytes)):
        print(f"  {name:8s} host gather: list indexing {timed(lambda host=host: host[idx]) * 1000:6.1f} ms, "
              f"index_select (used) {timed(lambda host=host: host.index_select(0, rows)) * 1000:6.1f} ms", end="")
        if dev is not None:
            t = timed(lambda host=host, dev=dev: patch.upload(host, idx, dev, torch.float16))
            print(f"   gather + upload + fp16 on {torch.cuda.get_device_name()}: {t * 1000:7.1f} ms", end="")
        print()


if __name__ == "__main__":
    main()
