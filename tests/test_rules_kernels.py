"""The rules' compiled shortcuts give the numbers of the code they stand in for, exactly
(the rule events of a run must not change by a byte)."""

from __future__ import annotations

import numpy as np
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st

coord = st.floats(-20, 20, allow_nan=False)


def _regions() -> st.SearchStrategy[shapely.Geometry]:
    """Unions of boxes (an exit zone, or several) and a slanted triangle."""
    box = st.tuples(coord, coord, st.floats(0.1, 15), st.floats(0.1, 15)).map(
        lambda b: shapely.box(b[0], b[1], b[0] + b[2], b[1] + b[3]))
    boxes = st.lists(box, min_size=1, max_size=3).map(shapely.union_all)
    triangle = st.tuples(coord, coord, st.floats(1, 15)).map(
        lambda t: shapely.Polygon([(t[0], t[1]), (t[0] + t[2], t[1]), (t[0], t[1] + t[2])]))
    return st.one_of(boxes, triangle)


r90s = st.one_of(st.floats(0.0, 40.0), st.just(float("nan")), st.just(float("inf")))


@settings(max_examples=150, deadline=None)
@given(_regions(), st.lists(st.tuples(st.floats(-60, 60), st.floats(-60, 60), r90s), min_size=1, max_size=40),
       st.booleans(), st.booleans())
def test_region_probability_equals_the_regions_own(
    geom: shapely.Geometry, fixes: list[tuple[float, float, float]], outline: bool, on_edges: bool,
) -> None:
    """exits.region_probability asks ZoneRegion.probability only for fixes with a quadrature
    point in the region's box: every fix gets the same number as asking for all of them."""
    from engine.rules.exits import region_probability
    from engine.rules.geofence import ZoneRegion

    region = ZoneRegion([geom], within=shapely.box(-25, -25, 25, 25) if outline else None)
    x, y, r90 = (np.array(c, float) for c in zip(*fixes, strict=True))
    if on_edges:  # fixes whose points graze the box: each point in turn on its edge
        minx, _, _, _ = region.bounds
        sigma = 1.0
        x = np.r_[x, minx - sigma * region.points[:, 0]]
        y = np.r_[y, np.full(len(region.points), (region.bounds[1] + region.bounds[3]) / 2)]
        r90 = np.r_[r90, np.full(len(region.points), sigma * np.sqrt(-2.0 * np.log(0.1)))]
    x = np.r_[x, np.nan, 0.0]
    y = np.r_[y, 0.0, np.nan]
    r90 = np.r_[r90, 5.0, 5.0]
    with np.errstate(over="ignore", invalid="ignore"):  # r90 = inf places points at inf
        want = region.probability(x, y, r90)
        np.testing.assert_array_equal(region_probability(region, x, y, r90), want)
