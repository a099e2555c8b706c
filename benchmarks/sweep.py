"""The same sweep on a process pool and on a Dask LocalCluster: wall time of each, the
machine's load, and whether the two tables of runs are byte-identical.

The sweep is scenarios/sweeps/demo-layouts.toml with two of its layouts (the scenario's
own 11 gateways and the 7-gateway sparse one) × shadowing 4 and 6 dB = 4 variants, and
runs / 4 seeds each. Wall times include starting the pool or the cluster; the start-up
alone (workers spawned, TagTwin imported, a trivial task back) is measured first, with
Dask's round trip per trivial task.

    python benchmarks/sweep.py [--runs 40] [--workers N] [--json FILE]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit

from twin.sweep import (
    SweepSpec,
    execute,
    machine_workers,
    parse_spec,
    plan_runs,
    runs_table,
    summarize,
    summary_json,
)

SPEC = Path(__file__).resolve().parent.parent / "scenarios" / "sweeps" / "demo-layouts.toml"
SHIPPED_LAYOUTS = 'layouts = ["scenario", "sparse.toml", "grid-8m.toml"]'
VARIANTS = 4


def table_bytes(rows: list[dict[str, object]], spec: SweepSpec) -> bytes:
    buf = io.BytesIO()
    pq.write_table(runs_table(spec, rows), buf)
    return buf.getvalue()


def _ping(_: int) -> int:
    import twin.sweep  # noqa: F401 - what a sweep worker imports before its first run

    return os.getpid()


def startup_s(workers: int) -> dict[str, float]:
    """Seconds from nothing to two trivial tasks done (workers started, TagTwin imported)
    for each executor, and Dask's per-task round trip over 40 trivial tasks."""
    import logging
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from distributed import Client, LocalCluster

    start = time.perf_counter()
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_ping, range(workers)))
        pool_s = time.perf_counter() - start
    start = time.perf_counter()
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        client.gather(client.map(_ping, range(workers), pure=False))
        cluster_s = time.perf_counter() - start
        start = time.perf_counter()
        client.gather(client.map(_ping, range(100, 140), pure=False))
        per_task = (time.perf_counter() - start) / 40
    return {"process_pool_start_s": round(pool_s, 2), "dask_cluster_start_s": round(cluster_s, 2),
            "dask_ms_per_trivial_task": round(1000 * per_task, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=40, help=f"a multiple of {VARIANTS}")
    parser.add_argument("--workers", type=int, default=None, help="default: one per core")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    if args.runs < VARIANTS or args.runs % VARIANTS:
        parser.error(f"--runs must be a positive multiple of {VARIANTS}")
    text = SPEC.read_text()
    if SHIPPED_LAYOUTS not in text or "seeds = 5" not in text:
        sys.exit(f"{SPEC} changed: update benchmarks/sweep.py")
    text = text.replace(SHIPPED_LAYOUTS, 'layouts = ["scenario", "sparse.toml"]').replace(
        "seeds = 5", f"seeds = {args.runs // VARIANTS}")
    spec = parse_spec(text, SPEC, SPEC.parent)
    runs = plan_runs(spec)
    workers = args.workers or machine_workers()
    legs: dict[str, dict[str, object]] = {}
    tables: dict[str, bytes] = {}
    summaries: dict[str, str] = {}
    walls: dict[str, float] = {}
    load_before_startup = os.getloadavg()[0]
    startup = startup_s(workers) | {"load_1m": round(load_before_startup, 2)}
    for executor in ("process", "dask"):
        load_before = os.getloadavg()
        start = time.perf_counter()
        rows = execute(runs, executor, workers=workers)
        wall = walls[executor] = time.perf_counter() - start
        tables[executor] = table_bytes(rows, spec)
        summaries[executor] = summary_json(summarize(spec, rows))
        legs[executor] = {
            "wall_s": round(wall, 2),
            "runs_per_s": round(len(runs) / wall, 3),
            # CPU seconds the runs themselves took, summed over workers: wall / (cpu / workers)
            # is the overhead (start-up, scheduling) plus what other jobs on the machine took.
            "run_cpu_s": round(sum(float(r.get("cpu_s", 0.0)) for r in rows), 2),
            "wall_over_ideal": round(wall / (sum(float(r.get("cpu_s", 0.0)) for r in rows) / workers), 3),
            "failed_runs": sum(1 for r in rows if r["error"]),
            "load_1m_before": round(load_before[0], 2),
            "load_1m_after": round(os.getloadavg()[0], 2),
            "table_sha256": hashlib.sha256(tables[executor]).hexdigest(),
        }
    figures = {
        "spec": str(SPEC.relative_to(SPEC.parents[2])),
        "runs": len(runs),
        "variants": len(spec.variants),
        "seeds": len(spec.seeds),
        "simulated_s_per_run": spec.variants[0].scenario.duration_s,
        "workers": workers,
        "cpus": os.cpu_count(),
        "startup": startup,
        **legs,
        "tables_identical": tables["process"] == tables["dask"],
        "summaries_identical": summaries["process"] == summaries["dask"],
        "dask_over_process_wall": round(walls["dask"] / walls["process"], 3),
    }
    emit("sweep", figures)
    if args.json is not None:
        args.json.write_text(json.dumps({"benchmark": "sweep", **figures}, indent=2) + "\n")


if __name__ == "__main__":
    main()
