"""Headless render: a reference photo + a dance (or pose) video -> an mp4, by running the example workflow in ComfyUI.

    .venv/bin/python scripts/render.py --ref photo.jpg --driving dance.mp4 --out out.mp4
    .venv/bin/python scripts/render.py --ref photo.jpg --driving poses.mp4 --pose-video --out out.mp4
    .venv/bin/python scripts/render.py --tiny --ref photo.jpg --driving dance.mp4 --out check.mp4  # plumbing check

The ComfyUI that scripts/setup_host.sh linked (.host/ComfyUI: 0.3.75 by default, any other with CONTROLNEXT_COMFYUI;
base dir .host/base) is booted in-process; the example workflow (example_workflows/controlnext_svd_dance_video.json,
or controlnext_svd_pose_video.json with --pose-video) is converted to the API format with scripts/comfy_workflow.py,
its inputs are set from the command line, and it is validated and executed with ComfyUI's own validate_prompt and
PromptExecutor (scripts/comfy_boot.py: run_prompt). Writes --out (the generated video, frame 0 = the reference, as
the official code) and <out stem>-side-by-side.mp4 (pose | generated), both with the sound of the kept driving frames'
span (read from --driving with controlnext/video_audio.py, as ControlNeXtDrivingFrames does; silence when it has
none), starting with frame 0 as in the example workflows. --tiny swaps the model loaders for tiny random
models (tests/tiny_pack), so the command runs on any machine: a plumbing check whose output is noise. The driving
video is strided and trimmed here (--stride, --frames) before the workflow loads it.

The repo root is never put on sys.path (its nodes/ package would shadow ComfyUI's `nodes`).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
import json
import logging
import os
import re
import shutil
import socket
import sys
import tempfile
import time
import uuid
from fractions import Fraction
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
COMFY = ROOT / ".host" / "ComfyUI"
BASE = ROOT / ".host" / "base"
WORKFLOWS = {False: ROOT / "example_workflows" / "controlnext_svd_dance_video.json",
             True: ROOT / "example_workflows" / "controlnext_svd_pose_video.json"}
CONVERTER = ROOT / "scripts" / "comfy_workflow.py"
TINY_PACK = ROOT / "tests" / "tiny_pack"
TINY_PACK_LINK = "controlnext_render_tiny_nodes"
SETUP_MODELS = "python scripts/setup_models.py --download"
PLUMBING = "PLUMBING CHECK: random weights, the output is noise"
CAPTURE_NODE = "ControlNeXtRenderCapture"

# (node class, input) -> model folders the file may be in: what is checked before a real run
MODEL_INPUTS: dict[tuple[str, str], tuple[str, ...]] = {
    ("ImageOnlyCheckpointLoader", "ckpt_name"): ("checkpoints",),
    ("CheckpointLoaderSimple", "ckpt_name"): ("checkpoints",),
    ("CLIPVisionLoader", "clip_name"): ("clip_vision",),
    ("VAELoader", "vae_name"): ("vae",),
    ("UNETLoader", "unet_name"): ("diffusion_models",),
    ("ControlNeXtUNetLoader", "unet_name"): ("diffusion_models", "controlnext"),
    ("ControlNeXtLoader", "controlnext_name"): ("controlnext",),
    ("ControlNeXtDWPoseLoader", "bbox_detector"): ("dwpose",),
    ("ControlNeXtDWPoseLoader", "pose_estimator"): ("dwpose",),
}


class RenderError(Exception):
    """A user-facing problem (bad input, missing model files, failed graph): printed without a traceback."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--ref", required=True, type=Path, help="reference photo of the person (jpg/png)")
    p.add_argument("--driving", required=True, type=Path, help="dance video (or a pose video with --pose-video)")
    p.add_argument("--out", required=True, type=Path, help="output mp4; the side-by-side goes beside it")
    p.add_argument("--pose-video", action="store_true", help="--driving is already a rendered pose video")
    p.add_argument("--tiny", action="store_true", help=f"{PLUMBING}: tiny random models, runs without the weights")
    p.add_argument("--width", type=int, help="output width, a multiple of 64 (default 576; --tiny 64)")
    p.add_argument("--height", type=int, help="output height, a multiple of 64 (default 1024; --tiny 64)")
    p.add_argument("--frames", type=int, help="most output frames, frame 0 (the reference) included; "
                   "0 = all (default 0; --tiny 4)")
    p.add_argument("--stride", type=int, default=2, help="use every n-th driving frame (official: 2)")
    p.add_argument("--steps", type=int, help="denoising steps (default 25; --tiny 2)")
    p.add_argument("--seed", type=int, default=0, help="noise seed")
    p.add_argument("--workflow", type=Path, help="UI-format workflow to run instead of the example one")
    args = p.parse_args(argv)
    tiny_defaults = {"width": 64, "height": 64, "frames": 4, "steps": 2}
    real_defaults = {"width": 576, "height": 1024, "frames": 0, "steps": 25}
    for key, value in (tiny_defaults if args.tiny else real_defaults).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for name in ("ref", "driving"):
        if not getattr(args, name).is_file():
            p.error(f"--{name} {getattr(args, name)}: no such file")
    if args.width % 64 or args.height % 64 or args.width <= 0 or args.height <= 0:
        p.error(f"--width {args.width} --height {args.height}: both must be positive multiples of 64 "
                "(the UNet's skip connections need latent sides divisible by 8)")
    if args.stride < 1 or args.frames < 0 or args.steps < 1:
        p.error("--stride and --steps must be >= 1, --frames >= 0")
    if args.frames == 1 and not args.pose_video:
        p.error("--frames 1 would keep no driving frame: use 2 or more (frame 0 is the reference)")
    if args.out.suffix.lower() != ".mp4":
        p.error(f"--out {args.out}: must end in .mp4")
    return args


# ---------------------------------------------------------------------------------------------------------- host


def boot_comfy(tiny_custom_nodes: Path | None) -> dict[str, ModuleType]:
    """Parse ComfyUI's arguments, import it and load the custom nodes (the pack, and the tiny test pack if asked)."""
    if not (COMFY / "main.py").is_file():
        raise RenderError(f"No ComfyUI host at {COMFY}: run `bash scripts/setup_host.sh` first "
                          "(or use scripts/render.sh, which does).")
    import torch  # importing torch does not initialise ComfyUI's device logic; it only tells us if CUDA exists

    for sub in ("custom_nodes", "models", "input", "output", "temp", "user"):
        (BASE / sub).mkdir(parents=True, exist_ok=True)
    from comfy_boot import boot_comfy as boot  # scripts/ is on sys.path when this file runs as a script

    nodes = boot(COMFY, BASE, cpu=not torch.cuda.is_available())

    # isort: split
    import comfy.utils
    import execution
    import folder_paths
    import server

    if tiny_custom_nodes is not None:
        folder_paths.add_model_folder_path("custom_nodes", str(tiny_custom_nodes))
    server.PromptServer.instance = ConsoleServer()
    quiet = HarmlessHostWarnings()
    logging.getLogger().addFilter(quiet)
    try:
        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
    finally:
        logging.getLogger().removeFilter(quiet)
    if quiet.modules:
        print(f"[render] host: {len(quiet.modules)} core node module(s) skipped, harmless ("
              f"{', '.join(sorted(quiet.modules))}: core's audio nodes need torchaudio, which has no release for this "
              "torch; the pack reads and writes sound with PyAV)", flush=True)
    if "ControlNeXtSampler" not in nodes.NODE_CLASS_MAPPINGS:
        raise RenderError("ComfyUI did not load the ControlNeXt pack: see its import error in the log above "
                          f"(the pack is linked at {BASE / 'custom_nodes'} by scripts/setup_host.sh)")
    nodes.NODE_CLASS_MAPPINGS[CAPTURE_NODE] = CaptureImages
    return {"execution": execution, "folder_paths": folder_paths, "nodes": nodes, "comfy.utils": comfy.utils}


class HarmlessHostWarnings(logging.Filter):
    """Drops ComfyUI's import-failure log lines (traceback, 'Cannot import', 'IMPORT FAILED') for core node modules
    that fail only because torchaudio is missing, and remembers them for one summary line. Any other failure (the
    pack's own above all) is left as loud as ComfyUI makes it."""

    CANNOT = re.compile(r"Cannot import (.+) module for custom nodes: .*torchaudio")

    def __init__(self) -> None:
        super().__init__()
        self.modules: set[str] = set()  # file names of the core modules skipped for torchaudio
        self.in_block = False  # inside ComfyUI's "some comfy_extras/ nodes did not import" block
        self.other_failed = False  # a failure of another kind in that block: its footer stays

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage().strip()
        if text.startswith("Traceback") and "No module named 'torchaudio'" in text and "comfy_extras" in text:
            return False
        match = self.CANNOT.match(text)
        if match and "comfy_extras" in match.group(1):
            self.modules.add(Path(match.group(1)).name)
            return False
        if not self.modules:
            return True
        if text.startswith("WARNING: some comfy_extras/ nodes did not import correctly"):
            self.in_block = True
            return False
        if self.in_block and text.startswith("IMPORT FAILED: "):
            if text[len("IMPORT FAILED: "):] in self.modules:
                return False
            self.other_failed = True
            return True
        if self.in_block and not self.other_failed and (
                text == "" or text.startswith(("This issue might be caused", "Please do a:", "Please run the update"))):
            if text == "":
                self.in_block = False  # the block's last line
            return False
        return True


class ConsoleServer:
    """The PromptServer attributes PromptExecutor uses; prints each node as it starts and errors as they happen."""

    def __init__(self) -> None:
        self.client_id = None  # set per run from extra_data: node starts are reported only to a client
        self.last_node_id = None
        self.last_prompt_id = None
        self.sockets_metadata: dict = {}
        self.graph: dict[str, Any] = {}

    def send_sync(self, event: str, data: Any, sid: str | None = None) -> None:
        if event == "executing" and isinstance(data, dict) and data.get("node") is not None:
            node = data["node"]
            print(f"[render] node {node}: {self.graph.get(node, {}).get('class_type', '?')}", flush=True)
        elif event == "execution_cached" and isinstance(data, dict) and data.get("nodes"):
            print(f"[render] cached: {', '.join(map(str, data['nodes']))}", flush=True)

    def queue_updated(self) -> None:
        pass

    def send_progress_text(self, text: str, node_id: str, sid: str | None = None) -> None:
        print(f"[render] node {node_id}: {text}", flush=True)


class CaptureImages:
    """An output node of this process only: keeps IMAGE batches in memory for the mp4 writer (no PNG round trip)."""

    captured: dict[str, Any] = {}

    @classmethod
    def INPUT_TYPES(cls) -> dict:  # noqa: N802  (ComfyUI's V1 node API)
        return {"required": {"images": ("IMAGE", {"tooltip": "frames to keep"}),
                             "key": ("STRING", {"default": "result", "tooltip": "name of the capture"})}}

    RETURN_TYPES = ()
    FUNCTION = "capture"
    OUTPUT_NODE = True
    CATEGORY = "ControlNeXt-SVD/headless"
    DESCRIPTION = "Headless render only: keeps the frames in memory for scripts/render.py."

    @classmethod
    def IS_CHANGED(cls, **kwargs: Any) -> float:  # noqa: N802  (ComfyUI's V1 node API)
        return float("nan")  # never equal: a cached executor must run it each time, or no frames would be kept

    def capture(self, images: Any, key: str) -> dict:
        CaptureImages.captured[key] = images
        return {}


def make_progress_hook() -> Any:
    """A comfy.utils progress hook printing 'step/total' per node, at most every 0.5 s and always at the end."""
    from comfy_execution.utils import get_executing_context

    last: dict[str, float] = {}

    def hook(value: int, total: int, preview: Any, prompt_id: str | None = None, node_id: str | None = None) -> None:
        if node_id is None:
            ctx = get_executing_context()
            node_id = ctx.node_id if ctx is not None else "?"
        now = time.monotonic()
        if value < total and now - last.get(node_id, 0.0) < 0.5:
            return
        last[node_id] = now
        print(f"[render]   node {node_id}: {value}/{total}", flush=True)

    return hook


# ------------------------------------------------------------------------------------------------------ workflow


def load_api_graph(path: Path) -> dict[str, Any]:
    """The UI-format workflow converted to the API format with the converter in scripts/comfy_workflow.py."""
    if not path.is_file():
        raise RenderError(f"workflow {path} not found")
    if not CONVERTER.is_file():
        raise RenderError(f"{CONVERTER} (the workflow converter) is missing")
    spec = importlib.util.spec_from_file_location("controlnext_comfy_workflow", CONVERTER)
    converter = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(converter)
    workflow = json.loads(path.read_text())
    if "nodes" not in workflow:  # already an API graph
        return workflow
    return converter.ui_to_api(workflow, converter.object_info_from_host())


def nodes_of(graph: dict[str, Any], *class_types: str) -> list[str]:
    return [nid for nid, node in graph.items() if node["class_type"] in class_types]


def is_output_node(nodes_module: ModuleType, class_type: str) -> bool:
    cls = nodes_module.NODE_CLASS_MAPPINGS.get(class_type)
    return bool(getattr(cls, "OUTPUT_NODE", False))


def set_inputs(graph: dict[str, Any], args: argparse.Namespace, ref_name: str, driving_name: str,
               frames: int) -> None:
    """The command line into the graph: file names, size, output frame count, seed and steps."""
    def set_literal(node: dict, name: str, value: Any) -> None:
        if name in node["inputs"] and not isinstance(node["inputs"][name], list):
            node["inputs"][name] = value

    images = nodes_of(graph, "LoadImage")
    videos = [nid for nid, n in graph.items() if "LoadVideo" in n["class_type"]]
    if len(images) != 1 or len(videos) != 1:
        raise RenderError(f"the workflow must have one LoadImage (the reference) and one video loader (the driving "
                          f"video); it has {len(images)} and {len(videos)}")
    graph[images[0]]["inputs"]["image"] = ref_name
    video_inputs = graph[videos[0]]["inputs"]
    video_inputs["file" if "file" in video_inputs else "video"] = driving_name
    for node in graph.values():
        if node["class_type"].startswith("ControlNeXtTest"):
            continue
        if "width" in node["inputs"] and "height" in node["inputs"]:
            set_literal(node, "width", args.width)
            set_literal(node, "height", args.height)
        set_literal(node, "video_frames", frames)
        if "steps" in node["inputs"]:
            set_literal(node, "steps", args.steps)
            set_literal(node, "seed", args.seed)
        set_literal(node, "noise_seed", args.seed)
        # the driving video is already strided and trimmed by this script: frame selectors pass it through
        for name in ("select_every_nth", "stride", "sample_stride"):
            set_literal(node, name, 1)
        for name in ("frame_load_cap", "max_frames", "skip_first_frames", "start_frame"):
            set_literal(node, name, 0)


def add_captures(graph: dict[str, Any], nodes_module: ModuleType) -> None:
    """Replace the workflow's own output nodes by in-memory captures of the generated frames and pose images."""
    for nid in [nid for nid, n in graph.items() if is_output_node(nodes_module, n["class_type"])]:
        del graph[nid]
    decoders = nodes_of(graph, "ControlNeXtDecode") or nodes_of(graph, "VAEDecode")
    appliers = nodes_of(graph, "ControlNeXtApply")
    if len(decoders) != 1 or len(appliers) != 1:
        raise RenderError(f"the workflow must have one ControlNeXtDecode and one ControlNeXtApply node; it has "
                          f"{len(decoders)} and {len(appliers)}")
    graph["render_result"] = {"class_type": CAPTURE_NODE, "inputs": {"images": [decoders[0], 0], "key": "result"}}
    graph["render_poses"] = {"class_type": CAPTURE_NODE,
                             "inputs": {"images": graph[appliers[0]]["inputs"]["pose_images"], "key": "poses"}}


def check_models(graph: dict[str, Any], folder_paths: ModuleType) -> None:
    """Every model file the graph's loaders name must exist: else one error listing all of them."""
    missing = []
    for node in graph.values():
        for (class_type, name), folders in MODEL_INPUTS.items():
            value = node["inputs"].get(name)
            if node["class_type"] != class_type or not isinstance(value, str):
                continue
            if not any(folder in folder_paths.folder_names_and_paths and folder_paths.get_full_path(folder, value)
                       for folder in folders):
                searched = [p for f in folders if f in folder_paths.folder_names_and_paths
                            for p in folder_paths.get_folder_paths(f)]
                missing.append(f"  - {value} (for {class_type}; looked in: {', '.join(searched)})")
    if missing:
        raise RenderError("missing model files:\n" + "\n".join(missing) + "\nSet them up with "
                          f"`{SETUP_MODELS}` (puts the published files under {BASE / 'models'}), or run "
                          f"with --tiny for a plumbing check with random weights.")


# ---------------------------------------------------------------------------------------------------------- tiny


def install_tiny(graph: dict[str, Any], models: Path, tiny_module: str) -> None:
    """Write tiny random models under temporary names into `models` and point the graph's loaders at them."""
    import folder_paths
    import safetensors.torch

    tiny_svd = importlib.import_module(f"{tiny_module}.tiny_svd")
    tiny_cnx = importlib.import_module(f"{tiny_module}.tiny_controlnext")
    fake_dwpose = importlib.import_module(f"{tiny_module}.fake_dwpose")
    tag = uuid.uuid4().hex[:8]
    names = {"unet": f"tiny-render-{tag}-unet.safetensors", "cnx": f"tiny-render-{tag}-controlnext.safetensors",
             "det": f"tiny-render-{tag}-yolox.onnx", "pose": f"tiny-render-{tag}-ucoco.onnx"}
    for folder in ("diffusion_models", "controlnext", "dwpose"):
        (models / folder).mkdir(parents=True, exist_ok=True)
        folder_paths.add_model_folder_path(folder, str(models / folder))
    unet = tiny_svd.build_tiny_svd(seed=3).diffusion_model.state_dict()
    safetensors.torch.save_file({"model.diffusion_model." + k: v.contiguous() for k, v in unet.items()},
                                str(models / "diffusion_models" / names["unet"]))
    safetensors.torch.save_file(tiny_cnx.tiny_controlnext_state_dict(seed=4, output_channels=64),
                                str(models / "controlnext" / names["cnx"]))
    fake_dwpose.blob_det_onnx(str(models / "dwpose" / names["det"]))
    fake_dwpose.marker_pose_onnx(str(models / "dwpose" / names["pose"]))

    replace = {}  # (old node, slot) -> new link
    for nid in list(graph):
        node = graph[nid]
        ct, inputs = node["class_type"], node["inputs"]
        if ct in ("ImageOnlyCheckpointLoader", "CLIPVisionLoader", "VAELoader", "UNETLoader"):
            slots = {"ImageOnlyCheckpointLoader": ("ControlNeXtTestTinySVD", "ControlNeXtTestTinyCLIPVision",
                                                   "ControlNeXtTestTinyVAE"),
                     "CLIPVisionLoader": ("ControlNeXtTestTinyCLIPVision",), "VAELoader": ("ControlNeXtTestTinyVAE",),
                     "UNETLoader": ("ControlNeXtTestTinySVD",)}[ct]
            for slot, tiny_class in enumerate(slots):
                new = f"{nid}_tiny{slot}"
                graph[new] = {"class_type": tiny_class, "inputs": {"seed": slot}}
                replace[(nid, slot)] = [new, 0]
            del graph[nid]
        elif ct == "ControlNeXtUNetLoader":
            inputs["unet_name"] = names["unet"]
            if "weight_dtype" in inputs:
                inputs["weight_dtype"] = "fp32"
        elif ct == "ControlNeXtLoader":
            inputs["controlnext_name"] = names["cnx"]
        elif ct == "ControlNeXtDWPoseLoader":
            inputs["bbox_detector"], inputs["pose_estimator"] = names["det"], names["pose"]
            if "onnx_provider" in inputs:
                inputs["onnx_provider"] = "CPU"
    for node in graph.values():
        for name, value in node["inputs"].items():
            if isinstance(value, list) and len(value) == 2 and (str(value[0]), value[1]) in replace:
                node["inputs"][name] = replace[(str(value[0]), value[1])]


# ---------------------------------------------------------------------------------------------------------- media


def trim_video(src: Path, dst: Path, stride: int, limit: int,
               size: tuple[int, int] | None = None) -> tuple[int, float, float]:
    """Frames 0, stride, 2*stride ... (at most `limit`, 0 = all) turned upright (a phone video's display rotation)
    and re-encoded near-losslessly, resized to size=(w, h) if given; returns (frames, source fps, time of frame 0 in
    seconds). The copy has no sound: the sound of the kept span is read from `src` (driving_audio)."""
    import av
    import numpy as np

    upright = pack_module("controlnext.video_frames").upright
    count = 0
    first_time = 0.0
    with av.open(str(src)) as inp:
        if not inp.streams.video:
            raise RenderError(f"--driving {src}: no video stream in the file")
        in_stream = inp.streams.video[0]
        fps = float(in_stream.average_rate or in_stream.guessed_rate or 25)
        with av.open(str(dst), "w") as out:
            stream = None
            for i, frame in enumerate(inp.decode(in_stream)):
                if i == 0:  # the sound's clock: the span starts at frame 0's timestamp
                    first_time = float(frame.time or 0.0)
                if i % stride:
                    continue
                img = upright(frame.to_ndarray(format="rgb24"), frame.rotation)
                h, w = img.shape[:2]
                if stream is None:
                    stream = out.add_stream("libx264", rate=Fraction(max(1.0, fps / stride)).limit_denominator(1001))
                    stream.width, stream.height = size or (w // 2 * 2, h // 2 * 2)
                    if size and (w, h) != size:
                        print(f"[render] resizing the pose video from {w}x{h} to {size[0]}x{size[1]} (pose images "
                              "must have the output size)", flush=True)
                    stream.pix_fmt = "yuv444p"
                    stream.options = {"crf": "4"}
                out_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
                if (w, h) != (stream.width, stream.height):
                    out_frame = out_frame.reformat(width=stream.width, height=stream.height, interpolation="AREA")
                for packet in stream.encode(out_frame):
                    out.mux(packet)
                count += 1
                if limit and count >= limit:
                    break
            if stream is None:
                raise RenderError(f"--driving {src}: no frames could be decoded")
            for packet in stream.encode():
                out.mux(packet)
    return count, fps, first_time


def driving_audio(src: Path, first_time: float, kept: int, stride: int, fps: float) -> dict[str, Any]:
    """The sound of the kept driving frames' span (controlnext/video_audio.py, as ControlNeXtDrivingFrames gives
    it), or silence of the span's length when the file has none."""
    va = pack_module("controlnext.video_audio")
    start, duration = va.kept_span(first_time, kept, stride, fps)
    try:
        return va.span_audio(str(src), start, duration, name=f"--driving {src}")
    except ValueError as exc:  # an undecodable sound track: say so rather than fail deep inside PyAV
        raise RenderError(str(exc)) from exc


def write_mp4(frames: Any, path: Path, fps: float, audio: dict[str, Any] | None = None, delay: float = 0.0) -> None:
    """IMAGE [F,H,W,3] floats in 0..1 -> H.264 mp4 (crf 18, as the official script), with `audio` (ComfyUI AUDIO)
    as an AAC track starting `delay` seconds in if given, written atomically."""
    import av
    import numpy as np
    import torch

    data = frames.clamp(0, 1).mul(255).round().to(dtype=torch.uint8).cpu().numpy()
    f, h, w = data.shape[:3]
    if h % 2 or w % 2:  # yuv420p needs even sides
        data = np.ascontiguousarray(data[:, : h // 2 * 2, : w // 2 * 2])
    va = pack_module("controlnext.video_audio") if audio is not None else None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:6]}.part.mp4")
    try:
        with av.open(str(tmp), "w") as out:
            stream = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
            stream.width, stream.height = data.shape[2], data.shape[1]
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": "18"}
            # FFmpeg writes the header with the first packet: every stream must exist before it
            track = va.add_audio_stream(out, audio) if audio is not None else None
            for img in data:
                for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
            if track is not None:
                va.write_audio(out, track, audio, delay=delay)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def pack_module(name: str) -> ModuleType:
    """A module of the pack as ComfyUI loaded it (ComfyUI names the package after its custom_nodes path)."""
    if not _PACK_PACKAGE:  # found once: resolving every loaded module's path takes ~0.5 s on a busy machine
        init = (ROOT / "__init__.py").resolve()
        for package, module in list(sys.modules.items()):
            file = getattr(module, "__file__", None)
            if file and Path(file).resolve() == init:
                _PACK_PACKAGE.append(package)
                break
        else:
            raise RenderError("the pack is not loaded in this ComfyUI (is it linked into custom_nodes?)")
    return importlib.import_module(f"{_PACK_PACKAGE[0]}.{name}")


_PACK_PACKAGE: list[str] = []  # the name ComfyUI gave the pack's package


def side_by_side(poses: Any, result: Any) -> Any:
    """pose | generated, frame by frame: the pack's own ControlNeXtSideBySide logic (dwpose/overlay.py)."""
    return pack_module("dwpose.overlay").side_by_side(poses, result)


def side_by_side_path(out: Path) -> Path:
    return out.with_name(f"{out.stem}-side-by-side{out.suffix}")


# ------------------------------------------------------------------------------------------------------------ run


class Host:
    """A booted ComfyUI (with the tiny test pack if asked) and what a render needs from it; reused for many jobs by
    scripts/render_batch.py."""

    def __init__(self, tiny: bool, tmp: Path) -> None:
        self.tiny, self.tmp = tiny, tmp
        self.tiny_nodes: Path | None = None
        if tiny:
            self.tiny_nodes = tmp / "custom_nodes"
            self.tiny_nodes.mkdir()
            (self.tiny_nodes / TINY_PACK_LINK).symlink_to(TINY_PACK, target_is_directory=True)
        self.mods = boot_comfy(self.tiny_nodes)
        self.mods["comfy.utils"].set_progress_bar_global_hook(make_progress_hook())
        self.execution, self.nodes = self.mods["execution"], self.mods["nodes"]
        self.input_dir = Path(self.mods["folder_paths"].get_input_directory())

    def graph(self, workflow: Path | None, pose_video: bool) -> dict[str, Any]:
        """The workflow in the API format with its models checked (or swapped for tiny ones)."""
        graph = load_api_graph(workflow or WORKFLOWS[pose_video])
        if self.tiny:
            install_tiny(graph, self.tmp / "models",
                         os.path.join(str(self.tiny_nodes), TINY_PACK_LINK).replace(".", "_x_"))
        else:
            check_models(graph, self.mods["folder_paths"])
        return graph


class Rendered:
    """What one job produced, in memory: generated frames, pose images, the output fps and the driving's sound."""

    def __init__(self, result: Any, poses: Any, fps: float, audio: dict[str, Any]) -> None:
        self.result, self.poses, self.fps, self.audio = result, poses, fps, audio

    def write(self, out: Path) -> Path:
        """out and <out stem>-side-by-side.mp4, each written to a temporary name and renamed when complete; the
        side-by-side path. The sound starts with frame 0, as in the example workflows (CreateVideo, no delay)."""
        write_mp4(self.result, out, self.fps, self.audio)
        sbs = side_by_side_path(out)
        write_mp4(side_by_side(self.poses, self.result), sbs, self.fps, self.audio)
        return sbs


def input_tag() -> str:
    """What names this process's copies in ComfyUI's input folder: machine and process (so that a later batch on
    the same machine can tell the files of a killed process, scripts/batch_worker.py) and a random part."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def render(args: argparse.Namespace, host: Host, graph: dict[str, Any], executor: Any = None,
           drivings: dict[tuple, tuple] | None = None) -> Rendered:
    """One job on a booted host: copy the photo and the trimmed driving video into ComfyUI's input folder, set the
    graph's inputs (a copy of `graph`) and execute it (with `executor` if given: a cached one keeps models loaded).

    With `drivings` (for many jobs on a cached executor) a trimmed driving video is kept in the input folder under
    one name for every job using it with the same trim, so ComfyUI's cache sees the same file (LoadVideo fingerprints
    its modification time) and does not decode it again; the caller deletes those files (drivings' values[0])."""
    graph = json.loads(json.dumps(graph))
    tag = input_tag()
    ref_name = f"render-{tag}-ref{args.ref.suffix.lower()}"
    copied = [host.input_dir / ref_name]
    limit = args.frames if args.pose_video else max(args.frames - 1, 0)
    pose_size = (args.width, args.height) if args.pose_video else None
    key = (str(args.driving.resolve()), args.stride, limit, pose_size)
    try:
        shutil.copyfile(args.ref, copied[0])
        if drivings is not None and key in drivings:
            driving_path, n_driving, src_fps, first_time, audio = drivings[key]
        else:
            driving_path = host.input_dir / f"render-{tag}-driving.mp4"
            if drivings is None:
                copied.append(driving_path)
            try:
                n_driving, src_fps, first_time = trim_video(args.driving, driving_path, args.stride, limit,
                                                            pose_size)
                audio = driving_audio(args.driving, first_time, n_driving, args.stride, src_fps)
            except BaseException:
                driving_path.unlink(missing_ok=True)  # a shared copy is kept only once complete
                raise
            if drivings is not None:
                drivings[key] = (driving_path, n_driving, src_fps, first_time, audio)
        driving_name = driving_path.name
        frames = n_driving if args.pose_video else n_driving + 1  # frame 0 = the reference pose
        fps = pack_module("controlnext.video_frames").output_fps(src_fps, args.stride)  # the node's rule
        print(f"[render] driving video: {n_driving} frames (every {args.stride}. of {args.driving}, "
              f"{src_fps:.3g} fps) -> {frames} output frames at {args.width}x{args.height}, {fps:g} fps, "
              f"{args.steps} steps, seed {args.seed}", flush=True)
        set_inputs(graph, args, ref_name, driving_name, frames)
        add_captures(graph, host.nodes)
        result, poses = execute(graph, host.execution, executor)
    finally:
        for path in copied:
            path.unlink(missing_ok=True)
    return Rendered(result, poses, fps, audio)


def run(args: argparse.Namespace) -> None:
    t0 = time.monotonic()
    if args.tiny:
        print(f"[render] {PLUMBING}", flush=True)
    with tempfile.TemporaryDirectory(prefix="controlnext-render-") as tmp_dir:
        host = Host(args.tiny, Path(tmp_dir))
        print(f"[render] ComfyUI ready in {time.monotonic() - t0:.1f} s", flush=True)
        rendered = render(args, host, host.graph(args.workflow, args.pose_video))
    sbs = rendered.write(args.out)
    result = rendered.result
    print(f"[render] wrote {args.out} ({result.shape[0]} frames, {result.shape[2]}x{result.shape[1]}, with the "
          f"driving video's sound) and {sbs} in {time.monotonic() - t0:.1f} s", flush=True)
    if args.tiny:
        print(f"[render] {PLUMBING}", flush=True)


def execute(graph: dict[str, Any], execution: ModuleType, executor: Any = None) -> tuple[Any, Any]:
    """validate_prompt + PromptExecutor (by default a new one without cache: one run; else `executor`, e.g. a cached
    one reused for many jobs), then the captured (result, poses) frames."""
    import server
    from comfy_boot import PromptRun, run_prompt  # scripts/ is on sys.path when this file runs as a script

    srv = server.PromptServer.instance
    srv.graph = graph
    CaptureImages.captured.clear()
    if executor is None:
        run = run_prompt(execution, srv, graph, {"client_id": "render"})
    else:  # run_prompt's steps with the caller's executor
        prompt_id = str(uuid.uuid4())
        valid, error, outputs, node_errors = asyncio.run(execution.validate_prompt(prompt_id, graph, None))
        run = PromptRun(prompt_id, valid, error, node_errors or {})
        if valid:
            executor.execute(graph, prompt_id, {"client_id": "render"}, outputs)
            run.success, run.messages = bool(executor.success), list(executor.status_messages)
    if not run.valid:
        details = "\n".join(f"  node {nid} ({graph.get(nid, {}).get('class_type')}): "
                            + "; ".join(f"{e.get('message')}: {e.get('details')}" for e in info.get("errors", []))
                            for nid, info in run.node_errors.items())
        raise RenderError(f"the workflow is not valid: {run.error.get('message')}: {run.error.get('details')}\n"
                          f"{details}")
    if not run.success:
        error = run.execution_error()
        if error is not None:
            raise RenderError(f"node {error.get('node_id')} ({error.get('node_type')}) failed: "
                              f"{error.get('exception_type')}: {error.get('exception_message')}")
        raise RenderError("the workflow did not finish (interrupted?)")
    return CaptureImages.captured["result"], CaptureImages.captured["poses"]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except RenderError as exc:
        print(f"[render] error: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
