"""Ground-truth incidents and checkout traffic, injected into the twin as SimPy agents.

Nothing here touches the radio hot path: agents drive the twin through its hooks
(``tag_alive``, ``gateway_up``, the fleet's battery arrays) and plan carries with the
movers' own ``_plan_trip``, so ground truth (segments, movements) stays complete.

The radio process batches every advertisement of a tick ``[k*tick, (k+1)*tick)`` and
reads the hooks when the tick ends. A flip is therefore scheduled half a tick *after*
a tick boundary and takes effect exactly at that boundary, which is the time recorded:
an incident's time is the first instant at which the radio behaves differently.

Randomness: one stream, ``SeedSequence(seed, spawn_key=(INCIDENT_STREAM,))``, apart from
the twin's own six, so adding incidents never changes the rest of a run.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import shapely

from engine.rules.feeder import FEED_DTYPE
from engine.rules.scoring import IncidentRecord
from twin.sim import WarehouseTwin, _Trip

if TYPE_CHECKING:
    import simpy
    from numpy.typing import NDArray

    from engine.truth import GroundTruth
    from siteplan.zones import ZoneIndex
    from twin.scenario import CheckoutTraffic, IncidentSpec, Scenario

INCIDENT_STREAM = 1000
DEFAULT_FROM_ROLES = ("storage", "packing", "shipping", "receiving")
DOOR_INSET_M = 0.3


@dataclass
class IncidentLog:
    """What the agents did: incident records, the POS feed, and what they could not do."""

    records: list[IncidentRecord] = field(default_factory=list)
    feed: list[tuple[float, float, int]] = field(default_factory=list)
    legit_exits: list[IncidentRecord] = field(default_factory=list)
    skipped: int = 0

    def checkout_feed(self) -> NDArray[np.void]:
        rows = np.array(self.feed, dtype=FEED_DTYPE) if self.feed else np.zeros(0, FEED_DTYPE)
        return rows[np.argsort(rows["arrival"], kind="stable")]


class IncidentInjector:
    """Registers one SimPy agent per incident (and per legitimate exit) with a twin."""

    def __init__(self, twin: WarehouseTwin, scenario: Scenario) -> None:
        self.twin = twin
        self.scenario = scenario
        self.rng = np.random.default_rng(
            np.random.SeedSequence(scenario.seed, spawn_key=(INCIDENT_STREAM,))
        )
        self.log = IncidentLog()
        self.tick = scenario.tick_s
        self._claimed = np.zeros(len(twin.fleet), dtype=bool)
        self._actor = 0
        for spec in scenario.incidents:
            for _ in range(spec.count):
                t0 = self._start_time(spec.window_s)
                twin.agents.append(functools.partial(self._incident, spec=spec, t0=t0))
        traffic = scenario.checkouts
        for _ in range(traffic.count):
            t0 = self._start_time(traffic.window_s)
            twin.agents.append(functools.partial(self._legit_exit, spec=traffic, t0=t0))

    # -- helpers --------------------------------------------------------------------------

    def _start_time(self, window: tuple[float, float] | None) -> float:
        lo, hi = (
            window if window is not None else (120.0, max(120.0, self.scenario.duration_s - 120.0))
        )
        return float(self.rng.uniform(lo, hi))

    def _boundary(self, t: float) -> float:
        """The first tick boundary at or after ``t``: when a hook flipped now takes effect."""
        return math.ceil(t / self.tick - 1e-9) * self.tick

    def _pick_tag(self, zones: list[str]) -> int | None:
        twin = self.twin
        site = twin.site
        idx: list[int] = []
        for z in zones or DEFAULT_FROM_ROLES:
            idx += site.zones.resolve(z)
        free = np.flatnonzero((twin.trip_of < 0) & twin.tag_alive & ~self._claimed)
        in_zone = np.isin(site.zones.assign(twin.xy[free, 0], twin.xy[free, 1]), sorted(set(idx)))
        cand = free[in_zone]
        if len(cand) == 0:
            self.log.skipped += 1
            return None
        tag = int(cand[self.rng.integers(len(cand))])
        self._claimed[tag] = True
        return tag

    def door_point(self, exit_zone: str) -> NDArray[np.float64]:
        """Where a tag leaves: the middle of the exit zone's edge on the outer wall, inset."""
        site = self.twin.site
        zi = site.zones.resolve(exit_zone)
        poly = shapely.union_all([site.zones.polygons[i] for i in zi])
        edge = poly.boundary.intersection(site.outline.exterior)
        if edge.is_empty or edge.length == 0:
            c = poly.centroid
            return np.array([c.x, c.y])
        door = (
            edge.interpolate(0.5, normalized=True)
            if hasattr(edge, "interpolate")
            else edge.centroid
        )
        inward = np.array([poly.centroid.x - door.x, poly.centroid.y - door.y])
        inward /= max(float(np.hypot(*inward)), 1e-9)
        return np.array([door.x, door.y]) + DOOR_INSET_M * inward

    def _carry(self, tag: int, goal: NDArray[np.float64], now: float, speed: float) -> float:
        """Plan a one-tag carry from where the tag rests to ``goal``; returns the drop time."""
        twin = self.twin
        path_t, path_xy = twin._timed_path(twin.xy[tag].copy(), goal, now, speed)
        t_drop = float(path_t[-1])
        self._actor += 1
        twin._plan_trip(
            _Trip(np.array([tag]), path_t, path_xy, now, t_drop, goal[None, :].copy()), -self._actor
        )
        return t_drop

    def _random_point(self, zone: str) -> NDArray[np.float64]:
        site = self.twin.site
        zi = site.zones.resolve(zone)
        poly = site.zones.polygons[zi[int(self.rng.integers(len(zi)))]]
        return site.random_free_points(
            1, self.rng, poly.buffer(-0.5) if poly.buffer(-0.5).area > 0 else poly
        )[0]

    def _kill_at(
        self, env: simpy.Environment, tag: int, t_eff: float
    ) -> simpy.events.ProcessGenerator:
        yield env.timeout(max(0.0, t_eff + self.tick / 2 - env.now))
        self.twin.tag_alive[tag] = False

    # -- agents ---------------------------------------------------------------------------

    def _incident(
        self, env: simpy.Environment, spec: IncidentSpec, t0: float
    ) -> simpy.events.ProcessGenerator:
        yield env.timeout(t0)
        twin = self.twin
        ids = twin.fleet.ids
        if spec.kind == "gateway_outage":
            g = (
                twin.gateways.ids.index(spec.gateway)
                if spec.gateway is not None
                else int(self.rng.integers(len(twin.gateways.ids)))
            )
            t_eff = self._boundary(env.now)
            yield env.timeout(t_eff + self.tick / 2 - env.now)
            twin.gateway_up[g] = False
            self.log.records.append(
                IncidentRecord(
                    "gateway_outage",
                    t_eff,
                    t_eff,
                    t_eff + spec.duration_s,
                    gateway=twin.gateways.ids[g],
                    detail={"duration_s": spec.duration_s},
                )
            )
            yield env.timeout(spec.duration_s)
            twin.gateway_up[g] = True
            return
        tag = self._pick_tag(spec.from_zones)
        if tag is None:
            return
        if spec.kind == "battery_death":
            fleet, now = twin.fleet, env.now
            t_eff = self._boundary(now + spec.lead_s)
            level = fleet.battery0_pct[tag] - fleet.drain_pct_per_s[tag] * now
            drain = level / max(t_eff - now, 1e-9)
            fleet.drain_pct_per_s[tag] = drain
            fleet.battery0_pct[tag] = level + drain * now  # continuous now, 0 % at t_eff
            self.log.records.append(
                IncidentRecord(
                    "battery_death",
                    t_eff,
                    now,
                    tag=ids[tag],
                    detail={"level_at_start_pct": round(float(level), 2)},
                )
            )
            yield from self._kill_at(env, tag, t_eff)
        elif spec.kind == "theft":
            t_drop = self._carry(tag, self.door_point(spec.exit_zone), env.now, spec.speed_mps)
            t_eff = self._boundary(t_drop)
            self.log.records.append(
                IncidentRecord(
                    "theft", t_eff, env.now, tag=ids[tag], detail={"exit_zone": spec.exit_zone}
                )
            )
            yield from self._kill_at(env, tag, t_eff)
        else:  # misplacement, tag_removed: carried into a zone and set down there
            assert spec.to_zone is not None
            t_drop = self._carry(tag, self._random_point(spec.to_zone), env.now, spec.speed_mps)
            detail: dict[str, object] = {"to_zone": spec.to_zone}
            if spec.kind == "tag_removed":
                detail["silent"] = spec.silent
            t_rec = self._boundary(t_drop) if spec.silent else t_drop
            self.log.records.append(
                IncidentRecord(spec.kind, t_rec, env.now, tag=ids[tag], detail=detail)
            )
            if spec.kind == "tag_removed" and spec.silent:
                yield from self._kill_at(env, tag, t_rec)

    def _legit_exit(
        self, env: simpy.Environment, spec: CheckoutTraffic, t0: float
    ) -> simpy.events.ProcessGenerator:
        yield env.timeout(t0)
        tag = self._pick_tag(spec.from_zones)
        if tag is None:
            return
        t_drop = self._carry(tag, self.door_point(spec.exit_zone), env.now, spec.speed_mps)
        t_eff = self._boundary(t_drop)
        t_checkout = t_eff - float(self.rng.uniform(*spec.lead_s))
        arrival = t_checkout + float(self.rng.uniform(*spec.feed_delay_s))
        self.log.feed.append((t_checkout, arrival, tag))
        self.log.legit_exits.append(
            IncidentRecord(
                "exit",
                t_eff,
                env.now,
                tag=self.twin.fleet.ids[tag],
                detail={"checkout_t": round(t_checkout, 3)},
            )
        )
        yield from self._kill_at(env, tag, t_eff)


def true_zone_counts(
    truth: GroundTruth, zones: ZoneIndex, times: list[float], gone_at: NDArray[np.float64]
) -> dict[tuple[float, int], int]:
    """How many tagged items really were in each zone at each time (items that left excluded)."""
    n_tags, n_zones = len(gone_at), len(zones)
    out: dict[tuple[float, int], int] = {}
    devices = np.arange(n_tags)
    for t in times:
        xy = truth.position_at(devices, np.full(n_tags, t))
        z = zones.assign(xy[:, 0], xy[:, 1])
        z = np.where(gone_at <= t, -1, z)
        counts = np.bincount(z[z >= 0], minlength=n_zones)
        for zi in range(n_zones):
            out[(t, zi)] = int(counts[zi])
    return out
