"""TagTwin planner: compare gateway layouts and see accuracy against ground truth.

Run with ``streamlit run app.py`` or ``tagtwin ui``. The logic lives in planner/backend.py
(tested without a browser) and the figures in planner/figures.py; this file only
wires widgets to them. Everything heavy is cached by the scenario's TOML text, so moving
between views, or back to a layout already run, never simulates again.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from engine.roi import RoiInputs
from planner import backend, editor
from planner import figures as figs
from planner.layouts import BASE_LAYOUT, LayoutBook, LayoutError, layouts_file, workspace_path, workspace_root
from siteplan.model import SiteModel
from twin.scenario import Scenario, ScenarioError, parse_scenario

ROOT = Path(__file__).resolve().parent
SCENARIO_DIR = ROOT / "scenarios"
VIEWS = ("Plan & layout", "Coverage maps", "Run & playback", "Compare layouts", "ROI", "Live")
# Everything the app reads or writes besides the scenarios: $TAGTWIN_WORKSPACE or ./workspace.
WORKSPACE_DEFAULT = ROOT / "workspace"
plan_editor = st.components.v2.component(
    "tagtwin_plan_editor",
    html=editor.EDITOR_HTML,
    css=editor.EDITOR_CSS.read_text(encoding="utf-8"),
    js=editor.EDITOR_JS.read_text(encoding="utf-8"),
)
METRIC_COLUMNS = {
    "cost": st.column_config.NumberColumn("capex", format="%.0f"),
    "opex_per_month": st.column_config.NumberColumn("opex / month", format="%.0f"),
    "payback_months": st.column_config.NumberColumn("payback (months)", format="%.1f"),
    "npv": st.column_config.NumberColumn("NPV", format="%.0f"),
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
            ("theft_recall", "theft recall"),
            ("count_accuracy", "count accuracy"),
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
def maps_of(text: str) -> backend.CoverageMaps:
    sc = parse_scenario(text)
    return backend.coverage_maps(sc, backend.gateway_rows(sc, site_of(text)), site_of(text))


@st.cache_data(show_spinner=False, max_entries=32)
def run_of(text: str, _label: str = "") -> backend.RunView:
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

    view = backend.run_view(sc, tick)
    slot.empty()
    return view


def run_with_progress(text: str, label: str) -> backend.RunView:
    view = run_of(text, label)
    st.session_state.ran[text] = label
    return view


# Figures are cached too (st.cache_resource: the same object, never copied or mutated
# after it is built), keyed by the scenario texts and what the view shows, so a view
# switch or a return to a slider position does not rebuild them. The browser still draws.


@st.cache_data(show_spinner=False, max_entries=16)
def site_data_of(site_text: str) -> dict[str, Any]:
    """The building as the plan editor draws it (once per scenario)."""
    return editor.site_data(site_of(site_text))


@st.cache_resource(show_spinner=False, max_entries=128)
def map_figure(
    site_text: str, map_text: str, run_text: str | None, which: str, title: str, height: int
) -> go.Figure:
    maps = maps_of(map_text)
    err = run_of(run_text).error_map(maps.grid) if run_text is not None else None
    rows = backend.gateway_rows(parse_scenario(map_text), site_of(map_text))
    fig = figs.add_map(figs.floorplan(site_of(site_text), rows, title, height=height), maps, which, err)
    if height < 520:  # the small side-by-side plans of a comparison
        fig.update_layout(showlegend=False)
    return fig


@st.cache_resource(show_spinner=False, max_entries=256)
def frame_figure(site_text: str, run_text: str, t: float, tag: str, title: str) -> go.Figure:
    view = run_of(run_text)
    rows = backend.gateway_rows(parse_scenario(run_text), site_of(run_text))
    fig = figs.floorplan(site_of(site_text), rows, title)
    figs.add_frame(fig, view.frame(t), view.device_ids)
    if tag != "(none)":
        figs.add_track(fig, view.track(view.device_ids.index(tag)), tag)
    return fig


@st.cache_resource(show_spinner=False, max_entries=16)
def animation_figure(site_text: str, run_text: str) -> go.Figure:
    rows = backend.gateway_rows(parse_scenario(run_text), site_of(run_text))
    return figs.playback_animation(site_of(site_text), rows, run_of(run_text))


@st.cache_resource(show_spinner=False, max_entries=32)
def events_figure(run_text: str) -> go.Figure:
    view = run_of(run_text)
    return figs.events_timeline(view.events, view.incidents)


@st.cache_data(show_spinner=False, max_entries=256)
def roi_result(run_text: str, inputs_json: str) -> dict[str, Any]:
    """engine.roi on one run's measured metrics, per run and set of inputs."""
    return backend.roi_of(run_of(run_text), RoiInputs.model_validate_json(inputs_json))


# -- state -------------------------------------------------------------------------------


def scenario_choices() -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(SCENARIO_DIR.glob("*.toml"))}


def base_scenario() -> tuple[Scenario, str] | None:
    """The scenario picked in the sidebar or uploaded. Each scenario keeps its own layouts
    for the session (and in the workspace), so switching back finds them as they were."""
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
        books: dict[tuple[str, str], LayoutBook] = st.session_state.setdefault("books", {})
        if (source, text) not in books:
            books[(source, text)] = load_book(sc, text)
        st.session_state.plan_message = ""
        # Set the widget's own state (before it is drawn): a keyed widget ignores a new
        # default value, so the new scenario's duration would not show otherwise.
        st.session_state.duration_input = float(sc.duration_s)
    return sc, source


def workspace() -> Path:
    return workspace_root(WORKSPACE_DEFAULT)


def load_book(sc: Scenario, text: str) -> LayoutBook:
    """The scenario's layouts: its own, plus the planner's from the workspace if saved."""
    base = backend.gateway_rows(sc, site_of(text))
    try:
        path = layouts_file(workspace(), sc.name)
        if path.exists():
            book = LayoutBook.from_json(path.read_text(encoding="utf-8"), base, str(path))
            st.session_state.plan_message = f"layouts of {sc.name} loaded from {path}"
            return book
    except (LayoutError, OSError) as exc:
        st.session_state.load_problem = f"saved layouts not loaded: {exc}"
    return LayoutBook(base=base)


def book() -> LayoutBook:
    """The layouts of the scenario on screen."""
    return st.session_state.books[st.session_state.source]


def save_book() -> None:
    """Every change is kept in the workspace (layouts/<scenario>.json) at once."""
    sc = parse_scenario(st.session_state.source[1])
    try:
        path = layouts_file(workspace(), sc.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(book().to_json(), encoding="utf-8")
        st.session_state.save_problem = ""
    except (LayoutError, OSError) as exc:
        st.session_state.save_problem = f"layouts not saved to the workspace: {exc}"


def layout_text(sc: Scenario, name: str, timed: bool = True) -> str:
    """The scenario text of one layout, the key of every cache: at the chosen duration for
    runs, at the scenario's own for maps (which do not depend on it)."""
    rows = book().layouts[name]
    label = sc.name if name == BASE_LAYOUT else f"{sc.name} / {name}"
    duration = st.session_state.duration if timed else None
    return backend.scenario_toml(backend.with_gateways(sc, rows, label, duration))


def changed(message: str) -> None:
    """After any change to the layouts: say what happened and keep it in the workspace."""
    if message:
        st.session_state.plan_message = message
    st.session_state.plan_ack = st.session_state.get("plan_ack", 0) + 1
    save_book()


# Callbacks run before the script, so the page (header counts, tables, maps) is drawn
# once, from the edited layout.


def on_plan_edit() -> None:
    value = st.session_state.get("plan_editor") or {}
    edit = value.get("edit") if hasattr(value, "get") else None
    if not isinstance(edit, dict):
        return
    sc = parse_scenario(st.session_state.source[1])
    xy = (edit["x"], edit["y"]) if "x" in edit and "y" in edit else None
    try:
        message = book().edit(
            str(edit.get("op")), gateway=edit.get("id"), xy=xy, default_z=sc.gateways.defaults.z_m
        )
    except LayoutError as exc:
        message = f"not applied: {exc}"
    changed(message)


def on_undo() -> None:
    changed(book().undo())


def on_redo() -> None:
    changed(book().redo())


def on_reset() -> None:
    changed(book().reset())


def on_pick_layout() -> None:
    book().active = st.session_state.layout_pick
    st.session_state.plan_message = ""


def add_layout(name: str, rows: list[backend.GatewayRow], overwrite: bool = False) -> bool:
    """A new named layout; a taken name is refused with a message (never overwritten
    silently), unless ``overwrite`` (the planner confirmed)."""
    try:
        name = book().add(name, rows, overwrite=overwrite)
    except LayoutError as exc:
        st.session_state.plan_message = f"not added: {exc}"
        st.session_state.name_taken = name.strip() if "exists" in str(exc) else ""
        return False
    st.session_state.name_taken = ""
    changed(f"layout “{name}” added with {len(rows)} gateways")
    return True


# -- views -------------------------------------------------------------------------------


def view_plan(sc: Scenario) -> None:
    b = book()
    active = b.active
    left, right = st.columns([13, 6])
    with left:
        c = st.columns([1, 1, 2, 4])
        c[0].button("Undo", key="undo", on_click=on_undo, disabled=not b.can_undo(), width="stretch")
        c[1].button("Redo", key="redo", on_click=on_redo, disabled=not b.can_redo(), width="stretch")
        c[2].button(
            "Reset to the scenario",
            key="reset",
            on_click=on_reset,
            disabled=active == BASE_LAYOUT or b.rows == b.base,
            width="stretch",
            help="put this layout's gateways back as the scenario has them (undo brings the edits back)",
        )
        if active == BASE_LAYOUT:
            c[3].caption(
                "“as in scenario” is the scenario's own layout: an edit starts a new layout, "
                "so the original stays to compare against."
            )
        plan_editor(
            key="plan_editor",
            data=editor.editor_data(
                site_data_of(st.session_state.source[1]),
                b.rows,
                editable=True,
                ack=st.session_state.get("plan_ack", 0),
                default_z=sc.gateways.defaults.z_m,
                message=st.session_state.get("plan_message", ""),
                max_height=620,
            ),
            on_edit_change=on_plan_edit,
        )
        outside = backend.outside_outline(sc, b.rows)
        if outside:
            st.warning(f"Outside the site outline: {', '.join(outside)}")
        for problem in ("save_problem", "load_problem"):
            if st.session_state.get(problem):
                st.warning(st.session_state[problem])
        st.caption(
            f"{sc.description} · {sum(g.count for g in sc.tags)} tags in {len(sc.tags)} groups · "
            f"site {_extent(sc)} · layouts kept in {workspace()}"
        )
    with right:
        st.markdown(f"**Gateways of layout “{active}”** ({len(b.rows)})")
        base = pd.DataFrame(b.rows, columns=["id", "x", "y", "z"])
        edited = st.data_editor(
            base,
            num_rows="dynamic",
            width="stretch",
            hide_index=True,
            height=min(38 + 35 * (len(b.rows) + 1), 420),
            key=f"editor-{id(b)}-{active}-{b.revision}",
            column_config={
                c: st.column_config.NumberColumn(c + " (m)", format="%.1f") for c in ("x", "y", "z")
            },
        )
        rows, problems = backend.clean_rows(edited.to_dict("records"), sc.gateways.defaults.z_m)
        if problems:
            st.error("Layout not applied:\n\n" + "\n".join(f"- {p}" for p in problems))
        elif not rows:
            st.error("Layout not applied: a layout needs at least one gateway")
        elif rows != b.rows:
            changed(b.set_rows(rows, "edited the table"))
            st.rerun()
        layout_tools(sc)


def layout_tools(sc: Scenario) -> None:
    """Grid layouts, copies under a new name, and saving a layout as a scenario file."""
    b = book()
    active = b.active
    with st.expander("Generate a grid layout", expanded=False):
        c1, c2, c3 = st.columns(3)
        spacing = c1.number_input("spacing (m)", 2.0, 100.0, 10.0, 0.5, key="grid_spacing")
        height = c2.number_input(
            "height (m)", 0.5, 30.0, float(sc.gateways.defaults.z_m), 0.5, key="grid_height"
        )
        margin = c3.number_input("margin (m)", 0.0, 50.0, 2.0, 0.5, key="grid_margin")
        if st.button("Add grid layout", key="grid_add"):
            name = f"grid {spacing:g} m"
            if name in b.layouts:
                name = b.fresh_name(name)
            add_layout(name, backend.grid_rows(sc, spacing, height, margin))
            st.rerun()
    with st.expander("Copy this layout", expanded=False):
        new_name = st.text_input("new layout name", value=b.fresh_name(), key="copy_name")
        taken = st.session_state.get("name_taken") == new_name.strip() and new_name.strip() in b.layouts
        if st.button("Copy", key="copy_add"):
            if add_layout(new_name, [dict(r) for r in b.rows]):
                st.rerun()
            taken = new_name.strip() in b.layouts
        if taken:
            st.warning(f"A layout named “{new_name.strip()}” exists.")
            if new_name.strip() != BASE_LAYOUT and st.button(
                f"Overwrite “{new_name.strip()}”", key="copy_overwrite"
            ):
                add_layout(new_name, [dict(r) for r in b.rows], overwrite=True)
                st.rerun()
    if active != BASE_LAYOUT:
        with st.expander(f"Remove layout “{active}”", expanded=False):
            st.caption("Its edits go with it; the scenario's own layout stays.")
            if st.button(f"Remove “{active}”", key="layout_remove"):
                b.delete_layout(active)
                changed(f"removed layout “{active}”")
                st.rerun()
    with st.expander("Save layout to a scenario file", expanded=False):
        scenario = backend.with_gateways(
            sc,
            b.rows,
            sc.name if active == BASE_LAYOUT else f"{sc.name}-{active}".replace(" ", "-"),
        )
        text = backend.scenario_toml(scenario)
        st.download_button(
            "Download TOML", text, file_name=f"{scenario.name}.toml", mime="application/toml"
        )
        target = st.text_input(
            "or write into the workspace as",
            value=f"scenarios/{scenario.name}.toml",
            key="save_path",
            help=f"a path inside {workspace()}; nothing outside it is written",
        )
        try:
            path = workspace_path(workspace(), target, ".toml")
        except LayoutError as exc:
            st.error(f"not written: {exc}")
            return
        confirm = True
        if path.exists():
            st.warning(f"{target} exists in the workspace.")
            confirm = st.checkbox("overwrite it", key="save_overwrite")
        if st.button("Write file", key="save_write", disabled=not confirm):
            try:
                backend.save_scenario(scenario, path)
                st.success(f"wrote {target} in the workspace")
            except (OSError, ScenarioError) as exc:
                st.error(f"not written: {exc}")


def _extent(sc: Scenario) -> str:
    xs = [p[0] for p in sc.site.outline]
    ys = [p[1] for p in sc.site.outline]
    return f"{max(xs) - min(xs):g} x {max(ys) - min(ys):g} m"


def view_maps(sc: Scenario) -> None:
    active = book().active
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
    which = which or options[0]
    fig = map_figure(
        st.session_state.source[1],
        layout_text(sc, active, timed=False),
        text if has_run else None,
        which,
        f"{which}, layout “{active}”",
        520,
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
    active = book().active
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
    site_text = st.session_state.source[1]
    if animate:
        fig = animation_figure(site_text, text)
    else:
        fig = frame_figure(
            site_text, text, float(t), tag or "(none)", f"t = {t:.0f} s, layout “{active}”"
        )
    with left:
        st.plotly_chart(fig, width="stretch", key="play_fig")
    st.subheader("Events the rules raised")
    events_panel(view, text)


def events_panel(view: backend.RunView, text: str) -> None:
    """The rules' events on a timeline (injected incidents as dotted lines) and, when the
    scenario injects incidents, each rule's precision and recall against them."""
    rules = view.rule_scores
    by_rule = rules.get("events_by_rule", {})
    st.caption(
        f"{len(view.events):,} events from rule set “{rules.get('ruleset_version', '?')}”: "
        + (", ".join(f"{k} {v:,}" for k, v in by_rule.items()) or "none")
        + f" · alarms {rules.get('alarms', 0)}, reviews {rules.get('reviews', 0)}, "
        f"false alarms {rules.get('false_alarms', 0)}"
    )
    if view.events:
        st.plotly_chart(events_figure(text), width="stretch", key="events_fig")
    else:
        st.info("The rules engine raised no events in this run.")
    n_incidents = backend.injected_incidents(rules)
    if n_incidents == 0:
        st.info(
            "This scenario injects no incidents, so there is nothing to score the alarms "
            "against. Pick demo_incidents.toml (thefts, misplacements, dying batteries, "
            "removed tags, gateway outages) to see precision and recall."
        )
        return
    kinds = ", ".join(f"{v} {k}" for k, v in rules["incidents"].items() if v)
    st.markdown(
        f"**Precision and recall against the {n_incidents} injected incidents** ({kinds})"
    )
    st.dataframe(
        pd.DataFrame(view.score_table()),
        width="stretch",
        hide_index=True,
        column_config={
            "precision": st.column_config.NumberColumn("precision", format="%.3f"),
            "recall": st.column_config.NumberColumn("recall", format="%.3f"),
            "median_delay_s": st.column_config.NumberColumn("median delay (s)", format="%.1f"),
        },
        key="scores_table",
    )
    count = rules.get("count_accuracy")
    fa = rules.get("false_alarms_per_day_per_1000_tags")
    st.caption(
        f"count accuracy {count if count is not None else 'n/a'} · false alarms per day per "
        f"1,000 tags {fa if fa is not None else 'n/a'} · an alarm is explained when an "
        "incident of a kind that explains it hit the same tag or gateway within 600 s "
        "(docs/rules.md)"
    )


def current_roi_inputs(sc: Scenario) -> RoiInputs:
    """The scenario's [roi] with the edits made in the ROI view (kept across views)."""
    return backend.roi_inputs(sc.roi, st.session_state.get("roi_changes", {}))


def view_compare(sc: Scenario) -> None:
    names = list(book().layouts)
    if len(names) < 2:
        st.info(
            "Add a second layout (Plan & layout: generate a grid, or copy and edit) to compare."
        )
    chosen = st.multiselect("Layouts to compare", names, default=names[:4], key="compare_sel")
    inputs = current_roi_inputs(sc)
    st.caption(
        "Cost, payback and NPV come from the ROI model (engine/roi.py) on what each layout's "
        f"run measured; inputs from the ROI view (tag {inputs.tag_cost:g}, gateway "
        f"{inputs.gateway_cost:g} + installation {inputs.install_cost_per_gateway:g}, project "
        f"{inputs.project_fixed_cost:,.0f}, horizon {inputs.horizon_months} months)."
    )
    texts = {n: layout_text(sc, n) for n in chosen}
    if st.button("Run comparison", type="primary", key="compare_run"):
        for n, text in texts.items():
            if text not in st.session_state.ran:
                run_with_progress(text, n)
    missing = [n for n, t in texts.items() if t not in st.session_state.ran]
    if missing:
        st.info(f"Not run yet: {', '.join(missing)}. Press Run comparison.")
    which = st.radio("Map", list(figs.MAPS), horizontal=True, key="compare_map") or next(
        iter(figs.MAPS)
    )
    cols = st.columns(max(len(chosen), 1))
    rows = []
    inputs_json = inputs.model_dump_json()
    for col, n in zip(cols, chosen, strict=False):
        text = texts[n]
        has_run = text in st.session_state.ran
        map_text = layout_text(sc, n, timed=False)
        fig = map_figure(
            st.session_state.source[1], map_text, text if has_run else None, which, n, 380
        )
        col.plotly_chart(fig, width="stretch", key=f"cmp_fig_{n}")
        if has_run:
            view = run_of(text, st.session_state.ran[text])
            roi = roi_result(text, inputs_json)
            rows.append(backend.layout_row(view, maps_of(map_text), roi) | {"layout": n})
    if len(rows) >= 1:
        table = pd.DataFrame(rows).set_index("layout")
        st.dataframe(table, width="stretch", column_config=METRIC_COLUMNS, key="compare_table")
    if len(rows) >= 2:
        st.markdown(
            "**Which layout wins on what**\n\n" + "\n".join(f"- {w}" for w in backend.winners(rows))
        )
        noisy = [f"{r['layout']} ({r['false_alarms']})" for r in rows if r["false_alarms"]]
        if noisy:
            st.warning(
                "False alarms in the run, extrapolated to a daily rate by the ROI model: "
                + ", ".join(noisy)
                + f". From {st.session_state.duration:g} simulated seconds that rate is weak; "
                "simulate longer before deciding on money."
            )
        front = backend.pareto_front(rows)
        st.plotly_chart(figs.cost_accuracy(rows, front), width="stretch", key="cost_fig")


ROI_GROUPS = {
    "horizon and money": ("horizon_months", "discount_rate_annual", "ramp_months"),
    "costs": (
        "tags",
        "tag_cost",
        "gateway_cost",
        "install_cost_per_gateway",
        "project_fixed_cost",
        "software_per_device_month",
        "cloud_per_device_month",
        "gateway_fee_per_month",
        "battery_life_months",
        "battery_cost",
        "battery_swap_minutes",
        "labor_rate_per_hour",
        "alarm_handling_minutes",
    ),
    "site baseline": (
        "inventory_value",
        "shrink_rate_annual",
        "theft_share_of_shrink",
        "recovery_rate",
        "cycle_count_hours_per_month",
        "cycle_count_automatable",
        "picks_per_month",
        "mis_pick_rate",
        "cost_per_mis_pick",
        "mis_pick_reduction_at_full_accuracy",
    ),
    "cases and sensitivity": (
        "best_benefit_factor",
        "best_cost_factor",
        "worst_benefit_factor",
        "worst_cost_factor",
        "sensitivity_pct",
    ),
}


def roi_input_widgets(sc: Scenario, fleet: int) -> RoiInputs:
    """One number input per RoiInputs field, starting at the scenario's [roi] value (the
    documented default unless the scenario sets it); edits persist across views."""
    base = sc.roi
    changes: dict[str, Any] = dict(st.session_state.get("roi_changes", {}))
    fields = RoiInputs.model_fields
    with st.expander("ROI inputs (defaults: engine/roi.py, docs/roi.md)", expanded=False):
        if st.button("Reset to the scenario's values", key="roi_reset"):
            changes = {}
            st.session_state.roi_version = st.session_state.get("roi_version", 0) + 1
        version = st.session_state.get("roi_version", 0)
        for group, names in ROI_GROUPS.items():
            st.markdown(f"**{group}**")
            cols = st.columns(4)
            for i, name in enumerate(names):
                info = fields[name]
                default = getattr(base, name)
                value = changes.get(name, default)
                if name == "tags":
                    value = fleet if value is None else value
                integer = name in ("horizon_months", "ramp_months", "tags")
                got = cols[i % 4].number_input(
                    name.replace("_", " "),
                    value=int(value) if integer else float(value),
                    step=1 if integer else _step(float(value)),
                    format=None if integer else "%g",
                    help=(info.description or "")
                    + f" (default {fleet if name == 'tags' and default is None else default})",
                    key=f"roi_{name}_{version}",
                )
                if got != value or name in changes:
                    changes[name] = got
    try:
        inputs = backend.roi_inputs(base, changes)
    except ValueError as exc:
        st.error(f"ROI inputs not applied: {exc}")
        inputs = backend.roi_inputs(base, st.session_state.get("roi_changes", {}))
    else:
        st.session_state.roi_changes = changes
    return inputs


def view_false_alarms(text: str) -> int:
    """Unexplained alarms of a run (what the ROI model's false-alarm rate is built on)."""
    return int(run_of(text).rule_scores.get("false_alarms") or 0)


def _step(v: float) -> float:
    return 10 ** math.floor(math.log10(abs(v))) / 10 if v else 0.01


def view_roi(sc: Scenario) -> None:
    active = book().active
    text = layout_text(sc, active)
    fleet = sum(g.count for g in sc.tags)
    inputs = roi_input_widgets(sc, fleet)
    if text not in st.session_state.ran:
        st.info(
            f"The ROI model needs what a run of layout “{active}” measures (theft recall, zone "
            "accuracy, tags located, count accuracy, false alarms). Run it here or in Run & "
            "playback."
        )
        if st.button(
            f"Run simulation ({st.session_state.duration:g} s simulated)", key="roi_run"
        ):
            run_with_progress(text, active)
            st.rerun()
        return
    roi = roi_result(text, inputs.model_dump_json())
    cases, m = roi["cases"], roi["measured"]
    base = cases["base"]
    st.subheader(f"Return on investment, layout “{active}”, over {inputs.horizon_months} months")
    c = st.columns(5)
    pb = base["payback_month"]
    c[0].metric(
        "payback month",
        str(pb) if pb is not None else "never",
        f"{base['payback_months_exact']:.2f} months exact" if pb is not None else None,
        delta_color="off",
    )
    c[1].metric("NPV", f"{base['npv']:,.0f}")
    c[2].metric("capex", f"{base['capex']:,.0f}")
    c[3].metric("net / month", f"{base['net_per_month']:,.0f}")
    c[4].metric("TCO", f"{base['tco']:,.0f}")
    fa = view_false_alarms(text)
    if fa:
        st.warning(
            f"{fa} false alarm{'s' * (fa > 1)} in {st.session_state.duration:g} simulated seconds "
            f"extrapolate to {m['false_alarms_per_day_per_1000_tags']:,.0f} per day per 1,000 "
            "tags, and their handling cost dominates the result. A rate from so few events is "
            "weak (docs/roi.md): simulate longer before trusting it."
        )
    st.caption(
        f"Measured by the run ({st.session_state.duration:g} s simulated): theft recall "
        f"{m['theft_recall']:.3f}"
        + (
            f" (Wilson {m['theft_recall_low']:.2f}-{m['theft_recall_high']:.2f})"
            if m["theft_recall_low"] is not None
            else " (no thefts injected: earns nothing)"
        )
        + f", zone accuracy {m['zone_accuracy']:.3f}, tags located {m['coverage']:.3f}, "
        f"count accuracy {m['count_accuracy']:.3f}, false alarms "
        f"{m['false_alarms_per_day_per_1000_tags']:g} per day per 1,000 tags; "
        f"{m['tags']} tags, {m['gateways']} gateways."
    )
    table = pd.DataFrame(
        [
            {
                "case": name,
                "capex": cases[name]["capex"],
                "opex / month": cases[name]["opex_per_month"],
                "benefit / month": cases[name]["benefit_per_month"],
                "payback month": cases[name]["payback_month"],
                "payback (exact)": cases[name]["payback_months_exact"],
                "NPV": cases[name]["npv"],
                "TCO": cases[name]["tco"],
            }
            for name in ("worst", "base", "best")
        ]
    )
    left, right = st.columns([3, 2])
    with left:
        st.markdown("**Best, base and worst case**")
        st.dataframe(
            table,
            hide_index=True,
            width="stretch",
            key="roi_cases",
            column_config={
                k: st.column_config.NumberColumn(k, format="%.0f")
                for k in ("capex", "opex / month", "benefit / month", "NPV", "TCO")
            }
            | {"payback (exact)": st.column_config.NumberColumn(format="%.2f")},
        )
        st.markdown(f"**Sensitivity: each input and measured metric -/+ {inputs.sensitivity_pct:g} %**")
        st.dataframe(
            pd.DataFrame(roi["sensitivity"]).drop(columns=["base_payback"]),
            hide_index=True,
            width="stretch",
            height=360,
            key="roi_sensitivity",
        )
    with right:
        st.markdown("**Monthly, base case at full ramp**")
        st.dataframe(
            pd.DataFrame(
                [{"item": f"benefit: {k}", "per month": v} for k, v in base["benefits"].items()]
                + [{"item": f"cost: {k}", "per month": -v} for k, v in base["costs"].items()]
            ),
            hide_index=True,
            width="stretch",
            key="roi_items",
        )
        st.plotly_chart(
            figs.cumulative_cash(roi["cumulative_base"], base["payback_month"]),
            width="stretch",
            key="roi_cash",
        )


def view_live(_sc: Scenario) -> None:
    c1, c2 = st.columns([2, 1])
    host = c1.text_input("broker host", "127.0.0.1", key="live_host")
    port = c2.number_input("port", 1, 65535, 1883, key="live_port")
    st.caption(
        f"Subscribes to what `tagtwin serve` publishes: `{backend.POSITIONS_TOPIC}` "
        f"(PositionBatch) and `{backend.EVENTS_TOPIC}` (events), docs/wire-format.md."
    )
    feed: backend.LiveFeed | None = st.session_state.get("feed")
    b1, b2 = st.columns(2)
    if b1.button("Connect", key="live_connect", disabled=feed is not None):
        feed = backend.LiveFeed()
        try:
            feed.connect(host, int(port))
            st.session_state.feed = feed
        except ConnectionError as exc:
            st.error(str(exc))
            feed = None
    if b2.button("Disconnect", key="live_disconnect", disabled=feed is None) and feed is not None:
        feed.close()
        st.session_state.feed = feed = None
    if feed is None:
        st.info(
            "Not connected. Start the server with the same scenario, e.g. "
            f"`tagtwin serve --scenario scenarios/{st.session_state.source[0]}`, and its "
            "gateways (or `tagtwin twin-publish`)."
        )
        return
    live_positions()


@st.fragment(run_every=2.0)
def live_positions() -> None:
    feed: backend.LiveFeed | None = st.session_state.get("feed")
    if feed is None:
        return
    snap = feed.snapshot()
    events = feed.recent_events()
    st.caption(
        f"{feed.messages} messages, {len(snap)} devices, {feed.events_seen} events; "
        f"rejected: {feed.rejected or 'none'}"
    )
    fig = figs.floorplan(
        site(), book().rows, "live positions"
    )
    if snap:
        x = np.array([r["x"] for r in snap])
        y = np.array([r["y"] for r in snap])
        r90 = np.nan_to_num(np.array([r["r90"] for r in snap], dtype=float), nan=0.0)
        frame = {"x": x, "y": y, "r90": r90, "device": np.arange(len(x), dtype=float)}
        figs.add_frame(fig, frame, [r["dev"] for r in snap], truth=False)
    left, right = st.columns([3, 2])
    left.plotly_chart(fig, width="stretch", key="live_fig")
    with right:
        st.markdown(f"**Events** (newest first, last {backend.LIVE_EVENTS_KEPT})")
        if events:
            st.dataframe(
                pd.DataFrame(
                    [
                        {
                            "t (UTC)": pd.to_datetime(e["t"], unit="s").strftime("%H:%M:%S.%f")[
                                :-3
                            ],
                            "kind": e["kind"],
                            "device": e["dev"],
                            "detail": ", ".join(f"{k}: {v}" for k, v in e["detail"].items()),
                        }
                        for e in events
                    ]
                ),
                hide_index=True,
                width="stretch",
                height=400,
                key="live_events",
            )
        else:
            st.caption("no events yet")


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
    b = book()
    st.session_state.layout_pick = b.active  # the widget follows edits that change the layout
    st.sidebar.selectbox("Layout", list(b.layouts), key="layout_pick", on_change=on_pick_layout)
    view = st.sidebar.radio("View", VIEWS, key="view")
    st.title("TagTwin planner")
    st.caption(
        f"{source}: {sc.name} · layout “{b.active}” · {len(b.rows)} gateways"
    )
    {
        "Plan & layout": view_plan,
        "Coverage maps": view_maps,
        "Run & playback": view_run,
        "Compare layouts": view_compare,
        "ROI": view_roi,
        "Live": view_live,
    }[view](sc)


main()
