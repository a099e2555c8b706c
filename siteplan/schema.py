"""The site file's sections: outline, walls, racks, zones and gateway layout.

These are the parts of a scenario that describe a real or planned site; engine, twin and
live bridge all read them. Validation errors name the field (pydantic), and the callers
turn them into one line naming the file.
"""

from __future__ import annotations

from typing import Literal

import shapely
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from radio_models.materials import DEFAULT_MATERIAL_LOSS_DB, DEFAULT_RACK_LOSS_DB

Point = tuple[float, float]
ZoneRole = Literal["storage", "packing", "checkout", "exit", "receiving", "shipping", "office", "other"]


class Strict(BaseModel):
    # No NaN or infinity anywhere in a site or scenario: a gateway at x = nan was accepted
    # and silently dropped out of every distance (issue 13).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _check_polygon(points: list[Point], what: str) -> list[Point]:
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
    attenuation_db: float = Field(
        DEFAULT_RACK_LOSS_DB, ge=0, le=60, description="loss of a link crossing it"
    )

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
    attenuation_db: float = Field(DEFAULT_RACK_LOSS_DB, ge=0, le=60)

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
                x1, y1 = x0 + self.length_m, y + self.depth_m
                poly = [(x0, y), (x1, y), (x1, y1), (x0, y1)]
            else:
                x = x0 + i * self.pitch_m
                x1, y1 = x + self.depth_m, y0 + self.length_m
                poly = [(x, y0), (x1, y0), (x1, y1), (x, y1)]
            racks.append(Rack(polygon=poly, attenuation_db=self.attenuation_db))
        return racks


class Site(Strict):
    outline: list[Point] = Field(description="outer walls, metres")
    tag_height_m: float = Field(1.0, ge=0, le=20, description="height of tags above the floor, metres")
    raw_retention_days: float = Field(
        7.0, gt=0, le=3650, description="days the backbone keeps raw gateway batches (the raw stream's max age)"
    )
    walls: list[Wall] = Field(default_factory=list, description="interior walls (polylines with a material)")
    racks: list[Rack] = Field(default_factory=list, description="racks one by one")
    rack_rows: list[RackRows] = Field(default_factory=list, description="blocks of parallel racks")
    materials: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_MATERIAL_LOSS_DB), description="wall material -> loss in dB per crossing"
    )

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
    name: str = Field(min_length=1, description="unique zone name")
    role: ZoneRole = Field("other", description="what the zone is for; rules and movers select zones by role")
    polygon: list[Point] = Field(description="outline, metres; where zones overlap the first listed wins")

    @field_validator("polygon")
    @classmethod
    def _valid(cls, v: list[Point]) -> list[Point]:
        return _check_polygon(v, "zone polygon")


class GatewayDefaults(Strict):
    z_m: float = Field(3.0, ge=0, le=30)
    scan_window_ms: float = Field(100.0, gt=0)
    scan_interval_ms: float = Field(100.0, gt=0)
    sensitivity_dbm: float = Field(-95.0, le=-40, ge=-130)
    channel_switch_ms: float = Field(
        0.0, ge=0, le=50, description="start of each scan window lost to retuning"
    )
    max_reports_per_s: float | None = Field(
        None, gt=0, description="reports a gateway can forward per second; default: no limit"
    )

    @model_validator(mode="after")
    def _window(self) -> GatewayDefaults:
        if self.scan_window_ms > self.scan_interval_ms:
            raise ValueError("scan_window_ms cannot exceed scan_interval_ms")
        if self.channel_switch_ms >= self.scan_window_ms:
            raise ValueError("channel_switch_ms must be shorter than scan_window_ms")
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
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False)

    defaults: GatewayDefaults = Field(GatewayDefaults(), description="what every gateway gets unless it overrides it")
    units: list[Gateway] = Field(default_factory=list, alias="list", description="gateways one by one")
    grid: GatewayGrid | None = Field(None, description="a regular layout, added after the listed ones")

    def resolve(self, outline: list[Point] | shapely.Polygon) -> tuple[list[str], list[tuple[float, ...]]]:
        """Gateway ids and rows (x, y, z, scan window s, scan interval s, sensitivity dBm):
        the listed ones first, then the grid's points inside ``outline``."""
        import numpy as np

        d = self.defaults
        ids: list[str] = []
        rows: list[tuple[float, ...]] = []
        for g in self.units:
            rows.append((g.x, g.y, d.z_m if g.z is None else g.z,
                         (g.scan_window_ms or d.scan_window_ms) / 1000,
                         (g.scan_interval_ms or d.scan_interval_ms) / 1000,
                         d.sensitivity_dbm if g.sensitivity_dbm is None else g.sensitivity_dbm))
            ids.append(g.id)
        if self.grid is not None:
            poly = outline if isinstance(outline, shapely.Polygon) else shapely.Polygon(outline)
            minx, miny, maxx, maxy = poly.bounds
            m, s = self.grid.margin_m, self.grid.spacing_m
            gx, gy = np.meshgrid(np.arange(minx + m, maxx - m + 1e-9, s), np.arange(miny + m, maxy - m + 1e-9, s))
            inside = shapely.contains_xy(poly, gx.ravel(), gy.ravel())
            scan = (d.scan_window_ms / 1000, d.scan_interval_ms / 1000, d.sensitivity_dbm)
            for k, (x, y) in enumerate(zip(gx.ravel()[inside], gy.ravel()[inside], strict=True)):
                ids.append(f"{self.grid.prefix}-{k + 1:03d}")
                rows.append((float(x), float(y), d.z_m, *scan))
        return ids, rows


class Cells(Strict):
    """Spatial partitions of one very large site (engine/cells.py, docs/scaling.md): each
    cell a partition on the backbone with its own worker, consumer and checkpoint."""

    by: Literal["grid", "zones"] = Field("grid", description="a grid over the site's bounds, or one cell per zone")
    grid: tuple[int, int] = Field((2, 1), description="by = 'grid': columns x rows")
    margin_m: float = Field(
        30.0, ge=0, le=10_000,
        description="a gateway this close to a cell is read by it too (a border gateway); exact when no two "
        "gateways hearing one tag in one window stand farther apart")

    @field_validator("grid")
    @classmethod
    def _grid(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not (1 <= v[0] <= 63 and 1 <= v[1] <= 63 and v[0] * v[1] <= 63):
            raise ValueError(f"grid {list(v)}: columns and rows >= 1, at most 63 cells")
        return v
