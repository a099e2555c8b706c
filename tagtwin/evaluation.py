"""Evaluation adapters for the command line: engines for recorded captures, and
re-scoring of a twin run directory from its Parquet files (IO lives here, not in engine/)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from rich.table import Table

from engine.capture import rows_by_window
from engine.evaluate import BoundSetup, LatencySetup, evaluate
from engine.localize import RadioMap, fit_path_loss
from engine.pipeline import FIX_DTYPE, EngineConfig
from engine.roi import RoiReportError, read_report
from engine.track import FloorPlan
from engine.truth import MOVEMENT_DTYPE, SEGMENT_DTYPE, GroundTruth
from radio_models.environment import Grid, ReportModel
from siteplan.radio import LogDistanceParams, TrackerTuning
from siteplan.sitefile import SiteFile
from siteplan.zones import ZoneIndex

FloatArray = np.typing.NDArray[np.float64]

if TYPE_CHECKING:
    from pathlib import Path

    from numpy.typing import NDArray

    from engine.capture import Capture
    from engine.contract import GatewayInfo


def capture_config(
    capture_gw: GatewayInfo,
    localizer: str,
    tracker: str,
    step: float,
    window: float,
    exponent: float,
    sigma_db: float,
    tx_power: float,
    tag_z: float,
    calibration: Capture | None,
    seed: int,
) -> EngineConfig:
    """An engine for a recorded site: bounds from the gateways (and the calibration walk),
    a path-loss model fitted to the walk when there is one, and its radio map."""
    pts = capture_gw.xyz[:, :2]
    radio_map = None
    plan = None
    if calibration is not None and calibration.truth_xyz is not None:
        _, _, xy, rssi = rows_by_window(calibration, step)
        fit = fit_path_loss(xy, rssi, capture_gw.xyz, tag_z)
        exponent, sigma_db, tx_power = fit.exponent, fit.sigma_db, fit.p0_dbm
        pts = np.vstack([pts, xy])
        radio_map = RadioMap.from_survey(xy, rssi, tx_ref_dbm=tx_power)
        plan = FloorPlan(radio_map.grid, radio_map.free)
    minx, miny = pts.min(axis=0) - 1.0
    maxx, maxy = pts.max(axis=0) + 1.0
    bounds = (float(minx), float(miny), float(maxx), float(maxy))
    if radio_map is None and (localizer in ("knn", "radio-map") or tracker in ("hmm", "particle")):
        grid = Grid.covering(bounds, 0.5)
        plan = FloorPlan.open_floor(bounds, 0.25)
        radio_map = RadioMap.from_model(
            grid,
            np.ones(grid.nx * grid.ny, bool),
            capture_gw.xyz,
            exponent,
            sigma_db,
            tag_z,
            tx_power,
            track_inflation=1.5,
        )
    return EngineConfig(
        gateways=capture_gw,
        zones=ZoneIndex.from_points([]),
        bounds=bounds,
        path_loss_exponent=exponent,
        sigma_db=sigma_db,
        default_tx_power_1m_dbm=tx_power,
        tag_height_m=tag_z,
        window_s=window,
        step_s=step,
        allowed_lateness_s=step,
        localizer=localizer,
        tracker=tracker,
        radio_map=radio_map,
        floor_plan=plan,
        seed=seed,
    )


class RunDirError(ValueError):
    """A run directory whose files cannot be scored: names the file and the column."""


def read_columns(path: Path, dtype: np.dtype) -> np.ndarray:
    """A run's Parquet table as a structured array of ``dtype``; RunDirError names the file
    and the column when it is unreadable, lacks a column or holds the wrong kind of values."""
    try:
        table = pq.read_table(path)
        names = table.column_names  # decoded lazily: non-UTF-8 names fail here
    except (OSError, pa.ArrowException, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        raise RunDirError(f"{path}: cannot read as Parquet: {str(exc)[:200]}") from None
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise RunDirError(f"{path}: columns named more than once: {repeated}")
    out = np.zeros(table.num_rows, dtype)
    for name in dtype.names or ():
        if name not in names:
            raise RunDirError(f"{path}: missing column {name!r} (have {names})")
        col = table.column(name)
        try:
            arr = col.combine_chunks()
            if pa.types.is_dictionary(arr.type):
                arr = arr.indices
            if not (pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type)):
                raise TypeError(str(arr.type))
            values = np.asarray(arr.to_numpy(zero_copy_only=False))
        except (TypeError, ValueError, pa.ArrowException) as exc:
            raise RunDirError(
                f"{path}: column {name!r}: expected numbers, found {col.type} ({str(exc)[:80]})"
            ) from None
        kind = dtype.fields[name][0] if dtype.fields else None
        if kind is not None and kind.kind in "iu":
            info = np.iinfo(kind)
            as_float = values.astype(float)
            bad = np.flatnonzero(
                ~np.isfinite(as_float) | (as_float != np.round(as_float))
                | (as_float < info.min) | (as_float > info.max)
            )
            if len(bad):
                raise RunDirError(
                    f"{path}: row {int(bad[0])}: column {name!r}: {values[int(bad[0])]!r} is not a {kind} value"
                )
        out[name] = values
    return out


GATEWAY_XYZ_DTYPE = np.dtype([("x", float), ("y", float), ("z", float)])
SIGHTING_T_DTYPE = np.dtype([("t", float)])


def evaluate_run_dir(
    run_dir: Path, exponent: float, sigma_db: float, tag_z: float
) -> dict[str, object]:
    """Re-score a `tagtwin simulate` output directory from its Parquet files."""
    need = [
        run_dir / f
        for f in (
            "estimates.parquet",
            "truth_segments.parquet",
            "gateways.parquet",
            "sightings.parquet",
        )
    ]
    missing = [str(p) for p in need if not p.exists()]
    if missing:
        raise FileNotFoundError(f"not a run directory: missing {', '.join(missing)}")
    fixes = read_columns(need[0], FIX_DTYPE)
    if len(fixes) == 0:
        raise RunDirError(f"{need[0]}: no fixes to score (did any gateway hear a tag?)")
    seg = read_columns(need[1], SEGMENT_DTYPE)
    try:
        truth = GroundTruth.build(seg, np.zeros(0, MOVEMENT_DTYPE))
    except (ValueError, IndexError) as exc:
        raise RunDirError(f"{need[1]}: inconsistent truth segments: {exc}") from None
    gw = read_columns(need[2], GATEWAY_XYZ_DTYPE)
    gw_xyz = np.column_stack([gw["x"], gw["y"], gw["z"]])
    sightings_t = read_columns(need[3], SIGHTING_T_DTYPE)["t"]
    for path, table in ((need[0], fixes), (need[1], seg)):
        bad = np.flatnonzero(table["device"] < 0)
        if len(bad):
            raise RunDirError(f"{path}: row {int(bad[0])}: column 'device': negative code")
    report_path = run_dir / "report.json"
    try:
        report = read_report(report_path) if report_path.exists() else {}
    except RoiReportError as exc:
        raise RunDirError(str(exc)) from None
    duration_v = report.get("duration_s")
    duration = (
        float(duration_v)
        if isinstance(duration_v, int | float) and math.isfinite(duration_v) and duration_v > 0
        else float(sightings_t.max(initial=1.0))
    )
    tags_v = report.get("tags")
    tags = tags_v if isinstance(tags_v, int) and tags_v > 0 else len(np.unique(fixes["device"]))
    step = (
        float(np.median(np.diff(np.unique(fixes["t"])))) if len(np.unique(fixes["t"])) > 1 else 1.0
    )
    metrics = evaluate(
        fixes,
        truth,
        ZoneIndex.from_points([]),
        tags,
        duration,
        len(sightings_t),
        BoundSetup(gw_xyz, exponent, sigma_db, tag_z),
        LatencySetup(sightings_t, step, 2.0),
    )
    old = report.get("metrics", {})
    if isinstance(old, dict) and "zone_accuracy" in old:
        metrics["zone_accuracy"] = old[
            "zone_accuracy"
        ]  # zones are in the scenario, not the run dir
    return metrics


@dataclass(frozen=True)
class SiteRadio:
    """What the engine takes from a site file's radio section."""

    exponent: float
    sigma_db: float  # one reading's total spread: shadowing, fading as reported, channels
    p0_reported_dbm: float  # mean reported RSSI at 1 m (P0 plus the fading mean)
    offsets_db: FloatArray  # per gateway, in the order of the engine's gateways


def site_radio(site: SiteFile, gateway_ids: tuple[str, ...], tx_power: float) -> SiteRadio:
    """Exponent, spread, reported P0 and offsets of a site's radio section. A section
    written by hand (no p0_dbm) keeps ``tx_power`` and the section's shadowing sigma."""
    radio = site.radio
    exponent = radio.model.exponent if isinstance(radio.model, LogDistanceParams) else 2.0
    rep = radio.report
    model = ReportModel(rep.receivers, rep.combine, rep.quantization_db, rep.miss_probability)
    mean, spread = model.fading_stats(radio.fading, radio.rician_k_db)
    channel = float(np.std(radio.channel_offset_db))
    sigma = float(np.sqrt(radio.shadowing_sigma_db**2 + radio.temporal_sigma_db**2 + spread**2 + channel**2))
    p0 = tx_power if radio.p0_dbm is None else radio.p0_dbm + mean
    offsets = np.array([radio.gateway_offsets_db.get(g, 0.0) for g in gateway_ids])
    return SiteRadio(exponent, max(sigma, 1.0), p0, offsets)


def site_gateways(site: SiteFile) -> GatewayInfo:
    from engine.contract import GatewayInfo

    ids, rows = site.gateway_table()
    return GatewayInfo(tuple(ids), np.array(rows, dtype=float).reshape(-1, 6)[:, :3].copy())


def site_capture_config(
    site: SiteFile,
    site_path: Path,
    gateways: GatewayInfo,
    localizer: str,
    tracker: str,
    step: float,
    window: float,
    tx_power: float,
    tag_z: float | None,
    seed: int,
    survey: Capture | None = None,
    tuning: TrackerTuning | None = None,
    smoother_lag_s: float = 0.0,
) -> EngineConfig:
    """An engine for a capture on a known site: the site's plan as bounds and floor plan
    (HMM, particle), its walls and racks in ML, its calibrated exponent, spread, P0 and
    per-gateway offsets in every model-based estimator, and its surveyed radio map (the
    calibration walk named in the site file, smoothed as calibrated) when it has one.
    A tracker the site file's cross-validation tuned (``radio_map.tuning``, or
    ``tuning`` given here) gets its motion speed, likelihood widening and r90 factor;
    ``smoother_lag_s`` > 0 asks for the tracker's fixed-lag smoother (Kalman, HMM, particle),
    tuned as the site file's entry with that lag says."""
    from engine.capture import read_capture
    from engine.localize import ObstacleMap
    from radio_models.geometry import crossing_loss_db
    from siteplan.model import SiteModel

    plan_model = SiteModel.from_scenario(site)
    z = site.site.tag_height_m if tag_z is None else tag_z
    sr = site_radio(site, gateways.ids, tx_power)
    bounds = tuple(float(v) for v in plan_model.outline.bounds)
    settings = site.radio.radio_map
    if survey is None and settings is not None and settings.survey:
        survey = read_capture(site_path.parent / settings.survey, gateways)
    obstacle_map = None
    grid = Grid.covering(bounds, 0.25)  # type: ignore[arg-type]
    if len(plan_model.obstacles()):
        loss = crossing_loss_db(plan_model.obstacles(), grid.centres(), gateways.xyz[:, :2])
        obstacle_map = ObstacleMap(grid, loss.astype(np.float32))
    plan = FloorPlan.from_geometry(plan_model.outline, plan_model.racks, plan_model.walls, cell_m=0.1)
    if site.plan is not None and site.plan.occupancy is not None:
        plan = occupancy_plan(site, site_path)
    if tuning is None and settings is not None:
        tuning = next((c for c in settings.tuning if c.localizer == localizer and c.tracker == tracker
                       and math.isclose(c.step_s, step, rel_tol=1e-3)
                       and math.isclose(c.window_s, window, rel_tol=1e-3)
                       and math.isclose(c.smoother_lag_s, smoother_lag_s, abs_tol=1e-6)), None)
    radio_map = None
    if localizer in ("knn", "radio-map") or tracker in ("hmm", "particle"):
        if survey is not None and survey.truth_xyz is not None:
            _, _, xy, rssi = rows_by_window(survey, step)
            bw = settings.bandwidth_m if settings else 0.5
            if tuning is not None and tuning.map_bandwidth_m is not None:
                bw = tuning.map_bandwidth_m
            reach = settings.reach_m if settings else 0.35
            cell = settings.cell_m if settings else 0.2
            radio_map = RadioMap.from_survey(
                xy, rssi - sr.offsets_db[None, :], cell_m=cell, bandwidth_m=bw, reach_m=reach,
                outline=plan_model.outline, tx_ref_dbm=sr.p0_reported_dbm,
            )
            # A fix of one window of length ``window`` loses a gateway's every report in it
            # with the calibrated miss probability per report, to the power of the reports.
            reports = max(1.0, window / max(step_period(survey), 1e-3))
            radio_map = replace(radio_map, miss_probability=site.radio.report.miss_probability ** reports)
        else:
            radio_map = RadioMap.from_model(
                grid, plan.cell_free(grid), gateways.xyz, sr.exponent, sr.sigma_db, z,
                sr.p0_reported_dbm, obstacle_map, track_inflation=1.5,
            )
    speed, r90_scale, offset_sigma = 1.5, 1.0, 0.0
    if tuning is not None and tracker in ("hmm", "particle"):
        speed, r90_scale = tuning.speed_mps, tuning.r90_scale
        offset_sigma = tuning.offset_sigma_db if tracker == "hmm" else 0.0
        if tuning.inflation is not None and radio_map is not None:
            radio_map = replace(radio_map, track_inflation=tuning.inflation)
    if tuning is not None:
        smoother_lag_s = tuning.smoother_lag_s
        if smoother_lag_s > 0:  # a smoother's r90 is calibrated on held-out errors, Kalman's too
            r90_scale = tuning.r90_scale
    return EngineConfig(
        gateways=gateways,
        zones=plan_model.zones,
        bounds=bounds,  # type: ignore[arg-type]
        path_loss_exponent=sr.exponent,
        sigma_db=sr.sigma_db,
        default_tx_power_1m_dbm=sr.p0_reported_dbm,
        tag_height_m=z,
        window_s=window,
        step_s=step,
        allowed_lateness_s=step,
        obstacle_map=obstacle_map,
        localizer=localizer,
        tracker=tracker,
        radio_map=radio_map,
        floor_plan=plan,
        seed=seed,
        tracker_speed_mps=speed,
        tracker_r90_scale=r90_scale,
        smoother_lag_s=smoother_lag_s,
        tracker_offset_sigma_db=offset_sigma,
        gateway_offset_db=sr.offsets_db if np.any(sr.offsets_db) else None,
        # A map posterior's r90 treats readings as independent; ML's comes from the site's
        # whole spread. Widening map fixes by the square root of the map's own inflation
        # was chosen by cross-validation on the Kolakowski calibration walk (Kalman r90
        # coverage 0.72 -> 0.91; 1.0 is right for ML fixes: 0.93; docs/calibration.md).
        kalman_fix_inflation=(
            float(np.sqrt(radio_map.track_inflation))
            if radio_map is not None and localizer in ("radio-map", "knn") else 1.0
        ),
    )


def step_period(capture: Capture) -> float:
    """The median time between a device's reports (its reporting period)."""
    s = capture.sightings
    t = np.unique(np.column_stack([s["device"].astype(float), np.round(s["t"], 4)]), axis=0)
    same = t[1:, 0] == t[:-1, 0]
    gaps = np.diff(t[:, 1])[same]
    return float(np.median(gaps)) if len(gaps) else 1.0


def occupancy_plan(site: SiteFile, site_path: Path) -> FloorPlan:
    """The site's occupancy-grid image (``[plan.occupancy]``) as the trackers' floor plan."""
    import matplotlib.image

    occ = site.plan.occupancy if site.plan is not None else None
    assert occ is not None
    path = site_path.parent / occ.image
    try:
        img = np.asarray(matplotlib.image.imread(path), dtype=float)
    except (OSError, ValueError, SyntaxError) as exc:
        raise ValueError(f"{site_path}: plan.occupancy.image: cannot read {path}: {exc}") from None
    if img.ndim == 3:  # colour: mean of RGB, alpha ignored
        img = img[..., :3].mean(axis=2)
    if img.max() > 1.0:
        img = img / 255.0
    return FloorPlan.from_occupancy(img, occ.scale_m, occ.origin, occ.free_threshold)


# Every estimator alone, then each tracker on the estimator it fuses.
COMPARE_COMBINATIONS = (
    ("strongest", "none"),
    ("centroid", "none"),
    ("wls", "none"),
    ("knn", "none"),
    ("radio-map", "none"),
    ("wls", "kalman"),
    ("radio-map", "kalman"),
    ("radio-map", "hmm"),
    ("radio-map", "particle"),
)


def per_device_errors(
    fixes: NDArray[np.void], capture: Capture
) -> dict[str, dict[str, float]]:
    """Median and p90 error of each device's fixes against its truth."""
    from engine.evaluate import position_errors

    assert capture.truth is not None
    err = position_errors(fixes, capture.truth)
    out = {}
    for code, name in enumerate(capture.devices.ids):
        e = err[(fixes["device"] == code) & np.isfinite(err)]
        if len(e):
            out[str(name)] = {
                "median_error_m": round(float(np.median(e)), 4),
                "p90_error_m": round(float(np.quantile(e, 0.9)), 4),
                "fixes": len(e),
            }
    return out


# Fixed-lag smoothers --compare also runs (seconds of lag; latency grows by as much).
COMPARE_SMOOTHED = (("radio-map", "kalman", 2.0), ("radio-map", "hmm", 2.0), ("radio-map", "particle", 2.0))


def compare_smoothed(
    site: SiteFile | None, step: float, window: float, lag_s: float = 0.0
) -> tuple[tuple[str, str, float], ...]:
    """The fixed-lag smoothers ``evaluate --compare`` lists: the three at 2 s, each tracker at
    ``lag_s`` when one is asked for (``--smoother-lag``), and every smoother the site file's
    cross-validation tuned for this fix interval and window, at its own lag (so a site's
    chosen 16 s smoother, with its offset and map, is in the table)."""
    out = list(COMPARE_SMOOTHED)
    if lag_s > 0:
        out += [(loc, trk, lag_s) for loc, trk, _ in COMPARE_SMOOTHED]
    settings = site.radio.radio_map if site is not None else None
    if settings is not None:
        out += [(t.localizer, t.tracker, t.smoother_lag_s) for t in settings.tuning
                if t.smoother_lag_s > 0 and math.isclose(t.step_s, step, rel_tol=1e-3)
                and math.isclose(t.window_s, window, rel_tol=1e-3)]
    return tuple(dict.fromkeys(out))


def compare_estimators(
    capture: Capture,
    make_config: Callable[[str, str, float], EngineConfig],
    combinations: tuple[tuple[str, str], ...] = COMPARE_COMBINATIONS,
    smoothed: tuple[tuple[str, str, float], ...] = COMPARE_SMOOTHED,
) -> dict[str, dict[str, object]]:
    """Every estimator/tracker combination on one capture, then the fixed-lag smoothers
    ``smoothed`` (``make_config(localizer, tracker, lag_s)``): overall metrics, latency
    and per device."""
    from engine.evaluate import evaluate_capture

    out: dict[str, dict[str, object]] = {}
    for localizer, tracker, lag in (*((loc, trk, 0.0) for loc, trk in combinations), *smoothed):
        fixes, metrics = evaluate_capture(capture, make_config(localizer, tracker, lag))
        name = localizer if tracker == "none" else f"{localizer}+{tracker}"
        name += f"+lag{lag:g}s" if lag > 0 else ""
        out[name] = {
            k: metrics.get(k)
            for k in ("median_error_m", "p90_error_m", "rmse_m", "r90_coverage", "rmse_over_crb",
                      "latency_median_s")
        } | {"devices": per_device_errors(fixes, capture)}
    return out


def time_folds(capture: Capture, folds: int, block_s: float = 120.0) -> list[NDArray[np.bool_]]:
    """``folds`` interleaved sets of ``block_s``-long stretches of the capture (block k
    goes to fold k mod folds): each held-out stretch is a short walk through places
    the rest of the survey also covers, as a test walk through a surveyed site is."""
    t = capture.sightings["t"]
    block = np.floor((t - t.min(initial=0.0)) / block_s).astype(np.int64) % folds
    return [block == k for k in range(folds)]


def held_out_walks(capture: Capture, keep: NDArray[np.bool_], block_s: float = 120.0) -> Capture:
    """The sightings ``keep`` selects, each ``block_s`` stretch of each device as a walk
    of its own (its own device): a tracker starts every held-out walk afresh, as it
    starts a real one, instead of carrying its belief across the jump between two
    stretches minutes apart."""
    from engine.capture import Capture, truth_from_samples
    from engine.contract import IdTable

    s = capture.sightings[keep].copy()
    assert capture.truth_xyz is not None
    xyz = capture.truth_xyz[keep]
    block = np.floor((s["t"] - capture.sightings["t"].min(initial=0.0)) / block_s).astype(np.int64)
    pairs, code = np.unique(np.column_stack([s["device"].astype(np.int64), block]), axis=0, return_inverse=True)
    s["device"] = code.ravel()
    names = IdTable([f"{capture.devices.ids[int(d)]}/{int(b) * block_s:g}s" for d, b in pairs])
    return Capture(s, names, capture.gateways, truth_from_samples(s["device"], s["t"], xyz[:, :2]), xyz)


@dataclass(frozen=True)
class Candidate:
    """One way to locate tags that cross-validation can rank: estimator, tracker, fix
    interval and window, and for the HMM and particle filter their motion speed and
    likelihood widening (None: the map's own, RadioMap.track_inflation)."""

    localizer: str
    tracker: str
    step_s: float
    window_s: float
    speed_mps: float = 1.5
    inflation: float | None = None
    lag_s: float = 0.0  # fixed-lag smoother (kalman, hmm, particle); 0: the filter
    offset_sigma_db: float = 0.0  # HMM: shared-offset spread integrated out of the emission
    bandwidth_m: float | None = None  # radio map kernel bandwidth; None: the site's

    @property
    def name(self) -> str:
        base = self.localizer if self.tracker == "none" else f"{self.localizer}+{self.tracker}"
        if self.tracker in ("hmm", "particle") and (self.speed_mps != 1.5 or self.inflation is not None
                                                    or self.offset_sigma_db > 0):
            base += (f"[{self.speed_mps:g} m/s" + (f", x{self.inflation:g}" if self.inflation else "")
                     + (f", offset {self.offset_sigma_db:g} dB" if self.offset_sigma_db > 0 else "") + "]")
        if self.bandwidth_m is not None:
            base += f"(map {self.bandwidth_m:g} m)"
        if self.lag_s > 0:
            base += f"+lag{self.lag_s:g}s"
        return f"{base}@{self.step_s:.4g}/{self.window_s:.4g}s"

    @property
    def calibrated_r90(self) -> bool:
        """Whether its r90 takes the factor cross-validation measures (the map trackers'
        and every smoother's; the Kalman filter keeps its own fix widening)."""
        return self.tracker in ("hmm", "particle") or self.lag_s > 0

    def tuning(self, r90_scale: float = 1.0, chosen: bool = False) -> TrackerTuning:
        return TrackerTuning(localizer=self.localizer, tracker=self.tracker, step_s=self.step_s,
                             window_s=self.window_s, speed_mps=self.speed_mps, inflation=self.inflation,
                             r90_scale=round(r90_scale, 3), smoother_lag_s=self.lag_s,
                             offset_sigma_db=self.offset_sigma_db, map_bandwidth_m=self.bandwidth_m,
                             chosen=chosen)


# Motion speeds and likelihood widenings tried for the map trackers (HMM, particle):
# walking pace to a brisk walk; from readings counted as independent to the map default.
TRACKER_SPEEDS_MPS = (0.6, 1.0, 1.5)
TRACKER_INFLATIONS = (1.0, 1.6, 2.5)
# Fixed-lag smoothers' lags tried (seconds), and the HMM widenings tried with them: x2.5
# only as the default (1.5 m/s), which keeps the candidates and the benchmark's time
# down (on Kolakowski the x2.5 filters rank 35th and below in cross-validation).
SMOOTHER_LAGS_S = (1.0, 2.0, 4.0)
SMOOTHER_INFLATIONS = (1.0, 1.6)
# The particle smoother's (speed, widening) variants: its default, the slow walk the HMM
# smoothers prefer, each with the map's own widening and x1.6 (a particle step costs
# about ten HMM steps, so fewer variants).
PARTICLE_SMOOTHER_VARIANTS: tuple[tuple[float, float | None], ...] = ((1.5, None), (0.6, None), (1.5, 1.6),
                                                                      (0.6, 1.6))
# Longer HMM smoothing, at ``long_timings`` only (1 s fixes of 1 s windows: at 1/3 s fixes of
# 1 s windows each reading enters three fixes, which smoothing compounds): lags up to 16 s
# (the fixed-lag smoother with a lag as long as a walk is the whole forward-backward
# smoother), the slower speeds and wider likelihoods, each without and with a shared
# per-window offset integrated out of the emission (engine.track.common_offset_log_likelihood;
# 4 dB: 2, 4 and 8 dB did alike on the Kolakowski calibration walk).
LONG_SMOOTHER_LAGS_S = (4.0, 8.0, 16.0)
LONG_SMOOTHER_VARIANTS: tuple[tuple[float, float], ...] = ((0.6, 1.6), (0.6, 2.5), (1.0, 1.6), (1.0, 2.5))
OFFSET_SIGMAS_DB = (0.0, 4.0)
# Radio map bandwidths tried with them, as factors on the site's (chosen from the survey's
# spacing): kernel bandwidth chosen by cross-validation (Härdle, *Applied Nonparametric
# Regression*, 1990, ch. 5), here by the tracking it gives.
LONG_SMOOTHER_BANDWIDTH_FACTORS = (1.0, 1.5)


def candidates(
    timings: tuple[tuple[float, float], ...],
    combinations: tuple[tuple[str, str], ...] = COMPARE_COMBINATIONS,
    tuned_timings: tuple[tuple[float, float], ...] = (),
    lags_s: tuple[float, ...] = (),
    long_timings: tuple[tuple[float, float], ...] = (),
    site_bandwidth_m: float = 0.5,
) -> tuple[Candidate, ...]:
    """Every estimator/tracker combination at every (fix interval, window), and at
    ``tuned_timings`` the HMM and particle filter with each motion speed and widening,
    and the Kalman, HMM and particle fixed-lag smoothers at each lag in ``lags_s`` (the
    HMM's with each speed and ``SMOOTHER_INFLATIONS``, the particle filter's
    ``PARTICLE_SMOOTHER_VARIANTS``); at ``long_timings`` also the HMM smoothers at
    ``LONG_SMOOTHER_LAGS_S`` with ``LONG_SMOOTHER_VARIANTS``, each with every
    ``OFFSET_SIGMAS_DB`` and radio map bandwidth (``LONG_SMOOTHER_BANDWIDTH_FACTORS`` times
    ``site_bandwidth_m``; the site's own is written as None)."""
    out = [Candidate(loc, trk, step, window) for step, window in timings for loc, trk in combinations]
    for step, window in tuned_timings:
        for loc, trk in combinations:
            if trk in ("hmm", "particle"):
                out += [Candidate(loc, trk, step, window, v, f)
                        for v in TRACKER_SPEEDS_MPS for f in TRACKER_INFLATIONS
                        if (v, f) != (1.5, None)]
    for step, window in tuned_timings:
        for loc, trk in combinations:
            for lag in lags_s:
                if trk == "kalman":
                    out.append(Candidate(loc, trk, step, window, lag_s=lag))
                elif trk == "hmm":
                    out += [Candidate(loc, trk, step, window, v, f, lag)
                            for v in TRACKER_SPEEDS_MPS for f in (None, *SMOOTHER_INFLATIONS)
                            if f is not None or v == 1.5]
                elif trk == "particle":
                    out += [Candidate(loc, trk, step, window, v, f, lag) for v, f in PARTICLE_SMOOTHER_VARIANTS]
    for step, window in long_timings:
        for loc, trk in combinations:
            if trk == "hmm":
                out += [Candidate(loc, trk, step, window, v, f, lag, tau,
                                  None if k == 1.0 else round(k * site_bandwidth_m, 3))
                        for k in LONG_SMOOTHER_BANDWIDTH_FACTORS for lag in LONG_SMOOTHER_LAGS_S
                        for v, f in LONG_SMOOTHER_VARIANTS for tau in OFFSET_SIGMAS_DB]
    return tuple(dict.fromkeys(out))


def target_ratio(median_m: float, p90_m: float, target_median_m: float, target_p90_m: float) -> float:
    """How far a method is from the site's accuracy target, on its worse side: above 1
    misses it. Ranking by it picks the method with the most margin on both median and
    p90, rather than the best median with a p90 that misses."""
    return max(median_m / target_median_m, p90_m / target_p90_m)


# The length of walk the accuracy target is judged on (seconds): a site's test walk,
# the Kolakowski robot track's 6 minutes. Cross-validation composes tracks this long
# from held-out walks to say how often one such walk meets the target.
TRACK_S = 360.0
MAX_TRACKS = 4000  # more combinations than this: that many drawn (seeded) instead of all


def track_meet_share(
    walk_errors: list[FloatArray],
    walks_per_track: int,
    target_median_m: float,
    target_p90_m: float,
    max_tracks: int = MAX_TRACKS,
    seed: int = 0,
) -> dict[str, float]:
    """How often one track of ``walks_per_track`` held-out walks meets both targets
    (its own median and p90 of errors), over every combination of that many distinct
    walks (or ``max_tracks`` seeded draws of them when there are more): the share, and
    the 5/50/95 % points of a track's median and p90. The pooled median and p90 say
    where a method's errors lie over the whole survey; a target judged on one walk is
    met or missed by that walk's own spread, which pooling hides."""
    import itertools
    import math

    walks = [w for w in walk_errors if len(w)]
    k = max(1, min(walks_per_track, len(walks)))
    if math.comb(len(walks), k) <= max_tracks:
        combos = np.array(list(itertools.combinations(range(len(walks)), k)), np.intp)
    else:
        rng = np.random.default_rng(seed)
        combos = np.array([rng.choice(len(walks), k, replace=False) for _ in range(max_tracks)], np.intp)
    med, p90 = np.empty(len(combos)), np.empty(len(combos))
    for i, c in enumerate(combos):
        e = np.concatenate([walks[j] for j in c])
        med[i], p90[i] = np.median(e), np.quantile(e, 0.9)
    meets = (med <= target_median_m) & (p90 <= target_p90_m)
    q = (0.05, 0.5, 0.95)
    return {
        "track_meet_share": round(float(meets.mean()), 4),
        **{f"track_median_q{int(x * 100):02d}_m": round(float(np.quantile(med, x)), 4) for x in q},
        **{f"track_p90_q{int(x * 100):02d}_m": round(float(np.quantile(p90, x)), 4) for x in q},
    }


def cross_validate(
    survey: Capture,
    make_config: Callable[[Candidate, Capture], EngineConfig],
    methods: tuple[Candidate, ...],
    folds: int = 4,
    block_s: float = 120.0,
    target_median_m: float = 0.8,
    target_p90_m: float = 1.8,
    track_s: float = TRACK_S,
    masks: list[NDArray[np.bool_]] | None = None,
    walks_out: dict[str, list[FloatArray]] | None = None,
) -> dict[str, dict[str, float]]:
    """Every candidate scored on the calibration data alone: each fold's stretches are
    walked afresh (``held_out_walks``) and located with a radio map built from the other
    folds. Returns median, p90 and r90 coverage of the pooled held-out errors, the
    factor on r90 that would cover 90 % of them (``r90_scale``), ``target_ratio``, and
    how often a track of ``track_s`` (held-out walks put together) meets both targets,
    with the spread of such a track's median and p90 (``track_meet_share``).
    What a site can use to pick and tune its tracker without looking at a test track.
    ``masks`` replaces the interleaved folds (each mask: the sightings held out);
    ``walks_out`` receives each candidate's errors per held-out walk, in time order."""
    from engine.capture import capture_subset
    from engine.evaluate import evaluate_capture, position_errors

    out: dict[str, dict[str, float]] = {}
    if masks is None:
        masks = time_folds(survey, folds, block_s)
    parts = [(held_out_walks(survey, m, block_s), capture_subset(survey, ~m)) for m in masks]
    per_track = max(1, round(track_s / block_s))
    for cand in methods:
        errs, radius, walks = [], [], []
        for held, rest in parts:
            fixes, _ = evaluate_capture(held, make_config(cand, rest))
            assert held.truth is not None
            e = position_errors(fixes, held.truth)
            ok = np.isfinite(e)
            errs.append(e[ok])
            radius.append(fixes["r90"][ok].astype(float))
            for d in range(len(held.devices)):
                sel = np.flatnonzero(ok & (fixes["device"] == d))
                walks.append(e[sel[np.argsort(fixes["t"][sel], kind="stable")]])
        if walks_out is not None:
            walks_out[cand.name] = walks
        e_all, r_all = np.concatenate(errs), np.concatenate(radius)
        median, p90 = float(np.median(e_all)), float(np.quantile(e_all, 0.9))
        out[cand.name] = {
            "median_error_m": round(median, 4),
            "p90_error_m": round(p90, 4),
            "r90_coverage": round(float(np.mean(e_all <= r_all)), 4),
            "r90_scale": round(float(np.quantile(e_all / np.maximum(r_all, 1e-6), 0.9)), 4),
            "target_ratio": round(target_ratio(median, p90, target_median_m, target_p90_m), 4),
            **track_meet_share(walks, per_track, target_median_m, target_p90_m),
        }
    return out


# How choose_tracking ranks candidates: "meet_share", the share of held-out tracks of the
# target's length that meet both targets (ties: the pooled target ratio); "target_ratio",
# the pooled errors' worse ratio to the targets (docs/calibration.md section 4).
CRITERIA = ("meet_share", "target_ratio")


def rank_key(cv: dict[str, dict[str, float]], criterion: str = "meet_share"
             ) -> Callable[[Candidate], tuple[float, ...]]:
    """Sort key of candidates under ``criterion`` (one of CRITERIA): lower is better."""
    if criterion not in CRITERIA:
        raise ValueError(f"criterion {criterion!r} is not one of {CRITERIA}")

    def key(c: Candidate) -> tuple[float, ...]:
        r = cv[c.name]
        pooled = (r["target_ratio"], r["median_error_m"])
        return (-r["track_meet_share"], *pooled) if criterion == "meet_share" else pooled

    return key


def choose_tracking(
    cv: dict[str, dict[str, float]], methods: tuple[Candidate, ...], criterion: str = "meet_share"
) -> tuple[Candidate, list[TrackerTuning]]:
    """The best candidate in cross-validation under ``criterion`` (``rank_key``), and for
    each estimator/tracker/timing/smoother lag its best motion speed and widening, with
    the r90 factor cross-validation measured for it (for the site file's
    ``radio_map.tuning``)."""
    key = rank_key(cv, criterion)
    best = min(methods, key=key)
    per: dict[tuple[str, str, float, float, float], Candidate] = {}
    for c in methods:
        group = (c.localizer, c.tracker, c.step_s, c.window_s, c.lag_s)
        if group not in per or key(c) < key(per[group]):
            per[group] = c
    tuning = [c.tuning(cv[c.name]["r90_scale"] if c.calibrated_r90 else 1.0, c == best)
              for c in per.values() if c.tracker != "none"]
    return best, tuning


def tune_tracking(
    site: SiteFile,
    site_path: Path,
    survey: Capture,
    gateways: GatewayInfo,
    *,
    folds: int = 4,
    target_median_m: float = 0.8,
    target_p90_m: float = 1.8,
    lags_s: tuple[float, ...] = SMOOTHER_LAGS_S,
    track_s: float = TRACK_S,
    criterion: str = "meet_share",
) -> tuple[SiteFile, Candidate, dict[str, dict[str, float]], tuple[Candidate, ...]]:
    """Choose and tune a site's tracker on its survey (``tagtwin calibrate
    --choose-tracker``, benchmarks/calibration.py): every candidate at the survey's own
    report period and at 1 s, with fixed-lag smoothers at ``lags_s``, cross-validated and
    ranked by ``criterion`` (tracks of ``track_s`` for the meet share); returns the site
    with the tuning in ``radio.radio_map.tuning``, the chosen candidate, the
    cross-validation table and the candidates."""
    if site.radio.radio_map is None:
        raise ValueError("the site file has no radio_map section: calibrate it on a survey first")
    period = round(step_period(survey), 4)
    timings = ((period, period), (period, 1.0), (1.0, 1.0), (1.0, 2.0))
    methods = candidates(timings, COMPARE_COMBINATIONS, tuned_timings=((period, 1.0), (1.0, 1.0)),
                         lags_s=lags_s, long_timings=((1.0, 1.0),) if lags_s else (),
                         site_bandwidth_m=site.radio.radio_map.bandwidth_m)

    def make(c: Candidate, rest: Capture) -> EngineConfig:
        return site_capture_config(site, site_path, gateways, c.localizer, c.tracker, c.step_s, c.window_s,
                                   -59.0, None, 0, rest, tuning=c.tuning())

    cv = cross_validate(survey, make, methods, folds=folds, target_median_m=target_median_m,
                        target_p90_m=target_p90_m, track_s=track_s)
    best, tuning = choose_tracking(cv, methods, criterion)
    radio = site.radio
    assert radio.radio_map is not None
    tuned = site.model_copy(update={"radio": radio.model_copy(update={
        "radio_map": radio.radio_map.model_copy(update={"tuning": tuning})})})
    return SiteFile.model_validate(tuned.model_dump(by_alias=True)), best, cv, methods


def leave_one_path_out(
    capture: Capture,
    base: SiteFile,
    site_path: Path,
    step: float,
    window: float,
    seed: int = 0,
    combinations: tuple[tuple[str, str], ...] = COMPARE_COMBINATIONS,
    smoothed: tuple[tuple[str, str, float], ...] = COMPARE_SMOOTHED,
) -> dict[str, dict[str, dict[str, object]]]:
    """Each device's path held out in turn: the site calibrated (``tagtwin calibrate``)
    on the other paths, which are also its survey, then every combination scored on the
    held-out path. Paths are the capture's devices."""
    from engine.capture import capture_subset
    from tagtwin.calibrate import calibrate

    if len(capture.devices) < 2:
        raise ValueError("leaving a path out needs a capture with at least two devices (paths)")
    out: dict[str, dict[str, dict[str, object]]] = {}
    for code, name in enumerate(capture.devices.ids):
        mine = capture.sightings["device"] == code
        held, rest = capture_subset(capture, mine), capture_subset(capture, ~mine)
        site = calibrate(rest, base=base, n_boot=20, seed=seed).site

        def make(loc: str, trk: str, lag: float, site: SiteFile = site, rest: Capture = rest) -> EngineConfig:
            return site_capture_config(site, site_path, capture.gateways, loc, trk, step, window, -59.0,
                                       None, seed, rest, smoother_lag_s=lag)

        out[str(name)] = compare_estimators(held, make, combinations, smoothed)
    return out


def compare_table(results: dict[str, dict[str, object]]) -> Table:
    """One table: each combination overall, then each device's median / p90."""
    devices = sorted({d for r in results.values() for d in r["devices"]})  # type: ignore[attr-defined]
    table = Table(title="every estimator and tracker")
    for col in ("method", "median m", "p90 m", "r90 coverage", "RMSE/CRB", "latency s", *devices):
        table.add_column(col, justify="right")

    def fmt(v: object) -> str:
        return f"{v:.2f}" if isinstance(v, int | float) else "-"

    for name, r in results.items():
        per: dict[str, dict[str, float]] = r["devices"]  # type: ignore[assignment]
        cells = [f"{per[d]['median_error_m']:.2f} / {per[d]['p90_error_m']:.2f}" if d in per else "-"
                 for d in devices]
        table.add_row(name, fmt(r["median_error_m"]), fmt(r["p90_error_m"]), fmt(r["r90_coverage"]),
                      fmt(r["rmse_over_crb"]), fmt(r.get("latency_median_s")), *cells)
    return table
