"""Person tracking (dwpose/track.py) and the ControlNeXtTrackPeople node, on synthetic people with a known identity
who cross, hide behind each other and come back, while the detector lists them in a random order every frame."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from conftest import pack_import, run_graph

track = pack_import("dwpose.track")
smooth = pack_import("dwpose.smooth")
kp = pack_import("dwpose.keypoints")

W, H = 1920, 1080
# OpenPose-18 standing pose, x in body heights from the body's centre line, y from the top of the head
BODY = np.array([(0, .06), (0, .17), (-.11, .18), (-.15, .33), (-.17, .46), (.11, .18), (.15, .33), (.17, .46),
                 (-.07, .5), (-.08, .72), (-.08, .95), (.07, .5), (.08, .72), (.08, .95), (-.02, .045), (.02, .045),
                 (-.045, .055), (.045, .055)])


def person(cx: float, top: float, height: float, t: int, rng: np.random.Generator, hide: slice | None = None,
           box_score: float | None = None) -> kp.Person:
    """A dancer whose arms swing with time t, with DWPose-like jitter; `hide` = body points not found."""
    body = BODY.copy()
    swing = 0.08 * np.sin(t / 3.0)
    body[[3, 4, 6, 7], 1] -= swing * np.array([1, 2, 1, 2])
    body[[4, 7], 0] += swing * np.array([-1, 1])
    pts = np.column_stack([cx + body[:, 0] * height, top + body[:, 1] * height, rng.uniform(0.6, 1.0, 18)])
    pts[:, :2] += rng.normal(0, 2.0, (18, 2))
    if hide is not None:
        pts[hide] = 0.0
    face = np.column_stack([pts[0, 0] + 0.03 * height * np.cos(np.linspace(0, 6.28, 68)),
                            pts[0, 1] + 0.03 * height * np.sin(np.linspace(0, 6.28, 68)), np.full(68, 0.8)])
    hands = [np.column_stack([pts[w, :2] + rng.normal(0, 0.02 * height, (21, 2)), np.full(21, 0.7)]) for w in (7, 4)]
    return kp.Person(body=pts, face=face, left_hand=hands[0], right_hand=hands[1], box_score=box_score)


def shuffled(people: list, names: list[str], rng: np.random.Generator) -> tuple[kp.PoseFrame, list[str]]:
    order = rng.permutation(len(people))
    return kp.PoseFrame(W, H, [people[i] for i in order]), [names[i] for i in order]


def crossing_with_occlusion(seed: int = 0, frames: int = 90) -> tuple[list, list[list[str]]]:
    """A (the dancer, largest) walks left to right, B right to left and disappears behind A for ~12 frames while they
    cross; C, a bystander LARGER than A (nearer the camera), steps in at frame 40 and stays."""
    rng = np.random.default_rng(seed)
    out, names = [], []
    for t in range(frames):
        xa = 400 + 1100 * t / (frames - 1)
        xb = 1500 - 1100 * t / (frames - 1)
        people, who = [person(xa, 150, 800, t, rng)], ["A"]
        if abs(xa - xb) >= 150:
            people.append(person(xb, 200, 720, t, rng))
            who.append("B")
        if t >= 40:
            people.append(person(150, 100, 900, t, rng))
            who.append("C")
        frame, who = shuffled(people, who, rng)
        out.append(frame)
        names.append(who)
    return out, names


def three_people_crossing(seed: int = 1, frames: int = 80) -> tuple[list, list[list[str]]]:
    """A dances on the spot in the middle; B and C walk across in opposite directions, both visible throughout, and
    pass A and each other; C's legs are hidden (not found) while it passes behind A."""
    rng = np.random.default_rng(seed)
    out, names = [], []
    for t in range(frames):
        xb = 300 + 1300 * t / (frames - 1)
        xc = 1650 - 1300 * t / (frames - 1)
        hide_c = slice(8, 14) if abs(xc - 960) < 200 else None
        people = [person(960 + 30 * np.sin(t / 5), 120, 820, t, rng), person(xb, 260, 640, t, rng),
                  person(xc, 240, 690, t, rng, hide=hide_c)]
        frame, who = shuffled(people, ["A", "B", "C"], rng)
        out.append(frame)
        names.append(who)
    return out, names


def identity_map(ids: list[list[int]], names: list[list[str]]) -> dict[str, set[int]]:
    seen: dict[str, set[int]] = {}
    for row, who in zip(ids, names, strict=True):
        for tid, name in zip(row, who, strict=True):
            seen.setdefault(name, set()).add(tid)
    return seen


def same_person(a: kp.Person, b: kp.Person) -> bool:
    return np.array_equal(a.all_points(), b.all_points())


@pytest.mark.parametrize("seed", range(4))
def test_identities_survive_a_crossing_an_occlusion_and_shuffled_lists(seed: int) -> None:
    frames, names = crossing_with_occlusion(seed)
    out, result = track.track_frames(frames, track.TrackOptions(select="largest", keep="all people"))
    seen = identity_map(result.ids, names)
    assert all(len(v) == 1 for v in seen.values()), f"a person changed identity: {seen}"
    assert len(set().union(*seen.values())) == 3, "one track per person"
    (a,), (b,), (c,) = seen["A"], seen["B"], seen["C"]
    assert result.selected == a and result.order == [a, b, c], "slot 0 = the dancer, then by first appearance"
    for frame, tracked, who in zip(frames, out, names, strict=True):
        for k, name in enumerate("ABC"):
            if name in who:
                assert same_person(tracked.people[k], frame.people[who.index(name)])
            elif k < len(tracked.people):
                assert not tracked.people[k].all_points().any(), "an absent person is an all-zero placeholder"
    assert "3 people tracked over 90 frames" in result.describe()


@pytest.mark.parametrize("seed", range(4))
def test_three_people_crossing_in_plain_view(seed: int) -> None:
    frames, names = three_people_crossing(seed)
    ids, _ = track.track_people(frames)
    seen = identity_map(ids, names)
    assert all(len(v) == 1 for v in seen.values()), f"a person changed identity: {seen}"
    assert len(set().union(*seen.values())) == 3


@pytest.mark.parametrize("select", ["largest", "highest score", "index", "nearest to point"])
def test_the_selected_dancer_is_always_the_same_person_and_never_the_bystander(select: str) -> None:
    rng = np.random.default_rng(4)
    frames, names = [], []
    for t in range(70):
        people = [person(900 + 200 * np.sin(t / 8), 150, 800, t, rng, box_score=0.95),
                  person(1500 - 8 * t, 250, 600, t, rng, box_score=0.8)]
        who = ["A", "B"]
        if t >= 25:  # a bigger, better-scored bystander walks in later and passes the dancer
            people.append(person(100 + 25 * (t - 25), 80, 950, t, rng, box_score=0.99))
            who.append("C")
        frame, who = shuffled(people, who, rng)
        frames.append(frame)
        names.append(who)
    index = names[0].index("A")
    opts = track.TrackOptions(select=select, keep="selected person", index=index,
                              x=900 / W, y=550 / H)  # the dancer's centre in frame 0
    out, result = track.track_frames(frames, opts)
    for frame, tracked, who in zip(frames, out, names, strict=True):
        if "A" in who:
            assert len(tracked.people) == 1 and same_person(tracked.people[0], frame.people[who.index("A")])
    assert "2 other people left out" in result.describe()
    with pytest.raises(ValueError, match="index 2 is out of range: frame 0 has 2 people"):
        track.track_frames(frames, track.TrackOptions(select="index", index=2))


def test_a_dancer_hidden_longer_than_max_missing_comes_back_as_someone_new() -> None:
    rng = np.random.default_rng(8)
    frames = [kp.PoseFrame(W, H, [] if 10 <= t < 30 else [person(900, 150, 800, t, rng)]) for t in range(40)]
    frames[5].people.append(kp.Person())  # a detection with nothing above the threshold: dropped
    out, result = track.track_frames(frames, track.TrackOptions(max_missing=10))
    assert result.spans[result.selected] == list(range(10)), "the selected track is never re-used by a stranger"
    assert all(len(f.people) == (1 if t < 10 else 0) for t, f in enumerate(out))
    _, kept = track.track_frames(frames, track.TrackOptions(max_missing=25))
    assert len(kept.spans) == 1, "within max_missing the same person continues"
    assert "1 detections with no keypoint above 0.3 dropped" in kept.describe()
    empty, nobody = track.track_frames([kp.PoseFrame(W, H, [])] * 3)
    assert nobody.selected is None and all(not f.people for f in empty)
    assert "nobody was found" in nobody.describe()


def test_linear_assignment_is_optimal() -> None:
    rng = np.random.default_rng(0)
    for shape in [(1, 1), (2, 2), (3, 3), (4, 4), (2, 5), (5, 3), (6, 6)]:
        for _ in range(20):
            cost = rng.uniform(0, 10, shape)
            if rng.random() < 0.3:
                cost[rng.random(shape) < 0.3] = track.BIG
            small, large = sorted(shape)
            wide = cost if shape[0] <= shape[1] else cost.T
            best = min(sum(wide[i, p[i]] for i in range(small)) for p in itertools.permutations(range(large), small))
            for solve in (track.linear_assignment, track._assign):  # _assign: the tracker's shortcut, then Hungarian
                rows, cols = solve(cost)
                assert len(rows) == small and len(set(cols.tolist())) == len(set(rows.tolist())) == small
                assert cost[rows, cols].sum() == pytest.approx(best)


def test_bad_options_are_named() -> None:
    with pytest.raises(ValueError, match="select='tallest'"):
        track.TrackOptions(select="tallest")
    with pytest.raises(ValueError, match="keep="):
        track.TrackOptions(keep="everyone")
    with pytest.raises(ValueError, match="index=-1"):
        track.TrackOptions(index=-1)


def test_track_then_smooth_nodes_in_a_graph() -> None:
    frames, names = crossing_with_occlusion(seed=5, frames=30)
    poses = {"__value__": kp.to_pose_keypoint(frames)}
    graph = {
        "1": {"class_type": "ControlNeXtTrackPeople",
              "inputs": {"poses": poses, "select": "nearest to point", "keep": "all people", "x": 0.2, "y": 0.5}},
        "2": {"class_type": "ControlNeXtSmoothPoses",
              "inputs": {"poses": ["1", 0], "body": 0.5, "hands": 0.5, "face": 0.5, "max_gap": 4,
                         "method": "savitzky-golay"}},
        "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}},
        "4": {"class_type": "PreviewAny", "inputs": {"source": ["1", 1]}},
    }
    run = run_graph(graph)
    assert run.success, run.error()
    opts = track.TrackOptions(select="nearest to point", keep="all people", x=0.2, y=0.5)
    tracked, result = track.track_frames(kp.from_pose_keypoint(poses["__value__"]), opts)
    expected, _ = smooth.smooth_frames(tracked, smooth.SmoothOptions(method="savitzky-golay"))
    assert json.loads(run.outputs["3"]["text"][0]) == kp.to_pose_keypoint(expected)
    info = run.outputs["4"]["text"][0]
    assert info == result.describe() and "nearest to (0.20, 0.50)" in info
    a = identity_map(result.ids, names)["A"]  # A starts at x = 400 px, the nearest to 0.2 * 1920
    assert result.selected in a
    bad = {"1": {"class_type": "ControlNeXtTrackPeople",  # a fresh literal: the executor unwraps __value__ in place
                 "inputs": {"poses": {"__value__": kp.to_pose_keypoint(frames)}, "select": "index",
                            "keep": "all people", "index": 7}},
           "4": {"class_type": "PreviewAny", "inputs": {"source": ["1", 1]}}}
    run = run_graph(bad)
    assert not run.success and "index 7 is out of range" in run.error()["exception_message"]
