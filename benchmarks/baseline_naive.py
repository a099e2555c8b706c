"""The baseline: the same small scenario written the way a user would write it by hand,
next to TagTwin, in one run. Prints JSON.

Naive version: one SimPy process per tag; every advertisement walks its three channels
and every gateway in Python, with math.log10 path loss, a shapely LineString per packet
tested against every wall and rack, random.expovariate Rayleigh fading and a scanner
check per packet. Same physics as the twin for this scenario (log-distance, walls and
racks, Rayleigh, channel offsets, quantization, sensitivity, scan window rotation;
shadowing and collisions are off because a hand-written twin would not have them).
Both see the same tag and gateway positions; their random draws differ, so packet
statistics are compared within sampling tolerance. A second naive variant that checks
the scanner before doing any physics is timed too. TagTwin's time includes its setup
(static maps); its radio batch is 10 s of site time (tick_s, an implementation knob).
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import shapely
import simpy

from twin.scenario import Scenario
from twin.sim import WarehouseTwin

ROOT = Path(__file__).resolve().parents[1]

SCENARIO = {
    "name": "small-hall",
    "duration_s": 300.0,
    "seed": 5,
    "tick_s": 10.0,
    "site": {
        "outline": [[0, 0], [40, 0], [40, 25], [0, 25]],
        "tag_height_m": 1.0,
        "walls": [
            {"points": [[20, 0], [20, 15]], "material": "brick"},
            {"points": [[28, 18], [40, 18]], "material": "drywall"},
        ],
        "rack_rows": [
            {
                "origin": [3, 3],
                "count": 4,
                "length_m": 14,
                "depth_m": 1.2,
                "pitch_m": 5.0,
                "attenuation_db": 12,
            }
        ],
    },
    "gateways": {
        "defaults": {
            "z_m": 3.0,
            "scan_window_ms": 60,
            "scan_interval_ms": 100,
            "sensitivity_dbm": -95,
        },
        "grid": {"spacing_m": 12, "margin_m": 4},
    },
    "tags": [{"name": "t", "count": 200, "adv_interval_ms": 1000}],
    "radio": {
        "model": {"kind": "log-distance", "exponent": 2.2},
        "shadowing_sigma_db": 0.0,
        "fading": "rayleigh",
        "channel_offset_db": [-3.0, -1.0, 4.0],
        "air": {"collisions": False},
    },
}


def naive_run(
    sc: Scenario, twin: WarehouseTwin, scanner_first: bool = False
) -> list[tuple[float, int, int, float, int]]:
    """One SimPy process per tag, per-packet Python physics; returns sighting tuples.

    The natural order computes each packet's RSSI at each gateway, then lets the receiver
    decide (sensitivity, then is it listening). ``scanner_first`` is the hand-optimized
    variant that skips the physics for packets no scanner listens to."""
    rnd = random.Random(sc.seed)
    walls = [(shapely.LineString(w.points), sc.site.materials[w.material]) for w in sc.site.walls]
    racks = [(shapely.Polygon(r.polygon), r.attenuation_db) for r in sc.site.all_racks()]
    obstacles = walls + racks
    gateways = [tuple(g) for g in twin.gateways.xyz.tolist()]
    window = sc.gateways.defaults.scan_window_ms / 1000
    interval = sc.gateways.defaults.scan_interval_ms / 1000
    sensitivity = sc.gateways.defaults.sensitivity_dbm
    phases = [rnd.uniform(0, interval) for _ in gateways]
    exponent = sc.radio.model.exponent  # type: ignore[union-attr]
    offsets = sc.radio.channel_offset_db
    spacing = sc.radio.channel_spacing_ms / 1000
    tag = sc.tags[0]
    out: list[tuple[float, int, int, float, int]] = []
    env = simpy.Environment()

    def tag_process(i: int, x: float, y: float):  # type: ignore[no-untyped-def]
        yield env.timeout(rnd.uniform(0, tag.adv_interval_ms / 1000))
        while True:
            for k, channel in enumerate((37, 38, 39)):
                t = env.now + k * spacing
                for g, (gx, gy, gz) in enumerate(gateways):
                    cycle = math.floor((t - phases[g]) / interval)
                    listening = (t - phases[g]) - cycle * interval < window and cycle % 3 == k
                    if scanner_first and not listening:
                        continue
                    d = max(
                        math.sqrt((x - gx) ** 2 + (y - gy) ** 2 + (sc.site.tag_height_m - gz) ** 2),
                        0.1,
                    )
                    loss = 10 * exponent * math.log10(d)
                    link = shapely.LineString([(x, y), (gx, gy)])
                    for geom, db in obstacles:
                        if link.intersects(geom):
                            loss += db
                    fade = 10 * math.log10(max(rnd.expovariate(1.0), 1e-12))
                    rssi = round(tag.tx_power_1m_dbm - loss + offsets[k] + fade)
                    if rssi >= sensitivity and listening:
                        out.append((t, g, i, rssi, channel))
            yield env.timeout(tag.adv_interval_ms / 1000 + rnd.uniform(0, 0.010))

    for i, (x, y) in enumerate(twin.fleet.xy.tolist()):
        env.process(tag_process(i, x, y))
    env.run(until=sc.duration_s)
    return out


def stats(
    gateway: np.ndarray, rssi: np.ndarray, n_gw: int, duration: float
) -> dict[str, list[float]]:
    counts = np.bincount(gateway, minlength=n_gw)
    sums = np.bincount(gateway, weights=rssi, minlength=n_gw)
    return {
        "per_gateway_per_s": (counts / duration).round(2).tolist(),
        "mean_rssi_dbm": (sums / np.maximum(counts, 1)).round(2).tolist(),
    }


def main() -> dict[str, object]:
    sc = Scenario.model_validate(SCENARIO)
    times = []
    for _ in range(
        4
    ):  # the first run pays one-off import and cache costs; report the median of the rest
        t0 = time.perf_counter()
        twin = WarehouseTwin(sc)
        fast = twin.run()
        times.append(time.perf_counter() - t0)
    t_first, t_fast = times[0], float(np.median(times[1:]))
    t1 = time.perf_counter()
    slow = naive_run(sc, WarehouseTwin(sc))
    t_slow = time.perf_counter() - t1
    t2 = time.perf_counter()
    smart = naive_run(sc, WarehouseTwin(sc), scanner_first=True)
    t_smart = time.perf_counter() - t2
    n_gw = len(twin.gateways.ids)
    s_arr = np.array([(g, r) for _, g, _, r, _ in slow], dtype=float).reshape(-1, 2)
    fast_stats = stats(
        fast.sightings["gateway"], fast.sightings["rssi"].astype(float), n_gw, sc.duration_s
    )
    slow_stats = stats(s_arr[:, 0].astype(int), s_arr[:, 1], n_gw, sc.duration_s)
    rate_f = np.array(fast_stats["per_gateway_per_s"])
    rate_s = np.array(slow_stats["per_gateway_per_s"])
    rssi_gap = np.abs(np.array(fast_stats["mean_rssi_dbm"]) - np.array(slow_stats["mean_rssi_dbm"]))
    return {
        "benchmark": "baseline_naive",
        "tags": len(twin.fleet),
        "gateways": n_gw,
        "site_time_s": sc.duration_s,
        "load_average_1m": round(os.getloadavg()[0], 2),
        "tagtwin_wall_s": round(t_fast, 3),
        "tagtwin_first_run_wall_s": round(t_first, 3),
        "naive_wall_s": round(t_slow, 2),
        "speedup": round(t_slow / t_fast, 1),
        "target_speedup": 100,
        "naive_scanner_first_wall_s": round(t_smart, 2),
        "speedup_vs_scanner_first": round(t_smart / t_fast, 1),
        "sightings": {
            "tagtwin": len(fast.sightings),
            "naive": len(slow),
            "naive_scanner_first": len(smart),
        },
        "total_rate_ratio": round(len(fast.sightings) / max(len(slow), 1), 4),
        "max_gateway_rate_rel_diff": round(
            float(np.max(np.abs(rate_f - rate_s) / np.maximum(rate_s, 1e-9))), 4
        ),
        "max_gateway_mean_rssi_diff_db": round(float(rssi_gap.max()), 3),
        "tagtwin": fast_stats,
        "naive": slow_stats,
    }


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
