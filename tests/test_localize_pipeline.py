"""Estimator and tracker selection through the engine and the scenario, and the
regression bounds of the localization scenarios."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import shapely

from engine.localize import METHOD_NAMES
from engine.pipeline import Engine, EngineConfig
from twin.run import check_bounds, engine_config_for, feed_engine, simulate, survey_of
from twin.scenario import Scenario, ScenarioError, load_scenario, parse_scenario
from twin.sim import WarehouseTwin

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"


def small(name: str, **engine: object) -> Scenario:
    sc = load_scenario(SCENARIOS / name)
    d = sc.model_dump()
    d["engine"] = d["engine"] | engine
    d["duration_s"] = 8
    d["tags"][0]["count"] = 40
    return Scenario.model_validate(d)


@pytest.fixture(scope="module")
def demo_twin():
    sc = small("demo.toml")
    d = sc.model_dump()
    d["tags"][1]["count"] = 10
    sc = Scenario.model_validate(d)
    twin = WarehouseTwin(sc)
    return sc, twin, twin.run()


@pytest.mark.parametrize(
    ("localizer", "tracker"),
    [
        ("wls", "none"),
        ("centroid", "none"),
        ("strongest", "none"),
        ("knn", "none"),
        ("radio-map", "none"),
        ("wls", "kalman"),
        ("radio-map", "hmm"),
        ("wls", "particle"),
    ],
)
def test_every_estimator_and_tracker_runs_in_the_engine(demo_twin, localizer, tracker):
    sc, twin, result = demo_twin
    d = sc.model_dump()
    d["engine"] = d["engine"] | {
        "localizer": localizer,
        "tracker": tracker,
        "zone_hysteresis": True,
        "window_s": 1.0,
        "particles": 32,
    }
    sc2 = Scenario.model_validate(d)
    engine = Engine(engine_config_for(sc2, result, survey_of(twin, result)), result.tx_power_1m_dbm)
    fixes = feed_engine(engine, result.sightings, sc2.duration_s)
    assert len(fixes) > 0
    expected = tracker if tracker != "none" else localizer
    names = {METHOD_NAMES[m] for m in np.unique(fixes["method"])}
    assert expected in names
    assert np.isfinite(fixes["x"]).all()
    assert (fixes["r90"] > 0).all()
    if tracker in ("hmm", "particle"):
        racks = shapely.union_all(twin.site.racks)
        assert not shapely.contains_xy(racks, fixes["x"], fixes["y"]).any()


def test_surveyed_map_beats_the_modelled_one(demo_twin):
    """A perfect calibration walk (the twin's own shadowing) must help the radio map."""
    sc, twin, result = demo_twin
    errs = {}
    for source in ("model", "survey"):
        d = sc.model_dump()
        d["engine"] = d["engine"] | {"localizer": "radio-map", "radio_map": source}
        sc2 = Scenario.model_validate(d)
        engine = Engine(engine_config_for(sc2, result, survey_of(twin, result)), result.tx_power_1m_dbm)
        fixes = feed_engine(engine, result.sightings, sc2.duration_s)
        true_xy = result.truth.position_at(fixes["device"], fixes["t"])
        errs[source] = float(np.nanmedian(np.hypot(fixes["x"] - true_xy[:, 0], fixes["y"] - true_xy[:, 1])))
    assert errs["survey"] < errs["model"]


def test_engine_config_rejects_unknown_choices(demo_twin):
    sc, _, result = demo_twin
    cfg = engine_config_for(sc, result)
    with pytest.raises(ValueError, match="localizer 'magic'"):
        EngineConfig(gateways=cfg.gateways, zones=cfg.zones, bounds=cfg.bounds, localizer="magic")
    with pytest.raises(ValueError, match="need a radio_map"):
        EngineConfig(gateways=cfg.gateways, zones=cfg.zones, bounds=cfg.bounds, tracker="particle")


def test_scenario_names_a_bad_tracker():
    text = (
        (SCENARIOS / "static-open.toml")
        .read_text()
        .replace('localizer = "wls"', 'localizer = "wls"\ntracker = "magic"')
    )
    with pytest.raises(ScenarioError, match=r"engine.tracker"):
        parse_scenario(text, "x.toml")


def check_expected(sc: Scenario) -> dict[str, float]:
    """Run the scenario, assert its [expected] bounds (as CI's regression check does), and
    return the metric values. static-open's bounds run in tests/test_regression_scenarios.py."""
    results = check_bounds(sc, simulate(sc).report())
    assert all(r.ok for r in results), [(r.metric, r.value, r.bound_text) for r in results if not r.ok]
    return {r.metric: float(r.value) for r in results if r.value is not None}


@pytest.mark.slow
def test_moving_open_tracker_beats_the_single_shot_bound():
    values = check_expected(load_scenario(SCENARIOS / "moving-open.toml"))
    assert values["moving.rmse_over_crb"] < 1.0


def test_cli_evaluate_rescores_a_run_directory(tmp_path):
    import json

    from typer.testing import CliRunner

    from tagtwin.cli import app

    sc = small("static-open.toml")
    runner = CliRunner()
    src = tmp_path / "s.toml"
    text = (SCENARIOS / "static-open.toml").read_text()
    src.write_text(text.replace("count = 400", "count = 40"))
    run = str(tmp_path / "run")
    args = ["simulate", str(src), "--out", run, "--no-plot", "-q", "--duration", str(sc.duration_s)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["evaluate", run, "--json", str(tmp_path / "m.json")])
    assert result.exit_code == 0, result.output
    again = json.loads((tmp_path / "m.json").read_text())
    report = json.loads((tmp_path / "run" / "report.json").read_text())["metrics"]
    for key in ("median_error_m", "p90_error_m", "rmse_over_crb", "crb_rmse_m", "r90_coverage"):
        assert again[key] == pytest.approx(report[key], rel=1e-6)
    assert [lvl for lvl, _ in again["error_cdf"]][:3] == [0.1, 0.2, 0.3]
    assert runner.invoke(app, ["evaluate", str(tmp_path)]).exit_code == 2  # not a run directory


def test_zone_hysteresis_stops_still_tags_flapping(demo_twin):
    from engine.evaluate import still_zone_changes

    sc, _, result = demo_twin
    flaps = {}
    for hyst in (False, True):
        d = sc.model_dump()
        d["engine"] = d["engine"] | {"zone_hysteresis": hyst}
        sc2 = Scenario.model_validate(d)
        engine = Engine(engine_config_for(sc2, result), result.tx_power_1m_dbm)
        fixes = feed_engine(engine, result.sightings, sc2.duration_s)
        flaps[hyst] = still_zone_changes(fixes, result.truth)
    assert flaps[True] < 0.25 * flaps[False]
