"""Shared fixtures: the repository's scenarios, shortened where a test needs speed."""

from __future__ import annotations

from pathlib import Path

import pytest

from twin.scenario import Scenario, load_scenario

REPO = Path(__file__).resolve().parent.parent
SCENARIOS = REPO / "scenarios"
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def demo_scenario() -> Scenario:
    return load_scenario(SCENARIOS / "demo.toml")


def shortened(scenario: Scenario, duration_s: float, **updates: object) -> Scenario:
    """The same scenario, validated again, with a shorter run (and other overrides)."""
    return Scenario.model_validate(scenario.model_dump(by_alias=True) | {"duration_s": duration_s, **updates})
