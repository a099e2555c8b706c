"""Docs that are generated from code must match the code."""

from __future__ import annotations

from tagtwin.docgen import render
from tests.conftest import REPO


def test_scenario_reference_is_up_to_date() -> None:
    committed = (REPO / "docs" / "scenario-reference.md").read_text()
    assert committed == render(), "regenerate: python -m tagtwin.docgen > docs/scenario-reference.md"


def test_readme_names_the_two_commands_and_ci_runs_the_test_one() -> None:
    readme = (REPO / "README.md").read_text()
    assert "./run demo" in readme
    assert "./run test" in readme
    assert "./run test" in (REPO / ".ci" / "run").read_text()
