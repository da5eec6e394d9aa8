"""The batch renderer's small rules, in-process (the whole batch runs in tests/test_render_batch.py and, on Ray, in
tests/test_render_batch_ray.py): the results log survives a line cut short by a crash, which failed jobs a rerun
tries again, what is deleted of a killed render, which Ray addresses are loopback, which waiting job a worker takes,
and the command line's checks."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import deque
from pathlib import Path
from types import ModuleType

import pytest
import tomllib
from test_render_batch import draw_person

from conftest import ROOT


@pytest.fixture(scope="module")
def batch_modules() -> dict[str, ModuleType]:
    """scripts/batch_manifest.py, batch_ray.py and render_batch.py as the batch imports them (scripts/ on sys.path:
    no name there shadows one of ComfyUI's modules)."""
    import importlib
    import sys

    added = str(ROOT / "scripts") not in sys.path
    if added:
        sys.path.insert(0, str(ROOT / "scripts"))
    try:
        yield {name: importlib.import_module(name) for name in ("batch_manifest", "batch_ray", "render_batch")}
    finally:
        if added:
            sys.path.remove(str(ROOT / "scripts"))


@pytest.fixture
def job_files(tmp_path: Path) -> Path:
    import av
    import numpy as np
    from PIL import Image

    img = np.full((64, 48, 3), 40, np.uint8)
    draw_person(img, 4, 60, 10, 30)
    Image.fromarray(img).save(tmp_path / "ref.png")
    with av.open(str(tmp_path / "dance.mp4"), "w") as out:
        stream = out.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 48, 64, "yuv420p"
        for _ in range(2):
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    (tmp_path / "dance2.mp4").write_bytes((tmp_path / "dance.mp4").read_bytes())  # another dance (by path)
    (tmp_path / "jobs.csv").write_text("id,ref,driving\nj1,ref.png,dance.mp4\nj2,ref.png,dance2.mp4\n"
                                       "j3,ref.png,dance2.mp4\n")
    return tmp_path


def test_a_result_line_cut_short_by_a_crash_does_not_swallow_the_next(batch_modules, tmp_path):
    manifest = batch_modules["batch_manifest"]
    (tmp_path / "results.jsonl").write_text(json.dumps({"id": "a", "status": "done"}) + "\n" + '{"id": "b", "sta')
    manifest.append_result(tmp_path, {"id": "c", "status": "failed"})
    assert manifest.read_results(tmp_path) == {"a": {"id": "a", "status": "done"},
                                               "c": {"id": "c", "status": "failed"}}


def test_a_rerun_skips_failed_jobs_while_their_inputs_are_unchanged(batch_modules, job_files):
    manifest = batch_modules["batch_manifest"]
    jobs, problems = manifest.load_manifest(job_files / "jobs.csv", job_files / "out", tiny=True)
    assert not problems and [j.id for j in jobs] == ["j1", "j2", "j3"]
    job = jobs[0]
    failed = {"id": "j1", "status": "failed", "input_hash": job.input_hash}
    assert manifest.previous_outcome(job, {"j1": {**failed, "cause": "job"}}, retry_failed=False) == "failed"
    assert manifest.previous_outcome(job, {"j1": {**failed, "cause": "job"}}, retry_failed=True) is None
    # failed because the process rendering it kept dying: not tried again either (until --retry-failed)
    assert manifest.previous_outcome(job, {"j1": {**failed, "cause": "worker"}}, retry_failed=False) == "failed"
    # a changed input (another hash) runs again whatever happened before
    assert manifest.previous_outcome(job, {"j1": {**failed, "input_hash": "0" * 16}}, retry_failed=False) is None
    # done, but an output was deleted since: rendered again
    assert manifest.previous_outcome(job, {"j1": {**failed, "status": "done"}}, retry_failed=False) is None


def test_runs_that_died_are_counted_per_job_until_the_job_ends(batch_modules, job_files):
    manifest = batch_modules["batch_manifest"]
    out = job_files / "out"
    out.mkdir()
    jobs, _ = manifest.load_manifest(job_files / "jobs.csv", out, tiny=True)
    j1, j2, j3 = jobs
    for job in (j1, j2, j1, j3):
        manifest.record_start(out, job)
    manifest.append_result(out, {"id": "j2", "status": "done", "input_hash": j2.input_hash})
    manifest.record_end(out, j3.id, j3.input_hash, "interrupted")  # Ctrl-C: not a death
    assert manifest.died_attempts(out) == {("j1", j1.input_hash): 2}
    manifest.append_result(out, {"id": "j1", "status": "failed", "input_hash": j1.input_hash})
    assert manifest.died_attempts(out) == {}  # a result ends the count: --retry-failed starts afresh


def test_jobs_a_run_died_in_go_last_and_fail_at_once_after_their_attempts(batch_modules, job_files):
    jobs, _ = batch_modules["batch_manifest"].load_manifest(job_files / "jobs.csv", job_files / "out", tiny=True)
    plan = batch_modules["render_batch"].plan
    j1, j2, j3 = jobs
    order, worn_out = plan(jobs, {"j1": 1}, max_attempts=3)
    assert [j.id for j in order] == ["j2", "j3", "j1"] and worn_out == []
    order, worn_out = plan(jobs, {"j1": 3, "j3": 1}, max_attempts=3)
    assert [j.id for j in order] == ["j2", "j3"] and [j.id for j in worn_out] == ["j1"]


def test_only_the_temporary_files_of_the_killed_job_are_removed(batch_modules, job_files):
    manifest = batch_modules["batch_manifest"]
    jobs, _ = manifest.load_manifest(job_files / "jobs.csv", job_files / "out", tiny=True)
    out = job_files / "out"
    out.mkdir()
    names = [".j1.mp4.0a1b2c.part.mp4", ".j1-side-by-side.mp4.ffffff.part.mp4",  # j1's partial files
             ".j2.mp4.0a1b2c.part.mp4", "j1.mp4", ".j1.mp4.notes", "j1.mp4.0a1b2c.part.mp4"]  # not
    for name in names:
        (out / name).write_bytes(b"x")
    removed = manifest.remove_partial_outputs(jobs[:1])
    assert sorted(p.name for p in removed) == sorted(names[:2])
    assert sorted(p.name for p in out.iterdir()) == sorted(names[2:])


def test_loopback_addresses(batch_modules):
    is_loopback = batch_modules["batch_ray"].is_loopback
    assert all(map(is_loopback, ["127.0.0.1:6379", "localhost:6379", "127.0.0.2:1", "[::1]:6379"]))
    assert not any(map(is_loopback, ["10.0.0.5:6379", "head.example.com:6379", "ray://10.0.0.5:10001"]))


def test_a_worker_takes_a_waiting_job_of_its_last_dance_first(batch_modules, job_files):
    jobs, _ = batch_modules["batch_manifest"].load_manifest(job_files / "jobs.csv", job_files / "out", tiny=True)
    pick = batch_modules["batch_ray"].pick
    j1, j2, j3 = jobs
    queue = deque(jobs)
    assert pick(queue, j3.dance_key()).id == "j2"  # dance2's first
    assert pick(queue, ("elsewhere",)).id == "j1"  # none of its dance: the first waiting
    assert pick(queue, None).id == "j3" and not queue


@pytest.mark.parametrize(("argv", "message"), [
    (["--workers", "2"], "--workers needs --ray"),
    (["--ray", "local", "--workers", "0"], "--workers must be >= 1"),
    (["--threads", "0"], "--threads must be >= 1"),
    (["--ray", "local", "--max-attempts", "0"], "--max-attempts must be >= 1"),
])
def test_command_line_errors(batch_modules, job_files, capsys, argv, message):
    with pytest.raises(SystemExit):
        batch_modules["render_batch"].parse_args(["--manifest", str(job_files / "jobs.csv"), "--out",
                                                  str(job_files / "out"), *argv])
    assert message in capsys.readouterr().err


def test_ray_is_the_version_pinned_everywhere():
    """scripts/setup_ray.sh installs the Ray that pyproject's `scale` extra names, and scripts/ray.sh runs it."""
    pinned = re.search(r"^RAY_VERSION=(\S+)", (ROOT / "scripts" / "setup_ray.sh").read_text(), re.M)[1]
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["scale"]
    assert extra == [f"ray=={pinned}"]
    result = subprocess.run(["bash", str(ROOT / "scripts" / "ray.sh"), "--version"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, timeout=300)
    assert result.returncode == 0 and f"ray, version {pinned}" in result.stdout, result.stdout[-2000:]


def test_a_job_whose_worker_died_is_queued_first_until_its_attempts_are_used_up(batch_modules, job_files,
                                                                                 monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(ROOT / ".host" / "ray-site"))
    from ray.exceptions import ActorDiedError

    batch_ray, render_batch = batch_modules["batch_ray"], batch_modules["render_batch"]
    out = job_files / "out"
    out.mkdir()
    jobs, _ = batch_modules["batch_manifest"].load_manifest(job_files / "jobs.csv", out, tiny=True)
    j1, j2, j3 = jobs
    tally = render_batch.Tally(out, 3)
    queue = deque([j2, j3])
    slot = batch_ray.Slot(2, actor=None)
    batch_ray.requeue_or_fail(j1, ActorDiedError(), slot, {"j1": 1}, 3, queue, tally)
    assert [j.id for j in queue] == ["j1", "j2", "j3"] and not tally.failed
    err = capsys.readouterr().err
    assert "job j1: worker 2 died while rendering it (ActorDiedError" in err and "(attempt 2 of 3)" in err
    batch_ray.requeue_or_fail(j1, ActorDiedError(), slot, {"j1": 3}, 3, queue, tally)
    record = batch_modules["batch_manifest"].read_results(out)["j1"]
    assert (record["status"], record["cause"], record["attempts"]) == ("failed", "worker", 3)
    assert record["error"].startswith("its worker died 3 time(s) while rendering it (last: ActorDiedError")
    assert [j.id for j in queue] == ["j1", "j2", "j3"]  # not queued again


def test_a_second_batch_on_the_same_folder_is_refused_while_the_first_runs(batch_modules, job_files):
    manifest = batch_modules["batch_manifest"]
    out = job_files / "out"
    out.mkdir()
    with manifest.output_lock(out):  # as a running batch holds it
        result = subprocess.run([sys.executable, str(ROOT / "scripts" / "render_batch.py"), "--tiny", "--manifest",
                                 str(job_files / "jobs.csv"), "--out", str(out)], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, timeout=120)
        assert result.returncode == 2, result.stdout[-2000:]
        assert f"another batch is writing to {out} (" in result.stdout and "pid " in result.stdout
        assert "ComfyUI ready" not in result.stdout
    with manifest.output_lock(out):  # released when the holder ends
        pass
    assert sorted(p.name for p in out.iterdir()) == [".batch.lock"]
