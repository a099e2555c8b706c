"""Exact intervals of the scoring report, checked against scipy.stats' own distributions
(not the formulas the code uses), and the too-little-exposure rule on hand-worked cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binom, binomtest, poisson

from engine.rules.events import Event
from engine.rules.scoring import (
    IncidentRecord,
    exposure_needed,
    median_interval,
    poisson_interval,
    poisson_upper,
    proportion_interval,
    rate_reading,
    score_report,
    tally_events,
)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 400).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_clopper_pearson_matches_scipy_exact(kn: tuple[int, int]) -> None:
    k, n = kn
    lo, hi = proportion_interval(k, n)
    ref = binomtest(k, n).proportion_ci(0.95, method="exact")
    assert lo == pytest.approx(ref.low, abs=1e-9)
    assert hi == pytest.approx(ref.high, abs=1e-9)
    # the defining tail probabilities: P(X >= k | lo) = P(X <= k | hi) = 2.5 %
    if k > 0:
        assert binom.sf(k - 1, n, lo) == pytest.approx(0.025, rel=1e-6)
    if k < n:
        assert binom.cdf(k, n, hi) == pytest.approx(0.025, rel=1e-6)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2000))
def test_poisson_bounds_are_the_exact_tail_points(n: int) -> None:
    up = poisson_upper(n, 1.0)
    assert poisson.cdf(n, up) == pytest.approx(0.05, rel=1e-6)
    lo, hi = poisson_interval(n, 1.0)
    assert poisson.cdf(n, hi) == pytest.approx(0.025, rel=1e-6)
    if n == 0:
        assert lo == 0.0
    else:
        assert poisson.sf(n - 1, lo) == pytest.approx(0.025, rel=1e-6)
    assert lo <= n <= hi and up < hi


def test_exposure_needed_for_one_per_day_per_1000_tags() -> None:
    """The figures the issue quotes: 3,000 tag-days with no alarm, ~4,750 with one."""
    assert exposure_needed(1.0, 0) * 1000 == pytest.approx(2995.7, abs=0.1)
    assert exposure_needed(1.0, 1) * 1000 == pytest.approx(4743.9, abs=0.1)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=300))
def test_median_interval_covers_at_95_percent(x: list[float]) -> None:
    ci = median_interval(x)
    n = len(x)
    if n < 6:
        assert ci is None
        return
    assert ci is not None
    a = np.sort(x)
    med = float(np.median(a))
    assert ci[0] <= med <= ci[1]
    # the order statistics used: x_(l) and x_(n+1-l); coverage 1 - 2 P(B <= l-1) >= 95 %,
    # and the next pair in would fall short of it
    rank = next(r for r in range(n // 2, 0, -1) if 1 - 2 * binom.cdf(r - 1, n, 0.5) >= 0.95)
    assert ci == (float(a[rank - 1]), float(a[n - rank]))


def test_median_interval_by_hand() -> None:
    # n = 10: P(B <= 1) = 11/1024 <= 2.5 % < P(B <= 2) = 56/1024, so x_(2) .. x_(9)
    assert median_interval([float(v) for v in range(1, 11)]) == (2.0, 9.0)


def test_too_little_exposure_rule() -> None:
    # 0 alarms in 3,000 tag-days: upper bound 0.9986 <= 2 x the 1.0 target: shown as 0
    r = rate_reading(0, 3.0)
    assert r.upper == pytest.approx(0.9986, abs=1e-4)
    assert r.too_little_exposure is False
    assert r.shown == "0 per day per 1,000 tags (95 % upper bound 0.999)"
    # the planner's case: 2 alarms in 600 s of 200 tags read as 1,440 per day per 1,000 tags
    exposure = 200 * 600 / 86_400 / 1000
    r = rate_reading(2, exposure)
    assert r.rate == pytest.approx(1440.0)
    assert r.upper == pytest.approx(poisson_upper(2, exposure), rel=1e-6)
    assert r.too_little_exposure is True
    assert r.shown == f"too little exposure (upper bound {poisson_upper(2, exposure):,.0f})"
    # many events: the bound is within twice the point value even above the design rate
    r = rate_reading(100, 1.0)
    assert r.too_little_exposure is False and r.upper < 200
    # one event in 1,000 tag-days: point 1, bound 4.74 > 2 x max(1, 1): too little
    assert rate_reading(1, 1.0).too_little_exposure is True
    assert rate_reading(0, 0.0).shown == "no exposure"
    with pytest.raises(ValueError, match="events"):
        rate_reading(-1, 1.0)


def test_seeds_pool_into_one_interval() -> None:
    """Two seeds of 4 incidents each, 7 detected in all: one recall interval over 8, the
    same as a single run with the 8 incidents; exposures add up."""
    def run(tags: list[str], detected: list[str]) -> tuple[list[Event], list[IncidentRecord]]:
        inc = [IncidentRecord("misplacement", t=100.0, t_begin=90.0, tag=t) for t in tags]
        return [Event("misplaced", 150.0, "v", tag=t) for t in detected], inc

    e1, i1 = run(["a", "b", "c", "d"], ["a", "b", "c", "d"])
    e2, i2 = run(["a", "b", "c", "d"], ["a", "b", "c", "x"])  # x: a false alarm
    pooled = tally_events(e1, i1, 200, 8640.0).merge(tally_events(e2, i2, 200, 8640.0))
    rep = score_report(pooled)
    m = rep["per_rule"]["misplaced"]  # type: ignore[index]
    assert (m["incidents"], m["detected"], m["events"], m["true_positives"]) == (8, 7, 8, 7)
    lo, hi = proportion_interval(7, 8)
    assert m["recall_ci95"] == [round(lo, 4), round(hi, 4)]
    assert m["precision"] == 0.875
    assert rep["thousand_tag_days"] == pytest.approx(0.04)
    assert rep["runs"] == 2
    assert m["false_alarms"] == 1
    assert m["false_alarm_rate"]["point"] == pytest.approx(25.0)
    assert math.isclose(rep["false_alarm_rate"]["upper95"], round(poisson_upper(1, 0.04), 4))  # type: ignore[index]
