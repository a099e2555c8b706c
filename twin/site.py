"""Site geometry for the twin: free floor space, obstacles for the radio, and mover paths.

Movers walk on an 8-connected grid over the free floor (inside the outline, clear of
racks by a safety margin, never across a wall), found with Dijkstra, then straightened by
string pulling so that they walk straight down aisles instead of zig-zagging.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely
from numpy.typing import NDArray
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import dijkstra

from engine.zones import ZoneIndex
from radio_models.geometry import Obstacles
from twin.scenario import Scenario

FloatArray = NDArray[np.float64]

NAV_CELL_M = 0.5
RACK_CLEARANCE_M = 0.3


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
    def from_scenario(cls, scenario: Scenario) -> SiteModel:
        site = scenario.site
        outline = shapely.Polygon(site.outline)
        racks_cfg = site.all_racks()
        racks = [shapely.Polygon(r.polygon) for r in racks_cfg]
        walls = [shapely.LineString(w.points) for w in site.walls]
        wall_loss = [site.materials[w.material] for w in site.walls]
        zones = ZoneIndex.from_points([(z.name, z.role, z.polygon) for z in scenario.zones])
        rack_union = shapely.union_all(racks) if racks else shapely.Polygon()
        free = outline.difference(rack_union)
        blocked = shapely.union_all([rack_union.buffer(RACK_CLEARANCE_M), *[w.buffer(0.05) for w in walls]])
        shapely.prepare(free)
        shapely.prepare(blocked)
        return cls(outline, racks, [r.attenuation_db for r in racks_cfg], walls, wall_loss, zones, free, blocked)

    def obstacles(self) -> Obstacles:
        return Obstacles(tuple(self.walls) + tuple(self.racks), tuple(self.wall_loss_db) + tuple(self.rack_loss_db))

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


class Navigator:
    """Shortest walkable paths between points of the site, avoiding racks and walls."""

    def __init__(self, site: SiteModel, cell_m: float = NAV_CELL_M) -> None:
        self.site = site
        self.cell = cell_m
        minx, miny, maxx, maxy = site.outline.bounds
        self.x0, self.y0 = minx, miny
        self.nx = int(np.ceil((maxx - minx) / cell_m))
        self.ny = int(np.ceil((maxy - miny) / cell_m))
        xs = minx + (np.arange(self.nx) + 0.5) * cell_m
        ys = miny + (np.arange(self.ny) + 0.5) * cell_m
        gx, gy = np.meshgrid(xs, ys)
        self.centres = np.column_stack([gx.ravel(), gy.ravel()])
        walkable = shapely.contains_xy(site.outline, self.centres[:, 0], self.centres[:, 1])
        walkable &= ~shapely.intersects_xy(site.blocked, self.centres[:, 0], self.centres[:, 1])
        self.walkable = walkable
        self.graph = self._build_graph()

    def _build_graph(self) -> coo_matrix:
        idx = np.arange(self.nx * self.ny).reshape(self.ny, self.nx)
        src, dst, cost = [], [], []
        for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
            a = idx[0 : self.ny - dy, max(0, -dx) : self.nx - max(0, dx)]
            b = idx[dy : self.ny, max(0, dx) : self.nx - max(0, -dx)]
            a, b = a.ravel(), b.ravel()
            ok = self.walkable[a] & self.walkable[b]
            a, b = a[ok], b[ok]
            # Edges must not cut through a blocked corner or wall.
            lines = shapely.linestrings(np.stack([self.centres[a], self.centres[b]], axis=1))
            clear = ~shapely.intersects(self.site.blocked, lines)
            a, b = a[clear], b[clear]
            src.append(a)
            dst.append(b)
            cost.append(np.full(len(a), np.hypot(dx, dy) * self.cell))
        s, d, c = np.concatenate(src), np.concatenate(dst), np.concatenate(cost)
        n = self.nx * self.ny
        both_ways = (np.concatenate([s, d]), np.concatenate([d, s]))
        return coo_matrix((np.concatenate([c, c]), both_ways), shape=(n, n)).tocsr()

    def _nearest_walkable(self, xy: FloatArray) -> int:
        cand = np.flatnonzero(self.walkable)
        d2 = np.sum((self.centres[cand] - xy) ** 2, axis=1)
        return int(cand[np.argmin(d2)])

    def _visible(self, a: FloatArray, b: FloatArray) -> bool:
        return not shapely.intersects(self.site.blocked, shapely.LineString([a, b]))

    def path(self, start: FloatArray, goal: FloatArray) -> FloatArray:
        """Waypoints (k, 2) from start to goal; start and goal themselves are included."""
        start = np.asarray(start, dtype=float)
        goal = np.asarray(goal, dtype=float)
        if self._visible(start, goal):
            return np.array([start, goal])
        s, g = self._nearest_walkable(start), self._nearest_walkable(goal)
        _, pred = dijkstra(self.graph, indices=s, return_predecessors=True)
        cells = [g]
        while cells[-1] != s and pred[cells[-1]] >= 0:
            cells.append(int(pred[cells[-1]]))
        if cells[-1] != s:
            # Disconnected floor: walk straight. Scenario authors see it in the plot.
            return np.array([start, goal])
        raw = np.vstack([start, self.centres[cells[::-1]], goal])
        return self._string_pull(raw)

    def _string_pull(self, pts: FloatArray) -> FloatArray:
        out = [pts[0]]
        i = 0
        while i < len(pts) - 1:
            j = len(pts) - 1
            while j > i + 1 and not self._visible(pts[i], pts[j]):
                j -= 1
            out.append(pts[j])
            i = j
        return np.array(out)
