"""Rule-engine throughput: position updates (fixes) per wall-clock second.

10,000 tags on the large-scenario floor (120 x 80 m, 12 zones incl. an exit), one fix per
tag per 1 s step, plus their sightings (3 gateways each), fed step by step as twin/run.py
does. Prints JSON. Target (issue 5): >= 100,000 position updates per second.
Usage: python benchmarks/bench_rules.py [--tags N] [--steps N]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from engine.contract import sightings_from_columns
from engine.pipeline import FIX_DTYPE
from engine.rules import RuleContext, RuleEngine, RuleSet
from siteplan.zones import ZoneIndex


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tags", type=int, default=10_000)
    ap.add_argument("--steps", type=int, default=60)
    args = ap.parse_args()
    rng = np.random.default_rng(5)
    zones = [
        (
            f"storage-{i}-{j}",
            "storage",
            [
                (i * 30, j * 20),
                (i * 30 + 30, j * 20),
                (i * 30 + 30, j * 20 + 20),
                (i * 30, j * 20 + 20),
            ],
        )
        for i in range(4)
        for j in range(3)
    ]
    zones += [
        ("exit", "exit", [(114, 60), (120, 60), (120, 80), (114, 80)]),
        ("office", "office", [(0, 60), (20, 60), (20, 80), (0, 80)]),
    ]
    zi = ZoneIndex.from_points(zones)
    gx, gy = np.meshgrid(np.arange(5, 120, 15.0), np.arange(5, 80, 15.0))
    gw_xy = np.column_stack([gx.ravel(), gy.ravel()])
    n = args.tags
    ctx = RuleContext(
        zones=zi,
        device_ids=[f"tag-{i:05d}" for i in range(n)],
        device_class=(np.arange(n) % 2).astype(np.int32),
        class_names=("pallet", "tote"),
        class_interval_s=np.array([1.0, 0.5]),
        gateway_ids=tuple(f"gw-{i}" for i in range(len(gw_xy))),
        gateway_xy=gw_xy,
    )
    eng = RuleEngine(RuleSet(), ctx)
    xy = np.column_stack([rng.uniform(0, 120, n), rng.uniform(0, 60, n)])
    fix_s = sight_s = adv_s = 0.0
    n_fix = n_sight = n_events = 0
    for k in range(1, args.steps + 1):
        xy += rng.normal(0, 0.3, xy.shape)
        np.clip(xy, [0, 0], [120, 80], out=xy)
        est = xy + rng.normal(0, 2.5, xy.shape)
        f = np.zeros(n, FIX_DTYPE)
        f["t"], f["device"] = float(k), np.arange(n)
        f["x"], f["y"], f["r90"] = est[:, 0], est[:, 1], rng.uniform(2, 8, n)
        f["zone"] = zi.assign(est[:, 0], est[:, 1])
        f["motion"], f["battery"], f["n_gateways"] = rng.random(n) < 0.05, 80, 4
        dev = np.repeat(np.arange(n), 3)
        s = sightings_from_columns(
            t=k - 1 + rng.uniform(0, 1, 3 * n),
            gateway=rng.integers(0, len(gw_xy), 3 * n),
            device=dev,
            rssi=-70.0,
            channel=37,
            seq=np.full(3 * n, k),
        )
        t0 = time.perf_counter()
        n_events += len(eng.observe_sightings(s))
        t1 = time.perf_counter()
        n_events += len(eng.process_fixes(f))
        t2 = time.perf_counter()
        n_events += len(eng.advance(float(k)))
        t3 = time.perf_counter()
        sight_s += t1 - t0
        fix_s += t2 - t1
        adv_s += t3 - t2
        n_fix += n
        n_sight += len(s)
    total = sight_s + fix_s + adv_s
    print(
        json.dumps(
            {
                "benchmark": "rules",
                "tags": n,
                "steps": args.steps,
                "fixes": n_fix,
                "sightings": n_sight,
                "events": n_events,
                "fixes_per_second_rules_only": round(n_fix / (fix_s + adv_s), 1),
                "fixes_per_second_all_inputs": round(n_fix / total, 1),
                "sightings_per_second": round(n_sight / sight_s, 1),
                "wall_s": {
                    "observe_sightings": round(sight_s, 3),
                    "process_fixes": round(fix_s, 3),
                    "advance": round(adv_s, 3),
                },
                "target_fixes_per_second": 100_000,
                "meets_target": n_fix / total >= 100_000,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
