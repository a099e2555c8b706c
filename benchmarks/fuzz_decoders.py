"""Fuzz every registered byte parser: random and mutated inputs, crashes and slow cases.

A case is a crash when the parser raises anything but its declared errors
(live_bridge/fuzz_targets.py); a case slower than 1 s is reported. Inputs come from a
seeded generator (same --seed, same cases): half pure random bytes (0-64 long), half
mutations of the target's seed inputs (bit flips, byte overwrites, truncation,
insertion, splicing two seeds). Prints one JSON object (benchmarks/_common.emit) and
writes it to --json FILE too.
Usage: python benchmarks/fuzz_decoders.py --cases 100000 --json fuzz.json [--seed 1]
"""

from __future__ import annotations

import argparse
import json
import os
import time
import traceback
from pathlib import Path

import numpy as np

from benchmarks._common import emit, peak_rss_mb
from live_bridge.fuzz_targets import FUZZ_TARGETS

SLOW_S = 1.0


def mutate(rng: np.random.Generator, seeds: tuple[bytes, ...]) -> bytes:
    if not seeds or rng.random() < 0.5:
        return rng.bytes(int(rng.integers(0, 65)))
    data = bytearray(seeds[int(rng.integers(len(seeds)))])
    for _ in range(int(rng.integers(1, 5))):
        op = int(rng.integers(6))
        if op == 0 and data:  # flip a bit
            i = int(rng.integers(len(data)))
            data[i] ^= 1 << int(rng.integers(8))
        elif op == 1 and data:  # overwrite a byte with an interesting value
            data[int(rng.integers(len(data)))] = int(rng.choice([0, 1, 0x7F, 0x80, 0xFF, int(rng.integers(256))]))
        elif op == 2 and data:  # truncate
            del data[int(rng.integers(len(data))) :]
        elif op == 3:  # insert random bytes
            i = int(rng.integers(len(data) + 1))
            data[i:i] = rng.bytes(int(rng.integers(1, 8)))
        elif op == 4:  # splice with another seed
            other = seeds[int(rng.integers(len(seeds)))]
            data = data[: int(rng.integers(len(data) + 1))] + other[int(rng.integers(len(other) + 1)) :]
        else:  # duplicate a slice
            i = int(rng.integers(len(data) + 1))
            data[i:i] = data[i : i + int(rng.integers(1, 6))]
    return bytes(data)


def run(cases: int, seed: int) -> dict[str, object]:
    rng = np.random.default_rng(seed)
    per = max(1, cases // len(FUZZ_TARGETS))
    results: dict[str, dict[str, object]] = {}
    crashes_total = slow_total = 0
    for name, target in FUZZ_TARGETS.items():
        crashes: list[str] = []
        slow = refused = 0
        worst = 0.0
        t_all = time.perf_counter()
        for _ in range(per):
            data = mutate(rng, target.seeds)
            t0 = time.perf_counter()
            try:
                target.parse(data)
            except target.expected:
                refused += 1
            except Exception as exc:  # a crash: what the fuzzer is for
                if len(crashes) < 5:
                    crashes.append(
                        f"{data.hex()}: {type(exc).__name__}: {exc} @ {traceback.format_exc(limit=-1)[-200:]}"
                    )
                else:
                    crashes.append("")
            dt = time.perf_counter() - t0
            worst = max(worst, dt)
            slow += dt > SLOW_S
        crashes_total += len(crashes)
        slow_total += slow
        results[name] = {
            "cases": per,
            "crashes": len(crashes),
            "refused_with_reason": refused,
            "slower_than_1s": slow,
            "max_ms": round(worst * 1000, 2),
            "us_per_case": round((time.perf_counter() - t_all) / per * 1e6, 1),
            "first_crashes": [c for c in crashes if c][:5],
        }
    return {
        "cases_total": per * len(FUZZ_TARGETS),
        "crashes_total": crashes_total,
        "slower_than_1s_total": slow_total,
        "targets": results,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=20_000, help="total cases, split evenly over the targets")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", type=Path, help="also write the result here")
    args = ap.parse_args()
    t0 = time.perf_counter()
    figures = run(args.cases, args.seed)
    figures.update(
        seed=args.seed,
        wall_s=round(time.perf_counter() - t0, 1),
        load_avg_1m=round(os.getloadavg()[0], 2),
        peak_rss_mb=round(peak_rss_mb(), 1),
    )
    if args.json:
        args.json.write_text(json.dumps({"benchmark": "fuzz_decoders", **figures}, indent=2) + "\n", encoding="utf-8")
    emit("fuzz_decoders", figures)


if __name__ == "__main__":
    main()
