"""Shared fixtures: the repository's scenarios, shortened where a test needs speed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

from twin.scenario import Scenario, load_scenario

REPO = Path(__file__).resolve().parent.parent
SCENARIOS = REPO / "scenarios"
SHARED = REPO.parent / "shared"

# CI draws the same hypothesis examples on every run (a red build is reproducible and never
# a matter of luck); developers' runs keep exploring new ones.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(scope="session")
def demo_scenario() -> Scenario:
    return load_scenario(SCENARIOS / "demo.toml")


def shortened(scenario: Scenario, duration_s: float, **updates: object) -> Scenario:
    """The same scenario, validated again, with a shorter run (and other overrides)."""
    return Scenario.model_validate(scenario.model_dump(by_alias=True) | {"duration_s": duration_s, **updates})


# The files that take longest in the default run, longest first (measured December 2026 on
# 2 cores). pytest-xdist hands whole files to its workers in collection order (loadfile,
# --no-loadscope-reorder in addopts), so these start first and the many short files fill
# the end, instead of a long file starting last while the other worker idles. Order only:
# a file missing here runs after these, in pytest's own order.
LONGEST_FILES = (
    "test_app_browser.py", "test_app.py", "test_loadtest.py", "test_tls.py", "test_cli.py", "test_sweep.py",
    "test_live_integration.py", "test_faults.py", "test_backbone_rules.py", "test_planner_replicates.py",
    "test_worker_pipeline.py", "test_twin.py", "test_audit.py", "test_backbone.py", "test_cells.py", "test_pool.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's tests keep their order
