"""ControlNeXtDrivingFrames: the driving video's frames as the official pipeline samples them, and their sound."""

from __future__ import annotations

from comfy_api.v0_0_2 import InputImpl, io

from ..controlnext.video_audio import cut_audio, kept_span, silence, span_audio
from ..controlnext.video_frames import decode_frames, file_trim, output_fps, select_frames


class ControlNeXtDrivingFrames(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ControlNeXtDrivingFrames",
            display_name="ControlNeXt Driving Video Frames",
            category="ControlNeXt-SVD",
            description=(
                "Takes every stride-th frame of a video (official: every 2nd) and the matching output frame rate "
                "(source fps // stride, as the official script). Decodes frame by frame and converts only the "
                "frames it keeps, so long or 4K phone videos fit in system RAM, and turns phone videos upright "
                "(their display rotation), which older ComfyUI's Get Video Components does not. A trim set on the "
                "video (Load Video's edit, Trim Video) is applied as ComfyUI applies it; a cropped video, or one "
                "that is not a plain file (e.g. Create Video), is decoded by ComfyUI itself. Also gives the sound "
                "of exactly the kept frames' span (silence for a video without sound), for Create Video's audio."
            ),
            inputs=[
                io.Video.Input("video", tooltip="The driving video (Load Video), any size, frame rate or length."),
                io.Int.Input("stride", default=2, min=1, max=120,
                             tooltip="Keep every stride-th frame (official: 2). 1 keeps every frame."),
                io.Int.Input("start_frame", default=0, min=0, max=1_000_000,
                             tooltip="First frame kept, counted in source frames from 0 (from the start of the "
                             "video's trim, if it has one)."),
                io.Int.Input("max_frames", default=0, min=0, max=100_000,
                             tooltip="Most frames kept (0 = to the end of the video). Output frames = kept frames "
                             "+ 1 (the reference). Memory per window does not grow with it; RAM and time do."),
            ],
            outputs=[
                io.Image.Output(display_name="frames", tooltip="The kept frames, upright, at the video's size."),
                io.Float.Output(display_name="fps", tooltip="Source fps // stride: the frame rate of the result "
                                "(for Create Video)."),
                io.Int.Output(display_name="frame_count", tooltip="How many frames were kept."),
                # last: saved workflows link outputs by slot index
                io.Audio.Output(display_name="audio", tooltip="The sound of the kept frames' span: from the first "
                                "kept frame's time, kept frames x stride / source fps seconds long, at its real "
                                "speed (silence if the video has none). Connect it to Create Video's audio."),
            ],
        )

    @classmethod
    def execute(cls, video, stride: int, start_frame: int, max_frames: int) -> io.NodeOutput:
        is_file = isinstance(video, InputImpl.VideoFromFile)
        trim = file_trim(video) if is_file else None
        if trim is not None:  # a file (Load Video, Trim Video) with no crop: decode only what is kept
            frames, fps, first_time = decode_frames(video.get_stream_source(), stride, start_frame, max_frames,
                                                    name="the driving video", start_time=trim[0], duration=trim[1])
            start, duration = kept_span(first_time, frames.shape[0], stride, fps)
            # a second pass over the file (a BytesIO is rewound): demuxing only the sound costs little
            audio = span_audio(video.get_stream_source(), start, duration, name="the driving video")
        else:  # frames in memory (Create Video), or an edit (crop) only core's decoder applies: core decodes
            components = video.get_components()
            frames = select_frames(components.images, stride, start_frame, max_frames)
            if is_file:  # the decoded clip is this call's alone: keep only the selected frames in memory
                frames = frames.contiguous()
            fps = float(components.frame_rate)
            # the components' sound starts with their first frame (a trimmed file's: at the trim's start)
            start, duration = kept_span(start_frame / fps, frames.shape[0], stride, fps)
            audio = silence(duration) if components.audio is None else cut_audio(components.audio, start, duration)
        return io.NodeOutput(frames, output_fps(fps, stride), frames.shape[0], audio)
