"""Fuzz every registered parser (tagtwin/fuzz.py) with seeded mutations; print JSON.

Per parser: cases run, accepted, rejected (cleanly, with a reason), crashes (anything
else escaping; must be 0), cases slower than 1 s (must be 0) and the slowest case.
Target (issue 13): >= 100,000 cases in one run, 0 crashes, 0 slow cases.
Usage: python benchmarks/fuzz.py [--cases N] [--seed S] [--json FILE] [--only NAME ...]
The first crash of each kind is printed with its input (hex) so it can be replayed.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np

from benchmarks._common import emit, peak_rss_mb
from tagtwin.fuzz import fuzz_input, outcome, targets

SLOW_S = 1.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=100_000, help="total cases, split evenly over parsers")
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--json", type=Path, default=None, help="also write the result here")
    ap.add_argument("--only", nargs="*", default=None, help="parser names (default: all)")
    args = ap.parse_args()
    chosen = {n: t for n, t in targets().items() if not args.only or n in args.only}
    per = max(1, -(-args.cases // len(chosen)))  # at least --cases in all
    parsers: dict[str, object] = {}
    findings: list[dict[str, str]] = []
    started = time.perf_counter()
    for i, (name, target) in enumerate(sorted(chosen.items())):
        rng = np.random.default_rng([args.seed, i])
        counts: Counter[str] = Counter()
        slow, slowest = 0, 0.0
        seen: set[str] = set()
        t0 = time.perf_counter()
        for _ in range(per):
            data = fuzz_input(target, rng)
            s = time.perf_counter()
            kind, exc = outcome(target, data)
            dt = time.perf_counter() - s
            slow += dt > SLOW_S
            slowest = max(slowest, dt)
            counts[kind] += 1
            if kind == "crash" and exc is not None and (key := f"{type(exc).__name__}") not in seen:
                seen.add(key)
                findings.append({"parser": name, "error": f"{key}: {str(exc)[:200]}", "input_hex": data[:512].hex()})
        parsers[name] = {
            "cases": per, "accepted": counts["accepted"], "rejected": counts["rejected"],
            "crashes": counts["crash"], "slower_than_1s": slow, "slowest_case_s": round(slowest, 4),
            "cases_per_s": round(per / max(time.perf_counter() - t0, 1e-9)),
        }
    figures = {
        "cases": per * len(chosen),
        "crashes": sum(p["crashes"] for p in parsers.values()),  # type: ignore[index]
        "slower_than_1s": sum(p["slower_than_1s"] for p in parsers.values()),  # type: ignore[index]
        "wall_s": round(time.perf_counter() - started, 1),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "seed": args.seed,
        "parsers": parsers,
        "first_crash_of_each_kind": findings,
    }
    emit("fuzz", figures)
    if args.json:
        args.json.write_text(json.dumps({"benchmark": "fuzz", **figures}, indent=2) + "\n")


if __name__ == "__main__":
    main()
