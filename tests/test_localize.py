"""Single-shot estimators: known answers, symmetry properties (hypothesis), throughput sanity."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.localize import (
    METHOD_CENTROID,
    METHOD_WLS,
    ObstacleMap,
    RadioMap,
    centroid_localize,
    fit_path_loss,
    knn_localize,
    radio_map_localize,
    strongest_gateway,
    wls_localize,
)
from radio_models.environment import Grid, Obstacles, crossing_loss_db

BOUNDS = (0.0, 0.0, 40.0, 30.0)


def grid_gateways(spacing: float = 10.0, z: float = 3.0) -> np.ndarray:
    gx, gy = np.meshgrid(np.arange(5, 40, spacing), np.arange(5, 30, spacing))
    return np.column_stack([gx.ravel(), gy.ravel(), np.full(gx.size, z)])


def model_rssi(
    xy: np.ndarray, gw: np.ndarray, tag_z: float = 1.0, n: float = 2.0, p0: float = -59.0
) -> np.ndarray:
    d2 = np.sum((xy[:, None, :] - gw[None, :, :2]) ** 2, axis=2) + (gw[None, :, 2] - tag_z) ** 2
    return p0 - 5.0 * n * np.log10(d2)


def test_wls_noise_free_gives_truth_within_a_centimetre():
    rng = np.random.default_rng(1)
    gw = grid_gateways()
    xy = rng.uniform([0.0, 0.0], [40.0, 30.0], (20000, 2))  # corners and edges included
    est = wls_localize(model_rssi(xy, gw), gw, np.full(len(xy), -59.0), 2.0, 4.0, 1.0, BOUNDS)
    err = np.hypot(est.x - xy[:, 0], est.y - xy[:, 1])
    assert err.max() < 0.01
    assert (est.method == METHOD_WLS).all()


def test_wls_with_other_exponent_and_missing_gateways():
    rng = np.random.default_rng(2)
    gw = grid_gateways()
    xy = rng.uniform([2, 2], [38, 28], (500, 2))
    rssi = model_rssi(xy, gw, n=2.7)
    d = np.hypot(xy[:, None, 0] - gw[None, :, 0], xy[:, None, 1] - gw[None, :, 1])
    rssi[d > 18] = np.nan  # far gateways do not hear the tag
    est = wls_localize(rssi, gw, np.full(len(xy), -59.0), 2.7, 4.0, 1.0, BOUNDS)
    ok = est.method == METHOD_WLS
    assert ok.mean() > 0.9
    assert np.hypot(est.x - xy[:, 0], est.y - xy[:, 1])[ok].max() < 0.01


def test_wls_few_gateways_falls_back_to_centroid_with_wide_radius():
    gw = grid_gateways()
    rssi = np.full((1, len(gw)), np.nan)
    rssi[0, :2] = [-60.0, -70.0]
    est = wls_localize(rssi, gw, np.array([-59.0]), 2.0, 4.0, 1.0, BOUNDS)
    assert est.method[0] == METHOD_CENTROID
    assert est.r90[0] >= 10.0


def test_strongest_and_centroid_known_answers():
    gw = grid_gateways()
    xy = gw[[3, 7], :2].copy()
    rssi = model_rssi(xy, gw)
    est = strongest_gateway(rssi, gw[:, :2], r90_m=7.0)
    np.testing.assert_allclose(np.c_[est.x, est.y], xy)
    assert (est.r90 == 7.0).all()
    # A tag exactly between two gateways heard equally by just them: centroid is the midpoint.
    two = np.full((1, len(gw)), np.nan)
    two[0, [0, 1]] = -70.0
    c = centroid_localize(two, gw[:, :2], 2.0)
    np.testing.assert_allclose([c.x[0], c.y[0]], (gw[0, :2] + gw[1, :2]) / 2)


def test_knn_exact_fingerprint_returns_its_position():
    rng = np.random.default_rng(3)
    fp_xy = rng.uniform(0, 10, (200, 2))
    fp = rng.normal(-70, 10, (200, 6))
    est = knn_localize(fp[:5], fp_xy, fp, k=1)
    np.testing.assert_allclose(np.c_[est.x, est.y], fp_xy[:5])


def test_radio_map_noise_free_lands_in_the_right_cell():
    gw = grid_gateways()
    grid = Grid.covering(BOUNDS, 0.5)
    rmap = RadioMap.from_model(grid, np.ones(grid.nx * grid.ny, bool), gw, 2.0, 1.0, 1.0)
    cells = np.array([500, 1500, 3000])
    xy = grid.centres()[cells]
    est = radio_map_localize(model_rssi(xy, gw), rmap, np.full(3, -59.0))
    assert np.hypot(est.x - xy[:, 0], est.y - xy[:, 1]).max() < 0.25


def test_fit_path_loss_recovers_the_model():
    rng = np.random.default_rng(4)
    gw = grid_gateways()
    xy = rng.uniform(0, 30, (2000, 2))
    rssi = model_rssi(xy, gw, n=2.3, p0=-62.0) + rng.normal(0, 2.0, (2000, len(gw)))
    fit = fit_path_loss(xy, rssi, gw, 1.0)
    assert fit.exponent == pytest.approx(2.3, abs=0.05)
    assert fit.p0_dbm == pytest.approx(-62.0, abs=0.3)
    assert fit.sigma_db == pytest.approx(2.0, abs=0.1)


# -- properties -------------------------------------------------------------------------

points = st.tuples(st.floats(3, 37), st.floats(3, 27))


@settings(max_examples=40, deadline=None)
@given(points, st.randoms(use_true_random=False), st.floats(-3, 3))
def test_permuting_gateways_changes_nothing(p, rand, noise):
    gw = grid_gateways()
    xy = np.array([p])
    rng = np.random.default_rng(rand.randint(0, 2**31))
    rssi = model_rssi(xy, gw) + rng.normal(0, abs(noise) + 0.1, (1, len(gw)))
    perm = np.array(rand.sample(range(len(gw)), len(gw)))
    for fn in (
        lambda r, g: wls_localize(r, g, np.array([-59.0]), 2.0, 4.0, 1.0, BOUNDS),
        lambda r, g: centroid_localize(r, g[:, :2], 2.0),
        lambda r, g: strongest_gateway(r, g[:, :2], 5.0),
    ):
        a, b = fn(rssi, gw), fn(rssi[:, perm], gw[perm])
        assert a.x[0] == pytest.approx(b.x[0], abs=1e-3)
        assert a.y[0] == pytest.approx(b.y[0], abs=1e-3)
        assert a.r90[0] == pytest.approx(b.r90[0], rel=1e-3, abs=1e-3)


@settings(max_examples=20, deadline=None)
@given(points, st.randoms(use_true_random=False))
def test_permuting_gateways_changes_nothing_for_fingerprints(p, rand):
    gw = grid_gateways()
    grid = Grid.covering(BOUNDS, 1.0)
    free = np.ones(grid.nx * grid.ny, bool)
    rmap = RadioMap.from_model(grid, free, gw, 2.0, 4.0, 1.0)
    rssi = model_rssi(np.array([p]), gw) + np.random.default_rng(rand.randint(0, 99)).normal(
        0, 3, (1, len(gw))
    )
    perm = np.array(rand.sample(range(len(gw)), len(gw)))
    pmap = RadioMap.from_model(grid, free, gw[perm], 2.0, 4.0, 1.0)
    a, b = radio_map_localize(rssi, rmap), radio_map_localize(rssi[:, perm], pmap)
    assert a.x[0] == pytest.approx(b.x[0], abs=1e-6)
    assert a.y[0] == pytest.approx(b.y[0], abs=1e-6)
    fp = rmap.mean_dbm.astype(float)
    k1 = knn_localize(rssi, grid.centres(), fp, k=4)
    k2 = knn_localize(rssi[:, perm], grid.centres(), fp[:, perm], k=4)
    assert k1.x[0] == pytest.approx(k2.x[0], abs=1e-9)
    assert k1.y[0] == pytest.approx(k2.y[0], abs=1e-9)


@settings(max_examples=40, deadline=None)
@given(points, st.floats(-500, 500), st.floats(-500, 500), st.floats(0, 2))
def test_translating_everything_translates_the_estimate(p, ox, oy, noise):
    gw = grid_gateways()
    xy = np.array([p])
    rssi = model_rssi(xy, gw) + np.random.default_rng(0).normal(0, noise, (1, len(gw)))
    shift = np.array([ox, oy, 0.0])
    moved_bounds = (BOUNDS[0] + ox, BOUNDS[1] + oy, BOUNDS[2] + ox, BOUNDS[3] + oy)
    a = wls_localize(rssi, gw, np.array([-59.0]), 2.0, 4.0, 1.0, BOUNDS)
    b = wls_localize(rssi, gw + shift, np.array([-59.0]), 2.0, 4.0, 1.0, moved_bounds)
    # float32 inner loop: a position 500 m from the origin resolves to ~0.1 mm.
    assert b.x[0] - ox == pytest.approx(a.x[0], abs=5e-3)
    assert b.y[0] - oy == pytest.approx(a.y[0], abs=5e-3)
    c1, c2 = (
        centroid_localize(rssi, gw[:, :2], 2.0),
        centroid_localize(rssi, (gw + shift)[:, :2], 2.0),
    )
    assert c2.x[0] - ox == pytest.approx(c1.x[0], abs=1e-6)
    assert c2.y[0] - oy == pytest.approx(c1.y[0], abs=1e-6)


def test_r90_is_calibrated_on_the_model():
    """Under the model the estimator assumes, the truth falls inside r90 about 90 % of the time."""
    rng = np.random.default_rng(5)
    gw = grid_gateways(spacing=8.0)
    xy = rng.uniform([2, 2], [38, 28], (20000, 2))
    rssi = model_rssi(xy, gw) + rng.normal(0, 2.0, (len(xy), len(gw)))
    est = wls_localize(rssi, gw, np.full(len(xy), -59.0), 2.0, 2.0, 1.0, BOUNDS)
    inside = np.mean(np.hypot(est.x - xy[:, 0], est.y - xy[:, 1]) <= est.r90)
    assert 0.85 <= inside <= 0.95


@settings(max_examples=30, deadline=None)
@given(
    miss=st.floats(1e-4, 0.5),
    seed=st.integers(0, 2**31 - 1),
)
def test_an_unheard_gateway_costs_a_cell_at_most_the_log_of_the_miss_probability(miss: float, seed: int) -> None:
    """With a calibrated miss probability, an unheard gateway's term is the floor's
    Gaussian penalty capped at -log(miss): the BLAS form equals the term-by-term sum."""
    from dataclasses import replace

    from engine.localize import RadioMap
    from radio_models.environment import Grid

    rng = np.random.default_rng(seed)
    grid = Grid(0.0, 0.0, 1.0, 6, 5)
    n_gw = 4
    mean = rng.uniform(-90, -40, (30, n_gw)).astype(np.float32)
    base = RadioMap(grid, np.ones(30, bool), mean, rng.uniform(2, 6, n_gw), -100.0, -59.0, 2.0)
    rm = replace(base, miss_probability=miss)
    rssi = rng.uniform(-90, -40, (7, n_gw))
    rssi[rng.random((7, n_gw)) < 0.4] = np.nan
    values, weights = rm.prepare(rssi)
    cells = np.arange(30)
    got = rm.log_likelihood(values, weights, cells, 1.5)
    z2 = ((values[:, None, :] - mean[None].astype(float)) / (rm.sigma_db * 1.5)) ** 2
    capped = np.where(np.isnan(rssi)[:, None, :], np.minimum(z2, -2 * np.log(miss)), z2)
    np.testing.assert_allclose(got, -0.5 * capped.sum(axis=2), rtol=1e-6, atol=1e-6)
    plain = base.log_likelihood(values, weights, cells, 1.5)
    np.testing.assert_allclose(plain, -0.5 * z2.sum(axis=2), rtol=1e-6, atol=1e-6)  # no miss: unchanged


def _racked_site() -> tuple[np.ndarray, ObstacleMap]:
    """The test floor with four racks (12 dB each) and its 1 m obstacle map."""
    gw = grid_gateways()
    grid = Grid.covering(BOUNDS, 1.0)
    racks = Obstacles(tuple(shapely.box(5, y, 35, y + 1.2) for y in (6.0, 12.0, 18.0, 24.0)), (12.0,) * 4)
    return gw, ObstacleMap(grid, crossing_loss_db(racks, grid.centres(), gw[:, :2]).astype(np.float32))


def test_wls_cell_edge_search_is_per_row_and_as_accurate_as_the_default():
    """The opt-in search (cell edges, gateway starts only for poor fits): each row's
    answer depends on that row alone, and its errors on noisy racked-site rows are no
    worse than the default search's (which it replaces only where asked)."""
    gw, wall = _racked_site()
    rng = np.random.default_rng(3)
    xy = rng.uniform([1.0, 1.0], [39.0, 29.0], (3000, 2))
    rssi = model_rssi(xy, gw) - wall.loss_db(xy) + rng.normal(0, 4.0, (len(xy), len(gw)))
    p0 = np.full(len(xy), -59.0)

    def solve(rows: np.ndarray, **opt: float) -> tuple[np.ndarray, np.ndarray]:
        est = wls_localize(rssi[rows], gw, p0[rows], 2.0, 4.0, 1.0, BOUNDS, obstacle_map=wall, **opt)
        return est.x, est.y

    opt = {"cell_edges": True, "gateway_starts_above": 3 * 4.0**2}
    everything = np.arange(len(xy))
    x, y = solve(everything, **opt)
    halves = [solve(part, **opt) for part in (everything[1::2], everything[::2])]
    assert np.array_equal(x[1::2], halves[0][0]) and np.array_equal(y[::2], halves[1][1])
    x0, y0 = solve(everything)
    err, err0 = np.hypot(x - xy[:, 0], y - xy[:, 1]), np.hypot(x0 - xy[:, 0], y0 - xy[:, 1])
    assert not np.array_equal(x, x0)  # it is another search
    assert np.median(err) <= 1.02 * np.median(err0) and np.quantile(err, 0.9) <= 1.02 * np.quantile(err0, 0.9)


def test_wls_search_settings_are_off_by_default_and_reach_the_engine():
    """Left at their defaults the settings are not written (scenario hashes unchanged);
    set, they reach the engine's config."""
    from pathlib import Path

    from twin.run import engine_config_for
    from twin.scenario import EngineSettings, load_scenario
    from twin.sim import WarehouseTwin

    assert "wls_cell_edges" not in EngineSettings().model_dump()
    assert "wls_gateway_starts_above" not in EngineSettings().model_dump()
    on = EngineSettings(wls_cell_edges=True, wls_gateway_starts_above=3)
    assert on.model_dump()["wls_cell_edges"] is True and on.model_dump()["wls_gateway_starts_above"] == 3
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        EngineSettings(wls_gateway_starts_above=-1)
    demo = load_scenario(Path(__file__).parents[1] / "scenarios" / "demo.toml")
    demo = demo.model_copy(update={"duration_s": 1.0, "engine": demo.engine.model_copy(
        update={"wls_cell_edges": True, "wls_gateway_starts_above": 3.0})})
    cfg = engine_config_for(demo, WarehouseTwin(demo).run())
    assert cfg.wls_cell_edges and cfg.wls_gateway_starts_above == 3.0
