"""scripts/render_batch.py --ray on a real Ray (scripts/setup_ray.sh's, on loopback only) with real ComfyUI workers and
tiny models: the embedded batch's manifest on two local workers, one of them SIGKILLed mid-job, gives the same videos
as the embedded batch; a two-node cluster that loses the node of a running job finishes it on the other node.

Every Ray process these tests start is checked to listen on loopback only and to be gone afterwards, and every file
Ray and the workers write goes to a temporary folder (TMPDIR) that must be empty at the end."""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from test_render_batch import BATCH, batch, results  # noqa: F401  (batch: the session fixture, reused)

from conftest import ROOT

RAY_SITE = ROOT / ".host" / "ray-site"
TIMEOUT = 300  # one Ray batch: Ray ~6 s, two ComfyUI boots at once ~25 s, a restart, a few tiny jobs
STARTED = re.compile(r"^\[batch\] job (?P<id>\S+) \(.*\) on worker (?P<n>\d+) \((?P<host>\S+) pid (?P<pid>\d+), "
                     r"node (?P<node>[0-9a-f]+)\)")
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """TMPDIR for a batch and its Ray: short (Ray's Unix socket paths under it must stay below 107 characters)."""
    path = Path(tempfile.mkdtemp(prefix="cnt-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def ray_env(tmp: Path) -> dict[str, str]:
    if not (RAY_SITE / "ray").is_dir():
        pytest.fail(f"no Ray at {RAY_SITE}: scripts/test.sh installs it with scripts/setup_ray.sh")
    return dict(os.environ, PYTHONUNBUFFERED="1", TMPDIR=str(tmp), RAY_TMPDIR=str(tmp), RAY_USAGE_STATS_ENABLED="0",
                RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")


def process_tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def remember(seen: dict[int, tuple[psutil.Process, str]], processes: list[psutil.Process]) -> None:
    """Keep each process with its name (read while it runs)."""
    for proc in processes:
        if proc.pid not in seen:
            try:
                seen[proc.pid] = (proc, proc.name())
            except psutil.NoSuchProcess:
                continue


def non_loopback_listeners(processes: list[psutil.Process]) -> list[str]:
    """'name pid address:port' of every listening socket of `processes` that is not on a loopback address."""
    bad = []
    for proc in processes:
        try:
            connections = proc.net_connections(kind="inet")
            name = proc.name()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        for conn in connections:
            if conn.status == psutil.CONN_LISTEN and conn.laddr.ip not in LOOPBACK:
                bad.append(f"{name} {proc.pid} {conn.laddr.ip}:{conn.laddr.port}")
    return bad


def run_streaming(cmd: list[str], env: dict[str, str], on_line: Callable[[str, subprocess.Popen], None],
                  seen: dict[int, tuple[psutil.Process, str]]) -> tuple[int, str]:
    """Run `cmd`, calling on_line for each output line (read with a bounded wait); every process of its tree that
    was ever seen is collected in `seen`. Returns (exit code, whole output)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue[str | None] = queue.Queue()

    def reader() -> None:
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=reader, daemon=True).start()
    log: list[str] = []
    deadline = time.monotonic() + TIMEOUT
    try:
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=1.0)
            except queue.Empty:
                remember(seen, process_tree(proc.pid))
                continue
            if line is None:
                break
            log.append(line)
            remember(seen, process_tree(proc.pid))
            on_line(line, proc)
        else:
            batch_lines = "".join(line for line in log if line.startswith("[batch]"))
            pytest.fail(f"the batch did not end in {TIMEOUT} s; its own lines:\n{batch_lines}\nthe end of its "
                        f"output:\n{''.join(log)[-3000:]}")
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, "".join(log)


def running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def assert_all_gone(seen: dict[int, tuple[psutil.Process, str]], tmp: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(running(p) for p, _ in seen.values()):
        time.sleep(0.5)
    left = [f"{name} {p.pid}" for p, name in seen.values() if running(p)]
    assert not left, f"processes left running: {left}"
    # what libraries keep per user in any TMPDIR, run after run (onnxruntime's session id file, torch's compile cache
    # folder), is not the batch's; everything else must be gone
    library_files = {".ses", f"torchinductor_{os.environ.get('USER') or psutil.Process().username()}"}
    left_files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*")
                        if p.relative_to(tmp).parts[0] not in library_files)
    assert not left_files, f"files left in the batch's TMPDIR: {left_files[:20]}"


def test_two_local_workers_survive_a_killed_worker_and_match_the_embedded_batch(batch, short_tmp):  # noqa: F811
    manifest, embedded_out, _ = batch
    out = short_tmp.parent / f"{short_tmp.name}-out"
    env = ray_env(short_tmp)
    seen: dict[int, tuple[psutil.Process, str]] = {}
    killed: dict[str, str] = {}
    listeners: list[str] = []

    def on_line(line: str, proc: subprocess.Popen) -> None:
        match = STARTED.match(line)
        if match and match["id"] == "a2" and not killed:
            listeners.extend(non_loopback_listeners(process_tree(proc.pid)))
            killed.update(match.groupdict())
            time.sleep(0.5)  # into the job
            os.kill(int(match["pid"]), signal.SIGKILL)

    try:
        cmd = [sys.executable, str(BATCH), "--tiny", "--threads", "1", "--ray", "local", "--workers", "2",
               "--manifest", str(manifest), "--out", str(out)]
        code, log = run_streaming(cmd, env, on_line, seen)
        assert killed, log[-4000:]
        assert code == 1, log[-4000:]  # the corrupt photo and the malformed rows
        assert not listeners, f"Ray listens beyond loopback: {listeners}"
        assert [name for _, name in seen.values()].count("raylet") == 1, "not one local Ray node"

        records = results(out)
        assert {k: r["status"] for k, r in records.items()} == {"a1": "done", "a2": "done", "b1": "done",
                                                                 "bad": "failed"}, log[-4000:]
        assert f"job a2: worker {killed['n']} died while rendering it" in log
        assert records["a2"]["attempts"] == 2 and records["a2"]["worker"] != f"{killed['host']} pid {killed['pid']}"
        # a job's own failure is not retried
        assert records["bad"]["attempts"] == 1 and records["bad"]["cause"] == "job"
        assert "LoadImage" in records["bad"]["error"] and log.count("job bad (") == 1
        for job in ("a1", "a2", "b1"):  # the same bytes as the embedded batch (both pinned to one torch thread)
            for name in (f"{job}.mp4", f"{job}-side-by-side.mp4"):
                assert (out / name).read_bytes() == (embedded_out / name).read_bytes(), name
        assert sorted(p.name for p in out.iterdir()) == sorted(
            [".attempts.jsonl", ".batch.lock", "results.jsonl"] + [f"{j}{s}.mp4" for j in ("a1", "a2", "b1")
                                                    for s in ("", "-side-by-side")])

        # each worker process (the killed one's restart included) loaded every model once
        workers = re.findall(r"^\[batch\] worker (\S+ pid \d+): model loader runs for (\d+) job\(s\): (.*); DWPose",
                             log, re.M)
        assert workers and sum(int(n) for _, n, _ in workers) >= 4, log[-3000:]
        for where, _, loads in workers:
            counts = dict(item.rsplit(" x", 1) for item in loads.split(", "))
            assert "ControlNeXtUNetLoader" in counts and set(counts.values()) == {"1"}, (where, counts)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    assert_all_gone(seen, short_tmp)


def test_a_lost_node_s_job_finishes_on_the_other_node(batch, short_tmp, monkeypatch):  # noqa: F811
    manifest, embedded_out, _ = batch
    env = ray_env(short_tmp)
    for name in ("TMPDIR", "RAY_TMPDIR", "RAY_USAGE_STATS_ENABLED", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"):
        monkeypatch.setenv(name, env[name])
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() reads TMPDIR again
    # the nodes' processes inherit this environment: scripts/ and Ray on their path, as scripts/ray.sh gives them
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT / "scripts"), str(RAY_SITE)]))
    monkeypatch.syspath_prepend(str(RAY_SITE))
    from ray.cluster_utils import Cluster

    small = manifest.with_name("three.csv")  # beside the manifest: its rows' paths are relative to it
    small.write_text("\n".join(manifest.read_text().splitlines()[:4]) + "\n")  # a1, a2, b1
    out = short_tmp.parent / f"{short_tmp.name}-out"
    seen: dict[int, tuple[psutil.Process, str]] = {}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "node_ip_address": "127.0.0.1",
                                                            "include_dashboard": False})
    removed: dict[str, str] = {}
    try:
        # one (fake) GPU per node: the default is one worker per GPU, each given its own
        nodes = [cluster.add_node(num_cpus=1, num_gpus=1, node_ip_address="127.0.0.1") for _ in range(2)]
        remember(seen, process_tree(os.getpid())[1:])

        def on_line(line: str, proc: subprocess.Popen) -> None:
            match = STARTED.match(line)
            if match and not removed:
                node = next(n for n in nodes if n.node_id.startswith(match["node"]))
                remember(seen, process_tree(os.getpid())[1:])
                listeners = non_loopback_listeners([p for p, _ in seen.values()])
                assert not listeners, f"Ray listens beyond loopback: {listeners}"
                removed.update(match.groupdict())
                time.sleep(0.5)  # into the job
                cluster.remove_node(node, allow_graceful=False)

        cmd = [sys.executable, str(BATCH), "--tiny", "--threads", "1", "--ray", cluster.address,
               "--manifest", str(small), "--out", str(out)]
        code, log = run_streaming(cmd, env, on_line, seen)
        assert removed, log[-4000:]
        assert code == 0, log[-4000:]
        assert "2 worker(s), each num_gpus=1, num_cpus=1" in log
        assert len(re.findall(r"^\[batch\] worker \d .* ready on GPU 0,", log, re.M)) >= 2, log[-4000:]
        records = results(out)
        assert {k: r["status"] for k, r in records.items()} == {"a1": "done", "a2": "done", "b1": "done"}
        lost = records[removed["id"]]
        assert lost["attempts"] == 2 and lost["worker"] != f"{removed['host']} pid {removed['pid']}", lost
        assert f"job {removed['id']}: worker {removed['n']} died while rendering it" in log
        for name in (f"{removed['id']}.mp4", f"{removed['id']}-side-by-side.mp4"):
            assert (out / name).read_bytes() == (embedded_out / name).read_bytes(), name
        assert not [p.name for p in out.iterdir() if p.name.endswith(".part.mp4")]  # no partial files
    finally:
        cluster.shutdown()
        shutil.rmtree(short_tmp / "ray", ignore_errors=True)  # the test's own cluster's session (its logs)
        shutil.rmtree(out, ignore_errors=True)
        small.unlink(missing_ok=True)
    assert_all_gone(seen, short_tmp)

