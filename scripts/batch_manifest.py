"""The batch renderer's files: the manifest (one job a row, validated by render.py's own argument checks), the results
log (DIR/results.jsonl, one JSON line per finished job) and the outputs' temporary names (scripts/render.py's
write_mp4 writes `.<name>.<6 hex>.part.mp4` and renames it into place when complete)."""

from __future__ import annotations

import argparse
import contextlib
import csv
import fcntl
import hashlib
import io
import json
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import render  # scripts/render.py (scripts/ is on sys.path when the batch runs)

RESULTS = "results.jsonl"
# the batch's own log of job starts and ends, beside the results: a start with no end after it is a run that died
# while rendering the job (a crash, an out-of-memory kill of the whole batch)
ATTEMPTS = ".attempts.jsonl"
LOCK = ".batch.lock"  # held by the batch writing to the folder
FIELDS = ("id", "ref", "driving", "pose_video", "width", "height", "frames", "stride", "steps", "seed", "workflow")
INT_FIELDS = ("width", "height", "frames", "stride", "steps", "seed")
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
PARTIAL_RE = re.compile(r"^\.(?P<name>.+)\.[0-9a-f]{6}\.part\.mp4$")


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


def read_lines(path: Path) -> list[dict]:
    """The JSON objects of a JSONL file (lines from an interrupted write are skipped)."""
    records = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and "id" in record:
                records.append(record)
    return records


def read_results(out_dir: Path) -> dict[str, dict]:
    """The last result line of each id."""
    return {record["id"]: record for record in read_lines(out_dir / RESULTS)}


def append_line(path: Path, record: dict) -> None:
    """One line, synced; a line cut short by a crash is ended first so that it cannot swallow this one."""
    with path.open("a+b") as f:
        f.seek(0, os.SEEK_END)
        if f.tell():
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")
        f.write((json.dumps(record) + "\n").encode())
        f.flush()
        os.fsync(f.fileno())


def failed_record(job: Job, error: str, cause: str, worker: str | None, attempts: int | None = None,
                  seconds: float = 0.0) -> dict[str, Any]:
    """A results.jsonl line for a failed job. cause: "job" (it failed by itself: bad input) or "worker" (the process
    rendering it kept dying)."""
    record = {"id": job.id, "status": "failed", "outputs": [], "seconds": round(seconds, 2), "error": error,
              "input_hash": job.input_hash, "cause": cause, "worker": worker}
    if attempts is not None:
        record["attempts"] = attempts
    return record


def append_result(out_dir: Path, record: dict) -> None:
    append_line(out_dir / RESULTS, record)
    record_end(out_dir, record["id"], record.get("input_hash"), "end")


def record_start(out_dir: Path, job: Job) -> None:
    append_line(out_dir / ATTEMPTS, {"id": job.id, "input_hash": job.input_hash, "event": "start"})


def record_end(out_dir: Path, job_id: str, input_hash: str | None, event: str) -> None:
    """A job's attempt ended: with a result ("end") or stopped by the user ("interrupted")."""
    append_line(out_dir / ATTEMPTS, {"id": job_id, "input_hash": input_hash, "event": event})


def died_attempts(out_dir: Path) -> dict[tuple[str, str], int]:
    """(id, input hash) -> how many starts of the job have no end after them: runs that died while rendering it."""
    open_starts: dict[tuple[str, str], int] = {}
    for record in read_lines(out_dir / ATTEMPTS):
        key = (record["id"], record.get("input_hash"))
        open_starts[key] = open_starts.get(key, 0) + 1 if record.get("event") == "start" else 0
    return {key: n for key, n in open_starts.items() if n}


def previous_outcome(job: Job, results: dict[str, dict], retry_failed: bool) -> str | None:
    """'done' or 'failed' when the job needs no run now, else None."""
    record = results.get(job.id)
    if not record or record.get("input_hash") != job.input_hash:
        return None
    if record.get("status") == "done" and all(p.is_file() for p in job.outputs):
        return "done"
    # a failed job (by itself, or its worker died too often) stays failed while its inputs are unchanged
    if record.get("status") == "failed" and not retry_failed:
        return "failed"
    return None


def remove_partial_outputs(jobs: list[Job]) -> list[Path]:
    """Delete what killed renders of `jobs` left: their outputs' temporary files (never complete ones), listing each
    output folder once; the paths. Call it while no batch writes there."""
    names_by_folder: dict[Path, set[str]] = {}
    for job in jobs:
        for path in job.outputs:
            names_by_folder.setdefault(path.parent, set()).add(path.name)
    removed = []
    for folder, names in names_by_folder.items():
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            match = PARTIAL_RE.match(path.name)
            if match and match["name"] in names:
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


@contextlib.contextmanager
def output_lock(out_dir: Path) -> Iterator[None]:
    """Hold DIR/.batch.lock while the batch runs: a second batch on the same folder would render the same jobs twice
    and delete the other's temporary files. The lock ends with the process, however it ends."""
    with (out_dir / LOCK).open("a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise render.RenderError(f"another batch is writing to {out_dir} ({holder}): wait for it to end, or "
                                     "give this one another --out") from None
        f.seek(0)
        f.truncate()
        f.write(f"{socket.gethostname()} pid {os.getpid()}\n")
        f.flush()
        yield
