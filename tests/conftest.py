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
