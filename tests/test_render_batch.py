"""scripts/render_batch.py as users run it (a subprocess with the host's venv, --tiny models): a manifest of four jobs
(two photos on one dance, one on another, one corrupt photo) plus three malformed rows renders in one ComfyUI with
models loaded once and the shared dance's poses analysed once; the corrupt photo fails with its message while the
others finish; a rerun renders nothing."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image
from test_render import decode, draw_person, write_synthetic_video

from conftest import ROOT

BATCH = ROOT / "scripts" / "render_batch.py"
TIMEOUT = 900  # the whole first batch (boot + four tiny jobs); ~2 min alone, longer on a loaded machine

MANIFEST = """id,ref,driving,frames,stride,steps,seed,width,height
a1,ref1.png,dance_a.mp4,3,2,1,1,64,64
a2,photos/ref2.png,dance_a.mp4,3,2,1,1,64,64
b1,ref1.png,dance_b.mp4,3,2,1,2,64,64
bad,corrupt.png,dance_a.mp4,3,2,1,1,64,64
c1,missing.png,dance_a.mp4,3,2,1,1,64,64
c2,ref1.png,dance_a.mp4,three,2,1,1,64,64
a1,ref1.png,dance_b.mp4,3,2,1,1,64,64
"""


def run_batch(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, str(BATCH), *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=TIMEOUT)


def results(out: Path) -> dict[str, dict]:
    return {r["id"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}


@pytest.fixture(scope="session")
def batch(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """The batch's folder's manifest, its output folder and the run (one torch thread: tests/test_render_batch_ray.py
    compares Ray's videos with these)."""
    tmp = tmp_path_factory.mktemp("batch")
    write_synthetic_video(tmp / "dance_a.mp4", tone=True)
    write_synthetic_video(tmp / "dance_b.mp4", frames=10, width=112)
    (tmp / "photos").mkdir()
    for name, x in (("ref1.png", 40), ("photos/ref2.png", 60)):
        ref = np.full((160, 120, 3), 40, np.uint8)
        draw_person(ref, 20, 150, x, x + 40)
        Image.fromarray(ref).save(tmp / name)
    (tmp / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a picture" * 10)
    (tmp / "jobs.csv").write_text(MANIFEST)
    out = tmp / "renders"
    return tmp / "jobs.csv", out, run_batch("--tiny", "--threads", "1", "--manifest", str(tmp / "jobs.csv"), "--out",
                                            str(out))


def test_batch_renders_good_jobs_and_fails_the_corrupt_photo(batch):
    _, out, result = batch
    log = result.stdout
    assert result.returncode == 1, log[-4000:]  # a failed job and malformed rows: not a clean batch
    records = results(out)
    assert {k: r["status"] for k, r in records.items()} == {"a1": "done", "a2": "done", "b1": "done",
                                                             "bad": "failed"}, log[-4000:]
    assert "LoadImage" in records["bad"]["error"] and records["bad"]["outputs"] == []
    assert "job bad FAILED" in log
    for job in ("a1", "a2", "b1"):
        assert records[job]["outputs"] == [str(out / f"{job}.mp4"), str(out / f"{job}-side-by-side.mp4")]
        assert decode(out / f"{job}.mp4") == (3, 64, 64)  # the reference + driving frames 0 and 2
        assert decode(out / f"{job}-side-by-side.mp4") == (3, 128, 64)
        with av.open(str(out / f"{job}.mp4")) as container:
            assert container.streams.audio  # the dance's sound (silence for dance_b)
        assert len(records[job]["input_hash"]) == 16 and records[job]["seconds"] > 0
        assert records[job]["attempts"] == 1 and re.fullmatch(r"\S+ pid \d+", records[job]["worker"])
    assert records["a1"]["input_hash"] != records["a2"]["input_hash"]
    assert not [p.name for p in out.iterdir() if p.name.endswith(".part.mp4")]  # no partial files
    assert not (out / "bad.mp4").exists()
    assert log.count("[batch] progress: ") == 4 and "ETA" in log
    assert "summary: 3 rendered, 1 failed" in log
    # core's torchaudio import failures: one summary line, no traceback (the corrupt photo's own error stays loud)
    assert "IMPORT FAILED" not in log and "No module named 'torchaudio'" not in log
    assert "core node module(s) skipped, harmless" in log


def test_malformed_rows_are_reported_with_their_line_before_rendering(batch):
    _, _, result = batch
    log = result.stdout
    first_job = log.index("[batch] job ")
    for text in ("line 6: --ref", "line 7: frames 'three' is not a whole number",
                 "line 8: duplicate id 'a1' (first on line 2)"):
        assert text in log, log[:3000]
        assert log.index(text) < first_job


def test_models_load_once_and_a_dance_is_analysed_once(batch):
    _, _, result = batch
    log = result.stdout
    loads = re.search(r"\[batch\] model loader runs for 4 job\(s\): (.*); DWPose", log)
    assert loads, log[-3000:]
    counts = dict(item.rsplit(" x", 1) for item in loads.group(1).split(", "))
    assert "ControlNeXtUNetLoader" in counts and "ControlNeXtDWPoseLoader" in counts
    assert set(counts.values()) == {"1"}, counts  # every loader ran for the first job only
    # a2 uses a1's dance: its two driving frames are analysed once; b1 uses a1's photo: analysed once too (bad
    # fails before DWPose): a1 1 + 2 frames analysed, a2 1 (+ 2 reused), b1 2 (+ 1 reused)
    assert log.count("DWPose: poses of 2 frame(s) reused") == 1
    assert log.count("DWPose: poses of 1 frame(s) reused") == 1
    assert "; DWPose: 6 frame(s) analysed, 3 reused" in log


def test_rerun_renders_nothing(batch):
    manifest, out, _ = batch
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != ".batch.lock"}
    again = run_batch("--tiny", "--manifest", str(manifest), "--out", str(out))
    assert "4 job(s) in" in again.stdout and "0 to render, 3 already done, 1 failed before" in again.stdout
    assert "ComfyUI ready" not in again.stdout  # nothing to render: ComfyUI is not even booted
    assert "failed before: bad: node" in again.stdout
    assert again.returncode == 1
    # nothing written (results.jsonl included) but the lock naming the run
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != ".batch.lock"} == before
    retry = run_batch("--tiny", "--retry-failed", "--manifest", str(manifest), "--out", str(out))
    assert "1 to render, 3 already done" in retry.stdout and "job bad FAILED" in retry.stdout
    lines = (out / "results.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines].count("bad") == 2  # tried again, failed again


def two_jobs(manifest: Path, name: str) -> Path:
    """A manifest beside `manifest` (its rows' paths are relative to it) with its first two jobs: a1, a2 (one dance)."""
    lines = manifest.read_text().splitlines()
    small = manifest.with_name(name)
    small.write_text("\n".join(lines[:3]) + "\n")
    return small


def signal_batch(manifest: Path, out: Path, at_line: str, signum: int, delay: float = 0.0) -> tuple[int, str]:
    """Run a --tiny batch and send it `signum` `delay` seconds after it prints a line starting with `at_line`; its
    exit code and output."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, str(BATCH), "--tiny", "--manifest", str(manifest), "--out", str(out)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = []
    try:
        for line in proc.stdout:  # bounded: the process ends by itself at the latest
            log.append(line)
            if line.startswith(at_line):
                time.sleep(delay)
                proc.send_signal(signum)
                break
        rest, _ = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, "".join(log) + rest


def test_ctrl_c_stops_cleanly_and_the_next_run_resumes(batch, tmp_path):
    manifest, _, _ = batch
    small = two_jobs(manifest, "two.csv")
    out = tmp_path / "out"
    code, text = signal_batch(small, out, "[batch] job a2 (2/2", signal.SIGINT)  # Ctrl-C during the second job
    assert code == 130, text[-3000:]
    assert "interrupted: finished jobs are kept" in text
    assert list(results(out)) == ["a1"]
    assert sorted(p.name for p in out.iterdir()) == [".attempts.jsonl", ".batch.lock", "a1-side-by-side.mp4",
                                                     "a1.mp4", "results.jsonl"]
    again = run_batch("--tiny", "--manifest", str(small), "--out", str(out))
    assert again.returncode == 0, again.stdout[-3000:]
    assert "1 to render, 1 already done" in again.stdout
    assert {k: r["status"] for k, r in results(out).items()} == {"a1": "done", "a2": "done"}
    assert decode(out / "a2.mp4") == (3, 64, 64)


def test_a_job_that_killed_the_batch_runs_last_on_the_rerun(batch, tmp_path):
    """The batch process SIGKILLed mid-job (as the kernel's out-of-memory killer does): the rerun renders the other
    job first and that one last, as its second attempt; no partial file is left."""
    manifest, _, _ = batch
    small = two_jobs(manifest, "two-killed.csv")
    out = tmp_path / "out"
    code, text = signal_batch(small, out, "[batch] job a1 (1/2", signal.SIGKILL, delay=1.0)  # 1 s into the job
    assert code == -signal.SIGKILL and "a1" not in results_or_none(out), text[-3000:]

    again = run_batch("--tiny", "--manifest", str(small), "--out", str(out))
    log = again.stdout
    assert again.returncode == 0, log[-3000:]
    assert "job a1: 1 earlier run(s) ended while rendering it" in log, log[-3000:]
    assert log.index("[batch] job a2 (1/2") < log.index("[batch] job a1 (2/2, manifest line 2), attempt 2 of 3")
    records = results(out)
    assert (records["a1"]["status"], records["a1"]["attempts"], records["a2"]["attempts"]) == ("done", 2, 1)
    assert not [p.name for p in out.iterdir() if p.name.endswith(".part.mp4")]


def results_or_none(out: Path) -> dict[str, dict]:
    return results(out) if (out / "results.jsonl").exists() else {}
