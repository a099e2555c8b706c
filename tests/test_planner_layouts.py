"""planner.layouts: edits, undo/redo, reset, names never overwritten silently, the workspace
file and paths that cannot leave the workspace."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from planner.layouts import (
    BASE_LAYOUT,
    LayoutBook,
    LayoutError,
    apply_edit,
    layouts_file,
    next_gateway_id,
    workspace_path,
)

ROWS = [
    {"id": "gw-01", "x": 1.0, "y": 1.0, "z": 3.0},
    {"id": "gw-07", "x": 5.0, "y": 5.0, "z": 3.0},
    {"id": "door", "x": 9.0, "y": 9.0, "z": 2.0},
]


def test_next_gateway_id():
    assert next_gateway_id(ROWS) == "gw-08"
    assert next_gateway_id([]) == "gw-01"
    assert next_gateway_id(ROWS, prefix="door") == "door-01"


def test_edits_add_move_delete_and_say_what_happened():
    rows, msg = apply_edit(ROWS, "add", xy=(3.254, 4.75), default_z=3.5)
    assert rows[-1] == {"id": "gw-08", "x": 3.25, "y": 4.75, "z": 3.5}
    assert msg == "added gw-08 at (3.2, 4.8)"
    assert len(ROWS) == 3  # the input is not modified
    rows, msg = apply_edit(rows, "move", gateway="gw-07", xy=(0.5, 2.0))
    assert rows[1] == {"id": "gw-07", "x": 0.5, "y": 2.0, "z": 3.0}
    assert msg == "moved gw-07 to (0.5, 2.0)"
    rows, msg = apply_edit(rows, "delete", gateway="door")
    assert [r["id"] for r in rows] == ["gw-01", "gw-07", "gw-08"]
    assert msg == "deleted door"


@pytest.mark.parametrize(
    ("op", "gw", "xy", "want"),
    [
        ("paint", None, None, "unknown edit 'paint'"),
        ("delete", "nope", None, "delete: no gateway 'nope'"),
        ("move", "gw-01", None, "move: needs a finite position"),
        ("add", None, (float("nan"), 1.0), "add: needs a finite position"),
        ("delete", "gw-01", None, "gw-01 is the last gateway"),
    ],
)
def test_edits_that_cannot_apply_are_refused_with_a_reason(op, gw, xy, want):
    with pytest.raises(LayoutError, match=want):
        apply_edit(ROWS[:1], op, gateway=gw, xy=xy)


def test_editing_the_scenarios_layout_starts_a_new_one_and_undo_redo_reset():
    book = LayoutBook(base=ROWS)
    msg = book.edit("delete", gateway="door")
    assert book.active == "layout 1"
    assert "“as in scenario” stays as the scenario has it" in msg
    assert book.layouts[BASE_LAYOUT] == ROWS  # the original is untouched
    assert len(book.rows) == 2
    book.edit("add", xy=(2.0, 2.0))
    book.edit("move", gateway="gw-01", xy=(0.0, 0.0))
    after = [dict(r) for r in book.rows]
    assert book.undo() == "undid the last edit of “layout 1”"
    assert book.rows[0]["x"] == 1.0
    assert book.undo().startswith("undid")
    assert len(book.rows) == 2
    assert book.redo().startswith("redid")
    assert book.redo().startswith("redid")
    assert book.rows == after
    assert book.redo() == "nothing to redo"
    assert book.reset() == "reset “layout 1” to the scenario's 3 gateways"
    assert book.rows == ROWS
    book.undo()  # the reset itself is undoable
    assert book.rows == after
    # A new edit after an undo drops the redo branch.
    book.undo()
    book.edit("delete", gateway="gw-07")
    assert not book.can_redo()
    # The base layout has nothing to reset or undo.
    book.active = BASE_LAYOUT
    assert not book.can_undo()
    assert book.reset() == "“as in scenario” already has the scenario's gateways"


def test_names_are_never_overwritten_silently():
    book = LayoutBook(base=ROWS)
    book.add("north", ROWS[:2])
    with pytest.raises(LayoutError, match="a layout named “north” exists"):
        book.add("north", ROWS[:1])
    with pytest.raises(LayoutError, match="scenario's own layout"):
        book.add(BASE_LAYOUT, ROWS[:1], overwrite=True)
    with pytest.raises(LayoutError, match="needs a name"):
        book.add("  ", ROWS)
    assert len(book.layouts["north"]) == 2
    book.add("north", ROWS[:1], overwrite=True)  # the planner confirmed
    assert len(book.layouts["north"]) == 1
    assert book.undo().startswith("undid")  # and the overwrite can be undone
    assert len(book.layouts["north"]) == 2
    assert book.fresh_name() == "layout 1"
    book.delete_layout("north")
    assert book.active == BASE_LAYOUT and "north" not in book.layouts
    with pytest.raises(LayoutError):
        book.delete_layout(BASE_LAYOUT)


def test_book_round_trips_through_its_workspace_file():
    book = LayoutBook(base=ROWS)
    book.edit("add", xy=(2.0, 3.0))
    book.add("door only", ROWS[2:])
    again = LayoutBook.from_json(book.to_json(), base=ROWS)
    assert again.layouts == book.layouts
    assert again.active == "door only"


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("not json", "layouts.json: not JSON"),
        ('{"layouts": []}', "layouts: expected an object"),
        ('{"layouts": {"a": []}}', "layouts.a: expected a non-empty list"),
        ('{"layouts": {"a": [{"id": "g", "x": 1}]}}', r"layouts.a\[0\]: needs id, x, y and z"),
    ],
)
def test_a_bad_layouts_file_names_the_field(text, want):
    with pytest.raises(LayoutError, match=want):
        LayoutBook.from_json(text, base=ROWS, source="layouts.json")


def test_workspace_paths_stay_inside(tmp_path):
    root = tmp_path / "ws"
    root.mkdir()
    assert workspace_path(root, "scenarios/a.toml", ".toml") == root / "scenarios" / "a.toml"
    for bad, why in (
        ("/etc/passwd", "not an absolute one"),
        ("~/x.toml", "not an absolute one"),
        ("../x.toml", "'..' is not allowed"),
        ("a/../../x.toml", "'..' is not allowed"),
        ("", "file name is empty"),
        ("a.txt", "must end in .toml"),
    ):
        with pytest.raises(LayoutError, match=why):
            workspace_path(root, bad, ".toml")
    os.symlink(tmp_path, root / "out")
    with pytest.raises(LayoutError, match="resolves outside the workspace"):
        workspace_path(root, "out/x.toml", ".toml")
    assert layouts_file(root, "demo warehouse/../x") == root / "layouts" / "demo-warehouse-..-x.json"


@given(st.text(min_size=1, max_size=40))
def test_any_name_either_lands_inside_the_workspace_or_is_refused(name):
    root = Path("/tmp/tagtwin-ws-property").resolve()
    try:
        path = workspace_path(root, name)
    except (LayoutError, ValueError):  # ValueError: an embedded NUL the OS cannot take
        return
    assert path.is_relative_to(root)
