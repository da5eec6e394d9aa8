"""Per-frame cost of the pose post-processing stages at 576x1024 (CPU, numpy; no models, no ComfyUI).

    .venv/bin/python bench/bench_pose_stages.py [--stages retarget] [--frames 133] [--people 1] [--repeats 5]

Budget (issue 10): every stage under 2 ms per frame on this machine, vectorised over frames.

Poses: the real DWPose weights are not on this machine, so the clip is a STAND-IN for ../shared/media/dance-01.mp4:
its size, frame count and frame rate (read from the file when present: 576x1024, 133 frames, 29 fps), with a
synthetic whole-body dancer (18 body points from bone lengths and swinging joint angles, 2 x 21 hand and 68 face
points, DWPose-like scores and a few px of jitter) and a reference person with other proportions on a 576x1024 canvas.

Stages are functions in STAGES (name -> function(modules, clip, repeats) -> rows of (label, seconds per frame)); each
row is the best of --repeats runs (the machine is shared: the minimum is the least disturbed). Add a stage by writing
one such function and one STAGES entry.

The pack's dwpose/ package (plain numpy, no ComfyUI imports) is loaded under a private name from its files: the
repository root is never put on sys.path (its nodes/ package would shadow ComfyUI's `nodes`).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))  # comfy_boot: the pack's model code, never the root on sys.path
from comfy_boot import import_pack_package  # noqa: E402

DANCE = ROOT.parent / "shared" / "media" / "dance-01.mp4"
W, H = 576, 1024
BUDGET = 2e-3  # seconds per frame, each stage
PACKAGE = "controlnext_bench_stages_dwpose"


def load_dwpose(*submodules: str) -> SimpleNamespace:
    """The pack's dwpose/ submodules, imported from its files under a private package name."""
    import_pack_package("dwpose", PACKAGE)
    return SimpleNamespace(**{name: importlib.import_module(f"{PACKAGE}.{name}") for name in submodules})


# ----------------------------------------------------------------------------------------------------------------
# The stand-in clip
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class Clip:
    reference: object  # PoseFrame
    driving: list  # PoseFrames
    fps: float
    source: str


def video_meta(path: Path) -> tuple[int, int, int, float] | None:
    """(width, height, frames, fps) of the video, or None if it (or OpenCV) is missing."""
    try:
        import cv2
    except ImportError:
        return None
    if not path.is_file():
        return None
    cap = cv2.VideoCapture(str(path))
    try:
        meta = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
                int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), float(cap.get(cv2.CAP_PROP_FPS)))
    finally:
        cap.release()
    return meta if all(meta) else None


# bone lengths (px at a 1024-px-tall frame) and resting directions (degrees, y down), in retarget.BONES order
BONE_LENGTHS = np.array([60, 65, 63, 110, 112, 95, 93, 230, 228, 170, 172, 160, 158, 18, 18, 25, 25], dtype=float)
REST_ANGLES = np.array([-90, 180, 0, 100, 80, 95, 85, 100, 80, 92, 88, 90, 90, -120, -60, 190, -10], dtype=float)


def _skeleton(bones: tuple, lengths: np.ndarray, angles: np.ndarray, neck: np.ndarray) -> np.ndarray:
    pts = np.zeros((18, 2))
    pts[1] = neck
    for b, (c, p, _, _) in enumerate(bones):
        a = np.deg2rad(angles[b])
        pts[c] = pts[p] + lengths[b] * np.array([np.cos(a), np.sin(a)])
    return pts


def _person(kp: ModuleType, rng: np.random.Generator, body_xy: np.ndarray, size: float, jitter: float) -> object:
    def noisy(xy: np.ndarray, lo: float) -> np.ndarray:
        return np.column_stack([xy + rng.normal(0, jitter, xy.shape), rng.uniform(lo, 1.0, len(xy))])

    hand = np.column_stack([rng.uniform(-12, 12, 21), rng.uniform(0, 40, 21)]) * size
    face = np.column_stack([rng.uniform(-28, 28, 68), rng.uniform(-34, 34, 68)]) * size
    return kp.Person(body=noisy(body_xy, 0.5), right_hand=noisy(body_xy[4] + hand, 0.2),
                     left_hand=noisy(body_xy[7] + hand, 0.2), face=noisy(body_xy[0] + face, 0.3))


def stand_in_clip(frames: int | None, people: int, seed: int = 0) -> Clip:
    dw = load_dwpose("keypoints", "retarget")
    meta = video_meta(DANCE)
    fw, fh, n, fps = meta or (W, H, 133, 29.0)
    n = frames or n
    source = (f"stand-in for {DANCE.name} ({fw}x{fh}, {n} frames, {fps:g} fps): synthetic dancer, DWPose weights "
              "absent" if meta else f"synthetic dancer ({fw}x{fh}, {n} frames; {DANCE} not found)")
    rng = np.random.default_rng(seed)
    bones = dw.retarget.BONES
    ref_factors = rng.uniform(0.8, 1.2, len(bones))  # the reference person has other proportions
    reference = dw.keypoints.PoseFrame(W, H, [_person(dw.keypoints, rng, _skeleton(
        bones, BONE_LENGTHS * ref_factors, REST_ANGLES, np.array([W / 2, 240.0])), 1.0, 0.0)])
    size = fh / 1024 * 0.95
    driving = []
    for t in range(n):
        phase = 2 * np.pi * t / fps
        ppl = []
        for k in range(people):
            ang = REST_ANGLES.copy()
            ang[3:7] += 50 * np.sin(1.3 * phase + np.arange(4) + k)  # arms swing
            ang[9:13] += 20 * np.sin(phase + np.array([0, np.pi, 0.5, np.pi + 0.5]))  # steps
            ang[[7, 8]] += 5 * np.sin(0.5 * phase)
            neck = np.array([fw * (0.5 + 0.3 * (k - (people - 1) / 2)) + 25 * np.sin(0.4 * phase),
                             fh * 0.24 + 10 * np.sin(2 * phase)])
            ppl.append(_person(dw.keypoints, rng, _skeleton(bones, BONE_LENGTHS * size, ang, neck), size, 2.0))
        driving.append(dw.keypoints.PoseFrame(fw, fh, ppl))
    return Clip(reference, driving, fps, source)


def best_per_frame(fn: Callable[[], object], frames: int, repeats: int) -> float:
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best / frames


# ----------------------------------------------------------------------------------------------------------------
# Stages
# ----------------------------------------------------------------------------------------------------------------
def bench_retarget(clip: Clip, repeats: int) -> list[tuple[str, float]]:
    """ControlNeXtRetargetPoses: the model code per option, and the node's POSE_KEYPOINT conversions around it."""
    dw = load_dwpose("keypoints", "retarget")
    rt, kp = dw.retarget, dw.keypoints
    n = len(clip.driving)
    rows = []
    for label, opts in (("retarget (anchor feet, scaled)", rt.RetargetOptions()),
                        ("retarget (anchor hips, exact lengths)", rt.RetargetOptions(anchor="hips", lengths="exact")),
                        ("retarget (neck, hands/face moved only)", rt.RetargetOptions(anchor="neck",
                                                                                       hands_face=False))):
        rows.append((label, best_per_frame(lambda o=opts: rt.retarget_frames(clip.reference, clip.driving, o), n,
                                           repeats)))
    data = kp.to_pose_keypoint(clip.driving)
    ref_data = kp.to_pose_keypoint([clip.reference])

    def node() -> object:  # what the node's execute does: parse, retarget, write, describe
        result = rt.retarget_frames(kp.from_pose_keypoint(ref_data)[0], kp.from_pose_keypoint(data))
        return kp.to_pose_keypoint(result.frames), result.describe()

    rows.append(("  node total incl. POSE_KEYPOINT read/write", best_per_frame(node, n, repeats)))
    return rows


# ----------------------------------------------------------------------------------------------------------------
# Tracking and smoothing (ControlNeXtTrackPeople, ControlNeXtSmoothPoses) on a crowd with a known truth
# ----------------------------------------------------------------------------------------------------------------
CROWD_BODY = np.array([(0, .06), (0, .17), (-.11, .18), (-.15, .33), (-.17, .46), (.11, .18), (.15, .33), (.17, .46),
                       (-.07, .5), (-.08, .72), (-.08, .95), (.07, .5), (.08, .72), (.08, .95), (-.02, .045),
                       (.02, .045), (-.045, .055), (.045, .055)])  # OpenPose-18 standing pose, in body heights


def _walker(cx: np.ndarray, top: np.ndarray, height: float, t: np.ndarray, fps: float) -> np.ndarray:
    """(T, 128, 2) true points of one person (body, face ring, hands at the wrists); the arms swing."""
    body = np.repeat(CROWD_BODY[None], len(t), axis=0)
    swing = 0.08 * np.sin(2 * np.pi * t / fps)[:, None]
    body[:, [3, 4, 6, 7], 1] -= swing * np.array([1, 2, 1, 2])
    body[:, [4, 7], 0] += swing * np.array([-1, 1])
    pts = np.empty((len(t), 128, 2))
    pts[:, :18] = np.stack([cx[:, None] + body[..., 0] * height, top[:, None] + body[..., 1] * height], axis=-1)
    ring = np.linspace(0, 2 * np.pi, 68, endpoint=False)
    pts[:, 18:86] = pts[:, :1] + 0.03 * height * np.stack([np.cos(ring), np.sin(ring)], axis=-1)
    fan = np.linspace(-1.0, 1.0, 21)
    for k, wrist in ((86, 7), (107, 4)):  # left hand at the left wrist, right hand at the right wrist
        pts[:, k:k + 21] = pts[:, wrist:wrist + 1] + 0.04 * height * np.stack([fan, np.abs(fan) + 0.2], axis=-1)
    return pts


def crowd_clip(clip: Clip, seed: int = 0) -> tuple[list, np.ndarray]:
    """(PoseFrames, truth (T, 3, 128, 2)) with the clip's frame count and rate on a 576x1024 frame: the dancer sways
    in the middle, two people walk across in opposite directions (the second hidden while behind her); DWPose-like
    jitter (2 px), 4 % of the points scoring under 0.3, a 3- and a 12-frame dropout on the dancer, and the people
    listed in a random order every frame."""
    dw = load_dwpose("keypoints")
    rng = np.random.default_rng(seed)
    n, fps = len(clip.driving), clip.fps
    t = np.arange(n, dtype=np.float64)
    truth = np.stack([_walker(W / 2 + 60 * np.sin(t / 15), 120 + 10 * np.sin(t / 9), 780.0, t, fps),
                      _walker(W * (0.1 + 0.8 * t / max(n - 1, 1)), np.full(n, 250.0), 520.0, t, fps),
                      _walker(W * (0.9 - 0.8 * t / max(n - 1, 1)), np.full(n, 280.0), 480.0, t, fps)], axis=1)
    score = rng.uniform(0.5, 1.0, truth.shape[:3])
    drop = rng.random(score.shape) < 0.04
    score[drop] = rng.uniform(0.05, 0.28, drop.sum())
    score[n // 3:n // 3 + 3, 0, 86:107] = 0.1
    score[n // 2:n // 2 + 12, 0, 4] = 0.1
    seen = truth + rng.normal(0.0, 2.0, truth.shape)
    frames = []
    for f in range(n):
        people = []
        for k in range(3):
            if k == 2 and abs(truth[f, 2, 1, 0] - truth[f, 0, 1, 0]) < 60:
                continue  # hidden behind the dancer
            pts = np.concatenate([seen[f, k], score[f, k, :, None]], axis=1)
            people.append(dw.keypoints.Person(body=pts[:18], face=pts[18:86], left_hand=pts[86:107],
                                              right_hand=pts[107:]))
        frames.append(dw.keypoints.PoseFrame(W, H, [people[i] for i in rng.permutation(len(people))]))
    return frames, truth


def bench_track(clip: Clip, repeats: int) -> list[tuple[str, float]]:
    """ControlNeXtTrackPeople on the crowd: the model code, and the node's POSE_KEYPOINT conversions around it."""
    dw = load_dwpose("keypoints", "track")
    tr, kp = dw.track, dw.keypoints
    frames, _ = crowd_clip(clip)
    n = len(frames)
    print(f"  crowd of 3 (shuffled order, crossing, one hidden behind the dancer), {n} frames {W}x{H}")
    print("  " + "\n  ".join(tr.track_frames(frames, tr.TrackOptions(keep="all people"))[1].describe().splitlines()))
    rows = [(f"track (keep {keep})", best_per_frame(lambda k=keep: tr.track_frames(frames, tr.TrackOptions(keep=k)), n,
                                                    repeats)) for keep in tr.KEEP_CHOICES]
    data = kp.to_pose_keypoint(frames)

    def node() -> object:
        out, result = tr.track_frames(kp.from_pose_keypoint(data), tr.TrackOptions(keep="all people"))
        return kp.to_pose_keypoint(out), result.describe()

    rows.append(("  node total incl. POSE_KEYPOINT read/write", best_per_frame(node, n, repeats)))
    return rows


def bench_smooth(clip: Clip, repeats: int) -> list[tuple[str, float]]:
    """ControlNeXtSmoothPoses (defaults) on the tracked crowd: jitter and error to the truth before and after."""
    dw = load_dwpose("keypoints", "track", "smooth")
    sm, kp = dw.smooth, dw.keypoints
    frames, truth = crowd_clip(clip)
    tracked, _ = dw.track.track_frames(frames, dw.track.TrackOptions(keep="all people"))
    n = len(tracked)
    every = np.ones(truth.shape[:3], dtype=bool)

    def dancer_error(poses: list) -> str:
        arr = sm.frames_to_array(poses)[:, 0]
        found = arr[..., 2] > sm.SCORE_THRESHOLD
        return f"{np.sqrt(np.mean(np.sum((arr[..., :2] - truth[:, 0]) ** 2, axis=-1)[found])):.2f} px"

    print(f"  the tracked crowd (3 people, {n} frames {W}x{H}); jitter = RMS second difference over frames")
    print("  true motion's own: " + ", ".join(f"{part} {sm.jitter_rms(truth[:, :, sl], every[:, :, sl]):.2f} px"
                                               for part, sl in sm.PART_SLICES.items()))
    rows = []
    for method in sm.METHOD_CHOICES:
        opts = sm.SmoothOptions(method=method)
        out, report = sm.smooth_frames(tracked, opts)
        print(f"  {method}: " + "; ".join(f"{part} {report.jitter_before[part]:.2f} -> {report.jitter_after[part]:.2f}"
                                          f" px" for part in report.jitter_before)
              + f"; dancer's error to the truth {dancer_error(tracked)} -> {dancer_error(out)}; {report.filled} "
              f"point-frames filled, {report.left_missing} left missing")
        rows.append((f"smooth ({method})", best_per_frame(lambda o=opts: sm.smooth_frames(tracked, o), n, repeats)))
    data = kp.to_pose_keypoint(tracked)

    def node() -> object:
        out, report = sm.smooth_frames(kp.from_pose_keypoint(data))
        return kp.to_pose_keypoint(out), report.describe()

    rows.append(("  node total incl. POSE_KEYPOINT read/write", best_per_frame(node, n, repeats)))
    return rows


STAGES: dict[str, Callable[[Clip, int], list[tuple[str, float]]]] = {
    "retarget": bench_retarget,
    "track": bench_track,
    "smooth": bench_smooth,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", nargs="+", choices=list(STAGES), default=list(STAGES))
    parser.add_argument("--frames", type=int, default=0, help="frames of the stand-in clip (0 = as dance-01.mp4)")
    parser.add_argument("--people", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    clip = stand_in_clip(args.frames or None, args.people)
    print(f"poses: {clip.source}; {args.people} person(s) per frame; reference canvas {W}x{H}")
    print(f"budget: {BUDGET * 1000:.1f} ms/frame per stage (best of {args.repeats} runs)")
    for stage in args.stages:
        print(f"\n[{stage}]")
        for label, per_frame in STAGES[stage](clip, args.repeats):
            verdict = "" if label.startswith("  ") else ("  OK" if per_frame < BUDGET else "  OVER BUDGET")
            print(f"  {label:46s} {per_frame * 1000:7.3f} ms/frame{verdict}")


if __name__ == "__main__":
    main()
