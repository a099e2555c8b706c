"""Sweeps (twin/sweep.py, `tagtwin sweep`): the spec parser, its errors, the statistics,
and a tiny sweep through both executors giving byte-identical tables."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats

from tests.conftest import SCENARIOS
from twin.scenario import ScenarioError
from twin.sweep import (
    METRICS,
    SweepError,
    execute,
    load_spec,
    mean_ci,
    pareto_front,
    parse_spec,
    plan_runs,
    replicate_seeds,
    runs_table,
    summarize,
    write_outputs,
)

DEMO = SCENARIOS / "demo.toml"
SPEC_HEAD = f'name = "t"\nscenario = "{DEMO}"\nseeds = 2\n'


def spec_problems(text: str, tmp_path: Path | None = None) -> list[str]:
    with pytest.raises((SweepError, ScenarioError)) as info:
        parse_spec(text, "spec.toml", tmp_path)
    return [f"{info.value.path}: {p}" for p in info.value.problems]


# -- the parser ----------------------------------------------------------------------

AXIS_CHOICES = {
    "radio.shadowing_sigma_db": st.floats(0, 20, allow_nan=False).map(lambda v: round(v, 3)),
    "engine.tracker": st.sampled_from(["none", "kalman"]),
    "engine.window_s": st.floats(0.5, 8, allow_nan=False).map(lambda v: round(v, 2)),
    "tags.0.count": st.integers(0, 300),
}


def _toml_value(v: object) -> str:
    return json.dumps(v)  # numbers and strings read the same in TOML


@st.composite
def specs(draw: st.DrawFn) -> tuple[str, dict[str, list[object]], int | list[int]]:
    chosen = draw(st.lists(st.sampled_from(sorted(AXIS_CHOICES)), unique=True, max_size=3))
    axes = {p: draw(st.lists(AXIS_CHOICES[p], min_size=1, max_size=3, unique=True)) for p in chosen}
    seeds: int | list[int] = draw(st.one_of(st.integers(1, 6), st.lists(st.integers(0, 2**31), min_size=1,
                                                                             max_size=4, unique=True)))
    lines = [f'scenario = "{DEMO}"', f"seeds = {_toml_value(seeds)}", "[axes]"]
    lines += [f"{p} = [{', '.join(_toml_value(v) for v in vals)}]" for p, vals in axes.items()]
    return "\n".join(lines) + "\n", axes, seeds


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs())
def test_a_spec_is_the_product_of_its_axes_with_every_value_applied(
    drawn: tuple[str, dict[str, list[object]], int | list[int]],
) -> None:
    text, axes, seeds = drawn
    spec = parse_spec(text, "spec.toml")
    # TOML groups dotted keys by table (engine.* together), so axes come in that order.
    assert sorted(a.name for a in spec.axes) == sorted(axes)
    axes = {a.name: axes[a.name] for a in spec.axes}
    combos = list(itertools.product(*axes.values()))
    assert len(spec.variants) == len(combos)
    n_seeds = seeds if isinstance(seeds, int) else len(seeds)
    assert len(spec.seeds) == n_seeds and spec.runs == len(combos) * n_seeds
    if isinstance(seeds, list):
        assert list(spec.seeds) == seeds
    for variant, combo in zip(spec.variants, combos, strict=True):
        data = variant.scenario.model_dump()
        for path, value in zip(axes, combo, strict=True):
            node: object = data
            for part in path.split("."):
                node = node[int(part)] if part.isdigit() else node[part]  # type: ignore[index]
            assert node == value
    # The first value of every axis is the base variant; names are unique.
    assert spec.variants[0].labels == {p: json.dumps(v[0], separators=(",", ":")) for p, v in axes.items()}
    assert len({v.name for v in spec.variants}) == len(spec.variants)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**63), st.integers(1, 30), st.integers(1, 30))
def test_replicate_seeds_depend_only_on_entropy_and_index(entropy: int, a: int, b: int) -> None:
    short, long = sorted((a, b))
    assert replicate_seeds(long, entropy)[:short] == replicate_seeds(short, entropy)
    assert len(set(replicate_seeds(long, entropy))) == long


def test_every_run_of_a_replicate_shares_its_seed_across_variants() -> None:
    spec = parse_spec(SPEC_HEAD + "entropy = 7\n[axes]\nradio.shadowing_sigma_db = [4, 6, 8]\n", "s.toml")
    runs = plan_runs(spec)
    assert list(spec.seeds) == replicate_seeds(2, 7)
    by_replicate = {r: {p.seed for p in runs if p.replicate == r} for r in (0, 1)}
    assert by_replicate == {0: {spec.seeds[0]}, 1: {spec.seeds[1]}}
    assert [p.scenario.seed for p in runs] == [p.seed for p in runs]


def test_set_and_quoted_index_paths_and_layout_files(tmp_path: Path) -> None:
    (tmp_path / "six.csv").write_text("id,x,y,z\n" + "".join(f"g{i},{5 + 6 * i},12,3\n" for i in range(6)))
    (tmp_path / "grid.toml").write_text("[gateways.grid]\nspacing_m = 9\n")
    text = (SPEC_HEAD + '[set]\nduration_s = 20\n"tags[1].count" = 5\n'
            '[axes]\nlayouts = ["scenario", "six.csv", "grid.toml"]\n')
    spec = parse_spec(text, tmp_path / "spec.toml")
    assert [v.name for v in spec.variants] == ["layout=scenario", "layout=six", "layout=grid"]
    own, six, grid = (v.scenario for v in spec.variants)
    assert all(s.duration_s == 20 and s.tags[1].count == 5 for s in (own, six, grid))
    assert len(own.gateways.units) == 10
    assert [g.id for g in six.gateways.units] == [f"g{i}" for i in range(6)]
    assert six.gateways.defaults == own.gateways.defaults  # a CSV layout keeps the defaults
    assert grid.gateways.grid is not None and grid.gateways.grid.spacing_m == 9 and not grid.gateways.units


# -- bad specs -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("[axes]\nradio.sigma_db = [4, 6]\n", "spec.toml: axes.radio.sigma_db: radio has no field 'sigma_db'"),
        ("[axes]\nradio.shadowing_sigma_db = [4, 40]\n",
         "spec.toml: axes.radio.shadowing_sigma_db[1] = 40: radio.shadowing_sigma_db: "
         "Input should be less than or equal to 20"),
        ("[axes]\nengine.tracker = []\n", "spec.toml: axes.engine.tracker: an axis is a non-empty list"),
        ("[axes]\nengine.tracker = \"kalman\"\n", "spec.toml: axes.engine.tracker: an axis is a non-empty list"),
        ("[set]\nseed = 3\n", "spec.toml: set.seed: seeds come from the file's `seeds`/`entropy`"),
        ("[set]\nradio.shadowing_sigma_db.x = 3\n", "spec.toml: set.radio.shadowing_sigma_db.x: "
                                                    "radio.shadowing_sigma_db is 4.0, not a table"),
        ("[set]\ntags.7.count = 3\n", "spec.toml: set.tags.7.count: tags has 2 entries, no [7]"),
        ("[set]\nduration_s = -1\n", "spec.toml: set: duration_s: Input should be greater than 0"),
        ("sedes = 3\n", "spec.toml: sedes: Extra inputs are not permitted"),
        ("[axes]\nlayouts = \"a.toml\"\n", "spec.toml: axes.layouts: a non-empty list of layout files"),
    ],
)
def test_bad_specs_name_the_file_and_field(body: str, expected: str) -> None:
    problems = spec_problems(SPEC_HEAD + body)
    assert any(p.startswith(expected) for p in problems), problems


def test_bad_top_level_values_and_toml() -> None:
    assert spec_problems(f'scenario = "{DEMO}"\nseeds = [1, 1]\n') == [
        "spec.toml: seeds: seeds must be distinct integers >= 0"]
    assert spec_problems(f'scenario = "{DEMO}"\nseeds = 0\n') == [
        "spec.toml: seeds: a count of seeds must be 1 to 100000"]
    assert spec_problems("seeds = 2\n")[0] == "spec.toml: scenario: Field required"
    assert spec_problems("scenario = [\n")[0].startswith("spec.toml: not valid TOML")


def test_a_combination_that_breaks_a_cross_reference_names_the_variant(tmp_path: Path) -> None:
    (tmp_path / "few.csv").write_text("id,x,y,z\na,5,5,3\nb,30,20,3\nc,20,10,3\n")
    text = (f'scenario = "{SCENARIOS / "demo_incidents.toml"}"\nseeds = 1\n'
            '[axes]\nlayouts = ["scenario", "few.csv"]\n')
    problems = spec_problems(text, tmp_path)
    expected = "spec.toml: variant 'layout=few': incidents[5].gateway: no gateway 'gw-03'"
    assert any(p.startswith(expected) for p in problems), problems


def test_a_path_another_scenario_lacks_names_that_variant() -> None:
    text = (f'scenario = ["{SCENARIOS / "moving-open.toml"}", "{DEMO}"]\nseeds = 1\n'
            "[set]\ngateways.grid.spacing_m = 7\n")
    problems = spec_problems(text)
    assert problems == ["spec.toml: variant 'scenario=demo-warehouse': gateways.grid.spacing_m: "
                        "gateways.grid is null, not a table; cannot go into 'spacing_m'"], problems


def test_the_digest_covers_the_files_the_spec_reads(tmp_path: Path) -> None:
    layout = tmp_path / "six.csv"
    layout.write_text("id,x,y,z\n" + "".join(f"g{i},{5 + 6 * i},12,3\n" for i in range(6)))
    text = SPEC_HEAD + '[axes]\nlayouts = ["scenario", "six.csv"]\n'
    before = parse_spec(text, tmp_path / "spec.toml").sha256
    assert parse_spec(text, tmp_path / "spec.toml").sha256 == before
    layout.write_text(layout.read_text().replace("g5,35,12,3", "g5,36,12,3"))
    assert parse_spec(text, tmp_path / "spec.toml").sha256 != before


def test_bad_layout_and_scenario_files_are_named(tmp_path: Path) -> None:
    (tmp_path / "nox.csv").write_text("id,y,z\na,1,3\n")
    (tmp_path / "bad.toml").write_text("[gateways]\nlist = [{ id = 'a', x = 'near', y = 1 }]\n")
    (tmp_path / "empty.toml").write_text("name = 'no gateways here'\n")
    for name, expected in [
        ("nox.csv", f"{tmp_path / 'nox.csv'}: missing columns ['x']"),
        ("bad.toml", f"{tmp_path / 'bad.toml'}: gateways.list[0].x: Input should be a valid number"),
        ("empty.toml", f"{tmp_path / 'empty.toml'}: gateways: a layout file needs a [gateways] table"),
        ("absent.toml", f"{tmp_path / 'absent.toml'}: cannot read file"),
    ]:
        problems = spec_problems(SPEC_HEAD + f'[axes]\nlayouts = ["scenario", "{name}"]\n', tmp_path)
        assert problems[0].startswith(expected), problems
    problems = spec_problems('scenario = "nowhere.toml"\nseeds = 1\n', tmp_path)
    assert problems[0].startswith(f"{tmp_path / 'nowhere.toml'}: cannot read file")


# -- statistics --------------------------------------------------------------------------


def test_mean_ci_is_the_student_t_interval() -> None:
    x = [2.0, 3.5, 2.5, 4.0, 3.0]
    got = mean_ci([*x, math.nan])
    lo, hi = stats.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=stats.sem(x))
    assert got["n"] == 5 and got["mean"] == pytest.approx(3.0)
    assert got["ci95"] == pytest.approx([lo, hi], rel=1e-5)
    assert mean_ci([1.0]) == {"n": 1, "mean": 1.0, "ci95": None}
    assert mean_ci([math.nan]) == {"n": 0, "mean": None, "ci95": None}


def test_summary_pairs_by_seed_and_finds_the_pareto_front() -> None:
    spec = parse_spec(f'scenario = "{DEMO}"\nseeds = 3\n[axes]\nradio.shadowing_sigma_db = [4, 6, 8]\n', "s.toml")
    # Seeds differ a lot (10, 20, 30 m), variants by exactly +1 and +2 m: paired
    # differences are exact although the unpaired intervals overlap.
    rows = []
    for run in plan_runs(spec):
        row = dict.fromkeys((k for k, _ in METRICS), math.nan) | {
            "run": run.run, "variant": run.variant, "replicate": run.replicate, "seed": run.seed,
            "p90_error_m": 10.0 * (run.replicate + 1) + run.variant, "cost": {0: 100.0, 1: 110.0, 2: 80.0}[run.variant],
            "error": "", **dict.fromkeys(("tags", "gateways", "sightings", "fixes", "incidents", "alarms"), 0)}
        if run.variant == 2 and run.replicate == 0:
            row["error"] = "RuntimeError: boom"
        rows.append(row)
    summary = summarize(spec, rows)
    v1, v2 = summary["variants"][1], summary["variants"][2]
    assert v1["vs_base"]["p90_error_m"] == {"n": 3, "mean": 1.0, "ci95": [1.0, 1.0]}
    assert v2["vs_base"]["p90_error_m"] == {"n": 2, "mean": 2.0, "ci95": [2.0, 2.0]}  # seeds 1 and 2 only
    assert v2["failed"] == 1 and summary["failed_runs"] == 1
    lo, hi = v1["metrics"]["p90_error_m"]["ci95"]
    assert lo < summary["variants"][0]["metrics"]["p90_error_m"]["mean"] < hi
    assert v1["metrics"]["alert_recall"] == {"n": 0, "mean": None, "ci95": None}
    # variant 2's mean p90 (over its two seeds) is lower than variant 1's and it is cheaper
    assert summary["pareto"]["front"] == ["shadowing_sigma_db=4", "shadowing_sigma_db=8"]
    json.dumps(summary, allow_nan=False)


def test_pareto_front_drops_dominated_and_incomplete_rows() -> None:
    rows: list[dict[str, object]] = [
        {"name": "a", "cost": 1.0, "p90_error_m": 5.0}, {"name": "b", "cost": 2.0, "p90_error_m": 4.0},
        {"name": "c", "cost": 2.0, "p90_error_m": 6.0}, {"name": "d", "cost": None, "p90_error_m": 1.0}]
    assert pareto_front(rows) == ["a", "b"]


# -- running ---------------------------------------------------------------------------


def test_common_random_numbers_make_a_no_op_axis_differ_by_exactly_zero() -> None:
    """Two variants that differ only in a label meet the same seeds, so every paired
    difference is exactly 0: the variants share their random numbers."""
    # Without the calibration walk (1.4 s a run): the shared seeds are what is proved here.
    text = SPEC_HEAD + '[set]\nduration_s = 20\nengine.shadowing_map = "none"\n[axes]\ndescription = ["one", "two"]\n'
    spec = parse_spec(text, "s.toml")
    rows = execute(plan_runs(spec), "serial")
    summary = summarize(spec, rows)
    diff = summary["variants"][1]["vs_base"]
    assert diff["median_error_m"] == {"n": 2, "mean": 0.0, "ci95": [0.0, 0.0]}
    assert diff["npv"]["mean"] == 0.0
    assert rows[0]["median_error_m"] != rows[1]["median_error_m"]  # the seeds do differ
    table = runs_table(spec, rows)
    assert table.column("description").to_pylist() == ['"one"', '"one"', '"two"', '"two"']
    assert not any(table.column("error").to_pylist())


def tagtwin(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tagtwin", *args], capture_output=True, text=True, check=False,
                          cwd=cwd, timeout=300)


@pytest.mark.integration
def test_a_tiny_sweep_gives_the_same_bytes_on_a_process_pool_and_on_dask(tmp_path: Path) -> None:
    (tmp_path / "six.csv").write_text("id,x,y,z\n" + "".join(f"g{i},{4 + 6 * i},{8 + 8 * (i % 2)},3\n"
                                                            for i in range(6)))
    (tmp_path / "spec.toml").write_text(
        f'name = "tiny"\nscenario = "{DEMO}"\nseeds = 2\n[set]\nduration_s = 20\n'
        '[axes]\nlayouts = ["scenario", "six.csv"]\n')
    # The process pool through the API, Dask through the command: same bytes.
    spec = load_spec(tmp_path / "spec.toml")
    rows = execute(plan_runs(spec), "process", workers=2)
    write_outputs(runs_table(spec, rows), summarize(spec, rows), tmp_path / "process")
    proc = tagtwin("sweep", "spec.toml", "--workers", "2", "--out", "dask", "--json", "dask.json", cwd=tmp_path)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    assert (tmp_path / "process/runs.parquet").read_bytes() == (tmp_path / "dask/runs.parquet").read_bytes()
    assert (tmp_path / "process/summary.json").read_text() == (tmp_path / "dask.json").read_text()
    assert (tmp_path / "dask/summary.json").read_text() == (tmp_path / "dask.json").read_text()
    table = pq.read_table(tmp_path / "dask/runs.parquet")
    assert table.num_rows == 4
    assert table.column("layout").to_pylist() == ["scenario", "scenario", "six", "six"]
    assert table.column("gateways").to_pylist() == [10, 10, 6, 6]
    assert all(e > 0 for e in table.column("median_error_m").to_pylist())
    summary = json.loads((tmp_path / "dask.json").read_text())
    assert summary["variants"][1]["vs_base"]["cost"]["mean"] < 0  # four fewer gateways cost less
    perf = json.loads((tmp_path / "dask/perf.json").read_text())
    assert perf["executor"] == "dask" and perf["workers"] == 2
    assert "Pareto front" in proc.stdout


def test_the_command_rejects_a_bad_spec_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "spec.toml").write_text(SPEC_HEAD + "[axes]\nradio.sigma_db = [4, 6]\n")
    proc = tagtwin("sweep", "spec.toml", cwd=tmp_path)
    assert proc.returncode == 2
    assert "spec.toml: axes.radio.sigma_db: radio has no field 'sigma_db'" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = tagtwin("sweep", "spec.toml", "--executor", "threads", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_a_run_that_raises_is_a_row_with_its_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    import twin.run

    spec = parse_spec(SPEC_HEAD + "[set]\nduration_s = 20\n", "s.toml")
    real = twin.run.simulate

    def flaky(scenario, progress=None):
        if scenario.seed == spec.seeds[1]:
            raise RuntimeError("boom")
        return real(scenario, progress)

    monkeypatch.setattr(twin.run, "simulate", flaky)
    rows = execute(plan_runs(spec), "serial")
    assert [r["error"] for r in rows] == ["", "RuntimeError: boom"]
    assert math.isnan(rows[1]["median_error_m"]) and rows[0]["median_error_m"] > 0
    summary = summarize(spec, rows)
    assert summary["failed_runs"] == 1 and summary["variants"][0]["metrics"]["median_error_m"]["n"] == 1
    assert runs_table(spec, rows).column("error").to_pylist() == ["", "RuntimeError: boom"]


@pytest.mark.slow
@pytest.mark.integration
def test_a_sweep_on_a_real_dask_cluster_gives_the_local_bytes(tmp_path: Path) -> None:
    """`--scheduler`: a dask scheduler and two worker processes started here on loopback
    give the same table as this process running the sweep alone."""
    import os

    from distributed import Client

    from tests.conftest import REPO
    from tests.live_fixtures import free_port

    spec_text = SPEC_HEAD + '[set]\nduration_s = 20\n[axes]\nengine.tracker = ["kalman", "none"]\n'
    (tmp_path / "spec.toml").write_text(spec_text)
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = os.environ | {"PYTHONPATH": str(REPO)}
    dask = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
    procs = [subprocess.Popen([*dask, "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nworkers", "2", "--nthreads", "1",
             "--host", "127.0.0.1", "--no-dashboard"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        with Client(address, timeout="60s") as client:
            client.wait_for_workers(2, timeout=120)
        proc = tagtwin("sweep", "spec.toml", "--scheduler", address, "--out", "cluster", cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=60)
    spec = load_spec(tmp_path / "spec.toml")
    rows = execute(plan_runs(spec), "serial")
    write_outputs(runs_table(spec, rows), summarize(spec, rows), tmp_path / "alone")
    assert (tmp_path / "cluster/runs.parquet").read_bytes() == (tmp_path / "alone/runs.parquet").read_bytes()
    assert json.loads((tmp_path / "cluster/perf.json").read_text())["scheduler"] == address


@pytest.mark.slow  # distributed retries the connection for the 15 s timeout
def test_an_unreachable_scheduler_is_one_line(tmp_path: Path) -> None:
    from tests.live_fixtures import free_port

    (tmp_path / "spec.toml").write_text(SPEC_HEAD + "[set]\nduration_s = 20\n")
    proc = tagtwin("sweep", "spec.toml", "--scheduler", f"tcp://127.0.0.1:{free_port()}", cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "cannot reach the Dask scheduler tcp://127.0.0.1:" in proc.stderr and "Traceback" not in proc.stderr


def _square_or_fail(x: int) -> int:
    if x == 3:
        raise ValueError("three")
    return x * x


@pytest.mark.parametrize("executor", ["serial", "process"])
def test_a_run_batch_returns_each_job_or_its_exception_and_a_cancel_leaves_no_workers(executor: str) -> None:
    """RunBatch, what both `tagtwin sweep` and the planner run on."""
    import multiprocessing as mp

    from twin.sweep import RunBatch

    batch: RunBatch[int, int] = RunBatch([1, 2, 3, 4], _square_or_fail, executor, workers=2)  # type: ignore[arg-type]
    got: dict[int, object] = {}
    while not batch.finished:
        got |= dict(batch.poll(timeout=1.0))
    batch.close()
    assert [got[i] for i in (0, 1, 3)] == [1, 4, 16] and isinstance(got[2], ValueError)
    assert batch.done == 4
    others = set(mp.active_children())  # other tests' pools (the planner keeps one) are not ours
    slow = RunBatch(list(range(50)), _square_or_fail, executor, workers=2)  # type: ignore[arg-type]
    slow.cancel()
    assert slow.finished and slow.poll() == []
    deadline = time.monotonic() + 30  # cancel has ended them; the OS may take a moment to reap
    while not set(mp.active_children()) <= others and time.monotonic() < deadline:
        time.sleep(0.05)
    assert set(mp.active_children()) <= others


def test_a_thin_false_alarm_rate_prices_npv_at_the_design_rate_and_says_so() -> None:
    """Issue 18's case through a sweep's row: 2 alarms in 600 s of 200 tags (1,440 per day per
    1,000 tags if extrapolated) price NPV at the design rate, the row flags it, the summary
    and the terminal table say so."""
    from engine.roi import DESIGN_FALSE_ALARMS, evaluate_case, measured_from_report
    from tagtwin.sweep import summary_table
    from tests.test_roi import short_run_report
    from twin.scenario import load_scenario
    from twin.sweep import metrics_row

    scenario = load_scenario(DEMO)
    report = short_run_report()
    row = metrics_row(scenario, report)
    assert row["npv_at_design_false_alarms"] == 1 and row["false_alarms"] == 2
    m = measured_from_report(report)
    assert m.false_alarms_per_day_per_1000_tags == DESIGN_FALSE_ALARMS
    assert row["npv"] == evaluate_case(scenario.roi, m).npv > 0
    spec = parse_spec(f'scenario = "{DEMO}"\nseeds = 2\n', "s.toml")
    rows = [{"run": r.run, "variant": r.variant, "replicate": r.replicate, "seed": r.seed, "error": ""} | row
            for r in plan_runs(spec)]
    summary = summarize(spec, rows)
    v = summary["variants"][0]
    assert v["npv_at_design_false_alarms"] == 2
    assert v["npv_note"].startswith(f"NPV prices false alarms at the design rate ({DESIGN_FALSE_ALARMS:g} per")
    assert "in 2 of 2 runs" in v["npv_note"]
    # the variant's pooled rate (4 alarms in 1,200 s of 200 tags) is shown by the exposure rule
    assert v["false_alarm_rate"]["events"] == 4 and v["false_alarm_rate"]["too_little_exposure"] is True
    assert v["false_alarm_rate"]["shown"].startswith("too little exposure (upper bound")
    from rich.console import Console

    console = Console(width=250, record=True)
    console.print(summary_table(summary))
    assert "*" in console.export_text()
    assert runs_table(spec, rows).column("npv_at_design_false_alarms").to_pylist() == [1, 1]
