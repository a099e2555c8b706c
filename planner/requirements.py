"""What "good" means for a layout, set by the planner, and where a layout meets it.

A cell of the floor meets the requirement when at least ``min_gateways`` gateways reach
it at ``at_dbm`` or better (mean link budget, the coverage maps' model) and the
Cramér-Rao bound there is at most ``crb_max_m``. An area (the whole floor or one zone)
meets it when at least ``min_share`` of its cells do and the 90th percentile of its
bound is at most ``crb_p90_m``: the figures planners quote ("3 gateways at -90 dBm",
"CRB p90 at most 2 m").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from planner.backend import CoverageMaps
    from siteplan.model import SiteModel

WHOLE_FLOOR = "whole floor"


@dataclass(frozen=True)
class Requirement:
    min_gateways: int = 3
    at_dbm: float = -90.0
    crb_max_m: float = 5.0  # per cell
    crb_p90_m: float = 6.0  # per area
    min_share: float = 0.9  # of an area's cells that must meet the per-cell test
    scope: tuple[str, ...] = (WHOLE_FLOOR,)  # the whole floor and/or zone names

    def text(self) -> str:
        return (
            f"{self.min_gateways}+ gateways at {self.at_dbm:g} dBm or better and CRB ≤ "
            f"{self.crb_max_m:g} m in ≥ {self.min_share:.0%} of the area; "
            f"CRB p90 ≤ {self.crb_p90_m:g} m"
        )


def gateways_at(maps: CoverageMaps, at_dbm: float) -> NDArray[np.float64]:
    """Per cell, how many gateways reach it at ``at_dbm`` or better (NaN outside)."""
    n = (maps.link_dbm >= at_dbm).sum(axis=1).astype(float).reshape(maps.inside.shape)
    return np.where(maps.inside, n, np.nan)


def cell_pass(maps: CoverageMaps, req: Requirement) -> NDArray[np.bool_]:
    """(ny, nx): the per-cell test (False outside the site)."""
    n = gateways_at(maps, req.at_dbm)
    crb = np.nan_to_num(maps.crb_m, nan=np.inf, posinf=np.inf)
    return maps.inside & (np.nan_to_num(n) >= req.min_gateways) & (crb <= req.crb_max_m)


def zone_of_cells(maps: CoverageMaps, site: SiteModel) -> NDArray[np.int32]:
    xs, ys = np.meshgrid(maps.xs(), maps.ys())
    return site.zones.assign(xs.ravel(), ys.ravel()).reshape(maps.inside.shape)


def area_report(maps: CoverageMaps, site: SiteModel, req: Requirement) -> list[dict[str, Any]]:
    """One row per area in scope (and every zone, so the planner sees where it fails):
    share of cells meeting the per-cell test, share with enough gateways, CRB p90, verdict."""
    ok = cell_pass(maps, req)
    n = gateways_at(maps, req.at_dbm)
    zones = zone_of_cells(maps, site)
    areas: list[tuple[str, NDArray[np.bool_]]] = [(WHOLE_FLOOR, maps.inside)]
    areas += [(name, maps.inside & (zones == i)) for i, name in enumerate(site.zones.names)]
    rows = []
    for name, mask in areas:
        cells = int(mask.sum())
        if cells == 0:
            continue
        crb = maps.crb_m[mask]
        p90 = float(np.quantile(np.nan_to_num(crb, nan=np.inf, posinf=np.inf), 0.9, method="higher"))
        share = float(ok[mask].mean())
        passed = share >= req.min_share and p90 <= req.crb_p90_m
        rows.append(
            {
                "area": name + (" *" if name in req.scope else ""),
                "meets per cell": share,
                f"{req.min_gateways}+ at {req.at_dbm:g} dBm": float((n[mask] >= req.min_gateways).mean()),
                "CRB p90 (m)": p90 if math.isfinite(p90) else math.inf,
                "verdict": "meets" if passed else "fails",
            }
        )
    return rows


def layout_meets(rows: list[dict[str, Any]], req: Requirement) -> bool:
    """True when every area in scope meets the requirement."""
    scoped = [r for r in rows if r["area"].removesuffix(" *") in req.scope]
    return bool(scoped) and all(r["verdict"] == "meets" for r in scoped)

