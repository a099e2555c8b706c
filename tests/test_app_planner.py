"""The planner's logic (twin/planner.py): layouts, scenario files, coverage maps, run views,
comparisons and the live feed, without a browser."""

from __future__ import annotations

import json
import math
import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from radio_models.crb import crlb_rmse
from radio_models.environment import Grid
from twin import planner
from twin.cli import ui_command
from twin.scenario import Scenario, ScenarioError, load_scenario, parse_scenario
from twin.sim import resolve_gateways
from twin.site import SiteModel

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "scenarios" / "demo.toml"

SMALL = """
name = "room"
duration_s = 20
seed = 7
[site]
outline = [[0, 0], [20, 0], [20, 10], [0, 10]]
tag_height_m = 1.0
{walls}
[gateways.defaults]
z_m = 1.0
sensitivity_dbm = -95
[[gateways.list]]
id = "a"
x = 2
y = 5
[[tags]]
name = "t"
count = 5
tx_power_1m_dbm = -59
[radio]
model = {{ kind = "log-distance", exponent = 2.5 }}
shadowing_sigma_db = 4.0
grid_m = 0.5
"""


def small(walls: str = "") -> Scenario:
    return parse_scenario(SMALL.format(walls=walls), "small.toml")


@pytest.fixture(scope="module")
def demo():
    return load_scenario(DEMO)


# -- layouts and files ---------------------------------------------------------------------


def test_gateway_rows_match_what_the_twin_places(demo):
    rows = planner.gateway_rows(demo)
    info, _ = resolve_gateways(demo, SiteModel.from_scenario(demo))
    assert [r["id"] for r in rows] == list(info.ids)
    assert np.allclose([[r["x"], r["y"], r["z"]] for r in rows], info.xyz)
    assert rows[0] == {"id": "gw-01", "x": 5.0, "y": 2.0, "z": 3.0}


def test_grid_layout_spacing_height_and_margin(demo):
    rows = planner.grid_rows(demo, spacing_m=10.0, height_m=4.5, margin_m=2.0)
    xs = sorted({r["x"] for r in rows})
    ys = sorted({r["y"] for r in rows})
    # 40 x 25 m, margin 2: x in 2, 12, 22, 32; y in 2, 12, 22.
    assert xs == [2.0, 12.0, 22.0, 32.0]
    assert ys == [2.0, 12.0, 22.0]
    assert len(rows) == 12
    assert {r["z"] for r in rows} == {4.5}
    assert len({r["id"] for r in rows}) == 12


def test_scenario_toml_round_trips_the_demo(demo):
    assert parse_scenario(planner.scenario_toml(demo)) == demo


def test_with_gateways_replaces_the_layout_and_duration(demo):
    rows = planner.grid_rows(demo, 8.0, 3.0)
    sc = planner.with_gateways(demo, rows, "grid-8", duration_s=30)
    assert sc.name == "grid-8"
    assert sc.duration_s == 30
    assert sc.gateways.grid is None
    assert planner.gateway_rows(sc) == rows
    # Everything but the gateways, name and duration is untouched.
    assert sc.site == demo.site
    assert sc.tags == demo.tags


def test_grid_scenario_is_expanded_into_units():
    text = SMALL.format(walls="").replace(
        '[[gateways.list]]\nid = "a"\nx = 2\ny = 5\n', "[gateways.grid]\nspacing_m = 5\n"
    )
    sc = parse_scenario(text)
    rows = planner.gateway_rows(sc)
    assert len(rows) == 4 * 2  # x 2, 7, 12, 17; y 2, 7
    again = planner.with_gateways(sc, rows)
    assert again.gateways.grid is None
    assert planner.gateway_rows(again) == rows


finite = st.floats(min_value=-50, max_value=80, allow_nan=False, allow_infinity=False)


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.tuples(finite, finite, st.floats(0, 30, allow_nan=False)), min_size=1, max_size=8)
)
def test_any_layout_round_trips_through_a_file(coords):
    base = small()
    rows = [{"id": f"g{i}", "x": x, "y": y, "z": z} for i, (x, y, z) in enumerate(coords)]
    sc = planner.with_gateways(base, rows, "edited")
    back = parse_scenario(planner.scenario_toml(sc))
    assert back == sc
    assert planner.gateway_rows(back) == [{**r, "x": float(r["x"])} for r in rows]


def test_save_scenario_writes_a_loadable_file(tmp_path, demo):
    rows = planner.grid_rows(demo, 12.0, 3.5)
    path = planner.save_scenario(
        planner.with_gateways(demo, rows, "demo-grid-12"), tmp_path / "sub" / "g.toml"
    )
    back = load_scenario(path)
    assert back.name == "demo-grid-12"
    assert planner.gateway_rows(back) == rows
    assert path.read_text().startswith("# demo-grid-12: written by the TagTwin planner")


def test_clean_rows_drops_blank_rows_and_names_problems():
    rows, problems = planner.clean_rows(
        [
            {"id": "a", "x": 1, "y": 2, "z": None},
            {"id": None, "x": None, "y": None, "z": None},  # a fresh blank editor row
            {"id": "b", "x": float("nan"), "y": 3, "z": 2},
            {"id": "", "x": 1, "y": 1, "z": 1},
            {"id": "a", "x": 5, "y": 5, "z": 2},
        ],
        default_z=3.0,
    )
    assert rows == [
        {"id": "a", "x": 1.0, "y": 2.0, "z": 3.0},
        {"id": "a", "x": 5.0, "y": 5.0, "z": 2.0},
    ]
    assert problems == [
        "gateway row 3 (b): x is empty",
        "gateway row 4: id is empty",
        "gateway ids must be unique; repeated: a",
    ]


def test_outside_outline(demo):
    rows = [
        {"id": "in", "x": 5, "y": 5, "z": 3},
        {"id": "out", "x": 45, "y": 5, "z": 3},
        {"id": "edge", "x": 40, "y": 25, "z": 3},
    ]
    assert planner.outside_outline(demo, rows) == ["out"]


def test_invalid_layout_names_the_field(demo):
    with pytest.raises(ScenarioError, match=r"gateways\.list: gateway ids must be unique"):
        planner.with_gateways(demo, [{"id": "x", "x": 1, "y": 1, "z": 3}] * 2)


# -- coverage maps -----------------------------------------------------------------------


def test_best_rssi_and_crb_match_hand_computed_values():
    sc = small()
    maps = planner.coverage_maps(sc, [{"id": "a", "x": 2, "y": 5, "z": 1.0}], cell_m=1.0)
    assert (maps.grid.nx, maps.grid.ny) == (20, 10)
    # Cell centre (12.5, 5.5): d = hypot(10.5, 0.5) at equal heights, n = 2.5.
    d = math.hypot(10.5, 0.5)
    assert maps.best_rssi_dbm[5, 12] == pytest.approx(-59 - 25 * math.log10(d))
    # One gateway cannot fix x and y: no finite bound anywhere.
    assert np.all(np.isinf(maps.crb_m))
    assert np.nanmax(maps.n_heard) == 1


def test_crb_map_is_the_patwari_bound_over_the_gateways_that_hear():
    sc = small()
    rows = [
        {"id": g, "x": x, "y": y, "z": 3.0} for g, x, y in (("a", 1, 1), ("b", 19, 1), ("c", 10, 9))
    ]
    maps = planner.coverage_maps(sc, rows, cell_m=1.0)
    pts = np.array([[4.5, 4.5, 1.0], [15.5, 7.5, 1.0]])
    gw = np.array([[r["x"], r["y"], r["z"]] for r in rows])
    want = crlb_rmse(pts, gw, exponent=2.5, sigma_db=4.0)  # all hear at this range
    assert maps.crb_m[4, 4] == pytest.approx(want[0])
    assert maps.crb_m[7, 15] == pytest.approx(want[1])
    assert maps.summary()["area_3plus"] == 1.0


def test_a_wall_lowers_rssi_by_its_material_loss():
    no_wall = planner.coverage_maps(small(), [{"id": "a", "x": 2, "y": 5, "z": 1.0}], cell_m=1.0)
    wall = '[[site.walls]]\npoints = [[10, 0], [10, 10]]\nmaterial = "brick"\n'
    walled = planner.coverage_maps(small(wall), [{"id": "a", "x": 2, "y": 5, "z": 1.0}], cell_m=1.0)
    diff = no_wall.best_rssi_dbm - walled.best_rssi_dbm
    assert np.allclose(diff[:, :10], 0.0)
    assert np.allclose(diff[:, 10:], 10.0)  # brick, 10 dB, beyond x = 10


def test_sensitivity_limits_who_hears():
    far = [{"id": "a", "x": 0, "y": 0, "z": 1.0}, {"id": "b", "x": 20, "y": 10, "z": 1.0}]
    text = SMALL.format(walls="").replace("sensitivity_dbm = -95", "sensitivity_dbm = -80")
    maps = planner.coverage_maps(parse_scenario(text), far, cell_m=1.0)
    # -80 dBm at n = 2.5 is reached out to 10^(21/25) = 6.9 m.
    reach = 10 ** (21 / 25)
    xs, ys = np.meshgrid(maps.xs(), maps.ys())
    d_a = np.hypot(xs, ys)
    assert np.all(maps.n_heard[d_a < reach - 0.01] >= 1)
    middle = (d_a > reach + 0.01) & (np.hypot(xs - 20, ys - 10) > reach + 0.01)
    assert middle.any()
    assert np.all(maps.n_heard[middle] == 0)
    assert np.all(np.isnan(maps.best_rssi_dbm) == ~maps.inside)


@settings(max_examples=15, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0, 20), st.floats(0, 10)), min_size=1, max_size=5),
    st.tuples(st.floats(0, 20), st.floats(0, 10)),
)
def test_adding_a_gateway_never_makes_coverage_worse(coords, extra):
    sc = small()
    rows = [{"id": f"g{i}", "x": x, "y": y, "z": 3.0} for i, (x, y) in enumerate(coords)]
    more = [*rows, {"id": "new", "x": extra[0], "y": extra[1], "z": 3.0}]
    a = planner.coverage_maps(sc, rows, cell_m=2.0)
    b = planner.coverage_maps(sc, more, cell_m=2.0)
    assert np.all(b.best_rssi_dbm >= a.best_rssi_dbm)
    assert np.all(b.n_heard >= a.n_heard)
    # Fisher information only grows with another receiver, so the bound only shrinks.
    assert np.all((b.crb_m <= a.crb_m * (1 + 1e-9)) | np.isinf(a.crb_m))


def test_map_cells_stay_bounded_on_the_large_site():
    sc = load_scenario(ROOT / "scenarios" / "large.toml")
    assert planner.map_cell_m(sc) == pytest.approx(1.0)  # 120 m / 120 cells


# -- run views and comparison --------------------------------------------------------------


@pytest.fixture(scope="module")
def short_run(demo):
    return planner.run_view(planner.with_gateways(demo, planner.gateway_rows(demo), duration_s=20))


def test_run_view_keeps_fixes_truth_and_metrics(short_run):
    v = short_run
    assert len(v.fixes) > 0
    assert v.true_xy.shape == (len(v.fixes), 2)
    err = np.hypot(v.fixes["x"] - v.true_xy[:, 0], v.fixes["y"] - v.true_xy[:, 1])
    assert np.allclose(err, v.error_m, equal_nan=True)
    assert v.metrics["median_error_m"] == pytest.approx(float(np.nanmedian(v.error_m)), abs=1e-3)
    assert v.gateway_ids[0] == "gw-01"
    # The rules engine's events reach the planner as records with tag, rule and time.
    assert v.events_wired
    assert v.events
    assert all({"t", "rule", "tag"} <= set(e) for e in v.events)
    assert all(0 <= e["t"] <= 20 for e in v.events)


def test_frame_and_track(short_run):
    v = short_run
    times = v.times
    f = v.frame(float(times[3]) + 0.2)  # snaps to the nearest fix time
    assert np.all(f["t"] == times[3])
    assert len(f["x"]) == int(np.sum(v.fixes["t"] == times[3]))
    tr = v.track(0)
    assert np.all(np.diff(tr["t"]) > 0)
    assert len(tr["t"]) == int(np.sum(v.fixes["device"] == 0))


def test_playback_animation_samples_frames_and_tags(short_run, demo):
    from twin.planner_figures import playback_animation

    rows = planner.gateway_rows(demo)
    fig = playback_animation(
        SiteModel.from_scenario(demo), rows, short_run, max_frames=5, max_tags=50
    )
    assert [f.name for f in fig.frames] == ["1", "6", "11", "15", "20"]  # indices 0, 5, 10, 14, 19
    for frame in fig.frames:
        true, est = frame.data
        assert len(true.x) == len(est.x) == 50
    last = short_run.frame(20.0)
    keep = np.isin(
        last["device"],
        np.unique(short_run.fixes["device"])[np.linspace(0, 199, 50).round().astype(int)],
    )
    assert np.allclose(fig.frames[-1].data[1].x, last["x"][keep])


def test_error_map_is_rmse_by_true_position(short_run):
    v = short_run
    grid = Grid(0.0, 0.0, 5.0, 8, 5)
    rmse = v.error_map(grid)
    ok = np.isfinite(v.error_m)
    cells = grid.cell_index(v.true_xy[ok])
    k = int(np.bincount(cells).argmax())
    want = math.sqrt(float(np.mean(v.error_m[ok][cells == k] ** 2)))
    assert rmse.ravel()[k] == pytest.approx(want)
    empty = np.bincount(cells, minlength=40) == 0
    assert np.all(np.isnan(rmse.ravel()[empty]))


def test_layout_row_costs_hardware(short_run, demo):
    maps = planner.coverage_maps(demo, planner.gateway_rows(demo))
    row = planner.layout_row(short_run, maps, gateway_cost=200.0, tag_cost=5.0)
    assert row["gateways"] == 10
    assert row["cost"] == 10 * 200 + 200 * 5
    assert row["area_3plus"] == maps.summary()["area_3plus"]


def test_winners_and_pareto_front():
    rows = [
        {
            "layout": "A",
            "cost": 1000,
            "median_error_m": 2.0,
            "p90_error_m": 5.0,
            "zone_accuracy": 0.8,
        },
        {
            "layout": "B",
            "cost": 1500,
            "median_error_m": 1.5,
            "p90_error_m": 4.0,
            "zone_accuracy": 0.8,
        },
        {
            "layout": "C",
            "cost": 1600,
            "median_error_m": 2.5,
            "p90_error_m": 6.0,
            "zone_accuracy": 0.7,
        },
    ]
    said = planner.winners(rows)
    assert "median error (m): B wins (1.50 m vs 2.00 m for A)" in said
    assert "zone accuracy: tie between A and B (80.0%)" in said
    assert "hardware cost: A wins (1,000 vs 1,500 for B)" in said
    assert planner.pareto_front(rows) == ["A", "B"]  # C is dearer and worse than both
    assert planner.winners(rows[:1]) == []
    close = [{"layout": "A", "median_error_m": 2.7851}, {"layout": "B", "median_error_m": 2.7932}]
    assert planner.winners(close) == ["median error (m): practically even (A 2.785 m, B 2.793 m)"]


def test_optional_modules():
    assert planner.optional_module("twin.planner") is planner
    assert planner.optional_module("engine.no_such_module") is None
    assert planner.optional_module("no_such_package.x") is None


# -- live feed -----------------------------------------------------------------------------


def test_parse_positions_forms():
    one = planner.parse_positions(b'{"device": "t1", "x": 1, "y": 2.5, "t": 10}')
    assert one == [{"device": "t1", "x": 1.0, "y": 2.5, "t": 10.0, "r90": one[0]["r90"]}]
    assert math.isnan(one[0]["r90"])
    many = planner.parse_positions(
        json.dumps({"positions": [{"device": 1, "x": 0, "y": 0, "zone": "A"}] * 2})
    )
    assert [p["zone"] for p in many] == ["A", "A"]
    for bad, reason in (
        (b"\xff", "not JSON"),
        ("[1]", "item 0 is not an object"),
        ('{"device": "a", "x": 1}', "item 0 lacks y"),
        ('{"device": "a", "x": "q", "y": 1}', "must be numbers"),
        ('{"device": "a", "x": NaN, "y": 1}', "must be finite"),
    ):
        with pytest.raises(ValueError, match=reason):
            planner.parse_positions(bad)


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.floats() | st.text(max_size=5),
        lambda c: (
            st.lists(c, max_size=3)
            | st.dictionaries(
                st.sampled_from(["device", "x", "y", "t", "r90", "positions"]), c, max_size=4
            )
        ),
        max_leaves=10,
    )
)
def test_parse_positions_only_ever_raises_valueerror(data):
    feed = planner.LiveFeed()
    feed.on_payload(json.dumps(data))
    assert feed.messages + sum(feed.rejected.values()) == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.integration
def test_live_feed_from_a_real_broker(tmp_path):
    exe = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if exe is None:
        pytest.skip("mosquitto is not installed (tests/system-packages.txt lists it)")
    import paho.mqtt.client as mqtt

    port = _free_port()
    conf = tmp_path / "m.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    broker = subprocess.Popen(
        [exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    feed = planner.LiveFeed()
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                feed.connect("127.0.0.1", port, "tagtwin/positions/#")
                break
            except ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        pub.connect("127.0.0.1", port)
        pub.loop_start()
        infos = [
            pub.publish(
                "tagtwin/positions/site1",
                json.dumps([{"device": "t1", "x": 1, "y": 2}, {"device": "t2", "x": 3, "y": 4}]),
                qos=1,
            ),
            pub.publish("tagtwin/positions/site1", b"garbage", qos=1),
            pub.publish(
                "tagtwin/positions/site1",
                json.dumps({"device": "t1", "x": 5, "y": 6, "r90": 2}),
                qos=1,
            ),
            pub.publish("other/topic", json.dumps({"device": "t9", "x": 0, "y": 0}), qos=1),
        ]
        for info in infos:
            info.wait_for_publish(5)
        deadline = time.monotonic() + 5
        while feed.messages < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        snap = {r["device"]: r for r in feed.snapshot()}
        assert set(snap) == {"t1", "t2"}  # other/topic is not subscribed
        assert (snap["t1"]["x"], snap["t1"]["y"], snap["t1"]["r90"]) == (5.0, 6.0, 2.0)
        assert feed.rejected == {"not JSON": 1}
    finally:
        pub.loop_stop()
        pub.disconnect()
        feed.close()
        broker.terminate()
        broker.wait(5)


def test_live_feed_reports_an_unreachable_broker():
    with pytest.raises(ConnectionError, match=r"cannot reach broker 127\.0\.0\.1"):
        planner.LiveFeed().connect("127.0.0.1", _free_port(), timeout_s=1.0)


def test_ui_command_is_loopback_headless_without_telemetry():
    cmd = ui_command(8600, "127.0.0.1", headless=True)
    assert cmd[1:4] == ["-m", "streamlit", "run"]
    assert Path(cmd[4]).name == "app.py"
    assert Path(cmd[4]).exists()
    assert cmd[cmd.index("--server.address") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--server.headless") + 1] == "true"
    assert cmd[cmd.index("--browser.gatherUsageStats") + 1] == "false"


# -- clicks on the plan --------------------------------------------------------------------


ROWS = [
    {"id": "gw-01", "x": 1.0, "y": 1.0, "z": 3.0},
    {"id": "gw-07", "x": 5.0, "y": 5.0, "z": 3.0},
    {"id": "door", "x": 9.0, "y": 9.0, "z": 2.0},
]


def test_next_gateway_id():
    assert planner.next_gateway_id(ROWS) == "gw-08"
    assert planner.next_gateway_id([]) == "gw-01"
    assert planner.next_gateway_id(ROWS, prefix="door") == "door-01"


def test_click_adds_moves_and_deletes():
    rows, pending, msg = planner.apply_click(
        ROWS, "add gateway", gateway=None, floor_xy=(3.25, 4.75), pending=None, default_z=3.5
    )
    assert rows[-1] == {"id": "gw-08", "x": 3.25, "y": 4.75, "z": 3.5}
    assert (pending, msg) == (None, "added gw-08 at (3.2, 4.8)")
    assert len(ROWS) == 3  # the input is not modified
    rows, pending, msg = planner.apply_click(
        rows, "move gateway", gateway="gw-07", floor_xy=None, pending=None, default_z=3.0
    )
    assert (pending, msg) == ("gw-07", "now click where gw-07 goes")
    rows, pending, msg = planner.apply_click(
        rows, "move gateway", gateway=None, floor_xy=(0.5, 2.0), pending=pending, default_z=3.0
    )
    assert rows[1] == {"id": "gw-07", "x": 0.5, "y": 2.0, "z": 3.0}
    assert (pending, msg) == (None, "moved gw-07 to (0.5, 2.0)")
    rows, _, msg = planner.apply_click(
        rows, "delete gateway", gateway="door", floor_xy=None, pending=None, default_z=3.0
    )
    assert [r["id"] for r in rows] == ["gw-01", "gw-07", "gw-08"]
    assert msg == "deleted door"


def test_clicks_that_do_nothing_say_why():
    one = ROWS[:1]
    for mode, gw, xy, want in (
        ("add gateway", "gw-01", None, "gw-01 is already a gateway; click the floor to add one"),
        ("delete gateway", None, (1.0, 1.0), "click a gateway to delete it"),
        ("delete gateway", "gw-01", None, "gw-01 is the last gateway; a layout needs at least one"),
        ("move gateway", None, (1.0, 1.0), "click a gateway first, then where it goes"),
    ):
        rows, pending, msg = planner.apply_click(
            one, mode, gateway=gw, floor_xy=xy, pending=None, default_z=3.0
        )
        assert (rows, pending, msg) == (one, None, want)
    with pytest.raises(ValueError, match="unknown click mode"):
        planner.apply_click(one, "paint", gateway=None, floor_xy=None, pending=None, default_z=3.0)


# -- events from the rules engine (issue 5), whatever container it uses --------------------


def test_events_are_read_from_arrays_dataclasses_and_dicts():
    from dataclasses import dataclass

    from twin.planner_figures import events_timeline

    arr = np.array(
        [(12.0, 3, "exit_without_checkout")], dtype=[("t", "f8"), ("device", "i4"), ("rule", "U32")]
    )
    assert planner._as_records(arr) == [{"t": 12.0, "device": 3, "rule": "exit_without_checkout"}]

    @dataclass(frozen=True)
    class Event:
        t: float
        device: str
        rule: str

    evs = [Event(5.0, "tag-1", "dwell"), {"t": 9.0, "device": "tag-2", "rule": "dwell"}]
    recs = planner._as_records(evs)
    assert recs == [
        {"t": 5.0, "device": "tag-1", "rule": "dwell"},
        {"t": 9.0, "device": "tag-2", "rule": "dwell"},
    ]
    assert planner._as_records(None) == []
    fig = events_timeline(recs + planner._as_records(arr))
    assert sorted(t.name for t in fig.data) == ["dwell", "exit_without_checkout"]
    assert list(next(t for t in fig.data if t.name == "dwell").x) == [5.0, 9.0]


@pytest.mark.integration
def test_tagtwin_ui_serves_the_planner_on_loopback():
    import sys
    import urllib.request

    exe = Path(sys.executable).parent / "tagtwin"
    if not exe.exists():
        pytest.skip("the tagtwin console script is not installed in this environment")
    port = _free_port()
    proc = subprocess.Popen(
        [str(exe), "ui", "--headless", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        body = b""
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/_stcore/health", timeout=2
                ) as r:
                    body = r.read()
                    break
            except OSError:
                time.sleep(0.2)
        assert body == b"ok"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
            assert b"<title>Streamlit</title>" in r.read()
    finally:
        proc.terminate()  # tagtwin ui execs streamlit: this pid is the server itself
        assert proc.wait(15) is not None


def test_a_moved_gateway_keeps_its_own_settings_and_sensitivity():
    text = SMALL.format(walls="").replace(
        "x = 2\ny = 5\n", "x = 2\ny = 5\nsensitivity_dbm = -60\nscan_window_ms = 30\n"
    )
    sc = parse_scenario(text)
    moved = planner.with_gateways(sc, [{"id": "a", "x": 10, "y": 5, "z": 1.0}])
    unit = moved.gateways.units[0]
    assert (unit.x, unit.sensitivity_dbm, unit.scan_window_ms) == (10, -60, 30)
    # -60 dBm at n = 2.5 from P_1m = -59 is reached within 10^(1/25) = 1.1 m only.
    maps = planner.coverage_maps(moved, planner.gateway_rows(moved), cell_m=1.0)
    xs, ys = np.meshgrid(maps.xs(), maps.ys())
    heard = maps.n_heard == 1
    assert heard.any()
    assert np.all(np.hypot(xs[heard] - 10, ys[heard] - 5) <= 1.1)
