"""scripts/render.py as users run it (a subprocess with the host's venv): --tiny on generated media with a sound track
and on media without one (the shared sample, else a generated clip), and the missing-models error. The runs start
together (each boots its own ComfyUI, ~25 s here)."""

from __future__ import annotations

import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, SHARED_MEDIA

RENDER = ROOT / "scripts" / "render.py"
REAL_MODELS = [  # what the example workflow loads; when all are installed the missing-models run cannot happen
    ROOT / ".host" / "base" / "models" / "checkpoints" / "svd_xt_1_1.safetensors",
]
TIMEOUT = 480  # per render; a render takes ~30 s alone, several minutes on a machine loaded 5x over


TONE_START = 0.5  # seconds: the toned clip's frame 0 is shown here, and its tone starts here (silence before)


def draw_person(img: np.ndarray, top: int, bottom: int, left: int, right: int) -> None:
    """A bright block (the fake detector's person box) with the fake pose model's markers on it: nose (red) and
    shoulders (green, blue) apart, so that the pose fit and the pose stages get a real skeleton, not one point."""
    from tiny_pack import fake_dwpose

    img[top:bottom, left:right] = 240
    x = (left + right) / 2
    fake_dwpose.draw_marker(img, x, top + 10, fake_dwpose.R, radius=6)
    fake_dwpose.draw_marker(img, x + 10, top + 25, fake_dwpose.G, radius=6)
    fake_dwpose.draw_marker(img, x - 10, top + 26, fake_dwpose.B, radius=6)


def write_synthetic_video(path: Path, frames: int = 8, width: int = 96, height: int = 128,
                          tone: bool = False) -> None:
    """A dark clip with a bright 'person' block moving right (the fake detector boxes bright pixels). With `tone`
    its frames start at TONE_START and so does a 440 Hz tone in a 2 s sound track (silence before): sound read from
    0 s instead of frame 0's time would be silent."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(24))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        sound = out.add_stream("aac", rate=48000, layout="mono") if tone else None
        for i in range(frames):
            img = np.full((height, width, 3), 30, np.uint8)
            draw_person(img, 30, 110, 20 + 4 * i, 50 + 4 * i)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            if tone:
                frame.pts, frame.time_base = i + round(TONE_START * 24), Fraction(1, 24)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
        if sound is not None:
            t = np.arange(2 * 48000) / 48000
            wave = (0.5 * np.sin(2 * np.pi * 440 * t) * (t >= TONE_START)).astype(np.float32)[None]
            block = av.AudioFrame.from_ndarray(wave, format="fltp", layout="mono")
            block.sample_rate, block.pts, block.time_base = 48000, 0, Fraction(1, 48000)
            for packet in [*sound.encode(block), *sound.encode(None)]:
                out.mux(packet)


def decode_audio(path: Path) -> tuple[float, np.ndarray, int]:
    """(time of the first sound block, samples [channels, n], sample rate) of an mp4's sound track."""
    with av.open(str(path)) as container:
        assert container.streams.audio, f"{path.name} has no sound track"
        blocks = list(container.decode(audio=0))
    return float(blocks[0].time or 0.0), np.concatenate([b.to_ndarray() for b in blocks], axis=1), blocks[0].rate


def check_sound(out: Path, span: float, fps: float, toned: bool) -> None:
    """Both outputs carry the kept span's sound: `span` seconds (within one output frame) from the video's start;
    the tone throughout if `toned`, else silence."""
    for path in (out, out.with_name("out-side-by-side.mp4")):
        first, samples, rate = decode_audio(path)
        assert abs(first) < 1 / fps  # it starts with frame 0, as in the example workflows
        assert abs(samples.shape[1] / rate - span) < 1 / fps, (samples.shape[1] / rate, span)
        middle = samples[:, round(0.1 * span * rate):round(0.9 * span * rate)]
        rms = float(np.sqrt(np.mean(middle ** 2)))
        assert (rms > 0.2) if toned else (rms < 1e-4), rms


def decode(path: Path) -> tuple[int, int, int]:
    """(frames, width, height) actually decoded from an mp4."""
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return len(frames), frames[0].shape[1], frames[0].shape[0]


def start(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, str(RENDER), *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Every render of this module, started at once, as {name: (Popen, out path)}."""
    tmp = tmp_path_factory.mktemp("render")
    write_synthetic_video(tmp / "dance.mp4", tone=True)
    ref = np.full((160, 120, 3), 40, np.uint8)
    draw_person(ref, 20, 150, 40, 80)
    Image.fromarray(ref).save(tmp / "ref.png")
    small = ["--width", "64", "--height", "64", "--steps", "1", "--seed", "3"]
    jobs = {"generated": ["--tiny", "--ref", str(tmp / "ref.png"), "--driving", str(tmp / "dance.mp4"),
                          "--frames", "4", "--stride", "2", *small]}
    if not all(p.is_file() for p in REAL_MODELS):  # else this would be a real (long) render
        jobs["missing"] = ["--ref", str(tmp / "ref.png"), "--driving", str(tmp / "dance.mp4"), "--frames", "3"]
    if (SHARED_MEDIA / "dance-01.mp4").is_file():  # it has no sound track
        jobs["silent"] = ["--tiny", "--ref", str(SHARED_MEDIA / "ref-01.jpeg"), "--driving",
                          str(SHARED_MEDIA / "dance-01.mp4"), "--frames", "3", "--stride", "3", *small]
    else:
        write_synthetic_video(tmp / "silent.mp4")
        jobs["silent"] = ["--tiny", "--ref", str(tmp / "ref.png"), "--driving", str(tmp / "silent.mp4"),
                          "--frames", "3", "--stride", "3", *small]
    procs = {}
    for name, args in jobs.items():
        out = tmp / name / "out.mp4"
        procs[name] = (start([*args, "--out", str(out)]), out)
    yield procs
    for proc, _ in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def finish(runs: dict, name: str) -> tuple[subprocess.CompletedProcess, Path]:
    proc, out = runs[name]
    stdout, stderr = proc.communicate(timeout=TIMEOUT)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), out


def check_outputs(result: subprocess.CompletedProcess, out: Path, frames: int) -> None:
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("PLUMBING CHECK: random weights, the output is noise") == 2  # at start and at end
    assert decode(out) == (frames, 64, 64)
    assert decode(out.with_name("out-side-by-side.mp4")) == (frames, 128, 64)  # pose | generated
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []  # no partial files left


def test_tiny_render_on_generated_media_keeps_the_sound_of_the_kept_span(runs):
    result, out = finish(runs, "generated")
    check_outputs(result, out, frames=4)  # frame 0 (the reference) + driving frames 0, 2, 4
    assert "/1" in result.stdout  # per-node step/total progress was printed (1 step)
    # driving frames 0, 2, 4 of a 24 fps clip stand for 3 * 2 / 24 s from frame 0's time (0.5 s: the tone's start)
    check_sound(out, span=3 * 2 / 24, fps=12, toned=True)
    assert "IMPORT FAILED" not in result.stdout + result.stderr  # core's torchaudio failures: one summary line
    assert "Traceback" not in result.stderr


def test_tiny_render_without_sound_gets_silence_of_the_span(runs):
    result, out = finish(runs, "silent")
    check_outputs(result, out, frames=3)
    driving = Path(runs["silent"][0].args[runs["silent"][0].args.index("--driving") + 1])
    with av.open(str(driving)) as container:
        fps = float(container.streams.video[0].average_rate)
    check_sound(out, span=2 * 3 / fps, fps=fps // 3, toned=False)  # driving frames 0 and 3


def test_missing_models_error_names_files_and_setup_command(runs):
    if "missing" not in runs:
        pytest.skip("the real model files are installed in .host/base/models: nothing is missing")
    result, out = finish(runs, "missing")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "missing model files" in result.stderr
    assert "svd_xt_1_1.safetensors" in result.stderr
    assert "python scripts/setup_models.py --download" in result.stderr
    assert not out.exists() and not out.parent.exists()


def load_render_module():
    """scripts/render.py by path (it imports nothing of ComfyUI at module level)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("controlnext_render_script", RENDER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_driving_video_is_strided_trimmed_and_resized_for_pose_videos(tmp_path):
    render = load_render_module()
    write_synthetic_video(tmp_path / "in.mp4", frames=8)
    count, fps, first_time = render.trim_video(tmp_path / "in.mp4", tmp_path / "a.mp4", stride=3, limit=0)
    assert (count, round(fps), first_time) == (3, 24, 0.0)
    assert decode(tmp_path / "a.mp4") == (3, 96, 128)  # frames 0, 3, 6
    count, _, _ = render.trim_video(tmp_path / "in.mp4", tmp_path / "b.mp4", stride=2, limit=2, size=(64, 192))
    assert count == 2 and decode(tmp_path / "b.mp4") == (2, 64, 192)  # a pose video gets the output size
    with av.open(str(tmp_path / "a.mp4")) as container:  # the moving block: frame 6 is 24 px right of frame 0
        first, _, last = (f.to_ndarray(format="rgb24")[70, :, 0] > 128 for f in container.decode(video=0))
    assert np.flatnonzero(last)[0] - np.flatnonzero(first)[0] == 24


def test_trim_turns_phone_videos_upright(tmp_path):
    """A phone video stores portrait footage on its side plus a display rotation (here -90: shown turned 90 degrees
    clockwise); the trimmed copy the workflow reads is upright and carries no rotation."""
    render = load_render_module()
    upright = np.full((128, 96, 3), 30, np.uint8)
    upright[4:20, 4:20] = 240  # a marker at the top left, as a player shows the video
    with av.open(str(tmp_path / "phone.mp4"), "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(24))
        stream.width, stream.height, stream.pix_fmt = 128, 96, "yuv420p"
        stream.set_display_rotation(-90)
        for packet in [*stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(np.rot90(upright, 1)),
                                                                 format="rgb24")), *stream.encode()]:
            out.mux(packet)
    render.trim_video(tmp_path / "phone.mp4", tmp_path / "trimmed.mp4", stride=1, limit=0)
    with av.open(str(tmp_path / "trimmed.mp4")) as container:
        frame = next(container.decode(video=0))
        assert frame.rotation == 0
        img = frame.to_ndarray(format="rgb24")
    assert img.shape == (128, 96, 3) and img[6:18, 6:18].min() > 200 and img[-18:-6, -18:-6].max() < 60
