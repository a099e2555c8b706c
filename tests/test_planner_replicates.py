"""planner.replicates: seeds shared between layouts, intervals, verdicts that need a real
difference, money that a too-little-exposure rate cannot drive, the run budget, and a
cancel that ends the workers."""

from __future__ import annotations

import math
import multiprocessing as mp
import time
from pathlib import Path

import pytest

from engine.roi import RoiInputs
from engine.rules.scoring import rate_reading
from planner import backend, report
from planner import replicates as reps
from twin.scenario import load_scenario
from twin.sweep import replicate_seeds

ROOT = Path(__file__).resolve().parents[1]


def test_t_interval_and_paired_differences_by_hand():
    iv = reps.t_interval([2.0, 2.2, 2.4])
    # mean 2.2, s = 0.2, t(0.975, 2) = 4.303: half-width 4.303 * 0.2 / sqrt(3) = 0.4969
    assert (iv.mean, iv.n) == (pytest.approx(2.2), 3)
    assert iv.high - iv.mean == pytest.approx(0.4969, abs=1e-4)
    assert math.isnan(reps.t_interval([1.0]).low)
    # B is better than A by 0.1 m in every seed: the paired interval is (nearly) a point,
    # though the layouts' own intervals overlap almost entirely.
    a, b = [2.0, 3.0, 2.5], [1.9, 2.9, 2.4]
    d = reps.paired(a, b)
    assert d.mean == pytest.approx(-0.1) and d.excludes_zero()
    assert reps.t_interval(a).low < reps.t_interval(b).high


def test_a_winner_only_when_the_paired_interval_excludes_zero():
    said = reps.verdict("median error", "m", True, {"A": [2.0, 3.0, 2.5], "B": [1.9, 2.9, 2.4]})
    assert said.startswith("median error: B wins (B − A = −0.10 m, 95 % CI ")
    noisy = {"A": [2.0, 3.0, 2.5], "B": [2.4, 2.6, 2.4]}
    said = reps.verdict("median error", "m", True, noisy)
    assert said.startswith("median error: no significant difference between B and A")
    assert reps.verdict("NPV", "money", False, {"A": [1.0], "B": [2.0]}).startswith(
        "NPV: no verdict from one seed"
    )
    never = {"A": [5.0, 5.2], "B": [math.inf, math.inf]}
    assert reps.verdict("payback", "months", True, never) == "payback: only A pays back in every seed"
    assert reps.fmt(math.inf, "months") == "never"
    assert reps.fmt_interval(reps.t_interval([math.inf, 4.0]), "months") == "never in some seeds"
    # An error or a share is shown within its range even when two seeds' t interval is not.
    assert reps.fmt_interval(reps.t_interval([0.1, 3.0]), "m").startswith("1.55 m (0.00 m to ")
    assert reps.fmt_interval(reps.t_interval([0.5, 0.99]), "%").endswith("to 100.0%)")


def test_budget_refuses_what_the_server_cannot_hold(monkeypatch):
    monkeypatch.setenv(reps.WORKERS_ENV, "2")
    small = reps.estimate(200, 60, 6)
    assert small.refused is None
    assert small.text().startswith("6 runs on 2 workers: about ")
    huge = reps.estimate(1_000_000, 600, 3)  # the 1M tags
    assert huge.refused is not None and "above this server's limit of 4,000 MB" in huge.refused
    monkeypatch.setenv(reps.LIMIT_S_ENV, "10")
    assert "above this server's limit of 10 s" in (reps.estimate(200, 6000, 2).refused or "")


@pytest.fixture(scope="module")
def two_layouts():
    sc = load_scenario(ROOT / "scenarios" / "demo.toml")
    rows = backend.gateway_rows(sc)
    a = backend.scenario_toml(backend.with_gateways(sc, rows, "A", duration_s=20))
    b = backend.scenario_toml(backend.with_gateways(sc, rows[:-3], "B", duration_s=20))
    seeds = reps.replicate_seeds(sc.seed, 2)
    jobs = [(t, s, i == 0) for t in (a, b) for i, s in enumerate(seeds)]
    seen: list[reps.Progress] = []
    found, errors = reps.run_batch(jobs, seen.append, workers=2)
    assert not errors
    assert seen[-1].done == seen[-1].total == 4
    return sc, {"A": [found[(a, s)] for s in seeds], "B": [found[(b, s)] for s in seeds]}


def test_layouts_share_seeds_and_money_ignores_too_little_exposure(two_layouts):
    sc, runs = two_layouts
    a, b = runs["A"], runs["B"]
    # the sweep's seeds: SeedSequence children of the scenario's seed, as `tagtwin sweep` runs them
    assert [r.seed for r in a] == [r.seed for r in b] == replicate_seeds(2, sc.seed)
    assert reps.replicate_seeds(sc.seed, 3)[:2] == replicate_seeds(2, sc.seed)  # more seeds keep the first
    assert a[0].view is not None and a[1].view is None  # the whole run of the first seed only
    assert a[0].metrics != a[1].metrics  # another seed is another run
    inputs = RoiInputs()
    res = [reps.layout_result(n, r, inputs) for n, r in runs.items()]
    # 20 s of 200 tags: the false-alarm rate rests on too little exposure, so NPV uses the
    # design rate and the upper bound's NPV is shown beside it.
    money = res[0].money
    assert money["false_alarms"].too_little_exposure
    assert money["false_alarm_rate_used"] == reps.DESIGN_FALSE_ALARMS
    assert all(p < n for p, n in zip(money["npv_at_upper_false_alarms"], money["npv"], strict=True))
    assert res[0].capex == 200 * 12 + 10 * 270 + 5000
    assert res[1].capex == 200 * 12 + 7 * 270 + 5000
    table = reps.comparison_table(res)
    assert table[0]["false alarms / day / 1,000 tags"].startswith("too little exposure")
    said = reps.verdicts(res)
    assert said[0].startswith("capex: B is cheaper (")
    assert len(said) == 1 + len(reps.ACCURACY) + len(reps.MONEY)
    assert reps.differences(res)[0]["B − A"] == "B − A"


def test_npv_at_both_ends_of_the_pooled_rate_intervals(two_layouts):
    _, runs = two_layouts
    a = runs["A"]
    roi = reps.roi_of_layout(a, RoiInputs())
    iv = roi["npv_interval"]
    alarms, _ = reps.false_alarm_readings(a)
    # The intervals pool both seeds' tag-days (not the first seed's alone).
    assert iv["rates"]["false_alarms_per_day_per_1000_tags"][2] == alarms.high
    assert alarms.high < rate_reading(a[0].false_alarms, a[0].thousand_tag_days).high
    assert iv["low"] < iv["point"] <= iv["high"]
    rows = report.npv_interval_rows(roi, "EUR")
    assert [r["at"] for r in rows] == ["low end of the 95 % intervals", "point value", "high end"]
    assert rows[1]["NPV"] == report.money(iv["point"], "EUR")
    assert rows[0]["false alarms / day / 1,000 tags"] == f"{alarms.high:,.2f}"


def test_cancel_ends_the_workers_and_frees_their_memory():
    sc = load_scenario(ROOT / "scenarios" / "demo.toml")
    text = backend.scenario_toml(backend.with_gateways(sc, backend.gateway_rows(sc), duration_s=3000))
    started = time.monotonic()

    class StopError(Exception):
        pass

    def stop_when_running(p: reps.Progress) -> None:
        if len(mp.active_children()) >= 1 and time.monotonic() - started > 2:
            raise StopError  # what Streamlit does to a script when the user clicks Cancel

    with pytest.raises(StopError):
        reps.run_batch([(text, s, False) for s in (1, 2)], stop_when_running, workers=2)
    deadline = time.monotonic() + 30
    while mp.active_children() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert mp.active_children() == []
    assert time.monotonic() - started < 30  # far less than two 3,000 s runs would take
