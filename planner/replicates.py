"""Several seeds per layout, the same seeds for every layout (common random numbers), run in
parallel; 95 % intervals, paired differences and verdicts that name a winner only when the
difference is real.

Common random numbers: layout A and layout B are simulated with the same seeds, so the
same tags walk the same paths and draw the same fading in both; the per-seed difference
B - A then carries little of the run-to-run noise, and its t interval (Student 1908) over
the seeds is far narrower than the two layouts' own intervals (Law & Kelton, Simulation
Modeling and Analysis, ch. 11).

The runs go through the sweep machinery (twin/sweep.py, issue 14), so a planner comparison
and ``tagtwin sweep`` are one way of doing the same thing: the seeds are the sweep's
(``replicate_seeds``: ``SeedSequence`` children of the scenario's seed, exactly the seeds a
sweep spec of the same scenario with ``seeds = n`` runs), the jobs run on its
:class:`~twin.sweep.RunBatch` (a process pool whose cancel terminates the workers at
once, as the app's Cancel needs), and the intervals are its ``mean_ci``. What differs is
the job: a run here returns the whole run view of the first seed (playback, maps) and the
report the ROI model reads, where the sweep's ``run_one`` returns a metrics row.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from engine.roi import DESIGN_FALSE_ALARMS, RoiInputs, measured_from_report, roi_report
from engine.rules.scoring import RateReading, proportion_interval, rate_reading
from planner.backend import RunView, run_view, scenario_dict, scenario_from_dict, scenario_toml
from twin.scenario import parse_scenario
from twin.sweep import RunBatch
from twin.sweep import replicate_seeds as sweep_seeds

DEFAULT_SEEDS = 3
runs_submitted = 0  # simulations this process handed to a pool: lets tests prove caching

# The run budget. Cost per run ~ fixed + per tag-second, calibrated on the demo warehouse
# (benchmarks/planner.py prints the measured figures beside these estimates).
RUN_FIXED_S = 3.0  # worker start-up and the engine's set-up
RUN_S_PER_TAG_SECOND = 6e-5
RUN_FIXED_MB = 200.0  # one worker process with the twin imported
RUN_MB_PER_TAG_SECOND = 1.1e-3
LIMIT_MB_ENV, LIMIT_S_ENV, WORKERS_ENV = (
    "TAGTWIN_RUN_LIMIT_MB",
    "TAGTWIN_RUN_LIMIT_S",
    "TAGTWIN_RUN_WORKERS",
)
DEFAULT_LIMIT_MB = 4000.0
DEFAULT_LIMIT_S = 1800.0

# Compared metrics: (key, label, lower is better, unit).
ACCURACY = (
    ("median_error_m", "median error", True, "m"),
    ("p90_error_m", "p90 error", True, "m"),
    ("zone_accuracy", "zone accuracy", False, "%"),
    ("device_coverage", "tags located", False, "%"),
    ("r90_coverage", "truth inside r90", False, "%"),
)
MONEY = (("npv", "NPV", False, "money"), ("payback_months", "payback", True, "months"))


def replicate_seeds(base_seed: int, n: int) -> list[int]:
    """The seeds every layout is run with (the same list for all: common random numbers):
    the sweep's, from ``SeedSequence(base_seed)``; the first stays the same whatever ``n``."""
    return sweep_seeds(max(1, n), base_seed)


def reseeded(text: str, seed: int) -> str:
    data = scenario_dict(parse_scenario(text))
    data["seed"] = int(seed)
    return scenario_toml(scenario_from_dict(data, "<replicate>"))


@dataclass
class Replicate:
    """What one seed's run of one layout contributes: small, so many fit in memory."""

    seed: int
    metrics: dict[str, float]
    false_alarms: int
    false_reviews: int
    thousand_tag_days: float
    report: dict[str, Any]  # report.json of the run (the ROI model reads it)
    elapsed_s: float
    view: RunView | None = None  # the whole run, kept for the first seed (playback, maps)


def simulate_replicate(text: str, seed: int, keep_view: bool) -> Replicate:
    """One layout at one seed (what a pool worker runs)."""
    t0 = time.perf_counter()
    view = run_view(parse_scenario(reseeded(text, seed)))
    rules = view.rule_scores
    return Replicate(
        seed=seed,
        metrics={k: float(view.metrics[k]) for k, *_ in ACCURACY},
        false_alarms=int(rules.get("false_alarms") or 0),
        false_reviews=int(rules.get("false_reviews") or 0),
        thousand_tag_days=float(rules.get("thousand_tag_days") or 0.0),
        report=view.report,
        elapsed_s=time.perf_counter() - t0,
        view=view if keep_view else None,
    )


def _job(args: tuple[str, int, bool]) -> Replicate:
    return simulate_replicate(*args)


# -- the run budget ------------------------------------------------------------------------


@dataclass(frozen=True)
class Budget:
    runs: int
    workers: int
    tag_seconds: float
    seconds: float
    memory_mb: float
    limit_mb: float
    limit_s: float

    @property
    def refused(self) -> str | None:
        """Why the server will not start this run (None: it will)."""
        if self.memory_mb > self.limit_mb:
            return (
                f"needs about {self.memory_mb:,.0f} MB, above this server's limit of "
                f"{self.limit_mb:,.0f} MB ({LIMIT_MB_ENV}); fewer tags, seeds or simulated seconds"
            )
        if self.seconds > self.limit_s:
            return (
                f"would take about {_duration(self.seconds)}, above this server's limit of "
                f"{_duration(self.limit_s)} ({LIMIT_S_ENV}); fewer seeds or simulated seconds"
            )
        return None

    def text(self) -> str:
        return (
            f"{self.runs} run{'s' * (self.runs > 1)} on {self.workers} worker"
            f"{'s' * (self.workers > 1)}: about {_duration(self.seconds)} and "
            f"{self.memory_mb:,.0f} MB"
        )


def _duration(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def workers_for(runs: int) -> int:
    cap = int(os.environ.get(WORKERS_ENV) or os.cpu_count() or 1)
    return max(1, min(runs, cap))


def estimate(tags: int, duration_s: float, runs: int) -> Budget:
    """Time and peak memory of ``runs`` simulations of ``tags`` tags for ``duration_s``."""
    workers = workers_for(runs)
    tag_s = float(tags) * float(duration_s)
    per_run_s = RUN_FIXED_S + RUN_S_PER_TAG_SECOND * tag_s
    waves = math.ceil(runs / workers)
    return Budget(
        runs=runs,
        workers=workers,
        tag_seconds=tag_s * runs,
        seconds=waves * per_run_s,
        memory_mb=workers * (RUN_FIXED_MB + RUN_MB_PER_TAG_SECOND * tag_s),
        limit_mb=float(os.environ.get(LIMIT_MB_ENV) or DEFAULT_LIMIT_MB),
        limit_s=float(os.environ.get(LIMIT_S_ENV) or DEFAULT_LIMIT_S),
    )


# -- the batch -----------------------------------------------------------------------------

JobKey = tuple[str, int]  # (layout's scenario text, seed)


@dataclass
class Progress:
    done: int
    total: int
    elapsed_s: float

    @property
    def eta_s(self) -> float | None:
        if self.done == 0:
            return None
        return self.elapsed_s / self.done * (self.total - self.done)

    def text(self) -> str:
        eta = self.eta_s
        return f"{self.done} of {self.total} runs done, " + (
            f"about {_duration(eta)} left" if eta is not None else "estimating time left"
        )


def run_batch(
    jobs: Sequence[tuple[str, int, bool]],
    on_progress: Callable[[Progress], None],
    workers: int | None = None,
    poll_s: float = 0.25,
) -> tuple[dict[JobKey, Replicate], dict[JobKey, str]]:
    """Run every (scenario text, seed, keep the whole view) job; ``on_progress`` is called
    while they run. If it raises (the app's Cancel, or the user leaving the view), the
    workers are terminated before the exception goes on."""
    global runs_submitted  # noqa: PLW0603 - a process-wide counter, read by tests
    runs_submitted += len(jobs)
    t0 = time.monotonic()
    batch: RunBatch[tuple[str, int, bool], Replicate] = RunBatch(
        jobs, _job, "process", workers=workers or workers_for(len(jobs)))
    results: dict[JobKey, Replicate] = {}
    errors: dict[JobKey, str] = {}
    done = False
    try:
        while True:
            for i, result in batch.poll(timeout=poll_s):
                text, seed, _ = jobs[i]
                if isinstance(result, BaseException):  # a run that failed is reported, never ends the app
                    errors[(text, seed)] = f"{type(result).__name__}: {result}"
                else:
                    results[(text, seed)] = result
            on_progress(Progress(batch.done, len(jobs), time.monotonic() - t0))
            if batch.finished:
                done = True
                return results, errors
    finally:
        if done:
            batch.close()
        else:
            batch.cancel()


# -- statistics ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    n: int

    def excludes_zero(self) -> bool:
        return self.n > 1 and (self.low > 0 or self.high < 0)


def t_interval(values: Sequence[float]) -> Interval:
    """Mean and its 95 % Student t interval, by the sweep's own statistics
    (``twin.sweep.mean_ci``); NaN bounds from one value (no spread known). Infinite values
    (a payback that never comes) make the interval unbounded."""
    from twin.sweep import mean_ci

    a = np.asarray(values, dtype=float)
    n = len(a)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    if not np.all(np.isfinite(a)):
        m = float(np.mean(a)) if np.all(a == a[0]) else math.nan
        return Interval(m, math.nan, math.nan, n)
    ci = mean_ci(a.tolist())
    low, high = ci["ci95"] if ci["ci95"] is not None else (math.nan, math.nan)
    return Interval(float(ci["mean"]), float(low), float(high), n)


def paired(a: Sequence[float], b: Sequence[float]) -> Interval:
    """B - A seed by seed (the same seeds: common random numbers) and its 95 % interval."""
    return t_interval([y - x for x, y in zip(a, b, strict=True)])


def fmt(v: float, unit: str) -> str:
    if not math.isfinite(v):
        return "never" if unit == "months" else "n/a"
    if unit == "%":
        return f"{v:.1%}"
    if unit == "m":
        return f"{v:.2f} m"
    if unit == "months":
        return f"{v:.1f} months"
    return f"{v:,.0f}"


def fmt_interval(iv: Interval, unit: str) -> str:
    """ "2.34 m (2.10–2.58)", or the bare mean with "(1 seed)" when no spread is known."""
    if iv.n == 0:
        return "n/a"
    if not math.isfinite(iv.mean):
        return "never in some seeds" if unit == "months" else "n/a"
    if iv.n == 1 or not math.isfinite(iv.low):
        return f"{fmt(iv.mean, unit)} (1 seed)" if iv.n == 1 else fmt(iv.mean, unit)
    # Errors and shares cannot leave [0, inf) and [0, 1]: the t interval of a few seeds can.
    low = max(iv.low, 0.0) if unit in ("m", "%") else iv.low
    high = min(iv.high, 1.0) if unit == "%" else iv.high
    return f"{fmt(iv.mean, unit)} ({fmt(low, unit)} to {fmt(high, unit)})"


def verdict(
    label: str,
    unit: str,
    lower_is_better: bool,
    per_layout: Mapping[str, Sequence[float]],
) -> str:
    """Which layout wins on one metric: the best mean against the runner-up, by their paired
    difference; a winner only when its 95 % interval excludes zero."""
    means = {
        k: float(np.mean(v)) for k, v in per_layout.items() if len(v) and np.all(np.isfinite(v))
    }
    if len(means) < 2:
        never = [k for k, v in per_layout.items() if len(v) and not np.all(np.isfinite(v))]
        if means and never:
            only = next(iter(means))
            return f"{label}: only {only} pays back in every seed"
        return f"{label}: not comparable (too few finite values)"
    ranked = sorted(means, key=lambda k: means[k] if lower_is_better else -means[k])
    best, runner = ranked[0], ranked[1]
    d = paired(per_layout[runner], per_layout[best])  # best - runner
    diff = (
        f"{best} − {runner} = {fmt_signed(d.mean, unit)}, "
        f"95 % CI {fmt_signed(d.low, unit)} to {fmt_signed(d.high, unit)}"
    )
    if d.n < 2:
        shown = f"{best} {fmt(means[best], unit)}, {runner} {fmt(means[runner], unit)}"
        return f"{label}: no verdict from one seed ({shown})"
    if d.excludes_zero():
        return f"{label}: {best} wins ({diff})"
    return f"{label}: no significant difference between {best} and {runner} ({diff})"


def fmt_signed(v: float, unit: str) -> str:
    if not math.isfinite(v):
        return "n/a"
    if unit == "%":
        return f"{v * 100:+.1f} points"
    return ("+" if v >= 0 else "−") + fmt(abs(v), unit)


# -- money with its uncertainty ------------------------------------------------------------


def false_alarm_readings(
    reps: Sequence[Replicate], design: float = DESIGN_FALSE_ALARMS
) -> tuple[RateReading, RateReading]:
    """False alarms and false reviews per day per 1,000 tags, pooled over the seeds."""
    exposure = sum(r.thousand_tag_days for r in reps)
    return (
        rate_reading(sum(r.false_alarms for r in reps), exposure, design),
        rate_reading(sum(r.false_reviews for r in reps), exposure, design),
    )


def roi_per_seed(
    reps: Sequence[Replicate], inputs: RoiInputs, design: float = DESIGN_FALSE_ALARMS
) -> dict[str, Any]:
    """The ROI model's base case for every seed, with false alarms and reviews at the pooled
    rate when the exposure suffices and at the design rate when it does not (so a rate from
    too little exposure never drives NPV alone); plus NPV at the rates' upper bounds."""
    alarms, reviews = false_alarm_readings(reps, design)
    fa, fr = alarms.priced()[1], reviews.priced()[1]
    npv, payback, pessimistic = [], [], []
    for r in reps:
        m = replace(
            measured_from_report(r.report),
            false_alarms_per_day_per_1000_tags=fa,
            reviews_per_day_per_1000_tags=fr,
        )
        base = roi_report(inputs, m)["cases"]["base"]  # type: ignore[index]
        npv.append(float(base["npv"]))
        exact = base["payback_months_exact"]
        payback.append(float(exact) if exact is not None else math.inf)
        worst = replace(
            m,
            false_alarms_per_day_per_1000_tags=alarms.upper,
            reviews_per_day_per_1000_tags=reviews.upper,
        )
        pessimistic.append(float(roi_report(inputs, worst)["cases"]["base"]["npv"]))  # type: ignore[index]
    return {
        "npv": npv,
        "payback_months": payback,
        "npv_at_upper_false_alarms": pessimistic,
        "false_alarms": alarms,
        "false_reviews": reviews,
        "false_alarm_rate_used": fa,
        "false_alarms_from_design": alarms.too_little_exposure,
    }


# -- the comparison ------------------------------------------------------------------------


@dataclass
class LayoutResult:
    """One layout over all seeds: per-seed values (for paired differences) and its money."""

    name: str
    gateways: int
    capex: float
    per_seed: dict[str, list[float]]  # metric key -> one value per seed, seeds in order
    money: dict[str, Any]  # roi_per_seed(...)

    def interval(self, key: str) -> Interval:
        return t_interval(self.per_seed[key])


def layout_result(name: str, found: Sequence[Replicate], inputs: RoiInputs) -> LayoutResult:
    money = roi_per_seed(found, inputs)
    base = roi_report(inputs, measured_from_report(found[0].report))["cases"]["base"]  # type: ignore[index]
    per_seed = {k: [r.metrics[k] for r in found] for k, *_ in ACCURACY}
    per_seed |= {"npv": money["npv"], "payback_months": money["payback_months"]}
    return LayoutResult(
        name, int(found[0].report.get("gateways", 0)), float(base["capex"]), per_seed, money
    )


def comparison_table(results: Sequence[LayoutResult]) -> list[dict[str, Any]]:
    """One readable row per layout: each figure as mean (95 % interval over the seeds)."""
    rows = []
    for r in results:
        row: dict[str, Any] = {
            "layout": r.name,
            "gateways": r.gateways,
            "capex": fmt(r.capex, "money"),
        }
        for key, label, _lower, unit in (*ACCURACY, *MONEY):
            row[label] = fmt_interval(r.interval(key), unit)
        row["false alarms / day / 1,000 tags"] = r.money["false_alarms"].text()
        rows.append(row)
    return rows


def verdicts(results: Sequence[LayoutResult]) -> list[str]:
    """Plain sentences, one per metric: a winner only where the paired difference is real."""
    if len(results) < 2:
        return []
    out = []
    capex = sorted(results, key=lambda r: r.capex)
    if capex[0].capex < capex[1].capex:
        out.append(
            f"capex: {capex[0].name} is cheaper ({fmt(capex[0].capex, 'money')} vs "
            f"{fmt(capex[1].capex, 'money')} for {capex[1].name}; no uncertainty: a price list)"
        )
    for key, label, lower, unit in (*ACCURACY, *MONEY):
        out.append(verdict(label, unit, lower, {r.name: r.per_seed[key] for r in results}))
    return out


def differences(results: Sequence[LayoutResult]) -> list[dict[str, str]]:
    """B - A for every layout B against the first (A), seed by seed, with 95 % intervals."""
    if len(results) < 2:
        return []
    a = results[0]
    rows = []
    for b in results[1:]:
        row = {"B − A": f"{b.name} − {a.name}"}
        for key, label, _lower, unit in (*ACCURACY, *MONEY):
            d = paired(a.per_seed[key], b.per_seed[key])
            row[label] = (
                f"{fmt_signed(d.mean, unit)} ({fmt_signed(d.low, unit)} to {fmt_signed(d.high, unit)})"
                + ("" if d.excludes_zero() else " n.s.")
                if d.n > 1 and math.isfinite(d.low)
                else "n/a"
            )
        rows.append(row)
    return rows


def roi_of_layout(found: Sequence[Replicate], inputs: RoiInputs) -> dict[str, Any]:
    """The ROI model's full report (cases, cash, sensitivity) on the seeds' mean measured
    metrics, false alarms and reviews taken as in :func:`roi_per_seed`. The rates' 95 %
    intervals (NPV is reported at both ends, ``npv_interval``) pool the seeds' counts: theft
    recall over all thefts, false alarms and reviews over all the tag-days."""
    alarms, reviews = false_alarm_readings(found)
    (fa_low, fa, fa_high), (fr_low, fr, fr_high) = alarms.priced(), reviews.priced()
    ms = [measured_from_report(r.report) for r in found]
    thefts, caught = pooled_thefts(found)
    recall_low, recall_high = proportion_interval(caught, thefts) if thefts else (None, None)

    def mean(attr: str) -> float:
        return float(np.mean([getattr(m, attr) for m in ms]))

    measured = replace(
        ms[0],
        theft_recall=mean("theft_recall"),
        zone_accuracy=mean("zone_accuracy"),
        coverage=mean("coverage"),
        count_accuracy=mean("count_accuracy"),
        false_alarms_per_day_per_1000_tags=fa,
        reviews_per_day_per_1000_tags=fr,
        theft_recall_low=recall_low,
        theft_recall_high=recall_high,
        false_alarms_low=fa_low,
        false_alarms_high=fa_high,
        reviews_low=fr_low,
        reviews_high=fr_high,
        false_alarm_rate_shown=alarms.shown,
        reviews_rate_shown=reviews.shown,
        false_alarms_from_design=alarms.too_little_exposure,
        reviews_from_design=reviews.too_little_exposure,
    )
    return roi_report(inputs, measured)


def pooled_thefts(found: Sequence[Replicate]) -> tuple[int, int]:
    """Thefts injected and thefts alarmed, summed over the seeds' reports."""
    thefts = caught = 0
    for r in found:
        metrics = r.report.get("metrics", {})
        rules = metrics.get("rules", {}) if isinstance(metrics, dict) else {}
        exit_scores = rules.get("exit_without_checkout", {}) if isinstance(rules, dict) else {}
        if isinstance(exit_scores, dict):
            thefts += int(exit_scores.get("incidents", 0) or 0)
            caught += int(exit_scores.get("detected", 0) or 0)
    return thefts, caught
