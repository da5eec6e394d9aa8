"""The pack in the real ComfyUI server: listed in /object_info, imported cleanly, and running queued graphs."""

from __future__ import annotations

import re
import urllib.error

import pytest

from comfy_server import ComfyServer
from conftest import ROOT, pack_import

# The only import failures this host has: core audio nodes that need torchaudio, which is deliberately absent
# (no torchaudio release matches torch 2.14).
KNOWN_CORE_IMPORT_FAILURES = {"nodes_audio.py", "nodes_audio_encoder.py"}


def test_server_lists_and_runs_the_pack():
    pack_nodes = {node.define_schema().node_id for node in pack_import("nodes").NODES}
    with ComfyServer() as srv:
        info = srv.get("/object_info")
        missing = pack_nodes - info.keys()
        assert not missing, f"not in /object_info: {missing}"
        for node_id in pack_nodes:
            assert info[node_id]["python_module"] == "custom_nodes.controlnext-svd"
            assert info[node_id]["description"]

        log = srv.log()
        pack_line = [line for line in log.splitlines() if line.rstrip().endswith("custom_nodes/controlnext-svd")]
        assert len(pack_line) == 1 and "IMPORT FAILED" not in pack_line[0], log
        seconds = float(re.match(r"\s*([\d.]+) seconds", pack_line[0]).group(1))
        assert seconds < 1.0
        failed = set(re.findall(r"IMPORT FAILED: .*?([\w.]+\.py)", log))
        assert failed <= KNOWN_CORE_IMPORT_FAILURES, log
        assert "(IMPORT FAILED)" not in log, log

        prompt_id = srv.queue({
            "1": {"class_type": "ControlNeXtEnvironmentInfo", "inputs": {"check_onnxruntime": True}},
            "2": {"class_type": "ControlNeXtTestTinySVD", "inputs": {"seed": 0}},
            "3": {"class_type": "ControlNeXtTestTinySVDConditioning",
                  "inputs": {"frames": 3, "width": 64, "height": 64, "seed": 0}},
            "4": {"class_type": "KSampler", "inputs": {
                "model": ["2", 0], "positive": ["3", 0], "negative": ["3", 1], "latent_image": ["3", 2],
                "seed": 1, "steps": 2, "cfg": 2.0, "sampler_name": "euler", "scheduler": "karras", "denoise": 1.0}},
            "5": {"class_type": "SaveLatent", "inputs": {"samples": ["4", 0], "filename_prefix": "srv"}},
        })
        entry = srv.wait(prompt_id)
        assert entry["status"]["status_str"] == "success", entry["status"]
        assert "device cpu" in entry["outputs"]["1"]["text"][0]
        assert entry["outputs"]["5"]["latents"][0]["filename"].endswith(".latent")

        # the node help page, at the URL the frontend (1.32) fetches after /docs/<id>/<locale>.md answers 404
        page = (ROOT / "web" / "docs" / "ControlNeXtSampler.md").read_text(encoding="utf-8")
        assert srv.get_text("/extensions/controlnext-svd/docs/ControlNeXtSampler.md") == page
        with pytest.raises(urllib.error.HTTPError) as missing_locale:
            srv.get_text("/extensions/controlnext-svd/docs/ControlNeXtSampler/en.md")
        assert missing_locale.value.code == 404

        # a bad graph is refused synchronously and the server keeps serving
        status, body = srv.post("/prompt", {"prompt": {"1": {"class_type": "ControlNeXtNoSuchNode", "inputs": {}}}})
        assert status == 400 and body["error"]["type"] == "invalid_prompt"
        assert srv.get("/system_stats")["system"]["comfyui_version"] == "0.3.75"
    assert srv.proc.returncode is not None
