"""ControlNeXtDrivingFrames' AUDIO: the sound of exactly the kept frames' span, through ComfyUI's Create Video and
Save Video into the output video; silence of the right length for a video without sound.

The driving videos carry a chirp: at source time t its frequency is F0 + RATE * t, so the frequency measured in any
short stretch of sound tells which source time it came from (within a few ms, even after AAC). The span of frames
start_frame, start_frame + stride, ... (kept of them) is [time of start_frame, + kept * stride / fps).
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from comfy_api.v0_0_2 import InputImpl, Types

from conftest import pack_import, run_graph
from newest_comfy import video as newest

video_nodes = pack_import("nodes.video_nodes")
video_audio = pack_import("controlnext.video_audio")
Node = video_nodes.ControlNeXtDrivingFrames

SR = 44100
F0, RATE = 400.0, 1000.0  # chirp: F0 Hz at 0 s, RATE Hz more per second
WINDOW = 0.02  # seconds of sound per frequency reading
SIZE = 32


def chirp(start: float, seconds: float, sr: int = SR) -> np.ndarray:
    """The chirp's samples from source time `start` on, float32 (amplitude 0.5)."""
    t = start + np.arange(round(seconds * sr)) / sr
    return (0.5 * np.sin(2 * np.pi * (F0 * t + RATE * t * t / 2))).astype(np.float32)


def source_time(wave: np.ndarray, sr: int, at: float) -> float:
    """The source time the sound in [at, at + WINDOW) seconds of `wave` comes from (its chirp frequency, read at the
    window's centre), minus half a window: the source time of the window's start."""
    part = wave[round(at * sr):round(at * sr) + round(WINDOW * sr)].astype(np.float64)
    assert part.size == round(WINDOW * sr) and np.abs(part).max() > 0.1, "no chirp there"
    n = 1 << 17
    spectrum = np.abs(np.fft.rfft(part * np.hanning(part.size), n))
    k = int(np.argmax(spectrum))
    a, b, c = np.log(spectrum[k - 1:k + 2])
    freq = (k + 0.5 * (a - c) / (a - 2 * b + c)) * sr / n  # parabolic peak
    return (freq - F0) / RATE - WINDOW / 2


def write_video(path: Path, frames: int = 30, fps: int = 10, sound: bool = True, stereo: bool = False,
                video_start: float = 0.0) -> Path:
    """H.264 frames (grey level 5 i), the first shown at video_start seconds, and, if `sound`, an AAC chirp from 0 s
    to the end of the video."""
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=fps)
        video.width = video.height = SIZE
        video.pix_fmt = "yuv420p"
        audio = out.add_stream("aac", rate=SR, layout="stereo" if stereo else "mono") if sound else None
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((SIZE, SIZE, 3), 5 * i % 256, np.uint8), format="rgb24")
            frame.pts, frame.time_base = i + round(video_start * fps), Fraction(1, fps)
            for packet in video.encode(frame):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
        if audio is not None:
            wave = chirp(0.0, video_start + frames / fps)[None]
            if stereo:  # right channel: half the left, to see the channels are kept apart
                wave = np.concatenate([wave, wave * 0.5])
            block = av.AudioFrame.from_ndarray(wave, format="fltp", layout=audio.layout.name)
            block.sample_rate, block.pts = SR, 0
            for packet in audio.encode(block):
                out.mux(packet)
            for packet in audio.encode():
                out.mux(packet)
    return path


def decoded_sound(path: Path) -> tuple[np.ndarray, int, float]:
    """The file's first audio stream, decoded whole as planar float [channels, samples], its rate and its duration
    in seconds as the container states it (the AAC encoder pads its last block; the stated duration is exact)."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        blocks = [f.to_ndarray() for f in container.decode(stream)]
        stated = float(stream.duration * stream.time_base)
        return np.concatenate(blocks, axis=1), stream.sample_rate, stated


def run(video, stride: int, start_frame: int = 0, max_frames: int = 0) -> tuple:
    return Node.execute(video, stride, start_frame, max_frames).args


@pytest.mark.parametrize(("frames_in", "fps", "video_start", "stride", "start_frame", "max_frames", "kept"),
                         [(30, 10, 0.0, 2, 3, 5, 5), (30, 10, 0.0, 1, 0, 0, 30), (30, 10, 0.0, 3, 4, 0, 9),
                          (50, 25, 0.0, 2, 1, 6, 6), (300, 30, 0.0, 2, 150, 10, 10), (30, 10, 0.5, 2, 1, 4, 4)],
                         ids=["window", "every-frame", "past-the-end", "25fps", "5s-in", "video-starts-at-0.5s"])
def test_the_sound_of_exactly_the_kept_span(tmp_path, frames_in, fps, video_start, stride, start_frame, max_frames,
                                            kept):
    path = write_video(tmp_path / "dance.mp4", frames=frames_in, fps=fps, video_start=video_start)
    frames, _, count, audio = run(InputImpl.VideoFromFile(str(path)), stride, start_frame, max_frames)
    assert count == kept == frames.shape[0]
    # start_frame's time on the file's clock (the sound's clock too), and the kept frames' real duration
    start, duration = video_start + start_frame / fps, kept * stride / fps
    wave = audio["waveform"]
    assert audio["sample_rate"] == SR and wave.dtype == torch.float32 and wave.shape == (1, 1, round(duration * SR))
    wave = wave[0, 0].numpy()
    assert source_time(wave, SR, 0.0) == pytest.approx(start, abs=0.003)  # starts at start_frame's time
    end = min(duration, video_start + frames_in / fps - start)  # the sound ends with the video: silence after it
    assert source_time(wave, SR, end - WINDOW) == pytest.approx(start + end - WINDOW, abs=0.003)
    if end < duration:  # the last kept frame's stride reaches past the end of the file
        assert np.abs(wave[round(end * SR) + 2048:]).max() == 0


def test_coarse_timestamps_leave_no_gaps(tmp_path):
    # Matroska stamps sound blocks in whole ms (1024 samples = 23.22 ms here): placing each block at its own rounded
    # timestamp would leave runs of silence (clicks) or overlaps between blocks; they follow each other instead
    path = write_video(tmp_path / "dance.mkv")
    with av.open(str(path)) as container:
        assert container.streams.audio[0].time_base == Fraction(1, 1000)
    wave = run(InputImpl.VideoFromFile(str(path)), 2, 3, 5)[3]["waveform"][0, 0].numpy()
    assert wave.size == SR
    silent = np.convolve(wave == 0, np.ones(3), "valid") == 3  # 3 zero samples in a row: a gap
    assert not silent[:round(0.9 * SR)].any()  # the chirp runs to the end of the span minus the AAC priming
    reading = [source_time(wave, SR, at) - at for at in (0.1, 0.5, 0.9)]
    assert max(reading) - min(reading) < 0.002  # no block shifted: the chirp keeps its timing


def test_a_video_without_sound_gives_silence_of_the_span(tmp_path):
    path = write_video(tmp_path / "mute.mp4", sound=False)
    _, fps, count, audio = run(InputImpl.VideoFromFile(str(path)), 2, 3, 5)
    rate = audio["sample_rate"]
    assert (fps, count) == (5.0, 5)
    assert audio["waveform"].shape == (1, 1, round(1.0 * rate)) and not audio["waveform"].any()


def test_stereo_stays_stereo(tmp_path):
    path = write_video(tmp_path / "stereo.mp4", stereo=True)
    audio = run(InputImpl.VideoFromFile(str(path)), 2, 0, 0)[3]
    left, right = audio["waveform"][0].numpy()
    assert audio["waveform"].shape[1] == 2
    assert np.sqrt(np.mean(right ** 2) / np.mean(left ** 2)) == pytest.approx(0.5, abs=0.05)  # AAC is lossy
    assert source_time(right * 2, SR, 0.0) == pytest.approx(0.0, abs=0.003)


@pytest.mark.parametrize("start_frame", [0, 2])
def test_a_trimmed_video_s_sound_starts_with_its_first_kept_frame(tmp_path, start_frame):
    # newest ComfyUI's trimmed VideoFromFile (emulated): [0.25 s, 1.25 s) holds the frames at 0.3 ... 1.2 s; the
    # sound starts with the first kept frame (0.3 s + start_frame / 10), not at the trim's 0.25 s
    path = write_video(tmp_path / "dance.mp4")
    video = newest.VideoFromFile(str(path), start_time=0.25, duration=1.0)
    frames, _, count, audio = run(video, 2, start_frame, 0)
    assert count == len(range(start_frame, 10, 2))
    start = 0.3 + start_frame / 10
    wave = audio["waveform"][0, 0].numpy()
    assert wave.size == round(count * 2 / 10 * SR)
    assert source_time(wave, SR, 0.0) == pytest.approx(start, abs=0.003)


def test_decoded_videos_give_their_components_sound_cut_to_the_span():
    fps, stride, start_frame = 10, 2, 3
    images = torch.rand(12, 8, 8, 3)
    wave = torch.from_numpy(chirp(0.0, 1.0))[None, None]  # sound for 1.0 s of the 1.2 s of frames
    video = InputImpl.VideoFromComponents(Types.VideoComponents(images=images, frame_rate=Fraction(fps),
                                                                audio={"waveform": wave, "sample_rate": SR}))
    frames, _, count, audio = run(video, stride, start_frame, 0)
    assert count == 5 and torch.equal(frames, images[3::2])
    first, length = round(0.3 * SR), round(1.0 * SR)  # frames 3, 5, ... 11: from 0.3 s for 5 x 2 / 10 s
    assert audio["waveform"].shape == (1, 1, length) and audio["sample_rate"] == SR
    assert torch.equal(audio["waveform"][..., :wave.shape[2] - first], wave[..., first:])
    assert not audio["waveform"][..., wave.shape[2] - first:].any()  # where the sound had ended: silence

    silent = InputImpl.VideoFromComponents(Types.VideoComponents(images=images, frame_rate=Fraction(fps)))
    audio = run(silent, stride, start_frame, 0)[3]
    assert audio["waveform"].shape == (1, 1, round(1.0 * audio["sample_rate"])) and not audio["waveform"].any()


def saved_video(comfy_base: Path, ui: dict) -> Path:
    (item,) = ui["images"]
    return comfy_base / "output" / item["subfolder"] / item["filename"]


@pytest.mark.parametrize(("sound", "by_core"), [(True, False), (False, False), (True, True)],
                         ids=["with-sound", "without-sound", "decoded-by-core"])
def test_the_saved_video_has_the_span_s_sound(comfy_base, sound, by_core):
    """Load Video -> Driving Frames -> Create Video (frames, fps, audio) -> Save Video, read back with PyAV. 25 fps
    with stride 2 gives the official 12 fps (not 12.5): the video (6 frames, 0.5 s) is a little longer than the
    span (0.48 s), whose sound keeps its real speed. decoded-by-core: the driving VIDEO is core's own decoding
    (Get Video Components -> Create Video, frames and sound in memory), cut by the node."""
    name = f"test-driving-audio-{sound}.mp4"
    source = write_video(comfy_base / "input" / name, frames=50, fps=25, sound=sound)
    graph = {
        "1": {"class_type": "LoadVideo", "inputs": {"file": name}},
        "2": {"class_type": "ControlNeXtDrivingFrames",
              "inputs": {"video": ["1", 0], "stride": 2, "start_frame": 5, "max_frames": 6}},
        "3": {"class_type": "CreateVideo", "inputs": {"images": ["2", 0], "fps": ["2", 1], "audio": ["2", 3]}},
        "4": {"class_type": "SaveVideo", "inputs": {"video": ["3", 0], "filename_prefix": "driving_audio",
                                                    "format": "mp4", "codec": "h264"}},
    }
    if by_core:
        graph["5"] = {"class_type": "GetVideoComponents", "inputs": {"video": ["1", 0]}}
        graph["6"] = {"class_type": "CreateVideo", "inputs": {"images": ["5", 0], "fps": ["5", 2], "audio": ["5", 1]}}
        graph["2"]["inputs"]["video"] = ["6", 0]
    saved = None
    try:
        result = run_graph(graph)
        assert result.success, result.error()
        saved = saved_video(comfy_base, result.outputs["4"])
        with av.open(str(saved)) as container:
            video_stream = container.streams.video[0]
            out_fps = float(video_stream.average_rate)
            shown = len(list(container.decode(video_stream)))
        wave, rate, stated = decoded_sound(saved)
    finally:
        source.unlink(missing_ok=True)
        if saved is not None:
            saved.unlink(missing_ok=True)
    start, span = 5 / 25, 6 * 2 / 25  # frames 5, 7, ... 15 of the 25 fps source
    assert (out_fps, shown) == (12.0, 6)
    assert stated == pytest.approx(span, abs=1 / out_fps)  # the kept span's duration within one output frame
    assert stated == pytest.approx(span, abs=1 / rate)  # ... in fact to the sample
    assert wave.shape[1] == pytest.approx(span * rate, abs=1024)  # decoded: plus the encoder's last-block padding
    if sound:
        assert rate == SR
        assert source_time(wave[0], rate, 0.0) == pytest.approx(start, abs=0.005)  # starts at start_frame's time
        assert source_time(wave[0], rate, span - WINDOW) == pytest.approx(start + span - WINDOW, abs=0.005)
    else:
        assert np.abs(wave).max() < 1e-4


def test_the_writer_for_scripts_puts_the_sound_after_a_delay(tmp_path):
    """add_audio_stream + write_audio (for scripts/render.py's own mp4 writer): the sound of a span, delayed by one
    output frame (a render's frame 0 is the reference image), read back with PyAV."""
    source = write_video(tmp_path / "dance.mp4")
    audio = video_audio.span_audio(str(source), 0.4, 1.2)
    out_path, out_fps, shown = tmp_path / "out.mp4", 5, 7
    with av.open(str(out_path), "w") as out:
        video = out.add_stream("libx264", rate=out_fps)
        video.width = video.height = SIZE
        video.pix_fmt = "yuv420p"
        stream = video_audio.add_audio_stream(out, audio)
        for i in range(shown):
            for packet in video.encode(av.VideoFrame.from_ndarray(np.full((SIZE, SIZE, 3), i, np.uint8), "rgb24")):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
        video_audio.write_audio(out, stream, audio, delay=1 / out_fps)
    wave, rate, stated = decoded_sound(out_path)
    assert stated == pytest.approx(0.2 + 1.2, abs=1 / rate)
    assert np.abs(wave[0, :round(0.2 * rate) - 1024]).max() < 1e-3  # the reference frame's time: silence
    assert source_time(wave[0], rate, 0.2) == pytest.approx(0.4, abs=0.005)


def test_span_and_cut_edges():
    assert video_audio.kept_span(0.5, 3, 2, 25.0) == (0.5, 0.24)
    with pytest.raises(ValueError, match="at least one kept frame"):
        video_audio.kept_span(0.0, 0, 2, 25.0)
    audio = {"waveform": torch.arange(1, 11, dtype=torch.float32)[None, None], "sample_rate": 10}
    assert video_audio.cut_audio(audio, -0.2, 0.5)["waveform"].tolist() == [[[0, 0, 1, 2, 3]]]  # before: silence
    assert video_audio.cut_audio(audio, 0.8, 0.4)["waveform"].tolist() == [[[9, 10, 0, 0]]]  # after: silence
    assert video_audio.cut_audio(audio, 2.0, 0.2)["waveform"].tolist() == [[[0, 0]]]
