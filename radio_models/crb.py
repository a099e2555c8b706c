"""The Cramér-Rao bound for RSSI localization: the best any unbiased localizer can do.

Patwari et al., IEEE Trans. Signal Processing 51(8), 2003, and "Locating the nodes",
IEEE Signal Processing Magazine 22(4), 2005: with b = 10 n / (sigma ln 10) and receivers
at 3-D distance d_i with planar offsets (dx_i, dy_i),

    F = b^2 sum_i (1 / d_i^4) [[dx^2, dx dy], [dx dy, dy^2]],   RMSE >= sqrt(trace(F^-1)).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from radio_models.pathloss import MIN_DISTANCE_M

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
    diff = points_xyz[:, None, :] - np.asarray(gateway_xyz, dtype=float)[None, :, :]
    d2 = np.maximum(np.einsum("ijk,ijk->ij", diff, diff), MIN_DISTANCE_M**2)
    w = 1.0 / (d2 * d2)
    if heard is not None:
        w = w * heard
    b2 = (10.0 * exponent / (sigma_db * np.log(10.0))) ** 2
    dx, dy = diff[..., 0], diff[..., 1]
    f11 = b2 * np.sum(w * dx * dx, axis=1)
    f22 = b2 * np.sum(w * dy * dy, axis=1)
    f12 = b2 * np.sum(w * dx * dy, axis=1)
    det = f11 * f22 - f12 * f12
    with np.errstate(divide="ignore", invalid="ignore"):
        trace_inv = (f11 + f22) / det
    return np.where(det > 1e-12 * np.maximum(f11 * f22, 1e-300), np.sqrt(np.abs(trace_inv)), np.inf)
