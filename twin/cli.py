"""The ``tagtwin`` command line: simulate, check, and the entry points other parts add."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from twin.scenario import Scenario, ScenarioError, load_scenario

app = typer.Typer(add_completion=False, no_args_is_help=True, help="TagTwin: a digital twin for BLE smart-tag tracking.")
console = Console()
err_console = Console(stderr=True)

DEMO_SCENARIO = Path(__file__).resolve().parent.parent / "scenarios" / "demo.toml"


def _load(path: Path) -> Scenario:
    try:
        return load_scenario(path)
    except ScenarioError as exc:
        err_console.print(f"[bold red]invalid scenario[/] {exc.path}")
        for problem in exc.problems:
            err_console.print(f"  {exc.path}: {problem}", markup=False, highlight=False)
        raise typer.Exit(2) from None


def _run_with_progress(scenario: Scenario, quiet: bool):  # type: ignore[no-untyped-def]
    from twin.run import simulate

    if quiet:
        return simulate(scenario)
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed:.0f}/{task.total:.0f} s"),
        TimeRemainingColumn(), console=err_console, transient=True,
    ) as bar:
        task = bar.add_task(f"simulating {scenario.name}", total=scenario.duration_s)
        return simulate(scenario, progress=lambda t: bar.update(task, completed=t))


@app.command()
def simulate(
    scenario: Annotated[Path, typer.Argument(help="scenario TOML file")] = DEMO_SCENARIO,
    out: Annotated[Path, typer.Option("--out", help="output directory")] = Path("out/demo"),
    duration: Annotated[float | None, typer.Option(help="override duration_s")] = None,
    seed: Annotated[int | None, typer.Option(help="override the scenario seed")] = None,
    plot: Annotated[bool, typer.Option(help="write floorplan.png")] = True,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Simulate a scenario end to end and write sightings, truth, estimates and a report."""
    from twin.run import summary_text, write_outputs

    sc = _load(scenario)
    updates: dict[str, object] = {}
    if duration is not None:
        updates["duration_s"] = duration
    if seed is not None:
        updates["seed"] = seed
    if updates:
        sc = Scenario.model_validate(sc.model_dump() | updates)
    started = time.perf_counter()
    run = _run_with_progress(sc, quiet)
    paths = write_outputs(run, out)
    if plot:
        from twin.plot import plot_floorplan

        paths["floorplan"] = plot_floorplan(run, out / "floorplan.png")
    wall = time.perf_counter() - started
    console.print(_metrics_table(run.report()))
    console.print(summary_text(run), highlight=False)
    console.print(f"wall time {wall:.1f} s; wrote {len(paths)} files to {out}/", highlight=False)


def _metrics_table(report: dict[str, object]) -> Table:
    metrics = report["metrics"]
    assert isinstance(metrics, dict)
    table = Table(title=f"{report['scenario']}: accuracy against ground truth")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("median_error_m", "p90_error_m", "p95_error_m", "zone_accuracy", "r90_coverage",
                "device_coverage", "sightings_per_sim_second"):
        table.add_row(key, f"{metrics[key]:g}")
    return table


def _metric(report: dict[str, object], name: str) -> float | None:
    node: object = report.get("metrics", {})
    for part in name.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return float(node) if isinstance(node, int | float) else None


@app.command()
def check(
    paths: Annotated[list[Path], typer.Argument(help="scenario files or directories")],
    report_json: Annotated[Path | None, typer.Option("--json", help="also write results here")] = None,
) -> None:
    """Run every scenario that has [expected] bounds; exit 1 if any metric is out of bounds."""
    from twin.run import simulate as run_scenario

    files: list[Path] = []
    for p in paths:
        files += sorted(p.glob("*.toml")) if p.is_dir() else [p]
    if not files:
        err_console.print(f"no scenario files under {', '.join(map(str, paths))}")
        raise typer.Exit(2)
    table = Table(title="regression check")
    for col in ("scenario", "metric", "bound", "value", "result"):
        table.add_column(col)
    results = []
    failed = False
    for f in files:
        sc = _load(f)
        if not sc.expected:
            table.add_row(f.name, "-", "-", "-", "[dim]no bounds, skipped[/]")
            continue
        report = run_scenario(sc).report()
        for name, bound in sc.expected.items():
            value = _metric(report, name)
            ok = value is not None and (bound.min is None or value >= bound.min) and (bound.max is None or value <= bound.max)
            failed |= not ok
            text = " ".join(s for s in (f">= {bound.min:g}" if bound.min is not None else "",
                                       f"<= {bound.max:g}" if bound.max is not None else "") if s)
            shown = "missing" if value is None else f"{value:g}"
            table.add_row(f.name, name, text, shown, "[green]ok[/]" if ok else "[bold red]REGRESSED[/]")
            results.append({"scenario": str(f), "metric": name, "min": bound.min, "max": bound.max,
                            "value": value, "ok": ok})
    console.print(table)
    if report_json:
        report_json.write_text(json.dumps(results, indent=2) + "\n")
    if failed:
        err_console.print("[bold red]regression:[/] at least one metric is out of bounds")
        raise typer.Exit(1)


EVALUATE_ROWS = ("fixes", "median_error_m", "p90_error_m", "p95_error_m", "rmse_m", "crb_rmse_m",
                 "rmse_over_crb", "r90_coverage", "zone_accuracy", "latency_median_s",
                 "latency_p95_s")


@app.command()
def evaluate(
    run_dir: Annotated[
        Path | None, typer.Argument(help="a `tagtwin simulate` output directory")
    ] = None,
    capture: Annotated[Path | None, typer.Option(help="recorded capture, .csv or .parquet")] = None,
    gateways: Annotated[Path | None, typer.Option(help="gateway positions file: id,x,y,z")] = None,
    calibration: Annotated[
        Path | None, typer.Option(help="calibration walk capture with truth")
    ] = None,
    localizer: Annotated[
        str, typer.Option(help="wls, centroid, strongest, knn, radio-map")
    ] = "wls",
    tracker: Annotated[str, typer.Option(help="none, kalman, hmm, particle")] = "none",
    step: Annotated[float, typer.Option(help="seconds between fixes")] = 1.0,
    window: Annotated[float, typer.Option(help="seconds of sightings per fix")] = 1.0,
    exponent: Annotated[
        float, typer.Option(help="path-loss exponent n (fitted with --calibration)")
    ] = 2.0,
    sigma_db: Annotated[
        float, typer.Option(help="shadowing sigma, dB (fitted with --calibration)")
    ] = 4.0,
    tx_power: Annotated[
        float, typer.Option(help="RSSI at 1 m, dBm (fitted with --calibration)")
    ] = -59.0,
    tag_z: Annotated[float, typer.Option(help="tag height, m")] = 1.0,
    seed: Annotated[int, typer.Option(help="seed of the particle filter")] = 0,
    report_json: Annotated[
        Path | None, typer.Option("--json", help="write the metrics here")
    ] = None,
    fixes_out: Annotated[
        Path | None, typer.Option("--fixes", help="write the fixes (Parquet)")
    ] = None,
) -> None:
    """Score positions against ground truth: a twin run directory, or a capture + gateway file.

    Prints error quantiles and CDF, the Cramér-Rao bound at the true positions and the
    ratio of the achieved RMSE to it, r90 calibration and latency.
    """
    from engine.capture import CaptureError, read_capture, read_gateways
    from engine.evaluate import evaluate_capture
    from twin.evaluation import capture_config, evaluate_run_dir

    if (run_dir is None) == (capture is None):
        err_console.print("give either a run directory or --capture with --gateways")
        raise typer.Exit(2)
    if run_dir is not None:
        try:
            metrics = evaluate_run_dir(run_dir, exponent, sigma_db, tag_z)
        except FileNotFoundError as exc:
            err_console.print(f"[bold red]cannot evaluate:[/] {exc}")
            raise typer.Exit(2) from None
    else:
        if gateways is None:
            err_console.print("--capture needs --gateways (a file with id,x,y,z)")
            raise typer.Exit(2)
        try:
            gw = read_gateways(gateways)
            cap = read_capture(capture, gw, gateways)  # type: ignore[arg-type]
            cal = read_capture(calibration, gw, gateways) if calibration else None
            config = capture_config(
                gw, localizer, tracker, step, window, exponent, sigma_db, tx_power, tag_z, cal, seed
            )
        except (CaptureError, ValueError) as exc:
            err_console.print(f"[bold red]cannot evaluate:[/] {exc}", markup=True, highlight=False)
            raise typer.Exit(2) from None
        fixes, metrics = evaluate_capture(cap, config)
        if fixes_out is not None:
            import pyarrow.parquet as pq

            from twin.run import _table

            pq.write_table(_table(fixes, {"device": cap.devices.ids}), fixes_out)
        if cap.truth is None:
            err_console.print("the capture has no truth_x/truth_y columns: nothing to score")
    table = Table(title="evaluation against ground truth")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in EVALUATE_ROWS:
        value = metrics.get(key)
        if value is not None:
            table.add_row(key, f"{value:g}" if isinstance(value, int | float) else str(value))
    console.print(table)
    text = json.dumps(metrics, indent=2, sort_keys=True) + "\n"
    if report_json:
        report_json.write_text(text)


@app.command()
def schema(out: Annotated[Path | None, typer.Option(help="write here instead of stdout")] = None) -> None:
    """Print the JSON Schema of scenario files (generated from the code)."""
    text = json.dumps(Scenario.model_json_schema(by_alias=True), indent=2) + "\n"
    if out:
        out.write_text(text)
    else:
        sys.stdout.write(text)


def main() -> None:
    app()
