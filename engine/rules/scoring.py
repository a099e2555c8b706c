"""Scoring rules against ground-truth incidents: precision, recall, detection delay, and
false alarms per day per 1,000 tags.

An alarm is a *true positive* when an incident that explains it (same tag or gateway,
a kind the rule can see) was under way: its time lies in [incident.t_begin,
incident.t + max_delay_s] (gateways: up to the end of the outage plus max_delay_s).
Recall counts only the incidents a rule is *meant* to catch; precision accepts any
incident that explains the alarm (a stolen tag is also, truly, missing).
Detection delay is the first matching alarm's time minus the incident's time; it can be
negative for warnings that precede the failure (a battery reading low before the cell dies).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from engine.rules.events import Event

SECONDS_PER_DAY = 86_400.0
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


def score_events(
    events: Sequence[Event],
    incidents: Sequence[IncidentRecord],
    n_tags: int,
    duration_s: float,
    *,
    max_delay_s: float = 600.0,
    interval_s: Mapping[str, float] | None = None,
) -> dict[str, object]:
    """Per-rule precision, recall and delay; false alarms and reviews per day per 1,000 tags."""
    exposure = n_tags / 1000.0 * duration_s / SECONDS_PER_DAY  # thousand-tag-days
    alarms = [e for e in events if e.severity in ("alarm", "review")]
    per_rule: dict[str, dict[str, object]] = {}
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
        tp = sum(explained[i] for i in idx)
        entry: dict[str, object] = {
            "events": len(idx),
            "true_positives": tp,
            "precision": round(tp / len(idx), 4) if idx else None,
        }
        target = TARGETS.get(rule)
        if target is not None:
            recs = [r for r in incidents if target(r)]
            delays, delays_iv = [], []
            by_case: dict[str, list[float]] = {}
            detected = 0
            for rec in recs:
                hits = [alarms[i].t for i in idx if _matches(alarms[i], rec, max_delay_s)]
                if hits:
                    detected += 1
                    delay = min(hits) - rec.t
                    delays.append(delay)
                    iv = interval_s.get(rec.tag or "") if interval_s else None
                    if rule == "missing_tag" and iv:
                        delays_iv.append(delay / iv)
                        by_case.setdefault(_case(rec), []).append(delay / iv)
            entry |= {
                "incidents": len(recs),
                "detected": detected,
                "recall": round(detected / len(recs), 4) if recs else None,
                "delay_s": delay_stats(delays),
            }
            if delays_iv:
                entry["delay_intervals"] = delay_stats(delays_iv)
                entry["delay_intervals_by_incident"] = {
                    case: delay_stats(v) for case, v in sorted(by_case.items())
                }
        per_rule[rule] = entry
    false_alarms = sum(
        1 for i, e in enumerate(alarms) if e.severity == "alarm" and not explained[i]
    )
    false_reviews = sum(
        1 for i, e in enumerate(alarms) if e.severity == "review" and not explained[i]
    )
    return {
        "per_rule": per_rule,
        "alarms": sum(1 for e in alarms if e.severity == "alarm"),
        "reviews": sum(1 for e in alarms if e.severity == "review"),
        "false_alarms": false_alarms,
        "false_reviews": false_reviews,
        "thousand_tag_days": round(exposure, 6),
        "false_alarms_per_day_per_1000_tags": round(false_alarms / exposure, 4)
        if exposure > 0
        else None,
        "false_reviews_per_day_per_1000_tags": round(false_reviews / exposure, 4)
        if exposure > 0
        else None,
        "incidents": {k: sum(1 for r in incidents if r.kind == k) for k in INCIDENT_KINDS},
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


def poisson_interval(count: int, exposure: float, confidence: float = 0.95) -> tuple[float, float]:
    """Exact two-sided interval of a Poisson rate, count events over ``exposure``
    (Garwood 1936: chi-square quantiles; the lower bound is 0 when no event was seen)."""
    from scipy.stats import chi2

    if exposure <= 0:
        return 0.0, math.inf
    a = 1.0 - confidence
    low = 0.0 if count == 0 else float(chi2.ppf(a / 2, 2 * count)) / 2 / exposure
    high = float(chi2.ppf(1 - a / 2, 2 * count + 2)) / 2 / exposure
    return low, high


def poisson_upper(count: int, exposure: float, confidence: float = 0.95) -> float:
    """One-sided upper bound of a Poisson rate (3.0 / exposure for no event at 95 %)."""
    from scipy.stats import chi2

    if exposure <= 0:
        return math.inf
    return float(chi2.ppf(confidence, 2 * count + 2)) / 2 / exposure


@dataclass(frozen=True)
class RateReading:
    """A measured rate, its 95 % interval, and whether the exposure behind it was enough.

    The rule (design.md): a rate whose one-sided 95 % upper bound is more than twice the
    larger of its point value and the design rate is shown as "too little exposure (upper
    bound X)", never as a bare figure, and must not drive a money figure on its own.
    (With no event, the point is 0, so the exposure suffices once the upper bound is at
    most twice the design rate.)
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


def rate_reading(count: int, exposure: float, design: float) -> RateReading:
    """``count`` events over ``exposure`` (e.g. thousand-tag-days) against a design rate."""
    low, high = poisson_interval(count, exposure)
    rate = count / exposure if exposure > 0 else math.inf
    return RateReading(count, exposure, rate, low, high, poisson_upper(count, exposure), design)
