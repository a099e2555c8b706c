"""Scoring rules against ground-truth incidents: precision, recall, detection delay, and
false alarms per day per 1,000 tags.

An alarm is a *true positive* when an incident that explains it (same tag or gateway,
a kind the rule can see) was under way: its time lies in [incident.t_begin,
incident.t + max_delay_s] (gateways: up to the end of the outage plus max_delay_s).
Recall counts only the incidents a rule is *meant* to catch; precision accepts any
incident that explains the alarm (a stolen tag is also, truly, missing).
Detection delay is the first matching alarm's time minus the incident's time; it can be
negative for warnings that precede the failure (a battery reading low before the cell dies).

Every figure carries its exact 95 % interval: Clopper-Pearson for precision and recall,
the exact Poisson (chi-square) interval for rates with a one-sided upper bound for false
alarms, and the order-statistic interval for a median delay. A rate from too little
exposure is never shown bare (:func:`rate_reading`, the rule of docs/rules.md "Scoring").
Runs of several seeds pool their counts (:func:`tally_events`, :meth:`ScoreTally.merge`)
before the intervals are taken.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

# scipy.stats is imported where a bound is computed, not here: it takes ~0.5 s, and every
# process that loads a scenario (twin.scenario -> engine.roi -> here) would pay it.

if TYPE_CHECKING:
    from engine.rules.events import Event

SECONDS_PER_DAY = 86_400.0
LEVEL = 0.95
# The site-level target every false-alarm rate is judged against (issue 5): alarms per day
# per 1,000 tags. A rule's own design rate (missing.false_alarms_per_day_per_1000_tags) is
# lower, to leave a margin.
TARGET_FALSE_ALARMS_PER_DAY_PER_1000_TAGS = 1.0
INCIDENT_KINDS = ("theft", "misplacement", "battery_death", "gateway_outage", "tag_removed")


@dataclass(frozen=True)
class IncidentRecord:
    """One injected incident (ground truth). Times are event times in seconds.

    ``t`` is the moment that matters (the tag passes the door, the cell dies, the gateway
    goes down, the item is set down); ``t_begin`` when it started (pick-up, first low
    reading); ``t_end`` when it is over (a gateway back up; NaN if it never ends).
    """

    kind: str
    t: float
    t_begin: float
    t_end: float = math.nan
    tag: str | None = None
    gateway: str | None = None
    detail: Mapping[str, object] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "t": round(self.t, 4),
            "t_begin": round(self.t_begin, 4),
            "t_end": None if math.isnan(self.t_end) else round(self.t_end, 4),
            "tag": self.tag,
            "gateway": self.gateway,
            "detail": dict(self.detail),
        }


Predicate = Callable[[IncidentRecord], bool]


def _kind(*kinds: str) -> Predicate:
    return lambda rec: rec.kind in kinds


def _silent_removed(rec: IncidentRecord) -> bool:
    return rec.kind == "tag_removed" and bool(rec.detail.get("silent"))


def _dumped_removed(rec: IncidentRecord) -> bool:
    return rec.kind == "tag_removed" and not rec.detail.get("silent")


# rule -> incidents it is meant to catch (recall) and incidents that explain it (precision).
TARGETS: dict[str, Predicate] = {
    "exit_without_checkout": _kind("theft"),
    "missing_tag": lambda r: r.kind == "battery_death" or _silent_removed(r),
    "battery_low": _kind("battery_death"),
    "misplaced": lambda r: r.kind == "misplacement" or _dumped_removed(r),
    "gateway_health": _kind("gateway_outage"),
}
EXPLAINS: dict[str, Predicate] = {
    "exit_without_checkout": _kind("theft"),
    "exit_unresolved": _kind("theft", "battery_death", "tag_removed"),
    "missing_tag": _kind("theft", "battery_death", "tag_removed"),
    "battery_low": _kind("battery_death"),
    "misplaced": _kind("misplacement", "tag_removed"),
    "gateway_health": _kind("gateway_outage"),
}
GROUPS = {"gateway_silent": "gateway_health", "gateway_degraded": "gateway_health"}


def proportion_interval(successes: int, trials: int, level: float = LEVEL) -> tuple[float, float]:
    """Exact (Clopper-Pearson 1934) two-sided interval of a binomial proportion:
    Beta(a/2; k, n-k+1) and Beta(1-a/2; k+1, n-k) quantiles, 0 and 1 at the ends.
    (0, 1) when there were no trials."""
    if trials <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= trials:
        raise ValueError(f"successes {successes} outside 0..{trials}")
    from scipy.stats import beta

    a = 1.0 - level
    lo = 0.0 if successes == 0 else float(beta.ppf(a / 2, successes, trials - successes + 1))
    hi = 1.0 if successes == trials else float(beta.ppf(1 - a / 2, successes + 1, trials - successes))
    return lo, hi


def exposure_needed(rate: float, events: int = 0, level: float = LEVEL) -> float:
    """Exposure (in the rate's unit of exposure, e.g. thousand tag-days) at which ``events``
    events give a one-sided upper bound of ``rate``: 3.0 / rate with none, 4.74 / rate with one."""
    return poisson_upper(events, 1.0, level) / rate


def median_interval(x: Sequence[float], level: float = LEVEL) -> tuple[float, float] | None:
    """Distribution-free interval of a median from order statistics: the widest-coverage
    pair x_(l), x_(n+1-l) with P(l <= Binomial(n, 1/2) < n+1-l) >= level (exact; None when
    n is too small for any pair to reach the level, n < 6 at 95 %)."""
    n = len(x)
    if n == 0:
        return None
    a = np.sort(np.asarray(x, dtype=float))
    from scipy.stats import binom

    # largest l (1-based) with P(B < l) <= (1-level)/2
    l_max = int(binom.ppf((1 - level) / 2, n, 0.5))
    while l_max > 0 and binom.cdf(l_max - 1, n, 0.5) > (1 - level) / 2:
        l_max -= 1
    if l_max < 1:
        return None
    return float(a[l_max - 1]), float(a[n - l_max])


def _fmt(v: float) -> str:
    """3 significant figures with thousands separators: 0.998, 12.3, 4,534."""
    if v == 0:
        return "0"
    digits = max(0, 2 - math.floor(math.log10(abs(v))))
    return f"{v:,.{digits}f}"


def proportion_estimate(successes: int, trials: int, level: float = LEVEL) -> dict[str, object]:
    """A proportion with its Clopper-Pearson interval, as scoring reports print it."""
    lo, hi = proportion_interval(successes, trials, level)
    return {
        "point": round(successes / trials, 4) if trials else None,
        "ci95": [round(lo, 4), round(hi, 4)],
        "of": f"{successes}/{trials}",
    }


def _case(rec: IncidentRecord) -> str:
    """The incident's kind, with a silenced (destroyed) removed tag told apart: a dying cell
    warns first, a destroyed tag just stops, and the two are detected very differently."""
    return "tag_destroyed" if _silent_removed(rec) else rec.kind


def _matches(ev: Event, rec: IncidentRecord, max_delay_s: float) -> bool:
    if ev.tag is not None:
        if ev.tag != rec.tag:
            return False
    elif ev.gateway is None or ev.gateway != rec.gateway:
        return False
    end = rec.t_end if math.isfinite(rec.t_end) else rec.t
    return rec.t_begin <= ev.t <= end + max_delay_s


def delay_stats(x: Sequence[float]) -> dict[str, float | None]:
    """Median, p90 and max of a list of delays (None for each when there are none)."""
    if not x:
        return {"median": None, "p90": None, "max": None}
    a = np.asarray(x, dtype=float)
    return {
        "median": round(float(np.median(a)), 3),
        "p90": round(float(np.quantile(a, 0.9)), 3),
        "max": round(float(a.max()), 3),
    }


@dataclass
class RuleTally:
    """One rule's counts against ground truth; tallies of several seeds add up."""

    events: int = 0
    true_positives: int = 0
    false_alarms: int = 0  # alarms (not reviews) no incident explains
    incidents: int | None = None  # None: the rule has no target incidents
    detected: int = 0
    delays_s: list[float] = field(default_factory=list)
    delays_intervals: list[float] = field(default_factory=list)
    delays_by_case: dict[str, list[float]] = field(default_factory=dict)

    def add(self, other: RuleTally) -> None:
        self.events += other.events
        self.true_positives += other.true_positives
        self.false_alarms += other.false_alarms
        if other.incidents is not None:
            self.incidents = (self.incidents or 0) + other.incidents
        self.detected += other.detected
        self.delays_s += other.delays_s
        self.delays_intervals += other.delays_intervals
        for case, v in other.delays_by_case.items():
            self.delays_by_case.setdefault(case, []).extend(v)


@dataclass
class ScoreTally:
    """Counts of one run (or the sum of several): per rule, alarms, reviews, exposure."""

    rules: dict[str, RuleTally] = field(default_factory=dict)
    alarms: int = 0
    reviews: int = 0
    false_alarms: int = 0
    false_reviews: int = 0
    thousand_tag_days: float = 0.0
    incidents: dict[str, int] = field(default_factory=lambda: dict.fromkeys(INCIDENT_KINDS, 0))
    runs: int = 0

    def merge(self, other: ScoreTally) -> ScoreTally:
        """Add another run's counts (seeds pooled: one interval over all of them)."""
        for rule, t in other.rules.items():
            self.rules.setdefault(rule, RuleTally()).add(t)
        self.alarms += other.alarms
        self.reviews += other.reviews
        self.false_alarms += other.false_alarms
        self.false_reviews += other.false_reviews
        self.thousand_tag_days += other.thousand_tag_days
        for k, v in other.incidents.items():
            self.incidents[k] = self.incidents.get(k, 0) + v
        self.runs += other.runs
        return self


def tally_events(
    events: Sequence[Event],
    incidents: Sequence[IncidentRecord],
    n_tags: int,
    duration_s: float,
    *,
    max_delay_s: float = 600.0,
    interval_s: Mapping[str, float] | None = None,
) -> ScoreTally:
    """One run's counts against its incidents; :func:`score_report` turns one tally (or
    several merged) into precision, recall, delay and rates with their intervals."""
    tally = ScoreTally(thousand_tag_days=n_tags / 1000.0 * duration_s / SECONDS_PER_DAY, runs=1)
    alarms = [e for e in events if e.severity in ("alarm", "review")]
    explained = [False] * len(alarms)
    by_rule: dict[str, list[int]] = {}
    for i, ev in enumerate(alarms):
        rule = GROUPS.get(ev.rule, ev.rule)
        by_rule.setdefault(rule, []).append(i)
        pred = EXPLAINS.get(rule)
        if pred is not None:
            explained[i] = any(pred(rec) and _matches(ev, rec, max_delay_s) for rec in incidents)
    for rule in sorted(set(by_rule) | set(TARGETS)):
        idx = by_rule.get(rule, [])
        rt = RuleTally(
            events=len(idx),
            true_positives=sum(explained[i] for i in idx),
            false_alarms=sum(
                1 for i in idx if alarms[i].severity == "alarm" and not explained[i]
            ),
        )
        target = TARGETS.get(rule)
        if target is not None:
            recs = [r for r in incidents if target(r)]
            rt.incidents = len(recs)
            for rec in recs:
                hits = [alarms[i].t for i in idx if _matches(alarms[i], rec, max_delay_s)]
                if not hits:
                    continue
                rt.detected += 1
                delay = min(hits) - rec.t
                rt.delays_s.append(delay)
                iv = interval_s.get(rec.tag or "") if interval_s else None
                if rule == "missing_tag" and iv:
                    rt.delays_intervals.append(delay / iv)
                    rt.delays_by_case.setdefault(_case(rec), []).append(delay / iv)
        tally.rules[rule] = rt
    tally.alarms = sum(1 for e in alarms if e.severity == "alarm")
    tally.reviews = sum(1 for e in alarms if e.severity == "review")
    tally.false_alarms = sum(
        1 for i, e in enumerate(alarms) if e.severity == "alarm" and not explained[i]
    )
    tally.false_reviews = sum(
        1 for i, e in enumerate(alarms) if e.severity == "review" and not explained[i]
    )
    tally.incidents = {k: sum(1 for r in incidents if r.kind == k) for k in INCIDENT_KINDS}
    return tally


def _delay_with_interval(x: Sequence[float]) -> dict[str, object]:
    ci = median_interval(x)
    return {**delay_stats(x), "median_ci95": [round(ci[0], 3), round(ci[1], 3)] if ci else None}


NEGATIVE_DELAY_NOTE = (
    "a negative delay is a warning that came before the incident it warns of (battery_low "
    "fires when the reading falls below low_pct, typically hours before the cell dies); "
    "it counts as a detection"
)


def score_report(tally: ScoreTally) -> dict[str, object]:
    """Per-rule precision, recall (Clopper-Pearson intervals), delay (median interval) and
    false alarms per day per 1,000 tags (exact Poisson, one-sided upper bound, the
    too-little-exposure rule), from one run's or several seeds' pooled counts."""
    exposure = tally.thousand_tag_days
    per_rule: dict[str, dict[str, object]] = {}
    for rule, rt in sorted(tally.rules.items()):
        entry: dict[str, object] = {
            "events": rt.events,
            "true_positives": rt.true_positives,
            "precision": round(rt.true_positives / rt.events, 4) if rt.events else None,
            "precision_ci95": proportion_estimate(rt.true_positives, rt.events)["ci95"],
            "false_alarms": rt.false_alarms,
            "false_alarm_rate": rate_reading(rt.false_alarms, exposure).as_dict(),
        }
        if rt.incidents is not None:
            entry |= {
                "incidents": rt.incidents,
                "detected": rt.detected,
                "recall": round(rt.detected / rt.incidents, 4) if rt.incidents else None,
                "recall_ci95": proportion_estimate(rt.detected, rt.incidents)["ci95"],
                "delay_s": _delay_with_interval(rt.delays_s),
            }
            if any(d < 0 for d in rt.delays_s):
                entry["negative_delays"] = sum(d < 0 for d in rt.delays_s)
                entry["negative_delay_note"] = NEGATIVE_DELAY_NOTE
            if rt.delays_intervals:
                entry["delay_intervals"] = delay_stats(rt.delays_intervals)
                entry["delay_intervals_by_incident"] = {
                    case: delay_stats(v) for case, v in sorted(rt.delays_by_case.items())
                }
        per_rule[rule] = entry
    return {
        "per_rule": per_rule,
        "runs": tally.runs,
        "alarms": tally.alarms,
        "reviews": tally.reviews,
        "false_alarms": tally.false_alarms,
        "false_reviews": tally.false_reviews,
        "thousand_tag_days": round(exposure, 6),
        "false_alarms_per_day_per_1000_tags": round(tally.false_alarms / exposure, 4)
        if exposure > 0
        else None,
        "false_reviews_per_day_per_1000_tags": round(tally.false_reviews / exposure, 4)
        if exposure > 0
        else None,
        "false_alarm_rate": rate_reading(tally.false_alarms, exposure).as_dict(),
        "false_review_rate": rate_reading(tally.false_reviews, exposure).as_dict(),
        "incidents": dict(tally.incidents),
    }


def count_accuracy(
    counted: Sequence[tuple[float, int, int]], truth: Mapping[tuple[float, int], int]
) -> float | None:
    """1 - sum |seen - true| / sum true over (time, zone) cycle counts; None without truth."""
    total = sum(truth.values())
    if total == 0:
        return None
    err = sum(abs(seen - truth.get((t, z), 0)) for t, z, seen in counted)
    return round(max(0.0, 1.0 - err / total), 4)


# -- rates with their uncertainty (design.md, "Interface conventions") --------------------
# The one implementation: scoring reports, the ROI, the planner and the benchmarks use these.


def poisson_interval(count: int, exposure: float, confidence: float = LEVEL) -> tuple[float, float]:
    """Exact two-sided interval of a Poisson rate, count events over ``exposure``
    (Garwood 1936: chi2(a/2; 2n)/2 .. chi2(1-a/2; 2n+2)/2 per exposure; the lower bound is 0
    when no event was seen)."""
    if count < 0:
        raise ValueError(f"events must be >= 0, got {count}")
    if exposure <= 0:
        return 0.0, math.inf
    from scipy.stats import chi2

    a = 1.0 - confidence
    low = 0.0 if count == 0 else float(chi2.ppf(a / 2, 2 * count)) / 2 / exposure
    high = float(chi2.ppf(1 - a / 2, 2 * count + 2)) / 2 / exposure
    return low, high


def poisson_upper(count: int, exposure: float, confidence: float = LEVEL) -> float:
    """One-sided upper bound of a Poisson rate: chi2(confidence; 2n+2)/2 per exposure (3.00
    for no event, 4.74 for one, at 95 %): the largest rate that still gives n or fewer
    events with probability 1 - confidence."""
    if count < 0:
        raise ValueError(f"events must be >= 0, got {count}")
    if exposure <= 0:
        return math.inf
    from scipy.stats import chi2

    return float(chi2.ppf(confidence, 2 * count + 2)) / 2 / exposure


@dataclass(frozen=True)
class RateReading:
    """A measured rate, its 95 % interval, and whether the exposure behind it was enough.

    The rule (design.md): a rate whose one-sided 95 % upper bound is more than twice the
    larger of its point value and the design rate is shown as "too little exposure (upper
    bound X)", never as a bare figure, and must not drive a money figure on its own.
    (With no event, the point is 0, so the exposure suffices once the upper bound is at
    most twice the design rate: 0 in 3,000 tag-days against 1 per day per 1,000 tags.)
    """

    count: int
    exposure: float
    rate: float
    low: float
    high: float
    upper: float  # one-sided 95 %
    design: float

    @property
    def too_little_exposure(self) -> bool:
        return self.upper > 2.0 * max(self.rate, self.design)

    def text(self, digits: int = 2) -> str:
        if self.too_little_exposure:
            return f"too little exposure (upper bound {self.upper:,.{digits}f})"
        return f"{self.rate:,.{digits}f} ({self.low:,.{digits}f}–{self.high:,.{digits}f})"

    @property
    def shown(self) -> str:
        """How reports print it: 3 significant figures, the unit, the one-sided bound."""
        if self.exposure <= 0:
            return "no exposure"
        if self.too_little_exposure:
            return f"too little exposure (upper bound {_fmt(self.upper)})"
        return f"{_fmt(self.rate)} per day per 1,000 tags (95 % upper bound {_fmt(self.upper)})"

    def priced(self) -> tuple[float, float, float]:
        """(low, point, high) for a money figure: the point and its 95 % interval when the
        exposure suffices. With too little exposure the design rate is the point, since such a
        rate must not drive money alone (2 alarms in 600 s of 200 tags is 1,440 per day per
        1,000 tags), and the interval is widened to hold it, so low <= point <= high.
        The one place this substitution is made: ROI, sweeps and the planner call it."""
        if not self.too_little_exposure:
            return self.low, self.rate, self.high
        return min(self.low, self.design), self.design, max(self.high, self.design)

    def as_dict(self) -> dict[str, object]:
        """JSON-ready (None where there was no exposure)."""

        def num(v: float) -> float | None:
            return round(v, 4) if math.isfinite(v) else None

        return {
            "events": self.count,
            "exposure": round(self.exposure, 6),
            "point": num(self.rate),
            "ci95": [num(self.low), num(self.high)],
            "upper95": num(self.upper),
            "design_rate": self.design,
            "too_little_exposure": self.too_little_exposure,
            "shown": self.shown,
        }


def rate_reading(
    count: int, exposure: float, design: float = TARGET_FALSE_ALARMS_PER_DAY_PER_1000_TAGS
) -> RateReading:
    """``count`` events over ``exposure`` (e.g. thousand-tag-days) against a design rate."""
    low, high = poisson_interval(count, exposure)
    rate = count / exposure if exposure > 0 else math.inf
    return RateReading(count, exposure, rate, low, high, poisson_upper(count, exposure), design)
