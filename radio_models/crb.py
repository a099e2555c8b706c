"""The Cramér-Rao bound for RSSI localization: the best any unbiased localizer can do.

Patwari et al., IEEE Trans. Signal Processing 51(8), 2003, and "Locating the nodes",
IEEE Signal Processing Magazine 22(4), 2005: with b = 10 n / (sigma ln 10) and receivers
at 3-D distance d_i with planar offsets (dx_i, dy_i),

    F = b^2 sum_i (1 / d_i^4) [[dx^2, dx dy], [dx dy, dy^2]],   RMSE >= sqrt(trace(F^-1)).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from radio_models.pathloss import MIN_DISTANCE_M, three_d_distance

if TYPE_CHECKING:
    from radio_models.environment import RadioEnvironment

FloatArray = NDArray[np.float64]


def crlb_rmse(
    points_xyz: FloatArray,
    gateway_xyz: FloatArray,
    exponent: float,
    sigma_db: float,
    heard: NDArray[np.bool_] | None = None,
) -> FloatArray:
    """sqrt(trace(F^-1)) at each point, metres; inf where fewer than 2 gateways inform x/y.

    ``heard`` (points, gateways) restricts each point to the gateways that hear it.
    """
    points_xyz = np.atleast_2d(np.asarray(points_xyz, dtype=float))
    slope = np.full((len(points_xyz), len(np.atleast_2d(gateway_xyz))), 10.0 * exponent)
    return crlb_rmse_slopes(points_xyz, gateway_xyz, slope, sigma_db, heard)


def crlb_rmse_slopes(
    points_xyz: FloatArray,
    gateway_xyz: FloatArray,
    slope_db_per_decade: FloatArray,
    sigma_db: float,
    heard: NDArray[np.bool_] | None = None,
) -> FloatArray:
    """The same bound for any path-loss family: the mean RSSI's gradient in x is
    -(s_i / ln 10) dx_i / d_i^2 with s_i = dPL/dlog10(d) of link i (10 n for log-distance),
    so F = sum_i (s_i / (sigma ln 10))^2 / d_i^4 [[dx^2, dx dy], [dx dy, dy^2]]."""
    points_xyz = np.atleast_2d(np.asarray(points_xyz, dtype=float))
    diff = points_xyz[:, None, :] - np.asarray(gateway_xyz, dtype=float)[None, :, :]
    d2 = np.maximum(np.einsum("ijk,ijk->ij", diff, diff), MIN_DISTANCE_M**2)
    b2 = (np.asarray(slope_db_per_decade, dtype=float) / (sigma_db * np.log(10.0))) ** 2
    w = b2 / (d2 * d2)
    if heard is not None:
        w = w * heard
    dx, dy = diff[..., 0], diff[..., 1]
    f11 = np.sum(w * dx * dx, axis=1)
    f22 = np.sum(w * dy * dy, axis=1)
    f12 = np.sum(w * dx * dy, axis=1)
    det = f11 * f22 - f12 * f12
    with np.errstate(divide="ignore", invalid="ignore"):
        trace_inv = (f11 + f22) / det
    return np.where(det > 1e-12 * np.maximum(f11 * f22, 1e-300), np.sqrt(np.abs(trace_inv)), np.inf)


def crlb_map(
    env: RadioEnvironment,
    tx_power_1m_dbm: float,
    sensitivity_dbm: float | FloatArray,
    sigma_db: float | None = None,
) -> FloatArray:
    """The bound on the site's grid (ny, nx) at tag height, for the environment's layout
    and path-loss family. Walls, racks, LoS state and the static shadowing do not move
    the mean RSSI's gradient (they are piecewise constant) but decide which gateways hear
    each point: a gateway counts where its mean RSSI clears its sensitivity.
    ``sigma_db`` defaults to the environment's shadowing sigma."""
    centres = env.grid.centres()
    xyz = np.column_stack([centres, np.full(len(centres), env.tag_height_m)])
    heard = env.mean_rssi_cells(tx_power_1m_dbm) >= np.asarray(sensitivity_dbm)
    d = three_d_distance(xyz, env.gateway_xyz)
    slope = env.model.slope_db_per_decade(d)
    sigma = env.shadowing_sigma_db if sigma_db is None else sigma_db
    return crlb_rmse_slopes(xyz, env.gateway_xyz, slope, max(sigma, 1e-3), heard).reshape(
        env.grid.ny, env.grid.nx
    )
