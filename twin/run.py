"""One simulation run end to end: scenario -> twin -> engine -> evaluation -> files.

The twin is only a source: its sightings reach the engine through the same
``ingest``/``advance`` calls that the live bridge uses, in event-time chunks.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import shapely
from numpy.typing import NDArray

from engine.audit import AuditContext, AuditLog, SiteStateRecorder, money_records
from engine.contract import CONTRACT_VERSION, GatewayInfo, copy_id
from engine.evaluate import BoundSetup, LatencySetup, evaluate, position_errors
from engine.localize import ObstacleMap, RadioMap
from engine.pipeline import Engine, EngineConfig
from engine.rules import Event, JsonLinesSink, ListSink, RuleContext, RuleEngine
from engine.rules.feeder import RuleFeeder, feed_rules  # noqa: F401  (twin.run.RuleFeeder, as before)
from engine.rules.rest import RestMap
from engine.rules.scoring import ScoreTally, count_accuracy, score_report, tally_events
from engine.track import FloorPlan
from radio_models.calibration import censored_link_means, simple_kriging
from radio_models.environment import Grid
from radio_models.geometry import crossing_loss_db
from radio_models.pathloss import effective_exponent
from siteplan.zones import ZoneIndex
from twin.incidents import (
    FEED_DTYPE,
    IncidentInjector,
    IncidentLog,
    true_zone_counts,
)
from twin.scenario import Scenario
from twin.sim import Fleet, TwinResult, WarehouseTwin, path_loss_model, tag_ids
from twin.walk import calibration_walk

FloatArray = NDArray[np.float64]
FEED_CHUNK_S = 30.0  # sightings are handed to the engine 30 simulated seconds at a time
# shadowing_correction_db's fits, keyed by a digest of every input they are a function of:
# the walk's fit and kriging take ~1.5 s per run, and a process (a test run, the planner's
# seeds and layouts) often needs the same scenario and seed's map again. A few, read-only.
_CORRECTIONS: dict[bytes, FloatArray] = {}
_CORRECTIONS_MAX = 8
_CORRECTIONS_LOCK = threading.Lock()


@dataclass
class SimulationRun:
    scenario: Scenario
    twin: TwinResult
    fixes: NDArray[np.void]
    metrics: dict[str, object]
    engine_counters: dict[str, object]
    timings_s: dict[str, float] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    incidents: IncidentLog = field(default_factory=IncidentLog)
    # site-wide rule figures when each money-relevant event was decided (engine/audit.py)
    site_states: dict[tuple[str, str | None, float], dict[str, object]] = field(default_factory=dict)
    rule_tally: ScoreTally = field(default_factory=ScoreTally)  # the counts behind metrics["rules"]

    def report(self) -> dict[str, object]:
        """Deterministic report: the same scenario and seed give the same bytes. It names
        the tool version and the scenario's hash, so a report says what made it; wall-clock
        facts (times, creation date) go to perf.json."""
        sc = self.scenario
        return {
            "tool": {"name": "tagtwin", "version": tool_version()},
            "scenario": sc.name,
            "scenario_sha256": scenario_sha256(sc),
            "seed": sc.seed,
            "duration_s": sc.duration_s,
            "tags": len(self.twin.device_ids),
            "gateways": len(self.twin.gateways.ids),
            "twin": self.twin.stats,
            "engine": self.engine_counters,
            "metrics": self.metrics,
        }


def tool_version() -> str:
    """The installed TagTwin version (pyproject.toml is its one source)."""
    try:
        return version("tagtwin")
    except PackageNotFoundError:
        return "0+unknown"


def scenario_sha256(scenario: Scenario) -> str:
    """sha256 of the validated scenario as canonical JSON: the file's content with every
    default filled in and every command-line override applied, so two reports with the
    same hash and seed came from the same run."""
    return hashlib.sha256(scenario.model_dump_json(by_alias=True).encode()).hexdigest()


def why_accuracy(metrics: dict[str, object], twin_stats: dict[str, int], n_tags: int) -> list[str]:
    """Plain reasons a run's accuracy is what it is, from facts the run measured: too few
    gateways per fix, tags never located, airtime lost to collisions. Empty when none of
    them stands out."""
    reasons: list[str] = []
    quality = metrics.get("fix_quality")
    if isinstance(quality, dict):
        under = float(quality.get("under_3_gateways", 0.0))
        if under >= 0.2:
            reasons.append(
                f"{under:.1%} of fixes heard fewer than 3 gateways, so their position is "
                "under-determined (the localizer falls back to the strongest gateway or a centroid): "
                "add gateways or place them where tags rest")
        methods = quality.get("methods")
        methods = methods if isinstance(methods, dict) else {}
        fallback = sum(float(methods.get(m, 0.0)) for m in ("centroid", "strongest"))
        if fallback >= 0.2:
            reasons.append(f"{fallback:.1%} of fixes are centroid or strongest-gateway fallbacks")
    located = metrics.get("devices_located")
    if isinstance(located, int) and located < n_tags:
        reasons.append(f"{n_tags - located} of {n_tags} tags were never located: "
                       "no gateway heard them above its sensitivity")
    listened = twin_stats.get("packets_listened", 0)
    lost = twin_stats.get("lost_to_collisions", 0) + twin_stats.get("lost_to_wifi", 0)
    if listened and lost / listened >= 0.1:
        reasons.append(
            f"airtime saturation: {lost / listened:.1%} of the packets gateways listened for were lost "
            "to collisions or Wi-Fi (fewer tags per area, longer advertising intervals, or more channels)")
    return reasons


def engine_config_for(
    scenario: Scenario, twin: TwinResult, survey_mean_dbm: NDArray[np.floating] | None = None,
    warehouse: WarehouseTwin | None = None,
) -> EngineConfig:
    """The engine a scenario asks for. ``survey_mean_dbm`` (cells, gateways) is the twin's
    own mean RSSI on the radio grid (:func:`survey_of`), used for ``radio_map = "survey"``:
    what a perfect calibration walk would measure. ``warehouse`` is the twin whose radio a
    ``shadowing_map`` is made of (by default the scenario's own, built here: its radio
    depends on the seed alone, so a live server gets the map a run gets)."""
    eng = scenario.engine
    # Any path-loss family maps to the log-distance exponent a localizer assumes.
    exponent = eng.path_loss_exponent or effective_exponent(path_loss_model(scenario))
    sigma_db = max(scenario.radio.shadowing_sigma_db, 1.0)
    grid = Grid.covering(twin.site.outline.bounds, scenario.radio.grid_m)
    obstacle_map = None
    if eng.use_site_plan and len(twin.site.obstacles()):
        loss = crossing_loss_db(twin.site.obstacles(), grid.centres(), twin.gateways.xyz[:, :2])
        obstacle_map = ObstacleMap(grid, loss.astype(np.float32))
    if eng.shadowing_map != "none":
        base = obstacle_map or ObstacleMap(grid, np.zeros((len(grid.centres()), len(twin.gateways.ids)), np.float32))
        warehouse = warehouse or WarehouseTwin(scenario)
        model = RadioMap.from_model(
            grid, np.ones(len(base.loss), bool), twin.gateways.xyz, exponent, sigma_db, scenario.site.tag_height_m,
            reference_tx_power(warehouse.fleet), base)
        correction = shadowing_correction_db(scenario, warehouse, model)
        obstacle_map = ObstacleMap(grid, (base.loss + correction).astype(np.float32))
    radio_map = floor_plan = None
    if eng.localizer in ("knn", "radio-map") or eng.tracker in ("hmm", "particle"):
        site = twin.site
        floor_plan = FloorPlan.from_geometry(
            site.outline, site.racks, site.walls, cell_m=min(0.25, scenario.radio.grid_m))
        free = floor_plan.cell_free(grid)
        tx_ref = reference_tx_power(twin)
        if eng.radio_map == "survey" and survey_mean_dbm is not None:
            # The survey measured walls and shadowing too: what is left is fast fading
            # averaged over a window, about 2 dB; trackers still widen it for correlated windows.
            radio_map = RadioMap(grid, free, np.asarray(survey_mean_dbm, np.float32),
                                 np.full(len(twin.gateways.ids), 2.0), None, tx_ref, 1.5)
        else:
            radio_map = RadioMap.from_model(
                grid, free, twin.gateways.xyz, exponent, sigma_db, scenario.site.tag_height_m, tx_ref,
                obstacle_map, track_inflation=1.5)
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
        wls_cell_edges=eng.wls_cell_edges,
        wls_gateway_starts_above=eng.wls_gateway_starts_above,
        wls_warm_start=eng.wls_warm_start,
        localizer=eng.localizer,
        tracker=eng.tracker,
        radio_map=radio_map,
        floor_plan=floor_plan,
        particles=eng.particles,
        tracker_speed_mps=eng.tracker_speed_mps,
        smoother_lag_s=eng.smoother_lag_s,
        zone_hysteresis=eng.zone_hysteresis,
        seed=int(np.random.SeedSequence(scenario.seed).generate_state(1)[0]),
    )


def shadowing_correction_db(scenario: Scenario, warehouse: WarehouseTwin, model: RadioMap) -> FloatArray:
    """What to add to the localizer's obstacle losses (cells, gateways) so that its
    predicted mean RSSI, ``model`` (log-distance plus the site plan's losses, the
    localizer's own prediction), becomes the site's: ``model - measured``. With
    ``shadowing_map = "survey"`` the measurement is the twin's exact mean (an oracle);
    with ``"walk"`` it is a calibration walk of the twin (twin.walk.calibration_walk):
    each stop's link means, fitted from censored readings, minus the model there, kriged
    over the grid with the site's shadowing sigma and decorrelation distance, so the
    correction shrinks to 0 far from the walk (radio_models.calibration)."""
    radio = warehouse.radio
    if radio.grid != model.grid:
        raise ValueError(f"the twin's radio grid {radio.grid} is not the localizer's {model.grid}")
    if scenario.engine.shadowing_map == "survey":
        return np.asarray(model.mean_dbm - radio.mean_rssi_cells(model.tx_ref_dbm), dtype=float)
    rs = scenario.radio
    walk = calibration_walk(
        radio, warehouse.site, warehouse.sensitivity_dbm, model.tx_ref_dbm, scenario.seed,
        warehouse.report, (rs.temporal_sigma_db, rs.temporal_coherence_s), scenario.engine.walk_spacing_m,
        scenario.engine.walk_stop_s)
    stops, n_gw, n_read = walk.rssi.shape
    rep = rs.report
    centres = model.grid.centres()
    fading = radio.effects.fading_table_db.astype(float)
    offsets = np.asarray(radio.effects.channel_offset_db, dtype=float)
    key = _digest(walk.rssi, walk.channel, walk.sensitivity_dbm, walk.xy, walk.cells, model.mean_dbm, centres,
                  fading, offsets, np.array([rep.quantization_db, rep.miss_probability, rs.shadowing_sigma_db,
                                             rs.decorrelation_m], dtype=float))
    with _CORRECTIONS_LOCK:
        known = _CORRECTIONS.get(key)
    if known is not None:
        return known
    mean, var = censored_link_means(
        walk.rssi.reshape(stops * n_gw, n_read), walk.channel.reshape(stops * n_gw, n_read),
        np.repeat(walk.sensitivity_dbm[None, :], stops, axis=0).ravel(), fading, offsets,
        rep.quantization_db, rep.miss_probability)
    resid = mean.reshape(stops, n_gw) - model.mean_dbm[walk.cells]
    var = var.reshape(stops, n_gw)
    field = np.column_stack([
        simple_kriging(walk.xy, resid[:, g], var[:, g], centres, rs.shadowing_sigma_db, rs.decorrelation_m)
        for g in range(n_gw)
    ])
    correction = np.asarray(-field)
    correction.flags.writeable = False  # shared between the runs that ask for it again
    with _CORRECTIONS_LOCK:
        if len(_CORRECTIONS) >= _CORRECTIONS_MAX:
            del _CORRECTIONS[next(iter(_CORRECTIONS))]  # the oldest
        _CORRECTIONS[key] = correction
    return correction


def _digest(*arrays: NDArray[np.generic]) -> bytes:
    """A SHA-256 of arrays' dtypes, shapes and bytes (in C order)."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(f"{a.dtype.str}{a.shape};".encode())
        h.update(a.tobytes())  # C order whatever the array's layout
    return h.digest()


def reference_tx_power(twin: TwinResult | Fleet) -> float:
    """The tag power radio maps are drawn for (the fleet's median); other tags are shifted."""
    tx = getattr(twin, "tx_power_1m_dbm", None)
    return float(np.median(tx)) if tx is not None and len(tx) else -59.0


def survey_of(warehouse: WarehouseTwin, result: TwinResult) -> NDArray[np.floating]:
    """A perfect calibration walk of the twin: its mean RSSI at every radio-grid cell."""
    return warehouse.radio.mean_rssi_cells(reference_tx_power(result))


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


def rule_context_for(scenario: Scenario, twin: WarehouseTwin, config: EngineConfig | None = None) -> RuleContext:
    """The registry the rules see: device ids, their tag class (group) and its interval;
    with the engine's ``config``, the radio map the misplaced rule's rest check reads."""
    rest = rest_map_for(scenario, config, twin) if config is not None else None
    return registry_context(scenario, twin.site.zones, twin.gateways, twin.fleet.ids, rest_map=rest)


def rest_map_for(
    scenario: Scenario, config: EngineConfig, warehouse: WarehouseTwin | None = None, copies: int = 1,
) -> RestMap | None:
    """The misplaced rule's view of the localizer's radio map (engine/rules/rest.py): the
    mean RSSI the engine predicts on its radio grid (log-distance, the site plan's losses
    and the walk's shadowing map: ``config``'s own obstacle map) over the cells inside
    the outline, and the receiver model of the scenario's gateways (sensitivity, fading,
    channel offsets, reporting step). None when the rule does not use it."""
    rule = scenario.rules.misplaced
    if not (rule.enabled and rule.rest_check):
        return None
    warehouse = warehouse or WarehouseTwin(scenario)
    grid = config.obstacle_map.grid if config.obstacle_map is not None else Grid.covering(
        warehouse.site.outline.bounds, scenario.radio.grid_m)
    centres = grid.centres()
    free = shapely.contains_xy(warehouse.site.outline, centres[:, 0], centres[:, 1])
    tx_ref = reference_tx_power(warehouse.fleet)
    model = RadioMap.from_model(grid, free, config.gateways.xyz, config.path_loss_exponent, config.sigma_db,
                                config.tag_height_m, tx_ref, config.obstacle_map)
    tx = np.tile(np.repeat([g.tx_power_1m_dbm for g in scenario.tags], [g.count for g in scenario.tags]),
                 max(1, copies)).astype(float)
    effects = warehouse.radio.effects
    report = scenario.radio.report
    return RestMap(
        cell_xy=centres[free], mean_dbm=model.mean_dbm[free], tx_ref_dbm=tx_ref, device_tx_dbm=tx,
        sensitivity_dbm=np.asarray(warehouse.sensitivity_dbm, dtype=float),
        fading_quantiles_db=np.asarray(effects.fading_table_db, dtype=float),
        channel_offset_db=np.asarray(effects.channel_offset_db, dtype=float),
        quantization_db=report.quantization_db, miss_probability=max(report.miss_probability, 0.02),
        map_sigma_db=rule.rest_map_sigma_db,
    )


def registry_ids(scenario: Scenario, copies: int = 1) -> tuple[list[str], NDArray[np.int32]]:
    """The registered device ids and their class codes (tag group): the scenario's fleet,
    then, for a load test that multiplies it (tagtwin/loadgen.py), copy k = 1..copies-1 of
    every fleet tag in fleet order, each with its original's class."""
    fleet = [tid for g in scenario.tags for tid in tag_ids(g.name, g.count)]
    classes = np.repeat(np.arange(len(scenario.tags), dtype=np.int32), [g.count for g in scenario.tags])
    ids = fleet + [copy_id(tid, k) for k in range(1, copies) for tid in fleet]
    return ids, np.tile(classes, max(1, copies))


def registry_context(
    scenario: Scenario, zones: ZoneIndex, gateways: GatewayInfo, device_ids: list[str] | None = None,
    copies: int = 1, rest_map: RestMap | None = None,
) -> RuleContext:
    """A rule context whose registry is the scenario's tag fleet (ids as the twin names
    them, class = tag group), extended by ``copies`` - 1 load-test copies of it
    (:func:`registry_ids`). ``device_ids`` may be a live IdTable's growing list that
    starts with the registry in that order; devices past it are unregistered."""
    registry, classes = registry_ids(scenario, copies)
    if device_ids is None:
        device_ids = registry
    if device_ids[: len(registry)] != registry:
        raise ValueError("device_ids must start with the registry (the scenario's fleet, then its copies), in order")
    return RuleContext(
        zones=zones,
        device_ids=device_ids,
        device_class=classes,
        class_names=tuple(g.name for g in scenario.tags),
        class_interval_s=np.array([g.adv_interval_ms / 1000 for g in scenario.tags]),
        gateway_ids=gateways.ids,
        gateway_xy=gateways.xyz[:, :2].copy(),
        site_outline=shapely.Polygon(scenario.site.outline),
        site_walls=tuple(shapely.LineString(w.points) for w in scenario.site.walls),
        rest_map=rest_map,
    )


def rule_tally(
    scenario: Scenario, twin: WarehouseTwin, events: Sequence[Event], log: IncidentLog
) -> ScoreTally:
    """The run's rule scoring counts; tallies of several seeds merge into one report."""
    interval = {tag: float(twin.fleet.adv_interval_s[i]) for i, tag in enumerate(twin.fleet.ids)}
    return tally_events(events, log.records, len(twin.fleet), scenario.duration_s,
                        interval_s=interval)


def rule_metrics(
    scenario: Scenario, twin: WarehouseTwin, result: TwinResult, rules: RuleEngine,
    *, events: list[Event], log: IncidentLog, tally: ScoreTally,
) -> dict[str, object]:
    """Rule scores for the report: per-rule precision/recall/delay, alarm rates, count accuracy."""
    scores = score_report(tally)
    gone_at = np.full(len(twin.fleet), np.inf)
    code = {tag: i for i, tag in enumerate(twin.fleet.ids)}
    for rec in [*log.records, *log.legit_exits]:
        if rec.kind in ("theft", "exit") and rec.tag is not None:
            gone_at[code[rec.tag]] = rec.t
    counts = rules.cycle_counts
    times = sorted({c.t for c in counts})
    truth = true_zone_counts(result.truth, result.site.zones, times, gone_at)
    by_rule: dict[str, int] = {}
    for ev in events:
        by_rule[ev.rule] = by_rule.get(ev.rule, 0) + 1
    per_rule = scores.pop("per_rule")
    assert isinstance(per_rule, dict)
    return {
        **per_rule,
        **scores,
        "ruleset_version": scenario.rules.version,
        "events_by_rule": dict(sorted(by_rule.items())),
        "count_accuracy": count_accuracy([(c.t, c.zone, c.seen) for c in counts], truth),
        "legit_exits": len(log.legit_exits),
        "incidents_skipped": log.skipped,
    }


def simulate(
    scenario: Scenario,
    progress: Callable[[float], None] | None = None,
    *,
    fixes: NDArray[np.void] | None = None,
    score: bool = True,
) -> SimulationRun:
    """The whole run. ``fixes`` given (an earlier run's ``SimulationRun.fixes`` for the same
    scenario and seed) replaces localization and tracking: long benchmark runs keep the slow
    part once and score rule changes on it again. ``score=False`` skips the position and rule
    scores (``metrics`` stays empty): benchmarks that read only the events save that time."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    twin = WarehouseTwin(scenario)
    injector = IncidentInjector(twin, scenario)
    timings["setup_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    result = twin.run(progress)
    timings["twin_s"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    survey = survey_of(twin, result) if scenario.engine.radio_map == "survey" else None
    engine = Engine(engine_config_for(scenario, result, survey, twin), result.tx_power_1m_dbm)
    if fixes is None:
        fixes = feed_engine(engine, result.sightings, scenario.duration_s)
    timings["engine_s"] = time.perf_counter() - t2
    windows = max(scenario.duration_s / engine.config.step_s, 1.0)
    timings["engine_ms_per_window"] = 1000.0 * timings["engine_s"] / windows
    cfg = engine.config
    bound = BoundSetup(result.gateways.xyz, cfg.path_loss_exponent, cfg.sigma_db, cfg.tag_height_m)
    latency = LatencySetup(result.sightings["t"], cfg.step_s, cfg.allowed_lateness_s)
    t3 = time.perf_counter()
    sink = ListSink()
    rules = RuleEngine(scenario.rules, rule_context_for(scenario, twin, engine.config), [sink])
    site_states = SiteStateRecorder(rules)
    rules.sinks.append(site_states)
    feed = injector.log.checkout_feed()
    max_delay = scenario.checkouts.feed_delay_s[1] if len(feed) else 0.0
    feed_rules(rules, result.sightings, fixes, feed if len(feed) else np.zeros(0, FEED_DTYPE),
               end_t=scenario.duration_s, step_s=scenario.engine.step_s, feed_max_delay_s=max_delay)
    timings["rules_s"] = time.perf_counter() - t3
    if not score:
        timings["total_s"] = time.perf_counter() - t0
        return SimulationRun(scenario, result, fixes, {}, engine.counters.as_dict(), timings,
                             sink.events, injector.log, site_states.states)
    metrics = evaluate(fixes, result.truth, result.site.zones, len(result.device_ids), scenario.duration_s,
                       len(result.sightings), bound, latency)
    tally = rule_tally(scenario, twin, sink.events, injector.log)
    metrics["rules"] = rule_metrics(scenario, twin, result, rules, events=sink.events,
                                    log=injector.log, tally=tally)
    metrics["why"] = why_accuracy(metrics, result.stats, len(result.device_ids))
    timings["total_s"] = time.perf_counter() - t0
    return SimulationRun(scenario, result, fixes, metrics, engine.counters.as_dict(), timings,
                         sink.events, injector.log, site_states.states, tally)


def simulate_keeping_fixes(
    scenario: Scenario, fixes_dir: Path | None, *, score: bool = True
) -> tuple[SimulationRun, bool]:
    """:func:`simulate`, keeping the fixes (localization and tracking, the slow part) in
    ``fixes_dir`` under the scenario's name, seed and duration and reusing them when they are
    there, so benchmarks can rescore rule changes on long runs. Delete the directory when the
    localizer or tracker changes. Returns the run and whether the fixes were reused."""
    path = fixes_dir / f"{scenario.name}-seed{scenario.seed}-{scenario.duration_s:g}s.npz" if fixes_dir else None
    if path is not None and path.exists():
        return simulate(scenario, fixes=load_fixes(path), score=score), True
    run = simulate(scenario, score=score)
    if path is not None:
        save_fixes(path, run.fixes)
    return run, False


def save_fixes(path: Path, fixes: NDArray[np.void]) -> None:
    """Keep fixes as ``np.savez_compressed(path, fixes=...)`` would, readable by
    ``np.load(path)["fixes"]`` like every kept run before, but deflated at level 1: half the
    CPU of the default level 6 for 10 % more bytes (an hour of the demo: 1.6 s and 38 MB
    against 3.0 s and 34 MB). Written to a temporary name first, so a run cut short leaves
    no half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    with (zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf,
          zf.open("fixes.npy", "w", force_zip64=True) as f):
        np.lib.format.write_array(f, np.ascontiguousarray(fixes), allow_pickle=False)
    tmp.replace(path)


def load_fixes(path: Path) -> NDArray[np.void]:
    """Fixes kept by :func:`save_fixes` (or ``np.savez_compressed(path, fixes=...)``)."""
    with np.load(path, allow_pickle=False) as npz:
        if "fixes" not in npz.files:
            raise ValueError(f"{path}: no 'fixes' array (entries: {', '.join(npz.files)})")
        fixes: NDArray[np.void] = npz["fixes"]
        return fixes


def _dictionary(codes: NDArray[np.integer], ids: Sequence[str]) -> pa.DictionaryArray:
    return pa.DictionaryArray.from_arrays(pa.array(codes, pa.int32()), pa.array(list(ids), pa.string()))


def _table(arr: NDArray[np.void], ids: dict[str, Sequence[str]] | None = None) -> pa.Table:
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
    names: dict[str, Sequence[str]] = {"device": twin.device_ids, "gateway": twin.gateways.ids}
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
    paths["events"] = out_dir / "events.jsonl"
    sink = JsonLinesSink(paths["events"])
    sink.emit(run.events)
    sink.close()
    paths["audit"] = write_audit(run, out_dir / "audit.jsonl")
    paths["incidents"] = out_dir / "incidents.json"
    checkouts = [{"t": round(float(t), 4), "arrival": round(float(a), 4),
                  "tag": twin.device_ids[int(d)]} for t, a, d in run.incidents.feed]
    incidents = {"incidents": [r.to_dict() for r in run.incidents.records],
                 "legit_exits": [r.to_dict() for r in run.incidents.legit_exits],
                 "checkouts": checkouts}
    paths["incidents"].write_text(json.dumps(incidents, indent=2) + "\n")
    paths["report"] = out_dir / "report.json"
    paths["report"].write_text(json.dumps(run.report(), indent=2, sort_keys=True) + "\n")
    paths["summary"] = out_dir / "summary.txt"
    paths["summary"].write_text(summary_text(run) + "\n")
    paths["perf"] = out_dir / "perf.json"
    perf = dict(run.timings_s)
    perf["sightings_per_wall_second"] = len(twin.sightings) / max(run.timings_s.get("twin_s", 0.0), 1e-9)
    perf_out: dict[str, object] = {k: round(v, 4) for k, v in perf.items()}
    perf_out["created_utc"] = datetime.now(UTC).isoformat(timespec="seconds")
    paths["perf"].write_text(json.dumps(perf_out, indent=2, sort_keys=True) + "\n")
    return paths


def model_version(scenario: Scenario) -> dict[str, object]:
    """What made the fixes an event rests on: the engine and radio settings, and a digest."""
    settings = {"engine": scenario.engine.model_dump(mode="json"), "radio": scenario.radio.model_dump(mode="json")}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    return {"contract_version": CONTRACT_VERSION, "settings_sha256": digest, **settings}


def write_audit(run: SimulationRun, path: Path) -> Path:
    """audit.jsonl: every money-relevant event with its own copy of the evidence
    (engine/audit.py); ``tagtwin audit EVENT_ID`` re-derives one from it."""
    twin, sc = run.twin, run.scenario
    ctx = registry_context(sc, twin.site.zones, twin.gateways, list(twin.device_ids))
    audit_ctx = AuditContext(
        ruleset=sc.rules, zones=twin.site.zones, gateway_ids=twin.gateways.ids,
        gateway_xy=twin.gateways.xyz[:, :2], class_names=ctx.class_names, class_interval_s=ctx.class_interval_s,
        device_class=ctx.device_class, device_ids=twin.device_ids, step_s=sc.engine.step_s,
        feed_max_delay_s=sc.checkouts.feed_delay_s[1] if len(run.incidents.feed) else 0.0,
        model=model_version(sc),
    )
    path.unlink(missing_ok=True)  # one log per run directory
    AuditLog(path).append(money_records(run.events, twin.sightings, run.fixes, audit_ctx, run.site_states))
    return path


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
        *(f"why: {reason}" for reason in m.get("why", [])),  # type: ignore[attr-defined]
    ])


@dataclass(frozen=True)
class BoundResult:
    """One expected-metric bound of a scenario, checked against a run's report."""

    metric: str
    min: float | None
    max: float | None
    value: float | None  # None: the report has no such metric

    @property
    def ok(self) -> bool:
        v = self.value
        return v is not None and (self.min is None or v >= self.min) and (self.max is None or v <= self.max)

    @property
    def bound_text(self) -> str:
        parts = [f">= {self.min:g}" if self.min is not None else "", f"<= {self.max:g}" if self.max is not None else ""]
        return " ".join(p for p in parts if p)


def report_metric(report: dict[str, object], name: str) -> float | None:
    """A metric of report.json's ``metrics`` by dotted name (``moving.median_error_m``)."""
    node: object = report.get("metrics", {})
    for part in name.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return float(node) if isinstance(node, int | float) and not isinstance(node, bool) else None


def check_bounds(scenario: Scenario, report: dict[str, object]) -> list[BoundResult]:
    """Every ``[expected]`` bound of the scenario against a run's report."""
    return [BoundResult(name, b.min, b.max, report_metric(report, name)) for name, b in scenario.expected.items()]
