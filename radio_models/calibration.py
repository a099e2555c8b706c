"""Fitting the log-distance model to sightings with known positions, with uncertainty.

Model (Rappaport eq. 4.68 with a per-receiver bias):

    RSSI_ij = P0 + b_j - 10 n log10(d_ij) + e_ij,    sum_j b_j = 0,   e ~ N(0, sigma^2)

P0 (RSSI at 1 m), n and the offsets b_j enter linearly, so one least-squares solve gives
them; the constraint sum b_j = 0 separates the common P0 from the receivers' biases.
Residuals of nearby points share the same shadowing (Gudmundson), so the textbook
standard errors are too small; the uncertainty reported here is cluster-robust (the
sandwich estimator with points grouped in spatial cells a few decorrelation lengths
wide), which stays honest when neighbouring residuals are correlated.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from radio_models.pathloss import three_d_distance

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class Calibration:
    """A fitted log-distance model and its 1-sigma uncertainties."""

    p0_dbm: float
    exponent: float
    sigma_db: float
    gateway_offset_db: FloatArray
    p0_se: float
    exponent_se: float
    sigma_se: float
    gateway_offset_se: FloatArray
    n_samples: int
    n_clusters: int
    residuals_db: FloatArray

    def as_dict(self) -> dict[str, object]:
        return {
            "p0_dbm": round(self.p0_dbm, 2), "p0_se": round(self.p0_se, 2),
            "exponent": round(self.exponent, 3), "exponent_se": round(self.exponent_se, 3),
            "sigma_db": round(self.sigma_db, 2), "sigma_se": round(self.sigma_se, 2),
            "gateway_offset_db": [round(float(v), 2) for v in self.gateway_offset_db],
            "gateway_offset_se": [round(float(v), 2) for v in self.gateway_offset_se],
            "n_samples": self.n_samples, "n_clusters": self.n_clusters,
        }


def fit_log_distance(
    points_xyz: FloatArray,
    gateway_xyz: FloatArray,
    rssi_dbm: FloatArray,
    cluster_m: float = 1.0,
    per_gateway_offsets: bool = True,
) -> Calibration:
    """Fit P0, n, sigma and per-gateway offsets from an RSSI matrix (points, gateways)
    with NaN where a gateway did not hear the point.

    ``cluster_m``: side of the square cells that group points for the cluster-robust
    standard errors (0: treat every sample as independent).
    """
    points_xyz = np.atleast_2d(np.asarray(points_xyz, dtype=float))
    gateway_xyz = np.atleast_2d(np.asarray(gateway_xyz, dtype=float))
    rssi = np.asarray(rssi_dbm, dtype=float)
    if rssi.shape != (len(points_xyz), len(gateway_xyz)):
        raise ValueError(f"rssi must be (points, gateways) = {(len(points_xyz), len(gateway_xyz))}, got {rssi.shape}")
    pi, gi = np.nonzero(np.isfinite(rssi))
    m = len(gateway_xyz)
    n_params = 2 + (m - 1 if per_gateway_offsets else 0)
    if len(pi) <= n_params + 1:
        raise ValueError(f"need more than {n_params + 1} finite RSSI samples, got {len(pi)}")
    y = rssi[pi, gi]
    logd = np.log10(three_d_distance(points_xyz, gateway_xyz)[pi, gi])
    cols = [np.ones_like(y), -10.0 * logd]
    if per_gateway_offsets:
        # b_j for j < m-1 free, b_{m-1} = -sum: column j is [g == j] - [g == m-1].
        onehot = (gi[:, None] == np.arange(m - 1)[None, :]).astype(float)
        onehot -= (gi == m - 1)[:, None]
        cols += list(onehot.T)
    x = np.column_stack(cols)
    beta, *_ = np.linalg.lstsq(x, y, rcond=None)
    resid = y - x @ beta
    dof = len(y) - n_params
    sigma = float(np.sqrt(resid @ resid / dof))
    xtx_inv = np.linalg.inv(x.T @ x)
    if cluster_m > 0:
        cell = np.floor(points_xyz[pi, :2] / cluster_m).astype(np.int64)
        _, cluster = np.unique(cell, axis=0, return_inverse=True)
        cluster = cluster.ravel()
        n_clusters = int(cluster.max()) + 1
        score = np.zeros((n_clusters, x.shape[1]))
        np.add.at(score, cluster, x * resid[:, None])
        meat = score.T @ score * (n_clusters / max(n_clusters - 1, 1))
        cov = xtx_inv @ meat @ xtx_inv
    else:
        n_clusters = len(y)
        cov = sigma**2 * xtx_inv
    se = np.sqrt(np.diag(cov))
    offsets = np.zeros(m)
    offsets_se = np.zeros(m)
    if per_gateway_offsets:
        offsets[:-1] = beta[2:]
        offsets[-1] = -beta[2:].sum()
        offsets_se[:-1] = se[2:]
        offsets_se[-1] = float(np.sqrt(np.sum(cov[2:, 2:])))
    # sigma's standard error: chi-square with the effective number of independent clusters.
    sigma_se = sigma / np.sqrt(2 * max(min(n_clusters, dof), 1))
    return Calibration(
        p0_dbm=float(beta[0]), exponent=float(beta[1]), sigma_db=sigma, gateway_offset_db=offsets,
        p0_se=float(se[0]), exponent_se=float(se[1]), sigma_se=float(sigma_se),
        gateway_offset_se=offsets_se, n_samples=len(y), n_clusters=n_clusters, residuals_db=resid,
    )


def fit_kolakowski(folder: Path | None = None, tag_height_m: float = 0.3, cluster_m: float = 1.0) -> Calibration:
    """Calibrate on the Kolakowski 2021 flat (Sensors 21(18):6270): the robot's
    calibration walk with LiDAR positions. The tag's height on the robot is not given in
    the dataset; 0.3 m is assumed (the fit moves little between 0.1 and 0.6 m)."""
    from engine.datasets import SHARED_KOLAKOWSKI, load_kolakowski

    data = load_kolakowski(folder or SHARED_KOLAKOWSKI)
    cal = data.calibration
    xyz = np.column_stack([cal.xy, np.full(len(cal.xy), tag_height_m)])
    return fit_log_distance(xyz, data.anchor_xyz, cal.rssi, cluster_m=cluster_m)
