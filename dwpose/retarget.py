"""Per-bone retargeting: the driving skeleton rebuilt with the reference person's proportions (plain numpy).

The official pipeline (align.py) fits ONE scale for the whole clip, so an adult driver on a child, or a long-legged
dancer on a short-legged reference, keeps the driver's proportions. Here every bone of the OpenPose-18 tree (rooted
at the neck) gets its own factor:

    ratio_b = L_ref_b / (s * L_drv_b)        (times the user's multiplier for the bone's part)

- L_ref_b: the bone's length on the reference person, left and right measured separately, only from segments the
  reference SHOWS (both ends scored > 0.3 and inside the image). A bone hidden on one side takes the other side's
  length (a body is close to symmetric); a bone hidden on both sides (a half-body portrait's legs) is not invented:
  it keeps ratio 1, the driving length times the fitted global scale.
- s: the fitted global scale (canvas px per driving px) of the official one-scale fit (align.compute_fit), so a
  retargeted clip aligned afterwards gets exactly the reference's lengths. On poses already aligned onto the
  reference canvas the refit is the identity (s = 1) and bones get the reference's pixel lengths directly.
- L_drv_b: the driver's length of the bone over the whole clip (90th percentile of the frames where both ends are
  reliable and inside the frame; per person slot): 2-D lengths shrink when a limb points at the camera, so the
  longest typical length is the true one. A ratio beyond RATIO_LIMIT of the global scale means a measurement is
  wrong (a joint detected at the image border, a reference crop): that bone falls back to ratio 1.

Each frame is rebuilt from the root outward: new_child = new_parent + ratio * (child - parent), so every bone keeps
its driving direction and, in "scaled" mode, its foreshortening (the ratio scales the clip-typical length onto the
reference's). "exact" mode sets each bone to exactly the target length in every frame (direction kept), except
where the driving bone is degenerate in that frame. Joints that are missing or unreliable (score <= 0.3) are
bridged: a joint hangs on its nearest reliable ancestor with the mean ratio of the bones in between, and a joint
with no reliable ancestor becomes a root that stays put. Points not found ([0, 0, 0]) stay not found.

Hands follow the body wrist and the face follows the nose, scaled by the forearm's and the head's ratio
(retarget_hands_face) or only moved with them. Finally the whole person is shifted so the anchor (feet: the lower
ankle, both when level; hips: their midpoint; neck) stays where the driver had it; where the anchor is missing in a
frame the next anchor in the chain is used, with the offset between the two carried over from the nearest frame
where both were seen (no jump). strength interpolates between the driving poses (0) and the full retarget (1).

Everything is vectorised over all people of all frames (a fixed loop over the 17 bones).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .align import FIT_FRAME_CHOICES, SCORE_THRESHOLD, AlignOptions, PoseFit, compute_fit
from .keypoints import N_BODY, N_FACE, N_HAND, Person, PoseFrame

ANCHOR_CHOICES = ("feet", "hips", "neck")
LENGTH_CHOICES = ("scaled (keeps foreshortening)", "exact")
PARTS = ("torso", "shoulders", "upper_arm", "forearm", "thigh", "shin", "head")

# (child, parent, name, part), parents before children; the neck (1) is the root
BONES: tuple[tuple[int, int, str, str], ...] = (
    (0, 1, "neck-nose", "head"),
    (2, 1, "R shoulder", "shoulders"), (5, 1, "L shoulder", "shoulders"),
    (3, 2, "R upper arm", "upper_arm"), (6, 5, "L upper arm", "upper_arm"),
    (4, 3, "R forearm", "forearm"), (7, 6, "L forearm", "forearm"),
    (8, 1, "R torso (neck-hip)", "torso"), (11, 1, "L torso (neck-hip)", "torso"),
    (9, 8, "R thigh", "thigh"), (12, 11, "L thigh", "thigh"),
    (10, 9, "R shin", "shin"), (13, 12, "L shin", "shin"),
    (14, 0, "R nose-eye", "head"), (15, 0, "L nose-eye", "head"),
    (16, 14, "R eye-ear", "head"), (17, 15, "L eye-ear", "head"),
)
N_BONES = len(BONES)
ROOT = 1
CHILD = np.array([b[0] for b in BONES])
PARENT = np.array([b[1] for b in BONES])
BONE_OF = {c: i for i, (c, _, _, _) in enumerate(BONES)}  # joint -> the bone that ends in it
MIRROR = np.array([BONE_OF[m] for m in (0, 5, 2, 6, 3, 7, 4, 11, 8, 12, 9, 13, 10, 15, 14, 17, 16)])
FACE_BONES = [BONE_OF[j] for j in (14, 15, 16, 17)]  # the face's size: eye and ear spacing
WRISTS = ((4, "right_hand"), (7, "left_hand"))
R_ANKLE, L_ANKLE, R_HIP, L_HIP = 10, 13, 8, 11

RATIO_LIMIT = 3.0  # a bone's ratio outside [1/3, 3] of the global scale is a measurement error, not anatomy
DRIVING_PERCENTILE = 90.0
EXACT_MIN, EXACT_MAX = 0.25, 4.0  # exact mode only where the frame's bone is within this factor of its clip length
FOOT_LEVEL = 0.01  # of the frame height: ankles closer in height than this share the feet anchor


@dataclass
class RetargetOptions:
    strength: float = 1.0  # 0 = driving poses unchanged, 1 = full retarget
    anchor: str = "feet"
    multipliers: Mapping[str, float] = field(default_factory=dict)  # part -> factor on the target length
    hands_face: bool = True  # scale hands / face with their parent bone (else only move them along)
    lengths: str = LENGTH_CHOICES[0]

    def __post_init__(self) -> None:
        if not (math.isfinite(self.strength) and 0.0 <= self.strength <= 1.0):
            raise ValueError(f"retarget strength must be between 0 and 1, got {self.strength}")
        if self.anchor not in ANCHOR_CHOICES:
            raise ValueError(f"retarget anchor {self.anchor!r}: choose one of {', '.join(ANCHOR_CHOICES)}")
        if self.lengths not in LENGTH_CHOICES:
            raise ValueError(f"retarget bone lengths {self.lengths!r}: choose one of {', '.join(LENGTH_CHOICES)}")
        unknown = set(self.multipliers) - set(PARTS)
        if unknown:
            raise ValueError(f"unknown body part(s) {', '.join(sorted(unknown))}: parts are {', '.join(PARTS)}")
        for part, value in self.multipliers.items():
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"the {part} multiplier must be a positive number, got {value}")

    def multiplier_array(self) -> np.ndarray:
        return np.array([float(self.multipliers.get(part, 1.0)) for _, _, _, part in BONES])


@dataclass
class BoneReport:
    name: str
    reference: float  # px on the reference canvas (NaN = not shown)
    driving: float  # clip length in driving px, person slot 0 (NaN = never measured)
    ratio: float  # applied factor relative to the global scale, multiplier included
    source: str  # "reference", "mirrored from ...", or "FALLBACK: ..."


@dataclass
class RetargetResult:
    frames: list[PoseFrame]
    scale: float  # fitted global scale, canvas px per driving px
    fit: PoseFit | None
    bones: list[BoneReport]
    options: RetargetOptions
    reference_person: int | None
    people: int = 0
    anchor_use: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        o = self.options
        lines = [f"retargeted {self.people} person-frame(s) in {len(self.frames)} frame(s); strength {o.strength:.2f}, "
                 f"anchor {o.anchor}, bone lengths {o.lengths}, hands/face "
                 f"{'scaled with their parent' if o.hands_face else 'moved only (driving size)'}"]
        if self.fit is not None:
            how = "FALLBACK identity fit: " + self.fit.fallback if self.fit.fallback else (
                f"one-scale fit on {int(self.fit.fit_mask.sum())}/{self.fit.fit_mask.size} frames")
            lines.append(f"global scale s = {self.scale:.4f} canvas px per driving px ({how}); reference person "
                         f"{self.reference_person}")
        lines += self.notes
        if self.bones:
            lines.append(f"{'bone':20s} {'ref px':>8s} {'drv px':>8s} {'ratio':>7s}  source (ratio = bone scale / s)")
            for b in self.bones:
                ref = "-" if not np.isfinite(b.reference) else f"{b.reference:.1f}"
                drv = "-" if not np.isfinite(b.driving) else f"{b.driving:.1f}"
                lines.append(f"{b.name:20s} {ref:>8s} {drv:>8s} {b.ratio:7.3f}  {b.source}")
            fallback = [b.name for b in self.bones if b.source.startswith("FALLBACK")]
            if fallback:
                lines.append(f"{len(fallback)} bone(s) keep the driving length x global scale (times their "
                             f"multiplier): {', '.join(fallback)}")
        if self.anchor_use:
            lines.append("anchor per person-frame: " + ", ".join(f"{k} {v}" for k, v in self.anchor_use.items() if v))
        return "\n".join(lines)


def shown_points(body: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(…, 18) bool: points scored > 0.3 inside the image (a joint 'detected' beyond the border is a guess)."""
    w, h = size
    x, y = body[..., 0], body[..., 1]
    return (body[..., 2] > SCORE_THRESHOLD) & (x >= 0) & (x <= w) & (y >= 0) & (y <= h)


def bone_lengths(body: np.ndarray, shown: np.ndarray) -> np.ndarray:
    """(…, 17) bone lengths in px, NaN where either end is not shown."""
    vec = body[..., CHILD, :2].astype(np.float64) - body[..., PARENT, :2]
    length = np.hypot(vec[..., 0], vec[..., 1])
    return np.where(shown[..., CHILD] & shown[..., PARENT], length, np.nan)


def measure_reference(person: Person, size: tuple[int, int]) -> tuple[np.ndarray, list[str]]:
    """(17,) target lengths on the reference canvas (NaN = not shown on either side) and each bone's source."""
    body = _with_neck(person.body)
    own = bone_lengths(body, shown_points(body, size))
    lengths, sources = own.copy(), []
    for b in range(N_BONES):
        if np.isfinite(own[b]):
            sources.append("reference")
        elif np.isfinite(own[MIRROR[b]]):
            lengths[b] = own[MIRROR[b]]
            sources.append(f"mirrored from {BONES[MIRROR[b]][2]} (hidden on the reference)")
        else:
            sources.append("FALLBACK: the reference does not show it")
    return lengths, sources


def _with_neck(body: np.ndarray) -> np.ndarray:
    """The body with a missing neck placed at the shoulders' mean (its definition), scored by the weaker shoulder."""
    body = np.asarray(body, dtype=np.float64)
    missing = ~body[..., 1, :].any(axis=-1) & body[..., 2, :2].any(axis=-1) & body[..., 5, :2].any(axis=-1)
    if not missing.any():
        return body
    body = body.copy()
    neck = (body[..., 2, :] + body[..., 5, :]) / 2
    neck[..., 2] = np.minimum(body[..., 2, 2], body[..., 5, 2])
    body[..., 1, :] = np.where(missing[..., None], neck, body[..., 1, :])
    return body


def clip_percentile(lengths: np.ndarray, q: float = DRIVING_PERCENTILE) -> np.ndarray:
    """Per column, the q-th percentile ('lower' method) of the finite values, NaN for an all-NaN column."""
    srt = np.sort(lengths, axis=0)  # NaN sorts last
    count = np.isfinite(lengths).sum(axis=0)
    idx = np.floor(q / 100 * np.maximum(count - 1, 0)).astype(int)
    out = np.take_along_axis(srt, idx[None], axis=0)[0] if len(lengths) else np.full(lengths.shape[1:], np.nan)
    return np.where(count > 0, out, np.nan)


def global_scale(reference: PoseFrame, driving: list[PoseFrame]) -> tuple[float, PoseFit, list[str]]:
    """The official one-scale fit's scale (canvas px per driving px); if the official frame choice gives no fit,
    the highest-scoring person of every frame is fitted instead, then the identity fit."""
    notes = []
    if not any(len(f.people) == 1 for f in driving):  # the official frame choice cannot fit: skip its warning
        fit = compute_fit(reference, driving, AlignOptions(fit_frames=FIT_FRAME_CHOICES[1]))
        if not fit.fallback:
            notes.append("no driving frame has exactly one person (the official fit's frames): fitted on the "
                         "highest-scoring person of every frame")
        return float(fit.a[1] * fit.canvas[1] / fit.frame_size[1]), fit, notes
    fit = compute_fit(reference, driving, AlignOptions())
    if fit.fallback:
        retry = compute_fit(reference, driving, AlignOptions(fit_frames=FIT_FRAME_CHOICES[1]))
        if not retry.fallback:
            notes.append(f"the official fit failed ({fit.fallback}); fitted on the selected person of every frame")
            fit = retry
    scale = float(fit.a[1] * fit.canvas[1] / fit.frame_size[1])
    return scale, fit, notes


@dataclass
class _Rows:
    """All people of all frames as arrays (row = one person in one frame)."""

    body: np.ndarray  # (N, 18, 3) float64
    hands: np.ndarray  # (N, 2, 21, 3): right, left
    face: np.ndarray  # (N, 68, 3)
    frame: np.ndarray  # (N,) frame index
    slot: np.ndarray  # (N,) position in the frame's people list
    size: np.ndarray  # (N, 2) frame width, height


def _rows(frames: Sequence[PoseFrame]) -> _Rows:
    people = [(i, j, f, p) for i, f in enumerate(frames) for j, p in enumerate(f.people)]
    n = len(people)
    body = np.zeros((n, N_BODY, 3))
    hands = np.zeros((n, 2, N_HAND, 3))
    face = np.zeros((n, N_FACE, 3))
    for r, (_, _, _, p) in enumerate(people):
        body[r], hands[r, 0], hands[r, 1], face[r] = p.body, p.right_hand, p.left_hand, p.face
    return _Rows(body, hands, face, np.array([i for i, _, _, _ in people], dtype=int),
                 np.array([j for _, j, _, _ in people], dtype=int),
                 np.array([(f.width, f.height) for _, _, f, _ in people], dtype=np.float64).reshape(n, 2))


def _found(points: np.ndarray) -> np.ndarray:
    return points.any(axis=-1)  # [0, 0, 0] = not found


def slot_ratios(ref_lengths: np.ndarray, drv_lengths: np.ndarray, scale: float, sources: list[str],
                multipliers: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """(17,) applied ratios (driving px -> driving px) for one person slot and the source of each."""
    with np.errstate(divide="ignore", invalid="ignore"):  # zero-length bones: caught by the checks below
        ratio = ref_lengths / (scale * drv_lengths)
    out, why = np.ones(N_BONES), list(sources)
    for b in range(N_BONES):
        if why[b].startswith("FALLBACK"):
            why[b] += " -> driving length x global scale"
        elif not np.isfinite(drv_lengths[b]) or drv_lengths[b] <= 1.0:
            why[b] = "FALLBACK: the driver never shows it fully -> driving length x global scale"
        elif not (1 / RATIO_LIMIT <= ratio[b] <= RATIO_LIMIT):
            why[b] = (f"FALLBACK: implausible ratio {ratio[b]:.2f} (a joint is misdetected) -> driving length x "
                      "global scale")
        else:
            out[b] = ratio[b]
    return out * multipliers, why



def _mean_ratio(weighted: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Length-weighted mean ratio; 1 (the driving length kept) where the bones have no length at all (a skeleton
    whose points collapsed onto one spot), instead of 0 / 0."""
    return np.divide(weighted, weight, out=np.ones_like(weighted, dtype=np.float64), where=weight > 0)

def _retarget_rows(rows: _Rows, ratios: np.ndarray, weights: np.ndarray, face_ratio: np.ndarray,
                   opts: RetargetOptions) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, int]]:
    """New (body, hands, face) for every row; ratios/weights (N, 17), face_ratio (N,)."""
    n = len(rows.body)
    body = _with_neck(rows.body)
    pos = body[..., :2]
    found = _found(rows.body)
    reliable = body[..., 2] > SCORE_THRESHOLD  # the neck counts if rebuilt from two reliable shoulders
    exact = opts.lengths == LENGTH_CHOICES[1]

    disp = np.zeros((n, N_BODY, 2))  # new - driving, before the anchor shift
    # chain state as seen by a joint's children: nearest reliable ancestor-or-self, its displacement, and the summed
    # (ratio * weight, weight) of the bones from it down to the joint (for bridging unreliable joints)
    has = np.zeros((n, N_BODY), dtype=bool)
    anc_pos = np.zeros((n, N_BODY, 2))
    anc_disp = np.zeros((n, N_BODY, 2))
    acc_t = np.zeros((n, N_BODY))
    acc_w = np.zeros((n, N_BODY))
    has[:, ROOT] = reliable[:, ROOT]
    anc_pos[:, ROOT] = pos[:, ROOT]
    end_ratio = np.ones((n, N_BONES))  # ratio each bone's end was placed with (hands/face pivots reuse it)
    for b, (c, p, _, _) in enumerate(BONES):
        t_in = acc_t[:, p] + ratios[:, b] * weights[:, b]
        w_in = acc_w[:, p] + weights[:, b]
        k = _mean_ratio(t_in, w_in)
        vec = pos[:, c] - anc_pos[:, p]
        if exact:
            length = np.hypot(vec[:, 0], vec[:, 1])
            clip = weights[:, b]
            direct = has[:, p] & (acc_w[:, p] == 0) & reliable[:, c] & (length >= EXACT_MIN * clip) & (
                length <= EXACT_MAX * clip)
            k = np.where(direct, ratios[:, b] * clip / np.maximum(length, 1e-9), k)
        end_ratio[:, b] = k
        d = np.where(has[:, p, None], anc_disp[:, p] + (k[:, None] - 1) * vec, 0.0)
        disp[:, c] = d
        keep = reliable[:, c]
        has[:, c] = keep | has[:, p]
        anc_pos[:, c] = np.where(keep[:, None], pos[:, c], anc_pos[:, p])
        anc_disp[:, c] = np.where(keep[:, None], d, anc_disp[:, p])
        acc_t[:, c] = np.where(keep, 0.0, t_in)
        acc_w[:, c] = np.where(keep, 0.0, w_in)

    def pivot_disp(joint: int, pts: np.ndarray, pts_found: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(pivot in driving px, its displacement): the body joint if found, else the part's own first/mean point
        placed on the joint's chain."""
        b, p = BONE_OF[joint], BONES[BONE_OF[joint]][1]
        cnt = pts_found.sum(axis=1)
        mean = (pts[..., :2] * pts_found[..., None]).sum(axis=1) / np.maximum(cnt, 1)[:, None]
        own = np.where(pts_found[:, :1], pts[:, 0, :2], mean)
        use_body = found[:, joint]
        pivot = np.where(use_body[:, None], pos[:, joint], own)
        k = np.where(use_body, end_ratio[:, b], _mean_ratio(acc_t[:, p] + ratios[:, b] * weights[:, b],
                                                             acc_w[:, p] + weights[:, b]))
        d = np.where(has[:, p, None], anc_disp[:, p] + (k[:, None] - 1) * (pivot - anc_pos[:, p]), 0.0)
        return pivot, np.where(use_body[:, None], disp[:, joint], d)

    hands = rows.hands.copy()
    hand_disp = np.zeros((n, 2, N_HAND, 2))
    for h, (wrist, _) in enumerate(WRISTS):
        pts, pts_found = rows.hands[:, h], _found(rows.hands[:, h])
        pivot, d = pivot_disp(wrist, pts, pts_found)
        k = ratios[:, BONE_OF[wrist]] if opts.hands_face else np.ones(n)
        hand_disp[:, h] = d[:, None] + (k[:, None, None] - 1) * (pts[..., :2] - pivot[:, None])
    face_found = _found(rows.face)
    pivot, d = pivot_disp(0, rows.face, face_found)
    k = face_ratio if opts.hands_face else np.ones(n)
    face_disp = d[:, None] + (k[:, None, None] - 1) * (rows.face[..., :2] - pivot[:, None])

    shift, use = _anchor_shift(rows, pos, disp, reliable, opts.anchor)
    s = opts.strength
    out_body, out_face = rows.body.copy(), rows.face.copy()
    out_body[..., :2] += s * (disp - shift[:, None])
    hands[..., :2] += s * (hand_disp - shift[:, None, None])
    out_face[..., :2] += s * (face_disp - shift[:, None])
    for arr, mask in ((out_body, found), (hands, _found(rows.hands)), (out_face, face_found)):
        arr[~mask] = 0.0
    return out_body, hands, out_face, use


def _anchor_disp(name: str, rows: _Rows, pos: np.ndarray, disp: np.ndarray,
                 reliable: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(displacement of the anchor point (N, 2), where it exists (N,))."""
    if name == "neck":
        return disp[:, ROOT], reliable[:, ROOT]
    ids = [R_HIP, L_HIP] if name == "hips" else [R_ANKLE, L_ANKLE]
    ok = reliable[:, ids]
    if name == "hips":
        w = ok.astype(np.float64)
    else:  # the lower (standing) ankle; both when level
        y = np.where(ok, pos[:, ids, 1], 0.0)
        lowest = np.where(ok, y, -np.inf).max(axis=1, keepdims=True)
        below = np.where(ok, np.where(np.isfinite(lowest), lowest, 0.0) - y, 0.0)  # >= 0 px above the lower ankle
        w = np.where(ok, np.exp(-below / (FOOT_LEVEL * rows.size[:, 1:2])), 0.0)
    total = w.sum(axis=1)
    d = (disp[:, ids] * w[..., None]).sum(axis=1) / np.maximum(total, 1e-12)[:, None]
    return d, ok.any(axis=1)


def _anchor_shift(rows: _Rows, pos: np.ndarray, disp: np.ndarray, reliable: np.ndarray,
                  anchor: str) -> tuple[np.ndarray, dict[str, int]]:
    """The displacement to subtract per row so the anchor stays put; fallbacks carry the anchor offset from the
    nearest frame (same person slot) where both were seen."""
    chain = [anchor] + [a for a in ("hips", "neck", "feet") if a != anchor]
    found = {a: _anchor_disp(a, rows, pos, disp, reliable) for a in chain}
    d_primary, ok_primary = found[anchor]
    shift = np.where(ok_primary[:, None], d_primary, 0.0)
    done = ok_primary.copy()
    use = {anchor: int(ok_primary.sum())}
    for fb in chain[1:]:
        d_fb, ok_fb = found[fb]
        todo = ~done & ok_fb
        use[f"{fb} (fallback)"] = int(todo.sum())
        if not todo.any():
            continue
        offset = np.zeros((len(rows.body), 2))
        both = ok_primary & ok_fb
        for slot in np.unique(rows.slot[todo]):
            src = np.flatnonzero(both & (rows.slot == slot))
            if not len(src):
                continue
            dst = np.flatnonzero(todo & (rows.slot == slot))
            frames = rows.frame[src]  # rows are in frame order
            j = np.clip(np.searchsorted(frames, rows.frame[dst]), 1, len(src) - 1) if len(src) > 1 else np.zeros(
                len(dst), dtype=int)
            if len(src) > 1:
                nearer_left = np.abs(rows.frame[dst] - frames[j - 1]) <= np.abs(frames[j] - rows.frame[dst])
                j = np.where(nearer_left, j - 1, j)
            offset[dst] = d_primary[src[j]] - d_fb[src[j]]
        shift = np.where(todo[:, None], d_fb + offset, shift)
        done |= todo
    use["none (not moved)"] = int((~done).sum())
    return shift, use


def retarget_frames(reference: PoseFrame, driving: list[PoseFrame],
                    options: RetargetOptions | None = None) -> RetargetResult:
    """The driving frames with every person rebuilt on the reference person's bone lengths (see module doc)."""
    opts = options or RetargetOptions()
    if not driving:
        raise ValueError("no driving pose frames to retarget: connect the poses detected on the driving video")
    if opts.strength == 0:  # exactly the input (no float round trip)
        result = RetargetResult(frames=list(driving), scale=1.0, fit=None, bones=[], options=opts,
                                reference_person=None, people=sum(len(f.people) for f in driving))
        result.notes.append("strength 0: the driving poses are passed through unchanged")
        return result
    rows = _rows(driving)
    if not len(rows.body):
        return RetargetResult(frames=list(driving), scale=1.0, fit=None, bones=[], options=opts, reference_person=None,
                              notes=["no person in any driving frame: nothing to retarget"])
    scale, fit, notes = global_scale(reference, driving)
    ref_idx = fit.reference_person
    result = RetargetResult(frames=[], scale=scale, fit=fit, bones=[], options=opts, reference_person=ref_idx,
                            people=len(rows.body), notes=notes)
    if ref_idx is None:
        result.notes.append("NO RETARGET: no person in the reference to measure; the driving poses are unchanged")
        result.frames = list(driving)
        return result
    if len(reference.people) > 1:
        result.notes.append(f"{len(reference.people)} people in the reference: measured person {ref_idx} (highest "
                            "score)")
    ref_lengths, sources = measure_reference(reference.people[ref_idx], (reference.width, reference.height))
    mult = opts.multiplier_array()

    body = _with_neck(rows.body)
    drv = bone_lengths(body, shown_points(body, (rows.size[:, :1], rows.size[:, 1:2])))
    n_slots = int(rows.slot.max()) + 1 if len(rows.slot) else 0
    ratios, weights, face_ratio = np.ones((len(rows.body), N_BONES)), np.ones((len(rows.body), N_BONES)), np.ones(
        len(rows.body))
    for slot in range(n_slots):
        sel = rows.slot == slot
        drv_clip = clip_percentile(drv[sel])
        ratio, why = slot_ratios(ref_lengths, drv_clip, scale, sources, mult)
        # bridging weights: the bone's driving length, else its reference length in driving px, else 1
        w = np.where(np.isfinite(drv_clip) & (drv_clip > 1.0), drv_clip,
                     np.where(np.isfinite(ref_lengths), ref_lengths / scale, 1.0))
        measured = np.array([not s.startswith("FALLBACK") for s in why])
        face = [b for b in FACE_BONES if measured[b]] or ([0] if measured[0] else [])
        fr = float(np.sum(ratio[face] * w[face]) / np.sum(w[face])) if face else float(mult[0])
        ratios[sel], weights[sel], face_ratio[sel] = ratio, w, fr
        if slot == 0:
            result.bones = [BoneReport(BONES[b][2], float(ref_lengths[b]), float(drv_clip[b]), float(ratio[b]),
                                       why[b] + (f" (x{mult[b]:.2f} {BONES[b][3]})" if mult[b] != 1 else ""))
                            for b in range(N_BONES)]
    if n_slots > 1:
        result.notes.append(f"up to {n_slots} people per frame: each list position is measured on its own (use "
                            "ControlNeXt Track People first so a position is always the same person); the table "
                            "shows position 0")

    out_body, out_hands, out_face, use = _retarget_rows(rows, ratios, weights, face_ratio, opts)
    result.anchor_use = use
    frames = [PoseFrame(f.width, f.height, []) for f in driving]
    for r, (i, j) in enumerate(zip(rows.frame, rows.slot, strict=True)):
        src = driving[i].people[j]
        frames[i].people.append(Person(body=out_body[r], face=out_face[r], left_hand=out_hands[r, 1],
                                       right_hand=out_hands[r, 0], box=None, box_score=src.box_score))
    result.frames = frames
    return result
