"""Calibration: recover known parameters from synthetic sightings, and fit the public
Kolakowski 2021 dataset (the copy in tests/data/kolakowski, CC BY 4.0)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.datasets import fit_kolakowski
from radio_models.calibration import fit_log_distance
from radio_models.environment import Grid, PacketEffects, RadioEnvironment
from radio_models.geometry import Obstacles
from radio_models.pathloss import LogDistance

KOLAKOWSKI = Path(__file__).resolve().parent / "data" / "kolakowski"


GW = np.array(
    [[2.0, 2.0, 2.5], [28.0, 3.0, 2.5], [15.0, 18.0, 2.5], [3.0, 17.0, 2.5], [27.0, 18.0, 2.5]]
)
BIAS = np.array([-2.0, 1.5, 0.0, 3.0, -2.5])


def synthetic(seed: int, n_pts: int, floor_dbm: float = -110.0):
    """Sightings from the twin's own environment: n = 2.4, P0 = -60 dBm, Gudmundson
    shadowing 4 dB with d_corr 3 m, 2 dB white noise, per-gateway biases."""
    rng = np.random.default_rng(seed)
    env = RadioEnvironment(
        GW,
        LogDistance(2.4),
        Obstacles(),
        Grid.covering((0, 0, 30, 20), 0.5),
        4.0,
        3.0,
        PacketEffects(),
        rng,
        gateway_bias_db=BIAS,
    )
    pts = np.column_stack([rng.uniform(0, 30, n_pts), rng.uniform(0, 20, n_pts), np.ones(n_pts)])
    rssi = env.mean_rssi(pts, np.full(n_pts, -60.0)) + rng.normal(0, 2.0, (n_pts, 5))
    rssi[rssi < floor_dbm] = np.nan  # unheard
    return pts, rssi


def test_fit_recovers_synthetic_truth_within_its_uncertainty():
    pts, rssi = synthetic(4, 3000)
    cal = fit_log_distance(pts, GW, rssi, decorrelation_m=3.0, n_boot=60)
    assert cal.method == "parametric-bootstrap"
    assert abs(cal.exponent - 2.4) < 3 * cal.exponent_se
    assert abs(cal.p0_dbm + 60.0) < 3 * cal.p0_se
    np.testing.assert_array_less(
        np.abs(cal.gateway_offset_db - BIAS), 3 * cal.gateway_offset_se + 0.2
    )
    assert cal.sigma_db == pytest.approx(np.hypot(4.0, 2.0), rel=0.15)
    assert cal.gateway_offset_db.sum() == pytest.approx(0.0, abs=1e-9)
    assert 0.5 < cal.correlated_fraction < 0.95  # true share 16 / 20 = 0.8
    # Known limitation, documented: when weak links go unheard (censoring near
    # sensitivity), the fit only sees the lucky ones and underestimates n.
    censored = np.where(rssi < -85, np.nan, rssi)
    assert fit_log_distance(pts, GW, censored, cluster_m=3.0).exponent < cal.exponent - 0.2


def test_bootstrap_uncertainty_is_calibrated_and_naive_is_not():
    """Across independent sites, (n_hat - n) / se should have unit spread. The bootstrap
    gets close; independent-sample errors are several times too small."""
    z_boot, z_naive = [], []
    for seed in range(8):
        pts, rssi = synthetic(100 + seed, 1000)
        boot = fit_log_distance(pts, GW, rssi, decorrelation_m=3.0, n_boot=40, seed=seed)
        naive = fit_log_distance(pts, GW, rssi, cluster_m=0)
        z_boot.append((boot.exponent - 2.4) / boot.exponent_se)
        z_naive.append((naive.exponent - 2.4) / naive.exponent_se)
    assert 0.5 < np.std(z_boot) < 1.8
    assert np.std(z_naive) > 3.0


def test_fit_rejects_bad_shapes_and_too_few_samples():
    with pytest.raises(ValueError, match="rssi must be"):
        fit_log_distance(np.zeros((3, 3)), np.zeros((2, 3)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="finite RSSI samples"):
        fit_log_distance(np.ones((2, 3)), np.zeros((2, 3)), np.full((2, 2), np.nan))


def test_kolakowski_fit_is_plausible_and_uncertain():
    cal = fit_kolakowski(KOLAKOWSKI, n_boot=50)
    assert cal.n_samples > 20_000
    # A furnished flat: exponent between free space and an obstructed office (Rappaport
    # table), shadowing sigma in the published 4-10 dB range.
    assert 1.6 < cal.exponent < 3.5
    assert 4.0 < cal.sigma_db < 10.0
    assert -70 < cal.p0_dbm < -30
    assert 0.05 < cal.exponent_se < 0.6  # correlated residuals: not the naive 0.03
    np.testing.assert_array_less(np.abs(cal.gateway_offset_db), 6.0)
    # Fit on the calibration walk predicts the separate test track no worse than sigma + 1 dB.
    from engine.datasets import load_kolakowski

    test = load_kolakowski(KOLAKOWSKI).test
    data = load_kolakowski(KOLAKOWSKI)
    from radio_models.pathloss import three_d_distance

    xyz = np.column_stack([test.xy, np.full(len(test.xy), 0.3)])
    pred = (
        cal.p0_dbm
        + cal.gateway_offset_db
        - 10 * cal.exponent * np.log10(three_d_distance(xyz, data.anchor_xyz))
    )
    err = test.rssi - pred
    assert np.sqrt(np.nanmean(err**2)) < cal.sigma_db + 1.0
