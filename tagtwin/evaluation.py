"""Evaluation adapters for the command line: engines for recorded captures, and
re-scoring of a twin run directory from its Parquet files (IO lives here, not in engine/)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from engine.capture import rows_by_window
from engine.evaluate import BoundSetup, LatencySetup, evaluate
from engine.localize import RadioMap, fit_path_loss
from engine.pipeline import FIX_DTYPE, EngineConfig
from engine.track import FloorPlan
from engine.truth import MOVEMENT_DTYPE, SEGMENT_DTYPE, GroundTruth
from radio_models.environment import Grid
from siteplan.zones import ZoneIndex

if TYPE_CHECKING:
    from pathlib import Path

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


def evaluate_run_dir(
    run_dir: Path, exponent: float, sigma_db: float, tag_z: float
) -> dict[str, object]:
    """Re-score a `tagtwin simulate` output directory from its Parquet files."""

    def codes(col: pa.ChunkedArray) -> np.ndarray:
        arr = col.combine_chunks()
        return np.asarray(arr.indices if pa.types.is_dictionary(arr.type) else arr)

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
    est = pq.read_table(need[0])
    fixes = np.zeros(est.num_rows, FIX_DTYPE)
    for name in FIX_DTYPE.names or ():
        fixes[name] = codes(est.column(name)) if name == "device" else est.column(name).to_numpy()
    seg_t = pq.read_table(need[1])
    seg = np.zeros(seg_t.num_rows, SEGMENT_DTYPE)
    for name in SEGMENT_DTYPE.names or ():
        seg[name] = codes(seg_t.column(name)) if name == "device" else seg_t.column(name).to_numpy()
    truth = GroundTruth.build(seg, np.zeros(0, MOVEMENT_DTYPE))
    gw = pq.read_table(need[2])
    gw_xyz = np.column_stack([gw.column(c).to_numpy() for c in ("x", "y", "z")])
    sightings_t = pq.read_table(need[3], columns=["t"]).column("t").to_numpy()
    report_path = run_dir / "report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    duration = float(report.get("duration_s", float(sightings_t.max(initial=1.0))))
    step = (
        float(np.median(np.diff(np.unique(fixes["t"])))) if len(np.unique(fixes["t"])) > 1 else 1.0
    )
    metrics = evaluate(
        fixes,
        truth,
        ZoneIndex.from_points([]),
        int(report.get("tags", len(np.unique(fixes["device"])))),
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
