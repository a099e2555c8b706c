"""The planner's logic (planner/backend.py): layouts, scenario files, coverage maps, run views,
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

from planner import backend
from radio_models.crb import crlb_rmse
from radio_models.environment import Grid
from siteplan.model import SiteModel
from tagtwin.cli import ui_command
from twin.scenario import Scenario, ScenarioError, load_scenario, parse_scenario
from twin.sim import resolve_gateways

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
    rows = backend.gateway_rows(demo)
    info, _ = resolve_gateways(demo, SiteModel.from_scenario(demo))
    assert [r["id"] for r in rows] == list(info.ids)
    assert np.allclose([[r["x"], r["y"], r["z"]] for r in rows], info.xyz)
    assert rows[0] == {"id": "gw-01", "x": 5.0, "y": 2.0, "z": 3.0}


def test_grid_layout_spacing_height_and_margin(demo):
    rows = backend.grid_rows(demo, spacing_m=10.0, height_m=4.5, margin_m=2.0)
    xs = sorted({r["x"] for r in rows})
    ys = sorted({r["y"] for r in rows})
    # 40 x 25 m, margin 2: x in 2, 12, 22, 32; y in 2, 12, 22.
    assert xs == [2.0, 12.0, 22.0, 32.0]
    assert ys == [2.0, 12.0, 22.0]
    assert len(rows) == 12
    assert {r["z"] for r in rows} == {4.5}
    assert len({r["id"] for r in rows}) == 12


def test_scenario_toml_round_trips_the_demo(demo):
    assert parse_scenario(backend.scenario_toml(demo)) == demo


def test_with_gateways_replaces_the_layout_and_duration(demo):
    rows = backend.grid_rows(demo, 8.0, 3.0)
    sc = backend.with_gateways(demo, rows, "grid-8", duration_s=30)
    assert sc.name == "grid-8"
    assert sc.duration_s == 30
    assert sc.gateways.grid is None
    assert backend.gateway_rows(sc) == rows
    # Everything but the gateways, name and duration is untouched.
    assert sc.site == demo.site
    assert sc.tags == demo.tags


def test_grid_scenario_is_expanded_into_units():
    text = SMALL.format(walls="").replace(
        '[[gateways.list]]\nid = "a"\nx = 2\ny = 5\n', "[gateways.grid]\nspacing_m = 5\n"
    )
    sc = parse_scenario(text)
    rows = backend.gateway_rows(sc)
    assert len(rows) == 4 * 2  # x 2, 7, 12, 17; y 2, 7
    again = backend.with_gateways(sc, rows)
    assert again.gateways.grid is None
    assert backend.gateway_rows(again) == rows


# Inside the 20 x 10 m outline (a scenario refuses gateways more than 1 m outside it).
along_x = st.floats(min_value=-0.7, max_value=20.7, allow_nan=False, allow_infinity=False)
along_y = st.floats(min_value=-0.7, max_value=10.7, allow_nan=False, allow_infinity=False)


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.tuples(along_x, along_y, st.floats(0, 30, allow_nan=False)), min_size=1, max_size=8)
)
def test_any_layout_round_trips_through_a_file(coords):
    base = small()
    rows = [{"id": f"g{i}", "x": x, "y": y, "z": z} for i, (x, y, z) in enumerate(coords)]
    sc = backend.with_gateways(base, rows, "edited")
    back = parse_scenario(backend.scenario_toml(sc))
    assert back == sc
    assert backend.gateway_rows(back) == [{**r, "x": float(r["x"])} for r in rows]


def test_save_scenario_writes_a_loadable_file(tmp_path, demo):
    rows = backend.grid_rows(demo, 12.0, 3.5)
    path = backend.save_scenario(
        backend.with_gateways(demo, rows, "demo-grid-12"), tmp_path / "sub" / "g.toml"
    )
    back = load_scenario(path)
    assert back.name == "demo-grid-12"
    assert backend.gateway_rows(back) == rows
    assert path.read_text().startswith("# demo-grid-12: written by the TagTwin planner")


def test_clean_rows_drops_blank_rows_and_names_problems():
    rows, problems = backend.clean_rows(
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
    assert backend.outside_outline(demo, rows) == ["out"]


def test_invalid_layout_names_the_field(demo):
    with pytest.raises(ScenarioError, match=r"gateways\.list: gateway ids must be unique"):
        backend.with_gateways(demo, [{"id": "x", "x": 1, "y": 1, "z": 3}] * 2)


# -- coverage maps -----------------------------------------------------------------------


def test_best_rssi_and_crb_match_hand_computed_values():
    sc = small()
    maps = backend.coverage_maps(sc, [{"id": "a", "x": 2, "y": 5, "z": 1.0}], cell_m=1.0)
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
    maps = backend.coverage_maps(sc, rows, cell_m=1.0)
    pts = np.array([[4.5, 4.5, 1.0], [15.5, 7.5, 1.0]])
    gw = np.array([[r["x"], r["y"], r["z"]] for r in rows])
    want = crlb_rmse(pts, gw, exponent=2.5, sigma_db=4.0)  # all hear at this range
    assert maps.crb_m[4, 4] == pytest.approx(want[0])
    assert maps.crb_m[7, 15] == pytest.approx(want[1])
    assert maps.summary()["area_3plus"] == 1.0


def test_a_wall_lowers_rssi_by_its_material_loss():
    no_wall = backend.coverage_maps(small(), [{"id": "a", "x": 2, "y": 5, "z": 1.0}], cell_m=1.0)
    wall = '[[site.walls]]\npoints = [[10, 0], [10, 10]]\nmaterial = "brick"\n'
    walled = backend.coverage_maps(small(wall), [{"id": "a", "x": 2, "y": 5, "z": 1.0}], cell_m=1.0)
    diff = no_wall.best_rssi_dbm - walled.best_rssi_dbm
    assert np.allclose(diff[:, :10], 0.0)
    assert np.allclose(diff[:, 10:], 10.0)  # brick, 10 dB, beyond x = 10


def test_sensitivity_limits_who_hears():
    far = [{"id": "a", "x": 0, "y": 0, "z": 1.0}, {"id": "b", "x": 20, "y": 10, "z": 1.0}]
    text = SMALL.format(walls="").replace("sensitivity_dbm = -95", "sensitivity_dbm = -80")
    maps = backend.coverage_maps(parse_scenario(text), far, cell_m=1.0)
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
    a = backend.coverage_maps(sc, rows, cell_m=2.0)
    b = backend.coverage_maps(sc, more, cell_m=2.0)
    assert np.all(b.best_rssi_dbm >= a.best_rssi_dbm)
    assert np.all(b.n_heard >= a.n_heard)
    # Fisher information only grows with another receiver, so the bound only shrinks.
    assert np.all((b.crb_m <= a.crb_m * (1 + 1e-9)) | np.isinf(a.crb_m))


def test_map_cells_stay_bounded_on_the_large_site():
    sc = load_scenario(ROOT / "scenarios" / "large.toml")
    assert backend.map_cell_m(sc) == pytest.approx(1.0)  # 120 m / 120 cells


# -- run views and comparison --------------------------------------------------------------


@pytest.fixture(scope="module")
def short_run(demo):
    return backend.run_view(backend.with_gateways(demo, backend.gateway_rows(demo), duration_s=20))


def test_run_view_keeps_fixes_truth_and_metrics(short_run):
    v = short_run
    assert len(v.fixes) > 0
    assert v.true_xy.shape == (len(v.fixes), 2)
    err = np.hypot(v.fixes["x"] - v.true_xy[:, 0], v.fixes["y"] - v.true_xy[:, 1])
    assert np.allclose(err, v.error_m, equal_nan=True)
    assert v.metrics["median_error_m"] == pytest.approx(float(np.nanmedian(v.error_m)), abs=1e-3)
    assert v.gateway_ids[0] == "gw-01"
    # The rules engine's events reach the planner as Event.to_dict() records.
    assert v.events
    assert all(e["severity"] in ("alarm", "review", "info") for e in v.events)
    assert all({"t", "rule", "tag"} <= set(e) for e in v.events)
    assert all(0 <= e["t"] <= 20 for e in v.events)


def test_frame_and_track(short_run):
    v = short_run
    times = v.times
    tk = float(times[3])
    f = v.frame(tk + 0.2)  # snaps to the nearest fix time
    # Each tag located so far appears once, at its newest fix at or before tk.
    assert np.all(f["t"] <= tk)
    assert len(np.unique(f["device"])) == len(f["device"])
    assert set(f["device"].astype(int)) == set(v.fixes["device"][v.fixes["t"] <= tk].astype(int))
    now = v.fixes[v.fixes["t"] == tk]
    at_tk = np.isin(f["device"], now["device"])
    assert np.allclose(np.sort(f["x"][at_tk]), np.sort(now["x"]))
    # The truth is where the tag is at tk, so the error is what a screen shows then.
    truth = v.truth.position_at(f["device"].astype(int), np.full(len(f["device"]), tk))
    assert np.allclose(f["true_x"], truth[:, 0])
    assert np.allclose(f["error_m"], np.hypot(f["x"] - truth[:, 0], f["y"] - truth[:, 1]))
    tr = v.track(0)
    assert np.all(np.diff(tr["t"]) > 0)
    assert len(tr["t"]) == int(np.sum(v.fixes["device"] == 0))


def test_playback_animation_samples_frames_and_tags(short_run, demo):
    from planner.figures import playback_animation

    rows = backend.gateway_rows(demo)
    fig = playback_animation(
        SiteModel.from_scenario(demo), rows, short_run, max_frames=5, max_tags=50
    )
    assert [f.name for f in fig.frames] == ["1", "6", "11", "15", "20"]  # indices 0, 5, 10, 14, 19
    for frame in fig.frames:
        true, est = frame.data
        assert len(true.x) == len(est.x) <= 50
        # Once every sampled tag has been located, each frame shows all of them (last known).
        if float(frame.name) >= 6:
            assert len(est.x) == 50
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


def test_roi_inputs_keep_the_models_bounds(demo):
    assert backend.roi_inputs(demo.roi, {}) == demo.roi
    assert backend.roi_inputs(demo.roi, {"tag_cost": 3.0}).tag_cost == 3.0
    with pytest.raises(ValueError, match="recovery_rate"):
        backend.roi_inputs(demo.roi, {"recovery_rate": 1.5})


def test_pareto_front():
    rows = [
        {"layout": "A", "cost": 1000, "p90_error_m": 5.0},
        {"layout": "B", "cost": 1500, "p90_error_m": 4.0},
        {"layout": "C", "cost": 1600, "p90_error_m": 6.0},
    ]
    assert backend.pareto_front(rows) == ["A", "B"]  # C is dearer and worse than both


# -- live feed: what `tagtwin serve` publishes ---------------------------------------------


def _server_payloads(demo):
    """A PositionBatch and a zone-change Event as the server's own code formats them."""
    from live_bridge.server import ServerCore, ZoneChangeSink
    from live_bridge.wire import EVENTS_TOPIC, POSITIONS_TOPIC
    from tagtwin.live import site_engine_config

    sc = backend.with_gateways(demo, backend.gateway_rows(demo), duration_s=20)
    run = backend.run_view(sc)
    core = ServerCore(site_engine_config(sc), {}, clock="event", sink=ZoneChangeSink())
    core.origin = 1_700_000_000.0
    for d in run.device_ids:
        core.devices.code(d)
    fixes = run.fixes
    positions = core.positions_json(fixes[fixes["t"] == fixes["t"][0]], 1_700_000_100.0)
    events = core.sink.on_fixes(fixes, core.devices, core.config.zones.names, core.origin)
    return run, (POSITIONS_TOPIC, positions), [(EVENTS_TOPIC, e.model_dump_json()) for e in events]


def test_parse_live_reads_the_servers_own_payloads(demo):
    run, (ptopic, positions), events = _server_payloads(demo)
    kind, recs = backend.parse_live(ptopic, positions)
    assert kind == "positions"
    first = run.fixes[run.fixes["t"] == run.fixes["t"][0]]
    assert len(recs) == int(np.isfinite(first["x"]).sum()) > 100
    assert {r["dev"] for r in recs} <= set(run.device_ids)
    # The demo runs WLS under a Kalman tracker: its live positions say so (not "centroid").
    assert {r["method"] for r in recs} == {"kalman"} and all(r["r90"] > 0 for r in recs)
    assert events, "20 s of 200 moving tags change zones"
    kind, (ev,) = backend.parse_live(*events[0])
    assert kind == "event" and ev["kind"] == "zone-change" and ev["dev"] in run.device_ids
    for topic, bad, reason in (
        (ptopic, b"\xff", "bad position batch"),
        (ptopic, b'{"v": 1, "t": 0, "positions": [{"dev": "a"}]}', "bad position batch"),
        (events[0][0], b'{"v": 2, "t": 0, "kind": "x"}', "bad event"),
        ("tagtwin/v1/other", positions, "unexpected topic"),
    ):
        with pytest.raises(ValueError, match=reason):
            backend.parse_live(topic, bad)


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(backend.LIVE_TOPICS),
    st.recursive(
        st.none() | st.booleans() | st.floats() | st.text(max_size=5),
        lambda c: (
            st.lists(c, max_size=3)
            | st.dictionaries(
                st.sampled_from(["v", "t", "positions", "dev", "x", "y", "kind", "detail"]),
                c,
                max_size=4,
            )
        ),
        max_leaves=10,
    ),
)
def test_live_feed_only_ever_counts_bad_messages(topic, data):
    feed = backend.LiveFeed()
    feed.on_message(topic, json.dumps(data))
    assert feed.messages + sum(feed.rejected.values()) == 1


@pytest.mark.integration
def test_live_feed_from_the_real_server_and_broker(tmp_path):
    """The twin publishes signed batches, the server's core (as `tagtwin serve`) turns them
    into positions and zone-change events on mosquitto, the feed shows both."""
    from tests import live_fixtures
    from tests.app_live import live_server, publish_demo

    if shutil.which("mosquitto") is None:
        pytest.skip("mosquitto is not installed (tests/system-packages.txt lists it)")
    port = live_fixtures.free_port()
    conf = tmp_path / "m.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    broker = live_fixtures.Broker(conf, port)
    broker.start()
    feed = backend.LiveFeed()
    try:
        feed.connect("127.0.0.1", port)
        with live_server(broker.url, DEMO) as core:
            sent = publish_demo(broker.url, DEMO, duration_s=12)
            deadline = time.monotonic() + 20
            while (len(feed.snapshot()) < 150 or not feed.events_seen) and (
                time.monotonic() < deadline
            ):
                time.sleep(0.1)
        snap = feed.snapshot()
        assert sent["batches"] > 0
        assert len(snap) >= 150  # most of the demo's 200 tags located
        assert all(0 <= r["x"] <= 40 and 0 <= r["y"] <= 25 for r in snap)
        assert feed.events_seen > 0 and feed.recent_events()[0]["kind"] == "zone-change"
        assert feed.rejected == {}
        assert core.counters["positions"] >= len(snap)
    finally:
        feed.close()
        broker.stop()


def test_live_feed_reports_an_unreachable_broker():
    with pytest.raises(ConnectionError, match=r"cannot reach broker 127\.0\.0\.1"):
        backend.LiveFeed().connect("127.0.0.1", _free_port(), timeout_s=1.0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_ui_command_is_loopback_headless_without_telemetry():
    cmd = ui_command(8600, "127.0.0.1", headless=True)
    assert cmd[1:4] == ["-m", "streamlit", "run"]
    assert Path(cmd[4]).name == "app.py"
    assert Path(cmd[4]).exists()
    assert cmd[cmd.index("--server.address") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--server.headless") + 1] == "true"
    assert cmd[cmd.index("--browser.gatherUsageStats") + 1] == "false"


# -- events and their scores against injected incidents --------------------------------


@pytest.fixture(scope="module")
def incidents_run():
    sc = load_scenario(ROOT / "scenarios" / "demo_incidents.toml")
    return backend.run_view(backend.with_gateways(sc, backend.gateway_rows(sc), duration_s=200))


def test_events_and_scores_of_a_run_with_incidents(incidents_run):
    from planner.figures import events_timeline

    v = incidents_run
    rules = v.rule_scores
    assert backend.injected_incidents(rules) == len(v.incidents) > 0
    table = {r["rule"]: r for r in v.score_table()}
    exit_row = table["exit_without_checkout"]
    # Recall is detected / injected, precision true positives / alarms (docs/rules.md).
    assert exit_row["incidents"] == rules["incidents"]["theft"] > 0
    assert exit_row["recall"] == pytest.approx(exit_row["detected"] / exit_row["incidents"], abs=1e-4)
    assert exit_row["precision"] == pytest.approx(
        exit_row["true_positives"] / exit_row["alarms"], abs=1e-4
    )
    assert exit_row["recall"] >= 0.9  # the gateway over the door catches thefts
    counted = sum(1 for e in v.events if e["rule"] == "exit_without_checkout")
    assert exit_row["alarms"] == counted
    fig = events_timeline(v.events, v.incidents)
    by_name = {t.name: t for t in fig.data}
    assert len(by_name["exit_without_checkout"].x) == counted
    assert set(by_name) == set(rules["events_by_rule"])
    # One dotted line per injected incident.
    assert len(fig.layout.shapes) == len(v.incidents)


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
    moved = backend.with_gateways(sc, [{"id": "a", "x": 10, "y": 5, "z": 1.0}])
    unit = moved.gateways.units[0]
    assert (unit.x, unit.sensitivity_dbm, unit.scan_window_ms) == (10, -60, 30)
    # -60 dBm at n = 2.5 from P_1m = -59 is reached within 10^(1/25) = 1.1 m only.
    maps = backend.coverage_maps(moved, backend.gateway_rows(moved), cell_m=1.0)
    xs, ys = np.meshgrid(maps.xs(), maps.ys())
    heard = maps.n_heard == 1
    assert heard.any()
    assert np.all(np.hypot(xs[heard] - 10, ys[heard] - 5) <= 1.1)


def test_live_events_newest_first_by_event_time_whatever_the_arrival_order():
    feed = backend.LiveFeed()
    for t in (10.0, 30.0, 20.0):  # a late one arrives last
        body = {"v": 1, "t": t, "kind": "zone-change", "dev": "a", "detail": {"from": "x", "to": "y"}}
        feed.on_message(backend.EVENTS_TOPIC, json.dumps(body))
    assert [e["t"] for e in feed.recent_events()] == [30.0, 20.0, 10.0]


def test_a_negative_delay_is_explained_where_the_planner_shows_it():
    """Issue 18: battery_low's median delay of about -26 s sat bare in the planner's table.
    The column title says what a negative delay is; a rule with one gets a note and a line
    under the table carrying the scoring code's explanation."""
    from engine.rules.scoring import NEGATIVE_DELAY_NOTE

    rules = {
        "battery_low": {"events": 8, "true_positives": 8, "precision": 1.0, "incidents": 8,
                        "detected": 8, "recall": 1.0, "delay_s": {"median": -26.75},
                        "negative_delays": 8, "negative_delay_note": NEGATIVE_DELAY_NOTE},
        "missing_tag": {"events": 9, "true_positives": 9, "precision": 1.0, "incidents": 9,
                        "detected": 9, "recall": 1.0, "delay_s": {"median": 2.1}},
    }
    rows = {r["rule"]: r for r in backend.score_rows(rules)}
    assert rows["battery_low"]["median_delay_s"] == -26.75
    assert rows["battery_low"]["delay_note"] == "8 of 8 before the incident: a warning, counted as detected"
    assert rows["missing_tag"]["delay_note"] == ""
    assert "before the incident" in backend.DELAY_COLUMN
    caption = backend.negative_delay_caption(rules)
    assert caption == f"Negative delays (battery_low): {NEGATIVE_DELAY_NOTE}."
    assert backend.negative_delay_caption({"missing_tag": rules["missing_tag"]}) is None
