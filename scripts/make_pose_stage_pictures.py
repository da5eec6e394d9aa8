"""Pictures of the pose stages for the README and the help pages: web/images/pose_stage_{track,smooth,retarget}.png,
each "before | after" of one stage of ControlNeXt Poses For Animation, drawn over the shared example media.

    .venv/bin/python scripts/make_pose_stage_pictures.py [--media ../shared/media] [--out web/images]

They live in the pack's WEB_DIRECTORY because ComfyUI's help panel resolves a page's relative links against
/extensions/<pack>/docs/ (frontend src/utils/nodeHelpUtil.ts, getNodeHelpBaseUrl), and the server serves only web/:
"../images/x.png" in web/docs/<NodeId>.md works there and on GitHub alike.

What is real and what is a stand-in (the captions say the same):
- The photos are frames of the shared media (../shared/media: ControlNeXt's own examples, Apache-2.0, see its
  NOTICE.md): dance-01.mp4 and ref-03-two-people.jpeg. Only these small derived pictures are committed, never the
  media.
- The POSES are stand-ins: the DWPose weights are not on this machine, so the body keypoints were placed by hand on
  the photos (KEYFRAMES, WOMAN, BYSTANDER below; body only, no hands or face), the dance's in-between frames
  interpolated (Catmull-Rom), and DWPose-like faults added: Gaussian jitter (JITTER_PX), a short wrist dropout
  (score below 0.3, position off) and a detector that lists the bystander first in some frames.
- The stages are the pack's own code (dwpose/track.py, smooth.py, align.py, retarget.py), called in the order the
  node runs them (track -> smooth -> align -> retarget), and the overlays are ControlNeXt Pose Overlay's
  (dwpose/overlay.py: the processed skeleton in colour over the compared one in white). Skeletons are drawn with the
  official renderer on a smaller canvas (DRAW_SHORT_SIDE) so that they stay visible in a small picture.

The pack's dwpose/ package (numpy, cv2, torch; no ComfyUI imports in the modules used here) is loaded under a private
name from its files: the repository root is never put on sys.path (its nodes/ package would shadow ComfyUI's).
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from comfy_boot import import_pack_package  # scripts/ is on sys.path when this file runs as a script

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "controlnext_pictures_dwpose"
W, H = 576, 1024  # the generation size: the reference canvas
PANEL_W = 288  # each half of a picture, px
JITTER_PX = 3.0
DRAW_SHORT_SIDE = 720  # the official renderer draws on a 2160-px short side; a third of it: 3x the line width
SEED = 0

# Hand-placed body keypoints (OpenPose-18 order; (0, 0) = not shown) on frames of dance-01.mp4 (576x1024): the
# dancer's right arm goes out to the hip and her left hand up to the face and back down. Knees and feet are not in
# the picture (the dress and the frame's edge hide them).
KEYFRAMES = {
    0: [(303, 298), (0, 0), (208, 432), (178, 628), (248, 688), (438, 428), (470, 640), (385, 668), (250, 770),
        (0, 0), (0, 0), (395, 770), (0, 0), (0, 0), (274, 266), (332, 266), (248, 282), (362, 280)],
    16: [(318, 312), (0, 0), (212, 445), (42, 640), (172, 745), (428, 440), (505, 478), (445, 352), (252, 795),
         (0, 0), (0, 0), (405, 790), (0, 0), (0, 0), (290, 276), (344, 276), (262, 292), (385, 288)],
    24: [(318, 302), (0, 0), (210, 430), (40, 620), (172, 748), (440, 428), (455, 530), (410, 290), (248, 790),
         (0, 0), (0, 0), (405, 790), (0, 0), (0, 0), (290, 268), (345, 266), (262, 280), (385, 278)],
    32: [(305, 278), (0, 0), (200, 395), (35, 590), (172, 735), (425, 410), (455, 590), (420, 410), (240, 770),
         (0, 0), (0, 0), (400, 770), (0, 0), (0, 0), (275, 245), (330, 240), (245, 255), (375, 250)],
    40: [(300, 298), (0, 0), (200, 425), (35, 605), (158, 728), (440, 420), (555, 625), (420, 740), (240, 790),
         (0, 0), (0, 0), (405, 790), (0, 0), (0, 0), (272, 266), (330, 266), (245, 282), (365, 280)],
    48: [(300, 298), (0, 0), (205, 420), (40, 610), (160, 732), (430, 420), (555, 585), (450, 420), (245, 790),
         (0, 0), (0, 0), (410, 790), (0, 0), (0, 0), (272, 266), (330, 266), (245, 282), (368, 280)],
}
# ref-03-two-people.jpeg (1200x1754): the woman in front (no knees in the picture) and the man in the background
WOMAN = [(572, 432), (0, 0), (410, 636), (270, 1120), (236, 1600), (770, 630), (890, 1200), (760, 1480), (380, 1400),
         (0, 0), (0, 0), (660, 1400), (0, 0), (0, 0), (516, 386), (616, 380), (470, 410), (680, 400)]
BYSTANDER = [(1104, 424), (0, 0), (1080, 536), (1050, 680), (1050, 800), (1190, 540), (1196, 690), (1190, 800),
             (1080, 820), (1070, 1020), (1060, 1200), (1180, 820), (1170, 1040), (1150, 1240), (1096, 410),
             (1124, 410), (1090, 420), (1150, 420)]


def load_dwpose(*submodules: str) -> SimpleNamespace:
    """The pack's dwpose/ submodules, imported from its files under a private package name."""
    import_pack_package("dwpose", PACKAGE)
    return SimpleNamespace(**{name: importlib.import_module(f"{PACKAGE}.{name}") for name in submodules})


dw = load_dwpose("keypoints", "align", "track", "smooth", "retarget", "draw", "overlay")
kp = dw.keypoints


# ----------------------------------------------------------------------------------------------------------------
# Stand-in poses
# ----------------------------------------------------------------------------------------------------------------
def body_array(points: list[tuple[float, float]], score: float = 0.9) -> np.ndarray:
    """(18, 3) with the neck at the shoulders' mean (as DWPose's is); unshown points [0, 0, 0]."""
    xy = np.array(points, dtype=np.float64)
    xy[1] = (xy[2] + xy[5]) / 2
    shown = xy.any(axis=1)
    return np.column_stack([xy, np.where(shown, score, 0.0)]) * shown[:, None]


def catmull_rom(times: list[int], values: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Interpolating cubic through (times, values (K, ...)) at t, end tangents one-sided."""
    times_a = np.asarray(times, dtype=np.float64)
    k = np.clip(np.searchsorted(times_a, t, side="right") - 1, 0, len(times) - 2)
    t0, t1 = times_a[k], times_a[k + 1]
    u = ((t - t0) / (t1 - t0)).reshape(-1, *([1] * (values.ndim - 1)))

    def tangent(i: np.ndarray) -> np.ndarray:
        lo, hi = np.maximum(i - 1, 0), np.minimum(i + 1, len(times) - 1)
        return (values[hi] - values[lo]) / (times_a[hi] - times_a[lo]).reshape(-1, *([1] * (values.ndim - 1)))

    dt = (t1 - t0).reshape(u.shape)
    h00, h10, h01, h11 = 2 * u**3 - 3 * u**2 + 1, u**3 - 2 * u**2 + u, -2 * u**3 + 3 * u**2, u**3 - u**2
    return h00 * values[k] + h10 * dt * tangent(k) + h01 * values[k + 1] + h11 * dt * tangent(k + 1)


def dance_clip(rng: np.random.Generator) -> tuple[list, np.ndarray]:
    """(PoseFrames of frames 0..48 of dance-01 with jitter and a 2-frame left-wrist dropout, the truth (T, 18, 3))."""
    times = sorted(KEYFRAMES)
    keys = np.stack([body_array(KEYFRAMES[t]) for t in times])
    t = np.arange(times[-1] + 1, dtype=np.float64)
    truth = catmull_rom(times, keys, t)
    truth[..., 2] = keys[0, :, 2]  # the same points shown throughout
    frames = []
    for i in range(len(t)):
        body = truth[i].copy()
        shown = body[:, 2] > 0
        body[shown, :2] += rng.normal(0, JITTER_PX, (shown.sum(), 2))
        body[shown, 2] = rng.uniform(0.75, 0.98, shown.sum())  # a clearly visible dancer
        body[1, :2] = (body[2, :2] + body[5, :2]) / 2  # DWPose's neck is the mean of its shoulders
        if i in (21, 22):  # a weak detection: under the threshold, off by tens of px
            body[7] = [body[7, 0] + 28, body[7, 1] + 22, 0.15]
        frames.append(kp.PoseFrame(W, H, [kp.Person(body=body)]))
    return frames, truth


def shop_clip(rng: np.random.Generator, n: int = 24) -> list:
    """The still ref-03 photo as a short clip (1200x1754 px): both people jittered, the detector listing the man first
    (a higher box score) in about half of the frames, as DWPose's order changes."""
    frames = []
    for _ in range(n):
        people = []
        for pts, box_score in ((WOMAN, rng.uniform(0.8, 0.9)), (BYSTANDER, rng.uniform(0.75, 0.95))):
            body = body_array(pts)
            shown = body[:, 2] > 0
            body[shown, :2] += rng.normal(0, JITTER_PX * 2, (shown.sum(), 2))  # 2x: this photo is 2x the size
            body[1, :2] = (body[2, :2] + body[5, :2]) / 2
            people.append(kp.Person(body=body, box_score=box_score))
        people.sort(key=lambda p: -p.box_score)  # the detector lists the best-scoring person first
        frames.append(kp.PoseFrame(1200, 1754, people))
    return frames


# ----------------------------------------------------------------------------------------------------------------
# Drawing
# ----------------------------------------------------------------------------------------------------------------
def read_media(media: Path) -> tuple[np.ndarray, np.ndarray]:
    """(dance-01 frames 0..48 as RGB uint8 (T, 1024, 576, 3), ref-03 RGB uint8)."""
    import cv2

    cap = cv2.VideoCapture(str(media / "dance-01.mp4"))
    frames = []
    try:
        while len(frames) <= max(KEYFRAMES):
            ok, frame = cap.read()
            if not ok:
                break
            frames.append(frame[..., ::-1])
    finally:
        cap.release()
    photo = cv2.imread(str(media / "ref-03-two-people.jpeg"))
    if len(frames) <= max(KEYFRAMES) or photo is None:
        raise SystemExit(f"{media} lacks dance-01.mp4 (49 frames or more) or ref-03-two-people.jpeg")
    return np.stack(frames), photo[..., ::-1].copy()


def fit_cover(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Cover resize and centre crop (the pack's reference fit, controlnext/image_fit.py, in cv2 for this script)."""
    import cv2

    h, w = image.shape[:2]
    scale = max(width / w, height / h)
    resized = cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    y0, x0 = (resized.shape[0] - height) // 2, (resized.shape[1] - width) // 2
    return resized[y0:y0 + height, x0:x0 + width]


def drawn(frame: object, width: int, height: int) -> np.ndarray:
    arrays = dw.draw.frame_arrays(frame)
    return dw.draw.draw_pose_arrays(*arrays, height, width, short_side=DRAW_SHORT_SIDE)


def overlay(photo: np.ndarray, frame: object, compare: object | None = None, opacity: float = 1.0) -> np.ndarray:
    """ControlNeXt Pose Overlay: the frame's skeleton in colour over the photo, `compare` in white."""
    import torch

    h, w = photo.shape[:2]

    def batch(image: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(image))[None].float() / 255

    other = None if compare is None else batch(drawn(compare, w, h))
    out = dw.overlay.overlay_poses(batch(photo), batch(drawn(frame, w, h)), opacity, compare=other)
    return (out[0].numpy() * 255).round().astype(np.uint8)


def trails(image: np.ndarray, tracks: np.ndarray, scale: float, joints: tuple[int, ...],
           colour: tuple[int, int, int] | None = None) -> np.ndarray:
    """Each joint's path over the frames as a line with a dot per frame, in the joint's rendered colour; with
    `colour`, a thin line of that colour only."""
    import cv2

    out = image.copy()
    for j in joints:
        c = colour or tuple(int(v) for v in dw.draw.PALETTE[j][::-1])  # the renderer's BGR->RGB swap
        xy = tracks[:, j, :2] * scale
        ok = np.isfinite(xy).all(axis=1)  # a dropout breaks the line
        runs = np.split(np.arange(len(xy)), np.nonzero(np.diff(ok.astype(int)))[0] + 1)
        lines = [np.round(xy[r] * 16).astype(np.int32) for r in runs if ok[r[0]] and len(r) > 1]
        if colour is not None:
            cv2.polylines(out, lines, False, c, 1, cv2.LINE_AA, shift=4)
            continue
        cv2.polylines(out, lines, False, (20, 20, 20), 4, cv2.LINE_AA, shift=4)  # visible on a light photo
        cv2.polylines(out, lines, False, c, 2, cv2.LINE_AA, shift=4)
        for p in np.round(xy[ok] * 16).astype(np.int32):
            cv2.circle(out, (int(p[0]), int(p[1])), 2 * 16, c, -1, cv2.LINE_AA, shift=4)
    return out


def labelled(panel: np.ndarray, text: str) -> np.ndarray:
    import cv2

    bar = np.full((22, panel.shape[1], 3), 24, np.uint8)
    cv2.putText(bar, text, (6, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (235, 235, 235), 1, cv2.LINE_AA)
    return np.concatenate([bar, panel])


def small(image: np.ndarray) -> np.ndarray:
    import cv2

    h, w = image.shape[:2]
    return cv2.resize(image, (PANEL_W, round(h * PANEL_W / w)), interpolation=cv2.INTER_AREA)


def save_pair(path: Path, left: np.ndarray, left_text: str, right: np.ndarray, right_text: str) -> None:
    """before | after as a palette PNG (photos with a few colours of skeleton: 160 colours keep them small)."""
    from PIL import Image

    a, b = labelled(small(left), left_text), labelled(small(right), right_text)
    gap = np.full((a.shape[0], 4, 3), 255, np.uint8)
    picture = Image.fromarray(np.concatenate([a, gap, b], axis=1))
    picture.quantize(colors=160, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)
    print(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: {picture.width}x{picture.height}, "
          f"{path.stat().st_size / 1024:.0f} KB")


# ----------------------------------------------------------------------------------------------------------------
# The three pictures
# ----------------------------------------------------------------------------------------------------------------
def picture_track(photo: np.ndarray, out: Path, rng: np.random.Generator) -> None:
    clip = shop_clip(rng)
    tracked, result = dw.track.track_frames(clip, dw.track.TrackOptions(select="largest"))
    shown = max(range(len(clip)), key=lambda t: clip[t].people[0].box_score if
                clip[t].people[0].box_score and clip[t].people[0].body[0, 0] > 900 else -1)  # the man listed first
    print(f"track: frame {shown}; {result.describe().splitlines()[1]}")
    photo_s = fit_width(photo, W)
    s = W / photo.shape[1]
    before = overlay(photo_s, scaled(clip[shown], s))
    after = overlay(photo_s, scaled(tracked[shown], s), compare=scaled(clip[shown], s))
    save_pair(out / "pose_stage_track.png", before, "before: everybody (man listed 1st)", after,
              "after: track = largest (raw: white)")


SMOOTH_CROP = (112, 684, 208, 780)  # x0, y0, x1, y1 on dance-01: the dancer's right wrist, held at her hip
SMOOTH_FRAMES = (32, 49)  # the arm stays where it is from frame 32 on: all that moves is DWPose's jitter
SMOOTH_SHOWN = 40


def zoomed(image: np.ndarray, box: tuple[int, int, int, int]) -> tuple[np.ndarray, float]:
    import cv2

    x0, y0, x1, y1 = box
    zoom = PANEL_W / (x1 - x0)
    crop = image[y0:y1, x0:x1]
    return cv2.resize(crop, (PANEL_W, round(crop.shape[0] * zoom)), interpolation=cv2.INTER_CUBIC), zoom


def picture_smooth(dance: np.ndarray, out: Path, rng: np.random.Generator) -> list:
    """A still arm (frames 32-48), zoomed: the raw elbow and wrist wander by the jitter, the smoothed ones stay."""
    clip, _ = dance_clip(rng)
    tracked, _ = dw.track.track_frames(clip, dw.track.TrackOptions(select="largest"))
    smoothed, report = dw.smooth.smooth_frames(tracked, dw.smooth.SmoothOptions(body=0.5, hands=0.5, face=0.5))
    print("smooth:", report.describe().splitlines()[1])
    span, t = slice(*SMOOTH_FRAMES), SMOOTH_SHOWN
    raw_tracks = np.array([f.people[0].body for f in clip])[span]
    raw_tracks[raw_tracks[:, :, 2] <= 0.3] = np.nan  # a dropout is not a place the joint was
    smooth_tracks = np.array([f.people[0].body for f in smoothed])[span]
    x0, y0 = SMOOTH_CROP[:2]
    joints = (4,)  # the right wrist

    def on_panel(tracks: np.ndarray, zoom: float) -> np.ndarray:
        moved = tracks.copy()
        moved[..., :2] = (tracks[..., :2] - [x0, y0]) * zoom
        return moved

    before, zoom = zoomed(overlay(dance[t], clip[t], opacity=0.5), SMOOTH_CROP)
    before = trails(before, on_panel(raw_tracks, zoom), 1.0, joints)
    after, _ = zoomed(overlay(dance[t], smoothed[t], opacity=0.5), SMOOTH_CROP)
    after = trails(after, on_panel(smooth_tracks, zoom), 1.0, joints)
    after = trails(after, on_panel(raw_tracks, zoom), 1.0, joints, colour=(255, 255, 255))
    save_pair(out / "pose_stage_smooth.png", before, f"before: frames 32-48 (x{zoom:.1f})", after,
              "after: smooth 0.5 (raw paths: white)")
    return clip


RETARGET_CROP = (40, 120, 440, 830)  # x0, y0, x1, y1 on the 576x1024 reference: her upper body


def picture_retarget(photo: np.ndarray, clip: list, out: Path) -> None:
    """The dance (tracked, smoothed) aligned onto the woman of ref-03, before and after retargeting; the reference's
    own skeleton in white shows the lengths to match."""
    ref_photo = fit_cover(photo, W, H)
    h, w = photo.shape[:2]
    scale = max(W / w, H / h)
    x0, y0 = (round(w * scale) - W) // 2, (round(h * scale) - H) // 2
    body = body_array(WOMAN)
    body[:, :2] = np.where(body[:, 2:] > 0, body[:, :2] * scale - [x0, y0], 0.0)
    reference = kp.PoseFrame(W, H, [kp.Person(body=body)])
    tracked, _ = dw.track.track_frames(clip, dw.track.TrackOptions(select="largest"))
    smoothed, _ = dw.smooth.smooth_frames(tracked, dw.smooth.SmoothOptions(body=0.5, hands=0.5, face=0.5))
    fit = dw.align.compute_fit(reference, smoothed)
    aligned = [dw.align.apply_fit(f, fit) for f in smoothed]
    result = dw.retarget.retarget_frames(reference, aligned, dw.retarget.RetargetOptions(anchor="hips"))
    print("retarget:", "; ".join(line for line in result.describe().splitlines()[:2]))
    t = 0
    x0, y0, x1, y1 = RETARGET_CROP
    before = overlay(ref_photo, aligned[t], compare=reference)[y0:y1, x0:x1]
    after = overlay(ref_photo, result.frames[t], compare=reference)[y0:y1, x0:x1]
    save_pair(out / "pose_stage_retarget.png", before, "before: one scale (ref's pose: white)", after,
              "after: retarget 1, anchor hips")


def fit_width(image: np.ndarray, width: int) -> np.ndarray:
    import cv2

    h, w = image.shape[:2]
    return cv2.resize(image, (width, round(h * width / w)), interpolation=cv2.INTER_AREA)


def scaled(frame: object, s: float) -> object:
    """The frame's poses on a canvas s times the size (to draw on a resized photo)."""
    people = []
    for p in frame.people:
        parts = {}
        for name in ("body", "face", "left_hand", "right_hand"):
            arr = getattr(p, name).copy()
            arr[:, :2] *= s
            parts[name] = arr
        people.append(kp.Person(**parts, box=None, box_score=p.box_score))
    return kp.PoseFrame(round(frame.width * s), round(frame.height * s), people)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--media", type=Path, default=ROOT.parent / "shared" / "media")
    parser.add_argument("--out", type=Path, default=ROOT / "web" / "images")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    dance, photo = read_media(args.media)
    rng = np.random.default_rng(SEED)
    picture_track(photo, args.out, rng)
    clip = picture_smooth(dance, args.out, rng)
    picture_retarget(photo, clip, args.out)


if __name__ == "__main__":
    main()
