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


@app.command()
def schema(out: Annotated[Path | None, typer.Option(help="write here instead of stdout")] = None) -> None:
    """Print the JSON Schema of scenario files (generated from the code)."""
    text = json.dumps(Scenario.model_json_schema(by_alias=True), indent=2) + "\n"
    if out:
        out.write_text(text)
    else:
        sys.stdout.write(text)


APP_PATH = Path(__file__).resolve().parent.parent / "app.py"


def ui_command(port: int, address: str, headless: bool) -> list[str]:
    """The `streamlit run` command line for the planner (loopback by default, no telemetry)."""
    return [
        sys.executable, "-m", "streamlit", "run", str(APP_PATH),
        "--server.port", str(port), "--server.address", address,
        "--server.headless", str(headless).lower(), "--browser.gatherUsageStats", "false",
    ]


@app.command()
def ui(
    port: Annotated[int, typer.Option(help="port to serve on")] = 8501,
    address: Annotated[str, typer.Option(help="address to bind; keep loopback unless sharing")] = (
        "127.0.0.1"
    ),
    headless: Annotated[bool, typer.Option(help="do not open a browser")] = False,
) -> None:
    """Open the planner: compare gateway layouts and see accuracy against ground truth."""
    import os

    if not APP_PATH.exists():
        err_console.print(f"app.py not found at {APP_PATH} (the planner needs a source checkout)")
        raise typer.Exit(2)
    cmd = ui_command(port, address, headless)
    # exec, not a child process: the pid the caller holds is Streamlit's, so stopping it
    # stops the server and no orphan is left behind.
    os.execv(cmd[0], cmd)


def main() -> None:
    app()
