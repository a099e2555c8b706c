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
        return np.bincount(link_idx, weights=self._loss[obstacle_idx], minlength=n_links).astype(float)


def crossing_loss_db(obstacles: Obstacles, points_xy: FloatArray, anchors_xy: FloatArray) -> FloatArray:
    """Obstacle loss for every (point, anchor) pair, shape (len(points), len(anchors))."""
    points_xy = np.asarray(points_xy, dtype=float).reshape(-1, 2)
    anchors_xy = np.asarray(anchors_xy, dtype=float).reshape(-1, 2)
    n, m = len(points_xy), len(anchors_xy)
    starts = np.repeat(points_xy, m, axis=0)
    ends = np.tile(anchors_xy, (n, 1))
    return obstacles.link_loss_db(starts, ends).reshape(n, m)
