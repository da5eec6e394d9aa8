"""Throughput of many renders: N separate scripts/render.py processes against scripts/render_batch.py, embedded and
on a local Ray with 1 and 2 workers.

    .venv/bin/python bench/bench_render_batch.py [--jobs 8] [--dances 2] [--real] [--frames 3] [--steps 1]
                                                 [--ray-workers 1 2] [--no-separate]

Writes N tiny jobs (N photos over --dances synthetic dance clips, 64x64, --frames output frames, --steps steps) and
runs them (a) one render.py process per job, one after the other, each booting ComfyUI and loading every model,
(b) all in one render_batch.py process (one boot, models loaded once, a dance's poses analysed once) and (c) with
render_batch.py --ray local --workers W for each --ray-workers W (each worker boots ComfyUI and loads the models
once; needs bash scripts/setup_ray.sh). Prints the wall seconds per job of each and the throughput ratios. Every run
pins torch to --threads CPU threads per job (default 1: two Ray workers on two cores then each have one). --tiny
models by default; --real uses the installed model files (a GPU: the same command then measures the real figure,
one Ray worker per GPU; set --width/--height/--frames/--steps to taste).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


def draw_person(img: Any, top: int, bottom: int, left: int, right: int) -> None:
    """A bright block (the tiny fake detector's person box) with the fake pose model's markers: cones of pure red
    (nose), green and blue (shoulders), as tests/tiny_pack/fake_dwpose.draw_marker draws them."""
    import numpy as np

    img[top:bottom, left:right] = 240
    x = (left + right) / 2
    yy, xx = np.mgrid[0:img.shape[0], 0:img.shape[1]]
    for channel, (mx, my) in enumerate(((x, top + 10), (x + 10, top + 25), (x - 10, top + 26))):
        cone = (np.clip(1 - np.hypot(xx - mx, yy - my) / 6, 0, 1) * 255).round().astype(np.uint8)
        img[..., channel] = np.maximum(img[..., channel], cone)


def write_dance(path: Path, frames: int, shift: int) -> None:
    """A dark clip with a marked bright block moving right."""
    import av
    import numpy as np

    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(24))
        stream.width, stream.height, stream.pix_fmt = 96, 128, "yuv420p"
        for i in range(frames):
            img = np.full((128, 96, 3), 30, np.uint8)
            draw_person(img, 30, 110, 10 + shift + 4 * i, 40 + shift + 4 * i)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def write_photo(path: Path, x: int) -> None:
    import numpy as np
    from PIL import Image

    img = np.full((160, 120, 3), 40, np.uint8)
    draw_person(img, 20, 150, x, x + 40)
    Image.fromarray(img).save(path)


def timed(cmd: list[str]) -> float:
    t0 = time.monotonic()
    result = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    if result.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}")
    return time.monotonic() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=8)
    p.add_argument("--dances", type=int, default=2, help="distinct dance clips the jobs share")
    p.add_argument("--real", action="store_true", help="the installed models instead of --tiny ones")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--frames", type=int, default=3)
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--workflow", type=Path, help="UI-format workflow for every job (default: the example one)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per job in every run")
    p.add_argument("--ray-workers", type=int, nargs="*", default=[1, 2], help="Ray runs to time (none: skip Ray)")
    p.add_argument("--no-separate", action="store_true", help="skip the separate render.py processes")
    args = p.parse_args()
    tiny = [] if args.real else ["--tiny"]
    params = {"frames": args.frames, "stride": 2, "steps": args.steps, "seed": 0, "width": args.width,
              "height": args.height}
    with tempfile.TemporaryDirectory(prefix="bench-render-batch-") as tmp_dir:
        tmp = Path(tmp_dir)
        for d in range(args.dances):
            write_dance(tmp / f"dance{d}.mp4", frames=2 * args.frames + 2, shift=6 * d)
        if args.workflow is not None:
            params["workflow"] = str(args.workflow.resolve())
        rows = ["id,ref,driving," + ",".join(params)]
        for j in range(args.jobs):
            write_photo(tmp / f"ref{j}.png", 10 + 7 * j % 60)
            rows.append(f"job{j},ref{j}.png,dance{j % args.dances}.mp4," + ",".join(map(str, params.values())))
        (tmp / "jobs.csv").write_text("\n".join(rows) + "\n")

        separate = []
        for j in range(0 if args.no_separate else args.jobs):
            cmd = [PYTHON, str(ROOT / "scripts" / "render.py"), *tiny, "--ref", str(tmp / f"ref{j}.png"),
                   "--driving", str(tmp / f"dance{j % args.dances}.mp4"), "--out", str(tmp / "sep" / f"job{j}.mp4")]
            for key, value in params.items():
                cmd += [f"--{key}", str(value)]
            separate.append(timed(cmd))
            print(f"separate render.py job {j}: {separate[-1]:.1f} s", flush=True)
        batch_cmd = [PYTHON, str(ROOT / "scripts" / "render_batch.py"), *tiny, "--threads", str(args.threads),
                     "--manifest", str(tmp / "jobs.csv")]
        runs = {"one render_batch.py batch (embedded)": timed([*batch_cmd, "--out", str(tmp / "batch")])}
        for workers in args.ray_workers:
            name = f"render_batch.py --ray local --workers {workers}"
            runs[name] = timed([*batch_cmd, "--out", str(tmp / f"ray{workers}"), "--ray", "local", "--workers",
                                str(workers)])
            print(f"{name}: {runs[name]:.1f} s", flush=True)
    print(f"{args.jobs} jobs ({'real' if args.real else 'tiny'} models, {args.dances} dances, "
          f"{args.width}x{args.height}, {args.frames} frames, {args.steps} steps, {args.threads} torch thread(s) "
          f"per job, {os.cpu_count()} CPUs):")
    per_sep = sum(separate) / args.jobs if separate else None
    if per_sep is not None:
        print(f"  {'separate render.py processes':<45} {sum(separate):7.1f} s, {per_sep:6.1f} s per job")
    for name, seconds in runs.items():
        ratio = f", {per_sep / (seconds / args.jobs):.2f}x the separate processes' throughput" if per_sep else ""
        print(f"  {name:<45} {seconds:7.1f} s, {seconds / args.jobs:6.1f} s per job{ratio}")


if __name__ == "__main__":
    main()
