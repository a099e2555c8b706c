"""Zones and geofences: zone_enter / zone_exit and misplaced, and the zone-probability
region (:class:`ZoneRegion`) that misplacement and exit evidence both use.

Transitions, per tag:

* zone: ``cand`` counts consecutive fixes in one zone; after ``confirm_fixes`` the zone
  becomes ``conf`` (zone_exit of the old, zone_enter of the new; the dwell clock restarts).
* misplaced: armed -> alarm when the smoothed P(forbidden zone) of a still tag crosses
  ``threshold`` -> re-armed below ``rearm``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import shapely
from numpy.typing import NDArray

from engine.rules.core import FloatArray, IntArray, RuleCore
from siteplan.zones import NO_ZONE

if TYPE_CHECKING:
    from collections.abc import Sequence

    from engine.rules.events import Event

# -2 ln(0.1): r90 of a circular 2-D Gaussian is sigma * sqrt(CHI2_2DOF_90).
CHI2_2DOF_90 = -2.0 * math.log(0.1)
MIN_SIGMA_M = 0.5


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
    """A union of zone polygons and the probability that an uncertain fix lies in it."""

    def __init__(self, polygons: Sequence[shapely.Polygon]) -> None:
        self.geom = shapely.union_all(list(polygons)) if polygons else shapely.Polygon()
        shapely.prepare(self.geom)
        self.bounds = (
            self.geom.bounds if not self.geom.is_empty else (np.inf, np.inf, -np.inf, -np.inf)
        )

    def probability(self, x: FloatArray, y: FloatArray, r90: FloatArray) -> FloatArray:
        """P(true position inside) for Gaussian estimates with the given 90 % radius.

        Fixes farther than 4 sigma from the region's bounding box get 0 without a test.
        """
        out = np.zeros(len(x))
        if self.geom.is_empty or len(x) == 0:
            return out
        sigma = np.maximum(np.nan_to_num(r90, nan=10.0) / math.sqrt(CHI2_2DOF_90), MIN_SIGMA_M)
        minx, miny, maxx, maxy = self.bounds
        reach = 4.0 * sigma
        near = np.flatnonzero(
            (x > minx - reach) & (x < maxx + reach) & (y > miny - reach) & (y < maxy + reach)
        )
        if len(near) == 0:
            return out
        px = x[near, None] + sigma[near, None] * GAUSS_POINTS[None, :, 0]
        py = y[near, None] + sigma[near, None] * GAUSS_POINTS[None, :, 1]
        inside = shapely.intersects_xy(self.geom, px.ravel(), py.ravel()).reshape(px.shape)
        out[near] = inside.mean(axis=1)
        return out


class GeofenceRules(RuleCore):
    """zone_enter, zone_exit, misplaced."""

    def _setup(self) -> None:
        super()._setup()
        cfg, zones = self.rules.misplaced, self.ctx.zones
        # Misplacement: one forbidden region per class (zones whose role is not allowed).
        self._forbidden: list[ZoneRegion] = []
        for name in self.ctx.class_names:
            allowed = set(cfg.allowed_roles.get(name, cfg.default_allowed_roles))
            self._forbidden.append(
                ZoneRegion(
                    [
                        p
                        for p, r in zip(zones.polygons, zones.roles, strict=True)
                        if r not in allowed
                    ]
                )
            )

    def _zone_transitions(
        self, t: float, d: IntArray, z: NDArray[np.int32], events: list[Event]
    ) -> None:
        tg, rules = self.tags, self.rules
        same = tg["cand"][d] == z
        n = np.where(same, tg["cand_n"][d] + 1, 1)
        tg["cand"][d], tg["cand_n"][d] = z, n
        old = tg["conf"][d]
        change = (n >= rules.zone_transition.confirm_fixes) & (z != old)
        for j in np.flatnonzero(change).tolist():
            dj = int(d[j])
            if old[j] != NO_ZONE:
                events.append(
                    self._event(
                        "zone_exit",
                        t,
                        dj,
                        zone=int(old[j]),
                        stayed_s=t - float(tg["zone_since"][dj]),
                    )
                )
            if z[j] != NO_ZONE:
                events.append(
                    self._event(
                        "zone_enter",
                        t,
                        dj,
                        zone=int(z[j]),
                        fixes_in_zone=int(n[j]),
                        previous=self._zone_name(int(old[j])),
                    )
                )
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
        for c in np.unique(cls[cls >= 0]).tolist():
            sel = cls == c
            p[sel] = self._forbidden[c].probability(x[sel], y[sel], r90[sel])
        prev_t = tg["misp_t"][d]
        dt = np.where(np.isfinite(prev_t), t - np.nan_to_num(prev_t), 1.0)
        alpha = 1.0 - np.exp(-np.minimum(dt, 5 * cfg.time_constant_s) / cfg.time_constant_s)
        ewma = tg["misp"][d] + alpha * (p - tg["misp"][d])
        ewma = np.where(motion == 1, 0.0, ewma)  # a carried tag is not misplaced (yet)
        tg["misp"][d], tg["misp_t"][d] = ewma, t
        tg["misp_done"][d[ewma < cfg.rearm]] = False
        fire = (ewma >= cfg.threshold) & ~tg["misp_done"][d] & (cls >= 0)
        for j in np.flatnonzero(fire).tolist():
            dj = int(d[j])
            events.append(
                self._event(
                    "misplaced",
                    t,
                    dj,
                    confidence=float(ewma[j]),
                    p_forbidden_smoothed=float(ewma[j]),
                    p_forbidden_now=float(p[j]),
                    tag_class=self.ctx.class_names[int(cls[j])],
                )
            )
        tg["misp_done"][d[fire]] = True
