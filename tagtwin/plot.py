"""The floor-plan picture: walls, racks, zones, gateways, true and estimated positions."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib as mpl
import numpy as np

mpl.use("Agg")
import matplotlib.pyplot as plt
import shapely
from matplotlib.lines import Line2D
from matplotlib.patches import Circle, Patch, Polygon

from siteplan.zones import ZONE_COLOURS

if TYPE_CHECKING:
    from twin.run import SimulationRun

def plot_floorplan(run: SimulationRun, path: Path, at_t: float | None = None) -> Path:
    """Draw the site and, at time ``at_t`` (default: the last fix), every tag's true
    position, its estimate, and the 90 % radius for a few of them."""
    site = run.twin.site
    minx, miny, maxx, maxy = site.outline.bounds
    fig, ax = plt.subplots(figsize=(10, 10 * (maxy - miny + 4) / (maxx - minx + 4)), dpi=110)
    ax.add_patch(Polygon(np.asarray(site.outline.exterior.coords), closed=True, fill=False, lw=2.5, color="black"))
    for name, role, poly in zip(site.zones.names, site.zones.roles, site.zones.polygons, strict=True):
        colour = ZONE_COLOURS.get(role, "#f4f4f4")
        ax.add_patch(Polygon(np.asarray(poly.exterior.coords), closed=True, color=colour, alpha=0.8, lw=0))
        # Zone names in the zone's top-left corner, gateway labels beside their marker:
        # the two never sit on one another.
        zx0, _, _, zy1 = poly.bounds
        ax.text(zx0 + 0.3, zy1 - 0.3, name, ha="left", va="top", fontsize=8, color="#555555", style="italic")
    for rack in site.racks:
        ax.add_patch(Polygon(np.asarray(rack.exterior.coords), closed=True, color="#8c6d46", alpha=0.9))
    for wall in site.walls:
        xs, ys = np.asarray(shapely.get_coordinates(wall)).T
        ax.plot(xs, ys, color="black", lw=2)
    fixes = run.fixes
    if len(fixes):
        t = float(fixes["t"].max()) if at_t is None else at_t
        last = fixes[np.isclose(fixes["t"], t)]
        truth = run.twin.truth.position_at(last["device"], last["t"])
        ax.plot([truth[:, 0], last["x"]], [truth[:, 1], last["y"]], color="#999999", lw=0.6, zorder=3)
        ax.scatter(truth[:, 0], truth[:, 1], s=10, color="#2a9d8f", label="true position", zorder=4)
        ax.scatter(last["x"], last["y"], s=10, color="#e76f51", marker="x", label="estimate", zorder=4)
        for row in last[:: max(1, len(last) // 12)]:
            ax.add_patch(Circle((row["x"], row["y"]), float(row["r90"]), fill=False, ls="--", lw=0.6, color="#e76f51"))
    gw = run.twin.gateways
    ax.scatter(gw.xyz[:, 0], gw.xyz[:, 1], marker="^", s=90, color="#264653", label="gateway", zorder=5)
    for gid, (x, y, _) in zip(gw.ids, gw.xyz, strict=True):
        ax.annotate(gid, (x, y), textcoords="offset points", xytext=(6, -10), fontsize=7, zorder=6,
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8})
    m = run.metrics
    ax.set_title(f"{run.scenario.name}: median error {m['median_error_m']:.2f} m, p90 {m['p90_error_m']:.2f} m "
                 f"(dashed: 90 % radius)", fontsize=10)
    ax.set_xlim(minx - 1, maxx + 1)
    ax.set_ylim(miny - 1, maxy + 1)
    ax.set_aspect("equal")
    ax.set_xlabel("x (m)")
    ax.set_ylabel("y (m)")
    handles, _ = ax.get_legend_handles_labels()
    handles += [Patch(color="#8c6d46", label="rack"), Line2D([], [], color="black", lw=2, label="wall"),
                Line2D([], [], color="#e76f51", ls="--", lw=0.8, label="90 % radius (a sample)")]
    roles = dict.fromkeys(site.zones.roles)
    handles += [Patch(color=ZONE_COLOURS.get(r, "#f4f4f4"), label=f"zone: {r}") for r in roles]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=4, fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
    return path
