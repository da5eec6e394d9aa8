"""ComfyUI's own frontend in headless Chromium (DevTools protocol over aiohttp): every example workflow loads with
no missing nodes, every node created with its widgets, and the prompt it turns into passes the real server's
validation except for absent model files. Twice: with the frontend the host pins (comfyui-frontend-package in the
venv) and with the newest one on PyPI, served with `--front-end-root`.

The newest frontend (1.58) marks nodes whose file widgets name files the server lacks: a red outline (the node's
has_errors flag) and an "N issues found" panel, from its missingModel / missingMedia stores. Here no model file
exists, so the model loaders are marked; the test tells those apart from nodes that failed to be created (a bare
LGraphNode placeholder instead of the registered class, reported in its missingNodesError store).

Chromium comes from Debian's `chromium` package and the newest frontend from PyPI, both by
scripts/setup_browser.sh (run by scripts/test.sh); nothing is installed or downloaded here, and Chromium resolves
no host name but 127.0.0.1 (the newest frontend would otherwise ask Hugging Face about the missing models).
"""

from __future__ import annotations

import asyncio
import base64
import importlib.metadata
import json
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
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
                  "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--window-size=1400,900")
NEWEST_FRONTEND = ROOT / ".host" / "frontend-newest"  # scripts/setup_browser.sh links its cached install here

# Loads one UI workflow the way a user's file drop does, recording what the frontend reports about it: missing node
# types (the pinned frontend's dialog hook; the newest one's missingNodesError store), nodes it could not build (a
# placeholder instead of the registered class, or a has_errors flag that no missing model or media file explains),
# the files it reports missing, each node's widget values as it would save them again, and the API prompt the
# Queue button would send. Stores are read through the page's Pinia instance; the asset scans that fill the
# missing-model store finish after loadGraphData returns, so the flags are read once they stop changing.
LOAD_JS = """(async (wf) => {
  const seen = {missing: [], missingModels: [], missingMedia: []};
  const store = (id) => document.querySelector('#vue-app')?.__vue_app__?.config.globalProperties.$pinia?._s.get(id);
  const origNodes = app.showMissingNodesError, origModels = app.showMissingModelsError;
  app.showMissingNodesError = (types) => { seen.missing.push(...types.map(t => typeof t === 'string' ? t : t.type)); };
  app.showMissingModelsError = (models) => { seen.missingModels.push(...models.map(m => m.name)); };
  try { await app.loadGraphData(wf); } finally {
    app.showMissingNodesError = origNodes; app.showMissingModelsError = origModels;
  }
  const nodes = app.graph.nodes;
  const issueText = () => {  // the newest frontend's error overlay: "N issues found"
    const walk = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
    for (let t; (t = walk.nextNode());) if (/\\d+ issues? found/.test(t.textContent)) return t.textContent.trim();
    return null;
  };
  const state = () => {
    const models = store('missingModel')?.missingModelCandidates ?? [];
    return JSON.stringify([nodes.filter(n => n.has_errors).map(n => n.id), models.length,
                           models.length > 1 ? issueText() : '-']);
  };
  for (let i = 0, last = null, same = 0; i < 100 && (same < 3 || last.includes('null')); i++) {
    await new Promise(r => setTimeout(r, 100));
    const now = state();
    same = now === last ? same + 1 : 0;
    last = now;
  }
  const missingNodes = store('missingNodesError')?.missingNodesError?.nodeTypes ?? [];
  seen.missing.push(...missingNodes.map(t => typeof t === 'string' ? t : t.type));
  const models = store('missingModel')?.missingModelCandidates ?? [];
  const media = store('missingMedia')?.missingMediaCandidates ?? [];
  seen.missingModels.push(...models.map(m => m.name));
  seen.missingMedia = media.map(m => m.name);
  const fileNodes = new Set([...models, ...media].map(m => String(m.nodeId)));
  seen.unregistered = nodes.map(n => n.type).filter(t => !LiteGraph.registered_node_types[t]);
  seen.broken = nodes.filter(n => n.constructor !== LiteGraph.registered_node_types[n.type]
                                  || (n.has_errors && !fileNodes.has(String(n.id)))).map(n => n.type);
  seen.flaggedForFiles = nodes.filter(n => n.has_errors && fileNodes.has(String(n.id))).map(n => n.type);
  seen.widgets = Object.fromEntries(nodes.map(n => [String(n.id), n.serialize().widgets_values ?? null]));
  seen.nodeCount = nodes.length;
  seen.dialogs = [...document.querySelectorAll('.p-dialog')].map(d => d.innerText.slice(0, 300));
  seen.issues = issueText();
  seen.frontendVersion = window.__COMFYUI_FRONTEND_VERSION__;
  app.canvas.fitViewToSelectionAnimated({duration: 1});  // the whole graph in the screenshot
  seen.prompt = (await app.graphToPrompt()).output;
  // as JSON text: the newest frontend's widget values are reactive proxies, which DevTools would return as {}
  return JSON.stringify(seen);
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
                seen = json.loads(await page.evaluate(f"{LOAD_JS}({json.dumps(workflow)})"))
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


def problems(seen: dict, workflow: dict) -> list[str]:
    out = []
    if seen["missing"]:
        out.append(f"frontend missing-nodes warning: {seen['missing']}")
    if seen["unregistered"]:
        out.append(f"node types unknown to LiteGraph: {seen['unregistered']}")
    if seen["broken"]:
        out.append(f"nodes the frontend could not create or configure: {seen['broken']}")
    if seen["dialogs"]:
        out.append(f"dialogs open after loading: {seen['dialogs']}")
    if seen["missingMedia"]:
        out.append(f"input files reported missing (the test provides them): {seen['missingMedia']}")
    model_values = {v for n in workflow["nodes"] for v in n.get("widgets_values") or []
                    if isinstance(v, str) and v.lower().endswith(MODEL_EXTENSIONS)}
    if set(seen["missingModels"]) - model_values:
        out.append(f"files reported missing that are not the workflow's model files: {seen['missingModels']}")
    for node in workflow["nodes"]:  # every saved value found its widget, unchanged (later widgets keep defaults)
        saved, again = node.get("widgets_values"), seen["widgets"].get(str(node["id"]))
        if saved and (again or [])[:len(saved)] != saved:
            out.append(f"node {node['id']} ({node['type']}) widgets_values {node['widgets_values']} came back as "
                       f"{again}")
    if not seen["prompt"]:
        out.append("graphToPrompt produced an empty prompt")
    out += unexpected_node_errors(seen["node_errors"])
    return out


FRONTENDS = ("pinned", "newest")


def frontend_under_test(which: str) -> tuple[tuple[str, ...], str]:
    """The server arguments that select the frontend, and its version; a message instead when it is not there."""
    if which == "pinned":
        return (), importlib.metadata.version("comfyui-frontend-package")
    static = NEWEST_FRONTEND / "comfyui_frontend_package" / "static"
    dist = sorted(NEWEST_FRONTEND.glob("comfyui_frontend_package-*.dist-info"))
    if not (static / "index.html").is_file() or not dist:
        raise FileNotFoundError(f"the newest ComfyUI frontend is not installed at {NEWEST_FRONTEND}: run "
                                "`bash scripts/setup_browser.sh` (or `bash scripts/test.sh`, which runs it).")
    return ("--front-end-root", str(static)), dist[-1].name.removesuffix(".dist-info").split("-")[1]


def start_server(server_args: tuple[str, ...]) -> ComfyServer:
    srv = ComfyServer(extra_args=server_args)
    srv.__enter__()
    try:
        settings = srv.base / "user" / "default" / "comfy.settings.json"
        settings.parent.mkdir(parents=True, exist_ok=True)
        settings.write_text(json.dumps({"Comfy.TutorialCompleted": True}))
        provide_inputs([TINY_WORKFLOW, *EXAMPLES], srv.base / "input")
    except BaseException:
        srv.__exit__(None, None, None)
        raise
    return srv


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, tuple[ComfyServer, str] | str]]:
    """A server per frontend, started together (most of each test's time is a server's start-up):
    {which: (server, frontend version)}, or the reason it could not start."""
    found: dict[str, tuple[ComfyServer, str] | str] = {}
    with ExitStack() as stack:
        with ThreadPoolExecutor(len(FRONTENDS)) as pool:
            starting = {}
            for which in FRONTENDS:
                try:
                    server_args, version = frontend_under_test(which)
                except FileNotFoundError as e:
                    found[which] = str(e)
                    continue
                starting[which] = (pool.submit(start_server, server_args), version)
            t0 = time.monotonic()
            for which, (future, version) in starting.items():
                error = future.exception()  # every start is waited for, so none is left running unseen
                if error is not None:
                    found[which] = f"the ComfyUI server for frontend {version} did not start: {error!r}"
                    continue
                srv = future.result()
                stack.callback(srv.__exit__, None, None, None)
                found[which] = (srv, version)
            print(f"\nservers for {list(starting)} up in {time.monotonic() - t0:.1f} s")
        yield found


@pytest.mark.parametrize("which", FRONTENDS)
def test_example_workflows_load_in_the_real_frontend(tmp_path: Path, which: str, servers: dict) -> None:
    if isinstance(servers[which], str):
        pytest.fail(servers[which])
    srv, version = servers[which]
    workflows = [TINY_WORKFLOW, *EXAMPLES]
    broken = {"nodes": [{"id": 1, "type": "ControlNeXtNoSuchNode", "pos": [0, 0], "size": [200, 60], "flags": {},
                         "order": 0, "mode": 0, "inputs": [], "outputs": [], "properties": {}, "widgets_values": []}],
              "links": [], "groups": [], "config": {}, "extra": {}, "version": 0.4, "last_node_id": 1,
              "last_link_id": 0}
    broken_path = tmp_path / "zz_missing_node.json"  # last, so its dialog cannot hide behind a real workflow's check
    broken_path.write_text(json.dumps(broken))
    shots = tmp_path / "screenshots"
    shots.mkdir()
    t0 = time.monotonic()
    results = asyncio.run(check_workflows(srv, [*workflows, broken_path], shots))
    print(f"frontend {version}: {len(workflows) + 1} workflows checked in {time.monotonic() - t0:.1f} s; "
          f"screenshots in {shots}")

    for path in workflows:
        seen = results[path.name]
        workflow = json.loads(path.read_text())
        assert seen["frontendVersion"] == version, f"the page runs frontend {seen['frontendVersion']}, not {version}"
        assert seen["nodeCount"] == len(workflow["nodes"]), (path.name, seen["nodeCount"])
        assert not problems(seen, workflow), f"{path.name}: {problems(seen, workflow)}"
        assert (shots / f"{path.stem}.png").stat().st_size > 10_000
        if which == "newest" and seen["missingModels"]:
            # what users see marked is the missing model files only (the test server has no model files)
            if len(seen["missingModels"]) > 1:
                assert seen["issues"] == f"{len(seen['missingModels'])} issues found", seen["issues"]
            model_nodes = {n["type"] for n in workflow["nodes"]
                           if any(v in seen["missingModels"] for v in n.get("widgets_values") or [])}
            assert set(seen["flaggedForFiles"]) == model_nodes, (seen["flaggedForFiles"], model_nodes)
    # the checks above can see a missing node: the planted one is reported by the frontend and LiteGraph
    planted = results[broken_path.name]
    assert planted["missing"] == ["ControlNeXtNoSuchNode"] and planted["unregistered"] == ["ControlNeXtNoSuchNode"]
    assert planted["broken"] == ["ControlNeXtNoSuchNode"]
    assert not results["_page_exceptions"]["list"], results["_page_exceptions"]["list"]
    help_page = (ROOT / "web" / "docs" / "ControlNeXtSampler.md").read_text(encoding="utf-8")
    assert results["_help_page"]["text"] == help_page, "the page cannot fetch the node's help page"
