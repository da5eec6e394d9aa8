"""Pose filters over time: ControlNeXtSmoothPoses (jitter out, short dropouts filled) and ControlNeXtTrackPeople
(stable identities, the dancer selected)."""

from __future__ import annotations

from comfy_api.v0_0_2 import io, ui

from ..dwpose.keypoints import from_pose_keypoint, to_pose_keypoint
from ..dwpose.smooth import METHOD_CHOICES, SmoothOptions, smooth_frames
from ..dwpose.track import KEEP_CHOICES, SELECT_CHOICES, TrackOptions, track_frames
from .dwpose_nodes import PoseKeypoint


def _frames(poses: object) -> list:
    frames = from_pose_keypoint(poses)
    if not frames:
        raise ValueError("the poses input is empty: connect POSE_KEYPOINT frames (e.g. from ControlNeXt Extract Poses)")
    return frames


def _strength(name: str, what: str, default: float) -> io.Float.Input:
    return io.Float.Input(name, default=default, min=0.0, max=1.0, step=0.05,
                          tooltip=f"How strongly to smooth the {what} over time: 0 = leave them exactly as they are "
                          "(no gap filling either), 1 = strongest (Savitzky-Golay: up to a 17-frame window; One-Euro: "
                          "the lowest cut-off). Fast movements stay sharp at any strength.")


class ControlNeXtSmoothPoses(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ControlNeXtSmoothPoses",
            display_name="ControlNeXt Smooth Poses",
            category="ControlNeXt-SVD/pose",
            description=(
                "Takes DWPose's frame-to-frame jitter out of the poses: every keypoint of every person is filtered "
                "over time (Savitzky-Golay with an adaptive window, or a zero-lag One-Euro filter), so a dancer "
                "standing still stands still and a fast move is followed without lag. Keypoints scoring 0.3 or less "
                "count as missing: they never pull the filter; a gap of up to max_gap frames is filled between its "
                "two ends, a longer one is left as it is. Person k must be the same person in every frame: put "
                "ControlNeXt Track People first when the video has more than one person."
            ),
            inputs=[
                PoseKeypoint.Input("poses", tooltip="Pose frames of one video, one stable person order per frame (from "
                                   "ControlNeXt Track People, or a single-person video)."),
                _strength("body", "18 body keypoints", 0.5),
                _strength("hands", "21 keypoints of each hand", 0.5),
                _strength("face", "68 face keypoints", 0.5),
                io.Int.Input("max_gap", default=4, min=0, max=120,
                             tooltip="Longest dropout, in frames, that is filled by interpolating between the frames "
                             "around it; longer ones (and dropouts at the start or end of the clip) stay missing."),
                io.Combo.Input("method", options=list(METHOD_CHOICES), default=METHOD_CHOICES[0],
                               tooltip="savitzky-golay = local quadratic fits (as the DWPose maintainers suggest) with "
                               "a window that shrinks where the dancer moves fast; one-euro = the speed-adaptive "
                               "1-euro low-pass, run forwards and backwards so it does not lag."),
            ],
            outputs=[PoseKeypoint.Output(display_name="poses", tooltip="The smoothed poses, same frames and person "
                                         "order; filled keypoints get the weaker score of their gap's two ends.")],
        )

    @classmethod
    def execute(cls, poses: object, body: float, hands: float, face: float, max_gap: int,
                method: str) -> io.NodeOutput:
        opts = SmoothOptions(body=float(body), hands=float(hands), face=float(face), max_gap=int(max_gap),
                             method=method)
        smoothed, report = smooth_frames(_frames(poses), opts)
        text = report.describe()
        return io.NodeOutput(to_pose_keypoint(smoothed), ui=ui.PreviewText(text))


class ControlNeXtTrackPeople(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ControlNeXtTrackPeople",
            display_name="ControlNeXt Track People",
            category="ControlNeXt-SVD/pose",
            description=(
                "Follows every person through the video (keypoint distance and box overlap, with motion prediction "
                "through crossings and short occlusions) and picks the dancer in the first frame that has people. "
                "DWPose lists people in a new order every frame; after this node person k is the same person in "
                "every frame, and a bystander who appears later is never taken for the dancer. Use it before "
                "ControlNeXt Smooth Poses and the alignment."
            ),
            inputs=[
                PoseKeypoint.Input("poses", tooltip="Pose frames of one video (e.g. from ControlNeXt Extract Poses)."),
                io.Combo.Input("select", options=list(SELECT_CHOICES), default=SELECT_CHOICES[0],
                               tooltip="Who the dancer is, decided in the first frame with people: largest body, "
                               "highest detector (or keypoint) score, a position in that frame's people list "
                               "(index), or nearest to the point x, y."),
                io.Combo.Input("keep", options=list(KEEP_CHOICES), default=KEEP_CHOICES[0],
                               tooltip="selected person = only the dancer, one person per frame (none where hidden); "
                               "all people = everybody, the dancer first, then the others by first appearance, each "
                               "in the same place of the list in every frame (an empty person where absent)."),
                io.Int.Input("index", default=0, min=0, max=64, optional=True,
                             tooltip="For select = index: the dancer's position in the first frame's people list "
                             "(0 = first)."),
                io.Float.Input("x", default=0.5, min=0.0, max=1.0, step=0.01, optional=True,
                               tooltip="For select = nearest to point: horizontal position as a fraction of the frame "
                               "width (0 = left edge, 1 = right edge)."),
                io.Float.Input("y", default=0.5, min=0.0, max=1.0, step=0.01, optional=True,
                               tooltip="For select = nearest to point: vertical position as a fraction of the frame "
                               "height (0 = top, 1 = bottom)."),
            ],
            outputs=[
                PoseKeypoint.Output(display_name="poses", tooltip="The poses with one stable person order per frame "
                                    "(the selected person first)."),
                io.String.Output(display_name="info", tooltip="People found, who was selected and why, the frames "
                                 "each person is seen in."),
            ],
        )

    @classmethod
    def execute(cls, poses: object, select: str, keep: str, index: int = 0, x: float = 0.5,
                y: float = 0.5) -> io.NodeOutput:
        opts = TrackOptions(select=select, keep=keep, index=int(index), x=float(x), y=float(y))
        tracked, result = track_frames(_frames(poses), opts)
        text = result.describe()
        return io.NodeOutput(to_pose_keypoint(tracked), text, ui=ui.PreviewText(text))
