"""Plotly figures for the planner: the floor plan to scale, map overlays, playback, charts.

Plotly rather than matplotlib (tagtwin/plot.py) because planners hover over a gateway or a
tag to read its id, RSSI or error. Each figure is built from arrays in a handful of
traces (polygons joined with None breaks), never one trace per tag.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import plotly.graph_objects as go
import shapely

from siteplan.zones import ZONE_COLOURS

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from numpy.typing import NDArray

    from planner.backend import GatewayRow, RunView
    from siteplan.model import SiteModel

CIRCLE_POINTS = 24


def _joined(coords_list: Sequence[np.ndarray]) -> tuple[list[float | None], list[float | None]]:
    """Many polylines as one trace: coordinates separated by None breaks."""
    xs: list[float | None] = []
    ys: list[float | None] = []
    for c in coords_list:
        xs += [*c[:, 0].tolist(), None]
        ys += [*c[:, 1].tolist(), None]
    return xs, ys


def floorplan(
    site: SiteModel, rows: Sequence[GatewayRow], title: str = "", height: int = 520
) -> go.Figure:
    """Outline, zones, racks, walls and gateways, to scale (1 m is the same on both axes)."""
    fig = go.Figure()
    for role in dict.fromkeys(site.zones.roles):
        polys = [
            np.asarray(p.exterior.coords)
            for p, r in zip(site.zones.polygons, site.zones.roles, strict=True)
            if r == role
        ]
        xs, ys = _joined(polys)
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                fill="toself",
                mode="lines",
                line={"width": 0},
                fillcolor=ZONE_COLOURS.get(role, "#f4f4f4"),
                opacity=0.8,
                name=f"zone: {role}",
                hoverinfo="name",
                legendgroup="zones",
                showlegend=False,
            )
        )
    centroids = [p.centroid for p in site.zones.polygons]
    fig.add_trace(
        go.Scatter(
            x=[c.x for c in centroids],
            y=[c.y for c in centroids],
            mode="text",
            text=list(site.zones.names),
            textfont={"color": "#555555", "size": 11},
            showlegend=False,
            hoverinfo="skip",
        )
    )
    if site.racks:
        xs, ys = _joined([np.asarray(r.exterior.coords) for r in site.racks])
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                fill="toself",
                mode="lines",
                line={"width": 0.5, "color": "#5c4630"},
                fillcolor="#8c6d46",
                name="racks",
                hoverinfo="name",
            )
        )
    walls = [np.asarray(shapely.get_coordinates(w)) for w in site.walls]
    walls.append(np.asarray(site.outline.exterior.coords))
    xs, ys = _joined(walls)
    fig.add_trace(
        go.Scatter(
            x=xs,
            y=ys,
            mode="lines",
            line={"color": "black", "width": 3},
            name="walls",
            hoverinfo="name",
        )
    )
    if rows:
        fig.add_trace(
            go.Scatter(
                x=[r["x"] for r in rows],
                y=[r["y"] for r in rows],
                mode="markers+text",
                name="gateways",
                marker={
                    "symbol": "triangle-up",
                    "size": 13,
                    "color": "#264653",
                    "line": {"color": "white", "width": 1},
                },
                text=[r["id"] for r in rows],
                textposition="top right",
                textfont={"size": 9},
                customdata=[r["z"] for r in rows],
                hovertemplate="%{text}<br>x %{x:.1f} m, y %{y:.1f} m, z %{customdata:.1f} m"
                "<extra></extra>",
            )
        )
    minx, miny, maxx, maxy = site.outline.bounds
    fig.update_layout(
        title=title or None,
        height=height,
        margin={"l": 10, "r": 10, "t": 40 if title else 10, "b": 10},
        plot_bgcolor="white",
        legend={"orientation": "h", "y": -0.15, "yanchor": "top"},
        xaxis={
            "range": [minx - 1, maxx + 1],
            "title": "x (m)",
            "showgrid": False,
            "zeroline": False,
        },
        yaxis={
            "range": [miny - 1, maxy + 1],
            "title": "y (m)",
            "scaleanchor": "x",
            "scaleratio": 1,
            "showgrid": False,
            "zeroline": False,
        },
    )
    return fig


def _circles(
    x: np.ndarray, y: np.ndarray, r: np.ndarray
) -> tuple[list[float | None], list[float | None]]:
    ang = np.linspace(0, 2 * np.pi, CIRCLE_POINTS)
    cx = x[:, None] + r[:, None] * np.cos(ang)[None, :]
    cy = y[:, None] + r[:, None] * np.sin(ang)[None, :]
    nan = np.full((len(x), 1), np.nan)
    flat_x = np.hstack([cx, nan]).ravel()
    flat_y = np.hstack([cy, nan]).ravel()
    return (
        [None if np.isnan(v) else float(v) for v in flat_x],
        [None if np.isnan(v) else float(v) for v in flat_y],
    )


def add_frame(
    fig: go.Figure,
    frame: Mapping[str, np.ndarray],
    device_ids: Sequence[str],
    max_circles: int = 15,
    truth: bool = True,
) -> go.Figure:
    """True positions, estimates, the error between them, and 90 % radii for a sample.
    ``truth=False`` (the live view: no ground truth exists) draws estimates and radii only."""
    n = len(frame["x"])
    if n == 0:
        return fig
    ex, ey = frame["x"], frame["y"]
    names = [device_ids[int(d)] for d in frame["device"]]
    if not truth:
        _add_radii(fig, ex, ey, frame["r90"], max_circles)
        fig.add_trace(
            _estimate_markers(
                ex, ey, names, "%{text}<br>r90 %{customdata:.1f} m<extra></extra>", frame["r90"]
            )
        )
        return fig
    tx, ty = frame["true_x"], frame["true_y"]
    seg_x = np.column_stack([tx, ex, np.full(n, np.nan)]).ravel()
    seg_y = np.column_stack([ty, ey, np.full(n, np.nan)]).ravel()
    fig.add_trace(
        go.Scatter(
            x=[None if np.isnan(v) else v for v in seg_x],
            y=[None if np.isnan(v) else v for v in seg_y],
            mode="lines",
            line={"color": "#999999", "width": 0.7},
            name="error",
            hoverinfo="skip",
        )
    )
    _add_radii(fig, ex, ey, frame["r90"], max_circles)
    fig.add_trace(_true_markers(tx, ty, names))
    fig.add_trace(
        _estimate_markers(
            ex,
            ey,
            names,
            "%{text}<br>error %{customdata[0]:.1f} m, r90 %{customdata[1]:.1f} m<extra></extra>",
            np.column_stack([frame["error_m"], frame["r90"]]),
        )
    )
    return fig


def _true_markers(x: NDArray[np.floating], y: NDArray[np.floating], names: list[str]) -> go.Scatter:
    """True positions: green dots, as in every view that shows the truth."""
    return go.Scatter(
        x=x,
        y=y,
        mode="markers",
        name="true",
        marker={"size": 6, "color": "#2a9d8f"},
        text=names,
        hovertemplate="%{text} (true)<extra></extra>",
    )


def _estimate_markers(
    x: NDArray[np.floating], y: NDArray[np.floating], names: list[str], hover: str, customdata: object = None
) -> go.Scatter:
    """Estimates: orange crosses; ``hover`` and ``customdata`` say what a view adds."""
    return go.Scatter(
        x=x,
        y=y,
        mode="markers",
        name="estimate",
        marker={"size": 7, "color": "#e76f51", "symbol": "x"},
        text=names,
        customdata=customdata,
        hovertemplate=hover,
    )


def _add_radii(
    fig: go.Figure, x: np.ndarray, y: np.ndarray, r90: np.ndarray, max_circles: int
) -> None:
    step = max(1, len(x) // max_circles)
    cx, cy = _circles(x[::step], y[::step], r90[::step])
    fig.add_trace(
        go.Scatter(
            x=cx,
            y=cy,
            mode="lines",
            line={"color": "#e76f51", "width": 0.8, "dash": "dot"},
            name="90 % radius",
            hoverinfo="skip",
        )
    )


def add_track(fig: go.Figure, track: Mapping[str, np.ndarray], name: str) -> go.Figure:
    """One tag's true path and estimated path over the run."""
    fig.add_trace(
        go.Scatter(
            x=track["true_x"],
            y=track["true_y"],
            mode="lines",
            name=f"{name} true path",
            line={"color": "#6a00a8", "width": 4},  # not the green of every tag's truth
        )
    )
    fig.add_trace(
        go.Scatter(
            x=track["x"],
            y=track["y"],
            mode="lines+markers",
            name=f"{name} estimated",
            line={"color": "#111111", "width": 1.5, "dash": "dot"},  # nor the estimates' orange
            marker={"size": 5, "color": "#111111"},
        )
    )
    return fig


def cost_accuracy(rows: Sequence[Mapping[str, Any]], front: Sequence[str]) -> go.Figure:
    """Capex (the ROI model's) against median and p90 error, one point per layout, with
    payback and NPV on hover; the Pareto front (cost vs p90 error) is starred."""
    fig = go.Figure()
    cost = [r["cost"] for r in rows]
    names = [str(r["layout"]) for r in rows]
    for key, label, colour in (
        ("median_error_m", "median error", "#264653"),
        ("p90_error_m", "p90 error", "#e76f51"),
    ):
        fig.add_trace(
            go.Scatter(
                x=cost,
                y=[r[key] for r in rows],
                mode="markers+text",
                name=label,
                text=names,
                customdata=[
                    [
                        f"{r['payback_months']:.1f} months"
                        if math.isfinite(r.get("payback_months", math.inf))
                        else "never",
                        r.get("npv", math.nan),
                    ]
                    for r in rows
                ],
                textposition="top center",
                marker={
                    "size": [16 if n in front else 10 for n in names],
                    "color": colour,
                    "symbol": ["star" if n in front else "circle" for n in names],
                },
                hovertemplate="%{text}<br>capex %{x:,.0f}<br>"
                + label
                + " %{y:.2f} m<br>payback %{customdata[0]}<br>NPV %{customdata[1]:,.0f}"
                + "<extra></extra>",
            )
        )
    fig.update_layout(
        height=380,
        xaxis_title="capex (ROI model: tags, gateways and installation, project)",
        yaxis_title="position error (m)",
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        title="cost vs accuracy (star: no other layout is cheaper and more accurate)",
    )
    return fig


def events_timeline(
    events: Sequence[Mapping[str, Any]], incidents: Sequence[Mapping[str, Any]] = ()
) -> go.Figure:
    """Raised events by rule over time, with injected incidents (if known) as vertical marks."""
    fig = go.Figure()
    rules = sorted({str(e.get("rule", "?")) for e in events})
    for rule in rules:
        evs = [e for e in events if str(e.get("rule", "?")) == rule]
        fig.add_trace(
            go.Scatter(
                x=[e.get("t") for e in evs],
                y=[rule] * len(evs),
                mode="markers",
                name=rule,
                text=[str(e.get("tag") or e.get("gateway") or e.get("device") or "") for e in evs],
                hovertemplate="%{text} at %{x:.0f} s<extra>" + rule + "</extra>",
            )
        )
    # Injected incidents as dotted lines (one shape each; a layout list, not vline calls,
    # which re-validate the figure per line).
    fig.update_layout(
        shapes=[
            {
                "type": "line",
                "xref": "x",
                "yref": "paper",
                "x0": float(inc.get("t", 0.0)),
                "x1": float(inc.get("t", 0.0)),
                "y0": 0,
                "y1": 1,
                "line": {"color": "#999999", "dash": "dot", "width": 1},
            }
            for inc in incidents
        ]
    )
    fig.update_layout(
        height=300, xaxis_title="time (s)", margin={"l": 10, "r": 10, "t": 20, "b": 10}
    )
    return fig


def playback_animation(
    site: SiteModel,
    rows: Sequence[GatewayRow],
    view: RunView,
    max_frames: int = 60,
    max_tags: int = 400,
) -> go.Figure:
    """The run as a plotly animation (Play/Pause and a time slider in the browser): true
    positions and estimates of up to ``max_tags`` tags at up to ``max_frames`` fix times.
    Frames restyle only the two moving traces, so the plan is sent once."""
    fig = floorplan(site, rows, f"{view.name}: playback", height=620)
    times = view.times
    if len(times) == 0:
        return fig
    shown = times[np.linspace(0, len(times) - 1, min(max_frames, len(times))).round().astype(int)]
    tags = np.unique(view.fixes["device"])
    if len(tags) > max_tags:
        tags = tags[np.linspace(0, len(tags) - 1, max_tags).round().astype(int)]

    def points(t: float) -> tuple[go.Scatter, go.Scatter]:
        f = view.frame(float(t))
        keep = np.isin(f["device"].astype(int), tags)
        names = [view.device_ids[int(d)] for d in f["device"][keep]]
        true = _true_markers(f["true_x"][keep], f["true_y"][keep], names)
        est = _estimate_markers(
            f["x"][keep], f["y"][keep], names, "%{text} (estimate)<extra></extra>"
        )
        return true, est

    first = len(fig.data)
    fig.add_traces(list(points(shown[0])))
    fig.frames = [
        go.Frame(data=list(points(t)), traces=[first, first + 1], name=f"{t:g}") for t in shown
    ]
    step_args = {
        "mode": "immediate",
        "frame": {"duration": 0, "redraw": False},
        "transition": {"duration": 0},
    }
    fig.update_layout(
        legend={"orientation": "v", "x": 1.02, "y": 1.0, "yanchor": "top"},
        margin={"l": 10, "r": 10, "t": 40, "b": 120},
        xaxis={"title": None},
        updatemenus=[
            {
                "type": "buttons",
                "direction": "left",
                "x": 0.0,
                "y": -0.1,
                "xanchor": "left",
                "yanchor": "top",
                "buttons": [
                    {
                        "label": "Play",
                        "method": "animate",
                        "args": [
                            None,
                            {
                                "frame": {"duration": 150, "redraw": False},  # ~6.7 frames/s
                                "fromcurrent": True,
                                "transition": {"duration": 0},
                            },
                        ],
                    },
                    {"label": "Pause", "method": "animate", "args": [[None], step_args]},
                ],
            }
        ],
        sliders=[
            {
                "x": 0.2,
                "len": 0.8,
                "y": -0.08,
                "yanchor": "top",
                "currentvalue": {"prefix": "t = ", "suffix": " s"},
                "pad": {"t": 0},
                "steps": [
                    {"label": f"{t:g}", "method": "animate", "args": [[f"{t:g}"], step_args]}
                    for t in shown
                ],
            }
        ],
    )
    return fig


def cumulative_cash(cumulative: Sequence[float], payback_month: int | None) -> go.Figure:
    """The ROI model's base case: cumulative cash by month (month 0 = -capex), payback marked."""
    months = list(range(len(cumulative)))
    fig = go.Figure(
        go.Scatter(
            x=months,
            y=list(cumulative),
            mode="lines",
            name="cumulative cash",
            line={"color": "#264653"},
            hovertemplate="month %{x}: %{y:,.0f}<extra></extra>",
        )
    )
    fig.add_hline(y=0, line={"color": "#999999", "width": 1})
    if payback_month is not None:
        fig.add_trace(
            go.Scatter(
                x=[payback_month],
                y=[cumulative[payback_month]],
                mode="markers+text",
                text=[f"payback, month {payback_month}"],
                textposition="bottom right",
                marker={"size": 10, "color": "#e76f51"},
                name="payback",
            )
        )
    fig.update_layout(
        height=280,
        showlegend=False,
        xaxis_title="month",
        yaxis_title="cumulative cash (base case)",
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        title="cumulative cash",
    )
    return fig
