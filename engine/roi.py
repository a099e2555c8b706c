"""Return on investment: costs, and benefits driven by what the simulation measured.

Typed-in inputs (:class:`RoiInputs`) describe prices and the site's baseline; the
benefits scale with *measured* performance (:class:`MeasuredMetrics`: theft recall,
zone accuracy, device coverage, cycle-count accuracy, false-alarm rate), so two gateway
layouts get different returns for reasons the twin can show. Formulas: docs/roi.md.
Everything is monthly; money is in one currency (USD by default).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from engine.rules.config import MissingRule
from engine.rules.scoring import proportion_interval, rate_reading

DAYS_PER_MONTH = 365.25 / 12
# The rules' default design false-alarm rate (per day per 1,000 tags): what money assumes when a
# measured rate rests on too little exposure (RateReading.priced, design.md).
DESIGN_FALSE_ALARMS = MissingRule().false_alarms_per_day_per_1000_tags


class RoiInputs(BaseModel):
    """Prices, site baseline and model settings, each with a documented default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    horizon_months: int = Field(default=36, ge=1, le=240)
    discount_rate_annual: float = Field(default=0.08, ge=0, le=1)
    ramp_months: int = Field(
        default=2, ge=0, le=60, description="benefits grow linearly to full over this many months"
    )
    # Costs
    tags: int | None = Field(
        default=None, ge=0, description="tags deployed; default: the scenario's fleet"
    )
    tag_cost: float = Field(default=12.0, ge=0, description="per tag")
    gateway_cost: float = Field(default=150.0, ge=0, description="per gateway")
    install_cost_per_gateway: float = Field(default=120.0, ge=0)
    project_fixed_cost: float = Field(
        default=5000.0, ge=0, description="integration, survey, commissioning"
    )
    software_per_device_month: float = Field(default=0.30, ge=0, description="per tag-month")
    cloud_per_device_month: float = Field(default=0.05, ge=0, description="per tag-month")
    gateway_fee_per_month: float = Field(default=5.0, ge=0, description="per gateway-month")
    battery_life_months: float = Field(
        default=12.0, gt=0, description="used unless a measured forecast is given"
    )
    battery_cost: float = Field(default=0.5, ge=0, description="per cell")
    battery_swap_minutes: float = Field(default=2.0, ge=0)
    labor_rate_per_hour: float = Field(default=25.0, ge=0)
    alarm_handling_minutes: float = Field(
        default=10.0, ge=0, description="to check one false alarm or review item"
    )
    # Baseline of the site
    inventory_value: float = Field(default=500_000.0, ge=0, description="value of the tagged stock")
    shrink_rate_annual: float = Field(
        default=0.016, ge=0, le=1, description="share of inventory value lost per year"
    )
    theft_share_of_shrink: float = Field(default=0.65, ge=0, le=1)
    recovery_rate: float = Field(
        default=0.5, ge=0, le=1, description="share of detected thefts stopped or recovered"
    )
    cycle_count_hours_per_month: float = Field(default=80.0, ge=0)
    cycle_count_automatable: float = Field(default=0.8, ge=0, le=1)
    picks_per_month: float = Field(default=20_000.0, ge=0)
    mis_pick_rate: float = Field(default=0.01, ge=0, le=1)
    cost_per_mis_pick: float = Field(default=25.0, ge=0)
    mis_pick_reduction_at_full_accuracy: float = Field(default=0.3, ge=0, le=1)
    # Best / worst cases and sensitivity
    best_benefit_factor: float = Field(default=1.2, gt=0)
    best_cost_factor: float = Field(default=0.9, gt=0)
    worst_benefit_factor: float = Field(default=0.7, gt=0)
    worst_cost_factor: float = Field(default=1.2, gt=0)
    sensitivity_pct: float = Field(default=20.0, gt=0, lt=100)


@dataclass(frozen=True)
class MeasuredMetrics:
    """What the twin (or a pilot) measured. The ``_low``/``_high`` fields are the exact 95 %
    intervals of the measured rates (Clopper-Pearson for theft recall, Poisson for alarm
    rates, engine.rules.scoring): NPV is reported at both ends as well as at the point, and
    the recall bounds also feed the best and worst cases."""

    tags: int
    gateways: int
    theft_recall: float = 0.0
    zone_accuracy: float = 0.0
    coverage: float = 0.0
    count_accuracy: float = 0.0
    false_alarms_per_day_per_1000_tags: float = 0.0
    reviews_per_day_per_1000_tags: float = 0.0
    battery_life_months: float | None = None
    theft_recall_low: float | None = None
    theft_recall_high: float | None = None
    false_alarms_low: float | None = None
    false_alarms_high: float | None = None
    reviews_low: float | None = None
    reviews_high: float | None = None
    false_alarm_rate_shown: str | None = None  # rate_reading(...).shown: the exposure rule
    reviews_rate_shown: str | None = None
    # True when the point above is the design rate: the measured one had too little exposure
    false_alarms_from_design: bool = False
    reviews_from_design: bool = False

    def at_interval_end(self, end: str) -> MeasuredMetrics:
        """The metrics at the ``"low"`` (worse for the site: lowest recall, most alarms) or
        ``"high"`` end of every measured interval; a rate without an interval keeps its point."""
        worse = end == "low"

        def pick(point: float, low: float | None, high: float | None, more_is_better: bool) -> float:
            bound = low if worse == more_is_better else high
            return point if bound is None else bound

        return replace(
            self,
            theft_recall=pick(
                self.theft_recall, self.theft_recall_low, self.theft_recall_high, True
            ),
            false_alarms_per_day_per_1000_tags=pick(
                self.false_alarms_per_day_per_1000_tags,
                self.false_alarms_low,
                self.false_alarms_high,
                False,
            ),
            reviews_per_day_per_1000_tags=pick(
                self.reviews_per_day_per_1000_tags, self.reviews_low, self.reviews_high, False
            ),
        )


@dataclass(frozen=True)
class RoiCase:
    capex: float
    opex_per_month: float
    benefit_per_month: float  # at full ramp
    benefits: dict[str, float]  # by stream, monthly at full ramp
    costs: dict[str, float]  # opex by item, monthly
    tco: float
    net_per_month: float
    payback_month: int | None
    payback_months_exact: float | None
    npv: float
    cumulative: list[float]


def _evaluate(
    inp: RoiInputs, m: MeasuredMetrics, benefit_factor: float = 1.0, cost_factor: float = 1.0
) -> RoiCase:
    tags = inp.tags if inp.tags is not None else m.tags
    labor = inp.labor_rate_per_hour
    capex = (
        tags * inp.tag_cost
        + m.gateways * (inp.gateway_cost + inp.install_cost_per_gateway)
        + inp.project_fixed_cost
    ) * cost_factor
    life = m.battery_life_months if m.battery_life_months else inp.battery_life_months
    alarms_per_month = (
        (m.false_alarms_per_day_per_1000_tags + m.reviews_per_day_per_1000_tags)
        * tags
        / 1000.0
        * DAYS_PER_MONTH
    )
    costs = {
        "software": tags * inp.software_per_device_month,
        "cloud": tags * inp.cloud_per_device_month,
        "gateway_fees": m.gateways * inp.gateway_fee_per_month,
        "battery_swaps": tags / life * (inp.battery_cost + inp.battery_swap_minutes / 60.0 * labor),
        "false_alarm_handling": alarms_per_month * inp.alarm_handling_minutes / 60.0 * labor,
    }
    costs = {k: v * cost_factor for k, v in costs.items()}
    opex = sum(costs.values())
    benefits = {
        "theft": (
            inp.inventory_value
            * inp.shrink_rate_annual
            / 12.0
            * inp.theft_share_of_shrink
            * m.theft_recall
            * inp.recovery_rate
            * m.coverage
        ),
        "cycle_counts": inp.cycle_count_hours_per_month
        * labor
        * inp.cycle_count_automatable
        * m.count_accuracy,
        "mis_picks": (
            inp.picks_per_month
            * inp.mis_pick_rate
            * inp.cost_per_mis_pick
            * inp.mis_pick_reduction_at_full_accuracy
            * m.zone_accuracy
        ),
    }
    benefits = {k: v * benefit_factor for k, v in benefits.items()}
    full = sum(benefits.values())
    r = (1.0 + inp.discount_rate_annual) ** (1.0 / 12.0) - 1.0
    cum = -capex
    cumulative = [cum]
    npv = -capex
    payback: int | None = None
    exact: float | None = None
    for month in range(1, inp.horizon_months + 1):
        ramp = min(1.0, month / inp.ramp_months) if inp.ramp_months else 1.0
        net = full * ramp - opex
        prev = cum
        cum += net
        cumulative.append(cum)
        npv += net / (1.0 + r) ** month
        if payback is None and cum >= 0 and net > 0:
            payback = month
            exact = month - 1 + (-prev / net if prev < 0 else 0.0)
    return RoiCase(
        capex=capex,
        opex_per_month=opex,
        benefit_per_month=full,
        benefits=benefits,
        costs=costs,
        tco=capex + opex * inp.horizon_months,
        net_per_month=full - opex,
        payback_month=payback,
        payback_months_exact=exact,
        npv=npv,
        cumulative=cumulative,
    )


SENSITIVITY_INPUTS = (
    "tag_cost",
    "gateway_cost",
    "install_cost_per_gateway",
    "project_fixed_cost",
    "software_per_device_month",
    "cloud_per_device_month",
    "battery_life_months",
    "labor_rate_per_hour",
    "inventory_value",
    "shrink_rate_annual",
    "theft_share_of_shrink",
    "recovery_rate",
    "cycle_count_hours_per_month",
    "picks_per_month",
    "mis_pick_rate",
    "cost_per_mis_pick",
    "mis_pick_reduction_at_full_accuracy",
)
SHARES = frozenset(
    {
        "shrink_rate_annual",
        "theft_share_of_shrink",
        "recovery_rate",
        "mis_pick_rate",
        "mis_pick_reduction_at_full_accuracy",
        "cycle_count_automatable",
    }
)
SENSITIVITY_METRICS = (
    "theft_recall",
    "zone_accuracy",
    "coverage",
    "count_accuracy",
    "false_alarms_per_day_per_1000_tags",
)


def _payback_key(case: RoiCase, horizon: int) -> float:
    return (
        case.payback_months_exact if case.payback_months_exact is not None else float(horizon + 1)
    )


def sensitivity(inp: RoiInputs, m: MeasuredMetrics) -> list[dict[str, object]]:
    """Each input and measured metric moved by -/+ sensitivity_pct: payback and NPV swing,
    sorted by how far payback moves (a tornado table). Probabilities are capped at 1."""
    base = _evaluate(inp, m)
    f = inp.sensitivity_pct / 100.0
    rows: list[dict[str, object]] = []
    base_pb = _payback_key(base, inp.horizon_months)
    for name in SENSITIVITY_INPUTS + SENSITIVITY_METRICS:
        cases = []
        for sign in (-1.0, 1.0):
            if name in SENSITIVITY_INPUTS:
                v = getattr(inp, name) * (1 + sign * f)
                if name in SHARES:
                    v = min(v, 1.0)
                cases.append(_evaluate(inp.model_copy(update={name: v}), m))
            else:
                v = getattr(m, name) * (1 + sign * f)
                if name != "false_alarms_per_day_per_1000_tags":
                    v = min(v, 1.0)
                cases.append(_evaluate(inp, replace(m, **{name: v})))
        lo, hi = cases
        pb_lo, pb_hi = _payback_key(lo, inp.horizon_months), _payback_key(hi, inp.horizon_months)
        rows.append(
            {
                "input": name,
                "kind": "measured" if name in SENSITIVITY_METRICS else "input",
                "payback_low": round(pb_lo, 3),
                "payback_high": round(pb_hi, 3),
                "payback_swing": round(abs(pb_hi - pb_lo), 3),
                "npv_low": round(lo.npv, 2),
                "npv_high": round(hi.npv, 2),
                "npv_swing": round(abs(hi.npv - lo.npv), 2),
            }
        )
    rows.sort(key=lambda r: (-float(r["payback_swing"]), -float(r["npv_swing"]), str(r["input"])))  # type: ignore[arg-type]
    for r in rows:
        r["base_payback"] = round(base_pb, 3)
    return rows


def _case_dict(case: RoiCase) -> dict[str, object]:
    d = asdict(case)
    d.pop("cumulative")
    return {
        k: (
            round(v, 2)
            if isinstance(v, float)
            else {kk: round(vv, 2) for kk, vv in v.items()}
            if isinstance(v, dict)
            else v
        )
        for k, v in d.items()
    }


def roi_report(inp: RoiInputs, m: MeasuredMetrics) -> dict[str, object]:
    """Base, best and worst cases, NPV at the point and both ends of the measured rates'
    95 % intervals (``npv_interval``: prices as typed, only the measurement moves), and the
    sensitivity table, as plain JSON-ready data."""
    base = _evaluate(inp, m)
    npv_low = _evaluate(inp, m.at_interval_end("low")).npv
    npv_high = _evaluate(inp, m.at_interval_end("high")).npv
    worst_m = replace(m, theft_recall=m.theft_recall_low) if m.theft_recall_low is not None else m
    best_m = replace(m, theft_recall=m.theft_recall_high) if m.theft_recall_high is not None else m
    worst = _evaluate(inp, worst_m, inp.worst_benefit_factor, inp.worst_cost_factor)
    best = _evaluate(inp, best_m, inp.best_benefit_factor, inp.best_cost_factor)
    return {
        "measured": asdict(m),
        "horizon_months": inp.horizon_months,
        "cases": {"worst": _case_dict(worst), "base": _case_dict(base), "best": _case_dict(best)},
        "npv_interval": {
            "low": round(npv_low, 2),
            "point": round(base.npv, 2),
            "high": round(npv_high, 2),
            "rates": {
                "theft_recall": [m.theft_recall_low, m.theft_recall, m.theft_recall_high],
                "false_alarms_per_day_per_1000_tags": [
                    m.false_alarms_low, m.false_alarms_per_day_per_1000_tags, m.false_alarms_high
                ],
                "reviews_per_day_per_1000_tags": [
                    m.reviews_low, m.reviews_per_day_per_1000_tags, m.reviews_high
                ],
            },
            "false_alarm_rate_shown": m.false_alarm_rate_shown,
            "reviews_rate_shown": m.reviews_rate_shown,
            "false_alarms_from_design": m.false_alarms_from_design,
            "reviews_from_design": m.reviews_from_design,
        },
        "cumulative_base": [round(c, 2) for c in base.cumulative],
        "sensitivity": sensitivity(inp, m),
    }


def evaluate_case(inp: RoiInputs, m: MeasuredMetrics) -> RoiCase:
    """The base case alone."""
    return _evaluate(inp, m)


class RoiReportError(ValueError):
    """A run report that cannot feed the ROI: names the file (or ``<report>``) and the field."""


def parse_report(data: bytes, source: str = "<report>") -> dict[str, object]:
    """A report.json's bytes as a JSON object, or RoiReportError saying why not."""
    try:
        report = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise RoiReportError(f"{source}: not UTF-8 text (is it a report.json?)") from None
    except (ValueError, RecursionError) as exc:
        raise RoiReportError(f"{source}: not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(report, dict):
        raise RoiReportError(f"{source}: expected a JSON object, found {type(report).__name__}")
    return report


def read_report(path: Path | str) -> dict[str, object]:
    """Read a run's report.json; RoiReportError names the file when it is missing or wrong."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise RoiReportError(f"{path}: cannot read: {exc.strerror}") from None
    return parse_report(data, str(path))


def _section(parent: dict[str, object], key: str, where: str, source: str) -> dict[str, object]:
    value = parent.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RoiReportError(f"{source}: {where}{key}: expected an object, found {type(value).__name__}")
    return value


def _figure(
    parent: dict[str, object], key: str, where: str, source: str, hi: float = math.inf
) -> float:
    """A measured figure: absent or null is 0; otherwise a finite number in [0, hi]."""
    value = parent.get(key)
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= hi:
        raise RoiReportError(
            f"{source}: {where}{key}: expected a number in [0, {hi:g}], found {str(value)[:40]!r}"
        )
    return float(value)


def measured_from_report(
    report: dict[str, object], source: str = "<report>", design: float = DESIGN_FALSE_ALARMS
) -> MeasuredMetrics:
    """The measured metrics of a twin run's report.json (twin/run.py), with the exact 95 %
    intervals of theft recall and of the false-alarm and review rates; a rate from too little
    exposure is priced at the ``design`` rate (RateReading.priced). A figure the run could
    not measure (no thefts injected: no theft recall) counts as 0, so it earns nothing.
    A field of the wrong type or out of range is a RoiReportError naming it."""
    metrics = _section(report, "metrics", "", source)
    rules = _section(metrics, "rules", "metrics.", source)
    exit_scores = _section(rules, "exit_without_checkout", "metrics.rules.", source)
    where = "metrics.rules.exit_without_checkout."
    recall = _figure(exit_scores, "recall", where, source, 1.0)
    low = high = None
    incidents = int(_figure(exit_scores, "incidents", where, source, 1e9))
    if incidents:
        detected = int(_figure(exit_scores, "detected", where, source, incidents))
        low, high = proportion_interval(detected, incidents)
    exposure = _figure(rules, "thousand_tag_days", "metrics.rules.", source)
    # Rates are priced by the too-little-exposure rule (RateReading.priced): a short run's
    # extrapolated false-alarm rate never drives NPV alone. Without an exposure, the report's
    # own figure (0 when absent) stands and has no interval.
    alarm_rates = [
        _figure(rules, "false_alarms_per_day_per_1000_tags", "metrics.rules.", source),
        _figure(rules, "false_reviews_per_day_per_1000_tags", "metrics.rules.", source),
    ]
    priced: list[tuple[float | None, float, float | None, str | None, bool]] = []
    for count_key, point in zip(("false_alarms", "false_reviews"), alarm_rates, strict=True):
        if exposure <= 0:
            priced.append((None, point, None, None, False))
            continue
        reading = rate_reading(
            int(_figure(rules, count_key, "metrics.rules.", source, 1e12)), exposure, design
        )
        priced.append((*reading.priced(), reading.shown, reading.too_little_exposure))
    fa, rv = priced
    return MeasuredMetrics(
        tags=int(_figure(report, "tags", "", source, 1e9)),
        gateways=int(_figure(report, "gateways", "", source, 1e9)),
        theft_recall=recall,
        zone_accuracy=_figure(metrics, "zone_accuracy", "metrics.", source, 1.0),
        coverage=_figure(metrics, "device_coverage", "metrics.", source, 1.0),
        count_accuracy=_figure(rules, "count_accuracy", "metrics.rules.", source, 1.0),
        false_alarms_per_day_per_1000_tags=fa[1],
        reviews_per_day_per_1000_tags=rv[1],
        theft_recall_low=low,
        theft_recall_high=high,
        false_alarms_low=fa[0],
        false_alarms_high=fa[2],
        reviews_low=rv[0],
        reviews_high=rv[2],
        false_alarm_rate_shown=fa[3],
        reviews_rate_shown=rv[3],
        false_alarms_from_design=fa[4],
        reviews_from_design=rv[4],
    )
