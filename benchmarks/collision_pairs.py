"""Are long silences of present tags shared by a collision partner? A tested refinement.

Idea (issue 5, not adopted): a collision silences a *pair* of tags at the same instants
(adverts overlapping on air, ~0.4 ms, drifting apart by only the 0-10 ms advDelay per
event, Core spec Vol 6 Part B 4.4.2.2.1), so a silence that no other tag shares would be
unexplained by collisions and could take a small k from the independent per-gateway
losses. This measures whether that holds on the twin: every closed run of missed frames
(no gateway heard the frame) of every tag on scenarios/demo.toml (no incidents) is
*paired* when another tag's run of misses began with its next advert due within
``--window`` seconds of this one's (last heard + interval; advDelay max + air time +
channel spacing = 12 ms), else *unpaired*. Prints, per class, runs of >= k missed frames
per frame sent; if unpaired runs of >= 3 were rare (< alpha ~ 6e-9 per frame), a
3-interval rule for unpaired silences would hold. Sightings only: fast.
Usage: python benchmarks/collision_pairs.py [--seeds 1 2] [--duration S] [--window S]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from twin.run import rule_context_for
from twin.scenario import Scenario, load_scenario
from twin.sim import WarehouseTwin

ROOT = Path(__file__).resolve().parents[1]
MAX_RUN = 8


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--duration", type=float, default=1800.0)
    ap.add_argument("--window", type=float, default=0.012)
    ap.add_argument("--scenario", default=str(ROOT / "scenarios" / "demo.toml"))
    args = ap.parse_args()
    base = load_scenario(Path(args.scenario))
    ge = {"paired": np.zeros(MAX_RUN, np.int64), "unpaired": np.zeros(MAX_RUN, np.int64)}
    frames = 0
    wall = time.perf_counter()
    for seed in args.seeds:
        sc = Scenario.model_validate(
            base.model_dump() | {"seed": seed, "duration_s": args.duration, "incidents": []}
        )
        twin = WarehouseTwin(sc)
        s = twin.run().sightings
        ctx = rule_context_for(sc, twin)
        interval = ctx.class_interval_s[ctx.device_class].astype(float)
        # newest sighting time of each heard frame (device, seq), in frame order
        key = s["device"].astype(np.int64) * (1 << 32) + s["seq"].astype(np.int64)
        order = np.lexsort((s["t"], key))
        key, t = key[order], s["t"][order]
        last = np.r_[key[1:] != key[:-1], True]
        key, t = key[last], t[last]
        dev, seq = key >> 32, key & ((1 << 32) - 1)
        same = dev[1:] == dev[:-1]
        gap = seq[1:] - seq[:-1] - 1
        run = same & (gap >= 1)
        r_dev, r_len, r_t = dev[:-1][run], gap[run], t[:-1][run]
        start = np.flatnonzero(np.r_[True, ~same])
        end = np.r_[start[1:], len(seq)] - 1
        frames += int((seq[end] - seq[start] + 1).sum())
        # first missed advert due at last heard + interval (+ 0-10 ms advDelay)
        due = r_t + interval[r_dev]
        sd = np.sort(due)
        n_near = np.searchsorted(sd, due + args.window, "right") - np.searchsorted(
            sd, due - args.window, "left"
        )
        paired = n_near > 1  # itself plus at least one other run starting with it
        for name, m in (("paired", paired), ("unpaired", ~paired)):
            ge[name] += np.array([(r_len[m] >= k).sum() for k in range(1, MAX_RUN + 1)])
    out = {
        "scenario": base.name,
        "seeds": args.seeds,
        "duration_s": args.duration,
        "window_s": args.window,
        "frames_sent": frames,
        **{
            f"{name}_runs_ge_k": {str(k + 1): int(v[k]) for k in range(MAX_RUN)}
            for name, v in ge.items()
        },
        **{
            f"{name}_runs_ge_k_per_frame": {
                str(k + 1): float(f"{v[k] / frames:.3g}") for k in range(MAX_RUN)
            }
            for name, v in ge.items()
        },
        "wall_s": round(time.perf_counter() - wall, 1),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
