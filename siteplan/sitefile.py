"""The site file: one real or planned site in TOML, what a scenario is built on.

    name = "flat"
    [site]        outline, walls, racks (siteplan/schema.py: Site)
    [[zones]]     named polygons with roles
    [gateways]    the gateway layout
    [radio]       path loss, shadowing, fading, how gateways report, and the calibrated
                  values with their uncertainties (siteplan/radio.py: Radio)
    [plan]        optional: the plan's polygons from a GeoJSON file instead of [site]
                  and [[zones]] (``geojson = "plan.geojson"``), and/or an occupancy-grid
                  image of where a tag can be (``occupancy = "plan.png"``, ``scale_m``,
                  ``origin``)

A scenario may say ``site_file = "site.toml"`` (relative to the scenario) instead of
repeating these sections; a section the scenario does give replaces the file's whole
section. Paths inside a site file are relative to the site file.

Problems raise :class:`SiteFileError`, one line per problem naming file and field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, model_validator

from siteplan.config_file import ConfigFileError, parse_toml, read_text, validation_problems
from siteplan.radio import Radio
from siteplan.schema import Cells, Gateways, Point, Site, Strict, Zone

SITE_SECTIONS = ("site", "zones", "gateways", "radio", "cells", "plan")
GEOJSON_KINDS = ("outline", "wall", "rack", "zone")


class SiteFileError(ConfigFileError):
    """A site file that cannot be used, with a message naming file and field."""


class OccupancyImage(Strict):
    """Where a tag can be, as an image: dark pixels are walls or furniture, light ones free
    floor (the ROS map_server convention: ``free_threshold`` on 0..1 brightness)."""

    image: str = Field(description="PNG file, relative to the site file")
    scale_m: float = Field(gt=0, le=10, description="metres per pixel")
    origin: Point = Field((0.0, 0.0), description="(x, y) of the image's lower-left corner, metres")
    free_threshold: float = Field(0.5, gt=0, lt=1, description="brightness above which a pixel is free")


class PlanSources(Strict):
    geojson: str | None = Field(None, description="GeoJSON FeatureCollection of outline, walls, racks, zones")
    occupancy: OccupancyImage | None = Field(None, description="occupancy-grid image of the free floor")


class SiteFile(Strict):
    name: str = Field("site", min_length=1, description="site name, used in reports")
    description: str = Field("", description="free text")
    site: Site = Field(description="outline, walls, racks")
    zones: list[Zone] = Field(default_factory=list, description="named polygons with roles")
    gateways: Gateways = Field(description="the gateway layout")
    radio: Radio = Field(default_factory=Radio, description="propagation, calibrated values, reporting")
    cells: Cells | None = Field(
        None, description="spatial partitions of a very large site on the backbone (docs/scaling.md); none: one")
    plan: PlanSources | None = Field(None, description="plan from GeoJSON or an occupancy image")

    @model_validator(mode="after")
    def _cross_references(self) -> SiteFile:
        check_site_references(self.zones, self.gateways, self.radio, self.site.outline)
        return self

    def gateway_table(self) -> tuple[list[str], list[tuple[float, ...]]]:
        """Gateway ids and rows (x, y, z, scan window s, scan interval s, sensitivity dBm)."""
        return self.gateways.resolve(self.site.outline)


GATEWAY_OUTSIDE_TOLERANCE_M = 1.0  # mounted on or just beyond the outer wall is fine


def check_site_references(
    zones: list[Zone], gateways: Gateways, radio: Radio, outline: list[tuple[float, float]] | None = None
) -> None:
    """Zone names unique, gateway ids unique, calibrated offsets only for known gateways,
    listed gateways inside the outline (a typo of 500 for 50 was accepted silently)."""
    names = [z.name for z in zones]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"zone names must be unique; repeated: {dupes}")
    ids = [g.id for g in gateways.units]
    if len(set(ids)) != len(ids):
        raise ValueError("gateways.list: gateway ids must be unique")
    if outline is not None:
        import shapely

        poly = shapely.Polygon(outline)
        for i, g in enumerate(gateways.units):
            if poly.distance(shapely.Point(g.x, g.y)) > GATEWAY_OUTSIDE_TOLERANCE_M:
                raise ValueError(f"gateways.list[{i}] ({g.id}): ({g.x:g}, {g.y:g}) is outside the site outline")
    known = set(ids)
    for key in (*radio.gateway_offsets_db, *(radio.uncertainty.gateway_offsets_db if radio.uncertainty else {})):
        if key not in known:
            raise ValueError(f"radio.gateway_offsets_db: {key!r} is not in gateways.list")


def plan_from_geojson(data: Any, source: Path | str) -> dict[str, Any]:
    """[site] outline/walls/racks and [[zones]] from a GeoJSON FeatureCollection. Each
    feature's ``properties.kind`` is outline (Polygon), wall (LineString; ``material``),
    rack (Polygon; ``attenuation_db``) or zone (Polygon; ``name``, ``role``).
    Coordinates are metres in the site's frame (not longitude/latitude)."""

    def bad(i: int, what: str) -> SiteFileError:
        return SiteFileError(source, [f"features[{i}]: {what}"])

    if not isinstance(data, dict) or data.get("type") != "FeatureCollection":
        raise SiteFileError(source, ["not a GeoJSON FeatureCollection"])
    site: dict[str, Any] = {"walls": [], "racks": []}
    zones: list[dict[str, Any]] = []
    for i, feat in enumerate(data.get("features") or []):
        if not isinstance(feat, dict):
            raise bad(i, "not an object")
        props = feat.get("properties") or {}
        geom = feat.get("geometry") or {}
        kind = props.get("kind")
        if kind not in GEOJSON_KINDS:
            raise bad(i, f"properties.kind must be one of {', '.join(GEOJSON_KINDS)}, got {kind!r}")
        want = "LineString" if kind == "wall" else "Polygon"
        if geom.get("type") != want:
            raise bad(i, f"a {kind} needs a {want} geometry, got {geom.get('type')!r}")
        coords: Any = geom.get("coordinates")
        try:
            ring = coords if kind == "wall" else coords[0]
            points = [(float(p[0]), float(p[1])) for p in ring]
        except (TypeError, IndexError, ValueError):
            raise bad(i, "coordinates are not a list of [x, y] numbers") from None
        if kind != "wall" and len(points) > 1 and points[0] == points[-1]:
            points = points[:-1]  # GeoJSON closes rings; the site file does not
        extra = {k: v for k, v in props.items() if k != "kind"}
        if kind == "outline":
            if "outline" in site:
                raise bad(i, "a second outline")
            site["outline"] = points
        elif kind == "wall":
            site["walls"].append({"points": points, **extra})
        elif kind == "rack":
            site["racks"].append({"polygon": points, **extra})
        else:
            zones.append({"polygon": points, **extra})
    if "outline" not in site:
        raise SiteFileError(source, ["no feature with properties.kind = outline"])
    return {"site": site, "zones": zones}


def resolve_plan_sources(data: dict[str, Any], base: Path, source: Path | str) -> dict[str, Any]:
    """Fill [site] and [[zones]] from ``plan.geojson`` when given (what the TOML itself
    says about the site, like tag_height_m, is kept)."""
    plan = data.get("plan")
    if not isinstance(plan, dict) or not plan.get("geojson"):
        return data
    path = base / str(plan["geojson"])
    try:
        geo = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SiteFileError(source, [f"plan.geojson: cannot read {path}: {exc.strerror}"]) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SiteFileError(source, [f"plan.geojson: {path} is not JSON: {exc}"]) from None
    parts = plan_from_geojson(geo, path)
    out = dict(data)
    out["site"] = {**parts["site"], **(data.get("site") or {})}
    if "zones" not in data:
        out["zones"] = parts["zones"]
    return out


def parse_site_file(text: str, source: Path | str = "<string>") -> SiteFile:
    """Parse and validate site-file TOML; relative paths resolve against ``source``'s folder."""
    data = parse_toml(text, source, SiteFileError)
    data = resolve_plan_sources(data, Path(source).parent, source)
    try:
        return SiteFile.model_validate(data)
    except ValidationError as exc:
        raise SiteFileError(source, validation_problems(exc)) from None


def load_site_file(path: Path | str) -> SiteFile:
    """Read and validate a site file."""
    return parse_site_file(read_text(path, SiteFileError), path)


def site_sections(path: Path | str) -> dict[str, Any]:
    """The site file's sections as plain data, for a scenario that references it: its
    own validation runs first, so a bad site file is reported against the site file."""
    site = load_site_file(path)
    return site.model_dump(mode="json", by_alias=True, include=set(SITE_SECTIONS), exclude_none=True)


def dump_site_file(site: SiteFile) -> str:
    """TOML text of a site file (what ``tagtwin calibrate`` writes); parsing it gives the
    same SiteFile back. Coordinates stay on one line each, so the file reads like the
    hand-written ones."""
    data = site.model_dump(mode="json", by_alias=True, exclude_none=True, exclude_defaults=True)
    # The radio section in full: a calibrated value equal to a default is still a finding.
    data["radio"] = site.radio.model_dump(mode="json", by_alias=True, exclude_none=True)
    return "\n".join(_toml_table(data, ())).lstrip("\n") + "\n"


def _toml_value(value: Any) -> str:
    import tomli_w

    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return tomli_w.dumps({"v": value}).split("=", 1)[1].strip()


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)


def _toml_table(data: dict[str, Any], path: tuple[str, ...]) -> list[str]:
    """Scalars and inline arrays first, then sub-tables and arrays of tables."""
    lines: list[str] = []
    nested: list[tuple[str, Any]] = []
    for key, value in data.items():
        table = isinstance(value, dict) and value and any(isinstance(v, dict | list) for v in value.values())
        tables = isinstance(value, list) and value and all(isinstance(v, dict) for v in value)
        if table or tables:
            nested.append((key, value))
        else:
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    for key, value in nested:
        sub = (*path, _toml_key(key))
        if isinstance(value, dict):
            lines += ["", f"[{'.'.join(sub)}]", *_toml_table(value, sub)]
        else:
            for item in value:
                lines += ["", f"[[{'.'.join(sub)}]]", *_toml_table(item, sub)]
    return lines
