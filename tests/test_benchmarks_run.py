"""The benchmark scripts still run and print figures that hold together (`./run test -m benchmark`).

Each script is run at its smallest honest size, as a user runs it, and its JSON is checked for
the identities its figures must satisfy (counts that add up, rates that match counts and time).
No speed is asserted: speeds are the scripts' output, read by people, never a test's verdict.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.benchmark

ROOT = Path(__file__).resolve().parents[1]


def run_benchmark(script: str, *args: str) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False,
    )
    assert done.returncode == 0, f"{script} exited {done.returncode}: {done.stderr[-2000:]}"
    figures: dict[str, Any] = json.loads(done.stdout)
    return figures


def test_bench_rules_counts_every_fix_it_fed() -> None:
    out = run_benchmark("bench_rules.py", "--tags", "300", "--steps", "3")
    assert out["fixes"] == 300 * 3
    assert out["fixes_per_second_all_inputs"] <= out["fixes_per_second_rules_only"]
    assert all(v >= 0 for v in out["wall_s"].values())


def test_bench_gateway_forwards_or_filters_every_advert() -> None:
    out = run_benchmark("bench_gateway.py", "--adverts", "2000")
    assert out["forwarded"] + out["filtered_out"] == out["adverts"] == 2000
    assert out["published_acked"] == out["batches"] > 0
    assert out["forwarded_per_s"] <= out["adverts_per_s"]


def test_worker_stages_shares_add_up() -> None:
    out = run_benchmark("worker_stages.py", "--scale", "1", "--seconds", "10")
    assert math.isclose(sum(out["share_cpu"].values()), 1.0, abs_tol=0.011)
    assert out["positions"] > 0 and out["sightings"] > out["positions"]
    # the core is handle then tick: it cannot be faster per CPU-second than either stage
    assert out["worker_core_per_cpu_s"] <= min(out["handle_per_cpu_s"], out["tick_per_cpu_s"])


def test_checkpoint_size_restores_the_rows_it_held() -> None:
    out = run_benchmark("checkpoint_size.py", "--seconds", "10", "--rates", "2000")
    (run,) = out["runs"]
    assert run["restore_rows_equal"] is True
    assert run["rows_held"] == run["sightings"] > 0  # 10 s is inside the 120 s horizon
    assert run["checkpoint_bytes_max"] >= run["checkpoint_bytes_last"] > 0


def test_bench_engine_rate_is_its_counts_over_its_time() -> None:
    out = run_benchmark("bench_engine.py", "--duration", "5", "--workers", "1", "--baseline", "")
    assert out["fixes"] > 0 and out["rule_events"] > 0
    assert out["sightings_per_s"] == pytest.approx(out["sightings"] / out["wall_s"], rel=0.02)
    assert out["fixes_per_s"] == pytest.approx(out["fixes"] / out["wall_s"], rel=0.02)
    assert out["load"]["cores"] >= 1


def test_quiet_missing_exposure_and_bound() -> None:
    out = run_benchmark("quiet_missing.py", "--seeds", "1", "--duration", "300")
    assert out["tag_days"] == pytest.approx(200 * 300 / 86400, abs=0.01)
    assert out["alarms"] == sum(out["alarms_by_rule"].values())
    # zero alarms in 0.69 tag-days: the one-sided 95 % Poisson bound is -ln(0.05) / exposure
    if out["alarms"] == 0:
        expected = -math.log(0.05) / (200 * 300 / 86400 / 1000)
        assert out["upper95_per_day_per_1000_tags"] == pytest.approx(expected, rel=0.01)
