"""TagTwin planner: compare gateway layouts and see accuracy against ground truth.

Run with ``streamlit run app.py`` or ``tagtwin ui``. The logic lives in twin/planner.py
(tested without a browser) and the figures in twin/planner_figures.py; this file only
wires widgets to them. Everything heavy is cached by the scenario's TOML text, so moving
between views, or back to a layout already run, never simulates again.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from twin import planner
from twin import planner_figures as figs
from twin.scenario import Scenario, ScenarioError, parse_scenario
from twin.site import SiteModel

ROOT = Path(__file__).resolve().parent
SCENARIO_DIR = ROOT / "scenarios"
VIEWS = ("Plan & layout", "Coverage maps", "Run & playback", "Compare layouts", "ROI", "Live")
BASE_LAYOUT = "as in scenario"
METRIC_COLUMNS = {
    "cost": st.column_config.NumberColumn("cost", format="%.0f"),
    "median_error_m": st.column_config.NumberColumn("median error (m)", format="%.2f"),
    "p90_error_m": st.column_config.NumberColumn("p90 error (m)", format="%.2f"),
    "crb_median_m": st.column_config.NumberColumn("median CRB (m)", format="%.2f"),
    "crb_p90_m": st.column_config.NumberColumn("p90 CRB (m)", format="%.2f"),
    **{
        k: st.column_config.NumberColumn(label, format="percent")
        for k, label in (
            ("zone_accuracy", "zone accuracy"),
            ("device_coverage", "tags located"),
            ("r90_coverage", "truth inside r90"),
            ("area_3plus", "floor heard by 3+"),
            ("area_heard", "floor heard"),
        )
    },
}


# -- cached work, keyed by scenario text ---------------------------------------------------


@st.cache_resource(show_spinner=False, max_entries=16)
def site_of(text: str) -> SiteModel:
    """The site geometry (read-only, shared across sessions, never copied)."""
    return SiteModel.from_scenario(parse_scenario(text))


def site() -> SiteModel:
    """The site of the picked scenario: layouts change gateways, never the building."""
    return site_of(st.session_state.source[1])


@st.cache_data(show_spinner=False, max_entries=64)
def maps_of(text: str) -> planner.CoverageMaps:
    sc = parse_scenario(text)
    return planner.coverage_maps(sc, planner.gateway_rows(sc, site_of(text)), site_of(text))


@st.cache_data(show_spinner=False, max_entries=32)
def run_of(text: str, _label: str = "") -> planner.RunView:
    """One simulation per distinct scenario text (``_label`` is not part of the key),
    with a progress bar while it runs.

    The bar is created inside the cached function (Streamlit replays a cached function's
    elements on a hit) and emptied at the end, so a cache hit draws nothing.
    """
    sc = parse_scenario(text)
    slot = st.empty()
    bar = slot.progress(0.0, text=f"simulating {_label}")

    def tick(t: float) -> None:
        bar.progress(
            min(t / sc.duration_s, 1.0),
            text=f"simulating {_label}: {t:.0f} / {sc.duration_s:.0f} s",
        )

    view = planner.run_view(sc, tick)
    slot.empty()
    return view


def run_with_progress(text: str, label: str) -> planner.RunView:
    view = run_of(text, label)
    st.session_state.ran[text] = label
    return view


# -- state -------------------------------------------------------------------------------


def scenario_choices() -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(SCENARIO_DIR.glob("*.toml"))}


def base_scenario() -> tuple[Scenario, str] | None:
    """The scenario picked in the sidebar or uploaded; resets layouts when it changes."""
    choices = scenario_choices()
    names = list(choices)
    default = names.index("demo.toml") if "demo.toml" in names else 0
    picked = st.sidebar.selectbox("Scenario", names, index=default, key="scenario_file")
    upload = st.sidebar.file_uploader("or upload a scenario (.toml)", type=["toml"], key="upload")
    source, text = (
        (upload.name, upload.getvalue().decode("utf-8", "replace"))
        if upload
        else (picked, choices[picked])
    )
    try:
        sc = parse_scenario(text, source)
    except ScenarioError as exc:
        st.error(f"**{exc.path}** cannot be used:\n\n" + "\n".join(f"- {p}" for p in exc.problems))
        return None
    if st.session_state.get("source") != (source, text):
        st.session_state.source = (source, text)
        rows = planner.gateway_rows(sc, site_of(text))
        st.session_state.layouts = {BASE_LAYOUT: rows}
        st.session_state.active = BASE_LAYOUT
        st.session_state.editor_version = 0
        # Set the widget's own state (before it is drawn): a keyed widget ignores a new
        # default value, so the new scenario's duration would not show otherwise.
        st.session_state.duration_input = float(sc.duration_s)
    return sc, source


def layout_text(sc: Scenario, name: str, timed: bool = True) -> str:
    """The scenario text of one layout, the key of every cache: at the chosen duration for
    runs, at the scenario's own for maps (which do not depend on it)."""
    rows = st.session_state.layouts[name]
    label = sc.name if name == BASE_LAYOUT else f"{sc.name} / {name}"
    duration = st.session_state.duration if timed else None
    return planner.scenario_toml(planner.with_gateways(sc, rows, label, duration))


def add_layout(name: str, rows: list[planner.GatewayRow]) -> None:
    st.session_state.layouts[name] = rows
    st.session_state.active = name
    st.session_state.editor_version += 1


# -- views -------------------------------------------------------------------------------


def view_plan(sc: Scenario) -> None:
    active = st.session_state.active
    left, right = st.columns([3, 2])
    with right:
        st.subheader(f"Gateways of layout “{active}”")
        base = pd.DataFrame(st.session_state.layouts[active], columns=["id", "x", "y", "z"])
        edited = st.data_editor(
            base,
            num_rows="dynamic",
            width="stretch",
            hide_index=True,
            key=f"editor-{active}-{st.session_state.editor_version}",
            column_config={
                c: st.column_config.NumberColumn(c + " (m)", format="%.1f") for c in ("x", "y", "z")
            },
        )
        rows, problems = planner.clean_rows(edited.to_dict("records"), sc.gateways.defaults.z_m)
        if problems:
            st.error("Layout not applied:\n\n" + "\n".join(f"- {p}" for p in problems))
        elif not rows:
            st.error("Layout not applied: a layout needs at least one gateway")
        else:
            st.session_state.layouts[active] = rows
            outside = planner.outside_outline(sc, rows)
            if outside:
                st.warning(f"Outside the site outline: {', '.join(outside)}")
        with st.expander("Generate a grid layout", expanded=False):
            c1, c2, c3 = st.columns(3)
            spacing = c1.number_input("spacing (m)", 2.0, 100.0, 10.0, 0.5, key="grid_spacing")
            height = c2.number_input(
                "height (m)", 0.5, 30.0, float(sc.gateways.defaults.z_m), 0.5, key="grid_height"
            )
            margin = c3.number_input("margin (m)", 0.0, 50.0, 2.0, 0.5, key="grid_margin")
            if st.button("Add grid layout", key="grid_add"):
                name = f"grid {spacing:g} m"
                add_layout(name, planner.grid_rows(sc, spacing, height, margin))
                st.rerun()
        with st.expander("Copy this layout", expanded=False):
            new_name = st.text_input("new layout name", value=f"{active} (copy)", key="copy_name")
            if st.button("Copy", key="copy_add") and new_name.strip():
                add_layout(new_name.strip(), [dict(r) for r in st.session_state.layouts[active]])
                st.rerun()
        with st.expander("Save layout to a scenario file", expanded=False):
            scenario = planner.with_gateways(
                sc,
                st.session_state.layouts[active],
                sc.name if active == BASE_LAYOUT else f"{sc.name}-{active}".replace(" ", "-"),
            )
            text = planner.scenario_toml(scenario)
            st.download_button(
                "Download TOML", text, file_name=f"{scenario.name}.toml", mime="application/toml"
            )
            target = st.text_input(
                "or write to", value=str(SCENARIO_DIR / f"{scenario.name}.toml"), key="save_path"
            )
            if st.button("Write file", key="save_write"):
                try:
                    planner.save_scenario(scenario, Path(target))
                    st.success(f"wrote {target}")
                except (OSError, ScenarioError) as exc:
                    st.error(f"not written: {exc}")
    with left:
        fig = figs.floorplan(
            site(),
            st.session_state.layouts[active],
            f"{sc.name}: layout “{active}”, {len(st.session_state.layouts[active])} gateways",
        )
        mode = st.radio(
            "Click on the plan to", planner.CLICK_MODES, horizontal=True, key="click_mode"
        )
        figs.add_click_targets(fig, site())
        event = st.plotly_chart(
            fig,
            width="stretch",
            key=f"plan_fig-{st.session_state.get('click_version', 0)}",
            on_select="rerun",
            selection_mode="points",
        )
        if st.session_state.get("click_message"):
            st.caption(st.session_state.click_message)
        handle_click(sc, fig, event, mode)
        st.caption(
            f"{sc.description} · {sum(g.count for g in sc.tags)} tags in {len(sc.tags)} groups · "
            f"site {_extent(sc)}"
        )


def handle_click(sc: Scenario, fig: Any, event: Any, mode: str) -> None:
    """Apply one click on the plan to the active layout, then redraw with a fresh chart
    (a new key clears the selection, so the same click is never applied twice)."""
    points = event.selection.points if event is not None else []
    if not points:
        return
    pt = points[0]
    trace = fig.data[pt["curve_number"]].name
    if trace not in ("gateways", "floor"):
        return
    active = st.session_state.active
    rows = st.session_state.layouts[active]
    gateway = rows[pt["point_index"]]["id"] if trace == "gateways" else None
    floor = (float(pt["x"]), float(pt["y"])) if trace == "floor" else None
    new_rows, pending, message = planner.apply_click(
        rows,
        mode,
        gateway=gateway,
        floor_xy=floor,
        pending=st.session_state.get("click_pending"),
        default_z=sc.gateways.defaults.z_m,
    )
    st.session_state.layouts[active] = new_rows
    st.session_state.click_pending = pending
    st.session_state.click_message = message
    st.session_state.click_version = st.session_state.get("click_version", 0) + 1
    st.session_state.editor_version += 1
    st.rerun()


def _extent(sc: Scenario) -> str:
    xs = [p[0] for p in sc.site.outline]
    ys = [p[1] for p in sc.site.outline]
    return f"{max(xs) - min(xs):g} x {max(ys) - min(ys):g} m"


def view_maps(sc: Scenario) -> None:
    active = st.session_state.active
    text = layout_text(sc, active)
    maps = maps_of(layout_text(sc, active, timed=False))
    has_run = text in st.session_state.ran
    options = list(figs.MAPS) if has_run else list(figs.MAPS)[:3]
    which = st.radio("Map", options, horizontal=True, key="map_kind")
    s = maps.summary()
    c = st.columns(4)
    c[0].metric("floor heard by 3+ gateways", f"{s['area_3plus']:.1%}")
    c[1].metric("floor heard at all", f"{s['area_heard']:.1%}")
    c[2].metric("median CRB", f"{s['crb_median_m']:.2f} m")
    c[3].metric("p90 CRB", f"{s['crb_p90_m']:.2f} m")
    err = run_of(text, st.session_state.ran[text]).error_map(maps.grid) if has_run else None
    fig = figs.add_map(
        figs.floorplan(site(), st.session_state.layouts[active], f"{which}, layout “{active}”"),
        maps,
        which or options[0],
        err,
    )
    st.plotly_chart(fig, width="stretch", key="maps_fig")
    st.caption(
        "Mean link budget from the scenario's path-loss model and the site plan's walls and racks "
        "(no shadowing or fading); a gateway hears a cell when that mean RSSI reaches its "
        "sensitivity. "
        "The Cramér-Rao bound (Patwari et al. 2003) is on RMSE; the measured map is RMSE per cell "
        "by true position."
        + ("" if has_run else " Run the simulation to add the measured error map.")
    )


def view_run(sc: Scenario) -> None:
    active = st.session_state.active
    text = layout_text(sc, active)
    if st.button(
        f"Run simulation ({st.session_state.duration:g} s simulated)", type="primary", key="run"
    ):
        started = time.perf_counter()
        run_with_progress(text, active)
        st.session_state.last_run_s = time.perf_counter() - started
    if text not in st.session_state.ran:
        st.info("Run the simulation to see estimates against ground truth.")
        return
    view = run_of(text, st.session_state.ran[text])
    m = view.metrics
    st.success(
        f"Run finished: {len(view.fixes):,} fixes of {len(view.device_ids)} tags "
        f"from {m['sightings']:,} sightings"
    )
    c = st.columns(5)
    c[0].metric("median error", f"{m['median_error_m']:.2f} m")
    c[1].metric("p90 error", f"{m['p90_error_m']:.2f} m")
    c[2].metric("zone accuracy", f"{m['zone_accuracy']:.1%}")
    c[3].metric("truth inside r90", f"{m['r90_coverage']:.1%}")
    c[4].metric("tags located", f"{m['device_coverage']:.1%}")
    times = view.times
    left, right = st.columns([3, 1])
    with right:
        animate = st.toggle("animate (press Play on the plot)", key="animate")
        if animate:
            st.caption("Up to 60 fix times and 400 tags; green: true position, red x: estimate.")
        else:
            t = (
                st.slider(
                    "time (s)",
                    float(times[0]),
                    float(times[-1]),
                    float(times[-1]),
                    float(sc.engine.step_s),
                    key="play_t",
                )
                if len(times) > 1
                else float(times[0])
            )
            tag = st.selectbox("follow one tag", ["(none)", *view.device_ids], key="follow")
            st.caption(
                "Green: true position; red x: estimate; dotted: 90 % radius (a sample); "
                "grey: error."
            )
    if animate:
        fig = figs.playback_animation(site(), st.session_state.layouts[active], view)
    else:
        fig = figs.floorplan(
            site(), st.session_state.layouts[active], f"t = {t:.0f} s, layout “{active}”"
        )
        figs.add_frame(fig, view.frame(t), view.device_ids)
        if tag and tag != "(none)":
            figs.add_track(fig, view.track(view.device_ids.index(tag)), tag)
    with left:
        st.plotly_chart(fig, width="stretch", key="play_fig")
    st.subheader("Events")
    events_panel(view)


def events_panel(view: planner.RunView) -> None:
    """The rules' events on a timeline with precision/recall, once issue 5 provides them."""
    if planner.optional_module("engine.rules") is None:
        st.info(
            "Events timeline: the rules engine (engine/rules.py) is not available in this build."
        )
        return
    if not view.events_wired:
        st.info(
            "Events timeline: engine/rules.py is present, but twin.run.simulate does not attach "
            "events to its SimulationRun yet (SimulationRun.events)."
        )
        return
    if not view.events:
        st.info("The rules engine raised no events in this run.")
    else:
        st.plotly_chart(figs.events_timeline(view.events), width="stretch", key="events_fig")
    if view.rule_scores:
        st.markdown("**Precision and recall against the injected incidents**")
        st.dataframe(pd.DataFrame(view.rule_scores).T, width="stretch")


def view_compare(sc: Scenario) -> None:
    names = list(st.session_state.layouts)
    if len(names) < 2:
        st.info(
            "Add a second layout (Plan & layout: generate a grid, or copy and edit) to compare."
        )
    chosen = st.multiselect("Layouts to compare", names, default=names[:4], key="compare_sel")
    c1, c2 = st.columns(2)
    gw_cost = c1.number_input(
        "gateway unit cost", 0.0, 100_000.0, planner.DEFAULT_GATEWAY_COST, 10.0, key="gw_cost"
    )
    tag_cost = c2.number_input(
        "tag unit cost", 0.0, 1_000.0, planner.DEFAULT_TAG_COST, 1.0, key="tag_cost"
    )
    texts = {n: layout_text(sc, n) for n in chosen}
    if st.button("Run comparison", type="primary", key="compare_run"):
        for n, text in texts.items():
            if text not in st.session_state.ran:
                run_with_progress(text, n)
    missing = [n for n, t in texts.items() if t not in st.session_state.ran]
    if missing:
        st.info(f"Not run yet: {', '.join(missing)}. Press Run comparison.")
    which = st.radio("Map", list(figs.MAPS), horizontal=True, key="compare_map")
    cols = st.columns(max(len(chosen), 1))
    rows = []
    for col, n in zip(cols, chosen, strict=False):
        text = texts[n]
        maps = maps_of(layout_text(sc, n, timed=False))
        view = run_of(text, st.session_state.ran[text]) if text in st.session_state.ran else None
        err = view.error_map(maps.grid) if view is not None else None
        fig = figs.add_map(
            figs.floorplan(site(), st.session_state.layouts[n], n, height=380),
            maps,
            which or next(iter(figs.MAPS)),
            err,
        )
        fig.update_layout(showlegend=False)
        col.plotly_chart(fig, width="stretch", key=f"cmp_fig_{n}")
        if view is not None:
            rows.append(planner.layout_row(view, maps, gw_cost, tag_cost) | {"layout": n})
    if len(rows) >= 1:
        table = pd.DataFrame(rows).set_index("layout")
        st.dataframe(table, width="stretch", column_config=METRIC_COLUMNS)
    if len(rows) >= 2:
        st.markdown(
            "**Which layout wins on what**\n\n" + "\n".join(f"- {w}" for w in planner.winners(rows))
        )
        front = planner.pareto_front(rows)
        st.plotly_chart(figs.cost_accuracy(rows, front), width="stretch", key="cost_fig")
    st.session_state.compare_rows = rows


def view_roi() -> None:
    roi = planner.optional_module("engine.roi")
    rows = st.session_state.get("compare_rows", [])
    if roi is None:
        st.warning(
            "ROI model (engine/roi.py) is not available in this build: payback, NPV and the "
            "sensitivity table appear here once it is. Until then cost is hardware only."
        )
    else:
        st.info(
            "engine/roi.py is present, but the planner is not wired to it yet "
            "(docs/planner.md, 'Wiring after the merge'); cost below is hardware only."
        )
    if rows:
        st.dataframe(
            pd.DataFrame(rows)[["layout", "gateways", "cost", "median_error_m", "p90_error_m"]],
            width="stretch",
            hide_index=True,
            column_config=METRIC_COLUMNS,
        )
    else:
        st.info("Run a comparison first (Compare layouts) to cost the layouts.")


def view_live() -> None:
    c1, c2, c3 = st.columns([2, 1, 2])
    host = c1.text_input("broker host", "127.0.0.1", key="live_host")
    port = c2.number_input("port", 1, 65535, 1883, key="live_port")
    topic = c3.text_input("positions topic", planner.POSITIONS_TOPIC, key="live_topic")
    feed: planner.LiveFeed | None = st.session_state.get("feed")
    b1, b2 = st.columns(2)
    if b1.button("Connect", key="live_connect", disabled=feed is not None):
        feed = planner.LiveFeed()
        try:
            feed.connect(host, int(port), topic)
            st.session_state.feed = feed
        except ConnectionError as exc:
            st.error(str(exc))
            feed = None
    if b2.button("Disconnect", key="live_disconnect", disabled=feed is None) and feed is not None:
        feed.close()
        st.session_state.feed = feed = None
    if feed is None:
        st.info(
            "Not connected. The engine publishes positions as JSON objects with device, x, y "
            "(t, r90, zone optional), one per message or as a list."
        )
        return
    live_positions()


@st.fragment(run_every=2.0)
def live_positions() -> None:
    feed: planner.LiveFeed | None = st.session_state.get("feed")
    if feed is None:
        return
    snap = feed.snapshot()
    st.caption(
        f"{feed.messages} messages, {len(snap)} devices; rejected: {feed.rejected or 'none'}"
    )
    fig = figs.floorplan(
        site(), st.session_state.layouts[st.session_state.active], "live positions"
    )
    if snap:
        x = np.array([r["x"] for r in snap])
        y = np.array([r["y"] for r in snap])
        r90 = np.nan_to_num(np.array([r["r90"] for r in snap]), nan=0.0)
        frame = {
            "x": x,
            "y": y,
            "r90": r90,
            "true_x": x,
            "true_y": y,
            "error_m": np.zeros(len(x)),
            "device": np.arange(len(x), dtype=float),
        }
        figs.add_frame(fig, frame, [r["device"] for r in snap])
    st.plotly_chart(fig, width="stretch", key="live_fig")


# -- page --------------------------------------------------------------------------------


def main() -> None:
    st.set_page_config(page_title="TagTwin planner", layout="wide")
    st.session_state.setdefault("ran", {})
    picked = base_scenario()
    if picked is None:
        return
    sc, source = picked
    st.session_state.duration = st.sidebar.number_input(
        "simulated duration (s)",
        min_value=10.0,
        max_value=float(7 * 24 * 3600),
        step=10.0,
        key="duration_input",
        format="%.0f",
        help="shorter than the scenario's for a quick look",
    )
    names = list(st.session_state.layouts)
    st.session_state.active = st.sidebar.selectbox(
        "Layout",
        names,
        index=names.index(st.session_state.active),
        key=f"active-{len(names)}-{st.session_state.active}",
    )
    view = st.sidebar.radio("View", VIEWS, key="view")
    st.title("TagTwin planner")
    st.caption(
        f"{source}: {sc.name} · layout “{st.session_state.active}” · "
        f"{len(st.session_state.layouts[st.session_state.active])} gateways"
    )
    {
        "Plan & layout": view_plan,
        "Coverage maps": view_maps,
        "Run & playback": view_run,
        "Compare layouts": view_compare,
        "ROI": lambda _sc: view_roi(),
        "Live": lambda _sc: view_live(),
    }[view](sc)


main()
