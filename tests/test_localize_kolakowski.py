"""Real data: every estimator and tracker on the Kolakowski 2021 test track.

The files are a copy under tests/data/kolakowski (CC BY 4.0); the same figures are
printed by benchmarks/kolakowski.py. The bounds are the issue's: the best tracker at
most 0.80 m median and 1.8 m p90, against the README's kNN baseline of 1.10 m.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import shapely

from engine.datasets import load_kolakowski
from engine.evaluate import score_track_methods

DATA = Path(__file__).resolve().parent / "data" / "kolakowski"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "kolakowski-flat-2021"


@pytest.fixture(scope="module")
def rows() -> dict[str, dict[str, float]]:
    data = load_kolakowski(DATA)
    cal, test = data.calibration, data.test
    return score_track_methods(
        cal.xy, cal.rssi, test.t, test.xy, test.rssi, data.anchor_xyz, shapely.Polygon(data.outline)
    )


def test_knn_reproduces_the_readme_baseline(rows):
    assert rows["knn"]["median_error_m"] == pytest.approx(1.10, abs=0.01)
    assert rows["knn"]["p90_error_m"] == pytest.approx(2.42, abs=0.01)
    assert rows["strongest"]["median_error_m"] == pytest.approx(1.73, abs=0.01)


def test_best_tracker_beats_the_targets(rows):
    trackers = {k: v for k, v in rows.items() if k.startswith("track:")}
    best = min(trackers.values(), key=lambda r: r["median_error_m"])
    assert best["median_error_m"] <= 0.80
    assert best["p90_error_m"] <= 1.8


def test_every_method_reports_a_row(rows):
    assert set(rows) == {
        "strongest",
        "centroid",
        "wls",
        "knn",
        "radio-map",
        "track:kalman",
        "track:hmm",
        "track:particle",
    }
    for row in rows.values():
        assert np.isfinite(row["median_error_m"])
        assert 0.0 <= row["r90_coverage"] <= 1.0


@pytest.mark.skipif(not SHARED.exists(), reason=f"shared dataset not found at {SHARED}")
def test_copy_matches_the_shared_dataset():
    for name in ("anchors.csv", "layout.csv", "test_robot_df.csv", "calibration_df.csv"):
        assert (DATA / name).read_bytes() == (SHARED / name).read_bytes()
