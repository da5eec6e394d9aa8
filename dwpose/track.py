"""Person identities across frames: the dancer stays the dancer, bystanders stay bystanders.

DWPose finds people in every frame on its own, in its own order (best detector score first), so the list order
swaps when two people cross, and a bystander can become "person 0" (IDEA-Research/DWPose #77). This module links the
detections of consecutive frames into tracks:

- Prediction: every track moves at its recent velocity (the median keypoint displacement between its last
  observations, smoothed) for up to PREDICT_FRAMES frames after it was last seen, so people who cross or are hidden
  for a few frames are expected where they will reappear. Keypoints hidden for a moment keep their predicted place
  for STALE_FRAMES frames.
- Cost of linking a track to a detection: the mean distance of their common keypoints (scored above the pack's 0.3
  threshold; the box centres when fewer than 3 are shared), in units of the track's body size, plus box overlap
  (1 - IoU) and a body-size change term. Links beyond a gate (which widens while a track is unseen) are refused.
- Assignment: the Hungarian method (shortest augmenting paths, in numpy) minimises the total cost per frame.
- A detection nobody claims starts a new track; a track unseen for more than `max_missing` frames ends. A new track
  never inherits an old identity, so a bystander who walks in later can never become the selected dancer.

Selection happens in the first frame that has anybody: the largest person, the highest score, a list index, or the
person nearest to a point. `keep` returns that person alone (one person per frame, none where they are not seen), or
everybody in a fixed order: slot 0 = the selected person, then the others by first appearance; a person absent from a
frame is an all-zero placeholder there (nothing is drawn), and absent people at the end of the list are left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .align import SCORE_THRESHOLD
from .keypoints import Person, PoseFrame

SELECT_CHOICES = ("largest", "highest score", "index", "nearest to point")
KEEP_CHOICES = ("selected person", "all people")

PREDICT_FRAMES = 8  # constant-velocity prediction for at most this many frames after the last sighting
STALE_FRAMES = 4  # a keypoint not seen for longer no longer counts for matching
GATE = 0.6  # max mean keypoint distance for a link, in body sizes, one frame after the last sighting
GATE_GROWTH = 0.08  # ... plus this per extra frame unseen
GATE_MAX = 1.5
FULL_BODY_POINTS = 10  # detections with fewer visible body points do not update the body size (partly hidden)
BIG = 1e9


@dataclass
class TrackOptions:
    select: str = SELECT_CHOICES[0]
    index: int = 0  # for select == "index": position in the first frame's people list
    x: float = 0.5  # for select == "nearest to point": fractions of the frame width / height
    y: float = 0.5
    keep: str = KEEP_CHOICES[0]
    max_missing: int = 30  # frames a track survives unseen (an occlusion)

    def __post_init__(self) -> None:
        if self.select not in SELECT_CHOICES:
            raise ValueError(f"select={self.select!r}: choose one of {', '.join(SELECT_CHOICES)}")
        if self.keep not in KEEP_CHOICES:
            raise ValueError(f"keep={self.keep!r}: choose one of {', '.join(KEEP_CHOICES)}")
        if isinstance(self.index, bool) or not isinstance(self.index, int) or self.index < 0:
            raise ValueError(f"index={self.index!r}: use a position in the first frame's people list (0 = first)")
        for name in ("x", "y"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not np.isfinite(value):
                raise ValueError(f"{name}={value!r}: use a fraction of the frame size (0 = left/top, 1 = right/bottom)")
        if isinstance(self.max_missing, bool) or not isinstance(self.max_missing, int) or self.max_missing < 0:
            raise ValueError(f"max_missing={self.max_missing!r}: use a whole number of frames, 0 or more")


def linear_assignment(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Minimum-cost matching of a rectangular cost matrix (rows, cols): the Hungarian method as shortest augmenting
    paths with dual potentials, O(n^2 m) with the inner loop over columns in numpy. Every row of the smaller side is
    matched. Returns (row indices, column indices), sorted by row."""
    cost = np.asarray(cost, dtype=np.float64)
    if cost.ndim != 2:
        raise ValueError(f"cost must be a 2-D matrix, got shape {cost.shape}")
    if cost.size == 0:
        return np.zeros(0, dtype=int), np.zeros(0, dtype=int)
    transposed = cost.shape[0] > cost.shape[1]
    c = cost.T if transposed else cost
    n, m = c.shape
    u = np.zeros(n + 1)
    v = np.zeros(m + 1)
    match = np.zeros(m + 1, dtype=int)  # match[j] = 1-based row holding column j (column 0 is the virtual start)
    way = np.zeros(m + 1, dtype=int)
    for i in range(1, n + 1):
        match[0] = i
        j0 = 0
        minv = np.full(m + 1, np.inf)
        used = np.zeros(m + 1, dtype=bool)
        while True:
            used[j0] = True
            i0 = match[j0]
            free = ~used
            free[0] = False
            reduced = c[i0 - 1] - u[i0] - v[1:]
            better = free[1:] & (reduced < minv[1:])
            minv[1:][better] = reduced[better]
            way[1:][better] = j0
            candidates = np.where(free[1:], minv[1:], np.inf)
            j1 = int(np.argmin(candidates)) + 1
            delta = candidates[j1 - 1]
            u[match[used]] += delta
            v[used] -= delta
            minv[free] -= delta
            j0 = j1
            if match[j0] == 0:
                break
        while j0:  # flip the augmenting path
            j1 = way[j0]
            match[j0] = match[j1]
            j0 = j1
    cols = np.nonzero(match[1:])[0]
    rows = match[1:][cols] - 1
    if transposed:
        rows, cols = cols, rows
    order = np.argsort(rows)
    return rows[order], cols[order]


@dataclass
class _Detections:
    """Every person of every frame as arrays (row n = one person), in frame order."""

    frame: np.ndarray  # (N,) frame index
    index: np.ndarray  # (N,) position in that frame's people list
    points: np.ndarray  # (N, 18, 2) body
    mask: np.ndarray  # (N, 18) body points above the threshold
    centre: np.ndarray  # (N, 2) centre of the visible keypoints' box
    half: np.ndarray  # (N, 2) half its width and height
    size: np.ndarray  # (N,) body size in px: the longer side of that box
    full: np.ndarray  # (N,) enough body visible to measure its size
    usable: np.ndarray  # (N,) some keypoint above the threshold (else the person cannot be followed)


def _detections(frames: Sequence[PoseFrame]) -> _Detections:
    people = [(t, i, p.all_points()) for t, f in enumerate(frames) for i, p in enumerate(f.people)]
    n = len(people)
    pts = np.stack([p for _, _, p in people]).astype(np.float64) if n else np.zeros((0, 128, 3))
    seen = pts[..., 2] > SCORE_THRESHOLD  # (N, 128)
    body_mask = seen[:, :18]
    use = np.where((body_mask.sum(axis=1) >= 2)[:, None], np.pad(body_mask, ((0, 0), (0, 110))), seen)
    # too little body visible: the box falls back to whatever is (hands, face)
    lo = np.where(use[..., None], pts[..., :2], np.inf).min(axis=1)
    hi = np.where(use[..., None], pts[..., :2], -np.inf).max(axis=1)
    usable = use.any(axis=1)
    lo, hi = np.where(usable[:, None], lo, 0.0), np.where(usable[:, None], hi, 0.0)
    floor = np.array([0.01 * max(frames[t].width, frames[t].height) for t, _, _ in people])
    return _Detections(
        frame=np.array([t for t, _, _ in people], dtype=int), index=np.array([i for _, i, _ in people], dtype=int),
        points=pts[:, :18, :2], mask=body_mask, centre=(lo + hi) / 2, half=(hi - lo) / 2,
        size=np.maximum((hi - lo).max(axis=1, initial=0.0), floor), full=body_mask.sum(axis=1) >= FULL_BODY_POINTS,
        usable=usable)


class _Tracks:
    """Track state as arrays (row = track id), grown as people appear."""

    def __init__(self, capacity: int) -> None:
        self.count = 0
        self.points = np.zeros((capacity, 18, 2))  # last known place of each body keypoint
        self.age = np.zeros((capacity, 18))  # frames since each was seen
        self.centre = np.zeros((capacity, 2))  # box of the last sighting: centre and half extent
        self.half = np.zeros((capacity, 2))
        self.size = np.ones(capacity)
        self.last = np.zeros(capacity, dtype=int)  # frame last seen
        self.velocity = np.zeros((capacity, 2))  # px per frame
        self.hits = np.zeros(capacity, dtype=int)
        self.frames: list[list[int]] = []

    def start(self, det: _Detections, rows: np.ndarray, t: int) -> np.ndarray:
        ids = np.arange(self.count, self.count + len(rows))
        self.count += len(rows)
        self.points[ids] = det.points[rows]
        self.age[ids] = np.where(det.mask[rows], 0, 10 ** 6)
        self.centre[ids] = det.centre[rows]
        self.half[ids] = det.half[rows]
        self.size[ids] = det.size[rows]
        self.last[ids] = t
        self.hits[ids] = 1
        self.frames += [[t] for _ in rows]
        return ids

    def update(self, ids: np.ndarray, det: _Detections, rows: np.ndarray, t: int) -> None:
        gap = np.maximum(t - self.last[ids], 1)[:, None]
        mask = det.mask[rows]
        # velocity: median displacement of the keypoints seen at both sightings (robust to one fast limb)
        seen = mask & (self.age[ids] == 0)
        count = seen.sum(axis=1)
        srt = np.sort(np.where(seen[..., None], det.points[rows] - self.points[ids], np.nan), axis=1)  # NaN last
        pick = np.arange(len(ids))
        median = (srt[pick, np.maximum((count - 1) // 2, 0)] + srt[pick, count // 2]) / 2
        step = np.where((count >= 2)[:, None], median, det.centre[rows] - self.centre[ids]) / gap
        self.velocity[ids] = np.where((self.hits[ids] == 1)[:, None], step, 0.6 * step + 0.4 * self.velocity[ids])
        shift = self.velocity[ids] * np.minimum(gap, PREDICT_FRAMES)
        self.points[ids] = np.where(mask[..., None], det.points[rows], self.points[ids] + shift[:, None])
        self.age[ids] = np.where(mask, 0, self.age[ids] + gap)
        self.centre[ids] = det.centre[rows]
        self.half[ids] = det.half[rows]
        self.size[ids] = np.where(det.full[rows], 0.8 * self.size[ids] + 0.2 * det.size[rows], self.size[ids])
        self.last[ids] = t
        self.hits[ids] += 1
        for i in ids:
            self.frames[i].append(t)


def _link_costs(tracks: _Tracks, ids: np.ndarray, det: _Detections, rows: np.ndarray,
                t: int) -> tuple[np.ndarray, np.ndarray]:
    """(cost (k, n), allowed (k, n)) of linking live tracks `ids` to the detections `rows` of frame t: each track
    moved on at its velocity, its keypoints unseen for too long left out."""
    gap = t - tracks.last[ids]
    shift = tracks.velocity[ids] * np.minimum(gap, PREDICT_FRAMES)[:, None]
    usable = tracks.age[ids] + gap[:, None] <= STALE_FRAMES + 1
    size = tracks.size[ids][:, None]
    common = usable[:, None] & det.mask[rows][None]  # (k, n, 18)
    n_common = common.sum(axis=-1)
    diff = (tracks.points[ids] + shift[:, None])[:, None] - det.points[rows][None]
    dist = np.sqrt(diff[..., 0] ** 2 + diff[..., 1] ** 2)
    d = (dist * common).sum(axis=-1) / np.maximum(n_common, 1)
    offset = (tracks.centre[ids] + shift)[:, None] - det.centre[rows][None]  # (k, n, 2)
    if (n_common < 3).any():  # too few shared keypoints: compare the box centres
        d = np.where(n_common >= 3, d, np.sqrt(offset[..., 0] ** 2 + offset[..., 1] ** 2))
    d = d / size
    # box overlap (IoU) of the moved track box and the detection's
    th, dh = tracks.half[ids][:, None], det.half[rows][None]
    overlap = np.minimum(np.maximum(th + dh - np.abs(offset), 0.0), 2 * np.minimum(th, dh))  # per axis
    inter = overlap[..., 0] * overlap[..., 1]
    union = 4 * (th[..., 0] * th[..., 1] + dh[..., 0] * dh[..., 1]) - inter
    iou = inter / np.maximum(union, 1e-9)
    size_change = np.abs(np.log(det.size[rows][None] / size)) * det.full[rows][None]
    cost = d + 0.5 * (1.0 - iou) + 0.5 * size_change + 0.02 * (gap[:, None] - 1)
    allowed = d <= np.minimum(GATE + GATE_GROWTH * (gap[:, None] - 1), GATE_MAX)
    return cost, allowed


def _assign(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """linear_assignment, with the common case answered directly: when every row of the smaller side has a different
    cheapest partner, taking those is optimal (each pays its minimum)."""
    if cost.size == 0:  # no track and detection within reach of each other (someone new, far away): no links
        return np.zeros(0, dtype=int), np.zeros(0, dtype=int)
    if cost.shape[0] <= cost.shape[1]:
        best = np.argmin(cost, axis=1)
        if len(set(best.tolist())) == len(best):
            return np.arange(cost.shape[0]), best
    else:
        best = np.argmin(cost, axis=0)
        if len(set(best.tolist())) == len(best):
            order = np.argsort(best)
            return best[order], order
    return linear_assignment(cost)


def track_people(frames: Sequence[PoseFrame], max_missing: int = 30) -> tuple[list[list[int]], list[list[int]]]:
    """(track id per frame and person, -1 = no keypoint above the threshold; the frames each track was seen in)."""
    det = _detections(frames)
    tracks = _Tracks(len(det.frame))
    track_of = np.full(len(det.frame), -1)
    bounds = np.searchsorted(det.frame, np.arange(len(frames) + 1))
    for t in range(len(frames)):
        rows = np.arange(bounds[t], bounds[t + 1])
        rows = rows[det.usable[rows]]
        if not rows.size:
            continue
        live = np.nonzero(t - tracks.last[:tracks.count] <= max_missing + 1)[0]
        claimed = np.zeros(rows.size, dtype=bool)
        if live.size:
            cost, allowed = _link_costs(tracks, live, det, rows, t)
            # only tracks and detections with some allowed link take part (e.g. not a track hidden right now)
            tr_ok, det_ok = np.nonzero(allowed.any(axis=1))[0], np.nonzero(allowed.any(axis=0))[0]
            r, c = _assign(np.where(allowed, cost, BIG)[np.ix_(tr_ok, det_ok)])
            r, c = tr_ok[r], det_ok[c]
            ok = allowed[r, c]
            r, c = r[ok], c[ok]
            if r.size:
                tracks.update(live[r], det, rows[c], t)
                track_of[rows[c]] = live[r]
                claimed[c] = True
        fresh = rows[~claimed]
        if fresh.size:  # nobody's continuation: a new person
            track_of[fresh] = tracks.start(det, fresh, t)
    ids = [[-1] * len(f.people) for f in frames]
    for n in range(len(det.frame)):
        ids[det.frame[n]][det.index[n]] = int(track_of[n])
    return ids, tracks.frames


def _extent(person: Person) -> tuple[float, float, float, float] | None:
    """The person's box: the detector's when given, else the visible body points' (as align.select_person)."""
    if person.box is not None:
        return person.box
    pts = person.body[person.body[:, 2] > SCORE_THRESHOLD, :2]
    if len(pts) == 0:
        every = person.all_points()
        pts = every[every[:, 2] > SCORE_THRESHOLD, :2]
    if len(pts) == 0:
        return None
    (x0, y0), (x1, y1) = pts.min(axis=0), pts.max(axis=0)
    return float(x0), float(y0), float(x1), float(y1)


def _score(person: Person) -> float:
    s = person.body[:, 2]
    return float(s[s > SCORE_THRESHOLD].mean()) if (s > SCORE_THRESHOLD).any() else 0.0


def select_track(frames: Sequence[PoseFrame], ids: list[list[int]],
                 options: TrackOptions) -> tuple[int | None, int | None, str]:
    """(track id, first frame with people, why) of the person chosen in the first frame that has anybody tracked."""
    first = next((t for t, row in enumerate(ids) if any(i >= 0 for i in row)), None)
    if first is None:
        return None, None, "nobody was found in any frame"
    frame = frames[first]
    cands = [(i, tid) for i, tid in enumerate(ids[first]) if tid >= 0]
    where = f"frame {first}" + (" (the first with people)" if first else "")
    if options.select == "index":
        n = len(frame.people)
        if options.index >= n:
            raise ValueError(f"index {options.index} is out of range: {where} has {n} people (0..{n - 1}); choose an "
                             "index in that range or another select mode")
        tid = ids[first][options.index]
        if tid < 0:
            raise ValueError(f"person {options.index} of {where} has no keypoint scoring above {SCORE_THRESHOLD}: "
                             "it cannot be followed; choose another index or select mode")
        return tid, first, f"index {options.index} in {where}"
    people = [frame.people[i] for i, _ in cands]
    if options.select == "highest score":
        if all(p.box_score is not None for p in people):
            values = [float(p.box_score) for p in people]
            what = "detector score"
        else:
            values = [_score(p) for p in people]
            what = "mean body keypoint score"
        pick = int(np.argmax(values))
        why = f"highest {what} ({values[pick]:.2f}) in {where}"
    elif options.select == "largest":
        boxes = [_extent(p) for p in people]
        areas = [-1.0 if b is None else (b[2] - b[0]) * (b[3] - b[1]) for b in boxes]
        pick = int(np.argmax(areas))
        why = f"largest in {where}"
    else:
        px, py = options.x * frame.width, options.y * frame.height
        boxes = [_extent(p) for p in people]
        dist = [np.inf if b is None else np.hypot(((b[0] + b[2]) / 2 - px) / frame.width,
                                                  ((b[1] + b[3]) / 2 - py) / frame.height) for b in boxes]
        pick = int(np.argmin(dist))
        why = f"nearest to ({options.x:.2f}, {options.y:.2f}) = ({px:.0f}, {py:.0f}) px in {where}"
    index, tid = cands[pick]
    return tid, first, f"{why}: list position {index} of {len(frame.people)}"


@dataclass
class TrackResult:
    ids: list[list[int]]  # per frame, per input person: track id (-1 = not trackable)
    order: list[int]  # track ids in output slot order (keep = all) or [selected]
    selected: int | None
    why: str
    spans: dict[int, list[int]]  # track id -> frames it was seen in
    frames: int
    keep: str
    dropped: int  # input people with no keypoint above the threshold
    warnings: list[str] = field(default_factory=list)

    def describe(self) -> str:
        lines = [f"{len(self.spans)} people tracked over {self.frames} frames"]
        if self.selected is None:
            lines.append(f"nobody selected: {self.why}")
        else:
            lines.append(f"selected: person {self.order.index(self.selected) if self.keep == KEEP_CHOICES[1] else 0}"
                         f" of the output ({self.why})")
        for slot, tid in enumerate(self.order):
            seen = self.spans[tid]
            first, last = seen[0], seen[-1]
            hidden = last - first + 1 - len(seen)
            gaps = np.diff(seen) - 1 if len(seen) > 1 else np.zeros(0)
            longest = int(gaps.max()) if gaps.size else 0
            mark = " (selected)" if tid == self.selected else ""
            lines.append(f"output person {slot}{mark}: frames {first}-{last}, seen in {len(seen)}, hidden in "
                         f"{hidden} between" + (f" (longest gap {longest})" if longest else ""))
        if self.keep == KEEP_CHOICES[0]:
            others = len(self.spans) - (1 if self.selected is not None else 0)
            if others:
                lines.append(f"{others} other people left out (keep = all people keeps them)")
        if self.dropped:
            lines.append(f"{self.dropped} detections with no keypoint above {SCORE_THRESHOLD} dropped")
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def track_frames(frames: Sequence[PoseFrame],
                 options: TrackOptions | None = None) -> tuple[list[PoseFrame], TrackResult]:
    """Frames with one stable person order (see the module docstring), and what was found."""
    opts = options or TrackOptions()
    frames = list(frames)
    ids, seen = track_people(frames, opts.max_missing)
    selected, _, why = select_track(frames, ids, opts)
    spans = dict(enumerate(seen))
    if opts.keep == KEEP_CHOICES[0]:
        order = [] if selected is None else [selected]
    else:
        rest = sorted((tid for tid in spans if tid != selected), key=lambda tid: (spans[tid][0], tid))
        order = ([] if selected is None else [selected]) + rest
    slot_of = {tid: k for k, tid in enumerate(order)}
    out = []
    for frame, row in zip(frames, ids, strict=True):
        slots: list[Person | None] = [None] * len(order)
        for i, tid in enumerate(row):
            if tid in slot_of:
                slots[slot_of[tid]] = frame.people[i]
        while slots and slots[-1] is None:  # absent people at the end of the list are left out
            slots.pop()
        out.append(PoseFrame(frame.width, frame.height, [Person() if p is None else p for p in slots]))
    warnings = []
    if len({(f.width, f.height) for f in frames}) > 1:
        warnings.append("the frames differ in size: positions are compared in pixels as they are")
    result = TrackResult(ids=ids, order=order, selected=selected, why=why, spans=spans, frames=len(frames),
                         keep=opts.keep, dropped=sum(row.count(-1) for row in ids), warnings=warnings)
    return out, result

