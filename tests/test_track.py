"""Trackers: convergence, floor-plan constraints (never inside a rack, never through a
wall), motion hints, resampling, and zone hysteresis."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.localize import Estimates, ObstacleMap, RadioMap
from engine.track import (
    FloorPlan,
    GridFilter,
    KalmanTracker,
    ParticleFilter,
    ZoneHysteresis,
    systematic_resample,
    walkable_transition,
)
from radio_models.environment import Grid
from radio_models.geometry import Obstacles, crossing_loss_db
from siteplan.zones import ZoneIndex

BOUNDS = (0.0, 0.0, 30.0, 20.0)
RACKS = [shapely.box(5, y, 25, y + 1.2) for y in (4.0, 8.0, 12.0, 16.0)]


def gateways() -> np.ndarray:
    gx, gy = np.meshgrid(np.arange(3, 30, 6.0), np.arange(3, 20, 6.0))
    return np.column_stack([gx.ravel(), gy.ravel(), np.full(gx.size, 3.0)])


def site_map(plan: FloorPlan) -> RadioMap:
    grid = Grid.covering(BOUNDS, 0.5)
    loss = crossing_loss_db(
        Obstacles(tuple(RACKS), tuple(12.0 for _ in RACKS)), grid.centres(), gateways()[:, :2]
    )
    return RadioMap.from_model(
        grid,
        plan.cell_free(grid),
        gateways(),
        2.0,
        4.0,
        1.0,
        obstacle_map=ObstacleMap(grid, loss.astype(np.float32)),
        track_inflation=1.5,
    )


def model_rssi(xy: np.ndarray, gw: np.ndarray) -> np.ndarray:
    d2 = np.sum((xy[:, None, :] - gw[None, :, :2]) ** 2, axis=2) + 4.0
    return -59.0 - 10.0 * np.log10(d2)


def dummy(n: int) -> Estimates:
    return Estimates(
        np.zeros(n), np.zeros(n), np.full(n, 5.0), np.full(n, 6, np.int32), np.zeros(n, np.int8)
    )


@pytest.fixture(scope="module")
def plan() -> FloorPlan:
    return FloorPlan.from_geometry(shapely.box(*BOUNDS), RACKS, cell_m=0.25)


def test_kalman_converges_on_a_still_tag_and_follows_a_moving_one():
    kf = KalmanTracker()
    rng = np.random.default_rng(0)
    dev = np.array([0, 1], np.int32)
    motion = np.array([0, 1], np.int8)
    moving_err = []
    for k in range(200):
        truth = np.array([[10.0, 10.0], [2.0 + 1.0 * k, 5.0]])
        z = truth + rng.normal(0, 1.0, truth.shape)
        fix = Estimates(
            z[:, 0],
            z[:, 1],
            np.full(2, np.sqrt(4.605)),
            np.full(2, 5, np.int32),
            np.zeros(2, np.int8),
        )
        out = kf.step(float(k), dev, np.zeros((2, 3)), fix, motion, np.full(2, -59.0))
        if k >= 30:
            moving_err.append(np.hypot(out.x[1] - truth[1, 0], out.y[1] - truth[1, 1]))
    assert np.hypot(out.x[0] - 10, out.y[0] - 10) < 0.5  # still: averaged 200 fixes
    assert out.r90[0] < 0.6
    # Raw fixes are ~1.25 m off on average; the filter must do better while the tag moves.
    assert np.mean(moving_err) < 1.05
    assert kf.x[1, 2] == pytest.approx(1.0, abs=0.3)  # learned the velocity


def test_floor_plan_blocks_racks_walls_and_outside(plan):
    assert not plan.is_free(np.array([[10.0, 4.6]]))[0]  # inside a rack
    assert plan.is_free(np.array([[10.0, 6.5]]))[0]  # aisle
    assert not plan.is_free(np.array([[-1.0, 5.0]]))[0]  # outside the site
    walled = FloorPlan.from_geometry(
        shapely.box(*BOUNDS), walls=[shapely.LineString([(15, 0), (15, 20)])], cell_m=0.25
    )
    a = np.array([[14.0, 10.0], [14.0, 10.0]])
    b = np.array([[16.0, 10.0], [14.0, 12.0]])
    np.testing.assert_array_equal(walled.path_free(a, b), [False, True])


@settings(max_examples=30, deadline=None)
@given(st.floats(0.2, 29.8), st.floats(0.2, 19.8), st.floats(0.2, 29.8), st.floats(0.2, 19.8))
def test_path_free_never_passes_a_wall(x0, y0, x1, y1):
    wall = shapely.LineString([(15, 0), (15, 20)])
    walled = FloorPlan.from_geometry(shapely.box(*BOUNDS), walls=[wall], cell_m=0.25)
    ok = walled.path_free(np.array([[x0, y0]]), np.array([[x1, y1]]))[0]
    if ok:
        assert not shapely.LineString([(x0, y0), (x1, y1)]).intersects(wall)


def test_walkable_transition_never_crosses_a_wall():
    wall = shapely.LineString([(15, 0), (15, 20)])
    plan = FloorPlan.from_geometry(shapely.box(*BOUNDS), walls=[wall], cell_m=0.25)
    grid = Grid.covering(BOUNDS, 0.5)
    xy = grid.centres()[plan.cell_free(grid)]
    t = walkable_transition(xy, plan, sigma_m=2.0).tocoo()
    crossing = (xy[t.row, 0] < 15) != (xy[t.col, 0] < 15)
    assert not crossing.any()
    np.testing.assert_allclose(np.asarray(t.tocsr().sum(axis=1)).ravel(), 1.0)


def test_particle_filter_never_places_a_tag_inside_a_rack(plan):
    rmap = site_map(plan)
    pf = ParticleFilter(rmap, plan, particles=64, seed=1)
    rng = np.random.default_rng(2)
    n = 100
    truth = rmap.free_xy[rng.choice(len(rmap.free_xy), n)]
    dev = np.arange(n, dtype=np.int32)
    rack_union = shapely.union_all(RACKS)
    for k in range(15):
        mean = rmap.mean_dbm[rmap.grid.cell_index(truth)]  # racks attenuate, as the map knows
        rssi = mean + rng.normal(0, 6.0, (n, len(gateways())))
        motion = rng.choice(np.array([-1, 0, 1], np.int8), n)
        out = pf.step(float(k), dev, rssi, dummy(n), motion, np.full(n, -59.0))
        assert not shapely.contains_xy(rack_union, out.x, out.y).any()
        assert not shapely.contains_xy(
            rack_union, pf.pos[:, :, 0].ravel(), pf.pos[:, :, 1].ravel()
        ).any()
    err = np.hypot(out.x - truth[:, 0], out.y - truth[:, 1])
    assert np.median(err) < 3.0


def test_grid_filter_tracks_and_stays_on_free_cells(plan):
    rmap = site_map(plan)
    gf = GridFilter(rmap, plan, step_s=1.0, speed_mps=1.5)
    rng = np.random.default_rng(3)
    truth = np.array([[2.0, 6.5], [27.0, 10.5]])
    dev = np.array([0, 1], np.int32)
    for k in range(20):
        truth[0, 0] = 2.0 + k  # walking down an aisle
        rssi = rmap.mean_dbm[rmap.grid.cell_index(truth)] + rng.normal(0, 3.0, (2, len(gateways())))
        out = gf.step(float(k), dev, rssi, dummy(2), np.array([1, 0], np.int8), np.full(2, -59.0))
    assert np.hypot(out.x - truth[:, 0], out.y - truth[:, 1]).max() < 3.0
    assert plan.is_free(gf.xy).all()


def test_systematic_resample_keeps_the_heavy_particles():
    w = np.array([[0.0, 0.0, 1.0, 0.0], [0.25, 0.25, 0.25, 0.25]])
    idx = systematic_resample(w, np.random.default_rng(0))
    assert (idx[0] == 2).all()
    assert sorted(idx[1].tolist()) == [0, 1, 2, 3]
    many = systematic_resample(np.array([[0.5, 0.5]]), np.random.default_rng(0), n=10)
    assert many.shape == (1, 10)
    assert (many == 0).sum() == 5


def test_zone_hysteresis_keeps_a_still_tag_from_flapping():
    zones = ZoneIndex.from_points(
        [
            ("a", "storage", [(0, 0), (10, 0), (10, 10), (0, 10)]),
            ("b", "storage", [(10, 0), (20, 0), (20, 10), (10, 10)]),
        ]
    )
    hz = ZoneHysteresis(zones, margin_m=1.0, confirm=2, confirm_still=5)
    dev = np.array([0], np.int32)
    still = np.array([0], np.int8)
    seen = [
        int(hz.assign(dev, np.array([x]), np.array([5.0]), still)[0])
        for x in (9.5, 10.4, 9.8, 10.6, 9.9, 10.3)
    ]
    assert seen == [0] * 6  # jitter across the boundary: stays in a
    moving = np.array([1], np.int8)
    walk = [
        int(hz.assign(dev, np.array([x]), np.array([5.0]), moving)[0]) for x in (12.0, 13.0, 14.0)
    ]
    assert walk == [0, 1, 1]  # a real move is confirmed after two windows
