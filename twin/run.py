"""One simulation run end to end: scenario -> twin -> engine -> evaluation -> files.

The twin is only a source: its sightings reach the engine through the same
``ingest``/``advance`` calls that the live bridge uses, in event-time chunks.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from numpy.typing import NDArray

from engine.evaluate import BoundSetup, LatencySetup, evaluate, position_errors
from engine.localize import ObstacleMap, RadioMap
from engine.pipeline import Engine, EngineConfig
from engine.track import FloorPlan
from radio_models.environment import Grid
from radio_models.geometry import crossing_loss_db
from twin.scenario import Scenario
from twin.sim import TwinResult, WarehouseTwin

FEED_CHUNK_S = 30.0  # sightings are handed to the engine 30 simulated seconds at a time


@dataclass
class SimulationRun:
    scenario: Scenario
    twin: TwinResult
    fixes: NDArray[np.void]
    metrics: dict[str, object]
    engine_counters: dict[str, object]
    timings_s: dict[str, float] = field(default_factory=dict)

    def report(self) -> dict[str, object]:
        """Deterministic report: the same scenario and seed give the same bytes."""
        sc = self.scenario
        return {
            "scenario": sc.name,
            "seed": sc.seed,
            "duration_s": sc.duration_s,
            "tags": len(self.twin.device_ids),
            "gateways": len(self.twin.gateways.ids),
            "twin": self.twin.stats,
            "engine": self.engine_counters,
            "metrics": self.metrics,
        }


def engine_config_for(
    scenario: Scenario, twin: TwinResult, survey_db: NDArray[np.float32] | None = None
) -> EngineConfig:
    """The engine a scenario asks for. ``survey_db`` (cells, gateways) is the twin's own
    static radio (path loss aside: walls, racks and shadowing) on the radio grid, used
    for ``radio_map = "survey"``: what a perfect calibration walk would measure."""
    eng = scenario.engine
    exponent = eng.path_loss_exponent or scenario.radio.model.exponent
    sigma_db = max(scenario.radio.shadowing_sigma_db, 1.0)
    grid = Grid.covering(twin.site.outline.bounds, scenario.radio.grid_m)
    obstacle_map = None
    if eng.use_site_plan and len(twin.site.obstacles()):
        loss = crossing_loss_db(twin.site.obstacles(), grid.centres(), twin.gateways.xyz[:, :2])
        obstacle_map = ObstacleMap(grid, loss.astype(np.float32))
    radio_map = floor_plan = None
    if eng.localizer in ("knn", "radio-map") or eng.tracker in ("hmm", "particle"):
        site = twin.site
        floor_plan = FloorPlan.from_geometry(
            site.outline, site.racks, site.walls, cell_m=min(0.25, scenario.radio.grid_m))
        free = floor_plan.cell_free(grid)
        tx_ref = float(np.median(twin.tx_power_1m_dbm)) if len(twin.tx_power_1m_dbm) else -59.0
        tag_z = scenario.site.tag_height_m
        if eng.radio_map == "survey" and survey_db is not None:
            base = RadioMap.from_model(
                grid, free, twin.gateways.xyz, exponent, sigma_db, tag_z, tx_ref)
            # The survey measured shadowing too: what is left is fast fading averaged over a
            # window, about 2 dB; trackers still widen it for correlated windows.
            radio_map = RadioMap(grid, free, (base.mean_dbm + survey_db).astype(np.float32),
                                 np.full(len(twin.gateways.ids), 2.0), None, tx_ref, 1.5)
        else:
            radio_map = RadioMap.from_model(
                grid, free, twin.gateways.xyz, exponent, sigma_db, tag_z, tx_ref, obstacle_map,
                track_inflation=1.5)
    return EngineConfig(
        gateways=twin.gateways,
        zones=twin.site.zones,
        bounds=twin.site.outline.bounds,
        path_loss_exponent=exponent,
        sigma_db=sigma_db,
        tag_height_m=scenario.site.tag_height_m,
        window_s=eng.window_s,
        step_s=eng.step_s,
        allowed_lateness_s=eng.allowed_lateness_s,
        min_gateways=eng.min_gateways,
        obstacle_map=obstacle_map,
        localizer=eng.localizer,
        tracker=eng.tracker,
        radio_map=radio_map,
        floor_plan=floor_plan,
        particles=eng.particles,
        tracker_speed_mps=eng.tracker_speed_mps,
        zone_hysteresis=eng.zone_hysteresis,
        seed=int(np.random.SeedSequence(scenario.seed).generate_state(1)[0]),
    )


def feed_engine(engine: Engine, sightings: NDArray[np.void], end_t: float) -> NDArray[np.void]:
    """Stream time-ordered sightings into an engine in event-time chunks; return all fixes."""
    out = []
    edges = np.searchsorted(sightings["t"], np.arange(FEED_CHUNK_S, end_t + FEED_CHUNK_S, FEED_CHUNK_S))
    start = 0
    for stop in edges:
        engine.ingest(sightings[start:stop])
        out.append(engine.advance())
        start = int(stop)
    out.append(engine.flush(end_t))
    return np.concatenate(out)


def simulate(scenario: Scenario, progress: Callable[[float], None] | None = None) -> SimulationRun:
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    twin = WarehouseTwin(scenario)
    timings["setup_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    result = twin.run(progress)
    timings["twin_s"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    # The twin's static radio map, if it still exposes one (radio_models may restructure it).
    survey = None
    if scenario.engine.radio_map == "survey":
        survey = getattr(twin.radio, "static_db", None)
    engine = Engine(engine_config_for(scenario, result, survey), result.tx_power_1m_dbm)
    fixes = feed_engine(engine, result.sightings, scenario.duration_s)
    timings["engine_s"] = time.perf_counter() - t2
    windows = max(scenario.duration_s / engine.config.step_s, 1.0)
    timings["engine_ms_per_window"] = 1000.0 * timings["engine_s"] / windows
    cfg = engine.config
    bound = BoundSetup(result.gateways.xyz, cfg.path_loss_exponent, cfg.sigma_db, cfg.tag_height_m)
    latency = LatencySetup(result.sightings["t"], cfg.step_s, cfg.allowed_lateness_s)
    metrics = evaluate(fixes, result.truth, result.site.zones, len(result.device_ids), scenario.duration_s,
                       len(result.sightings), bound, latency)
    timings["total_s"] = time.perf_counter() - t0
    return SimulationRun(scenario, result, fixes, metrics, engine.counters.as_dict(), timings)


def _dictionary(codes: NDArray[np.integer], ids: list[str] | tuple[str, ...]) -> pa.DictionaryArray:
    return pa.DictionaryArray.from_arrays(pa.array(codes, pa.int32()), pa.array(list(ids), pa.string()))


def _table(arr: NDArray[np.void], ids: dict[str, list[str] | tuple[str, ...]] | None = None) -> pa.Table:
    cols = {}
    for name in arr.dtype.names or ():
        if ids and name in ids:
            cols[name] = _dictionary(arr[name], ids[name])
        else:
            cols[name] = pa.array(arr[name])
    return pa.table(cols)


def write_outputs(run: SimulationRun, out_dir: Path) -> dict[str, Path]:
    """Parquet tables, report.json, summary.txt and perf.json (the only non-deterministic file)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    twin = run.twin
    names: dict[str, list[str] | tuple[str, ...]] = {
        "device": twin.device_ids, "gateway": twin.gateways.ids}
    paths = {k: out_dir / f"{k}.parquet" for k in ("sightings", "truth_segments", "movements", "estimates")}
    pq.write_table(_table(twin.sightings, names), paths["sightings"])
    pq.write_table(_table(twin.truth.segments, names), paths["truth_segments"])
    pq.write_table(_table(twin.truth.movements, names), paths["movements"])
    est = _table(run.fixes, names)
    true_xy = twin.truth.position_at(run.fixes["device"], run.fixes["t"])
    est = est.append_column("true_x", pa.array(true_xy[:, 0])).append_column("true_y", pa.array(true_xy[:, 1]))
    est = est.append_column("error_m", pa.array(position_errors(run.fixes, twin.truth)))
    pq.write_table(est, paths["estimates"])
    gw = pa.table({"id": list(twin.gateways.ids), "x": twin.gateways.xyz[:, 0], "y": twin.gateways.xyz[:, 1],
                   "z": twin.gateways.xyz[:, 2]})
    paths["gateways"] = out_dir / "gateways.parquet"
    pq.write_table(gw, paths["gateways"])
    paths["report"] = out_dir / "report.json"
    paths["report"].write_text(json.dumps(run.report(), indent=2, sort_keys=True) + "\n")
    paths["summary"] = out_dir / "summary.txt"
    paths["summary"].write_text(summary_text(run) + "\n")
    paths["perf"] = out_dir / "perf.json"
    perf = dict(run.timings_s)
    perf["sightings_per_wall_second"] = len(twin.sightings) / max(run.timings_s.get("twin_s", 0.0), 1e-9)
    paths["perf"].write_text(json.dumps({k: round(v, 4) for k, v in perf.items()}, indent=2, sort_keys=True) + "\n")
    return paths


def summary_text(run: SimulationRun) -> str:
    m = run.metrics
    r = run.report()
    return "\n".join([
        f"scenario {r['scenario']} (seed {r['seed']}): {r['tags']} tags, {r['gateways']} gateways, "
        f"{run.scenario.duration_s:g} s simulated",
        f"sightings: {m['sightings']} ({m['sightings_per_sim_second']} per simulated second)",
        f"fixes: {m['fixes']}, devices located: {m['devices_located']} ({m['device_coverage']:.1%})",
        f"position error: median {m['median_error_m']:.2f} m, p90 {m['p90_error_m']:.2f} m, "
        f"p95 {m['p95_error_m']:.2f} m",
        f"zone accuracy: {m['zone_accuracy']:.1%}; truth inside the 90 % radius: {m['r90_coverage']:.1%}",
    ])
