"""The large warehouse (10,000 tags, 54 gateways, 1 s advertising) for an hour of site
time: wall time, peak memory (resource.getrusage) and what the air did. Prints JSON.

Sightings stream to a sink that counts them per gateway (an hour is ~10^8 sightings:
kept in memory they alone would pass the 4 GB budget; a deployment would write them to
parquet or MQTT chunk by chunk). ``--duration`` runs a shorter slice to extrapolate.
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
    from engine.contract import Sightings

ROOT = Path(__file__).resolve().parents[1]


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
    print(json.dumps(main(ap.parse_args().duration), indent=2))
