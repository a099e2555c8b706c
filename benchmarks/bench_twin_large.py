"""Sightings the twin generates per wall-clock second on the large scenario.

Only the twin runs (no engine): this measures the synthetic-traffic source.

    python benchmarks/bench_twin_large.py [--duration 60]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, peak_rss_mb  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from twin.scenario import Scenario, load_scenario  # noqa: E402
from twin.sim import WarehouseTwin  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=60.0, help="simulated seconds")
    args = parser.parse_args()
    base = load_scenario(REPO / "scenarios" / "large.toml")
    scenario = Scenario.model_validate(base.model_dump(by_alias=True) | {"duration_s": args.duration})
    t0 = time.perf_counter()
    twin = WarehouseTwin(scenario)
    setup = time.perf_counter() - t0
    t1 = time.perf_counter()
    result = twin.run()
    run = time.perf_counter() - t1
    n = len(result.sightings)
    emit("twin_large_sightings", {
        "scenario": scenario.name,
        "tags": len(result.device_ids),
        "gateways": len(result.gateways.ids),
        "simulated_s": args.duration,
        "setup_s": round(setup, 2),
        "run_s": round(run, 2),
        "sightings": n,
        "sightings_per_wall_s": round(n / run),
        "links_per_wall_s": round(result.stats["links_evaluated"] / run),
        "realtime_factor": round(args.duration / run, 2),
        "peak_rss_mb": round(peak_rss_mb()),
    })


if __name__ == "__main__":
    main()
