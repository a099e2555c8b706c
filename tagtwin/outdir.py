"""Output directories a run owns: each run lists what it wrote in a manifest, and the
next run into the same directory removes exactly those files first, nothing else. So a
``--no-plot`` run never leaves the previous run's floorplan.png behind, and a user's own
files in the directory are never touched."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

MANIFEST = "tagtwin-manifest.json"


def clear_previous(out_dir: Path) -> list[Path]:
    """Delete the files the previous TagTwin run listed in ``out_dir``'s manifest; returns them.
    Only plain names directly inside ``out_dir`` are honoured (a manifest cannot point elsewhere)."""
    manifest = out_dir / MANIFEST
    try:
        listed = json.loads(manifest.read_text()).get("files", [])
    except (OSError, ValueError, AttributeError):
        return []
    removed = []
    for name in listed if isinstance(listed, list) else []:
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            continue
        path = out_dir / name
        if path.is_file() and not path.is_symlink():
            path.unlink()
            removed.append(path)
    manifest.unlink(missing_ok=True)
    return removed


def write_manifest(out_dir: Path, written: Iterable[Path], tool_version: str) -> Path:
    names = sorted({p.name for p in written if p.parent.resolve() == out_dir.resolve()})
    path = out_dir / MANIFEST
    path.write_text(json.dumps({"tool": "tagtwin", "version": tool_version, "files": names}, indent=2) + "\n")
    return path
