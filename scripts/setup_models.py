#!/usr/bin/env python3
"""List, check and download the model files the ControlNeXt-SVD workflows need.

  python scripts/setup_models.py --list                 # every file: folder, size, hash, source page
  python scripts/setup_models.py --check                # what is present (exit code 1 if something is missing)
  python scripts/setup_models.py --download             # fetch only what is missing (resumes a cut download)
  python scripts/setup_models.py --download --set fp32  # the official fp32 files instead of the fp16 ones

--models-dir defaults to the ComfyUI models folder this pack is installed under (ComfyUI/custom_nodes/<pack>), else
this checkout's .host/base/models. Downloads need `pip install huggingface_hub`; the token comes from HF_TOKEN (or
`hf auth login`), and HF_ENDPOINT selects a mirror. SVD 1.1 is gated: accept its licence on Hugging Face first.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for the pack's plain `controlnext` package (nothing here imports ComfyUI)

from controlnext import model_download as md  # noqa: E402
from controlnext import model_manifest as mm  # noqa: E402


def default_models_dir() -> Path:
    for root in (Path(os.path.abspath(__file__)).parents[1], ROOT):  # as installed (maybe a symlink), then real
        if root.parent.name == "custom_nodes" and (root.parent.parent / "models").is_dir():
            return root.parent.parent / "models"
    return ROOT / ".host" / "base" / "models"


def list_files(files: list[mm.ModelFile], sets: dict[str, tuple[str, ...]], models_dir: Path) -> str:
    lines = []
    for f in files:
        in_sets = ", ".join(name for name, keys in sets.items() if f.key in keys and name != "all")
        lines.append(f"{f.key}: {models_dir / f.folder / f.name}")
        lines.append(f"    from {f.repo_id}/{f.filename}  ({f.url})")
        lines.append(f"    size {format_bytes(f.size)}, sha256 {f.sha256 or 'unknown'}"
                     + (" (prefix)" if f.sha256 and len(f.sha256) < 64 else "")
                     + (", GATED: accept the licence and set HF_TOKEN" if f.gated else "")
                     + (f"; sets: {in_sets}" if in_sets else ""))
        if f.note:
            lines.append(f"    {f.note}")
    return "\n".join(lines)


def format_bytes(size: int | None) -> str:
    return "unknown" if size is None else f"{size:,} B ({mm.format_size(size)})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    action = p.add_mutually_exclusive_group()
    action.add_argument("--list", action="store_true", help="list the files of the set, with sizes and sources")
    action.add_argument("--check", action="store_true", help="check what is present (default); exit 1 if not all")
    action.add_argument("--download", action="store_true", help="download only the missing (or wrong) files")
    p.add_argument("--set", default=mm.DEFAULT_SET, dest="set_name",
                   help=f"which files (default {mm.DEFAULT_SET!r}); one of: {', '.join(mm.SETS)}")
    p.add_argument("--models-dir", type=Path, default=None,
                   help=f"ComfyUI models folder (default: {default_models_dir()})")
    p.add_argument("--check-hash", action="store_true", help="with --check: also hash present files (slow)")
    p.add_argument("--manifest", default=None, help="a JSON manifest replacing the built-in one (mirrors, tests)")
    args = p.parse_args(argv)

    files_all, sets = mm.FILES, mm.SETS
    if args.manifest:
        files_all, sets = mm.load_manifest_json(args.manifest)
    try:
        files = mm.files_in_set(args.set_name, files_all, sets)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    models_dir = (args.models_dir or default_models_dir()).resolve()

    def folder_for(name: str) -> str:
        return str(models_dir / name)

    if args.list:
        print(f"Model set {args.set_name!r} ({len(files)} files) under {models_dir}:")
        workflows = [w for w, s in mm.WORKFLOW_SETS.items() if s == args.set_name]
        if workflows:
            print(f"Needed by the example workflows: {', '.join(workflows)}")
        print(list_files(files, sets, models_dir))
        return 0
    if args.download:
        statuses, errors = md.setup_files(files, folder_for, download=True)
        print(md.format_report(statuses))
        if errors:
            print(f"{len(errors)} file(s) could not be downloaded:", file=sys.stderr)
            for e in errors:
                print(f"  - {e}", file=sys.stderr)
            return 1
        return 0
    statuses = md.check_files(files, folder_for, check_hash=args.check_hash)
    print(md.format_report(statuses))
    if not all(st.ok for st in statuses):
        print(f"Some files are missing: run  python {os.path.relpath(__file__)} --download"
              + (f" --set {args.set_name}" if args.set_name != mm.DEFAULT_SET else "")
              + (f" --models-dir {models_dir}" if args.models_dir else ""), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
