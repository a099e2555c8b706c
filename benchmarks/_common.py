"""Helpers shared by the benchmark scripts: peak memory and JSON output."""

from __future__ import annotations

import json
import platform
import resource
import sys
from typing import Any


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def emit(name: str, figures: dict[str, Any]) -> None:
    """Print one JSON object: the benchmark's name, its figures and the machine."""
    out = {"benchmark": name, **figures, "python": platform.python_version(), "machine": platform.machine()}
    json.dump(out, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")
