"""The driving video's sound as ComfyUI's AUDIO, read and written with PyAV.

ComfyUI's AUDIO is {"waveform": float32 tensor [1, channels, samples], "sample_rate": int}. Core's audio nodes need
torchaudio, which has no release for every torch (none for torch 2.14), so this module uses only PyAV, as ComfyUI's
own video types do. read_audio gives mono or stereo (more channels are mixed down to stereo): what ComfyUI 0.3.75's
video writer can store.

The span of the kept frames: frames start_frame, start_frame + stride, ... (kept of them) of a source at `fps`
stand for the time from the first kept frame's timestamp to `kept * stride / fps` seconds later (each kept frame
covers `stride` source frames). That real-time span, unstretched, is the sound of the result: the output video
plays the kept frames at floor(fps / stride) fps (the official rate), so it can be slightly longer than the span
(29.97 fps, stride 2: 14 fps instead of 14.985, 7 % longer); stretching the sound to it would change its pitch.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import IO, Any

import comfy.model_management
import numpy as np
import torch

SILENCE_SAMPLE_RATE = 48000  # the rate of the silence given for a video without sound (the usual video rate)
SEEK_MARGIN = 1.0  # seconds decoded before the span's start after a seek: the decoder's warm-up is never kept
JUMP = 0.01  # seconds a sound block's timestamp may differ from the end of the block before it (rounding)


def kept_span(first_time: float, kept: int, stride: int, fps: float) -> tuple[float, float]:
    """(start, duration) in seconds of `kept` frames taken every `stride`-th from a source at `fps`, the first
    shown at `first_time`: from that frame's time to the time after the last kept frame's stride."""
    if kept < 1 or stride < 1 or not fps > 0:
        raise ValueError(f"the span needs at least one kept frame, a stride of at least 1 and a frame rate above 0 "
                         f"(got {kept}, {stride}, {fps}).")
    return float(first_time), kept * stride / float(fps)


def span_samples(duration: float, sample_rate: int) -> int:
    """Samples of `duration` seconds (rounded to the nearest, at least 1)."""
    return max(1, round(duration * sample_rate))


def silence(duration: float, sample_rate: int = SILENCE_SAMPLE_RATE, channels: int = 1) -> dict[str, Any]:
    """An AUDIO of `duration` seconds of silence."""
    return {"waveform": torch.zeros(1, channels, span_samples(duration, sample_rate)), "sample_rate": sample_rate}


def cut_audio(audio: dict[str, Any], start: float, duration: float) -> dict[str, Any]:
    """[start, start + duration) seconds of an AUDIO whose first sample is at time 0 (e.g. a VIDEO's components,
    whose sound starts with its first frame), as float32; silence where the sound does not reach."""
    rate = int(audio["sample_rate"])
    waveform = audio["waveform"]
    if waveform.dim() == 2:  # [channels, samples]: tolerated, as some nodes emit it
        waveform = waveform.unsqueeze(0)
    length = span_samples(duration, rate)
    out = torch.zeros(1, waveform.shape[1], length)
    first = round(start * rate)
    part = waveform[:1, :, max(first, 0):max(first + length, 0)]
    at = max(-first, 0)
    out[:, :, at:at + part.shape[2]] = part.to(device="cpu", dtype=torch.float32)
    return {"waveform": out, "sample_rate": rate}


def sound_stream(container: Any) -> Any:
    """The audio stream ComfyUI uses: the last one FFmpeg can decode (one without a codec context, e.g. an iPhone's
    spatial-audio track, would crash the decoder), or None."""
    return next((s for s in reversed(container.streams.audio) if s.codec_context is not None), None)


def read_audio(source: str | IO[bytes], start: float, duration: float, name: str = "the video",
               ) -> dict[str, Any] | None:
    """[start, start + duration) seconds of a file's sound (times as the file's frame timestamps: the same clock
    as decode_frames' first_time), or None when it has no decodable sound. The first decoded block is placed at
    its timestamp, each next one after it (or at its own timestamp across a gap); what the sound does not cover
    (before it starts, after it ends, gaps) is silence."""
    import av  # ComfyUI's own dependency; imported on first use, not when the pack loads

    try:
        with av.open(source) as container:
            stream = sound_stream(container)
            if stream is None:
                return None
            stream.thread_type = "AUTO"
            if start > SEEK_MARGIN and stream.time_base is not None:
                container.seek(int((start - SEEK_MARGIN) / stream.time_base), stream=stream)
            out: np.ndarray | None = None
            resampler = rate = None
            position = 0  # where the next block goes in `out` (samples from `start`)
            for packet in container.demux(stream):
                comfy.model_management.throw_exception_if_processing_interrupted()
                try:
                    frames = packet.decode()
                except av.error.InvalidDataError:
                    continue  # one damaged packet: its time stays silent, as ComfyUI skips it too
                for frame in frames:
                    first = out is None
                    if first:
                        rate = frame.sample_rate
                        layout = "mono" if frame.layout.nb_channels == 1 else "stereo"
                        # planar float at the source's rate: no resampling, so no delay and samples stay in place
                        resampler = av.audio.resampler.AudioResampler(format="fltp", layout=layout, rate=rate)
                        out = np.zeros((1 if layout == "mono" else 2, span_samples(duration, rate)), np.float32)
                        position = round(-start * rate)  # without a timestamp: the sound starts at 0 s
                    if frame.pts is not None and frame.time_base is not None:
                        stamped = round((float(frame.pts * frame.time_base) - start) * rate)
                        # blocks follow each other; a timestamp moves one only across a real gap or jump (coarse
                        # timestamps, e.g. Matroska's 1 ms, would otherwise leave clicks of silence between blocks)
                        if first or abs(stamped - position) > JUMP * rate:
                            position = stamped
                    if frame.format.name == "fltp" and frame.layout.nb_channels == out.shape[0]:
                        data = frame.to_ndarray()  # AAC's own format: no conversion needed
                    else:
                        blocks = [f.to_ndarray() for f in resampler.resample(frame)]
                        data = np.concatenate(blocks, axis=1) if blocks else np.zeros((out.shape[0], 0), np.float32)
                    lo, hi = max(position, 0), min(position + data.shape[1], out.shape[1])
                    if lo < hi:
                        out[:, lo:hi] = data[:, lo - position:hi - position]
                    position += data.shape[1]
                if out is not None and position >= out.shape[1]:
                    break
    except av.error.FFmpegError as exc:
        raise ValueError(f"the sound of {name} could not be decoded ({exc}): re-encode it, e.g. with "
                         "ffmpeg -i in.mov -c:v libx264 -c:a aac out.mp4.") from exc
    if out is None:  # a sound stream without a single decodable block
        return None
    return {"waveform": torch.from_numpy(out).unsqueeze(0), "sample_rate": int(rate)}


def span_audio(source: str | IO[bytes], start: float, duration: float, name: str = "the video") -> dict[str, Any]:
    """read_audio, or silence of the span's length when the file has no sound."""
    return read_audio(source, start, duration, name) or silence(duration)


# ------------------------------------------------------------------------------------------------------ writing


def audio_layout(audio: dict[str, Any]) -> str:
    channels = audio["waveform"].shape[-2]
    if channels not in (1, 2):
        raise ValueError(f"the sound has {channels} channels; only mono or stereo can be written.")
    return "mono" if channels == 1 else "stereo"


def add_audio_stream(container: Any, audio: dict[str, Any]) -> Any:
    """Adds an AAC stream for `audio` to a PyAV output container (before anything is muxed: FFmpeg writes the
    header with the first packet). Then write the video, and the sound with write_audio."""
    return container.add_stream("aac", rate=int(audio["sample_rate"]), layout=audio_layout(audio))


def write_audio(container: Any, stream: Any, audio: dict[str, Any], delay: float = 0.0,
                max_duration: float | None = None) -> None:
    """Encodes `audio` into `stream` (from add_audio_stream), starting `delay` seconds into the video (silence
    before; e.g. one output frame for a render whose frame 0 is the reference image) and cut at `max_duration`
    seconds of the whole track if given; flushes the encoder."""
    import av

    rate = int(audio["sample_rate"])
    waveform = audio["waveform"][0].to(device="cpu", dtype=torch.float32)
    lead = round(max(delay, 0.0) * rate)
    if lead:
        waveform = torch.cat([torch.zeros(waveform.shape[0], lead), waveform], dim=1)
    if max_duration is not None:
        waveform = waveform[:, :max(1, math.ceil(max_duration * rate))]
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(waveform.numpy()), format="fltp",
                                       layout=audio_layout(audio))
    frame.sample_rate = rate
    frame.pts = 0
    frame.time_base = Fraction(1, rate)
    for packet in stream.encode(frame):
        container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)
