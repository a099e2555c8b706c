"""The planner's layouts of one scenario: named, edited with undo and redo, never overwritten
silently, kept in a workspace directory the app may read and write and nowhere else.

Streamlit-free, so every rule a planner relies on (an edit of the scenario's own layout
starts a new layout, a taken name is refused, undo restores exactly, a path cannot leave
the workspace) is tested without a browser. app.py keeps one LayoutBook per scenario in
the session and saves it to the workspace after every change.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

GatewayRow = dict[str, Any]  # {"id": str, "x": float, "y": float, "z": float}

BASE_LAYOUT = "as in scenario"
EDIT_OPS = ("add", "move", "delete")
EditOp = Literal["add", "move", "delete"]
UNDO_DEPTH = 100  # edits kept per layout; a planner's session rarely goes past a few dozen


class LayoutError(ValueError):
    """An edit or a name the book refuses; the message is shown to the planner as is."""


def next_gateway_id(rows: list[GatewayRow], prefix: str = "gw") -> str:
    """``prefix-NN`` one past the highest number in use with that prefix."""
    nums = [
        int(r["id"].rsplit("-", 1)[1])
        for r in rows
        if r["id"].startswith(prefix + "-") and r["id"].rsplit("-", 1)[1].isdigit()
    ]
    return f"{prefix}-{max(nums, default=0) + 1:02d}"


def apply_edit(
    rows: list[GatewayRow],
    op: str,
    *,
    gateway: str | None = None,
    xy: tuple[float, float] | None = None,
    default_z: float = 3.0,
) -> tuple[list[GatewayRow], str]:
    """One edit of a layout (a new list; ``rows`` is not modified) and a sentence saying
    what happened. Raises LayoutError for an edit that cannot apply (the plan's editor
    only offers valid ones, so this guards against stale or forged messages)."""
    out = [dict(r) for r in rows]
    ids = [r["id"] for r in out]
    if op not in EDIT_OPS:
        raise LayoutError(f"unknown edit {op!r}; one of {', '.join(EDIT_OPS)}")
    if op in ("add", "move"):
        if xy is None or not all(isinstance(v, int | float) and math.isfinite(v) for v in xy):
            raise LayoutError(f"{op}: needs a finite position, got {xy!r}")
        x, y = round(float(xy[0]), 2), round(float(xy[1]), 2)
    if op == "add":
        gid = next_gateway_id(out)
        out.append({"id": gid, "x": x, "y": y, "z": float(default_z)})
        return out, f"added {gid} at ({x:.1f}, {y:.1f})"
    if gateway not in ids:
        raise LayoutError(f"{op}: no gateway {gateway!r} in this layout")
    if op == "delete":
        if len(out) == 1:
            raise LayoutError(f"{gateway} is the last gateway; a layout needs at least one")
        return [r for r in out if r["id"] != gateway], f"deleted {gateway}"
    row = out[ids.index(gateway)]
    row["x"], row["y"] = x, y
    return out, f"moved {gateway} to ({x:.1f}, {y:.1f})"


@dataclass
class LayoutBook:
    """All layouts of one scenario, the active one, and each layout's undo and redo stacks.

    The scenario's own layout (BASE_LAYOUT) is read-only: editing it starts a new layout
    holding the edit, so the original is always there to compare against and reset to.
    """

    base: list[GatewayRow]
    layouts: dict[str, list[GatewayRow]] = field(default_factory=dict)
    active: str = BASE_LAYOUT
    undo_stack: dict[str, list[list[GatewayRow]]] = field(default_factory=dict)
    redo_stack: dict[str, list[list[GatewayRow]]] = field(default_factory=dict)
    revision: int = 0  # bumped on every change: widgets showing rows are re-keyed by it

    def __post_init__(self) -> None:
        self.layouts = {BASE_LAYOUT: [dict(r) for r in self.base], **self.layouts}
        if self.active not in self.layouts:
            self.active = BASE_LAYOUT

    @property
    def rows(self) -> list[GatewayRow]:
        return self.layouts[self.active]

    def fresh_name(self, stem: str = "layout") -> str:
        n = 1
        while f"{stem} {n}" in self.layouts:
            n += 1
        return f"{stem} {n}"

    def add(self, name: str, rows: list[GatewayRow], *, overwrite: bool = False) -> str:
        """A new named layout, made active. A taken name is refused unless ``overwrite``
        (the app asks first); the scenario's own layout can never be replaced."""
        name = name.strip()
        if not name:
            raise LayoutError("a layout needs a name")
        if name == BASE_LAYOUT:
            raise LayoutError(f"“{BASE_LAYOUT}” is the scenario's own layout; pick another name")
        if name in self.layouts and not overwrite:
            raise LayoutError(f"a layout named “{name}” exists; pick another name or overwrite it")
        if name in self.layouts:
            self._push(name)
        self.layouts[name] = [dict(r) for r in rows]
        self.active = name
        self.revision += 1
        return name

    def delete_layout(self, name: str) -> None:
        if name == BASE_LAYOUT:
            raise LayoutError(f"“{BASE_LAYOUT}” is the scenario's own layout; it cannot be removed")
        self.layouts.pop(name, None)
        self.undo_stack.pop(name, None)
        self.redo_stack.pop(name, None)
        if self.active == name:
            self.active = BASE_LAYOUT
        self.revision += 1

    def set_rows(self, rows: list[GatewayRow], what: str = "edited the table") -> str:
        """Replace the active layout's gateways (one undo step); returns what happened,
        naming the new layout when the scenario's own was edited."""
        if rows == self.rows:
            return ""
        forked = ""
        if self.active == BASE_LAYOUT:
            name = self.add(self.fresh_name(), self.rows)
            forked = f"; “{BASE_LAYOUT}” stays as the scenario has it, the edit started “{name}”"
        self._push(self.active)
        self.redo_stack[self.active] = []
        self.layouts[self.active] = [dict(r) for r in rows]
        self.revision += 1
        return what + forked

    def edit(
        self,
        op: str,
        *,
        gateway: str | None = None,
        xy: tuple[float, float] | None = None,
        default_z: float = 3.0,
    ) -> str:
        rows, message = apply_edit(self.rows, op, gateway=gateway, xy=xy, default_z=default_z)
        return self.set_rows(rows, message)

    def can_undo(self) -> bool:
        return bool(self.undo_stack.get(self.active))

    def can_redo(self) -> bool:
        return bool(self.redo_stack.get(self.active))

    def undo(self) -> str:
        if not self.can_undo():
            return "nothing to undo"
        self.redo_stack.setdefault(self.active, []).append(self.rows)
        self.layouts[self.active] = self.undo_stack[self.active].pop()
        self.revision += 1
        return f"undid the last edit of “{self.active}”"

    def redo(self) -> str:
        if not self.can_redo():
            return "nothing to redo"
        self._push(self.active)
        self.layouts[self.active] = self.redo_stack[self.active].pop()
        self.revision += 1
        return f"redid the edit of “{self.active}”"

    def reset(self) -> str:
        """The active layout back to the scenario's gateways (itself one undo step)."""
        if self.active == BASE_LAYOUT or self.rows == self.base:
            return f"“{self.active}” already has the scenario's gateways"
        self._push(self.active)
        self.redo_stack[self.active] = []
        self.layouts[self.active] = [dict(r) for r in self.base]
        self.revision += 1
        return f"reset “{self.active}” to the scenario's {len(self.base)} gateways"

    def _push(self, name: str) -> None:
        stack = self.undo_stack.setdefault(name, [])
        stack.append([dict(r) for r in self.layouts[name]])
        del stack[:-UNDO_DEPTH]

    # -- the workspace file ------------------------------------------------------------

    def to_json(self) -> str:
        """The planner's own layouts (not the scenario's, which the scenario file holds)."""
        own = {k: v for k, v in self.layouts.items() if k != BASE_LAYOUT}
        return json.dumps({"version": 1, "active": self.active, "layouts": own}, indent=1)

    @classmethod
    def from_json(
        cls, text: str, base: list[GatewayRow], source: str = "layouts file"
    ) -> LayoutBook:
        """A book saved by :meth:`to_json`; a bad file raises LayoutError naming the field."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise LayoutError(f"{source}: not JSON ({exc.msg}, line {exc.lineno})") from None
        if not isinstance(data, dict) or not isinstance(data.get("layouts"), dict):
            raise LayoutError(f"{source}: layouts: expected an object of named layouts")
        layouts: dict[str, list[GatewayRow]] = {}
        for name, rows in data["layouts"].items():
            if name == BASE_LAYOUT or not isinstance(rows, list) or not rows:
                raise LayoutError(
                    f"{source}: layouts.{name}: expected a non-empty list of gateways"
                )
            clean = []
            for i, r in enumerate(rows):
                try:
                    clean.append(
                        {
                            "id": str(r["id"]),
                            "x": float(r["x"]),
                            "y": float(r["y"]),
                            "z": float(r["z"]),
                        }
                    )
                except (KeyError, TypeError, ValueError):
                    raise LayoutError(
                        f"{source}: layouts.{name}[{i}]: needs id, x, y and z numbers"
                    ) from None
            layouts[name] = clean
        active = data.get("active")
        active = active if isinstance(active, str) else BASE_LAYOUT
        return cls(base=base, layouts=layouts, active=active)


# -- the workspace -----------------------------------------------------------------------

WORKSPACE_ENV = "TAGTWIN_WORKSPACE"


def workspace_root(default: Path) -> Path:
    """The directory the app reads and writes: $TAGTWIN_WORKSPACE, else ``default``."""
    return Path(os.environ.get(WORKSPACE_ENV) or default).resolve()


def workspace_path(root: Path, name: str, suffix: str | None = None) -> Path:
    """``name`` as a path inside ``root``, or LayoutError saying why not.

    Relative paths only, no ``..`` part, and the resolved path (symlinks followed) must
    stay inside the workspace: a planner's text box can never reach the rest of the disk.
    """
    text = name.strip()
    if not text:
        raise LayoutError("file name is empty")
    rel = Path(text)
    if rel.is_absolute() or text.startswith("~"):
        raise LayoutError(f"{text}: give a path inside the workspace, not an absolute one")
    if ".." in rel.parts:
        raise LayoutError(f"{text}: '..' is not allowed; the file must stay inside the workspace")
    if suffix and rel.suffix != suffix:
        raise LayoutError(f"{text}: the file name must end in {suffix}")
    root = root.resolve()
    path = (root / rel).resolve()
    if not path.is_relative_to(root):
        raise LayoutError(f"{text}: resolves outside the workspace (a link?)")
    return path


def layouts_file(root: Path, scenario_name: str) -> Path:
    """Where a scenario's layouts are kept: layouts/<scenario name>.json in the workspace."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", scenario_name).strip("-.") or "scenario"
    return workspace_path(root, f"layouts/{slug}.json")
