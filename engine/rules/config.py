"""Declarative rule sets: TOML (a scenario's ``[rules]`` table or a rules file of its own),
validated into typed, frozen objects.

A rule set carries a ``version`` string that every event repeats, so an alarm can
always be traced to the exact parameters that raised it. A bad file never gives a
traceback: :func:`load_rules` raises :class:`RulesError` naming the file and the field.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from siteplan.config_file import ConfigFileError, parse_toml, read_text, validation_problems

RULES_SCHEMA_VERSION = 1
_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


class RulesError(ConfigFileError):
    """A rule set that cannot be used, with a message naming file and field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ZoneTransitionRule(_Strict):
    """zone_enter / zone_exit: a zone change is accepted after ``confirm_fixes`` fixes in a row."""

    enabled: bool = True
    confirm_fixes: int = Field(
        default=5, ge=1, le=1000, description="consecutive fixes in the new zone"
    )


class DwellRule(_Strict):
    """dwell: a tag stayed in a zone longer than its limit (zone name or role -> seconds)."""

    enabled: bool = True
    limits_s: dict[str, float] = Field(default_factory=lambda: {"exit": 120.0})

    @field_validator("limits_s")
    @classmethod
    def _positive(cls, v: dict[str, float]) -> dict[str, float]:
        for zone, limit in v.items():
            if not (limit > 0 and math.isfinite(limit)):
                raise ValueError(
                    f"limit for {zone!r} must be a positive number of seconds, got {limit}"
                )
        return v


class ExitRule(_Strict):
    """exit_without_checkout: confidence = P(zone) P(vanished) P(motion) x battery x checkout."""

    enabled: bool = True
    exit_zones: list[str] = Field(
        default_factory=lambda: ["exit"],
        min_length=1,
        description="zone names or roles a tag leaves the site through",
    )
    candidate_probability: float = Field(
        default=0.3, gt=0, le=1, description="P(zone) that makes a vanishing tag an exit case"
    )
    zone_memory_s: float = Field(
        default=5.0, gt=0, description="time constant of the decaying max of P(zone)"
    )
    motion_window_s: float = Field(
        default=30.0, gt=0, description="moving this recently counts as carried"
    )
    carry_speed_mps: float = Field(
        default=1.5,
        ge=0,
        description="a moving tag may reach an exit zone at this speed before its next "
        "advertisement (0: fixes count only inside the zone)",
    )
    still_factor: float = Field(
        default=0.3, ge=0, le=1, description="P(motion) factor for a tag not seen moving"
    )
    low_battery_pct: float = Field(
        default=10.0, ge=0, le=100, description="at or below: silence may be a dying cell"
    )
    low_battery_factor: float = Field(default=0.3, ge=0, le=1)
    checkout_before_s: float = Field(
        default=600.0, ge=0, description="a checkout this long before the exit matches"
    )
    checkout_after_s: float = Field(
        default=10.0, ge=0, description="a checkout this long after the exit matches"
    )
    near_miss_factor: float = Field(
        default=0.3,
        ge=0,
        le=1,
        description="factor when a checkout lies within twice the window but outside it",
    )
    exit_gateway_radius_m: float = Field(
        default=8.0, gt=0, description="gateways this close to an exit zone cover it"
    )
    alarm_confidence: float = Field(default=0.5, gt=0, le=1)
    review_confidence: float = Field(default=0.15, ge=0, le=1)
    max_wait_s: float = Field(
        default=120.0, gt=0, description="escalate if the checkout feed is still behind after this"
    )

    @model_validator(mode="after")
    def _order(self) -> ExitRule:
        if self.review_confidence > self.alarm_confidence:
            raise ValueError("review_confidence must not exceed alarm_confidence")
        return self


class MissingRule(_Strict):
    """missing_tag and cycle_count: silence longer than k advertising intervals (k adaptive)."""

    enabled: bool = True
    false_alarms_per_day_per_1000_tags: float = Field(
        default=0.25, gt=0, lt=1e6, description="design false-alarm rate; sets alpha per advert"
    )
    jitter_s: float = Field(
        default=0.010, ge=0, le=1, description="advDelay maximum added per interval"
    )
    latency_s: float = Field(
        default=0.005, ge=0, le=10, description="advertisement to sighting time-stamp slack"
    )
    min_missed: int = Field(default=2, ge=1, le=100)
    max_missed: int = Field(default=16, ge=1, le=1000)
    per_gateway: bool = Field(
        default=True, description="estimate q from per-gateway reception of tags at rest"
    )
    loss_floor: float = Field(
        default=5e-5, gt=0, lt=1, description="q of a tag at rest never below this"
    )
    min_adverts: int = Field(
        default=20, ge=1, description="frames since the last motion before per-gateway q is used"
    )
    prior_adverts: float = Field(
        default=1.0, gt=0, description="Jeffreys-like prior weight of the miss-rate estimate"
    )
    burst_prior_misses: float = Field(
        default=20.0,
        gt=0,
        description="weight (in misses) of the site's burst continuation in each tag's own",
    )
    dying_battery_pct: float = Field(
        default=5.0,
        ge=0,
        le=100,
        description="a tag whose last reading is at or below this is expected to fall silent: "
        "k = min_missed",
    )
    expected_interval_s: dict[str, Annotated[float, Field(ge=0.02, le=3600)]] = Field(
        default_factory=dict, description="tag class -> advertising interval; else the registry's"
    )
    false_alarms_by_class: dict[str, Annotated[float, Field(gt=0, lt=1e6)]] = Field(
        default_factory=dict,
        description="tag class -> design false-alarm rate for that class (per day per 1,000 of "
        "its tags): a class worth more can buy faster detection with more false alarms",
    )
    cycle_count_every_s: float = Field(default=300.0, gt=0)

    @model_validator(mode="after")
    def _order(self) -> MissingRule:
        if self.min_missed > self.max_missed:
            raise ValueError("min_missed must not exceed max_missed")
        return self


class BatteryRule(_Strict):
    """battery_low per tag and battery_forecast per cohort (tag class)."""

    enabled: bool = True
    low_pct: float = Field(default=15.0, ge=0, le=100)
    rearm_pct: float = Field(
        default=25.0, ge=0, le=100, description="above this again (new cell): alert again later"
    )
    nominal_drain_pct_per_day: dict[str, float] = Field(
        default_factory=dict, description="tag class -> drain used until a fit is better"
    )
    default_drain_pct_per_day: float = Field(default=0.1, gt=0)
    min_fit_span_s: float = Field(
        default=3600.0, gt=0, description="a per-tag slope needs this much history"
    )
    cohort_fraction: float = Field(
        default=0.5, gt=0, le=1, description="a cohort runs out when this share is empty"
    )
    forecast_every_s: float = Field(default=3600.0, gt=0)

    @model_validator(mode="after")
    def _order(self) -> BatteryRule:
        if self.rearm_pct < self.low_pct:
            raise ValueError("rearm_pct must be at least low_pct")
        return self


class GatewayRule(_Strict):
    """gateway_silent / gateway_degraded / gateway_recovered from each gateway's sighting rate."""

    enabled: bool = True
    silent_s: float = Field(default=10.0, gt=0)
    bucket_s: float = Field(default=10.0, gt=0)
    degraded_fraction: float = Field(
        default=0.25, gt=0, lt=1, description="rate below this share of the baseline"
    )
    degraded_buckets: int = Field(default=3, ge=1)
    baseline_halflife_s: float = Field(default=300.0, gt=0)
    warmup_s: float = Field(default=60.0, ge=0)
    min_baseline_per_s: float = Field(
        default=1.0, ge=0, description="quieter gateways are not judged"
    )


class MisplacedRule(_Strict):
    """misplaced: a tag carried into a zone its class does not belong in, and left there.

    P(forbidden zone | fix) integrates the fix's uncertainty (r90 -> Gaussian, renormalized
    to the site outline). Entry evidence: the largest P of the tag's last moving fixes
    (decaying with ``entry_time_constant_s``). At rest, P is averaged over looks of
    ``look_s``; the alarm needs ``looks`` in a row at or above ``threshold`` after entry
    evidence of at least ``entry_threshold`` (or, with ``opening_tier``, opening evidence of at
    least ``opening_threshold``), else at or above ``alone_threshold``; with ``opening_tier``,
    a tag carried through a doorway and resting at it also fires after ``opening_looks`` at
    or above ``opening_look_threshold``. The carry's evidence arms these tiers for
    ``entry_rest_s`` of rest; for a class whose forbidden zones are all walled,
    ``walled_seen_going_in`` names the evidence that counts (docs/rules.md, misplaced)."""

    enabled: bool = True
    allowed_roles: dict[str, list[str]] = Field(
        default_factory=dict, description="tag class -> roles"
    )
    default_allowed_roles: list[str] = Field(
        default_factory=lambda: ["storage", "receiving", "packing", "shipping", "checkout", "exit"]
    )
    look_s: float = Field(
        default=10.0, gt=0, le=3600,
        description="a still tag's P(forbidden zone) is averaged over looks this long",
    )
    looks: int = Field(
        default=6, ge=1, le=1000,
        description="looks in a row that must agree (a tracker settling after a move is not "
        "a position)",
    )
    threshold: float = Field(
        default=0.55, gt=0, lt=1,
        description="a look at or above this counts, for a tag seen going in",
    )
    threshold_by_class: dict[str, Annotated[float, Field(gt=0, lt=1)]] = Field(
        default_factory=dict,
        description="tag class -> its own threshold: higher for fewer false alarms, lower "
        "for more recall (docs/rules.md has the measured trade-off)",
    )
    entry_threshold: float = Field(
        default=0.3, ge=0, le=1,
        description="entry evidence (largest P(forbidden) of the last moving fixes) that makes "
        "a tag one seen going in",
    )
    entry_time_constant_s: float = Field(
        default=10.0, gt=0, description="how fast entry evidence fades while the tag moves on"
    )
    entry_rest_s: float = Field(
        default=300.0, gt=0,
        description="entry and opening evidence arm the lower tiers for this long after the "
        "tag comes to rest (longer than a misplaced tag's alarm takes; inf: for ever); after "
        "it, the tag is judged as one never seen going in until it moves again",
    )
    walled_seen_going_in: Literal["either", "both", "entry", "opening"] = Field(
        default="entry",
        description="for a class whose forbidden zones are all walled (entered through a "
        "doorway that borders an aisle), the evidence of the carry that makes a tag one seen "
        "going in: entry (moving fixes inside), opening (moving fixes at a doorway), both, or "
        "either (docs/rules.md has the measured price of each)",
    )
    alone_threshold: float = Field(
        default=0.9, gt=0, le=1,
        description="a look at or above this counts for a tag not seen going in (no carry "
        "evidence that counts, see walled_seen_going_in, or its carry ended more than "
        "entry_rest_s ago)",
    )
    rearm: float = Field(
        default=0.2, ge=0, lt=1, description="a look below this re-arms the alarm (as does motion)"
    )
    opening_tier: bool = Field(
        default=True,
        description="a tag seen carried through a walled forbidden zone's doorway and resting "
        "at it fires at opening_look_threshold; the doorway also counts as seen going in "
        "where walled_seen_going_in says so (docs/rules.md has the measured price of each)",
    )
    opening_reach_m: float = Field(
        default=3.0, gt=0, le=50,
        description="a walled forbidden zone's openings (its boundary that is neither an "
        "interior wall nor the outline): a moving fix's probability of lying within this "
        "distance of one is evidence the tag was carried through it",
    )
    opening_time_constant_s: float = Field(
        default=30.0, gt=0, description="how fast opening evidence fades while the tag moves on"
    )
    opening_threshold: float = Field(
        default=0.4, ge=0, le=1,
        description="opening evidence that makes a tag one seen carried through a doorway",
    )
    opening_rest_threshold: float = Field(
        default=0.4, ge=0, le=1,
        description="a look's mean P(within opening_reach_m of a doorway) at or above this: "
        "the tag rests at the doorway it was carried through, not beside a wall away from it",
    )
    opening_look_threshold: float = Field(
        default=0.25, gt=0, lt=1,
        description="a look at or above this (and at the doorway) counts for a tag seen "
        "carried through a doorway",
    )
    opening_looks: int = Field(
        default=6, ge=1, le=1000,
        description="looks in a row at the doorway, at or above opening_look_threshold, that "
        "fire",
    )

    rest_check: bool = Field(
        default=True,
        description="a resting tag fires only if its rest's mean RSSI per gateway (every advert "
        "heard since it stopped, censoring the unheard) puts it in a forbidden zone with "
        "probability at least rest_threshold on the localizer's radio map; a tag by a wall is "
        "not a tag in the room (engine/rules/rest.py; needs the map, which a scenario's runs "
        "and servers build)",
    )
    rest_threshold: float = Field(
        default=0.8, gt=0, lt=1,
        description="rest_check: P(forbidden zone) from the rest's link means at or above this "
        "fires (seen so far: quiet alarms by the office wall 0.00-0.54, tags misplaced in it "
        "0.97-1.0; docs/rules.md)",
    )
    rest_min_adverts: int = Field(
        default=20, ge=1, le=100_000,
        description="rest_check: adverts heard since the tag stopped before the check decides "
        "(fewer: the look alone decides, as without the check)",
    )
    rest_map_sigma_db: float = Field(
        default=2.0, gt=0, le=20,
        description="rest_check: how far the radio map's mean may be from the site's on one "
        "link (the walk map's error is about 1-1.5 dB by the office; docs/rules.md)",
    )

    @model_validator(mode="after")
    def _order(self) -> MisplacedRule:
        lowest = min([self.threshold, *self.threshold_by_class.values()])
        if self.rearm >= lowest:
            raise ValueError("rearm must be below threshold (and every class's threshold)")
        if self.alone_threshold < self.threshold:
            raise ValueError("alone_threshold must be at least threshold")
        if self.rearm >= self.opening_look_threshold:
            raise ValueError("rearm must be below opening_look_threshold")
        # The quickest alarm of a lower tier ends its last look about max(looks,
        # opening_looks) x look_s after the tag came to rest; one look more of margin.
        quickest = (max(self.looks, self.opening_looks) + 1) * self.look_s
        if self.entry_rest_s <= quickest:
            raise ValueError(
                f"entry_rest_s ({self.entry_rest_s:g} s) must exceed (max(looks, opening_looks) "
                f"+ 1) x look_s ({quickest:g} s): shorter, the entry and doorway tiers could "
                "never fire"
            )
        return self


class RegistryRule(_Strict):
    """unknown_tag / revoked_tag: a device that is not in the registry, or was revoked, is seen."""

    enabled: bool = True
    revoked: list[str] = []
    alert_unknown: bool = True
    cooldown_s: float = Field(default=3600.0, ge=0)


class AfterHoursRule(_Strict):
    """after_hours_movement: a tag moves outside working hours."""

    enabled: bool = True
    working_hours: list[tuple[str, str]] = Field(default_factory=lambda: [("00:00", "23:59")])
    time_offset_s: float = Field(
        default=0.0, description="added to event time before taking the time of day"
    )
    cooldown_s: float = Field(default=600.0, ge=0)

    @field_validator("working_hours")
    @classmethod
    def _hours(cls, v: list[tuple[str, str]]) -> list[tuple[str, str]]:
        for start, end in v:
            for s in (start, end):
                if not _HHMM.match(s):
                    raise ValueError(f"{s!r} is not a time of day HH:MM")
        return v

    def intervals_s(self) -> list[tuple[float, float]]:
        def sec(s: str) -> float:
            h, m = s.split(":")
            return int(h) * 3600.0 + int(m) * 60.0

        return [(sec(a), sec(b)) for a, b in self.working_hours]


class RuleSet(_Strict):
    """Every rule's parameters, and the version string events carry."""

    version: str = Field(default="default-1", min_length=1, max_length=64)
    schema_version: Literal[1] = 1
    zone_transition: ZoneTransitionRule = Field(
        default_factory=lambda: ZoneTransitionRule.model_validate({})
    )
    dwell: DwellRule = Field(default_factory=lambda: DwellRule.model_validate({}))
    exit: ExitRule = Field(default_factory=lambda: ExitRule.model_validate({}))
    missing: MissingRule = Field(default_factory=lambda: MissingRule.model_validate({}))
    battery: BatteryRule = Field(default_factory=lambda: BatteryRule.model_validate({}))
    gateway: GatewayRule = Field(default_factory=lambda: GatewayRule.model_validate({}))
    misplaced: MisplacedRule = Field(default_factory=lambda: MisplacedRule.model_validate({}))
    registry: RegistryRule = Field(default_factory=lambda: RegistryRule.model_validate({}))
    after_hours: AfterHoursRule = Field(default_factory=lambda: AfterHoursRule.model_validate({}))


def parse_rules(text: str, source: Path | str = "<string>") -> RuleSet:
    """Parse a rules TOML document; a top-level ``[rules]`` table is accepted too."""
    data = parse_toml(text, source, RulesError)
    prefix = ""
    if set(data) == {"rules"} and isinstance(data["rules"], dict):
        data, prefix = data["rules"], "rules"
    try:
        return RuleSet.model_validate(data)
    except ValidationError as exc:
        raise RulesError(source, validation_problems(exc, prefix)) from None


def load_rules(path: Path | str) -> RuleSet:
    """Read and validate a rules file."""
    return parse_rules(read_text(path, RulesError), path)
