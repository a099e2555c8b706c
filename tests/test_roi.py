"""ROI against hand-computed cases."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.roi import (
    DESIGN_FALSE_ALARMS,
    MeasuredMetrics,
    RoiInputs,
    evaluate_case,
    measured_from_report,
    roi_report,
)
from engine.rules.scoring import proportion_interval, rate_reading
from tests.conftest import SCENARIOS

ZERO_COSTS = {
    "tag_cost": 0,
    "gateway_cost": 0,
    "install_cost_per_gateway": 0,
    "project_fixed_cost": 0,
    "software_per_device_month": 0,
    "cloud_per_device_month": 0,
    "gateway_fee_per_month": 0,
    "battery_cost": 0,
    "battery_swap_minutes": 0,
    "alarm_handling_minutes": 0,
    "ramp_months": 0,
    "inventory_value": 0,
    "cycle_count_hours_per_month": 0,
}


def test_mis_pick_saving_by_hand() -> None:
    # 20 % fewer mis-picks at $25 each on 10,000 picks a month at a 2 % mis-pick rate:
    # 10,000 x 0.02 = 200 mis-picks; 20 % of them = 40 fewer; 40 x $25 = $1,000 a month.
    inp = RoiInputs(
        **ZERO_COSTS,
        picks_per_month=10_000,
        mis_pick_rate=0.02,
        cost_per_mis_pick=25,
        mis_pick_reduction_at_full_accuracy=0.2,
    )
    case = evaluate_case(inp, MeasuredMetrics(tags=100, gateways=4, zone_accuracy=1.0))
    assert case.benefits["mis_picks"] == pytest.approx(1000.0)
    # the same site where the twin measured 70 % zone accuracy saves 70 % of that
    case70 = evaluate_case(inp, MeasuredMetrics(tags=100, gateways=4, zone_accuracy=0.7))
    assert case70.benefits["mis_picks"] == pytest.approx(700.0)


def test_costs_payback_and_npv_by_hand() -> None:
    inp = RoiInputs(
        tags=1000,
        tag_cost=10,
        gateway_cost=100,
        install_cost_per_gateway=50,
        project_fixed_cost=2000,
        software_per_device_month=0.2,
        cloud_per_device_month=0.05,
        gateway_fee_per_month=5,
        battery_life_months=10,
        battery_cost=0.5,
        battery_swap_minutes=1.2,
        labor_rate_per_hour=30,
        alarm_handling_minutes=10,
        ramp_months=0,
        horizon_months=24,
        discount_rate_annual=0.12,
        inventory_value=1_200_000,
        shrink_rate_annual=0.02,
        theft_share_of_shrink=0.5,
        recovery_rate=0.5,
        cycle_count_hours_per_month=100,
        cycle_count_automatable=0.8,
        picks_per_month=0,
    )
    m = MeasuredMetrics(
        tags=999,
        gateways=20,
        theft_recall=0.9,
        coverage=1.0,
        count_accuracy=0.75,
        false_alarms_per_day_per_1000_tags=0.5,
    )
    case = evaluate_case(inp, m)
    # capex = 1000 x 10 + 20 x (100 + 50) + 2000 = 15,000
    assert case.capex == pytest.approx(15_000)
    # opex: software 200 + cloud 50 + gateways 100
    #       + batteries 1000/10 x (0.5 + 0.02 h x 30 = 1.1) = 110
    #       + alarms 0.5 x 1 x 30.4375 days x 10/60 h x 30 = 76.09375
    assert case.costs["battery_swaps"] == pytest.approx(110.0)
    assert case.costs["false_alarm_handling"] == pytest.approx(76.09375)
    assert case.opex_per_month == pytest.approx(536.09375)
    # benefits: theft 1.2M x 0.02 / 12 x 0.5 x 0.9 x 0.5 = 450; counts 100 x 30 x 0.8 x 0.75 = 1800
    assert case.benefits["theft"] == pytest.approx(450.0)
    assert case.benefits["cycle_counts"] == pytest.approx(1800.0)
    net = 2250.0 - 536.09375
    assert case.net_per_month == pytest.approx(net)
    # payback: 15,000 / 1713.90625 = 8.75 months -> month 9
    assert case.payback_month == 9
    assert case.payback_months_exact == pytest.approx(15_000 / net)
    r = 1.12 ** (1 / 12) - 1
    npv = -15_000 + sum(net / (1 + r) ** k for k in range(1, 25))
    assert case.npv == pytest.approx(npv)
    assert case.tco == pytest.approx(15_000 + 24 * 536.09375)


def test_ramp_delays_payback() -> None:
    inp = RoiInputs(
        **(ZERO_COSTS | {"project_fixed_cost": 1000, "ramp_months": 4}),
        picks_per_month=10_000,
        mis_pick_rate=0.02,
        cost_per_mis_pick=25,
        mis_pick_reduction_at_full_accuracy=0.2,
    )
    case = evaluate_case(inp, MeasuredMetrics(tags=1, gateways=1, zone_accuracy=1.0))
    # months 1..: 250, 500 -> cumulative -250 after month 2, +500 after month 3
    assert case.cumulative[:4] == pytest.approx([-1000, -750, -250, 500])
    assert case.payback_month == 3


def test_never_pays_back() -> None:
    case = evaluate_case(RoiInputs(), MeasuredMetrics(tags=200, gateways=10))
    assert case.payback_month is None
    assert case.npv < 0


def test_report_cases_and_sensitivity() -> None:
    m = MeasuredMetrics(
        tags=200,
        gateways=11,
        theft_recall=0.95,
        zone_accuracy=0.7,
        coverage=1.0,
        count_accuracy=0.75,
        theft_recall_low=0.8,
        theft_recall_high=0.99,
    )
    rep = roi_report(RoiInputs(), m)
    cases, rows = rep["cases"], rep["sensitivity"]
    assert isinstance(cases, dict) and isinstance(rows, list)
    assert cases["worst"]["npv"] < cases["base"]["npv"] < cases["best"]["npv"]
    swings = [r["payback_swing"] for r in rows]
    assert swings == sorted(swings, reverse=True)
    assert rows[0]["payback_swing"] > 0
    names = {r["input"] for r in rows}
    assert {"theft_recall", "tag_cost", "labor_rate_per_hour"} <= names


def test_two_layouts_differ_for_measured_reasons() -> None:
    inp = RoiInputs()
    a = evaluate_case(
        inp,
        MeasuredMetrics(
            tags=200,
            gateways=10,
            theft_recall=0.95,
            zone_accuracy=0.7,
            coverage=1.0,
            count_accuracy=0.75,
        ),
    )
    b = evaluate_case(
        inp,
        MeasuredMetrics(
            tags=200,
            gateways=6,
            theft_recall=0.6,
            zone_accuracy=0.5,
            coverage=0.97,
            count_accuracy=0.6,
        ),
    )
    assert b.capex < a.capex
    assert b.benefit_per_month < a.benefit_per_month


def test_npv_at_both_ends_of_the_measured_intervals() -> None:
    """A short run's report: 23 of 24 thefts caught and 2 false alarms in 600 s of 200 tags.
    The ROI takes the Clopper-Pearson recall interval and the exact Poisson alarm-rate
    interval from the scoring code; NPV at the low end (least recall, most alarms) < point <
    high end, and the alarm rate is flagged as too little exposure."""
    exposure = 200 * 600 / 86_400 / 1000
    report = short_run_report()
    m = measured_from_report(report)
    assert (m.theft_recall_low, m.theft_recall_high) == proportion_interval(23, 24)
    fa = rate_reading(2, exposure, DESIGN_FALSE_ALARMS)
    # the interval, widened to hold the design rate that prices the point (too little exposure)
    assert (m.false_alarms_low, m.false_alarms_high) == (DESIGN_FALSE_ALARMS, fa.high)
    assert m.false_alarm_rate_shown == fa.shown
    assert fa.shown.startswith("too little exposure (upper bound 4,5")
    rep = roi_report(RoiInputs(), m)
    npv, cases = rep["npv_interval"], rep["cases"]
    assert isinstance(npv, dict) and isinstance(cases, dict)
    assert npv["low"] < npv["point"] < npv["high"]
    assert npv["point"] == cases["base"]["npv"]
    low = m.at_interval_end("low")
    assert low.theft_recall == m.theft_recall_low
    assert low.false_alarms_per_day_per_1000_tags == m.false_alarms_high
    assert npv["low"] == round(evaluate_case(RoiInputs(), low).npv, 2)
    # no reviews, but zero events still have an interval (0 .. 3.69 / exposure)
    assert m.reviews_low == 0.0 and m.reviews_high and m.reviews_high > 0


def short_run_report(false_alarms: int = 2, seconds: float = 600.0, tags: int = 200) -> dict[str, object]:
    """Issue 18's case: a short run's alarms extrapolated to a daily rate (2 in 600 s of 200
    tags is 1,440 per day per 1,000 tags)."""
    exposure = tags * seconds / 86_400 / 1000
    return {
        "tags": tags,
        "gateways": 11,
        "metrics": {
            "zone_accuracy": 0.7,
            "device_coverage": 1.0,
            "rules": {
                "exit_without_checkout": {"incidents": 24, "detected": 23, "recall": 23 / 24},
                "count_accuracy": 0.75,
                "false_alarms": false_alarms,
                "false_reviews": 0,
                "thousand_tag_days": exposure,
                "false_alarms_per_day_per_1000_tags": false_alarms / exposure,
                "false_reviews_per_day_per_1000_tags": 0.0,
            },
        },
    }


def test_a_rate_from_too_little_exposure_never_drives_the_point_npv() -> None:
    """design.md's rule, one code path (RateReading.priced): 2 alarms in 600 s are priced at
    the design rate, flagged, and the interval widened to hold it; the bare 1,440 per day
    would have made NPV negative."""
    report = short_run_report()
    m = measured_from_report(report)
    assert m.false_alarms_from_design and m.reviews_from_design
    assert m.false_alarms_per_day_per_1000_tags == DESIGN_FALSE_ALARMS
    assert m.false_alarms_low is not None and m.false_alarms_high is not None
    assert m.false_alarms_low <= DESIGN_FALSE_ALARMS <= m.false_alarms_high
    bare = replace(m, false_alarms_per_day_per_1000_tags=1440.0)
    assert evaluate_case(RoiInputs(), bare).npv < 0 < evaluate_case(RoiInputs(), m).npv
    rep = roi_report(RoiInputs(), m)
    iv = rep["npv_interval"]
    assert isinstance(iv, dict)
    assert iv["false_alarms_from_design"] is True
    assert iv["low"] < iv["point"] < iv["high"]
    # enough exposure (200 alarms in 50 thousand tag-days: 4 per day, upper 4.5): the measured point
    long = measured_from_report(short_run_report(200, 86_400 * 250.0))
    assert not long.false_alarms_from_design
    assert long.false_alarms_per_day_per_1000_tags == pytest.approx(4.0)


def test_tagtwin_roi_says_the_point_uses_the_design_rate(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    path.write_text(json.dumps(short_run_report()))
    out = subprocess.run(
        [sys.executable, "-m", "tagtwin", "roi", str(SCENARIOS / "demo.toml"), "--report", str(path)],
        check=False, capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"},
    )
    assert out.returncode == 0, out.stderr
    line = next(x for x in out.stdout.splitlines() if x.startswith("false alarms:"))
    assert line.startswith("false alarms: too little exposure (upper bound 4,5")
    assert f"NPV's point uses the design rate ({DESIGN_FALSE_ALARMS:g} per day per 1,000 tags)" in line


@settings(max_examples=200, deadline=None)
@given(count=st.integers(0, 500), exposure=st.floats(1e-5, 1e4), design=st.floats(0.01, 10))
def test_a_priced_rate_is_the_point_or_the_design_rate_inside_its_interval(
    count: int, exposure: float, design: float
) -> None:
    reading = rate_reading(count, exposure, design)
    low, point, high = reading.priced()
    assert low <= point <= high
    assert point == (design if reading.too_little_exposure else reading.rate)
