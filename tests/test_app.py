"""app.py through streamlit.testing.v1.AppTest: widgets, state, caching, no exceptions.

Each test simulates with its own duration, so Streamlit's process-wide cache can never
hand one test another test's run; twin.planner.simulations_started counts real runs.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from twin import planner
from twin.scenario import load_scenario

APP = str(Path(__file__).resolve().parents[1] / "app.py")


def start(duration: float | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    if duration is not None:
        at.sidebar.number_input(key="duration_input").set_value(duration).run()
    return at


def go(at: AppTest, view: str) -> AppTest:
    at.sidebar.radio(key="view").set_value(view).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def chart_titles(at: AppTest) -> list[str]:
    out = []
    for el in at.get("plotly_chart"):
        spec = json.loads(el.proto.spec)
        title = spec.get("layout", {}).get("title", {})
        out.append(title.get("text", "") if isinstance(title, dict) else str(title))
    return out


def test_first_page_shows_the_demo_plan():
    at = start()
    assert at.title[0].value == "TagTwin planner"
    assert at.sidebar.selectbox(key="scenario_file").value == "demo.toml"
    assert at.sidebar.radio(key="view").value == "Plan & layout"
    assert at.session_state.layouts["as in scenario"][0] == {
        "id": "gw-01",
        "x": 5.0,
        "y": 2.0,
        "z": 3.0,
    }
    assert chart_titles(at) == ["demo-warehouse: layout “as in scenario”, 10 gateways"]
    assert at.sidebar.number_input(key="duration_input").value == 600.0


def test_coverage_maps_view_before_a_run():
    at = go(start(), "Coverage maps")
    labels = {m.label: m.value for m in at.metric}
    want = planner.coverage_maps(
        load_scenario(Path(APP).parent / "scenarios" / "demo.toml"),
        at.session_state.layouts["as in scenario"],
    ).summary()
    assert labels["floor heard by 3+ gateways"] == f"{want['area_3plus']:.1%}"
    assert labels["median CRB"] == f"{want['crb_median_m']:.2f} m"
    # The measured-error map is only offered after a run.
    assert at.radio(key="map_kind").options == [
        "best RSSI (dBm)",
        "gateways hearing",
        "Cramér-Rao bound (m)",
    ]
    at.radio(key="map_kind").set_value("gateways hearing").run()
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert any(t.get("name") == "3+ gateways boundary" for t in spec["data"])


def test_run_playback_and_view_switches_never_rerun_the_simulation():
    at = go(start(duration=20), "Run & playback")
    assert "Run the simulation" in at.info[0].value
    before = planner.simulations_started
    at.button(key="run").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert planner.simulations_started == before + 1
    assert at.success[0].value.startswith("Run finished: ")
    metrics = {m.label: m.value for m in at.metric}
    assert float(metrics["median error"].removesuffix(" m")) > 0
    assert metrics["tags located"].endswith("%")
    assert chart_titles(at)[0] == "t = 20 s, layout “as in scenario”"
    at.slider(key="play_t").set_value(5.0).run()
    assert chart_titles(at)[0] == "t = 5 s, layout “as in scenario”"
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    names = {t.get("name") for t in spec["data"]}
    assert {"true", "estimate", "90 % radius", "gateways", "racks", "walls"} <= names
    at.selectbox(key="follow").set_value("pallet-00001").run()
    names = {t.get("name") for t in json.loads(at.get("plotly_chart")[0].proto.spec)["data"]}
    assert "pallet-00001 true path" in names
    if planner.optional_module("engine.rules") is None:
        assert any("not available in this build" in i.value for i in at.info)
    at.toggle(key="animate").set_value(True).run()
    assert not at.exception, [e.value for e in at.exception]
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert len(spec["frames"]) == 20  # one per fix time of a 20 s run
    assert [b["label"] for b in spec["layout"]["updatemenus"][0]["buttons"]] == ["Play", "Pause"]
    at.toggle(key="animate").set_value(False).run()
    # Switching views and coming back reuses the cached run.
    go(at, "Coverage maps")
    assert "measured error RMSE (m)" in at.radio(key="map_kind").options
    at.radio(key="map_kind").set_value("measured error RMSE (m)").run()
    assert not at.exception
    go(at, "Compare layouts")
    go(at, "Plan & layout")
    go(at, "Run & playback")
    assert at.success[0].value.startswith("Run finished: ")
    assert planner.simulations_started == before + 1


def test_grid_layout_then_compare_two_layouts():
    at = start(duration=15)
    at.number_input(key="grid_spacing").set_value(12.0)
    at.number_input(key="grid_height").set_value(4.0)
    at.button(key="grid_add").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert list(at.session_state.layouts) == ["as in scenario", "grid 12 m"]
    assert at.session_state.active == "grid 12 m"
    assert {r["z"] for r in at.session_state.layouts["grid 12 m"]} == {4.0}
    # The sidebar's layout picker follows the new layout and switches back.
    picker = at.sidebar.selectbox[1]
    assert (picker.label, picker.value) == ("Layout", "grid 12 m")
    picker.set_value("as in scenario").run()
    assert at.session_state.active == "as in scenario"
    assert chart_titles(at)[0] == "demo-warehouse: layout “as in scenario”, 10 gateways"
    go(at, "Compare layouts")
    assert at.multiselect(key="compare_sel").value == ["as in scenario", "grid 12 m"]
    before = planner.simulations_started
    at.button(key="compare_run").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert planner.simulations_started == before + 2
    table = at.dataframe[0].value
    assert list(table.index) == ["as in scenario", "grid 12 m"]
    assert list(table["gateways"]) == [10, len(at.session_state.layouts["grid 12 m"])]
    assert (
        table.loc["as in scenario", "cost"]
        == 10 * planner.DEFAULT_GATEWAY_COST + 200 * planner.DEFAULT_TAG_COST
    )
    said = next(m.value for m in at.markdown if "Which layout wins on what" in m.value)
    n_grid = len(at.session_state.layouts["grid 12 m"])
    assert n_grid == 8  # 40 x 25 m, margin 2: x 2, 14, 26, 38; y 2, 14
    assert "hardware cost: grid 12 m wins (2,800 vs 3,100 for as in scenario)" in said
    assert "cost vs accuracy (star: no other layout is cheaper and more accurate)" in chart_titles(
        at
    )
    # A dearer gateway changes the costs without simulating again.
    at.number_input(key="gw_cost").set_value(1000.0).run()
    assert (
        at.dataframe[0].value.loc["as in scenario", "cost"]
        == 10 * 1000 + 200 * planner.DEFAULT_TAG_COST
    )
    go(at, "ROI")
    if planner.optional_module("engine.roi") is None:
        assert "not available in this build" in at.warning[0].value
    assert list(at.dataframe[0].value["layout"]) == ["as in scenario", "grid 12 m"]
    assert planner.simulations_started == before + 2


def test_copy_and_save_a_layout(tmp_path):
    at = start()
    at.text_input(key="copy_name").set_value("my layout")
    at.button(key="copy_add").click().run()
    assert at.session_state.active == "my layout"
    assert at.session_state.layouts["my layout"] == at.session_state.layouts["as in scenario"]
    target = tmp_path / "saved.toml"
    at.text_input(key="save_path").set_value(str(target))
    at.button(key="save_write").click().run()
    assert not at.exception
    assert at.success[0].value == f"wrote {target}"
    saved = load_scenario(target)
    assert saved.name == "demo-warehouse-my-layout"
    assert len(saved.gateways.units) == 10


def test_save_to_an_unwritable_place_says_why(tmp_path):
    at = start()
    blocker = tmp_path / "file"
    blocker.write_text("")
    at.text_input(key="save_path").set_value(str(blocker / "x.toml"))
    at.button(key="save_write").click().run()
    assert not at.exception
    assert at.error[0].value.startswith("not written: ")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_live_view_unreachable_broker():
    at = go(start(), "Live")
    at.number_input(key="live_port").set_value(_free_port())
    at.button(key="live_connect").click().run()
    assert not at.exception
    assert "cannot reach broker" in at.error[0].value


@pytest.mark.integration
def test_live_view_shows_positions_from_a_real_broker(tmp_path):
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
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    at = go(start(), "Live")
    try:
        time.sleep(0.3)
        at.number_input(key="live_port").set_value(port)
        at.button(key="live_connect").click().run()
        assert not at.exception
        assert not at.error, [e.value for e in at.error]
        pub.connect("127.0.0.1", port)
        pub.loop_start()
        pub.publish(
            "tagtwin/positions/demo",
            json.dumps(
                [
                    {"device": "pallet-1", "x": 10, "y": 5, "r90": 2},
                    {"device": "tote-2", "x": 20, "y": 20},
                ]
            ),
            qos=1,
        ).wait_for_publish(5)
        feed = at.session_state.feed
        deadline = time.monotonic() + 5
        while feed.messages < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        at.run()
        assert any(c.value.startswith("1 messages, 2 devices") for c in at.caption)
        spec = json.loads(at.get("plotly_chart")[0].proto.spec)
        est = next(t for t in spec["data"] if t.get("name") == "estimate")
        assert sorted(est["text"]) == ["pallet-1", "tote-2"]
        at.button(key="live_disconnect").click().run()
        assert "feed" not in at.session_state or at.session_state.feed is None
    finally:
        pub.loop_stop()
        pub.disconnect()
        feed = at.session_state.feed if "feed" in at.session_state else None
        if feed is not None:
            feed.close()
        broker.terminate()
        broker.wait(5)


def test_picking_another_scenario_resets_layouts_and_duration():
    at = start(duration=30)
    at.button(key="grid_add").click().run()
    assert len(at.session_state.layouts) == 2
    at.sidebar.selectbox(key="scenario_file").set_value("large.toml").run()
    assert not at.exception, [e.value for e in at.exception]
    assert list(at.session_state.layouts) == ["as in scenario"]
    assert len(at.session_state.layouts["as in scenario"]) == 54
    assert (
        at.sidebar.number_input(key="duration_input").value
        == load_scenario(Path(APP).parent / "scenarios" / "large.toml").duration_s
    )
    assert chart_titles(at)[0].endswith("54 gateways")
