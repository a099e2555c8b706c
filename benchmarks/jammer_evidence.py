"""Can a tag's sudden silence be told from collision losses within 3 adverts?

A detector that calls a tag missing after 3 silent advertising intervals alarms on every
run of >= 3 missed adverts of a tag that is still there, unless something else it can see
explains the run. The only side information the engine has is the other tags' adverts: a
missed advert of tag A was probably lost to a collision if another tag X sent an advert
that could have overlapped it (X's event start within the window where A's advert was
due: A's last heard event start + m x interval + 0-m x 10 ms advDelay, +- air time) and X
is about as strong as A or stronger at A's strongest gateways (capture needs A 8 dB above
X). This script scores that explanation on the twin (scenarios/demo.toml, no incidents):

* H0, runs of >= 3 missed adverts of tags at rest (the tag is there): for each of the 3
  windows, the best "jam margin" min over A's top gateways of (X's typical RSSI - A's) of
  the other tags' adverts in it; the run is *explained* at threshold x when all three
  windows hold a neighbour with margin >= x;
* H1, a tag that died right after a heard advert (random heard adverts of tags at rest):
  the same three windows, where nothing was sent by A.

A detector "alarm after 3 intervals unless explained" then raises
runs>=3 per tag-day x P(unexplained | H0) x 1,000 false alarms per day per 1,000 tags and
catches P(unexplained | H1) of sudden deaths within 3 intervals. Prints JSON.
Usage: python benchmarks/jammer_evidence.py [--seeds 1 2] [--duration S]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from radio_models.airinterface import ADV_DELAY_MAX_S, packet_air_time_s
from twin.scenario import Scenario, load_scenario
from twin.sim import WarehouseTwin

ROOT = Path(__file__).resolve().parents[1]
THRESHOLDS_DB = (-30.0, -20.0, -14.0, -10.0, -6.0, 0.0)
NO_NEIGHBOUR = -999.0


def frames(s: NDArray[np.void], spacing: float) -> dict[str, NDArray[Any]]:
    """Heard frames: device, seq, event start (packet time minus its channel's offset in the
    event), and whether the tag reported motion."""
    start = s["t"] - (s["channel"].astype(float) - 37) * spacing
    key = s["device"].astype(np.int64) * (1 << 32) + s["seq"]
    order = np.lexsort((start, key))
    k = key[order]
    first = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
    return {
        "dev": (k[first] >> 32).astype(np.int64),
        "seq": (k[first] & ((1 << 32) - 1)).astype(np.int64),
        "start": start[order][first],
        "moving": np.maximum.reduceat(s["motion"][order].astype(np.int8), first),
    }


def typical_rssi(s: NDArray[np.void], n_tag: int, n_gw: int) -> NDArray[np.float64]:
    """Median RSSI per (tag, gateway) over the tag's sightings at rest (>= 5), else -130."""
    rest = s[s["motion"] == 0]
    cell = rest["device"].astype(np.int64) * n_gw + rest["gateway"]
    order = np.argsort(cell, kind="stable")
    cs = cell[order]
    first = np.flatnonzero(np.r_[True, cs[1:] != cs[:-1]])
    out = np.full(n_tag * n_gw, -130.0)
    for c, v in zip(cs[first], np.split(rest["rssi"][order], first[1:]), strict=True):
        if len(v) >= 5:
            out[c] = float(np.median(v))
    return out.reshape(n_tag, n_gw)


def one_seed(scenario: Path, seed: int, duration: float, top: int) -> dict[str, Any]:
    base = load_scenario(scenario)
    sc = Scenario.model_validate(
        base.model_dump() | {"seed": seed, "duration_s": duration, "incidents": []}
    )
    twin = WarehouseTwin(sc)
    s = twin.run().sightings
    spacing = sc.radio.channel_spacing_ms / 1000
    tau = float(np.max(packet_air_time_s(31))) + 2e-5  # longest legacy packet + clock slack
    n_tag, n_gw = len(twin.fleet), len(twin.gateways.ids)
    rssi = typical_rssi(s, n_tag, n_gw)
    top_gw = np.argsort(-rssi, axis=1)[:, :top]
    fr = frames(s, spacing)
    by_start = np.argsort(fr["start"])
    start_sorted, dev_sorted = fr["start"][by_start], fr["dev"][by_start]
    interval = twin.fleet.adv_interval_s

    def margins(a: int, a0: float) -> list[float]:
        """Best jam margin of the other tags' adverts in A's windows 1-3 after start a0."""
        out = []
        for m in (1, 2, 3):
            lo = a0 + m * interval[a] - tau
            hi = a0 + m * interval[a] + m * ADV_DELAY_MAX_S + tau
            i0, i1 = np.searchsorted(start_sorted, [lo, hi])
            xs = dev_sorted[i0:i1]
            xs = xs[xs != a]
            g = top_gw[a]
            out.append(float((rssi[xs][:, g] - rssi[a, g]).min(axis=1).max()) if len(xs) else NO_NEIGHBOUR)
        return out

    dev, seq, start, moving = fr["dev"], fr["seq"], fr["start"], fr["moving"]
    at_rest = (dev[1:] == dev[:-1]) & (moving[1:] == 0) & (moving[:-1] == 0)
    gap = seq[1:] - seq[:-1] - 1
    h0 = np.array([margins(int(dev[i]), float(start[i])) for i in np.flatnonzero(at_rest & (gap >= 3))])
    rng = np.random.default_rng(seed)
    rest_frames = np.flatnonzero(moving == 0)
    pick = rng.choice(rest_frames, min(5000, len(rest_frames)), replace=False)
    h1 = np.array([margins(int(dev[i]), float(start[i])) for i in pick])
    return {
        "tag_days": n_tag * duration / 86_400.0,
        "runs_ge3": len(h0),
        "h0_min_margin": h0.min(axis=1).tolist() if len(h0) else [],
        "h1_min_margin": h1.min(axis=1).tolist(),
        "h1_per_window_explained_at_-10": (h1 >= -10.0).mean(axis=0).round(4).tolist(),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--duration", type=float, default=3600.0)
    ap.add_argument("--scenario", default=str(ROOT / "scenarios" / "demo.toml"))
    ap.add_argument("--top", type=int, default=3, help="A's strongest gateways the jammer must match")
    args = ap.parse_args()
    runs = [one_seed(Path(args.scenario), seed, args.duration, args.top) for seed in args.seeds]
    tag_days = sum(float(r["tag_days"]) for r in runs)
    h0 = np.concatenate([np.asarray(r["h0_min_margin"], float) for r in runs])
    h1 = np.concatenate([np.asarray(r["h1_min_margin"], float) for r in runs])
    runs3_per_tag_day = len(h0) / tag_days
    table = []
    for x in THRESHOLDS_DB:
        unexplained_h0 = float((h0 < x).mean())
        table.append({
            "explained_if_margin_ge_db": x,
            "h0_runs_unexplained": round(unexplained_h0, 4),
            "false_alarms_per_day_per_1000_tags": round(runs3_per_tag_day * unexplained_h0 * 1000, 1),
            "sudden_deaths_caught_within_3": round(float((h1 < x).mean()), 4),
        })
    print(json.dumps({
        "scenario": Path(args.scenario).name,
        "seeds": args.seeds,
        "duration_s": args.duration,
        "tag_days": round(tag_days, 2),
        "runs_ge3_at_rest": len(h0),
        "runs_ge3_per_tag_day": round(runs3_per_tag_day, 2),
        "plain_3_interval_rule_false_alarms_per_day_per_1000_tags": round(runs3_per_tag_day * 1000),
        "target_false_alarms_per_day_per_1000_tags": 1.0,
        "detector_explain_by_neighbours": table,
        "h1_windows_with_neighbour_margin_ge_-10": [r["h1_per_window_explained_at_-10"] for r in runs],
    }, indent=2))


if __name__ == "__main__":
    main()
