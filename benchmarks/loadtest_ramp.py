"""One engine worker through the embedded backbone: the highest rate at which the SLOs pass.

``tagtwin loadtest --ramp``: the scenario's traffic (tag copies) from publisher processes,
the rate multiplied by ``--factor`` every ``--step`` seconds until a step fails an SLO (p99
advert-to-position, p99 window-close-to-position, the worker keeping up); no cap of its
own. Prints the report without its timeline (per-step verdicts, per-process CPU and
memory, machine load, the bottleneck).

A factor of 1.5 brackets the limit coarsely (it passed 128,145/s and failed 192,217/s).
``--refine F`` then runs a second ramp from a cold start at the last passing rate divided
by ``--factor`` (a rate the first ramp passed, so the cold start's burst is judged at a
rate known to pass), times F a step, again until a step fails: the limit to within F.
Each step also shows the rate the publishers achieved (generated / step length), so a
step the publishers could not fill is not read as the worker's.

    .venv/bin/python benchmarks/loadtest_ramp.py [--start 2000] [--factor 1.5] [--step 10] [--refine 1.1]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import emit

from tagtwin.loadtest import LoadTestError, LoadTestOptions, Ramp, parse_settings, parse_slos, run_loadtest

REPO = Path(__file__).resolve().parents[1]

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenario", type=Path, default=REPO / "scenarios" / "static-open.toml")
    ap.add_argument("--start", type=float, default=2000.0, help="sightings/s of the first step")
    ap.add_argument("--factor", type=float, default=1.5)
    ap.add_argument("--step", type=float, default=10.0, help="seconds per step")
    ap.add_argument("--refine", type=float, default=None,
                    help="then a second ramp with this finer factor from the last passing rate / --factor")
    ap.add_argument("--publishers", type=int, default=None)
    ap.add_argument("--wire", type=int, choices=(1, 2), default=1, help="1: an object per advert, 2: columns")
    ap.add_argument("--worker-setting", action="append", default=[], help="NAME=JSON, e.g. horizon_s=30")
    ap.add_argument("--slo", action="append", default=[],
                    help="NAME=BOUND or NAME=none, e.g. p99_close_to_position_ms=none (ramp on keeping up only)")
    args = ap.parse_args()

    try:
        settings = parse_settings(args.worker_setting)
        slos = parse_slos(args.slo)
    except LoadTestError as exc:
        ap.error(str(exc))
    for option, factor in (("--factor", args.factor), ("--refine", args.refine)):
        try:  # the --ramp checks: a factor > 1 (or the ramp never ends), a start and step > 0
            if factor is not None:
                Ramp.parse(f"{args.start!r}:{factor!r}:{args.step!r}")
        except LoadTestError as exc:
            ap.error(f"{option} {factor}: {exc}")

    def ramp(start: float, factor: float) -> dict[str, object]:
        report = run_loadtest(LoadTestOptions(
            slo=slos,
            scenario=args.scenario, ramp=Ramp(start, factor, args.step), publishers=args.publishers,
            wire=args.wire,
            worker_settings=settings, progress=lambda line: print(line, file=sys.stderr, flush=True),
        ))
        report.pop("timeline")
        report["load"] = report.pop("machine")  # cores and load averages (emit's "machine" is the CPU type)
        steps = report["ramp"]["steps"]
        for st in steps:
            st["achieved_per_s"] = round(st["generated"] / args.step)
        passed = [st["achieved_per_s"] for st in steps if st["pass"]]
        report["ramp"]["max_passing_achieved_per_s"] = max(passed) if passed else None
        return report

    report = ramp(args.start, args.factor)
    if args.refine is not None:
        found = report["ramp"]["max_passing_per_s"]  # type: ignore[index]
        if found is None:
            report["refine"] = {"skipped": "the first ramp passed no step"}
        else:
            fine = ramp(max(args.start, float(found) / args.factor), args.refine)
            report["refine"] = {"ramp": fine["ramp"], "slo": fine["slo"], "load": fine["load"],
                                "processes": fine["processes"],
                                "processed_per_worker_cpu_s": fine["processed_per_worker_cpu_s"],
                                "bottleneck": fine["bottleneck"]}
    emit("loadtest_ramp", report)
