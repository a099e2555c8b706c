"""Spatial partitions at their borders: the same traffic through one worker and through
one worker per cell (sans-IO, as the backbone's filtered consumers feed them), at several
margins. Prints JSON: per margin, the gateways each cell reads, the (device, window)
positions published once / by several cells / missing, and how many differ from the
single-partition run and by how much (metres).

    .venv/bin/python benchmarks/cells_border.py [--scenario tests/data/cells-corridor.toml] [--seconds 120]
        [--margins 0,10,20,auto] [--grid 2x1]

``auto`` is the traffic's co-hearing extent (engine.cells.max_co_hearing_m): the margin
with which every cell decides on all of a tag's sightings.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import emit

from engine.cells import CellPlan, max_co_hearing_m
from live_bridge.cells import compare_to_single, latest_by_partition, replay_cells
from tagtwin.live import site_engine_config
from tagtwin.loadgen import stored_batches
from tagtwin.loadtest import site_traffic
from twin.scenario import load_scenario

REPO = Path(__file__).resolve().parents[1]


def corridor_batches(scenario: Path, seconds: float, site: str = "big"):  # type: ignore[no-untyped-def]
    """The scenario's twin traffic as stored batches (subject, body, receive time), its
    engine config, keys and plain sighting rows (for the co-hearing extent)."""
    sc = load_scenario(scenario)
    config = site_engine_config(sc)
    tr = site_traffic(sc, site, 0, seconds)
    batches = [(subject, body, received) for subject, _, body, _, received in stored_batches(tr, seconds, 1.7e9)]
    return sc, config, tr, batches


def main(args: argparse.Namespace) -> dict[str, object]:
    import numpy as np

    from engine.contract import sightings_from_columns

    sc, config, tr, batches = corridor_batches(args.scenario, args.seconds)
    rows = sightings_from_columns(t=tr.t, gateway=tr.gateway, device=tr.device, rssi=tr.rssi,
                                  channel=tr.channel, battery=tr.battery, motion=tr.motion, seq=tr.seq)
    extent = max_co_hearing_m(rows, config.gateways.xyz[:, :2], config.window_s, config.step_s)
    t = time.process_time()
    single = latest_by_partition(replay_cells(config, tr.keys, None, batches, "big"))
    single_cpu = time.process_time() - t
    reference = {k: v[0][2] for k, v in single.items()}
    grid = tuple(int(v) for v in args.grid.split("x")) if args.grid else (sc.cells.grid if sc.cells else (2, 1))
    runs = []
    for m in args.margins.split(","):
        margin = extent if m == "auto" else float(m)
        plan = CellPlan.grid(config, grid[0], grid[1], margin)
        t = time.process_time()
        published = latest_by_partition(replay_cells(config, tr.keys, plan, batches, "big"))
        cpu = time.process_time() - t
        runs.append({
            "margin_m": round(margin, 2), "cells": list(plan.names),
            "gateways_read": {plan.names[c]: len(plan.gateways_of(c)) for c in range(len(plan))},
            "border_gateways": len(plan.border_gateways()),
            **compare_to_single(reference, published, plan), "cpu_s": round(cpu, 2),
        })
    return {"scenario": str(args.scenario), "seconds": args.seconds, "sightings": len(tr.t),
            "gateways": len(config.gateways.ids), "grid": list(grid), "co_hearing_extent_m": round(extent, 2),
            "single_cpu_s": round(single_cpu, 2), "single_windows": len(reference),
            "runs": runs, "load_avg_1m": round(os.getloadavg()[0], 2),
            "_check": bool(np.isfinite(extent))}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenario", type=Path, default=REPO / "tests" / "data" / "cells-corridor.toml")
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--margins", default="0,10,20,auto")
    ap.add_argument("--grid", default="", help="COLSxROWS (default: the scenario's [cells], else 2x1)")
    emit("cells_border", main(ap.parse_args()))
