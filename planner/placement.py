"""Auto-placement: gateways chosen from candidate mounting points by the fast model.

Candidates are where gateways can really be mounted: along the outer walls (inset from
the outline), along both faces of the interior walls, and at the ends of rack rows, at
the scenario's default mounting height. Two searches, both on the coverage maps' model
(mean link budget with walls and racks, the Cramér-Rao bound of Patwari et al. 2003):

- fewest gateways meeting the requirement: greedy forward selection (each step adds the
  candidate that raises the share of cells meeting the per-cell test most), then
  backward elimination (drop any gateway the layout can do without);
- best layout for N gateways: greedy to N, then single swaps while one improves the score.

The bound's Fisher information is additive over gateways, so each candidate's per-cell
contribution is computed once and a step evaluates every candidate in one numpy pass.
The result is a layout the planner edits like any other, and verifies with twin runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import shapely

from planner.backend import link_budget, map_grid, maps_from_links
from planner.requirements import Requirement, area_report, layout_meets
from radio_models.crb import MIN_DISTANCE_M
from radio_models.pathloss import effective_exponent

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from planner.backend import CoverageMaps
    from planner.layouts import GatewayRow
    from siteplan.model import SiteModel
    from twin.scenario import Scenario

WALL_INSET_M = 0.5
RACK_END_OFFSET_M = 0.6
MAX_GATEWAYS = 60
SEARCH_CELL_M = 1.0  # the search's grid; the result is then checked on the maps' grid


def candidate_points(
    site: SiteModel, spacing_m: float = 4.0, ceiling_m: float | None = 8.0
) -> NDArray[np.float64]:
    """(n, 2) mounting points: outer walls, both faces of interior walls, rack-row ends,
    and (``ceiling_m`` apart, None for none) a grid of ceiling or truss mounts over the
    free floor."""
    pts: list[tuple[float, float]] = []
    if ceiling_m:
        minx, miny, maxx, maxy = site.outline.bounds
        gx, gy = np.meshgrid(
            np.arange(minx + ceiling_m / 2, maxx, ceiling_m), np.arange(miny + ceiling_m / 2, maxy, ceiling_m)
        )
        pts += list(zip(gx.ravel().tolist(), gy.ravel().tolist(), strict=True))
    inner = site.outline.buffer(-WALL_INSET_M)
    rings = [inner.exterior] if isinstance(inner, shapely.Polygon) else [g.exterior for g in inner.geoms]
    for ring in rings:
        n = max(4, int(ring.length // spacing_m))
        pts += [(p.x, p.y) for p in (ring.interpolate(i / n, normalized=True) for i in range(n))]
    for wall in site.walls:
        for side in (WALL_INSET_M, -WALL_INSET_M):
            off = wall.offset_curve(side)
            n = max(1, int(off.length // spacing_m))
            pts += [(p.x, p.y) for p in (off.interpolate((i + 0.5) / n, normalized=True) for i in range(n))]
    for rack in site.racks:
        box = np.asarray(rack.minimum_rotated_rectangle.exterior.coords)[:4]
        sides = [(box[i], box[(i + 1) % 4]) for i in range(4)]
        centre = np.asarray(rack.centroid.coords[0])
        for a, b in sorted(sides, key=lambda s: float(np.hypot(*(s[1] - s[0]))))[:2]:  # short ends
            mid = (a + b) / 2
            out = (mid - centre) / max(float(np.hypot(*(mid - centre))), 1e-9)
            p = mid + out * RACK_END_OFFSET_M
            pts.append((float(p[0]), float(p[1])))
    arr = np.asarray(pts, dtype=float)
    ok = shapely.contains_xy(site.outline, arr[:, 0], arr[:, 1]) & ~shapely.intersects_xy(
        shapely.union_all(site.racks) if site.racks else shapely.Polygon(), arr[:, 0], arr[:, 1]
    )
    ok &= ~shapely.intersects_xy(site.blocked, arr[:, 0], arr[:, 1])  # not on a rack or wall
    arr = np.round(arr[ok], 2)
    _, first = np.unique(np.round(arr / 0.5), axis=0, return_index=True)  # merge near-duplicates
    return arr[np.sort(first)]


@dataclass
class Search:
    """Every candidate's link budget and Fisher information on the search grid, once."""

    scenario: Scenario
    site: SiteModel
    xyz: NDArray[np.float64]  # (candidates, 3)
    req: Requirement
    cell_m: float = SEARCH_CELL_M

    def __post_init__(self) -> None:
        from twin.sim import path_loss_model

        sc = self.scenario
        self.grid, inside = map_grid(sc, self.site, self.cell_m)
        self.inside = inside
        self.rssi = link_budget(sc, self.site, self.grid, self.xyz)[inside]  # (cells, cand)
        self.sensitivity = np.full(len(self.xyz), sc.gateways.defaults.sensitivity_dbm)
        heard = self.rssi >= self.sensitivity[None, :]
        self.strong = self.rssi >= self.req.at_dbm
        centres = self.grid.centres()[inside]
        diff = np.column_stack([centres, np.full(len(centres), sc.site.tag_height_m)])[:, None, :] - self.xyz[None]
        d2 = np.maximum(np.einsum("ijk,ijk->ij", diff, diff), MIN_DISTANCE_M**2)
        slope = 10.0 * effective_exponent(path_loss_model(sc))
        b2 = (slope / (max(sc.radio.shadowing_sigma_db, 0.5) * np.log(10.0))) ** 2
        w = b2 / (d2 * d2) * heard
        dx, dy = diff[..., 0], diff[..., 1]
        self.f11, self.f22, self.f12 = w * dx * dx, w * dy * dy, w * dx * dy

    def score(self, chosen: list[int]) -> NDArray[np.float64]:
        """The score of ``chosen`` plus each candidate (one value per candidate): share of
        cells meeting the per-cell test, then (to break ties early on, when no cell has
        enough gateways yet) how close the cells come to the count and the bound."""
        base = np.asarray(chosen, dtype=int)
        f11 = self.f11[:, base].sum(axis=1)[:, None] + self.f11
        f22 = self.f22[:, base].sum(axis=1)[:, None] + self.f22
        f12 = self.f12[:, base].sum(axis=1)[:, None] + self.f12
        det = f11 * f22 - f12 * f12
        with np.errstate(divide="ignore", invalid="ignore"):
            crb = np.where(det > 1e-12 * np.maximum(f11 * f22, 1e-300), np.sqrt(np.abs((f11 + f22) / det)), np.inf)
        n = self.strong[:, base].sum(axis=1)[:, None] + self.strong
        ok = (n >= self.req.min_gateways) & (crb <= self.req.crb_max_m)
        near = np.minimum(n, self.req.min_gateways) / self.req.min_gateways
        closeness = self.req.crb_max_m / np.maximum(np.minimum(crb, 1e3), self.req.crb_max_m)
        return np.asarray(ok.mean(axis=0) + 0.05 * near.mean(axis=0) + 0.01 * closeness.mean(axis=0))

    def score_of(self, chosen: list[int]) -> float:
        if not chosen:
            return 0.0
        return float(self.score(chosen[:-1])[chosen[-1]])

    def meets(self, chosen: list[int]) -> bool:
        """The exact test: the requirement on the maps' own grid, every area in scope."""
        maps = self.maps(chosen)
        return layout_meets(area_report(maps, self.site, self.req), self.req)

    def maps(self, chosen: list[int]) -> CoverageMaps:
        grid, inside = map_grid(self.scenario, self.site)
        xyz = self.xyz[chosen]
        return maps_from_links(
            self.scenario, grid, inside, xyz, link_budget(self.scenario, self.site, grid, xyz), self.sensitivity[chosen]
        )

    def rows(self, chosen: list[int], prefix: str = "auto") -> list[GatewayRow]:
        return [
            {"id": f"{prefix}-{i + 1:02d}", "x": float(x), "y": float(y), "z": float(z)}
            for i, (x, y, z) in enumerate(self.xyz[sorted(chosen)])
        ]


def search_for(
    scenario: Scenario,
    site: SiteModel,
    req: Requirement,
    spacing_m: float = 4.0,
    ceiling_m: float | None = 8.0,
) -> Search:
    pts = candidate_points(site, spacing_m, ceiling_m)
    z = np.full(len(pts), scenario.gateways.defaults.z_m)
    return Search(scenario, site, np.column_stack([pts, z]), req)


def _greedy(search: Search, chosen: list[int], until: int) -> list[int]:
    chosen = list(chosen)
    while len(chosen) < until:
        s = search.score(chosen)
        s[chosen] = -math.inf
        chosen.append(int(np.argmax(s)))
    return chosen


@dataclass
class Placement:
    rows: list[GatewayRow]
    meets: bool
    candidates: int
    note: str


def fewest_meeting(search: Search, max_gateways: int = MAX_GATEWAYS) -> Placement:
    """Add the best candidate until the requirement is met (exact test), then drop every
    gateway it is still met without."""
    chosen: list[int] = []
    while len(chosen) < min(max_gateways, len(search.xyz)):
        chosen = _greedy(search, chosen, len(chosen) + 1)
        if len(chosen) >= search.req.min_gateways and search.meets(chosen):
            break
    else:
        return Placement(
            search.rows(chosen), False, len(search.xyz),
            f"not met with {len(chosen)} gateways from {len(search.xyz)} candidates; the best found is shown",
        )
    for g in sorted(chosen, key=lambda c: search.score_of([o for o in chosen if o != c])):
        trial = [o for o in chosen if o != g]
        if len(trial) >= search.req.min_gateways and search.meets(trial):
            chosen = trial
    return Placement(
        search.rows(chosen), True, len(search.xyz),
        f"{len(chosen)} gateways meet the requirement (from {len(search.xyz)} candidate mounting points)",
    )


def best_for(search: Search, n: int, max_swaps: int = 200) -> Placement:
    """The best score found with exactly ``n`` gateways: greedy, then improving swaps."""
    n = max(1, min(n, len(search.xyz)))
    chosen = _greedy(search, [], n)
    best = search.score_of(chosen)
    swaps = 0
    improved = True
    while improved and swaps < max_swaps:
        improved = False
        for i in range(n):
            rest = chosen[:i] + chosen[i + 1 :]
            s = search.score(rest)
            s[rest] = -math.inf
            j = int(np.argmax(s))
            if s[j] > best + 1e-9 and j != chosen[i]:
                chosen, best, improved = [*rest, j], float(s[j]), True
                swaps += 1
    met = search.meets(chosen)
    return Placement(
        search.rows(chosen), met, len(search.xyz),
        f"best {n}-gateway layout found ({swaps} improving swaps after the greedy start); "
        + ("it meets the requirement" if met else "it does not meet the requirement"),
    )
