"""Scoring fixes against ground truth: position error and zone accuracy.

Everything here is deterministic in the inputs (no wall-clock figures), so a report
built from it is byte-identical for the same scenario and seed.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from engine.truth import GroundTruth
from engine.zones import ZoneIndex


def _quantiles(err: NDArray[np.float64]) -> dict[str, float]:
    if len(err) == 0:
        return {"median_error_m": float("nan"), "p90_error_m": float("nan"),
                "p95_error_m": float("nan"), "rmse_m": float("nan"), "mean_error_m": float("nan")}
    q50, q90, q95 = np.quantile(err, [0.5, 0.9, 0.95])
    return {
        "median_error_m": round(float(q50), 4),
        "p90_error_m": round(float(q90), 4),
        "p95_error_m": round(float(q95), 4),
        "rmse_m": round(float(np.sqrt(np.mean(err**2))), 4),
        "mean_error_m": round(float(np.mean(err)), 4),
    }


def position_errors(fixes: NDArray[np.void], truth: GroundTruth) -> NDArray[np.float64]:
    """Euclidean error of each fix against the true position at the fix's time.

    A fix summarises the window that ends at its time; the truth is taken at the
    window's end, so a moving tag's error includes the window's lag (as a user sees it).
    """
    true_xy = truth.position_at(fixes["device"], fixes["t"])
    return np.asarray(np.hypot(fixes["x"] - true_xy[:, 0], fixes["y"] - true_xy[:, 1]))


def evaluate(
    fixes: NDArray[np.void], truth: GroundTruth, zones: ZoneIndex, n_devices: int, duration_s: float,
    n_sightings: int,
) -> dict[str, object]:
    """The standard report metrics of one run."""
    err = position_errors(fixes, truth)
    valid = np.isfinite(err)
    err_v = err[valid]
    true_xy = truth.position_at(fixes["device"], fixes["t"])
    true_zone = zones.assign(true_xy[:, 0], true_xy[:, 1])
    in_zone = valid & (true_zone >= 0)
    zone_acc = float(np.mean(fixes["zone"][in_zone] == true_zone[in_zone])) if in_zone.any() else float("nan")
    inside90 = float(np.mean(err_v <= fixes["r90"][valid])) if len(err_v) else float("nan")
    seen = np.unique(fixes["device"])
    moving = fixes["motion"][valid] == 1
    metrics: dict[str, object] = {
        "fixes": len(fixes),
        **_quantiles(err_v),
        "zone_accuracy": round(zone_acc, 4),
        "r90_coverage": round(inside90, 4),
        "devices_located": len(seen),
        "device_coverage": round(len(seen) / n_devices, 4) if n_devices else 0.0,
        "sightings": int(n_sightings),
        "sightings_per_sim_second": round(n_sightings / duration_s, 2),
        "moving": _quantiles(err_v[moving]) | {"fixes": int(moving.sum())},
        "still": _quantiles(err_v[~moving]) | {"fixes": int((~moving).sum())},
    }
    return metrics
