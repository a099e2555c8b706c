"""planner.requirements and the editor's map layers: per-cell and per-area verdicts, shared
discrete classes, the difference map's orientation, what hover can show."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from planner import backend, editor
from planner.requirements import WHOLE_FLOOR, Requirement, area_report, cell_pass, gateways_at, layout_meets
from siteplan.model import SiteModel
from twin.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo():
    sc = load_scenario(ROOT / "scenarios" / "demo.toml")
    rows = backend.gateway_rows(sc)
    return sc, SiteModel.from_scenario(sc), rows, backend.coverage_maps(sc, rows)


def test_cell_verdict_is_the_count_at_the_threshold_and_the_bound(demo):
    _sc, _site, _rows, maps = demo
    req = Requirement(min_gateways=3, at_dbm=-90.0, crb_max_m=3.0)
    n = gateways_at(maps, -90.0)
    k = np.flatnonzero(maps.inside.ravel())[123]  # one cell, by hand
    want = int((maps.link_dbm[k] >= -90.0).sum())
    assert n.ravel()[k] == want
    assert cell_pass(maps, req).ravel()[k] == (want >= 3 and maps.crb_m.ravel()[k] <= 3.0)
    # Fewer gateways needed and a looser bound: never fewer cells pass.
    loose = Requirement(min_gateways=1, at_dbm=-95.0, crb_max_m=20.0)
    assert cell_pass(maps, loose).sum() >= cell_pass(maps, req).sum()
    assert not cell_pass(maps, req)[~maps.inside].any()


def test_area_report_per_zone_and_scope(demo):
    sc, site, _rows, maps = demo
    req = Requirement(crb_max_m=50.0, crb_p90_m=50.0, min_gateways=1, at_dbm=-100.0, min_share=0.5)
    rows = area_report(maps, site, req)
    assert [r["area"] for r in rows] == ["whole floor *", *[z.name for z in sc.zones]]
    assert rows[0]["verdict"] == "meets" and layout_meets(rows, req)
    strict = Requirement(crb_p90_m=0.5, scope=(WHOLE_FLOOR, "office"))
    rows = area_report(maps, site, strict)
    assert rows[-1]["area"] == "office *"
    assert not layout_meets(rows, strict)


def test_layers_use_shared_classes_and_hover_data(demo):
    _sc, _site, _rows, maps = demo
    req = Requirement()
    layer = editor.layer_for(maps, "gateways hearing at the requirement's dBm", req)
    assert layer is not None
    n = gateways_at(maps, req.at_dbm).ravel()
    inside = maps.inside.ravel()
    idx = np.array(layer["index"])
    assert np.all(idx[~inside] == -1)
    # Class k of the count scale is "k gateways" up to 5+: one colour per count.
    assert np.array_equal(idx[inside], np.minimum(n[inside], 5).astype(int))
    k = int(np.flatnonzero(inside)[40])
    ids = np.flatnonzero(maps.heard[k])
    assert sorted(i for i, _ in layer["heard"][k]) == ids.tolist()
    dbm = [d for _, d in layer["heard"][k]]
    assert dbm == sorted(dbm, reverse=True)  # strongest first, with its mean RSSI
    assert dbm[0] == round(float(maps.link_dbm[k, ids].max()))
    assert layer["pass"][k] == int(cell_pass(maps, req).ravel()[k])
    # The RSSI scale is the same whatever the layout: an edge value lands in a fixed class.
    classes = editor.CLASSES["best RSSI (dBm)"]
    assert classes.index(np.array([-96.0, -90.0, -60.0, np.nan])).tolist() == [0, 2, 6, 7]


def test_difference_map_is_blue_where_b_is_better(demo):
    sc, _site, rows, maps = demo
    more = rows + [{"id": "gw-99", "x": 20.0, "y": 10.0, "z": 3.0}]
    b = backend.coverage_maps(sc, more)
    layer = editor.difference_layer(maps, b, "gateways hearing at the requirement's dBm", Requirement())
    assert layer is not None
    vals = np.array([np.nan if v is None else v for v in layer["values"]])
    assert np.nanmin(vals) >= 0 and np.nanmax(vals) >= 1  # B hears more, never less
    idx = np.array(layer["index"])
    better = vals >= 1
    assert np.all(idx[better] <= 1)  # "better in B" classes
    assert editor.difference_layer(maps, maps, "measured error RMSE (m)", Requirement()) is None


def test_editor_data_is_plain_json(demo):
    import json

    _sc, site, rows, _maps = demo
    data = editor.editor_data(editor.site_data(site), rows, editable=True, ack=3, default_z=3.0)
    again = json.loads(json.dumps(data))
    assert again["gateways"][0] == {"id": "gw-01", "x": 5.0, "y": 2.0, "z": 3.0}
    assert again["bounds"] == [0.0, 0.0, 40.0, 25.0]
    assert {z["name"] for z in again["zones"]} == {"storage-A", "storage-B", "receiving", "shipping",
                                                    "packing", "exit-door", "office"}
    assert all(z["labels"] for z in again["zones"])


def test_auto_placement_fewest_and_best_for_n(demo):
    from planner import placement

    sc, site, rows, maps = demo
    req = Requirement()
    pts = placement.candidate_points(site)
    # Every candidate is on the floor, off the racks and walls, at least the wall inset in.
    assert len(pts) > 30
    assert not np.any(shapely_blocked(site, pts))
    search = placement.search_for(sc, site, req)
    fewest = placement.fewest_meeting(search)
    assert fewest.meets
    got = area_report(backend.coverage_maps(sc, fewest.rows, site), site, req)
    assert layout_meets(got, req)  # the exact maps agree with the search
    # Backward elimination: no single gateway can go.
    for i in range(len(fewest.rows)):
        fewer = fewest.rows[:i] + fewest.rows[i + 1 :]
        assert not layout_meets(area_report(backend.coverage_maps(sc, fewer, site), site, req), req)
    # With the scenario's count, the search beats the scenario's own layout on the share.
    best = placement.best_for(search, len(rows))
    assert len(best.rows) == len(rows)
    ours = area_report(backend.coverage_maps(sc, best.rows, site), site, req)[0]["meets per cell"]
    theirs = area_report(maps, site, req)[0]["meets per cell"]
    assert ours > theirs


def shapely_blocked(site, pts):
    import shapely

    return shapely.intersects_xy(site.blocked, pts[:, 0], pts[:, 1])


def test_money_tables_read_never_not_none_and_the_report_is_self_contained(demo):
    from engine.roi import MeasuredMetrics, roi_report
    from planner import report

    sc, site, rows, maps = demo
    poor = MeasuredMetrics(tags=200, gateways=10, theft_recall=0.0, zone_accuracy=0.1, coverage=0.2,
                           count_accuracy=0.1, false_alarms_per_day_per_1000_tags=50.0)
    roi = roi_report(sc.roi, poor)
    cases = report.cases_rows(roi, "EUR", 36)
    assert {c["payback"] for c in cases} == {"never (within 36 months)"}
    assert cases[0]["capex"].startswith("EUR ") and "−" in cases[0]["NPV"]
    sens = report.sensitivity_rows(roi, "EUR", 36)
    assert all("37" not in r["payback, input up"] for r in sens)
    req = Requirement()
    layer = editor.layer_for(maps, "requirement (pass/fail)", req)
    page = report.layout_report_html(
        scenario_name=sc.name, layout="as in scenario", rows=rows, site=editor.site_data(site),
        requirement=req, areas=area_report(maps, site, req), requirement_layer=layer, result=None,
        roi=None, currency="EUR", horizon=36, seeds=[42], duration_s=60, tool_version="0.1.0",
    )
    assert page.startswith("<!doctype html>") and page.count("<svg") == 2
    assert "mounting height (m)" in page and "gw-10" in page and "storage-A" in page
    assert "http" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")  # nothing fetched
