"""Mover paths for the twin over a site's free floor.

Movers walk on an 8-connected grid over the free floor (inside the outline, clear of
racks by a safety margin, never across a wall), found with Dijkstra, then straightened by
string pulling so that they walk straight down aisles instead of zig-zagging.
"""

from __future__ import annotations

import numpy as np
import shapely
from numpy.typing import NDArray
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import dijkstra

from siteplan.model import SiteModel

FloatArray = NDArray[np.float64]

NAV_CELL_M = 0.5


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
