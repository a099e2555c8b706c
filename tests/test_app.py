"""app.py through streamlit.testing.v1.AppTest: widgets, state, caching, no exceptions.

Each test simulates with its own duration, so Streamlit's process-wide cache can never
hand one test another test's run; planner.reps.runs_submitted counts real runs.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from planner import backend
from planner import replicates as reps
from siteplan.model import SiteModel
from twin.scenario import load_scenario

APP = str(Path(__file__).resolve().parents[1] / "app.py")


def start(duration: float | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    if duration is not None:
        at.sidebar.number_input(key="n_seeds").set_value(2)  # the fewest with an interval
        at.sidebar.number_input(key="duration_input").set_value(duration).run()
    return at


@pytest.fixture(autouse=True)
def workspace(tmp_path, monkeypatch):
    """Each test's layouts and files go to its own workspace, never the checkout."""
    ws = tmp_path / "workspace"
    monkeypatch.setenv("TAGTWIN_WORKSPACE", str(ws))
    return ws


def book(at: AppTest):
    """The layout book of the scenario on screen."""
    return at.session_state.books[at.session_state.source]


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
    assert book(at).layouts["as in scenario"][0] == {
        "id": "gw-01",
        "x": 5.0,
        "y": 2.0,
        "z": 3.0,
    }
    assert at.caption[0].value == "demo.toml: demo-warehouse · layout “as in scenario” · 10 gateways"
    assert at.sidebar.number_input(key="duration_input").value == 600.0


def test_coverage_maps_view_reads_against_the_requirement():
    from planner.requirements import Requirement, area_report

    at = go(start(), "Coverage maps")
    labels = {m.label: m.value for m in at.metric}
    sc = load_scenario(Path(APP).parent / "scenarios" / "demo.toml")
    maps = backend.coverage_maps(sc, book(at).layouts["as in scenario"])
    rows = area_report(maps, SiteModel.from_scenario(sc), Requirement())
    assert labels["floor meeting it per cell"] == f"{rows[0]['meets per cell']:.1%}"
    assert labels["floor heard by 3+ at -90 dBm"] == f"{rows[0]['3+ at -90 dBm']:.1%}"
    assert labels["meets the requirement"] == ("yes" if rows[0]["verdict"] == "meets" else "no")
    table = at.dataframe[0].value
    assert list(table.index) == ["whole floor *", *[z.name for z in sc.zones]]
    # The measured-error map is only offered after a run.
    assert "measured error RMSE (m)" not in at.radio(key="map_kind").options
    # A looser requirement is met on more of the floor.
    at.number_input(key="req_crb").set_value(10.0)
    at.number_input(key="req_n").set_value(1).run()
    assert not at.exception
    assert at.dataframe[0].value.loc["whole floor *", "meets per cell"] > rows[0]["meets per cell"]


def test_run_playback_and_view_switches_never_rerun_the_simulation():
    at = go(start(duration=20), "Run & playback")
    assert "Run the simulation" in at.info[0].value
    before = reps.runs_submitted
    at.button(key="run").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert reps.runs_submitted == before + 2  # two seeds
    assert at.success[0].value.startswith("Run finished: 2 seeds")
    metrics = {m.label: m.value for m in at.metric}
    assert float(metrics["median error"].removesuffix(" m")) > 0
    assert any(c.value.startswith("95 % CI ") and c.value.endswith(" m") for c in at.caption)
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
    # The rules engine's events (the demo injects no incidents: nothing to score against).
    assert any("events from rule set “default-1”" in c.value for c in at.caption)
    assert any("injects no incidents" in i.value for i in at.info)
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
    assert reps.runs_submitted == before + 2


def test_grid_layout_then_compare_two_layouts():
    at = start(duration=15)
    at.number_input(key="grid_spacing").set_value(12.0)
    at.number_input(key="grid_height").set_value(4.0)
    at.button(key="grid_add").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert list(book(at).layouts) == ["as in scenario", "grid 12 m"]
    assert book(at).active == "grid 12 m"
    assert {r["z"] for r in book(at).layouts["grid 12 m"]} == {4.0}
    # The sidebar's layout picker follows the new layout and switches back.
    picker = at.sidebar.selectbox(key="layout_pick")
    assert (picker.label, picker.value) == ("Layout", "grid 12 m")
    picker.set_value("as in scenario").run()
    assert book(at).active == "as in scenario"
    assert at.caption[0].value.endswith("layout “as in scenario” · 10 gateways")
    go(at, "Compare layouts")
    assert at.multiselect(key="compare_sel").value == ["as in scenario", "grid 12 m"]
    before = reps.runs_submitted
    at.button(key="compare_run").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert reps.runs_submitted == before + 4  # two layouts, the same two seeds
    table = at.dataframe[0].value
    assert list(table.index) == ["as in scenario", "grid 12 m"]
    n_grid = len(book(at).layouts["grid 12 m"])
    assert n_grid == 8  # 40 x 25 m, margin 2: x 2, 14, 26, 38; y 2, 14
    assert list(table["gateways"]) == [10, n_grid]
    # Cost is the ROI model's capex at its defaults: tags x 12 + gateways x (150 + 120) + 5,000.
    assert table.loc["as in scenario", "capex"] == f"{200 * 12 + 10 * 270 + 5000:,}"
    assert table.loc["grid 12 m", "capex"] == f"{200 * 12 + 8 * 270 + 5000:,}"
    assert {"payback", "NPV", "median error", "false alarms / day / 1,000 tags"} <= set(table.columns)
    assert all(re.fullmatch(r"\d\.\d\d m \(-?\d+\.\d\d m to \d+\.\d\d m\)", v) for v in table["median error"]), list(
        table["median error"]
    )
    # 15 s of 200 tags is far too little exposure for a false-alarm rate.
    assert all(v.startswith("too little exposure (upper bound ") for v in table["false alarms / day / 1,000 tags"])
    said = next(m.value for m in at.markdown if "Which layout wins on what" in m.value)
    assert "capex: grid 12 m is cheaper (9,560 vs 10,100 for as in scenario" in said
    assert re.search(r"- NPV: (.+ wins|no significant difference between) ", said), said
    diffs = at.dataframe[1].value
    assert list(diffs.index) == ["grid 12 m − as in scenario"]
    assert "cost vs accuracy (star: no other layout is cheaper and more accurate)" in chart_titles(
        at
    )
    cost_chart = json.loads(at.get("plotly_chart")[-1].proto.spec)
    assert sorted(cost_chart["data"][0]["x"]) == [9560.0, 10100.0]
    # A dearer gateway, set in the ROI view, re-prices the comparison without simulating.
    go(at, "ROI")
    assert at.metric[0].label == "payback"
    at.number_input(key="roi_gateway_cost_0").set_value(1000.0).run()
    assert not at.exception, [e.value for e in at.exception]
    assert (at.metric[2].label, at.metric[2].value) == ("capex (EUR)", f"{200 * 12 + 10 * 1120 + 5000:,}")
    go(at, "Compare layouts")
    assert at.dataframe[0].value.loc["as in scenario", "capex"] == f"{200 * 12 + 10 * 1120 + 5000:,}"
    assert reps.runs_submitted == before + 4


def test_roi_panel_shows_payback_npv_cases_and_sensitivity():
    at = go(start(duration=25), "ROI")
    assert any("The ROI model needs what a run" in i.value for i in at.info)
    at.button(key="roi_run").click().run()
    assert not at.exception, [e.value for e in at.exception]
    metrics = {m.label: m.value for m in at.metric}
    assert set(metrics) == {"payback", "NPV (EUR)", "capex (EUR)", "net / month (EUR)", "TCO (EUR)"}
    assert metrics["capex (EUR)"] == f"{200 * 12 + 10 * 270 + 5000:,}"
    assert any(c.value.startswith("95 % CI ") and c.value.endswith("over 2 seeds") for c in at.caption)
    cases = next(d.value for d in at.dataframe if "case" in d.value.columns)
    assert list(cases["case"]) == ["worst", "base", "best"]
    # NPV at the low end, the point and the high end of the measured rates' intervals.
    npv_at = next(d.value for d in at.dataframe if "at" in d.value.columns)
    low, point, high = (eur(v) for v in npv_at["NPV"])
    assert low <= point <= high and low < high
    capex = [eur(v) for v in cases["capex"]]
    assert capex == sorted(capex, reverse=True)  # worst costs x1.2, best x0.9
    assert metrics["capex (EUR)"] == f"{capex[1]:,.0f}"
    assert all(re.fullmatch(r"[\d.]+ months|never \(within 36 months\)", p) for p in cases["payback"])
    sens = next(d.value for d in at.dataframe if "input" in d.value.columns)
    assert len(sens) == 22
    assert not sens.isin(["None", "inf", "Infinity", "nan"]).any().any()
    # Every input is there with its documented default.
    assert at.number_input(key="roi_horizon_months_0").value == 36
    assert at.number_input(key="roi_tag_cost_0").value == 12.0
    assert at.number_input(key="roi_tags_0").value == 200
    # A longer horizon raises the NPV (the demo pays back) and changes no measurement.
    before = reps.runs_submitted
    npv = eur(cases.loc[1, "NPV"])
    at.number_input(key="roi_horizon_months_0").set_value(60).run()
    assert eur(next(d.value for d in at.dataframe if "case" in d.value.columns).loc[1, "NPV"]) > npv
    assert reps.runs_submitted == before
    # Another currency labels every money figure; the report exports as one HTML file.
    at.sidebar.selectbox(key="currency").set_value("CHF").run()
    assert next(d.value for d in at.dataframe if "case" in d.value.columns).loc[1, "capex"].startswith("CHF ")
    assert any(m.label == "NPV (CHF)" for m in at.metric)


def eur(text: str) -> float:
    """A money cell ("EUR 12,120", "EUR −3,400") as a number."""
    return float(text.split(" ", 1)[1].replace(",", "").replace("−", "-"))


def test_copy_refuses_a_taken_name_until_the_planner_confirms(workspace):
    at = start()
    at.text_input(key="copy_name").set_value("my layout")
    at.button(key="copy_add").click().run()
    assert book(at).active == "my layout"
    assert book(at).layouts["my layout"] == book(at).layouts["as in scenario"]
    # Saved to the workspace at once, and read back by a new session.
    saved = workspace / "layouts" / "demo-warehouse.json"
    assert "my layout" in saved.read_text()
    at.text_input(key="copy_name").set_value("as in scenario")
    at.button(key="copy_add").click().run()
    assert "not added: “as in scenario” is the scenario's own layout" in at.session_state.plan_message
    book(at).edit("delete", gateway="gw-01")  # "my layout" now has 9 gateways
    at.text_input(key="copy_name").set_value("grid")
    at.button(key="copy_add").click().run()
    assert book(at).active == "grid"
    at.sidebar.selectbox(key="layout_pick").set_value("as in scenario").run()
    # The same name again is refused; the layout keeps its gateways until "Overwrite".
    at.text_input(key="copy_name").set_value("grid")
    at.button(key="copy_add").click().run()
    assert not at.exception
    assert at.warning[0].value == "A layout named “grid” exists."
    assert len(book(at).layouts["grid"]) == 9
    at.button(key="copy_overwrite").click().run()
    assert len(book(at).layouts["grid"]) == 10
    fresh = start()
    assert set(book(fresh).layouts) == {"as in scenario", "my layout", "grid"}


def test_save_writes_only_inside_the_workspace_and_asks_before_overwriting(workspace):
    at = start()
    at.text_input(key="copy_name").set_value("my layout")
    at.button(key="copy_add").click().run()
    at.text_input(key="save_path").set_value("mine/saved.toml").run()
    at.button(key="save_write").click().run()
    assert not at.exception
    assert at.success[0].value == "wrote mine/saved.toml in the workspace"
    saved = load_scenario(workspace / "mine" / "saved.toml")
    assert saved.name == "demo-warehouse-my-layout"
    assert len(saved.gateways.units) == 10
    # Again: the file exists, so writing waits for "overwrite it".
    at.text_input(key="save_path").set_value("mine/saved.toml ").run()
    assert at.button(key="save_write").disabled
    at.checkbox(key="save_overwrite").check().run()
    assert not at.button(key="save_write").disabled
    for bad, why in (
        ("/tmp/x.toml", "not an absolute one"),
        ("../x.toml", "'..' is not allowed"),
    ):
        at.text_input(key="save_path").set_value(bad).run()
        assert at.error[0].value.startswith(f"not written: {bad}: ")
        assert why in at.error[0].value
    assert not (workspace.parent / "x.toml").exists()
    # A file where a directory should be: the OS's reason, in one line.
    (workspace / "blocker").write_text("")
    at.text_input(key="save_path").set_value("blocker/x.toml").run()
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
def test_live_view_shows_positions_and_events_from_the_real_server(tmp_path):
    """`tagtwin serve`'s core on a real mosquitto, fed by the twin's signed batches: the
    Live view shows the server's positions on the plan and its zone-change events."""
    from tests import live_fixtures
    from tests.app_live import live_server, publish_demo

    if shutil.which("mosquitto") is None:
        pytest.skip("mosquitto is not installed (tests/system-packages.txt lists it)")
    port = live_fixtures.free_port()
    conf = tmp_path / "m.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    broker = live_fixtures.Broker(conf, port)
    broker.start()
    demo = Path(APP).parent / "scenarios" / "demo.toml"
    at = go(start(), "Live")
    try:
        at.number_input(key="live_port").set_value(port)
        at.button(key="live_connect").click().run()
        assert not at.exception
        assert not at.error, [e.value for e in at.error]
        feed = at.session_state.feed
        with live_server(broker.url, demo):
            publish_demo(broker.url, demo, duration_s=12)
            deadline = time.monotonic() + 20
            while (len(feed.snapshot()) < 150 or not feed.events_seen) and (
                time.monotonic() < deadline
            ):
                time.sleep(0.1)
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        caption = next(c.value for c in at.caption if " devices, " in c.value)
        n_dev = int(caption.split(" devices")[0].rsplit(" ", 1)[1])
        assert n_dev >= 150 and "rejected: none" in caption
        spec = json.loads(at.get("plotly_chart")[0].proto.spec)
        est = next(t for t in spec["data"] if t.get("name") == "estimate")
        assert len(est["text"]) == n_dev
        assert all(d.startswith(("pallet-", "tote-", "forklift-")) for d in est["text"])
        assert not {"true", "error"} & {t.get("name") for t in spec["data"]}  # no truth live
        events = at.dataframe[0].value
        assert len(events) > 0 and set(events["kind"]) == {"zone-change"}
        assert events["detail"].str.contains("from: ").all()
        at.button(key="live_disconnect").click().run()
        assert "feed" not in at.session_state or at.session_state.feed is None
    finally:
        feed = at.session_state.feed if "feed" in at.session_state else None
        if feed is not None:
            feed.close()
        broker.stop()


def test_events_timeline_with_precision_and_recall_on_the_incidents_scenario():
    at = start()
    at.sidebar.selectbox(key="scenario_file").set_value("demo_incidents.toml").run()
    at.sidebar.number_input(key="n_seeds").set_value(2)  # the fewest with an interval, as start() sets
    at.sidebar.number_input(key="duration_input").set_value(200.0).run()
    go(at, "Run & playback")
    before = reps.runs_submitted
    at.button(key="run").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert reps.runs_submitted == before + 2
    caption = next(c.value for c in at.caption if "events from rule set" in c.value)
    assert "rule set “demo-incidents-1”" in caption and "exit_without_checkout" in caption
    (timeline,) = [
        json.loads(el.proto.spec) for el in at.get("plotly_chart") if el.key == "events_fig"
    ]
    rules = {t["name"] for t in timeline["data"]}
    assert {"exit_without_checkout", "zone_enter"} <= rules
    assert len(timeline["layout"]["shapes"]) > 0  # the injected incidents
    said = next(m.value for m in at.markdown if "Precision and recall" in m.value)
    assert "theft" in said
    scores = at.dataframe[0].value.set_index("rule")
    exit_row = scores.loc["exit_without_checkout"]
    assert exit_row["incidents"] > 0
    assert exit_row["recall"] == pytest.approx(exit_row["detected"] / exit_row["incidents"], abs=1e-3)
    assert 0.9 <= exit_row["recall"] <= 1.0


def test_each_scenario_keeps_its_own_layouts_and_duration():
    at = start(duration=30)
    at.button(key="grid_add").click().run()
    assert len(book(at).layouts) == 2
    at.sidebar.selectbox(key="scenario_file").set_value("large.toml").run()
    assert not at.exception, [e.value for e in at.exception]
    assert list(book(at).layouts) == ["as in scenario"]
    assert len(book(at).layouts["as in scenario"]) == 54
    assert (
        at.sidebar.number_input(key="duration_input").value
        == load_scenario(Path(APP).parent / "scenarios" / "large.toml").duration_s
    )
    assert at.caption[0].value.endswith("54 gateways")
    at.sidebar.selectbox(key="scenario_file").set_value("demo.toml").run()
    assert list(book(at).layouts) == ["as in scenario", "grid 10 m"]  # not discarded
    assert book(at).active == "grid 10 m"
