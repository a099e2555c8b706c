"""TagTwin and the hand-written baseline (benchmarks/baseline_naive.py) produce the same
packet statistics for the same small scenario."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from baseline_naive import SCENARIO, naive_run

from twin.scenario import Scenario
from twin.sim import WarehouseTwin


def test_naive_and_tagtwin_agree():
    sc = Scenario.model_validate(SCENARIO | {"duration_s": 120.0})
    fast = WarehouseTwin(sc).run().sightings
    slow = np.array(
        [(g, r) for _, g, _, r, _ in naive_run(sc, WarehouseTwin(sc), scanner_first=True)]
    )
    n_gw = int(fast["gateway"].max()) + 1
    cf = np.bincount(fast["gateway"], minlength=n_gw)
    cs = np.bincount(slow[:, 0].astype(int), minlength=n_gw)
    assert len(fast) == pytest.approx(len(slow), rel=0.02)
    np.testing.assert_allclose(cf, cs, rtol=0.06)
    mf = np.bincount(fast["gateway"], weights=fast["rssi"], minlength=n_gw) / cf
    ms = np.bincount(slow[:, 0].astype(int), weights=slow[:, 1], minlength=n_gw) / cs
    # The twin looks walls up at 0.5 m cell centres, the baseline at exact positions.
    np.testing.assert_allclose(mf, ms, atol=0.6)
