"""Zones and geofences: zone_enter / zone_exit and misplaced, and the zone-probability
region (:class:`ZoneRegion`) that misplacement and exit evidence both use.

Transitions, per tag:

* zone: ``cand`` counts consecutive fixes in one zone; after ``confirm_fixes`` the zone
  becomes ``conf`` (zone_exit of the old, zone_enter of the new; the dwell clock restarts).
* misplaced: while a tag moves, ``misp_entry`` keeps the largest P(forbidden zone | fix)
  (the fix's Gaussian, renormalized to the site outline) of its recent fixes, fading, and
  ``misp_door`` the largest P(within ``opening_reach_m`` of a doorway of a walled forbidden
  zone). At rest, P and P(doorway) are averaged over looks of ``look_s``; ``misp_run``
  counts looks in a row at or above the threshold (the class's, if the tag was seen going
  in: entry evidence, or with ``opening_tier`` opening evidence; else ``alone_threshold``),
  ``misp_run_door`` looks at or above ``opening_look_threshold`` whose P(doorway) is at or
  above ``opening_rest_threshold``, for a tag seen passing a doorway (it rests at the door
  it came through); armed -> alarm at ``looks`` (or ``opening_looks``) -> re-armed when the
  tag moves or a look falls below ``rearm``. The carry's evidence counts for
  ``entry_rest_s`` of rest only; for a class whose forbidden zones are all walled, seen
  going in reads the evidence ``walled_seen_going_in`` names.
"""

from __future__ import annotations

import math
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numba
import numpy as np
import shapely
from numpy.typing import NDArray

from engine.rules.core import FloatArray, IntArray, RuleCore
from engine.rules.events import Event
from siteplan.zones import MIXED_CELL, NO_ZONE, Grid, PointLookup, cell_state

if TYPE_CHECKING:
    from collections.abc import Sequence

# -2 ln(0.1): r90 of a circular 2-D Gaussian is sigma * sqrt(CHI2_2DOF_90).
CHI2_2DOF_90 = -2.0 * math.log(0.1)
MIN_SIGMA_M = 0.5
R90_PER_SIGMA = math.sqrt(CHI2_2DOF_90)
MISPLACED_POINTS = 64  # quadrature points for P(forbidden zone): resolution 1/64
REST_SETTLE_S = 2.0  # sightings this soon after a tag's last motion are not yet its rest


def _gauss_points(n: int = 32) -> FloatArray:
    """Fixed 2-D standard-normal points (Box-Muller on a Halton sequence): deterministic
    quadrature for the probability mass of a position estimate inside a polygon."""

    def halton(i: NDArray[np.int64], base: int) -> FloatArray:
        f, r = np.ones(len(i)), np.zeros(len(i))
        i = i.copy()
        while (i > 0).any():
            f = f / base
            r = r + f * (i % base)
            i = i // base
        return r

    k = np.arange(1, n + 1)
    u, v = halton(k, 2), halton(k, 3)
    rad = np.sqrt(-2.0 * np.log(u))
    return np.column_stack([rad * np.cos(2 * np.pi * v), rad * np.sin(2 * np.pi * v)])


GAUSS_POINTS = _gauss_points()


class ZoneRegion:
    """A union of zone polygons and the probability that an uncertain fix lies in it.

    ``within`` (the site outline) is where a tag can be at all: the fix's Gaussian is
    renormalized to it, P(region | fix, inside the building) = mass in region and outline /
    mass in outline, so a room in a corner of the building is not diluted by probability
    mass beyond its outer walls. ``points``: how many quadrature points (resolution 1/n).
    """

    def __init__(
        self,
        polygons: Sequence[shapely.Polygon],
        within: shapely.Polygon | None = None,
        points: int = 32,
    ) -> None:
        self.geom = shapely.union_all(list(polygons)) if polygons else shapely.Polygon()
        shapely.prepare(self.geom)
        self.within = within
        if within is not None:
            shapely.prepare(within)
        self.points = GAUSS_POINTS if points == len(GAUSS_POINTS) else _gauss_points(points)
        self.bounds = (
            self.geom.bounds if not self.geom.is_empty else (np.inf, np.inf, -np.inf, -np.inf)
        )
        # Every quadrature point lies within sigma * reach of the fix (one part in 1e9
        # more covers the rounding of placing it).
        self.reach = float(np.hypot(self.points[:, 0], self.points[:, 1]).max()) * (1 + 1e-9)

    @cached_property
    def _inside(self) -> PointLookup:
        return PointLookup(self.geom)

    @cached_property
    def _feasible(self) -> PointLookup | None:
        return None if self.within is None else PointLookup(self.within)

    def probability(self, x: FloatArray, y: FloatArray, r90: FloatArray) -> FloatArray:
        """P(true position inside) for Gaussian estimates with the given 90 % radius
        (conditioned on lying within the outline, if there is one).

        Fixes farther than 4 sigma from the region's bounding box get 0 without a test.
        """
        return self._probability(x, y, r90, screen=True)

    def _probability(self, x: FloatArray, y: FloatArray, r90: FloatArray, *, screen: bool) -> FloatArray:
        """:meth:`probability`; ``screen=False`` skips the point screen and the compiled pass
        (the tests' oracle)."""
        out = np.zeros(len(x))
        if self.geom.is_empty or len(x) == 0:
            return out
        if screen:
            # One compiled pass settles every fix whose quadrature points all fall in cells of
            # the lookup grids that no edge crosses; the rest (points by an edge) go to shapely.
            inside, feasible = self._inside, self._feasible
            edge = _gauss_mass(
                np.ascontiguousarray(x, dtype=float), np.ascontiguousarray(y, dtype=float),
                np.ascontiguousarray(r90, dtype=float), R90_PER_SIGMA, MIN_SIGMA_M,
                np.ascontiguousarray(self.points, dtype=float), np.array(self.bounds, dtype=float), self.reach,
                inside.tol, inside.grid, feasible.grid if feasible is not None else inside.grid,
                feasible is not None, out)
            near = np.flatnonzero(edge)
            if len(near):
                sigma = np.maximum(np.nan_to_num(r90[near], nan=10.0) / R90_PER_SIGMA, MIN_SIGMA_M)
                out[near] = self._point_mass(x[near], y[near], sigma)
            return out
        sigma = np.maximum(np.nan_to_num(r90, nan=10.0) / R90_PER_SIGMA, MIN_SIGMA_M)
        minx, miny, maxx, maxy = self.bounds
        reach = 4.0 * sigma
        near = np.flatnonzero(
            (x > minx - reach) & (x < maxx + reach) & (y > miny - reach) & (y < maxy + reach)
        )
        if len(near) == 0:
            return out
        # A fix whose points all lie on one side of every boundary needs no point test:
        # wholly outside the region, P = 0; wholly inside it (and the outline), P = 1.
        radius = sigma[near] * self.reach + self._inside.tol
        side = self._inside.disc_side(x[near], y[near], radius)
        whole = side == 1
        if self._feasible is not None:
            whole &= self._feasible.disc_side(x[near], y[near], radius) == 1
        out[near[whole]] = 1.0
        near = near[(side != 0) & ~whole]
        if len(near):
            out[near] = self._point_mass(x[near], y[near], sigma[near])
        return out

    def _point_mass(self, x: FloatArray, y: FloatArray, sigma: FloatArray) -> FloatArray:
        """The share of each fix's quadrature points inside (of those within the outline),
        every point tested."""
        gp = self.points
        px = (x[:, None] + sigma[:, None] * gp[None, :, 0]).ravel()
        py = (y[:, None] + sigma[:, None] * gp[None, :, 1]).ravel()
        inside = self._inside(px, py).reshape(len(x), -1)
        if self._feasible is None:
            return np.asarray(inside.mean(axis=1))
        feasible = self._feasible(px, py).reshape(len(x), -1)
        n_in = feasible.sum(axis=1)
        return np.where(n_in > 0, (inside & feasible).sum(axis=1) / np.maximum(n_in, 1), 0.0)


@numba.njit(cache=True, nogil=True)
def _gauss_mass(
    x: NDArray[np.float64], y: NDArray[np.float64], r90: NDArray[np.float64], r90_per_sigma: float,
    min_sigma: float, points: NDArray[np.float64], bounds: NDArray[np.float64], reach: float, tol: float,
    inside: Grid, feasible: Grid,
    has_feasible: bool, out: NDArray[np.float64],
) -> NDArray[np.bool_]:
    """:meth:`ZoneRegion._probability`'s screens, disc test and point test in one pass, the
    same numbers: ``out`` for each fix the grids settle; True for each fix with a point in a
    cell an edge crosses (left to shapely). The steps, per fix: 4 sigma from the region's
    box, P = 0; no quadrature point in the box (a margin past rounding), P = 0; the disc of
    its points clear of every edge, P = its cell's (and the outline's) side; else each
    point by its cell."""
    minx, miny, maxx, maxy = bounds[0], bounds[1], bounds[2], bounds[3]
    margin = 1e-6 * max(abs(minx), abs(miny), abs(maxx), abs(maxy), 1.0)
    edge = np.zeros(len(x), np.bool_)
    for i in range(len(x)):
        r = r90[i]
        if np.isnan(r):
            r = 10.0
        elif np.isinf(r):  # np.nan_to_num's largest finite float
            r = 1.7976931348623157e308 if r > 0 else -1.7976931348623157e308
        sigma = max(r / r90_per_sigma, min_sigma)
        far = 4.0 * sigma
        if not (x[i] > minx - far and x[i] < maxx + far and y[i] > miny - far and y[i] < maxy + far):
            continue
        reach_i = sigma * reach
        if (x[i] + reach_i < minx - margin or x[i] - reach_i > maxx + margin
                or y[i] + reach_i < miny - margin or y[i] - reach_i > maxy + margin):
            continue
        in_box = False
        for k in range(len(points)):
            px = x[i] + sigma * points[k, 0]
            py = y[i] + sigma * points[k, 1]
            if minx - margin <= px <= maxx + margin and miny - margin <= py <= maxy + margin:
                in_box = True
                break
        if not in_box:
            continue
        radius = sigma * reach + tol
        side = cell_state(x[i], y[i], True, radius, inside)
        if side == 0:
            continue
        if side == 1 and (not has_feasible or cell_state(x[i], y[i], True, radius, feasible) == 1):
            out[i] = 1.0
            continue
        n_in, n_feasible = 0, 0
        for k in range(len(points)):
            px = x[i] + sigma * points[k, 0]
            py = y[i] + sigma * points[k, 1]
            a = cell_state(px, py, False, 0.0, inside)
            b = cell_state(px, py, False, 0.0, feasible) if has_feasible else 1
            if MIXED_CELL in (a, b):
                edge[i] = True
                break
            if b == 1:
                n_feasible += 1
                n_in += a
        if edge[i]:
            continue
        if not has_feasible:
            out[i] = n_in / len(points)
        elif n_feasible > 0:
            out[i] = n_in / n_feasible
    return edge


WALL_TOLERANCE_M = 0.05  # a zone edge this close to a wall runs along it


def openings(
    zone: shapely.Polygon,
    walls: Sequence[shapely.LineString],
    outline: shapely.Polygon | None,
) -> shapely.Geometry | None:
    """The doorways of a walled zone: its boundary where it runs along neither an interior
    wall nor the building's outline. None for a zone with no interior wall on its boundary
    (open floor: entered from any side, so passing its edge says nothing more than being in
    it)."""
    if not walls:
        return None
    wall_band = shapely.union_all(list(walls)).buffer(WALL_TOLERANCE_M)
    if zone.boundary.intersection(wall_band).length <= 2 * WALL_TOLERANCE_M:
        return None
    solid = wall_band if outline is None else wall_band.union(
        outline.exterior.buffer(WALL_TOLERANCE_M)
    )
    gaps = zone.boundary.difference(solid)
    return None if gaps.is_empty else gaps


class GeofenceRules(RuleCore):
    """zone_enter, zone_exit, misplaced."""

    def _setup(self) -> None:
        super()._setup()
        cfg, zones = self.rules.misplaced, self.ctx.zones
        # Misplacement: one forbidden region per class (zones whose role is not allowed).
        # And the doorways of the walled ones, widened by the reach: a tag carried into a
        # walled room passes one, a tag set down outside its wall does not.
        self._forbidden: list[ZoneRegion] = []
        self._class_misp_walled: list[bool] = []
        self._doorways: list[ZoneRegion] = []
        outline, walls = self.ctx.site_outline, self.ctx.site_walls
        for name in self.ctx.class_names:
            allowed = set(cfg.allowed_roles.get(name, cfg.default_allowed_roles))
            banned = [
                p for p, r in zip(zones.polygons, zones.roles, strict=True) if r not in allowed
            ]
            self._forbidden.append(
                ZoneRegion(banned, within=outline, points=MISPLACED_POINTS)
            )
            found = [openings(p, walls, outline) for p in banned]
            gaps = [g for g in found if g is not None]
            # Every forbidden zone of the class walled: it is entered through a doorway only.
            self._class_misp_walled.append(bool(banned) and len(gaps) == len(banned))
            self._doorways.append(
                ZoneRegion(
                    [g.buffer(cfg.opening_reach_m) for g in gaps],
                    within=outline,
                    points=MISPLACED_POINTS,
                )
            )
        # The rest check: which of the radio map's cells each class may not rest in, and
        # per (tag, gateway) the sums of what was heard since the tag's last motion.
        rest = self.ctx.rest_map
        self._rest_cells: list[NDArray[np.bool_]] = []
        if rest is not None and cfg.rest_check and any(not r.geom.is_empty for r in self._forbidden):
            for region in self._forbidden:
                inside = shapely.contains_xy(region.geom, rest.cell_xy[:, 0], rest.cell_xy[:, 1])
                self._rest_cells.append(np.asarray(inside, dtype=bool))
        n_gw = len(self.ctx.gateway_ids)
        self.rest_sums = np.zeros((0, n_gw, 2))  # adverts heard, sum of their RSSI - channel offset
        self._class_misp_threshold = np.array(
            [cfg.threshold_by_class.get(n, cfg.threshold) for n in self.ctx.class_names],
            dtype=float,
        )

    def _grow(self, n: int) -> int:
        old = super()._grow(n)
        if self._rest_cells and n > len(self.rest_sums):
            grown = np.zeros((len(self.tags["rest_t"]), *self.rest_sums.shape[1:]))
            grown[: len(self.rest_sums)] = self.rest_sums
            self.rest_sums = grown
        return old

    def _rest_moved(self, d: IntArray, t: FloatArray) -> None:
        """Tags ``d`` moved at ``t``: a rest after it starts from nothing."""
        if not self._rest_cells or len(d) == 0:
            return
        rest_t = self.tags["rest_t"]
        later = t > rest_t[d]
        d, t = d[later], t[later]
        np.maximum.at(rest_t, d, t)
        self.rest_sums[d] = 0.0

    def _rest_observe(self, rows: NDArray[np.void], dev: IntArray) -> None:
        """Add still sightings heard after their tag's last motion (plus REST_SETTLE_S) to
        its per-gateway sums; a moving one restarts the tag's rest."""
        if not self._rest_cells:
            return
        t = rows["t"].astype(float)
        moving = rows["motion"] == 1
        self._rest_moved(dev[moving], t[moving])
        keep = ~moving & (t > self.tags["rest_t"][dev] + REST_SETTLE_S) & np.isfinite(rows["rssi"])
        if not keep.any():
            return
        d, g = dev[keep], rows["gateway"][keep].astype(np.int64)
        ch = rows["channel"][keep].astype(np.int64) - 37
        offsets = np.asarray(self.ctx.rest_map.channel_offset_db, dtype=float)  # type: ignore[union-attr]
        known = (ch >= 0) & (ch < len(offsets))
        value = rows["rssi"][keep].astype(float) - np.where(known, offsets[np.clip(ch, 0, len(offsets) - 1)], 0.0)
        flat = self.rest_sums.reshape(-1, 2)
        at = d * self.rest_sums.shape[1] + g
        np.add.at(flat[:, 0], at, 1.0)
        np.add.at(flat[:, 1], at, value)

    def _rest_probability(self, d: int, c: int) -> float:
        """P(tag ``d`` of class ``c`` rests in a forbidden zone) from its rest's link
        means; NaN when it has not been heard often enough since it stopped."""
        rest = self.ctx.rest_map
        if rest is None or not self._rest_cells or d >= len(self.rest_sums):
            return math.nan
        sums = self.rest_sums[d]
        sent = float(sums[:, 0].max())  # the best link hears (nearly) every advert
        if sent < self.rules.misplaced.rest_min_adverts:
            return math.nan
        gateways = np.arange(len(sums))
        mean, var = rest.link_means(sums[:, 0], sums[:, 1], np.full(len(sums), sent), gateways)
        w = rest.cell_posterior(mean, var, d)
        return float(w[self._rest_cells[c]].sum())

    def _zone_transitions(
        self, t: float, d: IntArray, z: NDArray[np.int32], events: list[Event]
    ) -> None:
        tg, rules = self.tags, self.rules
        same = tg["cand"][d] == z
        n = np.where(same, tg["cand_n"][d] + 1, 1)
        tg["cand"][d], tg["cand_n"][d] = z, n
        old = tg["conf"][d]
        change = (n >= rules.zone_transition.confirm_fixes) & (z != old)
        idx = np.flatnonzero(change)
        if len(idx):
            # Each changed tag's exit, then its entry: the same events as one _event call
            # each, with the tags' columns read once (the cold start makes one per tag).
            dj = d[idx]
            tf, version, names, tag_id = float(t), rules.version, self.ctx.zones.names, self._tag_id
            xs, ys, r90s = tg["x"][dj].tolist(), tg["y"][dj].tolist(), tg["r90"][dj].tolist()
            since = tg["zone_since"][dj].tolist()
            for k, (dk, zo, zn, nk) in enumerate(zip(dj.tolist(), old[idx].tolist(), z[idx].tolist(),
                                                     n[idx].tolist(), strict=True)):
                tag = tag_id(dk)
                if zo != NO_ZONE:
                    events.append(Event("zone_exit", tf, version, tag, xs[k], ys[k], r90s[k], names[zo],
                                        evidence={"stayed_s": t - since[k]}))
                if zn != NO_ZONE:
                    events.append(Event("zone_enter", tf, version, tag, xs[k], ys[k], r90s[k], names[zn],
                                        evidence={"fixes_in_zone": nk, "previous": self._zone_name(zo)}))
        dc = d[change]
        tg["conf"][dc], tg["zone_since"][dc], tg["dwell_done"][dc] = z[change], t, False

    def _misplaced(
        self,
        *,
        t: float,
        d: IntArray,
        cls: NDArray[np.int32],
        x: FloatArray,
        y: FloatArray,
        r90: FloatArray,
        motion: NDArray[np.int8],
        events: list[Event],
    ) -> None:
        cfg, tg = self.rules.misplaced, self.tags
        p = np.zeros(len(d))
        moving = motion == 1
        door = np.zeros(len(d))
        # P(doorway): of moving fixes (passing it), and with the tier of the still fixes of
        # tags seen passing one (resting at it); no other tag's looks read it.
        passed = cfg.opening_tier & (tg["misp_door"][d] >= cfg.opening_threshold)
        for c in np.unique(cls[cls >= 0]).tolist():
            sel = cls == c
            p[sel] = self._forbidden[c].probability(x[sel], y[sel], r90[sel])
            at = sel & (moving | passed)
            door[at] = self._doorways[c].probability(x[at], y[at], r90[at])
        # A carried tag is not misplaced (yet): its look and run start again, it re-arms;
        # its entry evidence is the largest P of its recent moving fixes, and its opening
        # evidence the largest P of being near a doorway of a walled forbidden zone (fading).
        dm, pm = d[moving], p[moving]
        last = tg["misp_move_t"][dm]
        gap = np.where(np.isfinite(last), t - np.nan_to_num(last), np.inf)
        fade = np.exp(-gap / cfg.entry_time_constant_s)
        tg["misp_entry"][dm] = np.maximum(pm, tg["misp_entry"][dm] * fade)
        fade_door = np.exp(-gap / cfg.opening_time_constant_s)
        tg["misp_door"][dm] = np.maximum(door[moving], tg["misp_door"][dm] * fade_door)
        tg["misp_move_t"][dm] = t
        self._rest_moved(dm, np.full(len(dm), t))
        tg["misp_sum"][dm], tg["misp_n"][dm], tg["misp_run"][dm] = 0.0, 0, 0
        tg["misp_run_door"][dm], tg["misp_rest_door"][dm] = 0, 0.0
        tg["misp_t"][dm], tg["misp_done"][dm] = t, False
        still, ps = d[~moving], p[~moving]
        fresh = ~np.isfinite(tg["misp_t"][still])
        tg["misp_t"][still[fresh]] = t
        tg["misp_sum"][still] += ps
        tg["misp_rest_door"][still] += door[~moving]
        tg["misp_n"][still] += 1
        dc = still[t - tg["misp_t"][still] >= cfg.look_s]
        if len(dc) == 0:
            return
        look = tg["misp_sum"][dc] / np.maximum(tg["misp_n"][dc], 1)
        look_door = tg["misp_rest_door"][dc] / np.maximum(tg["misp_n"][dc], 1)
        # Evidence of the carry arms the lower tiers for entry_rest_s of rest only: a tag at
        # rest for longer is judged as one never seen going in (a later carry re-arms).
        recent = t - tg["misp_move_t"][dc] <= cfg.entry_rest_s
        through_door = (
            cfg.opening_tier & (tg["misp_door"][dc] >= cfg.opening_threshold) & recent
        )
        inside = (tg["misp_entry"][dc] >= cfg.entry_threshold) & recent
        entered = inside | through_door
        if cfg.walled_seen_going_in != "either":
            # A walled room is entered through a doorway, and its doorway borders an aisle:
            # for a class whose forbidden zones are all walled, which evidence of the carry
            # makes a tag one seen going in (the doorway tier still judges one resting at
            # the door it passed).
            walled = np.array([*self._class_misp_walled, False])[tg["cls"][dc]]
            judged = {"both": inside & through_door, "entry": inside, "opening": through_door}
            entered = np.where(walled, judged[cfg.walled_seen_going_in], entered)
        threshold = np.where(
            entered,
            self._per_class(dc, self._class_misp_threshold, cfg.threshold),
            cfg.alone_threshold,
        )
        tg["misp_run"][dc] = np.where(look >= threshold, tg["misp_run"][dc] + 1, 0)
        weak = (
            through_door
            & (look >= cfg.opening_look_threshold)
            & (look_door >= cfg.opening_rest_threshold)
        )
        tg["misp_run_door"][dc] = np.where(weak, tg["misp_run_door"][dc] + 1, 0)
        tg["misp_done"][dc[look < cfg.rearm]] = False
        tg["misp_sum"][dc], tg["misp_n"][dc], tg["misp_t"][dc] = 0.0, 0, t
        tg["misp_rest_door"][dc] = 0.0
        strong = tg["misp_run"][dc] >= cfg.looks
        by_door = ~strong & (tg["misp_run_door"][dc] >= cfg.opening_looks)
        threshold = np.where(by_door, cfg.opening_look_threshold, threshold)
        fire = (strong | by_door) & ~tg["misp_done"][dc] & (tg["cls"][dc] >= 0)
        p_rest = np.full(len(dc), np.nan)
        if self._rest_cells:
            # A tag by a wall is not a tag in the room: where its rest has been heard
            # often enough, the rest's link means must place it in the forbidden zone too.
            for j in np.flatnonzero(fire).tolist():
                p_rest[j] = self._rest_probability(int(dc[j]), int(tg["cls"][dc[j]]))
            fire &= ~(p_rest < cfg.rest_threshold)  # NaN (too few adverts yet): the look decides
        for j in np.flatnonzero(fire).tolist():
            dj = int(dc[j])
            rest: dict[str, Any] = {"p_forbidden_rest": round(float(p_rest[j]), 4)} if np.isfinite(p_rest[j]) else {}
            events.append(
                self._event(
                    "misplaced",
                    t,
                    dj,
                    confidence=float(look[j]),
                    p_forbidden_look=float(look[j]),
                    entry_evidence=float(tg["misp_entry"][dj]),
                    opening_evidence=float(tg["misp_door"][dj]),
                    p_doorway_look=float(look_door[j]),
                    threshold=float(threshold[j]),
                    looks_in_a_row=int(
                        tg["misp_run_door"][dj] if by_door[j] else tg["misp_run"][dj]
                    ),
                    look_s=cfg.look_s,
                    tag_class=self.ctx.class_names[int(tg["cls"][dj])],
                    **rest,
                )
            )
        tg["misp_done"][dc[fire]] = True
