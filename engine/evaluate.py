"""Scoring fixes against ground truth: position error and zone accuracy.

Everything here is deterministic in the inputs (no wall-clock figures), so a report
built from it is byte-identical for the same scenario and seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from engine.localize import METHOD_NAMES

if TYPE_CHECKING:
    import shapely
    from numpy.typing import NDArray

    from engine.capture import Capture
    from engine.pipeline import EngineConfig
    from engine.truth import GroundTruth
    from siteplan.zones import ZoneIndex


def _quantiles(err: NDArray[np.float64]) -> dict[str, float]:
    if len(err) == 0:
        return {
            "median_error_m": float("nan"),
            "p90_error_m": float("nan"),
            "p95_error_m": float("nan"),
            "rmse_m": float("nan"),
            "mean_error_m": float("nan"),
        }
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


@dataclass(frozen=True)
class BoundSetup:
    """What the Cramér-Rao bound needs: the gateways and the model the twin used."""

    gateway_xyz: NDArray[np.float64]
    exponent: float
    sigma_db: float
    tag_z: float


@dataclass(frozen=True)
class LatencySetup:
    """How the engine windows: a sighting's fix appears when its first window closes."""

    sighting_t: NDArray[np.float64]
    step_s: float
    allowed_lateness_s: float
    lag_s: float = 0.0  # a fixed-lag smoother's fixes leave this much later


CDF_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


def error_cdf(err: NDArray[np.float64]) -> list[list[float]]:
    """The empirical error CDF at fixed levels, as [fraction, error_m] pairs."""
    if len(err) == 0:
        return []
    q = np.quantile(err, CDF_LEVELS)
    return [[lvl, round(float(v), 4)] for lvl, v in zip(CDF_LEVELS, q, strict=True)]


def crb_at(true_xy: NDArray[np.float64], bound: BoundSetup) -> NDArray[np.float64]:
    """sqrt(CRLB) at each true position with every gateway (Patwari et al. 2003)."""
    from radio_models.crb import crlb_rmse

    pts = np.column_stack([true_xy, np.full(len(true_xy), bound.tag_z)])
    return np.asarray(crlb_rmse(pts, bound.gateway_xyz, bound.exponent, bound.sigma_db))


def _bound_metrics(err: NDArray[np.float64], crb: NDArray[np.float64]) -> dict[str, float]:
    ok = np.isfinite(crb) & np.isfinite(err)
    if not ok.any():
        return {"crb_rmse_m": float("nan"), "rmse_over_crb": float("nan")}
    crb_rms = float(np.sqrt(np.mean(crb[ok] ** 2)))
    rmse = float(np.sqrt(np.mean(err[ok] ** 2)))
    return {"crb_rmse_m": round(crb_rms, 4), "rmse_over_crb": round(rmse / crb_rms, 4)}


def still_zone_changes(fixes: NDArray[np.void], truth: GroundTruth) -> float:
    """How often a tag that truly did not move changed its reported zone, per tag-hour:
    the flapping that zone hysteresis exists to stop (0 is perfect)."""
    if len(fixes) < 2:
        return 0.0
    order = np.lexsort((fixes["t"], fixes["device"]))
    f = fixes[order]
    same = f["device"][1:] == f["device"][:-1]
    a = truth.position_at(f["device"][:-1], f["t"][:-1])
    b = truth.position_at(f["device"][1:], f["t"][1:])
    still = same & (np.hypot(a[:, 0] - b[:, 0], a[:, 1] - b[:, 1]) < 1e-6)
    changes = still & (f["zone"][1:] != f["zone"][:-1])
    hours = float(np.sum((f["t"][1:] - f["t"][:-1])[still])) / 3600.0
    return round(float(changes.sum()) / hours, 3) if hours > 0 else 0.0


def latency_metrics(lat: LatencySetup) -> dict[str, float]:
    """Event-time latency from a sighting to the first fix that uses it: the rest of its
    window plus the allowed lateness the engine waits before closing it, plus a
    fixed-lag smoother's lag. (Processing time
    is wall-clock and lives in perf.json, not in the deterministic report.)"""
    t = np.asarray(lat.sighting_t, dtype=float)
    if len(t) == 0:
        return {"latency_median_s": float("nan"), "latency_p95_s": float("nan")}
    end = (np.floor(t / lat.step_s + 1e-12) + 1) * lat.step_s
    wait = end - t + lat.allowed_lateness_s + lat.lag_s
    q50, q95 = np.quantile(wait, [0.5, 0.95])
    return {"latency_median_s": round(float(q50), 4), "latency_p95_s": round(float(q95), 4)}


def evaluate(
    fixes: NDArray[np.void],
    truth: GroundTruth,
    zones: ZoneIndex,
    n_devices: int,
    duration_s: float,
    n_sightings: int,
    bound: BoundSetup | None = None,
    latency: LatencySetup | None = None,
) -> dict[str, object]:
    """The standard report metrics of one run: error quantiles and CDF, zone accuracy,
    r90 calibration, and (given ``bound``) the Cramér-Rao bound at the true positions and
    the ratio of the achieved RMSE to it, overall and for moving and still fixes."""
    err = position_errors(fixes, truth)
    valid = np.isfinite(err)
    err_v = err[valid]
    true_xy = truth.position_at(fixes["device"], fixes["t"])
    true_zone = zones.assign(true_xy[:, 0], true_xy[:, 1])
    in_zone = valid & (true_zone >= 0)
    zone_acc = (
        float(np.mean(fixes["zone"][in_zone] == true_zone[in_zone]))
        if in_zone.any()
        else float("nan")
    )
    inside90 = float(np.mean(err_v <= fixes["r90"][valid])) if len(err_v) else float("nan")
    seen = np.unique(fixes["device"])
    moving = fixes["motion"][valid] == 1
    crb = crb_at(true_xy[valid], bound) if bound is not None else None

    def part(sel: NDArray[np.bool_]) -> dict[str, object]:
        out: dict[str, object] = {**_quantiles(err_v[sel]), "fixes": int(sel.sum())}
        if crb is not None:
            out |= _bound_metrics(err_v[sel], crb[sel])
        if sel.any():
            out["r90_coverage"] = round(float(np.mean(err_v[sel] <= fixes["r90"][valid][sel])), 4)
        return out

    metrics: dict[str, object] = {
        "fixes": len(fixes),
        **_quantiles(err_v),
        "error_cdf": error_cdf(err_v),
        "zone_accuracy": round(zone_acc, 4),
        "r90_coverage": round(inside90, 4),
        "devices_located": len(seen),
        "device_coverage": round(len(seen) / n_devices, 4) if n_devices else 0.0,
        "sightings": int(n_sightings),
        "sightings_per_sim_second": round(n_sightings / duration_s, 2),
        "moving": part(moving),
        "still": part(~moving),
    }
    if crb is not None:
        metrics |= _bound_metrics(err_v, crb)
    metrics["still_zone_changes_per_tag_hour"] = still_zone_changes(fixes, truth)
    metrics["fix_quality"] = fix_quality(fixes)
    if latency is not None:
        metrics |= latency_metrics(latency)
    return metrics


def fix_quality(fixes: NDArray[np.void]) -> dict[str, object]:
    """How well determined the fixes were: the share heard by fewer than 3 gateways (a
    2-D position from 1 or 2 ranges is under-determined, so estimators fall back to the
    strongest gateway or a centroid) and the share made by each method."""
    if not len(fixes):
        return {"under_3_gateways": 0.0, "median_gateways": 0.0, "methods": {}}
    n_gw = fixes["n_gateways"]
    codes, counts = np.unique(fixes["method"], return_counts=True)
    return {
        "under_3_gateways": round(float(np.mean(n_gw < 3)), 4),
        "median_gateways": float(np.median(n_gw)),
        "methods": {METHOD_NAMES[int(c)]: round(int(k) / len(fixes), 4) for c, k in zip(codes, counts, strict=True)},
    }


# -- every method on one recorded track ---------------------------------------------------


def error_summary(
    est_x: NDArray[np.float64],
    est_y: NDArray[np.float64],
    r90: NDArray[np.float64],
    true_xy: NDArray[np.float64],
) -> dict[str, float]:
    """Quantiles of the error and how often the truth fell inside the reported r90."""
    err = np.hypot(est_x - true_xy[:, 0], est_y - true_xy[:, 1])
    ok = np.isfinite(err)
    return _quantiles(err[ok]) | {"r90_coverage": round(float(np.mean(err[ok] <= r90[ok])), 4)}


def score_track_methods(
    calibration_xy: NDArray[np.float64],
    calibration_rssi: NDArray[np.float64],
    test_t: NDArray[np.float64],
    test_xy: NDArray[np.float64],
    test_rssi: NDArray[np.float64],
    gw_xyz: NDArray[np.float64],
    outline: shapely.Geometry,
    tag_z: float = 0.3,
    trackers: tuple[str, ...] = ("kalman", "hmm", "particle"),
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Score every estimator and tracker on one device's time-ordered RSSI rows.

    The site is calibrated from the calibration walk only: a fitted log-distance model
    for ML, the raw walk as kNN fingerprints, a surveyed radio map for the
    probabilistic estimators and trackers, and the walk's reach as the floor plan.
    """
    from engine.localize import (
        RadioMap,
        centroid_localize,
        fit_path_loss,
        knn_localize,
        radio_map_localize,
        strongest_gateway,
        wls_localize,
    )
    from engine.track import FloorPlan, GridFilter, KalmanTracker, ParticleFilter, Tracker

    gw_xy = gw_xyz[:, :2]
    minx, miny, maxx, maxy = (float(v) for v in outline.bounds)
    bounds = (minx, miny, maxx, maxy)
    fit = fit_path_loss(calibration_xy, calibration_rssi, gw_xyz, tag_z)
    radio_map = RadioMap.from_survey(calibration_xy, calibration_rssi, outline=outline)
    plan = FloorPlan.from_geometry(outline, cell_m=0.1)
    near_gw = np.sqrt(
        np.min(np.sum((radio_map.free_xy[:, None, :] - gw_xy[None]) ** 2, axis=2), axis=1)
    )
    corrected = test_rssi - fit.gateway_offset_db[None, :]
    single = {
        "strongest": strongest_gateway(test_rssi, gw_xy, float(np.quantile(near_gw, 0.9))),
        "centroid": centroid_localize(test_rssi, gw_xy, fit.exponent),
        "wls": wls_localize(
            corrected,
            gw_xyz,
            np.full(len(test_rssi), fit.p0_dbm),
            fit.exponent,
            fit.sigma_db,
            tag_z,
            bounds,
        ),
        "knn": knn_localize(test_rssi, calibration_xy, calibration_rssi, k=10),
        "radio-map": radio_map_localize(test_rssi, radio_map),
    }
    out = {name: error_summary(e.x, e.y, e.r90, test_xy) for name, e in single.items()}
    step_s = float(np.median(np.diff(test_t))) if len(test_t) > 1 else 1.0
    made: dict[str, Tracker] = {
        "kalman": KalmanTracker(),
        "hmm": GridFilter(radio_map, plan, step_s=step_s, speed_mps=1.2),
        "particle": ParticleFilter(radio_map, plan, particles=500, seed=seed),
    }
    device = np.zeros(1, np.int32)
    motion = np.full(1, -1, np.int8)
    tx = np.full(1, radio_map.tx_ref_dbm)
    for name in trackers:
        tr = made[name]
        base = single["radio-map"]
        xs, ys, rs = (np.zeros(len(test_t)) for _ in range(3))
        for i in range(len(test_t)):
            e = tr.step(
                float(test_t[i]),
                device,
                test_rssi[i : i + 1],
                base.take(slice(i, i + 1)),
                motion,
                tx,
            )
            xs[i], ys[i], rs[i] = e.x[0], e.y[0], e.r90[0]
        out[f"track:{name}"] = error_summary(xs, ys, rs, test_xy)
    return out


def evaluate_capture(
    capture: Capture,
    config: EngineConfig,
    duration_s: float | None = None,
) -> tuple[NDArray[np.void], dict[str, object]]:
    """Replay a recorded capture through the engine (the same ``ingest``/``advance`` calls a
    live source makes, in event-time chunks) and score it against its truth columns."""
    from engine.pipeline import Engine

    s = capture.sightings
    t0 = float(s["t"].min()) if len(s) else 0.0
    # Windows are aligned to multiples of step_s; shift the capture's epoch to zero.
    shifted = s.copy()
    shifted["t"] -= t0
    end = float(shifted["t"].max()) + config.step_s if len(s) else 0.0
    engine = Engine(config)
    out = []
    chunk = 30.0
    edges = np.searchsorted(shifted["t"], np.arange(chunk, end + chunk, chunk))
    start = 0
    for stop in edges:
        engine.ingest(shifted[start:stop])
        out.append(engine.advance())
        start = int(stop)
    out.append(engine.flush(end))
    fixes = np.concatenate(out)
    fixes["t"] += t0
    metrics: dict[str, object] = {"engine": engine.counters.as_dict()}
    if capture.truth is not None:
        tag_z = config.tag_height_m
        bound = BoundSetup(config.gateways.xyz, config.path_loss_exponent, config.sigma_db, tag_z)
        latency = LatencySetup(shifted["t"], config.step_s, config.allowed_lateness_s, config.smoother_lag_s)
        metrics |= evaluate(
            fixes,
            capture.truth,
            config.zones,
            len(capture.devices),
            duration_s or max(end, 1e-9),
            len(s),
            bound,
            latency,
        )
    return fixes, metrics
