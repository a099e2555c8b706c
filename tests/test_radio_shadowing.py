"""Shadowing field statistics (Gudmundson 1991), residual sigma, LoS state, CRB."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from radio_models.crb import crlb_map, crlb_rmse, crlb_rmse_slopes
from radio_models.environment import Grid, PacketEffects, RadioEnvironment
from radio_models.geometry import Obstacles
from radio_models.pathloss import LogDistance, Tr38901
from radio_models.shadowing import correlated_gaussian_field

# Tolerance on the empirical correlation: 40 fields of 200 x 200 cells at 0.5 m with
# d_corr = 5 m hold about 40 * (100 / 5)^2 = 16,000 independent patches, so the standard
# error of the lag correlation is near 0.01; 0.04 is four of those.
CORR_TOL = 0.04


def test_field_correlation_follows_exponential():
    rng = np.random.default_rng(5)
    cell, d_corr, sigma = 0.5, 5.0, 6.0
    lags = np.array([1, 2, 4, 8, 16, 30])  # cells: 0.5 m to 15 m
    acc = np.zeros(len(lags))
    var = 0.0
    n = 40
    for _ in range(n):
        f = correlated_gaussian_field((200, 200), cell, sigma, d_corr, rng)
        f = f - f.mean()
        var += np.mean(f * f) / n
        for i, lag in enumerate(lags):
            acc[i] += (
                0.5 * (np.mean(f[:, lag:] * f[:, :-lag]) + np.mean(f[lag:, :] * f[:-lag, :])) / n
            )
    rho = acc / var
    np.testing.assert_allclose(rho, np.exp(-lags * cell / d_corr), atol=CORR_TOL)
    assert np.sqrt(var) == pytest.approx(sigma, rel=0.05)


def test_rssi_residuals_match_sigma():
    """Mean RSSI minus the family's prediction is the static shadowing: its sample sigma
    is the configured one; adding Rayleigh fading adds its 5.57 dB spread (Rappaport)."""
    rng = np.random.default_rng(9)
    gw = np.array([[10.0, 10.0, 3.0], [50.0, 30.0, 3.0], [80.0, 60.0, 3.0]])
    env = RadioEnvironment(
        gw,
        LogDistance(2.2),
        Obstacles(),
        Grid.covering((0, 0, 100, 80), 1.0),
        5.0,
        4.0,
        PacketEffects(fading="rayleigh"),
        rng,
    )
    tags = np.column_stack(
        [rng.uniform(0, 100, 20_000), rng.uniform(0, 80, 20_000), np.ones(20_000)]
    )
    from radio_models.pathloss import three_d_distance

    pred = -59.0 - LogDistance(2.2).excess_loss_db(three_d_distance(tags, gw))
    resid = env.mean_rssi(tags, np.full(len(tags), -59.0)) - pred
    assert resid.std() == pytest.approx(5.0, rel=0.08)
    pkt = env.packet_rssi(
        env.mean_rssi(tags, np.full(len(tags), -59.0)), np.full(len(tags), 37), rng
    )
    fade = pkt - env.mean_rssi(tags, np.full(len(tags), -59.0))
    # 10 log10 of an Exp(1) variable: sd = 10 / ln 10 * pi / sqrt(6) = 5.57 dB; rounding adds 1/12.
    assert fade.std() == pytest.approx(np.sqrt(5.57**2 + 1 / 12), rel=0.03)
    assert fade.mean() == pytest.approx(-2.51, abs=0.1)  # Euler-Mascheroni: -10 gamma / ln 10


def test_mixed_los_state_follows_probability():
    rng = np.random.default_rng(2)
    gw = np.column_stack([rng.uniform(10, 50, 40), rng.uniform(10, 50, 40), np.ones(40)])
    model = Tr38901(scenario="inf-dl", condition="mixed")
    env = RadioEnvironment(
        gw, model, Obstacles(), Grid.covering((0, 0, 60, 60), 1.0), 0.0, 0.5, PacketEffects(), rng
    )
    d = np.hypot(*(env.grid.centres()[:, None, :] - gw[None, :, :2]).transpose(2, 0, 1))
    for lo, hi in ((0, 2), (2, 4), (4, 8)):
        band = (d >= lo) & (d < hi)
        los = 1 - env.nlos[band].mean()
        assert los == pytest.approx(model.los_probability(d[band]).mean(), abs=0.04)
    assert env.nlos[d > 30].mean() > 0.99
    # NLoS links lose the TR 38.901 NLoS-minus-LoS loss, nothing else changes.
    cells = env.grid.centres()
    xyz = np.column_stack([cells, np.ones(len(cells))])
    from radio_models.pathloss import three_d_distance

    expected = -59.0 - model.excess_loss_db(three_d_distance(xyz, gw))
    expected -= np.where(env.nlos, model.nlos_penalty_db(three_d_distance(xyz, gw)), 0.0)
    np.testing.assert_allclose(env.mean_rssi_cells(-59.0), expected, atol=1e-3)


def test_crlb_reference_table():
    """docs/references.md section 3: 60 x 40 m hall, receivers 3 m high on a 10 m grid, tag
    at 1 m: median sqrt(CRLB) 2.9 m (n 2, sigma 4) and 3.9 m (n 2.2, sigma 6)."""
    xs, ys = np.arange(5, 60, 10.0), np.arange(5, 40, 10.0)
    gx, gy = np.meshgrid(xs, ys)
    gw = np.column_stack([gx.ravel(), gy.ravel(), np.full(gx.size, 3.0)])
    px, py = np.meshgrid(np.arange(0.25, 60, 0.5), np.arange(0.25, 40, 0.5))
    pts = np.column_stack([px.ravel(), py.ravel(), np.ones(px.size)])
    assert np.median(crlb_rmse(pts, gw, 2.0, 4.0)) == pytest.approx(2.9, rel=0.05)
    assert np.median(crlb_rmse(pts, gw, 2.2, 6.0)) == pytest.approx(3.9, rel=0.05)
    # Permuting gateways changes nothing.
    perm = np.random.default_rng(0).permutation(len(gw))
    np.testing.assert_allclose(
        crlb_rmse(pts[:500], gw[perm], 2.0, 4.0), crlb_rmse(pts[:500], gw, 2.0, 4.0)
    )


def test_crlb_map_sees_walls_through_the_model():
    gw = np.array([[5.0, 5.0, 3.0], [25.0, 5.0, 3.0], [5.0, 15.0, 3.0], [25.0, 15.0, 3.0]])
    import shapely

    def env(obstacles: Obstacles) -> RadioEnvironment:
        return RadioEnvironment(
            gw,
            LogDistance(2.0),
            obstacles,
            Grid.covering((0, 0, 30, 20), 1.0),
            0.0,
            5.0,
            PacketEffects(),
            np.random.default_rng(1),
        )

    open_map = crlb_map(env(Obstacles()), -59.0, -90.0, sigma_db=4.0)
    wall = Obstacles((shapely.LineString([(15, -1), (15, 21)]),), (30.0,))
    walled = crlb_map(env(wall), -59.0, -90.0, sigma_db=4.0)
    assert open_map.shape == (20, 30)
    assert np.all(np.isfinite(open_map))
    # A 30 dB wall hides half the gateways from each side: the bound can only get worse.
    assert np.all(walled >= open_map - 1e-9)
    assert np.median(walled) > np.median(open_map)
    # For log-distance the general form equals Patwari's closed form.
    pts = np.column_stack([env(Obstacles()).grid.centres(), np.ones(600)])
    np.testing.assert_allclose(
        open_map.ravel(), crlb_rmse_slopes(pts, gw, np.full((600, 4), 20.0), 4.0)
    )


@pytest.mark.parametrize("fading", ["rayleigh", "rician"])
def test_fast_fading_distribution(fading):
    """Rayleigh: power gain Exp(1); Rician with K: |LoS + scatter|^2, unit mean, ncx2
    (Rappaport ch. 5). Kolmogorov distance to the exact CDF below 0.005."""
    from scipy.stats import ncx2

    fx = PacketEffects(fading=fading, rician_k_db=6.0)
    draws = fx.fading_db((200_000,), np.random.default_rng(8), np.float32)
    gain = np.sort(10 ** (draws.astype(float) / 10))
    ecdf = (np.arange(len(gain)) + 0.5) / len(gain)
    if fading == "rayleigh":
        exact = 1 - np.exp(-gain)
    else:
        k = 10**0.6
        exact = ncx2.cdf(gain * 2 * (k + 1), 2, 2 * k)
    assert np.max(np.abs(ecdf - exact)) < 0.005
    assert gain.mean() == pytest.approx(1.0, abs=0.01)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sigma=st.floats(0.5, 8.0),
    coherence=st.floats(0.3, 30.0),
    lag=st.floats(0.05, 40.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_temporal_variation_has_its_variance_and_exponential_time_correlation(sigma, coherence, lag, seed):
    """Each link is stationary with variance sigma^2 and correlation exp(-lag / coherence)
    between two of its packets, whether they come in one call or two (4,000 tags x 3
    gateways: the correlation's standard error is about (1 - rho^2) / 110 < 0.01)."""
    from radio_models.shadowing import TemporalVariation

    rng = np.random.default_rng(seed)
    tags = 4000
    process = TemporalVariation(sigma, coherence, 3, rng)
    ids = np.arange(tags)
    start = rng.uniform(0, 5, tags)
    # Half the tags get both packets in one call (interleaved in time), half in two calls.
    both = ids < tags // 2
    ev_tag = np.r_[ids[both], ids[both]]
    ev_t = np.r_[start[both], start[both] + lag]
    order = np.argsort(ev_t, kind="stable")
    out = np.empty((3, len(ev_t)))
    out[:, order] = process.offsets(ev_tag[order], ev_t[order])
    a1, b1 = out[:, : both.sum()], out[:, both.sum():]
    a2 = process.offsets(ids[~both], start[~both])
    b2 = process.offsets(ids[~both], start[~both] + lag)
    a, b = np.hstack([a1, a2]).ravel(), np.hstack([b1, b2]).ravel()
    rho = float(np.exp(-lag / coherence))
    assert np.std(a) == pytest.approx(sigma, rel=0.08)
    assert np.std(b) == pytest.approx(sigma, rel=0.08)
    assert np.corrcoef(a, b)[0, 1] == pytest.approx(rho, abs=0.06)


def test_temporal_variation_rejects_bad_parameters():
    from radio_models.shadowing import TemporalVariation

    with pytest.raises(ValueError, match="coherence"):
        TemporalVariation(2.0, 0.0, 3, np.random.default_rng(0))
