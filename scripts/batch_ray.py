"""scripts/render_batch.py --ray: the batch's jobs on Ray actors, one per GPU (on a machine without GPUs, CPUs).

Each actor (BatchWorker) boots ComfyUI once and renders job after job with scripts/batch_worker.py's JobRunner, as the
embedded mode does in one process. Jobs and results are small records; frames and videos move by path on storage
every node sees (the manifest's files and --out), never through Ray's object store.

Failures. A job's own failure (bad input) comes back as a failed result and is never retried. When a worker process
dies (crash, OOM kill, lost node) its job goes back to the front of the queue and the next free worker, on any node,
takes it, up to --max-attempts times; then it is failed with the reason (cause "worker"; --retry-failed tries it again).
The retries are ours, not Ray's: actors restart forever (max_restarts=-1) but their calls are not retried by Ray
(max_task_retries=0), because Ray would retry a call only on the same actor, which never comes back when its node is
lost, and a finite Ray retry budget can be used up by restarts alone (ActorUnavailableError). A worker that died is
pinged until it is back, then given jobs again.

Network. `--ray local` starts Ray on loopback only: node IP 127.0.0.1 with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (without
it Ray replaces 127.0.0.1 by the machine's address, and with any other node IP its servers listen on every
interface), no dashboard, usage stats off, its files in a temporary folder deleted at the end. A HOST:PORT on
loopback joins that cluster the same way; any other address joins it as Ray's command line set it up
(bash scripts/ray.sh start ...).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import render  # scripts/render.py (scripts/ is on sys.path when the batch runs)
from batch_manifest import Job, failed_record, remove_partial_outputs
from batch_worker import JobRunner, remove_stale_work_dirs

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
RAY_SITE = ROOT / ".host" / "ray-site"  # scripts/setup_ray.sh
LOOPBACK = "127.0.0.1"
PING_INTERVAL = 2.0  # s between pings of a restarting worker
NO_WORKER_TIMEOUT = 900.0  # s that jobs may wait with no worker alive before the batch gives up (a rerun resumes)
CLOSE_TIMEOUT = 60.0


class BatchWorker:
    """A Ray actor: one ComfyUI (JobRunner) in its own process, booted when the actor starts."""

    def __init__(self, tiny: bool, threads: int | None) -> None:
        self.runner = JobRunner(tiny, threads)
        self.boot_seconds = self.runner.boot()

    def ready(self) -> dict[str, Any]:
        import ray

        return {"where": self.runner.where, "node": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
                "gpus": [str(g) for g in ray.get_gpu_ids()], "boot_seconds": round(self.boot_seconds, 1)}

    def run(self, job: Job) -> dict[str, Any]:
        record = self.runner.run(job)
        return {"record": record, "stats": self.runner.stats()}

    def close(self) -> None:
        self.runner.close()


@dataclass
class Slot:
    """One worker as the driver sees it."""

    number: int
    actor: Any
    info: dict[str, Any] | None = None  # its ready() answer while it is alive
    job: Job | None = None
    last_dance: tuple | None = None
    retry_at: float = 0.0  # when to ping it again (0: no ping planned)
    gone: bool = False  # dead for good (it could not start)
    stats: dict[str, Any] = field(default_factory=dict)

    def label(self) -> str:
        if self.info is None:
            return f"worker {self.number}"
        return f"worker {self.number} ({self.info['where']}, node {self.info['node'][:8]})"


def is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


def import_ray(loopback: bool) -> Any:
    """Ray, from the host venv or scripts/setup_ray.sh's folder; the environment it reads at import set first."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if loopback:
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # keeps 127.0.0.1 as the node's address
    if RAY_SITE.is_dir() and str(RAY_SITE) not in sys.path:
        sys.path.append(str(RAY_SITE))  # after the venv: it holds only what the venv lacks
    try:
        import ray
    except ImportError:
        raise render.RenderError("--ray needs Ray, which is not installed: run `bash scripts/setup_ray.sh` (or use "
                                 "scripts/render_batch.sh, which does when --ray is given)") from None
    return ray


def worker_env() -> dict[str, str]:
    """What every worker process needs on any node: scripts/ and Ray's folder on its path (absolute: a checkout at
    the same path on every node), no usage stats."""
    paths = [str(SCRIPTS), str(RAY_SITE)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths)), "RAY_USAGE_STATS_ENABLED": "0"}


def connect(ray: Any, address: str, loopback: bool) -> str | None:
    """ray.init for `address`; the temporary folder of a Ray started here (deleted by the caller), else None."""
    common = {"runtime_env": {"env_vars": worker_env()}, "log_to_driver": True, "logging_level": logging.WARNING}
    if address == "local":
        # a short path: Ray's socket paths under it must stay below the 107-character limit of Unix sockets
        temp_dir = tempfile.mkdtemp(prefix="cnray-")
        os.environ["PYTHONPATH"] = common["runtime_env"]["env_vars"]["PYTHONPATH"]  # Ray's own processes inherit it
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, _node_ip_address=LOOPBACK, _temp_dir=temp_dir,
                 **common)
        return temp_dir
    try:
        ray.init(address=address, **({"_node_ip_address": LOOPBACK} if loopback else {}), **common)
    except ConnectionError as exc:
        raise render.RenderError(f"--ray {address}: no Ray cluster answers there ({exc}); start one with "
                                 "`bash scripts/ray.sh start --head` or use --ray local") from None
    return None


def actor_options(ray: Any, workers: int | None) -> tuple[int, dict[str, Any]]:
    """(workers, ray.remote options): one GPU each when the cluster has GPUs, else an equal share of its CPUs."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    cpus = int(resources.get("CPU", 0))
    options: dict[str, Any] = {"max_restarts": -1, "max_task_retries": 0}
    if gpus:
        count = workers or gpus
        if count > gpus:
            print(f"[batch] warning: {count} workers for {gpus} GPU(s): {count - gpus} wait for a free GPU",
                  file=sys.stderr, flush=True)
        return count, {**options, "num_gpus": 1, "num_cpus": 1}
    count = workers or 1
    if cpus < count:
        raise render.RenderError(f"--workers {count}: the Ray cluster has {cpus} CPU(s) and no GPU; use --workers "
                                 f"{max(cpus, 1)} or fewer")
    return count, {**options, "num_cpus": max(1, cpus // count)}


def short_reason(exc: BaseException) -> str:
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {first[:240]}"


def pick(queue: deque[Job], dance: tuple | None) -> Job:
    """The first waiting job of the worker's last dance (its frames and poses are cached there), else the first."""
    for index, job in enumerate(queue):
        if dance is not None and job.dance_key() == dance:
            del queue[index]
            return job
    return queue.popleft()


def run_on_ray(args: argparse.Namespace, todo: list[Job], tally: Any, died: dict[str, int]) -> list[dict[str, Any]]:
    """Render `todo` on Ray workers, reporting to `tally` (render_batch.Tally); the workers' stats. died: job id ->
    earlier runs that died while rendering it (attempts already used)."""
    loopback = args.ray == "local" or is_loopback(args.ray)
    ray = import_ray(loopback)
    t0 = time.monotonic()
    temp_dir = connect(ray, args.ray, loopback)
    slots: list[Slot] = []
    try:
        count, options = actor_options(ray, args.workers)
        print(f"[batch] Ray {ray.__version__} at {args.ray} ready in {time.monotonic() - t0:.1f} s: {count} "
              f"worker(s), each {', '.join(f'{k}={v}' for k, v in options.items() if k.startswith('num_'))}",
              flush=True)
        actor_class = ray.remote(BatchWorker).options(**options)
        slots = [Slot(n + 1, actor_class.remote(args.tiny, args.threads)) for n in range(count)]
        return dispatch_loop(ray, args, todo, tally, slots, died)
    finally:
        stop_workers(ray, slots)
        ray.shutdown()
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)
        remove_stale_work_dirs()  # of workers killed on this machine
        remove_partial_outputs(todo)  # of workers killed mid-write (every worker is stopped now)


def dispatch_loop(ray: Any, args: argparse.Namespace, todo: list[Job], tally: Any, slots: list[Slot],
                  died: dict[str, int]) -> list[dict[str, Any]]:
    """Give each ready worker the next job until every job has a result; each worker process's stats."""
    from ray.exceptions import ActorDiedError, RayActorError, RayError, RayTaskError

    queue: deque[Job] = deque(todo)
    attempts: dict[str, int] = {job.id: died.get(job.id, 0) for job in todo}
    pending: dict[Any, tuple[str, Slot]] = {}
    old_stats: dict[str, dict[str, Any]] = {}  # by worker process: what dead workers did

    def ping(slot: Slot) -> None:
        slot.retry_at = 0.0
        pending[slot.actor.ready.remote()] = ("ready", slot)

    def dispatch(slot: Slot) -> None:
        if not queue:
            return
        job = pick(queue, slot.last_dance)
        attempts[job.id] += 1
        slot.job, slot.last_dance = job, job.dance_key()
        attempt = f", attempt {attempts[job.id]} of {args.max_attempts}" if attempts[job.id] > 1 else ""
        tally.start(job, f" on {slot.label()}{attempt}")
        pending[slot.actor.run.remote(job)] = ("run", slot)

    for slot in slots:
        ping(slot)
    waiting_since = time.monotonic()
    while queue or any(kind == "run" for kind, _ in pending.values()):
        now = time.monotonic()
        for slot in slots:
            if slot.retry_at and now >= slot.retry_at:
                ping(slot)
        if any(slot.info is not None for slot in slots):
            waiting_since = now
        elif now - waiting_since > NO_WORKER_TIMEOUT:
            raise render.RenderError(f"no worker has been alive for {NO_WORKER_TIMEOUT:.0f} s while {len(queue)} "
                                     "job(s) wait (see the errors above); finished jobs are kept, a rerun resumes")
        if not pending:
            if all(slot.gone for slot in slots):
                raise render.RenderError("no worker could start (see the errors above); finished jobs are kept")
            time.sleep(0.2)
            continue
        done_refs, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
        for ref in done_refs:
            kind, slot = pending.pop(ref)
            try:
                value = ray.get(ref)
            except RayTaskError as exc:  # the method itself raised: a bug, not a death
                if kind == "ready":
                    slot.gone = True
                    print(f"[batch] {slot.label()} could not start: {short_reason(exc)}", file=sys.stderr, flush=True)
                else:
                    job, slot.job = slot.job, None
                    tally.finish(job, failed_record(job, short_reason(exc), "job",
                                                    slot.info["where"] if slot.info else None, attempts[job.id]))
                    dispatch(slot)
                continue
            except RayActorError as exc:
                died_with = slot.job
                if slot.info is not None and slot.stats:
                    old_stats[slot.info["where"]] = slot.stats
                slot.info, slot.job, slot.stats = None, None, {}
                if kind == "ready" and isinstance(exc, ActorDiedError):
                    slot.gone = True
                    print(f"[batch] {slot.label()} could not start: {short_reason(exc)}", file=sys.stderr, flush=True)
                    continue
                if died_with is not None:
                    requeue_or_fail(died_with, exc, slot, attempts, args.max_attempts, queue, tally)
                if kind == "run":
                    ping(slot)  # answers once Ray has restarted it (or never, if its node is gone)
                else:
                    slot.retry_at = time.monotonic() + PING_INTERVAL
                continue
            except RayError as exc:  # e.g. the result was lost with its node
                print(f"[batch] {slot.label()}: {short_reason(exc)}", file=sys.stderr, flush=True)
                if kind == "run" and slot.job is not None:
                    requeue_or_fail(slot.job, exc, slot, attempts, args.max_attempts, queue, tally)
                    slot.job = None
                slot.info = None
                if kind == "run":
                    ping(slot)
                else:
                    slot.retry_at = time.monotonic() + PING_INTERVAL
                continue
            if kind == "ready":
                slot.info = value
                gpus = f" on GPU {','.join(value['gpus'])}" if value["gpus"] else ""
                print(f"[batch] {slot.label()} ready{gpus}, ComfyUI booted in {value['boot_seconds']} s", flush=True)
            else:
                job, slot.job = slot.job, None
                value["record"]["attempts"] = attempts[job.id]
                slot.stats = value["stats"]
                tally.finish(job, value["record"])
            dispatch(slot)
        for slot in slots:  # a job put back in the queue goes to a worker that had nothing left to do
            if slot.info is not None and slot.job is None:
                dispatch(slot)
    stats = dict(old_stats)
    stats.update({slot.stats["worker"]: slot.stats for slot in slots if slot.stats})
    return list(stats.values())


def requeue_or_fail(job: Job, exc: BaseException, slot: Slot, attempts: dict[str, int], max_attempts: int,
                    queue: deque[Job], tally: Any) -> None:
    reason = short_reason(exc)
    if attempts[job.id] >= max_attempts:
        tally.finish(job, failed_record(job, f"its worker died {attempts[job.id]} time(s) while rendering it (last: "
                                             f"{reason}); it may need more memory than a worker has", "worker", None,
                                        attempts[job.id]))
        return
    print(f"[batch] job {job.id}: worker {slot.number} died while rendering it ({reason}); it goes to the next free "
          f"worker (attempt {attempts[job.id] + 1} of {max_attempts})", file=sys.stderr, flush=True)
    queue.appendleft(job)


def stop_workers(ray: Any, slots: list[Slot]) -> None:
    """Let live workers delete their temporary files, then end every actor (no restart)."""
    alive = [slot for slot in slots if slot.info is not None]
    if alive:
        refs = [slot.actor.close.remote() for slot in alive]
        ray.wait(refs, num_returns=len(refs), timeout=CLOSE_TIMEOUT)
    for slot in slots:
        ray.kill(slot.actor, no_restart=True)
