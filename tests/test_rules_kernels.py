"""The rules' compiled shortcuts give the numbers of the code they stand in for, exactly
(the rule events of a run must not change by a byte)."""

from __future__ import annotations

from typing import Any

import numpy as np
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st

coord = st.floats(-20, 20, allow_nan=False)


def _regions() -> st.SearchStrategy[shapely.Geometry]:
    """Unions of boxes (an exit zone, or several) and a slanted triangle."""
    box = st.tuples(coord, coord, st.floats(0.1, 15), st.floats(0.1, 15)).map(
        lambda b: shapely.box(b[0], b[1], b[0] + b[2], b[1] + b[3]))
    boxes = st.lists(box, min_size=1, max_size=3).map(shapely.union_all)
    triangle = st.tuples(coord, coord, st.floats(1, 15)).map(
        lambda t: shapely.Polygon([(t[0], t[1]), (t[0] + t[2], t[1]), (t[0], t[1] + t[2])]))
    return st.one_of(boxes, triangle)


r90s = st.one_of(st.floats(0.0, 40.0), st.just(float("nan")), st.just(float("inf")))


@settings(max_examples=150, deadline=None)
@given(_regions(), st.lists(st.tuples(st.floats(-60, 60), st.floats(-60, 60), r90s), min_size=1, max_size=40),
       st.booleans(), st.booleans())
def test_region_probability_equals_the_regions_own(
    geom: shapely.Geometry, fixes: list[tuple[float, float, float]], outline: bool, on_edges: bool,
) -> None:
    """ZoneRegion.probability runs the point test only for fixes with a quadrature point in
    the region's box: every fix gets the same number as without that screen."""
    from engine.rules.geofence import ZoneRegion

    region = ZoneRegion([geom], within=shapely.box(-25, -25, 25, 25) if outline else None)
    x, y, r90 = (np.array(c, float) for c in zip(*fixes, strict=True))
    if on_edges:  # fixes whose points graze the box: each point in turn on its edge
        minx, _, _, _ = region.bounds
        sigma = 1.0
        x = np.r_[x, minx - sigma * region.points[:, 0]]
        y = np.r_[y, np.full(len(region.points), (region.bounds[1] + region.bounds[3]) / 2)]
        r90 = np.r_[r90, np.full(len(region.points), sigma * np.sqrt(-2.0 * np.log(0.1)))]
    x = np.r_[x, np.nan, 0.0]
    y = np.r_[y, 0.0, np.nan]
    r90 = np.r_[r90, 5.0, 5.0]
    with np.errstate(over="ignore", invalid="ignore"):  # r90 = inf places points at inf
        want = region._probability(x, y, r90, screen=False)
        np.testing.assert_array_equal(region.probability(x, y, r90), want)


def _count_frames_numpy(eng: Any, rows: Any, dev: Any) -> None:
    """The frame counting the compiled pass replaced (numpy, commit 393beea), as the oracle."""
    from engine.rules.core import sorted_runs

    tg = eng.tags
    n_gw = len(eng.ctx.gateway_ids)
    has = rows["seq"] >= 0
    if not has.any():
        return
    key = dev[has] * (1 << 32) + rows["seq"][has].astype(np.int64)
    uk = sorted_runs(np.sort(key))[0]
    kd, ks = uk >> 32, uk & ((1 << 32) - 1)
    dd, start, count = sorted_runs(kd)
    first, last = ks[start], ks[start + count - 1]
    prev_seq = tg["last_seq"][dd]
    fresh = first > prev_seq
    gap = np.where(fresh & (prev_seq >= 0), first - prev_seq - 1, 0)
    span_missed = np.where(fresh, last - first + 1 - count, 0)
    tg["n_missed"][dd] += gap + span_missed
    tg["n_heard"][dd] += np.where(fresh, count, 0)
    eng.g_sent[dd] += gap + np.where(fresh, last - first + 1, 0)
    eng.g_missed[dd] += gap + span_missed
    runs = np.diff(ks) - 1
    runs[np.diff(kd) != 0] = 0
    runs = np.where(np.repeat(fresh, count)[1:], runs, 0)
    all_runs = np.minimum(np.concatenate([gap, runs]), eng.rules.missing.max_missed)
    run_dev = np.concatenate([dd, kd[1:]])
    has_run = all_runs > 0
    all_runs, run_dev = all_runs[has_run], run_dev[has_run]
    eng.burst_missed += int(all_runs.sum())
    eng.burst_continued += int((all_runs - 1).sum())
    eng.burst_deep += int(np.maximum(all_runs - 2, 0).sum())
    eng.burst_deeper += int(np.maximum(all_runs - 3, 0).sum())
    np.add.at(tg["b_missed"], run_dev, all_runs)
    np.add.at(tg["b_cont"], run_dev, all_runs - 1)
    np.add.at(tg["b_deep"], run_dev, np.maximum(all_runs - 2, 0))
    np.add.at(tg["b_deeper"], run_dev, np.maximum(all_runs - 3, 0))
    tg["last_seq"][dd] = np.maximum(prev_seq, last)
    cell = dev[has] * n_gw + rows["gateway"][has].astype(np.int64)
    uc = sorted_runs(np.sort(cell * (1 << 32) + rows["seq"][has].astype(np.int64)))[0] >> 32
    cells, _, hits = sorted_runs(uc)
    eng.g_heard.ravel()[cells] += hits.astype(np.int32)


frame = st.tuples(st.integers(0, 5), st.integers(-1, 40), st.integers(0, 2))  # device, seq (-1: none), gateway


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(frame, max_size=40), min_size=1, max_size=5), st.integers(1, 6))
def test_frame_counting_equals_the_numpy_passes(batches: list[list[tuple[int, int, int]]], max_missed: int) -> None:
    """Batches of sightings with repeated frames (several gateways), gaps, counters that go
    backwards and rows without one: the compiled pass leaves every count as numpy did."""
    from engine.contract import sightings_from_columns
    from engine.rules import RuleContext, RuleEngine, RuleSet
    from siteplan.zones import ZoneIndex

    ctx = RuleContext(
        zones=ZoneIndex.from_points([("a", "storage", [(0, 0), (10, 0), (10, 10), (0, 10)])]),
        device_ids=[f"tag-{i}" for i in range(6)], device_class=np.zeros(6, np.int32),
        class_names=("c",), class_interval_s=np.array([1.0]), gateway_ids=("g0", "g1", "g2"),
        gateway_xy=np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]]),
    )
    rules = RuleSet().model_copy(update={"missing": RuleSet().missing.model_copy(update={"max_missed": max_missed})})
    compiled, oracle = RuleEngine(rules, ctx), RuleEngine(rules, ctx)
    for eng in (compiled, oracle):
        eng._grow(6)
    for batch in batches:
        if not batch:
            continue
        d, s, g = (np.array(c, np.int64) for c in zip(*batch, strict=True))
        rows = sightings_from_columns(t=np.zeros(len(d)), gateway=g, device=d, rssi=-70.0, channel=37, seq=s)
        compiled._count_frames(rows, d)
        _count_frames_numpy(oracle, rows, d)
    for k in ("last_seq", "n_heard", "n_missed", "b_missed", "b_cont", "b_deep", "b_deeper"):
        np.testing.assert_array_equal(compiled.tags[k], oracle.tags[k], err_msg=k)
    for k in ("g_sent", "g_missed", "g_heard", "burst_missed", "burst_continued", "burst_deep", "burst_deeper"):
        np.testing.assert_array_equal(getattr(compiled, k), getattr(oracle, k), err_msg=k)
