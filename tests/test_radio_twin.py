"""The radio inside the twin: scenario sections, determinism, motion-dependent
advertising, every path-loss family end to end, and the event-time order of sightings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from twin.scenario import ScenarioError, load_scenario, parse_scenario
from twin.sim import WarehouseTwin, path_loss_model

ROOT = Path(__file__).resolve().parents[1]

BASE = """
name = "hall"
duration_s = 60
seed = 3
tick_s = 1.0
[site]
outline = [[0, 0], [30, 0], [30, 20], [0, 20]]
[[site.walls]]
points = [[15, 0], [15, 12]]
material = "brick"
[[site.racks]]
polygon = [[4, 4], [12, 4], [12, 5], [4, 5]]
[[zones]]
name = "a"
role = "storage"
polygon = [[1, 1], [14, 1], [14, 19], [1, 19]]
[[zones]]
name = "b"
role = "shipping"
polygon = [[16, 1], [29, 1], [29, 19], [16, 19]]
[gateways.defaults]
z_m = 3.0
[[gateways.list]]
id = "g1"
x = 5
y = 10
[[gateways.list]]
id = "g2"
x = 25
y = 10
[[gateways.list]]
id = "g3"
x = 15
y = 17
[[tags]]
name = "t"
count = 60
adv_interval_ms = 1000
adv_interval_moving_ms = 100
[[movers]]
name = "p"
count = 3
speed_mps = 1.5
route = ["a", "b"]
items_per_trip = [2, 4]
dwell_s = 4
"""


def scenario(radio: str = ""):
    return parse_scenario(BASE + radio, "test.toml")


def test_shipped_scenarios_still_load_with_log_distance_default():
    for name in ("demo.toml", "large.toml"):
        sc = load_scenario(ROOT / "scenarios" / name)
        assert sc.radio.model.kind == "log-distance"
        assert sc.radio.air.collisions
    assert parse_scenario(BASE, "x").radio.model.kind == "log-distance"


@pytest.mark.parametrize(
    "model",
    [
        'model = { kind = "log-distance", exponent = 2.2 }',
        'model = { kind = "itu-p1238", environment = "industrial", los = false }',
        'model = { kind = "itu-p1238-classic", distance_power_coefficient = 30 }',
        'model = { kind = "3gpp-38.901", scenario = "inf-dh", condition = "mixed" }',
        'model = { kind = "3gpp-38.901", scenario = "inh-office", condition = "nlos" }',
    ],
)
def test_every_family_runs_in_the_twin(model):
    sc = scenario(f"[radio]\n{model}\n")
    result = WarehouseTwin(sc).run()
    s = result.sightings
    assert len(s) > 100
    assert np.all(np.diff(s["t"]) >= 0)  # event-time order
    assert set(np.unique(s["channel"])) <= {37, 38, 39}
    assert np.all(s["rssi"] == np.round(s["rssi"]))  # integer dBm
    assert np.all(s["rssi"] >= -95)
    assert path_loss_model(sc).name in model


def test_unknown_family_and_bad_air_settings_are_named():
    with pytest.raises(ScenarioError, match=r"radio\.model"):
        scenario('[radio]\nmodel = { kind = "okumura-hata" }\n')
    with pytest.raises(ScenarioError, match=r"radio\.air\.phy"):
        scenario('[radio]\nair = { phy = "3M" }\n')
    with pytest.raises(ScenarioError, match=r"radio\.air\.wifi\[0\]\.channel"):
        scenario("[radio]\nair = { wifi = [{ x = 1, y = 1, channel = 14 }] }\n")
    with pytest.raises(ScenarioError, match=r"tags\[0\]\.payload_bytes"):
        parse_scenario(BASE.replace("count = 60", "count = 60\npayload_bytes = 40"), "x")


def test_same_seed_same_sightings_and_hooks_still_work():
    a = WarehouseTwin(scenario()).run()
    b = WarehouseTwin(scenario()).run()
    assert a.sightings.tobytes() == b.sightings.tobytes()
    twin = WarehouseTwin(scenario())
    twin.tag_alive[:10] = False
    twin.gateway_up[1] = False
    r = twin.run()
    assert not np.isin(r.sightings["device"], np.arange(10)).any()
    assert not (r.sightings["gateway"] == 1).any()


def test_carried_tags_advertise_faster():
    result = WarehouseTwin(scenario("[radio]\nair = { collisions = false }\n")).run()
    s = result.sightings
    events = np.unique(s[["device", "seq", "motion"]])
    moving = events[events["motion"] == 1]
    assert len(moving) > 0
    # Per device, the spacing of successive events while carried is about 100 ms + advDelay.
    for dev in np.unique(moving["device"])[:3]:
        seqs = np.sort(moving["seq"][moving["device"] == dev])
        t = np.array([s["t"][(s["device"] == dev) & (s["seq"] == q)].min() for q in seqs])
        gaps = np.diff(t)[np.diff(seqs) == 1]
        if len(gaps):
            assert np.median(gaps) < 0.2
    # Without the motion interval the same run sends fewer frames; the surplus is about
    # nine extra frames per carried second (10 Hz instead of 1 Hz).
    still = WarehouseTwin(
        parse_scenario(
            BASE.replace("adv_interval_moving_ms = 100\n", "")
            + "[radio]\nair = { collisions = false }\n",
            "x",
        )
    ).run()
    assert result.stats["advertising_events"] > still.stats["advertising_events"] + 50


def test_sink_streams_instead_of_keeping():
    chunks = []
    twin = WarehouseTwin(scenario(), sink=chunks.append)
    result = twin.run()
    assert len(result.sightings) == 0
    assert sum(len(c) for c in chunks) == result.stats["sightings"] > 0


def test_the_warehouse_twin_draws_the_sites_temporal_variation():
    """With temporal_sigma_db set, each link's RSSI gains a slow Gauss-Markov part: the
    same events (same seed, no fading, no shadowing) differ from a run without it by
    sigma, and consecutive packets of one link (about 1 s apart) share it as
    exp(-dt / coherence) says. A site without it draws exactly as before."""
    radio = ('[radio]\nfading = "none"\nshadowing_sigma_db = 0.0\nair = {{ collisions = false }}\n'
             "temporal_sigma_db = {sigma}\ntemporal_coherence_s = 8.0\n")
    plain = WarehouseTwin(scenario(radio.format(sigma=0.0))).run().sightings
    slow = WarehouseTwin(scenario(radio.format(sigma=4.0))).run().sightings
    assert WarehouseTwin(scenario(radio.format(sigma=0.0))).temporal is None
    key = ["device", "seq", "gateway"]
    a = np.sort(plain[[*key, "rssi", "t"]], order=key)
    b = np.sort(slow[[*key, "rssi", "t"]], order=key)
    _, ia, ib = np.intersect1d(a[key], b[key], return_indices=True)
    assert len(ia) > 3000
    diff = b["rssi"][ib] - a["rssi"][ia]
    assert np.std(diff) == pytest.approx(4.0, rel=0.15)
    # Consecutive packets of one link: correlation near exp(-dt / 8 s).
    link = b[ib]
    same = (link["device"][1:] == link["device"][:-1]) & (link["gateway"][1:] == link["gateway"][:-1])
    same &= link["seq"][1:] == link["seq"][:-1] + 1
    dt = np.median(link["t"][1:][same] - link["t"][:-1][same])
    rho = np.corrcoef(diff[:-1][same], diff[1:][same])[0, 1]
    assert rho == pytest.approx(np.exp(-dt / 8.0), abs=0.1)
    assert rho > 0.7
