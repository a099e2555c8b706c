"""Every estimator and tracker on the Kolakowski 2021 test track, scored against its LiDAR
ground truth; fingerprints and radio map from the dataset's calibration walk.

Prints one JSON object: a row per method (median, p90, p95, RMSE, r90 coverage) and
which tracker is best. Run: ``.venv/bin/python benchmarks/kolakowski.py``.
Source: Kolakowski, Sensors 21(18):6270, 2021, CC BY 4.0 (tests/data/kolakowski).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import shapely

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.datasets import load_kolakowski  # noqa: E402
from engine.evaluate import score_track_methods  # noqa: E402


def main() -> None:
    folder = ROOT / "tests" / "data" / "kolakowski"
    if len(sys.argv) > 1:
        folder = Path(sys.argv[1])
    data = load_kolakowski(folder)
    cal, test = data.calibration, data.test
    rows = score_track_methods(
        cal.xy, cal.rssi, test.t, test.xy, test.rssi, data.anchor_xyz, shapely.Polygon(data.outline)
    )
    trackers = {k: v for k, v in rows.items() if k.startswith("track:")}
    best = min(trackers, key=lambda k: trackers[k]["median_error_m"])
    out = {
        "dataset": "kolakowski-flat-2021 test_robot_df (719 rows)",
        "methods": rows,
        "best_tracker": best,
        "best_median_m": rows[best]["median_error_m"],
        "best_p90_m": rows[best]["p90_error_m"],
        "targets": {"median_max_m": 0.80, "p90_max_m": 1.8, "readme_knn_median_m": 1.10},
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
