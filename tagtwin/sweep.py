"""``tagtwin sweep SPEC``: the command's glue around twin/sweep.py (progress bar, the
summary table, the files). The machinery itself lives in twin/sweep.py."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from siteplan.config_file import ConfigFileError
from twin.sweep import (
    Executor,
    SchedulerError,
    execute,
    load_spec,
    machine_workers,
    plan_runs,
    runs_table,
    summarize,
    summary_json,
    write_outputs,
)

# (metric, column title, format) shown in the terminal; summary.json has every metric.
SHOWN = (
    ("median_error_m", "median err m", "{:.2f}"),
    ("p90_error_m", "p90 err m", "{:.2f}"),
    ("zone_accuracy", "zone acc", "{:.3f}"),
    ("alert_recall", "alert recall", "{:.3f}"),
    ("cost", "cost", "{:,.0f}"),
    ("npv", "NPV", "{:,.0f}"),
)


def _cell(stat: dict[str, Any], fmt: str) -> str:
    if stat["mean"] is None:
        return "-"
    text = fmt.format(stat["mean"])
    if stat["ci95"] is not None:
        half = (stat["ci95"][1] - stat["ci95"][0]) / 2
        if half > 0:
            text += " ±" + fmt.format(half)
    return text


def _diff(stat: dict[str, Any] | None, fmt: str) -> str:
    if stat is None or stat["mean"] is None:
        return "-"
    text = "+" + fmt.format(stat["mean"]) if stat["mean"] >= 0 else fmt.format(stat["mean"])
    if stat["ci95"] is not None:
        text += f" [{fmt.format(stat['ci95'][0])}, {fmt.format(stat['ci95'][1])}]"
    return text


def summary_table(summary: dict[str, Any]) -> Table:
    """Per variant: mean ± 95 % CI half-width, the paired p90 difference to the base with
    its interval, and whether the variant is on the cost/p90-error Pareto front."""
    front = set(summary["pareto"]["front"])
    table = Table(title=f"sweep {summary['sweep']}: {summary['runs']} runs, mean ± 95 % CI over "
                        f"{len(summary['seeds'])} seeds")
    table.add_column("variant", overflow="fold")
    for _, title, _ in SHOWN:
        table.add_column(title, justify="right")
    table.add_column("Δ p90 vs base [95 % CI]", justify="right")
    table.add_column("Pareto", justify="center")
    for v in summary["variants"]:
        name = v["name"] + (f" ({v['failed']} failed)" if v["failed"] else "")
        cells = [_cell(v["metrics"][k], fmt) + ("*" if k == "npv" and v.get("npv_note") else "")
                 for k, _, fmt in SHOWN]
        diff = "base" if v["variant"] == 0 else _diff(v["vs_base"]["p90_error_m"], "{:.2f}")
        table.add_row(name, *cells, diff, "✓" if v["name"] in front else "")
    return table


def run_sweep_command(
    spec_path: Path, out: Path, report_json: Path | None, executor: Executor,
    scheduler: str | None, workers: int | None, quiet: bool,
) -> int:
    """Parse, run, summarise, write. Returns the exit code: 0, 1 when a run failed, 2 when
    the spec (or a file it names) is unusable or the scheduler cannot be reached."""
    console = Console(quiet=quiet, width=None if sys.stdout.isatty() else 160)  # logs: no wrapping
    err = Console(stderr=True)
    try:
        spec = load_spec(spec_path)
    except ConfigFileError as exc:
        err.print(f"[bold red]invalid sweep spec[/] {spec_path}", soft_wrap=True)
        for problem in exc.problems:
            print(f"{exc.path}: {problem}", file=sys.stderr)  # plain lines: file: field: what
        return 2
    if scheduler is not None and executor != "dask":
        print(f"--scheduler needs --executor dask, not {executor}", file=sys.stderr)
        return 2
    runs = plan_runs(spec)
    n_workers = workers or machine_workers()
    where = scheduler or (f"{executor}, {min(n_workers, len(runs))} workers")
    started = time.perf_counter()
    try:
        if quiet:
            rows = execute(runs, executor, scheduler=scheduler, workers=workers)
        else:
            with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TimeRemainingColumn(), console=Console(stderr=True), transient=True) as bar:
                task = bar.add_task(f"sweep {spec.name} ({where})", total=len(runs))
                rows = execute(runs, executor, scheduler=scheduler, workers=workers,
                               progress=lambda done, _total: bar.update(task, completed=done))
    except SchedulerError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    wall = time.perf_counter() - started
    table = runs_table(spec, rows)
    summary = summarize(spec, rows)
    paths = write_outputs(table, summary, out)
    perf = {"wall_s": round(wall, 3), "executor": executor, "scheduler": scheduler,
            "workers": n_workers if scheduler is None else None, "runs": len(runs),
            "run_cpu_s": round(sum(float(r.get("cpu_s", 0.0)) for r in rows), 3),
            "load_average_1m": round(os.getloadavg()[0], 2)}
    (out / "perf.json").write_text(json.dumps(perf, indent=2) + "\n")
    if report_json is not None:
        report_json.write_text(summary_json(summary))
    console.print(summary_table(summary))
    for v in summary["variants"]:
        if v.get("npv_note"):
            console.print(f"* {v['name']}: {v['npv_note']}", markup=False, highlight=False)
    console.print(f"Pareto front (cost vs p90 error): {', '.join(summary['pareto']['front']) or '-'}",
                  highlight=False)
    console.print(f"{len(runs)} runs in {wall:.1f} s ({where}); wrote {paths['runs']} and {paths['summary']}",
                  highlight=False)
    failed = [r for r in rows if r["error"]]
    for r in failed:
        print(f"run {r['run']} ({spec.variants[r['variant']].name}, seed {r['seed']}) failed: {r['error']}",
              file=sys.stderr)
    return 1 if failed else 0
