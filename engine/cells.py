"""Spatial partitions of one very large site: cells, the gateways each cell reads, and
which cell publishes a tag's fix. Sans-IO and columnar, like the rest of the engine.

A site too big for one worker is cut into *cells* (a grid over the site's bounds, or its
zones). Each cell is a partition with its own worker; the worker reads the sightings of
every gateway within ``margin_m`` of the cell (so gateways near a border are read by
every cell they reach: *border gateways*) and localizes every tag it hears. A tag's fix
for window ``w`` is published by exactly one cell, its *owner*:

* the cell that holds the fix's position, if one of that cell's own gateways (its
  *home* gateways: the gateways standing inside it) heard the tag in ``w``;
* otherwise (the fix landed in a cell none of whose gateways heard it) the home cell of
  the gateway that heard it strongest in ``w`` (ties: the lower gateway code).

Why this is exact, and what ``margin_m`` must be: a cell one of whose home gateways heard
the tag reads every gateway that heard it in that window, as long as any two gateways
that hear one tag in one window stand at most ``margin_m`` apart (each is then within
``margin_m`` of the other's cell). Such a cell computes the tag's fix from the same
sightings as one worker for the whole site would, so every cell that can be the owner
computes the same fix and the same owner, and a cell none of whose home gateways heard
the tag can never name itself. So with that margin every (tag, window) is published
once, by one cell, equal to the single-partition fix; the hand-over when a tag crosses
is the first window whose fix lies in the next cell, decided the same way by both. With a
smaller margin a tag heard across more than the margin can be published twice or not at
all, with a fix from part of its sightings: ``max_co_hearing_m`` measures what margin a
traffic sample needs, and docs/scaling.md what a smaller one costs.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import shapely

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from engine.contract import Sightings
    from engine.pipeline import EngineConfig
    from siteplan.schema import Cells

NO_CELL = -1
# A cell's name becomes a subject token and a durable consumer's name on the backbone.
CELL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class CellPlan:
    """The cells of one site and, per gateway code, its home cell and the cells that read it."""

    names: tuple[str, ...]
    polygons: tuple[shapely.Polygon, ...]
    margin_m: float
    gateway_ids: tuple[str, ...]
    home: NDArray[np.int32]  # gateway code -> the cell it stands in
    reads: NDArray[np.bool_]  # (cells, gateways): cell c reads gateway g's batches

    @classmethod
    def from_polygons(cls, config: EngineConfig, names: list[str], polygons: list[shapely.Polygon],
                      margin_m: float) -> CellPlan:
        if not polygons:
            raise ValueError("cells: no cells")
        if len(polygons) > 63:
            raise ValueError(f"cells: {len(polygons)} cells, at most 63 per site")
        if len(set(names)) != len(names):
            raise ValueError(f"cells: names must be unique, got {names}")
        if not margin_m >= 0:
            raise ValueError(f"cells.margin_m: must be >= 0, got {margin_m}")
        for p in polygons:
            shapely.prepare(p)
        xy = np.asarray(config.gateways.xyz[:, :2], float)
        points = shapely.points(xy[:, 0], xy[:, 1])
        dist = np.stack([shapely.distance(p, points) for p in polygons])  # (cells, gateways)
        plan = cls(tuple(names), tuple(polygons), float(margin_m), tuple(config.gateways.ids),
                   np.zeros(0, np.int32), np.zeros((0, 0), bool))
        home = plan.cell_of(xy[:, 0], xy[:, 1])
        reads = dist <= margin_m + 1e-9
        reads[home, np.arange(len(home))] = True
        object.__setattr__(plan, "home", home)
        object.__setattr__(plan, "reads", reads)
        return plan

    @classmethod
    def grid(cls, config: EngineConfig, columns: int, rows: int, margin_m: float) -> CellPlan:
        """``columns`` x ``rows`` equal rectangles over the site's bounds, named ``g<col>-<row>``."""
        if columns < 1 or rows < 1:
            raise ValueError(f"cells.grid: columns and rows must be >= 1, got {columns} x {rows}")
        x0, y0, x1, y1 = config.bounds
        xs, ys = np.linspace(x0, x1, columns + 1), np.linspace(y0, y1, rows + 1)
        names, polys = [], []
        for j in range(rows):
            for i in range(columns):
                names.append(f"g{i}-{j}")
                polys.append(shapely.box(xs[i], ys[j], xs[i + 1], ys[j + 1]))
        return cls.from_polygons(config, names, polys, margin_m)

    @classmethod
    def zones(cls, config: EngineConfig, margin_m: float) -> CellPlan:
        """One cell per zone of the site plan (named as the zone when that is a subject token,
        else ``zone<i>``); a point outside every zone belongs to the nearest zone's cell."""
        z = config.zones
        if len(z) == 0:
            raise ValueError("cells: by = 'zones' needs zones in the site plan")
        names = [n if CELL_NAME.match(n) else f"zone{i}" for i, n in enumerate(z.names)]
        return cls.from_polygons(config, names, list(z.polygons), margin_m)

    def __len__(self) -> int:
        return len(self.names)

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise ValueError(f"no cell {name!r} (cells: {', '.join(self.names)})") from None

    def cell_of(self, x: NDArray[np.floating], y: NDArray[np.floating]) -> NDArray[np.int32]:
        """The cell holding each point (the first listed where cells overlap; the nearest
        cell for a point outside all of them, as a fix can be)."""
        x, y = np.asarray(x, float), np.asarray(y, float)
        out = np.full(x.shape, NO_CELL, np.int32)
        for i in reversed(range(len(self.polygons))):
            out[shapely.intersects_xy(self.polygons[i], x, y)] = i
        outside = (out == NO_CELL) & np.isfinite(x) & np.isfinite(y)
        if outside.any():
            pts = shapely.points(x[outside], y[outside])
            out[outside] = np.argmin(np.stack([shapely.distance(p, pts) for p in self.polygons]), axis=0)
        return out

    def gateways_of(self, cell: int) -> list[str]:
        """The gateways cell ``cell`` reads: its home gateways and the border gateways of its neighbours."""
        return [g for g, r in zip(self.gateway_ids, self.reads[cell], strict=True) if r]

    def border_gateways(self) -> list[str]:
        """Gateways more than one cell reads."""
        return [g for g, n in zip(self.gateway_ids, self.reads.sum(axis=0), strict=True) if n > 1]

    def owners(self, fixes: NDArray[np.void], rows: Sightings, window_s: float, step_s: float) -> NDArray[np.int32]:
        """The owner cell of each fix (device, t = window index x step; x, y), from the
        sightings ``rows`` the deciding worker holds (any superset of the fixes' windows).
        Pure: two workers holding the same sightings of a tag decide the same owner."""
        n = len(fixes)
        out = np.full(n, NO_CELL, np.int32)
        if n == 0:
            return out
        win = np.rint(fixes["t"] / step_s).astype(np.int64)
        r_idx, k = row_windows(rows["t"], window_s, step_s)
        dev = rows["device"][r_idx].astype(np.int64)
        # key each (device, window) pair; only those of the fixes matter
        w0 = int(min(win.min(), k.min() if len(k) else win.min()))
        span = int(max(win.max(), k.max() if len(k) else win.max())) - w0 + 1
        row_key = dev * span + (k - w0)
        fix_key = fixes["device"].astype(np.int64) * span + (win - w0)
        keep = np.isin(row_key, fix_key)
        row_key, r_idx = row_key[keep], r_idx[keep]
        gw = rows["gateway"][r_idx].astype(np.int64)
        rssi = rows["rssi"][r_idx]
        home_bits = np.left_shift(np.int64(1), self.home[gw].astype(np.int64))
        # per key: the OR of its gateways' home cells, and its strongest gateway (rssi desc, code asc)
        order = np.lexsort((gw, -rssi, row_key))
        row_key, gw, home_bits = row_key[order], gw[order], home_bits[order]
        starts = np.flatnonzero(np.r_[True, row_key[1:] != row_key[:-1]]) if len(row_key) else np.zeros(0, int)
        keys = row_key[starts]
        heard = np.bitwise_or.reduceat(home_bits, starts) if len(starts) else np.zeros(0, np.int64)
        strongest_home = self.home[gw[starts]] if len(starts) else np.zeros(0, np.int32)
        pos = np.searchsorted(keys, fix_key)
        found = (pos < len(keys)) & (keys[np.minimum(pos, max(len(keys) - 1, 0))] == fix_key) if len(keys) \
            else np.zeros(n, bool)
        at = self.cell_of(fixes["x"], fixes["y"])
        p = pos[found]
        in_fix_cell = ((heard[p] >> np.maximum(at[found], 0).astype(np.int64)) & 1).astype(bool) & (at[found] >= 0)
        out[found] = np.where(in_fix_cell, at[found], strongest_home[p])
        return out

    def owned_by(self, cell: int, window_s: float, step_s: float
                 ) -> Callable[[NDArray[np.void], Sightings], NDArray[np.bool_]]:
        """The publish filter of cell ``cell``'s worker: (fixes, rows) -> mask of its own fixes."""
        def mask(fixes: NDArray[np.void], rows: Sightings) -> NDArray[np.bool_]:
            return np.asarray(self.owners(fixes, rows, window_s, step_s) == cell)
        return mask


def row_windows(t: NDArray[np.float64], window_s: float, step_s: float) -> tuple[NDArray[np.intp], NDArray[np.int64]]:
    """Every (row, window) pair: window k spans [k*step - window, k*step), as in engine.eventtime."""
    per = int(np.ceil(window_s / step_s))
    base = np.floor(t / step_s + 1e-12).astype(np.int64) + 1
    k = base[:, None] + np.arange(per)[None, :]
    inside = t[:, None] >= k * step_s - window_s
    return np.nonzero(inside)[0], k[inside]


def co_hearing_m(rows: Sightings, gateway_xy: NDArray[np.floating], window_s: float,
                 step_s: float) -> NDArray[np.float64]:
    """Per (device, window) of ``rows``: at least the largest distance between two gateways
    that heard the tag in that window (the diagonal of their bounding box, which bounds it
    from above). Its maximum is a ``margin_m`` with which every cell decides ownership on
    all of a tag's sightings (see the module's docstring)."""
    if len(rows) == 0:
        return np.zeros(0)
    r_idx, k = row_windows(rows["t"], window_s, step_s)
    key = rows["device"][r_idx].astype(np.int64) * (int(k.max()) - int(k.min()) + 1) + (k - k.min())
    gx = np.asarray(gateway_xy, float)[rows["gateway"][r_idx], 0]
    gy = np.asarray(gateway_xy, float)[rows["gateway"][r_idx], 1]
    order = np.argsort(key, kind="stable")
    key, gx, gy = key[order], gx[order], gy[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    dx = np.maximum.reduceat(gx, starts) - np.minimum.reduceat(gx, starts)
    dy = np.maximum.reduceat(gy, starts) - np.minimum.reduceat(gy, starts)
    return np.asarray(np.sqrt(dx * dx + dy * dy))


def max_co_hearing_m(rows: Sightings, gateway_xy: NDArray[np.floating], window_s: float, step_s: float) -> float:
    """The largest :func:`co_hearing_m` of the traffic: the margin that makes cells exact on it."""
    d = co_hearing_m(rows, gateway_xy, window_s, step_s)
    return float(d.max()) if len(d) else 0.0


def border_distance(plan: CellPlan, x: NDArray[np.floating], y: NDArray[np.floating]) -> NDArray[np.float64]:
    """Each point's distance to the nearest cell other than its own (0 on a border)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    own = plan.cell_of(x, y)
    pts = shapely.points(x, y)
    d = np.stack([shapely.distance(p, pts) for p in plan.polygons]).astype(float)
    d[own, np.arange(len(x))] = np.inf
    return np.asarray(d.min(axis=0)) if len(plan) > 1 else np.full(len(x), np.inf)


def plan_cells(config: EngineConfig, settings: Cells) -> CellPlan:
    """The cells a scenario's ``[cells]`` section asks for."""
    if settings.by == "zones":
        return CellPlan.zones(config, settings.margin_m)
    return CellPlan.grid(config, settings.grid[0], settings.grid[1], settings.margin_m)
