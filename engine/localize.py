"""Localizers: turn per-window RSSI matrices into positions, vectorized across tags.

Input is always a (rows, gateways) matrix of mean RSSI with NaN where a gateway did not
hear the tag in that window; output is :class:`Estimates`, (x, y) per row with a 90 %
error radius. Five single-shot estimators live here, all selectable per scenario:

* ``strongest``: the position of the gateway that heard the tag loudest;
* ``centroid``: RSSI-weighted centroid of the strongest gateways;
* ``wls`` (maximum likelihood): nonlinear least squares on the log-distance model,
  optionally with the site plan's wall and rack losses (:class:`ObstacleMap`);
* ``knn``: fingerprinting, the mean of the k nearest fingerprints in signal space;
* ``radio-map``: the posterior over the cells of a probabilistic radio map
  (:class:`RadioMap`), built from the path-loss model or from a calibration walk.

The trackers in :mod:`engine.track` reuse the radio map's likelihood over time.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import shapely
from numpy.typing import NDArray
from scipy.spatial import cKDTree

from engine._newton import (
    compact_rows,
    cost_from_log,
    first_equal_rows,
    gather_rows,
    newton_solve,
    polish_step,
    squared_distances,
)
from radio_models.environment import Grid

FloatArray = NDArray[np.float64]
AnyArray = NDArray[Any]  # float32 or float64

LN10 = np.log(10.0)
# -2 ln(1 - 0.9): the 90 % quantile of a chi-square with 2 degrees of freedom. The 90 %
# error radius of a circular 2-D Gaussian with per-axis variance s^2 is s * sqrt(4.605).
CHI2_2DOF_90 = -2.0 * np.log(0.1)

METHOD_WLS = 0
METHOD_CENTROID = 1
METHOD_STRONGEST = 2
METHOD_KNN = 3
METHOD_RADIO_MAP = 4
METHOD_KALMAN = 5
METHOD_HMM = 6
METHOD_PARTICLE = 7
METHOD_NAMES = ("wls", "centroid", "strongest", "knn", "radio-map", "kalman", "hmm", "particle")

# (rows x heard gateways) cells solved together by the ML estimator: keeps its
# temporaries in cache, which is worth about a factor of five over one pass.
WLS_CHUNK_CELLS = 65536
# Widths the ML estimator's compact rows are padded to: a row heard by m gateways is
# solved with the rows of the smallest width >= m (exact up to 8, where most rows are).
WLS_WIDTHS = (2, 3, 4, 5, 6, 7, 8, 10, 12, 16, 24, 32)
MAX_STEP_M = 5.0  # a Newton step longer than this is shortened (a trust region)
NEWTON_RADIUS_M = 2.0  # Gauss-Newton steps longer than this stay Gauss-Newton
# The float32 loop settles once its Gauss-Newton step is under 5 cm; float64 Newton steps
# up to that length then finish the job (each squares the error).
POLISH_STEP_M = 0.05
POLISH_STEPS = 3
# Rows heard by at most this many gateways are looked up among the rows already solved
# (wls_localize_heard): on the large scenario 41 % of those heard by two and 8 % of those
# heard by three repeat an earlier row exactly, rows heard by more almost never.
REPEAT_MAX_GATEWAYS = 3


@dataclass(frozen=True)
class ObstacleMap:
    """Obstacle loss (dB) from every grid cell to every gateway, shape (cells, gateways)."""

    grid: Grid
    loss: NDArray[np.float32]

    def loss_db(self, xy: FloatArray, cols: NDArray[np.intp] | None = None) -> NDArray[np.float32]:
        """Loss from each point to every gateway (points, gateways), or to the gateways
        ``cols`` (k, points) of each point, shaped like ``cols``."""
        cells = self.grid.cell_index(xy)
        return self.loss[cells] if cols is None else self.loss[cells[None, :], cols]


@dataclass(frozen=True)
class Estimates:
    """Positions for a batch of rows, with uncertainty and how they were made."""

    x: FloatArray
    y: FloatArray
    r90: FloatArray  # radius that should hold the truth 90 % of the time, metres
    n_gateways: NDArray[np.int32]
    method: NDArray[np.int8]

    @classmethod
    def empty(cls) -> Estimates:
        z = np.zeros(0)
        return cls(z, z.copy(), z.copy(), np.zeros(0, np.int32), np.zeros(0, np.int8))

    def take(self, idx: NDArray[np.intp] | NDArray[np.bool_] | slice) -> Estimates:
        return Estimates(self.x[idx], self.y[idx], self.r90[idx], self.n_gateways[idx], self.method[idx])


# 90 % radius of a 2-D Gaussian with axis spreads 1 and rho (rho <= 1), fitted to a
# Monte-Carlo of 2e6 draws at rho = 0, 0.1, ..., 1 (max error 0.005): 1.645 for a line,
# sqrt(chi2_2(0.9)) = 2.146 for a circle.
_R90_POLY = (0.12564623, 0.44121049, -0.06406381, 1.64771269)


def r90_from_cov(var_x: FloatArray, var_y: FloatArray, cov_xy: FloatArray | float = 0.0) -> FloatArray:
    """Radius holding 90 % of a 2-D Gaussian with this covariance: the major axis spread
    times a function of the axis ratio, so long thin ellipses are not under-covered."""
    vx, vy, c = np.asarray(var_x, float), np.asarray(var_y, float), np.asarray(cov_xy, float)
    half = 0.5 * (vx + vy)
    disc = np.sqrt(np.maximum(0.25 * (vx - vy) ** 2 + c * c, 0.0))
    lam1 = np.maximum(half + disc, 0.0)
    lam2 = np.maximum(half - disc, 0.0)
    rho = np.sqrt(lam2 / np.maximum(lam1, 1e-300))
    return np.asarray(np.sqrt(lam1) * np.polyval(_R90_POLY, rho))


def n_heard(rssi: FloatArray) -> NDArray[np.int32]:
    return np.asarray((~np.isnan(rssi)).sum(axis=1), dtype=np.int32)


def strongest_gateway(rssi: FloatArray, gw_xy: FloatArray, r90_m: float) -> Estimates:
    """The position of the gateway that heard each row loudest (proximity, 'cell id').

    Its error is the distance to the nearest gateway, so ``r90_m`` is a property of the
    layout (the 90 % quantile of that distance over the floor), given by the caller.
    """
    rssi = np.asarray(rssi, dtype=float)
    rows = len(rssi)
    best = np.argmax(np.where(np.isnan(rssi), -np.inf, rssi), axis=1) if rows else np.zeros(0, np.intp)
    xy = gw_xy[best] if rows else np.zeros((0, 2))
    return Estimates(
        xy[:, 0].astype(float),
        xy[:, 1].astype(float),
        np.full(rows, float(r90_m)),
        n_heard(rssi),
        np.full(rows, METHOD_STRONGEST, np.int8),
    )


def weighted_centroid(rssi: FloatArray, gw_xy: FloatArray, exponent: float, top_k: int = 4) -> FloatArray:
    """Centroid of the ``top_k`` strongest gateways, weighted by 1/d^2 from the RSSI.

    With RSSI = P0 - 10 n log10 d, 1/d^2 is proportional to 10^(RSSI / (5 n)); P0 cancels.
    ``gw_xy`` is (gateways, 2), or (rows, columns, 2) for rows that carry their own gateways.
    """
    heard = ~np.isnan(rssi)
    filled = np.where(heard, rssi, -np.inf)
    k = min(top_k, rssi.shape[1])
    top = np.argpartition(-filled, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(filled, top, axis=1)
    ref = np.max(vals, axis=1, keepdims=True)
    w = np.where(np.isfinite(vals), 10.0 ** ((vals - ref) / (5.0 * exponent)), 0.0)
    w_sum = np.maximum(w.sum(axis=1, keepdims=True), 1e-300)
    pos = gw_xy[top] if gw_xy.ndim == 2 else np.take_along_axis(gw_xy, top[..., None], axis=1)
    xy = np.einsum("rk,rkc->rc", w, pos) / w_sum
    return np.asarray(xy)


def centroid_localize(rssi: FloatArray, gw_xy: FloatArray, exponent: float, top_k: int = 4) -> Estimates:
    """:func:`weighted_centroid` as an estimator. Its radius is the weighted spread of the
    gateways it averaged (the centroid can only be wrong by about that much), at least 1 m."""
    rssi = np.asarray(rssi, dtype=float)
    rows = len(rssi)
    if rows == 0:
        return Estimates.empty()
    xy = weighted_centroid(rssi, gw_xy, exponent, top_k)
    heard = ~np.isnan(rssi)
    d2 = np.sum((gw_xy[None, :, :] - xy[:, None, :]) ** 2, axis=2)
    ref = np.nanmax(np.where(heard, rssi, np.nan), axis=1, keepdims=True)
    w = np.where(heard, 10.0 ** ((np.where(heard, rssi, -200.0) - ref) / (5.0 * exponent)), 0.0)
    spread = np.sqrt(np.sum(w * d2, axis=1) / np.maximum(w.sum(axis=1), 1e-300))
    return Estimates(
        xy[:, 0],
        xy[:, 1],
        np.maximum(spread, 1.0),
        n_heard(rssi),
        np.full(rows, METHOD_CENTROID, np.int8),
    )


@dataclass(frozen=True)
class HeardRows:
    """Rows of an RSSI matrix kept to the gateways that heard them, for the ML estimator.

    A tag on a large site is heard by a handful of its gateways (about 4 of 54 on the
    large scenario), so the solver works on arrays of those only; a row heard by fewer
    than ``width`` gateways is padded with weight-0 entries, which add exactly nothing
    to any sum. Arrays are (width, rows), so a sum over a row's gateways is a few
    vector additions rather than one short reduction per row. ``cols`` are the gateway
    indices, ascending down each column.
    """

    rssi: FloatArray  # (width, rows), 0 where padded
    weight: FloatArray  # (width, rows), 1 heard, 0 padding
    cols: NDArray[np.intp]  # (width, rows) gateway index

    @classmethod
    def from_matrix(cls, rssi: FloatArray, width: int) -> HeardRows:
        return cls.from_heard(Heard.from_matrix(rssi), np.arange(len(rssi)), width)

    @classmethod
    def from_heard(cls, heard: Heard, rows: NDArray[np.intp], width: int) -> HeardRows:
        """The rows ``rows`` of ``heard``, each padded to ``width``."""
        values, weight, cols = compact_rows(heard.start, heard.counts, heard.col, heard.rssi,
                                            np.asarray(rows, np.intp), width)
        return cls(values, weight, cols)


@dataclass(frozen=True)
class Heard:
    """The heard cells of a (rows, gateways) RSSI matrix, row by row with ascending
    gateways (the order of ``np.nonzero``): what the engine's windows produce directly,
    so the ML estimator never needs the mostly-NaN dense matrix."""

    n_rows: int
    n_gateways: int
    row: NDArray[np.intp]  # (cells,) row of each heard cell, ascending
    col: NDArray[np.intp]  # (cells,) its gateway
    rssi: FloatArray  # (cells,) its mean RSSI

    @classmethod
    def from_matrix(cls, rssi: FloatArray) -> Heard:
        r_i, c_i = np.nonzero(~np.isnan(rssi))
        return cls(rssi.shape[0], rssi.shape[1], r_i, c_i, rssi[r_i, c_i])

    @cached_property
    def counts(self) -> NDArray[np.intp]:
        """Gateways heard by each row."""
        return np.bincount(self.row, minlength=self.n_rows)

    @cached_property
    def start(self) -> NDArray[np.intp]:
        """Index of each row's first cell."""
        return np.cumsum(self.counts) - self.counts

    def matrix(self) -> FloatArray:
        """The dense matrix, NaN where a gateway did not hear the row."""
        out = np.full((self.n_rows, self.n_gateways), np.nan)
        out[self.row, self.col] = self.rssi
        return out


def _wls_widths(n_gateways: int) -> NDArray[np.intp]:
    return np.asarray(sorted({w for w in WLS_WIDTHS if w < n_gateways} | {n_gateways}), np.intp)


@dataclass(frozen=True)
class _Float32Rows:
    """One chunk's compact rows in float32, as (width, rows) for the numpy costs and
    row-major for the compiled loop (which reads a row's gateways together); made once
    (:func:`engine._newton.gather_rows`) and shared by every start."""

    r: AnyArray
    w: AnyArray
    p0: AnyArray
    gws: tuple[AnyArray, AnyArray, AnyArray, NDArray[np.intp]]
    major: tuple[AnyArray, ...]  # r, w, gx, gy, dz2, cols, row-major

    def take(self, idx: NDArray[np.intp]) -> _Float32Rows:
        """The rows ``idx`` only."""
        gx, gy, dz2, cols = self.gws
        return _Float32Rows(self.r[:, idx], self.w[:, idx], self.p0[idx],
                            (gx[:, idx], gy[:, idx], dz2[:, idx], cols[:, idx]),
                            tuple(np.ascontiguousarray(a[idx]) for a in self.major))


def _newton_chunk(
    rows: _Float32Rows,
    x: FloatArray,
    y: FloatArray,
    exponent: float,
    bounds: tuple[float, float, float, float],
    iterations: int,
    wall: ObstacleMap | None,
    cell_edges: bool = False,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Safeguarded Newton iterations on one chunk of rows, in float32
    (:func:`engine._newton.newton_solve`, compiled: the hot loop, inlined on purpose).

    Each iteration evaluates the residuals once and
    takes a Newton step (Gauss-Newton where the Hessian is not positive definite),
    capped at ``MAX_STEP_M`` and projected onto the floor's bounds; rows leave the
    working set once they move less than 1 mm, so the few slow rows near the floor's
    edge do not keep the whole chunk iterating. The cost of the end point is returned
    so callers can compare starts (and fall back to the start if a row got worse).
    """
    f32 = np.float32
    five_n = f32(5.0 * exponent)
    k_slope = f32(10.0 * exponent / LN10)
    loss, grid = _wall_arrays(wall)
    r_m, w_m, gx_m, gy_m, dz2_m, cols_m = rows.major
    x32, y32 = newton_solve(
        r_m, w_m, rows.p0, gx_m, gy_m, dz2_m, cols_m, loss, grid, x.astype(f32), y.astype(f32), five_n,
        k_slope, np.asarray(bounds, dtype=float), iterations, f32(MAX_STEP_M), f32(NEWTON_RADIUS_M),
        cell_edges,
    )
    xo, yo = x32.astype(float), y32.astype(float)
    return xo, yo, _wls_cost(rows.r, rows.w, rows.p0, rows.gws, xo, yo, exponent, wall)


def _wls_cost(
    r: AnyArray,
    w: AnyArray,
    p0: AnyArray,
    gws: tuple[AnyArray, AnyArray, AnyArray, NDArray[np.intp]],
    x: AnyArray,
    y: AnyArray,
    exponent: float,
    wall: ObstacleMap | None,
) -> AnyArray:
    """Sum of squared residuals of each row at (x, y); inf where it is not finite."""
    gx, gy, dz2, cols = gws
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):  # on a gateway at tag height: inf cost
        log_d2 = np.log10(squared_distances(gx, gy, dz2, x, y))
    loss, grid = _wall_arrays(wall)
    return cost_from_log(r, w, p0, log_d2, 5.0 * exponent, x, y, cols, loss, grid)


def _wall_arrays(wall: ObstacleMap | None) -> tuple[NDArray[np.float32], FloatArray]:
    """The obstacle map as the compiled kernels take it: loss (cells, gateways) and the
    grid as (x0, y0, cell, nx, ny); empty without walls."""
    if wall is None:
        return np.zeros((0, 0), np.float32), np.zeros(5)
    g = wall.grid
    return wall.loss, np.array([g.x0, g.y0, g.cell_m, g.nx, g.ny], dtype=float)


def _polish(
    r: FloatArray,
    w: FloatArray,
    p0: FloatArray,
    gws: tuple[FloatArray, FloatArray, FloatArray, NDArray[np.intp]],
    x: FloatArray,
    y: FloatArray,
    exponent: float,
    bounds: tuple[float, float, float, float],
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """A float64 Newton step from (x, y), taken only where the Hessian is positive definite
    and the step is short (the float32 loop has converged to within centimetres); returns
    the new point and the Gauss-Newton sums (J^T J without the slope constant)."""
    minx, miny, maxx, maxy = bounds
    k_slope = 10.0 * exponent / LN10
    gx, gy, dz2, _ = gws
    with np.errstate(invalid="ignore", divide="ignore"):
        d2 = squared_distances(gx, gy, dz2, x, y)
        # On a bound the step pushing outward is dropped and the other coordinate takes
        # its own 1-D Newton step along the bound, as in the float32 loop (the kernel).
        sx, sy, curved, fisher = polish_step(
            r, w, p0, np.log10(d2), d2, gx, gy, 5.0 * exponent, k_slope, x, y, np.asarray(bounds, dtype=float))
        ok = curved & (np.hypot(sx, sy) < POLISH_STEP_M)
    nx = np.where(ok, np.clip(x + np.where(ok, sx, 0.0), minx, maxx), x)
    ny = np.where(ok, np.clip(y + np.where(ok, sy, 0.0), miny, maxy), y)
    return nx, ny, fisher


def _wls_rows(
    rows: HeardRows,
    p0: FloatArray,
    gw_xyz: FloatArray,
    exponent: float,
    tag_z: float,
    bounds: tuple[float, float, float, float],
    iterations: int,
    obstacle_map: ObstacleMap | None,
    cell_edges: bool = False,
    gateway_starts_above: float = 0.0,
    warm: FloatArray | None = None,
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """The ML estimate of one chunk of compact rows: (x, y, Gauss-Newton sums, centroid).
    ``gateway_starts_above`` > 0: the starts after the centroid's run only for rows whose
    best cost so far is above it per heard gateway (dB^2). ``warm`` (rows, 2), NaN where a
    row has none: a row with a warm start tries it after the centroid instead of the two
    strongest gateways."""
    r, w, cols = rows.rssi, rows.weight, rows.cols
    gathered = gather_rows(cols, r, w, np.asarray(gw_xyz, dtype=float), float(tag_z))
    gx, gy, dz2, gw_plane, r32, w32, gx32, gy32, dz2_32 = gathered[:9]
    major = gathered[9:]
    gws = (gx, gy, dz2, cols)
    filled = np.where(w > 0, r, -np.inf).T
    xy0 = weighted_centroid(filled, gw_plane, exponent)
    gateway_starts = obstacle_map is not None and r.shape[0] > 1
    gated = gateway_starts and gateway_starts_above > 0
    warmed = gateway_starts and not gated and warm is not None
    # Each start: its points, for all rows (None) or for the rows given.
    starts: list[tuple[FloatArray, NDArray[np.intp] | None]] = [(xy0, None)]
    if gateway_starts and not gated:
        strongest = np.take_along_axis(cols.T, np.argsort(-filled, axis=1)[:, :2], axis=1)
        gw_starts = [gw_xyz[strongest[:, j], :2] + 0.5 for j in range(2)]
        starts += [(gw_starts[0], None), (gw_starts[1], None)]
        if warmed:
            # A row with a warm start tries it after the centroid's instead of the strongest
            # gateways' two; a row without one tries the same starts as ever, in the same
            # order. (The warm start alone, without the centroid's, was less accurate on
            # the demo and lost more misplaced incidents: docs/scaling.md.)
            assert warm is not None
            has = np.isfinite(warm[:, 0]) & np.isfinite(warm[:, 1])
            cold = np.flatnonzero(~has)
            starts = [(xy0, None), (np.where(has[:, None], warm, gw_starts[0]), None), (gw_starts[1][cold], cold)]
    # The start itself is a candidate: a row whose iterations made it worse keeps it.
    bx, by = xy0[:, 0].copy(), xy0[:, 1].copy()
    best = _wls_cost(r, w, p0, gws, bx, by, exponent, obstacle_map)
    rows32 = _Float32Rows(r32, w32, p0.astype(np.float32), (gx32, gy32, dz2_32, cols), major)
    for start, only in starts:
        if only is None:
            sx, sy, c = _newton_chunk(
                rows32, start[:, 0].copy(), start[:, 1].copy(), exponent, bounds, iterations, obstacle_map,
                cell_edges,
            )
            take = c < best
            bx, by, best = np.where(take, sx, bx), np.where(take, sy, by), np.where(take, c, best)
        elif len(only):
            sx, sy, c = _newton_chunk(
                rows32.take(only), start[:, 0].copy(), start[:, 1].copy(), exponent, bounds, iterations,
                obstacle_map, cell_edges,
            )
            take = c < best[only]
            bx[only], by[only] = np.where(take, sx, bx[only]), np.where(take, sy, by[only])
            best[only] = np.where(take, c, best[only])
    if gated:
        # Only rows the centroid's start left with a poor fit try the strongest gateways'
        # starts (each row's gateways sorted on its own: the same starts as ungated).
        bar = gateway_starts_above * w.sum(axis=0)
        poor = np.flatnonzero(best > bar)
        strongest = np.take_along_axis(cols.T[poor], np.argsort(-filled[poor], axis=1)[:, :2], axis=1)
        for j in range(2):
            still = best[poor] > bar[poor]
            poor, strongest = poor[still], strongest[still]
            start = gw_xyz[strongest[:, j], :2] + 0.5
            sx, sy, c = _newton_chunk(
                rows32.take(poor), start[:, 0], start[:, 1], exponent, bounds, iterations, obstacle_map, cell_edges,
            )
            take = c < best[poor]
            bx[poor], by[poor] = np.where(take, sx, bx[poor]), np.where(take, sy, by[poor])
            best[poor] = np.where(take, c, best[poor])
    # Newton steps in float64 polish the float32 solution to full precision (so the
    # answer does not depend on gateway order through float32 rounding: the loop stops
    # within POLISH_STEP_M of the minimum, quadratic convergence does the rest), and the
    # last one's Gauss-Newton matrix is the Fisher information at the estimate.
    x_in, y_in = bx, by
    bx, by, fisher = _polish(r, w, p0, gws, bx, by, exponent, bounds)
    for _ in range(POLISH_STEPS - 1):
        # A step is a function of the row and its point alone: a row the last step left
        # where it was would come out of this one the same, so only the moved rows go on.
        moved = np.flatnonzero((bx != x_in) | (by != y_in))
        if len(moved) == 0:
            break
        x_in, y_in = bx.copy(), by.copy()
        sub = (gws[0][:, moved], gws[1][:, moved], gws[2][:, moved], gws[3][:, moved])
        mx, my, mf = _polish(r[:, moved], w[:, moved], p0[moved], sub, bx[moved], by[moved], exponent, bounds)
        bx[moved], by[moved], fisher[moved] = mx, my, mf
    return bx, by, fisher, xy0


def _starts(counts: NDArray[np.intp]) -> NDArray[np.intp]:
    """Index of each row's first cell, rows laid end to end."""
    return np.cumsum(counts) - counts


def _cells_of(counts: NDArray[np.intp], rows: NDArray[np.intp]) -> NDArray[np.intp]:
    """The cells of ``rows``, rows laid end to end by ``counts``, in row order."""
    n = counts[rows]
    return np.repeat(_starts(counts)[rows], n) + (np.arange(int(n.sum())) - np.repeat(_starts(n), n))


@dataclass
class SolvedRows:
    """Rows the ML estimator solved in its last call, by content (heard gateways, the bits
    of their RSSI means and of P0), with their answers: :func:`wls_localize_heard` gives a
    later row equal to one of them its answer without solving it. An engine keeps one per
    estimator setting (the answers depend on them)."""

    counts: NDArray[np.intp]
    col: NDArray[np.intp]
    rssi_bits: NDArray[np.int64]
    p0_bits: NDArray[np.int64]
    x: FloatArray
    y: FloatArray
    fisher: FloatArray
    xy0: FloatArray

    @classmethod
    def empty(cls) -> SolvedRows:
        z = np.zeros(0, np.intp)
        b = np.zeros(0, np.int64)
        return cls(z, z.copy(), b, b.copy(), np.zeros(0), np.zeros(0), np.zeros((0, 3)), np.zeros((0, 2)))

    def keep(
        self, hit: NDArray[np.intp], rows: NDArray[np.intp], counts: NDArray[np.intp], col: NDArray[np.intp],
        rssi_bits: NDArray[np.int64], p0_bits: NDArray[np.int64], x: FloatArray, y: FloatArray,
        fisher: FloatArray, xy0: FloatArray,
    ) -> None:
        """Become the rows ``hit`` of these that a call used, then the rows ``rows`` it
        solved (of cells ``col``, ``rssi_bits`` laid out by ``counts``)."""
        old_cells = _cells_of(self.counts, hit)
        take = _cells_of(counts, rows)
        self.counts = np.r_[self.counts[hit], counts[rows]]
        self.col = np.r_[self.col[old_cells], col[take]]
        self.rssi_bits = np.r_[self.rssi_bits[old_cells], rssi_bits[take]]
        self.p0_bits = np.r_[self.p0_bits[hit], p0_bits[rows]]
        self.x, self.y = np.r_[self.x[hit], x[rows]], np.r_[self.y[hit], y[rows]]
        self.fisher = np.concatenate([self.fisher[hit], fisher[rows]])
        self.xy0 = np.concatenate([self.xy0[hit], xy0[rows]])


def wls_localize(
    rssi: FloatArray,
    gw_xyz: FloatArray,
    tx_power_1m_dbm: FloatArray,
    exponent: float,
    sigma_db: float,
    tag_z: float,
    bounds: tuple[float, float, float, float],
    min_gateways: int = 3,
    iterations: int = 20,
    obstacle_map: ObstacleMap | None = None,
    cell_edges: bool = False,
    gateway_starts_above: float = 0.0,
) -> Estimates:
    """Maximum-likelihood position under log-distance path loss with Gaussian dB noise.

    Minimises sum_i (RSSI_i - P0 + 10 n log10 d_i)^2 over (x, y) by safeguarded Newton
    iterations, all rows at once in cache-sized chunks, each row over the gateways that
    heard it (:class:`HeardRows`). Rows heard by fewer than ``min_gateways`` gateways get
    the weighted centroid with a wide radius instead (one gateway: the site's diagonal,
    since one distance says nothing about direction). The covariance is
    sigma^2 (J^T J)^-1 at the solution (the Fisher information of Patwari et al. 2003
    evaluated at the estimate).

    With an ``obstacle_map`` the predicted RSSI also subtracts the walls and racks
    between each candidate position and each gateway (COST 231 multi-wall). That term is
    piecewise constant, so it enters the cost but not the Jacobian, and the search
    starts from several points (the centroid and the strongest gateways) to step across
    its discontinuities; the best end point wins. ``cell_edges`` (off by default) lets the
    Newton loop jump to the edge of an obstacle cell and slide along it instead of creeping
    towards it (:func:`engine._newton.newton_rows`); ``gateway_starts_above`` > 0 (dB^2 per
    heard gateway; 0 by default) runs the gateways' starts only for rows whose centroid
    start ended with a worse fit than that. Both change positions (docs/scaling.md).

    Every row's answer depends on that row alone (sums over a row's gateways are added in
    gateway order, never blocked by numpy across rows), so any split of the
    rows, into chunks here or into device partitions (engine.parallel), gives the same bytes.
    """
    return wls_localize_heard(
        Heard.from_matrix(np.asarray(rssi, dtype=float)), gw_xyz, tx_power_1m_dbm, exponent, sigma_db,
        tag_z, bounds, min_gateways, iterations, obstacle_map, cell_edges, gateway_starts_above,
    )


def wls_localize_heard(
    heard: Heard,
    gw_xyz: FloatArray,
    tx_power_1m_dbm: FloatArray,
    exponent: float,
    sigma_db: float,
    tag_z: float,
    bounds: tuple[float, float, float, float],
    min_gateways: int = 3,
    iterations: int = 20,
    obstacle_map: ObstacleMap | None = None,
    cell_edges: bool = False,
    gateway_starts_above: float = 0.0,
    warm_xy: FloatArray | None = None,
    solved: SolvedRows | None = None,
) -> Estimates:
    """:func:`wls_localize` of the rows given by their heard cells. ``warm_xy`` (rows, 2),
    NaN where a row has none: warm starts that replace the strongest gateways' starts
    (``EngineConfig.wls_warm_start``; changes positions). ``solved``: the rows of the last
    call with the same settings and their answers, which rows equal to them take (and
    which this call replaces with its own)."""
    rows, n_gw = heard.n_rows, heard.n_gateways
    counts = heard.counts
    row_start = heard.start
    n_rows_heard = counts.astype(np.int32)
    p0_all = np.broadcast_to(np.asarray(tx_power_1m_dbm, dtype=float), (rows,))
    minx, miny, maxx, maxy = bounds
    k_slope = 10.0 * exponent / LN10
    x, y, xy0 = np.zeros(rows), np.zeros(rows), np.zeros((rows, 2))
    fisher = np.zeros((rows, 3))  # (J^T J)_xx, _yy, _xy per row, filled chunk by chunk
    widths = _wls_widths(n_gw)
    width_of = widths[np.minimum(np.searchsorted(widths, n_rows_heard), len(widths) - 1)]
    # One heard gateway: the centroid is the gateway, and no iteration can place the tag.
    solve = n_rows_heard >= 2
    one = n_rows_heard == 1
    if one.any():
        xy0[one] = gw_xyz[heard.col[row_start[one]], :2]
    # Rows with the same heard gateways, RSSI means and P0 as an earlier row, of this call
    # or in ``solved`` (a still tag heard by the same two gateways in consecutive windows:
    # RSSI readings are whole dB) have that row's answer, bit for bit (each row's depends
    # on that row alone): they are solved once. Not with warm starts (a row's own).
    rssi_bits = np.ascontiguousarray(heard.rssi, np.float64).view(np.int64)
    p0_bits = np.ascontiguousarray(p0_all).view(np.int64)
    lookup = solve & (n_rows_heard <= REPEAT_MAX_GATEWAYS)
    memo = solved if warm_xy is None else None
    before = SolvedRows.empty() if memo is None else memo
    m = len(before.counts)
    same = np.arange(rows)  # each row's first equal row; negative: a row of ``before``
    if warm_xy is None:
        all_counts = np.r_[before.counts, counts]
        same = first_equal_rows(_starts(all_counts), all_counts, np.r_[before.col, heard.col],
                                np.r_[before.rssi_bits, rssi_bits], np.r_[before.p0_bits, p0_bits],
                                np.r_[np.ones(m, bool), lookup])[m:] - m
    own = same == np.arange(rows)
    order = np.flatnonzero(solve & own)
    order = order[np.argsort(width_of[order], kind="stable")]
    jobs: list[tuple[NDArray[np.intp], int]] = []
    for width in np.unique(width_of[order]):
        idx = order[width_of[order] == width]
        step = max(1, WLS_CHUNK_CELLS // int(width))
        jobs += [(idx[lo : lo + step], int(width)) for lo in range(0, len(idx), step)]

    def run(job: tuple[NDArray[np.intp], int]) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
        idx, width = job
        compact = HeardRows.from_heard(heard, idx, width)
        return _wls_rows(compact, p0_all[idx], gw_xyz, exponent, tag_z, bounds, iterations, obstacle_map,
                         cell_edges, gateway_starts_above, None if warm_xy is None else warm_xy[idx])

    for (idx, _), (bx, by, fi, c0) in zip(jobs, map(run, jobs), strict=True):
        x[idx], y[idx], fisher[idx], xy0[idx] = bx, by, fi, c0
    inside = np.flatnonzero(solve & ~own & (same >= 0))  # equal to a row solved above
    src = same[inside]
    x[inside], y[inside], fisher[inside], xy0[inside] = x[src], y[src], fisher[src], xy0[src]
    kept = np.flatnonzero(solve & (same < 0))  # equal to a row of the last call
    at = same[kept] + m
    x[kept], y[kept], fisher[kept], xy0[kept] = before.x[at], before.y[at], before.fisher[at], before.xy0[at]
    if memo is not None:
        memo.keep(np.unique(at), np.flatnonzero(lookup & own), counts, heard.col, rssi_bits, p0_bits, x, y, fisher,
                  xy0)

    a11 = k_slope**2 * fisher[:, 0] + 1e-9
    a22 = k_slope**2 * fisher[:, 1] + 1e-9
    a12 = k_slope**2 * fisher[:, 2]
    det = np.maximum(a11 * a22 - a12 * a12, 1e-12)
    r90 = r90_from_cov(sigma_db**2 * a22 / det, sigma_db**2 * a11 / det, -(sigma_db**2) * a12 / det)

    method = np.full(rows, METHOD_WLS, dtype=np.int8)
    diag = float(np.hypot(maxx - minx, maxy - miny))
    few = n_rows_heard < min_gateways
    if few.any():
        x[few], y[few] = xy0[few, 0], xy0[few, 1]
        method[few] = METHOD_CENTROID
        # With one or two gateways the tag is somewhere in their range: say so.
        r90[few] = np.maximum(r90[few], 10.0)
    r90[~solve] = diag
    return Estimates(x, y, np.minimum(r90, diag), n_rows_heard, method)


@dataclass(frozen=True)
class PathLossFit:
    """Log-distance parameters fitted to a calibration walk: RSSI = p0 + offset_g - 10 n log10 d."""

    p0_dbm: float
    gateway_offset_db: FloatArray
    exponent: float
    sigma_db: float


def fit_path_loss(xy: FloatArray, rssi: FloatArray, gw_xyz: FloatArray, tag_z: float) -> PathLossFit:
    """Least-squares fit of a common exponent and per-gateway 1 m power to surveyed RSSI
    (the usual site calibration of the log-distance model, Rappaport eq. 4.68): one
    linear solve over every heard (point, gateway) pair."""
    heard = ~np.isnan(rssi)
    d2 = np.sum((xy[:, None, :] - gw_xyz[None, :, :2]) ** 2, axis=2) + (gw_xyz[None, :, 2] - tag_z) ** 2
    pt, g = np.nonzero(heard)
    n_gw = rssi.shape[1]
    a = np.zeros((len(pt), n_gw + 1))
    a[np.arange(len(pt)), g] = 1.0
    a[:, n_gw] = -5.0 * np.log10(np.maximum(d2[pt, g], 0.01))  # coefficient of n
    sol, *_ = np.linalg.lstsq(a, rssi[pt, g], rcond=None)
    p0 = sol[:n_gw]
    resid = rssi[pt, g] - a @ sol
    return PathLossFit(float(np.mean(p0)), p0 - np.mean(p0), float(sol[n_gw]), float(np.std(resid)))


# -- fingerprinting ------------------------------------------------------------------


def knn_localize(
    rssi: FloatArray,
    fp_xy: FloatArray,
    fp_rssi: FloatArray,
    k: int = 10,
    floor_dbm: float = -100.0,
    min_r90_m: float = 0.5,
) -> Estimates:
    """k-nearest-neighbour fingerprinting: the mean position of the ``k`` fingerprints
    closest in signal space (Euclidean in dBm, unheard gateways at ``floor_dbm``), as in
    RADAR (Bahl & Padmanabhan, INFOCOM 2000). The radius is the 90 % quantile of the
    neighbours' distances from their mean, at least ``min_r90_m`` (see :func:`knn_r90`)."""
    rssi = np.asarray(rssi, dtype=float)
    rows = len(rssi)
    if rows == 0:
        return Estimates.empty()
    q = np.where(np.isnan(rssi), floor_dbm, rssi)
    ref = np.where(np.isnan(fp_rssi), floor_dbm, fp_rssi)
    k = min(k, len(ref))
    _, idx = cKDTree(ref).query(q, k=k)
    idx = np.asarray(idx).reshape(rows, k)
    pts = fp_xy[idx]  # (rows, k, 2)
    xy = pts.mean(axis=1)
    spread = np.quantile(np.hypot(*(pts - xy[:, None, :]).transpose(2, 0, 1)), 0.9, axis=1)
    return Estimates(
        xy[:, 0],
        xy[:, 1],
        np.maximum(spread, min_r90_m),
        n_heard(rssi),
        np.full(rows, METHOD_KNN, np.int8),
    )


def knn_r90(
    fp_xy: FloatArray,
    fp_rssi: FloatArray,
    sigma_db: float,
    k: int,
    floor_dbm: float,
    rng: np.random.Generator,
    samples: int = 1000,
) -> float:
    """The 90 % error of kNN on its own database: fingerprints drawn at random, disturbed
    by N(0, sigma^2) dB, located against the whole database. kNN has no likelihood to
    read an uncertainty from, so this one number, a property of the map and its noise,
    is its floor radius (as the nearest-gateway distance is for ``strongest``)."""
    pick = rng.choice(len(fp_xy), size=min(samples, len(fp_xy)), replace=False)
    base = np.where(np.isnan(fp_rssi[pick]), floor_dbm, fp_rssi[pick])
    noisy = np.maximum(base + rng.normal(0.0, sigma_db, base.shape), floor_dbm)
    est = knn_localize(noisy, fp_xy, fp_rssi, k, floor_dbm)
    err = np.hypot(est.x - fp_xy[pick, 0], est.y - fp_xy[pick, 1])
    return float(np.quantile(err, 0.9))


@dataclass(frozen=True)
class RadioMap:
    """A probabilistic radio map: mean RSSI of every gateway at every cell of a grid,
    with a per-gateway spread, and which cells a tag can occupy.

    The likelihood of a row of RSSI at cell c is a product of Gaussians in dB,
    N(rssi_g; mean[c, g], sigma_g^2), over the gateways that heard the tag (Roos et al.,
    "A probabilistic approach to WLAN user location estimation", IJWIN 9(3), 2002).
    With ``floor_dbm`` set, unheard gateways count as heard at the floor (so a map
    that says "loud here" is penalised when the gateway stays silent), as the
    Kolakowski baseline does; without it they are ignored.

    Maps come from the path-loss model (:meth:`from_model`, what the twin knows) or from
    a calibration walk (:meth:`from_survey`, what a site measured).
    """

    grid: Grid
    free: NDArray[np.bool_]  # (cells,) True where a tag can be
    mean_dbm: NDArray[np.float32]  # (cells, gateways)
    sigma_db: FloatArray  # (gateways,)
    floor_dbm: float | None = None
    tx_ref_dbm: float = -59.0  # tag power the map was made for; other tags are shifted
    # Trackers widen sigma by this factor: successive windows of one tag share their
    # errors (the same furniture, the same shadowing), so treating them as independent
    # would make a filter overconfident by about this much.
    track_inflation: float = 1.0
    # Share of reports a gateway loses at any level (a site's calibrated
    # radio.report.miss_probability). With a floor, an unheard gateway then costs a cell
    # at most -log(miss_probability): "not heard" is either "too far" or a lost report,
    # and log(p + (1 - p) g) >= max(log p, log g). 0: the floor's full Gaussian penalty.
    miss_probability: float = 0.0

    @property
    def free_index(self) -> NDArray[np.intp]:
        return np.flatnonzero(self.free)

    @property
    def free_xy(self) -> FloatArray:
        return self.grid.centres()[self.free]

    @classmethod
    def from_model(
        cls,
        grid: Grid,
        free: NDArray[np.bool_],
        gw_xyz: FloatArray,
        exponent: float,
        sigma_db: float,
        tag_z: float,
        tx_ref_dbm: float = -59.0,
        obstacle_map: ObstacleMap | None = None,
        track_inflation: float = 1.0,
    ) -> RadioMap:
        """Predicted mean RSSI from log-distance path loss (Rappaport eq. 4.68) minus the
        site plan's wall and rack losses (COST 231 multi-wall) where given."""
        cen = grid.centres()
        d2 = np.sum((cen[:, None, :] - gw_xyz[None, :, :2]) ** 2, axis=2) + (gw_xyz[None, :, 2] - tag_z) ** 2
        mean = tx_ref_dbm - 5.0 * exponent * np.log10(np.maximum(d2, 0.01))
        if obstacle_map is not None:
            mean = mean - obstacle_map.loss
        return cls(
            grid,
            np.asarray(free, bool),
            mean.astype(np.float32),
            np.full(len(gw_xyz), float(sigma_db)),
            None,
            tx_ref_dbm,
            track_inflation,
        )

    @classmethod
    def from_survey(
        cls,
        xy: FloatArray,
        rssi: FloatArray,
        cell_m: float = 0.2,
        bandwidth_m: float = 0.5,
        floor_dbm: float | None = -100.0,
        reach_m: float = 0.35,
        outline: shapely.Geometry | None = None,
        track_inflation: float = 2.5,
        tx_ref_dbm: float = -59.0,
    ) -> RadioMap:
        """A map from a calibration walk: Gaussian-kernel (Nadaraya-Watson) means of the
        surveyed RSSI around each cell. Cells farther than ``reach_m`` from any survey
        point (or outside ``outline``) are not free: the walk shows where a tag can be.

        The spread per gateway is the residual of the survey against its own map;
        trackers widen it by ``track_inflation`` because consecutive readings of a tag are
        correlated (see docs/localization.md, calibrating a site).
        """
        xy = np.asarray(xy, dtype=float)
        rssi = np.asarray(rssi, dtype=float)
        lo = xy.min(axis=0) - reach_m
        hi = xy.max(axis=0) + reach_m
        if outline is not None:
            bx0, by0, bx1, by1 = outline.bounds
            lo, hi = np.maximum(lo, [bx0, by0]), np.minimum(hi, [bx1, by1])
        grid = Grid.covering((float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])), cell_m)
        cen = grid.centres()
        tree = cKDTree(xy)
        near, _ = tree.query(cen, distance_upper_bound=reach_m)
        free = np.isfinite(near)
        if outline is not None:
            free &= shapely.contains_xy(outline, cen[:, 0], cen[:, 1])
        heard = ~np.isnan(rssi)
        values = np.where(heard, rssi, 0.0 if floor_dbm is None else floor_dbm)
        counts = heard.astype(float) if floor_dbm is None else np.ones_like(values)
        mean = np.full((len(cen), rssi.shape[1]), np.nan)
        # Sparse kernel sums: only survey points within 3 bandwidths of a cell count.
        pairs = tree.query_ball_point(cen, 3.0 * bandwidth_m, return_sorted=False)
        lens = np.fromiter((len(p) for p in pairs), dtype=np.intp, count=len(pairs))
        cell_of = np.repeat(np.arange(len(cen)), lens)
        pt = np.fromiter((i for p in pairs for i in p), dtype=np.intp, count=int(lens.sum()))
        kw = np.exp(-0.5 * np.sum((xy[pt] - cen[cell_of]) ** 2, axis=1) / bandwidth_m**2)
        num = np.zeros_like(mean)
        den = np.zeros_like(mean)
        for g in range(rssi.shape[1]):
            num[:, g] = np.bincount(cell_of, weights=kw * values[pt, g], minlength=len(cen))
            den[:, g] = np.bincount(cell_of, weights=kw * counts[pt, g], minlength=len(cen))
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = num / den
        fallback = -100.0 if floor_dbm is None else floor_dbm
        mean = np.where(np.isfinite(mean), mean, fallback)
        # The spread is measured on heard readings only: floor fills are a convention,
        # not a measurement, and would inflate it.
        resid = np.where(heard, rssi - mean[grid.cell_index(xy)], np.nan)
        sigma = np.maximum(np.nanstd(resid, axis=0), 1.0)
        return cls(grid, free, mean.astype(np.float32), sigma, floor_dbm, tx_ref_dbm, track_inflation)

    def prepare(
        self, rssi: FloatArray, tx_power_dbm: FloatArray | float | None = None
    ) -> tuple[FloatArray, FloatArray]:
        """(values, weights) of each row for the likelihood: the floor stands in for
        unheard gateways when the map has one, else their weight is zero; rows from tags
        with another power are shifted onto the map's reference."""
        rssi = np.asarray(rssi, dtype=float)
        heard = ~np.isnan(rssi)
        shift = 0.0 if tx_power_dbm is None else (self.tx_ref_dbm - np.asarray(tx_power_dbm, dtype=float))
        shifted = rssi + (np.asarray(shift)[:, None] if np.ndim(shift) else shift)
        if self.floor_dbm is not None:
            return np.where(heard, shifted, self.floor_dbm), np.ones_like(rssi)
        return np.where(heard, shifted, 0.0), heard.astype(float)

    def log_likelihood(
        self,
        values: FloatArray,
        weights: FloatArray,
        cells: NDArray[np.intp],
        inflate: float = 1.0,
    ) -> FloatArray:
        """log p(row | cell) up to a constant per row, shape (rows, len(cells)).

        sum_g w_g (v_g - m_cg)^2 / s_g^2 expands into two matrix products, so the whole
        (rows x cells x gateways) sum runs in BLAS.
        """
        m = self.mean_dbm[cells].astype(float)  # (cells, G)
        inv = 1.0 / (self.sigma_db * inflate) ** 2
        unheard = None
        if self.floor_dbm is not None and self.miss_probability > 0:
            unheard = (weights > 0) & (values == self.floor_dbm)
            weights = np.where(unheard, 0.0, weights)
        wv = weights * values * inv
        quad = (weights * inv) @ (m * m).T - 2.0 * wv @ m.T + np.sum(wv * values, axis=1, keepdims=True)
        if unheard is not None:  # the same capped penalty for every row: one more product
            penalty = np.minimum((self.floor_dbm - m) ** 2 * inv, self.miss_cap)  # (cells, G)
            quad += unheard.astype(float) @ penalty.T
        return np.asarray(-0.5 * quad)

    @property
    def miss_cap(self) -> float:
        """The largest -2 log-likelihood an unheard gateway can cost a cell."""
        return float(-2.0 * np.log(self.miss_probability)) if self.miss_probability > 0 else np.inf


def posterior_estimates(
    post: FloatArray, xy: FloatArray, n_gw: NDArray[np.int32], method: int, cell_m: float = 0.0
) -> Estimates:
    """Mean and 90 % radius of normalised cell posteriors ``post`` (rows, cells) over
    cell centres ``xy``. The radius adds the cell's own spread (cell^2 / 12 per axis)."""
    mx = post @ xy[:, 0]
    my = post @ xy[:, 1]
    cell_var = cell_m**2 / 12.0
    vx = np.maximum(post @ (xy[:, 0] ** 2) - mx**2, 0.0) + cell_var
    vy = np.maximum(post @ (xy[:, 1] ** 2) - my**2, 0.0) + cell_var
    cxy = post @ (xy[:, 0] * xy[:, 1]) - mx * my
    return Estimates(mx, my, r90_from_cov(vx, vy, cxy), n_gw, np.full(len(mx), method, np.int8))


def normalise_log(ll: FloatArray) -> FloatArray:
    p = np.exp(ll - ll.max(axis=1, keepdims=True))
    return np.asarray(p / p.sum(axis=1, keepdims=True))


def radio_map_localize(
    rssi: FloatArray,
    radio_map: RadioMap,
    tx_power_dbm: FloatArray | float | None = None,
    chunk_rows: int = 1024,
) -> Estimates:
    """Bayesian single-shot fix: the posterior mean over the map's free cells with a flat
    prior, and the 90 % radius of that posterior."""
    rssi = np.asarray(rssi, dtype=float)
    rows = len(rssi)
    if rows == 0:
        return Estimates.empty()
    cells = radio_map.free_index
    xy = radio_map.grid.centres()[cells]
    values, weights = radio_map.prepare(rssi, tx_power_dbm)
    parts = []
    for lo in range(0, rows, chunk_rows):
        sl = slice(lo, lo + chunk_rows)
        post = normalise_log(radio_map.log_likelihood(values[sl], weights[sl], cells))
        parts.append(posterior_estimates(post, xy, n_heard(rssi[sl]), METHOD_RADIO_MAP, radio_map.grid.cell_m))
    return Estimates(
        *(np.concatenate([getattr(p, f) for p in parts]) for f in ("x", "y", "r90", "n_gateways", "method"))
    )
