"""Geometry: obstacle crossings, zones, mover paths and ground-truth interpolation."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.truth import SEGMENT_DTYPE, GroundTruth
from radio_models.geometry import Obstacles, crossing_loss_db
from siteplan.model import WALL_HALF_THICKNESS_M, SiteModel
from siteplan.zones import NO_ZONE, ZoneIndex
from twin.navigation import Navigator

WALL = shapely.LineString([(5, -10), (5, 10)])
RACK = shapely.Polygon([(10, -1), (12, -1), (12, 1), (10, 1)])
OBST = Obstacles((WALL, RACK), (3.0, 12.0))

coord = st.floats(-20, 20, allow_nan=False)


def test_link_losses_add_per_obstacle_crossed() -> None:
    starts = np.array([[0, 0], [0, 0], [0, 0], [6, 5], [0, 0]], float)
    ends = np.array([[4, 0], [8, 0], [14, 0], [14, 5], [0, 0]], float)
    np.testing.assert_allclose(OBST.link_loss_db(starts, ends), [0, 3, 15, 0, 0])


def test_crossing_matrix_shape_and_values() -> None:
    loss = crossing_loss_db(OBST, np.array([[0, 0], [20, 0]]), np.array([[1, 0], [11, 0], [30, 0]]))
    np.testing.assert_allclose(loss, [[0, 15, 15], [15, 12, 0]])


@settings(max_examples=200, deadline=None)
@given(coord, coord, coord, coord)
def test_crossing_loss_is_symmetric(x0: float, y0: float, x1: float, y1: float) -> None:
    a, b = np.array([[x0, y0]]), np.array([[x1, y1]])
    assert OBST.link_loss_db(a, b)[0] == OBST.link_loss_db(b, a)[0]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(coord, coord, coord, coord), min_size=1, max_size=20), st.randoms())
def test_crossing_loss_does_not_depend_on_link_order(links: list[tuple[float, ...]], rnd) -> None:
    arr = np.array(links)
    perm = np.array(rnd.sample(range(len(arr)), len(arr)))
    full = OBST.link_loss_db(arr[:, :2], arr[:, 2:])
    np.testing.assert_array_equal(full[perm], OBST.link_loss_db(arr[perm, :2], arr[perm, 2:]))


@settings(max_examples=100, deadline=None)
@given(coord, coord, coord, coord, coord, coord)
def test_translating_everything_keeps_losses(x0: float, y0: float, x1: float, y1: float, dx: float, dy: float) -> None:
    moved = Obstacles(tuple(shapely.affinity.translate(g, dx, dy) for g in OBST.geometries), OBST.loss_db)
    a, b = np.array([[x0, y0]]), np.array([[x1, y1]])
    here = OBST.link_loss_db(a, b)[0]
    there = moved.link_loss_db(a + [dx, dy], b + [dx, dy])[0]
    # Grazing contacts can flip under float rounding; a transversal crossing never does.
    assert here == there or abs(here - there) in (3.0, 12.0)


def test_zones_first_listed_wins_and_boundary_counts() -> None:
    zones = ZoneIndex.from_points(
        [("a", "storage", [(0, 0), (10, 0), (10, 10), (0, 10)]), ("b", "exit", [(5, 5), (15, 5), (15, 15), (5, 15)])]
    )
    got = zones.assign(np.array([1, 7, 12, 10, 30]), np.array([1, 7, 12, 0, 30]))
    np.testing.assert_array_equal(got, [0, 0, 1, 0, NO_ZONE])
    assert zones.resolve("exit") == [1] and zones.resolve("a") == [0] and zones.resolve("nope") == []


def test_mover_paths_stay_clear_of_racks(demo_scenario) -> None:
    site = SiteModel.from_scenario(demo_scenario)
    nav = Navigator(site)
    rng = np.random.default_rng(3)
    racks = shapely.union_all(site.racks)
    for _ in range(25):
        a, b = site.random_free_points(2, rng)
        path = nav.path(a, b)
        np.testing.assert_allclose(path[0], a)
        np.testing.assert_allclose(path[-1], b)
        line = shapely.LineString(path)
        assert not line.crosses(racks) and not line.within(racks)
        assert not shapely.intersects(line, shapely.union_all(site.walls)) if site.walls else True


def test_ground_truth_interpolates_and_reports_gaps() -> None:
    seg = np.zeros(3, SEGMENT_DTYPE)
    seg[0] = (0, 0.0, 10.0, 0.0, 0.0, 0.0, 0.0)
    seg[1] = (0, 10.0, 20.0, 0.0, 0.0, 10.0, 0.0)
    seg[2] = (1, 0.0, 20.0, 5.0, 5.0, 5.0, 5.0)
    truth = GroundTruth.build(seg[::-1].copy(), np.zeros(0, dtype=[("t", "f8"), ("device", "i4")]))
    got = truth.position_at(np.array([0, 0, 0, 1, 1, 2]), np.array([5.0, 15.0, 20.0, 19.0, 25.0, 1.0]))
    np.testing.assert_allclose(got[:4], [[0, 0], [5, 0], [10, 0], [5, 5]])
    assert np.isnan(got[4:]).all()


def test_random_free_points_avoid_racks(demo_scenario) -> None:
    site = SiteModel.from_scenario(demo_scenario)
    pts = site.random_free_points(500, np.random.default_rng(0))
    assert not shapely.intersects_xy(shapely.union_all(site.racks), pts[:, 0], pts[:, 1]).any()
    assert shapely.contains_xy(site.outline, pts[:, 0], pts[:, 1]).all()
    with pytest.raises(ValueError, match="no free floor"):
        site.random_free_points(1, np.random.default_rng(0), site.racks[0].buffer(-0.1))


# -- the zone lookup grid (siteplan.zones.PointLookup) answers as shapely does ----------

def _shapes() -> st.SearchStrategy[shapely.Geometry]:
    """Polygons with holes, slanted edges and several parts: unions of boxes, a buffered
    zigzag, and a triangle with a hole; all within about 20 m of the origin."""
    box = st.tuples(coord, coord, st.floats(0.1, 15), st.floats(0.1, 15)).map(
        lambda b: shapely.box(b[0], b[1], b[0] + b[2], b[1] + b[3]))
    boxes = st.lists(box, min_size=1, max_size=4).map(shapely.union_all)
    zigzag = st.lists(st.tuples(coord, coord), min_size=2, max_size=6).map(
        lambda pts: shapely.LineString(pts).buffer(1.5))
    holed = st.tuples(coord, coord, st.floats(2, 15)).map(
        lambda t: shapely.Polygon([(t[0], t[1]), (t[0] + t[2], t[1]), (t[0], t[1] + t[2])]).difference(
            shapely.Point(t[0] + t[2] / 4, t[1] + t[2] / 4).buffer(t[2] / 10)))
    return st.one_of(boxes, zigzag, holed).filter(lambda g: not g.is_empty)


@settings(max_examples=150, deadline=None)
@given(_shapes(), st.lists(st.tuples(coord, coord), max_size=50), st.integers(16, 4096))
def test_point_lookup_matches_shapely(geom: shapely.Geometry, pts: list[tuple[float, float]], cells: int) -> None:
    from siteplan.zones import PointLookup

    # Random points, every vertex, points along the edges and beside them, and NaN.
    xy = np.array(pts, float).reshape(-1, 2)
    verts = shapely.get_coordinates(geom.boundary)
    along = shapely.get_coordinates(shapely.line_interpolate_point(
        geom.boundary, np.linspace(0, 1, 97), normalized=True))
    nudge = np.nextafter(along, np.inf)
    xy = np.vstack([xy, verts, along, nudge, np.nextafter(along, -np.inf), [[np.nan, 0.0], [0.0, np.nan]]])
    lookup = PointLookup(geom, max_cells=cells)
    got = lookup(xy[:, 0], xy[:, 1])
    np.testing.assert_array_equal(got, shapely.intersects_xy(geom, xy[:, 0], xy[:, 1]))


@settings(max_examples=100, deadline=None)
@given(_shapes(), coord, coord, st.floats(0.0, 10.0))
def test_point_lookup_disc_side_holds_for_the_whole_disc(geom: shapely.Geometry, x: float, y: float, r: float) -> None:
    from siteplan.zones import PointLookup

    lookup = PointLookup(geom, max_cells=256)
    side = int(lookup.disc_side(np.array([x]), np.array([y]), np.array([r]))[0])
    if side == 2:
        return  # undecided: the caller tests the points
    ang = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    rr = np.r_[0.0, np.full(64, r), np.full(64, r / 2)]
    px = x + rr * np.r_[0.0, np.cos(ang), np.cos(ang)]
    py = y + rr * np.r_[0.0, np.sin(ang), np.sin(ang)]
    assert (shapely.intersects_xy(geom, px, py) == bool(side)).all()


@settings(max_examples=100, deadline=None)
@given(_shapes(), st.lists(st.tuples(coord, coord, st.floats(0.0, 30.0)), min_size=1, max_size=30),
       st.booleans())
def test_zone_probability_equals_testing_every_point(
    geom: shapely.Geometry, fixes: list[tuple[float, float, float]], outline: bool,
) -> None:
    """ZoneRegion.probability settles whole discs from the lookup grid: the same numbers as
    testing each quadrature point with shapely."""
    from engine.rules.geofence import CHI2_2DOF_90, MIN_SIGMA_M, MISPLACED_POINTS, ZoneRegion

    within = shapely.box(-15, -15, 15, 15) if outline else None
    region = ZoneRegion([geom], within=within, points=MISPLACED_POINTS)
    x, y, r90 = (np.array(c, float) for c in zip(*fixes, strict=True))
    sigma = np.maximum(r90 / np.sqrt(CHI2_2DOF_90), MIN_SIGMA_M)
    px = (x[:, None] + sigma[:, None] * region.points[None, :, 0]).ravel()
    py = (y[:, None] + sigma[:, None] * region.points[None, :, 1]).ravel()
    inside = shapely.intersects_xy(region.geom, px, py).reshape(len(x), -1)
    if within is None:
        want = inside.mean(axis=1)
    else:
        feasible = shapely.intersects_xy(within, px, py).reshape(len(x), -1)
        n_in = feasible.sum(axis=1)
        want = np.where(n_in > 0, (inside & feasible).sum(axis=1) / np.maximum(n_in, 1), 0.0)
    np.testing.assert_array_equal(region.probability(x, y, r90), want)


def test_zone_index_pickles_without_its_lookup_grids() -> None:
    import pickle

    zones = ZoneIndex.from_points([("a", "storage", [(0, 0), (10, 0), (10, 10), (0, 10)])])
    x, y = np.array([1.0, 10.0, 20.0]), np.array([1.0, 5.0, 1.0])
    before = zones.assign(x, y)
    blob = pickle.dumps(zones)
    assert len(blob) < 2_000  # the grids (derived) stay behind
    np.testing.assert_array_equal(pickle.loads(blob).assign(x, y), before)
    np.testing.assert_array_equal(before, [0, 0, NO_ZONE])


@pytest.mark.parametrize("geom", [
    shapely.GeometryCollection([shapely.box(0, 0, 1, 1), shapely.LineString([(2, 2), (3, 3)])]),
    shapely.Point(1, 1), shapely.LineString([(0, 0), (3, 3)]), shapely.Polygon([(0, 0), (1, 0), (2, 0)]),
])
def test_point_lookup_of_points_lines_and_collections_asks_shapely(geom: shapely.Geometry) -> None:
    from siteplan.zones import PointLookup

    xy = np.array([[0.5, 0.5], [2.5, 2.5], [1.0, 1.0], [5.0, 5.0], [1.5, 1.5], [1.0, 0.0]])
    lookup = PointLookup(geom)
    np.testing.assert_array_equal(lookup(xy[:, 0], xy[:, 1]), shapely.intersects_xy(geom, xy[:, 0], xy[:, 1]))


@settings(max_examples=60, deadline=None)
@given(
    x=st.floats(0.2, 9.8), y=st.floats(0.2, 9.8).filter(lambda v: abs(v - 5.0) > 0.1), radius=st.floats(0.3, 3.0)
)
def test_within_reach_stays_on_the_points_side_of_a_wall(x: float, y: float, radius: float) -> None:
    """A wall across the whole room at y = 5: the reach of a point never crosses it, and a reach
    no wall cuts is the plain disc (so draws there stay as they were)."""
    site = _walled_room()
    reach = site.within_reach(np.array([x, y]), radius)
    pts = site.random_free_points(200, np.random.default_rng(1), reach)
    assert len(pts) == 200
    assert ((pts[:, 1] > 5.0) == (y > 5.0)).all()
    assert np.hypot(pts[:, 0] - x, pts[:, 1] - y).max() <= radius + 1e-9
    if abs(y - 5.0) > radius + 0.05:
        assert reach.equals(shapely.Point(x, y).buffer(radius))


def _walled_room() -> SiteModel:
    outline = shapely.box(0, 0, 10, 10)
    wall = shapely.LineString([(0, 5), (10, 5)])
    free = outline
    return SiteModel(
        outline, [], [], [wall], [3.0], ZoneIndex.from_points([]), free, wall.buffer(WALL_HALF_THICKNESS_M)
    )
