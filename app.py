"""TagTwin planner: compare gateway layouts and see accuracy against ground truth.

Run with ``streamlit run app.py`` or ``tagtwin ui``. The logic lives in planner/backend.py
(tested without a browser) and the figures in planner/figures.py; this file only
wires widgets to them. Everything heavy is cached by the scenario's TOML text, so moving
between views, or back to a layout already run, never simulates again.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from engine.roi import RoiInputs
from planner import backend, editor, report
from planner import figures as figs
from planner import replicates as reps
from planner.layouts import BASE_LAYOUT, LayoutBook, LayoutError, layouts_file, workspace_path, workspace_root
from planner.placement import Search, best_for, fewest_meeting, search_for
from planner.requirements import WHOLE_FLOOR, Requirement, area_report, layout_meets
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


@st.cache_resource(show_spinner=False)
def results() -> dict[tuple[str, int], reps.Replicate]:
    """Every finished (layout text, seed) run of this server, shared by all sessions like
    a cache: a layout already run is never simulated again."""
    return {}


def seeds(sc: Scenario) -> list[int]:
    """The seeds every layout runs with (the same for all layouts: common random numbers)."""
    return reps.replicate_seeds(sc.seed, int(st.session_state.get("n_seeds", reps.DEFAULT_SEEDS)))


def replicates_of(text: str) -> list[reps.Replicate] | None:
    """All seeds' runs of one layout, or None until every one has finished."""
    store = results()
    keys = [(text, s) for s in seeds(parse_scenario(text))]
    return [store[k] for k in keys] if all(k in store for k in keys) else None


def has_run(text: str) -> bool:
    return replicates_of(text) is not None


def run_of(text: str) -> backend.RunView:
    """The whole run of a layout at the first replicate seed (playback, maps, events)."""
    view = results()[(text, reps.replicate_seeds(parse_scenario(text).seed, 1)[0])].view
    assert view is not None
    return view


def run_layouts(sc: Scenario, texts: dict[str, str], key: str) -> bool:
    """Run every layout not yet run at every seed, in parallel, after checking the budget;
    a progress bar with the time left and a Cancel button while it runs. Leaving the view
    (any other click) stops it too: the workers are terminated at once. True when done."""
    store = results()
    ss = seeds(sc)
    jobs = [
        (text, seed, i == 0)
        for text in dict.fromkeys(texts.values())
        for i, seed in enumerate(ss)
        if (text, seed) not in store
    ]
    if not jobs:
        return True
    budget = reps.estimate(sum(g.count for g in sc.tags), st.session_state.duration, len(jobs))
    if budget.refused:
        st.error(f"Not started: {budget.text()}: {budget.refused}.")
        return False
    bar = st.progress(0.0, text=f"starting {budget.text()}")
    cancel = st.empty()
    cancel.button("Cancel run", key=f"cancel_{key}", on_click=_cancelled)

    def tick(p: reps.Progress) -> None:
        bar.progress(p.done / p.total, text=p.text())

    st.session_state.run_cancelled = False
    found, errors = reps.run_batch(jobs, tick, budget.workers)
    store.update(found)
    bar.empty()
    cancel.empty()
    for (text, seed), why in errors.items():
        name = next((n for n, t in texts.items() if t == text), "?")
        st.error(f"run of “{name}” at seed {seed} failed: {why}")
    st.session_state.last_batch = {
        "runs": len(jobs),
        "estimated_s": round(budget.seconds, 1),
        "estimated_mb": round(budget.memory_mb),
        "run_s": [round(r.elapsed_s, 2) for r in found.values()],
    }
    return not errors


def _cancelled() -> None:
    st.session_state.run_cancelled = True


def budget_caption(sc: Scenario, texts: dict[str, str]) -> None:
    """What a run will cost, said before it starts."""
    ss = seeds(sc)
    todo = sum((t, s) not in results() for t in dict.fromkeys(texts.values()) for s in ss)
    if not todo:
        return
    budget = reps.estimate(sum(g.count for g in sc.tags), st.session_state.duration, todo)
    text = (
        f"{len(ss)} seeds per layout, shared between layouts (common random numbers). "
        f"To run: {budget.text()}."
    )
    if budget.refused:
        st.error(f"{text} Refused: {budget.refused}.")
    else:
        st.caption(text)
    if st.session_state.get("run_cancelled"):
        st.warning("The last run was cancelled; its workers were stopped.")


# Figures are cached too (st.cache_resource: the same object, never copied or mutated
# after it is built), keyed by the scenario texts and what the view shows, so a view
# switch or a return to a slider position does not rebuild them. The browser still draws.


@st.cache_data(show_spinner=False, max_entries=16)
def site_data_of(site_text: str) -> dict[str, Any]:
    """The building as the plan editor draws it (once per scenario)."""
    return editor.site_data(site_of(site_text))


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
    """engine.roi on a layout's measured metrics (mean over the seeds; false alarms by the
    too-little-exposure rule), per layout and set of inputs."""
    found = replicates_of(run_text)
    assert found is not None
    return reps.roi_of_layout(found, RoiInputs.model_validate_json(inputs_json))


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
        auto_placement(sc)
        layout_tools(sc)


@st.cache_resource(show_spinner=False, max_entries=8)
def placement_search(site_text: str, req: Requirement, spacing: float, ceiling: float | None) -> Search:
    """Every candidate's link budget and information, once per site and requirement."""
    sc = parse_scenario(site_text)
    return search_for(sc, site_of(site_text), req, spacing, ceiling)


def auto_placement(sc: Scenario) -> None:
    """Layouts from the fast model over candidate mounting points, then verified by runs."""
    b = book()
    req = current_requirement()
    with st.expander("Auto-placement", expanded=st.session_state.get("autoplace_open", False)):
        st.caption(f"Requirement (Coverage maps view): {req.text()}.")
        c1, c2 = st.columns(2)
        spacing = c1.number_input("wall spacing (m)", 1.0, 20.0, 4.0, 0.5, key="auto_spacing")
        ceiling = c2.number_input(
            "ceiling grid (m, 0: walls only)", 0.0, 50.0, 8.0, 1.0, key="auto_ceiling"
        )
        goal = st.radio(
            "find", ["fewest gateways meeting the requirement", "best layout for N gateways"],
            key="auto_goal",
        )
        n = st.number_input("N", 1, 200, len(b.base), key="auto_n", disabled=goal.startswith("fewest"))
        if st.button("Place gateways", key="auto_run", type="primary"):
            st.session_state.autoplace_open = True
            search = placement_search(
                st.session_state.source[1], req, float(spacing), float(ceiling) or None
            )
            found = fewest_meeting(search) if goal.startswith("fewest") else best_for(search, int(n))
            stem = "auto fewest" if goal.startswith("fewest") else f"auto best {int(n)}"
            name = b.fresh_name(stem)
            add_layout(name, found.rows)
            st.session_state.plan_message = f"“{name}”: {found.note}"
            st.session_state.auto_made = name
            st.rerun()
        made = st.session_state.get("auto_made")
        if made in b.layouts:
            st.caption(
                f"“{made}” is a layout like any other: edit it on the plan. The fast model "
                "predicts; twin runs measure."
            )
            text = layout_text(sc, made)
            if st.button(f"Verify “{made}” with twin runs", key="auto_verify"):
                run_layouts(sc, {made: text}, "verify")
            found_runs = replicates_of(text)
            if found_runs:
                maps = maps_of(layout_text(sc, made, timed=False))
                s = maps.summary()
                med = reps.t_interval([r.metrics["median_error_m"] for r in found_runs])
                st.markdown(
                    f"Verified: median error {reps.fmt_interval(med, 'm')} over {med.n} seeds; "
                    f"the fast model's median CRB {s['crb_median_m']:.2f} m (a bound on one fix "
                    "from one window's RSSI; the tracker, filtering over time, can do better)."
                )


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


def current_requirement() -> Requirement:
    """The requirement as last set in the Coverage maps or Compare view (defaults before)."""
    return st.session_state.get("requirement", Requirement())


def requirement_widgets(sc: Scenario) -> Requirement:
    """What "good" means, set by the planner (kept for the session, shared by all views)."""
    zones = [z.name for z in sc.zones]
    with st.expander("Requirement: what “good” means", expanded=False):
        c = st.columns(5)
        d = current_requirement()  # widgets not drawn lose their state; start from the last
        n = c[0].number_input("gateways at least", 1, 10, d.min_gateways, key="req_n")
        dbm = c[1].number_input("heard at (dBm) or better", -110.0, -40.0, d.at_dbm, 1.0, key="req_dbm")
        crb = c[2].number_input("CRB per cell ≤ (m)", 0.1, 50.0, d.crb_max_m, 0.1, key="req_crb")
        p90 = c[3].number_input("CRB p90 per area ≤ (m)", 0.1, 50.0, d.crb_p90_m, 0.1, key="req_p90")
        share = c[4].number_input("share of cells (%)", 1.0, 100.0, d.min_share * 100, 1.0, key="req_share")
        scope = st.multiselect(
            "applies to",
            [WHOLE_FLOOR, *zones],
            default=[a for a in d.scope if a in (WHOLE_FLOOR, *zones)],
            key="req_scope",
        )
    req = Requirement(int(n), float(dbm), float(crb), float(p90), float(share) / 100, tuple(scope))
    st.session_state.requirement = req
    return req


def view_maps(sc: Scenario) -> None:
    active = book().active
    text = layout_text(sc, active)
    map_text = layout_text(sc, active, timed=False)
    maps = maps_of(map_text)
    ran = has_run(text)
    req = requirement_widgets(sc)
    options = list(editor.MAP_KINDS) if ran else list(editor.MAP_KINDS)[:4]
    which = st.radio("Map", options, horizontal=True, key="map_kind") or options[0]
    rows = area_report(maps, site(), req)
    whole = rows[0]
    c = st.columns(4)
    c[0].metric("meets the requirement", "yes" if layout_meets(rows, req) else "no")
    c[1].metric("floor meeting it per cell", f"{whole['meets per cell']:.1%}")
    heard_key = f"{req.min_gateways}+ at {req.at_dbm:g} dBm"
    c[2].metric(f"floor heard by {heard_key}", f"{whole[heard_key]:.1%}")
    c[3].metric("CRB p90, whole floor", f"{whole['CRB p90 (m)']:.2f} m")
    err = run_of(text).error_map(maps.grid) if ran else None
    left, right = st.columns([13, 6])
    with left:
        plan_editor(
            key="maps_view",
            data=editor.editor_data(
                site_data_of(st.session_state.source[1]),
                book().rows,
                editable=False,
                ack=0,
                default_z=sc.gateways.defaults.z_m,
                message=f"requirement: {req.text()}",
                layer=editor.layer_for(maps, which, req, err),
                max_height=620,
                instance="maps",
            ),
        )
    with right:
        st.markdown("**Requirement by area** (* in scope)")
        st.dataframe(
            pd.DataFrame(rows).set_index("area"),
            width="stretch",
            key="req_table",
            column_config={
                "meets per cell": st.column_config.NumberColumn(format="percent"),
                heard_key: st.column_config.NumberColumn(format="percent"),
                "CRB p90 (m)": st.column_config.NumberColumn(format="%.2f"),
            },
        )
    st.caption(
        "Mean link budget from the scenario's path-loss model and the site plan's walls and racks "
        "(no shadowing or fading); a gateway hears a cell when that mean RSSI reaches its "
        "sensitivity. The Cramér-Rao bound (Patwari et al. 2003) is on RMSE; the measured map is "
        "RMSE per cell by true position. Colour classes are fixed, so the same colour means the "
        "same value in every layout. Hover a cell for its value and the gateways that hear it."
        + ("" if ran else " Run the simulation to add the measured error map.")
    )


def view_run(sc: Scenario) -> None:
    active = book().active
    text = layout_text(sc, active)
    budget_caption(sc, {active: text})
    if st.button(
        f"Run simulation ({st.session_state.duration:g} s simulated)", type="primary", key="run"
    ):
        run_layouts(sc, {active: text}, "run")
    found = replicates_of(text)
    if found is None:
        st.info("Run the simulation to see estimates against ground truth.")
        return
    view = run_of(text)
    m = view.metrics
    st.success(
        f"Run finished: {len(found)} seeds; the first (the scenario's own) has "
        f"{len(view.fixes):,} fixes of {len(view.device_ids)} tags from {m['sightings']:,} sightings"
    )
    accuracy_metrics(found)
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


def accuracy_metrics(found: list[reps.Replicate]) -> None:
    """Each accuracy figure as the mean over the seeds with its 95 % interval."""
    c = st.columns(len(reps.ACCURACY))
    for col, (key, label, _lower, unit) in zip(c, reps.ACCURACY, strict=True):
        iv = reps.t_interval([r.metrics[key] for r in found])
        col.metric(label, reps.fmt(iv.mean, unit))
        col.caption(
            f"95 % CI {reps.fmt(iv.low, unit)} to {reps.fmt(iv.high, unit)}"
            if iv.n > 1
            else "one seed: no interval"
        )


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
            "median_delay_s": st.column_config.NumberColumn(
                backend.DELAY_COLUMN, format="%.1f", help=backend.NEGATIVE_DELAY_NOTE
            ),
            "delay_note": st.column_config.TextColumn("delay note"),
        },
        key="scores_table",
    )
    early = backend.negative_delay_caption(rules)
    if early:
        st.caption(early)
    count = rules.get("count_accuracy")
    found = replicates_of(text)
    fa = reps.false_alarm_readings(found)[0].text() if found else "n/a"
    st.caption(
        f"count accuracy {count if count is not None else 'n/a'} (first seed) · false alarms "
        f"per day per 1,000 tags, all seeds: {fa} · an alarm is explained when an "
        "incident of a kind that explains it hit the same tag or gateway within 600 s "
        "(docs/rules.md)"
    )


CURRENCIES = ("EUR", "USD", "GBP", "CHF", "SEK", "PLN", "JPY", "units")


def currency() -> str:
    """The currency every money figure is labelled with (the ROI model is currency-free)."""
    return str(st.session_state.get("currency", CURRENCIES[0]))


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
    budget_caption(sc, texts)
    if st.button("Run comparison", type="primary", key="compare_run"):
        run_layouts(sc, texts, "compare")
    missing = [n for n, t in texts.items() if not has_run(t)]
    if missing:
        st.info(f"Not run yet: {', '.join(missing)}. Press Run comparison.")
    req = requirement_widgets(sc)
    kinds = list(editor.MAP_KINDS)[:4]
    which = st.radio("Map", kinds, horizontal=True, key="compare_map") or kinds[0]
    results: list[reps.LayoutResult] = []
    chart_rows = []
    site_text = st.session_state.source[1]
    cols = st.columns(2)
    for i, n in enumerate(chosen):
        text = texts[n]
        ran = replicates_of(text)
        maps = maps_of(layout_text(sc, n, timed=False))
        area = area_report(maps, site(), req)
        with cols[i % 2]:
            st.markdown(
                f"**{n}**: {len(book().layouts[n])} gateways · requirement "
                f"{'met' if layout_meets(area, req) else 'not met'} · "
                f"{area[0]['meets per cell']:.0%} of the floor meets it per cell"
            )
            plan_editor(
                key=f"cmp_map_{i}",
                data=editor.editor_data(
                    site_data_of(site_text),
                    book().layouts[n],
                    editable=False,
                    ack=0,
                    default_z=sc.gateways.defaults.z_m,
                    layer=editor.layer_for(maps, which, req),
                    max_height=420,
                    instance=f"cmp-{i}",
                ),
            )
        if ran:
            res = reps.layout_result(n, ran, inputs)
            results.append(res)
            payback = res.interval("payback_months").mean
            chart_rows.append(
                {
                    "layout": n,
                    "cost": res.capex,
                    "median_error_m": res.interval("median_error_m").mean,
                    "p90_error_m": res.interval("p90_error_m").mean,
                    "payback_months": payback if math.isfinite(payback) else math.inf,
                    "npv": res.interval("npv").mean,
                }
            )
    if len(chosen) >= 2:
        a_name = chosen[0]
        b_name = st.selectbox("Difference map: B − A, with A = " + a_name, chosen[1:], key="diff_b")
        diff = editor.difference_layer(
            maps_of(layout_text(sc, a_name, timed=False)),
            maps_of(layout_text(sc, b_name or chosen[1], timed=False)),
            which,
            req,
        )
        if diff is not None:
            left, _ = st.columns([3, 1])
            with left:
                plan_editor(
                    key="cmp_diff",
                    data=editor.editor_data(
                        site_data_of(site_text),
                        book().layouts[b_name or chosen[1]],
                        editable=False,
                        ack=0,
                        default_z=sc.gateways.defaults.z_m,
                        layer=diff,
                        max_height=480,
                        instance="cmp-diff",
                    ),
                )
    if results:
        n_seeds = len(seeds(sc))
        st.markdown(f"**Each layout over {n_seeds} seeds: mean (95 % interval)**")
        st.dataframe(
            pd.DataFrame(reps.comparison_table(results)).set_index("layout"),
            width="stretch",
            key="compare_table",
        )
        money_notes(results)
    if len(results) >= 2:
        st.markdown(
            "**Which layout wins on what** (a winner only when the paired difference's 95 % "
            "interval excludes zero)\n\n" + "\n".join(f"- {w}" for w in reps.verdicts(results))
        )
        st.markdown("**Paired differences, seed by seed (common random numbers)**")
        st.dataframe(
            pd.DataFrame(reps.differences(results)).set_index("B − A"),
            width="stretch",
            key="compare_diffs",
        )
        front = backend.pareto_front(chart_rows)
        st.plotly_chart(figs.cost_accuracy(chart_rows, front), width="stretch", key="cost_fig")


def money_notes(results: list[reps.LayoutResult]) -> None:
    """Say where the money figures take false alarms from, and what the worst case costs."""
    for r in results:
        fa = r.money["false_alarms"]
        if r.money["false_alarms_from_design"]:
            worst = reps.t_interval(r.money["npv_at_upper_false_alarms"]).mean
            st.caption(
                f"{r.name}: false alarms {fa.count} in {fa.exposure * 1000:,.1f} tag-days: "
                f"{fa.text()}; NPV and payback use the rules' design rate "
                f"({reps.DESIGN_FALSE_ALARMS:g} per day per 1,000 tags) instead. At the upper "
                f"bound NPV would be {reps.fmt(worst, 'money')}: simulate longer to narrow it."
            )


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


def _step(v: float) -> float:
    return 10 ** math.floor(math.log10(abs(v))) / 10 if v else 0.01


def view_roi(sc: Scenario) -> None:
    active = book().active
    text = layout_text(sc, active)
    fleet = sum(g.count for g in sc.tags)
    inputs = roi_input_widgets(sc, fleet)
    found = replicates_of(text)
    if found is None:
        budget_caption(sc, {active: text})
        st.info(
            f"The ROI model needs what a run of layout “{active}” measures (theft recall, zone "
            "accuracy, tags located, count accuracy, false alarms). Run it here or in Run & "
            "playback."
        )
        if st.button(
            f"Run simulation ({st.session_state.duration:g} s simulated)", key="roi_run"
        ) and run_layouts(sc, {active: text}, "roi"):
            st.rerun()
        return
    roi = roi_result(text, inputs.model_dump_json())
    cases, m = roi["cases"], roi["measured"]
    base = cases["base"]
    st.subheader(f"Return on investment, layout “{active}”, over {inputs.horizon_months} months")
    res = reps.layout_result(active, found, inputs)
    cur = currency()
    c = st.columns(5)
    pb = res.interval("payback_months")
    npv = res.interval("npv")
    c[0].metric("payback", reps.fmt(pb.mean, "months"))
    c[0].caption(
        f"95 % CI {reps.fmt(pb.low, 'months')} to {reps.fmt(pb.high, 'months')}"
        if math.isfinite(pb.low)
        else ("never pays back within the horizon" if not math.isfinite(pb.mean) else "one seed")
    )
    c[1].metric(f"NPV ({cur})", reps.fmt(npv.mean, "money"))
    c[1].caption(
        f"95 % CI {reps.fmt(npv.low, 'money')} to {reps.fmt(npv.high, 'money')} over {npv.n} seeds"
        if math.isfinite(npv.low)
        else "one seed: no interval"
    )
    c[2].metric(f"capex ({cur})", f"{base['capex']:,.0f}")
    c[3].metric(f"net / month ({cur})", f"{base['net_per_month']:,.0f}")
    c[4].metric(f"TCO ({cur})", f"{base['tco']:,.0f}")
    money_notes([res])
    st.markdown("**NPV at the measured rates' 95 % intervals** (prices as typed)")
    st.dataframe(
        pd.DataFrame(report.npv_interval_rows(roi, cur)),
        hide_index=True,
        width="stretch",
        key="roi_npv_interval",
    )
    st.caption(
        "The same model on the seeds' mean measurements, with theft recall, false alarms and "
        "reviews moved to each end of their exact 95 % intervals (Clopper-Pearson, Poisson; "
        "the seeds' counts pooled). False alarms at the point: "
        f"{roi['npv_interval']['false_alarm_rate_shown']}"
        + (
            f"; NPV uses the design rate ({reps.DESIGN_FALSE_ALARMS:g}) instead"
            if res.money["false_alarms_from_design"]
            else ""
        )
        + "."
    )
    st.caption(
        f"Measured by the runs ({len(found)} seeds of {st.session_state.duration:g} s simulated, "
        "means): theft recall "
        f"{m['theft_recall']:.3f}"
        + (
            f" (exact 95 % interval {m['theft_recall_low']:.2f}-{m['theft_recall_high']:.2f})"
            if m["theft_recall_low"] is not None
            else " (no thefts injected: earns nothing)"
        )
        + f", zone accuracy {m['zone_accuracy']:.3f}, tags located {m['coverage']:.3f}, "
        f"count accuracy {m['count_accuracy']:.3f}, false alarms "
        f"{res.money['false_alarms'].text()} per day per 1,000 tags; "
        f"{m['tags']} tags, {m['gateways']} gateways."
    )
    horizon = inputs.horizon_months
    left, right = st.columns([3, 2])
    with left:
        st.markdown("**Best, base and worst case**")
        st.dataframe(
            pd.DataFrame(report.cases_rows(roi, cur, horizon)),
            hide_index=True,
            width="stretch",
            key="roi_cases",
        )
    with right:
        st.markdown("**Monthly, base case at full ramp**")
        st.dataframe(
            pd.DataFrame(report.monthly_rows(roi, cur)),
            hide_index=True,
            width="stretch",
            key="roi_items",
        )
        st.plotly_chart(
            figs.cumulative_cash(roi["cumulative_base"], base["payback_month"]),
            width="stretch",
            key="roi_cash",
        )
        st.download_button(
            f"Export the report of “{active}” (HTML)",
            layout_report(sc, active, res, roi),
            file_name=f"{sc.name}-{active}.html".replace(" ", "-"),
            mime="text/html",
            key="roi_export",
        )
    st.markdown(f"**Sensitivity: each input and measured metric -/+ {inputs.sensitivity_pct:g} %**")
    st.dataframe(
        pd.DataFrame(report.sensitivity_rows(roi, cur, horizon)),
        hide_index=True,
        width="stretch",
        height=360,
        key="roi_sensitivity",
    )


def layout_report(
    sc: Scenario, name: str, res: reps.LayoutResult | None, roi: dict[str, Any] | None
) -> str:
    """One layout's self-contained HTML report (planner/report.py)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        tool = version("tagtwin")
    except PackageNotFoundError:
        tool = "(not installed)"
    req = current_requirement()
    maps = maps_of(layout_text(sc, name, timed=False))
    layer = editor.layer_for(maps, "requirement (pass/fail)", req)
    assert layer is not None
    return report.layout_report_html(
        scenario_name=sc.name,
        layout=name,
        rows=book().layouts[name],
        site=site_data_of(st.session_state.source[1]),
        requirement=req,
        areas=area_report(maps, site(), req),
        requirement_layer=layer,
        result=res,
        roi=roi,
        currency=currency(),
        horizon=current_roi_inputs(sc).horizon_months,
        seeds=seeds(sc),
        duration_s=st.session_state.duration,
        tool_version=tool,
    )


def view_live(_sc: Scenario) -> None:
    c1, c2, c3 = st.columns([2, 1, 1])
    host = c1.text_input("broker host", "127.0.0.1", key="live_host")
    port = c2.number_input("port", 1, 65535, 1883, key="live_port")
    tls = c3.checkbox("TLS (mqtts)", key="live_tls", help="login and CA from $TAGTWIN_MQTT_CREDS (docs/security.md)")
    st.caption(
        f"Subscribes to what `tagtwin serve` publishes: `{backend.POSITIONS_TOPIC}` "
        f"(PositionBatch) and `{backend.EVENTS_TOPIC}` (events), docs/wire-format.md."
    )
    feed: backend.LiveFeed | None = st.session_state.get("feed")
    b1, b2 = st.columns(2)
    if b1.button("Connect", key="live_connect", disabled=feed is not None):
        feed = backend.LiveFeed()
        try:
            feed.connect(host, int(port), tls=tls)
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
    st.sidebar.number_input(
        "seeds per layout",
        min_value=1,
        max_value=10,
        value=reps.DEFAULT_SEEDS,
        key="n_seeds",
        help="every layout runs with the same seeds (common random numbers), in parallel; "
        "95 % intervals need 2 or more",
    )
    st.sidebar.selectbox("currency", CURRENCIES, key="currency")
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
