"""Link evaluations per second: full tag-gateway link budgets on the large warehouse.

One link evaluation = 3-D distance, path-loss family, wall/rack crossings and the
Gudmundson shadowing field (both through the static per-gateway maps), gateway bias,
channel offset, a Rayleigh fast-fading draw and integer quantization, for one
(tag, gateway) pair, in float32 (RSSI needs 0.01 dB, float32 gives 1e-5 dB). Batches
of 10,000 tags x 54 gateways run on two threads (numpy
releases the GIL), the machine's two cores. Prints JSON.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from twin.scenario import load_scenario
from twin.sim import WarehouseTwin

ROOT = Path(__file__).resolve().parents[1]


def main(seconds: float = 5.0, threads: int = 2) -> dict[str, object]:
    sc = load_scenario(ROOT / "scenarios" / "large.toml")
    twin = WarehouseTwin(sc)
    env = twin.radio
    n_tags = len(twin.fleet)
    xyz = np.column_stack([twin.fleet.xy, np.full(n_tags, sc.site.tag_height_m)])
    tx = twin.fleet.tx_power_1m_dbm
    n_gw = env.n_gateways

    def worker(seed: int) -> int:
        rng = np.random.default_rng(seed)
        done = 0
        channels = np.array([37, 38, 39])
        t_end = time.perf_counter() + seconds
        k = 0
        while time.perf_counter() < t_end:
            mean = env.mean_rssi(xyz, tx, np.float32)
            env.packet_rssi(mean, np.full(n_tags, channels[k % 3]), rng)
            done += mean.size
            k += 1
        return done

    t0 = time.perf_counter()
    c0 = time.process_time()
    with ThreadPoolExecutor(threads) as pool:
        counts = list(pool.map(worker, range(threads)))
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    total = sum(counts)
    return {
        "benchmark": "link_evaluations",
        "tags": n_tags,
        "gateways": n_gw,
        "threads": threads,
        "cpu_count": os.cpu_count(),
        "links": total,
        "wall_s": round(wall, 3),
        "links_per_s": round(total / wall),
        "cpu_s": round(cpu, 3),
        "links_per_cpu_s": round(total / cpu),
        # The machine is shared: what two otherwise idle cores would do.
        "two_core_capacity_links_per_s": round(2 * total / cpu),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "target_links_per_s": 30_000_000,
    }


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
