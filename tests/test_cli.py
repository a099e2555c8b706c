"""The command line: simulate output, regression check, schema."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.conftest import SCENARIOS

DEMO = (SCENARIOS / "demo.toml").read_text()


def tagtwin(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tagtwin", *args], capture_output=True, text=True, check=False,
                          cwd=cwd)


def side_by_side(*commands: tuple[str, ...]) -> list[subprocess.CompletedProcess[str]]:
    """Independent commands, two at a time (the 2-core machine's second core would idle)."""
    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(lambda args: tagtwin(*args), commands))


def _scenario_with_bounds(folder: Path, bounds: str) -> Path:
    text = DEMO.replace("duration_s = 600", "duration_s = 30")
    text = text[: text.index("\n[expected]\n")] + "\n[expected]\n" + bounds
    path = folder / "short.toml"
    path.write_text(text)
    return path


def test_check_passes_within_bounds(tmp_path: Path) -> None:
    path = _scenario_with_bounds(tmp_path, "median_error_m = { max = 10 }\nzone_accuracy = { min = 0.3 }\n")
    proc = tagtwin("check", str(tmp_path), "--json", str(tmp_path / "r.json"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads((tmp_path / "r.json").read_text())
    assert [r["ok"] for r in results] == [True, True]
    assert results[0]["scenario"] == str(path)


def test_check_fails_readably_on_regression(tmp_path: Path) -> None:
    _scenario_with_bounds(
        tmp_path, 'median_error_m = { max = 0.01 }\n"moving.fixes" = { min = 0 }\nno_such_metric = { min = 1 }\n'
    )
    proc = tagtwin("check", str(tmp_path))
    assert proc.returncode == 1
    assert "REGRESSED" in proc.stdout and "median_error_m" in proc.stdout and "missing" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_check_with_no_files_is_an_error(tmp_path: Path) -> None:
    assert tagtwin("check", str(tmp_path)).returncode == 2


def test_schema_is_json_schema_of_the_scenario() -> None:
    proc = tagtwin("schema")
    schema = json.loads(proc.stdout)
    assert schema["title"] == "Scenario"
    assert {"site", "gateways", "tags", "seed"} <= set(schema["properties"])


def test_simulate_prints_the_report(tmp_path: Path) -> None:
    proc = tagtwin("simulate", str(SCENARIOS / "demo.toml"), "--out", str(tmp_path), "--duration", "20", "--no-plot")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    for key in ("median_error_m", "p90_error_m", "p95_error_m", "zone_accuracy"):
        assert key in proc.stdout and isinstance(report["metrics"][key], float)
    assert "position error: median" in (tmp_path / "summary.txt").read_text()


def test_version_matches_the_installed_distribution() -> None:
    from importlib.metadata import version

    proc = tagtwin("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"tagtwin {version('tagtwin')}"


def test_help_keeps_bracketed_words() -> None:
    check, serve = side_by_side(("check", "--help"), ("serve", "--help"))
    assert "[expected]" in check.stdout
    assert "[keys]" in serve.stdout


def test_init_writes_a_starter_that_runs_and_never_overwrites(tmp_path: Path) -> None:
    from twin.scenario import load_scenario

    path = tmp_path / "store.toml"
    first = subprocess.run([sys.executable, "-m", "tagtwin", "init", str(path)], capture_output=True, text=True,
                           check=False)
    assert first.returncode == 0, first.stderr
    scenario = load_scenario(path)
    assert len(scenario.gateways.units) >= 4 and scenario.tags
    path.write_text(path.read_text() + "# mine\n")
    # A second init, and a run of the starter (the default output directory is named after
    # the scenario file), side by side.
    with ThreadPoolExecutor(2) as pool:
        again_ = pool.submit(tagtwin, "init", str(path))
        run_ = pool.submit(tagtwin, "simulate", "store.toml", "--duration", "20", "--quiet", cwd=tmp_path)
        again, run = again_.result(), run_.result()
    assert again.returncode == 2 and "not overwriting" in again.stderr
    assert path.read_text().endswith("# mine\n")
    assert run.returncode == 0, run.stderr
    assert run.stdout == ""  # --quiet prints nothing but errors
    report = json.loads((tmp_path / "out" / "store" / "report.json").read_text())
    assert report["scenario"] == "my-store"


def test_report_carries_version_hash_and_seed_and_reruns_clear_only_their_files(tmp_path: Path) -> None:
    from importlib.metadata import version

    short = tmp_path / "short.toml"
    short.write_text(DEMO.replace("duration_s = 600", "duration_s = 20"))
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert tagtwin("simulate", str(short), "--out", str(out), "--quiet").returncode == 0
    assert (out / "floorplan.png").exists()
    report = json.loads((out / "report.json").read_text())
    assert report["tool"] == {"name": "tagtwin", "version": version("tagtwin")}
    assert len(report["scenario_sha256"]) == 64 and report["seed"] == 42
    assert "created_utc" in json.loads((out / "perf.json").read_text())
    first_hash = report["scenario_sha256"]
    # A --no-plot run removes the previous run's picture, keeps the user's file, and a
    # seed override changes the scenario hash.
    assert tagtwin("simulate", str(short), "--out", str(out), "--quiet", "--no-plot", "--seed", "7").returncode == 0
    assert not (out / "floorplan.png").exists()
    assert (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / "report.json").read_text())["scenario_sha256"] != first_hash
    assert "floorplan.png" not in json.loads((out / "tagtwin-manifest.json").read_text())["files"]


def test_check_junit_and_validate_only(tmp_path: Path) -> None:
    from xml.etree import ElementTree as ET

    _scenario_with_bounds(tmp_path, "median_error_m = { max = 0.01 }\nzone_accuracy = { min = 0.0 }\n")
    junit = tmp_path / "check.xml"
    bad = tmp_path / "bad.toml"
    bad.write_text(DEMO.replace("seed = 42", "seed = -1"))
    proc, valid, invalid = side_by_side(("check", str(tmp_path / "short.toml"), "--junit", str(junit)),
                                        ("check", str(tmp_path / "short.toml"), "--validate-only"),
                                        ("check", str(bad), "--validate-only"))
    assert proc.returncode == 1
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None and suite.get("tests") == "2" and suite.get("failures") == "1"
    failed = [c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None]
    assert failed == ["median_error_m"]
    assert valid.returncode == 0 and "valid" in valid.stdout
    assert invalid.returncode == 2 and f"{bad}: seed" in invalid.stderr and "Traceback" not in invalid.stderr


def test_why_accuracy_names_too_few_gateways() -> None:
    from twin.run import why_accuracy

    metrics = {"fix_quality": {"under_3_gateways": 0.475, "methods": {"centroid": 0.475, "wls": 0.525}},
               "devices_located": 58}
    reasons = why_accuracy(metrics, {"packets_listened": 1000, "lost_to_collisions": 150}, 60)
    assert any("47.5% of fixes heard fewer than 3 gateways" in r for r in reasons)
    assert any("2 of 60 tags were never located" in r for r in reasons)
    assert any("airtime saturation: 15.0%" in r for r in reasons)
    assert why_accuracy({"fix_quality": {"under_3_gateways": 0.05, "methods": {}}, "devices_located": 60},
                        {"packets_listened": 1000, "lost_to_collisions": 10}, 60) == []
