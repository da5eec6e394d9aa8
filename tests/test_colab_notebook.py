"""The Colab notebook: valid nbformat 4, every shell command's program exists, every pack script and flag it calls
exists (from the script's own --help), and its offline-tagged Python cells run."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "colab" / "ControlNeXt_SVD_v2.ipynb"
SHELL_BUILTINS = {"cd", "echo", "test", "[", "export", "true"}
GPU_ONLY_PROGRAMS = {"nvidia-smi"}
ALLOWED_MAGICS = {"cd", "env", "pip"}


def load() -> dict:
    return json.loads(NOTEBOOK.read_text())


def cells(kind: str) -> list[dict]:
    return [c for c in load()["cells"] if c["cell_type"] == kind]


def source(cell: dict) -> str:
    return "".join(cell["source"])


def tags(cell: dict) -> set[str]:
    return set(cell.get("metadata", {}).get("tags", []))


def shell_lines(cell: dict) -> list[str]:
    return [line.strip() for line in source(cell).splitlines() if line.strip().startswith(("!", "%"))]


def test_notebook_structure() -> None:
    nb = load()
    assert nb["nbformat"] == 4 and nb["nbformat_minor"] >= 4
    assert nb["metadata"]["kernelspec"]["name"] == "python3" and nb["metadata"]["accelerator"] == "GPU"
    ids = [c["id"] for c in nb["cells"]]
    assert len(ids) == len(set(ids))
    for cell in nb["cells"]:
        assert cell["cell_type"] in ("code", "markdown") and isinstance(cell["source"], list)
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, "commit the notebook without outputs"
            python = "\n".join(line for line in source(cell).splitlines() if not line.lstrip().startswith(("!", "%")))
            compile(python, cell["id"], "exec")  # the Python part parses
    text = json.dumps(nb)
    for needed in ("nvidia-smi", "setup_models.py --download", "render.py", "extra_model_paths.yaml",
                   "drive.mount", "files.upload", "Video("):
        assert needed in text, f"the notebook lost its {needed!r} step"
    assert not re.search(r"pip install[^\n]*\btorch\b", text), "the notebook must never reinstall torch"


def programs(command: str) -> list[str]:
    """The program names of a shell line: its first word and the first word after each &&, ||, ; or |."""
    tokens = list(shlex.shlex(command, posix=True, punctuation_chars=True))
    found, expect_program = [], True
    for token in tokens:
        if token in ("&&", "||", ";", "|"):
            expect_program = True
        elif expect_program:
            found.append(token)
            expect_program = False
    return found


def test_shell_commands_exist() -> None:
    path = os.pathsep.join([str(ROOT / ".venv" / "bin"), os.environ.get("PATH", "")])
    checked = 0
    for cell in cells("code"):
        for line in shell_lines(cell):
            if line.startswith("%"):
                assert line[1:].split()[0] in ALLOWED_MAGICS, line
                continue
            for program in programs(line[1:]):
                checked += 1
                if program in SHELL_BUILTINS:
                    continue
                if program in GPU_ONLY_PROGRAMS and "gpu" in tags(cell):
                    continue
                assert shutil.which(program, path=path), f"{cell['id']}: no program {program!r} for: {line}"
    assert checked >= 8


def script_calls() -> list[tuple[str, list[str]]]:
    """(script, flags) per `!python .../scripts/x.py` line; flags in the cell's Python strings (expanded into the
    line by IPython, e.g. {RENDER_FLAGS}) count for that cell's script calls."""
    calls = []
    for cell in cells("code"):
        python = "\n".join(line for line in source(cell).splitlines() if not line.lstrip().startswith(("!", "%")))
        cell_flags = re.findall(r"(--[\w-]+)", python)
        for line in shell_lines(cell):
            for match in re.finditer(r"python\s+\S*?scripts/(\w+\.py)([^&|;]*)", line):
                calls.append((match.group(1), re.findall(r"(--[\w-]+)", match.group(2)) + cell_flags))
    return calls


def test_scripts_and_flags_exist() -> None:
    calls = script_calls()
    assert {name for name, _ in calls} >= {"setup_models.py", "render.py"}
    helps: dict[str, str] = {}
    for name, flags in calls:
        script = ROOT / "scripts" / name
        assert script.is_file(), f"the notebook calls scripts/{name}, which this repository does not have"
        if name not in helps:
            run = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True,
                                 timeout=60, cwd=ROOT)
            assert run.returncode == 0, run.stderr
            helps[name] = run.stdout
        known = set(re.findall(r"(--[\w-]+)", helps[name]))
        assert flags and set(flags) <= known, f"scripts/{name}: unknown flags {set(flags) - known}"


def offline_namespace() -> dict:
    ns: dict = {"__name__": "colab_notebook"}
    for cell in cells("code"):
        if "offline" in tags(cell):
            assert not shell_lines(cell), f"offline cell {cell['id']} has shell commands"
    return ns


def run_offline_cells(ns: dict, **overrides: object) -> dict:
    """exec() every offline cell in order; settings are overridden right after the settings cell."""
    for cell in cells("code"):
        if "offline" not in tags(cell):
            continue
        exec(compile(source(cell), cell["id"], "exec"), ns)  # noqa: S102  (the notebook's own cells)
        if "PACK_REPO_URL" in ns and not ns.get("_overridden"):
            ns.update(overrides, _overridden=True)
    return ns


def test_precision_picker() -> None:
    ns = run_offline_cells(offline_namespace())
    pick = ns["pick_precision"]
    assert pick((7, 5)) == "fp16"  # T4
    assert pick((7, 0)) == "fp16"  # V100
    assert pick((8, 0)) == "bf16"  # A100
    assert pick((8, 9)) == "bf16"  # L4
    assert pick(None) == "fp32"
    expected = "fp32" if shutil.which("nvidia-smi") is None else ns["PRECISION"]
    assert ns["PRECISION"] == expected
    assert (ROOT / "example_workflows" / ns["WORKFLOW"]).is_file()


def test_extra_model_paths_writer(tmp_path: Path) -> None:
    comfy, drive = tmp_path / "ComfyUI", tmp_path / "drive" / "models"
    comfy.mkdir()
    ns = run_offline_cells(offline_namespace(), USE_DRIVE=True, COMFY_DIR=str(comfy), DRIVE_MODELS=str(drive))
    assert ns["MODELS_DIR"] == str(drive)
    config = yaml.safe_load((comfy / "extra_model_paths.yaml").read_text())
    (section,) = config.values()
    assert section["base_path"] == str(drive) and section["is_default"] is True
    for folder in ("checkpoints", "diffusion_models", "controlnext", "dwpose"):
        assert section[folder] == f"{folder}/"
        assert (drive / folder).is_dir()


def test_extra_model_paths_is_read_by_comfyui(tmp_path: Path) -> None:
    """ComfyUI's own loader maps the four folders to Drive (in a subprocess: it changes global folder paths)."""
    drive = tmp_path / "drive"
    ns = run_offline_cells(offline_namespace())
    yaml_path = ns["write_extra_model_paths"](str(tmp_path), str(drive))
    probe = (
        "import sys, json; sys.path.insert(0, '.'); import folder_paths\n"
        "folder_paths.folder_names_and_paths.setdefault('controlnext', ([], set()))\n"
        "folder_paths.folder_names_and_paths.setdefault('dwpose', ([], set()))\n"
        "from utils.extra_config import load_extra_path_config\n"
        f"load_extra_path_config({str(yaml_path)!r})\n"
        "print(json.dumps({k: folder_paths.get_folder_paths(k)[0] for k in "
        "('checkpoints', 'diffusion_models', 'controlnext', 'dwpose')}))\n"
    )
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                         cwd=ROOT / ".host" / "ComfyUI")
    assert run.returncode == 0, run.stderr
    first = json.loads(run.stdout.strip().splitlines()[-1])
    for folder, found in first.items():
        assert Path(found) == drive / folder, (folder, found)


@pytest.mark.parametrize("name", ["controlnext_svd_low_vram_t4.json", "controlnext_svd_dance_video.json"])
def test_notebook_workflows_exist(name: str) -> None:
    assert name in NOTEBOOK.read_text()
    assert (ROOT / "example_workflows" / name).is_file()
