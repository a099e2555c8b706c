"""CI's regression check: every shipped scenario with [expected] bounds holds them.

The same check as `tagtwin check scenarios/` (twin.run.check_bounds), run by the test
suite so `.ci/run` fails a build when accuracy, alert quality or throughput regresses.
"""

from __future__ import annotations

import pytest

from tests.conftest import REPO, SCENARIOS
from twin.run import check_bounds, simulate, summary_text
from twin.scenario import load_scenario

WITH_BOUNDS = [p for p in sorted(SCENARIOS.glob("*.toml")) if load_scenario(p).expected]


def test_the_shipped_regression_scenarios_are_found() -> None:
    assert {p.name for p in WITH_BOUNDS} >= {"demo.toml", "demo_incidents.toml"}


@pytest.mark.parametrize("path", WITH_BOUNDS, ids=lambda p: p.stem)
def test_scenario_holds_its_expected_bounds(path) -> None:
    scenario = load_scenario(path)
    run = simulate(scenario)
    results = check_bounds(scenario, run.report())
    failed = [f"{r.metric} = {r.value} (want {r.bound_text})" for r in results if not r.ok]
    assert not failed, f"{path.name} regressed: " + "; ".join(failed)
    assert len(results) == len(scenario.expected)
    if path.name == "demo.toml":
        # The README shows what `./run demo` prints: it must be what the demo prints now.
        readme = (REPO / "README.md").read_text()
        assert summary_text(run) in readme, "refresh README's demo output"
        metrics = run.report()["metrics"]
        for key in ("median_error_m", "p90_error_m", "p95_error_m", "zone_accuracy", "r90_coverage"):
            row = next(line for line in readme.splitlines() if f"│ {key} " in line)
            assert f" {metrics[key]:g} │" in row, f"README's demo table: {row}"
