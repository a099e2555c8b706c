"""The site file (siteplan/sitefile.py): parse, write back, GeoJSON plans, scenarios that
reference it, and one-line errors naming the file and field."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from siteplan.sitefile import (
    SiteFile,
    SiteFileError,
    dump_site_file,
    load_site_file,
    parse_site_file,
    plan_from_geojson,
)
from twin.scenario import ScenarioError, load_scenario, parse_scenario

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "scenarios" / "demo.toml"

SMALL = """
name = "flat"
[site]
outline = [[0, 0], [9, 0], [9, 7], [0, 7]]
tag_height_m = 0.3
[[zones]]
name = "kitchen"
polygon = [[0, 0], [3, 0], [3, 3], [0, 3]]
[gateways]
list = [{id = "a1", x = 1, y = 1, z = 2}, {id = "a2", x = 8, y = 6, z = 2.5},
        {id = "a3", x = 8, y = 1, z = 2}]
[radio]
p0_dbm = -52.5
fading = "rician"
rician_k_db = 5.5
shadowing_sigma_db = 3.1
decorrelation_m = 1.4
gateway_offsets_db = {a1 = -2.0, a2 = 1.5, a3 = 0.5}
report = {receivers = 2, combine = "linear", quantization_db = 1.0}
uncertainty = {p0_db = 0.4, exponent = 0.05, gateway_offsets_db = {a1 = 0.3}}
radio_map = {survey = "walk.csv", bandwidth_m = 0.6, reach_m = 0.5}
"""


def test_a_site_file_parses_and_writes_back_the_same() -> None:
    site = parse_site_file(SMALL, "flat.toml")
    assert site.radio.gateway_offsets_db == {"a1": -2.0, "a2": 1.5, "a3": 0.5}
    assert site.radio.report.receivers == 2
    ids, rows = site.gateway_table()
    assert ids == ["a1", "a2", "a3"] and rows[1][:3] == (8.0, 6.0, 2.5)
    again = parse_site_file(dump_site_file(site), "again.toml")
    assert again == site


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ('gateway_offsets_db = {a9 = 1.0}', "'a9' is not in gateways.list"),
        ("report = {receivers = 0}", "radio.report.receivers"),
        ('fading = "lognormal"', "radio.fading"),
        ("gateway_offsets_db = {a1 = 99.0}", "outside -40..40"),
    ],
)
def test_bad_radio_sections_name_the_file_and_field(change: str, field: str) -> None:
    key = change.split(" =", maxsplit=1)[0]
    lines = [ln for ln in SMALL.splitlines() if not ln.startswith(key + " =")]
    text = "\n".join(lines).replace("[radio]\n", f"[radio]\n{change}\n")
    with pytest.raises(SiteFileError) as exc:
        parse_site_file(text, "bad.toml")
    assert str(exc.value).startswith("bad.toml: ")
    assert field in str(exc.value)


def test_a_scenario_that_references_a_site_file_equals_one_that_embeds_it(tmp_path: Path) -> None:
    data = tomllib.loads(DEMO.read_text())
    site = {k: data.pop(k) for k in ("site", "zones", "gateways", "radio")}
    (tmp_path / "site.toml").write_text(tomli_w.dumps({"name": "demo-site", **site}))
    (tmp_path / "scenario.toml").write_text(tomli_w.dumps({"site_file": "site.toml", **data}))
    referenced = load_scenario(tmp_path / "scenario.toml")
    embedded = load_scenario(DEMO)
    assert referenced.model_copy(update={"site_file": None}) == embedded
    # A section the scenario gives replaces the file's.
    data["radio"] = {"shadowing_sigma_db": 7.0}
    own = parse_scenario(tomli_w.dumps({"site_file": "site.toml", **data}), tmp_path / "s2.toml")
    assert own.radio.shadowing_sigma_db == 7.0 and own.zones == embedded.zones


def test_a_bad_site_file_is_reported_through_the_scenario(tmp_path: Path) -> None:
    (tmp_path / "site.toml").write_text(SMALL.replace("tag_height_m = 0.3", "tag_height_m = -1"))
    (tmp_path / "s.toml").write_text('site_file = "site.toml"\nname = "x"\nduration_s = 10\nseed = 1\n'
                                     '[[tags]]\nname = "t"\ncount = 1\n')
    with pytest.raises(ScenarioError) as exc:
        load_scenario(tmp_path / "s.toml")
    assert "site_file:" in str(exc.value) and "site.tag_height_m" in str(exc.value)
    (tmp_path / "s.toml").write_text('site_file = "nowhere.toml"\nname = "x"\n')
    with pytest.raises(ScenarioError, match="cannot read file"):
        load_scenario(tmp_path / "s.toml")


def _square(x: float, y: float, s: float) -> list[list[float]]:
    return [[x, y], [x + s, y], [x + s, y + s], [x, y + s], [x, y]]


def test_a_geojson_plan_fills_site_and_zones(tmp_path: Path) -> None:
    geo = {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "properties": {"kind": "outline"},
             "geometry": {"type": "Polygon", "coordinates": [_square(0, 0, 10)]}},
            {"type": "Feature", "properties": {"kind": "wall", "material": "concrete"},
             "geometry": {"type": "LineString", "coordinates": [[5, 0], [5, 6]]}},
            {"type": "Feature", "properties": {"kind": "rack", "attenuation_db": 9},
             "geometry": {"type": "Polygon", "coordinates": [_square(1, 1, 1)]}},
            {"type": "Feature", "properties": {"kind": "zone", "name": "dock", "role": "shipping"},
             "geometry": {"type": "Polygon", "coordinates": [_square(6, 6, 3)]}},
        ],
    }
    (tmp_path / "plan.geojson").write_text(json.dumps(geo))
    text = ('[plan]\ngeojson = "plan.geojson"\n[site]\ntag_height_m = 0.5\n'
            '[gateways]\nlist = [{id = "g", x = 1, y = 1}]\n')
    (tmp_path / "site.toml").write_text(text)
    site = load_site_file(tmp_path / "site.toml")
    assert site.site.outline == [(0, 0), (10, 0), (10, 10), (0, 10)]
    assert site.site.tag_height_m == 0.5 and site.site.walls[0].material == "concrete"
    assert site.site.racks[0].attenuation_db == 9 and site.zones[0].role == "shipping"


@pytest.mark.parametrize(
    ("geo", "message"),
    [
        ({"type": "Feature"}, "not a GeoJSON FeatureCollection"),
        ({"type": "FeatureCollection", "features": []}, "no feature with properties.kind = outline"),
        ({"type": "FeatureCollection", "features": [{"properties": {"kind": "door"}}]}, "features[0]"),
        ({"type": "FeatureCollection", "features": [
            {"properties": {"kind": "wall"}, "geometry": {"type": "Polygon"}}]}, "needs a LineString"),
        ({"type": "FeatureCollection", "features": [
            {"properties": {"kind": "rack"}, "geometry": {"type": "Polygon", "coordinates": 3}}]},
         "coordinates are not"),
    ],
)
def test_bad_geojson_names_the_feature(geo: object, message: str) -> None:
    with pytest.raises(SiteFileError, match=message.replace("[", r"\[")):
        plan_from_geojson(geo, "plan.geojson")


finite = st.floats(-50, 50, allow_nan=False).map(lambda v: round(v, 3))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    w=st.floats(1, 500).map(lambda v: round(v, 2)),
    h=st.floats(1, 500).map(lambda v: round(v, 2)),
    offsets=st.lists(finite.map(lambda v: max(-40.0, min(40.0, v))), min_size=1, max_size=6),
    k_db=st.floats(-10, 30).map(lambda v: round(v, 2)),
    receivers=st.integers(1, 8),
    combine=st.sampled_from(["linear", "db"]),
)
def test_any_valid_site_file_round_trips(
    w: float, h: float, offsets: list[float], k_db: float, receivers: int, combine: str
) -> None:
    """Whatever calibrate writes, the parser reads back unchanged."""
    units = [{"id": f"g{i}", "x": i * w / 7, "y": h / 2} for i in range(len(offsets))]
    site = SiteFile.model_validate({
        "site": {"outline": [(0, 0), (w, 0), (w, h), (0, h)]},
        "gateways": {"list": units},
        "radio": {"fading": "rician", "rician_k_db": k_db,
                  "gateway_offsets_db": {u["id"]: v for u, v in zip(units, offsets, strict=True)},
                  "report": {"receivers": receivers, "combine": combine}},
    })
    assert parse_site_file(dump_site_file(site)) == site


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_is_rejected_with_a_site_file_error(text: str) -> None:
    try:
        parse_site_file(text, "fuzz.toml")
    except SiteFileError as exc:
        assert str(exc).startswith("fuzz.toml: ")
