"""Scenario files: TOML read with the standard library, validated into typed objects.

A bad file never produces a traceback: :func:`load_scenario` raises
:class:`ScenarioError` naming the file, the field path and what was wrong.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

Point = tuple[float, float]
ZoneRole = Literal["storage", "packing", "checkout", "exit", "receiving", "shipping", "office", "other"]

# Practitioner per-material losses at 2.4 GHz (shared/references section 1, "about
# +-50 %"): drywall 3, glass 2, wood 4, brick 10, concrete 15, metal 25 dB.
DEFAULT_MATERIAL_LOSS_DB: dict[str, float] = {
    "drywall": 3.0,
    "glass": 2.0,
    "wood": 4.0,
    "brick": 10.0,
    "concrete": 15.0,
    "metal": 25.0,
}


class ScenarioError(Exception):
    """A scenario file that cannot be used, with a message naming file and field."""

    def __init__(self, path: Path | str, problems: list[str]) -> None:
        self.path = str(path)
        self.problems = problems
        super().__init__("\n".join(f"{self.path}: {p}" for p in problems))


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_polygon(points: list[Point], what: str) -> list[Point]:
    import shapely

    if len(points) < 3:
        raise ValueError(f"{what} needs at least 3 points, got {len(points)}")
    poly = shapely.Polygon(points)
    if not poly.is_valid or poly.area <= 0:
        raise ValueError(f"{what} is not a simple polygon with positive area ({shapely.is_valid_reason(poly)})")
    return points


class Wall(Strict):
    points: list[Point] = Field(min_length=2, description="polyline vertices in metres")
    material: str = Field("drywall", description="key into site.materials")


class Rack(Strict):
    polygon: list[Point] = Field(description="footprint, metres")
    attenuation_db: float = Field(15.0, ge=0, le=60, description="loss of a link crossing it")

    @field_validator("polygon")
    @classmethod
    def _valid(cls, v: list[Point]) -> list[Point]:
        return _check_polygon(v, "rack polygon")


class RackRows(Strict):
    """A block of parallel racks, the usual warehouse pattern, without listing each one."""

    origin: Point = Field(description="lower-left corner of the first rack")
    count: int = Field(ge=1, le=1000)
    length_m: float = Field(gt=0)
    depth_m: float = Field(gt=0)
    pitch_m: float = Field(gt=0, description="distance between the starts of neighbouring racks")
    orientation: Literal["horizontal", "vertical"] = "horizontal"
    attenuation_db: float = Field(15.0, ge=0, le=60)

    @model_validator(mode="after")
    def _pitch(self) -> RackRows:
        if self.pitch_m <= self.depth_m:
            raise ValueError("pitch_m must exceed depth_m, or the racks leave no aisle")
        return self

    def expand(self) -> list[Rack]:
        racks = []
        x0, y0 = self.origin
        for i in range(self.count):
            if self.orientation == "horizontal":
                y = y0 + i * self.pitch_m
                poly = [(x0, y), (x0 + self.length_m, y), (x0 + self.length_m, y + self.depth_m), (x0, y + self.depth_m)]
            else:
                x = x0 + i * self.pitch_m
                poly = [(x, y0), (x + self.depth_m, y0), (x + self.depth_m, y0 + self.length_m), (x, y0 + self.length_m)]
            racks.append(Rack(polygon=poly, attenuation_db=self.attenuation_db))
        return racks


class Site(Strict):
    outline: list[Point] = Field(description="outer walls, metres")
    tag_height_m: float = Field(1.0, ge=0, le=20)
    walls: list[Wall] = []
    racks: list[Rack] = []
    rack_rows: list[RackRows] = []
    materials: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_MATERIAL_LOSS_DB))

    @field_validator("outline")
    @classmethod
    def _valid(cls, v: list[Point]) -> list[Point]:
        return _check_polygon(v, "outline")

    @model_validator(mode="after")
    def _materials_known(self) -> Site:
        for i, wall in enumerate(self.walls):
            if wall.material not in self.materials:
                known = ", ".join(sorted(self.materials))
                raise ValueError(f"walls[{i}].material {wall.material!r} is not one of: {known}")
        return self

    def all_racks(self) -> list[Rack]:
        return [*self.racks, *(r for rows in self.rack_rows for r in rows.expand())]


class Zone(Strict):
    name: str = Field(min_length=1)
    role: ZoneRole = "other"
    polygon: list[Point]

    @field_validator("polygon")
    @classmethod
    def _valid(cls, v: list[Point]) -> list[Point]:
        return _check_polygon(v, "zone polygon")


class GatewayDefaults(Strict):
    z_m: float = Field(3.0, ge=0, le=30)
    scan_window_ms: float = Field(100.0, gt=0)
    scan_interval_ms: float = Field(100.0, gt=0)
    sensitivity_dbm: float = Field(-95.0, le=-40, ge=-130)

    @model_validator(mode="after")
    def _window(self) -> GatewayDefaults:
        if self.scan_window_ms > self.scan_interval_ms:
            raise ValueError("scan_window_ms cannot exceed scan_interval_ms")
        return self


class Gateway(Strict):
    id: str = Field(min_length=1)
    x: float
    y: float
    z: float | None = None
    scan_window_ms: float | None = Field(None, gt=0)
    scan_interval_ms: float | None = Field(None, gt=0)
    sensitivity_dbm: float | None = Field(None, le=-40, ge=-130)


class GatewayGrid(Strict):
    """A regular layout: one gateway every ``spacing_m`` inside the outline's bounds."""

    spacing_m: float = Field(gt=0)
    margin_m: float = Field(2.0, ge=0)
    prefix: str = "gw"


class Gateways(Strict):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    defaults: GatewayDefaults = GatewayDefaults()
    units: list[Gateway] = Field(default_factory=list, alias="list", description="gateways one by one")
    grid: GatewayGrid | None = None


class Placement(Strict):
    zones: list[str] = Field(default_factory=list, description="zone names; empty: anywhere free")
    roles: list[ZoneRole] = Field(default_factory=list, description="or every zone with these roles")


class TagGroup(Strict):
    name: str = Field(min_length=1)
    count: int = Field(ge=0, le=1_000_000)
    model: str = "xiaomi-tag"
    placement: Placement = Placement()
    adv_interval_ms: float = Field(1000.0, ge=20, le=10240, description="BLE advInterval, 20 ms - 10.24 s")
    tx_power_1m_dbm: float = Field(-59.0, ge=-100, le=0, description="RSSI at 1 m")
    battery_pct: tuple[float, float] = Field((80.0, 100.0), description="uniform initial range")
    battery_drain_pct_per_day: float = Field(0.1, ge=0)

    @field_validator("battery_pct")
    @classmethod
    def _range(cls, v: tuple[float, float]) -> tuple[float, float]:
        lo, hi = v
        if not 0 <= lo <= hi <= 100:
            raise ValueError("battery_pct must be [low, high] with 0 <= low <= high <= 100")
        return v


class MoverGroup(Strict):
    name: str = Field(min_length=1)
    kind: Literal["picker", "forklift"] = "picker"
    count: int = Field(1, ge=0, le=10_000)
    speed_mps: float = Field(1.2, gt=0, le=10)
    route: list[str] = Field(min_length=2, description="zone names or roles visited in turn")
    items_per_trip: tuple[int, int] = (1, 3)
    dwell_s: float = Field(20.0, ge=0)
    start_s: float = Field(0.0, ge=0)

    @field_validator("items_per_trip")
    @classmethod
    def _items(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not 0 <= v[0] <= v[1]:
            raise ValueError("items_per_trip must be [low, high] with 0 <= low <= high")
        return v


class LogDistanceParams(Strict):
    kind: Literal["log-distance"] = "log-distance"
    exponent: float = Field(2.0, gt=0.5, le=6.0, description="path-loss exponent n")


class Radio(Strict):
    model: Annotated[LogDistanceParams, Field(discriminator="kind")] = LogDistanceParams()
    shadowing_sigma_db: float = Field(4.0, ge=0, le=20)
    decorrelation_m: float = Field(6.0, ge=0, le=100)
    fading: Literal["none", "rayleigh", "rician"] = "rayleigh"
    rician_k_db: float = 6.0
    channel_offset_db: tuple[float, float, float] = (0.0, 0.0, 0.0)
    gateway_bias_sigma_db: float = Field(0.0, ge=0, le=10)
    grid_m: float = Field(0.5, gt=0.05, le=5.0, description="resolution of the static loss maps")
    channel_spacing_ms: float = Field(0.4, gt=0, lt=10, description="gap between the 37/38/39 packets")


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
    particles: int = Field(default=128, ge=8, le=10_000)
    tracker_speed_mps: float = Field(
        default=1.5, gt=0, le=20, description="typical speed of a carried tag")
    zone_hysteresis: bool = Field(
        default=False, description="a tag changes zone only on repeated evidence")
    window_s: float = Field(4.0, gt=0)
    step_s: float = Field(1.0, gt=0)
    allowed_lateness_s: float = Field(2.0, ge=0)
    path_loss_exponent: float | None = Field(None, description="defaults to the radio model's")
    min_gateways: int = Field(3, ge=1)
    use_site_plan: bool = Field(True, description="model wall and rack losses from the site plan")


class Bound(Strict):
    min: float | None = None
    max: float | None = None


class Scenario(Strict):
    name: str = Field(min_length=1)
    description: str = ""
    duration_s: float = Field(gt=0, le=7 * 24 * 3600)
    seed: int = Field(ge=0)
    tick_s: float = Field(0.5, gt=0, le=10, description="radio batch length in simulated seconds")
    site: Site
    zones: list[Zone] = []
    gateways: Gateways
    tags: list[TagGroup] = Field(min_length=1)
    movers: list[MoverGroup] = []
    radio: Radio = Radio()
    engine: EngineSettings = EngineSettings()
    expected: dict[str, Bound] = Field(default_factory=dict, description="metric name -> bounds")

    @model_validator(mode="after")
    def _cross_references(self) -> Scenario:
        names = [z.name for z in self.zones]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"zone names must be unique; repeated: {sorted(dupes)}")
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
        if len(set(ids)) != len(ids):
            raise ValueError("gateways.list: gateway ids must be unique")
        return self


def _format_location(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out or "(top level)"


def parse_scenario(text: str, source: Path | str = "<string>") -> Scenario:
    """Parse and validate scenario TOML text; errors name ``source`` and the field."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(source, [f"not valid TOML: {exc}"]) from None
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            # Drop pydantic's internal union tags ("function-after[...]") from the path.
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"{_format_location(loc)}: {msg}")
        raise ScenarioError(source, problems) from None


def load_scenario(path: Path | str) -> Scenario:
    """Read and validate a scenario file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(path, [f"cannot read file: {exc.strerror}"]) from None
    except UnicodeDecodeError:
        raise ScenarioError(path, ["not UTF-8 text"]) from None
    return parse_scenario(text, path)
