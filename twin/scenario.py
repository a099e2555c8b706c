"""Scenario files: TOML read with the standard library, validated into typed objects.

A bad file never produces a traceback: :func:`load_scenario` raises
:class:`ScenarioError` naming the file, the field path and what was wrong.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import shapely
from pydantic import Field, SerializerFunctionWrapHandler, field_validator, model_serializer, model_validator

from engine.roi import RoiInputs
from engine.rules.config import RuleSet
from siteplan.config_file import ConfigFileError, parse_toml, read_text, validate_model
from siteplan.radio import Radio
from siteplan.schema import Cells, Gateways, Site, Strict, Zone, ZoneRole
from siteplan.sitefile import SiteFileError, check_site_references, site_sections


class ScenarioError(ConfigFileError):
    """A scenario file that cannot be used, with a message naming file and field."""


class Placement(Strict):
    zones: list[str] = Field(default_factory=list, description="zone names; empty: anywhere free")
    roles: list[ZoneRole] = Field(default_factory=list, description="or every zone with these roles")


class TagGroup(Strict):
    name: str = Field(min_length=1, description="group name; tag ids are <name>-<5 digits>")
    count: int = Field(ge=0, le=1_000_000, description="number of tags in the group")
    model: str = Field("xiaomi-tag", description="tag model label (reported, used by rules for expected intervals)")
    placement: Placement = Field(Placement(), description="where the tags start, at rest")
    adv_interval_ms: float = Field(1000.0, ge=20, le=10240, description="BLE advInterval, 20 ms - 10.24 s")
    tx_power_1m_dbm: float = Field(-59.0, ge=-100, le=0, description="RSSI at 1 m")
    adv_interval_moving_ms: float | None = Field(
        None, ge=20, le=10240, description="advInterval while carried (motion-triggered tags)"
    )
    payload_bytes: int = Field(
        37, ge=6, le=37, description="legacy PDU payload: AdvA 6 + AdvData 0-31"
    )
    battery_pct: tuple[float, float] = Field((80.0, 100.0), description="uniform initial range")
    battery_drain_pct_per_day: float = Field(0.1, ge=0, description="linear battery drain")
    frame: Literal["twin", "mibeacon", "mibeacon-encrypted", "ibeacon", "eddystone", "findhub"] = Field(
        "twin",
        description="what the tags advertise when the twin is published as gateways (twin-publish): "
        "'twin' sends sightings as they are; the other kinds build that advertisement and run it "
        "through the gateway decoders with keys derived from the seed ('findhub': the identifier "
        "rotates every 1024 s and is resolved back to the tag)",
    )

    @field_validator("battery_pct")
    @classmethod
    def _range(cls, v: tuple[float, float]) -> tuple[float, float]:
        lo, hi = v
        if not 0 <= lo <= hi <= 100:
            raise ValueError("battery_pct must be [low, high] with 0 <= low <= high <= 100")
        return v


class MoverGroup(Strict):
    name: str = Field(min_length=1, description="group name")
    kind: Literal["picker", "forklift"] = Field("picker", description="label; speed and load come from the fields")
    count: int = Field(1, ge=0, le=10_000, description="number of movers in the group")
    speed_mps: float = Field(1.2, gt=0, le=10, description="walking or driving speed")
    route: list[str] = Field(min_length=2, description="zone names or roles visited in turn")
    items_per_trip: tuple[int, int] = Field((1, 3), description="[low, high] items carried per leg, uniform")
    dwell_s: float = Field(20.0, ge=0, description="time spent at each stop (half before, half after picking)")
    start_s: float = Field(0.0, ge=0, description="when the movers start work")

    @field_validator("items_per_trip")
    @classmethod
    def _items(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not 0 <= v[0] <= v[1]:
            raise ValueError("items_per_trip must be [low, high] with 0 <= low <= high")
        return v


class EngineSettings(Strict):
    localizer: Literal["wls", "centroid", "strongest", "knn", "radio-map"] = Field(
        default="wls",
        description="single-shot estimator (docs/localization.md): wls is maximum likelihood")
    tracker: Literal["none", "kalman", "hmm", "particle"] = Field(
        default="none",
        description="fuse fixes over time; hmm and particle respect walls and racks")
    radio_map: Literal["model", "survey"] = Field(
        default="model",
        description="fingerprints for knn/radio-map/hmm/particle: predicted from the path-loss "
        "model and site plan, or a perfect calibration walk of the twin's radio (shadowing "
        "included)")
    shadowing_map: Literal["none", "walk", "survey"] = Field(
        default="none",
        description="per-(cell, gateway) shadowing correction added to the site plan's obstacle losses, which "
        "wls, knn and the model radio map predict with (docs/calibration.md): none; walk, a simulated "
        "calibration walk of the twin (a reference tag stopped a few seconds every ~1 m of walkable floor) "
        "kriged over the grid; survey, the twin's exact mean RSSI (an oracle: what a perfect walk would give)")
    walk_spacing_m: float = Field(
        default=1.0, gt=0, le=10, description="shadowing_map = walk: distance between the walk's stops (rounded "
        "to whole cells of [radio] grid_m)")
    walk_stop_s: float = Field(
        default=3.0, gt=0, le=60, description="shadowing_map = walk: seconds at each stop (a reading every 0.1 s)")
    particles: int = Field(default=128, ge=8, le=10_000, description="particles per tag (particle tracker)")
    tracker_speed_mps: float = Field(
        default=1.5, gt=0, le=20, description="typical speed of a carried tag")
    smoother_lag_s: float = Field(
        default=0.0, ge=0, le=60, description="kalman, hmm, particle: fixed-lag smoother, each fix waits this "
        "long for the readings after it (latency = window + lag); 0: the filter")
    zone_hysteresis: bool = Field(
        default=False, description="a tag changes zone only on repeated evidence")
    window_s: float = Field(4.0, gt=0, description="length of the sliding window one fix summarises")
    step_s: float = Field(1.0, gt=0, description="time between fixes")
    allowed_lateness_s: float = Field(2.0, ge=0, description="how long a window waits for late sightings")
    path_loss_exponent: float | None = Field(None, description="defaults to the radio model's")
    min_gateways: int = Field(3, ge=1, description="fewer gateways heard: weighted centroid with a wide radius")
    use_site_plan: bool = Field(True, description="model wall and rack losses from the site plan")
    wls_cell_edges: bool = Field(
        default=False,
        description="wls with the site plan: a Newton step into a worse obstacle-map cell tries the point "
        "just across the cell edge, then the edge itself, and slides along it instead of creeping towards it "
        "(fewer iterations; changes positions; docs/scaling.md)")
    wls_gateway_starts_above: float = Field(
        default=0.0, ge=0,
        description="wls with the site plan: try the two strongest gateways as further starts only for rows "
        "whose start at the centroid ends with a mean squared residual above this many sigma^2 (0: always; "
        "3 halves the Newton work on the large scenario; changes positions; docs/scaling.md)")
    wls_warm_start: bool = Field(
        default=False,
        description="wls with the site plan: a tag's fix before each block of 16 windows replaces the strongest "
        "gateways' Newton starts for its rows in that block (fewer solves; changes positions; docs/scaling.md)")

    @model_serializer(mode="wrap")
    def _without_a_zero_lag(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """No lag is not written, nor the wls search settings or the shadowing map at their defaults: a scenario
        without them dumps (and hashes, report.json's scenario_sha256) exactly as before
        the settings existed."""
        data: dict[str, Any] = handler(self)
        if self.smoother_lag_s == 0:
            data.pop("smoother_lag_s", None)
        if not self.wls_cell_edges:
            data.pop("wls_cell_edges", None)
        if self.wls_gateway_starts_above == 0:
            data.pop("wls_gateway_starts_above", None)
        if self.shadowing_map == "none":
            data.pop("shadowing_map", None)
        for key, default in (("walk_spacing_m", 1.0), ("walk_stop_s", 3.0)):
            if data.get(key) == default:
                data.pop(key, None)
        if not self.wls_warm_start:
            data.pop("wls_warm_start", None)
        return data

    @model_validator(mode="after")
    def _smoother_has_a_tracker(self) -> EngineSettings:
        if self.smoother_lag_s > 0 and self.tracker not in ("kalman", "hmm", "particle"):
            raise ValueError(f"smoother_lag_s needs tracker kalman, hmm or particle, not {self.tracker!r}")
        return self


IncidentKind = Literal["theft", "misplacement", "battery_death", "gateway_outage", "tag_removed"]


class IncidentSpec(Strict):
    """Ground-truth incidents the twin injects (twin/incidents.py), ``count`` of one kind."""

    kind: IncidentKind
    count: int = Field(default=1, ge=0, le=100_000)
    window_s: tuple[float, float] | None = Field(
        default=None, description="start times uniform in [a, b]; default: [120, duration - 120] s")
    from_zones: list[str] = Field(
        default_factory=list,
        description="zone names or roles the tag comes from; default: storage, packing, shipping, "
                    "receiving")
    to_zone: str | None = Field(
        default=None, description="misplacement, tag_removed: where it is set down",
    )
    exit_zone: str = Field(
        default="exit", description="theft: zone name or role the tag leaves through",
    )
    speed_mps: float = Field(default=1.3, gt=0, le=10)
    lead_s: float = Field(
        default=120.0, ge=0, description="battery_death: readings fall to 0 meanwhile",
    )
    gateway: str | None = Field(
        default=None, description="gateway_outage: gateway id; default: random",
    )
    duration_s: float = Field(
        default=120.0, gt=0, description="gateway_outage: how long it stays down",
    )
    silent: bool = Field(
        default=False, description="tag_removed: the tag is destroyed after it is dumped",
    )

    @model_validator(mode="after")
    def _window(self) -> IncidentSpec:
        if self.window_s is not None and not 0 <= self.window_s[0] <= self.window_s[1]:
            raise ValueError("window_s must be [a, b] with 0 <= a <= b")
        if self.kind in ("misplacement", "tag_removed") and self.to_zone is None:
            raise ValueError(f"{self.kind} needs to_zone")
        return self


class CheckoutTraffic(Strict):
    """Legitimate exits: tags carried out through an exit after a checkout (POS) record."""

    count: int = Field(default=0, ge=0, le=100_000)
    window_s: tuple[float, float] | None = None
    from_zones: list[str] = Field(default_factory=list)
    exit_zone: str = "exit"
    speed_mps: float = Field(default=1.3, gt=0, le=10)
    lead_s: tuple[float, float] = Field(
        default=(20.0, 300.0), description="checkout this long before the exit (< 0: after it)",
    )
    feed_delay_s: tuple[float, float] = Field(
        default=(0.0, 5.0), description="POS record reaches the engine this late",
    )

    @model_validator(mode="after")
    def _ranges(self) -> CheckoutTraffic:
        for name in ("lead_s", "feed_delay_s"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"{name} must be [low, high] with low <= high")
        if self.feed_delay_s[0] < 0:
            raise ValueError("feed_delay_s cannot be negative")
        return self


class Bound(Strict):
    min: float | None = None
    max: float | None = None


class LoadTestSlos(Strict):
    """Service levels `tagtwin loadtest` holds the pipeline to; `--slo NAME=BOUND` overrides, None skips."""

    p99_advert_to_position_ms: float | None = Field(
        default=None, gt=0, description="p99 advert to the first position including it; default window + "
        "allowed lateness + 1 s")
    p99_close_to_position_ms: float | None = Field(
        default=250.0, gt=0, description="p99 window close (watermark past its end + lateness) to position published")
    completeness: float | None = Field(
        default=1.0, ge=0, le=1, description="share of generated sightings the worker processed")
    p99_alert_delivery_ms: float | None = Field(
        default=None, gt=0, description="p99 window close (watermark past the deciding window's end + "
        "lateness) to a rule event's first record received")


class LoadTestSettings(Strict):
    slo: LoadTestSlos = Field(default_factory=lambda: LoadTestSlos.model_validate({}), description="pass/fail bounds")


MAX_WALK_STOPS = 5_000  # the kriging solves a dense stops x stops system per gateway (200 MB at 5,000)


class Scenario(Strict):
    name: str = Field(min_length=1, description="scenario name, used in reports")
    description: str = Field("", description="free text")
    site_file: str | None = Field(
        None, description="site file (relative to the scenario) giving site, zones, gateways "
        "and radio; a section the scenario also gives replaces the file's")
    duration_s: float = Field(gt=0, le=7 * 24 * 3600, description="simulated time")
    seed: int = Field(ge=0, description="every random draw of the run derives from it")
    tick_s: float = Field(0.5, gt=0, le=10, description="radio batch length in simulated seconds")
    site: Site = Field(description="outline, walls, racks")
    zones: list[Zone] = Field(default_factory=list, description="named polygons with roles")
    gateways: Gateways = Field(description="the gateway layout")
    tags: list[TagGroup] = Field(min_length=1, description="the tag fleet, in groups")
    movers: list[MoverGroup] = Field(default_factory=list, description="pickers and forklifts carrying items")
    radio: Radio = Field(Radio(), description="propagation and air-interface models")
    engine: EngineSettings = Field(EngineSettings(), description="localizer, tracker, windows")
    incidents: list[IncidentSpec] = Field(default_factory=list, description="ground-truth incidents to inject")
    checkouts: CheckoutTraffic = Field(
        default_factory=lambda: CheckoutTraffic.model_validate({}), description="legitimate exits with a POS checkout"
    )
    rules: RuleSet = Field(default_factory=lambda: RuleSet.model_validate({}), description="rule set, docs/rules.md")
    roi: RoiInputs = Field(default_factory=lambda: RoiInputs.model_validate({}), description="ROI inputs (docs/roi.md)")
    expected: dict[str, Bound] = Field(default_factory=dict, description="metric name -> bounds")
    cells: Cells | None = Field(
        None, description="spatial partitions of a very large site on the backbone (docs/scaling.md); none: one")
    loadtest: LoadTestSettings = Field(
        default_factory=lambda: LoadTestSettings.model_validate({}), description="SLOs of `tagtwin loadtest`")

    @model_validator(mode="after")
    def _cross_references(self) -> Scenario:
        check_site_references(self.zones, self.gateways, self.radio, self.site.outline)
        names = [z.name for z in self.zones]
        roles = {z.role for z in self.zones}
        for i, group in enumerate(self.tags):
            for zone in group.placement.zones:
                if zone not in names:
                    raise ValueError(f"tags[{i}].placement.zones: no zone named {zone!r}")
        for i, mover in enumerate(self.movers):
            for stop in mover.route:
                if stop not in names and stop not in roles:
                    raise ValueError(f"movers[{i}].route: {stop!r} is neither a zone name nor a role in use")
        if not self.gateways.units and self.gateways.grid is None:
            raise ValueError("gateways: give a list, a grid, or both")
        ids = [g.id for g in self.gateways.units]
        for i, inc in enumerate(self.incidents):
            for stop in [*inc.from_zones, *([inc.to_zone] if inc.to_zone else []),
                         *([inc.exit_zone] if inc.kind == "theft" else [])]:
                if stop not in names and stop not in roles:
                    raise ValueError(f"incidents[{i}]: {stop!r} is not a zone name or role in use")
            if inc.gateway is not None and inc.gateway not in ids:
                raise ValueError(f"incidents[{i}].gateway: no gateway {inc.gateway!r} in the list")
        if self.checkouts.count:
            for stop in [*self.checkouts.from_zones, self.checkouts.exit_zone]:
                if stop not in names and stop not in roles:
                    raise ValueError(f"checkouts: {stop!r} is not a zone name or role in use")
        for zone in self.rules.exit.exit_zones:
            if self.incidents and zone not in names and zone not in roles:
                raise ValueError(f"rules.exit.exit_zones: {zone!r} is not a zone or role in use")
        if self.engine.shadowing_map == "walk":
            self._check_walk()
        return self

    def _check_walk(self) -> None:
        """A calibration walk the fit can take: one receiver's fading (the censored fit
        reads single fades on the reporting grid), and few enough stops for the kriging's
        dense (stops x stops) system per gateway."""
        if self.radio.report.receivers > 1:
            raise ValueError(
                f"engine.shadowing_map: the walk's fit reads one receiver's fading, but radio.report.receivers = "
                f"{self.radio.report.receivers} averages several (use 1, or shadowing_map = \"survey\")")
        spacing = max(1, round(self.engine.walk_spacing_m / self.radio.grid_m)) * self.radio.grid_m
        area = shapely.Polygon(self.site.outline).area  # as siteplan.schema checks the outline
        stops = area / spacing**2
        if stops > MAX_WALK_STOPS:
            raise ValueError(
                f"engine.walk_spacing_m: about {stops:,.0f} walk stops {spacing:g} m apart on this site, more than "
                f"the kriging holds ({MAX_WALK_STOPS:,}); give a walk_spacing_m of at least "
                f"{(area / MAX_WALK_STOPS) ** 0.5:.1f}")


def parse_scenario(text: str, source: Path | str = "<string>") -> Scenario:
    """Parse and validate scenario TOML text; errors name ``source`` and the field."""
    data = parse_toml(text, source, ScenarioError)
    if isinstance(data.get("site_file"), str):
        path = Path(source).parent / data["site_file"]
        try:
            sections = site_sections(path)
        except SiteFileError as exc:
            raise ScenarioError(source, [f"site_file: {p}" for p in str(exc).splitlines()]) from None
        sections.pop("plan", None)  # already turned into site and zones
        data = {**sections, **data}
    return validate_model(data, source, Scenario, ScenarioError)


def load_scenario(path: Path | str) -> Scenario:
    """Read and validate a scenario file."""
    return parse_scenario(read_text(path, ScenarioError), path)
