"""The engine in process on the large scenario's traffic: sightings/s through ingest,
windowed localization (the scenario's localizer and tracker) and rules, beside the
engine of a baseline commit on the same traffic in the same run. Prints JSON.

* Traffic: ``--duration`` s of scenarios/large.toml (10,000 tags, 54 gateways) from the
  twin, made once (not timed) and saved to a temporary .npy that both runs read.
* This engine: :class:`engine.parallel.PartitionedEngine` over ``--workers`` processes
  (default: one per core), fed 30 s of event time at a time; the rules run in this
  process (:class:`engine.rules.feeder.RuleFeeder`, one step a second) on each group of
  16 windows' fixes as the workers send it (``finish_advance_parts``), while they
  localize the next group. The next feed's ingest and advance (at the end, the flush)
  are handed over as soon as the current advance has started, so the workers go on to it
  without waiting for the rules. The setup's objects are frozen (``gc.freeze``, by
  the engine as it starts) before the timed part.
* Baseline: ``git archive BASELINE`` (default: main before the engine-speed work)
  unpacked into a temporary directory and run there in a subprocess: its own
  ``twin.run.feed_engine`` then ``feed_rules`` on the same file, one process, as that
  code ran a simulation. Only the timed part differs; setup is excluded from both.

Wall times are what an operator sees, so they depend on what else the machine runs:
the load average is printed beside them (1 min, at start and end).

The fixes and the rule events are digested (SHA-256 of the fixes' bytes in the order the
workers return them, and of the events' JSON): a change that must not move positions
keeps both. ``--wls-cell-edges``, ``--wls-gateway-starts-above K`` and ``--wls-warm-start``
run this engine with the opt-in ML search settings of the same names (docs/scaling.md);
the baseline keeps its own.

Run: ``python benchmarks/bench_engine.py [--duration 60] [--workers 2]``.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import inspect
import json
import math
import multiprocessing as mp
import os
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "443e180"  # main before the engine-speed branch
FEED_S = 30.0
WARM_S = 6.0  # site seconds run once, untimed, to load the compiled kernels


def _setup(duration: float, search: dict[str, Any] | None = None) -> tuple[Any, Any, Any]:
    """Scenario, its engine config and rule context (a one-second twin run gives the site);
    ``search`` overrides [engine] settings (the opt-in ML search)."""
    from twin.run import engine_config_for, rule_context_for
    from twin.scenario import load_scenario
    from twin.sim import WarehouseTwin

    sc = load_scenario(ROOT / "scenarios" / "large.toml").model_copy(update={"duration_s": 1.0})
    twin = WarehouseTwin(sc)
    result = twin.run()
    sc = sc.model_copy(update={"duration_s": duration})
    if search:
        sc = sc.model_copy(update={"engine": sc.engine.model_copy(update=search)})
    cfg = engine_config_for(sc, result)
    if len(inspect.signature(rule_context_for).parameters) < 3:  # a baseline from before the rest check
        return sc, cfg, rule_context_for(sc, twin)
    return sc, cfg, rule_context_for(sc, twin, cfg)  # with the misplaced rule's rest map, as a run has


def make_traffic(duration: float, path: Path) -> int:
    from twin.scenario import load_scenario
    from twin.sim import WarehouseTwin

    sc = load_scenario(ROOT / "scenarios" / "large.toml").model_copy(update={"duration_s": duration})
    result = WarehouseTwin(sc).run()
    np.save(path, result.sightings)
    np.save(path.with_suffix(".tx.npy"), result.tx_power_1m_dbm)
    return len(result.sightings)


def run_baseline(traffic: Path, duration: float) -> dict[str, float]:
    """The old code path, as twin.run.simulate ran it: all fixes, then all rules."""
    from engine.pipeline import Engine
    from engine.rules import ListSink, RuleEngine
    from twin.incidents import FEED_DTYPE
    from twin.run import feed_engine, feed_rules

    sc, cfg, ctx = _setup(duration)
    sightings = np.load(traffic)
    engine = Engine(cfg, np.load(traffic.with_suffix(".tx.npy")))
    rules = RuleEngine(sc.rules, ctx, [ListSink()])
    gc.collect()
    gc.freeze()  # as PartitionedEngine does in run_engine: the same heap for both
    c0, t0 = time.process_time(), time.perf_counter()
    fixes = feed_engine(engine, sightings, duration)
    t1 = time.perf_counter()
    feed_rules(rules, sightings, fixes, np.zeros(0, FEED_DTYPE), end_t=duration, step_s=sc.engine.step_s)
    t2 = time.perf_counter()
    return {"engine_s": t1 - t0, "rules_s": t2 - t1, "wall_s": t2 - t0, "fixes": len(fixes),
            "cpu_s": time.process_time() - c0,
            "rule_fixes": rules.counters["fixes"], "events": rules.counters["events"]}


def _reference_cpu_s(cfg: Any, tx_power: Any, warm: Any, processes: int) -> list[float]:
    """CPU seconds of one compiled engine over ``warm`` (the fastest of three), in each of
    ``processes`` forked processes running at once."""
    from engine.pipeline import Engine

    def one(conn: Any) -> None:
        best = math.inf
        for _ in range(3):  # the fastest of three: the first pays for the fork's page copies
            c0 = time.process_time()
            engine = Engine(cfg, tx_power)
            engine.ingest(warm)
            engine.flush(WARM_S)
            best = min(best, time.process_time() - c0)
        conn.send(best)
        conn.close()

    ctx = mp.get_context("fork")
    pipes = [ctx.Pipe() for _ in range(processes)]
    procs = [ctx.Process(target=one, args=(there,)) for _, there in pipes]
    for p in procs:
        p.start()
    out = [float(here.recv()) for here, _ in pipes]
    for p in procs:
        p.join()
    return out


def run_engine(traffic: Path, duration: float, workers: int, search: dict[str, Any] | None = None) -> dict[str, Any]:
    """This engine: device partitions on worker processes, rules here, overlapped."""
    from engine.parallel import PartitionedEngine
    from engine.pipeline import Engine
    from engine.rules import ListSink, RuleEngine
    from twin.run import RuleFeeder

    sc, cfg, ctx = _setup(duration, search)
    sightings = np.load(traffic)
    tx_power = np.load(traffic.with_suffix(".tx.npy"))
    # Compile (or load) every compiled kernel, and build the zone lookup grids, before the
    # workers fork: one engine and rule engine over the first seconds, then dropped.
    t_jit = time.perf_counter()
    warm = sightings[: int(np.searchsorted(sightings["t"], WARM_S))]
    warm_engine = Engine(cfg, tx_power)
    warm_engine.ingest(warm)
    warm_fixes = warm_engine.flush(WARM_S)
    odd = warm_fixes["device"] % 2 == 1  # the merge of two workers' fixes, compiled too
    PartitionedEngine._merge([warm_fixes[~odd], warm_fixes[odd]])
    warm_feeder = RuleFeeder(RuleEngine(sc.rules, ctx, [ListSink()]), step_s=sc.engine.step_s)
    warm_feeder.add(sightings=warm, fixes=warm_fixes)
    warm_feeder.flush(WARM_S)
    jit_s = time.perf_counter() - t_jit
    # The machine's speed now: the same engine on the same first seconds, compiled, in one
    # process alone and in two processes at once (as the workers run). The host's other
    # tenants move both between runs (the load average does not show them), so a run's
    # rate is read beside them.
    reference = {"sightings": len(warm), "cpu_s_alone": _reference_cpu_s(cfg, tx_power, warm, 1)[0],
                 "cpu_s_two_at_once": max(_reference_cpu_s(cfg, tx_power, warm, 2))}
    sink = ListSink()
    rules = RuleEngine(sc.rules, ctx, [sink])
    feeder = RuleFeeder(rules, step_s=sc.engine.step_s)
    n_fixes = 0
    returned: list[Any] = []  # digested after the timed part
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    # The setup's garbage collected, so what PartitionedEngine freezes (gc.freeze: the
    # setup's ~180,000 objects, whose full collection took 0.09 s of the rules' time in
    # the timed part) is only what lives on.
    gc.collect()
    with PartitionedEngine(cfg, tx_power, workers) as engine:
        c0, t0 = time.process_time(), time.perf_counter()
        edges = np.searchsorted(sightings["t"], np.arange(FEED_S, duration + FEED_S, FEED_S))
        chunks = [sightings[a:b] for a, b in zip(np.r_[0, edges[:-1]], edges, strict=True)]
        done_t = 0.0
        engine.ingest(chunks[0])
        engine.start_advance(parts=True)
        for k, chunk in enumerate(chunks):
            # The next feed's calls made now: the workers take them as soon as this feed's
            # windows are done, without waiting for the rules on them.
            if k + 1 < len(chunks):
                engine.ingest(chunks[k + 1])
                engine.start_advance(parts=True)
            else:
                engine.start_flush(duration)
            feeder.add(sightings=chunk)
            # Each group of windows as the workers finish it: the rules work on it while
            # they compute the next.
            for fixes in engine.finish_advance_parts():
                n_fixes += len(fixes)
                returned.append(fixes)
                feeder.add(fixes=fixes)
                if len(fixes):
                    done_t = float(fixes["t"].max())
                feeder.step_until(done_t)
        fixes = engine.finish_flush()
        n_fixes += len(fixes)
        returned.append(fixes)
        feeder.add(fixes=fixes)
        feeder.flush(duration)
        wall = time.perf_counter() - t0
        cpu_main = time.process_time() - c0
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # the workers, once they have exited
    fix_digest = hashlib.sha256()
    for fixes in returned:
        fix_digest.update(fixes.tobytes())
    cpu_workers = (children.ru_utime + children.ru_stime) - (children0.ru_utime + children0.ru_stime)
    return {"wall_s": wall, "fixes": n_fixes, "rule_fixes": rules.counters["fixes"],
            "events": rules.counters["events"], "jit_s": jit_s, "cpu_main_s": cpu_main,
            "reference": reference,
            "cpu_workers_s": cpu_workers, "fixes_sha256": fix_digest.hexdigest(),
            "events_sha256": hashlib.sha256(
                json.dumps([e.to_dict() for e in sink.events], sort_keys=True).encode()).hexdigest()}


def baseline_in_subprocess(ref: str, traffic: Path, duration: float) -> dict[str, float]:
    """Unpack ``ref`` with git archive and run :func:`run_baseline` inside it."""
    with tempfile.TemporaryDirectory(prefix="tagtwin-baseline-") as tmp:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], capture_output=True, check=True)
        with tarfile.open(fileobj=BytesIO(archive.stdout)) as tar:
            tar.extractall(tmp, filter="data")
        env = {**os.environ, "PYTHONPATH": tmp}
        out = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--run-baseline", str(traffic),
             "--duration", str(duration), "--root", tmp],
            capture_output=True, text=True, env=env, cwd=tmp, check=False,
        )
        if out.returncode != 0:
            raise RuntimeError(f"baseline {ref} failed: {out.stderr.strip().splitlines()[-1:]}")
        return dict(json.loads(out.stdout))


def main(
    duration: float, workers: int, baseline: str | None, search: dict[str, Any] | None = None
) -> dict[str, object]:
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="tagtwin-traffic-") as tmp:
        traffic = Path(tmp) / "large.npy"
        n = make_traffic(duration, traffic)
        new = run_engine(traffic, duration, workers, search)
        old = baseline_in_subprocess(baseline, traffic, duration) if baseline else None
    load_end = os.getloadavg()[0]
    wall = float(new["wall_s"])
    out: dict[str, object] = {
        "benchmark": "engine_in_process",
        "scenario": "scenarios/large.toml",
        "site_time_s": duration,
        "sightings": n,
        "workers": workers,
        "sightings_per_s": round(n / wall),
        "fixes_per_s": round(float(new["fixes"]) / wall),
        "rule_updates_per_s": round(float(new["rule_fixes"]) / wall),
        "wall_s": round(wall, 2),
        "fixes": int(new["fixes"]),
        "rule_events": int(new["events"]),
        "fixes_sha256": new["fixes_sha256"][:16],
        "rule_events_sha256": new["events_sha256"][:16],
        "wls_search": search or "default",
        "jit_or_cache_load_s": round(float(new["jit_s"]), 2),
        # CPU seconds (timed part; workers over their life): what the machine's load
        # does not change much, so the figure to compare runs on a busy machine by.
        "cpu_s": {"main": round(float(new["cpu_main_s"]), 2), "workers": round(float(new["cpu_workers_s"]), 2)},
        "sightings_per_cpu_s": round(n / (float(new["cpu_main_s"]) + float(new["cpu_workers_s"]))),
        "target_sightings_per_s": 1_000_000,
        # The machine's speed at the time (see run_engine): one engine on the first WARM_S s
        # of the same traffic, in one process, and in each of two at once; a faster machine
        # gives higher figures.
        "reference_sightings_per_cpu_s": {
            "alone": round(new["reference"]["sightings"] / new["reference"]["cpu_s_alone"]),
            "two_at_once": round(new["reference"]["sightings"] / new["reference"]["cpu_s_two_at_once"])},
    }
    if old is not None:
        out.update({
            "baseline": baseline,
            "baseline_sightings_per_s": round(n / float(old["wall_s"])),
            "baseline_wall_s": round(float(old["wall_s"]), 2),
            "baseline_engine_s": round(float(old["engine_s"]), 2),
            "baseline_rules_s": round(float(old["rules_s"]), 2),
            "ratio": round(float(old["wall_s"]) / wall, 2),
            "baseline_sightings_per_cpu_s": round(n / float(old["cpu_s"])),
            "cpu_ratio": round(float(old["cpu_s"]) / (float(new["cpu_main_s"]) + float(new["cpu_workers_s"])), 2),
            "same_fix_count": int(old["fixes"]) == int(new["fixes"]),
        })
    out.update({
        "load": {"1min_start": round(load_start, 2), "1min_end": round(load_end, 2),
                 "cores": os.cpu_count()},
        "peak_rss_mb_main": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    })
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=60.0, help="site seconds of traffic")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="engine processes")
    ap.add_argument("--baseline", default=BASELINE, help="git ref of the engine to compare ('' to skip)")
    ap.add_argument("--wls-cell-edges", action="store_true", help="[engine] wls_cell_edges = true")
    ap.add_argument("--wls-gateway-starts-above", type=float, default=0.0,
                    help="[engine] wls_gateway_starts_above (sigma^2; 0: the default, always)")
    ap.add_argument("--wls-warm-start", action="store_true",
                    help="[engine] wls_warm_start = true (the tag's fix before each block of windows as a start)")
    ap.add_argument("--run-baseline", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run_baseline is not None:  # inside the baseline's tree, on its PYTHONPATH
        ROOT = args.root
        print(json.dumps(run_baseline(args.run_baseline, args.duration)))
    else:
        sys.path.insert(0, str(ROOT))
        search: dict[str, Any] = {}
        if args.wls_cell_edges:
            search["wls_cell_edges"] = True
        if args.wls_gateway_starts_above:
            search["wls_gateway_starts_above"] = args.wls_gateway_starts_above
        if args.wls_warm_start:
            search["wls_warm_start"] = True
        print(json.dumps(main(args.duration, args.workers, args.baseline or None, search or None), indent=2))
