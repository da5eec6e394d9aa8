"""ComfyUI's own frontend in headless Chromium (DevTools protocol over aiohttp): every example workflow loads with
no missing nodes, and the prompt it turns into passes the real server's validation except for absent model files.

Chromium comes from Debian's `chromium` package (scripts/setup_browser.sh, run by scripts/test.sh); nothing is
installed or downloaded here.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from comfy_server import ComfyServer, free_port

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "example_workflows").glob("*.json"))
TINY_WORKFLOW = ROOT / "tests" / "data" / "tiny_ui_workflow.json"
# the inputs a user uploads: the file-name widget of these core nodes, and what to write under that name
MEDIA_NODES = {"LoadImage": "image", "LoadVideo": "video"}
MODEL_EXTENSIONS = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".onnx", ".gguf", ".sft")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1400,900")

# Loads one UI workflow the way a user's file drop does, recording what the frontend reports about it: missing node
# types (its own dialog hook), nodes it could not build, and the API prompt the Queue button would send.
LOAD_JS = """(async (wf) => {
  const seen = {missing: [], missingModels: []};
  const origNodes = app.showMissingNodesError, origModels = app.showMissingModelsError;
  app.showMissingNodesError = (types) => { seen.missing.push(...types.map(t => typeof t === 'string' ? t : t.type)); };
  app.showMissingModelsError = (models) => { seen.missingModels.push(...models.map(m => m.name)); };
  try { await app.loadGraphData(wf); } finally {
    app.showMissingNodesError = origNodes; app.showMissingModelsError = origModels;
  }
  const nodes = app.graph.nodes;
  seen.unregistered = nodes.map(n => n.type).filter(t => !LiteGraph.registered_node_types[t]);
  seen.broken = nodes.filter(n => n.has_errors).map(n => n.type);
  seen.nodeCount = nodes.length;
  seen.dialogs = [...document.querySelectorAll('.p-dialog')].map(d => d.innerText.slice(0, 300));
  app.canvas.fitViewToSelectionAnimated({duration: 1});  // the whole graph in the screenshot
  seen.prompt = (await app.graphToPrompt()).output;
  return seen;
})"""


class DevTools:
    """Just enough of the Chrome DevTools protocol: numbered commands over one page's websocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.next_id = 0
        self.exceptions: list[str] = []

    async def send(self, method: str, **params: Any) -> dict:
        self.next_id += 1
        my_id = self.next_id
        await self.ws.send_json({"id": my_id, "method": method, "params": params})
        while True:
            msg = await asyncio.wait_for(self.ws.receive_json(), timeout=30)
            if msg.get("method") == "Runtime.exceptionThrown":
                self.exceptions.append(json.dumps(msg["params"]["exceptionDetails"])[:500])
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise RuntimeError(f"{method} failed: {msg['error']}")
                return msg["result"]

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page error in {expression[:80]!r}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not await self.evaluate(expression):
            if time.monotonic() > deadline:
                raise TimeoutError(f"page never satisfied {expression!r} within {timeout} s")
            await asyncio.sleep(0.1)


def start_chromium(profile: Path) -> tuple[subprocess.Popen, str]:
    """Launches headless Chromium and returns it with its blank page's websocket URL."""
    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail("chromium is not installed: run `bash scripts/setup_browser.sh` (Debian packages chromium and "
                    "chromium-driver) or `bash scripts/test.sh`, which runs it.")
    port = free_port()
    proc = subprocess.Popen([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--remote-debugging-port={port}",
                             "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as r:
                pages = [t for t in json.loads(r.read()) if t["type"] == "page"]
            if pages:
                return proc, pages[0]["webSocketDebuggerUrl"]
        except (urllib.error.URLError, ConnectionError):
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    proc.wait()
    pytest.fail(f"chromium did not open its DevTools port {port} (exit code {proc.returncode})")


def write_media(kind: str, path: Path) -> None:
    """A small real image or H.264 video (what the user would have uploaded under the workflow's file name)."""
    import av
    import numpy as np
    from PIL import Image

    frame = np.zeros((64, 64, 3), np.uint8)
    frame[16:48, 24:40] = 200
    if kind == "image":
        Image.fromarray(frame).save(path, format="PNG")
        return
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for i in range(4):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.roll(frame, 4 * i, axis=1), format="rgb24")))
        out.mux(stream.encode())


def provide_inputs(workflows: list[Path], input_dir: Path) -> None:
    for path in workflows:
        for node in json.loads(path.read_text())["nodes"]:
            kind = MEDIA_NODES.get(node["type"])
            if kind and node.get("widgets_values") and not (input_dir / node["widgets_values"][0]).exists():
                write_media(kind, input_dir / node["widgets_values"][0])


def unexpected_node_errors(node_errors: dict) -> list[str]:
    """Validation errors other than 'value not in list' for a model file (no model files exist on the test host)."""
    bad = []
    for node_id, entry in node_errors.items():
        for err in entry["errors"]:
            value = str(err.get("extra_info", {}).get("received_value", ""))
            if err["type"] == "value_not_in_list" and value.lower().endswith(MODEL_EXTENSIONS):
                continue
            bad.append(f"node {node_id} ({entry['class_type']}): {err['type']}: {err['details']}")
    return bad


def validate(srv: ComfyServer, prompt: dict) -> dict:
    """POSTs the prompt and returns the server's node_errors ({} if all of it is valid).

    ComfyUI queues a prompt when at least one output is valid (still listing the invalid rest in node_errors); such
    a prompt is taken off the queue again at once: this test validates, it does not render.
    """
    status, body = srv.post("/prompt", {"prompt": prompt, "client_id": str(uuid.uuid4())})
    if status == 200:
        prompt_id = body["prompt_id"]
        for path, payload in (("/queue", {"delete": [prompt_id]}), ("/interrupt", {"prompt_id": prompt_id})):
            req = urllib.request.Request(srv.url + path, data=json.dumps(payload).encode(),
                                         headers={"Content-Type": "application/json"})
            urllib.request.urlopen(req, timeout=10).close()  # both answer with an empty body
        return body.get("node_errors", {})
    if body.get("node_errors"):
        return body["node_errors"]
    error = body.get("error", {})  # refused as a whole (no outputs, unknown node type, ...)
    return {"prompt": {"class_type": "-", "errors": [{"type": error.get("type", str(status)),
                                                      "details": f"{error.get('message')}: {error.get('details')}"}]}}


# The frontend's own help-page URL for a custom node (NodeHelpService in comfyui_frontend_package 1.32): the pack
# folder from python_module, then /extensions/<pack>/docs/<id>/<locale>.md, falling back to .../docs/<id>.md.
HELP_PAGE_JS = """(async () => {
  const pack = LiteGraph.registered_node_types['ControlNeXtSampler'].nodeData.python_module.split('.')[1].split('@')[0];
  const base = `/extensions/${pack}/docs/ControlNeXtSampler`;
  let r = await fetch(`${base}/en.md`);
  if (!r.ok) r = await fetch(`${base}.md`);
  return r.ok ? await r.text() : `HTTP ${r.status}`;
})()"""


async def check_workflows(srv: ComfyServer, workflows: list[Path], shots: Path) -> dict[str, dict]:
    profile = Path(tempfile.mkdtemp(prefix="controlnext-chromium-"))
    proc, ws_url = start_chromium(profile)
    results: dict[str, dict] = {}
    try:
        async with aiohttp.ClientSession() as session, session.ws_connect(ws_url, max_msg_size=0) as ws:
            page = DevTools(ws)
            await page.send("Runtime.enable")
            await page.send("Page.enable")
            await page.send("Page.navigate", url=srv.url)
            await page.wait_for("!!(window.app && app.graph && window.LiteGraph && "
                                "LiteGraph.registered_node_types['ControlNeXtLoader'])", timeout=40)
            results["_help_page"] = {"text": await page.evaluate(HELP_PAGE_JS)}
            for path in workflows:
                workflow = json.loads(path.read_text())
                seen = await page.evaluate(f"{LOAD_JS}({json.dumps(workflow)})")
                await page.evaluate("new Promise(r => setTimeout(() => requestAnimationFrame(r), 300))")
                shot = await page.send("Page.captureScreenshot", format="png")
                (shots / f"{path.stem}.png").write_bytes(base64.b64decode(shot["data"]))
                seen["node_errors"] = validate(srv, seen["prompt"]) if seen["prompt"] else {}
                seen["types"] = sorted({n["type"] for n in workflow["nodes"]})
                results[path.name] = seen
            results["_page_exceptions"] = {"list": page.exceptions}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(profile, ignore_errors=True)
    return results


def problems(seen: dict) -> list[str]:
    out = []
    if seen["missing"]:
        out.append(f"frontend missing-nodes warning: {seen['missing']}")
    if seen["unregistered"]:
        out.append(f"node types unknown to LiteGraph: {seen['unregistered']}")
    if seen["broken"]:
        out.append(f"nodes the frontend could not configure: {seen['broken']}")
    if seen["dialogs"]:
        out.append(f"dialogs open after loading: {seen['dialogs']}")
    if not seen["prompt"]:
        out.append("graphToPrompt produced an empty prompt")
    out += unexpected_node_errors(seen["node_errors"])
    return out


def test_example_workflows_load_in_the_real_frontend(tmp_path: Path) -> None:
    workflows = [TINY_WORKFLOW, *EXAMPLES]
    broken = {"nodes": [{"id": 1, "type": "ControlNeXtNoSuchNode", "pos": [0, 0], "size": [200, 60], "flags": {},
                         "order": 0, "mode": 0, "inputs": [], "outputs": [], "properties": {}, "widgets_values": []}],
              "links": [], "groups": [], "config": {}, "extra": {}, "version": 0.4, "last_node_id": 1,
              "last_link_id": 0}
    broken_path = tmp_path / "zz_missing_node.json"  # last, so its dialog cannot hide behind a real workflow's check
    broken_path.write_text(json.dumps(broken))
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with ComfyServer() as srv:
        settings = srv.base / "user" / "default" / "comfy.settings.json"
        settings.parent.mkdir(parents=True)
        settings.write_text(json.dumps({"Comfy.TutorialCompleted": True}))
        provide_inputs(workflows, srv.base / "input")
        results = asyncio.run(check_workflows(srv, [*workflows, broken_path], shots))

    for path in workflows:
        seen = results[path.name]
        assert seen["nodeCount"] == len(json.loads(path.read_text())["nodes"]), (path.name, seen["nodeCount"])
        assert not problems(seen), f"{path.name}: {problems(seen)}"
        assert (shots / f"{path.stem}.png").stat().st_size > 10_000
    # the checks above can see a missing node: the planted one is reported by the frontend's own hook and LiteGraph
    planted = results[broken_path.name]
    assert planted["missing"] == ["ControlNeXtNoSuchNode"] and planted["unregistered"] == ["ControlNeXtNoSuchNode"]
    assert not results["_page_exceptions"]["list"], results["_page_exceptions"]["list"]
    help_page = (ROOT / "web" / "docs" / "ControlNeXtSampler.md").read_text(encoding="utf-8")
    assert results["_help_page"]["text"] == help_page, "the page cannot fetch the node's help page"
    print(f"screenshots in {shots}")
