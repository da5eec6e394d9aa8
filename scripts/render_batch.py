"""Batch render: many (photo, dance) jobs from a manifest, with models loaded once per worker, resumable after any
crash, on this machine or on a Ray cluster.

    .venv/bin/python scripts/render_batch.py --manifest jobs.csv --out renders/
    .venv/bin/python scripts/render_batch.py --tiny --manifest jobs.jsonl --out check/   # plumbing check, noise
    .venv/bin/python scripts/render_batch.py --manifest jobs.csv --out renders/ --ray local --workers 2
    .venv/bin/python scripts/render_batch.py --manifest jobs.csv --out /shared/renders/ --ray HEAD_IP:6379

The manifest is CSV (a header row) or JSONL (one object a line), one job per row: id, ref, driving required;
optional pose_video (true when driving is already a pose video), width, height, frames, stride, steps, seed, workflow
(defaults as scripts/render.py). Relative paths are relative to the manifest. Malformed rows (missing file, bad
number, duplicate id) are reported with their line number before anything renders; the other rows still run.

Per job: DIR/<id>.mp4 and DIR/<id>-side-by-side.mp4 (with the dance's sound), each written under a temporary name
and renamed when complete, and one JSON line in DIR/results.jsonl (id, status done/failed, outputs, seconds, error,
input_hash: a hash of the job's files and parameters, worker, attempts). A rerun skips jobs already done with the
same input hash and jobs that failed by themselves (bad input) while their inputs are unchanged (--retry-failed runs
those again). Ctrl-C stops after cleaning up; the next run resumes. A job that a run died in (a crash, an
out-of-memory kill) runs last in the next run and is failed after --max-attempts such runs (DIR/.attempts.jsonl logs
every start and end).

Without --ray every job runs in this process with ONE ComfyUI whose cache stays on (scripts/batch_worker.py): models
load once for the whole batch, jobs using the same dance run one after the other and share its trimmed copy and
decoded frames, and DWPose runs once per dance (its detections are kept by frame content). The log says each time
something is reused, and the batch's end counts what ran. With --ray (scripts/batch_ray.py) each worker is a Ray
actor doing the same in its own process (one per GPU), and a job whose worker dies is given to another worker.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import render  # scripts/render.py (scripts/ is on sys.path when this file runs as a script)
from batch_manifest import (
    RESULTS,
    Job,
    append_result,
    died_attempts,
    failed_record,
    load_manifest,
    output_lock,
    previous_outcome,
    read_results,
    record_end,
    record_start,
    remove_partial_outputs,
)
from batch_worker import JobRunner, describe_stats

DEFAULT_MAX_ATTEMPTS = 3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--manifest", required=True, type=Path, help="jobs: a .csv with a header row, or .jsonl")
    p.add_argument("--out", required=True, type=Path,
                   help="output folder (DIR/<id>.mp4, DIR/results.jsonl); with --ray on storage every node sees")
    p.add_argument("--tiny", action="store_true", help=f"{render.PLUMBING}: tiny random models for every job")
    p.add_argument("--retry-failed", action="store_true",
                   help="run again the jobs that failed by themselves in an earlier run (inputs unchanged)")
    p.add_argument("--ray", metavar="ADDRESS",
                   help="render on Ray: 'local' starts a Ray instance on this machine (loopback only), HOST:PORT "
                        "joins a running cluster (bash scripts/ray.sh start --head); needs bash scripts/setup_ray.sh")
    p.add_argument("--workers", type=int,
                   help="with --ray: workers to start (default: one per GPU in the cluster; without GPUs, one)")
    p.add_argument("--threads", type=int,
                   help="torch CPU threads for every job (default: torch's; with --ray, the worker's CPUs); the same "
                        "count gives the same video in both modes on a CPU")
    p.add_argument("--max-attempts", type=int, default=DEFAULT_MAX_ATTEMPTS,
                   help="times a job is tried when the process rendering it dies (crash, OOM kill, lost node; "
                        "counted across reruns) before it is marked failed")
    args = p.parse_args(argv)
    if not args.manifest.is_file():
        p.error(f"--manifest {args.manifest}: no such file")
    if args.out.exists() and not args.out.is_dir():
        p.error(f"--out {args.out}: exists and is not a folder")
    for name in ("workers", "threads", "max_attempts"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.workers is not None and args.ray is None:
        p.error("--workers needs --ray (without it every job runs in this process)")
    return args


# ----------------------------------------------------------------------------------------------------------- run


def fmt_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Tally:
    """The batch's bookkeeping, the same for every mode: results.jsonl lines, progress line and ETA, summary."""

    def __init__(self, out_dir: Path, todo: int) -> None:
        self.out_dir, self.todo = out_dir, todo
        self.done: list[Job] = []
        self.failed: list[tuple[Job, str]] = []
        self.spent: list[float] = []
        self.started_at = time.monotonic()
        self.first_job_at: float | None = None  # the ETA's clock: boot and loading are not per-job time
        self.numbers: dict[str, int] = {}  # job id -> its place in the order jobs started (a retry keeps it)
        self.running: dict[str, Job] = {}

    @property
    def left(self) -> int:
        return self.todo - len(self.done) - len(self.failed)

    def start(self, job: Job, where: str = "") -> None:
        record_start(self.out_dir, job)
        self.running[job.id] = job
        number = self.numbers.setdefault(job.id, len(self.numbers) + 1)
        if self.first_job_at is None:
            self.first_job_at = time.monotonic()
        print(f"[batch] job {job.id} ({number}/{self.todo}, manifest line {job.line}){where}", flush=True)

    def finish(self, job: Job, record: dict[str, Any]) -> None:
        append_result(self.out_dir, record)
        self.running.pop(job.id, None)
        if record["status"] == "done":
            self.done.append(job)
            self.spent.append(record["seconds"])
            print(f"[batch] job {job.id} done in {record['seconds']:.1f} s: {job.outputs[0]}", flush=True)
        else:
            self.failed.append((job, record["error"]))
            print(f"[batch] job {job.id} FAILED: {record['error']}", file=sys.stderr, flush=True)
        elapsed = time.monotonic() - (self.first_job_at or self.started_at)
        finished = len(self.done) + len(self.failed)
        eta = f", ETA {fmt_seconds(elapsed / finished * self.left)}" if self.left else ""
        print(f"[batch] progress: {len(self.done)} done, {len(self.failed)} failed, {self.left} left{eta}", flush=True)

    def interrupted(self) -> None:
        """Ctrl-C: the jobs being rendered did not die by themselves, so a rerun must not count an attempt."""
        for job in self.running.values():
            record_end(self.out_dir, job.id, job.input_hash, "interrupted")


def dance_order(jobs: list[Job]) -> list[Job]:
    """Jobs of the same dance one after the other (manifest order otherwise): a worker reuses the dance's trimmed copy,
    frames and poses while they are cached."""
    first_of: dict[tuple, int] = {}
    for index, job in enumerate(jobs):
        first_of.setdefault(job.dance_key(), index)
    return sorted(jobs, key=lambda job: first_of[job.dance_key()])


def plan(todo: list[Job], died: dict[str, int], max_attempts: int) -> tuple[list[Job], list[Job]]:
    """(jobs to render in order, jobs to fail at once). died: job id -> earlier runs that died while rendering it
    (a crash, an out-of-memory kill). Those jobs go last, so that one job that kills the process cannot hold the
    batch up, and fail without a try once they have used up their attempts; the others keep their dance order."""
    worn_out = [job for job in todo if died.get(job.id, 0) >= max_attempts]
    fresh = [job for job in todo if job.id not in died]
    again = [job for job in todo if job.id in died and job not in worn_out]
    return dance_order(fresh) + dance_order(again), worn_out


def run_embedded(args: argparse.Namespace, todo: list[Job], tally: Tally,
                 died: dict[str, int]) -> list[dict[str, Any]]:
    """Every job in this process, one after the other, on one JobRunner; its stats. KeyboardInterrupt propagates.
    died: job id -> earlier runs that died while rendering it."""
    runner = JobRunner(args.tiny, args.threads)
    try:
        runner.boot()
        print(f"[batch] ComfyUI ready in {time.monotonic() - tally.started_at:.1f} s", flush=True)
        for job in todo:
            attempt = died.get(job.id, 0) + 1
            tally.start(job, f", attempt {attempt} of {args.max_attempts}" if attempt > 1 else "")
            record = runner.run(job)
            record["attempts"] = attempt
            tally.finish(job, record)
        return [runner.stats()]
    finally:
        runner.close()


def run_batch(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    out_dir: Path = args.out.resolve()
    jobs, problems = load_manifest(args.manifest, out_dir, args.tiny)
    for problem in problems:
        print(f"[batch] malformed row, skipped: {problem}", file=sys.stderr, flush=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    with output_lock(out_dir):
        return run_locked(args, jobs, problems, out_dir, t0)


def run_locked(args: argparse.Namespace, jobs: list[Job], problems: list[str], out_dir: Path, t0: float) -> int:
    """The batch, with the output folder to itself."""
    remove_partial_outputs(jobs)  # what a killed earlier run left half-written (no batch is writing here now)
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
    open_starts = died_attempts(out_dir)
    died = {job.id: open_starts[(job.id, job.input_hash)] for job in todo if (job.id, job.input_hash) in open_starts}
    todo, worn_out = plan(todo, died, args.max_attempts)
    print(f"[batch] {len(jobs)} job(s) in {args.manifest}: {len(todo)} to render, {len(skipped_done)} already done, "
          f"{len(skipped_failed)} failed before with the same inputs (--retry-failed runs them again), "
          f"{len(problems)} malformed row(s)", flush=True)
    if args.tiny:
        print(f"[batch] {render.PLUMBING}", flush=True)

    tally = Tally(out_dir, len(todo) + len(worn_out))
    for job in todo:
        if job.id in died:
            print(f"[batch] job {job.id}: {died[job.id]} earlier run(s) ended while rendering it (a crash or an "
                  "out-of-memory kill?): it runs last", file=sys.stderr, flush=True)
    for job in worn_out:
        tally.finish(job, failed_record(job, f"{died[job.id]} run(s) ended while rendering it (a crash or an "
                                         "out-of-memory kill?); it may need more memory than this machine has "
                                         "(--retry-failed tries again)", "worker", None, died[job.id]))
    interrupted = False
    stats: list[dict[str, Any]] = []
    if todo:
        try:
            if args.ray is not None:
                from batch_ray import run_on_ray  # Ray is imported only when asked for

                stats = run_on_ray(args, todo, tally, died)
            else:
                stats = run_embedded(args, todo, tally, died)
        except KeyboardInterrupt:
            interrupted = True
            tally.interrupted()

    for item in stats:
        prefix = f"worker {item['worker']}: " if args.ray is not None else ""
        print(f"[batch] {prefix}{describe_stats(item)}", flush=True)
    done, failed, spent = tally.done, tally.failed, tally.spent
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
    return 1 if failed or skipped_failed or problems or tally.left else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run_batch(args)
    except render.RenderError as exc:  # the host, the workflow or the cluster, not one job
        print(f"[batch] error: {exc}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
