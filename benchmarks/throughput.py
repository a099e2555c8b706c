"""Localization throughput: ML (wls) fixes per second, and one particle-filter step for
10,000 tags (must stay under one second to keep up with tags updating once a second).

Prints JSON. Run: ``.venv/bin/python benchmarks/throughput.py``. Timings are CPU time of
this process (``time.process_time``), the best of ``REPEATS`` runs, on one core
(``OMP_NUM_THREADS=1`` is set before numpy loads): the machine may be shared, and CPU
time is what one core spends whoever else is running.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
import shapely

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.localize import Estimates, ObstacleMap, RadioMap, wls_localize
from engine.track import FloorPlan, ParticleFilter
from radio_models.environment import Grid
from radio_models.geometry import Obstacles, crossing_loss_db

REPEATS = 3


def best_of(fn, repeats: int = REPEATS) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return min(times)


def large_site() -> tuple[np.ndarray, list[shapely.Polygon], tuple[float, float, float, float]]:
    """scenarios/large.toml's shape: 120 x 80 m, gateways every 15 m (54), racks in rows."""
    xs, ys = np.arange(2, 119, 15.0), np.arange(2, 79, 15.0)
    gx, gy = np.meshgrid(xs, ys)
    gw = np.column_stack([gx.ravel(), gy.ravel(), np.full(gx.size, 4.0)])
    racks = [shapely.box(10, y, 110, y + 1.2) for y in np.arange(8, 72, 4.0)]
    return gw, racks, (0.0, 0.0, 120.0, 80.0)


def main() -> None:
    rng = np.random.default_rng(7)
    gw, racks, bounds = large_site()
    n_ml = 200_000
    # ML: tags on a 10 m gateway grid (12 gateways heard), log-distance, sigma 4 dB.
    gx, gy = np.meshgrid(np.arange(5, 40, 10.0), np.arange(5, 30, 10.0))
    gw12 = np.column_stack([gx.ravel(), gy.ravel(), np.full(gx.size, 3.0)])
    xy = rng.uniform([0, 0], [40, 30], (n_ml, 2))
    d = np.sqrt(np.sum((xy[:, None, :] - gw12[None, :, :2]) ** 2, axis=2) + 4.0)
    rssi = -59.0 - 20.0 * np.log10(d) + rng.normal(0, 4, d.shape)
    tx = np.full(n_ml, -59.0)
    t_ml = best_of(lambda: wls_localize(rssi, gw12, tx, 2.0, 4.0, 1.0, (0, 0, 40, 30)))

    # Particle filter on the large site: 10,000 tags, each heard by its 8 loudest gateways.
    plan = FloorPlan.from_geometry(shapely.box(*bounds), racks, cell_m=0.25)
    grid = Grid.covering(bounds, 0.5)
    loss = crossing_loss_db(
        Obstacles(tuple(racks), tuple(12.0 for _ in racks)), grid.centres(), gw[:, :2]
    )
    rmap = RadioMap.from_model(
        grid,
        plan.cell_free(grid),
        gw,
        2.0,
        4.0,
        1.0,
        obstacle_map=ObstacleMap(grid, loss.astype(np.float32)),
        track_inflation=1.5,
    )
    n_tags = 10_000
    tags = rmap.free_xy[rng.choice(len(rmap.free_xy), n_tags)]
    dd = np.sqrt(np.sum((tags[:, None, :] - gw[None, :, :2]) ** 2, axis=2) + 9.0)
    mean = -59.0 - 20.0 * np.log10(dd) - loss[grid.cell_index(tags)]
    heard_rssi = np.where(mean > -90, mean + rng.normal(0, 4, mean.shape), np.nan)
    device = np.arange(n_tags, dtype=np.int32)
    motion = np.where(rng.random(n_tags) < 0.1, 1, 0).astype(np.int8)
    txp = np.full(n_tags, -59.0)
    dummy = Estimates(
        tags[:, 0],
        tags[:, 1],
        np.full(n_tags, 5.0),
        np.full(n_tags, 8, np.int32),
        np.zeros(n_tags, np.int8),
    )
    out = {}
    for particles in (64, 128):
        pf = ParticleFilter(rmap, plan, particles=particles, seed=1)
        t_init = best_of(lambda pf=pf: pf.step(0.0, device, heard_rssi, dummy, motion, txp), 1)

        def one_second(pf: ParticleFilter = pf, clock: list[float] = [0.0]) -> None:  # noqa: B006
            clock[0] += 1.0
            pf.step(clock[0], device, heard_rssi, dummy, motion, txp)

        t_step = best_of(one_second)
        out[f"particle_filter_{particles}"] = {
            "tags": n_tags,
            "particles": particles,
            "first_step_s": round(t_init, 3),
            "step_s": round(t_step, 3),
            "keeps_up_at_1_hz": bool(t_step < 1.0),
            "tag_updates_per_s": round(n_tags / t_step),
        }
    result = {
        "ml_wls": {
            "rows": n_ml,
            "gateways": 12,
            "seconds": round(t_ml, 3),
            "fixes_per_s": round(n_ml / t_ml),
            "target_fixes_per_s": 200_000,
        },
        **out,
        "cpu_threads": os.environ.get("OMP_NUM_THREADS"),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
