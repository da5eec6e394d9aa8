"""Per-frame cost of DWPose extraction + alignment + official rendering at 576x1024, with the test models (CPU).

    .venv/bin/python bench/bench_pose_extract.py [--frames 30] [--repeats 3] [--threads 0]

Boots ComfyUI on the CPU in-process, loads the pack as ComfyUI does (nodes.load_custom_node) and builds the fake
DWPose models of tests/tiny_pack/fake_dwpose.py (the real I/O: [1,3,640,640] -> [1,8400,85] detector,
[N,3,384,288] -> simcc_x/simcc_y pose model) as ONNX (onnxruntime, dynamic pose batch) and TorchScript (pose model
traced at batch 5, like hr16's file). The fakes do almost no arithmetic, so the model times here are NOT the real
YOLOX-L / RTMPose-l times: what this measures is everything around the two models.

For 1 and 2 people per frame it prints, per frame:
- every stage of DWPose.detect, run step by step exactly as the pipeline does (same functions, same crop batching;
  the result is checked against detect()'s): letterbox, detector session, decode + NMS, crop / warp (incl. stacking
  the pose batch), pose session, SimCC decode + inverse transform + OpenPose remap;
- the node-level steps: IMAGE float -> uint8, alignment (fit + move), rendering (official, 2160-short-side canvas),
  and the pose images back to a float IMAGE;
- frames per second of DWPose.detect as a whole, and of the whole chain (extraction + alignment + rendering).
Then the rendering breakdown on synthetic whole-body poses (bench/bench_pose_render.py), which draw every limb,
hand and face point (the fakes only find the nose, shoulders, hands and face).
Each figure is the best of --repeats runs (the machine is shared: the minimum is the least disturbed).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
import logging
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
COMFY = ROOT / ".host" / "ComfyUI"
W, H = 576, 1024  # the official output size; driving frames of the same size (the example videos are 576x1024)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=30, help="driving frames per configuration")
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure; the best is reported")
    parser.add_argument("--threads", type=int, default=0,
                        help="cv2, torch and onnxruntime threads (0 = their defaults, as in ComfyUI)")
    return parser.parse_args()


ARGS = parse_args()  # before ComfyUI takes over sys.argv

# ComfyUI in-process on the CPU, in the order scripts/comfy_boot.py encodes
_spec = importlib.util.spec_from_file_location("comfy_boot", ROOT / "scripts" / "comfy_boot.py")
_comfy_boot = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_comfy_boot)
nodes = _comfy_boot.boot_comfy(COMFY, tempfile.mkdtemp(prefix="controlnext-bench-base-"), cpu=True)

# isort: split
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

if not asyncio.run(nodes.load_custom_node(str(ROOT))):
    raise RuntimeError(f"ComfyUI could not load the pack at {ROOT}: see the log above")
PACK = str(ROOT).replace(".", "_x_")  # the sys.modules name load_custom_node gives a directory


def pack_import(sub: str) -> ModuleType:
    return importlib.import_module(f"{PACK}.{sub}")


def load_file(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


det = pack_import("dwpose.detector")
est = pack_import("dwpose.estimator")
kp = pack_import("dwpose.keypoints")
align = pack_import("dwpose.align")
draw = pack_import("dwpose.draw")
pipeline = pack_import("dwpose.pipeline")
fd = load_file("controlnext_bench_fake_dwpose", ROOT / "tests" / "tiny_pack" / "fake_dwpose.py")
render_bench = load_file("controlnext_bench_pose_render", ROOT / "bench" / "bench_pose_render.py")

STAGES = ("IMAGE float -> uint8", "letterbox", "detector session", "decode + NMS", "crop / warp (+ batch stack)",
          "pose session", "SimCC decode + remap", "alignment (fit + move)", "rendering (draw_pose_arrays)",
          "pose images -> float IMAGE")
MODEL_STAGES = ("detector session", "pose session")


class Timer:
    def __init__(self) -> None:
        self.total: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, key: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        self.total[key] += time.perf_counter() - t0


# --- test scenes and models ---------------------------------------------------------------------------------------

def person_positions(people: int, frame: int) -> list[tuple[float, float]]:
    """Nose positions that move a little from frame to frame (inside the fixed 2-person boxes)."""
    wobble = 6.0 * np.sin(frame * 0.7)
    if people == 1:
        return [(W * 0.5 + wobble, H * 0.3 - wobble)]
    return [(W * 0.3 + wobble, H * 0.3), (W * 0.7 - wobble, H * 0.6)]


def scene(people: int, frame: int) -> np.ndarray:
    """Black RGB frame; per person a red nose, green left shoulder and blue right shoulder (the fakes' markers)."""
    img = np.zeros((H, W, 3), np.uint8)
    for x, y in person_positions(people, frame):
        fd.draw_marker(img, x, y, fd.R)
        fd.draw_marker(img, x + 41.3, y + 63.7, fd.G)
        fd.draw_marker(img, x - 38.6, y + 66.2, fd.B)
    return img


def two_person_rows() -> np.ndarray:
    """Raw YOLOX output with the two people's boxes (letterbox pixels), person 0 scoring highest."""
    r = min(640 / H, 640 / W)
    boxes = [(x - 90, y - 40, x + 90, y + 120) for x, y in person_positions(2, 0)]
    return fd.const_det_rows([tuple(v * r for v in b) for b in boxes], [0.95, 0.9])


class ConstDetTorch(torch.nn.Module):
    """The ONNX const detector as TorchScript (the fakes have no TorchScript one): fixed rows + 0 * mean(input)."""

    def __init__(self, rows: np.ndarray) -> None:
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.register_buffer("rows", torch.from_numpy(rows))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rows.to(x.dtype) + x.mean() * 0 + self.dummy * 0


def build_models(folder: Path) -> dict[tuple[str, int], tuple[str, str]]:
    """(backend, people) -> (detector file, pose file)."""
    rows = two_person_rows()
    files = {"blob.onnx": fd.blob_det_onnx, "pose.onnx": lambda p: fd.marker_pose_onnx(p, "batch"),
             "const2.onnx": lambda p: fd.const_det_onnx(p, rows),
             "blob.torchscript.pt": fd.blob_det_torchscript, "pose_bs5.torchscript.pt": fd.marker_pose_torchscript,
             "const2.torchscript.pt": lambda p: torch.jit.save(
                 torch.jit.trace(ConstDetTorch(rows).eval(), torch.zeros(1, 3, 640, 640)), p)}
    for name, make in files.items():
        make(str(folder / name))
    f = {k: str(folder / k) for k in files}
    return {("onnx", 1): (f["blob.onnx"], f["pose.onnx"]), ("onnx", 2): (f["const2.onnx"], f["pose.onnx"]),
            ("torchscript", 1): (f["blob.torchscript.pt"], f["pose_bs5.torchscript.pt"]),
            ("torchscript", 2): (f["const2.torchscript.pt"], f["pose_bs5.torchscript.pt"])}


# --- DWPose.detect, stage by stage --------------------------------------------------------------------------------

def detect_staged(model, images: np.ndarray, t: Timer) -> list:
    """DWPose.detect's work with a timer around each stage (no whole_image_fallback, no progress bar)."""
    n = images.shape[0]
    frames, pending = [], []
    target = model._pose_batch()
    for i in range(n):
        image = images[i]
        frames.append(kp.PoseFrame(width=image.shape[1], height=image.shape[0], people=[]))
        with t("letterbox"):
            x, r = det.letterbox(image)
        with t("detector session"):
            out = model.det_model.run(x)
        with t("decode + NMS"):
            boxes, scores = det.select_people(*det.decode(out[0], r))
        for box, score in zip(boxes, scores, strict=True):
            center, scale = est.box_center_scale(box, model.pose_size)
            pending.append((i, box, float(score), center, scale))
        if len(pending) >= target or i == n - 1:
            flush_staged(model, images, pending, frames, t)
            pending = []
    return frames


def flush_staged(model, images: np.ndarray, pending: list, frames: list, t: Timer) -> None:
    if not pending:
        return
    with t("crop / warp (+ batch stack)"):
        crops = [est.crop(images[i], c, s, model.pose_size) for i, _, _, c, s in pending]
    batch, fixed = model._pose_batch(), model.pose_model.batch is not None
    xs, ys = [], []
    for start in range(0, len(crops), batch):
        chunk = crops[start:start + batch]
        with t("crop / warp (+ batch stack)"):
            x = np.stack(chunk + [np.zeros_like(chunk[0])] * (batch - len(chunk) if fixed else 0))
        with t("pose session"):
            out = model.pose_model.run(x)
        xs.append(out[0][:len(chunk)])
        ys.append(out[1][:len(chunk)])
    with t("SimCC decode + remap"):
        pts = est.decode(np.concatenate(xs), np.concatenate(ys), np.stack([p[3] for p in pending]),
                         np.stack([p[4] for p in pending]), model.pose_size)
        for (i, box, score, _, _), k in zip(pending, pts, strict=True):
            frames[i].people.append(kp.person_from_wholebody(k, box, score))


def same_frames(a: list, b: list) -> bool:
    parts = ("body", "face", "left_hand", "right_hand")
    return len(a) == len(b) and all(
        len(fa.people) == len(fb.people) and all(np.array_equal(getattr(pa, k), getattr(pb, k))
                                                 for pa, pb in zip(fa.people, fb.people, strict=True) for k in parts)
        for fa, fb in zip(a, b, strict=True))


# --- one configuration ----------------------------------------------------------------------------------------------

def bench_config(det_path: str, pose_path: str, people: int, frames: int, repeats: int) -> dict[str, float]:
    """Seconds per frame for every stage (best of `repeats`), plus 'detect()' and 'chain' wall times per frame."""
    model = pipeline.DWPose(det_path, pose_path)
    video = torch.from_numpy(np.stack([scene(people, k) for k in range(frames)])).float().div_(255)
    ref_image = scene(1, 0)
    reference = model.detect(ref_image)[0]
    model.detect(pipeline.images_to_uint8(video[:2]))  # warm-up: first-call allocations, cv2 import, JIT
    best: dict[str, float] = {}
    for _ in range(repeats):
        t = Timer()
        t0 = time.perf_counter()
        with t("IMAGE float -> uint8"):
            images = pipeline.images_to_uint8(video)
        device = pipeline.mm.get_torch_device()
        for m in (model.det_model, model.pose_model):
            m.activate(device)
        staged = detect_staged(model, images, t)
        for m in (model.det_model, model.pose_model):
            m.deactivate()
        with t("alignment (fit + move)"):
            fit = align.compute_fit(reference, staged)
            arrays = [align.aligned_arrays(f, fit) for f in staged]
        out = torch.empty((frames, H, W, 3), dtype=torch.float32)
        for i, (bodies, hands, faces) in enumerate(arrays):
            with t("rendering (draw_pose_arrays)"):
                img = draw.draw_pose_arrays(bodies, hands, faces, H, W)
            with t("pose images -> float IMAGE"):
                out[i] = torch.from_numpy(img)
        with t("pose images -> float IMAGE"):
            out.div_(255.0)
        t.total["chain"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        detected = model.detect(images)
        t.total["detect()"] = time.perf_counter() - t0
        if not same_frames(staged, detected):
            raise RuntimeError("the staged pipeline no longer matches DWPose.detect: update detect_staged()")
        if any(len(f.people) != people for f in detected):
            raise RuntimeError(f"expected {people} person(s) per frame, got {[len(f.people) for f in detected]}")
        for key, total in t.total.items():
            best[key] = min(best.get(key, np.inf), total / frames)
    model.close()
    return best


def main() -> None:
    if ARGS.threads:
        cv2.setNumThreads(ARGS.threads)
        torch.set_num_threads(ARGS.threads)
    import onnxruntime as ort

    # 2-person frames have no single-person frame to fit on: the official identity fallback, warned about each time
    align.log.setLevel(logging.ERROR)

    print(f"{ARGS.frames} frames of {W}x{H} per configuration, best of {ARGS.repeats}; torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), onnxruntime {ort.__version__} (CPU), cv2 {cv2.__version__} "
          f"({cv2.getNumThreads()} threads), {len(__import__('os').sched_getaffinity(0))} CPU(s) available")
    results = {}
    with tempfile.TemporaryDirectory(prefix="controlnext-bench-dwpose-") as folder:
        for (backend, people), (det_path, pose_path) in build_models(Path(folder)).items():
            results[(backend, people)] = bench_config(det_path, pose_path, people, ARGS.frames, ARGS.repeats)

    keys = list(results)
    head = "".join(f"{b[:5]} {p}p".rjust(11) for b, p in keys)
    print(f"\nms per frame{'':30s}{head}")
    for stage in STAGES:
        print(f"  {stage:40s}" + "".join(f"{results[k].get(stage, 0.0) * 1000:11.2f}" for k in keys))
    around = {k: sum(v for s, v in r.items() if s in STAGES[:7] and s not in MODEL_STAGES) for k, r in results.items()}
    models = {k: sum(r.get(s, 0.0) for s in MODEL_STAGES) for k, r in results.items()}
    post = {k: sum(r.get(s, 0.0) for s in STAGES[7:]) for k, r in results.items()}
    for label, values in (("around the models (extraction)", around), ("the two fake models", models),
                          ("alignment + rendering + IMAGE", post)):
        print(f"  {label:40s}" + "".join(f"{values[k] * 1000:11.2f}" for k in keys))
    print(f"\nframes per second{'':25s}{head}")
    for label, key in (("DWPose.detect (extraction)", "detect()"), ("whole chain (IMAGE -> pose IMAGE)", "chain")):
        print(f"  {label:40s}" + "".join(f"{1 / results[k][key]:11.1f}" for k in keys))

    print("\nrendering on synthetic whole-body poses (1920x1080 driving -> 576x1024, every limb, hand and face point):")
    for people in (1, 2):
        reference, driving = render_bench.synthetic_frames(kp, ARGS.frames, people)
        res = [render_bench.align_and_render(align, draw, reference, driving) for _ in range(ARGS.repeats)]
        best = {k: min(r[k] for r in res) for k in res[0]}
        print(f" {people} person(s):")
        render_bench.print_render(best, indent="  ")


if __name__ == "__main__":
    main()
