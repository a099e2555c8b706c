"""The ``tagtwin`` command line: simulate, check, and the entry points other parts add."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from tagtwin import __version__
from twin.scenario import Scenario, ScenarioError, load_scenario

# Help is plain text: brackets such as [expected] are literal, never Rich markup.
app = typer.Typer(
    add_completion=False, no_args_is_help=True, rich_markup_mode=None,
    help="TagTwin: a digital twin and test harness for BLE smart-tag tracking.",
)
# Not a terminal (CI logs, pipes): wide enough that tables never wrap mid-word.
_LOG_WIDTH = None if sys.stdout.isatty() else 160
console = Console(width=_LOG_WIDTH)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def _print_version(value: bool) -> None:
    if value:
        print(f"tagtwin {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    _version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="print the version and exit")
    ] = False,
) -> None:
    """TagTwin: a digital twin and test harness for BLE smart-tag tracking."""

DEMO_SCENARIO = Path(__file__).resolve().parent.parent / "scenarios" / "demo.toml"


def _fail(message: object, code: int = 2) -> typer.Exit:
    """One plain line on stderr (no wrapping, no markup) and the exit code to raise."""
    print(" ".join(str(message).split()), file=sys.stderr)
    return typer.Exit(code)


def _write(path: Path, text: str) -> None:
    """Write an output file, or one line naming it and exit 2 (a missing folder, no permission)."""
    try:
        path.write_text(text)
    except OSError as exc:
        raise _fail(f"{path}: cannot write: {exc.strerror or exc}") from None


def _load(path: Path) -> Scenario:
    try:
        return load_scenario(path)
    except ScenarioError as exc:
        err_console.print(f"[bold red]invalid scenario[/] {exc.path}", soft_wrap=True)
        for problem in exc.problems:
            # Plain lines (no wrapping) so editors and CI logs can jump to file and field.
            print(f"{exc.path}: {problem}", file=sys.stderr)
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
    out: Annotated[
        Path | None, typer.Option("--out", help="output directory; default out/<scenario file name>")
    ] = None,
    duration: Annotated[float | None, typer.Option(help="override duration_s")] = None,
    seed: Annotated[int | None, typer.Option(help="override the scenario seed")] = None,
    plot: Annotated[bool, typer.Option(help="write floorplan.png")] = True,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="print nothing but errors")] = False,
) -> None:
    """Simulate a scenario end to end and write sightings, truth, estimates and a report.

    Files a previous TagTwin run wrote into the output directory (its manifest) are removed
    first; nothing else there is touched.
    """
    from tagtwin.outdir import clear_previous, write_manifest
    from twin.run import summary_text, write_outputs

    sc = _load(scenario)
    out = out if out is not None else Path("out") / scenario.stem
    updates: dict[str, object] = {}
    if duration is not None:
        updates["duration_s"] = duration
    if seed is not None:
        updates["seed"] = seed
    if updates:
        sc = Scenario.model_validate(sc.model_dump() | updates)
    started = time.perf_counter()
    try:
        run = _run_with_progress(sc, quiet)
    except ScenarioError as exc:
        for problem in exc.problems:
            print(f"{scenario}: {problem}", file=sys.stderr)
        raise typer.Exit(2) from None
    try:
        out.mkdir(parents=True, exist_ok=True)
        clear_previous(out)
        paths = write_outputs(run, out)
        if plot:
            from tagtwin.plot import plot_floorplan

            paths["floorplan"] = plot_floorplan(run, out / "floorplan.png")
        write_manifest(out, paths.values(), __version__)
    except OSError as exc:
        raise _fail(f"{out}: cannot write the run's files: {exc.strerror or exc}") from None
    wall = time.perf_counter() - started
    if not quiet:
        console.print(_metrics_table(run.report()))
        console.print(summary_text(run), highlight=False)
        console.print(f"wall time {wall:.1f} s; wrote {len(paths)} files to {out}/", highlight=False)
    if run.metrics.get("sightings") == 0:  # an error, so --quiet prints it too
        print(f"{scenario}: no gateway heard any tag (tags.count, gateways.defaults.sensitivity_dbm, "
              "tx_power_1m_dbm): nothing to localize or score", file=sys.stderr)
        raise typer.Exit(1)


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


@app.command()
def check(
    paths: Annotated[list[Path], typer.Argument(help="scenario files or directories of them")],
    report_json: Annotated[Path | None, typer.Option("--json", help="write the results as JSON to FILE")] = None,
    junit: Annotated[
        Path | None, typer.Option("--junit", help="write JUnit XML to FILE: one test case per bound")
    ] = None,
    validate_only: Annotated[
        bool, typer.Option("--validate-only", help="only validate the files; run nothing")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="print nothing but errors")] = False,
) -> None:
    """Run the [expected] bounds of every scenario given; exit 1 if any metric is out of bounds.

    Exit codes: 0 all bounds hold, 1 a metric regressed, 2 a file is invalid or missing.
    """
    from tagtwin.checks import BoundRow, junit_xml
    from twin.run import check_bounds
    from twin.run import simulate as run_scenario

    files: list[Path] = []
    for p in paths:
        if not p.exists():
            err_console.print(f"{p}: no such file or directory", markup=False)
            raise typer.Exit(2)
        files += sorted(p.glob("*.toml")) if p.is_dir() else [p]
    if not files:
        err_console.print(f"no scenario files under {', '.join(map(str, paths))}", markup=False)
        raise typer.Exit(2)
    scenarios = [(f, _load(f)) for f in files]  # every file validated before anything runs
    if validate_only:
        if not quiet:
            for f, sc in scenarios:
                console.print(f"{f}: valid ({sc.name}, {len(sc.expected)} bounds)", markup=False, highlight=False)
        return
    rows: list[BoundRow] = []
    for f, sc in scenarios:
        if not sc.expected:
            rows.append(BoundRow(str(f), sc.name, "-", "-", None, None, None, "skipped: no [expected] bounds", 0.0))
            continue
        started = time.perf_counter()
        results = check_bounds(sc, run_scenario(sc).report())
        seconds = (time.perf_counter() - started) / max(len(results), 1)
        rows += [BoundRow(str(f), sc.name, r.metric, r.bound_text, r.min, r.max, r.value,
                          "ok" if r.ok else "REGRESSED", seconds) for r in results]
    failed = any(r.result == "REGRESSED" for r in rows)
    if not quiet:
        table = Table(title="regression check")
        for col in ("scenario", "metric", "bound", "value", "result"):
            table.add_column(col)
        for r in rows:
            style = {"ok": "green", "REGRESSED": "bold red"}.get(r.result, "dim")
            table.add_row(Path(r.file).name, r.metric, r.bound, r.value_text, f"[{style}]{r.result}[/]")
        console.print(table)
    if report_json:
        results_json = [{"scenario": r.file, "metric": r.metric, "min": r.min, "max": r.max, "value": r.value,
                         "ok": r.result == "ok"} for r in rows if r.result in ("ok", "REGRESSED")]
        _write(report_json, json.dumps(results_json, indent=2) + "\n")
    if junit:
        _write(junit, junit_xml(rows))
    if failed:
        err_console.print("[bold red]regression:[/] at least one metric is out of bounds")
        raise typer.Exit(1)


@app.command()
def init(
    path: Annotated[Path, typer.Argument(help="scenario file to write")] = Path("scenario.toml"),
) -> None:
    """Write a commented starter scenario (a small store) to edit; never overwrites a file."""
    from importlib.resources import files

    if path.exists():
        err_console.print(f"{path}: exists; not overwriting (give another file name)", markup=False)
        raise typer.Exit(2)
    text = files("tagtwin").joinpath("templates/starter.toml").read_text()
    try:
        path.write_text(text)
    except OSError as exc:
        err_console.print(f"{path}: cannot write: {exc.strerror}", markup=False)
        raise typer.Exit(2) from None
    console.print(f"wrote {path}; next: tagtwin check {path} --validate-only, then tagtwin simulate {path}",
                  markup=False, highlight=False)


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
    smoother_lag: Annotated[float, typer.Option(
        help="kalman, hmm, particle: fixed-lag smoother, seconds of readings after each fix it waits for")] = 0.0,
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
    tag_z: Annotated[float | None, typer.Option(help="tag height, m (default: the site's, or 1)")] = None,
    seed: Annotated[int, typer.Option(help="seed of the particle filter")] = 0,
    report_json: Annotated[
        Path | None, typer.Option("--json", help="write the metrics here")
    ] = None,
    fixes_out: Annotated[
        Path | None, typer.Option("--fixes", help="write the fixes (Parquet)")
    ] = None,
    site: Annotated[
        Path | None, typer.Option("--site", help="site file: plan, gateways, calibrated radio")
    ] = None,
    compare: Annotated[
        bool, typer.Option("--compare", help="every estimator/tracker combination, one table")
    ] = False,
    leave_one_out: Annotated[
        bool, typer.Option("--leave-one-out", help="with --compare and --site: each device's path "
                           "scored by a site calibrated on the others")
    ] = False,
) -> None:
    """Score positions against ground truth: a twin run directory, or a capture + gateway file.

    Prints error quantiles and CDF, the Cramér-Rao bound at the true positions and the
    ratio of the achieved RMSE to it, r90 calibration and latency.
    """
    from engine.capture import CaptureError, read_capture, read_gateways
    from engine.evaluate import evaluate_capture
    from engine.pipeline import EngineConfig
    from siteplan.sitefile import SiteFileError, load_site_file
    from tagtwin.evaluation import (
        RunDirError,
        capture_config,
        compare_estimators,
        compare_smoothed,
        compare_table,
        evaluate_run_dir,
        leave_one_path_out,
        site_capture_config,
        site_gateways,
    )

    tag_z_given, tag_z = tag_z, (1.0 if tag_z is None else tag_z)

    if (run_dir is None) == (capture is None):
        err_console.print("give either a run directory or --capture with --gateways")
        raise typer.Exit(2)
    if run_dir is not None:
        try:
            metrics = evaluate_run_dir(run_dir, exponent, sigma_db, tag_z)
        except (FileNotFoundError, RunDirError) as exc:
            raise _fail(f"cannot evaluate: {exc}") from None
    else:
        if gateways is None and site is None:
            err_console.print("--capture needs --gateways (a file with id,x,y,z) or --site")
            raise typer.Exit(2)
        try:
            site_file = load_site_file(site) if site is not None else None
            gw = read_gateways(gateways) if gateways is not None else site_gateways(site_file)  # type: ignore[arg-type]
            gw_source = gateways or site
            cap = read_capture(capture, gw, gw_source)  # type: ignore[arg-type]
            cal = read_capture(calibration, gw, gw_source) if calibration else None  # type: ignore[arg-type]

            def make(loc: str, trk: str, lag: float = 0.0) -> EngineConfig:
                if site_file is not None:
                    return site_capture_config(site_file, site, gw, loc, trk, step, window, tx_power,  # type: ignore[arg-type]
                                               tag_z_given, seed, cal, smoother_lag_s=lag)
                cfg = capture_config(gw, loc, trk, step, window, exponent, sigma_db, tx_power,
                                     tag_z, cal, seed)
                return dataclasses.replace(cfg, smoother_lag_s=lag) if lag > 0 else cfg

            config = make(localizer, tracker, smoother_lag)
        except (CaptureError, SiteFileError, ValueError) as exc:
            raise _fail(f"cannot evaluate: {exc}") from None
        if cap.truth is None and (compare or fixes_out is None):
            print(f"cannot evaluate: {capture} has no truth_x/truth_y (or x/y) columns: nothing to score "
                  "against (write the fixes with --fixes instead)", file=sys.stderr)
            raise typer.Exit(2)
        if compare and leave_one_out:
            if site_file is None:
                print("cannot evaluate: --leave-one-out needs --site (the plan to calibrate)", file=sys.stderr)
                raise typer.Exit(2)
            try:
                per_path = leave_one_path_out(cap, site_file, site, step, window, seed)  # type: ignore[arg-type]
            except ValueError as exc:
                print(f"cannot evaluate: {exc}", file=sys.stderr)
                raise typer.Exit(2) from None
            for path_name, results in per_path.items():
                console.print(f"held out: {path_name} (site calibrated on the other paths)")
                console.print(compare_table(results))
            if report_json:
                _write(report_json, json.dumps(per_path, indent=2, sort_keys=True) + "\n")
            return
        if compare:
            results = compare_estimators(cap, make, smoothed=compare_smoothed(site_file, step, window, smoother_lag))
            console.print(compare_table(results))
            if report_json:
                _write(report_json, json.dumps(results, indent=2, sort_keys=True) + "\n")
            return
        fixes, metrics = evaluate_capture(cap, config)
        if fixes_out is not None:
            import pyarrow.parquet as pq

            from twin.run import _table

            try:
                pq.write_table(_table(fixes, {"device": cap.devices.ids}), fixes_out)
            except OSError as exc:
                raise _fail(f"{fixes_out}: cannot write: {exc.strerror or exc}") from None
        if cap.truth is None:
            console.print(f"wrote {fixes_out}; no truth columns, so nothing scored")
            return
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
        _write(report_json, text)


@app.command()
def calibrate(
    capture: Annotated[Path, typer.Option(help="calibration walk or point survey with truth columns")],
    gateways: Annotated[Path, typer.Option(help="gateway positions file: id,x,y,z")],
    out: Annotated[Path, typer.Option("--out", help="site file to write (TOML)")],
    site: Annotated[Path | None, typer.Option("--site", help="site file whose plan to keep")] = None,
    tag_z: Annotated[float | None, typer.Option(help="tag height, m (default: the site's)")] = None,
    plot: Annotated[Path | None, typer.Option(help="diagnostics PNG (default: next to --out)")] = None,
    seed: Annotated[int, typer.Option(help="seed of the bootstrap")] = 0,
    choose_tracker: Annotated[bool, typer.Option(
        help="also choose and tune the tracker by cross-validation on the walk (minutes)")] = False,
    target_median: Annotated[float, typer.Option(help="accuracy target for --choose-tracker: median, m")] = 0.8,
    target_p90: Annotated[float, typer.Option(help="accuracy target for --choose-tracker: p90, m")] = 1.8,
    track_length: Annotated[float, typer.Option(
        help="--choose-tracker: length of the walk the target is judged on, s (ranks by how often "
        "held-out walks that long meet both targets)")] = 360.0,
    rank_by: Annotated[str, typer.Option(
        help="--choose-tracker: meet_share (that share) or target_ratio (pooled errors' worse ratio)")]
    = "meet_share",
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Fit a site's radio from a walk with truth: P0, n, per-gateway offsets, shadowing
    and its decorrelation, fading, how gateways report; write them into a site file.
    With --choose-tracker, also rank every estimator/tracker by cross-validation on the
    walk and write the tuning (speed, widening, r90 factor) that evaluate --site uses."""
    from engine.capture import CaptureError, read_capture, read_gateways
    from siteplan.sitefile import SiteFileError, dump_site_file, load_site_file
    from tagtwin.calibrate import calibrate as run
    from tagtwin.calibrate import diagnostics_png, survey_reference
    from tagtwin.evaluation import CRITERIA

    if rank_by not in CRITERIA or not track_length > 0:
        err_console.print(f"[bold red]cannot calibrate:[/] --rank-by {rank_by!r} --track-length {track_length:g}: "
                          f"rank by one of {', '.join(CRITERIA)}, over a length > 0 s", markup=True, highlight=False)
        raise typer.Exit(2)
    try:
        base = load_site_file(site) if site is not None else None
        gw = read_gateways(gateways)
        cap = read_capture(capture, gw, gateways)
        if cap.truth_xyz is None:
            raise ValueError(f"{capture}: no truth_x/truth_y (or x/y) columns: nothing to calibrate against")
        result = run(cap, base=base, tag_z=tag_z, survey_path=survey_reference(capture, out), seed=seed)
        site_file = result.site
        if choose_tracker:
            from tagtwin.evaluation import tune_tracking

            site_file, best, cv, _ = tune_tracking(site_file, out, cap, gw, target_median_m=target_median,
                                                   target_p90_m=target_p90, track_s=track_length,
                                                   criterion=rank_by)
    except (SiteFileError, CaptureError, ValueError) as exc:
        err_console.print(f"[bold red]cannot calibrate:[/] {exc}", markup=True, highlight=False)
        raise typer.Exit(2) from None
    _write(out, dump_site_file(site_file))
    png = diagnostics_png(result, plot or out.with_suffix(".png"))
    if not quiet:
        console.print(result.table(capture.name))
        if result.outliers:
            console.print(f"outlier gateways (check mounting, antenna, position): {', '.join(result.outliers)}")
        if choose_tracker:
            score = cv[best.name]
            console.print(f"tracker chosen by cross-validation on the walk: {best.name} "
                          f"(median {score['median_error_m']:.2f} m, p90 {score['p90_error_m']:.2f} m, "
                          f"{score['track_meet_share']:.0%} of {track_length:g} s walks meet both targets, "
                          f"r90 x{score['r90_scale']:.2f})")
        console.print(f"wrote {out} and {png}")


@app.command()
def fidelity(
    capture: Annotated[Path, typer.Option(help="a real walk with truth columns")],
    site: Annotated[Path, typer.Option("--site", help="calibrated site file")],
    gateways: Annotated[Path | None, typer.Option(help="gateway positions file (default: the site's)")] = None,
    localizer: Annotated[str, typer.Option(help="estimator for the error comparison")] = "radio-map",
    tracker: Annotated[str, typer.Option(help="tracker for the error comparison")] = "hmm",
    step: Annotated[float, typer.Option(help="seconds between fixes")] = 1.0,
    window: Annotated[float, typer.Option(help="seconds of sightings per fix")] = 1.0,
    seed: Annotated[int, typer.Option(help="seed of the twin's draws")] = 0,
    realizations: Annotated[int, typer.Option(help="twins drawn (each its own shadowing)")] = 4,
    smoother_lag: Annotated[float, typer.Option(
        help="kalman, hmm, particle: compare the fixed-lag smoother with this lag, seconds")] = 0.0,
    condition: Annotated[bool, typer.Option(
        help="condition the twin's shadowing on the site's survey (this site, not one like it)")] = True,
    plot: Annotated[Path | None, typer.Option(help="figure (default: fidelity.png next to the site)")] = None,
    report_json: Annotated[Path | None, typer.Option("--json", help="write the comparison here")] = None,
) -> None:
    """Replay a real walk in the calibrated twin and compare: RSSI residuals (KS overall
    and per distance band), reception per gateway, localization error real vs twin."""
    from engine.capture import CaptureError, read_capture, read_gateways
    from siteplan.sitefile import SiteFileError, load_site_file
    from tagtwin.evaluation import site_gateways
    from tagtwin.fidelity import fidelity as run
    from tagtwin.fidelity import fidelity_png, fidelity_table

    try:
        site_file = load_site_file(site)
        gw = read_gateways(gateways) if gateways is not None else site_gateways(site_file)
        cap = read_capture(capture, gw, gateways or site)
        result, curves = run(cap, site_file, site, localizer=localizer, tracker=tracker, step=step,
                             window=window, seed=seed, realizations=realizations, condition=condition,
                             smoother_lag_s=smoother_lag)
    except (CaptureError, SiteFileError, ValueError) as exc:
        err_console.print(f"[bold red]cannot compare:[/] {exc}", markup=True, highlight=False)
        raise typer.Exit(2) from None
    png = fidelity_png(result, curves, plot or site.with_name("fidelity.png"))
    console.print(fidelity_table(result, capture.name))
    console.print(f"twin/real median error {result['localization']['twin_over_real_median']:.2f}; figure {png}")
    if report_json:
        _write(report_json, json.dumps(result, indent=2, sort_keys=True) + "\n")


@app.command()
def roi(
    scenario: Annotated[Path, typer.Argument(help="scenario with its [roi]")] = DEMO_SCENARIO,
    report: Annotated[Path | None, typer.Option(help="a run's report.json; default: run")] = None,
    as_json: Annotated[Path | None, typer.Option("--json", help="write the full result as JSON to FILE")] = None,
) -> None:
    """Payback, NPV and TCO from measured performance: base, best, worst, and what moves payback."""
    from engine.roi import DESIGN_FALSE_ALARMS, RoiReportError, measured_from_report, read_report, roi_report

    sc = _load(scenario)
    try:
        if report is not None:
            rep = read_report(report)
            measured = measured_from_report(rep, str(report))
            # A report of another scenario would price this site with someone else's figures.
            if "scenario" in rep and rep["scenario"] != sc.name:
                raise RoiReportError(f"{report}: scenario: the report is of {rep['scenario']!r}, "
                                     f"not of {sc.name!r} ({scenario})")
        else:
            from twin.run import simulate as run_scenario

            measured = measured_from_report(run_scenario(sc).report())
    except RoiReportError as exc:
        raise _fail(f"cannot compute ROI: {exc}") from None
    result = roi_report(sc.roi, measured)
    if as_json:
        _write(as_json, json.dumps(result, indent=2) + "\n")
    cases = result["cases"]
    assert isinstance(cases, dict)
    table = Table(title=f"{sc.name}: return on investment over {sc.roi.horizon_months} months")
    for col in ("case", "capex", "opex/month", "benefit/month", "payback month", "NPV", "TCO"):
        table.add_column(col, justify="right")
    for name in ("worst", "base", "best"):
        c = cases[name]
        table.add_row(name, f"{c['capex']:,.0f}", f"{c['opex_per_month']:,.0f}",
                      f"{c['benefit_per_month']:,.0f}", str(c["payback_month"] or "never"),
                      f"{c['npv']:,.0f}", f"{c['tco']:,.0f}")
    console.print(table)
    npv = result["npv_interval"]
    assert isinstance(npv, dict)
    console.print(
        f"NPV over the measured rates' 95 % intervals: {npv['low']:,.0f} (low end) .. "
        f"{npv['point']:,.0f} (point) .. {npv['high']:,.0f} (high end)",
        markup=False, highlight=False,
    )
    for label, key, flag in (("false alarms", "false_alarm_rate_shown", "false_alarms_from_design"),
                             ("reviews", "reviews_rate_shown", "reviews_from_design")):
        if npv.get(key):
            design = (f"; NPV's point uses the design rate ({DESIGN_FALSE_ALARMS:g} per day per 1,000 "
                      "tags) instead" if npv.get(flag) else "")
            console.print(f"{label}: {npv[key]}{design}", markup=False, highlight=False)
    sens = Table(title=f"sensitivity: each input -/+ {sc.roi.sensitivity_pct:g} %")
    for col in ("input", "payback low", "payback high", "NPV low", "NPV high"):
        sens.add_column(col, justify="right")
    rows = result["sensitivity"]
    assert isinstance(rows, list)
    for r in rows[:8]:
        sens.add_row(r["input"], f"{r['payback_low']:.1f}", f"{r['payback_high']:.1f}",
                     f"{r['npv_low']:,.0f}", f"{r['npv_high']:,.0f}")
    console.print(sens)


@app.command()
def sweep(
    spec: Annotated[Path, typer.Argument(help="sweep spec TOML (docs/sweeps.md)")],
    out: Annotated[Path, typer.Option("--out", help="directory for runs.parquet and summary.json")] = Path(
        "out/sweep"),
    report_json: Annotated[Path | None, typer.Option("--json", help="also write the summary here")] = None,
    executor: Annotated[str, typer.Option(help="dask (LocalCluster or --scheduler) or process")] = "dask",
    scheduler: Annotated[str | None, typer.Option(help="a Dask scheduler, tcp://host:port")] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="local worker processes; default: one per core")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Run scenarios × layouts × parameters × seeds; compare the variants with 95 % intervals."""
    from tagtwin.sweep import run_sweep_command

    if executor not in ("dask", "process"):
        err_console.print(f"--executor: dask or process, not {executor!r}")
        raise typer.Exit(2)
    code = run_sweep_command(spec, out, report_json, executor, scheduler, workers, quiet)  # type: ignore[arg-type]
    if code:
        raise typer.Exit(code)


@app.command()
def audit(
    event_id: Annotated[str | None, typer.Argument(help="event id (8+ characters); omit to list the log")] = None,
    log: Annotated[Path, typer.Option("--log", help="audit log (a run's audit.jsonl)")] = Path("out/demo/audit.jsonl"),
) -> None:
    """Re-derive a money-relevant event from the evidence its audit record keeps (exit 1 if it
    does not reproduce); without an id, check the log's chain and list its events."""
    from tagtwin.audit import audit_command

    code = audit_command(event_id, log)
    if code:
        raise typer.Exit(code)


@app.command()
def schema(out: Annotated[Path | None, typer.Option(help="write here instead of stdout")] = None) -> None:
    """Print the JSON Schema of scenario files (generated from the code)."""
    text = json.dumps(Scenario.model_json_schema(by_alias=True), indent=2) + "\n"
    if out:
        _write(out, text)
    else:
        sys.stdout.write(text)


# -- live bridge (imports are lazy: bleak and paho load only for these commands) -------

BROKER = "mqtt://127.0.0.1:1883"
BrokerOpt = Annotated[str, typer.Option("--broker", help="mqtt://host:port or mqtts://host:port (TLS)")]
NatsOpt = Annotated[
    str | None, typer.Option("--nats", help="the backbone: nats://host:port[,...] (absent: the embedded one)")
]
CredsOpt = Annotated[
    Path | None,
    typer.Option("--creds", help="credentials file, mode 0600: a NATS .creds file for the backbone, or the "
                 "MQTT login for --broker; else $TAGTWIN_NATS_CREDS or $TAGTWIN_MQTT_USERNAME/PASSWORD"),
]
SiteOpt = Annotated[str, typer.Option("--site", help="site name on the backbone (subject token)")]
KeysOpt = Annotated[Path, typer.Option("--keys", help="keys.toml: [keys] gateway = hex key (mode 0600)")]


def _broker_setup(broker: str, creds: Path | None) -> None:
    """Check the broker URL (no secrets in it) and the credentials before anything starts;
    the chosen credentials file is handed on through $TAGTWIN_MQTT_CREDS (a path, not a
    secret) so every client this process makes uses it."""
    import os

    from live_bridge.mqtt import CREDS_ENV, BrokerUrl, CredsError, load_creds

    try:
        BrokerUrl.parse(broker, load_creds(creds))
    except ValueError as exc:
        raise _fail(exc) from None
    except CredsError as exc:
        raise _bridge_config_error(exc) from None
    if creds is not None:
        os.environ[CREDS_ENV] = str(creds)


def _nats_creds(creds: Path | None) -> str | None:
    """A NATS credentials file for the backbone client, checked like every secret file."""
    if creds is None:
        return None
    _secret_file(creds)
    return str(creds)


def _secret_file(path: Path) -> None:
    from live_bridge.config import check_secret_file
    from live_bridge.gateway import ConfigError

    try:
        check_secret_file(path)
    except ConfigError as exc:
        raise _bridge_config_error(exc) from None


def _bridge_config_error(exc: Exception) -> typer.Exit:
    path = getattr(exc, "path", "")
    for problem in getattr(exc, "problems", [str(exc)]):
        print(f"{path}: {problem}", file=sys.stderr)
    return typer.Exit(2)


@app.command()
def gateway(
    config: Annotated[Path, typer.Option("--config", help="gateway.toml (holds the key: mode 0600)")] = Path(
        "gateway.toml"
    ),
    creds: CredsOpt = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Scan BLE advertisements with bleak and publish signed batches to the broker."""
    import asyncio
    import logging
    import signal

    from live_bridge.gateway import ConfigError, load_gateway_config, run_gateway

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING)
    try:
        cfg = load_gateway_config(config)
    except ConfigError as exc:
        raise _bridge_config_error(exc) from None
    _secret_file(config)
    _broker_setup(cfg.broker, creds)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        gw = await run_gateway(cfg, stop)
        sys.stderr.write(json.dumps(gw.status_counters(), sort_keys=True) + "\n")

    asyncio.run(main())


@app.command()
def serve(
    *,
    broker: Annotated[
        str | None, typer.Option("--broker", help="mqtt://host:port: the MQTT-only server (no backbone)")
    ] = None,
    nats: NatsOpt = None,
    creds: CredsOpt = None,
    site: Annotated[str | None, typer.Option(
        "--site", help="site name: the backbone's subject token (default: default); with --broker the MQTT "
        "session is tagtwin-serve-<site> (default: the scenario's name)")] = None,
    session: Annotated[str | None, typer.Option(
        "--session", help="--broker: the persistent MQTT session's client id (default: tagtwin-serve-<site>); "
        "two servers on one broker need two")] = None,
    data_dir: Annotated[Path, typer.Option(help="embedded backbone: JetStream store")] = Path(".tagtwin/backbone"),
    nats_port: Annotated[int, typer.Option(help="embedded backbone: NATS port (0: a free one)")] = 4222,
    mqtt_port: Annotated[int, typer.Option(help="embedded backbone: MQTT listener port (0: a free one)")] = 1883,
    raw_retention: Annotated[
        float | None, typer.Option(help="days the raw stream keeps batches (default: the site's raw_retention_days)")
    ] = None,
    replicas: Annotated[int, typer.Option(help="stream and checkpoint replicas (3 on a 3-node cluster)")] = 1,
    max_skew: Annotated[float, typer.Option(help="s an event time may lead the receive clock")] = 30.0,
    scenario: Annotated[
        Path, typer.Option("--scenario", help="site plan and gateway positions")
    ] = DEMO_SCENARIO,
    keys: KeysOpt = Path("keys.toml"),
    clock: Annotated[
        str, typer.Option(help="wall: windows close as time passes; event: by event time only")
    ] = "wall",
    adapters: Annotated[
        str, typer.Option(help="comma list: theengs, espresense (on the backbone: unsigned, via its MQTT listener)")
    ] = "",
    events: Annotated[
        str, typer.Option(help="event sink: rules (the scenario's rule set), zone-change or none")
    ] = "rules",
    step: Annotated[float | None, typer.Option(help="override engine step_s")] = None,
    lateness: Annotated[float | None, typer.Option(help="override allowed_lateness_s")] = None,
    duration: Annotated[float | None, typer.Option(help="stop after this many seconds")] = None,
    status_every: Annotated[float, typer.Option(help="seconds between status messages")] = 5.0,
    audit: Annotated[
        Path | None, typer.Option(help="append money-relevant events with their evidence here (--events rules)")
    ] = None,
    new_ids_per_minute: Annotated[
        int, typer.Option(min=1, help="new device ids one gateway may register per minute (the fleet is known)")
    ] = 600,
) -> None:
    """Run the engine on the backbone: verified batches in, positions and dead letters out.

    With no --nats it starts its own nats-server (JetStream, MQTT listener) and stops it on
    exit; --broker mqtt://... runs the MQTT-only server instead (rule events).
    """
    import signal
    import threading

    from engine.contract import IdTable
    from engine.ingest import NewDeviceCap
    from live_bridge.config import check_keys_match, load_key_ring
    from live_bridge.gateway import ConfigError
    from live_bridge.server import EventSink, NullSink, ServerCore, SessionTakenOverError, ZoneChangeSink
    from live_bridge.server import serve as run_server
    from tagtwin.live import rules_sink_for, site_engine_config

    chosen = [a.strip() for a in adapters.split(",") if a.strip()]
    unknown = sorted(set(chosen) - {"theengs", "espresense"})
    if unknown or events not in ("none", "zone-change", "rules"):
        err_console.print(f"unknown adapter(s) {unknown} or event sink {events!r}")
        raise typer.Exit(2)
    if broker is None:
        _serve_backbone(scenario, keys, nats=nats, creds=_nats_creds(creds), site=site or "default", data_dir=data_dir,
                        nats_port=nats_port,
                        mqtt_port=mqtt_port, raw_retention_days=raw_retention, replicas=replicas,
                        max_skew_s=max_skew, step=step,
                        lateness=lateness, duration=duration, status_every=status_every, adapters=tuple(chosen))
        return
    if clock not in ("wall", "event"):
        err_console.print(f"--clock: expected wall or event, got {clock!r}")
        raise typer.Exit(2)
    _broker_setup(broker, creds)
    try:
        ring = load_key_ring(keys)
    except ConfigError as exc:
        raise _bridge_config_error(exc) from None
    _secret_file(keys)
    key_table = ring.signing_keys()
    plan = _load(scenario)
    cfg = site_engine_config(plan, step_s=step, lateness_s=lateness)
    try:
        check_keys_match(key_table, cfg.gateways.ids, keys)
    except ConfigError as exc:
        raise _bridge_config_error(exc) from None
    devices: IdTable | None = None
    sink: EventSink = ZoneChangeSink() if events == "zone-change" else NullSink()
    if events == "rules":
        devices, rules_sink = rules_sink_for(plan, cfg)
        if audit is not None:
            from engine.audit import AuditError, AuditLog, LiveAudit
            from twin.run import model_version

            try:
                rules_sink.audit = LiveAudit(rules_sink.rules, AuditLog(audit), cfg.step_s, model_version(plan))
            except AuditError as exc:
                raise _fail(exc) from None
        sink = rules_sink
    elif audit is not None:
        raise _fail("--audit needs --events rules (the audit log holds rule events)")
    core = ServerCore(cfg, ring, clock=clock, adapters=chosen,  # type: ignore[arg-type]
                      sink=sink, devices=devices, new_id_cap=NewDeviceCap(per_minute=new_ids_per_minute))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    if duration is not None:
        threading.Timer(duration, stop.set).start()
    try:
        run_server(core, broker, stop, status_every_s=status_every, keys_path=keys,
                   client_id=session or f"tagtwin-serve-{site or plan.name}",
                   say=lambda line: err_console.print(line, markup=False, highlight=False, soft_wrap=True))
    except SessionTakenOverError as exc:
        err_console.print(f"serve: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.stderr.write(json.dumps(core.status(), sort_keys=True, default=str) + "\n")
        raise typer.Exit(1) from None
    sys.stderr.write(json.dumps(core.status(), sort_keys=True, default=str) + "\n")


def _serve_backbone(
    scenario: Path, keys: Path, *, nats: str | None, creds: str | None, site: str, data_dir: Path, nats_port: int,
    mqtt_port: int, raw_retention_days: float | None, replicas: int, max_skew_s: float, step: float | None,
    lateness: float | None,
    duration: float | None, status_every: float, adapters: tuple[str, ...] = (),
) -> None:
    from live_bridge.backbone import StreamSettings, token
    from live_bridge.config import check_keys_match, load_key_ring
    from live_bridge.gateway import ConfigError
    from live_bridge.natsserver import NatsServerError
    from live_bridge.worker import WorkerSettings
    from tagtwin.live import site_engine_config
    from tagtwin.worker import serve_backbone, site_worker_core

    plan = _load(scenario)
    if raw_retention_days is None:
        raw_retention_days = plan.site.raw_retention_days
    try:
        token("site", site)
        ring = load_key_ring(keys)
        if raw_retention_days <= 0 or max_skew_s < 0 or replicas not in (1, 3, 5):
            raise ValueError("--raw-retention must be > 0 days, --max-skew >= 0 s, --replicas 1, 3 or 5")
    except ConfigError as exc:
        raise _bridge_config_error(exc) from None
    except ValueError as exc:
        err_console.print(str(exc), markup=False)
        raise typer.Exit(2) from None
    _secret_file(keys)
    cfg = site_engine_config(plan, step_s=step, lateness_s=lateness)
    try:
        check_keys_match(ring.signing_keys(), cfg.gateways.ids, keys)
    except ConfigError as exc:
        raise _bridge_config_error(exc) from None
    key_table = ring.keys  # during a rotation both keys verify (a revoked gateway has none)
    # Theengs / ESPresense through the MQTT listener: unsigned, from the site's gateways only
    settings = WorkerSettings(site=site, max_skew_s=max_skew_s, status_every_s=status_every, adapters=adapters,
                              raw_retention_s=raw_retention_days * 86400.0)
    streams = StreamSettings(raw_max_age_s=raw_retention_days * 86400.0, replicas=replicas)
    try:
        core = site_worker_core(plan, cfg, key_table, settings)
        status = serve_backbone(
            core, streams, nats_url=nats, creds=creds, data_dir=data_dir, nats_port=nats_port,
            mqtt_port=mqtt_port, duration_s=duration, keys_path=keys,
            say=lambda line: err_console.print(line, markup=False, highlight=False, soft_wrap=True),
        )
    except (NatsServerError, ConnectionError, OSError, ValueError) as exc:
        err_console.print(f"backbone: {exc}", markup=False, soft_wrap=True)
        raise typer.Exit(2) from None
    sys.stderr.write(json.dumps(status, sort_keys=True, default=str) + "\n")


@app.command()
def keys(
    scenario: Annotated[Path, typer.Argument(help="scenario with the gateways")] = DEMO_SCENARIO,
    out: Annotated[Path, typer.Option(help="keys.toml to write (never overwritten)")] = Path(
        "keys.toml"
    ),
) -> None:
    """Write a keys.toml with a fresh random HMAC key per gateway of a scenario."""
    from live_bridge.config import new_keys_toml, write_secret_file
    from siteplan.model import SiteModel
    from twin.sim import resolve_gateways

    if out.exists():
        err_console.print(f"{out}: exists; not overwriting keys")
        raise typer.Exit(2)
    sc = _load(scenario)
    gws, _ = resolve_gateways(sc, SiteModel.from_scenario(sc))
    try:
        write_secret_file(out, new_keys_toml(list(gws.ids)))
    except OSError as exc:
        raise _fail(f"{out}: cannot write: {exc.strerror or exc}") from None
    console.print(f"wrote {len(gws.ids)} keys to {out}")


@app.command()
def provision(
    scenario: Annotated[Path, typer.Argument(help="site or scenario file with the gateways")] = DEMO_SCENARIO,
    out: Annotated[Path, typer.Option("--out", help="directory to create (never overwritten)")] = Path("site-secrets"),
    port: Annotated[int, typer.Option(help="the MQTT broker's TLS port")] = 8883,
    nats_port: Annotated[int, typer.Option(help="the NATS backbone's TLS port")] = 4222,
    nats_mqtt_port: Annotated[int, typer.Option(help="the backbone's MQTT listener (TLS) port")] = 8884,
    site: Annotated[str, typer.Option(help="site name in the backbone's subjects")] = "site",
    host: Annotated[list[str] | None, typer.Option(help="broker host names/addresses for its certificate")] = None,
) -> None:
    """Create a site's CA, broker certificate, per-gateway logins and HMAC keys, engine and
    dashboard identities, and the broker's ACL: TLS on every hop, least privilege for each."""
    from live_bridge.provision import provision as run_provision
    from siteplan.model import SiteModel
    from twin.sim import resolve_gateways

    if out.exists():
        raise _fail(f"{out}: exists; not overwriting a site's secrets")
    sc = _load(scenario)
    gws, _ = resolve_gateways(sc, SiteModel.from_scenario(sc))
    hosts = tuple(host) if host else ("127.0.0.1", "localhost")
    try:
        result = run_provision(list(gws.ids), out, hosts=hosts, port=port, broker_host=hosts[0], site=site,
                               nats_port=nats_port, nats_mqtt_port=nats_mqtt_port)
    except OSError as exc:
        raise _fail(f"{out}: cannot write: {exc.strerror or exc}") from None
    console.print(f"provisioned {len(result.identities)} identities in {out}/ (mosquitto -c {result.broker_conf}; "
                  f"nats-server -c {out}/nats/nats-server.conf); keep {out}/ca.key offline", highlight=False)


@app.command("rotate-key")
def rotate_key(
    gateway: Annotated[str, typer.Argument(help="gateway id whose key to rotate")],
    keys: KeysOpt = Path("keys.toml"),
    retire: Annotated[bool, typer.Option(help="end the overlap: drop the old key")] = False,
) -> None:
    """Give a gateway a new HMAC key; old and new are both accepted until --retire."""
    from live_bridge.config import retire_old_key
    from live_bridge.config import rotate_key as rotate
    from live_bridge.gateway import ConfigError

    _secret_file(keys)
    try:
        if retire:
            retire_old_key(keys, gateway)
            console.print(f"{gateway}: old key retired; only the new key verifies")
        else:
            new = rotate(keys, gateway)
            # The new key goes to the gateway's own config by hand (it is printed once, to
            # the terminal only: a secret in a log file is a leak).
            console.print(f"{gateway}: new key {new}\nold and new are accepted until "
                          f"`tagtwin rotate-key {gateway} --retire`", highlight=False)
    except ConfigError as exc:
        raise _bridge_config_error(exc) from None


@app.command()
def revoke(
    keys: KeysOpt = Path("keys.toml"),
    gateway: Annotated[str | None, typer.Option(help="gateway id to revoke (its key is deleted)")] = None,
    tag: Annotated[str | None, typer.Option(help="device id to revoke")] = None,
) -> None:
    """Revoke a gateway or a tag: a running server refuses its traffic within a second,
    with a revoked-traffic event."""
    from live_bridge.config import revoke as run_revoke
    from live_bridge.gateway import ConfigError

    if (gateway is None) == (tag is None):
        raise _fail("give exactly one of --gateway or --tag")
    _secret_file(keys)
    try:
        run_revoke(keys, gateway=gateway, tag=tag)
    except ConfigError as exc:
        raise _bridge_config_error(exc) from None
    console.print(f"revoked {'gateway' if gateway else 'tag'} {gateway or tag} in {keys}")


@app.command("twin-publish")
def twin_publish(
    *,
    scenario: Annotated[Path, typer.Argument(help="scenario TOML file")] = DEMO_SCENARIO,
    broker: Annotated[
        str | None, typer.Option("--broker", help="mqtt://host:port: publish over MQTT instead of the backbone")
    ] = None,
    nats: Annotated[str, typer.Option("--nats", help="the backbone: nats://host:port[,...]")] = "nats://127.0.0.1:4222",
    creds: CredsOpt = None,
    site: SiteOpt = "default",
    keys: KeysOpt = Path("keys.toml"),
    realtime: Annotated[bool, typer.Option(help="pace by simpy.rt, not flat out")] = False,
    speed: Annotated[float, typer.Option(help="real-time factor when --realtime")] = 1.0,
    duration: Annotated[float | None, typer.Option(help="override duration_s")] = None,
) -> None:
    """Simulate a scenario and publish its sightings as its gateways would: on the backbone,
    each batch retried until the stream stores it (a backbone restart is a pause)."""
    import asyncio

    from live_bridge.backbone import token
    from live_bridge.config import load_keys
    from live_bridge.gateway import ConfigError
    from tagtwin.twin_publish import publish_twin, publish_twin_nats
    from twin.sim import run_twin

    sc = _load(scenario)
    if duration is not None:
        sc = Scenario.model_validate(sc.model_dump() | {"duration_s": duration})
    if broker is not None:
        _broker_setup(broker, creds)
    try:
        key_table = load_keys(keys)
    except ConfigError as exc:
        raise _bridge_config_error(exc) from None
    _secret_file(keys)
    try:
        if broker is not None:
            sent = publish_twin(run_twin(sc), key_table, broker, realtime=realtime, speed=speed)
        else:
            token("site", site)
            sent = asyncio.run(publish_twin_nats(run_twin(sc), key_table, nats, site=site, creds=_nats_creds(creds),
                                                 realtime=realtime, speed=speed))
    except (OSError, ValueError) as exc:
        err_console.print(f"cannot publish to {broker or nats}: {exc}", markup=False)
        raise typer.Exit(2) from None
    console.print(json.dumps(sent), highlight=False, soft_wrap=True)


@app.command()
def record(
    out: Annotated[Path, typer.Argument(help="capture file (JSON lines) to write")],
    broker: BrokerOpt = BROKER,
    creds: CredsOpt = None,
    topic: Annotated[list[str] | None, typer.Option(help="topic filters; default: batches")] = None,
    duration: Annotated[float | None, typer.Option(help="stop after this many seconds")] = None,
) -> None:
    """Record what arrives on the broker to a capture file."""
    import signal
    import threading

    from live_bridge.capture import record as run_record

    _broker_setup(broker, creds)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        n = run_record(broker, out, topics=topic, duration_s=duration, stop=stop,
                       say=lambda line: err_console.print(line, markup=False, highlight=False, soft_wrap=True))
    except (OSError, ValueError) as exc:
        err_console.print(f"cannot record from {broker}: {exc}", markup=False)
        raise typer.Exit(2) from None
    console.print(f"recorded {n} messages to {out}")


@app.command()
def replay(
    capture: Annotated[Path, typer.Argument(help="capture file from `tagtwin record`")],
    broker: BrokerOpt = BROKER,
    creds: CredsOpt = None,
    speed: Annotated[float, typer.Option(help="x recorded pace; 0 = as fast as possible")] = 1.0,
) -> None:
    """Publish a capture again, at recorded pace or faster."""
    from live_bridge.capture import replay as run_replay

    _broker_setup(broker, creds)

    try:
        n = run_replay(capture, broker, speed)
    except (OSError, ValueError) as exc:
        err_console.print(str(exc), markup=False)
        raise typer.Exit(2) from None
    console.print(f"replayed {n} messages")


@app.command("wire-schema")
def wire_schema(
    out: Annotated[Path | None, typer.Option(help="write here instead of stdout")] = None,
    markdown: Annotated[bool, typer.Option(help="the whole docs/wire-format.md")] = False,
) -> None:
    """Print the JSON Schema of the live bridge's MQTT messages (generated from the code)."""
    from live_bridge.wire import json_schemas, wire_format_markdown

    text = wire_format_markdown() if markdown else json.dumps(json_schemas(), indent=2) + "\n"
    if out:
        _write(out, text)
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


@app.command()
def loadtest(
    scenario: Annotated[Path, typer.Argument(help="scenario TOML file: its site, tags and [loadtest.slo]")],
    rate: Annotated[float | None, typer.Option(help="sightings/s over all sites")] = None,
    multiplier: Annotated[float | None, typer.Option(help="times the scenario's natural rate")] = None,
    ramp: Annotated[str | None, typer.Option(help="START:FACTOR:STEP_S, raised until an SLO fails")] = None,
    duration: Annotated[float, typer.Option(help="seconds of load (not with --ramp)")] = 30.0,
    sites: Annotated[int, typer.Option(help="sites (one partition and worker each, own seeds)")] = 1,
    nats: Annotated[str | None, typer.Option("--nats", help="a running backbone instead of the embedded one")] = None,
    mqtt: Annotated[str | None, typer.Option("--mqtt", help="mqtt://host:port: only broker-side figures")] = None,
    publishers: Annotated[int | None, typer.Option(help="publisher processes (default: as the rate needs)")] = None,
    pool: Annotated[int | None, typer.Option(help="N pool workers share the sites (default: one a site)")] = None,
    wire: Annotated[int, typer.Option(help="wire format the publishers send: 1 objects, 2 columns")] = 1,
    fault: Annotated[list[str] | None, typer.Option(
        help="KIND@T[+DOWN]; times as 30, 30s, 500ms or 2m, e.g. broker-restart@30s+3s")] = None,
    slo: Annotated[list[str] | None, typer.Option(help="NAME=BOUND (none to drop one), e.g. completeness=1")] = None,
    worker_setting: Annotated[list[str] | None, typer.Option(help="worker setting NAME=VALUE (JSON value)")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the report as JSON")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="directory for index.html, report.json, perf.json")] = None,
    quiet: Annotated[bool, typer.Option(help="no live progress lines")] = False,
    creds: CredsOpt = None,
) -> None:
    """Load-test the pipeline with the scenario's traffic; exit 1 when an SLO fails."""
    import os

    from live_bridge.backbone import CREDS_ENV as NATS_CREDS_ENV

    # Credentials as serve and twin-publish take them (design.md): --creds or the environment,
    # handed to every process this run starts through the environment (a path, not a secret).
    if mqtt is not None:
        _broker_setup(mqtt, creds)
    elif creds is not None:
        if nats is None:
            err_console.print("loadtest: --creds needs --nats or --mqtt (the embedded backbone has no login)",
                              markup=False)
            raise typer.Exit(2)
        os.environ[NATS_CREDS_ENV] = str(_nats_creds(creds))
    from live_bridge.faults import Fault
    from live_bridge.natsserver import NatsServerError
    from tagtwin.loadtest import (
        LoadTestError,
        LoadTestOptions,
        Ramp,
        parse_settings,
        parse_slos,
        run_loadtest,
        write_outputs,
    )

    try:
        options = LoadTestOptions(
            scenario=scenario, sites=sites, rate=rate, multiplier=multiplier,
            ramp=Ramp.parse(ramp) if ramp else None, duration_s=duration, nats_url=nats, mqtt_url=mqtt,
            publishers=publishers, pool=pool, wire=wire, faults=[Fault.parse(f) for f in fault or []],
            slo=parse_slos(slo or []),
            worker_settings=parse_settings(worker_setting or []),
            progress=None if quiet else (lambda line: print(line, file=sys.stderr, flush=True)),
        )
        _load(scenario)
        report = run_loadtest(options)
    except (LoadTestError, ValueError, TypeError) as exc:
        err_console.print(f"loadtest: {exc}", markup=False)
        raise typer.Exit(2) from None
    except (OSError, NatsServerError, ConnectionError, TimeoutError) as exc:
        err_console.print(f"loadtest could not run: {exc}", markup=False)
        raise typer.Exit(2) from None
    for path in write_outputs(report, json_out, out):
        err_console.print(f"wrote {path}", markup=False)
    summary = {k: report.get(k) for k in ("offered_per_s", "achieved_per_s", "generated", "processed", "unprocessed",
                                          "lost", "latency_ms", "close_to_position_ms")}
    summary["slo"] = report["slo"]
    summary["bottleneck"] = report["bottleneck"].get("verdict")
    if "ramp" in report:
        summary["max_passing_per_s"] = report["ramp"]["max_passing_per_s"]
    console.print(json.dumps(summary), highlight=False, soft_wrap=True)
    if not report["pass"]:
        failed = [k for k, v in report["slo"].items() if not v["pass"]]
        err_console.print(f"SLO failed: {', '.join(failed)}", markup=False)
        raise typer.Exit(1)


INTERNAL_ERROR_EXIT = 70  # EX_SOFTWARE (sysexits.h)


def main() -> None:
    """The console script. Each known bad input is caught where it is read and named there;
    this guard is the last resort for a bug: one line and exit 70, never a traceback
    (TAGTWIN_DEBUG=1 shows it)."""
    import os

    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        if os.environ.get("TAGTWIN_DEBUG"):
            raise
        text = " ".join(str(exc).split())[:300]
        print(f"tagtwin: internal error ({type(exc).__name__}: {text}); rerun with TAGTWIN_DEBUG=1 "
              "for the traceback and please report it", file=sys.stderr)
        sys.exit(INTERNAL_ERROR_EXIT)
