"""The house rule of docs/architecture.md: each room imports only the rooms below it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GROUND = {"radio_models", "siteplan"}
BELOW: dict[str, set[str]] = {
    "radio_models": set(),
    "siteplan": {"radio_models"},
    "engine": GROUND,
    "twin": GROUND | {"engine"},
    "live_bridge": GROUND | {"engine"},
    "planner": GROUND | {"engine", "twin", "live_bridge"},
    "tagtwin": GROUND | {"engine", "twin", "live_bridge"},
    "app": GROUND | {"engine", "twin", "live_bridge", "planner"},
}


def imported_rooms(path: Path) -> set[str]:
    """Top-level project packages a file imports, anywhere in it (functions and
    TYPE_CHECKING blocks included: a lazy import upward is still an arrow upward)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & set(BELOW)


def room_files(room: str) -> list[Path]:
    return [ROOT / "app.py"] if room == "app" else sorted((ROOT / room).rglob("*.py"))


@pytest.mark.parametrize("room", sorted(BELOW))
def test_room_imports_only_rooms_below(room: str) -> None:
    files = room_files(room)
    assert files, f"room {room} has no files"
    upward = {
        f"{path.relative_to(ROOT)} imports {other}"
        for path in files
        for other in imported_rooms(path) - BELOW[room] - {room}
    }
    assert not upward, sorted(upward)


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from twin.scenario import Scenario\n    import planner.backend\n")
    assert imported_rooms(bad) == {"twin", "planner"}
