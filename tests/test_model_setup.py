"""The model set-up command and node, run offline against a local fake of the Hugging Face Hub's file layout.

The fake hub answers the requests huggingface_hub makes: HEAD /{repo}/resolve/{revision}/{file} (302 to a "CDN" url on
another host name, with X-Repo-Commit, ETag, X-Linked-Etag = sha256 and X-Linked-Size, as the Hub does for LFS
files; 401 GatedRepo without a valid token for gated repos), and GET on the CDN url with Range support. It can cut a
download mid-file and then fail, so the next run has to resume.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from conftest import ROOT, pack_import, run_graph

manifest = pack_import("controlnext.model_manifest")
download = pack_import("controlnext.model_download")
dwpose_nodes = pack_import("nodes.dwpose_nodes")
unet_loader_node = pack_import("nodes.unet_loader_node")

TOKEN = "hf_fake_test_token"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
SCRIPT = ROOT / "scripts" / "setup_models.py"
PYTHON = sys.executable
COMMAND = "scripts/setup_models.py --download"


class FakeHub:
    """A threaded HTTP server holding {(repo, filename): bytes}."""

    def __init__(self) -> None:
        self.files: dict[tuple[str, str], bytes] = {}
        self.etags: dict[tuple[str, str], str] = {}  # override the sha256 etag (a corrupt CDN)
        self.gated: set[str] = set()
        self.cut_next = False  # the next GET sends half the body, then closes the connection
        self.broken = False  # set after a cut: further GETs answer 503 until reset
        self.requests: list[tuple[str, str, str | None, str | None]] = []  # method, path, Range, Authorization
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                self._serve(head=True)

            def do_GET(self) -> None:
                self._serve(head=False)

            def _serve(self, head: bool) -> None:
                hub.requests.append((self.command, self.path, self.headers.get("Range"),
                                     self.headers.get("Authorization")))
                parts = [unquote(p) for p in urlsplit(self.path).path.strip("/").split("/")]
                if len(parts) >= 5 and parts[2] == "resolve":
                    self._resolve("/".join(parts[:2]), "/".join(parts[4:]))
                elif len(parts) >= 4 and parts[0] == "cdn":
                    self._cdn("/".join(parts[1:3]), "/".join(parts[3:]), head)
                else:
                    self._status(404, "RepoNotFound")

            def _status(self, code: int, error_code: str) -> None:
                self.send_response(code)
                self.send_header("X-Error-Code", error_code)
                self.send_header("X-Error-Message", error_code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _resolve(self, repo: str, filename: str) -> None:
                if repo in hub.gated and self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    return self._status(401, "GatedRepo")
                data = hub.files.get((repo, filename))
                if data is None:
                    return self._status(404, "EntryNotFound")
                self.send_response(302)
                # another host name for the same server: the client must treat it as a CDN (no token sent)
                self.send_header("Location", f"http://localhost:{hub.port}/cdn/{repo}/{filename}")
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", '"gitsha1"')
                self.send_header("X-Linked-Etag", f'"{hub.etags.get((repo, filename), sha256(data))}"')
                self.send_header("X-Linked-Size", str(len(data)))
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _cdn(self, repo: str, filename: str, head: bool) -> None:
                data = hub.files.get((repo, filename))
                if data is None:
                    return self._status(404, "EntryNotFound")
                if not head and hub.broken:
                    return self._status(503, "Unavailable")
                start = 0
                rng = self.headers.get("Range")
                if rng:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if head:
                    return
                if hub.cut_next:
                    hub.cut_next, hub.broken = False, True
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def payload(tag: str, size: int) -> bytes:
    return (tag.encode() * (size // len(tag) + 1))[:size]


# Stand-ins with the manifest's names and repositories, but tiny.
FAKE = {
    "svd_xt_1_1": payload("svd", 3000),
    "controlnet_fp16": payload("cn16", 2000),
    "yolox_onnx": payload("yolo", 1500),
    "pose_onnx": payload("pose", 1200),
}


def fake_manifest(**changes: dict) -> tuple[tuple, dict]:
    """The real manifest's entries for FAKE's keys, with the fake sizes and full sha256 (or `changes[key]`)."""
    files = []
    for f in manifest.FILES:
        if f.key in FAKE:
            fields = asdict(f) | {"size": len(FAKE[f.key]), "sha256": sha256(FAKE[f.key])} | changes.get(f.key, {})
            files.append(manifest.ModelFile(**fields))
    return tuple(files), {"default": tuple(FAKE)}


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    server = FakeHub()
    for f in manifest.FILES:
        if f.key in FAKE:
            server.files[(f.repo_id, f.filename)] = FAKE[f.key]
    server.gated.add(manifest.SVD_REPO)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # no token file of the machine's user
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    yield server
    server.close()


def write_manifest(path: Path, files: tuple, sets: dict) -> Path:
    path.write_text(json.dumps({"files": [asdict(f) for f in files], "sets": {k: list(v) for k, v in sets.items()}}))
    return path


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, str(SCRIPT), *args], capture_output=True, text=True, timeout=60,
                          env=env or dict(os.environ), cwd=str(ROOT))


def final_and_partial(folder: Path, name: str) -> tuple[bool, list[str]]:
    return (folder / name).exists(), sorted(p.name for p in folder.glob(f".{name}.*.part")) if folder.is_dir() else []


def test_list_shows_every_file_with_folder_size_hash_and_source(tmp_path: Path) -> None:
    out = cli("--list", "--set", "all", "--models-dir", str(tmp_path))
    assert out.returncode == 0, out.stderr
    for f in manifest.FILES:
        assert str(tmp_path / f.folder / f.name) in out.stdout
        assert f"{f.repo_id}/{f.filename}" in out.stdout
    assert "14,122,234 B" in out.stdout and "sha256 2a60c6e9 (prefix)" in out.stdout  # controlnet.bin, from the spec
    assert "GATED" in out.stdout
    default = cli("--list", "--models-dir", str(tmp_path)).stdout
    assert "controlnext_svd_dance_video.json" in default and "unet.bin" not in default
    assert "yolox_l.torchscript.pt" in default and "yolox_l.onnx" not in default


def _model_names(node: object) -> set[str]:
    """Every string in a workflow that looks like a model file name (widget values; not URLs)."""
    if isinstance(node, dict):
        return set().union(*map(_model_names, node.values())) if node else set()
    if isinstance(node, list):
        return set().union(*map(_model_names, node)) if node else set()
    if isinstance(node, str) and "/" not in node and node.endswith((".safetensors", ".bin", ".onnx", ".pt")):
        return {node}
    return set()


def test_every_example_workflow_has_a_set_holding_its_model_files() -> None:
    workflows = sorted((ROOT / "example_workflows").glob("*.json"))
    assert workflows
    for wf in workflows:
        assert wf.name in manifest.WORKFLOW_SETS, f"{wf.name} has no entry in WORKFLOW_SETS"
        wanted = _model_names(json.loads(wf.read_text()))
        in_set = {f.name for f in manifest.files_in_set(manifest.WORKFLOW_SETS[wf.name])}
        assert wanted and wanted <= in_set, (wf.name, wanted - in_set)


def test_check_reports_missing_wrong_size_and_present(tmp_path: Path) -> None:
    files, sets = fake_manifest()
    mf = write_manifest(tmp_path / "manifest.json", files, sets)
    models = tmp_path / "models"
    out = cli("--check", "--manifest", str(mf), "--models-dir", str(models))
    assert out.returncode == 1 and "0 of 4 files present" in out.stdout and "--download" in out.stderr
    for f in files:
        (models / f.folder).mkdir(parents=True, exist_ok=True)
        (models / f.folder / f.name).write_bytes(FAKE[f.key])
    (models / "dwpose" / "yolox_l.onnx").write_bytes(b"short")
    out = cli("--check", "--manifest", str(mf), "--models-dir", str(models))
    assert out.returncode == 1 and "[WRONG SIZE] dwpose/yolox_l.onnx (5 bytes, expected 1500)" in out.stdout
    (models / "dwpose" / "yolox_l.onnx").write_bytes(FAKE["yolox_onnx"])
    out = cli("--check", "--check-hash", "--manifest", str(mf), "--models-dir", str(models))
    assert out.returncode == 0 and "4 of 4 files present" in out.stdout, out.stdout
    (models / "dwpose" / "yolox_l.onnx").write_bytes(payload("olox", 1500))  # same size, other bytes
    out = cli("--check", "--check-hash", "--manifest", str(mf), "--models-dir", str(models))
    assert out.returncode == 1 and "WRONG HASH" in out.stdout


def test_download_gated_file_needs_token_then_succeeds(hub: FakeHub, tmp_path: Path) -> None:
    files, sets = fake_manifest()
    mf = write_manifest(tmp_path / "manifest.json", files, sets)
    models = tmp_path / "models"
    out = cli("--download", "--manifest", str(mf), "--models-dir", str(models))
    assert out.returncode == 1
    assert f"Accept the licence at {manifest.SVD_LICENCE_URL} and set HF_TOKEN" in out.stderr
    assert "HTTP 401" in out.stderr and "no token is set" in out.stderr
    assert final_and_partial(models / "checkpoints", "svd_xt_1_1.safetensors") == (False, [])
    for key, name, folder in (("yolox_onnx", "yolox_l.onnx", "dwpose"), ("pose_onnx", "dw-ll_ucoco_384.onnx", "dwpose"),
                              ("controlnet_fp16", "controlnext-svd_v2-controlnet-fp16.safetensors", "controlnext")):
        assert (models / folder / name).read_bytes() == FAKE[key]  # the others were downloaded anyway
    cdn_gets = [r for r in hub.requests if r[0] == "GET"]
    assert cdn_gets and all(r[3] is None for r in cdn_gets)  # no token sent, and none to the CDN host

    hub.requests.clear()
    out = cli("--download", "--manifest", str(mf), "--models-dir", str(models), env=os.environ | {"HF_TOKEN": TOKEN})
    assert out.returncode == 0, out.stderr
    assert (models / "checkpoints" / "svd_xt_1_1.safetensors").read_bytes() == FAKE["svd_xt_1_1"]
    assert "4 of 4 files present" in out.stdout
    heads = [r for r in hub.requests if r[0] == "HEAD"]
    assert len(heads) == 1 and heads[0][3] == f"Bearer {TOKEN}"  # only the missing file was asked for
    assert all(r[3] is None for r in hub.requests if r[0] == "GET")  # the token never goes to the CDN host
    assert cli("--check", "--manifest", str(mf), "--models-dir", str(models)).returncode == 0


def test_wrong_token_for_gated_repo_is_denied_with_licence_message(hub: FakeHub, tmp_path: Path) -> None:
    files, _ = fake_manifest()
    svd = next(f for f in files if f.key == "svd_xt_1_1")
    with pytest.raises(download.ModelAccessError, match="a token is set") as e:
        download.download_file(svd, str(tmp_path), token="hf_wrong", endpoint=hub.url)
    assert manifest.SVD_LICENCE_URL in str(e.value) and "HF_TOKEN" in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_download_resumes_on_next_run(hub: FakeHub, tmp_path: Path) -> None:
    # huggingface_hub writes in chunks of DOWNLOAD_CHUNK_SIZE (10 MB): a cut keeps the whole chunks received
    from huggingface_hub import constants

    data = payload("yolo", 2 * constants.DOWNLOAD_CHUNK_SIZE + 1000)
    files, _ = fake_manifest(yolox_onnx={"size": len(data), "sha256": sha256(data)})
    f = next(f for f in files if f.key == "yolox_onnx")
    hub.files[(f.repo_id, f.filename)] = data
    hub.cut_next = True
    with pytest.raises(download.ModelDownloadError, match="run the same command again to resume"):
        download.download_file(f, str(tmp_path), endpoint=hub.url)
    exists, parts = final_and_partial(tmp_path, f.name)
    assert not exists and len(parts) == 1
    kept = (tmp_path / parts[0]).read_bytes()
    assert len(kept) == constants.DOWNLOAD_CHUNK_SIZE and data.startswith(kept)

    hub.broken = False
    hub.requests.clear()
    path = download.download_file(f, str(tmp_path), endpoint=hub.url)
    assert Path(path).read_bytes() == data
    assert [r[2] for r in hub.requests if r[0] == "GET"] == [f"bytes={len(kept)}-"]  # only the rest was fetched
    assert final_and_partial(tmp_path, f.name) == (True, [])


def test_hash_mismatch_is_refused_and_nothing_is_left(hub: FakeHub, tmp_path: Path) -> None:
    files, _ = fake_manifest(pose_onnx={"sha256": sha256(b"something else")})
    f = next(f for f in files if f.key == "pose_onnx")
    with pytest.raises(download.ModelFileMismatch, match="wrong hash") as e:
        download.download_file(f, str(tmp_path), endpoint=hub.url)
    assert "was not written" in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_hub_etag_is_checked_when_the_manifest_has_no_hash(hub: FakeHub, tmp_path: Path) -> None:
    files, _ = fake_manifest(pose_onnx={"sha256": None})
    f = next(f for f in files if f.key == "pose_onnx")
    hub.etags[(f.repo_id, f.filename)] = sha256(b"the published bytes")  # the CDN serves other bytes
    with pytest.raises(download.ModelFileMismatch, match="wrong hash"):
        download.download_file(f, str(tmp_path), endpoint=hub.url)
    assert list(tmp_path.iterdir()) == []
    del hub.etags[(f.repo_id, f.filename)]
    assert Path(download.download_file(f, str(tmp_path), endpoint=hub.url)).read_bytes() == FAKE["pose_onnx"]


def test_size_mismatch_is_refused_before_downloading(hub: FakeHub, tmp_path: Path) -> None:
    files, _ = fake_manifest(controlnet_fp16={"size": 7_057_480})
    f = next(f for f in files if f.key == "controlnet_fp16")
    with pytest.raises(download.ModelFileMismatch, match="2000 bytes, but the pack expects 7057480"):
        download.download_file(f, str(tmp_path), endpoint=hub.url)
    assert not any(r[0] == "GET" for r in hub.requests)
    assert not (tmp_path / f.name).exists()


def test_missing_huggingface_hub_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    files, _ = fake_manifest()
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # as if it were not installed
    with pytest.raises(download.ModelDownloadError, match="pip install huggingface_hub"):
        download.download_file(files[0], str(tmp_path))


def test_missing_file_errors_name_the_setup_command() -> None:
    with pytest.raises(FileNotFoundError, match=COMMAND):
        dwpose_nodes.resolve_model_file("yolox_l.torchscript.pt")
    with pytest.raises(unet_loader_node.UNetLoadError, match=COMMAND):
        unet_loader_node.resolve_unet_path("controlnext-svd_v2-unet-fp16.safetensors")
    with pytest.raises(FileNotFoundError, match=COMMAND):
        pack_import("dwpose.backends").load_model("/nonexistent/dw-ll_ucoco_384.onnx")
    graph = {"1": {"class_type": "ControlNeXtLoader", "inputs": {"controlnext_name": "absent.safetensors"}}}
    mapping = pack_import("nodes.controlnext_nodes")
    with pytest.raises(mapping.ControlNeXtWeightsError, match=COMMAND):
        mapping.ControlNeXtLoader.execute(**graph["1"]["inputs"])


@pytest.fixture
def node_manifest(hub: FakeHub, monkeypatch: pytest.MonkeyPatch, comfy_base: Path):
    files, sets = fake_manifest()
    monkeypatch.setattr(manifest, "FILES", files)
    monkeypatch.setattr(manifest, "SETS", sets)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    targets = [comfy_base / "models" / f.folder / f.name for f in files]
    yield files, targets
    for t in targets:
        t.unlink(missing_ok=True)


def node_graph(action: str, confirm: bool) -> dict:
    return {"1": {"class_type": "ControlNeXtModelSetup",
                  "inputs": {"model_set": "default", "action": action, "confirm_download": confirm}}}


def report_of(run) -> str:
    assert run.success, run.error()
    return "".join(run.outputs["1"]["text"])


def test_node_checks_and_downloads_only_when_confirmed(node_manifest: tuple, hub: FakeHub) -> None:
    files, targets = node_manifest
    text = report_of(run_graph(node_graph("check", False)))
    assert "0 of 4 files present" in text and COMMAND in text
    text = report_of(run_graph(node_graph("download missing", False)))
    assert "turn on confirm_download" in text and not any(t.exists() for t in targets)
    assert not any(r[0] == "GET" for r in hub.requests)
    text = report_of(run_graph(node_graph("download missing", True)))
    assert "4 of 4 files present" in text, text
    for f, t in zip(files, targets, strict=True):
        assert t.read_bytes() == FAKE[f.key]
    assert "4 of 4 files present" in report_of(run_graph(node_graph("check", False)))
