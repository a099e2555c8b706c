"""What the plan editor (plan_editor.js, an st.components.v2 component) is given: the site
in metres, the layout's gateways and, optionally, one coverage map as a discrete layer.

The browser draws and edits; this module only shapes plain JSON, so it is tested without
one. Maps use fixed, shared class boundaries (the same colours mean the same values in
every layout and in a comparison), discrete because planners decide on thresholds
(3 gateways, -90 dBm, 2 m), not on shades.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import shapely

from siteplan.zones import ZONE_COLOURS

if TYPE_CHECKING:
    from collections.abc import Sequence

    from numpy.typing import NDArray

    from planner.backend import CoverageMaps
    from planner.layouts import GatewayRow
    from planner.requirements import Requirement
    from siteplan.model import SiteModel

HERE = Path(__file__).resolve().parent
EDITOR_JS = HERE / "plan_editor.js"
EDITOR_CSS = HERE / "plan_editor.css"
EDITOR_HTML = '<div class="plan-editor"></div>'


@dataclass(frozen=True)
class Classes:
    """A discrete colour scale: values below edges[0] get colours[0], and so on."""

    label: str
    unit: str
    edges: tuple[float, ...]
    colours: tuple[str, ...]  # len(edges) + 1
    names: tuple[str, ...]  # legend text per class
    missing: str  # the colour where the value does not exist (no bound, no gateway)
    missing_name: str

    def index(self, values: NDArray[np.float64]) -> NDArray[np.int64]:
        idx = np.searchsorted(np.asarray(self.edges), values, side="right")
        return np.where(np.isfinite(values), idx, len(self.colours)).astype(np.int64)

    @property
    def palette(self) -> list[str]:
        return [*self.colours, self.missing]

    def legend(self) -> list[tuple[str, str]]:
        return [*zip(self.colours, self.names, strict=True), (self.missing, self.missing_name)]


# Shared scales (classes chosen at the thresholds planners quote).
CLASSES: dict[str, Classes] = {
    "gateways hearing": Classes(
        "gateways hearing",
        "",
        (1, 2, 3, 4, 5),
        ("#b2182b", "#ef8a62", "#fddbc7", "#92c5de", "#4393c3", "#2166ac"),
        ("0", "1", "2", "3", "4", "5+"),
        "#999999",
        "-",
    ),
    "best RSSI (dBm)": Classes(
        "best RSSI",
        "dBm",
        (-95, -90, -85, -80, -75, -70),
        ("#67001f", "#d6604d", "#fddbc7", "#e0f3f8", "#92c5de", "#4393c3", "#053061"),
        ("< -95", "-95…-90", "-90…-85", "-85…-80", "-80…-75", "-75…-70", "≥ -70"),
        "#999999",
        "no gateway",
    ),
    "Cramér-Rao bound (m)": Classes(
        "CRB",
        "m",
        (1, 2, 3, 5, 10),
        ("#1a9850", "#91cf60", "#d9ef8b", "#fee08b", "#fc8d59", "#d73027"),
        ("< 1", "1–2", "2–3", "3–5", "5–10", "≥ 10"),
        "#7f0000",
        "no bound (< 2 heard)",
    ),
    "requirement": Classes(
        "requirement",
        "",
        (0.5,),
        ("#d73027", "#1a9850"),
        ("not met", "met"),
        "#dddddd",
        "-",
    ),
    "difference": Classes(  # B - A of a lower-is-better metric: blue is better for B
        "B − A",
        "",
        (-2, -0.5, 0.5, 2),
        ("#2166ac", "#92c5de", "#f7f7f7", "#f4a582", "#b2182b"),
        ("much better in B", "better in B", "about equal", "worse in B", "much worse in B"),
        "#bbbbbb",
        "undefined",
    ),
}
# The measured error on the bound's classes, so the two maps compare cell by cell.
CLASSES["measured error RMSE (m)"] = replace(
    CLASSES["Cramér-Rao bound (m)"], label="error RMSE", missing="#dddddd", missing_name="no fix"
)


def site_data(site: SiteModel) -> dict[str, Any]:
    """The building, once per scenario: outline, zones (with a label point inside each),
    racks and walls, as coordinate lists in metres."""
    minx, miny, maxx, maxy = site.outline.bounds
    zones = []
    for name, role, poly in zip(
        site.zones.names, site.zones.roles, site.zones.polygons, strict=True
    ):
        zones.append(
            {
                "name": name,
                "role": role,
                "colour": ZONE_COLOURS.get(role, "#f4f4f4"),
                "coords": _coords(poly.exterior.coords),
                "labels": _label_spots(poly),
            }
        )
    return {
        "bounds": [minx, miny, maxx, maxy],
        "outline": _coords(site.outline.exterior.coords),
        "zones": zones,
        "racks": [_coords(r.exterior.coords) for r in site.racks],
        "walls": [_coords(shapely.get_coordinates(w)) for w in site.walls],
    }


def _label_spots(poly: shapely.Polygon) -> list[list[float]]:
    """Where a zone's name may go, best first: its centre, then inset near each corner of
    its box (the editor takes the first spot no gateway label covers)."""
    centre = poly.centroid if poly.contains(poly.centroid) else poly.representative_point()
    minx, miny, maxx, maxy = poly.bounds
    dx, dy = min(2.5, (maxx - minx) / 4), min(1.0, (maxy - miny) / 4)
    spots = [
        (centre.x, centre.y),
        (centre.x, maxy - dy),
        (centre.x, miny + dy),
        (minx + 2 * dx, maxy - dy),
        (maxx - 2 * dx, maxy - dy),
        (minx + 2 * dx, miny + dy),
        (maxx - 2 * dx, miny + dy),
    ]
    return [[round(x, 2), round(y, 2)] for x, y in spots if poly.contains(shapely.Point(x, y))] or [
        [round(centre.x, 2), round(centre.y, 2)]
    ]


def _coords(coords: Any) -> list[list[float]]:
    return [[round(float(x), 3), round(float(y), 3)] for x, y in np.asarray(coords)[:, :2]]


def map_layer(
    maps: CoverageMaps,
    values: NDArray[np.float64],
    classes: Classes,
    passed: NDArray[np.bool_] | None = None,
    digits: int = 1,
) -> dict[str, Any]:
    """One map as the editor's layer: a class index per cell (-1 outside the site), the
    shared palette, each cell's value for hover and which gateways hear it."""
    inside = maps.inside.ravel()
    flat = np.asarray(values, dtype=float).ravel()
    idx = np.where(inside, classes.index(flat), -1)
    shown = [
        None if not ok or not math.isfinite(v) else round(float(v), digits)
        for v, ok in zip(flat.tolist(), inside.tolist(), strict=True)
    ]
    # Per cell: the gateways that hear it, strongest first, with their mean RSSI.
    heard = []
    for row, rssi, ok in zip(maps.heard, maps.link_dbm, inside, strict=True):
        hearing = np.flatnonzero(row) if ok else np.zeros(0, dtype=int)
        hearing = hearing[np.argsort(-rssi[hearing])]
        heard.append([[int(i), round(float(rssi[i]))] for i in hearing])
    layer: dict[str, Any] = {
        "x0": maps.grid.x0,
        "y0": maps.grid.y0,
        "cell": maps.grid.cell_m,
        "nx": maps.grid.nx,
        "ny": maps.grid.ny,
        "index": idx.tolist(),
        "palette": classes.palette,
        "values": shown,
        "label": classes.label + (f" ({classes.unit})" if classes.unit else ""),
        "heard": heard,
        "legend": [[c, n] for c, n in classes.legend()],
    }
    if passed is not None:
        layer["pass"] = passed.ravel().astype(int).tolist()
    return layer


def editor_data(
    site: dict[str, Any],
    rows: Sequence[GatewayRow],
    *,
    editable: bool,
    ack: int,
    default_z: float,
    message: str = "",
    layer: dict[str, Any] | None = None,
    max_height: int = 640,
    instance: str = "plan",
) -> dict[str, Any]:
    """Everything one render of the editor needs. ``ack`` changes whenever Python has
    handled an edit (applied or refused), which is how the browser knows it may edit again."""
    return {
        **site,
        "gateways": [
            {"id": r["id"], "x": float(r["x"]), "y": float(r["y"]), "z": float(r["z"])}
            for r in rows
        ],
        "editable": editable,
        "ack": ack,
        "default_z": default_z,
        "message": message,
        "layer": layer,
        "max_height": max_height,
        "instance": instance,
    }


MAP_KINDS = (
    "requirement (pass/fail)",
    "gateways hearing at the requirement's dBm",
    "best RSSI (dBm)",
    "Cramér-Rao bound (m)",
    "measured error RMSE (m)",
)


def layer_for(
    maps: CoverageMaps,
    kind: str,
    req: Requirement,
    error_map: NDArray[np.float64] | None = None,
) -> dict[str, Any] | None:
    """The layer of one map kind, on its shared classes; the requirement's per-cell verdict
    rides along for hover on every kind."""
    from planner.requirements import cell_pass, gateways_at

    passed = cell_pass(maps, req)
    if kind == "requirement (pass/fail)":
        return map_layer(maps, passed.astype(float), CLASSES["requirement"], passed, digits=0)
    if kind == "gateways hearing at the requirement's dBm":
        classes = replace(CLASSES["gateways hearing"], label=f"gateways at ≥ {req.at_dbm:g} dBm")
        return map_layer(maps, gateways_at(maps, req.at_dbm), classes, passed, digits=0)
    if kind == "best RSSI (dBm)":
        return map_layer(maps, maps.best_rssi_dbm, CLASSES[kind], passed)
    if kind == "Cramér-Rao bound (m)":
        return map_layer(maps, maps.crb_m, CLASSES[kind], passed, digits=2)
    if kind == "measured error RMSE (m)" and error_map is not None:
        return map_layer(maps, error_map, CLASSES[kind], passed, digits=2)
    return None


DIFFERENCE_OF = {  # kind -> (value in layer A/B, lower is better)
    "gateways hearing at the requirement's dBm": True,
    "best RSSI (dBm)": False,
    "Cramér-Rao bound (m)": True,
}


def difference_layer(
    a: CoverageMaps, b: CoverageMaps, kind: str, req: Requirement
) -> dict[str, Any] | None:
    """B − A of one map (same grid: the same site), coloured so blue always means "better
    in B" whichever way the metric runs; hover shows the signed B − A value."""
    from planner.requirements import cell_pass, gateways_at

    if kind == "requirement (pass/fail)":
        va, vb = cell_pass(a, req).astype(float), cell_pass(b, req).astype(float)
        lower = False
    elif kind == "gateways hearing at the requirement's dBm":
        va, vb, lower = gateways_at(a, req.at_dbm), gateways_at(b, req.at_dbm), False
    elif kind == "best RSSI (dBm)":
        va, vb, lower = a.best_rssi_dbm, b.best_rssi_dbm, False
    elif kind == "Cramér-Rao bound (m)":
        cap = 20.0  # "no bound" counts as 20 m, so gaining or losing a bound still shows
        va, vb = np.minimum(np.nan_to_num(a.crb_m, nan=cap, posinf=cap), cap), np.minimum(
            np.nan_to_num(b.crb_m, nan=cap, posinf=cap), cap
        )
        lower = True
    else:
        return None
    diff = np.where(a.inside, vb - va, np.nan)
    oriented = diff if lower else -diff
    layer = map_layer(a, oriented, CLASSES["difference"], digits=2)
    layer["values"] = [
        None if v is None else round(-v if not lower else v, 2) for v in layer["values"]
    ]
    layer["label"] = f"B − A, {kind}"
    return layer
