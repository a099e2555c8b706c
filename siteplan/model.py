"""A site's geometry, built once from its site-file sections: outline, racks and walls
with their radio losses, zones, and the free floor (where tags can rest and movers walk).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import shapely
from numpy.typing import NDArray

from radio_models.geometry import Obstacles
from siteplan.schema import Site, Zone
from siteplan.zones import ZoneIndex

FloatArray = NDArray[np.float64]

RACK_CLEARANCE_M = 0.3
# Walls are lines in the site file; on the floor they keep this much either side clear.
WALL_HALF_THICKNESS_M = 0.05


class HasSitePlan(Protocol):
    """What a site model is built from: a scenario, or any file with a site and zones."""

    @property
    def site(self) -> Site: ...

    @property
    def zones(self) -> list[Zone]: ...


@dataclass
class SiteModel:
    """The geometry of one scenario's site, built once per run."""

    outline: shapely.Polygon
    racks: list[shapely.Polygon]
    rack_loss_db: list[float]
    walls: list[shapely.LineString]
    wall_loss_db: list[float]
    zones: ZoneIndex
    free_space: shapely.Geometry
    blocked: shapely.Geometry

    @classmethod
    def from_scenario(cls, scenario: HasSitePlan) -> SiteModel:
        site = scenario.site
        outline = shapely.Polygon(site.outline)
        racks_cfg = site.all_racks()
        racks = [shapely.Polygon(r.polygon) for r in racks_cfg]
        walls = [shapely.LineString(w.points) for w in site.walls]
        wall_loss = [site.materials[w.material] for w in site.walls]
        zones = ZoneIndex.from_points([(z.name, z.role, z.polygon) for z in scenario.zones])
        rack_union = shapely.union_all(racks) if racks else shapely.Polygon()
        free = outline.difference(rack_union)
        wall_space = [w.buffer(WALL_HALF_THICKNESS_M) for w in walls]
        blocked = shapely.union_all([rack_union.buffer(RACK_CLEARANCE_M), *wall_space])
        shapely.prepare(free)
        shapely.prepare(blocked)
        return cls(outline, racks, [r.attenuation_db for r in racks_cfg], walls, wall_loss, zones, free, blocked)

    def obstacles(self) -> Obstacles:
        return Obstacles(tuple(self.walls) + tuple(self.racks), tuple(self.wall_loss_db) + tuple(self.rack_loss_db))

    def within_reach(self, point: FloatArray, radius_m: float) -> shapely.Geometry:
        """The disc of ``radius_m`` around ``point``, less the walls and whatever lies behind one.

        Why: a mover sets an item down within arm's reach, on its own side of a wall; the disc
        alone reached through the office wall and put tags in a room no one carried them into.
        A disc no wall touches is returned as the disc itself, so draws there stay as they were."""
        disc = shapely.Point(point).buffer(radius_m)
        walls = shapely.union_all([w.buffer(WALL_HALF_THICKNESS_M) for w in self.walls])
        if walls.is_empty or not disc.intersects(walls):
            return disc
        cut = disc.intersection(self.free_space).difference(walls)
        here = shapely.Point(point)
        return min(getattr(cut, "geoms", [cut]), key=here.distance)

    def random_free_points(
        self, count: int, rng: np.random.Generator, within: shapely.Geometry | None = None
    ) -> FloatArray:
        """Uniform points on free floor (inside ``within`` if given), by vectorized rejection."""
        area = self.free_space if within is None else within.intersection(self.free_space)
        if count == 0:
            return np.zeros((0, 2))
        if area.is_empty:
            raise ValueError("no free floor space to place points in")
        minx, miny, maxx, maxy = area.bounds
        shapely.prepare(area)
        out: list[FloatArray] = []
        have = 0
        while have < count:
            batch = max(64, 2 * (count - have))
            cand = np.column_stack([rng.uniform(minx, maxx, batch), rng.uniform(miny, maxy, batch)])
            ok = cand[shapely.contains_xy(area, cand[:, 0], cand[:, 1])]
            out.append(ok)
            have += len(ok)
        return np.concatenate(out)[:count]
