"""Batch render: many (photo, dance) jobs from a manifest in ONE process with ONE ComfyUI whose cache stays on.

    .venv/bin/python scripts/render_batch.py --manifest jobs.csv --out renders/
    .venv/bin/python scripts/render_batch.py --tiny --manifest jobs.jsonl --out check/   # plumbing check, noise

The manifest is CSV (a header row) or JSONL (one object a line), one job per row: id, ref, driving required;
optional pose_video (true when driving is already a pose video), width, height, frames, stride, steps, seed, workflow
(defaults as scripts/render.py). Relative paths are relative to the manifest. Malformed rows (missing file, bad
number, duplicate id) are reported with their line number before anything renders; the other rows still run.

Per job: DIR/<id>.mp4 and DIR/<id>-side-by-side.mp4 (with the dance's sound), each written under a temporary name
and renamed when complete, and one JSON line in DIR/results.jsonl (id, status done/failed, outputs, seconds, error,
input_hash: a hash of the job's files and parameters). A rerun skips jobs already done with the same input hash and
jobs that failed by themselves (bad input) while their inputs are unchanged (--retry-failed runs those again).
Ctrl-C stops after cleaning up; the next run resumes.

Models load once for the whole batch (ComfyUI's classic cache on one executor: unchanged loader nodes are not run
again), jobs using the same dance run one after the other and share its trimmed copy and decoded frames, and DWPose
runs once per dance: its detections are kept by frame content (the same frames give the same poses) for the photos
that follow. The log says each time something is reused, and the batch's end counts what ran.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import hashlib
import io
import json
import os
import re
import sys
import tempfile
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import render  # scripts/render.py (scripts/ is on sys.path when this file runs as a script)

RESULTS = "results.jsonl"
FIELDS = ("id", "ref", "driving", "pose_video", "width", "height", "frames", "stride", "steps", "seed", "workflow")
INT_FIELDS = ("width", "height", "frames", "stride", "steps", "seed")
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
POSE_MEMO_SIZE = 8  # dances whose detections are kept (jobs are grouped by dance, so one is enough in order)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--manifest", required=True, type=Path, help="jobs: a .csv with a header row, or .jsonl")
    p.add_argument("--out", required=True, type=Path, help="output folder (DIR/<id>.mp4, DIR/results.jsonl)")
    p.add_argument("--tiny", action="store_true", help=f"{render.PLUMBING}: tiny random models for every job")
    p.add_argument("--retry-failed", action="store_true",
                   help="run again the jobs that failed by themselves in an earlier run (inputs unchanged)")
    args = p.parse_args(argv)
    if not args.manifest.is_file():
        p.error(f"--manifest {args.manifest}: no such file")
    if args.out.exists() and not args.out.is_dir():
        p.error(f"--out {args.out}: exists and is not a folder")
    return args


# ------------------------------------------------------------------------------------------------------ manifest


class Job:
    """One valid manifest row: its render.py arguments and the hash of everything that decides its output."""

    def __init__(self, job_id: str, line: int, args: argparse.Namespace, input_hash: str) -> None:
        self.id, self.line, self.args, self.input_hash = job_id, line, args, input_hash

    @property
    def outputs(self) -> list[Path]:
        return [self.args.out, render.side_by_side_path(self.args.out)]

    def dance_key(self) -> tuple:
        a = self.args
        return (str(a.driving.resolve()), a.stride, a.frames, a.pose_video, a.width if a.pose_video else 0,
                a.height if a.pose_video else 0)


def read_rows(manifest: Path) -> list[tuple[int, Any]]:
    """(line number, row) of a CSV (dicts by header) or JSONL manifest; a line that is not JSON gives a str."""
    text = manifest.read_text(encoding="utf-8-sig")
    if manifest.suffix.lower() in (".jsonl", ".ndjson"):
        rows: list[tuple[int, Any]] = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                rows.append((number, json.loads(line)))
            except json.JSONDecodeError as exc:
                rows.append((number, f"not a JSON object ({exc.msg})"))
        return rows
    reader = csv.DictReader(io.StringIO(text))
    rows = []
    for row in reader:
        if not any((v or "").strip() for k, v in row.items() if k is not None):
            continue
        rows.append((reader.line_num, row))
    return rows


def file_hash(path: Path, cache: dict[Path, str]) -> str:
    path = path.resolve()
    if path not in cache:
        h = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        cache[path] = h.hexdigest()
    return cache[path]


def parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("", "0", "false", "no", "n"):
        return False
    if text in ("1", "true", "yes", "y"):
        return True
    raise ValueError(f"pose_video {value!r} is not true/false")


def make_job(number: int, row: Any, base: Path, out_dir: Path, tiny: bool, hashes: dict[Path, str]) -> Job:
    """A Job from a manifest row, validated by render.py's own argument checks; ValueError says what is wrong."""
    if not isinstance(row, dict):
        raise ValueError(row if isinstance(row, str) else "not a JSON object")
    unknown = sorted(k for k in row if k is not None and k not in FIELDS)
    if unknown:
        raise ValueError(f"unknown column(s) {', '.join(unknown)} (known: {', '.join(FIELDS)})")
    values = {k: ("" if v is None else str(v).strip()) if not isinstance(v, bool) else v for k, v in row.items()
              if k is not None}
    for name in ("id", "ref", "driving"):
        if not values.get(name):
            raise ValueError(f"{name} is missing (id, ref and driving are required)")
    job_id = values["id"]
    if not ID_RE.match(job_id):
        raise ValueError(f"id {job_id!r}: use letters, digits, '.', '_' or '-' (it names the output files)")
    argv = ["--ref", str(base / values["ref"]), "--driving", str(base / values["driving"]),
            "--out", str(out_dir / f"{job_id}.mp4")]
    if parse_bool(values.get("pose_video", "")):
        argv.append("--pose-video")
    for name in INT_FIELDS:
        value = values.get(name, "")
        if value == "":
            continue
        try:
            int(value)
        except ValueError:
            raise ValueError(f"{name} {value!r} is not a whole number") from None
        argv += [f"--{name}", value]
    if values.get("workflow"):
        argv += ["--workflow", str(base / values["workflow"])]
    if tiny:
        argv.append("--tiny")
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = render.parse_args(argv)
    except SystemExit:
        message = err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else "invalid"
        raise ValueError(message.split("error: ", 1)[-1]) from None
    if args.workflow is not None and not args.workflow.is_file():
        raise ValueError(f"workflow {args.workflow}: no such file")
    workflow = args.workflow or render.WORKFLOWS[args.pose_video]
    params = {k: getattr(args, k) for k in ("width", "height", "frames", "stride", "steps", "seed", "pose_video",
                                             "tiny")}
    key = json.dumps({"ref": file_hash(args.ref, hashes), "driving": file_hash(args.driving, hashes),
                      "workflow": file_hash(workflow, hashes), **params}, sort_keys=True)
    return Job(job_id, number, args, hashlib.sha256(key.encode()).hexdigest()[:16])


def load_manifest(manifest: Path, out_dir: Path, tiny: bool) -> tuple[list[Job], list[str]]:
    """The valid jobs (manifest order) and one message per malformed row."""
    base = manifest.resolve().parent
    jobs: list[Job] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    hashes: dict[Path, str] = {}
    try:
        rows = read_rows(manifest)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        return [], [f"{manifest}: cannot be read ({exc})"]
    for number, row in rows:
        try:
            job = make_job(number, row, base, out_dir, tiny, hashes)
        except (ValueError, OSError) as exc:
            problems.append(f"{manifest.name} line {number}: {exc}")
            continue
        if job.id in seen:
            problems.append(f"{manifest.name} line {number}: duplicate id {job.id!r} (first on line {seen[job.id]})")
            continue
        seen[job.id] = number
        jobs.append(job)
    return jobs, problems


# ------------------------------------------------------------------------------------------------------- results


def read_results(out_dir: Path) -> dict[str, dict]:
    """The last result line of each id (lines from an interrupted write are ignored)."""
    results: dict[str, dict] = {}
    path = out_dir / RESULTS
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and "id" in record:
                results[record["id"]] = record
    return results


def append_result(out_dir: Path, record: dict) -> None:
    with (out_dir / RESULTS).open("a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def previous_outcome(job: Job, results: dict[str, dict], retry_failed: bool) -> str | None:
    """'done' or 'failed' when the job needs no run now, else None."""
    record = results.get(job.id)
    if not record or record.get("input_hash") != job.input_hash:
        return None
    if record.get("status") == "done" and all(p.is_file() for p in job.outputs):
        return "done"
    if record.get("status") == "failed" and not retry_failed:
        return "failed"
    return None


# ----------------------------------------------------------------------------------------------- what ran, reused


class CountingServer(render.ConsoleServer):
    """ConsoleServer that also counts how often each node class ran (cached nodes do not run)."""

    def __init__(self) -> None:
        super().__init__()
        self.ran: dict[str, int] = {}

    def send_sync(self, event: str, data: Any, sid: str | None = None) -> None:
        if event == "executing" and isinstance(data, dict) and data.get("node") is not None:
            class_type = self.graph.get(data["node"], {}).get("class_type", "?")
            self.ran[class_type] = self.ran.get(class_type, 0) + 1
        super().send_sync(event, data, sid)


class PoseMemo:
    """Keeps DWPose's detections by frame content, so a dance's frames are analysed once for all the photos that
    use it: DWPose.detect is deterministic, the same frames give the same poses. Wraps the pack's DWPose.detect
    for this process only."""

    def __init__(self) -> None:
        self.memo: OrderedDict[tuple, Any] = OrderedDict()
        self.detected_frames = 0
        self.reused_frames = 0
        pipeline = render.pack_module("dwpose.pipeline")
        original = pipeline.DWPose.detect
        memo = self

        def detect(model: Any, images: Any, progress: Any = None) -> Any:
            import numpy as np

            array = np.ascontiguousarray(np.asarray(images))
            key = (id(model), array.shape, str(array.dtype), hashlib.sha1(array.tobytes()).hexdigest())
            if key in memo.memo:
                memo.memo.move_to_end(key)
                memo.reused_frames += len(memo.memo[key])
                print(f"[batch] DWPose: poses of {len(memo.memo[key])} frame(s) reused (analysed for an earlier job)",
                      flush=True)
                return copy.deepcopy(memo.memo[key])
            frames = original(model, images, progress)
            memo.detected_frames += len(frames)
            memo.memo[key] = copy.deepcopy(frames)
            while len(memo.memo) > POSE_MEMO_SIZE:
                memo.memo.popitem(last=False)
            return frames

        pipeline.DWPose.detect = detect


# ----------------------------------------------------------------------------------------------------------- run


def fmt_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def progress_line(done: int, failed: int, left: int, spent: list[float]) -> str:
    eta = f", ETA {fmt_seconds(sum(spent) / len(spent) * left)}" if spent and left else ""
    return f"[batch] progress: {done} done, {failed} failed, {left} left{eta}"


def run_batch(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    out_dir: Path = args.out
    jobs, problems = load_manifest(args.manifest, out_dir.resolve(), args.tiny)
    for problem in problems:
        print(f"[batch] malformed row, skipped: {problem}", file=sys.stderr, flush=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = read_results(out_dir)
    todo: list[Job] = []
    skipped_done, skipped_failed = [], []
    for job in jobs:
        outcome = previous_outcome(job, results, args.retry_failed)
        if outcome == "done":
            skipped_done.append(job)
        elif outcome == "failed":
            skipped_failed.append(job)
        else:
            todo.append(job)
    # jobs of the same dance one after the other: its trimmed copy, frames and poses are reused while cached
    first_of: dict[tuple, int] = {}
    for index, job in enumerate(todo):
        first_of.setdefault(job.dance_key(), index)
    todo.sort(key=lambda job: first_of[job.dance_key()])
    print(f"[batch] {len(jobs)} job(s) in {args.manifest}: {len(todo)} to render, {len(skipped_done)} already done, "
          f"{len(skipped_failed)} failed before with the same inputs (--retry-failed runs them again), "
          f"{len(problems)} malformed row(s)", flush=True)
    if args.tiny:
        print(f"[batch] {render.PLUMBING}", flush=True)

    done: list[Job] = []
    failed: list[tuple[Job, str]] = []
    spent: list[float] = []
    interrupted = False
    counts: dict[str, int] = {}
    memo: PoseMemo | None = None
    if todo:
        with tempfile.TemporaryDirectory(prefix="controlnext-batch-") as tmp_dir:
            drivings: dict[tuple, tuple] = {}
            try:
                host = render.Host(args.tiny, Path(tmp_dir))
                print(f"[batch] ComfyUI ready in {time.monotonic() - t0:.1f} s", flush=True)
                import server
                from comfy_boot import make_executor

                srv = CountingServer()
                server.PromptServer.instance = srv
                # classic cache: a node whose inputs did not change since the previous job is not run again
                executor = make_executor(host.execution, srv, host.execution.CacheType.CLASSIC)
                memo = PoseMemo()
                graphs: dict[tuple, dict] = {}
                for index, job in enumerate(todo):
                    print(f"[batch] job {job.id} ({index + 1}/{len(todo)}, manifest line {job.line})", flush=True)
                    started = time.monotonic()
                    try:
                        key = (str(job.args.workflow), job.args.pose_video)
                        if key not in graphs:
                            graphs[key] = host.graph(job.args.workflow, job.args.pose_video)
                        rendered = render.render(job.args, host, graphs[key], executor, drivings)
                        rendered.write(job.args.out)
                    except (render.RenderError, ValueError, OSError, RuntimeError) as exc:
                        seconds = time.monotonic() - started
                        message = str(exc).strip() or type(exc).__name__
                        failed.append((job, message))
                        print(f"[batch] job {job.id} FAILED: {message}", file=sys.stderr, flush=True)
                        append_result(out_dir, {"id": job.id, "status": "failed", "outputs": [],
                                                "seconds": round(seconds, 2), "error": message,
                                                "input_hash": job.input_hash})
                    else:
                        seconds = time.monotonic() - started
                        spent.append(seconds)
                        done.append(job)
                        append_result(out_dir, {"id": job.id, "status": "done",
                                                "outputs": [str(p) for p in job.outputs],
                                                "seconds": round(seconds, 2), "error": None,
                                                "input_hash": job.input_hash})
                        print(f"[batch] job {job.id} done in {seconds:.1f} s: {job.outputs[0]}", flush=True)
                    print(progress_line(len(done), len(failed), len(todo) - index - 1, spent), flush=True)
                counts = dict(srv.ran)
            except KeyboardInterrupt:
                interrupted = True
            finally:
                for path, *_ in drivings.values():
                    path.unlink(missing_ok=True)

    loaders = {k: v for k, v in sorted(counts.items()) if k.endswith("Loader") or k.startswith("ControlNeXtTestTiny")}
    if loaders:
        print(f"[batch] model loader runs for {len(done) + len(failed)} job(s): "
              + ", ".join(f"{k} x{v}" for k, v in loaders.items()), flush=True)
    if memo is not None:
        print(f"[batch] DWPose: {memo.detected_frames} frame(s) analysed, {memo.reused_frames} reused", flush=True)
    print(f"[batch] summary: {len(done)} rendered, {len(failed)} failed, {len(skipped_done)} already done, "
          f"{len(skipped_failed)} failed before (not retried), {len(problems)} malformed row(s) in "
          f"{time.monotonic() - t0:.1f} s" + (f"; {len(spent)} job(s) at {sum(spent) / len(spent):.1f} s each"
                                                if spent else ""), flush=True)
    for job, message in failed:
        print(f"[batch]   failed: {job.id}: {message}", flush=True)
    for job in skipped_failed:
        print(f"[batch]   failed before: {job.id}: {results[job.id].get('error')}", flush=True)
    for problem in problems:
        print(f"[batch]   malformed: {problem}", flush=True)
    print(f"[batch] results: {out_dir / RESULTS}", flush=True)
    if interrupted:
        print("[batch] interrupted: finished jobs are kept; run the same command again to render the rest",
              file=sys.stderr, flush=True)
        return 130
    if args.tiny:
        print(f"[batch] {render.PLUMBING}", flush=True)
    return 1 if failed or skipped_failed or problems else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run_batch(args)
    except render.RenderError as exc:  # the host or the workflow, not one job
        print(f"[batch] error: {exc}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
