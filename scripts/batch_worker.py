"""One ComfyUI rendering job after job for scripts/render_batch.py: in the batch's own process (the default) or in
each Ray actor (scripts/batch_ray.py). Booted once; ComfyUI's classic cache stays on, so unchanged loader nodes (the
models) do not run again; jobs of one dance share its trimmed copy and decoded frames; DWPose's detections are kept
by frame content for the photos that follow. A job's own failure is returned as a failed result, never raised."""

from __future__ import annotations

import copy
import hashlib
import os
import re
import shutil
import socket
import tempfile
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import render  # scripts/render.py (scripts/ is on sys.path when the batch runs)
from batch_manifest import Job, failed_record

POSE_MEMO_SIZE = 8  # dances whose detections are kept (jobs are grouped by dance, so one is enough in order)
WORK_PREFIX = "controlnext-batch-"  # + pid + "-": a runner's temporary folder (tiny models, trimmed dances)
JOB_ERRORS = (render.RenderError, ValueError, OSError, RuntimeError)  # what a job's own failure raises


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


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_left_by_dead_processes(folder: Path, pattern: re.Pattern[str]) -> None:
    """Delete the files and folders in `folder` whose name `pattern` matches with, as its group 1, the id of a process
    of this machine that is gone (killed: a process that ends normally deletes its own)."""
    for path in folder.iterdir():
        match = pattern.match(path.name)
        if match and not pid_alive(int(match[1])):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def remove_stale_inputs(input_dir: Path) -> None:
    """The copies that killed processes of this machine left in ComfyUI's input folder (render.input_tag)."""
    remove_left_by_dead_processes(input_dir, re.compile(rf"^render-{re.escape(socket.gethostname())}-(\d+)-"
                                                        r"[0-9a-f]{8}-"))


def remove_stale_work_dirs() -> None:
    """The temporary folders of runners whose process was killed."""
    remove_left_by_dead_processes(Path(tempfile.gettempdir()), re.compile(rf"^{re.escape(WORK_PREFIX)}(\d+)-"))


class JobRunner:
    """A booted ComfyUI with a cached executor that renders jobs one after the other (see the module's text).

    threads: torch's CPU thread count for every job, if given (CPU results depend on it slightly: the same count
    gives the same video in every mode)."""

    def __init__(self, tiny: bool, threads: int | None = None) -> None:
        remove_stale_work_dirs()
        self.tiny, self.threads = tiny, threads
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{WORK_PREFIX}{os.getpid()}-"))
        self.host: render.Host | None = None  # boot() sets it, and the three below
        self.server: CountingServer | None = None
        self.executor: Any = None
        self.memo: PoseMemo | None = None
        self.drivings: dict[tuple, tuple] = {}
        self.graphs: dict[tuple, dict] = {}
        self.jobs = 0
        self.where = f"{socket.gethostname()} pid {os.getpid()}"

    def boot(self) -> float:
        """Boot ComfyUI (once); the seconds it took."""
        if self.host is not None:
            return 0.0
        t0 = time.monotonic()
        self.host = render.Host(self.tiny, self.tmp)
        remove_stale_inputs(self.host.input_dir)
        import server
        from comfy_boot import make_executor  # scripts/ is on sys.path when the batch runs

        self.server = CountingServer()
        server.PromptServer.instance = self.server
        # classic cache: a node whose inputs did not change since the previous job is not run again
        self.executor = make_executor(self.host.execution, self.server, self.host.execution.CacheType.CLASSIC)
        self.memo = PoseMemo()
        return time.monotonic() - t0

    def run(self, job: Job) -> dict[str, Any]:
        """Render one job and write its outputs; its results.jsonl record (status done or failed)."""
        self.boot()
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)
        self.jobs += 1
        started = time.monotonic()
        try:
            key = (str(job.args.workflow), job.args.pose_video)
            if key not in self.graphs:
                self.graphs[key] = self.host.graph(job.args.workflow, job.args.pose_video)
            rendered = render.render(job.args, self.host, self.graphs[key], self.executor, self.drivings)
            rendered.write(job.args.out)
        except JOB_ERRORS as exc:
            return failed_record(job, str(exc).strip() or type(exc).__name__, "job", self.where,
                                 seconds=time.monotonic() - started)
        return {"id": job.id, "status": "done", "outputs": [str(p) for p in job.outputs],
                "seconds": round(time.monotonic() - started, 2), "error": None, "input_hash": job.input_hash,
                "worker": self.where}

    def stats(self) -> dict[str, Any]:
        """What this runner did: jobs, loader node runs (each model load), DWPose frames analysed and reused."""
        ran = self.server.ran if self.server is not None else {}
        loaders = {k: v for k, v in sorted(ran.items()) if k.endswith("Loader") or k.startswith("ControlNeXtTestTiny")}
        memo = self.memo
        return {"worker": self.where, "jobs": self.jobs, "loader_runs": loaders,
                "poses_analysed": memo.detected_frames if memo else 0,
                "poses_reused": memo.reused_frames if memo else 0}

    def close(self) -> None:
        """Delete the shared dance copies and the temporary folder."""
        for path, *_ in self.drivings.values():
            path.unlink(missing_ok=True)
        self.drivings.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)


def describe_stats(stats: dict[str, Any]) -> str:
    """One line: what a runner loaded and analysed for how many jobs."""
    loads = ", ".join(f"{k} x{v}" for k, v in stats["loader_runs"].items()) or "none"
    return (f"model loader runs for {stats['jobs']} job(s): {loads}; DWPose: {stats['poses_analysed']} frame(s) "
            f"analysed, {stats['poses_reused']} reused")
