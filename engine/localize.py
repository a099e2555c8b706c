"""Localizers: turn per-window RSSI matrices into positions, vectorized across tags.

Input is always a (rows, gateways) matrix of mean RSSI with NaN where a gateway did not
hear the tag in that window; output is (x, y) per row with an uncertainty.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from radio_models.environment import Grid

FloatArray = NDArray[np.float64]

LN10 = np.log(10.0)
# -2 ln(1 - 0.9): the 90 % quantile of a chi-square with 2 degrees of freedom. The 90 %
# error radius of a circular 2-D Gaussian with per-axis variance s^2 is s * sqrt(4.605).
CHI2_2DOF_90 = -2.0 * np.log(0.1)

METHOD_WLS = 0
METHOD_CENTROID = 1


@dataclass(frozen=True)
class ObstacleMap:
    """Obstacle loss (dB) from every grid cell to every gateway, shape (cells, gateways)."""

    grid: Grid
    loss: NDArray[np.float32]

    def loss_db(self, xy: FloatArray) -> NDArray[np.float32]:
        return self.loss[self.grid.cell_index(xy)]


@dataclass(frozen=True)
class Estimates:
    """Positions for a batch of rows, with uncertainty and how they were made."""

    x: FloatArray
    y: FloatArray
    r90: FloatArray  # radius that should hold the truth 90 % of the time, metres
    n_gateways: NDArray[np.int32]
    method: NDArray[np.int8]


def weighted_centroid(rssi: FloatArray, gw_xy: FloatArray, exponent: float, top_k: int = 4) -> FloatArray:
    """Centroid of the ``top_k`` strongest gateways, weighted by 1/d^2 from the RSSI.

    With RSSI = P0 - 10 n log10 d, 1/d^2 is proportional to 10^(RSSI / (5 n)); P0 cancels.
    """
    heard = ~np.isnan(rssi)
    filled = np.where(heard, rssi, -np.inf)
    k = min(top_k, rssi.shape[1])
    top = np.argpartition(-filled, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(filled, top, axis=1)
    ref = np.max(vals, axis=1, keepdims=True)
    w = np.where(np.isfinite(vals), 10.0 ** ((vals - ref) / (5.0 * exponent)), 0.0)
    w_sum = np.maximum(w.sum(axis=1, keepdims=True), 1e-300)
    xy = np.einsum("rk,rkc->rc", w, gw_xy[top]) / w_sum
    return np.asarray(xy)


def wls_localize(
    rssi: FloatArray,
    gw_xyz: FloatArray,
    tx_power_1m_dbm: FloatArray,
    exponent: float,
    sigma_db: float,
    tag_z: float,
    bounds: tuple[float, float, float, float],
    min_gateways: int = 3,
    iterations: int = 25,
    obstacle_map: ObstacleMap | None = None,
) -> Estimates:
    """Maximum-likelihood position under log-distance path loss with Gaussian dB noise.

    Minimises sum_i (RSSI_i - P0 + 10 n log10 d_i)^2 over (x, y) by Levenberg-Marquardt,
    all rows at once (each row has its own damping). Rows heard by fewer than
    ``min_gateways`` gateways get the weighted centroid with a wide radius instead.
    The covariance is sigma^2 (J^T J)^-1 at the solution (the Fisher information of
    Patwari et al. 2003 evaluated at the estimate).

    With an ``obstacle_map`` the predicted RSSI also subtracts the walls and racks
    between each candidate position and each gateway (COST 231 multi-wall). That term is
    piecewise constant, so it enters the cost but not the Jacobian, and the search
    starts from several points (the centroid and the strongest gateways) to step across
    its discontinuities; the best end point wins.
    """
    rssi = np.asarray(rssi, dtype=float)
    rows, _ = rssi.shape
    heard = ~np.isnan(rssi)
    n_heard = heard.sum(axis=1).astype(np.int32)
    w = heard.astype(float)
    r = np.where(heard, rssi, 0.0)
    p0 = np.broadcast_to(np.asarray(tx_power_1m_dbm, dtype=float), (rows,))[:, None]
    gx, gy = gw_xyz[None, :, 0], gw_xyz[None, :, 1]
    dz2 = (gw_xyz[None, :, 2] - tag_z) ** 2
    minx, miny, maxx, maxy = bounds
    k_slope = 10.0 * exponent / LN10

    def wall_loss(x: FloatArray, y: FloatArray) -> FloatArray | float:
        if obstacle_map is None:
            return 0.0
        return obstacle_map.loss_db(np.column_stack([x, y])).astype(float)

    def cost_of(x: FloatArray, y: FloatArray) -> FloatArray:
        d2 = (x[:, None] - gx) ** 2 + (y[:, None] - gy) ** 2 + dz2
        res = r - (p0 - 5.0 * exponent * np.log10(d2) - wall_loss(x, y))
        return np.asarray(np.sum(w * res * res, axis=1))

    def levenberg_marquardt(x: FloatArray, y: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
        lam = np.full(rows, 1e-2)
        cost = cost_of(x, y)
        for _ in range(iterations):
            dx, dy = x[:, None] - gx, y[:, None] - gy
            d2 = dx * dx + dy * dy + dz2
            res = r - (p0 - 5.0 * exponent * np.log10(d2) - wall_loss(x, y))
            # d(pred)/dx = -10 n / ln 10 * dx / d^2, and likewise for y.
            jx = -k_slope * dx / d2
            jy = -k_slope * dy / d2
            a11 = np.sum(w * jx * jx, axis=1)
            a22 = np.sum(w * jy * jy, axis=1)
            a12 = np.sum(w * jx * jy, axis=1)
            g1 = np.sum(w * jx * res, axis=1)
            g2 = np.sum(w * jy * res, axis=1)
            b11, b22 = a11 * (1 + lam) + 1e-9, a22 * (1 + lam) + 1e-9
            det = b11 * b22 - a12 * a12
            nx = np.clip(x + (b22 * g1 - a12 * g2) / det, minx, maxx)
            ny = np.clip(y + (b11 * g2 - a12 * g1) / det, miny, maxy)
            new_cost = cost_of(nx, ny)
            better = new_cost < cost
            x = np.where(better, nx, x)
            y = np.where(better, ny, y)
            cost = np.where(better, new_cost, cost)
            lam = np.where(better, lam * 0.3, lam * 10.0)
        return x, y, cost

    xy0 = weighted_centroid(rssi, gw_xyz[:, :2], exponent) if rows else np.zeros((0, 2))
    starts = [xy0]
    if obstacle_map is not None and rows:
        strongest = np.argsort(-np.where(heard, rssi, -np.inf), axis=1)[:, :2]
        starts += [gw_xyz[strongest[:, j], :2] + 0.5 for j in range(strongest.shape[1])]
    x, y, best = levenberg_marquardt(xy0[:, 0].copy(), xy0[:, 1].copy())
    for start in starts[1:]:
        sx, sy, c = levenberg_marquardt(start[:, 0].copy(), start[:, 1].copy())
        take = c < best
        x, y, best = np.where(take, sx, x), np.where(take, sy, y), np.where(take, c, best)

    dx, dy = x[:, None] - gx, y[:, None] - gy
    d2 = dx * dx + dy * dy + dz2
    jx, jy = -k_slope * dx / d2, -k_slope * dy / d2
    a11 = np.sum(w * jx * jx, axis=1) + 1e-9
    a22 = np.sum(w * jy * jy, axis=1) + 1e-9
    a12 = np.sum(w * jx * jy, axis=1)
    det = np.maximum(a11 * a22 - a12 * a12, 1e-12)
    trace_cov = sigma_db**2 * (a11 + a22) / det
    r90 = np.sqrt(CHI2_2DOF_90 * trace_cov / 2.0)

    method = np.full(rows, METHOD_WLS, dtype=np.int8)
    few = n_heard < min_gateways
    if few.any():
        x[few], y[few] = xy0[few, 0], xy0[few, 1]
        method[few] = METHOD_CENTROID
        # With one or two gateways the tag is somewhere in their range: say so.
        r90[few] = np.maximum(r90[few], 10.0)
    diag = float(np.hypot(maxx - minx, maxy - miny))
    return Estimates(x, y, np.minimum(r90, diag), n_heard, method)
