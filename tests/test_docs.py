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


def test_every_shipped_scenario_is_listed_in_the_docs() -> None:
    listed = (REPO / "docs" / "scenarios.md").read_text()
    missing = [p.name for p in sorted((REPO / "scenarios").glob("*.toml")) if f"`scenarios/{p.name}`" not in listed]
    assert not missing, f"docs/scenarios.md does not list {missing}"


def test_docs_cite_nothing_outside_the_repository() -> None:
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = path.read_text()
        if path.name == "references.md":
            text = text.split("\n", 1)[1]  # its first line says where it was copied from
        assert "../shared" not in text and "shared/references" not in text, path.name
