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


def _capture_config(capture_gw: object, localizer: str, tracker: str, step: float, window: float,
                    exponent: float, sigma_db: float, tx_power: float, tag_z: float,
                    calibration: object | None, seed: int) -> object:
    """An engine for a recorded site: bounds from the gateways (and the calibration walk),
    a path-loss model fitted to the walk when there is one, and its radio map."""
    import numpy as np
    import shapely

    from engine.capture import Capture, rows_by_window
    from engine.contract import GatewayInfo
    from engine.localize import RadioMap, fit_path_loss
    from engine.pipeline import EngineConfig
    from engine.track import FloorPlan
    from engine.zones import ZoneIndex
    from radio_models.environment import Grid

    assert isinstance(capture_gw, GatewayInfo)
    pts = capture_gw.xyz[:, :2]
    radio_map = None
    plan = None
    if isinstance(calibration, Capture) and calibration.truth_xyz is not None:
        _, _, xy, rssi = rows_by_window(calibration, step)
        fit = fit_path_loss(xy, rssi, capture_gw.xyz, tag_z)
        exponent, sigma_db, tx_power = fit.exponent, fit.sigma_db, fit.p0_dbm
        pts = np.vstack([pts, xy])
        radio_map = RadioMap.from_survey(xy, rssi, tx_ref_dbm=tx_power)
        plan = FloorPlan(radio_map.grid, radio_map.free)
    minx, miny = pts.min(axis=0) - 1.0
    maxx, maxy = pts.max(axis=0) + 1.0
    bounds = (float(minx), float(miny), float(maxx), float(maxy))
    if radio_map is None and (localizer in ("knn", "radio-map") or tracker in ("hmm", "particle")):
        grid = Grid.covering(bounds, 0.5)
        plan = FloorPlan.open_floor(bounds, 0.25)
        radio_map = RadioMap.from_model(grid, np.ones(grid.nx * grid.ny, bool), capture_gw.xyz, exponent, sigma_db,
                                        tag_z, tx_power, track_inflation=1.5)
    _ = shapely
    return EngineConfig(
        gateways=capture_gw, zones=ZoneIndex.from_points([]), bounds=bounds, path_loss_exponent=exponent,
        sigma_db=sigma_db, default_tx_power_1m_dbm=tx_power, tag_height_m=tag_z, window_s=window, step_s=step,
        allowed_lateness_s=step, localizer=localizer, tracker=tracker, radio_map=radio_map, floor_plan=plan,
        seed=seed,
    )


def _evaluate_run_dir(run_dir: Path, exponent: float, sigma_db: float, tag_z: float) -> dict[str, object]:
    """Re-score a `tagtwin simulate` output directory from its Parquet files."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from engine.evaluate import BoundSetup, LatencySetup, evaluate
    from engine.pipeline import FIX_DTYPE
    from engine.truth import MOVEMENT_DTYPE, SEGMENT_DTYPE, GroundTruth
    from engine.zones import ZoneIndex

    def codes(col: pa.ChunkedArray) -> np.ndarray:
        arr = col.combine_chunks()
        return np.asarray(arr.indices if pa.types.is_dictionary(arr.type) else arr)

    need = [run_dir / f for f in ("estimates.parquet", "truth_segments.parquet", "gateways.parquet",
                                  "sightings.parquet")]
    missing = [str(p) for p in need if not p.exists()]
    if missing:
        err_console.print(f"[bold red]not a run directory:[/] missing {', '.join(missing)}")
        raise typer.Exit(2)
    est = pq.read_table(need[0])
    fixes = np.zeros(est.num_rows, FIX_DTYPE)
    for name in FIX_DTYPE.names or ():
        fixes[name] = codes(est.column(name)) if name == "device" else est.column(name).to_numpy()
    seg_t = pq.read_table(need[1])
    seg = np.zeros(seg_t.num_rows, SEGMENT_DTYPE)
    for name in SEGMENT_DTYPE.names or ():
        seg[name] = codes(seg_t.column(name)) if name == "device" else seg_t.column(name).to_numpy()
    truth = GroundTruth.build(seg, np.zeros(0, MOVEMENT_DTYPE))
    gw = pq.read_table(need[2])
    gw_xyz = np.column_stack([gw.column(c).to_numpy() for c in ("x", "y", "z")])
    sightings_t = pq.read_table(need[3], columns=["t"]).column("t").to_numpy()
    report_path = run_dir / "report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    duration = float(report.get("duration_s", float(sightings_t.max(initial=1.0))))
    step = float(np.median(np.diff(np.unique(fixes["t"])))) if len(np.unique(fixes["t"])) > 1 else 1.0
    metrics = evaluate(fixes, truth, ZoneIndex.from_points([]), int(report.get("tags", len(np.unique(fixes["device"])))),
                       duration, len(sightings_t), BoundSetup(gw_xyz, exponent, sigma_db, tag_z),
                       LatencySetup(sightings_t, step, 2.0))
    old = report.get("metrics", {})
    if isinstance(old, dict) and "zone_accuracy" in old:
        metrics["zone_accuracy"] = old["zone_accuracy"]  # zones are in the scenario, not the run dir
    return metrics


@app.command()
def evaluate(
    run_dir: Annotated[Path | None, typer.Argument(help="a `tagtwin simulate` output directory")] = None,
    capture: Annotated[Path | None, typer.Option(help="recorded capture, .csv or .parquet (docs/localization.md)")] = None,
    gateways: Annotated[Path | None, typer.Option(help="gateway positions file: id,x,y,z")] = None,
    calibration: Annotated[Path | None, typer.Option(help="calibration walk capture with truth columns")] = None,
    localizer: Annotated[str, typer.Option(help="wls, centroid, strongest, knn, radio-map")] = "wls",
    tracker: Annotated[str, typer.Option(help="none, kalman, hmm, particle")] = "none",
    step: Annotated[float, typer.Option(help="seconds between fixes")] = 1.0,
    window: Annotated[float, typer.Option(help="seconds of sightings per fix")] = 1.0,
    exponent: Annotated[float, typer.Option(help="path-loss exponent n (fitted when --calibration)")] = 2.0,
    sigma_db: Annotated[float, typer.Option(help="shadowing sigma, dB (fitted when --calibration)")] = 4.0,
    tx_power: Annotated[float, typer.Option(help="RSSI at 1 m, dBm (fitted when --calibration)")] = -59.0,
    tag_z: Annotated[float, typer.Option(help="tag height, m")] = 1.0,
    seed: Annotated[int, typer.Option(help="seed of the particle filter")] = 0,
    report_json: Annotated[Path | None, typer.Option("--json", help="write the metrics here")] = None,
    fixes_out: Annotated[Path | None, typer.Option("--fixes", help="write the capture's fixes (Parquet)")] = None,
) -> None:
    """Score positions against ground truth: a twin run directory, or a capture + gateway file.

    Prints error quantiles and CDF, the Cramér-Rao bound at the true positions and the
    ratio of the achieved RMSE to it, r90 calibration and latency.
    """
    from engine.capture import CaptureError, read_capture, read_gateways
    from engine.evaluate import evaluate_capture

    if (run_dir is None) == (capture is None):
        err_console.print("give either a run directory or --capture with --gateways")
        raise typer.Exit(2)
    if run_dir is not None:
        metrics = _evaluate_run_dir(run_dir, exponent, sigma_db, tag_z)
    else:
        if gateways is None:
            err_console.print("--capture needs --gateways (a file with id,x,y,z)")
            raise typer.Exit(2)
        try:
            gw = read_gateways(gateways)
            cap = read_capture(capture, gw, gateways)  # type: ignore[arg-type]
            cal = read_capture(calibration, gw, gateways) if calibration else None
            config = _capture_config(gw, localizer, tracker, step, window, exponent, sigma_db, tx_power, tag_z,
                                     cal, seed)
        except (CaptureError, ValueError) as exc:
            err_console.print(f"[bold red]cannot evaluate:[/] {exc}", markup=True, highlight=False)
            raise typer.Exit(2) from None
        fixes, metrics = evaluate_capture(cap, config)  # type: ignore[arg-type]
        if fixes_out is not None:
            import pyarrow.parquet as pq

            from twin.run import _table

            pq.write_table(_table(fixes, {"device": cap.devices.ids}), fixes_out)
        if cap.truth is None:
            err_console.print("the capture has no truth_x/truth_y columns: nothing to score against")
    table = Table(title="evaluation against ground truth")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("fixes", "median_error_m", "p90_error_m", "p95_error_m", "rmse_m", "crb_rmse_m", "rmse_over_crb",
                "r90_coverage", "zone_accuracy", "latency_median_s", "latency_p95_s"):
        if key in metrics:
            table.add_row(key, f"{metrics[key]:g}" if isinstance(metrics[key], int | float) else str(metrics[key]))
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
