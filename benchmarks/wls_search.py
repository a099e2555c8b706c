"""The ML localizer's search settings against the twin's truth: position error (median,
p90, mean), row solves and CPU of one engine, paired on the same traffic. Prints JSON,
one line per variant.

A variant is ``default`` or a ``+``-joined list of ``edges`` ([engine] wls_cell_edges),
``warm`` (EngineConfig.wls_warm_start) and ``startsK`` (wls_gateway_starts_above = K),
e.g. ``edges+starts3``. Each runs a fresh
engine (``twin.run.feed_engine``) over the same twin run; ``fixes_sha256`` tells whether
positions moved. CPU is process time, so compare variants of the same run (the machine's
load, printed, inflates it).

Run: ``python benchmarks/wls_search.py --scenario scenarios/large.toml --duration 30
default edges+starts3``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def settings_of(variant: str) -> dict[str, Any]:
    """EngineConfig fields of a variant name."""
    out: dict[str, Any] = {"wls_cell_edges": False, "wls_gateway_starts_above": 0.0, "wls_warm_start": False}
    for part in variant.split("+"):
        if part == "edges":
            out["wls_cell_edges"] = True
        elif part == "warm":
            out["wls_warm_start"] = True
        elif part.startswith("starts"):
            out["wls_gateway_starts_above"] = float(part.removeprefix("starts"))
        elif part != "default":
            raise SystemExit(f"unknown variant part {part!r}: use default, edges, warm or startsK")
    return out


def main(scenario: Path, duration: float | None, variants: list[str]) -> None:
    from engine import localize
    from engine.evaluate import position_errors
    from engine.pipeline import Engine
    from twin.run import engine_config_for, feed_engine
    from twin.scenario import load_scenario
    from twin.sim import WarehouseTwin

    sc = load_scenario(scenario)
    if duration is not None:
        sc = sc.model_copy(update={"duration_s": duration})
    result = WarehouseTwin(sc).run()
    cfg = engine_config_for(sc, result)
    newton = localize.newton_rows
    tally = {"cpu_s": 0.0, "rows": 0}

    def timed(*args: Any) -> Any:
        t0 = time.process_time()
        out = newton(*args)
        tally["cpu_s"] += time.process_time() - t0
        tally["rows"] += len(args[0])
        return out

    localize.newton_rows = timed  # type: ignore[assignment]
    for variant in variants:
        engine = Engine(dataclasses.replace(cfg, **settings_of(variant)), result.tx_power_1m_dbm)
        tally.update(cpu_s=0.0, rows=0)
        c0 = time.process_time()
        fixes = feed_engine(engine, result.sightings, sc.duration_s)
        cpu = time.process_time() - c0
        err = position_errors(fixes, result.truth)
        print(json.dumps({
            "scenario": str(scenario), "duration_s": sc.duration_s, "variant": variant, "fixes": len(fixes),
            "median_m": round(float(np.median(err)), 4), "p90_m": round(float(np.quantile(err, 0.9)), 4),
            "mean_m": round(float(err.mean()), 4), "row_solves": tally["rows"],
            "engine_cpu_s": round(cpu, 3), "newton_cpu_s": round(tally["cpu_s"], 3),
            "fixes_sha256": hashlib.sha256(fixes.tobytes()).hexdigest()[:16],
            "load_1min": round(os.getloadavg()[0], 2),
        }), flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", type=Path, default=ROOT / "scenarios" / "large.toml")
    ap.add_argument("--duration", type=float, default=None, help="site seconds (default: the scenario's)")
    ap.add_argument("variants", nargs="+")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    main(args.scenario, args.duration, args.variants)
