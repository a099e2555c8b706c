"""The BLE air interface against published numbers: packet air time, pure-ALOHA survival
(reference table, docs/references.md section 2) reproduced by the twin, and the scanner's
catch rate scanWindow / scanInterval."""

from __future__ import annotations

import numpy as np
import pytest

from radio_models.airinterface import (
    aloha_survival,
    first_per_bucket,
    interference_mw,
    listened_packets,
    packet_air_time_s,
    scanner_listening,
    survives,
    wifi_overlaps,
)
from twin.scenario import Scenario
from twin.sim import WarehouseTwin

# docs/references.md section 2: tau = 376 us, survival (1 - 2 tau / T)^(N-1)
ALOHA_TABLE = {
    (50, 0.105): 0.70,
    (50, 0.505): 0.93,
    (50, 1.005): 0.96,
    (50, 2.005): 0.98,
    (200, 0.105): 0.24,
    (200, 0.505): 0.74,
    (200, 1.005): 0.86,
    (200, 2.005): 0.93,
    (500, 0.105): 0.03,
    (500, 0.505): 0.48,
    (500, 1.005): 0.69,
    (500, 2.005): 0.83,
    (1000, 0.105): 0.001,
    (1000, 0.505): 0.23,
    (1000, 1.005): 0.47,
    (1000, 2.005): 0.69,
}


def test_air_time_by_phy():
    # 1M: (1 + 4 + 2 + 37 + 3) bytes * 8 us = 376 us; 6-byte payload: 128 us
    assert packet_air_time_s(37, "1M") == pytest.approx(376e-6)
    assert packet_air_time_s(6, "1M") == pytest.approx(128e-6)
    # 2M: (2 + 4 + 2 + 37 + 3) * 8 / 2 = 192 us
    assert packet_air_time_s(37, "2M") == pytest.approx(192e-6)
    # Coded S=8: 80 + 256 + 16 + 24 us, then (2 + 37 + 3) * 8 + 3 = 339 bits * 8 us = 2712 us
    assert packet_air_time_s(37, "coded-s8") == pytest.approx(3088e-6)
    assert packet_air_time_s(37, "coded-s2") == pytest.approx(376e-6 + 339 * 2e-6)
    with pytest.raises(ValueError, match="phy"):
        packet_air_time_s(37, "3M")


@pytest.mark.parametrize(("case", "expected"), sorted(ALOHA_TABLE.items()))
def test_aloha_formula_reproduces_reference_table(case, expected):
    n, period = case
    assert aloha_survival(n, 376e-6, period) == pytest.approx(expected, abs=0.006)


def test_wifi_channel_overlap():
    assert wifi_overlaps(37, 1)
    assert not wifi_overlaps(38, 1)
    assert not wifi_overlaps(39, 1)
    assert wifi_overlaps(38, 6)
    assert not wifi_overlaps(37, 6)
    assert not any(wifi_overlaps(c, 11) for c in (37, 38, 39))
    assert wifi_overlaps(39, 13)


def test_interference_sums_only_overlapping_same_group_same_channel():
    group = np.array([0, 0, 0, 0, 1, 1])
    t = np.array([0.0, 0.0002, 0.0005, 0.0020, 0.0, 0.0001])
    p = np.array([-60.0, -70.0, -80.0, -60.0, -50.0, -50.0])
    air = np.full(6, 376e-6)
    mw = interference_mw(group, t, p, air)
    lin = 10 ** (p / 10)
    np.testing.assert_allclose(mw, [lin[1], lin[0] + lin[2], lin[1], 0, lin[5], lin[4]])
    # Different channels never collide.
    np.testing.assert_allclose(
        interference_mw(group, t, p, air, np.array([0, 1, 0, 0, 0, 0]))[:3], [0, 0, 0]
    )
    ok = survives(p, mw, capture_db=8.0)
    np.testing.assert_array_equal(ok, [True, False, False, True, False, False])
    np.testing.assert_array_equal(survives(p, mw, None), [False, False, False, True, False, False])


@pytest.mark.parametrize("min_interval", [0.03, 0.005])  # 0.005 s: the exact fallback path
def test_listened_packets_agrees_with_per_channel_rule(min_interval):
    rng = np.random.default_rng(1)
    n_gw = 7
    interval = rng.uniform(min_interval, 0.3, n_gw)
    window = interval * rng.uniform(0.1, 1.0, n_gw)
    phase = rng.uniform(0, interval)
    cycle0 = rng.integers(0, 3, n_gw)
    t = np.sort(rng.uniform(0, 2.0, 20_000))
    gw = rng.integers(0, n_gw, len(t))
    spacing = 0.004
    idx, ks = listened_packets(
        t, gw, phase, window, interval, cycle0=cycle0, spacing_s=spacing, switch_gap_s=0.001
    )
    want = set()
    for k in range(3):
        hit = scanner_listening(
            t + k * spacing,
            (k - cycle0[gw]) % 3,
            phase[gw],
            window[gw],
            interval[gw],
            switch_gap_s=0.001,
        )
        want |= {(int(i), k) for i in np.flatnonzero(hit)}
    assert set(zip(idx.tolist(), ks.tolist(), strict=True)) == want
    assert np.all(np.diff(idx) >= 0)


def test_first_per_bucket_keeps_order_and_limit():
    bucket = np.array([0, 1, 0, 0, 1, 2])
    keep = first_per_bucket(bucket, np.array([2, 5, 0]))
    np.testing.assert_array_equal(keep, [True, True, True, False, True, False])


def room_scenario(n_tags: int, adv_ms: float, duration_s: float, **radio) -> Scenario:
    """One gateway in the middle of a 6 x 6 m room, every tag in range, no fading: what
    the textbook formulas assume."""
    air = radio.pop("air", {})
    gw_defaults = radio.pop("gateway", {})
    return Scenario.model_validate(
        {
            "name": "room",
            "duration_s": duration_s,
            "seed": 11,
            "tick_s": 2.0,
            "site": {"outline": [[0, 0], [6, 0], [6, 6], [0, 6]], "tag_height_m": 1.0},
            "gateways": {
                "defaults": {"z_m": 2.0, "sensitivity_dbm": -100, **gw_defaults},
                "list": [{"id": "g1", "x": 3.0, "y": 3.0}],
            },
            "tags": [{"name": "t", "count": n_tags, "adv_interval_ms": adv_ms}],
            "radio": {
                "fading": "none",
                "shadowing_sigma_db": 0.0,
                "air": {"capture": False, **air},
                **radio,
            },
        }
    )


def twin_survival(n: int, period_s: float, packets: int = 12_000) -> float:
    adv_ms = (period_s - 0.005) * 1000  # T = advInterval + mean advDelay (5 ms)
    duration = max(packets * period_s / n, 20 * period_s)
    off = WarehouseTwin(room_scenario(n, adv_ms, duration, air={"collisions": False})).run().stats
    on = WarehouseTwin(room_scenario(n, adv_ms, duration, air={"collisions": True})).run().stats
    assert off["below_sensitivity"] == 0
    return on["sightings"] / off["sightings"]


FAST_CASES = [(50, 0.105), (200, 0.505), (500, 1.005), (1000, 2.005)]


@pytest.mark.parametrize("case", FAST_CASES)
def test_twin_collisions_match_pure_aloha(case):
    n, period = case
    assert twin_survival(n, period) == pytest.approx(aloha_survival(n, 376e-6, period), abs=0.02)


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(set(ALOHA_TABLE) - set(FAST_CASES)))
def test_twin_collisions_match_pure_aloha_whole_table(case):
    n, period = case
    assert twin_survival(n, period, packets=30_000) == pytest.approx(
        aloha_survival(n, 376e-6, period), abs=0.02
    )


@pytest.mark.parametrize(
    ("window_ms", "interval_ms", "gap_ms"),
    [(30, 100, 0), (50, 100, 0), (100, 100, 0), (10, 60, 0), (60, 100, 10)],
)
def test_scan_duty_cycle_catch_rate(window_ms, interval_ms, gap_ms):
    sc = room_scenario(
        100,
        200,
        300.0,
        air={"collisions": False},
        gateway={
            "scan_window_ms": window_ms,
            "scan_interval_ms": interval_ms,
            "channel_switch_ms": gap_ms,
        },
    )
    result = WarehouseTwin(sc).run()
    events = result.stats["advertising_events"]
    heard = len(np.unique(result.sightings[["device", "seq"]]))
    assert heard / events == pytest.approx((window_ms - gap_ms) / interval_ms, abs=0.02)


def test_capture_lets_the_strong_packet_through():
    # Capture on: when two packets collide the stronger one may decode, so survival rises
    # above pure ALOHA; with a 0 dB threshold about half the colliding packets survive.
    off = (
        WarehouseTwin(room_scenario(200, 500, 60.0, air={"collisions": False}))
        .run()
        .stats["sightings"]
    )
    rates = [
        WarehouseTwin(room_scenario(200, 500, 60.0, air={"collisions": True, **c}))
        .run()
        .stats["sightings"]
        / off
        for c in (
            {},
            {"capture": True, "capture_db": 20.0},
            {"capture": True, "capture_db": 6.0},
            {"capture": True, "capture_db": 0.0},
        )
    ]
    aloha = aloha_survival(200, 376e-6, 0.505)
    assert rates[0] == pytest.approx(aloha, abs=0.02)
    assert rates[0] <= rates[1] <= rates[2] <= rates[3]
    assert rates[3] > aloha + 0.08


def test_wifi_hits_only_overlapping_channels():
    wifi = [{"x": 3.0, "y": 3.5, "channel": 1, "power_1m_dbm": -20.0, "duty_cycle": 0.5}]
    sc = room_scenario(50, 200, 60.0, air={"collisions": False, "wifi": wifi})
    result = WarehouseTwin(sc).run()
    per_ch = {c: int(np.sum(result.sightings["channel"] == c)) for c in (37, 38, 39)}
    clean = WarehouseTwin(room_scenario(50, 200, 60.0, air={"collisions": False})).run()
    clean_ch = {c: int(np.sum(clean.sightings["channel"] == c)) for c in (37, 38, 39)}
    assert per_ch[38] == clean_ch[38]
    assert per_ch[39] == clean_ch[39]
    assert per_ch[37] / clean_ch[37] == pytest.approx(0.5, abs=0.05)  # duty cycle 0.5
    assert result.stats["lost_to_wifi"] == clean_ch[37] - per_ch[37]


def test_report_limit_caps_each_gateway():
    sc = room_scenario(
        200, 100, 20.0, air={"collisions": False}, gateway={"max_reports_per_s": 150.0}
    )
    result = WarehouseTwin(sc).run()
    assert len(result.sightings) <= 150 * 20 + 1
    assert len(result.sightings) >= 150 * 20 * 0.95
    assert result.stats["dropped_by_report_limit"] > 0
