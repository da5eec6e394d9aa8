"""Per-frame cost of pose alignment + official rendering at 576x1024 (CPU; no models, no ComfyUI).

    .venv/bin/python bench/bench_pose_render.py [--frames 48] [--people 1] [--threads 1]

Synthetic whole-body poses (18 body, 2x21 hand, 68 face points, plausible scores) on a 1920x1080 driving video,
aligned onto a 576x1024 reference canvas and drawn like the official code (2160-short-side canvas, then resize).
Prints the total per frame and where the time goes. bench/bench_pose_extract.py runs the same breakdown on the
pack as ComfyUI loads it, after timing the extraction itself.

The pack's dwpose/ package (plain numpy, no ComfyUI imports in align/draw/keypoints) is loaded under a private name
from its files: the repository root is never put on sys.path (its nodes/ package would shadow ComfyUI's `nodes`).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))  # comfy_boot: the pack's model code, never the root on sys.path
from comfy_boot import import_pack_package  # noqa: E402

W, H = 576, 1024
FW, FH = 1920, 1080
RENDER_PARTS = ("canvas", "body (limbs, 0.6 dim, joints)", "hands", "face", "resize+RGB")


def load_dwpose(name: str = "controlnext_bench_dwpose") -> tuple[ModuleType, ModuleType, ModuleType]:
    """(align, draw, keypoints) of the pack's dwpose/ package, imported from its files under `name`."""
    import_pack_package("dwpose", name)
    return tuple(importlib.import_module(f"{name}.{sub}") for sub in ("align", "draw", "keypoints"))  # type: ignore


def synthetic_person(kp: ModuleType, rng: np.random.Generator, size: tuple[int, int], cx: float):
    """A plausible whole-body Person (every point found, scores 0.2..1) centred at cx (0..1 of the width)."""
    w, h = size
    body = np.column_stack([rng.uniform(cx - 0.12, cx + 0.12, 18) * w, np.linspace(0.1, 0.9, 18) * h,
                            rng.uniform(0.4, 1.0, 18)])
    hands = [np.column_stack([rng.uniform(cx - 0.2, cx + 0.2, 21) * w, rng.uniform(0.4, 0.6, 21) * h,
                              rng.uniform(0.2, 1.0, 21)]) for _ in range(2)]
    face = np.column_stack([rng.uniform(cx - 0.03, cx + 0.03, 68) * w, rng.uniform(0.1, 0.18, 68) * h,
                            rng.uniform(0.3, 1.0, 68)])
    return kp.Person(body=body, face=face, left_hand=hands[0], right_hand=hands[1])


def synthetic_frames(kp: ModuleType, frames: int, people: int, seed: int = 0) -> tuple[object, list]:
    """(reference PoseFrame at W x H, driving PoseFrames at FW x FH with `people` people each)."""
    rng = np.random.default_rng(seed)
    reference = kp.PoseFrame(W, H, [synthetic_person(kp, rng, (W, H), 0.5)])
    driving = [kp.PoseFrame(FW, FH, [synthetic_person(kp, rng, (FW, FH), 0.5 + 0.3 * (k - (people - 1) / 2))
                                     for k in range(people)]) for _ in range(frames)]
    return reference, driving


def align_and_render(align: ModuleType, draw: ModuleType, reference, driving: list) -> dict[str, float]:
    """Seconds per frame: alignment (fit + move), draw_pose_arrays, and draw_pose_arrays split into its parts."""
    n = len(driving)
    height, width = reference.height, reference.width
    t0 = time.perf_counter()
    fit = align.compute_fit(reference, driving)
    arrays = [align.aligned_arrays(f, fit) for f in driving]
    result = {"alignment": (time.perf_counter() - t0) / n}

    t0 = time.perf_counter()
    for bodies, hands, faces in arrays:
        draw.draw_pose_arrays(bodies, hands, faces, height, width)
    result["rendering"] = (time.perf_counter() - t0) / n

    parts = dict.fromkeys(RENDER_PARTS, 0.0)
    for bodies, hands, faces in arrays:  # draw_pose_arrays' steps, timed one by one
        t = time.perf_counter()
        canvas = np.zeros((*draw.canvas_size(height, width), 3), np.uint8)
        canvas[0, 0] = 0  # touch it: np.zeros is lazy, the first write pays for the pages
        t1 = time.perf_counter()
        if len(bodies):
            draw.draw_bodies(canvas, bodies)
        t2 = time.perf_counter()
        if len(hands):
            draw.draw_hands(canvas, hands)
        t3 = time.perf_counter()
        if len(faces):
            draw.draw_faces(canvas, faces)
        t4 = time.perf_counter()
        cv2.cvtColor(cv2.resize(canvas, (width, height)), cv2.COLOR_BGR2RGB)
        t5 = time.perf_counter()
        for key, dt in zip(RENDER_PARTS, (t1 - t, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
            parts[key] += dt / n
    result.update({f"  {k}": v for k, v in parts.items()})
    return result


def print_render(result: dict[str, float], indent: str = "") -> None:
    parts_total = sum(v for k, v in result.items() if k.startswith("  "))
    print(f"{indent}alignment (fit + move):   {result['alignment'] * 1000:7.2f} ms/frame")
    print(f"{indent}rendering (draw_pose_arrays): {result['rendering'] * 1000:7.2f} ms/frame, of which:")
    for key, dt in result.items():
        if key.startswith("  "):
            print(f"{indent}{key:34s} {dt * 1000:7.2f} ms  ({dt / parts_total * 100:4.1f} %)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--people", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="cv2 threads (0 = cv2's default)")
    args = parser.parse_args()
    if args.threads:
        cv2.setNumThreads(args.threads)
    align, draw, kp = load_dwpose()
    reference, driving = synthetic_frames(kp, args.frames, args.people)
    result = align_and_render(align, draw, reference, driving)
    rows, cols = draw.canvas_size(H, W)
    print(f"{args.frames} frames, {args.people} person(s), driving {FW}x{FH} -> canvas {W}x{H} (drawn at "
          f"{cols}x{rows}), cv2 threads {cv2.getNumThreads()}")
    print_render(result)
    print(f"total alignment + rendering: {(result['alignment'] + result['rendering']) * 1000:7.2f} ms/frame")


if __name__ == "__main__":
    main()
