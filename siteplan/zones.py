"""Zone assignment: which named polygon each position falls in, vectorized with shapely
and a lookup grid (:class:`PointLookup`) that answers most points without it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numba
import numpy as np
import shapely
from numpy.typing import NDArray

NO_ZONE = -1

# One tint per zone role, shared by every drawing of a site (matplotlib and plotly).
ZONE_COLOURS = {"storage": "#dbe9f6", "packing": "#fde7c8", "checkout": "#e6d7f2", "exit": "#f8d0d0",
                "receiving": "#d9f0d3", "shipping": "#fff3b0", "office": "#eeeeee", "other": "#f4f4f4"}
# Cells of a lookup grid: enough that few points fall in cells an edge crosses, few
# enough that building one (a shapely distance per cell) stays in the milliseconds.
LOOKUP_CELLS = 16_384
MIXED_CELL = 2  # a lookup cell an edge passes near: its points go to shapely


class PointLookup:
    """``shapely.intersects_xy(geom, x, y)`` (boundary points inside), the same answers,
    mostly from a grid: a cell whose centre lies farther from the boundary than the
    cell's half-diagonal is wholly inside or wholly outside, so its points need no test;
    points in the other cells (within about a cell of an edge) go to shapely.

    ``clearance`` is how far every point of each cell is from the boundary, less a
    tolerance, so callers can settle a whole disc of points at once
    (:meth:`disc_side`). Both carry a margin of ``tol`` beyond the cell, which covers the
    rounding of mapping a point to its cell."""

    def __init__(self, geom: shapely.Geometry, max_cells: int = LOOKUP_CELLS) -> None:
        self.geom = geom
        shapely.prepare(geom)
        minx, miny, maxx, maxy = geom.bounds if not geom.is_empty else (0.0, 0.0, 0.0, 0.0)
        w, h = maxx - minx, maxy - miny
        scale = max(abs(minx), abs(miny), abs(maxx), abs(maxy), 1.0)
        self.tol = 1e-9 * scale
        cell = max(math.sqrt(max(w * h, 1e-12) / max_cells), max(w, h) / max_cells, 1e-6 * scale)
        # Two cells past the far edge: a point on it maps inside the grid whatever the rounding.
        self.nx, self.ny = int(w / cell) + 2, int(h / cell) + 2
        self.x0, self.y0, self.cell, self.inv = minx, miny, cell, 1.0 / cell
        cx = minx + (np.arange(self.nx) + 0.5) * cell
        cy = miny + (np.arange(self.ny) + 0.5) * cell
        gx, gy = (a.ravel() for a in np.meshgrid(cx, cy))  # row-major: index iy * nx + ix
        if geom.is_empty:
            self.clearance = np.full(len(gx), np.inf)
            self.state = np.zeros(len(gx), np.int8)
            return
        if geom.geom_type not in ("Polygon", "MultiPolygon"):  # points, lines, collections
            self.clearance = np.full(len(gx), -np.inf)  # every point goes to shapely
            self.state = np.full(len(gx), MIXED_CELL, np.int8)
            return
        ends = [shapely.get_coordinates(line) for line in shapely.get_parts(geom.boundary)]
        segments = np.vstack([np.hstack([c[:-1], c[1:]]) for c in ends if len(c) > 1])
        dist = _distance_to_segments(gx, gy, segments)
        self.clearance = dist - cell * math.sqrt(0.5) - self.tol
        inside = shapely.intersects_xy(geom, gx, gy)
        self.state = np.where(self.clearance > 0, inside, MIXED_CELL).astype(np.int8)

    @property
    def grid(self) -> Grid:
        """(x0, y0, 1 / cell, nx, ny, state, clearance): the grid for compiled callers
        (:func:`cell_state`)."""
        return self.x0, self.y0, self.inv, self.nx, self.ny, self.state, self.clearance

    def __call__(self, x: NDArray[np.float64], y: NDArray[np.float64]) -> NDArray[np.bool_]:
        shape = np.shape(x)
        x = np.ascontiguousarray(x, dtype=float).ravel()
        y = np.ascontiguousarray(y, dtype=float).ravel()
        st = _cell_states(x, y, self.x0, self.y0, self.inv, self.nx, self.ny, self.state,
                          self.clearance, np.zeros(0))
        out = st == 1
        mixed = np.flatnonzero(st == MIXED_CELL)
        if len(mixed):
            out[mixed] = shapely.intersects_xy(self.geom, x[mixed], y[mixed])
        return out.reshape(shape)

    def disc_side(
        self, x: NDArray[np.float64], y: NDArray[np.float64], radius: NDArray[np.float64]
    ) -> NDArray[np.int8]:
        """1 where every point within ``radius`` of (x, y) is inside, 0 where every one is
        outside, 2 where the disc may cross the boundary (or (x, y) is off the grid)."""
        x = np.ascontiguousarray(x, dtype=float)
        y = np.ascontiguousarray(y, dtype=float)
        return _cell_states(x, y, self.x0, self.y0, self.inv, self.nx, self.ny, self.state,
                            self.clearance, np.ascontiguousarray(radius, dtype=float))


@numba.njit(cache=True, nogil=True)
def _distance_to_segments(
    x: NDArray[np.float64], y: NDArray[np.float64], segments: NDArray[np.float64],
) -> NDArray[np.float64]:
    """Distance from each point to the nearest of the segments (x0, y0, x1, y1)."""
    out = np.full(len(x), np.inf)
    for s in range(len(segments)):
        ax, ay, bx, by = segments[s, 0], segments[s, 1], segments[s, 2], segments[s, 3]
        dx, dy = bx - ax, by - ay
        length2 = dx * dx + dy * dy
        for i in range(len(x)):
            u = 0.0
            if length2 > 0:
                u = min(max(((x[i] - ax) * dx + (y[i] - ay) * dy) / length2, 0.0), 1.0)
            ex, ey = x[i] - (ax + u * dx), y[i] - (ay + u * dy)
            d = math.sqrt(ex * ex + ey * ey)
            out[i] = min(out[i], d)
    return out


Grid = tuple[float, float, float, int, int, NDArray[np.int8], NDArray[np.float64]]  # PointLookup.grid


@numba.njit(cache=True, nogil=True, inline="always")
def cell_state(px: float, py: float, disc: bool, radius: float, grid: Grid) -> int:
    """The state of the point's cell in a :class:`PointLookup` grid (0 off the grid or NaN);
    with ``disc``, that of the disc of ``radius`` around it: the cell's, if the disc stays
    clear of every edge, else mixed. Off the grid, a disc is mixed."""
    x0, y0, inv, nx, ny, state, clearance = grid
    fx = np.floor((px - x0) * inv)
    fy = np.floor((py - y0) * inv)
    if not (fx >= 0 and fx < nx and fy >= 0 and fy < ny):  # NaN too
        return MIXED_CELL if disc else 0
    c = int(fy) * nx + int(fx)
    if disc and not clearance[c] > radius:
        return MIXED_CELL
    return int(state[c])


@numba.njit(cache=True, nogil=True)
def _cell_states(
    x: NDArray[np.float64], y: NDArray[np.float64], x0: float, y0: float, inv: float, nx: int, ny: int,
    state: NDArray[np.int8], clearance: NDArray[np.float64], radius: NDArray[np.float64],
) -> NDArray[np.int8]:
    """:func:`cell_state` of each point, or with ``radius`` (one per point) of each disc."""
    discs = len(radius) > 0
    grid = (x0, y0, inv, nx, ny, state, clearance)
    out = np.empty(len(x), np.int8)
    if discs:
        for i in range(len(x)):
            out[i] = cell_state(x[i], y[i], True, radius[i], grid)
    else:
        for i in range(len(x)):
            out[i] = cell_state(x[i], y[i], False, 0.0, grid)
    return out


@dataclass(frozen=True)
class ZoneIndex:
    """Named zone polygons with roles. Overlaps resolve to the zone listed first."""

    names: tuple[str, ...]
    roles: tuple[str, ...]
    polygons: tuple[shapely.Polygon, ...]
    _prepared: bool = field(default=False, init=False, repr=False, compare=False)

    @classmethod
    def from_points(cls, zones: Sequence[tuple[str, str, Sequence[tuple[float, float]]]]) -> ZoneIndex:
        polys = tuple(shapely.Polygon(p) for _, _, p in zones)
        for poly in polys:
            shapely.prepare(poly)
        return cls(tuple(n for n, _, _ in zones), tuple(r for _, r, _ in zones), polys)

    def __len__(self) -> int:
        return len(self.names)

    def assign(self, x: NDArray[np.float64], y: NDArray[np.float64]) -> NDArray[np.int32]:
        """Zone index of each point, or NO_ZONE (-1). Boundary points count as inside."""
        x = np.asarray(x, dtype=float)
        y = np.asarray(y, dtype=float)
        out = np.full(x.shape, NO_ZONE, dtype=np.int32)
        # Few zones, many points: loop over zones, vectorize over points. Reverse order so
        # the first-listed zone wins where zones overlap.
        for i in reversed(range(len(self.polygons))):
            inside = self._lookups[i](x, y)
            out[inside] = i
        return out

    @cached_property
    def _lookups(self) -> tuple[PointLookup, ...]:
        """One lookup grid per zone, made on first use."""
        return tuple(PointLookup(p) for p in self.polygons)

    def __getstate__(self) -> dict[str, object]:
        """Pickled without the lookup grids (derived, and rebuilt in milliseconds)."""
        return {k: v for k, v in self.__dict__.items() if k != "_lookups"}

    def indices_with_role(self, *roles: str) -> list[int]:
        return [i for i, r in enumerate(self.roles) if r in roles]

    def resolve(self, name_or_role: str) -> list[int]:
        """Zones called ``name_or_role``, or else all zones with that role."""
        if name_or_role in self.names:
            return [self.names.index(name_or_role)]
        return self.indices_with_role(name_or_role)
