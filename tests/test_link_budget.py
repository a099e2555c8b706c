"""The skeleton's link budget: log-distance, shadowing field, packet effects."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from radio_models.environment import Grid, PacketEffects, RadioEnvironment
from radio_models.geometry import Obstacles
from radio_models.pathloss import LogDistance
from radio_models.shadowing import correlated_gaussian_field


def test_log_distance_known_values() -> None:
    model = LogDistance(exponent=2.2)
    # 10 n log10(d): 0 dB at 1 m, 22 dB at 10 m, 44 dB at 100 m.
    np.testing.assert_allclose(model.excess_loss_db(np.array([1.0, 10.0, 100.0])), [0.0, 22.0, 44.0])


@settings(max_examples=200, deadline=None)
@given(st.floats(0.5, 5.0), st.floats(0.1, 500.0), st.floats(1.0001, 10.0))
def test_path_loss_never_decreases_with_distance(n: float, d: float, factor: float) -> None:
    model = LogDistance(exponent=n)
    assert model.excess_loss_db(np.array([d * factor]))[0] >= model.excess_loss_db(np.array([d]))[0]


def test_shadowing_field_has_its_sigma_and_correlation() -> None:
    rng = np.random.default_rng(1)
    cell, d_corr, sigma = 0.5, 5.0, 4.0
    fields = np.stack([correlated_gaussian_field((80, 80), cell, sigma, d_corr, rng) for _ in range(40)])
    assert abs(fields.std() - sigma) < 0.3
    for lag_cells in (2, 6, 10):
        a, b = fields[:, :, :-lag_cells].ravel(), fields[:, :, lag_cells:].ravel()
        rho = np.corrcoef(a, b)[0, 1]
        assert abs(rho - np.exp(-lag_cells * cell / d_corr)) < 0.08


def test_rayleigh_fading_has_the_textbook_mean_in_db() -> None:
    # E[10 log10(X)] for X ~ Exp(1) is -10 gamma / ln 10 = -2.507 dB; its std is 5.57 dB.
    fade = PacketEffects("rayleigh").fading_db((200_000,), np.random.default_rng(2))
    assert abs(fade.mean() + 2.507) < 0.05
    assert abs(fade.std() - 5.57) < 0.05


def _environment(obstacles: Obstacles) -> RadioEnvironment:
    return RadioEnvironment(
        gateway_xyz=np.array([[0.0, 0.0, 3.0], [20.0, 0.0, 3.0]]),
        model=LogDistance(2.0),
        obstacles=obstacles,
        grid=Grid.covering((-1, -5, 21, 5), 0.5),
        shadowing_sigma_db=0.0,
        decorrelation_m=5.0,
        effects=PacketEffects("none"),
        rng=np.random.default_rng(0),
    )


def test_a_wall_lowers_mean_rssi_beyond_it_only() -> None:
    import shapely

    free = _environment(Obstacles())
    walled = _environment(Obstacles((shapely.LineString([(10, -5), (10, 5)]),), (6.0,)))
    tags = np.array([[5.0, 0.2, 1.0], [15.0, 0.2, 1.0]])
    diff = free.mean_rssi(tags, np.array([-59.0, -59.0])) - walled.mean_rssi(tags, np.array([-59.0, -59.0]))
    np.testing.assert_allclose(diff, [[0.0, 6.0], [6.0, 0.0]])


def test_packets_are_quantized_to_whole_dbm() -> None:
    env = _environment(Obstacles())
    rssi = env.packet_rssi(np.array([[-70.3], [-80.7]]), np.array([37, 39]), np.random.default_rng(0))
    np.testing.assert_array_equal(rssi, np.round(rssi))
