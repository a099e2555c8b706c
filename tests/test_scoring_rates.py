"""Rates with their uncertainty (engine.rules.scoring): Garwood's exact Poisson interval and
the too-little-exposure rule of design.md. Issue 18 extends these; the planner uses them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.rules.scoring import poisson_interval, poisson_upper, rate_reading


def test_poisson_interval_matches_published_values():
    # Garwood (1936) 95 % limits for counts 0, 1 and 10 over unit exposure
    # (tabulated e.g. in Ulm 1990, Am. J. Epidemiol. 131:373).
    assert poisson_interval(0, 1.0) == pytest.approx((0.0, 3.689), abs=1e-3)
    assert poisson_interval(1, 1.0) == pytest.approx((0.0253, 5.572), abs=1e-3)
    assert poisson_interval(10, 1.0) == pytest.approx((4.795, 18.390), abs=1e-3)
    assert poisson_upper(0, 1.0) == pytest.approx(2.996, abs=1e-3)  # the "rule of three"
    assert poisson_interval(10, 2.0) == pytest.approx((2.398, 9.195), abs=1e-3)


@given(st.integers(0, 500), st.floats(1e-3, 1e4))
def test_interval_holds_the_point_and_shrinks_with_exposure(count, exposure):
    low, high = poisson_interval(count, exposure)
    assert low <= count / exposure <= high
    assert poisson_upper(count, exposure) <= high
    low2, high2 = poisson_interval(count * 4, exposure * 4)
    assert high2 - low2 < high - low or count == 0


def test_too_little_exposure_is_never_a_bare_figure():
    # Two alarms in a 600 s run of 200 tags (the example): the rate says nothing.
    few = rate_reading(2, 200 / 1000 * 600 / 86_400, design=0.25)
    assert few.too_little_exposure
    assert few.text().startswith("too little exposure (upper bound ")
    # No alarm in 30,000 tag-days: at most 0.1 per day per 1,000 tags, below the design.
    quiet = rate_reading(0, 30.0, design=0.25)
    assert not quiet.too_little_exposure
    assert quiet.text() == "0.00 (0.00–0.12)"
    # A high rate measured well is a figure, whatever the design rate.
    loud = rate_reading(100, 1.0, design=0.25)
    assert not loud.too_little_exposure and loud.text() == "100.00 (81.36–121.63)"
