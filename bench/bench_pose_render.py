"""Per-frame cost of pose alignment + official rendering at 576x1024 (CPU; no models, no ComfyUI).

    .venv/bin/python bench/bench_pose_render.py [--frames 48] [--people 1]

Synthetic whole-body poses (18 body, 2x21 hand, 68 face points, plausible scores) on a 1920x1080 driving video,
aligned onto a 576x1024 reference canvas and drawn like the official code (2160-short-side canvas, then resize).
Prints the total per frame and where the time goes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the pack's plain dwpose package, without ComfyUI

from dwpose import align, draw  # noqa: E402
from dwpose.keypoints import Person, PoseFrame  # noqa: E402

W, H = 576, 1024
FW, FH = 1920, 1080


def _person(rng: np.random.Generator, size: tuple[int, int], cx: float) -> Person:
    w, h = size
    body = np.column_stack([rng.uniform(cx - 0.12, cx + 0.12, 18) * w, np.linspace(0.1, 0.9, 18) * h,
                            rng.uniform(0.4, 1.0, 18)])
    hands = [np.column_stack([rng.uniform(cx - 0.2, cx + 0.2, 21) * w, rng.uniform(0.4, 0.6, 21) * h,
                              rng.uniform(0.2, 1.0, 21)]) for _ in range(2)]
    face = np.column_stack([rng.uniform(cx - 0.03, cx + 0.03, 68) * w, rng.uniform(0.1, 0.18, 68) * h,
                            rng.uniform(0.3, 1.0, 68)])
    return Person(body=body, face=face, left_hand=hands[0], right_hand=hands[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--people", type=int, default=1)
    args = parser.parse_args()
    cv2.setNumThreads(1)  # per-frame cost on one core (ComfyUI runs nodes one at a time)
    rng = np.random.default_rng(0)
    reference = PoseFrame(W, H, [_person(rng, (W, H), 0.5)])
    driving = [PoseFrame(FW, FH, [_person(rng, (FW, FH), 0.5 + 0.3 * (k - (args.people - 1) / 2))
                                  for k in range(args.people)]) for _ in range(args.frames)]

    t0 = time.perf_counter()
    fit = align.compute_fit(reference, driving)
    arrays = [align.aligned_arrays(f, fit) for f in driving]
    t_align = time.perf_counter() - t0

    parts = {"canvas": 0.0, "body (limbs, 0.6 dim, joints)": 0.0, "hands": 0.0, "face": 0.0, "resize+RGB": 0.0}
    t0 = time.perf_counter()
    for bodies, hands, faces in arrays:
        t = time.perf_counter()
        canvas = np.zeros((*draw.canvas_size(H, W), 3), np.uint8)
        canvas[0, 0] = 0  # touch it: np.zeros is lazy, the first write pays for the pages
        t1 = time.perf_counter()
        draw.draw_bodies(canvas, bodies)
        t2 = time.perf_counter()
        draw.draw_hands(canvas, hands)
        t3 = time.perf_counter()
        draw.draw_faces(canvas, faces)
        t4 = time.perf_counter()
        cv2.cvtColor(cv2.resize(canvas, (W, H)), cv2.COLOR_BGR2RGB)
        t5 = time.perf_counter()
        for key, dt in zip(parts, (t1 - t, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
            parts[key] += dt
    t_parts = time.perf_counter() - t0

    t0 = time.perf_counter()
    for bodies, hands, faces in arrays:
        draw.draw_pose_arrays(bodies, hands, faces, H, W)
    t_render = time.perf_counter() - t0

    n = args.frames
    print(f"{n} frames, {args.people} person(s), driving {FW}x{FH} -> canvas {W}x{H} "
          f"(drawn at {draw.canvas_size(H, W)[1]}x{draw.canvas_size(H, W)[0]})")
    print(f"alignment (fit + move, all frames): {t_align / n * 1000:.2f} ms/frame")
    print(f"rendering draw_pose_arrays:         {t_render / n * 1000:.2f} ms/frame")
    print(f"total alignment + rendering:        {(t_align + t_render) / n * 1000:.2f} ms/frame")
    print("where the rendering time goes:")
    for key, dt in parts.items():
        print(f"  {key:32s} {dt / n * 1000:7.2f} ms  ({dt / t_parts * 100:4.1f} %)")


if __name__ == "__main__":
    main()
