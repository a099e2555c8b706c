"""The large warehouse (10,000 tags, 54 gateways, 1 s advertising) for an hour of site
time: wall time, peak memory (resource.getrusage) and what the air did. Prints JSON.

Sightings stream to a sink that counts them per gateway (an hour is ~10^8 sightings:
kept in memory they alone would pass the 4 GB budget; a deployment would write them to
parquet or MQTT chunk by chunk). ``--duration`` runs a shorter slice to extrapolate.

``--pipeline`` runs the whole pipeline the same way, streaming: the twin's sightings go,
30 s of event time at a time, to the engine (:class:`engine.parallel.PartitionedEngine`,
``--workers`` processes, the scenario's localizer and tracker) and to the rules
(:class:`twin.run.RuleFeeder`, one step a second, in this process), which work on one
chunk's fixes while the twin simulates the next and the workers localize it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from twin.scenario import load_scenario
from twin.sim import WarehouseTwin

if TYPE_CHECKING:
    from collections.abc import Sequence

    from numpy.typing import NDArray

    from engine.contract import Sightings
    from engine.parallel import PartitionedEngine
    from engine.rules import Event
    from twin.run import RuleFeeder

ROOT = Path(__file__).resolve().parents[1]
FEED_S = 30.0  # event time handed to the engine at once, as twin.run.FEED_CHUNK_S


class CountingSink:
    """Receives each tick's sightings and keeps only counts."""

    def __init__(self) -> None:
        self.per_gateway = np.zeros(0, dtype=np.int64)
        self.count = 0
        self.rssi_sum = 0.0

    def __call__(self, rows: Sightings) -> None:
        counts = np.bincount(rows["gateway"])
        if len(counts) > len(self.per_gateway):
            self.per_gateway = np.pad(self.per_gateway, (0, len(counts) - len(self.per_gateway)))
        self.per_gateway[: len(counts)] += counts
        self.count += len(rows)
        self.rssi_sum += float(rows["rssi"].sum(dtype=np.float64))


class CountingEvents:
    """A rule-event sink that keeps only counts per rule."""

    def __init__(self) -> None:
        self.by_rule: dict[str, int] = {}

    def emit(self, events: Sequence[Event]) -> None:
        for ev in events:
            self.by_rule[ev.rule] = self.by_rule.get(ev.rule, 0) + 1

    def close(self) -> None:
        return None


class PipelineSink:
    """Receives the twin's ticks; every ``FEED_S`` of event time hands them to the engine
    workers, then (while they localize) steps the rules over the previous chunk."""

    def __init__(self, engine: PartitionedEngine, feeder: RuleFeeder) -> None:
        self.engine, self.feeder = engine, feeder
        self.pending: list[Sightings] = []
        self.next_t = FEED_S
        self.waiting = False
        self.done_t = 0.0
        self.count = 0
        self.fixes = 0

    def __call__(self, rows: Sightings) -> None:
        self.count += len(rows)
        self.pending.append(rows)
        if len(rows) and float(rows["t"].max()) >= self.next_t:
            self.hand_over()
            self.next_t += FEED_S

    def hand_over(self, end_t: float | None = None) -> None:
        chunk = np.concatenate(self.pending) if self.pending else None
        self.pending = []
        self.collect()
        if chunk is not None and len(chunk):
            self.engine.ingest(chunk)
            self.feeder.add(sightings=chunk)
        if end_t is None:
            self.engine.start_advance()
            self.waiting = True
            self.feeder.step_until(self.done_t)
        else:
            self.take(self.engine.flush(end_t))
            self.feeder.flush(end_t)

    def collect(self) -> None:
        if self.waiting:
            self.take(self.engine.finish_advance())
            self.waiting = False

    def take(self, fixes: NDArray[np.void]) -> None:
        self.fixes += len(fixes)
        self.feeder.add(fixes=fixes)
        if len(fixes):
            self.done_t = max(self.done_t, float(fixes["t"].max()))


def pipeline(duration_s: float, workers: int) -> dict[str, object]:
    """Twin + engine + rules on ``duration_s`` of the large site, streaming."""
    from engine.parallel import PartitionedEngine
    from engine.rules import RuleEngine
    from twin.run import RuleFeeder, engine_config_for, rule_context_for

    sc = load_scenario(ROOT / "scenarios" / "large.toml").model_copy(update={"duration_s": duration_s})
    c0 = time.process_time()
    t0 = time.perf_counter()
    probe = WarehouseTwin(sc.model_copy(update={"duration_s": 1.0}))  # the site, for the config
    cfg = engine_config_for(sc, probe.run())
    events = CountingEvents()
    with PartitionedEngine(cfg, probe.fleet.tx_power_1m_dbm, workers) as engine:
        feeder = RuleFeeder(RuleEngine(sc.rules, rule_context_for(sc, probe, cfg), [events]),
                            step_s=sc.engine.step_s)
        sink = PipelineSink(engine, feeder)
        twin = WarehouseTwin(sc, sink=sink)
        t1 = time.perf_counter()
        result = twin.run()
        t2 = time.perf_counter()
        sink.hand_over(end_t=duration_s)
        t3 = time.perf_counter()
        counters = engine.counters.as_dict()
    cpu_main = time.process_time() - c0
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = t3 - t0
    return {
        "benchmark": "large_site_pipeline",
        "tags": len(twin.fleet),
        "gateways": len(twin.gateways.ids),
        "site_time_s": duration_s,
        "workers": workers,
        "wall_s": round(wall, 1),
        "wall_s_per_site_hour": round((t1 - t0) + (t3 - t1) * 3600 / duration_s, 1),
        "target_wall_s_per_site_hour": 600,
        "setup_s": round(t1 - t0, 1),
        "twin_and_overlapped_engine_rules_s": round(t2 - t1, 1),
        "drain_after_twin_s": round(t3 - t2, 1),
        "cpu_s_main": round(cpu_main, 1),
        "cpu_s_workers": round(children.ru_utime + children.ru_stime, 1),
        "sightings": sink.count,
        "sightings_per_wall_s": round(sink.count / max(t3 - t1, 1e-9)),
        "fixes": sink.fixes,
        "rule_events_by_rule": dict(sorted(events.by_rule.items())),
        "engine": counters,
        "twin": result.stats,
        "load_average_1m": round(os.getloadavg()[0], 2),
        "peak_rss_mb_main": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_rss_mb_largest_worker": round(children.ru_maxrss / 1024, 1),
    }


def main(duration_s: float = 3600.0) -> dict[str, object]:
    sc = load_scenario(ROOT / "scenarios" / "large.toml").model_copy(
        update={"duration_s": duration_s}
    )
    sink = CountingSink()

    c0 = time.process_time()
    t0 = time.perf_counter()
    twin = WarehouseTwin(sc, sink=sink)
    t1 = time.perf_counter()
    result = twin.run()
    t2 = time.perf_counter()
    cpu = time.process_time() - c0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    wall = t2 - t0
    return {
        "benchmark": "large_scenario",
        "tags": len(twin.fleet),
        "gateways": len(twin.gateways.ids),
        "site_time_s": duration_s,
        "setup_s": round(t1 - t0, 2),
        "run_s": round(t2 - t1, 2),
        "wall_s": round(wall, 2),
        "wall_s_per_site_hour": round((t1 - t0) + (t2 - t1) * 3600 / duration_s, 1),
        "cpu_s": round(cpu, 1),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "peak_rss_mb": round(peak_mb, 1),
        "target_wall_s_per_hour": 120,
        "target_peak_mb": 4096,
        "sightings": sink.count,
        "sightings_per_wall_s": round(sink.count / max(t2 - t1, 1e-9)),
        "mean_rssi_dbm": round(sink.rssi_sum / max(sink.count, 1), 2),
        "sightings_per_gateway_min_max": [int(sink.per_gateway.min()), int(sink.per_gateway.max())],
        "twin": result.stats,
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=3600.0, help="site seconds to simulate")
    ap.add_argument("--pipeline", action="store_true", help="twin + engine + rules, streaming")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="engine processes (--pipeline)")
    args = ap.parse_args()
    out = pipeline(args.duration, args.workers) if args.pipeline else main(args.duration)
    print(json.dumps(out, indent=2))
