"""System RAM and time to get a driving video's frames: core's Get Video Components against ControlNeXtDrivingFrames.

    .venv/bin/python bench/bench_driving_frames.py [--seconds 4] [--fps 30] [--width 1920] [--height 1080]
                                                   [--stride 2] [--video some.mp4]

Writes a synthetic H.264 clip (or uses --video), then reads it in two fresh processes, each importing ComfyUI
first so that the baseline is the same: (a) core's VideoFromFile.get_components(), every frame as float32, then
every stride-th frame taken, as a workflow with Get Video Components + a frame selection does; (b) the pack's
controlnext/video_frames.read_frames (decodes all, converts only the kept frames). Prints the peak resident memory
above the baseline and the wall time of each.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMFY = ROOT / ".host" / "ComfyUI"


def write_clip(path: Path, seconds: float, fps: int, width: int, height: int) -> int:
    """A moving gradient with noise (so the encoder has real work), H.264 yuv420p; returns the frame count."""
    import av
    import numpy as np

    frames = int(seconds * fps)
    rng = np.random.default_rng(0)
    base = np.linspace(0, 255, width, dtype=np.float32)[None, :, None].repeat(height, 0).repeat(3, 2)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast"}
        for i in range(frames):
            img = (np.roll(base, 8 * i, axis=1) + rng.normal(0, 8, (height, width, 1))).clip(0, 255)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img.astype(np.uint8), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return frames


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure(variant: str, video: str, stride: int) -> dict:
    """Runs in a fresh process: ComfyUI imported, then one way of reading the frames."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from comfy_boot import boot_comfy

    with tempfile.TemporaryDirectory() as base:
        boot_comfy(COMFY, base)
        from comfy_api.v0_0_2 import InputImpl

        spec = importlib.util.spec_from_file_location("controlnext_bench_video_frames",
                                                      ROOT / "controlnext" / "video_frames.py")
        video_frames = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(video_frames)
        baseline = peak_mb()
        t0 = time.perf_counter()
        if variant == "core":
            images = InputImpl.VideoFromFile(video).get_components().images
            frames = images[::stride]
        else:
            frames, _ = video_frames.read_frames(video, stride=stride)
        seconds = time.perf_counter() - t0
    return {"variant": variant, "frames": int(frames.shape[0]), "seconds": seconds,
            "peak_mb": peak_mb() - baseline, "result_mb": frames.numel() * 4 / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--stride", type=int, default=2)
    parser.add_argument("--video", type=Path, help="an existing video instead of the synthetic clip")
    parser.add_argument("--measure", choices=("core", "pack"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, str(args.video), args.stride)))
        return
    with tempfile.TemporaryDirectory(prefix="controlnext-bench-video-") as tmp:
        video = args.video
        if video is None:
            video = Path(tmp) / "clip.mp4"
            n = write_clip(video, args.seconds, args.fps, args.width, args.height)
            print(f"synthetic clip: {n} frames of {args.width}x{args.height} at {args.fps} fps")
        print(f"stride {args.stride}")
        for variant in ("core", "pack"):
            out = subprocess.run([sys.executable, __file__, "--measure", variant, "--video", str(video),
                                  "--stride", str(args.stride)], capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            name = "core Get Video Components + every stride-th" if variant == "core" else "ControlNeXtDrivingFrames"
            print(f"{name:45s} {r['frames']:4d} frames  {r['seconds']:6.2f} s  peak RAM +{r['peak_mb']:7.0f} MB  "
                  f"(result {r['result_mb']:.0f} MB)")


if __name__ == "__main__":
    main()
