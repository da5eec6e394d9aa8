"""Temporal smoothing of pose tracks: DWPose's frame-to-frame jitter out, short dropouts filled, nothing invented.

DWPose estimates every frame on its own, so keypoints shake by a few pixels even when the dancer stands still
(IDEA-Research/DWPose #70, where the maintainers suggest a Savitzky-Golay filter). This module filters each keypoint
of each person slot over time, with numpy over all keypoints and frames at once:

- Confidence gate: a point counts as observed when its score is above SCORE_THRESHOLD (0.3, the pack's usual
  threshold). Weaker points never pull the filter.
- Gaps: a run of at most `max_gap` frames without an observation, with observations on both sides, is filled by
  linear interpolation (score: the weaker of the two ends) and then smoothed with its neighbours. A longer run, or
  one at the start or end of the clip (nothing to interpolate towards), is left exactly as it came in: a point
  missing longer stays missing, and the filter restarts after it.
- Methods: "savitzky-golay" = a least-squares quadratic over a sliding window (the classical coefficients where the
  window is complete; near gaps and clip ends the same fit over the samples that exist, dropping to a line when a
  side is empty), with an adaptive window (LPA-ICI, Katkovnik: the window shrinks where a longer one would disagree
  with a shorter one by more than the noise explains, so a sudden movement is followed at once and never rings).
  "one-euro" = the 1-euro filter (Casiez et al. 2012: a low-pass whose cut-off rises with speed), run forwards and
  then backwards over its own output: the whole clip is known, so the result has no lag.
- Strengths per part (body, hands, face) in 0..1: 0 leaves that part untouched (no filling either); larger = a
  wider window / lower cut-off.

Slot k of every frame must be the same person (ControlNeXt Track People gives that order). Coordinates are pixels;
the 1-euro speed term works in units of the canvas's longer side so its behaviour does not depend on resolution.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .align import SCORE_THRESHOLD
from .keypoints import N_BODY, N_FACE, N_HAND, Person, PoseFrame

log = logging.getLogger(__name__)

METHOD_CHOICES = ("savitzky-golay", "one-euro")
N_POINTS = N_BODY + N_FACE + 2 * N_HAND  # Person.all_points() order: body, face, left hand, right hand
PART_SLICES = {"body": slice(0, N_BODY), "face": slice(N_BODY, N_BODY + N_FACE),
               "hands": slice(N_BODY + N_FACE, N_POINTS)}

SG_MAX_HALF_WINDOW = 8  # strength 1 = a 17-frame window (about 1 s of a 15 fps driving video)
SG_GAMMA = 2.5  # ICI confidence-interval width in noise standard deviations (Katkovnik suggests 2..4)
SG_ORDER = 2  # a quadratic follows accelerations without lag; a line would flatten every turn
ONE_EURO_CUTOFF = (0.5, 0.012)  # min cut-off in cycles per frame at strength -> 0 and at strength 1 (log-spaced)
ONE_EURO_BETA = 10.0  # cut-off rise (cycles/frame) per canvas-long-side/frame of speed: fast moves stay sharp
ONE_EURO_D_CUTOFF = 0.1  # cycles per frame for the speed estimate (low: jitter must not open the filter)


@dataclass
class SmoothOptions:
    body: float = 0.5
    hands: float = 0.5
    face: float = 0.5
    max_gap: int = 4  # frames
    method: str = METHOD_CHOICES[0]

    def __post_init__(self) -> None:
        for name in ("body", "hands", "face"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"smoothing strength {name}={value!r}: use a number from 0 (off) to 1 (strongest)")
        if isinstance(self.max_gap, bool) or not isinstance(self.max_gap, int) or self.max_gap < 0:
            raise ValueError(f"max_gap={self.max_gap!r}: use a whole number of frames, 0 or more")
        if self.method not in METHOD_CHOICES:
            raise ValueError(f"smoothing method {self.method!r}: choose one of {', '.join(METHOD_CHOICES)}")


@dataclass
class SmoothReport:
    frames: int = 0
    slots: int = 0
    method: str = ""
    observed: int = 0  # point-frames above the threshold (in smoothed parts)
    filled: int = 0  # point-frames filled in gaps of <= max_gap
    left_missing: int = 0  # point-frames in longer gaps, left as they were
    jitter_before: dict[str, float] = field(default_factory=dict)  # px, RMS second difference per part
    jitter_after: dict[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        lines = [f"{self.method}: {self.frames} frames, {self.slots} person slot(s); {self.observed} point-frames "
                 f"smoothed, {self.filled} filled (gaps <= max_gap), {self.left_missing} left missing (longer gaps)"]
        for part, before in self.jitter_before.items():
            after = self.jitter_after.get(part, float("nan"))
            lines.append(f"jitter {part}: {before:.2f} px -> {after:.2f} px (RMS second difference)")
        return "\n".join(lines)


def savgol_coefficients(half_window: int, order: int = SG_ORDER) -> np.ndarray:
    """The classical Savitzky-Golay smoothing weights (2 * half_window + 1,) for the window's centre: the first row of
    the pseudo-inverse of the Vandermonde matrix of offsets -h..h (what scipy.signal.savgol_coeffs gives)."""
    if half_window < 1 or not 0 <= order < 2 * half_window + 1:
        raise ValueError(f"Savitzky-Golay needs order < window: half_window={half_window}, order={order}")
    offsets = np.arange(-half_window, half_window + 1, dtype=np.float64)
    vander = offsets[:, None] ** np.arange(order + 1)
    return np.linalg.pinv(vander)[0]


def jitter_rms(xy: np.ndarray, present: np.ndarray) -> float:
    """RMS length (px) of the second difference x[t+1] - 2 x[t] + x[t-1] over the triples where all three frames are
    present. xy (T, ..., 2), present (T, ...). NaN when there is no such triple."""
    xy = np.asarray(xy, dtype=np.float64)
    present = np.asarray(present, dtype=bool)
    if xy.shape[0] < 3:
        return float("nan")
    d2 = xy[2:] - 2.0 * xy[1:-1] + xy[:-2]
    ok = present[2:] & present[1:-1] & present[:-2]
    if not ok.any():
        return float("nan")
    return float(np.sqrt(np.mean(np.sum(d2[ok] ** 2, axis=-1))))


def fill_gaps(xy: np.ndarray, score: np.ndarray, valid: np.ndarray,
              max_gap: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear interpolation across interior runs of at most max_gap invalid frames. xy (T, M, 2), score and valid
    (T, M). Returns (xy, score, filled mask); the filled score is the weaker of the run's two ends."""
    t_count = xy.shape[0]
    frame = np.arange(t_count)[:, None]
    prev = np.maximum.accumulate(np.where(valid, frame, -1), axis=0)  # last valid frame <= t, -1 if none
    nxt = np.minimum.accumulate(np.where(valid, frame, t_count)[::-1], axis=0)[::-1]  # first valid >= t
    filled = ~valid & (prev >= 0) & (nxt < t_count) & (nxt - prev - 1 <= max_gap)
    xy, score = xy.copy(), score.copy()
    if filled.any():
        t_idx, m_idx = np.nonzero(filled)
        p, n = prev[t_idx, m_idx], nxt[t_idx, m_idx]
        w = ((t_idx - p) / (n - p))[:, None]
        xy[t_idx, m_idx] = (1.0 - w) * xy[p, m_idx] + w * xy[n, m_idx]
        score[t_idx, m_idx] = np.minimum(score[p, m_idx], score[n, m_idx])
    return xy, score, filled


class _WindowSums:
    """Running sums over a centred window that grows one frame per side at a time, so the local fits for every half
    window 1..h cost what the largest alone costs. xy (T, M, 2), w (T, M) 0/1 sample weights."""

    def __init__(self, xy: np.ndarray, w: np.ndarray, h_max: int) -> None:
        self.t_count, self.h_max = xy.shape[0], h_max
        self.wp = np.pad(w, ((h_max, h_max), (0, 0)))
        self.yp = np.pad(xy * w[..., None], ((h_max, h_max), (0, 0), (0, 0)))
        self.s = [w.copy(), np.zeros_like(w), np.zeros_like(w), np.zeros_like(w), np.zeros_like(w)]  # w j^k
        self.r = [xy * w[..., None], np.zeros_like(xy), np.zeros_like(xy)]  # w j^k y
        self.left = np.zeros_like(w)
        self.right = np.zeros_like(w)
        self.h = 0

    def grow(self) -> None:
        self.h += 1
        j, t0, t = self.h, self.h_max, self.t_count
        wl, wr = self.wp[t0 - j:t0 - j + t], self.wp[t0 + j:t0 + j + t]
        yl, yr = self.yp[t0 - j:t0 - j + t], self.yp[t0 + j:t0 + j + t]
        w_sum, w_diff = wl + wr, wr - wl  # even powers of +-j add the two sides, odd powers subtract them
        y_sum, y_diff = yl + yr, yr - yl
        s, r = self.s, self.r
        s[0] += w_sum
        s[1] += w_diff * j
        s[2] += w_sum * j ** 2
        s[3] += w_diff * j ** 3
        s[4] += w_sum * j ** 4
        r[0] += y_sum
        r[1] += y_diff * j
        r[2] += y_sum * j ** 2
        self.left += wl
        self.right += wr

    def fit(self) -> tuple[np.ndarray, np.ndarray]:
        """(estimate (T, M, 2), variance factor (T, M)) of the least-squares polynomial at the window centre. The
        variance factor is e0' (X' W X)^-1 e0: the estimate's variance in units of the noise variance."""
        s0, s1, s2, s3, s4 = self.s
        with np.errstate(divide="ignore", invalid="ignore"):
            c22 = s2 * s4 - s3 * s3
            c12 = s2 * s3 - s1 * s4
            c02 = s1 * s3 - s2 * s2
            det2 = s0 * c22 + s1 * c12 + s2 * c02
            inv = 1.0 / det2
            # the estimate is k0 r0 + k1 r1 + k2 r2; (k0, k1, k2) = first row of the inverse normal matrix
            k0, k1, k2 = c22 * inv, c12 * inv, c02 * inv
        # a quadratic needs samples on both sides (one-sided, it amplifies the noise at its end) and >= 4 of them;
        # elsewhere (few places: clip ends, gaps) a line through >= 3 samples, else their mean
        low = (self.left == 0) | (self.right == 0) | (s0 < 4) | ~(np.abs(det2) > 1e-9)
        if low.any():
            a0, a1, a2 = s0[low], s1[low], s2[low]
            det1 = a0 * a2 - a1 * a1
            line = (a0 >= 3) & (np.abs(det1) > 1e-9)
            with np.errstate(divide="ignore", invalid="ignore"):
                k0[low] = np.where(line, a2 / det1, 1.0 / np.maximum(a0, 1.0))
                k1[low] = np.where(line, -a1 / det1, 0.0)
            k2[low] = 0.0
        r0, r1, r2 = self.r
        est = k0[..., None] * r0 + k1[..., None] * r1 + k2[..., None] * r2
        return est, k0  # e0' (X' W X)^-1 e0 is k0 itself


def savgol_smooth(xy: np.ndarray, present: np.ndarray, half_window: int,
                  noise: np.ndarray | None = None, gamma: float = 2.0) -> np.ndarray:
    """Savitzky-Golay (quadratic) with missing samples: at each present frame, the least-squares polynomial through
    the present samples of the window, evaluated at the centre. xy (T, M, 2), present (T, M). Where the window is
    complete this equals the classical filter; with an empty side (a clip end or a long gap) or fewer than 4 samples
    the fit drops to a line, with 1-2 samples to their mean.

    noise (M,) px switches on the adaptive window (LPA-ICI, Katkovnik's intersection of confidence intervals): per
    sample, the window grows from 1 to half_window only while the estimate stays within gamma standard deviations of
    every smaller window's, so a sudden movement keeps a short window (no lag, no overshoot) and a still joint gets the
    long one."""
    h_max = int(half_window)
    w = present.astype(np.float64)
    y = np.where(present[..., None], xy, 0.0).astype(np.float64)
    sums = _WindowSums(y, w, h_max)
    if noise is None:
        for _ in range(h_max):
            sums.grow()
        est, _ = sums.fit()
        return np.where(present[..., None], est, xy)
    sd = np.asarray(noise, dtype=np.float64)[None, :, None]
    chosen = y.copy()  # half window 0: the sample itself, variance factor 1
    lower, upper = y - gamma * sd, y + gamma * sd
    alive = np.ones(w.shape, dtype=bool)
    for _ in range(h_max):
        sums.grow()
        est, var = sums.fit()
        half = gamma * sd * np.sqrt(np.maximum(var, 0.0))[..., None]
        lower = np.maximum(lower, est - half)
        upper = np.minimum(upper, est + half)
        alive &= np.all(lower <= upper, axis=-1) & np.isfinite(var)
        chosen = np.where(alive[..., None], est, chosen)
    return np.where(present[..., None], chosen, xy)


def noise_level(xy: np.ndarray, valid: np.ndarray, floor: float = 0.25) -> np.ndarray:
    """Robust per-track noise (px, (M,)): the median absolute second difference over fully observed triples, scaled
    to a standard deviation (MAD * 1.4826 / sqrt(6) for white noise). Tracks with fewer than 8 triples get the
    median of the others."""
    d2 = np.abs(xy[2:] - 2.0 * xy[1:-1] + xy[:-2])  # (T-2, M, 2)
    ok = valid[2:] & valid[1:-1] & valid[:-2]
    m = xy.shape[1]
    if xy.shape[0] < 3 or not ok.any():
        return np.full(m, 1.0)
    vals = np.sort(np.where(ok[..., None], d2, np.inf).transpose(1, 0, 2).reshape(m, -1), axis=1)  # unseen last
    count = 2 * ok.sum(axis=0)  # x and y values per track
    rows = np.arange(m)
    median = (vals[rows, np.maximum((count - 1) // 2, 0)] + vals[rows, np.maximum(count // 2, 0)]) / 2
    sigma = median * 1.4826 / np.sqrt(6.0)
    enough = count >= 16  # 8 triples
    if not enough.all():
        sigma[~enough] = np.median(sigma[enough]) if enough.any() else 1.0
    return np.maximum(np.nan_to_num(sigma, nan=1.0), floor)


def _one_euro_pass(xy: np.ndarray, present: np.ndarray, min_cutoff: np.ndarray, beta: float,
                   d_cutoff: float, start: np.ndarray | None = None) -> np.ndarray:
    """One causal 1-euro pass over frames (vectorised over points). The filter restarts after a missing frame, from
    `start` (default: the input itself) at that frame."""
    start = xy if start is None else start
    out = np.empty_like(xy)
    x_hat = np.zeros(xy.shape[1:])
    dx_hat = np.zeros(xy.shape[1:])
    alive = np.zeros(xy.shape[1], dtype=bool)
    a_d = 1.0 / (1.0 + 1.0 / (2.0 * math.pi * d_cutoff))  # smoothing factor for a one-frame sampling period
    two_pi_min = 2.0 * math.pi * min_cutoff
    for t in range(xy.shape[0]):
        pres = present[t]
        run = (pres & alive)[:, None]
        dx = xy[t] - x_hat
        dx_hat = np.where(run, dx_hat + a_d * (dx - dx_hat), 0.0)
        # one cut-off for x and y of a point: min_cutoff + beta * speed, as alpha = 2 pi fc / (2 pi fc + 1)
        fc = two_pi_min + (2.0 * math.pi * beta) * np.sqrt(dx_hat[:, 0] ** 2 + dx_hat[:, 1] ** 2)
        a = (fc / (fc + 1.0))[:, None]
        x_hat = np.where(run, x_hat + a * dx, np.where(pres[:, None], start[t], x_hat))
        out[t] = x_hat
        alive = pres
    return out


def one_euro_smooth(xy: np.ndarray, present: np.ndarray, min_cutoff: np.ndarray, beta: float = ONE_EURO_BETA,
                    d_cutoff: float = ONE_EURO_D_CUTOFF) -> np.ndarray:
    """Zero-lag 1-euro: a forward pass, then a backward pass over its output (the backward pass undoes the forward
    pass's lag, as a forward-backward filter does). xy (T, M, 2) in canvas units, present (T, M), min_cutoff (M,)
    cycles per frame."""
    fwd = _one_euro_pass(xy, present, min_cutoff, beta, d_cutoff)
    # the backward pass starts each run from the observation, not from the forward pass, which lags at a run's end
    bwd = _one_euro_pass(fwd[::-1], present[::-1], min_cutoff, beta, d_cutoff, xy[::-1])[::-1]
    return np.where(present[..., None], bwd, xy)


def _strengths(options: SmoothOptions) -> np.ndarray:
    per_point = np.zeros(N_POINTS)
    for part, sl in PART_SLICES.items():
        per_point[sl] = getattr(options, part)
    return per_point


def smooth_points(points: np.ndarray, strength: np.ndarray, max_gap: int, method: str,
                  unit: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The array core. points (T, M, 3) [x, y, score] of M point tracks; strength (M,) in 0..1 (0 = untouched);
    unit = the length (px) the 1-euro speed is measured in. Returns (points out, observed mask, filled mask)."""
    points = np.asarray(points, dtype=np.float64)
    strength = np.asarray(strength, dtype=np.float64)
    xy, score = points[..., :2], points[..., 2]
    active = strength > 0
    valid = (score > SCORE_THRESHOLD) & active[None, :]
    xy_f, score_f, filled = fill_gaps(xy, score, valid, max_gap)
    present = valid | filled
    out_xy = xy_f.copy()
    work = active & present.any(axis=0)  # tracks never seen (absent people's slots) need no filtering

    def columns(mask: np.ndarray) -> slice | np.ndarray:
        return slice(None) if mask.all() else np.nonzero(mask)[0]  # a slice avoids copying every array

    if method == "savitzky-golay":
        half = np.where(work, np.maximum(1, np.rint(strength * SG_MAX_HALF_WINDOW)), 0).astype(int)
        for h in np.unique(half[half > 0]):  # at most one group per part strength
            cols = columns(half == h)
            sigma = noise_level(xy[:, cols], valid[:, cols])
            out_xy[:, cols] = savgol_smooth(xy_f[:, cols], present[:, cols], int(h), sigma, SG_GAMMA)
    elif method == "one-euro":
        if work.any():
            cols = columns(work)
            lo, hi = np.log(ONE_EURO_CUTOFF)
            min_cutoff = np.exp(lo + strength[cols] * (hi - lo))
            out_xy[:, cols] = one_euro_smooth(xy_f[:, cols] / unit, present[:, cols], min_cutoff) * unit
    else:
        raise ValueError(f"smoothing method {method!r}: choose one of {', '.join(METHOD_CHOICES)}")
    out = points.copy()
    out[..., :2] = np.where(present[..., None], out_xy, xy)
    out[..., 2] = np.where(filled, score_f, score)
    return out, valid, filled


def frames_to_array(frames: Sequence[PoseFrame]) -> np.ndarray:
    """(T, P, 128, 3): slot k of frame t = frames[t].people[k] (Person.all_points order); absent = zeros."""
    slots = max((len(f.people) for f in frames), default=0)
    arr = np.zeros((len(frames), slots, N_POINTS, 3), dtype=np.float64)
    for t, frame in enumerate(frames):
        for k, person in enumerate(frame.people):
            arr[t, k] = person.all_points()
    return arr


def _person(points: np.ndarray, like: Person | None) -> Person:
    b, f, h = N_BODY, N_BODY + N_FACE, N_BODY + N_FACE + N_HAND
    return Person(body=points[:b], face=points[b:f], left_hand=points[f:h], right_hand=points[h:],
                  box=None if like is None else like.box, box_score=None if like is None else like.box_score)


def smooth_frames(frames: Sequence[PoseFrame],
                  options: SmoothOptions | None = None) -> tuple[list[PoseFrame], SmoothReport]:
    """Smoothed copies of the frames (person slot k = one person in every frame), and what was done."""
    opts = options or SmoothOptions()
    frames = list(frames)
    report = SmoothReport(frames=len(frames), method=opts.method)
    if not frames:
        return [], report
    sizes = {(f.width, f.height) for f in frames}
    if len(sizes) > 1:
        log.warning("ControlNeXt pose smoothing: the frames have %d different canvas sizes; smoothing their pixel "
                    "coordinates as they are", len(sizes))
    arr = frames_to_array(frames)
    t_count, slots = arr.shape[:2]
    report.slots = slots
    if slots == 0:
        return [PoseFrame(f.width, f.height, []) for f in frames], report
    unit = float(max(max(w, h) for w, h in sizes))
    strength = np.tile(_strengths(opts), slots)
    flat = arr.reshape(t_count, slots * N_POINTS, 3)
    out, valid, filled = smooth_points(flat, strength, opts.max_gap, opts.method, unit)
    present_out = valid | filled
    active = strength > 0
    report.observed = int(valid.sum())
    report.filled = int(filled.sum())
    # long gaps between observations of a smoothed point: interior frames neither observed nor filled
    seen_before = np.maximum.accumulate(valid, axis=0)
    seen_after = np.maximum.accumulate(valid[::-1], axis=0)[::-1]
    report.left_missing = int((~present_out & seen_before & seen_after & active).sum())
    out = out.reshape(t_count, slots, N_POINTS, 3)
    for part, sl in PART_SLICES.items():
        if getattr(opts, part) > 0:
            v = valid.reshape(t_count, slots, N_POINTS)[:, :, sl]
            p = present_out.reshape(t_count, slots, N_POINTS)[:, :, sl]
            report.jitter_before[part] = jitter_rms(arr[:, :, sl, :2], v)
            report.jitter_after[part] = jitter_rms(out[:, :, sl, :2], p)

    has_points = np.any(out[..., 2] > 0, axis=2) | np.any(out[..., :2] != 0, axis=(2, 3))  # (T, P)
    result = []
    for t, frame in enumerate(frames):
        used = np.nonzero(has_points[t])[0]
        n = max(len(frame.people), int(used[-1]) + 1 if used.size else 0)  # a filled slot may add a person
        people = [_person(out[t, k].astype(np.float32), frame.people[k] if k < len(frame.people) else None)
                  for k in range(n)]
        result.append(PoseFrame(frame.width, frame.height, people))
    return result, report
