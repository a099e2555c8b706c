"""Wall time of `tagtwin simulate` on the demo scenario, and its position error stats.

    python benchmarks/bench_demo.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    walls = []
    report: dict[str, object] = {}
    perf: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeat):
            start = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "tagtwin", "simulate", str(REPO / "scenarios" / "demo.toml"),
                 "--out", tmp, "--quiet"],
                check=True, capture_output=True,
            )
            walls.append(time.perf_counter() - start)
            report = json.loads((Path(tmp) / "report.json").read_text())
            perf = json.loads((Path(tmp) / "perf.json").read_text())
    metrics = report["metrics"]
    assert isinstance(metrics, dict)
    emit("demo_simulate", {
        "command": "tagtwin simulate scenarios/demo.toml",
        "simulated_s": report["duration_s"],
        "wall_s_min": round(min(walls), 2),
        "wall_s_all": [round(w, 2) for w in walls],
        "phase_s": {k: perf[k] for k in ("setup_s", "twin_s", "engine_s")},
        "sightings": metrics["sightings"],
        "median_error_m": metrics["median_error_m"],
        "p90_error_m": metrics["p90_error_m"],
        "p95_error_m": metrics["p95_error_m"],
        "zone_accuracy": metrics["zone_accuracy"],
    })


if __name__ == "__main__":
    main()
