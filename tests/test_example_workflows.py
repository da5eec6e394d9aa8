"""The example workflows: they parse, use only known nodes, have thumbnails, convert to the API format, validate
with ComfyUI's validate_prompt under their own model names, and run end to end on the CPU with tiny models."""

from __future__ import annotations

import importlib.util
from fractions import Fraction
from pathlib import Path

import av
import folder_paths
import nodes
import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image

from conftest import ROOT, GraphInvalid, run_graph
from tiny_pack import fake_dwpose as fd
from tiny_pack.tiny_controlnext import tiny_controlnext_state_dict
from tiny_pack.tiny_svd import build_tiny_svd

WORKFLOWS = sorted((ROOT / "example_workflows").glob("*.json"))
_spec = importlib.util.spec_from_file_location("comfy_workflow", ROOT / "scripts" / "comfy_workflow.py")
cw = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cw)

SIZE = 64
DRIVING_FRAMES = 3
DWPOSE_FILES = ("yolox_l.torchscript.pt", "dw-ll_ucoco_384_bs5.torchscript.pt")


def write_mp4(path: Path, frames: np.ndarray, fps: int = 8) -> None:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.time_base = Fraction(1, fps)
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


@pytest.fixture(scope="module")
def object_info() -> dict:
    return cw.object_info_from_host()


def install_example_inputs(base: Path) -> tuple[dict[str, Path], list[Path]]:
    """Tiny models and inputs under the names the workflows use, in a ComfyUI base directory: (model folders, the
    model files written)."""
    dirs = {k: base / "models" / k for k in ("diffusion_models", "controlnext", "checkpoints", "dwpose")}
    for d in (*dirs.values(), base / "input"):
        d.mkdir(parents=True, exist_ok=True)
    unet = build_tiny_svd(seed=3).diffusion_model.state_dict()
    safetensors.torch.save_file({"model.diffusion_model." + k: v.contiguous() for k, v in unet.items()},
                                dirs["diffusion_models"] / "controlnext-svd_v2-unet-fp16.safetensors")
    safetensors.torch.save_file(tiny_controlnext_state_dict(seed=4, output_channels=64),
                                dirs["controlnext"] / "controlnext-svd_v2-controlnet-fp16.safetensors")
    # only its name is needed: validation checks the file list; execution replaces the loader by tiny nodes
    safetensors.torch.save_file({"placeholder": torch.zeros(1)}, dirs["checkpoints"] / "svd_xt_1_1.safetensors")
    fd.blob_det_torchscript(str(dirs["dwpose"] / DWPOSE_FILES[0]))
    fd.marker_pose_torchscript(str(dirs["dwpose"] / DWPOSE_FILES[1]))
    rng = np.random.default_rng(0)
    ref = np.full((96, 72, 3), 40, np.uint8)
    fd.draw_marker(ref, 36.0, 40.0, 0)
    Image.fromarray(ref).save(base / "input" / "reference.png")
    write_mp4(base / "input" / "dance.mp4", rng.integers(0, 255, (DRIVING_FRAMES, 80, 64, 3), dtype=np.uint8))
    write_mp4(base / "input" / "poses.mp4", rng.integers(0, 255, (DRIVING_FRAMES + 1, SIZE, SIZE, 3), dtype=np.uint8))
    files = [dirs["diffusion_models"] / "controlnext-svd_v2-unet-fp16.safetensors",
             dirs["controlnext"] / "controlnext-svd_v2-controlnet-fp16.safetensors",
             dirs["checkpoints"] / "svd_xt_1_1.safetensors", *(dirs["dwpose"] / name for name in DWPOSE_FILES)]
    return dirs, files


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """The example inputs in the session's base directory; the model files are removed afterwards."""
    dirs, files = install_example_inputs(Path(folder_paths.base_path))
    yield dirs
    # leave the session's models folders as they were: other tests check the errors for these files being absent
    for path in files:
        path.unlink(missing_ok=True)


def tiny_graph(api: dict) -> dict:
    """The API graph with the SVD checkpoint loader replaced by tiny CLIP vision / VAE nodes, 64x64, 1 step."""
    (ckpt_id,) = cw.find_nodes(api, "ImageOnlyCheckpointLoader")
    graph = cw.replace_node(api, ckpt_id, [None, ("ControlNeXtTestTinyCLIPVision", {"seed": 0}),
                                           ("ControlNeXtTestTinyVAE", {"seed": 0})])
    overrides = {"ControlNeXtSVDConditioning": {"width": SIZE, "height": SIZE},
                 "ControlNeXtSampler": {"steps": 1, "frames_per_window": 4, "overlap": 2},
                 "ControlNeXtUNetLoader": {"weight_dtype": "fp32"},
                 "SaveVideo": {"filename_prefix": "example_wf_test"}}
    if cw.find_nodes(graph, "ControlNeXtPosesForAnimation"):
        overrides["ControlNeXtPosesForAnimation"] = {"width": SIZE, "height": SIZE}
    return cw.set_inputs(graph, overrides, cw.object_info_from_host())


def test_there_are_four_workflows_with_thumbnails():
    assert len(WORKFLOWS) == 4, WORKFLOWS
    for path in WORKFLOWS:
        assert path.with_suffix(".jpg").is_file(), f"no thumbnail for {path.name}"
        assert path.with_suffix(".jpg").read_bytes()[:2] == b"\xff\xd8", f"{path.name}'s thumbnail is not a JPEG"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_structure_and_model_links(path):
    wf = cw.load_workflow(path)
    assert wf["version"] == 0.4
    ids = {n["id"] for n in wf["nodes"]}
    for link in wf["links"]:
        assert link[1] in ids and link[3] in ids, f"{path.name}: link {link} points to a missing node"
    for node in wf["nodes"]:
        if node["type"] in cw.FRONTEND_ONLY:
            continue
        assert node["type"] in nodes.NODE_CLASS_MAPPINGS, f"{path.name}: unknown node {node['type']}"
        assert not node["type"].startswith("ControlNeXtTest"), "test-only node in a shipped workflow"
    models = [m for n in wf["nodes"] for m in n.get("properties", {}).get("models", [])]
    names = {m["name"] for m in models}
    assert {"svd_xt_1_1.safetensors", "controlnext-svd_v2-unet-fp16.safetensors",
            "controlnext-svd_v2-controlnet-fp16.safetensors"} <= names
    for m in models:
        assert m["url"].startswith("https://huggingface.co/") and m["url"].endswith("/" + m["name"])
        assert m["directory"] in ("checkpoints", "diffusion_models", "controlnext", "dwpose")
        used = [n for n in wf["nodes"] if m in n.get("properties", {}).get("models", [])][0]
        assert m["name"] in used["widgets_values"], f"{m['name']} is listed but not selected in its node"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_converts_validates_and_runs(path, installed, object_info):
    api = cw.ui_to_api(cw.load_workflow(path), object_info)
    assert all(n["class_type"] not in ("MarkdownNote", "Note") for n in api.values())
    try:
        run_graph_validate_only(api)
    except GraphInvalid as e:
        pytest.fail(f"{path.name} does not validate: {e}")
    graph = tiny_graph(api)
    out_dir = Path(folder_paths.get_output_directory()) / "video"
    before = set(out_dir.glob("*")) if out_dir.is_dir() else set()
    run = run_graph(graph)
    assert run.success, run.error()
    made = [p for p in Path(folder_paths.get_output_directory()).rglob("example_wf_test*") if p not in before]
    assert made, f"{path.name}: no video written"
    with av.open(str(max(made, key=lambda p: p.stat().st_mtime))) as video:
        stream = video.streams.video[0]
        frames = list(video.decode(stream))
        fps = float(stream.average_rate)
        sound = video.streams.audio[0] if video.streams.audio else None
        heard = float(sound.duration * sound.time_base) if sound is not None else None
    (selector,) = cw.find_nodes(graph, "ControlNeXtDrivingFrames")
    stride = graph[selector]["inputs"]["stride"]
    if cw.find_nodes(graph, "ControlNeXtPosesForAnimation"):  # frame 0 = the reference pose, then every stride-th
        assert len(frames) == len(range(0, DRIVING_FRAMES, stride)) + 1
    else:  # a pose video already starts with the reference pose
        assert len(frames) == len(range(0, DRIVING_FRAMES + 1, stride))
    assert fps == 8 // stride  # the driving video's 8 fps // stride, as the official script
    width = SIZE * 2 if cw.find_nodes(graph, "ControlNeXtSideBySide") else SIZE
    assert (frames[0].width, frames[0].height) == (width, SIZE)
    # the driving frames' sound reaches the output video (silence: this driving video has none), as long as the
    # kept frames' span: kept x stride / 8 s
    kept = len(frames) - 1 if cw.find_nodes(graph, "ControlNeXtPosesForAnimation") else len(frames)
    assert heard == pytest.approx(kept * stride / 8, abs=1 / fps), f"{path.name}: no or wrong sound"
    for p in made:
        p.unlink()


def run_graph_validate_only(api: dict) -> None:
    import asyncio
    import uuid

    import execution
    valid, error, _, node_errors = asyncio.run(execution.validate_prompt(str(uuid.uuid4()), api, None))
    if not valid:
        raise GraphInvalid(error, node_errors)


def test_converter_widgets_links_and_frontend_only_nodes(object_info):
    wf = {"nodes": [
        {"id": 1, "type": "ControlNeXtSampler", "mode": 0, "widgets_values": [7, "randomize", 3, 1.5, 2.5, 8, 2,
                                                                               "euler", "karras"],
         "inputs": [{"name": "model", "type": "MODEL", "link": 1},
                    {"name": "steps", "type": "INT", "widget": {"name": "steps"}, "link": 2}]},
        {"id": 2, "type": "ControlNeXtUNetLoader", "mode": 0, "widgets_values": ["u.safetensors", "fp16"]},
        {"id": 3, "type": "Reroute", "mode": 0, "inputs": [{"name": "", "type": "*", "link": 3}]},
        {"id": 4, "type": "PrimitiveNode", "mode": 0, "widgets_values": [11, "fixed"]},
        {"id": 5, "type": "MarkdownNote", "mode": 0, "widgets_values": ["hi"]},
        {"id": 6, "type": "LoadImage", "mode": 0, "widgets_values": ["a.png", "image"]},
        {"id": 7, "type": "LoadImage", "mode": 2, "widgets_values": ["b.png", "image"]}],
        "links": [[1, 3, 0, 1, 0, "MODEL"], [2, 4, 0, 1, 1, "INT"], [3, 2, 0, 3, 0, "MODEL"]]}
    api = cw.ui_to_api(wf, object_info)
    assert set(api) == {"1", "2", "6"}
    assert api["1"]["inputs"] == {"seed": 7, "steps": 11, "cfg_min": 1.5, "cfg_max": 2.5, "frames_per_window": 8,
                                  "overlap": 2, "sampler_name": "euler", "scheduler": "karras", "model": ["2", 0]}
    assert api["6"]["inputs"] == {"image": "a.png"}
    assert cw.set_inputs(api, {"LoadImage": {"image": "c.png"}})["6"]["inputs"]["image"] == "c.png"
    with pytest.raises(cw.WorkflowError, match="no input"):
        cw.set_inputs(api, {"LoadImage": {"imgae": "c.png"}}, object_info)
    with pytest.raises(cw.WorkflowError, match="does not know"):
        cw.ui_to_api({"nodes": [{"id": 1, "type": "NoSuchNode"}], "links": []}, object_info)



def test_dance_workflow_with_pose_stages_runs_through_the_server():
    """The dance example (tracking, smoothing and retargeting on) converted with the server's own /object_info,
    queued over HTTP and run by ComfyUI's server with tiny models."""
    from comfy_server import ComfyServer

    dance = ROOT / "example_workflows" / "controlnext_svd_dance_video.json"
    with ComfyServer(extra_args=("--cache-none",)) as srv:
        install_example_inputs(srv.base)
        api = cw.ui_to_api(cw.load_workflow(dance), srv.get("/object_info"))
        (poses_id,) = cw.find_nodes(api, "ControlNeXtPosesForAnimation")
        stages = {k: api[poses_id]["inputs"][k] for k in ("track", "smooth_strength", "retarget_strength")}
        assert stages["track"] != "off" and stages["smooth_strength"] > 0 and stages["retarget_strength"] > 0
        entry = srv.wait(srv.queue(tiny_graph(api)))
        assert entry["status"]["status_str"] == "success", entry["status"]
        videos = [item for out in entry["outputs"].values() for item in out.get("images", [])
                  if str(item.get("filename", "")).startswith("example_wf_test")]
        assert videos, entry["outputs"]
