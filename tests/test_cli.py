"""The command line: simulate output, regression check, schema."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import SCENARIOS

DEMO = (SCENARIOS / "demo.toml").read_text()


def tagtwin(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tagtwin", *args], capture_output=True, text=True, check=False)


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
