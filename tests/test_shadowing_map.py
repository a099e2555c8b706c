"""The localizer's shadowing map (``[engine] shadowing_map``): a calibration walk's link
means from censored readings, kriged over the grid into the obstacle-loss table."""

from __future__ import annotations

from types import SimpleNamespace
from typing import cast

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.pipeline import Engine
from radio_models.calibration import censored_link_means, simple_kriging
from radio_models.environment import PacketEffects
from tests.conftest import SCENARIOS, shortened
from twin import run as twin_run
from twin.run import engine_config_for, feed_engine, scenario_sha256
from twin.scenario import Scenario, ScenarioError, load_scenario, parse_scenario
from twin.sim import TwinResult, WarehouseTwin
from twin.walk import calibration_walk

OFFICE_WALL_X = 32.0  # demo.toml: the office's west wall (drywall), shipping ends at x = 31


def spread_points(draw: st.DrawFn, n: int, min_gap: float) -> np.ndarray:
    """n points in a 30 m square, no two closer than min_gap (a lattice, jittered)."""
    side = int(np.ceil(np.sqrt(n)))
    cells = draw(st.permutations(range(side * side)))[:n]
    jitter = draw(st.lists(st.floats(0.0, 0.5), min_size=2 * n, max_size=2 * n))
    iy, ix = np.divmod(np.asarray(cells), side)
    step = 30.0 / side
    return np.column_stack([ix * step, iy * step]) + np.asarray(jitter).reshape(n, 2) * (step - min_gap)


@st.composite
def kriging_inputs(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, float, float]:
    n = draw(st.integers(1, 25))
    xy = spread_points(draw, n, 1.0)
    values = np.asarray(draw(st.lists(st.floats(-12, 12), min_size=n, max_size=n)))
    return xy, values, draw(st.floats(0.5, 8.0)), draw(st.floats(1.0, 10.0))


@settings(max_examples=60, deadline=None)
@given(kriging_inputs())
def test_kriging_interpolates_noise_free_points_and_is_deterministic(case) -> None:
    xy, values, sigma, dcorr = case
    out = simple_kriging(xy, values, np.zeros(len(values)), xy, sigma, dcorr)
    assert np.allclose(out, values, atol=1e-3 * max(1.0, float(np.abs(values).max())))
    again = simple_kriging(xy, values, np.zeros(len(values)), xy, sigma, dcorr)
    assert out.tobytes() == again.tobytes()


@settings(max_examples=60, deadline=None)
@given(kriging_inputs(), st.floats(0.0, 2 * np.pi))
def test_kriging_falls_back_to_zero_far_from_every_point(case, angle: float) -> None:
    xy, values, sigma, dcorr = case
    far = np.array([[15.0, 15.0]]) + 60.0 * dcorr * np.array([[np.cos(angle), np.sin(angle)]])
    out = simple_kriging(xy, values, np.full(len(values), 1.0), far, sigma, dcorr)
    assert abs(out[0]) < 1e-6 * max(1.0, float(np.abs(values).sum()))


@settings(max_examples=40, deadline=None)
@given(kriging_inputs(), st.floats(0.5, 50.0))
def test_noisy_points_are_shrunk_towards_zero(case, noise_var: float) -> None:
    """Each prediction at a single noisy point is its value times s^2 / (s^2 + v)."""
    xy, values, sigma, dcorr = case
    one = simple_kriging(xy[:1], values[:1], np.array([noise_var]), xy[:1], sigma, dcorr)
    assert one[0] == pytest.approx(values[0] * sigma**2 / (sigma**2 + noise_var), abs=1e-6)


def test_censored_link_means_are_unbiased_where_the_heard_mean_is_not() -> None:
    """Links near sensitivity: the twin's Rayleigh fading, channel offsets and 1 dB steps;
    the mean of the heard readings alone is lifted by the censoring, the Tobit fit is not."""
    rng = np.random.default_rng(3)
    effects = PacketEffects("rayleigh", channel_offset_db=(-3.0, -1.0, 4.0))
    links, reads, sens = 400, 30, -95.0
    mu = rng.uniform(-100.0, -80.0, links)
    channel = rng.integers(0, 3, (links, reads))
    raw = np.round(mu[:, None] + np.array([-3.0, -1.0, 4.0])[channel] + effects.fading_db((links, reads), rng))
    rssi = np.where(raw >= sens, raw, np.nan)
    est, var = censored_link_means(rssi, channel, np.full(links, sens), effects.fading_table_db.astype(float),
                                   np.array([-3.0, -1.0, 4.0]))
    ok = np.isfinite(est)
    assert ok.mean() > 0.95
    z = (est[ok] - mu[ok]) / np.sqrt(var[ok])
    assert abs(np.mean(est[ok] - mu[ok])) < 0.3
    assert 0.7 < np.std(z) < 1.3  # the curvature's variance is the estimate's
    weak = ok & (mu < -92)
    heard_only = np.nanmean(rssi[weak], axis=1) - mu[weak]
    assert np.mean(heard_only) > 1.5  # the naive mean is biased up by more than a dB


def demo_with(scenario: Scenario, **engine: object) -> Scenario:
    settings = scenario.engine.model_dump() | engine
    return Scenario.model_validate(scenario.model_dump(by_alias=True) | {"engine": settings})


def test_bad_shadowing_map_is_a_one_line_error_and_none_hashes_as_before(demo_scenario: Scenario) -> None:
    text = '[engine]\nshadowing_map = "walks"\n'
    with pytest.raises(ScenarioError) as info:
        parse_scenario(text, "bad.toml")
    assert "shadowing_map" in str(info.value) and "bad.toml" in str(info.value)
    large = load_scenario(SCENARIOS / "large.toml")  # written before the setting existed
    assert "shadowing_map" not in large.model_dump_json()
    assert scenario_sha256(demo_with(large, shadowing_map="none")) == scenario_sha256(large)
    assert demo_scenario.engine.shadowing_map == "walk"  # the demo site has done its walk


def test_the_walk_map_is_deterministic_per_seed(demo_scenario: Scenario) -> None:
    """Same scenario and seed: the same walk and loss table, bytes, with or without the
    run's twin (a live server builds it from the scenario alone); another seed: another walk."""
    sc = shortened(demo_with(demo_scenario, shadowing_map="walk"), 10.0, seed=5)
    twin = WarehouseTwin(sc)
    site = cast("TwinResult", SimpleNamespace(site=twin.site, gateways=twin.gateways))
    walks = [calibration_walk(twin.radio, twin.site, twin.sensitivity_dbm, -59.0, seed) for seed in (5, 5, 6)]
    assert walks[0].rssi.tobytes() == walks[1].rssi.tobytes()
    assert walks[0].rssi.tobytes() != walks[2].rssi.tobytes()
    assert 0.3 < np.isfinite(walks[0].rssi).mean() < 0.7  # about half the readings: weak links are censored
    own = engine_config_for(sc, site, None, twin).obstacle_map
    twin_run._CORRECTIONS.clear()  # the second map is computed afresh, not the first one kept
    alone = engine_config_for(sc, site).obstacle_map
    site_plan_only = shortened(demo_with(demo_scenario, shadowing_map="none"), 10.0, seed=5)
    plain = engine_config_for(site_plan_only, site).obstacle_map
    assert own is not None and alone is not None and plain is not None
    assert own.loss.tobytes() == alone.loss.tobytes()
    # The correction is the shadowing, a few dB, not a change of the walls.
    assert 1.0 < float(np.std(own.loss - plain.loss)) < 6.0


def test_a_walk_map_asked_again_is_kept_read_only_and_another_seed_is_fitted_afresh(
        demo_scenario: Scenario, monkeypatch: pytest.MonkeyPatch) -> None:
    """A process keeps the few maps it fitted (keyed by all that the fit reads): the same
    scenario and seed again is not fitted again, and gets the same bytes, which no caller
    can change; another seed's walk is fitted."""
    sc = shortened(demo_scenario, 10.0, seed=7)
    twin = WarehouseTwin(sc)
    site = cast("TwinResult", SimpleNamespace(site=twin.site, gateways=twin.gateways))
    twin_run._CORRECTIONS.clear()
    first = engine_config_for(sc, site, None, twin).obstacle_map
    fits = []
    monkeypatch.setattr(twin_run, "censored_link_means",
                        lambda *a, **k: fits.append(1) or censored_link_means(*a, **k))
    again = engine_config_for(sc, site).obstacle_map
    assert first is not None and again is not None
    assert again.loss.tobytes() == first.loss.tobytes() and fits == []
    kept = next(iter(twin_run._CORRECTIONS.values()))
    assert not kept.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        kept += 1.0
    other = shortened(demo_scenario, 10.0, seed=8)
    engine_config_for(other, cast("TwinResult", SimpleNamespace(site=twin.site, gateways=twin.gateways)))
    assert fits == [1]


def test_the_walk_puts_a_still_tag_by_the_office_wall_on_its_own_side(demo_scenario: Scenario) -> None:
    """Seed 117 of the quiet run: tags the twin set down in shipping within 2 m of the
    office's west wall. Without the walk the still tags' fixes sit inside the office;
    with it at least one is back in shipping, and the tags' fixes move west on the whole."""
    sc = shortened(demo_scenario, 40.0, seed=117)
    twin = WarehouseTwin(sc)
    result = twin.run()
    xy = twin.fleet.xy
    by_wall = np.flatnonzero((xy[:, 0] > OFFICE_WALL_X - 2) & (xy[:, 0] < OFFICE_WALL_X) & (xy[:, 1] > 18)
                             & (twin.trip_of < 0))
    assert len(by_wall)
    fix_x = {}
    for mode in ("none", "walk"):
        s2 = demo_with(sc, shadowing_map=mode)
        fixes = feed_engine(Engine(engine_config_for(s2, result, None, twin), result.tx_power_1m_dbm),
                            result.sightings, sc.duration_s)
        late = fixes[fixes["t"] >= 20.0]
        fix_x[mode] = np.array([np.median(late["x"][late["device"] == d]) for d in by_wall])
    in_office = fix_x["none"] > OFFICE_WALL_X
    assert in_office.any()
    assert (fix_x["walk"][in_office] < OFFICE_WALL_X).any()
    assert np.mean(fix_x["walk"] - xy[by_wall, 0]) < np.mean(fix_x["none"] - xy[by_wall, 0]) - 1.0



WALK_LINE = 'shadowing_map = "walk"\n'
RECEIVERS_2 = "[radio.report]\nreceivers = 2\n\n[engine]"


@pytest.mark.parametrize(
    ("edits", "field"),
    [
        ([], None),  # the demo's own walk loads
        ([(WALK_LINE, WALK_LINE + "walk_stop_s = 61\n")], "walk_stop_s"),
        ([(WALK_LINE, WALK_LINE + "walk_spacing_m = 0.25\n"), ("grid_m = 0.5", "grid_m = 0.1")], "walk_spacing_m"),
        ([("[engine]", RECEIVERS_2)], "receivers"),
        ([("[engine]", RECEIVERS_2), (WALK_LINE, 'shadowing_map = "survey"\n')], None),
    ],
)
def test_a_walk_the_fit_cannot_take_is_refused_at_load(edits: list[tuple[str, str]], field: str | None) -> None:
    """Too long a stop, too many stops for the kriging's dense system, or averaged receivers
    (the censored fit reads one receiver's fades) name the field at load, not at run time."""
    text = (SCENARIOS / "demo.toml").read_text()
    for old, new in edits:
        assert text.count(old) == 1
        text = text.replace(old, new)
    if field is None:
        parse_scenario(text, "walk.toml")
        return
    with pytest.raises(ScenarioError) as info:
        parse_scenario(text, "walk.toml")
    assert field in str(info.value) and "walk.toml" in str(info.value)
