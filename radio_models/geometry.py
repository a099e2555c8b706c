"""Wall and rack crossings between tags and gateways, counted with shapely.

Obstacles (wall segments and rack footprints) go into one shapely STRtree. A batch of
links becomes an array of line strings and one bulk ``query(..., predicate="intersects")``
returns every (link, obstacle) pair in C; losses are then summed with ``np.bincount``.
No Python loop runs over links or obstacles.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import shapely
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class Obstacles:
    """Static obstacles of a site: each geometry with the loss in dB of crossing it once.

    COST 231 multi-wall (Motley-Keenan) sums a fixed loss per wall crossed; racks are
    treated the same way, one loss per rack footprint a link passes through.
    """

    geometries: tuple[shapely.Geometry, ...] = ()
    loss_db: tuple[float, ...] = ()
    _tree: shapely.STRtree = field(init=False, repr=False, compare=False)
    _loss: FloatArray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.geometries) != len(self.loss_db):
            raise ValueError("each obstacle needs exactly one loss value")
        object.__setattr__(self, "_tree", shapely.STRtree(list(self.geometries)))
        object.__setattr__(self, "_loss", np.asarray(self.loss_db, dtype=float))

    def __len__(self) -> int:
        return len(self.geometries)

    def link_loss_db(self, start_xy: FloatArray, end_xy: FloatArray) -> FloatArray:
        """Total obstacle loss along each straight link start[i] -> end[i]."""
        start_xy = np.asarray(start_xy, dtype=float).reshape(-1, 2)
        end_xy = np.asarray(end_xy, dtype=float).reshape(-1, 2)
        n_links = len(start_xy)
        if n_links == 0 or len(self) == 0:
            return np.zeros(n_links)
        coords = np.stack([start_xy, end_xy], axis=1)  # (n, 2 points, 2)
        # A zero-length link would be an invalid line; nudge it so it stays a point-like line.
        same = np.all(coords[:, 0] == coords[:, 1], axis=1)
        coords[same, 1, 0] += 1e-9
        lines = shapely.linestrings(coords)
        link_idx, obstacle_idx = self._tree.query(lines, predicate="intersects")
        loss = np.bincount(link_idx, weights=self._loss[obstacle_idx], minlength=n_links)
        return np.asarray(loss, dtype=float)


def crossing_loss_db(
    obstacles: Obstacles, points_xy: FloatArray, anchors_xy: FloatArray
) -> FloatArray:
    """Obstacle loss for every (point, anchor) pair, shape (len(points), len(anchors)).

    Builds the per-gateway loss maps, so it is written for many points and few anchors:
    the obstacles are split into segments once (shapely), then each anchor tests every
    point against every segment with orientation signs in numpy (a link G-P crosses
    segment A-B iff A, B lie on opposite sides of G-P and G, P on opposite sides of A-B),
    and a polygon also counts when either end lies inside it. The result equals
    ``Obstacles.link_loss_db`` (shapely's "intersects"), up to links that exactly graze a
    vertex, at about twenty times the speed. Loops over anchors, never over links.
    """
    points_xy = np.asarray(points_xy, dtype=float).reshape(-1, 2)
    anchors_xy = np.asarray(anchors_xy, dtype=float).reshape(-1, 2)
    n, m = len(points_xy), len(anchors_xy)
    out = np.zeros((n, m))
    if n == 0 or m == 0 or len(obstacles) == 0:
        return out
    seg, owner = _segments(obstacles)
    starts = np.r_[0, np.flatnonzero(np.diff(owner)) + 1]
    owners = owner[starts]
    loss = obstacles._loss[owners]
    polygons = [i for i, g in enumerate(obstacles.geometries) if shapely.get_type_id(g) in (3, 6)]
    inside = {
        i: shapely.contains_xy(obstacles.geometries[i], points_xy[:, 0], points_xy[:, 1])
        for i in polygons
    }
    # Coordinates relative to the site's centre keep float32 exact to well under 1 mm.
    centre = points_xy.mean(axis=0)
    seg32 = (seg - np.tile(centre, 2)).astype(np.float32)
    pts32 = (points_xy - centre).astype(np.float32)
    ax, ay, bx, by = (seg32[:, k][None, :] for k in range(4))
    ex, ey = bx - ax, by - ay
    chunk = max(1, 4_000_000 // max(len(seg), 1))
    for j, (gx64, gy64) in enumerate(anchors_xy - centre):
        gx, gy = np.float32(gx64), np.float32(gy64)
        d3 = ex * (gy - ay) - ey * (gx - ax)  # side of G relative to A-B, (1, k)
        collinear = bool(np.any(d3 == 0))
        g_inside = {
            i: bool(
                shapely.contains_xy(obstacles.geometries[i], gx64 + centre[0], gy64 + centre[1])
            )
            for i in polygons
        }
        for lo in range(0, n, chunk):
            px = pts32[lo : lo + chunk, 0:1]
            py = pts32[lo : lo + chunk, 1:2]
            ux, uy = px - gx, py - gy
            d1 = ux * (ay - gy) - uy * (ax - gx)
            d1 *= ux * (by - gy) - uy * (bx - gx)  # d1 * d2: A and B on opposite sides of G-P
            d4 = ex * (py - ay) - ey * (px - ax)
            d4 *= d3
            hit = (d1 <= 0) & (d4 <= 0)
            if collinear:  # G on the line through a segment: only overlap counts
                hit &= (d1 != 0) | (d4 != 0) | (d3 != 0)
            per_owner = np.logical_or.reduceat(hit, starts, axis=1)
            for col, i in enumerate(owners):
                if i in inside:
                    per_owner[:, col] |= inside[i][lo : lo + chunk] | g_inside[i]
            out[lo : lo + chunk, j] = per_owner @ loss
    return out


def _segments(obstacles: Obstacles) -> tuple[FloatArray, NDArray[np.intp]]:
    """Every straight piece of every obstacle boundary as (x0, y0, x1, y1), with the index
    of the obstacle it belongs to (sorted by obstacle)."""
    rows, owner = [], []
    for i, geom in enumerate(obstacles.geometries):
        for part in shapely.get_parts(
            shapely.boundary(geom) if shapely.get_type_id(geom) in (3, 6) else geom
        ):
            for ring in (
                shapely.get_parts(shapely.line_merge(part))
                if shapely.get_type_id(part) == 5
                else [part]
            ):
                xy = shapely.get_coordinates(ring)
                if len(xy) < 2:
                    continue
                rows.append(np.column_stack([xy[:-1], xy[1:]]))
                owner.append(np.full(len(xy) - 1, i))
    if not rows:
        return np.zeros((0, 4)), np.zeros(0, dtype=np.intp)
    return np.concatenate(rows), np.concatenate(owner).astype(np.intp)
